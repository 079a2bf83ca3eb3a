use std::collections::HashMap;
use std::sync::Mutex;

use super::{Behaviour, Script, lock};
use crate::domain::crypto::DataKey;
use crate::domain::time::new_id;
use crate::error::{Error, Result};
use crate::ports::PortFuture;
use crate::ports::vault::{EncryptionContext, KeyVault, NewDataKey};

const SYSTEM: &str = "fake vault";

/// An in-memory key vault with KMS's rules: a wrapped key unwraps only under the
/// encryption context it was made for. Unwrapped keys are remembered, as `KmsVault`'s
/// cache does.
#[derive(Default)]
pub struct FakeVault {
    script: Script,
    keys: Mutex<HashMap<Vec<u8>, (EncryptionContext, DataKey)>>,
    unwrapped: Mutex<HashMap<EncryptionContext, DataKey>>,
    unwraps: Mutex<usize>,
}

impl FakeVault {
    pub fn then(&self, behaviour: Behaviour) {
        self.script.then(behaviour);
    }

    /// How many times a wrapped key was unwrapped (KMS `Decrypt` calls, for KMS).
    pub fn unwraps(&self) -> usize {
        *lock(&self.unwraps)
    }

    fn generate(&self, context: &EncryptionContext) -> Result<NewDataKey> {
        let plaintext = DataKey::from_slice(&rand::random::<[u8; 32]>())?;
        let wrapped = format!("fake-wrapped-{}", new_id()).into_bytes();
        self.script.perform(SYSTEM, || {
            lock(&self.keys).insert(wrapped.clone(), (context.clone(), plaintext.clone()));
        })?;
        Ok(NewDataKey { plaintext, wrapped })
    }

    fn open_wrapped(&self, context: &EncryptionContext, wrapped: &[u8]) -> Result<DataKey> {
        self.script.perform(SYSTEM, || *lock(&self.unwraps) += 1)?;
        let key = match lock(&self.keys).get(wrapped) {
            Some((made_for, key)) if made_for == context => key.clone(),
            Some(_) => return Err(Error::Crypto("encryption context does not match")),
            None => return Err(Error::Crypto("not a wrapped key of this vault")),
        };
        lock(&self.unwrapped).insert(context.clone(), key.clone());
        Ok(key)
    }
}

impl KeyVault for FakeVault {
    fn new_data_key<'a>(&'a self, context: &'a EncryptionContext) -> PortFuture<'a, NewDataKey> {
        Box::pin(async move { self.generate(context) })
    }

    fn unwrap_data_key<'a>(
        &'a self,
        context: &'a EncryptionContext,
        wrapped: &'a [u8],
    ) -> PortFuture<'a, DataKey> {
        Box::pin(async move { self.open_wrapped(context, wrapped) })
    }

    fn recently_unwrapped(&self, context: &EncryptionContext) -> Option<DataKey> {
        lock(&self.unwrapped).get(context).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::contracts;

    #[tokio::test]
    async fn the_fake_vault_keeps_the_vault_contract() {
        let vault = FakeVault::default();
        contracts::key_vault(&vault, "sku-a", "batch-1")
            .await
            .unwrap();
        assert_eq!(vault.unwraps(), 3, "two refused, one accepted");
    }

    #[tokio::test]
    async fn a_wrong_context_is_refused_and_a_failing_vault_says_so() {
        let vault = FakeVault::default();
        let context = EncryptionContext::card_key_batch("sku-a", "batch-1");
        let made = vault.new_data_key(&context).await.unwrap();
        let copied = EncryptionContext::card_key_batch("sku-b", "batch-1");
        assert!(matches!(
            vault.unwrap_data_key(&copied, &made.wrapped).await,
            Err(Error::Crypto("encryption context does not match"))
        ));
        assert!(vault.recently_unwrapped(&copied).is_none());
        vault.then(Behaviour::Fail);
        assert!(matches!(
            vault.unwrap_data_key(&context, &made.wrapped).await,
            Err(Error::Upstream { .. })
        ));
        assert!(vault.unwrap_data_key(&context, &made.wrapped).await.is_ok());
    }
}
