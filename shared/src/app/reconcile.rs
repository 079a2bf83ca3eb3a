//! The payment reconciler (`functions/payment-reconciler`, every minute): callbacks get
//! lost, so Kami asks. Every open payment attempt (`creating`, `pending`) is checked a
//! minute after it was made and every minute after, by asking its provider:
//! - paid → applied through the same idempotent path as a notification (deduplicated as
//!   the event `query:{payment_id}`; a notification for the same payment later is a
//!   repeat, never a second delivery);
//! - closed upstream → closed here;
//! - still open while its order can no longer be paid (expired, paid by another attempt,
//!   ...) → closed upstream first, so the buyer cannot pay it later, then here;
//! - unknown to the provider and its order no longer payable → closed here (the provider
//!   never opened it).
//!
//! Each check is conditional on the attempt still being open, so two runs at once do no
//! harm (the provider may be asked twice). The run stops within the invocation's budget;
//! what is left is due in the next run.

use serde::Serialize;

use super::channels::{find_channel, provider_for};
use super::delivery::Budget;
use super::payments::record_payment;
use crate::config::Context;
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::error::Result;
use crate::ports::payment::{PaymentHandle, PaymentNotice, PaymentState};
use crate::store::{AttemptRecord, AttemptStatus, INDEX_SHARDS, RECONCILE_AFTER_SECONDS};

/// Attempts read per index shard per run.
const PAGE: i32 = 50;
/// Time kept in hand before each attempt (a provider call and a few writes).
const ATTEMPT_RESERVE_MS: i64 = 8_000;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Attempts found paid upstream and applied here.
    pub recovered: u32,
    /// Attempts closed (upstream and here).
    pub closed: u32,
    /// Attempts still open upstream and payable: asked again later.
    pub waiting: u32,
    pub failed: u32,
    /// The run stopped for time with checks left.
    pub more_due: bool,
}

pub async fn reconcile(ctx: &Context, now: Timestamp, budget: &Budget) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    'shards: for shard in 0..INDEX_SHARDS {
        for (order_id, payment_id) in ctx.store.due_attempts(shard, now, PAGE).await? {
            if !budget.allows(ATTEMPT_RESERVE_MS) {
                report.more_due = true;
                break 'shards;
            }
            match check(ctx, &order_id, &payment_id, now).await {
                Ok(Checked::Recovered) => report.recovered += 1,
                Ok(Checked::Closed) => report.closed += 1,
                Ok(Checked::Waiting) => report.waiting += 1,
                Ok(Checked::Gone) => {}
                Err(err) => {
                    report.failed += 1;
                    tracing::error!(order_id, payment_id, error = %err, "could not reconcile a payment attempt; the next run retries");
                    if let Ok(Some(attempt)) = ctx.store.get_attempt(&order_id, &payment_id).await {
                        ctx.store
                            .snooze_attempt(&attempt, now.plus_seconds(RECONCILE_AFTER_SECONDS))
                            .await?;
                    }
                }
            }
        }
    }
    tracing::info!(
        recovered = report.recovered,
        closed = report.closed,
        waiting = report.waiting,
        failed = report.failed,
        more_due = report.more_due,
        "payment reconciliation done"
    );
    Ok(report)
}

enum Checked {
    Recovered,
    Closed,
    Waiting,
    /// No longer open (settled meanwhile), or gone.
    Gone,
}

async fn check(ctx: &Context, order_id: &str, payment_id: &str, now: Timestamp) -> Result<Checked> {
    let Some(attempt) = ctx.store.get_attempt(order_id, payment_id).await? else {
        return Ok(Checked::Gone);
    };
    if !matches!(
        attempt.status,
        AttemptStatus::Creating | AttemptStatus::Pending
    ) {
        return Ok(Checked::Gone);
    }
    let order = ctx.store.get_order(order_id).await?;
    let payable = order
        .as_ref()
        .is_some_and(|o| o.status == OrderStatus::PendingPayment && o.expires_at > now);
    let channel = find_channel(ctx, &attempt.channel_id).await?;
    let provider = provider_for(ctx, &channel).await?;
    let handle = PaymentHandle {
        payment_id: attempt.payment_id.clone(),
        provider_ref: attempt.provider_ref.clone(),
    };
    match provider.query_payment(&handle).await? {
        PaymentState::Paid {
            amount,
            provider_ref,
        } => {
            let notice = PaymentNotice {
                provider: provider.name(),
                event_id: format!("query:{}", attempt.payment_id),
                payment_id: Some(attempt.payment_id.clone()),
                order_id: Some(attempt.order_id.clone()),
                amount,
                provider_ref,
            };
            record_payment(ctx, &notice, Some(&attempt), None).await?;
            tracing::warn!(
                order_id,
                payment_id,
                "payment found by asking the provider (its notification was lost or late)"
            );
            Ok(Checked::Recovered)
        }
        PaymentState::Closed => close_here(ctx, &attempt, now).await,
        PaymentState::Refunded { .. } => {
            tracing::warn!(
                order_id,
                payment_id,
                "attempt refunded upstream before Kami saw it paid; closing it here"
            );
            close_here(ctx, &attempt, now).await
        }
        PaymentState::AwaitingPayment | PaymentState::Unknown if payable => {
            ctx.store
                .snooze_attempt(&attempt, now.plus_seconds(RECONCILE_AFTER_SECONDS))
                .await?;
            Ok(Checked::Waiting)
        }
        PaymentState::AwaitingPayment => {
            // The order cannot take this money any more: stop the buyer paying it.
            provider.close_payment(&handle).await?;
            tracing::info!(
                order_id,
                payment_id,
                "open payment of an order no longer payable closed upstream"
            );
            close_here(ctx, &attempt, now).await
        }
        PaymentState::Unknown => close_here(ctx, &attempt, now).await,
    }
}

async fn close_here(ctx: &Context, attempt: &AttemptRecord, now: Timestamp) -> Result<Checked> {
    ctx.store
        .end_attempt(
            attempt,
            &[AttemptStatus::Creating, AttemptStatus::Pending],
            AttemptStatus::Closed,
            None,
            now,
        )
        .await?;
    Ok(Checked::Closed)
}
