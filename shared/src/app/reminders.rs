//! Expiry reminders (docs/notifications.md): `EXPIRY_REMINDER_DAYS` before an
//! entitlement's period ends (a membership, a count card with an end, a subscription
//! whose renewal is off), the sweep queues a reminder for the order that granted the
//! period. An entitlement with an end waits in `gsi1` `ENDING` by its end; it leaves once
//! its reminder is queued, and an extension puts it back at its new end. A renewing
//! subscription gets its renewal notice instead. A license key with an end waits in
//! `gsi1` `LICENSES_ENDING` likewise, and is reminded about through the order that
//! delivered it (once per order, whatever its keys: the notifier's claim).

use serde::Serialize;

use super::fulfil::grant::subscription_of;
use crate::config::Context;
use crate::domain::license::LicenseStatus;
use crate::domain::notification::NotificationKind;
use crate::domain::product::DeliveryType;
use crate::domain::time::Timestamp;
use crate::error::Result;
use crate::store::EntitlementRecord;

/// Entitlements one sweep run looks at (the rest wait for the next minute).
pub const REMINDERS_PER_RUN: i32 = 100;
const DAY_SECONDS: i64 = 86_400;

/// What one run of the reminder step did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReminderReport {
    pub queued: u32,
    /// Out of the queue with nothing to send (ended, revoked, renewing).
    pub dropped: u32,
    pub failed: u32,
}

/// The sweep's reminder step as of `now`.
pub async fn remind_due(ctx: &Context, now: Timestamp) -> Result<ReminderReport> {
    let mut report = ReminderReport::default();
    let window = ctx.config.expiry_reminder_days * DAY_SECONDS;
    if window == 0 {
        return Ok(report);
    }
    let due = ctx
        .store
        .ending_entitlements(now.plus_seconds(window), REMINDERS_PER_RUN)
        .await?;
    for entitlement_id in due {
        if let Err(err) = remind_one(ctx, &entitlement_id, now, window, &mut report).await {
            report.failed += 1;
            tracing::error!(entitlement_id, error = %err, "reminder failed; the next run tries again");
        }
    }
    let due = ctx
        .store
        .ending_licenses(now.plus_seconds(window), REMINDERS_PER_RUN)
        .await?;
    for fingerprint in due {
        if let Err(err) = remind_license(ctx, &fingerprint, now, &mut report).await {
            report.failed += 1;
            tracing::error!(error = %err, "license reminder failed; the next run tries again");
        }
    }
    Ok(report)
}

/// A license key ending soon: its order is reminded, unless the key is voided, refunded
/// or over already.
async fn remind_license(
    ctx: &Context,
    fingerprint: &str,
    now: Timestamp,
    report: &mut ReminderReport,
) -> Result<()> {
    let live = ctx
        .store
        .license(fingerprint)
        .await?
        .filter(|state| state.license.status_at(now) == LicenseStatus::Active);
    match (live, ctx.notify_queue()) {
        (Some(state), Some(queue)) => {
            queue
                .enqueue_notification(NotificationKind::ExpiryReminder, &state.license.order_id)
                .await?;
            report.queued += 1;
        }
        (Some(_), None) => {}
        (None, _) => report.dropped += 1,
    }
    ctx.store.license_reminded(fingerprint).await
}

async fn remind_one(
    ctx: &Context,
    entitlement_id: &str,
    now: Timestamp,
    window: i64,
    report: &mut ReminderReport,
) -> Result<()> {
    let Some(record) = ctx.store.entitlement(entitlement_id).await? else {
        return Ok(());
    };
    let Some(ends_at) = record.ends_at else {
        ctx.store.requeue_ending(&record, None).await?;
        return Ok(());
    };
    if ends_at.plus_seconds(-window) > now {
        // Queued too early (a refund shortened it after it was queued): at its end.
        ctx.store.requeue_ending(&record, Some(ends_at)).await?;
        return Ok(());
    }
    match reminder_order(ctx, &record, now).await? {
        Some(order_id) => {
            if let Some(queue) = ctx.notify_queue() {
                queue
                    .enqueue_notification(NotificationKind::ExpiryReminder, &order_id)
                    .await?;
                report.queued += 1;
            }
        }
        None => report.dropped += 1,
    }
    // Conditional on the version read: an extension meanwhile queued it at its new end.
    ctx.store.requeue_ending(&record, None).await?;
    Ok(())
}

/// The order to remind about: the last one that granted or extended the period, unless
/// it has ended, was revoked, or renews by itself (a subscription not cancelled).
async fn reminder_order(
    ctx: &Context,
    record: &EntitlementRecord,
    now: Timestamp,
) -> Result<Option<String>> {
    let (Some(order_id), None) = (record.source_orders.last(), &record.revoked_at) else {
        return Ok(None);
    };
    if record.ends_at.is_none_or(|end| end <= now) {
        return Ok(None);
    }
    let Some(order) = ctx.store.get_order(order_id).await? else {
        return Ok(None);
    };
    if order.delivery_type == DeliveryType::Subscription
        && ctx
            .store
            .subscription(subscription_of(&order))
            .await?
            .is_some_and(|subscription| subscription.cancelled_at.is_none())
    {
        return Ok(None);
    }
    Ok(Some(order_id.clone()))
}

/// Whether a reminder about `order_id` still says something true: the entitlement it
/// granted is live and this order's period is its last (not extended since).
pub fn still_due(record: &EntitlementRecord, order_id: &str, now: Timestamp) -> bool {
    record.revoked_at.is_none()
        && record.ends_at.is_some_and(|end| end > now)
        && record
            .source_orders
            .last()
            .is_some_and(|last| last == order_id)
}
