//! The scheduled sweep: expire unpaid orders past `expires_at` (giving their stock
//! back) and re-queue paid orders that have waited too long for delivery. Every write
//! is conditional, so two sweeps at once do each thing once.

use serde::Serialize;

use crate::config::Context;
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::error::Result;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u32,
    pub requeued: u32,
}

pub async fn sweep(ctx: &Context, now: Timestamp) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    for order_id in ctx.store.due_pending_orders(now).await? {
        let Some(order) = ctx.store.get_order(&order_id).await? else {
            continue;
        };
        if order.status == OrderStatus::PendingPayment
            && order.expires_at <= now
            && ctx.store.expire_order(&order, now).await?
        {
            report.expired += 1;
        }
    }
    for order_id in ctx.store.stuck_paid_orders(now).await? {
        if let Some(order) = ctx.store.get_order(&order_id).await?
            && order.status == OrderStatus::Paid
        {
            ctx.queue()?.enqueue_delivery(&order_id).await?;
            ctx.store.snooze_stuck_order(&order_id, now).await?;
            report.requeued += 1;
            tracing::warn!(order_id, "paid order still undelivered; delivery re-queued");
        }
    }
    tracing::info!(
        expired = report.expired,
        requeued = report.requeued,
        "sweep done"
    );
    Ok(report)
}
