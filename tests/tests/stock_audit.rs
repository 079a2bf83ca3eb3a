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

/// Runs in this binary share the table's products: one audit at a time, so one test's
/// run never files another's finding after that test mended it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One more unit counted `reserved` on a counter, behind Kami's back.
async fn reserve_behind_the_back(sku: &str) {
    move_reserved(sku, 1).await;
}

/// `reserved` moved by `by` on counter 0, behind Kami's back.
async fn move_reserved(sku: &str, by: i64) {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
        .update_item()
        .table_name(&stack().env["KAMI_TABLE"])
        .key("pk", AttributeValue::S(format!("STOCKCOUNT#{sku}#0")))
        .key("sk", AttributeValue::S("COUNTER".into()))
        .update_expression("SET reserved = reserved + :by")
        .expression_attribute_values(":by", AttributeValue::N(by.to_string()))
        .send()
        .await
        .expect("update");
}

#[tokio::test]
async fn counters_that_disagree_with_keys_or_orders_are_reported() {
    let _serial = SERIAL.lock().await;
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

/// The stock audit's entries in the exception queue about `sku`, every page read, as
/// listed.
async fn queued(ctx: &std::sync::Arc<kami_shared::Context>, sku: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/admin/exceptions?cause=stock_mismatch&limit=100".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = operations_get(ctx, &path).await;
        assert_eq!(status, 200, "{page}");
        found.extend(
            page["exceptions"]
                .as_array()
                .expect("exceptions")
                .iter()
                .filter(|e| e["sku"] == sku)
                .cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return found,
        }
    }
}

#[tokio::test]
async fn a_finding_waits_in_the_exception_queue_until_a_run_finds_it_mended() {
    let _serial = SERIAL.lock().await;
    let ctx = context().await;
    let sku = unique_sku("audit-queue");
    create_product(
        &ctx,
        json!({"sku": sku, "title": "Audited", "price": {"amount": 100, "currency": "CNY"},
               "delivery": {"type": "card_key"}}),
    )
    .await;
    import_all(&ctx, &sku, &make_keys(&sku, 2)).await;
    reserve_behind_the_back(&sku).await;

    // Found twice: one entry, in the queue since the first run.
    for _ in 0..2 {
        audit_stock(&ctx, &Budget::unlimited())
            .await
            .expect("audit");
    }
    let entries = queued(&ctx, &sku).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["cause"], "stock_mismatch");
    assert_eq!(entries[0]["exception"], "reserved_without_order");
    assert!(entries[0]["order_id"].is_null(), "{entries:?}");

    // Mended by hand: the next run takes it out.
    move_reserved(&sku, -1).await;
    let report = audit_stock(&ctx, &Budget::unlimited())
        .await
        .expect("audit");
    assert!(ours(&report, &sku).is_empty(), "{report:?}");
    assert!(queued(&ctx, &sku).await.is_empty());
}
