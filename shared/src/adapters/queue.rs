//! The queues: delivery (one message per paid order, `{"order_id": ...}`) and
//! notification (`{"kind": "delivery", "order_id": ...}`). Standard SQS: at-least-once,
//! so both consumers are idempotent.

use serde::{Deserialize, Serialize};

use crate::domain::notification::NotificationKind;
use crate::error::{Error, Result};

#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub order_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NotifyMessage {
    pub kind: NotificationKind,
    pub order_id: String,
}

/// One SQS queue taking JSON messages.
struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    async fn send(&self, message: &impl Serialize) -> Result<()> {
        let body = serde_json::to_string(message).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| Error::aws("sqs", e))?;
        Ok(())
    }
}

pub struct SqsDeliveryQueue(SqsQueue);

impl SqsDeliveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        SqsDeliveryQueue(SqsQueue { client, url })
    }

    pub async fn enqueue_delivery(&self, order_id: &str) -> Result<()> {
        self.0
            .send(&DeliveryMessage {
                order_id: order_id.to_owned(),
            })
            .await
    }

    /// Makes received messages visible again at once (visibility timeout 0): messages a
    /// worker had no time for are received again now, not after the queue's visibility
    /// timeout. Up to 10 per call (an SQS batch).
    pub async fn hand_back(&self, receipt_handles: &[&str]) -> Result<()> {
        let mut call = self
            .0
            .client
            .change_message_visibility_batch()
            .queue_url(&self.0.url);
        for (n, handle) in receipt_handles.iter().enumerate() {
            let entry = aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(n.to_string())
                .receipt_handle(*handle)
                .visibility_timeout(0)
                .build()
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            call = call.entries(entry);
        }
        let answer = call.send().await.map_err(|e| Error::aws("sqs", e))?;
        match answer.failed.len() {
            0 => Ok(()),
            failed => Err(Error::Aws {
                service: "sqs",
                message: format!(
                    "{failed} of {} messages not handed back",
                    receipt_handles.len()
                ),
            }),
        }
    }
}

pub struct SqsNotifyQueue(SqsQueue);

impl SqsNotifyQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        SqsNotifyQueue(SqsQueue { client, url })
    }

    pub async fn enqueue_notification(&self, kind: NotificationKind, order_id: &str) -> Result<()> {
        self.0
            .send(&NotifyMessage {
                kind,
                order_id: order_id.to_owned(),
            })
            .await
    }
}
