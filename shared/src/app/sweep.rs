//! The scheduled sweep: expire unpaid orders once `expires_at` and the grace after it
//! (`EXPIRY_GRACE_SECONDS`) have passed (giving their stock back) and re-queue paid orders that have waited too long for delivery, including
//! ones whose delivery gave up (so a passing outage heals by itself). Every write is
//! conditional, so two sweeps at once do each thing once; one order's failure is
//! logged and counted and does not stop the others.

use serde::Serialize;

use crate::config::Context;
use crate::domain::order::payment_overdue;
use crate::domain::time::Timestamp;
use crate::error::Result;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u32,
    pub requeued: u32,
    pub failed: u32,
}

/// Expires the order if it is unpaid and its `expires_at` is at or before `due_by`
/// (`now` less the grace).
async fn expire_one(
    ctx: &Context,
    order_id: &str,
    now: Timestamp,
    due_by: Timestamp,
) -> Result<bool> {
    let Some(order) = ctx.store.get_order(order_id).await? else {
        return Ok(false);
    };
    Ok(payment_overdue(order.status, order.expires_at, due_by)
        && ctx.store.expire_order(&order, now).await?)
}

async fn requeue_one(ctx: &Context, order_id: &str, now: Timestamp) -> Result<bool> {
    let Some(order) = ctx.store.get_order(order_id).await? else {
        return Ok(false);
    };
    if !order.status.awaits_delivery() {
        return Ok(false);
    }
    ctx.queue()?.enqueue_delivery(order_id).await?;
    ctx.store
        .snooze_stuck_order(order_id, order.status, now)
        .await?;
    tracing::warn!(order_id, status = %order.status, "paid order still undelivered; delivery re-queued");
    Ok(true)
}

pub async fn sweep(ctx: &Context, now: Timestamp) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    // Stock is released only a grace after `expires_at`: until then a late webhook for
    // a payment made in time finds the order still pending, a normal payment.
    let due_by = now.plus_seconds(-ctx.config.expiry_grace_seconds);
    for order_id in ctx.store.due_pending_orders(due_by).await? {
        match expire_one(ctx, &order_id, now, due_by).await {
            Ok(expired) => report.expired += u32::from(expired),
            Err(err) => {
                report.failed += 1;
                tracing::error!(order_id, error = %err, "could not expire order; next sweep retries");
            }
        }
    }
    for order_id in ctx.store.stuck_paid_orders(now).await? {
        match requeue_one(ctx, &order_id, now).await {
            Ok(requeued) => report.requeued += u32::from(requeued),
            Err(err) => {
                report.failed += 1;
                tracing::error!(order_id, error = %err, "could not re-queue delivery; next sweep retries");
            }
        }
    }
    tracing::info!(
        expired = report.expired,
        requeued = report.requeued,
        failed = report.failed,
        "sweep done"
    );
    Ok(report)
}
