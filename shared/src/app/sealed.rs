//! Secrets an operator sets (a payment channel's keys, a supplier's signing secret),
//! sealed at rest: each write under a fresh KMS data key, named by a seal id in its
//! encryption context (a context names exactly one data key: vaults cache unwrapped keys
//! by context), then AES-256-GCM with an AAD that binds it to its owner.

use zeroize::Zeroizing;

use crate::config::Context;
use crate::domain::crypto::{open_bytes, seal_bytes};
use crate::domain::time::new_id;
use crate::error::Result;
use crate::ports::vault::EncryptionContext;
use crate::store::SealedSecrets;

/// Seals `plaintext` under a new data key whose context `context_for(seal_id)` names.
pub async fn seal(
    ctx: &Context,
    context_for: impl Fn(&str) -> EncryptionContext,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<SealedSecrets> {
    let seal_id = new_id();
    let data_key = ctx.vault()?.new_data_key(&context_for(&seal_id)).await?;
    let sealed = seal_bytes(&data_key.plaintext, aad, plaintext)?;
    Ok(SealedSecrets {
        seal_id,
        wrapped_key: data_key.wrapped,
        sealed,
    })
}

/// Opens what `seal` sealed, given the same context (for its seal id) and AAD.
pub async fn open(
    ctx: &Context,
    context: &EncryptionContext,
    aad: &[u8],
    sealed: &SealedSecrets,
) -> Result<Zeroizing<Vec<u8>>> {
    let key = ctx
        .vault()?
        .unwrap_data_key(context, &sealed.wrapped_key)
        .await?;
    open_bytes(&key, aad, &sealed.sealed)
}
