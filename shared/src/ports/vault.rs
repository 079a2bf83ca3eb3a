//! The key vault: envelope encryption. The vault makes a fresh data key for one thing
//! to seal and hands back its plaintext (to seal with now) and a wrapped copy (to store
//! beside what it sealed); later it unwraps that copy, but only when presented with the
//! same encryption context, so a wrapped key copied elsewhere is useless.

use std::collections::BTreeMap;

use super::PortFuture;
use crate::domain::crypto::DataKey;

/// Names what a data key protects; bound into the wrapping by the vault.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The data key of one import batch of card keys.
    pub fn card_key_batch(sku: &str, batch_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "card-key-batch".to_owned()),
            ("kami:sku".to_owned(), sku.to_owned()),
            ("kami:batch".to_owned(), batch_id.to_owned()),
        ]))
    }

    /// The data key sealing one payment channel's secrets. Each write of the channel
    /// seals under a new key, named by `seal_id` (a context names exactly one data key:
    /// vaults cache unwrapped keys by context).
    pub fn payment_channel(channel_id: &str, seal_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "payment-channel".to_owned()),
            ("kami:channel".to_owned(), channel_id.to_owned()),
            ("kami:seal".to_owned(), seal_id.to_owned()),
        ]))
    }

    /// The data key sealing one supplier's signing secret, one per write (`seal_id`).
    pub fn supplier(supplier_id: &str, seal_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "supplier".to_owned()),
            ("kami:supplier".to_owned(), supplier_id.to_owned()),
            ("kami:seal".to_owned(), seal_id.to_owned()),
        ]))
    }

    /// The data key sealing one generated license key (`license_id` names exactly one).
    pub fn license(order_id: &str, license_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "license-key".to_owned()),
            ("kami:order".to_owned(), order_id.to_owned()),
            ("kami:license".to_owned(), license_id.to_owned()),
        ]))
    }

    /// The data key sealing one delivered link's token (`link_id` names exactly one).
    pub fn link(order_id: &str, link_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "link-token".to_owned()),
            ("kami:order".to_owned(), order_id.to_owned()),
            ("kami:link".to_owned(), link_id.to_owned()),
        ]))
    }

    /// The data key sealing a link product's signing secret.
    pub fn link_secret(sku: &str, seal_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([
            ("kami:purpose".to_owned(), "link-secret".to_owned()),
            ("kami:sku".to_owned(), sku.to_owned()),
            ("kami:seal".to_owned(), seal_id.to_owned()),
        ]))
    }

    /// The (name, value) pairs, sorted by name.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A fresh data key: the plaintext (zeroized on drop) and the wrapped copy to store.
pub struct NewDataKey {
    pub plaintext: DataKey,
    pub wrapped: Vec<u8>,
}

pub trait KeyVault: Send + Sync {
    /// A new data key for what `context` names.
    fn new_data_key<'a>(&'a self, context: &'a EncryptionContext) -> PortFuture<'a, NewDataKey>;

    /// The plaintext of `wrapped`, if `context` is the one it was made for; otherwise
    /// an error (`Error::Crypto` or the vault's own refusal).
    fn unwrap_data_key<'a>(
        &'a self,
        context: &'a EncryptionContext,
        wrapped: &'a [u8],
    ) -> PortFuture<'a, DataKey>;

    /// A data key this vault unwrapped recently for `context`, without a round trip, so
    /// a caller can skip reading the wrapped copy at all. None by default.
    fn recently_unwrapped(&self, _context: &EncryptionContext) -> Option<DataKey> {
        None
    }
}
