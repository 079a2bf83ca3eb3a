//! The exception queue: orders that need a person (`delivery_failed`,
//! `payment_exception`, `paid_after_expiry`, `partially_delivered`), in the sparse index
//! `gsi2` from the transition that puts them there until the one that ends it
//! (`Tx::move_order`); payment records that do (a duplicate payment, a payment for no
//! known order) from when they are recorded until an operator resolves them; and the
//! stock audit's findings from the run that finds one until a run finds it mended. Keyed
//! by when they began to need one. The index carries what a listing shows, so a page is
//! one Query.

use super::audit::AuditEntry;
use super::bills::MismatchRef;
use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, key_item, keys, n, s};
use super::orders::{OperatorNote, OrderRecord};
use super::tx::ItemName;
use super::{EXCEPTION_INDEX, INDEX_SHARDS, ORDER_INDEX, Store};
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// One entry of the exception queue: an order that needs a person, or a payment record
/// (a second payment of an order, a payment for no order Kami knows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ExceptionEntry {
    /// The order, for an order's entry, a duplicate payment's, or the order an unknown
    /// payment named; absent for a payment that named none.
    pub order_id: Option<String>,
    /// Why it needs a person: an order's status (`delivery_failed`,
    /// `payment_exception`, `paid_after_expiry`, `partially_delivered`), a payment's
    /// outcome (`duplicate_payment`, `unknown_order`, `unbound_event`), or
    /// `stock_mismatch` (the stock audit's finding about `sku`).
    pub cause: String,
    /// The detail: a delivery's failure code (`no_supplier_succeeded`,
    /// `supplier_outcome_unknown`, ...), a payment's outcome (`amount_mismatch`, ...), or
    /// the stock audit's kind (`fewer_keys_than_available`, `keys_not_counted`,
    /// `reserved_without_order`, `order_without_reservation`).
    pub exception: Option<String>,
    /// The order's status (orders' entries only).
    pub status: Option<OrderStatus>,
    pub sku: Option<String>,
    /// A payment's entry: the provider event it is (resolve it with
    /// `POST /admin/payments/{provider}/{event_id}/resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentEvent>,
    /// A reconciliation mismatch's entry: which one it is (resolve it with
    /// `POST /admin/reconciliation/{period}/mismatches/{mismatch_id}/resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchRef>,
    /// When it began to need a person.
    pub since: String,
    /// Seconds since then (at the listing).
    pub age_seconds: i64,
    pub updated_at: String,
}

/// A provider's payment event, as the exception queue names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PaymentEvent {
    pub provider: String,
    pub event_id: String,
}

impl PaymentEvent {
    /// The event a payment record's key names (`WEBHOOK#{provider}#{event_id}`).
    pub fn of_key(pk: &str) -> Option<Self> {
        let (provider, event_id) = pk.strip_prefix("WEBHOOK#")?.split_once('#')?;
        Some(PaymentEvent {
            provider: provider.to_owned(),
            event_id: event_id.to_owned(),
        })
    }
}

impl ExceptionEntry {
    fn read(item: &Item, now: Timestamp) -> Result<Self> {
        let since = Timestamp(get_n(item, "gsi2sk")?);
        Ok(ExceptionEntry {
            order_id: get_opt_s(item, "order_id"),
            cause: get_s(item, "exception_cause")?,
            exception: get_opt_s(item, "exception"),
            status: get_opt_s(item, "status")
                .map(|status| OrderStatus::parse(&status))
                .transpose()?,
            sku: get_opt_s(item, "sku"),
            payment: PaymentEvent::of_key(&get_s(item, "pk")?),
            mismatch: MismatchRef::of_key(&get_s(item, "pk")?, &get_s(item, "sk")?),
            since: since.to_rfc3339(),
            age_seconds: (now.0 - since.0).max(0) / 1000,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

/// What resolving an item filed in the queue (a payment record, a reconciliation
/// mismatch) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionResolved {
    Resolved,
    AlreadyResolved,
    NotFound,
    /// An item that is not in the queue and never was resolved (a payment that applied
    /// to its order): nothing to resolve.
    NotAnException,
}

/// What a page of the queue is read with.
#[derive(Debug, Clone, Default)]
pub struct ExceptionFilter {
    /// A cause or an exception detail (`supplier_outcome_unknown`).
    pub cause: Option<String>,
    /// Only orders that began to need a person at or before this.
    pub since_at_most: Option<Timestamp>,
    pub newest_first: bool,
    pub limit: i32,
}

impl Store {
    /// Access pattern: an operator settles an item filed in the exception queue: it
    /// leaves the queue (REMOVE gsi2pk, gsi2sk), keeps who and why (`resolved_by`,
    /// `resolution`, `resolved_at`), in one transaction with the audit record. Only an
    /// item still in the queue moves; asked again, the answer says it already did.
    pub(crate) async fn resolve_filed(
        &self,
        name: ItemName,
        key: (String, String),
        note: &OperatorNote,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<ExceptionResolved> {
        let mut tx = self.tx();
        tx.update(
            name,
            key_item(key.clone()),
            "SET resolved_by = :by, resolution = :reason, resolved_at = :at REMOVE gsi2pk, gsi2sk",
            Some("attribute_exists(gsi2pk)"),
            &[],
            vec![
                (":by", s(&note.by)),
                (":reason", s(&note.reason)),
                (":at", s(now.to_rfc3339())),
            ],
        )?;
        tx.audit(audit)?;
        if self.transact(tx).await?.committed() {
            return Ok(ExceptionResolved::Resolved);
        }
        Ok(match self.get(key, true).await? {
            None => ExceptionResolved::NotFound,
            Some(record) if record.contains_key("resolved_by") => {
                ExceptionResolved::AlreadyResolved
            }
            Some(_) => ExceptionResolved::NotAnException,
        })
    }

    /// Access pattern: one page of the exception queue (`gsi2`, one Query), from
    /// `start` (the previous page's `LastEvaluatedKey`); the key to go on from, if any.
    pub async fn exceptions(
        &self,
        filter: &ExceptionFilter,
        start: Option<Item>,
        now: Timestamp,
    ) -> Result<(Vec<ExceptionEntry>, Option<Item>)> {
        let mut query = self
            .query()
            .index_name(EXCEPTION_INDEX)
            .expression_attribute_values(":pk", s(keys::EXCEPTIONS_INDEX))
            .scan_index_forward(!filter.newest_first)
            .limit(filter.limit)
            .set_exclusive_start_key(start);
        query = match &filter.since_at_most {
            Some(at_most) => query
                .key_condition_expression("gsi2pk = :pk AND gsi2sk <= :at_most")
                .expression_attribute_values(":at_most", n(at_most.0)),
            None => query.key_condition_expression("gsi2pk = :pk"),
        };
        if let Some(cause) = &filter.cause {
            query = query
                .filter_expression("exception_cause = :cause OR #exception = :cause")
                .expression_attribute_names("#exception", "exception")
                .expression_attribute_values(":cause", s(cause));
        }
        let output = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let entries = output
            .items()
            .iter()
            .map(|item| ExceptionEntry::read(item, now))
            .collect::<Result<Vec<_>>>()?;
        Ok((entries, output.last_evaluated_key().cloned()))
    }
}

/// The cause of the stock audit's entries.
pub const STOCK_MISMATCH: &str = "stock_mismatch";

/// A stock audit finding's key: one per product and kind.
fn stock_mismatch_key(sku: &str, kind: &str) -> (String, String) {
    (format!("STOCKAUDIT#{sku}"), format!("MISMATCH#{kind}"))
}

fn is_stock_mismatch_key(pk: &str, sk: &str) -> bool {
    pk.starts_with("STOCKAUDIT#") && sk.starts_with("MISMATCH#")
}

impl Store {
    /// Access pattern: the stock audit files a finding in the exception queue: one item
    /// per product and kind (`STOCKAUDIT#{sku}` / `MISMATCH#{kind}`, cause
    /// `stock_mismatch`), its figures (`figures`: name, value) as of this run, in the
    /// queue since the run that first found it (`gsi2sk` kept while it stays). One
    /// UpdateItem: a run repeated, or two at once, leave one item.
    pub async fn file_stock_mismatch(
        &self,
        (sku, kind): (&str, &str),
        figures: &[(&str, i64)],
        now: Timestamp,
    ) -> Result<()> {
        let mut expression = String::from(
            "SET entity = :entity, exception_cause = :cause, #exception = :kind, sku = :sku, \
             updated_at = :now, gsi2pk = :queue, gsi2sk = if_not_exists(gsi2sk, :since)",
        );
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(stock_mismatch_key(sku, kind))))
            .expression_attribute_names("#exception", "exception")
            .expression_attribute_values(":entity", s("stock_mismatch"))
            .expression_attribute_values(":cause", s(STOCK_MISMATCH))
            .expression_attribute_values(":kind", s(kind))
            .expression_attribute_values(":sku", s(sku))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":queue", s(keys::EXCEPTIONS_INDEX))
            .expression_attribute_values(":since", n(now.0));
        for (i, (name, value)) in figures.iter().enumerate() {
            expression.push_str(&format!(", #f{i} = :f{i}"));
            request = request
                .expression_attribute_names(format!("#f{i}"), *name)
                .expression_attribute_values(format!(":f{i}"), n(*value));
        }
        request
            .update_expression(expression)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: the kinds filed for a product (one Query of its partition).
    pub async fn filed_stock_mismatches(&self, sku: &str) -> Result<Vec<String>> {
        let (pk, _) = stock_mismatch_key(sku, "");
        let query = self
            .query()
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk));
        self.query_all(query)
            .await?
            .iter()
            .map(|item| get_s(item, "sk").map(|sk| sk.trim_start_matches("MISMATCH#").to_owned()))
            .collect()
    }

    /// Access pattern: a finding a run no longer finds leaves the queue (DeleteItem; the
    /// run's log and the audit metric keep the history).
    pub async fn clear_stock_mismatch(&self, sku: &str, kind: &str) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_item(stock_mismatch_key(sku, kind))))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: the ids of every order that may hold reserved stock, for the
    /// stock audit: pending (`gsi1 PENDING#0-7`), then paid or delivering (`PAID#0-7`),
    /// then in the exception queue (`gsi2`, orders only), every page, keys only. An order
    /// moves through these in that order, the order they are read in, so one that moves
    /// during the read is seen at least once (duplicates removed).
    pub async fn open_order_ids(&self) -> Result<Vec<String>> {
        let mut partitions: Vec<(&str, String, &str)> = Vec::new();
        for shard in 0..INDEX_SHARDS {
            partitions.push((ORDER_INDEX, keys::pending_index(shard), "gsi1pk"));
        }
        for shard in 0..INDEX_SHARDS {
            partitions.push((ORDER_INDEX, keys::paid_index(shard), "gsi1pk"));
        }
        partitions.push((EXCEPTION_INDEX, keys::EXCEPTIONS_INDEX.to_owned(), "gsi2pk"));
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, partition, attribute) in partitions {
            let query = self
                .query()
                .index_name(index)
                .key_condition_expression(format!("{attribute} = :pk"))
                .expression_attribute_values(":pk", s(partition));
            for item in self.query_all(query).await? {
                if let Some(id) = keys::order_id_of(&get_s(&item, "pk")?)
                    && get_s(&item, "sk")? == keys::ORDER_SK
                    && seen.insert(id.to_owned())
                {
                    ids.push(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    /// Access pattern: these orders as they are now (BatchGetItem, 100 at a time).
    pub async fn get_orders(&self, order_ids: &[String]) -> Result<Vec<OrderRecord>> {
        let mut orders = Vec::with_capacity(order_ids.len());
        for chunk in order_ids.chunks(100) {
            let keys = chunk.iter().map(|id| key_item(keys::order(id))).collect();
            for item in self.batch_get(keys, true, "orders read").await? {
                orders.push(OrderRecord::from_item(&item)?);
            }
        }
        Ok(orders)
    }
}

/// A page's `LastEvaluatedKey` as one string (for an opaque cursor): the entry's key
/// and the index's sort key (the partition is a constant), `|` between.
pub fn cursor_text(key: &Item) -> Result<String> {
    Ok(format!(
        "{}|{}|{}",
        get_n(key, "gsi2sk")?,
        get_s(key, "sk")?,
        get_s(key, "pk")?
    ))
}

/// The key a cursor's text names; `None` if it is not one of this queue's keys (an
/// order's, a payment record's, a reconciliation mismatch's or a stock audit finding's).
pub fn cursor_key(text: &str) -> Option<Item> {
    let mut parts = text.splitn(3, '|');
    let since: i64 = parts.next()?.parse().ok()?;
    let sk = parts.next()?;
    let pk = parts.next()?;
    let order = keys::order_id_of(pk).is_some() && sk == keys::ORDER_SK;
    let payment = PaymentEvent::of_key(pk).is_some();
    let mismatch = super::bills::is_mismatch_key(pk, sk) || is_stock_mismatch_key(pk, sk);
    if !(order || payment || mismatch) {
        return None;
    }
    Some(
        [
            ("pk", s(pk)),
            ("sk", s(sk)),
            ("gsi2pk", s(keys::EXCEPTIONS_INDEX)),
            ("gsi2sk", n(since)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect(),
    )
}
