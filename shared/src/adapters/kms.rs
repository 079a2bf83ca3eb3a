//! Envelope encryption with KMS: one data key per import batch, bound to the batch by
//! its encryption context. Decrypted data keys are cached briefly so showing an order
//! does not call KMS per key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

use crate::domain::crypto::DataKey;
use crate::error::{Error, Result};

const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX_ENTRIES: usize = 256;

/// The encryption context of a batch's data key: a wrapped key copied to another
/// batch or product does not decrypt.
fn encryption_context(sku: &str, batch_id: &str) -> HashMap<String, String> {
    HashMap::from([
        ("kami:purpose".to_owned(), "card-key-batch".to_owned()),
        ("kami:sku".to_owned(), sku.to_owned()),
        ("kami:batch".to_owned(), batch_id.to_owned()),
    ])
}

/// The plaintext data key KMS returned. The SDK's `Blob` is not zeroized: copy the key
/// into a zeroizing buffer and drop the blob at once.
fn unwrapped(plaintext: Option<Blob>) -> Result<DataKey> {
    let plaintext = plaintext.ok_or(Error::Crypto("KMS returned no plaintext data key"))?;
    DataKey::from_slice(plaintext.as_ref())
}

pub struct KmsVault {
    client: aws_sdk_kms::Client,
    key_id: Option<String>,
    cache: Mutex<HashMap<String, (DataKey, Instant)>>,
}

impl KmsVault {
    pub fn new(client: aws_sdk_kms::Client, key_id: Option<String>) -> Self {
        KmsVault {
            client,
            key_id,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A new data key for one batch: the plaintext (to seal keys now) and the wrapped
    /// copy (to store with the batch).
    pub async fn new_batch_key(&self, sku: &str, batch_id: &str) -> Result<(DataKey, Vec<u8>)> {
        let key_id = self
            .key_id
            .as_ref()
            .ok_or_else(|| Error::Config("CARD_KEY_KMS_KEY_ID is not set".into()))?;
        let output = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(sku, batch_id)))
            .send()
            .await
            .map_err(|e| Error::aws("kms", e))?;
        let data_key = unwrapped(output.plaintext)?;
        let wrapped = output
            .ciphertext_blob
            .ok_or(Error::Crypto("KMS returned no wrapped data key"))?
            .into_inner();
        Ok((data_key, wrapped))
    }

    /// Unwraps a batch's data key, from the cache when it was unwrapped recently.
    pub async fn batch_key(&self, sku: &str, batch_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        if let Some(key) = self.cached(batch_id) {
            return Ok(key);
        }
        let output = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(encryption_context(sku, batch_id)))
            .send()
            .await
            .map_err(|e| Error::aws("kms", e))?;
        let key = unwrapped(output.plaintext)?;
        self.remember(batch_id, key.clone());
        Ok(key)
    }

    /// A batch's data key if it was unwrapped in the last few minutes.
    pub fn cached(&self, batch_id: &str) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(batch_id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(key, _)| key.clone())
    }

    fn remember(&self, batch_id: &str, key: DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(batch_id.to_owned(), (key, Instant::now()));
        }
    }
}
