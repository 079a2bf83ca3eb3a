//! The stock audit against moto: every product's counters checked against the keys in
//! stock and the orders that hold units; a product broken behind Kami's back is
//! reported, one whose counters agree is not (docs/operations.md, "The stock audit").

use aws_sdk_dynamodb::types::AttributeValue;
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

/// One more unit counted `reserved` on a counter, behind Kami's back.
async fn reserve_behind_the_back(sku: &str) {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
        .update_item()
        .table_name(&stack().env["KAMI_TABLE"])
        .key("pk", AttributeValue::S(format!("STOCKCOUNT#{sku}#0")))
        .key("sk", AttributeValue::S("COUNTER".into()))
        .update_expression("SET reserved = reserved + :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("update");
}

#[tokio::test]
async fn counters_that_disagree_with_keys_or_orders_are_reported() {
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
    // An unpaid order holds a unit: counted, not a mismatch.
    let (status, _) = order(&ctx, &sku, 1, &format!("audit-{sku}")).await;
    assert_eq!(status, 201);

    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    assert!(report.checked >= 1 && !report.stopped_early, "{report:?}");
    assert!(ours(&report, &sku).is_empty(), "{report:?}");

    reserve_behind_the_back(&sku).await;
    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    let found: Vec<_> = report.mismatches.iter().filter(|m| m.sku == sku).collect();
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(
        (
            found[0].kind,
            found[0].reserved,
            found[0].reserved_by_orders
        ),
        ("reserved_without_order", 2, Some(1))
    );

    steal_stock(&sku).await;
    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    let mut kinds = ours(&report, &sku);
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["fewer_keys_than_available", "reserved_without_order"],
        "{report:?}"
    );
}
