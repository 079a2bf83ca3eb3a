//! Secrets Manager, read once at cold start; only the secrets this function's
//! configuration names (and its IAM policy allows).

use aws_config::SdkConfig;
use zeroize::Zeroizing;

use crate::config::{Config, Secrets};
use crate::error::{Error, Result};

async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    id: &Option<String>,
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

pub async fn load(sdk: &SdkConfig, config: &Config) -> Result<Secrets> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let (admin_token, stripe, fingerprint_key, order_token_key) = tokio::try_join!(
        fetch(&client, &config.admin_token_secret_id),
        fetch(&client, &config.stripe_webhook_secret_id),
        fetch(&client, &config.fingerprint_secret_id),
        fetch(&client, &config.order_token_secret_id),
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
