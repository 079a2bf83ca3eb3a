//! Payment providers: take a buyer's money for an order and tell Kami when it arrived.
//! The adapter for a provider owns its wire format, signing and verification; the rules
//! (`app::payments`) see only the types here, never a provider's field names.

use lambda_http::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::PortFuture;
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::Error;

/// An HTTP notification as the provider sent it: headers and the raw body (signatures
/// cover the exact bytes), and when it arrived by Kami's clock.
pub struct Notification<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub received_at: Timestamp,
}

/// A provider's word that money arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    pub provider: &'static str,
    /// The provider's id of this notification (Stripe's event id, Alipay's `notify_id`,
    /// WeChat Pay's notification `id`); each is applied once.
    pub event_id: String,
    /// Kami's attempt the money is for (the provider's merchant order number,
    /// `out_trade_no`; Stripe's `metadata.payment_id`), when the notification names one.
    /// A channel's notification must name one: it pays only that attempt.
    pub payment_id: Option<String>,
    /// The order it names directly (Stripe's `client_reference_id`), when it does.
    pub order_id: Option<String>,
    pub amount: Money,
    /// The provider's reference of the payment (two notifications about one payment
    /// share it: Alipay's `trade_no`, WeChat's `transaction_id`, Stripe's payment intent).
    pub provider_ref: String,
}

/// What a verified notification means to Kami.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    /// Money for an attempt or an order arrived.
    Paid(PaymentNotice),
    /// The buyer has not paid yet (Alipay's `WAIT_BUYER_PAY`): acknowledged.
    Waiting {
        event_id: String,
        payment_id: String,
    },
    /// The provider closed the attempt unpaid (Alipay's `TRADE_CLOSED`).
    Closed {
        event_id: String,
        payment_id: String,
    },
    /// A refund Kami asked for has settled (WeChat Pay's `REFUND.SUCCESS`, ...).
    RefundSettled {
        event_id: String,
        /// Kami's refund id (`out_refund_no`).
        refund_id: String,
        succeeded: bool,
    },
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

/// The kinds of payment page a provider offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// A desktop web page (Alipay `alipay.trade.page.pay`).
    Page,
    /// A mobile web page (Alipay `alipay.trade.wap.pay`).
    Wap,
    /// A QR code the buyer scans (WeChat Pay Native).
    Native,
    /// A hosted checkout page (Stripe Checkout).
    Checkout,
}

impl PaymentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Page => "page",
            PaymentMethod::Wap => "wap",
            PaymentMethod::Native => "native",
            PaymentMethod::Checkout => "checkout",
        }
    }
}

/// Ask a provider to take payment for an order: one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// Kami's id of the attempt, sent as the provider's merchant order number
    /// (`out_trade_no`; Stripe's `metadata.payment_id`): 6–32 of `A-Z a-z 0-9 _ -`.
    pub payment_id: String,
    pub order_id: String,
    pub amount: Money,
    /// What the buyer sees on the provider's page (the product's title).
    pub subject: String,
    pub method: PaymentMethod,
    /// Where the provider sends this attempt's notifications (the channel's webhook URL).
    pub notify_url: String,
    /// The provider must not take money after this (the order's deadline).
    pub expires_at: Timestamp,
    pub buyer_email: String,
}

/// What the buyer does next to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentAction {
    /// Open this URL (Alipay's signed gateway URL, Stripe Checkout's page).
    Redirect { url: String },
    /// Show this as a QR code (WeChat Pay Native's `code_url`).
    QrCode { code_url: String },
}

/// A payment the provider opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSession {
    /// The provider's own reference, when it gives one at creation (Stripe's session id);
    /// Alipay and WeChat Pay are asked by `payment_id`.
    pub provider_ref: Option<String>,
    pub action: PaymentAction,
}

/// Which payment to ask about: Kami's attempt id and the provider's reference if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentHandle {
    pub payment_id: String,
    pub provider_ref: Option<String>,
}

/// A payment's state as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentState {
    AwaitingPayment,
    Paid {
        amount: Money,
        provider_ref: String,
    },
    Closed,
    Refunded {
        amount: Money,
    },
    /// The provider does not know this payment.
    Unknown,
}

/// Give money back for a payment. `refund_id` is Kami's (`out_request_no`,
/// `out_refund_no`, Stripe's idempotency key): asking twice refunds once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub refund_id: String,
    pub payment: PaymentHandle,
    pub amount: Money,
    /// What the payment took in all (WeChat Pay asks for it).
    pub paid: Money,
    pub reason: String,
    /// Where the provider reports the refund's outcome, when it does (WeChat Pay).
    pub notify_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded,
    Pending,
    Refused { reason: String },
}

/// Which bill to fetch: the settlement period as UTC instants (Stripe lists by
/// `created`) and as the day it is in the settlement's zone (Alipay and WeChat Pay
/// bill by day, `bill_date`, in China time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillPeriod {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Money going in (a payment) or back out (a refund).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillLineKind {
    Payment,
    Refund,
}

/// Where a bill line's money stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillLineStatus {
    /// The money moved.
    Succeeded,
    /// Accepted, not settled yet (a refund in flight).
    Pending,
    /// It did not move (a refund that failed).
    Failed,
}

/// One line of a provider's bill, in the domain's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillLine {
    pub kind: BillLineKind,
    /// The provider's reference of the payment (Alipay's `trade_no`, WeChat Pay's
    /// `transaction_id`, Stripe's payment intent), when known: a refund's line names its
    /// payment's (Kami's refund records do not carry it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<String>,
    /// Kami's attempt (`out_trade_no`; Stripe's `metadata.payment_id`), when the bill
    /// carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Kami's refund id (`out_request_no`, `out_refund_no`, Stripe's
    /// `metadata.refund_id`), refunds only, when the bill carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Always positive: `kind` says which way it went.
    pub amount: Money,
    pub status: BillLineStatus,
}

/// The HTTP answer a provider expects to a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub trait PaymentProvider: Send + Sync {
    /// The provider's name in routes and records (`alipay`, `wechatpay`, `stripe`).
    fn name(&self) -> &'static str;

    /// Opens a payment. A method the provider does not offer is
    /// `Error::InvalidRequest { code: "unsupported_payment_method", .. }`; a provider that
    /// cannot be reached, answers with a failure or whose answer does not verify is
    /// `Error::Upstream` / `Error::Timeout`.
    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession>;

    /// Checks that the notification comes from the provider for this channel (signature
    /// over the raw bytes, freshness by `received_at`, the channel's own account ids) and
    /// says what it means. A forgery, or another account's notification, is
    /// `Error::InvalidSignature`.
    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent>;

    /// The answer the provider expects: `accepted` once Kami has recorded the
    /// notification, otherwise a refusal with `error`'s message.
    fn notification_answer(&self, outcome: std::result::Result<(), &Error>) -> NotificationAnswer;

    fn query_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, PaymentState>;

    /// Stops a payment that has not been paid (an expired order) from being paid.
    fn close_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, ()>;

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> PortFuture<'a, RefundOutcome>;
}

/// A provider's bill of a channel's account: kept apart from [`PaymentProvider`] so only
/// the settlement function, which reconciles bills, links the bill readers (and the
/// functions that take payments do not carry them; docs/bench.md).
pub trait BillSource: Send + Sync {
    /// Every payment and refund the provider records on the account for `period`. A
    /// provider that cannot be reached or whose bill cannot be read is
    /// `Error::Upstream` / `Error::Timeout`.
    fn fetch_bill<'a>(&'a self, period: &'a BillPeriod) -> PortFuture<'a, Vec<BillLine>>;
}
