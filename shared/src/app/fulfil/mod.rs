//! Delivery types and their fulfillers. The delivery worker (`app::delivery`) hands a
//! paid order to the fulfiller of the order's delivery type and keeps what every type
//! shares (idempotence, partial batches, giving up, finishing); a fulfiller does the
//! type's own work and records it in the order's partition, one record per delivered
//! unit. Adding a type: docs/delivery-types.md.

use std::future::Future;

use futures_util::future::BoxFuture;

use crate::app::delivery::{Budget, KEY_RESERVE_MS};
use crate::app::orders::Delivered;
use crate::config::Context;
use crate::domain::license::LicenseStatus;
use crate::domain::product::DeliveryType;
use crate::error::{Error, Result};
use crate::store::{DeliveryRecord, OrderRecord, SlotWrite};

pub mod bundle;
pub mod card_key;
pub mod direct_topup;
pub mod grant;
pub mod license_key;
pub mod link;

/// What a fulfiller's attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fulfilment {
    /// Every unit is delivered and recorded: the worker marks the order delivered.
    Done,
    /// The order stopped waiting for delivery meanwhile (a condition on it failed): the
    /// worker reads it again to see what became of it.
    NotPayable,
    /// The work goes on elsewhere (a supplier, say): the order stays as it is and the
    /// sweep sends it round again (`STUCK_AFTER_SECONDS` for `paid`).
    Pending,
    /// Delivery cannot succeed and retrying will not help. The order becomes
    /// `delivery_failed` with `reason` as its `exception`, shown to the buyer and the
    /// operator: a short snake_case code, never a supplier's text (that goes to the log).
    Failed { reason: &'static str },
    /// A bundle's part `sku` failed for good (`reason` as `Failed`'s). With `keep` the
    /// other parts are delivered and the order becomes `partially_delivered`; otherwise
    /// what could be was taken back and it becomes `delivery_failed`.
    PartFailed {
        sku: String,
        reason: &'static str,
        keep: bool,
    },
}

/// The work of one delivery type. A transient failure is an `Err`: the worker reports
/// the message for a retry and gives up after the queue's last attempt.
pub trait Fulfiller {
    /// Does what is left of delivering `order`, given `done`: the records earlier
    /// attempts (or parallel workers) wrote, in slot order. Any step may have run
    /// before, or run at the same time elsewhere: every write is conditional on what it
    /// must not overwrite and on the order still awaiting delivery. No unit starts once
    /// `budget` runs low (`Error::OutOfTime`: the message is retried from there).
    fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> impl Future<Output = Result<Fulfilment>> + Send;

    /// What the buyer is shown of a delivered order's records (`GET /orders/{id}`).
    fn show(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> impl Future<Output = Result<Vec<Delivered>>> + Send;
}

/// The registry: the fulfiller of each delivery type, chosen by the type the order
/// recorded when it was made. Dispatch is static, so each binary links only what it
/// calls: the worker `fulfil`, checkout `show` (docs/bench.md, binary size). Each
/// type's future is boxed here, once per order (per part of a bundle): the worker's
/// future keeps its size and depth whatever a type does.
pub struct ByType;

impl Fulfiller for ByType {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        match order.delivery_type {
            DeliveryType::Bundle => bundle::Bundles.fulfil(ctx, order, done, budget).await,
            _ => fulfil_single(ctx, order, done, budget).await,
        }
    }

    async fn show(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        match order.delivery_type {
            DeliveryType::Bundle => bundle::Bundles.show(ctx, order, done).await,
            _ => show_single(ctx, order, done).await,
        }
    }
}

/// The fulfiller of an order of one product (a bundle's part among them).
pub(crate) fn fulfil_single<'a>(
    ctx: &'a Context,
    order: &'a OrderRecord,
    done: &'a [DeliveryRecord],
    budget: &'a Budget,
) -> BoxFuture<'a, Result<Fulfilment>> {
    match order.delivery_type {
        DeliveryType::CardKey => Box::pin(card_key::CardKeys.fulfil(ctx, order, done, budget)),
        DeliveryType::DirectTopup => {
            Box::pin(direct_topup::DirectTopUps.fulfil(ctx, order, done, budget))
        }
        DeliveryType::LicenseKey => {
            Box::pin(license_key::LicenseKeys.fulfil(ctx, order, done, budget))
        }
        DeliveryType::Membership | DeliveryType::CountCard | DeliveryType::Subscription => {
            Box::pin(grant::Grants.fulfil(ctx, order, done, budget))
        }
        DeliveryType::Link => Box::pin(link::Links.fulfil(ctx, order, done, budget)),
        DeliveryType::Bundle => {
            Box::pin(async { Err(Error::Corrupt("a bundle inside a bundle".into())) })
        }
    }
}

/// What the buyer is shown of an order of one product (a bundle's part among them).
pub(crate) fn show_single<'a>(
    ctx: &'a Context,
    order: &'a OrderRecord,
    done: &'a [DeliveryRecord],
) -> BoxFuture<'a, Result<Vec<Delivered>>> {
    match order.delivery_type {
        DeliveryType::CardKey => Box::pin(card_key::CardKeys.show(ctx, order, done)),
        DeliveryType::DirectTopup => Box::pin(direct_topup::DirectTopUps.show(ctx, order, done)),
        DeliveryType::LicenseKey => Box::pin(license_key::LicenseKeys.show(ctx, order, done)),
        DeliveryType::Membership | DeliveryType::CountCard | DeliveryType::Subscription => {
            Box::pin(grant::Grants.show(ctx, order, done))
        }
        DeliveryType::Link => Box::pin(link::Links.show(ctx, order, done)),
        DeliveryType::Bundle => {
            Box::pin(async { Err(Error::Corrupt("a bundle inside a bundle".into())) })
        }
    }
}

/// Takes back what an order delivered, where it can be: its license keys stop
/// validating (`ending`: `refunded`, or `voided` for a reversed bundle), a count card is
/// revoked, a membership loses the order's period; a bundle's parts each so. Card keys
/// and top-ups cannot be taken back (the buyer has them). Safe to repeat: each step
/// happens once.
pub async fn take_back(
    ctx: &Context,
    order: &OrderRecord,
    done: &[DeliveryRecord],
    ending: LicenseStatus,
) -> Result<()> {
    for (unit, records) in bundle::each_part(order, done)? {
        take_back_single(ctx, &unit, &records, ending).await?;
    }
    Ok(())
}

async fn take_back_single(
    ctx: &Context,
    order: &OrderRecord,
    done: &[DeliveryRecord],
    ending: LicenseStatus,
) -> Result<()> {
    for record in done {
        match record {
            DeliveryRecord::License(slot) => {
                ctx.store
                    .end_license(&slot.fingerprint, ending, None)
                    .await?;
            }
            DeliveryRecord::Grant(slot) => {
                let period_ms = order
                    .grant
                    .as_ref()
                    .and_then(|spec| spec.period_seconds(order.quantity))
                    .map(|seconds| seconds * 1_000);
                ctx.store
                    .take_back_grant(
                        &slot.entitlement_id,
                        &order.order_id,
                        period_ms,
                        ctx.clock.now(),
                    )
                    .await?;
            }
            // A link's item could be closed too; it expires by itself (docs/links.md).
            DeliveryRecord::CardKey(_) | DeliveryRecord::TopUp(_) | DeliveryRecord::Link(_) => {}
        }
    }
    Ok(())
}

/// Tries per slot when a generated unit's own item is taken already (a collision of
/// random values: never expected).
const COLLISION_RETRIES: u32 = 3;

/// Fills every slot of `order` not in `filled` with a unit `write` generates and
/// writes (conditional on the slot and the order): the shared loop of the types that
/// generate their units (license keys, links). `what` names the unit for the budget.
pub(crate) async fn fill_slots<F, Fut>(
    order: &OrderRecord,
    filled: &[u32],
    budget: &Budget,
    what: &'static str,
    mut write: F,
) -> Result<Fulfilment>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<SlotWrite>>,
{
    for slot in order.slots().filter(|slot| !filled.contains(slot)) {
        let mut written = false;
        for _ in 0..COLLISION_RETRIES {
            budget.check(KEY_RESERVE_MS, what)?;
            match write(slot).await {
                Ok(SlotWrite::Written | SlotWrite::SlotFilled) => {
                    written = true;
                    break;
                }
                Ok(SlotWrite::NotPayable) => return Ok(Fulfilment::NotPayable),
                Err(Error::Contention(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        if !written {
            return Err(Error::Contention(what));
        }
    }
    Ok(Fulfilment::Done)
}
