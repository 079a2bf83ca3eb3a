//! The ports' real adapters against moto, and the clock port end to end: the KMS vault
//! keeps the same contract as the fake vault, and a context on a `FakeClock` dates,
//! expires and verifies by that clock. Its own test binary (own moto), since a sweep at
//! a clock a month ahead sees every order.

use std::sync::Arc;

use kami_shared::app::sweep::sweep;
use kami_shared::domain::order::payment_deadline;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::{FakeClock, contracts};
use kami_shared::ports::Clock;
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
    let (status, created) = order(&ctx, &sku, 1, &format!("clock-{}", new_id())).await;
    assert_eq!(status, 201, "{created}");
    let deadline = payment_deadline(clock.now(), ttl);
    assert_eq!(created["expires_at"], deadline.to_rfc3339());
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");

    clock.advance_seconds(ttl - 1);
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
