//! Upstream suppliers: fulfil a top-up (a phone credit, a game account recharge) that
//! Kami does not hold in stock. No real supplier exists yet: this port and its fake are
//! what the top-up issue implements against.

use super::PortFuture;
use crate::domain::money::Money;

/// One top-up. `request_id` is Kami's and is sent with every attempt, so a supplier
/// that honours it tops up once however often it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpRequest {
    pub request_id: String,
    /// The supplier's product code.
    pub product: String,
    /// Who receives the top-up (a phone number, an account id).
    pub account: String,
    pub face_value: Money,
}

/// What a supplier says about a top-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpOutcome {
    Success {
        supplier_ref: String,
    },
    /// Accepted, not finished: ask again later.
    Pending,
    Failed {
        reason: String,
    },
    /// The supplier has no record of this request (it never arrived): safe to submit
    /// again with the same `request_id`.
    Unknown,
}

pub trait Supplier: Send + Sync {
    fn name(&self) -> &'static str;

    /// Submits a top-up. A call that fails or times out leaves the outcome unknown:
    /// `query` before submitting again.
    fn submit<'a>(&'a self, request: &'a TopUpRequest) -> PortFuture<'a, TopUpOutcome>;

    fn query<'a>(&'a self, request_id: &'a str) -> PortFuture<'a, TopUpOutcome>;
}
