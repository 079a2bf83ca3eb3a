//! Where an order's units are reserved: which stock counter shards, and how many units
//! on each. Checkout and a late payment choose alike, from one consistent read of the
//! product's counters.

use crate::config::Context;
use crate::domain::product::Stock;
use crate::error::Result;
use crate::store::{OrderRecord, StockShare};

/// Where an order whose stock went back (it expired) takes it again: first the counters
/// it held; once they are short, each counter that holds the order, fullest first, as
/// checkout chooses (read once, when they first are); none when the stock is gone.
#[derive(Default)]
pub(crate) struct Retake {
    plans: Option<Vec<Vec<StockShare>>>,
}

impl Retake {
    /// The counters to try now; `None` when no counter holds the order's units.
    pub(crate) fn next<'a>(&'a self, order: &'a OrderRecord) -> Option<&'a [StockShare]> {
        match &self.plans {
            None => Some(order.stock_shards.as_slice()),
            Some(plans) => plans.first().map(Vec::as_slice),
        }
    }

    /// The counters tried were short: the next ones.
    pub(crate) async fn short(&mut self, ctx: &Context, order: &OrderRecord) -> Result<()> {
        // A bundle's parts are taken again only where they were: one try.
        if !order.parts.is_empty() {
            self.plans = Some(Vec::new());
            return Ok(());
        }
        match &mut self.plans {
            None => {
                let shards = ctx.store.stock_shards(&order.sku, true).await?;
                self.plans = Some(reservation_plans(&shards, order.quantity));
            }
            Some(plans) if !plans.is_empty() => {
                plans.remove(0);
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// The ways to reserve `units` given the counters' available counts, in the order to
/// try them: every counter that holds them all, fullest first; when none does but the
/// counters together do, one split over the fullest counters (each giving what it has
/// until the units are covered), reserved in one transaction.
pub(crate) fn reservation_plans(shards: &[(u32, Stock)], units: u32) -> Vec<Vec<StockShare>> {
    let mut fullest_first: Vec<(u32, i64)> = shards
        .iter()
        .map(|(shard, stock)| (*shard, stock.available))
        .filter(|(_, available)| *available > 0)
        .collect();
    fullest_first.sort_by_key(|(shard, available)| (std::cmp::Reverse(*available), *shard));
    let whole: Vec<Vec<StockShare>> = fullest_first
        .iter()
        .filter(|(_, available)| *available >= i64::from(units))
        .map(|(shard, _)| StockShare::whole(*shard, units))
        .collect();
    if !whole.is_empty() {
        return whole;
    }
    let mut split = Vec::new();
    let mut missing = units;
    for (shard, available) in fullest_first {
        if missing == 0 {
            break;
        }
        let take = u32::try_from(available).map_or(missing, |available| available.min(missing));
        split.push(StockShare { shard, units: take });
        missing -= take;
    }
    if missing == 0 {
        vec![split]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(available: &[i64]) -> Vec<(u32, Stock)> {
        (0u32..)
            .zip(available)
            .map(|(shard, available)| {
                (
                    shard,
                    Stock {
                        available: *available,
                        reserved: 0,
                        sold: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn counters_that_hold_the_order_fullest_first() {
        let plans = reservation_plans(&shards(&[3, 9, 0, 5, 1, 0, 0, 0]), 3);
        let firsts: Vec<u32> = plans.iter().map(|plan| plan[0].shard).collect();
        assert_eq!(firsts, [1, 3, 0]);
        assert!(
            plans
                .iter()
                .all(|plan| plan.len() == 1 && plan[0].units == 3)
        );
        assert!(reservation_plans(&shards(&[0; 8]), 1).is_empty());
    }

    #[test]
    fn a_split_when_no_counter_holds_the_order_alone() {
        let plans = reservation_plans(&shards(&[3, 2, 0, 4, 0, 0, 0, 0]), 8);
        assert_eq!(
            plans,
            [vec![
                StockShare { shard: 3, units: 4 },
                StockShare { shard: 0, units: 3 },
                StockShare { shard: 1, units: 1 },
            ]]
        );
        assert_eq!(plans[0].iter().map(|share| share.units).sum::<u32>(), 8);
        assert!(reservation_plans(&shards(&[3, 2, 0, 4, 0, 0, 0, 0]), 10).is_empty());
    }
}
