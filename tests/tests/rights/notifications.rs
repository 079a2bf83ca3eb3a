//! Telling the buyer (docs/notifications.md): the delivery worker queues a delivered
//! order, the notifier sends its notice through moto's SES and SNS (read back from the
//! outbox Kami's moto wrapper serves), once per order and channel whatever the
//! duplicates, in the buyer's language, with the goods only where the product allows.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use kami_shared::Context;
use kami_shared::app::notify;
use kami_shared::domain::time::new_id;
use kami_shared::fakes::{Behaviour, FakeNotifier};
use kami_shared::ports::notifier::Channel;
use kami_shared::store::NotificationStatus;
use kami_tests::*;
use serde_json::{Value, json};

use super::{expect_error, paid};

/// A context with delivery and notification queues of the test's own.
async fn notifying_context() -> Arc<Context> {
    let deliveries = fresh_queue().await;
    let notices = fresh_queue().await;
    context_with(&[
        ("DELIVERY_QUEUE_URL", &deliveries),
        ("NOTIFY_QUEUE_URL", &notices),
    ])
    .await
}

/// A card-key product with `keys`, whose notices carry the goods if `goods`.
async fn card_product(ctx: &Arc<Context>, keys: &[String], goods: bool) -> String {
    let sku = unique_sku("notify");
    create_product(
        ctx,
        json!({"sku": sku, "title": "Game card", "price": {"amount": 500, "currency": "CNY"},
               "delivery": {"type": "card_key"}, "goods_in_notifications": goods}),
    )
    .await;
    let (status, report) = import_keys(
        ctx,
        &sku,
        "application/json",
        json!({"keys": keys}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    sku
}

fn phone() -> String {
    // +86 and eleven digits, unique enough per test run.
    let digits: String = new_id()
        .bytes()
        .rev()
        .take(8)
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    format!("+86138{digits}")
}

/// Each message handed to the notifier `copies` times, every handling at once (as
/// concurrent Lambda instances would): the failed message ids of all of them.
pub async fn notify_at_once(
    ctx: &Arc<Context>,
    messages: &[SqsMessage],
    copies: usize,
) -> Vec<String> {
    let tasks: Vec<_> = messages
        .iter()
        .flat_map(|message| std::iter::repeat_n(message.clone(), copies))
        .map(|message| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut event = SqsEvent::default();
                event.records = vec![message];
                notify::handle_batch(&ctx, event).await
            })
        })
        .collect();
    let mut failed = Vec::new();
    for task in tasks {
        let response = task.await.expect("task");
        failed.extend(
            response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier),
        );
    }
    failed
}

/// The order's one notification record (an order of a buyer without a phone).
async fn email_record(
    ctx: &Arc<Context>,
    order_id: &str,
) -> kami_shared::store::NotificationRecord {
    let mut records = ctx.store.notifications_of(order_id).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    records.pop().unwrap()
}

pub fn sent_to<'a>(outbox: &'a [Value], recipient: &str) -> Vec<&'a Value> {
    outbox
        .iter()
        .filter(|m| m["recipient"] == recipient)
        .collect()
}

#[tokio::test]
async fn a_delivered_order_is_told_once_by_email_and_sms_whatever_the_duplicates() {
    let ctx = notifying_context().await;
    let keys = make_keys("NOTE", 1);
    let sku = card_product(&ctx, &keys, true).await;
    let key = new_id();
    let email = buyer_for(&key);
    let phone = phone();
    let (order_id, _) = paid(
        &ctx,
        &key,
        json!({"sku": sku, "quantity": 1,
               "buyer": {"email": email, "phone": phone, "language": "en"}}),
    )
    .await;
    // The paid order's message three more times: duplicated delivery messages.
    enqueue_again(&ctx, &order_id, 3).await;
    assert_eq!(drain_delivery_queue(&ctx).await, 4);
    let notify_url = ctx.config.notify_queue_url.clone().unwrap();
    let messages = receive_all(&notify_url).await;
    assert_eq!(
        messages.len(),
        4,
        "each handled delivery message queues the notice (the notifier tells once)"
    );
    // Every message three times, all twelve at once.
    assert!(notify_at_once(&ctx, &messages, 3).await.is_empty());

    let outbox = outbox().await;
    let emails = sent_to(&outbox, &email);
    assert_eq!(emails.len(), 1, "one email: {emails:?}");
    assert_eq!(emails[0]["channel"], "email");
    assert_eq!(
        emails[0]["subject"],
        format!("Your order {order_id} is delivered")
    );
    let body = emails[0]["body"].as_str().unwrap();
    assert!(
        body.contains("Your goods:") && body.contains(&keys[0]),
        "{body}"
    );
    let texts = sent_to(&outbox, &phone);
    assert_eq!(texts.len(), 1, "one SMS: {texts:?}");
    assert!(texts[0]["body"].as_str().unwrap().contains(&keys[0]));

    let records = ctx.store.notifications_of(&order_id).await.unwrap();
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record.status, NotificationStatus::Sent);
        assert_eq!(record.attempts, 1);
        let sent = if record.channel == Channel::Email {
            emails[0]
        } else {
            texts[0]
        };
        assert_eq!(record.provider_ref.as_deref(), sent["message_id"].as_str());
    }

    // A late duplicate, after everything was sent: nothing more.
    assert!(notify_at_once(&ctx, &messages[..1], 2).await.is_empty());
    let outbox = kami_tests::outbox().await;
    assert_eq!(
        sent_to(&outbox, &email).len() + sent_to(&outbox, &phone).len(),
        2
    );
}

#[tokio::test]
async fn goods_stay_out_of_a_notice_unless_the_product_allows_them() {
    let ctx = notifying_context().await;
    let keys = make_keys("QUIET", 1);
    let sku = card_product(&ctx, &keys, false).await;
    let key = new_id();
    let email = buyer_for(&key);
    let (order_id, _) = paid(
        &ctx,
        &key,
        json!({"sku": sku, "quantity": 1, "buyer": {"email": email}}),
    )
    .await;
    drain_delivery_queue(&ctx).await;
    let messages = receive_all(ctx.config.notify_queue_url.as_deref().unwrap()).await;
    assert!(notify_at_once(&ctx, &messages, 1).await.is_empty());
    let outbox = outbox().await;
    let emails = sent_to(&outbox, &email);
    assert_eq!(emails.len(), 1, "{emails:?}");
    // No language given: Chinese.
    assert_eq!(emails[0]["subject"], format!("您的订单 {order_id} 已发货"));
    let body = emails[0]["body"].as_str().unwrap();
    assert!(body.contains("「Game card」× 1 已发货"), "{body}");
    assert!(
        !body.contains(&keys[0]),
        "the key stays on the order page: {body}"
    );
    if let Some(api) = &ctx.config.public_api_url {
        assert!(body.contains(&format!("{api}/orders/{order_id}")), "{body}");
    }
}

#[tokio::test]
async fn a_failed_send_is_retried_and_never_undoes_the_delivery() {
    let deliveries = fresh_queue().await;
    let notices = fresh_queue().await;
    let email_notifier = Arc::new(FakeNotifier::default());
    email_notifier.then(Behaviour::Fail);
    let ctx = context_with_notifier(
        &[
            ("DELIVERY_QUEUE_URL", &deliveries),
            ("NOTIFY_QUEUE_URL", &notices),
        ],
        Channel::Email,
        email_notifier.clone(),
    )
    .await;
    let keys = make_keys("RETRY", 1);
    let sku = card_product(&ctx, &keys, false).await;
    let key = new_id();
    let (order_id, token) = paid(
        &ctx,
        &key,
        json!({"sku": sku, "quantity": 1, "buyer": {"email": buyer_for(&key)}}),
    )
    .await;
    drain_delivery_queue(&ctx).await;
    let messages = receive_all(&notices).await;
    assert_eq!(messages.len(), 1);

    let failed = notify_at_once(&ctx, &messages, 1).await;
    assert_eq!(
        failed,
        vec![messages[0].message_id.clone().unwrap()],
        "retried by SQS"
    );
    let record = email_record(&ctx, &order_id).await;
    assert_eq!(
        (record.status, record.attempts),
        (NotificationStatus::Failed, 1)
    );
    assert!(record.last_error.is_some());
    let (status, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("delivered")),
        "{view}"
    );
    assert_eq!(view["deliveries"][0]["code"], keys[0]);

    // The message's retry: sent, once.
    assert!(notify_at_once(&ctx, &messages, 2).await.is_empty());
    assert_eq!(email_notifier.sent().len(), 1);
    let record = email_record(&ctx, &order_id).await;
    assert_eq!(
        (record.status, record.attempts),
        (NotificationStatus::Sent, 2)
    );
    assert!(
        !format!("{record:?}").contains(&keys[0]),
        "a record never holds the goods"
    );
}

#[tokio::test]
async fn a_buyers_phone_and_language_are_checked() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "contact", 100, 1, &make_keys("C", 1)).await;
    for (buyer, code) in [
        (
            json!({"email": "a@example.com", "language": "fr"}),
            "invalid_language",
        ),
        (
            json!({"email": "a@example.com", "phone": "13800000000"}),
            "invalid_phone",
        ),
        (
            json!({"email": "a@example.com", "phone": 8613800000000_i64}),
            "invalid_phone",
        ),
    ] {
        let answer = checkout(
            &ctx,
            request(
                "POST",
                "/orders",
                &[("idempotency-key", &new_id())],
                json!({"sku": sku, "quantity": 1, "buyer": buyer}).to_string(),
            ),
        )
        .await;
        let error = expect_error(answer, 400, code);
        assert!(
            error["error"]["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("buyer."),
            "{error}"
        );
    }
}
