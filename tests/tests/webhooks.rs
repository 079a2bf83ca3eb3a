//! Stripe webhooks: verified exactly, recorded once per event, bound to their order.

use std::sync::Arc;

use kami_shared::Context;
use kami_tests::*;
use serde_json::{Value, json};

async fn pending_order(
    prefix: &str,
    keys: usize,
) -> (std::sync::Arc<kami_shared::Context>, String, String, i64) {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, prefix, 1500, 5, &make_keys(prefix, keys)).await;
    let (status, created) = order(&ctx, &sku, 1, &format!("idem-{sku}-order")).await;
    assert_eq!(status, 201, "{created}");
    (
        ctx,
        created["order_id"].as_str().expect("id").to_owned(),
        created["access_token"].as_str().expect("token").to_owned(),
        created["amount"]["amount"].as_i64().expect("amount"),
    )
}

async fn status_of(
    ctx: &std::sync::Arc<kami_shared::Context>,
    order_id: &str,
    token: &str,
) -> Value {
    let (status, view) = view_order(ctx, order_id, token).await;
    assert_eq!(status, 200);
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_twenty_times_at_once_delivers_once() {
    let (ctx, order_id, token, amount) = pending_order("dup", 3).await;
    let payload = checkout_completed("evt_dup_once", &order_id, amount, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let mut sends = Vec::new();
    for _ in 0..20 {
        let (ctx, payload, signature) = (ctx.clone(), payload.clone(), signature.clone());
        sends.push(tokio::spawn(async move {
            send_webhook(&ctx, &signature, payload).await
        }));
    }
    for send in sends {
        let (status, body) = send.await.expect("task");
        assert_eq!(status, 200, "every duplicate is acknowledged: {body}");
    }
    drain_delivery_queue(&ctx).await;
    let view = status_of(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["deliveries"].as_array().expect("deliveries").len(), 1);
    assert_eq!(causes(&view), ["created", "payment_received", "deliver"]);

    // Stripe retrying days later is still acknowledged, and changes nothing.
    let (status, _) = pay(&ctx, "evt_dup_once", &order_id, amount, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(drain_delivery_queue(&ctx).await, 0);
}

#[tokio::test]
async fn forged_stale_and_resigned_events_are_refused_and_change_nothing() {
    let (ctx, order_id, token, amount) = pending_order("forged", 1).await;
    let payload = checkout_completed("evt_forged", &order_id, amount, "CNY");
    let now = now_seconds();
    let cases = [
        stripe_signature("whsec_attacker", now, &payload),
        stripe_signature(STRIPE_SECRET, now - 301, &payload),
        stripe_signature(STRIPE_SECRET, now + 301, &payload),
        format!("t={now},v1={}", "ab".repeat(32)),
        String::new(),
    ];
    for signature in &cases {
        let (status, body) = send_webhook(&ctx, signature, payload.clone()).await;
        assert_eq!(status, 400, "{signature}: {body}");
        assert_eq!(body["error"]["code"], "invalid_signature");
    }
    let (status, _) = webhook(
        &ctx,
        request("POST", "/webhooks/stripe", &[], payload.clone()),
    )
    .await;
    assert_eq!(status, 400);
    // A valid signature over another body does not carry over.
    let tampered = payload.replace(&amount.to_string(), "1");
    let signature = stripe_signature(STRIPE_SECRET, now, &payload);
    let (status, _) = send_webhook(&ctx, &signature, tampered).await;
    assert_eq!(status, 400);

    let view = status_of(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "pending_payment");
    assert_eq!(view["events"].as_array().expect("events").len(), 1);
    assert_eq!(drain_delivery_queue(&ctx).await, 0);

    // The genuine event with the same id is then accepted: nothing was stored for it.
    let (status, _) = pay(&ctx, "evt_forged", &order_id, amount, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    assert_eq!(
        status_of(&ctx, &order_id, &token).await["status"],
        "delivered"
    );
}

#[tokio::test]
async fn during_rotation_both_endpoint_secrets_verify() {
    // An operator rotating the endpoint secret stores "old,new" in Secrets Manager.
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk_config().await);
    let arn = secrets
        .create_secret()
        .name(format!(
            "stripe-rotation-{}",
            kami_shared::domain::time::new_id()
        ))
        .secret_string(format!(
            "whsec_old_one_being_rotated_out_000000, {STRIPE_SECRET}"
        ))
        .send()
        .await
        .expect("create secret")
        .arn
        .expect("arn");
    let ctx = context_with(&[("STRIPE_WEBHOOK_SECRET_ID", &arn)]).await;
    let payload = r#"{"id":"evt_rot","type":"customer.created","data":{"object":{}}}"#;
    for secret in ["whsec_old_one_being_rotated_out_000000", STRIPE_SECRET] {
        let signature = stripe_signature(secret, now_seconds(), payload);
        let (status, body) = send_webhook(&ctx, &signature, payload).await;
        assert_eq!((status, body), (200, json!({"received": true})), "{secret}");
    }
    let signature = stripe_signature("whsec_retired", now_seconds(), payload);
    let (status, _) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_wrong_amount_or_currency_is_an_exception_not_a_delivery() {
    let (ctx, order_id, token, amount) = pending_order("mismatch", 1).await;
    let (status, _) = pay(&ctx, "evt_mismatch", &order_id, amount - 1, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(drain_delivery_queue(&ctx).await, 0);
    let view = status_of(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "payment_exception");
    assert_eq!(view["exception"], "amount_mismatch");
    assert_eq!(view["deliveries"], json!([]));

    let (ctx, order_id, token, amount) = pending_order("currency", 1).await;
    let (status, _) = pay(&ctx, "evt_currency", &order_id, amount, "USD").await;
    assert_eq!(status, 200);
    assert_eq!(
        status_of(&ctx, &order_id, &token).await["status"],
        "payment_exception"
    );
}

#[tokio::test]
async fn payment_intent_succeeded_pays_and_unknown_orders_are_kept() {
    let (ctx, order_id, token, amount) = pending_order("intent", 1).await;
    let payload = json!({"id": "evt_intent", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_intent", "metadata": {"order_id": order_id},
        "amount_received": amount, "currency": "cny"}}})
    .to_string();
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let (status, _) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200);
    drain_delivery_queue(&ctx).await;
    assert_eq!(
        status_of(&ctx, &order_id, &token).await["status"],
        "delivered"
    );

    // An order id Kami never issued: acknowledged (or Stripe retries for days) and kept.
    let (status, _) = pay(&ctx, "evt_unknown", "01JUNKNOWNORDER0000000000", 100, "CNY").await;
    assert_eq!(status, 200);
    let (status, _) = pay(&ctx, "evt_unknown", "01JUNKNOWNORDER0000000000", 100, "CNY").await;
    assert_eq!(status, 200);
    let kept = webhook_record("stripe", "evt_unknown")
        .await
        .expect("the unmatched payment is kept for an operator");
    assert_eq!(
        kept["outcome"].as_s().map(String::as_str),
        Ok("unknown_order")
    );
    assert_eq!(kept["amount"].as_n().map(String::as_str), Ok("100"));

    // A paid session that names no order: acknowledged, kept as unbound for an operator.
    let payload = json!({"id": "evt_unbound", "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_unbound", "payment_status": "paid", "amount_total": 100, "currency": "cny"}}})
    .to_string();
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let (status, _) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200);
    let kept = webhook_record("stripe", "evt_unbound")
        .await
        .expect("the unbound event is kept");
    assert_eq!(
        kept["outcome"].as_s().map(String::as_str),
        Ok("unbound_event")
    );
}

#[tokio::test]
async fn no_acknowledgement_until_the_delivery_is_queued() {
    let (ctx, order_id, token, amount) = pending_order("queue-down", 1).await;
    // The queue is unreachable: the payment is stored, but Stripe must not get a 2xx.
    let broken = context_with(&[(
        "DELIVERY_QUEUE_URL",
        &format!("{}/000000000000/no-such-queue", stack().endpoint),
    )])
    .await;
    let (status, body) = pay(&broken, "evt_queue_down", &order_id, amount, "CNY").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("internal_error")),
        "{body}"
    );
    assert!(
        !body.to_string().contains("no-such-queue"),
        "no internals in the response"
    );
    assert_eq!(status_of(&ctx, &order_id, &token).await["status"], "paid");

    // Stripe retries the same event: recognised as a duplicate, and the delivery is
    // queued this time.
    let (status, _) = pay(&ctx, "evt_queue_down", &order_id, amount, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(drain_delivery_queue(&ctx).await, 1);
    assert_eq!(
        status_of(&ctx, &order_id, &token).await["status"],
        "delivered"
    );
}

/// Money that names no order is kept forever (no TTL, unlike the 30-day dedupe records)
/// and listed for operators, newest first, through the admin API.
#[tokio::test]
async fn unmatched_payments_never_expire_and_are_listed_for_operators() {
    let (ctx, _, _, _) = pending_order("unmatched", 1).await;
    let unknown = format!("evt_unknown_{}", kami_shared::domain::time::new_id());
    let (status, _) = pay(&ctx, &unknown, "01JUNKNOWNORDER0000000001", 250, "CNY").await;
    assert_eq!(status, 200);
    let unbound = format!("evt_unbound_{}", kami_shared::domain::time::new_id());
    let payload = json!({"id": unbound, "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_unbound2", "payment_status": "paid", "amount_total": 300, "currency": "cny"}}})
    .to_string();
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let (status, _) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200);
    for event in [&unknown, &unbound] {
        let kept = webhook_record("stripe", event).await.expect("kept");
        assert!(
            !kept.contains_key("ttl"),
            "{event}: a record of money expires: {kept:?}"
        );
    }

    let (status, listed) = operations_get(&ctx, "/admin/payments/unmatched").await;
    assert_eq!(status, 200, "{listed}");
    let payments = listed["payments"].as_array().expect("payments");
    let find = |event: &str| {
        payments
            .iter()
            .find(|p| p["event_id"] == event)
            .cloned()
            .unwrap_or_else(|| panic!("{event} not listed: {listed}"))
    };
    let first = find(&unknown);
    assert_eq!(first["outcome"], "unknown_order");
    assert_eq!(first["claimed_order_id"], "01JUNKNOWNORDER0000000001");
    assert_eq!(first["amount"], json!({"amount": 250, "currency": "CNY"}));
    assert_eq!(first["provider"], "stripe");
    let second = find(&unbound);
    assert_eq!(second["outcome"], "unbound_event");
    assert_eq!(second["claimed_order_id"], Value::Null);
    // An unbound event is kept by its id and type; its amount is read at the provider.
    assert_eq!(second["kind"], "checkout.session.completed");
    let (status, _) = operations(&ctx, request("GET", "/admin/payments/unmatched", &[], "")).await;
    assert_eq!(status, 401);
}

/// `POST /admin/payments/{provider}/{event_id}/resolve` as the admin.
async fn resolve_payment(ctx: &Arc<Context>, event_id: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    operations(
        ctx,
        request(
            "POST",
            &format!("/admin/payments/stripe/{event_id}/resolve"),
            &[("authorization", &auth)],
            json!({"reason": "refunded in the Stripe dashboard"}).to_string(),
        ),
    )
    .await
}

/// Money to give back is in the exception queue with the orders: a second payment of a
/// paid order, and payments for no order Kami knows. Each leaves it once an operator
/// resolves it, once under ten identical concurrent resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_unmatched_payments_are_in_the_exception_queue_until_resolved() {
    let (ctx, order_id, _, amount) = pending_order("payexc", 1).await;
    let first = format!("evt_first_{order_id}");
    let (status, _) = pay(&ctx, &first, &order_id, amount, "CNY").await;
    assert_eq!(status, 200);
    // A second payment: another payment intent for the same order.
    let second = format!("evt_second_{order_id}");
    let payload = checkout_completed(&second, &order_id, amount, "CNY")
        .replace(&format!("pi_{order_id}"), &format!("pi_again_{order_id}"));
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    let (status, _) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200);
    let unknown = format!("evt_nobody_{}", kami_shared::domain::time::new_id());
    let claimed = kami_shared::domain::time::new_id();
    let (status, _) = pay(&ctx, &unknown, &claimed, 250, "CNY").await;
    assert_eq!(status, 200);
    let duplicate_kept = webhook_record("stripe", &second).await.expect("kept");
    assert!(
        !duplicate_kept.contains_key("ttl"),
        "money to give back expires"
    );

    let queue = |cause: &'static str| {
        let ctx = ctx.clone();
        async move {
            let (status, page) = operations_get(
                &ctx,
                &format!("/admin/exceptions?cause={cause}&order=newest&limit=100"),
            )
            .await;
            assert_eq!(status, 200, "{page}");
            page["exceptions"].as_array().cloned().unwrap_or_default()
        }
    };
    let duplicates = queue("duplicate_payment").await;
    let ours = duplicates
        .iter()
        .find(|e| e["payment"]["event_id"] == second.as_str())
        .unwrap_or_else(|| panic!("no duplicate entry: {duplicates:?}"));
    assert_eq!(ours["order_id"], order_id.as_str());
    assert_eq!(ours["cause"], "duplicate_payment");
    assert_eq!(ours["payment"]["provider"], "stripe");
    assert!(ours["sku"].is_string());
    let unknowns = queue("unknown_order").await;
    let theirs = unknowns
        .iter()
        .find(|e| e["payment"]["event_id"] == unknown.as_str())
        .unwrap_or_else(|| panic!("no unknown-order entry: {unknowns:?}"));
    assert_eq!(theirs["order_id"], claimed.as_str());
    assert_eq!(theirs["status"], Value::Null);
    // The first payment paid the order: nothing to resolve; an unknown event: not found.
    assert_eq!(resolve_payment(&ctx, &first).await.0, 409);
    assert_eq!(resolve_payment(&ctx, "evt_never_seen").await.0, 404);

    for event in [&second, &unknown] {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (ctx, event) = (ctx.clone(), event.clone());
                tokio::spawn(async move { resolve_payment(&ctx, &event).await })
            })
            .collect();
        for task in tasks {
            let (status, body) = task.await.expect("task");
            assert_eq!((status, &body["resolved"]), (200, &json!(true)), "{body}");
        }
        let (status, trail) =
            operations_get(&ctx, &format!("/admin/audit?payment=stripe:{event}")).await;
        assert_eq!(status, 200, "{trail}");
        let entries = trail["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 1, "one resolution recorded: {trail}");
        assert_eq!(entries[0]["action"], "payment.resolve");
        let record = webhook_record("stripe", event).await.expect("kept");
        assert!(!record.contains_key("gsi2pk"), "{record:?}");
        assert!(record.contains_key("resolved_by"));
    }
    assert!(
        !queue("duplicate_payment")
            .await
            .iter()
            .any(|e| e["payment"]["event_id"] == second.as_str())
    );
    assert!(
        !queue("unknown_order")
            .await
            .iter()
            .any(|e| e["payment"]["event_id"] == unknown.as_str())
    );
}

/// `POST /admin/orders/{id}/substitute` as the admin, with these keys.
async fn substitute(ctx: &Arc<Context>, order_id: &str, keys: &[String]) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    operations(
        ctx,
        request(
            "POST",
            &format!("/admin/orders/{order_id}/substitute"),
            &[("authorization", &auth)],
            json!({"reason": "keys bought from the publisher", "keys": keys}).to_string(),
        ),
    )
    .await
}

/// Every concurrent substitute answered 200 `delivered`.
async fn all_delivered(tasks: Vec<tokio::task::JoinHandle<(u16, Value)>>) {
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("delivered")),
            "{body}"
        );
    }
}

/// An order of 2 units of `sku` (1500 each) paid short: a payment exception holding
/// them. (order id, access token)
async fn short_paid_order(ctx: &Arc<Context>, sku: &str) -> (String, String) {
    let (status, created) = order(ctx, sku, 2, &format!("idem-{sku}-subst")).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(
        ctx,
        &format!("evt_short_{order_id}"),
        &order_id,
        2999,
        "CNY",
    )
    .await;
    assert_eq!(status, 200);
    let token = created["access_token"].as_str().expect("token").to_owned();
    (order_id, token)
}

/// An operator's own keys deliver an order that needs a person: checked like an import
/// (a key already in the inventory refused), delivered once under ten identical
/// concurrent requests, shown to the buyer, and the order's reserved stock goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_delivers_keys_of_their_own_once() {
    let ctx = context().await;
    let stocked = make_keys("SUBST", 3);
    let sku = product_with_keys(&ctx, "subst", 1500, 5, &stocked).await;
    let (order_id, token) = short_paid_order(&ctx, &sku).await;
    assert_eq!(
        status_of(&ctx, &order_id, &token).await["status"],
        "payment_exception"
    );

    let typed = make_keys("TYPED", 2);
    for (keys, path) in [
        (typed[..1].to_vec(), "keys"),
        (vec![typed[0].clone(), typed[0].clone()], "keys[1]"),
        (vec![typed[0].clone(), "\u{200b}".to_owned()], "keys[1]"),
    ] {
        let (status, body) = substitute(&ctx, &order_id, &keys).await;
        assert_eq!(
            (status, body["error"]["path"].as_str()),
            (400, Some(path)),
            "{body}"
        );
    }
    // A key already in the inventory (one of the product's own).
    let (status, body) = substitute(&ctx, &order_id, &[typed[0].clone(), stocked[0].clone()]).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["path"].as_str()
        ),
        (400, Some("duplicate_key"), Some("keys[1]")),
        "{body}"
    );

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (ctx, id, keys) = (ctx.clone(), order_id.clone(), typed.clone());
            tokio::spawn(async move { substitute(&ctx, &id, &keys).await })
        })
        .collect();
    all_delivered(tasks).await;
    let view = status_of(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivered");
    let mut codes: Vec<String> = view["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["code"].as_str().expect("code").to_owned())
        .collect();
    codes.sort();
    let mut expected = typed.clone();
    expected.sort();
    assert_eq!(codes, expected);
    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 3, "reserved": 0, "sold": 0}),
        "the order's reservation went back: its keys came from the operator"
    );
    let (_, operator) = operations_get(&ctx, &format!("/admin/orders/{order_id}")).await;
    assert_eq!(
        causes(&operator)
            .iter()
            .filter(|c| *c == "substitute")
            .count(),
        1
    );
    let (_, trail) = operations_get(&ctx, &format!("/admin/audit?order={order_id}")).await;
    assert_eq!(trail["entries"][0]["action"], "order.substitute", "{trail}");
    for text in [operator.to_string(), trail.to_string()] {
        assert!(
            typed.iter().all(|key| !text.contains(key.as_str())),
            "a key shown: {text}"
        );
    }
}

/// Another product's stock fills an order that needs a person: each slot once under ten
/// concurrent requests, that product's units sold, the order's own reservation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_delivers_from_another_products_stock_once() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "subst-own", 1500, 5, &make_keys("OWN", 2)).await;
    let replacement_keys = make_keys("REPL", 3);
    let other = product_with_keys(&ctx, "subst-other", 1800, 5, &replacement_keys).await;
    let (order_id, token) = short_paid_order(&ctx, &sku).await;

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let send = |body: Value| {
        let (ctx, id, auth) = (ctx.clone(), order_id.clone(), auth.clone());
        async move {
            operations(
                &ctx,
                request(
                    "POST",
                    &format!("/admin/orders/{id}/substitute"),
                    &[("authorization", &auth)],
                    body.to_string(),
                ),
            )
            .await
        }
    };
    for (body, path) in [
        (json!({"reason": "r", "product": sku}), "product"),
        (
            json!({"reason": "r", "product": "no-such-product"}),
            "product",
        ),
        (
            json!({"reason": "r", "product": other, "keys": ["A", "B"]}),
            "keys",
        ),
        (json!({"reason": "r"}), "keys"),
    ] {
        let (status, answer) = send(body).await;
        assert_eq!(
            (status, answer["error"]["path"].as_str()),
            (400, Some(path)),
            "{answer}"
        );
    }

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(send(
                json!({"reason": "own stock ran out", "product": other}),
            ))
        })
        .collect();
    all_delivered(tasks).await;
    let view = status_of(&ctx, &order_id, &token).await;
    let codes: Vec<&str> = view["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes.len(), 2, "{view}");
    assert!(
        codes
            .iter()
            .all(|c| replacement_keys.iter().any(|k| k == c)),
        "{codes:?}"
    );
    assert_ne!(codes[0], codes[1]);
    let (_, own) = admin_product(&ctx, &sku).await;
    assert_eq!(
        own["stock"],
        json!({"available": 2, "reserved": 0, "sold": 0})
    );
    let (_, replacement) = admin_product(&ctx, &other).await;
    assert_eq!(
        replacement["stock"],
        json!({"available": 1, "reserved": 0, "sold": 2})
    );
}
