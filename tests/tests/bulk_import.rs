//! 100,000 card keys in one import request (one KMS data key, transactions of 49).

use kami_tests::faults::{Answer, Fault, FaultProxy};
use kami_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_thousand_keys_in_one_import() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "bulk", 100, 10, &[]).await;
    let keys = make_keys("BULK", 100_000);
    let body = keys.join("\n");
    assert!(body.len() < kami_shared::http::MAX_IMPORT_BODY);
    let (status, report) = import_keys(&ctx, &sku, "text/plain", body).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["accepted"], 100_000);
    assert_eq!(report["duplicates"], json!([]));
    assert_eq!(report["invalid"], json!([]));
    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 100_000, "reserved": 0, "sold": 0})
    );

    // The imported keys sell: one order, paid and delivered, gets one of them.
    let (status, created) = order(&ctx, &sku, 2, "bulk-order-idempotency").await;
    assert_eq!(status, 201);
    let order_id = created["order_id"].as_str().expect("id");
    pay(&ctx, "evt_bulk", order_id, 200, "CNY").await;
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(
        &ctx,
        order_id,
        created["access_token"].as_str().expect("token"),
    )
    .await;
    for delivery in view["deliveries"].as_array().expect("deliveries") {
        assert!(keys.contains(&delivery["code"].as_str().expect("code").to_owned()));
    }
    assert_eq!(view["deliveries"].as_array().map(Vec::len), Some(2));
}

/// The answer to a committed import transaction is lost on the way back; the SDK retries
/// it with the same client token. The keys count as imported, not as duplicates of
/// themselves (the 1,000,000-key bench once reported 49 that way; docs/bench.md).
#[tokio::test]
async fn an_import_whose_answer_is_lost_and_retried_reports_no_duplicates() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "lost", 100, 10, &[]).await;
    let proxy = FaultProxy::start(
        &stack().endpoint,
        vec![Fault::dynamodb("TransactWriteItems", Answer::Lost)],
    )
    .await;
    imports_30_keys_once(&ctx, &sku, &proxy, "LOST", 1).await;
}

/// DynamoDB answers `TransactionInProgressException` while a call's transaction may
/// still commit. Retrying it as a new call (new `ClientRequestToken`) ran the import
/// chunk twice and reported its keys as duplicates of themselves; the retry is now the
/// same call (same token), applied once.
#[tokio::test]
async fn an_import_answered_in_progress_is_retried_as_the_same_call() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "inprogress", 100, 10, &[]).await;
    // The SDK's own 3 attempts (same token) are all answered in progress; Kami's
    // retry then decides which call comes next.
    let proxy = FaultProxy::start(
        &stack().endpoint,
        vec![Fault::dynamodb("TransactWriteItems", Answer::InProgress).times(3)],
    )
    .await;
    imports_30_keys_once(&ctx, &sku, &proxy, "INPROGRESS", 3).await;
}

/// Imports 30 fresh keys through `proxy`, which spoils `spoiled` transaction answers:
/// every key is accepted once, none reported a duplicate of itself, and all 30 are in
/// stock.
async fn imports_30_keys_once(
    ctx: &std::sync::Arc<kami_shared::Context>,
    sku: &str,
    proxy: &FaultProxy,
    prefix: &str,
    spoiled: usize,
) {
    let through_proxy = context_via(&proxy.endpoint).await;
    let keys = make_keys(prefix, 30);
    let (status, report) = import_keys(
        &through_proxy,
        sku,
        "application/json",
        json!({ "keys": keys }).to_string(),
    )
    .await;
    assert_eq!(
        proxy.fired(),
        [spoiled],
        "the transaction's answers were spoiled"
    );
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["accepted"], 30, "{report}");
    assert_eq!(report["duplicates"], json!([]), "{report}");
    let (_, product) = admin_product(ctx, sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 30, "reserved": 0, "sold": 0})
    );
}
