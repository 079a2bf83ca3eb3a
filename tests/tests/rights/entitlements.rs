//! Memberships and count cards against moto (docs/entitlements.md): granted to the
//! buyer's account at delivery, once whatever the messages; a membership extended by
//! each purchase from its end, one record, never overlapping; a count card consumed by
//! redemptions, once per redemption id and never below zero under 100 concurrent ones.

use std::collections::HashSet;
use std::sync::Arc;

use kami_shared::Context;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_shared::ports::Clock;
use kami_tests::*;

use super::{at_once, count, expect_error, issue_key, merchant, paid};
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;

async fn product(ctx: &Arc<Context>, delivery: Value) -> String {
    let sku = unique_sku("ent");
    create_product(
        ctx,
        json!({"sku": sku, "title": "Gym", "price": {"amount": 3000, "currency": "CNY"},
               "delivery": delivery}),
    )
    .await;
    sku
}

/// An order for `account_id`, paid: (order id, access token).
async fn paid_order(
    ctx: &Arc<Context>,
    sku: &str,
    quantity: u32,
    account_id: &str,
) -> (String, String) {
    let key = new_id();
    paid(
        ctx,
        &key,
        json!({"sku": sku, "quantity": quantity,
               "buyer": {"email": buyer_for(&key), "account_id": account_id}}),
    )
    .await
}

fn account() -> String {
    format!("user-{}", new_id().to_ascii_lowercase())
}

async fn entitlements_of(ctx: &Arc<Context>, key: &str, account_id: &str, all: bool) -> Vec<Value> {
    let path = format!(
        "/entitlements?account_id={account_id}{}",
        if all { "&include_ended=true" } else { "" }
    );
    let (status, listed) = merchant(ctx, key, "GET", &path, Value::Null).await;
    assert_eq!(status, 200, "{listed}");
    listed["entitlements"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_membership_is_granted_then_extended_from_its_end_as_one_record() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on(clock.clone()).await;
    let key = issue_key(&ctx, &["entitlements:read"]).await.1;
    let sku = product(
        &ctx,
        json!({"type": "membership", "entitlement": "vip", "period_days": 30}),
    )
    .await;
    let buyer = account();

    // Account-bound: no account, no order.
    let idem = new_id();
    let err = expect_error(
        checkout(
            &ctx,
            request(
                "POST",
                "/orders",
                &[("idempotency-key", &idem)],
                json!({"sku": sku, "quantity": 1, "buyer": {"email": buyer_for(&idem)}})
                    .to_string(),
            ),
        )
        .await,
        400,
        "account_id_required",
    );
    assert_eq!(err["error"]["path"], "buyer.account_id");
    let idem = new_id();
    expect_error(
        checkout(
            &ctx,
            request(
                "POST",
                "/orders",
                &[("idempotency-key", &idem)],
                json!({"sku": sku, "quantity": 1,
                       "buyer": {"email": buyer_for(&idem), "account_id": "has space"}})
                .to_string(),
            ),
        )
        .await,
        400,
        "invalid_account_id",
    );

    let (_, product_view) =
        checkout(&ctx, request("GET", &format!("/products/{sku}"), &[], "")).await;
    assert_eq!(product_view["stock"]["available"], Value::Null);

    let start = clock.now();
    let (first, token) = paid_order(&ctx, &sku, 1, &buyer).await;
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, &first, &token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    let delivered = &view["deliveries"][0];
    assert_eq!(delivered["type"], "membership");
    let entitlement_id = delivered["entitlement_id"].as_str().unwrap().to_owned();

    clock.advance_seconds(10 * 86_400);
    let (second, _) = paid_order(&ctx, &sku, 2, &buyer).await;
    drain_delivery_queue(&ctx).await;

    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let vip = &listed[0];
    assert_eq!(vip["entitlement_id"], entitlement_id.as_str());
    assert_eq!(
        (vip["type"].as_str(), vip["name"].as_str()),
        (Some("membership"), Some("vip"))
    );
    assert_eq!(vip["starts_at"], start.to_rfc3339());
    // 30 days, then 2 × 30 more from the first period's end: no overlap, no gap.
    assert_eq!(
        vip["ends_at"],
        Timestamp(start.0 + 90 * DAY_MS).to_rfc3339()
    );
    assert_eq!(vip["source_orders"], json!([first, second]));
    assert_eq!(vip["uses_left"], Value::Null);
    assert_eq!(vip["status"], "active");

    // Lapsed, then bought again: a new period from now, the same record.
    clock.advance_seconds(100 * 86_400);
    assert!(entitlements_of(&ctx, &key, &buyer, false).await.is_empty());
    let again = clock.now();
    paid_order(&ctx, &sku, 1, &buyer).await;
    drain_delivery_queue(&ctx).await;
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["entitlement_id"], entitlement_id.as_str());
    assert_eq!(listed[0]["starts_at"], again.to_rfc3339());
    assert_eq!(
        listed[0]["ends_at"],
        Timestamp(again.0 + 30 * DAY_MS).to_rfc3339()
    );
}

#[tokio::test]
async fn parallel_purchases_of_one_membership_add_up_without_overlap() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on(clock.clone()).await;
    let key = issue_key(&ctx, &["entitlements:read"]).await.1;
    let sku = product(
        &ctx,
        json!({"type": "membership", "entitlement": "vip", "period_days": 7}),
    )
    .await;
    let buyer = account();
    let start = clock.now();
    for _ in 0..5 {
        let (order_id, _) = paid_order(&ctx, &sku, 1, &buyer).await;
        // Each order's message twice.
        ctx.queue()
            .unwrap()
            .enqueue_delivery(&order_id)
            .await
            .unwrap();
    }
    let rounds = futures_util::future::join_all((0..4).map(|_| delivery_round(&ctx))).await;
    assert!(rounds.iter().all(|round| round.failed.is_empty()));
    drain_delivery_queue(&ctx).await;
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["ends_at"],
        Timestamp(start.0 + 35 * DAY_MS).to_rfc3339()
    );
    assert_eq!(listed[0]["source_orders"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_hundred_concurrent_redemptions_of_a_ten_use_card_make_exactly_ten() {
    let ctx = context().await;
    let key = issue_key(&ctx, &["entitlements:read", "entitlements:redeem"])
        .await
        .1;
    let sku = product(
        &ctx,
        json!({"type": "count_card", "entitlement": "yoga", "uses": 10, "valid_days": 365}),
    )
    .await;
    let buyer = account();
    let (order_id, token) = paid_order(&ctx, &sku, 1, &buyer).await;
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(view["deliveries"][0]["type"], "count_card");
    let id = view["deliveries"][0]["entitlement_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed[0]["uses_left"], 10);

    let path = format!("/entitlements/{id}/redemptions");
    let answers = at_once(100, |i| {
        let (ctx, key, path) = (ctx.clone(), key.clone(), path.clone());
        async move {
            let body = json!({"redemption_id": format!("visit-{i}")});
            merchant(&ctx, &key, "POST", &path, body).await
        }
    })
    .await;
    assert_eq!(count(&answers, 201, None), 10, "{answers:?}");
    assert_eq!(
        count(&answers, 409, Some("no_uses_left")),
        90,
        "{answers:?}"
    );
    let redeemed: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    let lefts: HashSet<u64> = redeemed
        .iter()
        .map(|v| v["uses_left"].as_u64().unwrap())
        .collect();
    assert!(lefts.iter().all(|left| *left < 10));

    let (_, details) = merchant(
        &ctx,
        &key,
        "GET",
        &format!("/entitlements/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(details["uses_left"], 0);
    assert_eq!(details["status"], "used_up");
    assert_eq!(details["redemptions"].as_array().unwrap().len(), 10);
    assert!(entitlements_of(&ctx, &key, &buyer, false).await.is_empty());
    assert_eq!(entitlements_of(&ctx, &key, &buyer, true).await.len(), 1);
}

#[tokio::test]
async fn a_redemption_id_is_consumed_once_and_answered_the_same() {
    let ctx = context().await;
    let key = issue_key(&ctx, &["entitlements:read", "entitlements:redeem"])
        .await
        .1;
    let sku = product(
        &ctx,
        json!({"type": "count_card", "entitlement": "yoga", "uses": 5}),
    )
    .await;
    let buyer = account();
    paid_order(&ctx, &sku, 2, &buyer).await;
    drain_delivery_queue(&ctx).await;
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    let id = listed[0]["entitlement_id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["uses_left"], 10, "two units of five uses");
    assert_eq!(listed[0]["ends_at"], Value::Null);
    let path = format!("/entitlements/{id}/redemptions");

    let body = json!({"redemption_id": "r-1", "uses": 3});
    let answers = futures_util::future::join_all(
        (0..5).map(|_| merchant(&ctx, &key, "POST", &path, body.clone())),
    )
    .await;
    for (status, answer) in &answers {
        assert_eq!(*status, 201, "{answer}");
        assert_eq!(answer["uses_left"], 7);
    }
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &path,
            json!({"redemption_id": "r-1", "uses": 1}),
        )
        .await,
        409,
        "redemption_id_reused",
    );
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &path,
            json!({"redemption_id": "r-2", "uses": 8}),
        )
        .await,
        409,
        "no_uses_left",
    );
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &path,
            json!({"redemption_id": "", "uses": 1}),
        )
        .await,
        400,
        "invalid_redemption_id",
    );
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &path,
            json!({"redemption_id": "r-3", "uses": 0}),
        )
        .await,
        400,
        "invalid_uses",
    );

    let (_, details) = merchant(
        &ctx,
        &key,
        "GET",
        &format!("/entitlements/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(details["uses_left"], 7);
    assert_eq!(
        details["redemptions"],
        json!([{"redemption_id": "r-1", "uses": 3, "at": details["redemptions"][0]["at"]}])
    );
}

#[tokio::test]
async fn expired_cards_memberships_unknown_ids_and_scopes_are_refused() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on(clock.clone()).await;
    let key = issue_key(&ctx, &["entitlements:read", "entitlements:redeem"])
        .await
        .1;
    let card = product(
        &ctx,
        json!({"type": "count_card", "entitlement": "yoga", "uses": 10, "valid_days": 1}),
    )
    .await;
    let vip = product(
        &ctx,
        json!({"type": "membership", "entitlement": "vip", "period_days": 30}),
    )
    .await;
    let buyer = account();
    paid_order(&ctx, &card, 1, &buyer).await;
    paid_order(&ctx, &vip, 1, &buyer).await;
    drain_delivery_queue(&ctx).await;
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 2);
    let id_of = |kind: &str| {
        listed.iter().find(|e| e["type"] == kind).unwrap()["entitlement_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (card_id, vip_id) = (id_of("count_card"), id_of("membership"));

    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &format!("/entitlements/{vip_id}/redemptions"),
            json!({"redemption_id": "x"}),
        )
        .await,
        409,
        "not_redeemable",
    );
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &format!("/entitlements/{}/redemptions", new_id()),
            json!({"redemption_id": "x"}),
        )
        .await,
        404,
        "entitlement_not_found",
    );
    expect_error(
        merchant(&ctx, &key, "GET", "/entitlements?account_id=", Value::Null).await,
        400,
        "invalid_query",
    );

    let read_only = issue_key(&ctx, &["entitlements:read"]).await.1;
    expect_error(
        merchant(
            &ctx,
            &read_only,
            "POST",
            &format!("/entitlements/{card_id}/redemptions"),
            json!({"redemption_id": "x"}),
        )
        .await,
        403,
        "forbidden",
    );
    let licenses_only = issue_key(&ctx, &["licenses"]).await.1;
    let (status, _) = merchant(
        &ctx,
        &licenses_only,
        "GET",
        &format!("/entitlements?account_id={buyer}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);

    clock.advance_seconds(86_400 + 1);
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &format!("/entitlements/{card_id}/redemptions"),
            json!({"redemption_id": "late"}),
        )
        .await,
        409,
        "entitlement_expired",
    );
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["type"], "membership");
}

#[tokio::test]
async fn a_refund_takes_back_what_its_order_granted_once() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on_with(
        clock.clone(),
        &[("PUBLIC_API_URL", "https://kami.example.test")],
    )
    .await;
    let key = issue_key(
        &ctx,
        &["entitlements:read", "entitlements:redeem", "licenses"],
    )
    .await
    .1;
    let channel = unreachable_stripe_channel(
        &ctx,
        &format!("ent-{}", &new_id()[16..].to_ascii_lowercase()),
    )
    .await;
    let buyer = account();
    let order_body = |sku: &str, idem: &str| json!({"sku": sku, "quantity": 1, "buyer": {"email": buyer_for(idem), "account_id": buyer}});
    let vip = product(
        &ctx,
        json!({"type": "membership", "entitlement": "vip", "period_days": 30}),
    )
    .await;
    let card = product(
        &ctx,
        json!({"type": "count_card", "entitlement": "yoga", "uses": 10}),
    )
    .await;
    let license = product(&ctx, json!({"type": "license_key", "activation_limit": 2})).await;
    let start = clock.now();
    let mut orders = Vec::new();
    for sku in [&vip, &vip, &card, &license] {
        let idem = new_id();
        orders.push(
            paid_through_channel(&ctx, &clock, &channel, &idem, order_body(sku, &idem), 3000).await,
        );
    }
    drain_delivery_queue(&ctx).await;
    let listed = entitlements_of(&ctx, &key, &buyer, false).await;
    assert_eq!(listed.len(), 2);
    let vip_view = listed.iter().find(|e| e["type"] == "membership").unwrap();
    assert_eq!(
        vip_view["ends_at"],
        Timestamp(start.0 + 60 * DAY_MS).to_rfc3339()
    );
    let card_id = listed.iter().find(|e| e["type"] == "count_card").unwrap()["entitlement_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let license_key = {
        let view = stored_order(&ctx, &orders[3]).await;
        assert_eq!(view.deliveries.len(), 1);
        // The key as `GET /orders/{id}` shows it to the buyer (the fulfiller's view).
        let shown = kami_shared::app::fulfil::ByType;
        let delivered =
            kami_shared::app::fulfil::Fulfiller::show(&shown, &ctx, &view.order, &view.deliveries)
                .await
                .unwrap();
        delivered[0].license_key.clone().unwrap()
    };

    // The second membership order, the card and the license refunded in full; twice
    // over for the membership (a provider's repeated confirmation).
    refunded(&ctx, &clock, &orders[1], 3000).await;
    kami_shared::app::fulfil::take_back(
        &ctx,
        &stored_order(&ctx, &orders[1]).await.order,
        &stored_order(&ctx, &orders[1]).await.deliveries,
        kami_shared::domain::license::LicenseStatus::Refunded,
    )
    .await
    .unwrap();
    refunded(&ctx, &clock, &orders[2], 3000).await;
    refunded(&ctx, &clock, &orders[3], 3000).await;

    let listed = entitlements_of(&ctx, &key, &buyer, true).await;
    let vip_view = listed.iter().find(|e| e["type"] == "membership").unwrap();
    assert_eq!(
        vip_view["ends_at"],
        Timestamp(start.0 + 30 * DAY_MS).to_rfc3339(),
        "one period taken back, once"
    );
    assert_eq!(vip_view["status"], "active");
    let card_view = listed.iter().find(|e| e["type"] == "count_card").unwrap();
    assert_eq!(card_view["status"], "revoked");
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            &format!("/entitlements/{card_id}/redemptions"),
            json!({"redemption_id": "after-refund"}),
        )
        .await,
        409,
        "entitlement_revoked",
    );
    let (status, valid) = merchant(
        &ctx,
        &key,
        "POST",
        "/licenses/validate",
        json!({"license_key": license_key}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (valid["valid"].as_bool(), valid["status"].as_str()),
        (Some(false), Some("refunded"))
    );
    expect_error(
        merchant(
            &ctx,
            &key,
            "POST",
            "/licenses/activate",
            json!({"license_key": license_key, "instance_name": "x"}),
        )
        .await,
        409,
        "license_not_active",
    );
}
