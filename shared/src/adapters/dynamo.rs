//! The one DynamoDB access layer. Every read and write Kami makes is a named method
//! here (an access pattern); docs/dynamodb.md describes the table, its keys, the GSI and
//! each item shape. Multi-item changes are single `TransactWriteItems` calls, so no
//! crash can leave half of one written.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};

use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::product::{DeliveryType, Product, Stock};
use crate::domain::time::{Timestamp, new_id};
use crate::error::{ConflictKind, Error, Result};

pub type Item = HashMap<String, AttributeValue>;

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
/// A `delivery_failed` order is re-queued by the sweep this often until it is delivered.
pub const FAILED_RETRY_AFTER_SECONDS: i64 = 900;
const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;
const WEBHOOK_TTL_SECONDS: i64 = 30 * 24 * 3600;

mod keys {
    pub fn product(sku: &str) -> (String, String) {
        (format!("PRODUCT#{sku}"), "PRODUCT".into())
    }
    pub fn stock_counter(sku: &str, shard: u32) -> (String, String) {
        (format!("STOCKCOUNT#{sku}#{shard}"), "COUNTER".into())
    }
    pub fn batch(batch_id: &str) -> (String, String) {
        (format!("BATCH#{batch_id}"), "BATCH".into())
    }
    pub fn stock_partition(sku: &str, shard: u32) -> String {
        format!("STOCK#{sku}#{shard}")
    }
    pub fn stock_key(key_id: &str) -> String {
        format!("KEY#{key_id}")
    }
    pub fn fingerprint(fp: &str) -> (String, String) {
        (format!("FINGERPRINT#{fp}"), "FINGERPRINT".into())
    }
    pub fn order_partition(order_id: &str) -> String {
        format!("ORDER#{order_id}")
    }
    pub const ORDER_SK: &str = "ORDER";
    pub fn order(order_id: &str) -> (String, String) {
        (order_partition(order_id), ORDER_SK.into())
    }
    pub fn event_sk(event_id: &str) -> String {
        format!("EVENT#{event_id}")
    }
    pub fn delivery_sk(slot: u32) -> String {
        format!("DELIVERY#{slot:03}")
    }
    pub fn payment_sk(provider: &str, event_id: &str) -> String {
        format!("PAYMENT#{provider}#{event_id}")
    }
    pub fn webhook(provider: &str, event_id: &str) -> (String, String) {
        (format!("WEBHOOK#{provider}#{event_id}"), "WEBHOOK".into())
    }
    /// Clients' idempotency keys are stored only as hashes (a replay reveals a token).
    pub fn idempotency(scope: &str, key: &str) -> (String, String) {
        let hashed = crate::domain::crypto::sha256_hex(key.as_bytes());
        (
            format!("IDEMPOTENCY#{scope}#{hashed}"),
            "IDEMPOTENCY".into(),
        )
    }
    pub fn pending_index(shard: u32) -> String {
        format!("PENDING#{shard}")
    }
    pub fn paid_index(shard: u32) -> String {
        format!("PAID#{shard}")
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn b(value: Vec<u8>) -> AttributeValue {
    AttributeValue::B(Blob::new(value))
}

fn key_item((pk, sk): (String, String)) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s(item: &Item, name: &str) -> Result<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(Error::Corrupt(format!("item has no string {name}"))),
    }
}

fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_n(item: &Item, name: &str) -> Result<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| Error::Corrupt(format!("{name} is not an integer"))),
        _ => Err(Error::Corrupt(format!("item has no number {name}"))),
    }
}

fn get_u32(item: &Item, name: &str) -> Result<u32> {
    u32::try_from(get_n(item, name)?).map_err(|_| Error::Corrupt(format!("{name} out of range")))
}

fn get_b(item: &Item, name: &str) -> Result<Vec<u8>> {
    match item.get(name) {
        Some(AttributeValue::B(v)) => Ok(v.clone().into_inner()),
        _ => Err(Error::Corrupt(format!("item has no binary {name}"))),
    }
}

fn shard_of(id: &str, shards: u32) -> u32 {
    // FNV-1a: a stable spread of ids over shards (not security relevant).
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, byte| {
        (h ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % shards
}

fn built<T>(result: std::result::Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T> {
    result.map_err(|e| Error::Corrupt(format!("request build: {e}")))
}

/// Names used in expressions; `#status`, `#ttl` and friends avoid DynamoDB's reserved
/// words. `None` when there are none: DynamoDB rejects an empty map.
fn names(list: &[&str]) -> Option<HashMap<String, String>> {
    (!list.is_empty()).then(|| {
        list.iter()
            .map(|name| (format!("#{name}"), (*name).to_owned()))
            .collect()
    })
}

fn values(list: Vec<(&str, AttributeValue)>) -> Option<HashMap<String, AttributeValue>> {
    (!list.is_empty()).then(|| list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

struct Tx {
    table: String,
    items: Vec<TransactWriteItem>,
}

impl Tx {
    fn new(table: &str) -> Self {
        Tx {
            table: table.to_owned(),
            items: Vec::new(),
        }
    }

    fn put(&mut self, item: Item, condition: Option<&str>) -> Result<&mut Self> {
        let put = built(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .set_condition_expression(condition.map(str::to_owned))
                .build(),
        )?;
        self.items
            .push(TransactWriteItem::builder().put(put).build());
        Ok(self)
    }

    fn update(
        &mut self,
        key: Item,
        expression: &str,
        condition: Option<&str>,
        attribute_names: &[&str],
        attribute_values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let update = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(expression)
                .set_condition_expression(condition.map(str::to_owned))
                .set_expression_attribute_names(names(attribute_names))
                .set_expression_attribute_values(values(attribute_values))
                .build(),
        )?;
        self.items
            .push(TransactWriteItem::builder().update(update).build());
        Ok(self)
    }

    fn delete(&mut self, key: Item, condition: &str) -> Result<&mut Self> {
        let delete = built(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .build(),
        )?;
        self.items
            .push(TransactWriteItem::builder().delete(delete).build());
        Ok(self)
    }

    fn check(
        &mut self,
        key: Item,
        condition: &str,
        attribute_names: &[&str],
        attribute_values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let check = built(
            ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .set_expression_attribute_names(names(attribute_names))
                .set_expression_attribute_values(values(attribute_values))
                .build(),
        )?;
        self.items
            .push(TransactWriteItem::builder().condition_check(check).build());
        Ok(self)
    }
}

/// How an order's units move between a stock counter's columns.
enum StockMove {
    /// available → reserved, only if enough is available.
    Reserve,
    /// reserved → available (an expired order).
    Release,
    /// reserved → sold (a delivered order).
    Sell,
}

impl Tx {
    fn move_stock(&mut self, order: &OrderRecord, movement: StockMove) -> Result<&mut Self> {
        let (expression, condition, columns): (_, _, &[&str]) = match movement {
            StockMove::Reserve => (
                "SET #available = #available - :q, #reserved = #reserved + :q",
                Some("#available >= :q"),
                &["available", "reserved"],
            ),
            StockMove::Release => (
                "SET #available = #available + :q, #reserved = #reserved - :q",
                None,
                &["available", "reserved"],
            ),
            StockMove::Sell => (
                "SET #reserved = #reserved - :q, #sold = #sold + :q",
                None,
                &["reserved", "sold"],
            ),
        };
        self.update(
            key_item(keys::stock_counter(&order.sku, order.stock_shard)),
            expression,
            condition,
            columns,
            vec![(":q", n(order.quantity))],
        )
    }

    /// The one way a transition is written: the order moves `from → to` only if it is
    /// still `from` (and `condition` holds), and its event is appended. `more` continues
    /// the update expression (`, a = :a` or ` REMOVE ...`) with its `names` and `values`.
    #[allow(clippy::too_many_arguments)]
    fn move_order(
        &mut self,
        order_id: &str,
        (from, to, cause): (OrderStatus, OrderStatus, Cause),
        at: &str,
        more: &str,
        condition: Option<&str>,
        names: &[&str],
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let condition = condition.map_or_else(
            || "#status = :from".to_owned(),
            |extra| format!("#status = :from AND {extra}"),
        );
        let mut all_names = vec!["status"];
        all_names.extend_from_slice(names);
        values.extend([
            (":to", s(to.as_str())),
            (":from", s(from.as_str())),
            (":at", s(at)),
        ]);
        self.update(
            key_item(keys::order(order_id)),
            &format!("SET #status = :to, updated_at = :at{more}"),
            Some(&condition),
            &all_names,
            values,
        )?;
        self.put(event_item(order_id, Some(from), to, cause, at), None)
    }
}

/// How a transaction ended. `Cancelled` lists, per item in order, whether its
/// condition failed.
#[derive(Debug)]
enum TxOutcome {
    Committed,
    Cancelled(Vec<bool>),
}

const CONFLICT_RETRIES: u32 = 8;
const RETRYABLE_CANCELLATIONS: &[&str] = &[
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// The order as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    /// The stock counter shard this order's quantity was reserved on.
    pub stock_shard: u32,
    pub amount: Money,
    pub status: OrderStatus,
    pub buyer_email: String,
    pub token_hash: String,
    pub created_at: String,
    pub expires_at: Timestamp,
    pub updated_at: String,
    pub payment_ref: Option<String>,
    pub exception: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OrderEvent {
    pub at: String,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub cause: String,
}

#[derive(Debug, Clone)]
pub struct DeliverySlot {
    pub slot: u32,
    pub key_id: String,
    pub batch_id: String,
    pub sku: String,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct PaymentRecord {
    pub provider: String,
    pub event_id: String,
    pub amount: Money,
    pub provider_ref: String,
    pub outcome: String,
    pub received_at: String,
}

/// Everything stored under one order's partition.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order: OrderRecord,
    pub events: Vec<OrderEvent>,
    pub deliveries: Vec<DeliverySlot>,
    pub payments: Vec<PaymentRecord>,
}

#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub batch_id: String,
    pub sku: String,
    pub wrapped_key: Vec<u8>,
}

/// A card key ready to store: sealed, fingerprinted, with its stock shard.
pub struct SealedKey {
    pub key_id: String,
    pub fingerprint: String,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StockKey {
    pub key_id: String,
    pub batch_id: String,
    pub sealed: Vec<u8>,
    partition: String,
}

#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub order_id: String,
}

pub enum CreateOrderOutcome {
    Created,
    /// Another request with the same key got there first.
    KeyTaken,
}

pub enum AllocateOutcome {
    Allocated,
    /// The chosen key was taken by another delivery: pick another.
    KeyGone,
    /// This slot was filled by another worker: re-read the slots.
    SlotFilled,
    /// The order is no longer waiting for delivery.
    NotPayable,
}

/// What a payment notification does to an order, decided by the use case from the
/// order's current state and applied here atomically.
pub struct PaymentChange<'a> {
    pub provider: &'a str,
    pub event_id: &'a str,
    pub provider_ref: &'a str,
    pub amount: &'a Money,
    pub outcome: &'a str,
    /// `Some((from, to, cause))` to move the order; `None` to only record the payment.
    pub transition: Option<(OrderStatus, OrderStatus, Cause)>,
    /// Reserve the order's quantity again on its stock counter (a late payment for an
    /// expired order); the whole change fails with `NoStock` if it is not there.
    pub reserve_stock: bool,
}

/// A verified notification that matches no order.
pub struct Unmatched<'a> {
    /// `unknown_order` or `unbound_event`.
    pub outcome: &'a str,
    pub kind: &'a str,
    pub claimed_order_id: Option<&'a str>,
    pub amount: Option<&'a Money>,
}

pub enum PaymentApplied {
    Applied,
    /// `reserve_stock` was asked and the stock is gone.
    NoStock,
    /// The event id was seen before.
    Duplicate,
    /// The order changed state meanwhile: decide again.
    Raced,
}

pub struct Store {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl Store {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Store { client, table }
    }

    async fn transact(&self, tx: Tx) -> Result<TxOutcome> {
        let count = tx.items.len();
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(tx.items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(TxOutcome::Committed),
                Err(err) => err,
            };
            let reasons = match &err {
                SdkError::ServiceError(service) => match service.err() {
                    TransactWriteItemsError::TransactionCanceledException(cancel) => Some(
                        cancel
                            .cancellation_reasons()
                            .iter()
                            .map(|r| r.code().unwrap_or("None").to_owned())
                            .collect::<Vec<_>>(),
                    ),
                    TransactWriteItemsError::TransactionInProgressException(_) => {
                        Some(vec!["TransactionConflict".to_owned()])
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some(reasons) = reasons else {
                return Err(Error::aws("dynamodb", err));
            };
            if reasons.iter().any(|code| code == "ConditionalCheckFailed") {
                let mut failed = vec![false; count];
                for (slot, code) in failed.iter_mut().zip(&reasons) {
                    *slot = code == "ConditionalCheckFailed";
                }
                return Ok(TxOutcome::Cancelled(failed));
            }
            // Conflicts with concurrent transactions and throttling pass: retry those.
            // Anything else (validation, item collection size) will not: report it.
            if !reasons
                .iter()
                .any(|code| RETRYABLE_CANCELLATIONS.contains(&code.as_str()))
            {
                return Err(Error::Aws {
                    service: "dynamodb",
                    message: format!("transaction cancelled: {reasons:?}"),
                });
            }
            attempt += 1;
            if attempt > CONFLICT_RETRIES {
                return Err(Error::Contention("transaction"));
            }
            let jitter = u64::from(rand::random::<u8>() % 20);
            tokio::time::sleep(std::time::Duration::from_millis(
                (5u64 << attempt.min(6)) + jitter,
            ))
            .await;
        }
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
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
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

    // ---------- products ----------

    /// Access pattern: get a product by sku (without its stock counts).
    pub async fn get_product(&self, sku: &str, consistent: bool) -> Result<Option<Product>> {
        self.get_as(keys::product(sku), consistent).await
    }

    /// Access pattern: a product's stock, per counter shard (one BatchGetItem).
    pub async fn stock_shards(&self, sku: &str, consistent: bool) -> Result<Vec<(u32, Stock)>> {
        let keys: Vec<Item> = (0..COUNTER_SHARDS)
            .map(|shard| key_item(keys::stock_counter(sku, shard)))
            .collect();
        let mut pending = Some(built(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build(),
        )?);
        let mut shards = Vec::with_capacity(COUNTER_SHARDS as usize);
        while let Some(request) = pending.take() {
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            for item in output
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                shards.push((
                    get_u32(item, "shard")?,
                    Stock {
                        available: get_n(item, "available")?,
                        reserved: get_n(item, "reserved")?,
                        sold: get_n(item, "sold")?,
                    },
                ));
            }
            pending = output
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .cloned();
        }
        shards.sort_by_key(|(shard, _)| *shard);
        Ok(shards)
    }

    /// A product's total stock over its counter shards.
    pub async fn stock(&self, sku: &str, consistent: bool) -> Result<Stock> {
        Ok(self.stock_shards(sku, consistent).await?.into_iter().fold(
            Stock::default(),
            |total, (_, shard)| Stock {
                available: total.available + shard.available,
                reserved: total.reserved + shard.reserved,
                sold: total.sold + shard.sold,
            },
        ))
    }

    /// Access pattern: create a product and its zeroed stock counters in one
    /// transaction; an existing sku is a conflict.
    pub async fn create_product(&self, product: &Product) -> Result<()> {
        let mut item = key_item(keys::product(&product.sku));
        item.extend([
            ("entity".to_owned(), s("product")),
            ("sku".to_owned(), s(&product.sku)),
            ("title".to_owned(), s(&product.title)),
            ("price_amount".to_owned(), n(product.price.amount)),
            ("currency".to_owned(), s(&product.price.currency)),
            ("delivery_type".to_owned(), s(product.delivery.as_str())),
            ("max_per_order".to_owned(), n(product.max_per_order)),
            ("created_at".to_owned(), s(&product.created_at)),
        ]);
        let mut tx = Tx::new(&self.table);
        tx.put(item, Some("attribute_not_exists(pk)"))?;
        for shard in 0..COUNTER_SHARDS {
            let mut counter = key_item(keys::stock_counter(&product.sku, shard));
            counter.extend([
                ("entity".to_owned(), s("stock_counter")),
                ("shard".to_owned(), n(shard)),
                ("available".to_owned(), n(0)),
                ("reserved".to_owned(), n(0)),
                ("sold".to_owned(), n(0)),
            ]);
            tx.put(counter, Some("attribute_not_exists(pk)"))?;
        }
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(()),
            TxOutcome::Cancelled(_) => Err(Error::Conflict(ConflictKind::ProductExists)),
        }
    }

    // ---------- card-key import ----------

    /// Access pattern: store a batch's wrapped data key before any of its keys.
    pub async fn put_batch(&self, batch: &BatchRecord, created_at: &str) -> Result<()> {
        let mut item = key_item(keys::batch(&batch.batch_id));
        item.extend([
            ("entity".to_owned(), s("batch")),
            ("batch_id".to_owned(), s(&batch.batch_id)),
            ("sku".to_owned(), s(&batch.sku)),
            ("wrapped_key".to_owned(), b(batch.wrapped_key.clone())),
            ("created_at".to_owned(), s(created_at)),
        ]);
        if self.put_if_absent(item).await? {
            Ok(())
        } else {
            Err(Error::Corrupt("batch id already exists".into()))
        }
    }

    /// Access pattern: get a batch (its wrapped data key).
    pub async fn get_batch(&self, batch_id: &str) -> Result<Option<BatchRecord>> {
        self.get_as(keys::batch(batch_id), false).await
    }

    /// Access pattern: add up to 49 sealed keys to a product's stock in one
    /// transaction: each key's fingerprint claimed (fails if already anywhere in the
    /// inventory), the key stored in its stock partition, and one stock counter's
    /// available count raised by the same number. Returns the indices whose
    /// fingerprint exists.
    pub async fn add_stock(
        &self,
        sku: &str,
        batch_id: &str,
        keys_to_add: &[&SealedKey],
        counter_shard: u32,
        created_at: &str,
    ) -> Result<Vec<usize>> {
        let mut tx = Tx::new(&self.table);
        for key in keys_to_add {
            let mut fingerprint = key_item(keys::fingerprint(&key.fingerprint));
            fingerprint.extend([
                ("entity".to_owned(), s("fingerprint")),
                ("sku".to_owned(), s(sku)),
                ("key_id".to_owned(), s(&key.key_id)),
            ]);
            tx.put(fingerprint, Some("attribute_not_exists(pk)"))?;
            let mut stock = HashMap::from([
                (
                    "pk".to_owned(),
                    s(keys::stock_partition(
                        sku,
                        shard_of(&key.key_id, STOCK_SHARDS),
                    )),
                ),
                ("sk".to_owned(), s(keys::stock_key(&key.key_id))),
            ]);
            stock.extend([
                ("entity".to_owned(), s("stock_key")),
                ("key_id".to_owned(), s(&key.key_id)),
                ("batch_id".to_owned(), s(batch_id)),
                ("sealed".to_owned(), b(key.sealed.clone())),
                ("created_at".to_owned(), s(created_at)),
            ]);
            tx.put(stock, Some("attribute_not_exists(pk)"))?;
        }
        tx.update(
            key_item(keys::stock_counter(sku, counter_shard % COUNTER_SHARDS)),
            "SET #available = #available + :count",
            Some("attribute_exists(pk)"),
            &["available"],
            vec![(":count", n(keys_to_add.len()))],
        )?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(Vec::new()),
            TxOutcome::Cancelled(failed) => {
                if failed.last().copied().unwrap_or(false) {
                    return Err(Error::NotFound("product"));
                }
                let duplicates: Vec<usize> = (0..keys_to_add.len())
                    .filter(|i| failed.get(2 * i).copied().unwrap_or(false))
                    .collect();
                if duplicates.is_empty() {
                    // A key id collision (a fresh ULID, so effectively impossible).
                    return Err(Error::Corrupt("stock key id already exists".into()));
                }
                Ok(duplicates)
            }
        }
    }

    // ---------- orders ----------

    /// Access pattern: an idempotency record by scope and client key.
    pub async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        self.get_as(keys::idempotency(scope, key), true).await
    }

    /// Access pattern: create an order. One transaction claims the idempotency key,
    /// reserves stock (fails if not enough is available), stores the order and its
    /// first event.
    pub async fn create_order(
        &self,
        order: &OrderRecord,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<CreateOrderOutcome> {
        let now = Timestamp::now();
        let mut tx = Tx::new(&self.table);
        let mut idem = key_item(keys::idempotency("orders", idempotency_key));
        idem.extend([
            ("entity".to_owned(), s("idempotency")),
            ("request_hash".to_owned(), s(request_hash)),
            ("order_id".to_owned(), s(&order.order_id)),
            (
                "ttl".to_owned(),
                n(now.unix_seconds() + IDEMPOTENCY_TTL_SECONDS),
            ),
        ]);
        tx.put(idem, Some("attribute_not_exists(pk)"))?;
        tx.move_stock(order, StockMove::Reserve)?;
        let mut item = order_item(order);
        item.insert(
            "gsi1pk".to_owned(),
            s(keys::pending_index(shard_of(&order.order_id, INDEX_SHARDS))),
        );
        item.insert("gsi1sk".to_owned(), n(order.expires_at.unix_seconds()));
        tx.put(item, Some("attribute_not_exists(pk)"))?;
        tx.put(
            event_item(
                &order.order_id,
                None,
                order.status,
                Cause::Created,
                &order.created_at,
            ),
            None,
        )?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(CreateOrderOutcome::Created),
            TxOutcome::Cancelled(failed) if failed.first().copied().unwrap_or(false) => {
                Ok(CreateOrderOutcome::KeyTaken)
            }
            TxOutcome::Cancelled(_) => Err(Error::Conflict(ConflictKind::OutOfStock)),
        }
    }

    /// Access pattern: one order item (strongly consistent).
    pub async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        self.get_as(keys::order(order_id), true).await
    }

    /// Access pattern: an order with its events, deliveries and payments (one Query).
    pub async fn get_order_view(&self, order_id: &str) -> Result<Option<OrderView>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(keys::order_partition(order_id)));
        let items = self.query_all(query).await?;
        let mut order = None;
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        let mut payments = Vec::new();
        for item in &items {
            let sk = get_s(item, "sk")?;
            if sk == keys::ORDER_SK {
                order = Some(OrderRecord::from_item(item)?);
            } else if sk.starts_with("EVENT#") {
                events.push(OrderEvent {
                    at: get_s(item, "at")?,
                    from: get_opt_s(item, "from")
                        .map(|f| OrderStatus::parse(&f))
                        .transpose()?,
                    to: OrderStatus::parse(&get_s(item, "to")?)?,
                    cause: get_s(item, "cause")?,
                });
            } else if sk.starts_with("DELIVERY#") {
                deliveries.push(DeliverySlot::from_item(item)?);
            } else if sk.starts_with("PAYMENT#") {
                payments.push(PaymentRecord {
                    provider: get_s(item, "provider")?,
                    event_id: get_s(item, "event_id")?,
                    amount: Money {
                        amount: get_n(item, "amount")?,
                        currency: get_s(item, "currency")?,
                    },
                    provider_ref: get_s(item, "provider_ref")?,
                    outcome: get_s(item, "outcome")?,
                    received_at: get_s(item, "received_at")?,
                });
            }
        }
        Ok(order.map(|order| OrderView {
            order,
            events,
            deliveries,
            payments,
        }))
    }

    // ---------- payments ----------

    /// Access pattern: record a payment notification once per provider event id, and
    /// move the order if `change.transition` says so, in one transaction.
    pub async fn apply_payment(
        &self,
        order: &OrderRecord,
        change: &PaymentChange<'_>,
    ) -> Result<PaymentApplied> {
        let now = Timestamp::now();
        let at = now.to_rfc3339();
        let mut tx = Tx::new(&self.table);
        let mut webhook = key_item(keys::webhook(change.provider, change.event_id));
        webhook.extend([
            ("entity".to_owned(), s("webhook")),
            ("order_id".to_owned(), s(&order.order_id)),
            ("outcome".to_owned(), s(change.outcome)),
            ("received_at".to_owned(), s(&at)),
            (
                "ttl".to_owned(),
                n(now.unix_seconds() + WEBHOOK_TTL_SECONDS),
            ),
        ]);
        tx.put(webhook, Some("attribute_not_exists(pk)"))?;
        let mut payment = HashMap::from([
            ("pk".to_owned(), s(keys::order_partition(&order.order_id))),
            (
                "sk".to_owned(),
                s(keys::payment_sk(change.provider, change.event_id)),
            ),
        ]);
        payment.extend([
            ("entity".to_owned(), s("payment")),
            ("provider".to_owned(), s(change.provider)),
            ("event_id".to_owned(), s(change.event_id)),
            ("amount".to_owned(), n(change.amount.amount)),
            ("currency".to_owned(), s(&change.amount.currency)),
            ("provider_ref".to_owned(), s(change.provider_ref)),
            ("outcome".to_owned(), s(change.outcome)),
            ("received_at".to_owned(), s(&at)),
        ]);
        tx.put(payment, None)?;
        match change.transition {
            Some(transition @ (_, to, _)) => {
                // Paid orders join the "stuck if undelivered" index; any other outcome
                // is an exception for an operator and leaves every index.
                if to == OrderStatus::Paid {
                    tx.move_order(
                        &order.order_id,
                        transition,
                        &at,
                        ", payment_ref = :ref, gsi1pk = :gpk, gsi1sk = :gsk",
                        None,
                        &[],
                        vec![
                            (":ref", s(change.provider_ref)),
                            (
                                ":gpk",
                                s(keys::paid_index(shard_of(&order.order_id, INDEX_SHARDS))),
                            ),
                            (":gsk", n(now.unix_seconds() + STUCK_AFTER_SECONDS)),
                        ],
                    )?;
                } else {
                    tx.move_order(
                        &order.order_id,
                        transition,
                        &at,
                        ", payment_ref = :ref, #exception = :exception REMOVE gsi1pk, gsi1sk",
                        None,
                        &["exception"],
                        vec![
                            (":ref", s(change.provider_ref)),
                            (":exception", s(change.outcome)),
                        ],
                    )?;
                }
            }
            None => {
                tx.check(
                    key_item(keys::order(&order.order_id)),
                    "#status = :status",
                    &["status"],
                    vec![(":status", s(order.status.as_str()))],
                )?;
            }
        }
        if change.reserve_stock {
            tx.move_stock(order, StockMove::Reserve)?;
        }
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => PaymentApplied::Applied,
            TxOutcome::Cancelled(failed) if failed.first().copied().unwrap_or(false) => {
                PaymentApplied::Duplicate
            }
            TxOutcome::Cancelled(failed)
                if change.reserve_stock && failed.last().copied().unwrap_or(false) =>
            {
                PaymentApplied::NoStock
            }
            TxOutcome::Cancelled(_) => PaymentApplied::Raced,
        })
    }

    /// Access pattern: keep a verified notification Kami cannot apply to an order (an
    /// unknown order id, or an event without one) for an operator. Returns false when
    /// the event id was already recorded.
    pub async fn record_unmatched_payment(
        &self,
        provider: &str,
        event_id: &str,
        unmatched: &Unmatched<'_>,
    ) -> Result<bool> {
        let now = Timestamp::now();
        let mut item = key_item(keys::webhook(provider, event_id));
        item.extend([
            ("entity".to_owned(), s("webhook")),
            ("outcome".to_owned(), s(unmatched.outcome)),
            ("kind".to_owned(), s(unmatched.kind)),
            ("received_at".to_owned(), s(now.to_rfc3339())),
            (
                "ttl".to_owned(),
                n(now.unix_seconds() + WEBHOOK_TTL_SECONDS),
            ),
        ]);
        if let Some(order_id) = unmatched.claimed_order_id {
            item.insert("order_id".to_owned(), s(order_id));
        }
        if let Some(amount) = unmatched.amount {
            item.insert("amount".to_owned(), n(amount.amount));
            item.insert("currency".to_owned(), s(&amount.currency));
        }
        self.put_if_absent(item).await
    }

    // ---------- delivery ----------

    /// Access pattern: a few available keys of a product from one stock shard.
    pub async fn available_keys(&self, sku: &str, shard: u32, limit: i32) -> Result<Vec<StockKey>> {
        let partition = keys::stock_partition(sku, shard % STOCK_SHARDS);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(&partition))
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        output
            .items()
            .iter()
            .map(|item| {
                Ok(StockKey {
                    key_id: get_s(item, "key_id")?,
                    batch_id: get_s(item, "batch_id")?,
                    sealed: get_b(item, "sealed")?,
                    partition: partition.clone(),
                })
            })
            .collect()
    }

    /// The stock shard where an order starts looking for keys.
    pub fn home_shard(order_id: &str) -> u32 {
        shard_of(order_id, STOCK_SHARDS)
    }

    /// Access pattern: move one key from stock into an order's delivery slot. One
    /// transaction: the key leaves stock (only if still there), the slot is filled
    /// (only if empty), and the order must still be waiting for delivery.
    pub async fn allocate_key(
        &self,
        order: &OrderRecord,
        slot: u32,
        key: &StockKey,
    ) -> Result<AllocateOutcome> {
        let mut tx = Tx::new(&self.table);
        tx.delete(
            HashMap::from([
                ("pk".to_owned(), s(&key.partition)),
                ("sk".to_owned(), s(keys::stock_key(&key.key_id))),
            ]),
            "attribute_exists(pk)",
        )?;
        let mut item = HashMap::from([
            ("pk".to_owned(), s(keys::order_partition(&order.order_id))),
            ("sk".to_owned(), s(keys::delivery_sk(slot))),
        ]);
        item.extend([
            ("entity".to_owned(), s("delivery")),
            ("slot".to_owned(), n(slot)),
            ("key_id".to_owned(), s(&key.key_id)),
            ("batch_id".to_owned(), s(&key.batch_id)),
            ("sku".to_owned(), s(&order.sku)),
            ("sealed".to_owned(), b(key.sealed.clone())),
            ("allocated_at".to_owned(), s(Timestamp::now().to_rfc3339())),
        ]);
        tx.put(item, Some("attribute_not_exists(pk)"))?;
        tx.check(
            key_item(keys::order(&order.order_id)),
            "#status IN (:paid, :failed)",
            &["status"],
            vec![
                (":paid", s(OrderStatus::Paid.as_str())),
                (":failed", s(OrderStatus::DeliveryFailed.as_str())),
            ],
        )?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => AllocateOutcome::Allocated,
            TxOutcome::Cancelled(failed) => match failed.as_slice() {
                [_, _, true] => AllocateOutcome::NotPayable,
                [_, true, _] => AllocateOutcome::SlotFilled,
                _ => AllocateOutcome::KeyGone,
            },
        })
    }

    /// Access pattern: mark an order delivered once all its slots are filled, moving
    /// its quantity from reserved to sold. Returns false if it was not in `from`.
    pub async fn mark_delivered(&self, order: &OrderRecord, from: OrderStatus) -> Result<bool> {
        let to = from.next(Cause::Deliver)?;
        let at = Timestamp::now().to_rfc3339();
        let mut tx = Tx::new(&self.table);
        tx.move_order(
            &order.order_id,
            (from, to, Cause::Deliver),
            &at,
            " REMOVE gsi1pk, gsi1sk",
            None,
            &[],
            Vec::new(),
        )?;
        tx.move_stock(order, StockMove::Sell)?;
        Ok(matches!(self.transact(tx).await?, TxOutcome::Committed))
    }

    /// Access pattern: give up delivering a paid order (`paid → delivery_failed`). It
    /// stays in the stuck-order index, due again in `FAILED_RETRY_AFTER_SECONDS`, so the
    /// sweep retries it after an outage. Returns false if it was no longer `paid`.
    pub async fn give_up_delivery(&self, order: &OrderRecord) -> Result<bool> {
        let to = order.status.next(Cause::DeliveryGaveUp)?;
        let now = Timestamp::now();
        let mut tx = Tx::new(&self.table);
        tx.move_order(
            &order.order_id,
            (order.status, to, Cause::DeliveryGaveUp),
            &now.to_rfc3339(),
            ", gsi1sk = :retry",
            None,
            &[],
            vec![(":retry", n(now.unix_seconds() + FAILED_RETRY_AFTER_SECONDS))],
        )?;
        Ok(matches!(self.transact(tx).await?, TxOutcome::Committed))
    }

    // ---------- sweeps ----------

    async fn due_in_index(&self, partition: String, now: Timestamp) -> Result<Vec<String>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("gsi1")
            .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :now")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":now", n(now.unix_seconds()));
        let mut ids = Vec::new();
        for item in self.query_all(query).await? {
            if let Some(id) = get_s(&item, "pk")?.strip_prefix("ORDER#") {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Access pattern: pending orders whose `expires_at` has passed (sparse GSI).
    pub async fn due_pending_orders(&self, now: Timestamp) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for shard in 0..INDEX_SHARDS {
            ids.extend(self.due_in_index(keys::pending_index(shard), now).await?);
        }
        Ok(ids)
    }

    /// Access pattern: paid orders still undelivered past their grace time (sparse GSI).
    pub async fn stuck_paid_orders(&self, now: Timestamp) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for shard in 0..INDEX_SHARDS {
            ids.extend(self.due_in_index(keys::paid_index(shard), now).await?);
        }
        Ok(ids)
    }

    /// Access pattern: expire a pending order and give its stock back, only if it is
    /// still pending and due. Returns false if another sweep or a payment won.
    pub async fn expire_order(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
        let to = order.status.next(Cause::Expire)?;
        let mut tx = Tx::new(&self.table);
        tx.move_order(
            &order.order_id,
            (order.status, to, Cause::Expire),
            &now.to_rfc3339(),
            " REMOVE gsi1pk, gsi1sk",
            Some("expires_at <= :now"),
            &[],
            vec![(":now", n(now.0))],
        )?;
        tx.move_stock(order, StockMove::Release)?;
        Ok(matches!(self.transact(tx).await?, TxOutcome::Committed))
    }

    /// Access pattern: push a stuck order's next re-queue time forward (soon for `paid`,
    /// later for `delivery_failed`), only while it is still in that state.
    pub async fn snooze_stuck_order(
        &self,
        order_id: &str,
        status: OrderStatus,
        now: Timestamp,
    ) -> Result<()> {
        let wait = if status == OrderStatus::DeliveryFailed {
            FAILED_RETRY_AFTER_SECONDS
        } else {
            STUCK_AFTER_SECONDS
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(keys::order(order_id))))
            .update_expression("SET gsi1sk = :next")
            .condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":next", n(now.unix_seconds() + wait))
            .expression_attribute_values(":status", s(status.as_str()))
            .send()
            .await;
        match result {
            // Delivered meanwhile: nothing to snooze.
            Ok(_) => Ok(()),
            Err(err) if condition_failed(&err) => Ok(()),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}

/// Reads a stored item back into its record type.
trait FromItem: Sized {
    fn from_item(item: &Item) -> Result<Self>;
}

impl FromItem for Product {
    fn from_item(item: &Item) -> Result<Product> {
        Ok(Product {
            sku: get_s(item, "sku")?,
            title: get_s(item, "title")?,
            price: Money {
                amount: get_n(item, "price_amount")?,
                currency: get_s(item, "currency")?,
            },
            delivery: DeliveryType::parse(&get_s(item, "delivery_type")?)
                .map_err(|_| Error::Corrupt("unknown delivery type".into()))?,
            max_per_order: get_u32(item, "max_per_order")?,
            created_at: get_s(item, "created_at")?,
        })
    }
}

impl FromItem for BatchRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(BatchRecord {
            batch_id: get_s(item, "batch_id")?,
            sku: get_s(item, "sku")?,
            wrapped_key: get_b(item, "wrapped_key")?,
        })
    }
}

impl FromItem for IdempotencyRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(IdempotencyRecord {
            request_hash: get_s(item, "request_hash")?,
            order_id: get_s(item, "order_id")?,
        })
    }
}

/// True when a write was refused by its condition expression.
fn condition_failed<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
        == Some("ConditionalCheckFailedException")
}

fn order_item(order: &OrderRecord) -> Item {
    let mut item = key_item(keys::order(&order.order_id));
    item.extend([
        ("entity".to_owned(), s("order")),
        ("order_id".to_owned(), s(&order.order_id)),
        ("sku".to_owned(), s(&order.sku)),
        ("quantity".to_owned(), n(order.quantity)),
        ("stock_shard".to_owned(), n(order.stock_shard)),
        ("amount".to_owned(), n(order.amount.amount)),
        ("currency".to_owned(), s(&order.amount.currency)),
        ("status".to_owned(), s(order.status.as_str())),
        ("buyer_email".to_owned(), s(&order.buyer_email)),
        ("token_hash".to_owned(), s(&order.token_hash)),
        ("created_at".to_owned(), s(&order.created_at)),
        ("expires_at".to_owned(), n(order.expires_at.0)),
        ("updated_at".to_owned(), s(&order.updated_at)),
    ]);
    item
}

impl FromItem for OrderRecord {
    fn from_item(item: &Item) -> Result<OrderRecord> {
        Ok(OrderRecord {
            order_id: get_s(item, "order_id")?,
            sku: get_s(item, "sku")?,
            quantity: get_u32(item, "quantity")?,
            stock_shard: get_u32(item, "stock_shard")?,
            amount: Money {
                amount: get_n(item, "amount")?,
                currency: get_s(item, "currency")?,
            },
            status: OrderStatus::parse(&get_s(item, "status")?)?,
            buyer_email: get_s(item, "buyer_email")?,
            token_hash: get_s(item, "token_hash")?,
            created_at: get_s(item, "created_at")?,
            expires_at: Timestamp(get_n(item, "expires_at")?),
            updated_at: get_s(item, "updated_at")?,
            payment_ref: get_opt_s(item, "payment_ref"),
            exception: get_opt_s(item, "exception"),
        })
    }
}

fn event_item(
    order_id: &str,
    from: Option<OrderStatus>,
    to: OrderStatus,
    cause: Cause,
    at: &str,
) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(keys::order_partition(order_id))),
        ("sk".to_owned(), s(keys::event_sk(&new_id()))),
        ("entity".to_owned(), s("order_event")),
        ("at".to_owned(), s(at)),
        ("to".to_owned(), s(to.as_str())),
        ("cause".to_owned(), s(cause.as_str())),
    ]);
    if let Some(from) = from {
        item.insert("from".to_owned(), s(from.as_str()));
    }
    item
}

impl FromItem for DeliverySlot {
    fn from_item(item: &Item) -> Result<DeliverySlot> {
        Ok(DeliverySlot {
            slot: get_u32(item, "slot")?,
            key_id: get_s(item, "key_id")?,
            batch_id: get_s(item, "batch_id")?,
            sku: get_s(item, "sku")?,
            sealed: get_b(item, "sealed")?,
        })
    }
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
