//! The ports' real adapters against moto, and the clock port end to end: the KMS vault
//! keeps the same contract as the fake vault, and a context on a `FakeClock` dates,
//! expires and verifies by that clock, and stamps everything it writes with it. Its own
//! test binary (own moto), since a sweep at a clock a month ahead sees every order.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use kami_shared::app::sweep::sweep;
use kami_shared::domain::crypto::{hmac_sha256_hex, sha256_hex};
use kami_shared::domain::order::{OrderStatus, payment_deadline};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::{FakeClock, contracts};
use kami_shared::ports::Clock;
use kami_shared::store::{DueQueue, INDEX_SHARDS, STUCK_AFTER_SECONDS, Store};
use kami_tests::*;

#[tokio::test]
async fn kms_keeps_the_vault_contract() {
    let ctx = context().await;
    let vault = ctx.vault().expect("a vault");
    contracts::key_vault(vault, "contract-sku", &new_id())
        .await
        .expect("KMS on moto keeps the vault contract");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_expire_and_webhooks_verify_by_the_context_clock() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on(clock.clone()).await;
    let ttl = ctx.config.order_ttl_seconds;
    let sku = product_with_keys(&ctx, "clock", 990, 5, &make_keys("CLK", 1)).await;
    let (status, created) = order(&ctx, &sku, 1, &format!("idem-clock-{}", new_id())).await;
    assert_eq!(status, 201, "{created}");
    let deadline = payment_deadline(clock.now(), ttl);
    assert_eq!(created["expires_at"], deadline.to_rfc3339());
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");

    // Released only once the grace after expires_at is over.
    clock.advance_seconds(ttl + ctx.config.expiry_grace_seconds - 1);
    assert_eq!(
        sweep(&ctx, ctx.clock.now()).await.expect("sweep").expired,
        0
    );
    clock.advance_seconds(1);
    assert_eq!(
        sweep(&ctx, ctx.clock.now()).await.expect("sweep").expired,
        1
    );
    let (_, view) = view_order(&ctx, order_id, token).await;
    assert_eq!(view["status"], "expired");

    // A month later by the clock, the buyer pays after all: the webhook is checked
    // against the clock's time, not the machine's.
    clock.advance_seconds(31 * 86_400);
    let payload = checkout_completed("evt_clock", order_id, 990, "CNY");
    let by_machine = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let (status, refused) = send_webhook(&ctx, &by_machine, payload.clone()).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("invalid_signature"))
    );
    let by_clock = stripe_signature(STRIPE_SECRET, clock.now().unix_seconds(), &payload);
    let (status, _) = send_webhook(&ctx, &by_clock, payload).await;
    assert_eq!(status, 200);
    // Its stock was still there: reserved again, to be delivered (tests/tests/expiry.rs).
    let (_, view) = view_order(&ctx, order_id, token).await;
    assert_eq!(view["status"], "paid", "{view}");
    assert_eq!(
        causes(&view),
        ["created", "expire", "late_payment_reserved"]
    );
}

/// A string attribute of a raw item.
fn text(item: &Item, name: &str) -> String {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .unwrap_or_else(|| panic!("{name} in {item:?}"))
        .clone()
}

/// A number attribute of a raw item.
fn number(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {item:?}"))
}

type Item = std::collections::HashMap<String, AttributeValue>;

/// Whether the sweep would re-queue the order at `at` (every page of every shard).
async fn stuck_at(store: &Store, order_id: &str, at: Timestamp) -> bool {
    for shard in 0..INDEX_SHARDS {
        let mut after = None;
        loop {
            let page = store
                .due_orders(DueQueue::Paid, shard, at, after, 100)
                .await
                .expect("stuck orders");
            if page.order_ids.iter().any(|id| id == order_id) {
                return true;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    false
}

/// With the clock years away from the machine's, an order made, paid and delivered has
/// every time it stored at the clock's time of its step: its events and `updated_at`,
/// the payment's `received_at`, the keys' `allocated_at`, the stuck-order index's due
/// time and the TTLs of its idempotency and webhook records. So is a payment for no
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_an_order_stores_is_dated_by_the_context_clock() {
    // Years ahead, so the other test's sweeps (a month ahead) never see this order.
    let clock = Arc::new(FakeClock::at(
        Timestamp::now().plus_seconds(10 * 365 * 86_400),
    ));
    let ctx = context_on(clock.clone()).await;
    let sku = product_with_keys(&ctx, "stamps", 990, 5, &make_keys("STP", 2)).await;

    let made = clock.now();
    let key = format!("stamps-{}", new_id());
    let (status, created) = order(&ctx, &sku, 2, &key).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();

    clock.advance_seconds(60);
    let paid = clock.now();
    let event_id = format!("evt_stamps_{}", new_id());
    let payload = checkout_completed(&event_id, &order_id, 1980, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, paid.unix_seconds(), &payload);
    let (status, answer) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    // Due for the sweep two minutes after the payment by the clock, not before.
    let due = paid.plus_seconds(STUCK_AFTER_SECONDS);
    let stored = table_item(&format!("ORDER#{order_id}"), "ORDER")
        .await
        .expect("order item");
    assert_eq!(number(&stored, "gsi1sk"), due.unix_seconds());
    assert!(!stuck_at(&ctx.store, &order_id, due.plus_seconds(-1)).await);
    assert!(stuck_at(&ctx.store, &order_id, due).await);

    clock.advance_seconds(30);
    let delivered = clock.now();
    assert_eq!(drain_delivery_queue(&ctx).await, 1);

    let view = ctx
        .store
        .get_order_view(&order_id)
        .await
        .expect("view")
        .expect("order");
    assert_eq!(view.order.status, OrderStatus::Delivered);
    assert_eq!(view.order.created_at, made.to_rfc3339());
    assert_eq!(view.order.updated_at, delivered.to_rfc3339());
    let mut events: Vec<(String, String)> = view
        .events
        .iter()
        .map(|e| (e.at.clone(), e.cause.clone()))
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            (made.to_rfc3339(), "created".to_owned()),
            (paid.to_rfc3339(), "payment_received".to_owned()),
            (delivered.to_rfc3339(), "deliver".to_owned()),
        ]
    );
    let received: Vec<&str> = view
        .payments
        .iter()
        .map(|p| p.received_at.as_str())
        .collect();
    assert_eq!(received, [paid.to_rfc3339()]);
    assert_eq!(view.deliveries.len(), 2);
    for slot in 0..2 {
        let record = table_item(&format!("ORDER#{order_id}"), &format!("DELIVERY#{slot:03}"))
            .await
            .expect("delivery record");
        assert_eq!(text(&record, "allocated_at"), delivered.to_rfc3339());
    }

    // The records kept outside the order: a day for the idempotency key, 30 days for
    // the provider event, from the clock's time.
    // The key is stored as an HMAC under the order-token key, never as sent.
    let keyed = hmac_sha256_hex(
        ctx.secrets.order_token_key().expect("order token key"),
        format!("idempotency:orders:{key}").as_bytes(),
    )
    .expect("hmac");
    assert!(
        table_item(
            &format!("IDEMPOTENCY#orders#{}", sha256_hex(key.as_bytes())),
            "IDEMPOTENCY"
        )
        .await
        .is_none()
    );
    let claimed = table_item(
        &format!("IDEMPOTENCY#orders#{}", sha256_hex(keyed.as_bytes())),
        "IDEMPOTENCY",
    )
    .await
    .expect("idempotency record");
    assert_eq!(number(&claimed, "ttl"), made.unix_seconds() + 86_400);
    let dedupe = webhook_record("stripe", &event_id)
        .await
        .expect("webhook record");
    assert_eq!(text(&dedupe, "received_at"), paid.to_rfc3339());
    assert_eq!(number(&dedupe, "ttl"), paid.unix_seconds() + 30 * 86_400);

    // A payment for an order that does not exist is kept at the clock's time too.
    clock.advance_seconds(5);
    let stray = format!("evt_stray_{}", new_id());
    let payload = checkout_completed(&stray, &new_id(), 990, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    let kept = webhook_record("stripe", &stray).await.expect("kept");
    assert_eq!(text(&kept, "outcome"), "unknown_order");
    assert_eq!(text(&kept, "received_at"), clock.now().to_rfc3339());
}

/// A replayed `POST /orders` hands the access token back only to the address that made
/// the order and only within five minutes; otherwise the same order without its token.
#[tokio::test]
async fn a_replay_gets_the_token_only_from_the_same_address_and_soon() {
    // Twenty years ahead: the other tests of this binary sweep nearer times, and must not
    // see this order as due.
    let clock = Arc::new(FakeClock::at(
        Timestamp::now().plus_seconds(20 * 365 * 86_400),
    ));
    let ctx = context_on(clock.clone()).await;
    let sku = product_with_keys(&ctx, "replay", 990, 5, &make_keys("RPL", 2)).await;
    let key = format!("replay-key-{}", new_id());
    let body = serde_json::json!({"sku": sku, "quantity": 1, "buyer": {"email": "b@example.com"}})
        .to_string();
    let from = |ip: &str| {
        from_address(
            request(
                "POST",
                "/orders",
                &[("idempotency-key", &key)],
                body.clone(),
            ),
            ip,
        )
    };
    let (status, first) = checkout(&ctx, from("203.0.113.7")).await;
    assert_eq!(status, 201, "{first}");
    let token = first["access_token"].as_str().expect("a token").to_owned();

    let (status, same) = checkout(&ctx, from("203.0.113.7")).await;
    assert_eq!(
        (status, same["access_token"].as_str()),
        (201, Some(token.as_str()))
    );

    let (status, other) = checkout(&ctx, from("198.51.100.9")).await;
    assert_eq!(status, 201, "{other}");
    assert_eq!(other["order_id"], first["order_id"]);
    assert!(other.get("access_token").is_none(), "{other}");
    assert!(other["access_token_withheld"].is_string(), "{other}");

    clock.advance_seconds(301);
    let (status, late) = checkout(&ctx, from("203.0.113.7")).await;
    assert_eq!((status, &late["order_id"]), (201, &first["order_id"]));
    assert!(late.get("access_token").is_none(), "{late}");
    assert!(!late.to_string().contains(&token));
}
