//! Merchant API keys (docs/dynamodb.md, "Merchant API keys"): one item per key in the
//! `APIKEYS#merchant` partition (the admin's list) and one found by the key's SHA-256
//! (`APIKEY#{hash}`, what a request's key is checked against), written and revoked
//! together in one transaction with the action's audit record. The key itself is never
//! stored.

use super::Store;
use super::codec::{FromItem, Item, get_opt_s, get_s, item, key_item, s};
use super::tx::{ItemName, TxOutcome};
use crate::error::{Error, Result};
use crate::store::AuditEntry;

const LIST_PK: &str = "APIKEYS#merchant";

fn listed_key(api_key_id: &str) -> (String, String) {
    (LIST_PK.into(), format!("KEY#{api_key_id}"))
}
fn hash_key(key_hash: &str) -> (String, String) {
    (format!("APIKEY#{key_hash}"), "APIKEY".into())
}

/// A merchant API key as stored (both items hold the same attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub api_key_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub key_hash: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl FromItem for ApiKeyRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(ApiKeyRecord {
            api_key_id: get_s(item, "api_key_id")?,
            name: get_s(item, "name")?,
            scopes: get_s(item, "scopes")?
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            key_hash: get_s(item, "key_hash")?,
            created_at: get_s(item, "created_at")?,
            revoked_at: get_opt_s(item, "revoked_at"),
        })
    }
}

impl Store {
    /// Access pattern: a new key's two items and its audit record, in one transaction.
    pub async fn create_api_key(&self, key: &ApiKeyRecord, audit: &AuditEntry) -> Result<()> {
        let attributes = || {
            [
                ("api_key_id", s(&key.api_key_id)),
                ("name", s(&key.name)),
                ("scopes", s(key.scopes.join(" "))),
                ("key_hash", s(&key.key_hash)),
                ("created_at", s(&key.created_at)),
            ]
        };
        let mut tx = self.tx();
        tx.put(
            ItemName::ApiKey,
            item(listed_key(&key.api_key_id), "merchant_key", attributes()),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.put(
            ItemName::ApiKeyHash,
            item(hash_key(&key.key_hash), "merchant_key", attributes()),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.audit(audit)?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(()),
            // Fresh random ids and keys: a collision is not expected; retried as busy.
            TxOutcome::Cancelled(_) => Err(Error::Contention("api key")),
        }
    }

    /// Access pattern: every merchant key, oldest first (one Query; keys are few).
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.partition_as(LIST_PK).await
    }

    /// Access pattern: one key by its id (the admin's list item).
    pub async fn api_key(&self, api_key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.get_as(listed_key(api_key_id), true).await
    }

    /// Access pattern: the key a request presents, by its SHA-256.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        self.get_as(hash_key(key_hash), true).await
    }

    /// Access pattern: revoke a key (both items) with its audit record, only if it is not
    /// revoked already. False when it was.
    pub async fn revoke_api_key(
        &self,
        key: &ApiKeyRecord,
        at: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.tx();
        for (name, at_key) in [
            (ItemName::ApiKey, listed_key(&key.api_key_id)),
            (ItemName::ApiKeyHash, hash_key(&key.key_hash)),
        ] {
            tx.update(
                name,
                key_item(at_key),
                "SET revoked_at = :at",
                Some("attribute_exists(pk) AND attribute_not_exists(revoked_at)"),
                &[],
                vec![(":at", s(at))],
            )?;
        }
        tx.audit(audit)?;
        Ok(self.transact(tx).await?.committed())
    }
}
