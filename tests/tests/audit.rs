//! The audit trail against moto: an admin action that is one transaction writes its
//! audit record in that transaction (docs/operations.md, "Audit trail"). Through a
//! `FaultProxy`, a cancelled transaction leaves neither the change nor its record; a
//! retry writes both once; a lost answer retried with the same client token, and a
//! repeated request that changes nothing, add no second record.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::domain::time::new_id;
use kami_tests::faults::{Answer, Fault, FaultProxy};
use kami_tests::*;
use serde_json::{Value, json};

fn auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// The actions recorded on `subject` (`channel=id`, `product=sku`), newest first.
async fn recorded(ctx: &Arc<Context>, subject: &str) -> Vec<String> {
    let (status, page) = operations_get(ctx, &format!("/admin/audit?{subject}")).await;
    assert_eq!(status, 200, "{page}");
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Only the transaction that carries the audit record of `subject`'s `id`.
fn carrying_audit_of(subject: &str, id: &str) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    let partition = format!("AUDIT#{subject}#{id}");
    move |body: &str| body.contains(&partition)
}

/// A proxy that cancels (nothing written, not retried) the first transaction carrying
/// the audit record of `subject`'s `id`, and a context whose calls go through it.
async fn cancelling_audit_of(subject: &str, id: &str) -> (FaultProxy, Arc<Context>) {
    let proxy = FaultProxy::start(
        &stack().endpoint,
        vec![
            Fault::dynamodb(
                "TransactWriteItems",
                Answer::CancelledFor("ValidationError"),
            )
            .when(carrying_audit_of(subject, id)),
        ],
    )
    .await;
    let via = context_via(&proxy.endpoint).await;
    (proxy, via)
}

async fn put_channel(ctx: &Arc<Context>, channel_id: &str, priority: i32) -> (u16, Value) {
    let body = json!({"provider": "stripe", "display_name": "Card", "currencies": ["CNY"],
        "priority": priority, "min_amount": 1, "max_amount": 1_000_000, "timeout_ms": 500,
        "config": {"secret_key": format!("sk_test_{channel_id}_secret_key_value"),
            "webhook_secrets": [format!("whsec_{channel_id}_audit_test_secret")],
            "api_base_url": "http://127.0.0.1:9"}});
    admin(
        ctx,
        request(
            "PUT",
            &format!("/admin/payment-channels/{channel_id}"),
            &[("authorization", &auth())],
            body.to_string(),
        ),
    )
    .await
}

/// GIVEN a channel's transaction cancelled (nothing written) WHEN an operator saves it
/// THEN neither the channel nor its record exists; saved again, both exist once; a
/// replace whose answer is lost (committed, retried with the same token) adds one record.
#[tokio::test]
async fn a_channel_is_saved_with_its_audit_record_or_not_at_all() {
    let table = context().await;
    let id = format!("audit-{}", new_id().to_ascii_lowercase());
    let (proxy, via) = cancelling_audit_of("channel", &id).await;

    let (status, answer) = put_channel(&via, &id, 10).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(proxy.fired(), [1]);
    assert!(table.store.get_channel(&id).await.expect("read").is_none());
    assert!(recorded(&table, &format!("channel={id}")).await.is_empty());

    let (status, answer) = put_channel(&via, &id, 10).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        recorded(&table, &format!("channel={id}")).await,
        ["channel.put"]
    );

    proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::Lost).when(carrying_audit_of("channel", &id)),
    );
    let (status, answer) = put_channel(&via, &id, 20).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.fired(), [1, 1]);
    assert_eq!(
        recorded(&table, &format!("channel={id}")).await,
        ["channel.put", "channel.put"],
        "one record per replace, however often its call was sent"
    );
    let stored = table
        .store
        .get_channel(&id)
        .await
        .expect("read")
        .expect("channel");
    assert_eq!(stored.settings.priority, 20);
}

/// GIVEN a product's transaction cancelled WHEN an operator creates it THEN no product
/// and no record; created again, one record; the same request once more is `409` and
/// records nothing.
#[tokio::test]
async fn a_product_is_created_with_its_audit_record_or_not_at_all() {
    let table = context().await;
    let sku = unique_sku("audit");
    let (proxy, via) = cancelling_audit_of("product", &sku).await;
    let create = || {
        request(
            "POST",
            "/admin/products",
            &[("authorization", &auth())],
            json!({"sku": sku, "title": "Audited", "price": {"amount": 100, "currency": "CNY"},
                "delivery": {"type": "card_key"}, "max_per_order": 1})
            .to_string(),
        )
    };

    let (status, answer) = admin(&via, create()).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(proxy.fired(), [1]);
    assert!(
        table
            .store
            .get_product(&sku, true)
            .await
            .expect("read")
            .is_none()
    );
    assert!(recorded(&table, &format!("product={sku}")).await.is_empty());

    let (status, answer) = admin(&via, create()).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = admin(&via, create()).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        recorded(&table, &format!("product={sku}")).await,
        ["product.create"]
    );
}

/// GIVEN an unpaid order WHEN an operator confirms its payment twice, and asks for its
/// redelivery THEN one `order.confirm_paid` record (written with the payment: the
/// second confirmation is a duplicate and changes nothing) and one `order.redeliver`.
#[tokio::test]
async fn a_confirmed_payment_is_recorded_once_with_the_move_it_made() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "auditpay", 100, 1, &make_keys("AUDITPAY", 1)).await;
    let (status, created) = order(&ctx, &sku, 1, &format!("audit-{}", new_id())).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("order id").to_owned();
    let post = |action: &str, body: Value| {
        request(
            "POST",
            &format!("/admin/orders/{order_id}/{action}"),
            &[("authorization", &auth())],
            body.to_string(),
        )
    };
    let confirm = || {
        post(
            "confirm-paid",
            json!({"reason": "seen at the bank", "reference": "BANK-1"}),
        )
    };
    for _ in 0..2 {
        let (status, answer) = operations(&ctx, confirm()).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = operations(&ctx, post("redeliver", json!({}))).await;
    assert_eq!(status, 202, "{answer}");

    let (status, trail) = operations_get(&ctx, &format!("/admin/audit?order={order_id}")).await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .map(|entry| entry["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["order.redeliver", "order.confirm_paid"],
        "{trail}"
    );
    assert_eq!(entries[1]["before"]["status"], "pending_payment");
    assert_eq!(entries[1]["after"]["status"], "paid");
    assert_eq!(entries[1]["reason"], "seen at the bank");
}
