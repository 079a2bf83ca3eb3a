//! Secrets Manager, read once at cold start; only the secrets this function's
//! configuration names (and its IAM policy allows).

use aws_config::SdkConfig;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Secret values this function was given access to; absent ones stay `None` and the use
/// case that needs one fails closed.
#[derive(Default)]
pub struct Secrets {
    pub admin_token: Option<Zeroizing<String>>,
    pub stripe_webhook_secrets: Vec<Zeroizing<String>>,
    pub fingerprint_key: Option<Zeroizing<String>>,
    pub order_token_key: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

fn required<'a>(value: &'a Option<Zeroizing<String>>, what: &str) -> Result<&'a [u8]> {
    value
        .as_ref()
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Config(format!("{what} is not configured")))
}

impl Secrets {
    pub fn admin_token(&self) -> Result<&[u8]> {
        required(&self.admin_token, "admin token")
    }
    pub fn fingerprint_key(&self) -> Result<&[u8]> {
        required(&self.fingerprint_key, "fingerprint key")
    }
    pub fn order_token_key(&self) -> Result<&[u8]> {
        required(&self.order_token_key, "order token key")
    }
}

/// The shortest admin token or signing secret a function starts with: a guessable or
/// truncated value is refused at cold start, not discovered in production.
pub const MIN_SECRET_CHARS: usize = 32;

impl Secrets {
    /// Refuses a configured admin token or signing secret shorter than
    /// `MIN_SECRET_CHARS`. The error names the secret, never its value.
    pub fn check_strength(&self) -> Result<()> {
        let named = [
            ("admin token (AdminTokenSecret)", self.admin_token.as_ref()),
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
        for (what, value) in named.into_iter().chain(stripe) {
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

pub async fn load(sdk: &SdkConfig, ids: &SecretIds<'_>) -> Result<Secrets> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let (admin_token, stripe, fingerprint_key, order_token_key) = tokio::try_join!(
        fetch(&client, ids.admin_token),
        fetch(&client, ids.stripe_webhook),
        fetch(&client, ids.fingerprint_key),
        fetch(&client, ids.order_token_key),
    )?;
    let secrets = Secrets {
        admin_token,
        // Several endpoint secrets, comma separated, while one is being rotated.
        stripe_webhook_secrets: stripe
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Zeroizing::new(s.to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        fingerprint_key,
        order_token_key,
    };
    secrets.check_strength()?;
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong() -> Secrets {
        Secrets {
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
        Secrets::default().check_strength().unwrap();
    }

    #[test]
    fn a_short_admin_token_or_signing_secret_is_refused_by_name_without_its_value() {
        let short = "short-secret-value-31-characters";
        let short = &short[..MIN_SECRET_CHARS - 1];
        type Weaken = fn(&mut Secrets, &str);
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
}
