//! Bundles (docs/bundles.md): each part is delivered by its own type's fulfiller as an
//! order of its own (`OrderRecord::part_order`: the same order, the part's product and
//! units, its records numbered from the part's first slot), in the bundle's delivery
//! sequence (as listed, card keys last). Every part's writes carry the conditions of its
//! type, so duplicate messages and parallel workers converge part by part as they do for
//! single orders. A part that waits on a supplier holds back the parts after it.

use super::{Fulfiller, Fulfilment, fulfil_single, show_single, take_back};
use crate::app::delivery::Budget;
use crate::app::orders::Delivered;
use crate::config::Context;
use crate::domain::bundle::{PART_SLOTS, PartialFailure};
use crate::domain::license::LicenseStatus;
use crate::domain::product::DeliveryType;
use crate::error::{Error, Result};
use crate::store::{DeliveryRecord, OrderRecord};

pub struct Bundles;

impl Fulfiller for Bundles {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        let units = each_part(order, done)?;
        let kinds: Vec<DeliveryType> = units.iter().map(|(part, _)| part.delivery_type).collect();
        let keep = order.on_partial_failure != Some(PartialFailure::Reverse);
        let mut failed = None;
        for index in delivery_sequence(&kinds) {
            let (part, records) = &units[index];
            match fulfil_single(ctx, part, records, budget).await? {
                Fulfilment::Done => {}
                Fulfilment::Failed { reason } if keep => {
                    failed.get_or_insert((part.sku.clone(), reason));
                }
                Fulfilment::Failed { reason } => {
                    // What the parts before it delivered (read again: this run may
                    // have written some) is taken back, once however often this runs;
                    // the parts after it are never started.
                    let delivered = ctx
                        .store
                        .get_order_view(&order.order_id)
                        .await?
                        .map(|view| view.deliveries)
                        .unwrap_or_default();
                    take_back(ctx, order, &delivered, LicenseStatus::Voided).await?;
                    return Ok(Fulfilment::PartFailed {
                        sku: part.sku.clone(),
                        reason,
                        keep: false,
                    });
                }
                waiting @ (Fulfilment::Pending | Fulfilment::NotPayable) => return Ok(waiting),
                Fulfilment::PartFailed { .. } => {
                    return Err(Error::Corrupt("a bundle inside a bundle".into()));
                }
            }
        }
        Ok(match failed {
            Some((sku, reason)) => Fulfilment::PartFailed {
                sku,
                reason,
                keep: true,
            },
            None => Fulfilment::Done,
        })
    }

    /// Every part's deliveries, listed flat in the bundle's order, each naming its part.
    async fn show(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        let mut shown = Vec::new();
        for (part, records) in each_part(order, done)? {
            for delivered in show_single(ctx, &part, &records).await? {
                shown.push(Delivered {
                    part: Some(part.sku.clone()),
                    ..delivered
                });
            }
        }
        Ok(shown)
    }
}

/// The units an order is delivered as, each with its own records: the order itself,
/// or a bundle's parts in their listed order.
pub fn each_part(
    order: &OrderRecord,
    done: &[DeliveryRecord],
) -> Result<Vec<(OrderRecord, Vec<DeliveryRecord>)>> {
    if order.delivery_type != DeliveryType::Bundle {
        return Ok(vec![(order.clone(), done.to_vec())]);
    }
    (0..order.parts.len())
        .map(|index| {
            let part = order
                .part_order(index)
                .ok_or_else(|| Error::Corrupt("a bundle part out of range".into()))?;
            let first = part.slot_base;
            let records = done
                .iter()
                .filter(|record| (first..first + PART_SLOTS).contains(&record.slot()))
                .cloned()
                .collect();
            Ok((part, records))
        })
        .collect()
}

/// The order in which a bundle's parts are delivered: as listed, card keys last, since a
/// card key, once shown, can never be taken back. Indices into the items.
pub fn delivery_sequence(kinds: &[DeliveryType]) -> Vec<usize> {
    let (last, first): (Vec<usize>, Vec<usize>) =
        (0..kinds.len()).partition(|&i| kinds[i] == DeliveryType::CardKey);
    first.into_iter().chain(last).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryType::*;

    #[test]
    fn card_keys_come_last_and_the_rest_keep_their_order() {
        let kinds = [CardKey, LicenseKey, DirectTopup, CardKey, Membership];
        assert_eq!(delivery_sequence(&kinds), [1, 2, 4, 0, 3]);
    }
}
