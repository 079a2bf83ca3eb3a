//! Subscriptions (docs/subscriptions.md, docs/dynamodb.md "Subscriptions"): one item per
//! subscription (`SUBSCRIPTION#{id}` / `SUBSCRIPTION`, the id being the order that
//! started it), in the renewal queue of `gsi1` (`RENEWALS`, sorted by when its renewal
//! order is due) while it waits for its next renewal order or for that order's notice.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, get_u32, item, key_item, n, s};
use super::tx::ItemName;
use super::{OrderRecord, Store, condition_failed};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// The one partition of `gsi1` that holds subscriptions due a renewal order.
const RENEWALS_INDEX: &str = "RENEWALS";

fn subscription_key(subscription_id: &str) -> (String, String) {
    (
        format!("SUBSCRIPTION#{subscription_id}"),
        "SUBSCRIPTION".into(),
    )
}

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The order that started it.
    pub subscription_id: String,
    pub account_id: String,
    pub sku: String,
    pub quantity: u32,
    pub entitlement_id: String,
    /// When the entitlement's current period ends.
    pub period_end: Timestamp,
    pub renewal_notice_days: u32,
    /// The renewal order made for the next period and not yet delivered.
    pub renewal_order_id: Option<String>,
    /// The last order whose period is counted in `period_end`.
    pub last_order_id: String,
    /// The starting order's access-token hash: its holder may cancel.
    pub token_hash: String,
    pub created_at: Timestamp,
    /// Set when the buyer turned renewal off.
    pub cancelled_at: Option<Timestamp>,
}

impl SubscriptionRecord {
    /// When its next renewal order is due.
    pub fn renew_at(&self) -> Timestamp {
        self.period_end
            .plus_seconds(-i64::from(self.renewal_notice_days) * 86_400)
    }
}

impl FromItem for SubscriptionRecord {
    fn from_item(item: &Item) -> Result<Self> {
        let time = |name: &str| -> Result<Option<Timestamp>> {
            item.contains_key(name)
                .then(|| get_n(item, name).map(Timestamp))
                .transpose()
        };
        Ok(SubscriptionRecord {
            subscription_id: get_s(item, "subscription_id")?,
            account_id: get_s(item, "account_id")?,
            sku: get_s(item, "sku")?,
            quantity: get_u32(item, "quantity")?,
            entitlement_id: get_s(item, "entitlement_id")?,
            period_end: Timestamp(get_n(item, "period_end")?),
            renewal_notice_days: get_u32(item, "renewal_notice_days")?,
            renewal_order_id: get_opt_s(item, "renewal_order_id"),
            last_order_id: get_s(item, "last_order_id")?,
            token_hash: get_s(item, "token_hash")?,
            created_at: Timestamp(get_n(item, "created_at")?),
            cancelled_at: time("cancelled_at")?,
        })
    }
}

fn renewal_index(due: Timestamp) -> [(&'static str, AttributeValue); 2] {
    [
        (":queue", s(RENEWALS_INDEX)),
        (":due", n(due.unix_seconds())),
    ]
}

impl Store {
    /// Access pattern: a subscription started (once: a put if absent), in the renewal
    /// queue at its `renew_at`.
    pub async fn start_subscription(&self, record: &SubscriptionRecord) -> Result<bool> {
        let stored = item(
            subscription_key(&record.subscription_id),
            "subscription",
            [
                ("subscription_id", s(&record.subscription_id)),
                ("account_id", s(&record.account_id)),
                ("sku", s(&record.sku)),
                ("quantity", n(record.quantity)),
                ("entitlement_id", s(&record.entitlement_id)),
                ("period_end", n(record.period_end.0)),
                ("renewal_notice_days", n(record.renewal_notice_days)),
                ("last_order_id", s(&record.last_order_id)),
                ("token_hash", s(&record.token_hash)),
                ("created_at", n(record.created_at.0)),
                ("gsi1pk", s(RENEWALS_INDEX)),
                ("gsi1sk", n(record.renew_at().unix_seconds())),
            ],
        );
        self.put_if_absent(stored).await
    }

    /// Access pattern: a subscription as it is now (consistent).
    pub async fn subscription(&self, subscription_id: &str) -> Result<Option<SubscriptionRecord>> {
        self.get_as(subscription_key(subscription_id), true).await
    }

    /// Access pattern: the subscriptions whose renewal order (or its notice) is due by
    /// `now`, oldest first (one Query of `gsi1` `RENEWALS`, keys only).
    pub async fn due_renewals(&self, now: Timestamp, limit: i32) -> Result<Vec<String>> {
        self.due_in_gsi1(RENEWALS_INDEX, now, limit, "SUBSCRIPTION#")
            .await
    }

    /// Access pattern: a renewal order made for `record`'s next period — the order (in
    /// the pending queue, with its event) and the subscription naming it, in one
    /// transaction conditional on the subscription being as read (no renewal yet, not
    /// cancelled, the same period). False when it was not (another run made it).
    pub async fn open_renewal(
        &self,
        record: &SubscriptionRecord,
        renewal: &OrderRecord,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.new_order(renewal)?;
        tx.update(
            ItemName::Subscription,
            key_item(subscription_key(&record.subscription_id)),
            "SET renewal_order_id = :order",
            Some(
                "attribute_not_exists(renewal_order_id) AND attribute_not_exists(cancelled_at) \
                 AND period_end = :end",
            ),
            &[],
            vec![
                (":order", s(&renewal.order_id)),
                (":end", n(record.period_end.0)),
            ],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: the subscription out of the renewal queue — its renewal order's
    /// notice is queued, or it needs none (cancelled, lapsed).
    pub async fn leave_renewal_queue(&self, subscription_id: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(subscription_key(subscription_id))))
            .update_expression("REMOVE gsi1pk, gsi1sk")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: the period an order paid for counted — `period_end` moved, the
    /// renewal order (if it was the one) cleared, and back in the renewal queue unless
    /// cancelled; conditional on `last_order_id` as read (false if another worker
    /// counted it first).
    pub async fn advance_subscription(
        &self,
        record: &SubscriptionRecord,
        order_id: &str,
        period_end: Timestamp,
    ) -> Result<bool> {
        let next = SubscriptionRecord {
            period_end,
            ..record.clone()
        };
        let requeue = record.cancelled_at.is_none();
        let expression = if requeue {
            "SET period_end = :end, last_order_id = :order, gsi1pk = :queue, gsi1sk = :due \
             REMOVE renewal_order_id"
        } else {
            "SET period_end = :end, last_order_id = :order REMOVE renewal_order_id"
        };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(subscription_key(&record.subscription_id))))
            .update_expression(expression)
            .condition_expression("last_order_id = :last")
            .expression_attribute_values(":end", n(period_end.0))
            .expression_attribute_values(":order", s(order_id))
            .expression_attribute_values(":last", s(&record.last_order_id));
        if requeue {
            for (name, value) in renewal_index(next.renew_at()) {
                request = request.expression_attribute_values(name, value);
            }
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Access pattern: renewal turned off (once: the first cancellation's time stays),
    /// out of the renewal queue; the subscription as it is after.
    pub async fn cancel_subscription(
        &self,
        subscription_id: &str,
        now: Timestamp,
    ) -> Result<SubscriptionRecord> {
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(subscription_key(subscription_id))))
            .update_expression(
                "SET cancelled_at = if_not_exists(cancelled_at, :now) REMOVE gsi1pk, gsi1sk",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", n(now.0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        SubscriptionRecord::from_item(
            output
                .attributes()
                .ok_or_else(|| Error::Corrupt("subscription update returned nothing".into()))?,
        )
    }
}
