//! Idempotency records: a client's `Idempotency-Key` (stored only as an HMAC),
//! claimed in the transaction that creates what it names, and read back on a retry.

use super::Store;
use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, item, keys, n, s};
use crate::domain::time::Timestamp;
use crate::error::Result;

const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub order_id: String,
    /// The claiming client's source address, as its HMAC (absent on older records).
    pub source: Option<String>,
    /// When the key was claimed, unix seconds (absent on older records).
    pub created: Option<i64>,
    /// The payment attempt a `POST /orders/{id}/payments` key made.
    pub payment_id: Option<String>,
}

impl FromItem for IdempotencyRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(IdempotencyRecord {
            request_hash: get_s(item, "request_hash")?,
            order_id: get_s(item, "order_id")?,
            source: get_opt_s(item, "source"),
            created: item
                .get("created")
                .map(|_| get_n(item, "created"))
                .transpose()?,
            payment_id: get_opt_s(item, "payment_id"),
        })
    }
}

/// The record claiming `key` in `scope` for `order_id`, kept for a day.
pub(super) fn idempotency_item(
    scope: &str,
    key: &str,
    source: &str,
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
            ("source", s(source)),
            ("created", n(now.unix_seconds())),
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

    /// Access pattern: claim a `POST /orders/{id}/payments` key for the attempt it
    /// opened (PutItem if absent); false if another request claimed it first.
    pub async fn claim_payment_key(
        &self,
        key: &str,
        request_hash: &str,
        order_id: &str,
        payment_id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let mut claim = idempotency_item("payments", key, "", request_hash, order_id, now);
        claim.insert("payment_id".to_owned(), s(payment_id));
        self.put_if_absent(claim).await
    }
}
