//! Subscriptions (docs/subscriptions.md): a membership period that renews. Delivering a
//! subscription order starts the subscription (named by that order) or moves it to its
//! next period; `renewal_notice_days` before a period ends the sweep makes the renewal
//! order and queues its notice (the pay link and the order's access token); paid in
//! time, the period continues without a gap; unpaid, the entitlement lapses at its end.
//! The holder of the starting order's access token can turn renewal off.

use serde::Serialize;
use utoipa::ToSchema;

use super::fulfil::grant::subscription_of;
use crate::config::Context;
use crate::domain::crypto::{order_access_token, sha256_hex, token_matches};
use crate::domain::entitlement::GrantSpec;
use crate::domain::notification::NotificationKind;
use crate::domain::order::OrderStatus;
use crate::domain::time::{Timestamp, is_id, new_id};
use crate::error::{Error, Result};
use crate::store::{DeliveryRecord, OrderRecord, SubscriptionRecord};

/// Subscriptions one sweep run looks at (the rest wait for the next minute).
pub const RENEWALS_PER_RUN: i32 = 100;

/// After an order of a subscription product is granted: the subscription started (a
/// first order) or its period moved (a renewal order). Safe to repeat.
pub async fn record_period(
    ctx: &Context,
    order: &OrderRecord,
    done: &[DeliveryRecord],
) -> Result<()> {
    let (
        Some(GrantSpec::Subscription {
            entitlement,
            renewal_notice_days,
            ..
        }),
        Some(account_id),
    ) = (&order.grant, &order.account_id)
    else {
        return Err(Error::Corrupt(
            "subscription order without its grant".into(),
        ));
    };
    // The grant's entitlement: from the record this run or an earlier one wrote.
    let entitlement_id = match done.iter().find_map(DeliveryRecord::grant) {
        Some(slot) => Some(slot.entitlement_id.clone()),
        None => ctx.store.membership_of(account_id, entitlement).await?,
    }
    .ok_or_else(|| Error::Corrupt("a granted subscription without its entitlement".into()))?;
    let period_end = ctx
        .store
        .entitlement(&entitlement_id)
        .await?
        .and_then(|record| record.ends_at)
        .ok_or_else(|| Error::Corrupt("a subscription's entitlement without an end".into()))?;
    let subscription_id = subscription_of(order);
    let Some(current) = ctx.store.subscription(subscription_id).await? else {
        if order.renews.is_some() {
            return Err(Error::Corrupt(format!(
                "renewal order of unknown subscription {subscription_id}"
            )));
        }
        ctx.store
            .start_subscription(&SubscriptionRecord {
                subscription_id: subscription_id.to_owned(),
                account_id: account_id.clone(),
                sku: order.sku.clone(),
                quantity: order.quantity,
                entitlement_id,
                period_end,
                renewal_notice_days: *renewal_notice_days,
                renewal_order_id: None,
                last_order_id: order.order_id.clone(),
                token_hash: order.token_hash.clone(),
                created_at: ctx.clock.now(),
                cancelled_at: None,
            })
            .await?;
        return Ok(());
    };
    if current.last_order_id == order.order_id || order.renews.is_none() {
        return Ok(());
    }
    if !ctx
        .store
        .advance_subscription(&current, &order.order_id, period_end)
        .await?
    {
        // Counted meanwhile by another worker, or moved by one: the retry reads again.
        return Err(Error::Contention("subscription"));
    }
    tracing::info!(subscription_id, order_id = %order.order_id, "subscription renewed");
    Ok(())
}

/// What one run of the renewal step did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RenewalReport {
    /// Renewal orders made.
    pub opened: u32,
    /// Renewal notices queued (for orders made this run or before).
    pub noticed: u32,
    /// Subscriptions taken out of the queue with nothing to make (cancelled, lapsed).
    pub dropped: u32,
    pub failed: u32,
}

/// The sweep's renewal step: for each subscription due by `now`, its renewal order is
/// made (once, whatever runs overlap) and its notice queued, then it leaves the queue
/// until that order is delivered.
pub async fn renew_due(ctx: &Context, now: Timestamp) -> Result<RenewalReport> {
    let mut report = RenewalReport::default();
    for subscription_id in ctx.store.due_renewals(now, RENEWALS_PER_RUN).await? {
        if let Err(err) = renew_one(ctx, &subscription_id, now, &mut report).await {
            report.failed += 1;
            tracing::error!(subscription_id, error = %err, "renewal failed; the next run tries again");
        }
    }
    Ok(report)
}

async fn renew_one(
    ctx: &Context,
    subscription_id: &str,
    now: Timestamp,
    report: &mut RenewalReport,
) -> Result<()> {
    let Some(record) = ctx.store.subscription(subscription_id).await? else {
        return Ok(());
    };
    let renewal_order_id = match &record.renewal_order_id {
        Some(order_id) => order_id.clone(),
        None if record.cancelled_at.is_some() || record.period_end <= now => {
            // Cancelled, or its period ended before a run got to it: it lapses.
            ctx.store.leave_renewal_queue(subscription_id).await?;
            report.dropped += 1;
            return Ok(());
        }
        None => {
            let renewal = renewal_order(ctx, &record, now).await?;
            if !ctx.store.open_renewal(&record, &renewal).await? {
                // Another run made it (or the buyer cancelled): the next run sees which.
                return Ok(());
            }
            report.opened += 1;
            tracing::info!(subscription_id, order_id = %renewal.order_id, "renewal order made");
            renewal.order_id
        }
    };
    if let Some(queue) = ctx.notify_queue() {
        queue
            .enqueue_notification(NotificationKind::RenewalNotice, &renewal_order_id)
            .await?;
        report.noticed += 1;
    }
    ctx.store.leave_renewal_queue(subscription_id).await
}

/// The next period's order, as the buyer would have placed it: the product as it is
/// now (its price), payable until the current period ends.
async fn renewal_order(
    ctx: &Context,
    record: &SubscriptionRecord,
    now: Timestamp,
) -> Result<OrderRecord> {
    let product = super::catalog::find_product(ctx, &record.sku, false).await?;
    let origin = ctx
        .store
        .get_order(&record.subscription_id)
        .await?
        .ok_or_else(|| Error::Corrupt("a subscription without its first order".into()))?;
    let order_id = new_id();
    let token = order_access_token(ctx.secrets.order_token_key()?, &order_id)?;
    Ok(OrderRecord {
        order_id,
        amount: product.price.times(record.quantity)?,
        status: OrderStatus::PendingPayment,
        token_hash: sha256_hex(token.as_bytes()),
        created_at: now.to_rfc3339(),
        expires_at: record.period_end,
        updated_at: now.to_rfc3339(),
        payment_ref: None,
        exception: None,
        holds: Vec::new(),
        stock_shards: Vec::new(),
        grant: product.grant.clone(),
        renews: Some(record.subscription_id.clone()),
        redelivery_requested_at: None,
        paid_at: None,
        paid_amount: None,
        referral: None,
        parts: Vec::new(),
        on_partial_failure: None,
        failed_part: None,
        slot_base: 0,
        ..origin
    })
}

/// A subscription as its holder sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub subscription_id: String,
    /// `active` (renews), `cancelled` (renewal off; the paid period runs to its end) or
    /// `lapsed` (its period ended unrenewed).
    #[schema(example = "cancelled")]
    pub status: String,
    pub entitlement_id: String,
    pub period_end: String,
    /// The renewal order waiting for payment, if one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
}

impl SubscriptionView {
    fn of(record: &SubscriptionRecord, now: Timestamp) -> Self {
        let status = if record.period_end <= now {
            "lapsed"
        } else if record.cancelled_at.is_some() {
            "cancelled"
        } else {
            "active"
        };
        SubscriptionView {
            subscription_id: record.subscription_id.clone(),
            status: status.to_owned(),
            entitlement_id: record.entitlement_id.clone(),
            period_end: record.period_end.to_rfc3339(),
            renewal_order_id: record.renewal_order_id.clone(),
            cancelled_at: record.cancelled_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// `POST /subscriptions/{id}/cancel`: renewal off, for the holder of the starting
/// order's access token (any mismatch looks like a missing subscription). Repeating it
/// answers the same. A renewal order already made stays payable until the period ends.
pub async fn cancel(
    ctx: &Context,
    subscription_id: &str,
    token: Option<&str>,
) -> Result<SubscriptionView> {
    let (Some(token), true) = (token, is_id(subscription_id)) else {
        return Err(Error::NotFound("subscription"));
    };
    ctx.store
        .subscription(subscription_id)
        .await?
        .filter(|record| token_matches(token, &record.token_hash))
        .ok_or(Error::NotFound("subscription"))?;
    let now = ctx.clock.now();
    let record = ctx.store.cancel_subscription(subscription_id, now).await?;
    Ok(SubscriptionView::of(&record, now))
}

/// The renewal order waiting for payment, for a subscription order's view.
pub async fn renewal_order_of(ctx: &Context, order: &OrderRecord) -> Result<Option<String>> {
    Ok(ctx
        .store
        .subscription(subscription_of(order))
        .await?
        .and_then(|record| record.renewal_order_id))
}
