//! Card keys: batches (each batch's KMS-wrapped data key), fingerprints (one per key
//! ever imported, so a duplicate is refused), keys in stock (spread over
//! `STOCK_SHARDS` partitions), and the move of one key from stock into an order's
//! delivery slot: the card-key type's delivery record (`CardKeySlot`).

use super::audit::AuditEntry;
use super::codec::{FromItem, Item, b, get_b, get_s, get_u32, item, key_item, keys, n, s};
use super::orders::{OperatorNote, OrderRecord};
use super::tx::{ItemName, Tx, TxOutcome};
use super::{COUNTER_SHARDS, STOCK_SHARDS, Store, shard_of};
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::product::DeliveryType;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

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

/// The card-key delivery record: the key moved from stock into one slot of an order,
/// still sealed under its batch's data key.
#[derive(Debug, Clone)]
pub struct CardKeySlot {
    pub slot: u32,
    pub key_id: String,
    pub batch_id: String,
    pub sku: String,
    pub sealed: Vec<u8>,
}

impl Tx {
    /// The key leaves stock, only if it is still there (`ItemName::AllocatedKey`).
    fn take_from_stock(&mut self, key: &StockKey) -> Result<&mut Self> {
        self.delete(
            ItemName::AllocatedKey,
            key_item((key.partition.clone(), keys::stock_key(&key.key_id))),
            "attribute_exists(pk)",
        )
    }
}

/// A card-key delivery record: the key (`key_id`, `batch_id`, its own `sku`) in one slot
/// of an order, still sealed under its batch's data key.
fn slot_item(
    order_id: &str,
    slot: u32,
    (key_id, batch_id, sku): (&str, &str, &str),
    sealed: &[u8],
    at: &str,
) -> Item {
    item(
        keys::delivery(order_id, slot),
        "delivery",
        [
            ("type", s(DeliveryType::CardKey.as_str())),
            ("slot", n(slot)),
            ("key_id", s(key_id)),
            ("batch_id", s(batch_id)),
            ("sku", s(sku)),
            ("sealed", b(sealed.to_vec())),
            ("allocated_at", s(at)),
        ],
    )
}

/// What taking one key of another product into an order's slot came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubstituteKey {
    Taken,
    /// Another delivery took this key: try another.
    KeyGone,
    /// This counter has no unit available: try another counter.
    CounterEmpty,
    /// Filled meanwhile (a twin request).
    SlotFilled,
    /// The order moved meanwhile.
    OrderMoved,
}

/// What an operator's substitute came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Substituted {
    Delivered,
    /// The i-th key is already in the inventory (sold or in stock).
    KeyInInventory(usize),
    /// The order (or a slot) moved meanwhile.
    Raced,
}

pub enum AllocateOutcome {
    Allocated,
    /// The chosen key was taken by another delivery, or another delivery's transaction
    /// on it is in progress: pick another.
    KeyGone,
    /// This slot was filled by another worker: re-read the slots.
    SlotFilled,
    /// The order is no longer waiting for delivery.
    NotPayable,
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

impl FromItem for CardKeySlot {
    fn from_item(item: &Item) -> Result<CardKeySlot> {
        Ok(CardKeySlot {
            slot: get_u32(item, "slot")?,
            key_id: get_s(item, "key_id")?,
            batch_id: get_s(item, "batch_id")?,
            sku: get_s(item, "sku")?,
            sealed: get_b(item, "sealed")?,
        })
    }
}

impl Store {
    /// Access pattern: store a batch's wrapped data key before any of its keys.
    pub async fn put_batch(&self, batch: &BatchRecord, created_at: &str) -> Result<()> {
        let batch = item(
            keys::batch(&batch.batch_id),
            "batch",
            [
                ("batch_id", s(&batch.batch_id)),
                ("sku", s(&batch.sku)),
                ("wrapped_key", b(batch.wrapped_key.clone())),
                ("created_at", s(created_at)),
            ],
        );
        if self.put_if_absent(batch).await? {
            Ok(())
        } else {
            Err(Error::Corrupt("batch id already exists".into()))
        }
    }

    /// Access pattern: an operator delivers an order that needs a person with a substitute
    /// (`→ delivered`), in one transaction: for typed keys, their batch (its wrapped data
    /// key), each key's fingerprint claimed (a key already anywhere in the inventory is
    /// refused), each empty slot filled, the order moved with its event (`by`, `reason`),
    /// the order's reservation ended (`from_stock` units it already had from stock sold,
    /// the rest released; nothing for an order whose stock went back at expiry), and the
    /// audit record.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver_substitute(
        &self,
        order: &OrderRecord,
        batch: Option<&BatchRecord>,
        keys_by_slot: &[(u32, SealedKey)],
        from_stock: u32,
        note: &OperatorNote,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<Substituted> {
        let at = now.to_rfc3339();
        let mut tx = self.tx();
        if let Some(batch) = batch {
            tx.put(
                ItemName::Batch,
                item(
                    keys::batch(&batch.batch_id),
                    "batch",
                    [
                        ("batch_id", s(&batch.batch_id)),
                        ("sku", s(&batch.sku)),
                        ("wrapped_key", b(batch.wrapped_key.clone())),
                        ("created_at", s(&at)),
                    ],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        let batch_id = batch.map_or("", |batch| batch.batch_id.as_str());
        for (index, (slot, key)) in keys_by_slot.iter().enumerate() {
            tx.put(
                ItemName::Fingerprint(index),
                item(
                    keys::fingerprint(&key.fingerprint),
                    "fingerprint",
                    [("sku", s(&order.sku)), ("key_id", s(&key.key_id))],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
            tx.put(
                ItemName::SubstituteSlot(index),
                slot_item(
                    &order.order_id,
                    *slot,
                    (&key.key_id, batch_id, &order.sku),
                    &key.sealed,
                    &at,
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        let to = order.status.next(Cause::Substitute)?;
        tx.move_order_noted(
            order,
            (order.status, to, Cause::Substitute),
            now,
            " REMOVE gsi1pk, gsi1sk, #exception",
            None,
            &["exception"],
            Vec::new(),
            Some(note),
        )?;
        if order.status != OrderStatus::PaidAfterExpiry {
            tx.settle_stock((0, &order.sku), &order.stock_shards, from_stock)?;
        }
        tx.audit(audit)?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => Substituted::Delivered,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Order) => Substituted::Raced,
            TxOutcome::Cancelled(c) => match c.failed_items().find_map(|name| match name {
                ItemName::Fingerprint(index) => Some(index),
                _ => None,
            }) {
                Some(index) => Substituted::KeyInInventory(index),
                // A slot filled meanwhile (a worker) or an id collision: decide again.
                None => Substituted::Raced,
            },
        })
    }

    /// Access pattern: an operator's substitute from another product's stock: one key of
    /// `key_sku` moves into one empty slot of an order that needs a person, in one
    /// transaction: the key leaves that product's stock (only if still there), one of its
    /// counters sells a unit (only if it has one available), the slot is filled (only if
    /// empty, with the key's own sku, so the buyer's view opens it under its batch) and
    /// the order must still be in `status`.
    pub async fn take_substitute_key(
        &self,
        order: &OrderRecord,
        slot: u32,
        key_sku: &str,
        key: &StockKey,
        counter_shard: u32,
        now: Timestamp,
    ) -> Result<SubstituteKey> {
        let mut tx = self.tx();
        tx.take_from_stock(key)?;
        tx.update(
            ItemName::Counter(counter_shard),
            key_item(keys::stock_counter(key_sku, counter_shard)),
            "SET #available = #available - :one, #sold = #sold + :one",
            Some("#available >= :one"),
            &["available", "sold"],
            vec![(":one", n(1))],
        )?;
        tx.put(
            ItemName::Slot,
            slot_item(
                &order.order_id,
                slot,
                (&key.key_id, &key.batch_id, key_sku),
                &key.sealed,
                &now.to_rfc3339(),
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.order_still(order)?;
        Ok(
            match self
                .transact_yielding(tx, Some(ItemName::AllocatedKey))
                .await?
            {
                Some(TxOutcome::Committed) => SubstituteKey::Taken,
                Some(TxOutcome::Cancelled(c)) if c.failed(ItemName::Order) => {
                    SubstituteKey::OrderMoved
                }
                Some(TxOutcome::Cancelled(c)) if c.failed(ItemName::Slot) => {
                    SubstituteKey::SlotFilled
                }
                Some(TxOutcome::Cancelled(c)) if c.failed(ItemName::Counter(counter_shard)) => {
                    SubstituteKey::CounterEmpty
                }
                None | Some(TxOutcome::Cancelled(_)) => SubstituteKey::KeyGone,
            },
        )
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
        let mut tx = self.tx();
        for (index, key) in keys_to_add.iter().enumerate() {
            tx.put(
                ItemName::Fingerprint(index),
                item(
                    keys::fingerprint(&key.fingerprint),
                    "fingerprint",
                    [("sku", s(sku)), ("key_id", s(&key.key_id))],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
            let partition = keys::stock_partition(sku, shard_of(&key.key_id, STOCK_SHARDS));
            tx.put(
                ItemName::ImportedKey(index),
                item(
                    (partition, keys::stock_key(&key.key_id)),
                    "stock_key",
                    [
                        ("key_id", s(&key.key_id)),
                        ("batch_id", s(batch_id)),
                        ("sealed", b(key.sealed.clone())),
                        ("created_at", s(created_at)),
                    ],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        let counter_shard = counter_shard % COUNTER_SHARDS;
        tx.update(
            ItemName::Counter(counter_shard),
            key_item(keys::stock_counter(sku, counter_shard)),
            "SET #available = #available + :count",
            Some("attribute_exists(pk)"),
            &["available"],
            vec![(":count", n(keys_to_add.len()))],
        )?;
        let TxOutcome::Cancelled(cancelled) = self.transact(tx).await? else {
            return Ok(Vec::new());
        };
        if cancelled.failed(ItemName::Counter(counter_shard)) {
            return Err(Error::NotFound("product"));
        }
        let duplicates: Vec<usize> = cancelled
            .failed_items()
            .filter_map(|name| match name {
                ItemName::Fingerprint(index) => Some(index),
                _ => None,
            })
            .collect();
        if duplicates.is_empty() {
            // A key id collision (a fresh ULID, so effectively impossible).
            return Err(Error::Corrupt("stock key id already exists".into()));
        }
        Ok(duplicates)
    }

    /// Access pattern: a few available keys of a product from one stock shard.
    pub async fn available_keys(&self, sku: &str, shard: u32, limit: i32) -> Result<Vec<StockKey>> {
        let partition = keys::stock_partition(sku, shard % STOCK_SHARDS);
        let output = self
            .query()
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

    /// Access pattern: how many keys a product has in stock (a `Select COUNT` Query per
    /// stock shard, every page).
    pub async fn count_stock_keys(&self, sku: &str) -> Result<u64> {
        let mut total = 0u64;
        for shard in 0..STOCK_SHARDS {
            let partition = keys::stock_partition(sku, shard);
            let mut start = None;
            loop {
                let output = self
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(&partition))
                    .select(aws_sdk_dynamodb::types::Select::Count)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| Error::aws("dynamodb", e))?;
                total += u64::try_from(output.count()).unwrap_or_default();
                start = output.last_evaluated_key().cloned();
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// The stock shard where an order starts looking for keys.
    pub fn home_shard(order_id: &str) -> u32 {
        shard_of(order_id, STOCK_SHARDS)
    }

    /// Access pattern: move one key from stock into an order's delivery slot. One
    /// transaction: the key leaves stock (only if still there), the slot is filled
    /// (only if empty, `allocated_at` = `now`), and the order must still be waiting for
    /// delivery.
    pub async fn allocate_key(
        &self,
        order: &OrderRecord,
        slot: u32,
        key: &StockKey,
        now: Timestamp,
    ) -> Result<AllocateOutcome> {
        let mut tx = self.tx();
        tx.take_from_stock(key)?;
        tx.put(
            ItemName::Slot,
            slot_item(
                &order.order_id,
                slot,
                (&key.key_id, &key.batch_id, &order.sku),
                &key.sealed,
                &now.to_rfc3339(),
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.awaiting_delivery(order)?;
        // Another worker's transaction on this key: it is (about to be) taken; the next
        // key at once rather than backing off on this one (the delivery's time budget).
        Ok(
            match self
                .transact_yielding(tx, Some(ItemName::AllocatedKey))
                .await?
            {
                None => AllocateOutcome::KeyGone,
                Some(TxOutcome::Committed) => AllocateOutcome::Allocated,
                Some(TxOutcome::Cancelled(c)) if c.failed(ItemName::Order) => {
                    AllocateOutcome::NotPayable
                }
                Some(TxOutcome::Cancelled(c)) if c.failed(ItemName::Slot) => {
                    AllocateOutcome::SlotFilled
                }
                Some(TxOutcome::Cancelled(_)) => AllocateOutcome::KeyGone,
            },
        )
    }
}
