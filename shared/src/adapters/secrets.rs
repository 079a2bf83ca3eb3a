//! Secrets Manager: the secrets this function's configuration names (and its IAM policy
//! allows), read at cold start. The ones an operator rotates to revoke access (the admin
//! token, Stripe's webhook secrets) are read again every `SECRETS_REFRESH_SECONDS` while
//! the instance is warm, so a rotated value stops working within that interval
//! (docs/operations.md); the keys stored data depends on (fingerprint key, order-token
//! key) are read once: rotating them is not supported.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_config::SdkConfig;
use zeroize::Zeroizing;

use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// Secret values as read from Secrets Manager; absent ones stay `None` and the use case
/// that needs one fails closed.
#[derive(Default)]
pub struct SecretValues {
    pub admin_token: Option<Zeroizing<String>>,
    pub stripe_webhook_secrets: Vec<Zeroizing<String>>,
    pub fingerprint_key: Option<Zeroizing<String>>,
    pub order_token_key: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValues(<redacted>)")
    }
}

fn required<'a>(value: Option<&'a Zeroizing<String>>, what: &str) -> Result<&'a Zeroizing<String>> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Config(format!("{what} is not configured")))
}

/// The shortest admin token or signing secret a function starts with: a guessable or
/// truncated value is refused at cold start, not discovered in production.
pub const MIN_SECRET_CHARS: usize = 32;

impl SecretValues {
    /// Refuses a configured admin token or signing secret shorter than
    /// `MIN_SECRET_CHARS`. The error names the secret, never its value.
    pub fn check_strength(&self) -> Result<()> {
        let admin_tokens = match &self.admin_token {
            Some(value) => named_admin_tokens(value)?,
            None => Vec::new(),
        };
        let admin = admin_tokens
            .iter()
            .map(|(_, token)| ("admin token (AdminTokenSecret)", Some(token)));
        let named = [
            (
                "fingerprint key (FingerprintKeySecret)",
                self.fingerprint_key.as_ref(),
            ),
            (
                "order token key (OrderTokenSecret)",
                self.order_token_key.as_ref(),
            ),
        ];
        let stripe = self
            .stripe_webhook_secrets
            .iter()
            .map(|secret| ("Stripe webhook secret (StripeWebhookSecret)", Some(secret)));
        for (what, value) in named.into_iter().chain(stripe).chain(admin) {
            if let Some(value) = value
                && value.chars().count() < MIN_SECRET_CHARS
            {
                return Err(Error::Config(format!(
                    "{what} is shorter than {MIN_SECRET_CHARS} characters; refusing to start"
                )));
            }
        }
        Ok(())
    }
}

/// The operator named when the admin token secret is one bare token.
pub const DEFAULT_ADMIN: &str = "admin";

/// The admin tokens an admin token secret holds, by operator name: either one bare token
/// (named `admin`) or a JSON object `{"<name>": "<token>", ...}`, one token per operator,
/// so the audit trail can say who acted and one operator is revoked alone
/// (docs/operations.md). A name is 1 to 64 of `a-z 0-9 . _ @ -`.
pub fn named_admin_tokens(value: &str) -> Result<Vec<(String, Zeroizing<String>)>> {
    if !value.trim_start().starts_with('{') {
        return Ok(vec![(
            DEFAULT_ADMIN.to_owned(),
            Zeroizing::new(value.to_owned()),
        )]);
    }
    let unreadable = || {
        Error::Config(
            "admin token (AdminTokenSecret) is not a JSON object of names to tokens".to_owned(),
        )
    };
    let tokens: std::collections::BTreeMap<String, String> =
        serde_json::from_str(value).map_err(|_| unreadable())?;
    let good_name = |name: &str| {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".@_-".contains(&b))
    };
    if tokens.is_empty() || !tokens.keys().all(|name| good_name(name)) {
        return Err(unreadable());
    }
    Ok(tokens
        .into_iter()
        .map(|(name, token)| (name, Zeroizing::new(token)))
        .collect())
}

/// The secrets that revoke access when rotated, as last read.
#[derive(Default)]
pub struct Revocable {
    /// The admin tokens by operator name, read from the secret once per read of it.
    pub admin_tokens: Vec<(String, Zeroizing<String>)>,
    pub stripe_webhook_secrets: Vec<Zeroizing<String>>,
}

impl Revocable {
    /// The revocable part of `values`. An admin token secret that does not read as
    /// tokens (refused by `check_strength` before it gets here) gives none: closed.
    fn of(values: &mut SecretValues) -> Self {
        Revocable {
            admin_tokens: values
                .admin_token
                .take()
                .filter(|value| !value.is_empty())
                .and_then(|value| named_admin_tokens(&value).ok())
                .unwrap_or_default(),
            stripe_webhook_secrets: std::mem::take(&mut values.stripe_webhook_secrets),
        }
    }
}

/// Where and how often the revocable secrets are read again.
struct Refresh {
    client: aws_sdk_secretsmanager::Client,
    admin_token_id: Option<String>,
    stripe_webhook_id: Option<String>,
    every_seconds: i64,
    /// When the next read is due.
    due: Mutex<Option<Timestamp>>,
}

/// The revocable secrets, shared by everything that checks them (the admin router, the
/// Stripe provider): each reads the current values at use.
#[derive(Default)]
pub struct RevocableSecrets {
    current: RwLock<Arc<Revocable>>,
    refresh: Option<Refresh>,
}

impl RevocableSecrets {
    /// Values that never change (tests, fakes).
    pub fn fixed(values: Revocable) -> Arc<Self> {
        Arc::new(RevocableSecrets {
            current: RwLock::new(Arc::new(values)),
            refresh: None,
        })
    }

    pub fn current(&self) -> Arc<Revocable> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the revocable secrets again if `every_seconds` have passed since the last
    /// read (by the context's clock): at most one read per secret per interval. A read
    /// that fails keeps the values in hand until the next interval (Secrets Manager being
    /// down must not lock the operator out); a value that is now too weak is not used
    /// (fails closed: the old one was rotated away for a reason).
    pub async fn refresh_if_due(&self, now: Timestamp) {
        let Some(refresh) = &self.refresh else { return };
        {
            let mut due = refresh.due.lock().unwrap_or_else(PoisonError::into_inner);
            // Not due yet, unless the clock stepped back past the last read (a clock
            // set back must not postpone a revocation).
            let last_read = due.map(|due| due.plus_seconds(-refresh.every_seconds));
            if due.is_some_and(|due| now < due) && last_read.is_some_and(|read| now >= read) {
                return;
            }
            *due = Some(now.plus_seconds(refresh.every_seconds));
        }
        let read = tokio::try_join!(
            fetch(&refresh.client, refresh.admin_token_id.as_deref()),
            fetch(&refresh.client, refresh.stripe_webhook_id.as_deref()),
        );
        let (admin_token, stripe) = match read {
            Ok(values) => values,
            Err(err) => {
                tracing::error!(error = %err, "re-reading secrets failed; keeping the values in hand");
                return;
            }
        };
        let mut values = SecretValues {
            admin_token,
            stripe_webhook_secrets: split_list(stripe),
            ..SecretValues::default()
        };
        let fresh = match values.check_strength() {
            Ok(()) => Revocable::of(&mut values),
            Err(err) => {
                tracing::error!(error = %err, "a rotated secret is too weak; refusing it (and the one it replaced)");
                Revocable::default()
            }
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
    }
}

/// A function's secrets.
#[derive(Default)]
pub struct Secrets {
    fingerprint_key: Option<Zeroizing<String>>,
    order_token_key: Option<Zeroizing<String>>,
    revocable: Arc<RevocableSecrets>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    /// Values that never change (tests, fakes).
    pub fn fixed(mut values: SecretValues) -> Self {
        Secrets {
            revocable: RevocableSecrets::fixed(Revocable::of(&mut values)),
            fingerprint_key: values.fingerprint_key,
            order_token_key: values.order_token_key,
        }
    }

    /// The operator whose admin token `presented` is, if any. Every token is compared
    /// (in constant time), so the time taken does not tell which one came close.
    pub fn admin_actor(&self, presented: &str) -> Result<Option<String>> {
        let current = self.revocable.current();
        if current.admin_tokens.is_empty() {
            return Err(Error::Config("admin token is not configured".into()));
        }
        let mut actor = None;
        for (name, token) in &current.admin_tokens {
            if crate::domain::crypto::secrets_equal(presented.as_bytes(), token.as_bytes()) {
                actor = Some(name.clone());
            }
        }
        Ok(actor)
    }
    pub fn fingerprint_key(&self) -> Result<&[u8]> {
        required(self.fingerprint_key.as_ref(), "fingerprint key").map(|key| key.as_bytes())
    }
    pub fn order_token_key(&self) -> Result<&[u8]> {
        required(self.order_token_key.as_ref(), "order token key").map(|key| key.as_bytes())
    }

    /// The revocable secrets, for a component that checks them at use.
    pub fn revocable(&self) -> Arc<RevocableSecrets> {
        self.revocable.clone()
    }

    /// See `RevocableSecrets::refresh_if_due`.
    pub async fn refresh_if_due(&self, now: Timestamp) {
        self.revocable.refresh_if_due(now).await;
    }
}

/// Which secrets to read: the ids this function's configuration names.
pub struct SecretIds<'a> {
    pub admin_token: Option<&'a str>,
    pub stripe_webhook: Option<&'a str>,
    pub fingerprint_key: Option<&'a str>,
    pub order_token_key: Option<&'a str>,
}

async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    id: Option<&str>,
) -> Result<Option<Zeroizing<String>>> {
    let Some(id) = id else { return Ok(None) };
    let output = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| Error::aws("secretsmanager", e))?;
    Ok(output.secret_string.map(Zeroizing::new))
}

/// Several endpoint secrets, comma separated, while one is being rotated.
fn split_list(list: Option<Zeroizing<String>>) -> Vec<Zeroizing<String>> {
    list.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Zeroizing::new(s.to_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Cold start (at `now`): reads every secret `ids` names (a weak one stops the start),
/// and re-reads the revocable ones every `refresh_seconds` after.
pub async fn load(
    sdk: &SdkConfig,
    ids: &SecretIds<'_>,
    refresh_seconds: i64,
    now: Timestamp,
) -> Result<Secrets> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let (admin_token, stripe, fingerprint_key, order_token_key) = tokio::try_join!(
        fetch(&client, ids.admin_token),
        fetch(&client, ids.stripe_webhook),
        fetch(&client, ids.fingerprint_key),
        fetch(&client, ids.order_token_key),
    )?;
    let mut values = SecretValues {
        admin_token,
        stripe_webhook_secrets: split_list(stripe),
        fingerprint_key,
        order_token_key,
    };
    values.check_strength()?;
    let refresh = (ids.admin_token.is_some() || ids.stripe_webhook.is_some()).then(|| Refresh {
        client,
        admin_token_id: ids.admin_token.map(str::to_owned),
        stripe_webhook_id: ids.stripe_webhook.map(str::to_owned),
        every_seconds: refresh_seconds,
        due: Mutex::new(Some(now.plus_seconds(refresh_seconds))),
    });
    Ok(Secrets {
        revocable: Arc::new(RevocableSecrets {
            current: RwLock::new(Arc::new(Revocable::of(&mut values))),
            refresh,
        }),
        fingerprint_key: values.fingerprint_key,
        order_token_key: values.order_token_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong() -> SecretValues {
        SecretValues {
            admin_token: Some(Zeroizing::new("a".repeat(MIN_SECRET_CHARS))),
            stripe_webhook_secrets: vec![
                Zeroizing::new(format!("whsec_{}", "b".repeat(40))),
                Zeroizing::new(format!("whsec_{}", "c".repeat(40))),
            ],
            fingerprint_key: Some(Zeroizing::new("d".repeat(64))),
            order_token_key: Some(Zeroizing::new("e".repeat(64))),
        }
    }

    #[test]
    fn secrets_of_32_characters_or_more_and_absent_ones_pass() {
        strong().check_strength().unwrap();
        SecretValues::default().check_strength().unwrap();
    }

    #[test]
    fn a_short_admin_token_or_signing_secret_is_refused_by_name_without_its_value() {
        let short = "short-secret-value-31-characters";
        let short = &short[..MIN_SECRET_CHARS - 1];
        type Weaken = fn(&mut SecretValues, &str);
        let cases: [(&str, Weaken); 4] = [
            ("admin token", |s, v| {
                s.admin_token = Some(Zeroizing::new(v.into()))
            }),
            ("Stripe webhook secret", |s, v| {
                s.stripe_webhook_secrets.push(Zeroizing::new(v.into()))
            }),
            ("fingerprint key", |s, v| {
                s.fingerprint_key = Some(Zeroizing::new(v.into()))
            }),
            ("order token key", |s, v| {
                s.order_token_key = Some(Zeroizing::new(v.into()))
            }),
        ];
        for (name, weaken) in cases {
            let mut secrets = strong();
            weaken(&mut secrets, short);
            let message = secrets.check_strength().unwrap_err().to_string();
            assert!(message.contains(name), "{message}");
            assert!(!message.contains(short), "{message}");
        }
    }

    #[test]
    fn named_admin_tokens_say_which_operator_presented_one() {
        let alice = "a".repeat(MIN_SECRET_CHARS);
        let bob = "b".repeat(MIN_SECRET_CHARS + 8);
        let named = format!(r#"{{"alice": "{alice}", "bob@shop.example": "{bob}"}}"#);
        let secrets = Secrets::fixed(SecretValues {
            admin_token: Some(Zeroizing::new(named)),
            ..SecretValues::default()
        });
        assert_eq!(
            secrets.admin_actor(&alice).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            secrets.admin_actor(&bob).unwrap().as_deref(),
            Some("bob@shop.example")
        );
        assert_eq!(secrets.admin_actor(&alice[1..]).unwrap(), None);
        // One bare token is the operator `admin`.
        let single = Secrets::fixed(SecretValues {
            admin_token: Some(Zeroizing::new(alice.clone())),
            ..SecretValues::default()
        });
        assert_eq!(
            single.admin_actor(&alice).unwrap().as_deref(),
            Some(DEFAULT_ADMIN)
        );
    }

    #[test]
    fn named_admin_tokens_are_checked_like_one() {
        let strong_token = "a".repeat(MIN_SECRET_CHARS);
        for (value, refused) in [
            (format!(r#"{{"alice": "{strong_token}"}}"#), false),
            (r#"{"alice": "short"}"#.to_owned(), true),
            (format!(r#"{{"Alice Smith": "{strong_token}"}}"#), true),
            ("{}".to_owned(), true),
            (format!(r#"{{"alice": "{strong_token}""#), true),
        ] {
            let values = SecretValues {
                admin_token: Some(Zeroizing::new(value.clone())),
                ..SecretValues::default()
            };
            let result = values.check_strength();
            assert_eq!(result.is_err(), refused, "{value}");
            if let Err(err) = result {
                assert!(!err.to_string().contains(&strong_token), "{err}");
            }
        }
    }
}
