//! Look-alike card keys: full-width forms, surrounding Unicode spaces and (for a product
//! whose codes ignore case) case variants of a key already in stock are duplicates;
//! keys holding invisible code points are refused; a CSV body is read as CSV.

use kami_tests::*;
use serde_json::{Value, json};

/// The full-width form of an ASCII key (`A` → `Ａ`, `-` → `－`).
fn full_width(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(u32::from(c) - 0x21 + 0xFF01).expect("full-width"),
            other => other,
        })
        .collect()
}

async fn product(ctx: &std::sync::Arc<kami_shared::config::Context>, card_keys: Value) -> String {
    let sku = unique_sku("lookalike");
    let mut body = json!({"sku": sku, "title": "Look-alikes", "price": {"amount": 100, "currency": "CNY"},
        "delivery": {"type": "card_key"}});
    if !card_keys.is_null() {
        body["card_keys"] = card_keys;
    }
    create_product(ctx, body).await;
    sku
}

async fn import_json(
    ctx: &std::sync::Arc<kami_shared::config::Context>,
    sku: &str,
    keys: &[String],
) -> Value {
    let (status, report) = import_keys(
        ctx,
        sku,
        "application/json",
        json!({ "keys": keys }).to_string(),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}: {report}");
    report
}

#[tokio::test]
async fn look_alikes_of_an_imported_key_are_reported_as_duplicates() {
    let ctx = context().await;
    let sku = product(&ctx, Value::Null).await;
    let key = make_keys("LOOK", 1).remove(0);
    assert_eq!(
        import_json(&ctx, &sku, std::slice::from_ref(&key)).await["accepted"],
        1
    );

    let report = import_json(
        &ctx,
        &sku,
        &[
            full_width(&key),
            format!("\u{3000}{key}\u{00A0}"),
            format!("{key}\u{FE0F}"),
            format!("{}\u{034F}{}", &key[..4], &key[4..]),
            format!("\u{3164}{key}"),
            key.to_lowercase(),
        ],
    )
    .await;
    assert_eq!(
        report["duplicates"],
        json!([{"index": 0}, {"index": 1}]),
        "{report}"
    );
    assert_eq!(
        report["invalid"],
        json!([
            {"index": 2, "reason": "invisible_character"},
            {"index": 3, "reason": "invisible_character"},
            {"index": 4, "reason": "invisible_character"},
        ]),
        "{report}"
    );
    assert_eq!(
        report["accepted"], 1,
        "case variants are other keys by default: {report}"
    );

    // CSV: the key is the first column; a quoted record with several fields is not one key.
    let fresh = make_keys("CSV", 1).remove(0);
    let csv = format!(
        "code,note\r\n\"{}\",\"again, quoted\"\r\n{},x\r\n{fresh},\"new, one\"\r\n",
        full_width(&key),
        key.to_lowercase()
    );
    let (status, report) = import_keys(&ctx, &sku, "text/csv", csv).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(
        report["duplicates"],
        json!([{"index": 0}, {"index": 1}]),
        "{report}"
    );
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(report["invalid"], json!([]), "{report}");

    let (_, view) = admin_product(&ctx, &sku).await;
    assert_eq!(view["card_keys"], json!({"case_sensitive": true}));
    assert_eq!(view["stock"]["available"], 3, "{view}");
}

#[tokio::test]
async fn a_product_that_ignores_case_counts_case_variants_as_duplicates() {
    let ctx = context().await;
    let sku = product(&ctx, json!({"case_sensitive": false})).await;
    let (_, view) = admin_product(&ctx, &sku).await;
    assert_eq!(
        view["card_keys"],
        json!({"case_sensitive": false}),
        "{view}"
    );

    let key = make_keys("Case", 1).remove(0);
    assert_eq!(
        import_json(&ctx, &sku, &[key.to_lowercase()]).await["accepted"],
        1
    );
    let report = import_json(
        &ctx,
        &sku,
        &[
            key.to_uppercase(),
            full_width(&key.to_uppercase()),
            key.clone(),
        ],
    )
    .await;
    assert_eq!(report["accepted"], 0, "{report}");
    assert_eq!(
        report["duplicates"],
        json!([{"index": 0}, {"index": 1}, {"index": 2}]),
        "{report}"
    );
}
