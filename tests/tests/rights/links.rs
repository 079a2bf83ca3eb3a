//! Redemption links against moto (docs/links.md): generated at delivery, one per unit;
//! opened while valid and not used up, redirecting with the documented signed
//! assertion; single use under concurrent opens; expired by the clock; tampered tokens
//! answer 404; the link secret shown once.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use kami_shared::Context;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_tests::*;
use lambda_http::Body;
use serde_json::{Value, json};
use sha2::Sha256;

const API: &str = "https://kami.example.test";

async fn link_product(ctx: &Arc<Context>, valid_hours: u32, max_opens: u32) -> (String, String) {
    let sku = unique_sku("link");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, created) = admin(
        ctx,
        request(
            "POST",
            "/admin/products",
            &[("authorization", &auth)],
            json!({"sku": sku, "title": "Course access", "price": {"amount": 1999, "currency": "CNY"},
                   "delivery": {"type": "link", "target_url": "https://merchant.example/redeem?from=kami",
                                "valid_hours": valid_hours, "max_opens": max_opens}})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["link_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(created["delivery"]["type"], "link");
    // Shown once: never again.
    let (status, again) = admin_product(ctx, &sku).await;
    assert_eq!(status, 200);
    assert!(again.get("link_secret").is_none(), "{again}");
    assert!(!again.to_string().contains(&secret));
    assert_eq!(again["link"]["max_opens"], max_opens);
    (sku, secret)
}

/// A paid, delivered order of `quantity` links: their paths (`/r/{token}`).
async fn delivered_links(ctx: &Arc<Context>, sku: &str, quantity: i64) -> (String, Vec<String>) {
    let key = new_id();
    let (status, created) = order(ctx, sku, quantity, &key).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let amount = created["amount"]["amount"].as_i64().unwrap();
    let payload = checkout_completed(&format!("evt_{order_id}"), &order_id, amount, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, ctx.clock.now().unix_seconds(), &payload);
    assert_eq!(send_webhook(ctx, &signature, payload).await.0, 200);
    drain_delivery_queue(ctx).await;
    let (_, view) = view_order(ctx, &order_id, created["access_token"].as_str().unwrap()).await;
    assert_eq!(view["status"], "delivered", "{view}");
    let paths = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "link");
            let url = d["url"].as_str().unwrap();
            assert!(url.starts_with(&format!("{API}/r/")), "{url}");
            url.trim_start_matches(API).to_owned()
        })
        .collect();
    (order_id, paths)
}

/// `GET path` on checkout: status, Location, JSON body (errors).
async fn open(ctx: &Arc<Context>, path: &str) -> (u16, Option<String>, Value) {
    let response = kami_shared::http::call(
        kami_shared::http::finish(kami_shared::http::checkout::routes(), ctx.clone()),
        request("GET", path, &[], Body::Empty),
    )
    .await;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    if status == 302 {
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, location, json)
}

async fn ctx_on(clock: Arc<FakeClock>) -> Arc<Context> {
    context_on_with(clock, &[("PUBLIC_API_URL", API)]).await
}

#[tokio::test]
async fn an_opened_link_redirects_with_the_documented_signature_once() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = ctx_on(clock.clone()).await;
    let (sku, secret) = link_product(&ctx, 72, 1).await;
    let delivered_at = kami_shared::ports::Clock::now(&*clock);
    let (order_id, paths) = delivered_links(&ctx, &sku, 2).await;
    assert_eq!(paths.len(), 2);
    assert_ne!(paths[0], paths[1]);

    let (status, location, _) = open(&ctx, &paths[0]).await;
    assert_eq!(status, 302);
    let location = url::Url::parse(&location.unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("merchant.example"));
    let params: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(params["from"], "kami", "the target's own query is kept");
    assert_eq!(params["kami_order"], order_id);
    assert_eq!(params["kami_sku"], sku);
    let exp = delivered_at.plus_seconds(72 * 3_600).unix_seconds();
    assert_eq!(params["kami_exp"], exp.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{order_id}.{sku}.{exp}").as_bytes());
    assert_eq!(params["kami_sig"], hex::encode(mac.finalize().into_bytes()));

    let (status, _, err) = open(&ctx, &paths[0]).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (410, Some("link_used"))
    );
    // The other unit's link is its own.
    assert_eq!(open(&ctx, &paths[1]).await.0, 302);

    // Tampered: one character changed, cut short, or made up.
    let token = paths[0].trim_start_matches("/r/");
    let flipped: String = token
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 5 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    for bad in [
        format!("/r/{flipped}"),
        format!("/r/{}", &token[1..]),
        "/r/nope".to_owned(),
    ] {
        let (status, _, err) = open(&ctx, &bad).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("link_not_found")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn concurrent_opens_of_a_single_use_link_redirect_once() {
    let ctx = ctx_on(Arc::new(FakeClock::at(Timestamp::now()))).await;
    let (sku, _) = link_product(&ctx, 1, 1).await;
    let (_, paths) = delivered_links(&ctx, &sku, 1).await;
    let answers = futures_util::future::join_all((0..10).map(|_| {
        let (ctx, path) = (ctx.clone(), paths[0].clone());
        tokio::spawn(async move { open(&ctx, &path).await })
    }))
    .await;
    let statuses: Vec<u16> = answers.into_iter().map(|a| a.unwrap().0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 302).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 410).count(),
        9,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_link_expires_after_its_hours_and_counts_its_opens() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = ctx_on(clock.clone()).await;
    let (sku, _) = link_product(&ctx, 2, 3).await;
    let (_, paths) = delivered_links(&ctx, &sku, 1).await;
    assert_eq!(open(&ctx, &paths[0]).await.0, 302);
    assert_eq!(open(&ctx, &paths[0]).await.0, 302);
    clock.advance_seconds(2 * 3_600);
    let (status, _, err) = open(&ctx, &paths[0]).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (410, Some("link_expired"))
    );
}

#[tokio::test]
async fn link_products_are_checked() {
    let ctx = context().await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (delivery, path) in [
        (
            json!({"type": "link", "target_url": "http://merchant.example/x", "valid_hours": 1, "max_opens": 1}),
            "delivery.target_url",
        ),
        (
            json!({"type": "link", "target_url": "https://merchant.example/x", "valid_hours": 0, "max_opens": 1}),
            "delivery.valid_hours",
        ),
        (
            json!({"type": "link", "target_url": "https://merchant.example/x", "valid_hours": 1}),
            "delivery.max_opens",
        ),
        (
            json!({"type": "card_key", "target_url": "https://merchant.example/x"}),
            "delivery.target_url",
        ),
    ] {
        let (status, err) = admin(
            &ctx,
            request(
                "POST",
                "/admin/products",
                &[("authorization", &auth)],
                json!({"sku": unique_sku("bad"), "title": "x", "price": {"amount": 1, "currency": "CNY"},
                       "delivery": delivery}).to_string(),
            ),
        )
        .await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some("invalid_delivery")),
            "{err}"
        );
        assert_eq!(err["error"]["path"], path);
    }
}
