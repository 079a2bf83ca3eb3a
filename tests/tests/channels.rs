//! Payment channels against moto: operators set them up (secrets sealed under KMS, never
//! shown, kept on a replace that omits them), orders list the channels that take them,
//! a payment that no provider can open fails over and is recorded, and a channel's
//! notification pays only an attempt that channel issued.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::adapters::clock::SystemClock;
use kami_shared::domain::time::new_id;
use kami_tests::*;
use lambda_http::Body;
use serde_json::{Value, json};

const PUBLIC_API: &str = "https://kami.example.test";

async fn ctx() -> Arc<Context> {
    context_on_with(Arc::new(SystemClock), &[("PUBLIC_API_URL", PUBLIC_API)]).await
}

async fn put_channel(ctx: &Arc<Context>, channel_id: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(
        ctx,
        request(
            "PUT",
            &format!("/admin/payment-channels/{channel_id}"),
            &[("authorization", &auth)],
            body.to_string(),
        ),
    )
    .await
}

async fn get_admin(ctx: &Arc<Context>, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(
        ctx,
        request("GET", path, &[("authorization", &auth)], Body::Empty),
    )
    .await
}

fn webhook_secret(channel_id: &str) -> String {
    format!("whsec_{channel_id}_channel_test_secret")
}

/// A Stripe channel whose API is nowhere (a closed port): every call fails.
fn stripe_channel(channel_id: &str, priority: i32) -> Value {
    json!({"provider": "stripe", "display_name": format!("Card ({channel_id})"),
        "currencies": ["CNY"], "priority": priority, "min_amount": 1, "max_amount": 1_000_000,
        "timeout_ms": 500,
        "config": {"secret_key": format!("sk_test_{channel_id}_secret_key_value"),
            "webhook_secrets": [webhook_secret(channel_id)],
            "api_base_url": "http://127.0.0.1:9"}})
}

/// GIVEN an operator WHEN they create, read, list and replace a Stripe channel THEN 201
/// then 200, every secret shows as "<set>" (never its value, nor in the table), and a
/// replace without the secrets keeps them: the channel still verifies its notifications.
#[tokio::test]
async fn channels_are_set_up_with_sealed_secrets_that_a_replace_keeps() {
    let ctx = ctx().await;
    let id = format!("card-{}", new_id().to_ascii_lowercase());
    let body = stripe_channel(&id, 50);
    let (status, created) = put_channel(&ctx, &id, &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["config"]["secret_key"], "<set>");
    assert_eq!(created["config"]["webhook_secrets"], json!(["<set>"]));
    assert_eq!(created["config"]["api_base_url"], "http://127.0.0.1:9");

    let (status, shown) = get_admin(&ctx, &format!("/admin/payment-channels/{id}")).await;
    assert_eq!(status, 200);
    let (status, listed) = get_admin(&ctx, "/admin/payment-channels").await;
    assert_eq!(status, 200);
    assert!(
        listed["channels"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["channel_id"] == id.as_str())
    );
    let stored = table_item("CHANNEL#ALL", &format!("CHANNEL#{id}"))
        .await
        .expect("item");
    for text in [shown.to_string(), listed.to_string(), format!("{stored:?}")] {
        assert!(!text.contains("secret_key_value"), "{text}");
        assert!(!text.contains(&webhook_secret(&id)), "{text}");
    }

    let mut replace = body.clone();
    replace["display_name"] = json!("Card, renamed");
    replace["config"] = json!({"api_base_url": "http://127.0.0.1:9"});
    let (status, replaced) = put_channel(&ctx, &id, &replace).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["display_name"], "Card, renamed");
    assert_eq!(replaced["config"]["secret_key"], "<set>", "kept");

    // The kept endpoint secret still verifies this channel's notifications.
    let payload = checkout_completed(&format!("evt_{}", new_id()), &new_id(), 100, "CNY");
    let signature = stripe_signature(&webhook_secret(&id), now_seconds(), &payload);
    let (status, answer) = channel_webhook(&ctx, "stripe", &id, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = channel_webhook(&ctx, "stripe", &id, "t=1,v1=00", "{}".to_owned()).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_signature"))
    );
}

async fn channel_webhook(
    ctx: &Arc<Context>,
    provider: &str,
    channel_id: &str,
    signature: &str,
    payload: String,
) -> (u16, Value) {
    webhook(
        ctx,
        request(
            "POST",
            &format!("/webhooks/{provider}/{channel_id}"),
            &[("stripe-signature", signature)],
            payload,
        ),
    )
    .await
}

/// Bad channel ids and configs are refused by field, never echoing a secret.
#[tokio::test]
async fn bad_channels_are_refused_by_field() {
    let ctx = ctx().await;
    let (status, answer) = put_channel(&ctx, "Bad_Id", &stripe_channel("x", 1)).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_channel_id"))
    );
    for (change, code, path) in [
        (
            json!({"provider": "paypal"}),
            "invalid_channel_config",
            "provider",
        ),
        (
            json!({"config": {"secret_key": "not-a-key", "webhook_secrets": ["whsec_1"]}}),
            "invalid_channel_config",
            "config.secret_key",
        ),
        (
            json!({"config": {"secret_key": "sk_test_1", "webhook_secrets": []}}),
            "invalid_channel_config",
            "config.webhook_secrets",
        ),
        (
            json!({"config": {"secret_key": "sk_test_1", "webhook_secrets": ["whsec_1"], "api_base_url": "ftp://x"}}),
            "invalid_channel_config",
            "config.api_base_url",
        ),
        (json!({"currencies": []}), "invalid_channel", "currencies"),
        (json!({"timeout_ms": 10}), "invalid_channel", "timeout_ms"),
    ] {
        let mut body = stripe_channel("bad", 1);
        for (name, value) in change.as_object().expect("change") {
            body[name] = value.clone();
        }
        let (status, answer) = put_channel(
            &ctx,
            &format!("bad-{}", new_id().to_ascii_lowercase()),
            &body,
        )
        .await;
        assert_eq!(status, 400, "{change}: {answer}");
        assert_eq!(
            (&answer["error"]["code"], &answer["error"]["path"]),
            (&json!(code), &json!(path)),
            "{change}"
        );
        assert!(!answer.to_string().contains("sk_test_1"), "{answer}");
    }
    let (status, answer) = get_admin(&ctx, "/admin/payment-channels/no-such-channel").await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("channel_not_found"))
    );
}

/// GIVEN two channels taking CNY whose providers cannot be reached WHEN the buyer opens a
/// payment without naming one THEN the order listed both (by priority), both are tried in
/// that order, 502 `payment_provider_unavailable`, each attempt recorded `failed`; a named
/// disabled channel is 409 `channel_not_eligible`, an unknown one 404, a wrong token 404.
#[tokio::test]
async fn a_payment_fails_over_and_records_every_attempt() {
    let ctx = ctx().await;
    let run = new_id().to_ascii_lowercase();
    let (first, second, off) = (format!("a-{run}"), format!("b-{run}"), format!("off-{run}"));
    assert_eq!(
        put_channel(&ctx, &second, &stripe_channel(&second, -20))
            .await
            .0,
        201
    );
    assert_eq!(
        put_channel(&ctx, &first, &stripe_channel(&first, -30))
            .await
            .0,
        201
    );
    let mut disabled = stripe_channel(&off, -40);
    disabled["enabled"] = json!(false);
    assert_eq!(put_channel(&ctx, &off, &disabled).await.0, 201);

    // Another instance's view of the channels would be 30 s old: a fresh context.
    let ctx = ctx_fresh().await;
    let sku = product_with_keys(&ctx, "pay", 990, 5, &make_keys("PAY", 2)).await;
    let (status, order) = order(&ctx, &sku, 1, &format!("pay-order-{run}")).await;
    assert_eq!(status, 201, "{order}");
    let offered: Vec<&str> = order["payment_channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["channel"].as_str())
        .filter(|c| c.ends_with(&run))
        .collect();
    assert_eq!(
        offered,
        vec![first.as_str(), second.as_str()],
        "by priority, enabled only"
    );

    let order_id = order["order_id"].as_str().expect("id");
    let token = order["access_token"].as_str().expect("token");
    let pay = |channel: Option<&str>, token: &str, key: &str| {
        let body = match channel {
            Some(c) => json!({"channel": c}),
            None => json!({}),
        };
        let auth = format!("Bearer {token}");
        request(
            "POST",
            &format!("/orders/{order_id}/payments"),
            &[("authorization", &auth), ("idempotency-key", key)],
            body.to_string(),
        )
    };
    let (status, answer) = checkout(&ctx, pay(None, token, &format!("pay-key-1-{run}"))).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (502, &json!("payment_provider_unavailable")),
        "{answer}"
    );
    let view = stored_order(&ctx, order_id).await;
    // Every eligible channel was tried (the other tests' too: one table), this test's two
    // first, by priority; each attempt failed.
    let mut attempts = view.attempts.clone();
    attempts.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    let tried: Vec<&str> = attempts.iter().map(|a| a.channel_id.as_str()).collect();
    assert_eq!(&tried[..2], &[first.as_str(), second.as_str()], "{tried:?}");
    assert!(attempts.iter().all(|a| a.status.as_str() == "failed"));
    assert!(
        view.attempts
            .iter()
            .all(|a| a.payment_id.starts_with(order_id) && a.payment_id.len() == 30)
    );

    let (status, answer) =
        checkout(&ctx, pay(Some(&off), token, &format!("pay-key-2-{run}"))).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &json!("channel_not_eligible"))
    );
    let (status, answer) = checkout(
        &ctx,
        pay(Some("no-such-channel"), token, &format!("pay-key-3-{run}")),
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("channel_not_found"))
    );
    let (status, answer) =
        checkout(&ctx, pay(None, "wrong-token", &format!("pay-key-4-{run}"))).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("order_not_found"))
    );
}

async fn ctx_fresh() -> Arc<Context> {
    ctx().await
}

/// GIVEN an attempt issued by channel A WHEN a notification verified by channel B's keys
/// names it THEN it is refused and nothing changes; sent to A it pays the order once.
#[tokio::test]
async fn a_notification_pays_only_an_attempt_its_channel_issued() {
    let ctx = ctx().await;
    let run = new_id().to_ascii_lowercase();
    let (a, b) = (format!("bind-a-{run}"), format!("bind-b-{run}"));
    assert_eq!(put_channel(&ctx, &a, &stripe_channel(&a, 1)).await.0, 201);
    assert_eq!(put_channel(&ctx, &b, &stripe_channel(&b, 2)).await.0, 201);
    let sku = product_with_keys(&ctx, "bind", 990, 5, &make_keys("BIND", 1)).await;
    let (_, order) = order(&ctx, &sku, 1, &format!("bind-order-{run}")).await;
    let order_id = order["order_id"].as_str().expect("id").to_owned();
    let token = order["access_token"].as_str().expect("token").to_owned();
    let key = format!("bind-key-{run}");
    let (status, _) = open_payment(&ctx, &order_id, &token, &key, &a).await;
    assert_eq!(
        status, 502,
        "A's provider is unreachable, but the attempt is recorded"
    );
    let payment_id = first_attempt_payment_id(&ctx, &order_id).await;

    let paid = |event: &str| {
        json!({"id": event, "object": "event", "type": "checkout.session.completed", "livemode": false,
            "data": {"object": {"id": "cs_bind", "object": "checkout.session", "client_reference_id": order_id,
            "metadata": {"order_id": order_id, "payment_id": payment_id}, "amount_total": 990, "currency": "cny",
            "payment_intent": format!("pi_{payment_id}"), "payment_status": "paid"}}})
        .to_string()
    };
    let at_b = paid(&format!("evt_b_{run}"));
    let signature = stripe_signature(&webhook_secret(&b), now_seconds(), &at_b);
    let (status, answer) = channel_webhook(&ctx, "stripe", &b, &signature, at_b).await;
    assert_eq!(status, 400, "{answer}");
    let (_, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "pending_payment");

    let at_a = paid(&format!("evt_a_{run}"));
    let signature = stripe_signature(&webhook_secret(&a), now_seconds(), &at_a);
    let (status, answer) = channel_webhook(&ctx, "stripe", &a, &signature, at_a.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = channel_webhook(&ctx, "stripe", &a, &signature, at_a).await;
    assert_eq!(status, 200, "a duplicate is acknowledged");
    let (_, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "paid");
    let stored = stored_order(&ctx, &order_id).await;
    assert_eq!(stored.payments.len(), 1);
    assert_eq!(stored.attempts[0].status.as_str(), "paid");

    // A refund whose provider does not answer stays `requested` with its amount held: a
    // retry with the same key is the same refund (asked again), and no other refund can
    // take the held amount.
    let refund = |key: &str, amount: i64| {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        request(
            "POST",
            &format!("/admin/orders/{order_id}/refunds"),
            &[("authorization", &auth), ("idempotency-key", key)],
            json!({"amount": {"amount": amount, "currency": "CNY"}, "reason": "test"}).to_string(),
        )
    };
    let key = format!("refund-key-{run}");
    let (status, first) = operations(&ctx, refund(&key, 990)).await;
    assert_eq!(
        (status, &first["status"]),
        (201, &json!("requested")),
        "{first}"
    );
    let (status, again) = operations(&ctx, refund(&key, 990)).await;
    assert_eq!(
        (status, &again["refund_id"]),
        (201, &first["refund_id"]),
        "{again}"
    );
    assert_eq!(again["status"], "requested");
    let (status, other) = operations(&ctx, refund(&format!("refund-other-{run}"), 1)).await;
    assert_eq!(
        (status, &other["error"]["code"]),
        (409, &json!("refund_exceeds_payment"))
    );
    let (status, reused) = operations(&ctx, refund(&key, 5)).await;
    assert_eq!(
        (status, &reused["error"]["code"]),
        (422, &json!("idempotency_key_reused"))
    );
    // Recorded with the refund's reservation: the retry with the same key, and the
    // refused requests, record nothing.
    let (status, trail) = operations_get(&ctx, &format!("/admin/audit?order={order_id}")).await;
    assert_eq!(status, 200, "{trail}");
    let refunds: Vec<&Value> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|entry| entry["action"] == "order.refund")
        .collect();
    assert_eq!(refunds.len(), 1, "{trail}");
    assert_eq!(refunds[0]["after"]["refund_id"], first["refund_id"]);
    assert_eq!(refunds[0]["after"]["status"], "requested");
}
