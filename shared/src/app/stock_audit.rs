//! The stock audit (`functions/stock-audit`, hourly): every product that counts stock
//! checked against what its counters count. Two invariants, each broken only by a bug or
//! a hand edit (docs/dynamodb.md, "Invariants and why they hold"):
//! - keys: keys leave stock only into an order that reserved them, so for a card-key
//!   product `available ≤ keys in stock ≤ available + reserved` at every moment. Fewer
//!   keys than `available` would sell what cannot be delivered; more than `available +
//!   reserved` are keys no one can buy.
//! - reservations: `reserved` is the sum of the quantities of the orders that hold stock
//!   (pending, paid, delivering, delivery_failed, payment_exception). More is stock held
//!   by no live order (never sold again); less is an order whose units are not held.
//!
//! A product outside them is reported (ERROR log, metric `StockMismatches`, the run's
//! answer) and filed in the exception queue (cause `stock_mismatch`, one entry per
//! product and kind) for an operator; a run that judges it again and finds it mended
//! takes the entry out. The audit changes no stock. docs/operations.md, "The stock
//! audit".

use std::collections::HashMap;

use serde::Serialize;

use super::delivery::Budget;
use crate::config::Context;
use crate::domain::product::{DeliveryType, Product, Stock};
use crate::error::Result;

/// Products per page of the product list.
const PAGE: i32 = 100;
/// Time a product's check may take at most (8 count queries, a few pages each).
const PRODUCT_RESERVE_MS: i64 = 2_000;

/// A product whose counters disagree with what they count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockMismatch {
    pub sku: String,
    /// `fewer_keys_than_available`, `keys_not_counted`, `reserved_without_order` or
    /// `order_without_reservation`.
    pub kind: &'static str,
    pub available: i64,
    pub reserved: i64,
    /// Card keys in stock (the keys check).
    pub keys_in_stock: Option<u64>,
    /// The units the live orders hold (the reservations check).
    pub reserved_by_orders: Option<i64>,
}

/// What one run found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StockAuditReport {
    pub checked: u64,
    pub mismatches: Vec<StockMismatch>,
    /// Products whose counters moved while their orders were read: their reservations
    /// were not judged this run (the next one does).
    pub busy: u64,
    /// The run stopped at its deadline; the next one starts again from the first product.
    pub stopped_early: bool,
}

/// Where a product's keys stand against its counters, or `None` if they agree.
pub fn judge_keys(sku: &str, keys_in_stock: u64, stock: &Stock) -> Option<StockMismatch> {
    let keys = i64::try_from(keys_in_stock).unwrap_or(i64::MAX);
    let kind = if keys < stock.available {
        "fewer_keys_than_available"
    } else if keys > stock.available.saturating_add(stock.reserved) {
        "keys_not_counted"
    } else {
        return None;
    };
    Some(StockMismatch {
        sku: sku.to_owned(),
        kind,
        available: stock.available,
        reserved: stock.reserved,
        keys_in_stock: Some(keys_in_stock),
        reserved_by_orders: None,
    })
}

/// Where a product's reserved units stand against its live orders, or `None`.
pub fn judge_reservations(sku: &str, by_orders: i64, stock: &Stock) -> Option<StockMismatch> {
    let kind = match stock.reserved.cmp(&by_orders) {
        std::cmp::Ordering::Equal => return None,
        std::cmp::Ordering::Greater => "reserved_without_order",
        std::cmp::Ordering::Less => "order_without_reservation",
    };
    Some(StockMismatch {
        sku: sku.to_owned(),
        kind,
        available: stock.available,
        reserved: stock.reserved,
        keys_in_stock: None,
        reserved_by_orders: Some(by_orders),
    })
}

const KEY_KINDS: [&str; 2] = ["fewer_keys_than_available", "keys_not_counted"];
const RESERVATION_KINDS: [&str; 2] = ["reserved_without_order", "order_without_reservation"];

/// Files a product's findings in the exception queue, and takes out those of the kinds
/// `judged` this run that it did not find again.
async fn file(ctx: &Context, sku: &str, found: &[StockMismatch], judged: &[&str]) -> Result<()> {
    let now = ctx.clock.now();
    for mismatch in found {
        let mut figures = vec![
            ("available", mismatch.available),
            ("reserved", mismatch.reserved),
        ];
        if let Some(keys) = mismatch.keys_in_stock {
            figures.push(("keys_in_stock", i64::try_from(keys).unwrap_or(i64::MAX)));
        }
        if let Some(held) = mismatch.reserved_by_orders {
            figures.push(("reserved_by_orders", held));
        }
        ctx.store
            .file_stock_mismatch((sku, mismatch.kind), &figures, now)
            .await?;
    }
    for filed in ctx.store.filed_stock_mismatches(sku).await? {
        if judged.contains(&filed.as_str()) && !found.iter().any(|m| m.kind == filed) {
            ctx.store.clear_stock_mismatch(sku, &filed).await?;
            tracing::info!(
                sku,
                kind = filed,
                "stock mismatch mended: out of the exception queue"
            );
        }
    }
    Ok(())
}

/// Every product that counts stock, with its counters read now (consistently).
async fn products_with_stock(ctx: &Context) -> Result<Vec<(Product, Stock)>> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (skus, next) = ctx.store.product_skus(after.as_deref(), PAGE).await?;
        for sku in skus {
            if let Some(product) = ctx.store.get_product(&sku, false).await?
                && product.counts_stock()
            {
                let stock = ctx.store.stock(&sku, true).await?;
                found.push((product, stock));
            }
        }
        match next {
            Some(sku) => after = Some(sku),
            None => return Ok(found),
        }
    }
}

/// The units each product's live orders hold, by sku.
async fn reserved_by_orders(ctx: &Context) -> Result<HashMap<String, i64>> {
    let ids = ctx.store.open_order_ids().await?;
    let mut held: HashMap<String, i64> = HashMap::new();
    for order in ctx.store.get_orders(&ids).await? {
        if order.status.holds_stock() {
            // A bundle's units are held on its parts' counters.
            for (sku, shares) in order.stock_lines() {
                let units: u32 = shares.iter().map(|share| share.units).sum();
                *held.entry(sku.to_owned()).or_default() += i64::from(units);
            }
        }
    }
    Ok(held)
}

/// One run over every product, within `budget`.
pub async fn audit_stock(ctx: &Context, budget: &Budget) -> Result<StockAuditReport> {
    let mut report = StockAuditReport::default();
    // Counters, then orders, then counters again: a product whose counters did not move
    // meanwhile had the same live orders throughout (every change to them moves a
    // counter), so its reservations can be judged.
    let before = products_with_stock(ctx).await?;
    let held = reserved_by_orders(ctx).await?;
    for (product, stock) in before {
        if !budget.allows(PRODUCT_RESERVE_MS) {
            report.stopped_early = true;
            break;
        }
        let now = ctx.store.stock(&product.sku, true).await?;
        report.checked += 1;
        let mut found = Vec::new();
        let mut judged: Vec<&str> = Vec::new();
        if now == stock {
            judged.extend(RESERVATION_KINDS);
            let by_orders = held.get(&product.sku).copied().unwrap_or_default();
            found.extend(judge_reservations(&product.sku, by_orders, &now));
        } else {
            report.busy += 1;
        }
        if product.delivery == DeliveryType::CardKey {
            // Counters first: a key that leaves stock meanwhile was reserved, so it
            // cannot push the count below `available` read before it.
            let keys = ctx.store.count_stock_keys(&product.sku).await?;
            found.extend(judge_keys(&product.sku, keys, &now));
            judged.extend(KEY_KINDS);
        }
        file(ctx, &product.sku, &found, &judged).await?;
        for mismatch in found {
            tracing::error!(
                sku = mismatch.sku,
                kind = mismatch.kind,
                available = mismatch.available,
                reserved = mismatch.reserved,
                keys_in_stock = mismatch.keys_in_stock,
                reserved_by_orders = mismatch.reserved_by_orders,
                "stock counters disagree with what they count"
            );
            report.mismatches.push(mismatch);
        }
    }
    crate::metrics::stock_mismatches(report.mismatches.len());
    tracing::info!(
        checked = report.checked,
        mismatches = report.mismatches.len(),
        busy = report.busy,
        stopped_early = report.stopped_early,
        "stock audit done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(available: i64, reserved: i64) -> Stock {
        Stock {
            available,
            reserved,
            sold: 0,
        }
    }

    #[test]
    fn keys_must_cover_what_is_available_and_be_counted_as_available_or_reserved() {
        assert_eq!(judge_keys("s", 5, &stock(5, 0)), None);
        assert_eq!(judge_keys("s", 5, &stock(3, 2)), None);
        // A reserved unit whose key went into an order not yet marked delivered.
        assert_eq!(judge_keys("s", 4, &stock(3, 2)), None);
        let kind = |keys, s: Stock| judge_keys("s", keys, &s).map(|m| m.kind);
        assert_eq!(kind(2, stock(3, 0)), Some("fewer_keys_than_available"));
        assert_eq!(kind(6, stock(3, 2)), Some("keys_not_counted"));
    }

    #[test]
    fn reserved_units_are_exactly_what_live_orders_hold() {
        assert_eq!(judge_reservations("s", 2, &stock(3, 2)), None);
        let kind = |by, s: Stock| judge_reservations("s", by, &s).map(|m| m.kind);
        assert_eq!(kind(1, stock(3, 2)), Some("reserved_without_order"));
        assert_eq!(kind(3, stock(3, 2)), Some("order_without_reservation"));
    }
}
