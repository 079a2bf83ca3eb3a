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
    Ok(Secrets {
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
    })
}
