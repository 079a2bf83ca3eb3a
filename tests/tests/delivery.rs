//! The delivery worker gives each paid order its keys exactly once, whatever happens.

use std::collections::HashSet;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use kami_shared::Context;
use kami_shared::app::delivery::{self, DeliveryOutcome};
use kami_shared::app::fulfil::card_key;
use kami_shared::domain::time::Timestamp;
use kami_shared::ports::Clock;
use kami_tests::*;
use serde_json::Value;

struct Paid {
    ctx: Arc<Context>,
    sku: String,
    order_id: String,
    token: String,
    keys: Vec<String>,
}

async fn paid_order(prefix: &str, stock: usize, quantity: i64) -> Paid {
    let ctx = context().await;
    let keys = make_keys(prefix, stock);
    let sku = product_with_keys(&ctx, prefix, 500, 10, &keys).await;
    let (status, created) = order(&ctx, &sku, quantity, &format!("{sku}-key")).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(
        &ctx,
        &format!("evt_{order_id}"),
        &order_id,
        created["amount"]["amount"].as_i64().expect("amount"),
        "CNY",
    )
    .await;
    assert_eq!(status, 200);
    Paid {
        ctx,
        sku,
        order_id,
        token: created["access_token"].as_str().expect("token").to_owned(),
        keys,
    }
}

/// The paid order as stored.
async fn stored_order(paid: &Paid) -> kami_shared::store::OrderRecord {
    paid.ctx
        .store
        .get_order(&paid.order_id)
        .await
        .expect("read")
        .expect("order")
}

async fn codes(paid: &Paid) -> (Value, Vec<String>) {
    let (status, view) = view_order(&paid.ctx, &paid.order_id, &paid.token).await;
    assert_eq!(status, 200);
    let codes = view["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["code"].as_str().expect("code").to_owned())
        .collect();
    (view, codes)
}

fn assert_distinct_and_imported(codes: &[String], keys: &[String]) {
    let distinct: HashSet<&String> = codes.iter().collect();
    assert_eq!(
        distinct.len(),
        codes.len(),
        "a key appears twice: {codes:?}"
    );
    assert!(codes.iter().all(|c| keys.contains(c)));
}

#[tokio::test]
async fn a_message_processed_twice_delivers_once() {
    let paid = paid_order("twice", 5, 3).await;
    assert_eq!(
        delivery::deliver(&paid.ctx, &paid.order_id)
            .await
            .expect("first"),
        DeliveryOutcome::Delivered
    );
    let (_, first) = codes(&paid).await;
    assert_eq!(
        delivery::deliver(&paid.ctx, &paid.order_id)
            .await
            .expect("second"),
        DeliveryOutcome::AlreadyDelivered
    );
    let (view, second) = codes(&paid).await;
    assert_eq!(first, second);
    assert_eq!(second.len(), 3);
    assert_distinct_and_imported(&second, &paid.keys);
    let delivers = view["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["cause"] == "deliver")
        .count();
    assert_eq!(delivers, 1);
    drain_delivery_queue(&paid.ctx).await;
}

#[tokio::test]
async fn a_worker_stopped_between_writes_is_finished_by_the_next_one() {
    let paid = paid_order("crash", 6, 3).await;
    let order = stored_order(&paid).await;

    // Stopped after one of three keys: allocate slot 0 only.
    let mut partial = order.clone();
    partial.quantity = 1;
    assert!(
        card_key::allocate_keys(&paid.ctx, &partial, &[], &delivery::Budget::unlimited())
            .await
            .expect("partial")
    );
    // Stopped after all keys, before marking delivered.
    assert!(
        card_key::allocate_keys(&paid.ctx, &order, &[0], &delivery::Budget::unlimited())
            .await
            .expect("rest")
    );
    let (view, before) = codes(&paid).await;
    assert_eq!(view["status"], "paid");
    assert!(before.is_empty(), "codes are shown only once delivered");

    // The redelivered message finishes the job with the keys already allocated.
    assert_eq!(
        delivery::deliver(&paid.ctx, &paid.order_id)
            .await
            .expect("resume"),
        DeliveryOutcome::Delivered
    );
    let (_, after) = codes(&paid).await;
    assert_eq!(after.len(), 3);
    assert_distinct_and_imported(&after, &paid.keys);
    let (_, product) = admin_product(&paid.ctx, &paid.sku).await;
    assert_eq!(product["stock"]["available"], 3);
    assert_eq!(product["stock"]["sold"], 3);
    assert_eq!(product["stock"]["reserved"], 0);
    drain_delivery_queue(&paid.ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_workers_on_one_order_allocate_each_key_once() {
    let paid = paid_order("race", 8, 4).await;
    let mut workers = Vec::new();
    for _ in 0..5 {
        let ctx = paid.ctx.clone();
        let order_id = paid.order_id.clone();
        workers.push(tokio::spawn(async move {
            delivery::deliver(&ctx, &order_id).await
        }));
    }
    let mut delivered = 0;
    for worker in workers {
        match worker.await.expect("task").expect("deliver") {
            DeliveryOutcome::Delivered => delivered += 1,
            DeliveryOutcome::AlreadyDelivered => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delivered, 1);
    let (_, codes) = codes(&paid).await;
    assert_eq!(codes.len(), 4);
    assert_distinct_and_imported(&codes, &paid.keys);
    let (_, product) = admin_product(&paid.ctx, &paid.sku).await;
    assert_eq!(
        product["stock"]["available"], 4,
        "the other keys stay in stock"
    );
    drain_delivery_queue(&paid.ctx).await;
}

fn message(order_id: &str, receive_count: u32) -> SqsEvent {
    let mut record = SqsMessage::default();
    record.message_id = Some(format!("msg-{order_id}-{receive_count}"));
    record.body = Some(format!(r#"{{"order_id":"{order_id}"}}"#));
    record
        .attributes
        .insert("ApproximateReceiveCount".into(), receive_count.to_string());
    let mut event = SqsEvent::default();
    event.records = vec![record];
    event
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_ends_as_delivery_failed() {
    let paid = paid_order("broken", 1, 1).await;
    // Break the invariant on purpose: the reserved key disappears from stock.
    steal_stock(&paid.sku).await;
    let response = delivery::handle_batch(&paid.ctx, message(&paid.order_id, 1)).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "reported for a retry"
    );
    assert_eq!(codes(&paid).await.0["status"], "paid");

    let last = paid.ctx.config.delivery_max_attempts;
    let response = delivery::handle_batch(&paid.ctx, message(&paid.order_id, last)).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "the last failure goes to the DLQ"
    );
    let (view, _) = codes(&paid).await;
    assert_eq!(view["status"], "delivery_failed");

    // A poison message (not JSON) fails alone; the good one in the batch succeeds.
    let good = paid_order("poison", 1, 1).await;
    let mut batch = message(&good.order_id, 1);
    let mut poison = SqsMessage::default();
    poison.message_id = Some("poison".into());
    poison.body = Some("not json".into());
    batch.records.push(poison);
    let response = delivery::handle_batch(&good.ctx, batch).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["poison"]);
    assert_eq!(codes(&good).await.0["status"], "delivered");
    drain_delivery_queue(&good.ctx).await;
}

#[tokio::test]
async fn an_operator_sees_a_failed_delivery_and_sends_it_again() {
    let paid = paid_order("operator", 1, 1).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let admin_get = |path: String| request("GET", &path, &[("authorization", auth.as_str())], "");
    let admin_post = |path: String| request("POST", &path, &[("authorization", auth.as_str())], "");

    // Paid and queued: redelivering is allowed (and harmless).
    let (status, queued) = operations(
        &paid.ctx,
        admin_post(format!("/admin/orders/{}/redeliver", paid.order_id)),
    )
    .await;
    assert_eq!(
        (status, &queued["queued"]),
        (202, &Value::Bool(true)),
        "{queued}"
    );
    drain_delivery_queue(&paid.ctx).await;

    let (status, view) = operations(
        &paid.ctx,
        admin_get(format!("/admin/orders/{}", paid.order_id)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["payments"].as_array().map(Vec::len), Some(1));
    assert_eq!(view["allocated_keys"].as_array().map(Vec::len), Some(1));
    assert!(
        !view.to_string().contains(&paid.keys[0]),
        "operators never see codes"
    );
    let (_, codes) = codes(&paid).await;
    assert_eq!(codes.len(), 1, "delivered once although queued twice");

    // Delivered orders cannot be sent again; unknown ones are 404; the token is required.
    let (status, body) = operations(
        &paid.ctx,
        admin_post(format!("/admin/orders/{}/redeliver", paid.order_id)),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("illegal_transition"))
    );
    let (status, _) = operations(
        &paid.ctx,
        admin_get("/admin/orders/01JNOSUCHORDER000000000000".into()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = operations(
        &paid.ctx,
        request("GET", &format!("/admin/orders/{}", paid.order_id), &[], ""),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_failed_delivery_is_delivered_after_the_operator_restocks_and_redelivers() {
    let paid = paid_order("restock", 1, 1).await;
    steal_stock(&paid.sku).await;
    let last = paid.ctx.config.delivery_max_attempts;
    let response = delivery::handle_batch(&paid.ctx, message(&paid.order_id, last)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(codes(&paid).await.0["status"], "delivery_failed");

    // The operator imports a replacement key and sends the delivery round again.
    let replacement = make_keys("REPLACEMENT", 1);
    let (status, _) = import_keys(
        &paid.ctx,
        &paid.sku,
        "application/json",
        serde_json::json!({"keys": replacement}).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _) = operations(
        &paid.ctx,
        request(
            "POST",
            &format!("/admin/orders/{}/redeliver", paid.order_id),
            &[("authorization", auth.as_str())],
            "",
        ),
    )
    .await;
    assert_eq!(status, 202);
    drain_delivery_queue(&paid.ctx).await;
    let (view, codes) = codes(&paid).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(codes, replacement);
}

/// GIVEN a failed delivery and three replacement keys WHEN ten operators redeliver at
/// once and the queue is drained THEN every request is accepted, the order is delivered
/// once with one key, and the other two keys are still in stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_redeliveries_deliver_once() {
    let paid = paid_order("redeliver10", 1, 1).await;
    steal_stock(&paid.sku).await;
    let last = paid.ctx.config.delivery_max_attempts;
    let response = delivery::handle_batch(&paid.ctx, message(&paid.order_id, last)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(codes(&paid).await.0["status"], "delivery_failed");
    let replacements = make_keys("REDELIVER10", 3);
    let (status, _) = import_keys(
        &paid.ctx,
        &paid.sku,
        "application/json",
        serde_json::json!({"keys": replacements}).to_string(),
    )
    .await;
    assert_eq!(status, 201);

    let mut operators = Vec::new();
    for _ in 0..10 {
        let ctx = paid.ctx.clone();
        let path = format!("/admin/orders/{}/redeliver", paid.order_id);
        operators.push(tokio::spawn(async move {
            let auth = format!("Bearer {ADMIN_TOKEN}");
            operations(
                &ctx,
                request("POST", &path, &[("authorization", auth.as_str())], ""),
            )
            .await
        }));
    }
    for operator in operators {
        let (status, body) = operator.await.expect("operator");
        assert_eq!(status, 202, "{body}");
    }
    drain_delivery_queue(&paid.ctx).await;
    let (view, codes) = codes(&paid).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert!(replacements.contains(&codes[0]));
    // One key left stock; the sold counter moved once (the stolen key's unit was the
    // order's reservation, so the counters still count three available).
    let in_stock = paid
        .ctx
        .store
        .count_stock_keys(&paid.sku)
        .await
        .expect("count");
    assert_eq!(in_stock, 2);
    let (_, product) = admin_product(&paid.ctx, &paid.sku).await;
    assert_eq!(product["stock"]["sold"], 1, "{product}");
}

fn delivery_queue_url(paid: &Paid) -> String {
    paid.ctx
        .config
        .delivery_queue_url
        .clone()
        .expect("a delivery queue")
}

/// Messages received as the event source mapping hands them over (invisible for 300 s
/// from now), as one batch.
async fn received_batch(url: &str) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = receive_all(url).await;
    event
}

#[tokio::test]
async fn a_message_without_time_to_start_is_handed_back_at_once() {
    let paid = paid_order("hand-back", 1, 1).await;
    let url = delivery_queue_url(&paid);
    let clock = Arc::new(kami_shared::fakes::FakeClock::default());

    // WHEN a batch has 1 s left (too little to start a message, enough to hand it back)
    let event = received_batch(&url).await;
    assert_eq!(event.records.len(), 1, "the paid order's one message");
    let budget = delivery::Budget::until(clock.now().plus_seconds(1), clock.clone());
    let answer = delivery::handle_batch_within(&paid.ctx, event, budget).await;
    assert_eq!(answer.batch_item_failures.len(), 1, "reported for a retry");

    // THEN it is received again at once, not after its 300 s of invisibility, untouched
    let again = receive_all(&url).await;
    assert_eq!(again.len(), 1, "handed back");
    assert_eq!(again[0].attributes["ApproximateReceiveCount"], "2");
    let (view, codes_now) = codes(&paid).await;
    assert_eq!(view["status"], "paid");
    assert!(codes_now.is_empty());

    // AND with 200 ms left, too little even to hand back, it waits out its visibility
    let mut event = SqsEvent::default();
    event.records = again;
    let budget = delivery::Budget::until(Timestamp(clock.now().0 + 200), clock.clone());
    let answer = delivery::handle_batch_within(&paid.ctx, event, budget).await;
    assert_eq!(answer.batch_item_failures.len(), 1);
    assert!(receive_all(&url).await.is_empty(), "still invisible");

    // AND a message that fails for another reason keeps its visibility timeout too
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    sqs.send_message()
        .queue_url(&url)
        .message_body("not a delivery message")
        .send()
        .await
        .expect("send");
    let event = received_batch(&url).await;
    let budget = delivery::Budget::until(clock.now().plus_seconds(60), clock.clone());
    let answer = delivery::handle_batch_within(&paid.ctx, event, budget).await;
    assert_eq!(answer.batch_item_failures.len(), 1);
    assert!(receive_all(&url).await.is_empty(), "not handed back");

    // The order itself is delivered by the next attempt with time.
    assert_eq!(
        delivery::deliver(&paid.ctx, &paid.order_id)
            .await
            .expect("deliver"),
        DeliveryOutcome::Delivered
    );
}

#[tokio::test]
async fn no_card_key_is_taken_once_the_invocation_is_out_of_time() {
    let paid = paid_order("budget", 2, 2).await;
    let order = stored_order(&paid).await;
    // A deadline a second away: less than a key's reserve.
    let clock = Arc::new(kami_shared::fakes::FakeClock::default());
    let deadline = clock.now().plus_seconds(1);
    let budget = delivery::Budget::until(deadline, clock);
    let answer = card_key::allocate_keys(&paid.ctx, &order, &[], &budget).await;
    assert!(
        matches!(answer, Err(kami_shared::error::Error::OutOfTime(_))),
        "{answer:?}"
    );
    let (view, codes_now) = codes(&paid).await;
    assert_eq!(view["status"], "paid");
    assert!(codes_now.is_empty());
    // The retry, with time, delivers both.
    assert_eq!(
        delivery::deliver(&paid.ctx, &paid.order_id)
            .await
            .expect("deliver"),
        DeliveryOutcome::Delivered
    );
    let (_, delivered) = codes(&paid).await;
    assert_eq!(delivered.len(), 2);
}
