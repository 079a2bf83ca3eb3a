//! GIVEN a full run (import, order, pay, deliver, show) with every log level on
//! THEN the captured logs contain no card key, no access token and no secret.

use kami_tests::*;

// One thread: the capturing subscriber is thread-local, and every task runs here.
#[tokio::test]
async fn logs_of_a_full_run_hold_no_key_token_or_secret() {
    let capture = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let ctx = context().await;
    let keys = make_keys("LEAKCHECK", 3);
    let sku = product_with_keys(&ctx, "leak", 990, 3, &keys).await;
    let (status, created) = order(&ctx, &sku, 2, "leak-order-idempotency").await;
    assert_eq!(status, 201);
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let (status, _) = pay(&ctx, "evt_leak", order_id, 1980, "CNY").await;
    assert_eq!(status, 200);
    // Failures are logged too: a forged webhook and a bad admin token.
    let payload = checkout_completed("evt_leak_forged", order_id, 1980, "CNY");
    let forged = stripe_signature("whsec_forged", now_seconds(), &payload);
    send_webhook(&ctx, &forged, payload).await;
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, order_id, token).await;
    assert_eq!(view["status"], "delivered");
    let delivered: Vec<String> = view["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["code"].as_str().expect("code").to_owned())
        .collect();
    assert_eq!(delivered.len(), 2);

    let logs = capture.text();
    assert!(
        logs.contains("order delivered"),
        "the capture must hold the run's logs:\n{logs}"
    );
    assert!(
        logs.len() > 10_000,
        "TRACE logs of the SDK are captured too ({} bytes)",
        logs.len()
    );
    let mut forbidden: Vec<String> = keys.clone();
    forbidden.push(token.to_owned());
    forbidden.extend(stack().secrets.values().cloned());
    for secret in &forbidden {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret or card key reached the logs"
        );
    }
    // Nor any recognisable part of a key (its unique run id).
    let run_id = keys[0].split('-').nth(1).expect("run id");
    assert!(!logs.contains(run_id));
}
