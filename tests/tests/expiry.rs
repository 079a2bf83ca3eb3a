//! The sweep expires unpaid orders and returns their stock; a late payment is kept as
//! `paid_after_expiry`. Its own test binary (own moto), since a sweep sees every order.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::app::sweep::{SweepReport, sweep};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::store::{CreateOrderOutcome, OrderRecord, StockShare};
use kami_tests::*;
use serde_json::json;

/// A sweep sees every order in the table: the tests of this file take turns.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_returns_stock_and_late_payments_are_kept() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "expiry", 700, 5, &make_keys("EXP", 4)).await;
    let (_, first) = order(&ctx, &sku, 3, "expiry-first-idempotency").await;
    let (_, second) = order(&ctx, &sku, 1, "expiry-second-idempotency").await;
    let (status, refused) = order(&ctx, &sku, 1, "expiry-third-idempotency").await;
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
    let later = after_expiry(&ctx);
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
    let (status, _) = order(&ctx, &sku, 3, "expiry-again-idempotency").await;
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
    let (_, created) = order(&ctx, &sku, 1, "stuck-order-idempotency").await;
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
    let (_, created) = order(&ctx, &sku, 1, "late-order-1-idempotency").await;
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let later = after_expiry(&ctx);
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
    let (_, created) = order(&ctx, &sku, 1, "retry-order-1-idempotency").await;
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

/// A time by which every order made before it is due for the sweep (past its
/// `expires_at` and the grace after it).
fn after_expiry(ctx: &Context) -> Timestamp {
    Timestamp::now()
        .plus_seconds(ctx.config.order_ttl_seconds + ctx.config.expiry_grace_seconds + 1)
}

async fn stored_order(ctx: &Context, order_id: &str) -> OrderRecord {
    ctx.store
        .get_order(order_id)
        .await
        .expect("read")
        .expect("order")
}

async fn available_on(ctx: &Context, sku: &str, shard: u32) -> i64 {
    let shards = ctx.store.stock_shards(sku, true).await.expect("stock");
    shards
        .into_iter()
        .find(|(s, _)| *s == shard)
        .map(|(_, stock)| stock.available)
        .expect("counter")
}

/// Another buyer's pending order for `units`, reserved on counter `shard` alone.
async fn reserve_on(ctx: &Arc<Context>, sku: &str, shard: u32, units: u32) {
    let now = Timestamp::now();
    let mut other = stored_order_template(sku, units, now);
    other.stock_shards = StockShare::whole(shard, units);
    let outcome = ctx
        .store
        .create_order(
            &other,
            &[],
            &format!("idem-{}", new_id()),
            "source",
            "other",
            now,
        )
        .await
        .expect("other order");
    assert!(matches!(outcome, CreateOrderOutcome::Created));
}

fn stored_order_template(sku: &str, units: u32, now: Timestamp) -> OrderRecord {
    OrderRecord {
        stock_shards: Vec::new(),
        // Far off: the other tests' sweeps must not expire it.
        expires_at: now.plus_seconds(30 * 86_400),
        ..kami_shared::fakes::order_fixture(sku, units, now)
    }
}

/// GIVEN an expired order whose own stock counter has since sold out while other
/// counters hold stock WHEN its exact payment arrives THEN it takes its unit from one
/// of them and is delivered (not kept as `paid_after_expiry`).
#[tokio::test]
async fn a_late_payment_takes_stock_from_any_counter_that_has_it() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    // 100 keys: 49, 49 and 2 units on three counters.
    let sku = product_with_keys(&ctx, "late-any", 300, 10, &make_keys("LATEANY", 100)).await;
    let (status, created) = order(&ctx, &sku, 1, &format!("idem-late-any-{sku}")).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let own = stored_order(&ctx, order_id).await.stock_shards;
    assert!(
        sweep(&ctx, after_expiry(&ctx))
            .await
            .expect("sweep")
            .expired
            >= 1
    );

    // Everything on the order's counter is reserved by another buyer meanwhile.
    let shard = own[0].shard;
    let left = u32::try_from(available_on(&ctx, &sku, shard).await).expect("count");
    reserve_on(&ctx, &sku, shard, left).await;
    assert_eq!(available_on(&ctx, &sku, shard).await, 0);

    let (status, _) = pay(&ctx, &format!("evt_late_any_{sku}"), order_id, 300, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, order_id, token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(
        causes(&view),
        ["created", "expire", "late_payment_reserved", "deliver"]
    );
    let moved = stored_order(&ctx, order_id).await.stock_shards;
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0].shard, shard, "reserved again on another counter");
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 99 - left, "reserved": left, "sold": 1})
    );
}

/// GIVEN an order of 10 drawn from several counters (none held 10) WHEN it expires
/// THEN each counter gets back exactly what it gave; and when its money comes late it
/// takes the same counters again, is delivered, and they count its 10 units as sold.
#[tokio::test]
async fn an_order_drawn_from_several_counters_expires_and_sells_on_each() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "split", 100, 10, &make_keys("SPLIT", 100)).await;
    let before = ctx.store.stock_shards(&sku, true).await.expect("stock");
    let mut orders = Vec::new();
    for i in 0..9 {
        let (status, body) = order(&ctx, &sku, 10, &format!("idem-split-{sku}-{i}")).await;
        assert_eq!(status, 201, "order {i}: {body}");
        orders.push(body);
    }
    let last = &orders[8];
    let last_id = last["order_id"].as_str().expect("id");
    let split = stored_order(&ctx, last_id).await.stock_shards;
    assert!(split.len() > 1, "{split:?}");

    assert!(
        sweep(&ctx, after_expiry(&ctx))
            .await
            .expect("sweep")
            .expired
            >= 9
    );
    let after = ctx.store.stock_shards(&sku, true).await.expect("stock");
    assert_eq!(
        format!("{after:?}"),
        format!("{before:?}"),
        "every counter got back what it gave"
    );

    let (status, _) = pay(&ctx, &format!("evt_split_{sku}"), last_id, 1000, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, last_id, last["access_token"].as_str().expect("token")).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(view["deliveries"].as_array().expect("deliveries").len(), 10);
    let shards = ctx.store.stock_shards(&sku, true).await.expect("stock");
    for share in &split {
        let (_, stock) = shards
            .iter()
            .find(|(shard, _)| *shard == share.shard)
            .expect("counter");
        assert_eq!(stock.sold, i64::from(share.units), "{shards:?}");
        assert_eq!(stock.reserved, 0);
    }
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 90, "reserved": 0, "sold": 10})
    );
}

/// GIVEN an unpaid order just past its `expires_at` but within the grace
/// (`EXPIRY_GRACE_SECONDS`) WHEN the sweep runs THEN it keeps the order pending with its
/// stock and its `expires_at`; a payment arriving then is a normal payment; an order
/// still unpaid once the grace is over is expired.
#[tokio::test]
async fn a_payment_within_the_grace_after_expiry_is_a_normal_payment() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let grace = ctx.config.expiry_grace_seconds;
    assert_eq!(grace, 300, "the default grace");
    let sku = product_with_keys(&ctx, "grace", 300, 5, &make_keys("GRACE", 2)).await;
    let (_, paid_late) = order(&ctx, &sku, 1, &format!("idem-grace-paid-{sku}")).await;
    let (_, unpaid) = order(&ctx, &sku, 1, &format!("idem-grace-unpaid-{sku}")).await;
    let paid_id = paid_late["order_id"].as_str().expect("id");
    let paid_token = paid_late["access_token"].as_str().expect("token");
    let expires_at = stored_order(&ctx, paid_id).await.expires_at;

    // Past expires_at, within the grace: nothing is released.
    let within = expires_at.plus_seconds(1);
    assert_eq!(sweep(&ctx, within).await.expect("sweep").expired, 0);
    let within = expires_at.plus_seconds(grace - 1);
    assert_eq!(sweep(&ctx, within).await.expect("sweep").expired, 0);
    let (_, view) = view_order(&ctx, paid_id, paid_token).await;
    assert_eq!(view["status"], "pending_payment");
    assert_eq!(view["expires_at"], paid_late["expires_at"]);
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 0, "reserved": 2, "sold": 0})
    );

    // The webhook of a payment made in time arrives now: a normal payment.
    let (status, _) = pay(&ctx, &format!("evt_grace_{sku}"), paid_id, 300, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, paid_id, paid_token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(causes(&view), ["created", "payment_received", "deliver"]);

    // Once the grace is over, the unpaid one expires and its unit returns.
    let over = expires_at.plus_seconds(grace + 1);
    assert!(sweep(&ctx, over).await.expect("sweep").expired >= 1);
    let (_, view) = view_order(
        &ctx,
        unpaid["order_id"].as_str().expect("id"),
        unpaid["access_token"].as_str().expect("token"),
    )
    .await;
    assert_eq!(view["status"], "expired");
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 1, "reserved": 0, "sold": 1})
    );
}

/// `POST /admin/orders/{id}/accept-payment` as the admin.
async fn accept_payment(ctx: &Arc<Context>, order_id: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    operations(
        ctx,
        request(
            "POST",
            &format!("/admin/orders/{order_id}/accept-payment"),
            &[("authorization", &auth)],
            json!({"reason": "the buyer's bank took a fee; we deliver"}).to_string(),
        ),
    )
    .await
}

/// An operator takes late or short money as it came: the order is paid and delivered,
/// once under ten identical concurrent requests; after expiry it takes its stock again,
/// or is refused while there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_accepts_late_or_short_money_and_the_order_is_delivered_once() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "accept", 700, 5, &make_keys("ACC", 1)).await;
    let (_, late) = order(&ctx, &sku, 1, &format!("accept-late-{sku}")).await;
    let late_id = late["order_id"].as_str().expect("id").to_owned();
    sweep(&ctx, after_expiry(&ctx)).await.expect("sweep");
    // The key is taken by another order meanwhile; then the late money arrives.
    let (status, other) = order(&ctx, &sku, 1, &format!("accept-other-{sku}")).await;
    assert_eq!(status, 201);
    let (status, _) = pay(&ctx, &format!("evt_late_{late_id}"), &late_id, 700, "CNY").await;
    assert_eq!(status, 200);
    let view = |id: String, token: String| {
        let ctx = ctx.clone();
        async move { view_order(&ctx, &id, &token).await.1 }
    };
    let late_token = late["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        view(late_id.clone(), late_token.clone()).await["status"],
        "paid_after_expiry"
    );
    let (status, queue) = operations_get(
        &ctx,
        "/admin/exceptions?cause=paid_after_expiry&order=newest&limit=100",
    )
    .await;
    assert_eq!(status, 200, "{queue}");
    assert!(
        queue["exceptions"]
            .as_array()
            .is_some_and(|all| all.iter().any(|e| e["order_id"] == late_id.as_str())),
        "{queue}"
    );
    let (status, body) = accept_payment(&ctx, &late_id).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("out_of_stock"))
    );

    // With stock again, ten operators accept at once: one transition, one delivery.
    let (status, _) = import_keys(
        &ctx,
        &sku,
        "application/json",
        json!({ "keys": make_keys("ACC2", 2) }).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (ctx, id) = (ctx.clone(), late_id.clone());
            tokio::spawn(async move { accept_payment(&ctx, &id).await })
        })
        .collect();
    let mut queued = 0;
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, 202, "{body}");
        queued += usize::from(body["queued"] == true);
    }
    assert_eq!(queued, 1, "one request moved the order");
    drain_delivery_queue(&ctx).await;
    let delivered = view(late_id.clone(), late_token).await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    let (_, operator) = operations_get(&ctx, &format!("/admin/orders/{late_id}")).await;
    assert_eq!(
        causes(&operator)
            .iter()
            .filter(|c| *c == "accept_payment")
            .count(),
        1
    );

    // Short money: its stock was never given back; accepted, it is delivered.
    let (_, short) = order(&ctx, &sku, 1, &format!("accept-short-{sku}")).await;
    let short_id = short["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(
        &ctx,
        &format!("evt_short_{short_id}"),
        &short_id,
        690,
        "CNY",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = accept_payment(&ctx, &short_id).await;
    assert_eq!(status, 202);
    drain_delivery_queue(&ctx).await;
    let short_token = short["access_token"].as_str().expect("token").to_owned();
    assert_eq!(view(short_id, short_token).await["status"], "delivered");
    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 0, "reserved": 1, "sold": 2})
    );
    // Asked again later, the accepted order answers the same; an order that never
    // needed it (pending) is refused.
    let (status, body) = accept_payment(&ctx, &late_id).await;
    assert_eq!((status, body["queued"].as_bool()), (202, Some(false)));
    let (status, body) = accept_payment(&ctx, other["order_id"].as_str().expect("id")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("illegal_transition"))
    );
}
