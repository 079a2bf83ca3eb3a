//! License keys against moto (docs/licenses.md): generated at delivery, one per unit
//! whatever the delivery messages; shown to the buyer only; validated, activated and
//! deactivated by a merchant API key with the `licenses` scope, the activation limit
//! held under concurrent activations; expiry by the clock; merchant API keys issued,
//! scoped and revoked.

use std::collections::HashSet;
use std::sync::Arc;

use kami_shared::Context;
use kami_shared::domain::time::Timestamp;
use kami_shared::fakes::FakeClock;
use kami_tests::*;

use super::{at_once, count, expect_error, issue_key, merchant};
use lambda_http::Body;
use serde_json::{Value, json};

/// A license product, one order of `quantity` paid and delivered: the keys shown.
async fn delivered_keys(ctx: &Arc<Context>, spec: Value, quantity: i64) -> (String, Vec<String>) {
    let sku = unique_sku("lic");
    let mut delivery = json!({"type": "license_key"});
    delivery
        .as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    create_product(
        ctx,
        json!({"sku": sku, "title": "Editor Pro", "price": {"amount": 9900, "currency": "CNY"},
               "delivery": delivery}),
    )
    .await;
    let (status, created) = order(ctx, &sku, quantity, &new_key()).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let token = created["access_token"].as_str().unwrap().to_owned();
    let amount = created["amount"]["amount"].as_i64().unwrap();
    let (status, _) = pay(ctx, &format!("evt_{order_id}"), &order_id, amount, "CNY").await;
    assert_eq!(status, 200);
    drain_delivery_queue(ctx).await;
    let (status, view) = view_order(ctx, &order_id, &token).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "delivered", "{view}");
    let keys = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "license_key");
            d["license_key"].as_str().unwrap().to_owned()
        })
        .collect();
    (order_id, keys)
}

fn new_key() -> String {
    kami_shared::domain::time::new_id()
}

#[tokio::test]
async fn each_unit_gets_its_own_well_formed_key_once_whatever_the_messages() {
    let ctx = context().await;
    let (order_id, keys) = delivered_keys(&ctx, json!({"activation_limit": 3}), 3).await;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 3);
    for key in &keys {
        assert!(
            kami_shared::domain::license::LicenseKey::parse(key).is_ok(),
            "{key}"
        );
    }
    // Duplicate messages and parallel workers after delivery change nothing.
    enqueue_again(&ctx, &order_id, 3).await;
    let rounds = futures_util::future::join_all((0..3).map(|_| delivery_round(&ctx))).await;
    assert!(rounds.iter().all(|round| round.failed.is_empty()));
    let stored = stored_order(&ctx, &order_id).await;
    assert_eq!(stored.deliveries.len(), 3);
    // The operator sees the licenses by id, never a key.
    let (status, operator_view) = operations_get(&ctx, &format!("/admin/orders/{order_id}")).await;
    assert_eq!(status, 200);
    let generated = operator_view["generated"].as_array().unwrap();
    assert_eq!(generated.len(), 3);
    assert!(generated.iter().all(|unit| unit["type"] == "license_key"));
    for key in &keys {
        assert!(!operator_view.to_string().contains(key.as_str()));
    }
    // The table holds the keys sealed only: no delivery record carries one in clear.
    for key in &keys {
        let found = format!("{:?}", stored.deliveries);
        assert!(!found.contains(key.as_str()));
    }
}

#[tokio::test]
async fn an_operator_voids_one_key_once_under_concurrent_requests_with_the_audit_record() {
    let ctx = context().await;
    let (order_id, keys) = delivered_keys(&ctx, json!({"activation_limit": 2}), 2).await;
    let (_, view) = operations_get(&ctx, &format!("/admin/orders/{order_id}")).await;
    let license_id = view["generated"][0]["id"].as_str().unwrap().to_owned();
    let void = |license_id: String| {
        let ctx = ctx.clone();
        let order_id = order_id.clone();
        async move {
            let auth = format!("Bearer {ADMIN_TOKEN}");
            operations(
                &ctx,
                request(
                    "POST",
                    &format!("/admin/orders/{order_id}/licenses/{license_id}/void"),
                    &[("authorization", &auth)],
                    json!({"reason": "key posted on a forum, ticket 881"}).to_string(),
                ),
            )
            .await
        }
    };
    let answers = at_once(10, |_| void(license_id.clone())).await;
    assert_eq!(count(&answers, 200, None), 10, "{answers:?}");
    assert!(answers.iter().all(|(_, body)| body["status"] == "voided"));
    // The first key validates as voided, the other as active.
    let (_, api_key) = issue_key(&ctx, &["licenses"]).await;
    let mut statuses = Vec::new();
    for key in &keys {
        let (status, validity) = merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/validate",
            json!({"license_key": key}),
        )
        .await;
        assert_eq!(status, 200, "{validity}");
        statuses.push(validity["status"].as_str().unwrap().to_owned());
    }
    statuses.sort();
    assert_eq!(statuses, ["active", "voided"]);
    // One audit record, naming the reason and never the key.
    let (status, audit) = operations_get(&ctx, &format!("/admin/audit?order={order_id}")).await;
    assert_eq!(status, 200, "{audit}");
    let voids: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "license.void")
        .collect();
    assert_eq!(voids.len(), 1, "{audit}");
    assert_eq!(voids[0]["reason"], "key posted on a forum, ticket 881");
    for key in &keys {
        assert!(!audit.to_string().contains(key.as_str()));
    }
    // A license of another order, or none at all: not found.
    expect_error(
        void("01J00000000000000000000000".into()).await,
        404,
        "license_not_found",
    );
}

#[tokio::test]
async fn parallel_first_deliveries_write_one_key_per_slot() {
    let ctx = context().await;
    let sku = unique_sku("lic");
    create_product(
        &ctx,
        json!({"sku": sku, "title": "Editor", "price": {"amount": 100, "currency": "CNY"},
               "delivery": {"type": "license_key", "activation_limit": 1}}),
    )
    .await;
    let (_, created) = order(&ctx, &sku, 4, &new_key()).await;
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let token = created["access_token"].as_str().unwrap().to_owned();
    pay(&ctx, &format!("evt_{order_id}"), &order_id, 400, "CNY").await;
    for _ in 0..5 {
        ctx.queue()
            .unwrap()
            .enqueue_delivery(&order_id)
            .await
            .unwrap();
    }
    let rounds = futures_util::future::join_all((0..4).map(|_| delivery_round(&ctx))).await;
    assert!(rounds.iter().all(|round| round.failed.is_empty()));
    drain_delivery_queue(&ctx).await;
    let (_, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivered");
    let keys: HashSet<&str> = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["license_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(stored_order(&ctx, &order_id).await.deliveries.len(), 4);
}

#[tokio::test]
async fn validate_tells_typos_from_unknown_keys_and_malformed_ones() {
    let ctx = context().await;
    let (_, keys) = delivered_keys(&ctx, json!({"activation_limit": 2, "valid_days": 30}), 1).await;
    let (_, api_key) = issue_key(&ctx, &["licenses"]).await;
    let key = &keys[0];

    let (status, valid) = merchant(
        &ctx,
        &api_key,
        "POST",
        "/licenses/validate",
        json!({"license_key": key.to_lowercase()}),
    )
    .await;
    assert_eq!(status, 200, "{valid}");
    assert_eq!(valid["valid"], true);
    assert_eq!(valid["status"], "active");
    assert_eq!(valid["activations_left"], 2);
    assert!(valid["expires_at"].is_string());

    // One character changed: the check character catches it.
    let chars: Vec<char> = key.chars().collect();
    let swapped = if chars[0] == '2' { '3' } else { '2' };
    let typo: String = std::iter::once(swapped)
        .chain(chars[1..].iter().copied())
        .collect();
    let err = expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/validate",
            json!({"license_key": typo}),
        )
        .await,
        400,
        "license_key_typo",
    );
    assert_eq!(err["error"]["path"], "license_key");

    expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/validate",
            json!({"license_key": "NOT-A-KEY"}),
        )
        .await,
        400,
        "invalid_license_key",
    );

    // Well formed, check character right, never generated.
    let unknown = kami_shared::domain::license::LicenseKey::generate();
    expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/validate",
            json!({"license_key": unknown.expose()}),
        )
        .await,
        404,
        "license_not_found",
    );

    expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/validate",
            json!({"license_key": key, "instance_id": new_key()}),
        )
        .await,
        404,
        "instance_not_found",
    );
}

#[tokio::test]
async fn twenty_concurrent_activations_of_a_three_seat_key_make_exactly_three() {
    let ctx = context().await;
    let (_, keys) = delivered_keys(&ctx, json!({"activation_limit": 3}), 1).await;
    let (_, api_key) = issue_key(&ctx, &["licenses"]).await;
    let key = keys[0].clone();
    let answers = at_once(20, |i| {
        let (ctx, api_key, key) = (ctx.clone(), api_key.clone(), key.clone());
        async move {
            let body = json!({"license_key": key, "instance_name": format!("machine-{i}")});
            merchant(&ctx, &api_key, "POST", "/licenses/activate", body).await
        }
    })
    .await;
    assert_eq!(count(&answers, 200, None), 3, "{answers:?}");
    assert_eq!(
        count(&answers, 409, Some("activation_limit_reached")),
        17,
        "{answers:?}"
    );
    let activated: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| v)
        .collect();
    let (_, valid) = merchant(
        &ctx,
        &api_key,
        "POST",
        "/licenses/validate",
        json!({"license_key": key}),
    )
    .await;
    assert_eq!(valid["activations_left"], 0);

    // Deactivating one gives its seat back, once.
    let instance_id = activated[0]["instance_id"].as_str().unwrap();
    let body = json!({"license_key": key, "instance_id": instance_id});
    let (status, answer) =
        merchant(&ctx, &api_key, "POST", "/licenses/deactivate", body.clone()).await;
    assert_eq!(
        (status, answer["activations_left"].as_u64()),
        (200, Some(1))
    );
    expect_error(
        merchant(&ctx, &api_key, "POST", "/licenses/deactivate", body).await,
        404,
        "instance_not_found",
    );
    let (_, valid) = merchant(
        &ctx,
        &api_key,
        "POST",
        "/licenses/validate",
        json!({"license_key": key}),
    )
    .await;
    assert_eq!(valid["activations_left"], 1);
}

#[tokio::test]
async fn the_same_instance_name_is_one_activation() {
    let ctx = context().await;
    let (_, keys) = delivered_keys(&ctx, json!({"activation_limit": 2}), 1).await;
    let (_, api_key) = issue_key(&ctx, &["licenses"]).await;
    let body = json!({"license_key": keys[0], "instance_name": "Alice's laptop"});
    let answers = futures_util::future::join_all(
        (0..5).map(|_| merchant(&ctx, &api_key, "POST", "/licenses/activate", body.clone())),
    )
    .await;
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(status, answer)| {
            assert_eq!(*status, 200, "{answer}");
            answer["instance_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let (_, valid) = merchant(
        &ctx,
        &api_key,
        "POST",
        "/licenses/validate",
        json!({"license_key": keys[0]}),
    )
    .await;
    assert_eq!(valid["activations_left"], 1);
    expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/activate",
            json!({"license_key": keys[0], "instance_name": ""}),
        )
        .await,
        400,
        "invalid_instance_name",
    );
}

#[tokio::test]
async fn an_expired_key_validates_as_expired_and_does_not_activate() {
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = context_on(clock.clone()).await;
    let (_, keys) = delivered_keys(&ctx, json!({"activation_limit": 1, "valid_days": 1}), 1).await;
    let (_, api_key) = issue_key(&ctx, &["licenses"]).await;
    let early = json!({"license_key": keys[0], "instance_name": "early"});
    assert_eq!(
        merchant(&ctx, &api_key, "POST", "/licenses/activate", early.clone())
            .await
            .0,
        200
    );
    clock.advance_seconds(86_400 + 1);
    // Not even a name active since before the end activates again.
    expect_error(
        merchant(&ctx, &api_key, "POST", "/licenses/activate", early).await,
        409,
        "license_not_active",
    );
    let (status, valid) = merchant(
        &ctx,
        &api_key,
        "POST",
        "/licenses/validate",
        json!({"license_key": keys[0]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (valid["valid"].as_bool(), valid["status"].as_str()),
        (Some(false), Some("expired"))
    );
    expect_error(
        merchant(
            &ctx,
            &api_key,
            "POST",
            "/licenses/activate",
            json!({"license_key": keys[0], "instance_name": "late"}),
        )
        .await,
        409,
        "license_not_active",
    );
}

#[tokio::test]
async fn merchant_keys_are_shown_once_scoped_and_revocable() {
    let ctx = context().await;
    let (_, keys) = delivered_keys(&ctx, json!({"activation_limit": 1}), 1).await;
    let body = json!({"license_key": keys[0]});

    expect_error(
        merchant(&ctx, "km_nope", "POST", "/licenses/validate", body.clone()).await,
        401,
        "unauthorized",
    );
    expect_error(
        merchant_api(
            &ctx,
            request("POST", "/licenses/validate", &[], body.to_string()),
        )
        .await,
        401,
        "unauthorized",
    );

    let (_, read_only) = issue_key(&ctx, &["entitlements:read"]).await;
    expect_error(
        merchant(&ctx, &read_only, "POST", "/licenses/validate", body.clone()).await,
        403,
        "forbidden",
    );

    let err = expect_error(
        operations(
            &ctx,
            request(
                "POST",
                "/admin/api-keys",
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                json!({"name": "x", "scopes": ["licenses", "root"]}).to_string(),
            ),
        )
        .await,
        400,
        "invalid_scope",
    );
    assert_eq!(err["error"]["path"], "scopes[1]");

    let (api_key_id, api_key) = issue_key(&ctx, &["licenses"]).await;
    assert!(api_key.starts_with("km_"));
    assert_eq!(
        merchant(&ctx, &api_key, "POST", "/licenses/validate", body.clone())
            .await
            .0,
        200
    );

    let (status, listed) = operations_get(&ctx, "/admin/api-keys").await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(!text.contains(&api_key), "the list shows a key");
    let mine = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == api_key_id.as_str())
        .unwrap();
    assert_eq!(mine["scopes"], json!(["licenses"]));
    assert!(mine.get("revoked_at").is_none());

    // Revoked twice at once: both 204, one audit record, and the key is refused.
    let revoke = || {
        operations(
            &ctx,
            request(
                "DELETE",
                &format!("/admin/api-keys/{api_key_id}"),
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                Body::Empty,
            ),
        )
    };
    let (first, second) = tokio::join!(revoke(), revoke());
    assert_eq!((first.0, second.0), (204, 204));
    expect_error(
        merchant(&ctx, &api_key, "POST", "/licenses/validate", body).await,
        401,
        "unauthorized",
    );
    let (_, listed) = operations_get(&ctx, "/admin/api-keys").await;
    let mine = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == api_key_id.as_str())
        .unwrap();
    assert!(mine["revoked_at"].is_string());
    let (_, audit) = operations_get(&ctx, &format!("/admin/audit?api_key={api_key_id}")).await;
    let revocations = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "api_key.revoke" && e["subject_id"] == api_key_id.as_str())
        .count();
    assert_eq!(revocations, 1, "{audit}");
    assert!(!audit.to_string().contains(&api_key));

    expect_error(
        operations(
            &ctx,
            request(
                "DELETE",
                &format!("/admin/api-keys/{}", new_key()),
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                Body::Empty,
            ),
        )
        .await,
        404,
        "api_key_not_found",
    );
}
