//! The delivery queue: one message per paid order, `{"order_id": ...}`. Standard SQS:
//! at-least-once, so the worker is idempotent.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub order_id: String,
}

pub struct SqsDeliveryQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsDeliveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        SqsDeliveryQueue { client, url }
    }

    pub async fn enqueue_delivery(&self, order_id: &str) -> Result<()> {
        let body = serde_json::to_string(&DeliveryMessage {
            order_id: order_id.to_owned(),
        })
        .map_err(|e| Error::Corrupt(e.to_string()))?;
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
