//! Notifiers: send a message to a buyer, one adapter per channel (email through SES,
//! SMS through SNS: `adapters::notify`).

use super::PortFuture;
pub use crate::domain::notification::Channel;

/// One message. `message_id` is Kami's, so a retried send can be recognised. Its body
/// may carry a card key: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub channel: Channel,
    /// An email address or a phone number.
    pub to: String,
    pub subject: String,
    pub body: String,
}

pub trait Notifier: Send + Sync {
    fn name(&self) -> &'static str;

    /// Hands the message over for delivery; returns the notifier's reference for it.
    fn send<'a>(&'a self, message: &'a Message) -> PortFuture<'a, String>;
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("message_id", &self.message_id)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
