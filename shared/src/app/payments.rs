//! Payment notifications: verify, bind to the order, record once per provider event,
//! and queue delivery. The provider gets 2xx only after that is durable.

use serde_json::{Value, json};

use crate::config::Context;
use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::stripe::{self, PaymentNotice, StripeEvent};
use crate::domain::time::{Timestamp, is_id};
use crate::error::{Error, Result};
use crate::store::{OrderRecord, PaymentApplied, PaymentChange, Unmatched};

const DECISION_ATTEMPTS: u32 = 4;

/// `POST /webhooks/stripe` with the raw body.
pub async fn stripe_webhook(
    ctx: &Context,
    signature: Option<&str>,
    raw_body: &[u8],
    now: Timestamp,
) -> Result<Value> {
    stripe::verify_signature(
        signature.ok_or(Error::InvalidSignature("missing Stripe-Signature header"))?,
        raw_body,
        &ctx.secrets.stripe_webhook_secrets,
        now.unix_seconds(),
        stripe::DEFAULT_TOLERANCE_SECONDS,
    )?;
    match stripe::parse_event(raw_body)? {
        StripeEvent::Ignored { event_id, kind } => {
            tracing::info!(event_id, kind, "stripe event ignored");
            Ok(json!({"received": true}))
        }
        StripeEvent::Unbound {
            event_id,
            kind,
            missing,
        } => {
            let unmatched = Unmatched {
                outcome: "unbound_event",
                kind: &kind,
                claimed_order_id: None,
                amount: None,
            };
            ctx.store
                .record_unmatched_payment("stripe", &event_id, &unmatched)
                .await?;
            tracing::warn!(
                event_id,
                kind,
                missing,
                "payment event without an order kept for an operator"
            );
            Ok(json!({"received": true}))
        }
        StripeEvent::Payment(notice) => {
            record_payment(ctx, &notice).await?;
            Ok(json!({"received": true}))
        }
    }
}

/// The outcome a notice has on an order in its current state. `stock_gone` is true once
/// a late payment found its stock sold meanwhile.
fn decide<'a>(
    order: &OrderRecord,
    notice: &'a PaymentNotice,
    amount: &'a Money,
    stock_gone: bool,
) -> PaymentChange<'a> {
    let exact = *amount == order.amount;
    let mut reserve_stock = false;
    let (outcome, transition) = match order.status {
        OrderStatus::PendingPayment if exact => (
            "paid",
            Some((order.status, OrderStatus::Paid, Cause::PaymentReceived)),
        ),
        OrderStatus::PendingPayment => (
            "amount_mismatch",
            Some((
                order.status,
                OrderStatus::PaymentException,
                Cause::PaymentMismatch,
            )),
        ),
        // The buyer paid after the order expired: if its stock is still there, take it
        // again and deliver, rather than leave a paying buyer with nothing.
        OrderStatus::Expired if exact && !stock_gone => {
            reserve_stock = true;
            (
                "paid_late",
                Some((order.status, OrderStatus::Paid, Cause::LatePaymentReserved)),
            )
        }
        OrderStatus::Expired | OrderStatus::Cancelled => {
            let cause = if exact {
                Cause::PaymentReceived
            } else {
                Cause::PaymentMismatch
            };
            (
                "paid_after_expiry",
                Some((order.status, OrderStatus::PaidAfterExpiry, cause)),
            )
        }
        // Already settled: another event about the same payment, or a second payment.
        _ if order.payment_ref.as_deref() == Some(notice.provider_ref.as_str()) => {
            ("repeat_notification", None)
        }
        _ => ("duplicate_payment", None),
    };
    PaymentChange {
        provider: notice.provider,
        event_id: &notice.event_id,
        provider_ref: &notice.provider_ref,
        amount,
        outcome,
        transition,
        reserve_stock,
    }
}

pub async fn record_payment(ctx: &Context, notice: &PaymentNotice) -> Result<()> {
    let amount = Money {
        amount: notice.amount,
        currency: notice.currency.clone(),
    };
    let mut stock_gone = false;
    for _ in 0..DECISION_ATTEMPTS {
        let order = if is_id(&notice.order_id) {
            ctx.store.get_order(&notice.order_id).await?
        } else {
            None
        };
        let Some(order) = order else {
            let unmatched = Unmatched {
                outcome: "unknown_order",
                kind: "payment",
                claimed_order_id: Some(&notice.order_id),
                amount: Some(&amount),
            };
            let first = ctx
                .store
                .record_unmatched_payment(notice.provider, &notice.event_id, &unmatched)
                .await?;
            tracing::warn!(event_id = %notice.event_id, first, "payment for an unknown order kept for an operator");
            return Ok(());
        };
        let change = decide(&order, notice, &amount, stock_gone);
        match ctx.store.apply_payment(&order, &change).await? {
            PaymentApplied::Applied => {
                tracing::info!(order_id = %order.order_id, event_id = %notice.event_id, outcome = change.outcome, "payment recorded");
                let status = change.transition.map_or(order.status, |(_, to, _)| to);
                if status.awaits_delivery() {
                    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
                }
                return Ok(());
            }
            PaymentApplied::Duplicate => {
                // Seen before; make sure the delivery it led to is queued (an earlier
                // attempt may have stopped between recording and queueing).
                let current = ctx.store.get_order(&order.order_id).await?;
                if current.is_some_and(|o| o.status.awaits_delivery()) {
                    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
                }
                tracing::info!(order_id = %order.order_id, event_id = %notice.event_id, "duplicate notification acknowledged");
                return Ok(());
            }
            PaymentApplied::NoStock => stock_gone = true,
            PaymentApplied::Raced => continue,
        }
    }
    Err(Error::Contention("order state"))
}
