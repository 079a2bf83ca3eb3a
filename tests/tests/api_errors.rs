//! Every failure a client can cause is a 4xx with a stable code and nothing written.

use kami_tests::*;
use lambda_http::Body;
use serde_json::{Value, json};

/// Request headers, body, expected status and expected error code.
type Case<'a> = (Vec<(&'a str, &'a str)>, String, u16, &'a str);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn bad_order_requests_are_refused_with_stable_codes() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "errors", 990, 3, &make_keys("ERR", 3)).await;
    let order_body = |quantity: Value| {
        json!({"sku": sku, "quantity": quantity, "buyer": {"email": "a@example.com"}}).to_string()
    };
    let cases: Vec<Case> = vec![
        (
            vec![("idempotency-key", "key-0001-idempotency")],
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            vec![("idempotency-key", "key-0002-idempotency")],
            json!({"sku": "no-such-sku", "quantity": 1, "buyer": {"email": "a@example.com"}})
                .to_string(),
            404,
            "product_not_found",
        ),
        (
            vec![("idempotency-key", "key-0003-idempotency")],
            order_body(json!(0)),
            400,
            "invalid_quantity",
        ),
        (
            vec![("idempotency-key", "key-0004-idempotency")],
            order_body(json!(-2)),
            400,
            "invalid_quantity",
        ),
        (
            vec![("idempotency-key", "key-0005-idempotency")],
            order_body(json!(4)),
            400,
            "quantity_over_limit",
        ),
        (
            vec![("idempotency-key", "key-0006-idempotency")],
            order_body(json!(1.5)),
            400,
            "invalid_quantity",
        ),
        (
            vec![("idempotency-key", "key-0007-idempotency")],
            order_body(json!("1")),
            400,
            "invalid_quantity",
        ),
        (vec![], order_body(json!(1)), 400, "missing_idempotency_key"),
        (
            vec![("idempotency-key", "")],
            order_body(json!(1)),
            400,
            "invalid_idempotency_key",
        ),
        (
            vec![("idempotency-key", "short")],
            order_body(json!(1)),
            400,
            "invalid_idempotency_key",
        ),
        (
            vec![("idempotency-key", "key-0011-idempotency")],
            json!({"sku": "bad/sku", "quantity": 1, "buyer": {"email": "a@example.com"}})
                .to_string(),
            400,
            "invalid_sku",
        ),
        (
            vec![("idempotency-key", "key-0008-idempotency")],
            json!({"sku": sku, "quantity": 1, "buyer": {"email": "nope"}}).to_string(),
            400,
            "invalid_email",
        ),
        (
            vec![("idempotency-key", "key-0009-idempotency")],
            json!({"sku": sku, "quantity": 1}).to_string(),
            400,
            "invalid_email",
        ),
        (
            vec![("idempotency-key", "key-0010-idempotency")],
            "x".repeat(70_000),
            413,
            "payload_too_large",
        ),
    ];
    for (headers, body, status, expected) in cases {
        let (got, response) = checkout(&ctx, request("POST", "/orders", &headers, body)).await;
        assert_eq!((got, code(&response)), (status, expected), "{response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, body) = checkout(&ctx, request("GET", "/nope", &[], Body::Empty)).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = checkout(
        &ctx,
        request("GET", "/products/no-such-sku", &[], Body::Empty),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "product_not_found"));

    // None of the refused requests reserved anything.
    let (_, product) = checkout(
        &ctx,
        request("GET", &format!("/products/{sku}"), &[], Body::Empty),
    )
    .await;
    assert_eq!(product["stock"]["available"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "idem", 990, 3, &make_keys("IDEM", 5)).await;
    let (status, first) = order(&ctx, &sku, 2, "idem-key-1-idempotency").await;
    assert_eq!(status, 201);
    assert_eq!(first["status"], "pending_payment");
    assert_eq!(first["amount"], json!({"amount": 1980, "currency": "CNY"}));
    // The price is the server's, whatever the body says.
    let with_price =
        json!({"sku": sku, "quantity": 2, "buyer": {"email": buyer_for("idem-key-1-idempotency")}, "price": 1})
            .to_string();
    let (status, replay) = checkout(
        &ctx,
        request(
            "POST",
            "/orders",
            &[("idempotency-key", "idem-key-1-idempotency")],
            with_price,
        ),
    )
    .await;
    assert_eq!((status, &replay), (201, &first));
    let (status, again) = order(&ctx, &sku, 2, "idem-key-1-idempotency").await;
    assert_eq!((status, &again), (201, &first));
    let (status, reused) = order(&ctx, &sku, 1, "idem-key-1-idempotency").await;
    assert_eq!((status, code(&reused)), (422, "idempotency_key_reused"));

    // A double-click: ten identical requests at once make one order.
    let mut clicks = Vec::new();
    for _ in 0..10 {
        let (ctx, sku) = (ctx.clone(), sku.clone());
        clicks.push(tokio::spawn(async move {
            order(&ctx, &sku, 1, "idem-double-click-idempotency").await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for click in clicks {
        let (status, body) = click.await.expect("task");
        assert_eq!(status, 201, "{body}");
        ids.insert(body["order_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 1);
    let (_, product) = checkout(
        &ctx,
        request("GET", &format!("/products/{sku}"), &[], Body::Empty),
    )
    .await;
    assert_eq!(product["stock"]["available"], 2, "5 keys - 2 - 1");
}

#[tokio::test]
async fn orders_are_hidden_without_their_token() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "hidden", 990, 3, &make_keys("HID", 1)).await;
    let (_, created) = order(&ctx, &sku, 1, "hidden-1-idempotency").await;
    let order_id = created["order_id"].as_str().expect("id");
    let token = created["access_token"].as_str().expect("token");
    let (status, _) = view_order(&ctx, order_id, token).await;
    assert_eq!(status, 200);
    for (id, auth) in [
        (order_id, "Bearer wrong-token".to_owned()),
        (order_id, String::new()),
        (order_id, token.to_owned()),
        ("01JNOSUCHORDER000000000000", format!("Bearer {token}")),
        ("not-an-id", format!("Bearer {token}")),
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        let (status, body) = checkout(
            &ctx,
            request("GET", &format!("/orders/{id}"), &headers, Body::Empty),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (404, "order_not_found"),
            "{id} {auth}"
        );
    }
}

#[tokio::test]
async fn admin_routes_need_the_token_and_valid_input() {
    let ctx = context().await;
    let body = json!({"sku": unique_sku("adm"), "title": "t", "price": {"amount": 100, "currency": "CNY"}, "delivery": {"type": "card_key"}}).to_string();
    for auth in [
        "",
        "Bearer wrong",
        "Basic a2FtaQ==",
        "Bearer kami-local-admin-token-not-a-secret-22222222X",
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth)]
        };
        let (status, response) = admin(
            &ctx,
            request("POST", "/admin/products", &headers, body.clone()),
        )
        .await;
        assert_eq!((status, code(&response)), (401, "unauthorized"), "{auth}");
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("authorization", auth.as_str())];
    let (status, created) = admin(
        &ctx,
        request("POST", "/admin/products", &headers, body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["stock"],
        json!({"available": 0, "reserved": 0, "sold": 0})
    );
    let (status, again) = admin(&ctx, request("POST", "/admin/products", &headers, body)).await;
    assert_eq!((status, code(&again)), (409, "product_exists"));
    let (status, bad) = admin(
        &ctx,
        request("POST", "/admin/products", &headers, r#"{"sku":"x"}"#),
    )
    .await;
    assert_eq!((status, code(&bad)), (400, "invalid_json"));
    let free = json!({"sku": unique_sku("free"), "title": "t", "price": {"amount": 0, "currency": "CNY"}, "delivery": {"type": "card_key"}}).to_string();
    let (status, bad) = admin(&ctx, request("POST", "/admin/products", &headers, free)).await;
    assert_eq!((status, code(&bad)), (400, "invalid_price"));
    let (status, missing) = admin(
        &ctx,
        request(
            "POST",
            "/admin/products/no-such/card-keys",
            &headers,
            r#"{"keys":["A"]}"#,
        ),
    )
    .await;
    assert_eq!((status, code(&missing)), (404, "product_not_found"));
}

#[tokio::test]
async fn import_reports_duplicates_and_invalid_keys_and_reads_text() {
    let ctx = context().await;
    let existing = make_keys("IMP", 2);
    let sku = product_with_keys(&ctx, "import", 100, 3, &existing).await;
    let other_sku = product_with_keys(&ctx, "import-other", 100, 3, &[]).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let fresh = make_keys("NEW", 2);
    let keys = json!({"keys": [fresh[0], format!("  {}  ", existing[0]), "", fresh[0], "bad\u{0007}", "x".repeat(600), fresh[1]]});
    let (status, report) = admin(
        &ctx,
        request(
            "POST",
            &format!("/admin/products/{other_sku}/card-keys"),
            &[("authorization", &auth)],
            keys.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["accepted"], 2);
    assert_eq!(
        report["duplicates"],
        json!([{"index": 1}, {"index": 3}]),
        "a key already in another product is a duplicate"
    );
    assert_eq!(
        report["invalid"],
        json!([{"index": 2, "reason": "empty"}, {"index": 4, "reason": "control_character"}, {"index": 5, "reason": "too_long"}])
    );
    assert!(
        !report.to_string().contains(&existing[0]),
        "reports never echo keys"
    );

    let text = make_keys("TXT", 3).join("\r\n") + "\n";
    let (status, report) = import_keys(&ctx, &sku, "text/csv", text).await;
    assert_eq!(
        (status, report["accepted"].as_u64()),
        (201, Some(3)),
        "{report}"
    );
    let (status, report) = admin(
        &ctx,
        request(
            "POST",
            &format!("/admin/products/{sku}/card-keys"),
            &[
                ("authorization", &auth),
                ("content-type", "application/xml"),
            ],
            "<keys/>",
        ),
    )
    .await;
    assert_eq!((status, code(&report)), (415, "unsupported_media_type"));
    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(product["stock"]["available"], 5);
}

/// A bad field is named by its JSON path, with the code the API already used for it; a
/// body that is not JSON, or a request without a field at fault, has no path.
#[tokio::test]
async fn bad_fields_are_named_by_their_json_path() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "paths", 990, 2, &make_keys("PTH", 2)).await;
    let key = "key-paths-0001-idempotency";
    let order_cases = [
        (
            json!({"sku": sku, "quantity": "1", "buyer": {"email": "a@example.com"}}),
            "invalid_quantity",
            Some("quantity"),
        ),
        (
            json!({"sku": sku, "quantity": 0, "buyer": {"email": "a@example.com"}}),
            "invalid_quantity",
            Some("quantity"),
        ),
        (
            json!({"sku": sku, "quantity": 1, "buyer": {"email": 7}}),
            "invalid_email",
            Some("buyer.email"),
        ),
        (
            json!({"sku": sku, "quantity": 1, "buyer": {"email": "nope"}}),
            "invalid_email",
            Some("buyer.email"),
        ),
        (
            json!({"sku": 12, "quantity": 1, "buyer": {"email": "a@example.com"}}),
            "invalid_sku",
            Some("sku"),
        ),
        (
            json!({"sku": "bad/sku", "quantity": 1, "buyer": {"email": "a@example.com"}}),
            "invalid_sku",
            Some("sku"),
        ),
        (json!("an order"), "invalid_json", None),
    ];
    for (body, expected, path) in order_cases {
        let (status, response) = checkout(
            &ctx,
            request(
                "POST",
                "/orders",
                &[("idempotency-key", key)],
                body.to_string(),
            ),
        )
        .await;
        assert_eq!(
            (status, code(&response)),
            (400, expected),
            "{body} -> {response}"
        );
        assert_eq!(
            response["error"]["path"].as_str(),
            path,
            "{body} -> {response}"
        );
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("authorization", auth.as_str())];
    let product = |price: Value| json!({"sku": unique_sku("path"), "title": "t", "price": price, "delivery": {"type": "card_key"}});
    let admin_cases = [
        (
            product(json!({"amount": "x", "currency": "CNY"})),
            "invalid_json",
            Some("price.amount"),
        ),
        (
            product(json!({"amount": 0, "currency": "CNY"})),
            "invalid_price",
            Some("price.amount"),
        ),
        (
            product(json!({"amount": 10, "currency": "yuan"})),
            "invalid_currency",
            Some("price.currency"),
        ),
        (
            product(json!({"amount": 10, "currency": "CNY", "extra": 1})),
            "invalid_json",
            Some("price.extra"),
        ),
    ];
    for (body, expected, path) in admin_cases {
        let (status, response) = admin(
            &ctx,
            request("POST", "/admin/products", &headers, body.to_string()),
        )
        .await;
        assert_eq!(
            (status, code(&response)),
            (400, expected),
            "{body} -> {response}"
        );
        assert_eq!(
            response["error"]["path"].as_str(),
            path,
            "{body} -> {response}"
        );
    }
}

/// A cold start with an admin token shorter than 32 characters fails, naming the secret
/// and not its value.
#[tokio::test]
async fn a_short_admin_token_stops_the_cold_start() {
    let short = "kami-admin-short-token";
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk_config().await);
    let arn = secrets
        .create_secret()
        .name(format!(
            "short-admin-{}",
            kami_shared::domain::time::new_id()
        ))
        .secret_string(short)
        .send()
        .await
        .expect("create secret")
        .arn
        .expect("arn");
    let mut env = stack().env.clone();
    env.insert("ADMIN_TOKEN_SECRET_ID".into(), arn);
    let config =
        kami_shared::config::Config::from_lookup(|name| env.get(name).cloned()).expect("config");
    let refused = kami_shared::config::ContextBuilder::new(config, sdk_config().await, None)
        .with_secrets()
        .await;
    let Err(err) = refused else {
        panic!("a 22-character admin token was accepted");
    };
    let message = err.to_string();
    assert!(message.contains("admin token"), "{message}");
    assert!(!message.contains(short), "{message}");
}
