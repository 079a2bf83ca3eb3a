//! The one error type of `shared/`. Every variant a client can cause carries a stable
//! code; `http`'s `IntoResponse for Error` is the only place that turns it into a status code.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request refused by a rule; `path` is the JSON path of the field at fault.
    #[error("{message}")]
    InvalidRequest {
        code: &'static str,
        message: String,
        path: Option<String>,
    },
    /// A body that is not JSON, or not of the expected shape (`path`: where).
    #[error("{message}")]
    InvalidJson {
        message: String,
        path: Option<String>,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type {0} is not supported here")]
    UnsupportedMediaType(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Valid credentials without the scope this route needs.
    #[error("this API key lacks the scope {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Something that existed and is gone for good (an expired or used link): the code.
    #[error("gone: {0}")]
    Gone(&'static str),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{0}")]
    Conflict(ConflictKind),
    /// The client (its address or its email) already holds as many unpaid units of the
    /// product as it may (docs/security.md, stock hoarding).
    #[error(
        "this {holder} already holds {limit} unpaid units of this product: pay for an open order, or retry after {retry_after_seconds} s"
    )]
    TooManyPendingOrders {
        holder: &'static str,
        limit: u32,
        retry_after_seconds: i64,
    },
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("webhook signature verification failed: {0}")]
    InvalidSignature(&'static str),
    /// A supplier callback that does not verify under the supplier's secret (answered
    /// 401, as the supplier protocol says; payment providers get their own answers).
    #[error("callback signature verification failed: {0}")]
    UnverifiedCallback(&'static str),
    #[error("illegal order transition from {from} by {cause}")]
    IllegalTransition {
        /// The order's status (`OrderStatus::as_str`): error.rs depends on no domain type.
        from: &'static str,
        cause: &'static str,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("card key cryptography failed: {0}")]
    Crypto(&'static str),
    #[error("configuration: {0}")]
    Config(String),
    #[error("AWS {service} call failed: {message}")]
    Aws {
        service: &'static str,
        message: String,
    },
    #[error("contention on {0} did not settle; retry")]
    Contention(&'static str),
    /// An outside system (a payment provider, supplier or notifier) answered with a
    /// failure or could not be reached.
    #[error("{system} call failed: {message}")]
    Upstream {
        system: &'static str,
        message: String,
    },
    /// An outside system gave no answer in time: whether it acted is unknown.
    #[error("{system} did not answer in time")]
    Timeout { system: &'static str },
    /// The invocation's time budget ran out before this step could start (the delivery
    /// worker stops in time rather than be killed mid-batch): retry it.
    #[error("the invocation's time ran out before {0}")]
    OutOfTime(&'static str),
    /// Every eligible payment channel failed to open a payment (each attempt is recorded
    /// on the order).
    #[error("no payment provider could open a payment; {attempts} attempt(s) failed")]
    PaymentProvidersUnavailable { attempts: usize },
    /// A port operation this adapter does not implement yet.
    #[error("{operation} is not available for {system} yet")]
    NotAvailable {
        system: &'static str,
        operation: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    OutOfStock,
    ProductExists,
    /// The order is not awaiting payment (paid, expired, ...).
    OrderNotPayable,
    /// The channel is disabled, or does not take the order's currency or amount.
    ChannelNotEligible,
    /// The refunds of a payment would add up to more than it took.
    RefundExceedsPayment,
    /// The payment came through no channel Kami can refund through (the deployment's
    /// default Stripe endpoint, a manual confirmation).
    RefundNotPossible,
    /// None of the product's suppliers is enabled: nobody pays for what cannot be
    /// delivered.
    ProductUnavailable,
    /// Another distributor has this referral code.
    ReferralCodeTaken,
    /// The statement's payout was recorded with another reference.
    StatementAlreadyPaid,
    /// The statement is still open: nothing is paid before its totals are final.
    StatementOpen,
    /// The license already has as many active instances as it allows.
    ActivationLimitReached,
    /// The license is expired, voided or refunded.
    LicenseNotActive,
    /// A count card has fewer uses left than asked.
    NoUsesLeft,
    EntitlementExpired,
    /// Taken back (its order refunded).
    EntitlementRevoked,
    /// A membership has no uses to consume.
    NotRedeemable,
    /// A redemption id sent again with other `uses`.
    RedemptionIdReused,
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictKind::OutOfStock => "not enough stock for this quantity",
            ConflictKind::ProductExists => "a product with this sku already exists",
            ConflictKind::OrderNotPayable => "the order is not awaiting payment",
            ConflictKind::ChannelNotEligible => {
                "the channel is disabled or does not take this order's currency or amount"
            }
            ConflictKind::RefundExceedsPayment => {
                "the refunds of this payment would add up to more than it took"
            }
            ConflictKind::RefundNotPossible => {
                "this payment did not come through a payment channel: refund it where it was taken"
            }
            ConflictKind::ProductUnavailable => {
                "this product cannot be delivered right now: none of its suppliers is enabled"
            }
            ConflictKind::ReferralCodeTaken => "another distributor has this referral code",
            ConflictKind::StatementAlreadyPaid => {
                "this statement's payout was already recorded with another reference"
            }
            ConflictKind::StatementOpen => "this statement is not closed yet",
            ConflictKind::ActivationLimitReached => {
                "this license key already has as many active instances as it allows: deactivate one first"
            }
            ConflictKind::LicenseNotActive => "this license key is expired, voided or refunded",
            ConflictKind::NoUsesLeft => "this entitlement has fewer uses left than asked",
            ConflictKind::EntitlementExpired => "this entitlement has expired",
            ConflictKind::EntitlementRevoked => "this entitlement was revoked",
            ConflictKind::NotRedeemable => {
                "this entitlement is a membership: it has no uses to redeem"
            }
            ConflictKind::RedemptionIdReused => {
                "this redemption_id was already used with a different number of uses"
            }
        })
    }
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            code,
            message: message.into(),
            path: None,
        }
    }

    /// As `invalid`, naming the JSON path of the field at fault (`buyer.email`).
    pub fn invalid_field(code: &'static str, path: &str, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            code,
            message: message.into(),
            path: Some(path.to_owned()),
        }
    }

    /// Names the field at fault of a refused request (other errors pass unchanged).
    pub fn at(self, field: &str) -> Self {
        match self {
            Error::InvalidRequest { code, message, .. } => {
                Error::invalid_field(code, field, message)
            }
            other => other,
        }
    }

    pub fn invalid_json(message: impl std::fmt::Display) -> Self {
        Error::InvalidJson {
            message: format!("request body is not valid JSON: {message}"),
            path: None,
        }
    }

    /// Wraps an SDK error without its request/response payloads: only the error's
    /// display chain, which the SDK keeps free of sensitive fields.
    pub fn aws(service: &'static str, err: impl std::error::Error) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        Error::Aws { service, message }
    }
}
