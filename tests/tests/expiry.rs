//! The sweep expires unpaid orders and returns their stock; a late payment is kept as
//! `paid_after_expiry`. Its own test binary (own moto), since a sweep sees every order.

use kami_shared::app::sweep::{SweepReport, sweep};
use kami_shared::domain::time::Timestamp;
use kami_tests::*;
use serde_json::json;

/// A sweep sees every order in the table: the tests of this file take turns.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_returns_stock_and_late_payments_are_kept() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "expiry", 700, 5, &make_keys("EXP", 4)).await;
    let (_, first) = order(&ctx, &sku, 3, "expiry-first").await;
    let (_, second) = order(&ctx, &sku, 1, "expiry-second").await;
    let (status, refused) = order(&ctx, &sku, 1, "expiry-third").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("out_of_stock"))
    );

    // Nothing is due yet.
    assert_eq!(
        sweep(&ctx, Timestamp::now()).await.expect("sweep"),
        SweepReport::default()
    );

    // Pay the second order, then sweep as of after both orders' expiry, twice at once.
    let (status, _) = pay(
        &ctx,
        "evt_exp_second",
        second["order_id"].as_str().expect("id"),
        700,
        "CNY",
    )
    .await;
    assert_eq!(status, 200);
    let later = Timestamp::now().plus_seconds(ctx.config.order_ttl_seconds + 1);
    let (a, b) = tokio::join!(sweep(&ctx, later), sweep(&ctx, later));
    let (a, b) = (a.expect("sweep a"), b.expect("sweep b"));
    assert_eq!(
        a.expired + b.expired,
        1,
        "the unpaid order expires exactly once"
    );

    let first_id = first["order_id"].as_str().expect("id");
    let first_token = first["access_token"].as_str().expect("token");
    let (_, view) = view_order(&ctx, first_id, first_token).await;
    assert_eq!(view["status"], "expired");
    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 3, "reserved": 1, "sold": 0})
    );

    // The returned stock sells again.
    let (status, _) = order(&ctx, &sku, 3, "expiry-again").await;
    assert_eq!(status, 201);

    // Money for the expired order arrives after all: recorded, kept, not delivered.
    let (status, _) = pay(&ctx, "evt_exp_first", first_id, 2100, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, first_id, first_token).await;
    assert_eq!(view["status"], "paid_after_expiry");
    assert_eq!(view["exception"], "paid_after_expiry");
    assert_eq!(view["deliveries"], json!([]));
    let (_, second_view) = view_order(
        &ctx,
        second["order_id"].as_str().expect("id"),
        second["access_token"].as_str().expect("token"),
    )
    .await;
    assert_eq!(
        second_view["status"], "delivered",
        "paid orders are never expired"
    );
}

#[tokio::test]
async fn a_paid_order_left_undelivered_is_requeued() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "stuck", 100, 5, &make_keys("STUCK", 1)).await;
    let (_, created) = order(&ctx, &sku, 1, "stuck-order").await;
    let order_id = created["order_id"].as_str().expect("id");
    let (status, _) = pay(&ctx, "evt_stuck", order_id, 100, "CNY").await;
    assert_eq!(status, 200);
    // The queued message is lost (for example, purged by mistake).
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let url = ctx.config.delivery_queue_url.clone().expect("queue");
    sqs.purge_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("purge");
    assert_eq!(drain_delivery_queue(&ctx).await, 0);

    let later =
        Timestamp::now().plus_seconds(kami_shared::adapters::dynamo::STUCK_AFTER_SECONDS + 1);
    let report = sweep(&ctx, later).await.expect("sweep");
    assert!(report.requeued >= 1);
    assert_eq!(drain_delivery_queue(&ctx).await, report.requeued as usize);
    let (_, view) = view_order(
        &ctx,
        order_id,
        created["access_token"].as_str().expect("token"),
    )
    .await;
    assert_eq!(view["status"], "delivered");
}
