//! The key vault on KMS: envelope encryption with one data key per import batch, bound
//! to the batch by its encryption context. Decrypted data keys are cached briefly so
//! showing an order does not call KMS per key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

use crate::domain::crypto::DataKey;
use crate::error::{Error, Result};
use crate::ports::PortFuture;
use crate::ports::vault::{EncryptionContext, KeyVault, NewDataKey};

const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX_ENTRIES: usize = 256;

fn kms_context(context: &EncryptionContext) -> HashMap<String, String> {
    context
        .pairs()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
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
    cache: Mutex<HashMap<EncryptionContext, (DataKey, Instant)>>,
}

impl KmsVault {
    pub fn new(client: aws_sdk_kms::Client, key_id: Option<String>) -> Self {
        KmsVault {
            client,
            key_id,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn generate(&self, context: &EncryptionContext) -> Result<NewDataKey> {
        let key_id = self
            .key_id
            .as_ref()
            .ok_or_else(|| Error::Config("CARD_KEY_KMS_KEY_ID is not set".into()))?;
        let output = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| Error::aws("kms", e))?;
        let plaintext = unwrapped(output.plaintext)?;
        let wrapped = output
            .ciphertext_blob
            .ok_or(Error::Crypto("KMS returned no wrapped data key"))?
            .into_inner();
        Ok(NewDataKey { plaintext, wrapped })
    }

    async fn decrypt(&self, context: &EncryptionContext, wrapped: &[u8]) -> Result<DataKey> {
        if let Some(key) = self.recently_unwrapped(context) {
            return Ok(key);
        }
        let output = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| Error::aws("kms", e))?;
        let key = unwrapped(output.plaintext)?;
        self.remember(context, key.clone());
        Ok(key)
    }

    fn remember(&self, context: &EncryptionContext, key: DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(context.clone(), (key, Instant::now()));
        }
    }
}

impl KeyVault for KmsVault {
    fn new_data_key<'a>(&'a self, context: &'a EncryptionContext) -> PortFuture<'a, NewDataKey> {
        Box::pin(self.generate(context))
    }

    /// From the cache when this context's key was unwrapped in the last few minutes.
    fn unwrap_data_key<'a>(
        &'a self,
        context: &'a EncryptionContext,
        wrapped: &'a [u8],
    ) -> PortFuture<'a, DataKey> {
        Box::pin(self.decrypt(context, wrapped))
    }

    fn recently_unwrapped(&self, context: &EncryptionContext) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(context)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(key, _)| key.clone())
    }
}
