//! Order states and the one table of legal transitions. Every transition is stored
//! with an order event (time, from, to, cause) in the same DynamoDB transaction.

use serde::{Deserialize, Serialize};

use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    /// A supplier is working on it: a top-up request is pending, or its outcome is
    /// unknown and being asked about.
    Delivering,
    Delivered,
    Expired,
    Cancelled,
    /// Money arrived for an order whose stock was already given back: kept for an operator.
    PaidAfterExpiry,
    /// Money arrived but not the amount or currency of the order: kept for an operator.
    PaymentException,
    /// Delivery gave up after the queue's last attempt, or its fulfiller reported a
    /// definite failure (`exception` says why): kept for an operator to redeliver.
    DeliveryFailed,
    /// A bundle (`on_partial_failure: keep`) delivered every part but one that failed
    /// for good (`failed_part`, `exception` says why): kept for an operator.
    PartiallyDelivered,
    /// Part of the order's payment was given back.
    PartiallyRefunded,
    /// All of the order's payment was given back.
    Refunded,
    /// An operator settled an order that needed a person, with a reason (the order's
    /// `resolution`): it holds no stock and nothing more happens to it.
    Resolved,
}

/// What moves an order from one state to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Created,
    PaymentReceived,
    /// Exact money for an expired order, and its stock could be reserved again.
    LatePaymentReserved,
    PaymentMismatch,
    Expire,
    Cancel,
    Deliver,
    DeliveryGaveUp,
    /// The fulfiller of the order's delivery type reported that delivery cannot succeed.
    FulfilmentFailed,
    /// A refund that leaves part of the payment.
    PartialRefund,
    /// A refund that gives back the rest of the payment.
    Refund,
    /// The fulfiller's work goes on at a supplier (a top-up pending or unknown).
    AwaitSupplier,
    /// An operator settled an order that needed a person.
    Resolve,
    /// An operator accepted the money as it came (short, or after the order expired)
    /// and sent the order to delivery.
    AcceptPayment,
    /// An operator delivered keys of their own in place of the order's stock.
    Substitute,
    /// A bundle's part failed for good and the others were delivered.
    PartFailed,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Created => "created",
            Cause::PaymentReceived => "payment_received",
            Cause::LatePaymentReserved => "late_payment_reserved",
            Cause::PaymentMismatch => "payment_mismatch",
            Cause::Expire => "expire",
            Cause::Cancel => "cancel",
            Cause::Deliver => "deliver",
            Cause::DeliveryGaveUp => "delivery_gave_up",
            Cause::FulfilmentFailed => "fulfilment_failed",
            Cause::PartialRefund => "partial_refund",
            Cause::Refund => "refund",
            Cause::AwaitSupplier => "await_supplier",
            Cause::Resolve => "resolve",
            Cause::AcceptPayment => "accept_payment",
            Cause::Substitute => "substitute",
            Cause::PartFailed => "part_failed",
        }
    }
}

/// The transition table: (from, cause) -> to. Anything not listed is illegal.
const TRANSITIONS: &[(OrderStatus, Cause, OrderStatus)] = {
    use Cause::*;
    use OrderStatus::*;
    &[
        (PendingPayment, PaymentReceived, Paid),
        (PendingPayment, PaymentMismatch, PaymentException),
        (PendingPayment, Expire, Expired),
        (PendingPayment, Cancel, Cancelled),
        (Expired, LatePaymentReserved, Paid),
        (Expired, PaymentReceived, PaidAfterExpiry),
        (Expired, PaymentMismatch, PaidAfterExpiry),
        (Cancelled, PaymentReceived, PaidAfterExpiry),
        (Cancelled, PaymentMismatch, PaidAfterExpiry),
        (Paid, Deliver, Delivered),
        (Paid, DeliveryGaveUp, DeliveryFailed),
        (Paid, FulfilmentFailed, DeliveryFailed),
        // A redelivery that fails again records why, once more.
        (DeliveryFailed, FulfilmentFailed, DeliveryFailed),
        (DeliveryFailed, Deliver, Delivered),
        // A supplier works on it; a retry of a failed top-up waits on a supplier again.
        (Paid, AwaitSupplier, Delivering),
        (DeliveryFailed, AwaitSupplier, Delivering),
        (Delivering, Deliver, Delivered),
        (Delivering, FulfilmentFailed, DeliveryFailed),
        (Delivering, DeliveryGaveUp, DeliveryFailed),
        // A bundle kept what it could deliver.
        (Paid, PartFailed, PartiallyDelivered),
        (Delivering, PartFailed, PartiallyDelivered),
        (DeliveryFailed, PartFailed, PartiallyDelivered),
        // Money given back: a delivered order's keys are never sold again (they left
        // stock when delivered); an order whose money was an exception is settled.
        (Delivered, PartialRefund, PartiallyRefunded),
        (PartiallyRefunded, PartialRefund, PartiallyRefunded),
        (Delivered, Refund, Refunded),
        (PartiallyRefunded, Refund, Refunded),
        (PartiallyDelivered, PartialRefund, PartiallyRefunded),
        (PartiallyDelivered, Refund, Refunded),
        (PaymentException, Refund, Refunded),
        (PaidAfterExpiry, Refund, Refunded),
        // An operator settles what needs a person (delivered by hand, refunded outside
        // Kami, a test order...): the exits from the exception queue besides delivery
        // and refunds.
        (DeliveryFailed, Resolve, Resolved),
        (PaymentException, Resolve, Resolved),
        (PaidAfterExpiry, Resolve, Resolved),
        (PartiallyDelivered, Resolve, Resolved),
        // Or takes the money as it came and delivers (stock taken again after expiry).
        (PaymentException, AcceptPayment, Paid),
        (PaidAfterExpiry, AcceptPayment, Paid),
        // Or delivers keys typed by the operator in place of stock.
        (DeliveryFailed, Substitute, Delivered),
        (PaymentException, Substitute, Delivered),
        (PaidAfterExpiry, Substitute, Delivered),
    ]
};

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Delivering => "delivering",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Expired => "expired",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::PaidAfterExpiry => "paid_after_expiry",
            OrderStatus::PaymentException => "payment_exception",
            OrderStatus::DeliveryFailed => "delivery_failed",
            OrderStatus::PartiallyDelivered => "partially_delivered",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        ALL_STATUSES
            .iter()
            .copied()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| Error::Corrupt(format!("unknown order status {text:?}")))
    }

    /// The state `cause` leads to from here, or an error if the table has no such row.
    pub fn next(self, cause: Cause) -> Result<OrderStatus> {
        TRANSITIONS
            .iter()
            .find(|(from, by, _)| *from == self && *by == cause)
            .map(|(_, _, to)| *to)
            .ok_or(Error::IllegalTransition {
                from: self.as_str(),
                cause: cause.as_str(),
            })
    }

    /// Waiting for a person: the order is in the exception queue
    /// (`GET /admin/exceptions`) while it is in one of these.
    pub fn needs_a_person(self) -> bool {
        matches!(
            self,
            OrderStatus::DeliveryFailed
                | OrderStatus::PaymentException
                | OrderStatus::PaidAfterExpiry
                | OrderStatus::PartiallyDelivered
        )
    }

    /// Its units are reserved on its product's stock counters: from the order until it
    /// is delivered, expired, cancelled, refunded or resolved.
    pub fn holds_stock(self) -> bool {
        matches!(
            self,
            OrderStatus::PendingPayment
                | OrderStatus::Paid
                | OrderStatus::Delivering
                | OrderStatus::DeliveryFailed
                | OrderStatus::PaymentException
        )
    }

    /// Paid and waiting for delivery: the delivery worker may act.
    pub fn awaits_delivery(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid | OrderStatus::Delivering | OrderStatus::DeliveryFailed
        )
    }
}

/// What a direct top-up order asks of its suppliers, fixed when the order is made: a
/// later change to the product never redirects a paid order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpOrder {
    /// The buyer's account, exactly as given (it matched the product's pattern).
    pub account: String,
    pub supplier_product: String,
    /// Supplier ids, first choice first.
    pub suppliers: Vec<String>,
    /// What the order's units cost at a supplier, as the product said when it was
    /// ordered (owed to whichever supplier tops it up); `None`: not tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier_cost: Option<Money>,
}

/// When an order created at `created` stops waiting for payment.
pub fn payment_deadline(created: Timestamp, ttl_seconds: i64) -> Timestamp {
    created.plus_seconds(ttl_seconds)
}

/// An unpaid order past its deadline (at the deadline itself, too): the sweep expires it.
pub fn payment_overdue(status: OrderStatus, expires_at: Timestamp, now: Timestamp) -> bool {
    status == OrderStatus::PendingPayment && expires_at <= now
}

pub const ALL_STATUSES: [OrderStatus; 13] = [
    OrderStatus::PendingPayment,
    OrderStatus::Paid,
    OrderStatus::Delivering,
    OrderStatus::Delivered,
    OrderStatus::Expired,
    OrderStatus::Cancelled,
    OrderStatus::PaidAfterExpiry,
    OrderStatus::PaymentException,
    OrderStatus::DeliveryFailed,
    OrderStatus::PartiallyDelivered,
    OrderStatus::PartiallyRefunded,
    OrderStatus::Refunded,
    OrderStatus::Resolved,
];

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cause::*;
    use OrderStatus::*;

    #[test]
    fn happy_path_is_legal() {
        assert_eq!(PendingPayment.next(PaymentReceived).unwrap(), Paid);
        assert_eq!(Paid.next(Deliver).unwrap(), Delivered);
    }

    #[test]
    fn late_payment_is_kept_not_dropped() {
        assert_eq!(Expired.next(LatePaymentReserved).unwrap(), Paid);
        assert_eq!(Expired.next(PaymentReceived).unwrap(), PaidAfterExpiry);
        assert_eq!(Cancelled.next(PaymentReceived).unwrap(), PaidAfterExpiry);
    }

    #[test]
    fn illegal_transitions_are_errors() {
        for (from, cause) in [
            (Delivered, Deliver),
            (Delivered, PaymentReceived),
            (PendingPayment, Deliver),
            (Expired, Expire),
            (Paid, PaymentReceived),
            (Paid, Expire),
            (PaidAfterExpiry, Deliver),
            (Delivered, Expire),
        ] {
            let err = from.next(cause).unwrap_err();
            assert!(
                matches!(err, Error::IllegalTransition { from: f, .. } if f == from.as_str()),
                "{from} by {cause:?} should be illegal"
            );
        }
    }

    #[test]
    fn every_row_is_reachable_and_unique() {
        for (i, (from, cause, to)) in TRANSITIONS.iter().enumerate() {
            assert_eq!(from.next(*cause).unwrap(), *to);
            assert!(
                TRANSITIONS[i + 1..]
                    .iter()
                    .all(|(f, c, _)| (f, c) != (from, cause)),
                "duplicate row for {from} {cause:?}"
            );
        }
    }

    #[test]
    fn an_unpaid_order_is_overdue_from_its_deadline_on() {
        use crate::fakes::FakeClock;
        use crate::ports::Clock;

        let clock = FakeClock::default();
        let deadline = payment_deadline(clock.now(), 900);
        assert_eq!(deadline, clock.now().plus_seconds(900));
        clock.advance_seconds(899);
        assert!(!payment_overdue(PendingPayment, deadline, clock.now()));
        clock.advance_seconds(1);
        assert!(payment_overdue(PendingPayment, deadline, clock.now()));
        clock.advance_seconds(31 * 86_400);
        assert!(payment_overdue(PendingPayment, deadline, clock.now()));
        for settled in ALL_STATUSES.into_iter().filter(|s| *s != PendingPayment) {
            assert!(
                !payment_overdue(settled, deadline, clock.now()),
                "{settled}"
            );
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in ALL_STATUSES {
            assert_eq!(OrderStatus::parse(status.as_str()).unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        assert!(OrderStatus::parse("shipped").is_err());
    }
}
