//! Payment providers: take a buyer's money for an order and tell Kami when it arrived.
//! The adapter for a provider owns its wire format, signing and verification; the rules
//! (`app::payments`) see only the types here, never a provider's field names.

use lambda_http::http::HeaderMap;

use super::PortFuture;
use crate::domain::money::Money;
use crate::domain::time::Timestamp;

/// An HTTP notification as the provider sent it: headers and the raw body (signatures
/// cover the exact bytes), and when it arrived by Kami's clock.
pub struct Notification<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub received_at: Timestamp,
}

/// A provider's word that money for an order arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    pub provider: &'static str,
    /// The provider's id of this notification; each is applied once.
    pub event_id: String,
    pub order_id: String,
    pub amount: Money,
    /// The provider's reference of the payment (two notifications about one payment
    /// share it).
    pub provider_ref: String,
}

/// What a verified notification means to Kami.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    /// Money for an order arrived.
    Paid(PaymentNotice),
    /// Money arrived but the notification cannot be bound to an order (no order id,
    /// amount or currency): acknowledged, and kept for an operator.
    Unbound {
        event_id: String,
        kind: String,
        missing: &'static str,
    },
    /// Nothing Kami acts on; acknowledged so the provider stops sending it.
    Ignored { event_id: String, kind: String },
}

/// Ask a provider to take payment for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    pub order_id: String,
    pub amount: Money,
    pub buyer_email: String,
    /// The provider must not take money after this (the order's deadline).
    pub expires_at: Timestamp,
}

/// Where the buyer pays, and the reference to query or close it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSession {
    pub provider_ref: String,
    pub pay_url: String,
}

/// A payment's state as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentState {
    AwaitingPayment,
    Paid {
        amount: Money,
    },
    Closed,
    Refunded {
        amount: Money,
    },
    /// The provider does not know this reference.
    Unknown,
}

/// Give money back for a payment. `refund_id` is Kami's: asking twice refunds once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub refund_id: String,
    pub provider_ref: String,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded,
    Pending,
    Refused { reason: String },
}

pub trait PaymentProvider: Send + Sync {
    /// The provider's name in routes and records (`stripe`).
    fn name(&self) -> &'static str;

    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession>;

    /// Checks that the notification comes from the provider (signature, freshness by
    /// `received_at`) and says what it means. A forgery is `Error::InvalidSignature`.
    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent>;

    fn query_payment<'a>(&'a self, provider_ref: &'a str) -> PortFuture<'a, PaymentState>;

    /// Stops a payment that has not been paid (an expired order) from being paid.
    fn close_payment<'a>(&'a self, provider_ref: &'a str) -> PortFuture<'a, ()>;

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> PortFuture<'a, RefundOutcome>;
}
