//! Notifications (docs/dynamodb.md, "Notifications"): one item per order, kind and
//! channel (`NOTIFY#{order_id}` / `{kind}#{channel}`), claimed before the send and marked
//! after it, so a delivered order is told once whatever its messages' retries. The body
//! is never stored (it may hold card keys).

use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, get_u32, item, key_item, n, s};
use super::{Store, condition_failed};
use crate::domain::notification::{Channel, Language, NotificationKind};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

fn notification_key(order_id: &str, kind: NotificationKind, channel: Channel) -> (String, String) {
    (
        notification_partition(order_id),
        format!("{}#{}", kind.as_str(), channel.as_str()),
    )
}

fn notification_partition(order_id: &str) -> String {
    format!("NOTIFY#{order_id}")
}

/// Where a notification is: being sent (by whoever holds the lease), sent, or failed
/// (to be tried again by its message's retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationStatus {
    Sending,
    Sent,
    Failed,
}

impl NotificationStatus {
    fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Sending => "sending",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Failed => "failed",
        }
    }

    fn parse(status: &str) -> Result<Self> {
        match status {
            "sending" => Ok(NotificationStatus::Sending),
            "sent" => Ok(NotificationStatus::Sent),
            "failed" => Ok(NotificationStatus::Failed),
            _ => Err(Error::Corrupt(format!(
                "unknown notification status {status}"
            ))),
        }
    }
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub order_id: String,
    pub kind: String,
    pub channel: Channel,
    /// The email address or phone number it went to.
    pub recipient: String,
    pub language: Language,
    pub status: NotificationStatus,
    pub attempts: u32,
    /// The channel's id for the sent message (SES's or SNS's `MessageId`).
    pub provider_ref: Option<String>,
    pub sent_at: Option<Timestamp>,
    /// What went wrong last, without the message (an error class and the service's text).
    pub last_error: Option<String>,
}

impl FromItem for NotificationRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(NotificationRecord {
            order_id: get_s(item, "order_id")?,
            kind: get_s(item, "kind")?,
            channel: Channel::parse(&get_s(item, "channel")?)?,
            recipient: get_s(item, "recipient")?,
            language: Language::parse(&get_s(item, "language")?)
                .map_err(|_| Error::Corrupt("unknown notification language".into()))?,
            status: NotificationStatus::parse(&get_s(item, "status")?)?,
            attempts: get_u32(item, "attempts")?,
            provider_ref: get_opt_s(item, "provider_ref"),
            sent_at: item
                .contains_key("sent_at")
                .then(|| get_n(item, "sent_at").map(Timestamp))
                .transpose()?,
            last_error: get_opt_s(item, "last_error"),
        })
    }
}

/// One notification to claim: which, to whom, in which language.
pub struct NotificationClaim<'a> {
    pub order_id: &'a str,
    pub kind: NotificationKind,
    pub channel: Channel,
    pub recipient: &'a str,
    pub language: Language,
}

impl Store {
    /// Access pattern: claim a notification for sending until `lease_until`: written
    /// only if it was never claimed, last failed, or its claimant's lease ran out (a
    /// worker that died mid-send). False when it was sent or is being sent.
    pub async fn claim_notification(
        &self,
        claim: &NotificationClaim<'_>,
        attempts_before: Option<u32>,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool> {
        let record = item(
            notification_key(claim.order_id, claim.kind, claim.channel),
            "notification",
            [
                ("order_id", s(claim.order_id)),
                ("kind", s(claim.kind.as_str())),
                ("channel", s(claim.channel.as_str())),
                ("recipient", s(claim.recipient)),
                ("language", s(claim.language.as_str())),
                ("status", s(NotificationStatus::Sending.as_str())),
                ("attempts", n(attempts_before.unwrap_or(0) + 1)),
                ("lease_until", n(lease_until.0)),
                ("claimed_at", n(now.0)),
            ],
        );
        self.put_if_named(
            record,
            "attribute_not_exists(pk) OR #status = :failed \
             OR (#status = :sending AND lease_until < :now)",
            &[("#status", "status")],
            vec![
                (":failed", s(NotificationStatus::Failed.as_str())),
                (":sending", s(NotificationStatus::Sending.as_str())),
                (":now", n(now.0)),
            ],
        )
        .await
    }

    /// Access pattern: a notification as it is now (consistent).
    pub async fn notification(
        &self,
        order_id: &str,
        kind: NotificationKind,
        channel: Channel,
    ) -> Result<Option<NotificationRecord>> {
        self.get_as(notification_key(order_id, kind, channel), true)
            .await
    }

    /// Access pattern: every notification of an order (one Query).
    pub async fn notifications_of(&self, order_id: &str) -> Result<Vec<NotificationRecord>> {
        self.partition_as(&notification_partition(order_id)).await
    }

    /// Access pattern: a claimed notification sent (from `sending` only).
    pub async fn notification_sent(
        &self,
        claim: &NotificationClaim<'_>,
        provider_ref: &str,
        now: Timestamp,
    ) -> Result<bool> {
        self.settle_notification(
            claim,
            "SET #status = :to, provider_ref = :ref, sent_at = :now REMOVE lease_until",
            vec![(":ref", s(provider_ref)), (":now", n(now.0))],
            NotificationStatus::Sent,
        )
        .await
    }

    /// Access pattern: a claimed notification failed (from `sending` only): its message's
    /// retry claims it again.
    pub async fn notification_failed(
        &self,
        claim: &NotificationClaim<'_>,
        error: &str,
    ) -> Result<bool> {
        self.settle_notification(
            claim,
            "SET #status = :to, last_error = :error REMOVE lease_until",
            vec![(":error", s(error))],
            NotificationStatus::Failed,
        )
        .await
    }

    async fn settle_notification(
        &self,
        claim: &NotificationClaim<'_>,
        update: &str,
        values: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
        to: NotificationStatus,
    ) -> Result<bool> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(notification_key(
                claim.order_id,
                claim.kind,
                claim.channel,
            ))))
            .update_expression(update)
            .condition_expression("#status = :sending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sending", s(NotificationStatus::Sending.as_str()))
            .expression_attribute_values(":to", s(to.as_str()));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}
