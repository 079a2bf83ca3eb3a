//! The DynamoDB access layer, one module per aggregate. Every read and write Kami makes
//! is a named `Store` method (an access pattern); docs/dynamodb.md lists each with its
//! keys, operation, condition and callers, and every item shape. Multi-item changes are
//! single `TransactWriteItems` calls (`tx`), so no crash can leave half of one written.
//! The store never reads the time: every time it writes (event times, `received_at`,
//! `allocated_at`, the sweep index's due times, TTLs) comes from its caller as `now`,
//! which the use cases read from `ctx.clock` (docs/ports.md, "Clock").
//!
//! - `codec`: attribute values, item keys, `FromItem`
//! - `tx`: transactions whose items have names, and cancellations read by name
//! - `products`: products and their sharded stock counters
//! - `card_keys`: batches, fingerprints, keys in stock, allocation to an order (the
//!   card-key delivery record)
//! - `orders`: orders, their events and delivery records, the sweep's index
//! - `sweep_lease`: the lease that keeps two sweep runs from working at once
//! - `payments`: payment records and webhook dedupe / unmatched records
//! - `holds`: units each client holds in unpaid orders of a product (the hoarding cap)
//! - `idempotency`: `POST /orders` idempotency records
//! - `exceptions`: the exception queue (orders that need a person)
//! - `suppliers`: top-up suppliers and their circuit breakers
//! - `distributors`: distributors, their tree, referral codes, API keys and attributed
//!   orders
//! - `commissions`: the commission ledger, statements and balances
//! - `topups`: an order's top-up requests (its direct-top-up delivery records) and
//!   supplier history

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::KeysAndAttributes;

use crate::error::{Error, Result};

mod api_keys;
mod attempts;
mod audit;
mod backoff;
mod bills;
mod card_keys;
mod channels;
mod codec;
mod commissions;
mod distributors;
mod entitlements;
mod exceptions;
mod holds;
mod idempotency;
mod licenses;
mod links;
mod notifications;
mod orders;
mod payables;
mod payments;
mod products;
mod refunds;
mod subscriptions;
mod suppliers;
mod sweep_lease;
mod topups;
mod tx;

pub use crate::domain::crypto::SealedSecrets;
pub use api_keys::ApiKeyRecord;
pub use attempts::{AttemptRecord, AttemptStatus, RECONCILE_AFTER_SECONDS};
pub use audit::{AuditCursor, AuditEntry, AuditOf, AuditSubject};
pub use bills::{
    ChannelBook, KamiLine, Mismatch, MismatchKind, MismatchRef, RECONCILIATION_MISMATCH,
    REPORT_MISMATCHES, ReconciliationReport,
};
pub use card_keys::{
    AllocateOutcome, BatchRecord, CardKeySlot, SealedKey, StockKey, SubstituteKey, Substituted,
};
pub use channels::ChannelRecord;
pub use codec::Item;
pub use commissions::{
    Balance, CommissionEntry, EntryKind, EntryStatus, SettlementRun, StatementLine, StatementRecord,
};
pub use distributors::{AttributedOrder, DistributorRecord, DistributorSaved};
pub use entitlements::{
    EntitlementRecord, GrantOutcome, GrantSlot, RedeemOutcome, RedemptionRecord,
};
pub use exceptions::{
    ExceptionEntry, ExceptionFilter, ExceptionResolved, PaymentEvent, STOCK_MISMATCH, cursor_key,
    cursor_text,
};
pub use holds::{HoldClaim, HoldRecord};
pub use idempotency::IdempotencyRecord;
pub use licenses::{
    Activation, LicenseInstance, LicenseRecord, LicenseSlot, LicenseState, NewLicense,
};
pub use links::{LinkOpen, LinkRecord, LinkSlot};
pub use notifications::{NotificationClaim, NotificationRecord, NotificationStatus};
pub use orders::{
    Accepted, CreateOrderOutcome, DeliveryRecord, DueCursor, DuePage, DueQueue, OperatorNote,
    OrderEvent, OrderPart, OrderRecord, OrderView, SlotWrite, StockShare,
};
pub use payables::{Payable, SupplierStatement, SupplierStatementClosed};
pub use payments::{
    DUPLICATE_PAYMENT, PaymentApplied, PaymentChange, PaymentRecord, REPEAT_NOTIFICATION,
    Unmatched, UnmatchedPayment,
};
pub use refunds::{RefundRecord, RefundReserved, RefundSettlement, RefundStatus};
pub use subscriptions::SubscriptionRecord;
pub use suppliers::SupplierRecord;
pub use sweep_lease::SweepLease;
pub use topups::{
    OpenAttempt, SupplierLogEntry, TopUpAttempt, TopUpChange, TopUpStatus, parse_topup_request_id,
    topup_request_id,
};

use codec::{FromItem, key_item};

/// The sparse GSI (`gsi1pk` S, `gsi1sk` N, keys only) over due pending orders and
/// paid-but-undelivered orders. The table's name is configuration (`KAMI_TABLE`).
const ORDER_INDEX: &str = "gsi1";
/// The sparse GSI of the exception queue (`gsi2pk` S, `gsi2sk` N: when the order began
/// to need a person, Unix ms; it projects what a listing shows).
const EXCEPTION_INDEX: &str = "gsi2";
/// The sparse GSI of the audit trail by actor (`gsi3pk` S = `AUDITBY#{actor}`, `gsi3sk`
/// S = the entry's ULID; projects everything: an entry is small and never changes). Other
/// sparse listings share it under their own `gsi3pk` prefixes (commissions, statements,
/// a channel's book of payments and refunds: `store/bills.rs`).
const AUDIT_INDEX: &str = "gsi3";

/// Available card keys of a product are spread over this many partitions so that
/// concurrent deliveries rarely pick the same key.
pub const STOCK_SHARDS: u32 = 8;
/// A product's stock counts are spread over this many counter items, each its own
/// partition, so one SKU's flash sale is not limited to one item's write throughput.
/// Fixed for the life of the table: changing it strands counts in the old counters.
pub const COUNTER_SHARDS: u32 = 8;
/// Sparse GSI partitions for due pending orders and paid-but-undelivered orders.
pub const INDEX_SHARDS: u32 = 8;
/// A paid order not delivered this long after payment is re-queued by the sweep.
pub const STUCK_AFTER_SECONDS: i64 = 120;
/// A `delivering` order (a supplier working on it) is re-queued this often, to ask the
/// supplier about requests pending or unknown (the every-minute sweep runs it).
pub const POLL_SUPPLIER_AFTER_SECONDS: i64 = 60;
/// A `delivery_failed` order is re-queued by the sweep this often until it is delivered.
pub const FAILED_RETRY_AFTER_SECONDS: i64 = 900;
/// The longest a sweep run holds its lease: Lambda's longest timeout (15 minutes) and a
/// minute. A lease ending further ahead than this was taken on a clock since moved back.
pub const SWEEP_LEASE_MAX_MS: i64 = 960_000;
/// How far apart two runs' clocks may be: a lease is judged dated by a clock moved back
/// only beyond `SWEEP_LEASE_MAX_MS` and this. Without it, a run whose clock read a few
/// milliseconds earlier took the lease of a run holding it for the longest time.
pub const LEASE_CLOCK_SKEW_MS: i64 = 60_000;

pub struct Store {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl Store {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Store { client, table }
    }

    async fn get(&self, key: (String, String), consistent: bool) -> Result<Option<Item>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(key)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(output.item)
    }

    async fn get_as<T: FromItem>(
        &self,
        key: (String, String),
        consistent: bool,
    ) -> Result<Option<T>> {
        self.get(key, consistent)
            .await?
            .map(|item| T::from_item(&item))
            .transpose()
    }

    /// Writes a new item; false if an item with its key already exists.
    async fn put_if_absent(&self, item: Item) -> Result<bool> {
        self.put_if(item, "attribute_not_exists(pk)", Vec::new())
            .await
    }

    /// Writes `item` if `condition` holds (with `values`); false if it does not.
    async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
    ) -> Result<bool> {
        self.put_if_named(item, condition, &[], values).await
    }

    /// As `put_if`, with attribute `names` (`#status` for the reserved word `status`).
    async fn put_if_named(
        &self,
        item: Item,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
    ) -> Result<bool> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names((!names.is_empty()).then(|| {
                names
                    .iter()
                    .map(|(name, attribute)| ((*name).to_owned(), (*attribute).to_owned()))
                    .collect()
            }))
            .set_expression_attribute_values((!values.is_empty()).then(|| {
                values
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect()
            }))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Creates `item` (`read_at` None) or replaces it if its `updated_at` is still
    /// `read_at`, in one transaction with the audit record of the change: the record's
    /// `before` is what was read, so a put that raced another is `Contention` (read
    /// again). True when it was created.
    async fn put_audited(
        &self,
        name: tx::ItemName,
        item: Item,
        read_at: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.tx();
        match read_at {
            None => tx.put(name, item, Some("attribute_not_exists(pk)"))?,
            Some(at) => tx.put_if(
                name,
                item,
                Some("updated_at = :read"),
                vec![(":read", codec::s(at))],
            )?,
        };
        tx.audit(audit)?;
        match self.transact(tx).await? {
            tx::TxOutcome::Committed => Ok(read_at.is_none()),
            tx::TxOutcome::Cancelled(_) => Err(Error::Contention("item changed meanwhile")),
        }
    }

    /// The ids of `gsi1` partition `partition` due by `due_by` (gsi1sk ≤ its Unix
    /// seconds), soonest first, at most `limit`: each item's `pk` without `pk_prefix`
    /// (the index projects keys only).
    async fn due_in_gsi1(
        &self,
        partition: &str,
        due_by: crate::domain::time::Timestamp,
        limit: i32,
        pk_prefix: &str,
    ) -> Result<Vec<String>> {
        let output = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :due")
            .expression_attribute_values(":pk", codec::s(partition))
            .expression_attribute_values(":due", codec::n(due_by.unix_seconds()))
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        output
            .items()
            .iter()
            .map(|found| {
                codec::get_s(found, "pk").and_then(|pk| {
                    pk.strip_prefix(pk_prefix)
                        .map(str::to_owned)
                        .ok_or_else(|| Error::Corrupt(format!("{pk} in gsi1 {partition}")))
                })
            })
            .collect()
    }

    /// Every item of the partition `pk` (every page), read as `T`.
    async fn partition_as<T: FromItem>(&self, pk: &str) -> Result<Vec<T>> {
        let query = self
            .query()
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", codec::s(pk));
        self.query_all(query)
            .await?
            .iter()
            .map(T::from_item)
            .collect()
    }

    /// The items at `keys` (at most 100), every one DynamoDB leaves unprocessed asked
    /// again after a backoff (they are throttled keys). Missing items are left out.
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        consistent: bool,
        what: &'static str,
    ) -> Result<Vec<Item>> {
        let mut pending = Some(built(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build(),
        )?);
        let mut items = Vec::new();
        let mut attempt = 0;
        while let Some(request) = pending.take() {
            if attempt > 0 {
                backoff::before_retry(attempt, what).await?;
            }
            attempt += 1;
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            if let Some(found) = output.responses().and_then(|r| r.get(&self.table)) {
                items.extend(found.iter().cloned());
            }
            pending = output
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .cloned();
        }
        Ok(items)
    }

    /// The records at `keys`, any number, read in BatchGetItem chunks of 100 (strongly
    /// consistent); missing ones are left out.
    async fn records_at<T: FromItem>(&self, keys: Vec<Item>, what: &'static str) -> Result<Vec<T>> {
        let mut records = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            for found in self.batch_get(chunk.to_vec(), true, what).await? {
                records.push(T::from_item(&found)?);
            }
        }
        Ok(records)
    }

    /// Every record `query` finds on a keys-only index, read from the table.
    async fn indexed_as<T: FromItem>(
        &self,
        query: QueryFluentBuilder,
        what: &'static str,
    ) -> Result<Vec<T>> {
        let keys: Vec<Item> = self
            .query_all(query)
            .await?
            .into_iter()
            .filter_map(|found| {
                Some(Item::from([
                    ("pk".to_owned(), found.get("pk")?.clone()),
                    ("sk".to_owned(), found.get("sk")?.clone()),
                ]))
            })
            .collect();
        self.records_at(keys, what).await
    }

    /// A query on the table.
    fn query(&self) -> QueryFluentBuilder {
        self.client.query().table_name(&self.table)
    }

    /// Every page of a query.
    async fn query_all(&self, query: QueryFluentBuilder) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let output = query
                .clone()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            items.extend(output.items().iter().cloned());
            match output.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(items),
            }
        }
    }
}

/// One page of a listing: its items, and the text of the key the next page starts
/// after (`None` at the end). The text is what `app::page` turns into a client's cursor.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A `LastEvaluatedKey` as text (its string and number attributes, as JSON).
fn key_text(key: &Item) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .iter()
        .filter_map(|(name, value)| match value {
            aws_sdk_dynamodb::types::AttributeValue::S(text) => {
                Some((name.clone(), serde_json::json!({ "S": text })))
            }
            aws_sdk_dynamodb::types::AttributeValue::N(number) => {
                Some((name.clone(), serde_json::json!({ "N": number })))
            }
            _ => None,
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The key `key_text` wrote, if it is one in the partition `partition` (attribute,
/// value): a cursor can never move a listing into another partition.
fn text_key(text: &str, (attribute, value): (&str, &str)) -> Option<Item> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let mut key = Item::new();
    for (name, typed) in map {
        let attribute_value = match (typed.get("S"), typed.get("N")) {
            (Some(serde_json::Value::String(text)), None) => {
                aws_sdk_dynamodb::types::AttributeValue::S(text.clone())
            }
            (None, Some(serde_json::Value::String(number))) if number.parse::<i64>().is_ok() => {
                aws_sdk_dynamodb::types::AttributeValue::N(number.clone())
            }
            _ => return None,
        };
        key.insert(name, attribute_value);
    }
    let in_partition = matches!(key.get(attribute),
        Some(aws_sdk_dynamodb::types::AttributeValue::S(v)) if v == value);
    (in_partition && key.len() <= 4).then_some(key)
}

impl Store {
    /// One page of `query` (its key condition on `partition`), from after `after` (a
    /// `Page::next` text; `Error::InvalidRequest` with `invalid_query` for anything else).
    async fn page(
        &self,
        query: QueryFluentBuilder,
        partition: (&str, &str),
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page<Item>> {
        let start = after
            .map(|text| {
                text_key(text, partition).ok_or_else(|| {
                    Error::invalid_field(
                        "invalid_query",
                        "cursor",
                        "cursor is not one this listing gave",
                    )
                })
            })
            .transpose()?;
        let output = query
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(Page {
            items: output.items().to_vec(),
            next: output.last_evaluated_key().map(key_text),
        })
    }
}

fn built<T>(result: std::result::Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T> {
    result.map_err(|e| Error::Corrupt(format!("request build: {e}")))
}

/// True when a write was refused by its condition expression.
fn condition_failed<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
        == Some("ConditionalCheckFailedException")
}

fn shard_of(id: &str, shards: u32) -> u32 {
    // FNV-1a: a stable spread of ids over shards (not security relevant).
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, byte| {
        (h ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shards_spread_and_stay_in_range() {
        let mut seen = HashSet::new();
        for i in 0..200 {
            let shard = shard_of(&format!("01ID{i}"), STOCK_SHARDS);
            assert!(shard < STOCK_SHARDS);
            seen.insert(shard);
        }
        assert_eq!(seen.len(), STOCK_SHARDS as usize);
        assert_eq!(shard_of("same", 8), shard_of("same", 8));
    }
}
