//! Payment attempts: one per `POST /orders/{id}/payments` on one channel, in the order's
//! partition (`ATTEMPT#{payment_id}`). The `payment_id` is the provider's merchant order
//! number and starts with the order id, so a notification naming it finds its attempt
//! with one GetItem, and the attempt says which channel issued it (binding). While an
//! attempt may still be paid (`creating`, `pending`) it is in the sparse index
//! (`ATTEMPTS#{shard}`, by creation time) that the payment reconciler reads.

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;

use super::codec::{FromItem, Item, get_money, get_opt_s, get_s, item, key_item, keys, n, s};
use super::tx::{ItemName, Tx};
use super::{INDEX_SHARDS, ORDER_INDEX, Store, condition_failed, shard_of};
use crate::domain::channel::ProviderKind;
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::payment::{PaymentAction, PaymentMethod};

/// An open attempt is first asked about this long after it was made, then this often
/// (the payment reconciler's schedule runs every minute).
pub const RECONCILE_AFTER_SECONDS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Written before the provider is called: if the call's answer is lost, the
    /// reconciler still knows to ask.
    Creating,
    /// The provider opened it; the buyer may pay.
    Pending,
    /// The provider refused it or could not be reached (`failure` says which).
    Failed,
    Paid,
    /// Closed unpaid (the order expired, or the provider closed it).
    Closed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Creating => "creating",
            AttemptStatus::Pending => "pending",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Paid => "paid",
            AttemptStatus::Closed => "closed",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "creating" => AttemptStatus::Creating,
            "pending" => AttemptStatus::Pending,
            "failed" => AttemptStatus::Failed,
            "paid" => AttemptStatus::Paid,
            "closed" => AttemptStatus::Closed,
            other => return Err(Error::Corrupt(format!("unknown attempt status {other:?}"))),
        })
    }
}

/// A payment attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub payment_id: String,
    pub order_id: String,
    pub channel_id: String,
    pub provider: ProviderKind,
    pub method: PaymentMethod,
    pub amount: Money,
    pub status: AttemptStatus,
    /// What the buyer does to pay (set once the provider opened it).
    pub action: Option<PaymentAction>,
    pub provider_ref: Option<String>,
    /// Why it failed (the provider's answer, never a secret).
    pub failure: Option<String>,
    /// Minor units given back from it so far (refunds requested, not refused).
    pub refunded: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn method_of(text: &str) -> Result<PaymentMethod> {
    serde_json::from_value(serde_json::Value::from(text))
        .map_err(|_| Error::Corrupt(format!("unknown payment method {text:?}")))
}

impl FromItem for AttemptRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(AttemptRecord {
            payment_id: get_s(item, "payment_id")?,
            order_id: get_s(item, "order_id")?,
            channel_id: get_s(item, "channel_id")?,
            provider: ProviderKind::parse(&get_s(item, "provider")?)
                .map_err(|_| Error::Corrupt("unknown attempt provider".into()))?,
            method: method_of(&get_s(item, "method")?)?,
            amount: get_money(item, "amount")?,
            status: AttemptStatus::parse(&get_s(item, "status")?)?,
            action: get_opt_s(item, "action")
                .map(|json| {
                    serde_json::from_str(&json)
                        .map_err(|_| Error::Corrupt("attempt action is not JSON".into()))
                })
                .transpose()?,
            provider_ref: get_opt_s(item, "provider_ref"),
            failure: get_opt_s(item, "failure"),
            refunded: item
                .contains_key("refunded")
                .then(|| super::codec::get_n(item, "refunded"))
                .transpose()?
                .unwrap_or(0),
            created_at: get_s(item, "created_at")?,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

impl Tx {
    /// Marks an attempt paid and takes it out of the reconciler's index, in the payment's
    /// own transaction (`ItemName::Attempt`; no condition: the payment decides).
    pub(crate) fn attempt_paid(
        &mut self,
        order_id: &str,
        payment_id: &str,
        at: &str,
    ) -> Result<&mut Self> {
        self.update(
            ItemName::Attempt,
            key_item(keys::attempt(order_id, payment_id)),
            "SET #status = :paid, updated_at = :at REMOVE gsi1pk, gsi1sk",
            Some("attribute_exists(pk)"),
            &["status"],
            vec![(":paid", s(AttemptStatus::Paid.as_str())), (":at", s(at))],
        )
    }
}

impl Store {
    /// An UpdateItem of one attempt, its `status` named `#status`.
    fn update_attempt(&self, attempt: &AttemptRecord) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(keys::attempt(
                &attempt.order_id,
                &attempt.payment_id,
            ))))
            .expression_attribute_names("#status", "status")
    }

    /// Access pattern: record a new attempt (`creating`, indexed for the reconciler)
    /// before the provider is called.
    pub async fn put_attempt(&self, attempt: &AttemptRecord, now: Timestamp) -> Result<()> {
        let mut stored = item(
            keys::attempt(&attempt.order_id, &attempt.payment_id),
            "payment_attempt",
            [
                ("payment_id", s(&attempt.payment_id)),
                ("order_id", s(&attempt.order_id)),
                ("channel_id", s(&attempt.channel_id)),
                ("provider", s(attempt.provider.as_str())),
                ("method", s(attempt.method.as_str())),
                ("amount", n(attempt.amount.amount)),
                ("currency", s(&attempt.amount.currency)),
                ("status", s(attempt.status.as_str())),
                ("created_at", s(&attempt.created_at)),
                ("updated_at", s(&attempt.updated_at)),
                (
                    "gsi1pk",
                    s(keys::attempts_index(shard_of(
                        &attempt.payment_id,
                        INDEX_SHARDS,
                    ))),
                ),
                ("gsi1sk", n(now.unix_seconds() + RECONCILE_AFTER_SECONDS)),
            ],
        );
        if let Some(failure) = &attempt.failure {
            stored.insert("failure".to_owned(), s(failure));
        }
        if self.put_if_absent(stored).await? {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "payment id {} was issued twice",
                attempt.payment_id
            )))
        }
    }

    /// Access pattern: one attempt (strongly consistent).
    pub async fn get_attempt(
        &self,
        order_id: &str,
        payment_id: &str,
    ) -> Result<Option<AttemptRecord>> {
        self.get_as(keys::attempt(order_id, payment_id), true).await
    }

    /// Access pattern: the provider opened the attempt (`creating → pending`) with what
    /// the buyer does next. False if it was no longer `creating` (paid meanwhile, say).
    pub async fn attempt_opened(
        &self,
        attempt: &AttemptRecord,
        action: &PaymentAction,
        provider_ref: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        let action = serde_json::to_string(action)
            .map_err(|_| Error::Corrupt("attempt action does not serialise".into()))?;
        let mut update = self
            .update_attempt(attempt)
            .condition_expression("#status = :creating")
            .expression_attribute_names("#action", "action")
            .expression_attribute_values(":creating", s(AttemptStatus::Creating.as_str()))
            .expression_attribute_values(":pending", s(AttemptStatus::Pending.as_str()))
            .expression_attribute_values(":action", s(action))
            .expression_attribute_values(":at", s(now.to_rfc3339()));
        update = match provider_ref {
            Some(reference) => update
                .update_expression("SET #status = :pending, #action = :action, provider_ref = :ref, updated_at = :at")
                .expression_attribute_values(":ref", s(reference)),
            None => update.update_expression("SET #status = :pending, #action = :action, updated_at = :at"),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Access pattern: an attempt ends unpaid (`failed` with the reason, or `closed`)
    /// and leaves the reconciler's index; only from `from`. False if it had moved on.
    pub async fn end_attempt(
        &self,
        attempt: &AttemptRecord,
        from: &[AttemptStatus],
        to: AttemptStatus,
        failure: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut update = self
            .update_attempt(attempt)
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":at", s(now.to_rfc3339()));
        let allowed: Vec<String> = (0..from.len()).map(|i| format!(":from{i}")).collect();
        for (name, status) in allowed.iter().zip(from) {
            update = update.expression_attribute_values(name, s(status.as_str()));
        }
        update = update.condition_expression(format!("#status IN ({})", allowed.join(", ")));
        update = match failure {
            Some(reason) => update
                .update_expression(
                    "SET #status = :to, failure = :failure, updated_at = :at REMOVE gsi1pk, gsi1sk",
                )
                .expression_attribute_values(":failure", s(reason)),
            None => update
                .update_expression("SET #status = :to, updated_at = :at REMOVE gsi1pk, gsi1sk"),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}

impl Store {
    /// Access pattern: open attempts due for a check by `due_by`, in one index shard,
    /// oldest first, at most `limit` (one Query page of the sparse index; each attempt
    /// checked leaves it or moves its due time on, so the next page is again the first).
    pub async fn due_attempts(
        &self,
        shard: u32,
        due_by: Timestamp,
        limit: i32,
    ) -> Result<Vec<(String, String)>> {
        let output = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :due")
            .expression_attribute_values(":pk", s(keys::attempts_index(shard)))
            .expression_attribute_values(":due", n(due_by.unix_seconds()))
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let mut due = Vec::with_capacity(output.items().len());
        for item in output.items() {
            let (pk, sk) = (get_s(item, "pk")?, get_s(item, "sk")?);
            if let (Some(order_id), Some(payment_id)) = (
                keys::order_id_of(&pk),
                sk.strip_prefix(keys::ATTEMPT_PREFIX),
            ) {
                due.push((order_id.to_owned(), payment_id.to_owned()));
            }
        }
        Ok(due)
    }

    /// Access pattern: check an open attempt again at `next` (while it is still open).
    pub async fn snooze_attempt(&self, attempt: &AttemptRecord, next: Timestamp) -> Result<()> {
        let result = self
            .update_attempt(attempt)
            .update_expression("SET gsi1sk = :next")
            .condition_expression("#status IN (:creating, :pending)")
            .expression_attribute_values(":next", n(next.unix_seconds()))
            .expression_attribute_values(":creating", s(AttemptStatus::Creating.as_str()))
            .expression_attribute_values(":pending", s(AttemptStatus::Pending.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if condition_failed(&err) => Ok(()),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}

/// Attempts in an order's partition (for `get_order_view`).
pub(crate) fn is_attempt(sk: &str) -> bool {
    sk.starts_with(keys::ATTEMPT_PREFIX)
}
