//! Refunds: one record per refund in the order's partition (`REFUND#{refund_id}`), and
//! the running total refunded on the payment attempt it gives money back from
//! (`refunded`). The total is raised, under the condition that it stays within what the
//! payment took, in the same transaction that records the refund and claims its
//! idempotency key — before the provider is asked — so concurrent refunds can never
//! give back more than was paid; a refund the provider refuses lowers it again.

use super::codec::{FromItem, Item, get_money, get_opt_s, get_s, item, key_item, keys, n, s};
use super::commissions::CommissionEntry;
use super::idempotency::idempotency_item;
use super::orders::OrderRecord;
use super::tx::{ItemName, TxOutcome};
use super::{AuditEntry, Store};
use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Recorded; the provider's answer is not known yet (asked again with the same id).
    Requested,
    /// The provider took it and will settle it (a notification, or a later query).
    Pending,
    Succeeded,
    /// The provider refused it: nothing was given back, the amount is free again.
    Refused,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Refused => "refused",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "requested" => RefundStatus::Requested,
            "pending" => RefundStatus::Pending,
            "succeeded" => RefundStatus::Succeeded,
            "refused" => RefundStatus::Refused,
            other => return Err(Error::Corrupt(format!("unknown refund status {other:?}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub refund_id: String,
    pub order_id: String,
    /// The payment attempt the money is given back from.
    pub payment_id: String,
    pub amount: Money,
    pub status: RefundStatus,
    pub reason: String,
    pub failure: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl FromItem for RefundRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(RefundRecord {
            refund_id: get_s(item, "refund_id")?,
            order_id: get_s(item, "order_id")?,
            payment_id: get_s(item, "payment_id")?,
            amount: get_money(item, "amount")?,
            status: RefundStatus::parse(&get_s(item, "status")?)?,
            reason: get_s(item, "reason")?,
            failure: get_opt_s(item, "failure"),
            created_at: get_s(item, "created_at")?,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

/// How recording a refund ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReserved {
    Reserved,
    /// The idempotency key was claimed before: a retry.
    KeyTaken,
    /// It would give back more than the payment took (with the refunds before it).
    Exceeds,
}

/// Where a refund ended, and the order's transition it makes, if any.
pub struct RefundSettlement<'a> {
    pub status: RefundStatus,
    pub failure: Option<&'a str>,
    pub transition: Option<(OrderStatus, OrderStatus, Cause)>,
    /// With a transition of a referred order: what its refunds give back in all, this one
    /// included (its commissions are reduced to match, in the same transaction).
    pub refunded: Option<i64>,
}

/// Times a refund is settled again when a commission of its order changed meanwhile.
const COMMISSION_RACES: u32 = 3;

impl Store {
    /// Access pattern: record a refund (`requested`) of `refund.amount` from the attempt
    /// that took `paid`, raising its total refunded only while it stays within `paid`,
    /// and claim the idempotency key (`IDEMPOTENCY#refunds#h`), in one transaction with
    /// the operator's audit record. The refund is entered in the book of `channel_id`
    /// (the attempt's) as of `now`.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve_refund(
        &self,
        refund: &RefundRecord,
        paid: &Money,
        channel_id: &str,
        key: &str,
        request_hash: &str,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<RefundReserved> {
        let mut tx = self.tx();
        let mut claim = idempotency_item("refunds", key, "", request_hash, &refund.order_id, now);
        claim.insert("payment_id".to_owned(), s(&refund.refund_id));
        tx.put(
            ItemName::Idempotency,
            claim,
            Some("attribute_not_exists(pk)"),
        )?;
        let mut record = item(
            keys::refund(&refund.order_id, &refund.refund_id),
            "refund",
            [
                ("refund_id", s(&refund.refund_id)),
                ("order_id", s(&refund.order_id)),
                ("payment_id", s(&refund.payment_id)),
                ("amount", n(refund.amount.amount)),
                ("currency", s(&refund.amount.currency)),
                ("status", s(refund.status.as_str())),
                ("reason", s(&refund.reason)),
                ("created_at", s(&refund.created_at)),
                ("updated_at", s(&refund.updated_at)),
            ],
        );
        super::bills::enter_in_book(&mut record, channel_id, now)?;
        tx.put(ItemName::Refund, record, Some("attribute_not_exists(pk)"))?;
        tx.update(
            ItemName::Attempt,
            key_item(keys::attempt(&refund.order_id, &refund.payment_id)),
            "ADD refunded :amount",
            Some("attribute_exists(pk) AND (attribute_not_exists(refunded) OR refunded <= :room)"),
            &[],
            vec![
                (":amount", n(refund.amount.amount)),
                (":room", n(paid.amount - refund.amount.amount)),
            ],
        )?;
        tx.audit(audit)?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => RefundReserved::Reserved,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Idempotency) => RefundReserved::KeyTaken,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Attempt) => RefundReserved::Exceeds,
            TxOutcome::Cancelled(_) => {
                return Err(Error::Corrupt(format!(
                    "refund id {} was issued twice",
                    refund.refund_id
                )));
            }
        })
    }

    /// Access pattern: a refund reaches `settlement.status`, only from `requested` or
    /// `pending`; a refused one gives its amount back to the attempt's room; with a
    /// transition, the order moves in the same transaction. False if it had moved on.
    pub async fn settle_refund(
        &self,
        order: &OrderRecord,
        refund: &RefundRecord,
        settlement: &RefundSettlement<'_>,
        now: Timestamp,
    ) -> Result<bool> {
        // A commission maturing meanwhile cancels the transaction: read them again.
        for _ in 0..COMMISSION_RACES {
            let commissions = match settlement.refunded {
                Some(_) => self.order_commissions(&order.order_id).await?,
                None => Vec::new(),
            };
            match self
                .settle_refund_once(order, refund, settlement, &commissions, now)
                .await?
            {
                TxOutcome::Committed => return Ok(true),
                TxOutcome::Cancelled(c)
                    if c.failed_items()
                        .any(|name| matches!(name, ItemName::Commission(_))) => {}
                TxOutcome::Cancelled(_) => return Ok(false),
            }
        }
        Err(Error::Contention("order commissions"))
    }

    async fn settle_refund_once(
        &self,
        order: &OrderRecord,
        refund: &RefundRecord,
        settlement: &RefundSettlement<'_>,
        commissions: &[CommissionEntry],
        now: Timestamp,
    ) -> Result<TxOutcome> {
        let at = now.to_rfc3339();
        let mut tx = self.tx();
        let mut values = vec![
            (":to", s(settlement.status.as_str())),
            (":requested", s(RefundStatus::Requested.as_str())),
            (":pending", s(RefundStatus::Pending.as_str())),
            (":at", s(&at)),
        ];
        let expression = match settlement.failure {
            Some(failure) => {
                values.push((":failure", s(failure)));
                "SET #status = :to, failure = :failure, updated_at = :at"
            }
            None => "SET #status = :to, updated_at = :at",
        };
        tx.update(
            ItemName::Refund,
            key_item(keys::refund(&refund.order_id, &refund.refund_id)),
            expression,
            Some("#status IN (:requested, :pending)"),
            &["status"],
            values,
        )?;
        if settlement.status == RefundStatus::Refused {
            tx.update(
                ItemName::Attempt,
                key_item(keys::attempt(&refund.order_id, &refund.payment_id)),
                "ADD refunded :less",
                None,
                &[],
                vec![(":less", n(-refund.amount.amount))],
            )?;
        }
        if let Some(transition) = settlement.transition {
            tx.move_order(order, transition, now, "", None, &[], Vec::new())?;
            if let Some(refunded) = settlement.refunded {
                tx.refund_commissions(commissions, refunded, &refund.refund_id, now)?;
            }
        }
        self.transact(tx).await
    }

    /// Access pattern: one refund (strongly consistent).
    pub async fn get_refund(
        &self,
        order_id: &str,
        refund_id: &str,
    ) -> Result<Option<RefundRecord>> {
        self.get_as(keys::refund(order_id, refund_id), true).await
    }
}

/// Refunds in an order's partition (for `get_order_view`).
pub(crate) fn is_refund(sk: &str) -> bool {
    sk.starts_with(keys::REFUND_PREFIX)
}
