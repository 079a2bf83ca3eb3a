//! Memberships and count cards: an order grants its buyer's account an entitlement
//! (docs/entitlements.md). One grant record per order (`DELIVERY#000`), written in the
//! same transaction as the entitlement it creates or extends and conditional on the
//! order, so duplicate messages and parallel workers grant once. A membership stays one
//! record per account and name: each purchase extends it from its current end (or from
//! now, once it has lapsed), never overlapping, under a version check.

use super::{Fulfiller, Fulfilment};
use crate::app::delivery::{Budget, KEY_RESERVE_MS};
use crate::app::orders::Delivered;
use crate::config::Context;
use crate::domain::entitlement::GrantSpec;
use crate::domain::product::DeliveryType;
use crate::domain::time::{Timestamp, new_id};
use crate::error::{Error, Result};
use crate::store::{DeliveryRecord, EntitlementRecord, GrantOutcome, OrderRecord};

/// Reads of a membership that others extend at the same time.
const EXTEND_ATTEMPTS: u32 = 8;
const DAY_SECONDS: i64 = 86_400;

pub struct Grants;

impl Fulfiller for Grants {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        if done.iter().any(|record| record.grant().is_some()) {
            return Self::after_grant(ctx, order, done).await;
        }
        let (Some(spec), Some(account_id)) = (&order.grant, &order.account_id) else {
            return Err(Error::Corrupt(
                "account-bound order without its grant or account".into(),
            ));
        };
        for _ in 0..EXTEND_ATTEMPTS {
            budget.check(KEY_RESERVE_MS, "the grant")?;
            let now = ctx.clock.now();
            let outcome = match spec {
                GrantSpec::CountCard {
                    entitlement,
                    uses,
                    valid_days,
                } => {
                    let record = EntitlementRecord {
                        entitlement_id: new_id(),
                        account_id: account_id.clone(),
                        kind: spec.kind(),
                        name: entitlement.clone(),
                        starts_at: now,
                        ends_at: valid_days
                            .map(|days| now.plus_seconds(i64::from(days) * DAY_SECONDS)),
                        uses_left: Some(uses.saturating_mul(order.quantity)),
                        revoked_at: None,
                        source_orders: vec![order.order_id.clone()],
                        version: 0,
                    };
                    ctx.store
                        .grant_new(order, order.delivery_type, &record, now)
                        .await?
                }
                GrantSpec::Membership { entitlement, .. }
                | GrantSpec::Subscription { entitlement, .. } => {
                    let period = spec.period_seconds(order.quantity).unwrap_or_default();
                    membership(ctx, order, account_id, entitlement, period, now).await?
                }
            };
            match outcome {
                GrantOutcome::Written | GrantOutcome::SlotFilled => {
                    return Self::after_grant(ctx, order, done).await;
                }
                GrantOutcome::NotPayable => return Ok(Fulfilment::NotPayable),
                GrantOutcome::Raced => continue,
            }
        }
        Err(Error::Contention("membership"))
    }

    async fn show(
        &self,
        _ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        Ok(done
            .iter()
            .filter_map(DeliveryRecord::grant)
            .map(|slot| Delivered {
                entitlement_id: Some(slot.entitlement_id.clone()),
                subscription_id: (order.delivery_type == DeliveryType::Subscription)
                    .then(|| subscription_of(order).to_owned()),
                ..Delivered::of(order.delivery_type)
            })
            .collect())
    }
}

impl Grants {
    /// What follows a grant, before the order may be marked delivered: a subscription's
    /// record started or moved to its next period (idempotent, so a retried message
    /// finishes what a dead worker began).
    async fn after_grant(
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Fulfilment> {
        if order.delivery_type == DeliveryType::Subscription {
            crate::app::subscriptions::record_period(ctx, order, done).await?;
        }
        Ok(Fulfilment::Done)
    }
}

/// The subscription an order starts or renews: named by the order that started it.
pub fn subscription_of(order: &OrderRecord) -> &str {
    order.renews.as_deref().unwrap_or(&order.order_id)
}

/// Creates the account's membership of `name`, or extends the one it has by `period`
/// seconds from its end (from now if it has lapsed).
async fn membership(
    ctx: &Context,
    order: &OrderRecord,
    account_id: &str,
    name: &str,
    period: i64,
    now: Timestamp,
) -> Result<GrantOutcome> {
    let current = match ctx.store.membership_of(account_id, name).await? {
        Some(id) => ctx.store.entitlement(&id).await?,
        None => None,
    };
    let Some(current) = current else {
        let record = EntitlementRecord {
            entitlement_id: new_id(),
            account_id: account_id.to_owned(),
            kind: crate::domain::entitlement::EntitlementKind::Membership,
            name: name.to_owned(),
            starts_at: now,
            ends_at: Some(now.plus_seconds(period)),
            uses_left: None,
            revoked_at: None,
            source_orders: vec![order.order_id.clone()],
            version: 0,
        };
        return ctx
            .store
            .grant_new(order, order.delivery_type, &record, now)
            .await;
    };
    let lapsed = current.ends_at.is_none_or(|end| end <= now) || current.revoked_at.is_some();
    let (starts_at, from) = if lapsed {
        (now, now)
    } else {
        (current.starts_at, current.ends_at.unwrap_or(now))
    };
    ctx.store
        .extend_membership(order, &current, (starts_at, from.plus_seconds(period)), now)
        .await
}
