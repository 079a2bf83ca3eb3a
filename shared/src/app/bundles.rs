//! A bundle order's parts (docs/bundles.md): what each part is, fixed when the order is
//! made as any order's spec is, and where the order's stock lines are reserved.

use super::catalog::find_product;
use super::orders::top_up_order;
use super::stock::reservation_plans;
use crate::config::Context;
use crate::domain::bundle::BundleSpec;
use crate::error::{ConflictKind, Error, Result};
use crate::store::{OrderPart, OrderRecord, StockShare};

/// The parts of an order of `quantity` bundles, each as its product is now. A part
/// that counts stock holds a placeholder reservation (all its units on counter 0) until
/// `assign` puts the chosen one. The top-up part, if any, takes the order's
/// `recipient`; a bundle without one refuses it.
pub(crate) async fn order_parts(
    ctx: &Context,
    spec: &BundleSpec,
    quantity: u32,
    recipient: Option<Option<String>>,
) -> Result<Vec<OrderPart>> {
    let mut parts = Vec::with_capacity(spec.items.len());
    let mut takes_recipient = false;
    for item in &spec.items {
        let product = match find_product(ctx, &item.sku, false).await {
            Err(Error::NotFound(_)) => Err(Error::Conflict(ConflictKind::ProductUnavailable)),
            other => other,
        }?;
        let units = item.quantity.saturating_mul(quantity);
        let top_up = match product.top_up {
            Some(_) => {
                takes_recipient = true;
                top_up_order(ctx, &product, units, recipient.clone()).await?
            }
            None => None,
        };
        parts.push(OrderPart {
            sku: product.sku.clone(),
            units,
            delivery_type: product.delivery,
            stock_shards: if product.counts_stock() {
                StockShare::whole(0, units)
            } else {
                Vec::new()
            },
            top_up,
            license: product.license,
            grant: product.grant.clone(),
            link: product.link.clone(),
        });
    }
    if !takes_recipient && recipient.is_some() {
        return Err(Error::invalid_field(
            "invalid_recipient",
            "recipient",
            "this product takes no recipient",
        ));
    }
    Ok(parts)
}

/// The stock lines an order reserves, as (sku, units): its own, or its counted parts'
/// (each holding a placeholder or an earlier plan).
pub(crate) fn lines_to_reserve(order: &OrderRecord) -> Vec<(String, u32)> {
    order
        .stock_lines()
        .into_iter()
        .filter(|(_, shares)| !shares.is_empty())
        .map(|(sku, shares)| (sku.to_owned(), shares.iter().map(|share| share.units).sum()))
        .collect()
}

/// Puts a plan (one reservation per line of `lines_to_reserve`) on the order.
pub(crate) fn assign(order: &mut OrderRecord, plan: Vec<Vec<StockShare>>) {
    if order.parts.is_empty() {
        order.stock_shards = plan.into_iter().next().unwrap_or_default();
        return;
    }
    let counted = order
        .parts
        .iter_mut()
        .filter(|part| !part.stock_shards.is_empty());
    for (part, shares) in counted.zip(plan) {
        part.stock_shards = shares;
    }
}

/// The plans to try after a consistent read of every line's counters: for one line,
/// each way it fits (as `reservation_plans` orders them); for several, the first way
/// of each together. Empty when a line does not fit at all.
pub(crate) async fn replan(
    ctx: &Context,
    lines: &[(String, u32)],
) -> Result<Vec<Vec<Vec<StockShare>>>> {
    let mut per_line = Vec::with_capacity(lines.len());
    for (sku, units) in lines {
        let shards = ctx.store.stock_shards(sku, true).await?;
        let plans = reservation_plans(&shards, *units);
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        per_line.push(plans);
    }
    Ok(match per_line.len() {
        1 => per_line
            .into_iter()
            .flatten()
            .map(|plan| vec![plan])
            .collect(),
        _ => vec![
            per_line
                .into_iter()
                .filter_map(|plans| plans.into_iter().next())
                .collect(),
        ],
    })
}
