//! Payments: one payment record per provider event in the order's partition, and the
//! webhook dedupe record of every provider event (also what keeps a verified event
//! that matches no order for an operator).

use super::audit::AuditEntry;
use super::codec::{
    FromItem, Item, get_money, get_n, get_opt_s, get_s, item, key_item, keys, n, s,
};
use super::exceptions::ExceptionResolved;
use super::exceptions::PaymentEvent;
use super::orders::OperatorNote;
use super::orders::{OrderRecord, StockShare};
use super::tx::{ItemName, TxOutcome};
use super::{ORDER_INDEX, Store};
use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

const WEBHOOK_TTL_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct PaymentRecord {
    pub provider: String,
    pub event_id: String,
    pub amount: Money,
    pub provider_ref: String,
    pub outcome: String,
    pub received_at: String,
    /// The payment attempt it paid (a channel's payment), if any.
    pub payment_id: Option<String>,
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
    /// Reserve the order's quantity again on these stock counters (a late payment for
    /// an expired order), recorded as the order's new `stock_shards`; the whole change
    /// fails with `NoStock` if any of them is short.
    pub reserve_stock: Option<&'a [StockShare]>,
    /// The payment attempt of the order the money was for, marked paid in the same
    /// transaction (a channel's notification names one).
    pub attempt: Option<&'a str>,
    /// The channel the money came through: the payment is entered in its book (what
    /// its provider's bill is reconciled against), unless it repeats one recorded.
    pub channel: Option<&'a str>,
    /// The audit record of the operator who confirmed the payment, if one did.
    pub audit: Option<&'a AuditEntry>,
}

/// Another event about a payment already recorded: no new money.
pub const REPEAT_NOTIFICATION: &str = "repeat_notification";

/// What the money that pays `order` is worth in the order's currency: the payment's
/// amount, or the order's own when the money came in another currency (an operator
/// accepts it as the order's price).
fn paid_amount(order: &OrderRecord, change: &PaymentChange<'_>) -> i64 {
    if change.amount.currency == order.amount.currency {
        change.amount.amount
    } else {
        order.amount.amount
    }
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

impl FromItem for PaymentRecord {
    fn from_item(item: &Item) -> Result<PaymentRecord> {
        Ok(PaymentRecord {
            provider: get_s(item, "provider")?,
            event_id: get_s(item, "event_id")?,
            amount: get_money(item, "amount")?,
            provider_ref: get_s(item, "provider_ref")?,
            outcome: get_s(item, "outcome")?,
            received_at: get_s(item, "received_at")?,
            payment_id: get_opt_s(item, "payment_id"),
        })
    }
}

/// A second payment of an order already paid: money an operator gives back.
pub const DUPLICATE_PAYMENT: &str = "duplicate_payment";

/// Puts a payment record in the exception queue (`gsi2`) as of `now`, with its cause.
fn file_exception(record: &mut Item, cause: &str, now: Timestamp) {
    record.insert("gsi2pk".to_owned(), s(keys::EXCEPTIONS_INDEX));
    record.insert("gsi2sk".to_owned(), n(now.0));
    record.insert("exception_cause".to_owned(), s(cause));
    record.insert("updated_at".to_owned(), s(now.to_rfc3339()));
}

/// The dedupe record of a provider event, kept for 30 days.
fn webhook_item(provider: &str, event_id: &str, outcome: &str, now: Timestamp) -> Item {
    item(
        keys::webhook(provider, event_id),
        "webhook",
        [
            ("outcome", s(outcome)),
            ("received_at", s(now.to_rfc3339())),
            ("ttl", n(now.unix_seconds() + WEBHOOK_TTL_SECONDS)),
        ],
    )
}

impl Store {
    /// Access pattern: record a payment notification once per provider event id, and
    /// move the order if `change.transition` says so, in one transaction. Everything it
    /// stamps is at `now`: the records' `received_at`, the event and `updated_at`, the
    /// stuck-order index's due time and the dedupe record's TTL.
    pub async fn apply_payment(
        &self,
        order: &OrderRecord,
        change: &PaymentChange<'_>,
        now: Timestamp,
    ) -> Result<PaymentApplied> {
        let at = now.to_rfc3339();
        let mut tx = self.tx();
        let mut webhook = webhook_item(change.provider, change.event_id, change.outcome, now);
        webhook.insert("order_id".to_owned(), s(&order.order_id));
        if change.outcome == DUPLICATE_PAYMENT {
            // Money to give back: kept (no TTL) and in the exception queue until an
            // operator resolves it.
            webhook.remove("ttl");
            file_exception(&mut webhook, DUPLICATE_PAYMENT, now);
            webhook.insert("sku".to_owned(), s(&order.sku));
        }
        tx.put(ItemName::Webhook, webhook, Some("attribute_not_exists(pk)"))?;
        let mut payment = item(
            keys::payment(&order.order_id, change.provider, change.event_id),
            "payment",
            [
                ("provider", s(change.provider)),
                ("event_id", s(change.event_id)),
                ("amount", n(change.amount.amount)),
                ("currency", s(&change.amount.currency)),
                ("provider_ref", s(change.provider_ref)),
                ("outcome", s(change.outcome)),
                ("received_at", s(&at)),
            ],
        );
        if let Some(payment_id) = change.attempt {
            payment.insert("payment_id".to_owned(), s(payment_id));
        }
        if let Some(channel) = change.channel
            && change.outcome != REPEAT_NOTIFICATION
        {
            super::bills::enter_in_book(&mut payment, channel, now)?;
        }
        tx.put(ItemName::Payment, payment, None)?;
        match change.transition {
            // Paid orders join the "stuck if undelivered" index; any other outcome is
            // an exception for an operator and leaves every index.
            Some(transition @ (_, OrderStatus::Paid, _)) => {
                tx.move_to_paid(
                    order,
                    transition,
                    now,
                    change.reserve_stock,
                    (
                        ", payment_ref = :ref, paid_amount = :paid",
                        vec![
                            (":ref", s(change.provider_ref)),
                            (":paid", n(paid_amount(order, change))),
                        ],
                    ),
                    None,
                )?;
            }
            Some(transition) => {
                tx.move_order(
                    order,
                    transition,
                    now,
                    ", payment_ref = :ref, paid_amount = :paid, #exception = :exception REMOVE gsi1pk, gsi1sk",
                    None,
                    &["exception"],
                    vec![
                        (":ref", s(change.provider_ref)),
                        (":paid", n(paid_amount(order, change))),
                        (":exception", s(change.outcome)),
                    ],
                )?;
            }
            None => {
                tx.order_still(order)?;
            }
        }
        if let Some(payment_id) = change.attempt {
            tx.attempt_paid(&order.order_id, payment_id, &at)?;
        }
        if let Some(audit) = change.audit {
            tx.audit(audit)?;
        }
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => {
                if change.outcome == DUPLICATE_PAYMENT {
                    crate::metrics::exception_filed(DUPLICATE_PAYMENT);
                }
                PaymentApplied::Applied
            }
            TxOutcome::Cancelled(c) if c.failed(ItemName::Webhook) => PaymentApplied::Duplicate,
            TxOutcome::Cancelled(c) if c.failed_items().any(ItemName::is_counter) => {
                PaymentApplied::NoStock
            }
            TxOutcome::Cancelled(_) => PaymentApplied::Raced,
        })
    }

    /// Access pattern: keep a verified notification Kami cannot apply to an order (an
    /// unknown order id, or an event without one) for an operator. Returns false when
    /// the event id was already recorded. Received at `now`.
    pub async fn record_unmatched_payment(
        &self,
        provider: &str,
        event_id: &str,
        unmatched: &Unmatched<'_>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut webhook = webhook_item(provider, event_id, unmatched.outcome, now);
        // A record of money is never deleted (no TTL): an operator must settle it. It is
        // listed through the sparse index, newest first.
        webhook.remove("ttl");
        webhook.insert("gsi1pk".to_owned(), s(keys::UNMATCHED_INDEX));
        webhook.insert("gsi1sk".to_owned(), n(now.unix_seconds()));
        webhook.insert("kind".to_owned(), s(unmatched.kind));
        file_exception(&mut webhook, unmatched.outcome, now);
        if let Some(order_id) = unmatched.claimed_order_id {
            webhook.insert("order_id".to_owned(), s(order_id));
        }
        if let Some(amount) = unmatched.amount {
            webhook.insert("amount".to_owned(), n(amount.amount));
            webhook.insert("currency".to_owned(), s(&amount.currency));
        }
        let filed = self.put_if_absent(webhook).await?;
        if filed {
            crate::metrics::exception_filed(unmatched.outcome);
        }
        Ok(filed)
    }

    /// Access pattern: an operator settles a payment record in the exception queue (a
    /// duplicate or unmatched payment): `resolve_filed` of its webhook record.
    pub async fn resolve_payment_exception(
        &self,
        event: &PaymentEvent,
        note: &OperatorNote,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<ExceptionResolved> {
        let key = keys::webhook(&event.provider, &event.event_id);
        self.resolve_filed(ItemName::Webhook, key, note, audit, now)
            .await
    }

    /// Access pattern: the unmatched payments (`record_unmatched_payment`), newest first,
    /// at most `limit` ≤ 100: one Query of the sparse index's `UNMATCHED` partition (keys
    /// only, as the index projects), then one BatchGetItem of those records.
    pub async fn unmatched_payments(&self, limit: i32) -> Result<Vec<UnmatchedPayment>> {
        let output = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk")
            .expression_attribute_values(":pk", s(keys::UNMATCHED_INDEX))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        // The index projects keys only: read the records themselves.
        let keys: Vec<Item> = output
            .items()
            .iter()
            .map(|found| Ok(key_item((get_s(found, "pk")?, get_s(found, "sk")?))))
            .collect::<Result<_>>()?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut payments = self
            .batch_get(keys, false, "unmatched payments read")
            .await?
            .iter()
            .map(UnmatchedPayment::from_item)
            .collect::<Result<Vec<_>>>()?;
        // BatchGetItem answers in no particular order.
        payments.sort_by(|a, b| b.received_at.cmp(&a.received_at));
        Ok(payments)
    }
}

/// A verified payment notification Kami could not apply to an order, kept for an
/// operator (never expires); listed as is by `GET /admin/payments/unmatched`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UnmatchedPayment {
    pub provider: String,
    pub event_id: String,
    /// `unknown_order` (names an order Kami never issued) or `unbound_event` (names none).
    pub outcome: String,
    /// The provider's event type.
    pub kind: String,
    /// The order id the payment named, if any.
    pub claimed_order_id: Option<String>,
    pub amount: Option<Money>,
    pub received_at: String,
}

impl FromItem for UnmatchedPayment {
    fn from_item(item: &Item) -> Result<Self> {
        let pk = get_s(item, "pk")?;
        let (provider, event_id) = pk
            .strip_prefix("WEBHOOK#")
            .and_then(|rest| rest.split_once('#'))
            .ok_or_else(|| Error::Corrupt(format!("unmatched payment key {pk}")))?;
        let amount = match (get_opt_s(item, "currency"), item.get("amount")) {
            (Some(currency), Some(_)) => Some(Money {
                amount: get_n(item, "amount")?,
                currency,
            }),
            _ => None,
        };
        Ok(UnmatchedPayment {
            provider: provider.to_owned(),
            event_id: event_id.to_owned(),
            outcome: get_s(item, "outcome")?,
            kind: get_s(item, "kind")?,
            claimed_order_id: get_opt_s(item, "order_id"),
            amount,
            received_at: get_s(item, "received_at")?,
        })
    }
}
