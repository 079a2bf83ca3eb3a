//! The sweep after a big sale: thousands of due orders. Paid orders are re-queued
//! first, due work is paged within the invocation's budget, and runs never overlap.
//! Its own test binary (own moto), since a sweep sees every order in the table.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use kami_shared::Context;
use kami_shared::app::delivery::Budget;
use kami_shared::app::sweep::{PAGE_RESERVE_MS, SweepReport, sweep, sweep_within};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::{FakeClock, TickingClock, order_fixture};
use kami_shared::store::{
    COUNTER_SHARDS, DueQueue, INDEX_SHARDS, OrderRecord, STUCK_AFTER_SECONDS, SWEEP_LEASE_MAX_MS,
    StockShare, SweepLease,
};
use kami_tests::*;
use serde_json::json;

/// A sweep sees every order in the table: the tests of this file take turns.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `count` unpaid orders of one unit of `sku`, already past `expires_at` and the grace
/// by `clock`, spread over the stock counters. They are written straight to the table in
/// the store's shapes (`put_pending_orders_unchecked`: no checkout, so thousands take
/// seconds), and their units are counted as reserved, as checkout would have.
async fn seed_due_orders(ctx: &Context, sku: &str, count: usize) -> Vec<String> {
    let now = ctx.clock.now();
    let expired = now.plus_seconds(-ctx.config.expiry_grace_seconds - 60);
    let orders: Vec<OrderRecord> = (0..count)
        .map(|i| OrderRecord {
            stock_shards: StockShare::whole(i as u32 % COUNTER_SHARDS, 1),
            expires_at: expired,
            ..order_fixture(sku, 1, expired)
        })
        .collect();
    ctx.store
        .put_pending_orders_unchecked(&orders)
        .await
        .expect("seed orders");
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    for shard in 0..COUNTER_SHARDS {
        let units = orders
            .iter()
            .filter(|order| order.stock_shards[0].shard == shard)
            .count();
        dynamo
            .update_item()
            .table_name(&ctx.config.table)
            .key("pk", AttributeValue::S(format!("STOCKCOUNT#{sku}#{shard}")))
            .key("sk", AttributeValue::S("COUNTER".into()))
            .update_expression("SET reserved = reserved + :units")
            .expression_attribute_values(":units", AttributeValue::N(units.to_string()))
            .send()
            .await
            .expect("reserve");
    }
    orders.into_iter().map(|order| order.order_id).collect()
}

/// A paid order whose delivery message was lost: it waits in the sweep's paid queue.
async fn paid_order_with_lost_message(ctx: &Arc<Context>, sku: &str) -> String {
    let (status, created) = order(ctx, sku, 1, &format!("idem-backlog-{}", new_id())).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();
    let payload = checkout_completed(&format!("evt_{}", new_id()), &order_id, 100, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, ctx.clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        queued_orders(ctx).await,
        [order_id.as_str()],
        "paid: queued once"
    );
    order_id
}

/// The order ids in the delivery queue, taken off it.
async fn queued_orders(ctx: &Context) -> Vec<String> {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let url = ctx.config.delivery_queue_url.clone().expect("a queue");
    let mut ids = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return ids;
        }
        for message in messages {
            let body: serde_json::Value =
                serde_json::from_str(message.body().unwrap_or_default()).expect("JSON body");
            ids.push(body["order_id"].as_str().expect("order_id").to_owned());
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }
}

/// A budget that allows `checks` page checks, each moving its clock on `step_ms`: the
/// run stops after a known amount of work, however fast moto is.
fn budget_for(checks: i64, step_ms: i64) -> Budget {
    Budget::until(
        Timestamp(PAGE_RESERVE_MS + (checks - 1) * step_ms),
        Arc::new(TickingClock::at(Timestamp(0), step_ms)),
    )
}

async fn stock(ctx: &Arc<Context>, sku: &str) -> serde_json::Value {
    admin_product(ctx, sku).await.1["stock"].clone()
}

/// GIVEN 5,000 unpaid orders due and one paid order whose delivery message was lost
/// WHEN the first sweep runs with time for a few pages only THEN it re-queues the paid
/// order, expires what it has time for (each once) and reports more due. (Before,
/// a run expired every due order before it looked at paid ones: on moto the 5,000
/// take about a minute, longer than the function's timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_big_sale_the_first_run_requeues_a_stuck_paid_order() {
    let _turn = SWEEPS.lock().await;
    // Twenty years ahead: the orders this test leaves due are never due for the other
    // tests' sweeps.
    let clock = Arc::new(FakeClock::at(
        Timestamp::now().plus_seconds(20 * 365 * 86_400),
    ));
    let ctx = context_on(clock.clone()).await;
    let sku = product_with_keys(&ctx, "backlog", 100, 5, &make_keys("BACKLOG", 1)).await;
    let paid = paid_order_with_lost_message(&ctx, &sku).await;
    seed_due_orders(&ctx, &sku, 5_000).await;
    clock.advance_seconds(STUCK_AFTER_SECONDS + 1);

    let first = sweep_within(&ctx, ctx.clock.now(), &budget_for(300, 10))
        .await
        .expect("sweep");
    assert_eq!(first.requeued, 1, "{first:?}");
    assert!(first.more_due, "{first:?}");
    assert!(first.expired > 0 && first.expired < 5_000, "{first:?}");
    assert_eq!(
        queued_orders(&ctx).await,
        [paid],
        "the paid order, re-queued"
    );
    assert_eq!(
        stock(&ctx, &sku).await,
        json!({"available": first.expired, "reserved": 5_001 - first.expired, "sold": 0}),
        "each expired order gave its unit back once"
    );
}

/// GIVEN unpaid orders due WHEN a run has time for a few pages only THEN it reports
/// more due, and the next run expires the rest: every order once, every unit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_out_of_time_leaves_the_rest_to_the_next_run() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "paging", 100, 5, &[]).await;
    seed_due_orders(&ctx, &sku, 240).await;

    // The paid queue's eight pages, then about three pages of the pending queue.
    let first = sweep_within(&ctx, ctx.clock.now(), &budget_for(100, 10))
        .await
        .expect("sweep");
    assert!(first.more_due, "{first:?}");
    assert!(first.expired > 0 && first.expired < 240, "{first:?}");
    let second = sweep(&ctx, ctx.clock.now()).await.expect("sweep");
    assert_eq!(
        second,
        SweepReport {
            expired: 240 - first.expired,
            ..SweepReport::default()
        }
    );
    assert_eq!(
        stock(&ctx, &sku).await,
        json!({"available": 240, "reserved": 0, "sold": 0}),
        "every order expired once"
    );
}

/// GIVEN a shard of the pending queue WHEN it is read a page at a time and each page's
/// orders are expired (leaving the index) before the next page is read, as the sweep
/// does THEN every due order comes exactly once.
#[tokio::test]
async fn due_orders_come_a_page_at_a_time_while_they_leave_the_index() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "pages", 100, 5, &[]).await;
    let seeded = seed_due_orders(&ctx, &sku, 160).await;
    let now = ctx.clock.now();
    let due_by = now.plus_seconds(-ctx.config.expiry_grace_seconds);
    let mut seen = Vec::new();
    for shard in 0..INDEX_SHARDS {
        let mut after = None;
        loop {
            let page = ctx
                .store
                .due_orders(DueQueue::Pending, shard, due_by, after, 7)
                .await
                .expect("page");
            assert!(page.order_ids.len() <= 7);
            for order_id in &page.order_ids {
                let order = ctx
                    .store
                    .get_order(order_id)
                    .await
                    .expect("read")
                    .expect("order");
                assert!(ctx.store.expire_order(&order, now).await.expect("expire"));
            }
            seen.extend(page.order_ids);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    seen.sort();
    let mut expected = seeded;
    expected.sort();
    assert_eq!(seen, expected);
}

/// GIVEN unpaid orders due WHEN two sweeps start at once (two tasks on two threads)
/// THEN one holds the lease and does nothing, the other expires every order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_at_once_never_work_together() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "overlap", 100, 5, &[]).await;
    seed_due_orders(&ctx, &sku, 200).await;

    // Both ask for the lease as they start (their first request); the one that gets it
    // works for a couple of hundred requests more before it lets go.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (ctx, start) = (ctx.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                sweep(&ctx, ctx.clock.now()).await.expect("sweep")
            })
        })
        .collect();
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.expect("run"));
    }
    reports.sort_by_key(|report| report.lease_held);
    assert_eq!(
        reports,
        [
            SweepReport {
                expired: 200,
                ..SweepReport::default()
            },
            SweepReport {
                lease_held: true,
                ..SweepReport::default()
            }
        ]
    );
    assert_eq!(
        stock(&ctx, &sku).await,
        json!({"available": 200, "reserved": 0, "sold": 0})
    );
}

/// The lease's conditions on the real table: held until released or lapsed, released
/// only by its holder, and a lease dated further ahead than any run takes one (by a
/// clock since moved back) does not block the sweep.
#[tokio::test]
async fn the_sweep_lease_is_held_until_released_or_lapsed() {
    let _turn = SWEEPS.lock().await;
    let ctx = context().await;
    let store = &ctx.store;
    let now = Timestamp::now();
    let (a, b) = (format!("run-a-{}", new_id()), format!("run-b-{}", new_id()));
    let until = now.plus_seconds(60);
    assert_eq!(
        store.take_sweep_lease(&a, now, until).await.expect("take"),
        SweepLease::Taken
    );
    assert_eq!(
        store.take_sweep_lease(&b, now, until).await.expect("take"),
        SweepLease::Held {
            holder: a.clone(),
            until
        }
    );
    assert!(!store.release_sweep_lease(&b).await.expect("release"));
    // Lapsed: another run takes it, and the first can no longer release it.
    let lapsed = until.plus_seconds(1);
    assert_eq!(
        store
            .take_sweep_lease(&b, lapsed, lapsed.plus_seconds(60))
            .await
            .expect("take"),
        SweepLease::Taken
    );
    assert!(!store.release_sweep_lease(&a).await.expect("release"));
    assert!(store.release_sweep_lease(&b).await.expect("release"));
    assert_eq!(
        store.take_sweep_lease(&a, now, until).await.expect("take"),
        SweepLease::Taken,
        "released"
    );
    assert!(store.release_sweep_lease(&a).await.expect("release"));

    // Taken a year ahead, never released (the run was killed), then the clock is back.
    let ahead = now.plus_seconds(365 * 86_400);
    assert_eq!(
        store
            .take_sweep_lease(&a, ahead, ahead.plus_seconds(60))
            .await
            .expect("take"),
        SweepLease::Taken
    );
    assert_eq!(
        store.take_sweep_lease(&b, now, until).await.expect("take"),
        SweepLease::Taken
    );
    assert!(store.release_sweep_lease(&b).await.expect("release"));

    // A run holding it for the longest time, seen by a run whose clock read a few
    // milliseconds earlier: held, not "dated by a clock moved back".
    let longest = now.plus_seconds(SWEEP_LEASE_MAX_MS / 1000);
    assert_eq!(
        store
            .take_sweep_lease(&a, now, longest)
            .await
            .expect("take"),
        SweepLease::Taken
    );
    assert_eq!(
        store
            .take_sweep_lease(&b, Timestamp(now.0 - 5), until)
            .await
            .expect("take"),
        SweepLease::Held {
            holder: a.clone(),
            until: longest
        }
    );
    assert!(store.release_sweep_lease(&a).await.expect("release"));
}
