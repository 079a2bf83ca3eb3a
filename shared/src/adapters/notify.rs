//! The notifier adapters: email through SES (v2 `SendEmail`, simple content, UTF-8) and
//! SMS through SNS (`Publish` to a phone number, transactional). Locally both are moto's,
//! which keeps what was sent (the outbox `infra/kami outbox` prints).

use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message as SesMessage};
use aws_sdk_sns::types::MessageAttributeValue;

use crate::error::{Error, Result};
use crate::ports::PortFuture;
use crate::ports::notifier::{Message, Notifier};

/// Email from one verified sender (`NOTIFY_FROM_EMAIL`).
pub struct SesEmail {
    client: aws_sdk_sesv2::Client,
    from: String,
}

impl SesEmail {
    pub fn new(client: aws_sdk_sesv2::Client, from: String) -> Self {
        SesEmail { client, from }
    }

    async fn send_now(&self, message: &Message) -> Result<String> {
        let text = |data: &str| {
            Content::builder()
                .data(data)
                .charset("UTF-8")
                .build()
                .map_err(|e| Error::aws("sesv2", e))
        };
        let email = SesMessage::builder()
            .subject(text(&message.subject)?)
            .body(Body::builder().text(text(&message.body)?).build())
            .build();
        let sent = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(&message.to).build())
            .content(EmailContent::builder().simple(email).build())
            .send()
            .await
            .map_err(|e| Error::aws("sesv2", e))?;
        sent.message_id
            .ok_or_else(|| Error::Corrupt("SES answered without a MessageId".into()))
    }
}

impl Notifier for SesEmail {
    fn name(&self) -> &'static str {
        "ses"
    }

    fn send<'a>(&'a self, message: &'a Message) -> PortFuture<'a, String> {
        Box::pin(self.send_now(message))
    }
}

/// SMS straight to a phone number (no topic).
pub struct SnsSms {
    client: aws_sdk_sns::Client,
}

impl SnsSms {
    pub fn new(client: aws_sdk_sns::Client) -> Self {
        SnsSms { client }
    }

    async fn send_now(&self, message: &Message) -> Result<String> {
        // Transactional: delivered for reliability rather than cost (a delivery notice).
        let sms_type = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("Transactional")
            .build()
            .map_err(|e| Error::aws("sns", e))?;
        let sent = self
            .client
            .publish()
            .phone_number(&message.to)
            .message(&message.body)
            .message_attributes("AWS.SNS.SMS.SMSType", sms_type)
            .send()
            .await
            .map_err(|e| Error::aws("sns", e))?;
        sent.message_id
            .ok_or_else(|| Error::Corrupt("SNS answered without a MessageId".into()))
    }
}

impl Notifier for SnsSms {
    fn name(&self) -> &'static str {
        "sns"
    }

    fn send<'a>(&'a self, message: &'a Message) -> PortFuture<'a, String> {
        Box::pin(self.send_now(message))
    }
}
