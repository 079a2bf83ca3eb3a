//! The stock audit against moto: every card-key product's counters checked against the
//! keys in stock; a product whose keys went missing behind Kami's back is reported, one
//! whose keys and counters agree is not (docs/operations.md, "The stock audit").

use kami_shared::app::delivery::Budget;
use kami_shared::app::stock_audit::{StockAuditReport, audit_stock};
use kami_tests::*;
use serde_json::json;

fn ours<'a>(report: &'a StockAuditReport, sku: &str) -> Vec<&'a str> {
    report
        .mismatches
        .iter()
        .filter(|m| m.sku == sku)
        .map(|m| m.kind)
        .collect()
}

#[tokio::test]
async fn counters_that_promise_keys_no_longer_in_stock_are_reported() {
    let ctx = context().await;
    let sku = unique_sku("audit");
    create_product(
        &ctx,
        json!({"sku": sku, "title": "Audited", "price": {"amount": 100, "currency": "CNY"},
               "delivery": {"type": "card_key"}}),
    )
    .await;
    let keys: Vec<String> = (1..=3).map(|i| format!("AUDIT-{i}-{sku}")).collect();
    let (status, body) = import_keys(
        &ctx,
        &sku,
        "application/json",
        json!({ "keys": keys }).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    assert!(report.checked >= 1 && !report.stopped_early, "{report:?}");
    assert!(ours(&report, &sku).is_empty(), "{report:?}");

    steal_stock(&sku).await;
    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    let found: Vec<_> = report.mismatches.iter().filter(|m| m.sku == sku).collect();
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(
        (
            found[0].kind,
            found[0].keys_in_stock,
            found[0].available,
            found[0].reserved
        ),
        ("fewer_keys_than_available", 0, 3, 0)
    );
}
