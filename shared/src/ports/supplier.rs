//! Upstream suppliers: fulfil a top-up (a phone credit, a game account recharge) that
//! Kami does not hold in stock. Adapters: `adapters::supplier_http` (Kami's own
//! `http_json` protocol, docs/suppliers.md); a supplier with its own signing scheme is
//! one more adapter registered in `adapters::suppliers`.

use super::PortFuture;
use crate::error::Result;
use crate::ports::payment::Notification;

/// One top-up. `request_id` is Kami's and is sent with every attempt, so a supplier
/// that honours it tops up once however often it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpRequest {
    /// Unique per (order, attempt, supplier).
    pub request_id: String,
    /// The supplier's product code.
    pub product: String,
    /// Who receives the top-up (a phone number, an account id).
    pub account: String,
    /// Units of the supplier's product.
    pub quantity: u32,
    /// Where the supplier calls back (`{public api}/webhooks/suppliers/{supplier_id}`).
    pub callback_url: String,
}

/// What a supplier said about a top-up. A call that got no answer (a timeout, a
/// connection error, a 5xx) is an `Err` (`Error::Timeout` / `Error::Upstream`): the
/// outcome is unknown and the supplier is treated as failing (its circuit counts it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpOutcome {
    /// The account was topped up.
    Success { supplier_ref: String },
    /// Accepted, not finished: a callback or a later query tells.
    Pending { supplier_ref: Option<String> },
    /// Definitely not done: the supplier refused or failed it (a 4xx counts). `reason`
    /// is the supplier's text: for the order's history and the log, never the buyer.
    Failed { reason: String },
    /// Only from `query`: the supplier has no record of this request (it never
    /// arrived), so it is safe to submit again with the same `request_id`.
    NotFound,
    /// An answer came but says nothing readable (a 200 whose body does not parse): the
    /// outcome is unknown, though the supplier is up (its circuit does not count it).
    Unreadable { detail: String },
}

impl TopUpOutcome {
    /// The status word used in records and history: `success`, `pending`, `failed`,
    /// `not_found`, `unreadable`.
    pub fn status(&self) -> &'static str {
        match self {
            TopUpOutcome::Success { .. } => "success",
            TopUpOutcome::Pending { .. } => "pending",
            TopUpOutcome::Failed { .. } => "failed",
            TopUpOutcome::NotFound => "not_found",
            TopUpOutcome::Unreadable { .. } => "unreadable",
        }
    }
}

/// A supplier's callback, verified: which request it answers and what it says
/// (`Success`, `Pending` or `Failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupplierCallback {
    pub request_id: String,
    pub outcome: TopUpOutcome,
}

pub trait Supplier: Send + Sync {
    /// The protocol's name (`http_json`).
    fn kind(&self) -> &'static str;

    /// Submits a top-up. An `Err` leaves the outcome unknown: `query` before
    /// submitting again.
    fn submit<'a>(&'a self, request: &'a TopUpRequest) -> PortFuture<'a, TopUpOutcome>;

    /// Asks what became of a request (`NotFound` if the supplier never saw it).
    fn query<'a>(&'a self, request_id: &'a str) -> PortFuture<'a, TopUpOutcome>;

    /// Verifies a callback's signature and freshness (by `received_at`) over the raw
    /// bytes and reads it. A forgery or a stale message is `Error::InvalidSignature`; a
    /// verified body that does not parse is `Error::InvalidRequest`.
    fn verify_callback(&self, callback: &Notification<'_>) -> Result<SupplierCallback>;
}
