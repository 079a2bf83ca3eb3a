//! What buyers get besides card keys and top-ups, against moto: license keys, memberships
//! and count cards, redemption links, and the merchant API keys that read and consume
//! them. One test binary for the three (each test binary links the whole stack: fewer
//! of them keep CI's link time down).

mod entitlements;
mod licenses;
mod links;
mod notifications;

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
    let amount = created["amount"]["amount"].as_i64().unwrap();
    // Signed at the context's clock, which tests move.
    let payload = checkout_completed(&format!("evt_{order_id}"), &order_id, amount, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, ctx.clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    (
        order_id,
        created["access_token"].as_str().unwrap().to_owned(),
    )
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
