//! Stock hoarding (docs/security.md): one client cannot hold a product's stock with
//! unpaid orders beyond the product's caps, per source address (from API Gateway's
//! request context) and per buyer email; paying or expiry gives the units back. Against
//! moto, with real parallel requests.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_shared::ports::Clock;
use kami_tests::*;
use serde_json::{Value, json};

/// A card-key product with `keys` in stock and these extra settings.
async fn product(ctx: &Arc<Context>, keys: usize, settings: Value) -> String {
    let sku = unique_sku("hoard");
    let mut body = json!({"sku": sku, "title": "Flash sale", "price": {"amount": 100, "currency": "CNY"},
        "delivery": {"type": "card_key"}, "max_per_order": 10});
    for (name, value) in settings.as_object().expect("settings") {
        body[name] = value.clone();
    }
    create_product(ctx, body).await;
    let (status, report) = import_keys(
        ctx,
        &sku,
        "application/json",
        json!({"keys": make_keys("HOARD", keys)}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    sku
}

/// `POST /orders` from `address` as `email`, under a fresh Idempotency-Key unless given.
async fn order_from(
    ctx: &Arc<Context>,
    sku: &str,
    quantity: u32,
    address: &str,
    email: &str,
    key: Option<&str>,
) -> (u16, Option<i64>, Value) {
    let key = key.map_or_else(|| format!("hoard-{}", new_id()), str::to_owned);
    let (status, headers, answer) =
        checkout_with_headers(ctx, order_request_from(sku, quantity, email, &key, address)).await;
    let retry_after = headers
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").parse().expect("seconds"));
    (status, retry_after, answer)
}

async fn available(ctx: &Arc<Context>, sku: &str) -> i64 {
    let (_, product) = admin_product(ctx, sku).await;
    product["stock"]["available"].as_i64().expect("available")
}

/// GIVEN a 100-unit flash sale (default caps: 20 units per address) WHEN one address
/// sends ten orders of 10 at once, each with its own email and key THEN two are taken,
/// eight are refused 429 `too_many_pending_orders` with a Retry-After, and 80 units stay
/// on sale; another address still buys.
#[tokio::test]
async fn one_address_cannot_hold_a_flash_sale() {
    let ctx = context().await;
    let sku = product(&ctx, 100, json!({})).await;
    let attempts: Vec<_> = (0..10)
        .map(|i| {
            let (ctx, sku) = (ctx.clone(), sku.clone());
            tokio::spawn(async move {
                order_from(
                    &ctx,
                    &sku,
                    10,
                    "203.0.113.10",
                    &format!("hoarder{i}@example.com"),
                    None,
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        let (status, retry_after, body) = attempt.await.expect("task");
        match status {
            201 => created += 1,
            429 => {
                assert_eq!(body["error"]["code"], "too_many_pending_orders", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .expect("message")
                        .contains("address"),
                    "{body}"
                );
                let retry_after = retry_after.expect("Retry-After on a 429");
                // The orders expire in 30 minutes (the deployment's default), then the
                // sweep's grace and one sweep period.
                assert!(
                    (1800..=1800 + 300 + 60 + 5).contains(&retry_after),
                    "{retry_after}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 2);
    assert_eq!(available(&ctx, &sku).await, 80);

    let (status, _, body) =
        order_from(&ctx, &sku, 10, "198.51.100.20", "buyer@example.com", None).await;
    assert_eq!(status, 201, "{body}");
}

/// GIVEN the default 10 units per email WHEN one email orders 5, 5 and 5 from three
/// addresses THEN the third is refused, naming the email; an IPv6 client counts by its
/// /64, so other addresses in it share the address cap.
#[tokio::test]
async fn one_email_or_one_ipv6_block_is_one_client() {
    let ctx = context().await;
    let sku = product(&ctx, 100, json!({})).await;
    let email = format!("same-{}@example.com", new_id().to_ascii_lowercase());
    for (i, address) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
        let (status, _, body) = order_from(&ctx, &sku, 5, address, &email, None).await;
        assert_eq!(status, 201, "order {i}: {body}");
    }
    let (status, retry_after, body) = order_from(&ctx, &sku, 5, "192.0.2.3", &email, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_pending_orders"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("email")
    );
    assert!(retry_after.is_some());

    for (i, address) in ["2001:db8:77:1::1", "2001:db8:77:1:ffff::2"]
        .iter()
        .enumerate()
    {
        let (status, _, body) = order_from(
            &ctx,
            &sku,
            10,
            address,
            &format!("v6-{i}@example.com"),
            None,
        )
        .await;
        assert_eq!(status, 201, "{address}: {body}");
    }
    let (status, _, body) =
        order_from(&ctx, &sku, 1, "2001:db8:77:1::99", "v6-9@example.com", None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_pending_orders"))
    );
    let (status, _, body) =
        order_from(&ctx, &sku, 1, "2001:db8:77:2::1", "v6-9@example.com", None).await;
    assert_eq!(status, 201, "another /64: {body}");
}

/// GIVEN an address at its cap WHEN one of its orders is paid, and later another expires
/// THEN each time the address may order again; a retry of an order already made is
/// answered as a retry, cap or not.
#[tokio::test]
async fn paying_or_expiry_gives_the_units_back() {
    // Far ahead of the other tests' clocks, as every test of a binary shares one table.
    let clock = Arc::new(FakeClock::at(
        Timestamp::now().plus_seconds(10 * 365 * 86_400),
    ));
    let ctx = context_on(clock.clone()).await;
    let sku = product(
        &ctx,
        50,
        json!({"pending_limits": {"per_address": 10, "per_email": 10}}),
    )
    .await;
    let address = "203.0.113.30";
    let first_key = format!("hoard-first-{}", new_id());
    let (status, _, first) =
        order_from(&ctx, &sku, 6, address, "a@example.com", Some(&first_key)).await;
    assert_eq!(status, 201, "{first}");
    let (status, _, second) = order_from(&ctx, &sku, 4, address, "b@example.com", None).await;
    assert_eq!(status, 201, "{second}");
    let (status, _, _) = order_from(&ctx, &sku, 1, address, "c@example.com", None).await;
    assert_eq!(status, 429, "the address holds 10 of 10");
    let (status, _, replay) =
        order_from(&ctx, &sku, 6, address, "a@example.com", Some(&first_key)).await;
    assert_eq!((status, &replay["order_id"]), (201, &first["order_id"]));

    let first_id = first["order_id"].as_str().expect("id");
    let payload = checkout_completed(&format!("evt_{}", new_id()), first_id, 600, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(&ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, third) = order_from(&ctx, &sku, 6, address, "c@example.com", None).await;
    assert_eq!(status, 201, "paid units no longer count: {third}");
    let (status, _, _) = order_from(&ctx, &sku, 1, address, "d@example.com", None).await;
    assert_eq!(status, 429, "4 + 6 held again");

    let second_id = second["order_id"].as_str().expect("id");
    let stored = ctx
        .store
        .get_order(second_id)
        .await
        .expect("read")
        .expect("order");
    clock.advance_seconds(1800);
    assert!(
        ctx.store
            .expire_order(&stored, clock.now())
            .await
            .expect("expire"),
        "expired"
    );
    let (status, _, body) = order_from(&ctx, &sku, 4, address, "d@example.com", None).await;
    assert_eq!(status, 201, "expired units no longer count: {body}");
}

/// A product sets its own caps and reservation lifetime; the order's `expires_at`
/// follows it, the admin view shows them, and bad values are refused by field.
#[tokio::test]
async fn a_product_sets_its_caps_and_how_long_an_order_holds_stock() {
    let ctx = context().await;
    let sku = product(
        &ctx,
        30,
        json!({"pending_limits": {"per_address": 25}, "reservation_seconds": 600}),
    )
    .await;
    let (_, view) = admin_product(&ctx, &sku).await;
    assert_eq!(
        view["pending_limits"],
        json!({"per_address": 25, "per_email": 10})
    );
    assert_eq!(view["reservation_seconds"], 600);

    let before = Timestamp::now();
    let (status, _, created) = order_from(&ctx, &sku, 1, "192.0.2.50", "e@example.com", None).await;
    assert_eq!(status, 201, "{created}");
    // Stored times are fixed-width RFC 3339: they compare as strings.
    let expires_at = created["expires_at"].as_str().expect("expires_at");
    assert!(
        (before.plus_seconds(600).to_rfc3339().as_str()
            ..=Timestamp::now().plus_seconds(600).to_rfc3339().as_str())
            .contains(&expires_at),
        "{created}"
    );

    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (settings, code, path) in [
        (
            json!({"reservation_seconds": 59}),
            "invalid_reservation_seconds",
            "reservation_seconds",
        ),
        (
            json!({"reservation_seconds": "soon"}),
            "invalid_reservation_seconds",
            "reservation_seconds",
        ),
        (
            json!({"pending_limits": {"per_email": 5}}),
            "invalid_pending_limits",
            "pending_limits.per_email",
        ),
        (
            json!({"pending_limits": {"per_address": 0}}),
            "invalid_pending_limits",
            "pending_limits.per_address",
        ),
        (
            json!({"pending_limits": {"per_hour": 3}}),
            "invalid_pending_limits",
            "pending_limits.per_hour",
        ),
    ] {
        let mut body = json!({"sku": unique_sku("bad"), "title": "t", "price": {"amount": 1, "currency": "CNY"},
            "delivery": {"type": "card_key"}, "max_per_order": 10});
        for (name, value) in settings.as_object().expect("settings") {
            body[name] = value.clone();
        }
        let (status, answer) = admin(
            &ctx,
            request(
                "POST",
                "/admin/products",
                &[("authorization", &auth)],
                body.to_string(),
            ),
        )
        .await;
        assert_eq!(status, 400, "{settings}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{settings}: {answer}");
        assert_eq!(answer["error"]["path"], path, "{settings}: {answer}");
    }
}

/// GIVEN a hold item in the table WHEN it is read THEN it names no address or email
/// (an HMAC), and the order records which holds it counts against.
#[tokio::test]
async fn holds_store_no_address_or_email() {
    let ctx = context().await;
    let sku = product(&ctx, 5, json!({})).await;
    let (status, _, created) = order_from(
        &ctx,
        &sku,
        2,
        "203.0.113.99",
        "private.person@example.com",
        None,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id");
    let order = table_item(&format!("ORDER#{order_id}"), "ORDER")
        .await
        .expect("order");
    let holds = order["holds"].as_l().expect("holds");
    assert_eq!(holds.len(), 2);
    for holder in holds {
        let holder = holder.as_s().expect("holder");
        let hold = table_item(&format!("HOLD#{sku}#{holder}"), "HOLD")
            .await
            .expect("hold");
        assert_eq!(hold["held"].as_n().expect("held"), "2");
        let text = format!("{hold:?}{holder}");
        for secret in ["203.0.113.99", "private.person", "example.com"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
