//! The stock audit (`functions/stock-audit`, hourly): every card-key product's stock
//! counters checked against the keys they count. Keys leave stock only into an order
//! that reserved them, so at every moment, for each product,
//! `available ≤ keys in stock ≤ available + reserved`. Fewer keys than `available`
//! would sell what cannot be delivered; more than `available + reserved` are keys no
//! one can buy. A product outside those bounds is reported (ERROR log, metric
//! `StockMismatches`, the run's answer) for an operator: the audit changes nothing.
//! docs/operations.md, "The stock audit".

use serde::Serialize;

use super::delivery::Budget;
use crate::config::Context;
use crate::domain::product::DeliveryType;
use crate::error::Result;

/// Products per page of the product list.
const PAGE: i32 = 100;
/// Time a product's check may take at most (8 count queries, a few pages each).
const PRODUCT_RESERVE_MS: i64 = 2_000;

/// A product whose counters and keys disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockMismatch {
    pub sku: String,
    pub keys_in_stock: u64,
    pub available: i64,
    pub reserved: i64,
    /// `fewer_keys_than_available` or `keys_not_counted`.
    pub kind: &'static str,
}

/// What one run found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StockAuditReport {
    pub checked: u64,
    pub mismatches: Vec<StockMismatch>,
    /// The run stopped at its deadline; the next one starts again from the first product.
    pub stopped_early: bool,
}

/// Where a product's keys stand against its counters, or `None` if they agree.
pub fn judge(
    sku: &str,
    keys_in_stock: u64,
    available: i64,
    reserved: i64,
) -> Option<StockMismatch> {
    let keys = i64::try_from(keys_in_stock).unwrap_or(i64::MAX);
    let kind = if keys < available {
        "fewer_keys_than_available"
    } else if keys > available.saturating_add(reserved) {
        "keys_not_counted"
    } else {
        return None;
    };
    Some(StockMismatch {
        sku: sku.to_owned(),
        keys_in_stock,
        available,
        reserved,
        kind,
    })
}

/// One run over every product, within `budget`.
pub async fn audit_stock(ctx: &Context, budget: &Budget) -> Result<StockAuditReport> {
    let mut report = StockAuditReport::default();
    let mut after: Option<String> = None;
    loop {
        let (skus, next) = ctx.store.product_skus(after.as_deref(), PAGE).await?;
        for sku in skus {
            if !budget.allows(PRODUCT_RESERVE_MS) {
                report.stopped_early = true;
                return Ok(finish(report));
            }
            let Some(product) = ctx.store.get_product(&sku, false).await? else {
                continue;
            };
            // A top-up's budget has no keys to count.
            if product.delivery != DeliveryType::CardKey {
                continue;
            }
            // Counters first: a key that leaves stock meanwhile was reserved, so it
            // cannot push the count below `available` read before it.
            let stock = ctx.store.stock(&sku, true).await?;
            let keys = ctx.store.count_stock_keys(&sku).await?;
            report.checked += 1;
            if let Some(mismatch) = judge(&sku, keys, stock.available, stock.reserved) {
                tracing::error!(
                    sku,
                    keys_in_stock = keys,
                    available = stock.available,
                    reserved = stock.reserved,
                    kind = mismatch.kind,
                    "stock counters disagree with the keys in stock"
                );
                report.mismatches.push(mismatch);
            }
        }
        match next {
            Some(sku) => after = Some(sku),
            None => return Ok(finish(report)),
        }
    }
}

fn finish(report: StockAuditReport) -> StockAuditReport {
    crate::metrics::stock_mismatches(report.mismatches.len());
    tracing::info!(
        checked = report.checked,
        mismatches = report.mismatches.len(),
        stopped_early = report.stopped_early,
        "stock audit done"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn keys_must_cover_what_is_available_and_be_counted_as_available_or_reserved() {
        assert_eq!(judge("s", 5, 5, 0), None);
        assert_eq!(judge("s", 5, 3, 2), None);
        // A reserved unit whose key went into an order not yet marked delivered.
        assert_eq!(judge("s", 4, 3, 2), None);
        assert_eq!(
            judge("s", 2, 3, 0).map(|m| m.kind),
            Some("fewer_keys_than_available")
        );
        assert_eq!(
            judge("s", 6, 3, 2).map(|m| m.kind),
            Some("keys_not_counted")
        );
    }
}
