//! What buyers get besides card keys and top-ups, against moto: license keys, memberships
//! and count cards, subscriptions, redemption links, the merchant API keys that read
//! and consume them, and the notices that tell the buyer. One test binary for all of them (each test binary links the whole stack: fewer
//! of them keep CI's link time down).

mod entitlements;
mod licenses;
mod links;
mod notifications;
mod subscriptions;

use std::sync::Arc;

use kami_shared::Context;
use kami_tests::*;
use serde_json::{Value, json};

/// A merchant API key with `scopes`, issued through the operations function: (id, key).
pub async fn issue_key(ctx: &Arc<Context>, scopes: &[&str]) -> (String, String) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, created) = operations(
        ctx,
        request(
            "POST",
            "/admin/api-keys",
            &[("authorization", &auth)],
            json!({"name": "merchant system", "scopes": scopes}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    (
        created["api_key_id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

/// One request to the merchant API with `key` (`body` null: none).
pub async fn merchant(
    ctx: &Arc<Context>,
    key: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    merchant_api(
        ctx,
        request(method, path, &[("authorization", &auth)], body),
    )
    .await
}

/// Asserts an answer is the error `code` with `status`; returns its body.
pub fn expect_error(answer: (u16, Value), status: u16, code: &str) -> Value {
    assert_eq!(
        (answer.0, answer.1["error"]["code"].as_str()),
        (status, Some(code)),
        "{}",
        answer.1
    );
    answer.1
}

/// The order `body` describes, made with `key` and paid through Stripe's webhook at the
/// context's clock: (order id, access token).
pub async fn paid(ctx: &Arc<Context>, key: &str, body: Value) -> (String, String) {
    let created = place_order(ctx, key, &body).await;
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    pay_at_clock(
        ctx,
        &order_id,
        created["amount"]["amount"].as_i64().unwrap(),
    )
    .await;
    (
        order_id,
        created["access_token"].as_str().unwrap().to_owned(),
    )
}

/// Pays `order_id` through Stripe's webhook, signed at the context's clock (which tests
/// move).
pub async fn pay_at_clock(ctx: &Arc<Context>, order_id: &str, amount: i64) {
    let payload = checkout_completed(&format!("evt_{order_id}"), order_id, amount, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, ctx.clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
}

/// `n` calls of `call(i)` at once, on their own tasks: the answers in order.
pub async fn at_once<F, Fut>(n: usize, call: F) -> Vec<(u16, Value)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(call(i))).collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

/// How many answers have `status` (and, given, the error `code`).
pub fn count(answers: &[(u16, Value)], status: u16, code: Option<&str>) -> usize {
    answers
        .iter()
        .filter(|(s, v)| *s == status && code.is_none_or(|c| v["error"]["code"] == c))
        .count()
}
