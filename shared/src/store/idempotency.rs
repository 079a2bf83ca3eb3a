//! Idempotency records: a client's `Idempotency-Key` (stored only as its SHA-256),
//! claimed in the transaction that creates what it names, and read back on a retry.

use super::Store;
use super::codec::{FromItem, Item, get_s, item, keys, n, s};
use crate::domain::time::Timestamp;
use crate::error::Result;

const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub order_id: String,
}

impl FromItem for IdempotencyRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(IdempotencyRecord {
            request_hash: get_s(item, "request_hash")?,
            order_id: get_s(item, "order_id")?,
        })
    }
}

/// The record claiming `key` in `scope` for `order_id`, kept for a day.
pub(super) fn idempotency_item(
    scope: &str,
    key: &str,
    request_hash: &str,
    order_id: &str,
    now: Timestamp,
) -> Item {
    item(
        keys::idempotency(scope, key),
        "idempotency",
        [
            ("request_hash", s(request_hash)),
            ("order_id", s(order_id)),
            ("ttl", n(now.unix_seconds() + IDEMPOTENCY_TTL_SECONDS)),
        ],
    )
}

impl Store {
    /// Access pattern: an idempotency record by scope and client key.
    pub async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        self.get_as(keys::idempotency(scope, key), true).await
    }
}
