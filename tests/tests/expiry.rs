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

    let later = Timestamp::now().plus_seconds(kami_shared::store::STUCK_AFTER_SECONDS + 1);
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

#[tokio::test]
async fn a_late_payment_takes_its_stock_again_when_it_is_still_there() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "late", 300, 5, &make_keys("LATE", 2)).await;
    let (_, created) = order(&ctx, &sku, 1, "late-order-1").await;
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let later = Timestamp::now().plus_seconds(ctx.config.order_ttl_seconds + 1);
    assert!(sweep(&ctx, later).await.expect("sweep").expired >= 1);
    assert_eq!(admin_product(&ctx, &sku).await.1["stock"]["available"], 2);

    // The buyer's payment arrives after expiry; the unit is still unsold.
    let (status, _) = pay(&ctx, "evt_late_1", order_id, 300, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, order_id, token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(
        causes(&view),
        ["created", "expire", "late_payment_reserved", "deliver"]
    );
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 1, "reserved": 0, "sold": 1})
    );
}

#[tokio::test]
async fn the_sweep_retries_a_failed_delivery_until_it_is_delivered() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "retry", 300, 5, &make_keys("RETRY", 1)).await;
    let (_, created) = order(&ctx, &sku, 1, "retry-order-1").await;
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let (status, _) = pay(&ctx, "evt_retry_1", order_id, 300, "CNY").await;
    assert_eq!(status, 200);
    steal_stock(&sku).await;
    // Every attempt fails until the queue gives up: the order shows delivery_failed.
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
    record.message_id = Some("last-attempt".into());
    record.body = Some(format!(r#"{{"order_id":"{order_id}"}}"#));
    record.attributes.insert(
        "ApproximateReceiveCount".into(),
        ctx.config.delivery_max_attempts.to_string(),
    );
    event.records.push(record);
    let failed = kami_shared::app::delivery::handle_batch(&ctx, event).await;
    assert_eq!(failed.batch_item_failures.len(), 1);
    assert_eq!(
        view_order(&ctx, order_id, token).await.1["status"],
        "delivery_failed"
    );

    // The outage passes (stock is back); the sweep sends the order round again by itself.
    let (status, _) = import_keys(
        &ctx,
        &sku,
        "text/plain",
        make_keys("RETRY-NEW", 1).join("\n"),
    )
    .await;
    assert_eq!(status, 201);
    let soon = Timestamp::now().plus_seconds(kami_shared::store::STUCK_AFTER_SECONDS + 1);
    let report = sweep(&ctx, soon).await.expect("sweep");
    assert_eq!(
        report.requeued, 0,
        "a failed delivery waits longer than a merely slow one"
    );
    let later = Timestamp::now().plus_seconds(kami_shared::store::FAILED_RETRY_AFTER_SECONDS + 1);
    let report = sweep(&ctx, later).await.expect("sweep");
    assert!(report.requeued >= 1);
    drain_delivery_queue(&ctx).await;
    assert_eq!(
        view_order(&ctx, order_id, token).await.1["status"],
        "delivered"
    );
}
