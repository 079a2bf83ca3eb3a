//! What every implementation of a port must do, checked on the fake in unit tests and
//! on the real adapter against moto (tests/tests/ports.rs), so the two cannot drift.

use crate::domain::card_key::CardKeyCode;
use crate::domain::crypto::{card_key_aad, open, seal};
use crate::ports::KeyVault;
use crate::ports::vault::EncryptionContext;

/// A data key made for one batch seals and opens card keys after a round trip through
/// the vault, and unwraps under no other batch's or product's context.
pub async fn key_vault(vault: &dyn KeyVault, sku: &str, batch_id: &str) -> Result<(), String> {
    let context = EncryptionContext::card_key_batch(sku, batch_id);
    let made = vault
        .new_data_key(&context)
        .await
        .map_err(|e| format!("new data key: {e}"))?;
    let aad = card_key_aad(sku, "key-1");
    let code = CardKeyCode::from("CONTRACT-KEY-1".to_owned());
    let sealed = seal(&made.plaintext, &aad, &code).map_err(|e| e.to_string())?;
    for other in [
        EncryptionContext::card_key_batch(sku, "another-batch"),
        EncryptionContext::card_key_batch("another-sku", batch_id),
    ] {
        if vault.unwrap_data_key(&other, &made.wrapped).await.is_ok() {
            return Err(format!("unwrapped under the wrong context {other:?}"));
        }
    }
    let unwrapped = vault
        .unwrap_data_key(&context, &made.wrapped)
        .await
        .map_err(|e| format!("unwrap: {e}"))?;
    let opened = open(&unwrapped, &aad, &sealed).map_err(|e| e.to_string())?;
    if opened.expose() != code.expose() {
        return Err("the unwrapped key opens to another code".into());
    }
    if vault.recently_unwrapped(&context).is_none() {
        return Err("a key unwrapped just now is not remembered".into());
    }
    Ok(())
}
