//! Subscriptions (docs/subscriptions.md), against moto on a fake clock: the renewal
//! order made `renewal_notice_days` before the end and its notice (pay link and access
//! token) sent; paid in time, the period continues without a gap; unpaid, the
//! entitlement lapses at its end; cancelled, no renewal is made; overlapping runs make
//! one renewal order.
//!
//! The renewal step (`subscriptions::renew_due`) is driven directly, not the whole sweep:
//! the sweep at a clock a month ahead would expire other tests' unpaid orders in this
//! binary. The subscription tests run one at a time (`SERIAL`), each from its own start
//! time, because one's renewal step sees every subscription due in the table.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::adapters::queue::NotifyMessage;
use kami_shared::app::reminders::remind_due;
use kami_shared::app::subscriptions::renew_due;
use kami_shared::domain::notification::NotificationKind;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_shared::ports::Clock;
use kami_tests::*;
use serde_json::{Value, json};

use super::notifications::{notify_at_once, sent_to};
use super::{expect_error, paid, pay_at_clock};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DAY: i64 = 86_400;

/// A subscription test's world: its clock (days after `FakeClock::DEFAULT` by `start`),
/// its context with its own queues, a 30-day subscription product renewing 3 days
/// before the end, and a paid, delivered first order.
struct Subscribed {
    clock: Arc<FakeClock>,
    ctx: Arc<Context>,
    email: String,
    account_id: String,
    order_id: String,
    token: String,
    entitlement_id: String,
}

async fn subscribed(start_days: i64) -> Subscribed {
    bought(
        start_days,
        json!({"type": "subscription", "period_days": 30, "renewal_notice_days": 3}),
    )
    .await
}

/// As `subscribed`, for a product delivering `delivery` (its entitlement name added,
/// but to a license key's).
async fn bought(start_days: i64, mut delivery: Value) -> Subscribed {
    let clock = Arc::new(FakeClock::at(
        FakeClock::DEFAULT.plus_seconds(start_days * DAY),
    ));
    let notices = fresh_queue().await;
    let ctx = context_on_with(clock.clone(), &[("NOTIFY_QUEUE_URL", &notices)]).await;
    let sku = unique_sku("sub");
    if delivery["type"] != "license_key" {
        delivery["entitlement"] = json!(format!("vip-{}", new_id().to_ascii_lowercase()));
    }
    create_product(
        &ctx,
        json!({"sku": sku, "title": "VIP", "price": {"amount": 3000, "currency": "CNY"},
               "delivery": delivery}),
    )
    .await;
    let key = new_id();
    let email = buyer_for(&key);
    let account_id = format!("user-{}", new_id().to_ascii_lowercase());
    let (order_id, token) = paid(
        &ctx,
        &key,
        json!({"sku": sku, "quantity": 1,
               "buyer": {"email": email, "account_id": account_id, "language": "en"}}),
    )
    .await;
    drain_delivery_queue(&ctx).await;
    let (status, view) = view_order(&ctx, &order_id, &token).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("delivered")),
        "{view}"
    );
    let delivered = &view["deliveries"][0];
    assert_eq!(delivered["type"], delivery["type"], "{view}");
    if delivery["type"] == "subscription" {
        assert_eq!(delivered["subscription_id"], order_id.as_str(), "{view}");
    }
    assert!(view.get("renewal_order_id").is_none(), "{view}");
    Subscribed {
        clock,
        ctx,
        email,
        account_id,
        entitlement_id: delivered["entitlement_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        order_id,
        token,
    }
}

impl Subscribed {
    async fn ends_at(&self) -> Timestamp {
        self.ctx
            .store
            .entitlement(&self.entitlement_id)
            .await
            .unwrap()
            .unwrap()
            .ends_at
            .unwrap()
    }

    /// The subscription's renewal order, as the origin order's view shows it.
    async fn renewal_order_id(&self) -> Option<String> {
        let (_, view) = view_order(&self.ctx, &self.order_id, &self.token).await;
        view["renewal_order_id"].as_str().map(str::to_owned)
    }

    async fn remind_now(&self) {
        remind_due(&self.ctx, self.clock.now())
            .await
            .expect("reminders");
    }

    /// The kinds of the notices queued about the first order.
    async fn queued_kinds(&self) -> Vec<NotificationKind> {
        self.send_notices_of(&self.order_id)
            .await
            .into_iter()
            .map(|notice| notice.kind)
            .collect()
    }

    async fn renew_now(&self) {
        renew_due(&self.ctx, self.clock.now())
            .await
            .expect("renewals");
    }

    /// The queued notices about `order_id`, each handed to the notifier.
    async fn send_notices_of(&self, order_id: &str) -> Vec<NotifyMessage> {
        let url = self.ctx.config.notify_queue_url.clone().unwrap();
        let messages: Vec<_> = receive_all(&url)
            .await
            .into_iter()
            .filter(|m| m.body.as_deref().unwrap_or_default().contains(order_id))
            .collect();
        assert!(notify_at_once(&self.ctx, &messages, 1).await.is_empty());
        messages
            .iter()
            .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_renewal_paid_in_time_continues_the_period_without_a_gap() {
    let _serial = SERIAL.lock().await;
    let sub = subscribed(0).await;
    let first_end = sub.ends_at().await;
    assert_eq!(first_end, sub.clock.now().plus_seconds(30 * DAY));

    // Not yet due: nothing.
    sub.clock.advance_seconds(26 * DAY);
    sub.renew_now().await;
    assert_eq!(sub.renewal_order_id().await, None);

    // Three days before the end: the renewal order, once, whatever the runs.
    sub.clock.advance_seconds(DAY + 60);
    sub.renew_now().await;
    sub.renew_now().await;
    let renewal = sub.renewal_order_id().await.expect("a renewal order");
    let notices = sub.send_notices_of(&renewal).await;
    assert_eq!(notices.len(), 1, "one notice queued");
    assert_eq!(notices[0].kind, NotificationKind::RenewalNotice);

    // The notice: the pay link and the token that opens the renewal order.
    let outbox = outbox().await;
    let sent = sent_to(&outbox, &sub.email);
    let notice = sent
        .iter()
        .find(|m| m["subject"].as_str().unwrap().starts_with("Renew"))
        .expect("the renewal notice");
    let body = notice["body"].as_str().unwrap();
    assert!(
        body.contains(&renewal) && body.contains("30.00 CNY"),
        "{body}"
    );
    let token = body
        .lines()
        .find_map(|line| line.strip_prefix("Access token: "))
        .expect("the token line");
    let (status, view) = view_order(&sub.ctx, &renewal, token).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("pending_payment")),
        "{view}"
    );
    assert_eq!(view["amount"]["amount"], 3000);
    assert_eq!(
        view["expires_at"],
        first_end.to_rfc3339(),
        "payable until the end"
    );

    // Paid before the end: thirty more days from the old end, not from now.
    pay_at_clock(&sub.ctx, &renewal, 3000).await;
    drain_delivery_queue(&sub.ctx).await;
    assert_eq!(sub.ends_at().await, first_end.plus_seconds(30 * DAY));
    let (_, view) = view_order(&sub.ctx, &renewal, token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(
        view["deliveries"][0]["subscription_id"],
        sub.order_id.as_str()
    );
    assert_eq!(
        view["deliveries"][0]["entitlement_id"],
        sub.entitlement_id.as_str()
    );
    assert_eq!(sub.renewal_order_id().await, None, "the renewal is done");
    let record = sub
        .ctx
        .store
        .subscription(&sub.order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.period_end, first_end.plus_seconds(30 * DAY));
    assert_eq!(record.last_order_id, renewal);
    let entitlements = sub
        .ctx
        .store
        .account_entitlements(&sub.account_id)
        .await
        .unwrap();
    assert_eq!(entitlements.len(), 1, "one record, extended");

    // And the next period's renewal comes three days before its end.
    sub.clock.advance_seconds(30 * DAY);
    sub.renew_now().await;
    let next = sub
        .renewal_order_id()
        .await
        .expect("the next renewal order");
    assert_ne!(next, renewal);
}

#[tokio::test]
async fn an_unpaid_renewal_lets_the_entitlement_lapse_at_its_end() {
    let _serial = SERIAL.lock().await;
    let sub = subscribed(1_000).await;
    let end = sub.ends_at().await;
    sub.clock.advance_seconds(27 * DAY + 60);
    sub.renew_now().await;
    let renewal = sub.renewal_order_id().await.expect("a renewal order");
    let order = sub.ctx.store.get_order(&renewal).await.unwrap().unwrap();
    assert_eq!(order.expires_at, end, "payable only until the period ends");

    // Past the end, unpaid: the entitlement is over, and nothing more is made.
    sub.clock.advance_seconds(3 * DAY);
    assert!(sub.clock.now() > end);
    sub.renew_now().await;
    assert_eq!(sub.renewal_order_id().await, Some(renewal));
    let key = super::issue_key(&sub.ctx, &["entitlements:read"]).await.1;
    let (status, listed) = super::merchant(
        &sub.ctx,
        &key,
        "GET",
        &format!("/entitlements?account_id={}", sub.account_id),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["entitlements"], json!([]), "lapsed: {listed}");
    let (status, cancelled) = cancel(&sub, &sub.token).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("lapsed")),
        "{cancelled}"
    );
}

async fn cancel(sub: &Subscribed, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    checkout(
        &sub.ctx,
        request(
            "POST",
            &format!("/subscriptions/{}/cancel", sub.order_id),
            &[("authorization", &auth)],
            "",
        ),
    )
    .await
}

#[tokio::test]
async fn a_cancelled_subscription_is_not_renewed_and_keeps_its_period() {
    let _serial = SERIAL.lock().await;
    let sub = subscribed(2_000).await;
    let end = sub.ends_at().await;
    expect_error(
        cancel(&sub, "not-the-token").await,
        404,
        "subscription_not_found",
    );
    let (status, first) = cancel(&sub, &sub.token).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("cancelled")),
        "{first}"
    );
    assert_eq!(first["period_end"], end.to_rfc3339());
    sub.clock.advance_seconds(60);
    let (_, again) = cancel(&sub, &sub.token).await;
    assert_eq!(
        again, first,
        "the same answer, the first cancellation's time"
    );

    sub.clock.advance_seconds(28 * DAY);
    sub.renew_now().await;
    assert_eq!(sub.renewal_order_id().await, None, "no renewal order");
    assert_eq!(sub.ends_at().await, end, "the paid period runs to its end");
}

#[tokio::test]
async fn overlapping_renewal_runs_make_one_renewal_order() {
    let _serial = SERIAL.lock().await;
    let sub = subscribed(3_000).await;
    sub.clock.advance_seconds(27 * DAY + 60);
    let now = sub.clock.now();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let ctx = sub.ctx.clone();
            tokio::spawn(async move { renew_due(&ctx, now).await.expect("renewals") })
        })
        .collect();
    let mut opened = 0;
    for run in runs {
        opened += run.await.unwrap().opened;
    }
    assert_eq!(opened, 1, "one renewal order in all");
    let renewal = sub.renewal_order_id().await.expect("a renewal order");
    let notices = sub.send_notices_of(&renewal).await;
    assert!(!notices.is_empty());
    // However often it was queued, one notice per channel.
    let record = sub.ctx.store.notifications_of(&renewal).await.unwrap();
    assert_eq!(record.len(), 1, "{record:?}");
}

#[tokio::test]
async fn subscription_products_are_checked() {
    let ctx = context().await;
    for (delivery, path) in [
        (
            json!({"type": "subscription", "entitlement": "vip", "period_days": 30, "renewal_notice_days": 30}),
            "delivery.renewal_notice_days",
        ),
        (
            json!({"type": "subscription", "entitlement": "vip", "period_days": 30}),
            "delivery.renewal_notice_days",
        ),
        (
            json!({"type": "subscription", "entitlement": "vip", "renewal_notice_days": 3}),
            "delivery.period_days",
        ),
        (
            json!({"type": "membership", "entitlement": "vip", "period_days": 30, "renewal_notice_days": 3}),
            "delivery.renewal_notice_days",
        ),
    ] {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let answer = admin(
            &ctx,
            request(
                "POST",
                "/admin/products",
                &[("authorization", &auth)],
                json!({"sku": unique_sku("badsub"), "title": "Sub", "price": {"amount": 100, "currency": "CNY"},
                       "delivery": delivery}).to_string(),
            ),
        )
        .await;
        let error = expect_error(answer, 400, "invalid_delivery");
        assert_eq!(error["error"]["path"], path, "{error}");
    }
}

/// The expiry reminders in `outbox` sent to `email` about an end at `end`.
fn reminders_ending_at<'a>(outbox: &'a [Value], email: &str, end: Timestamp) -> Vec<&'a Value> {
    sent_to(outbox, email)
        .into_iter()
        .filter(|m| {
            m["subject"]
                .as_str()
                .unwrap()
                .ends_with(&format!("ends at {}", end.to_rfc3339()))
        })
        .collect()
}

#[tokio::test]
async fn a_membership_is_reminded_once_before_it_ends() {
    let _serial = SERIAL.lock().await;
    let member = bought(4_000, json!({"type": "membership", "period_days": 30})).await;
    let end = member.ends_at().await;
    assert_eq!(
        member.queued_kinds().await,
        vec![NotificationKind::Delivery]
    );

    // Four days before the end: not yet (reminders come three days before).
    member.clock.advance_seconds(26 * DAY);
    member.remind_now().await;
    assert!(member.queued_kinds().await.is_empty());

    member.clock.advance_seconds(DAY + 60);
    member.remind_now().await;
    member.remind_now().await;
    assert_eq!(
        member.queued_kinds().await,
        vec![NotificationKind::ExpiryReminder],
        "one reminder, whatever the runs"
    );
    let outbox = outbox().await;
    let reminders = reminders_ending_at(&outbox, &member.email, end);
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert!(
        reminders[0]["body"]
            .as_str()
            .unwrap()
            .contains("Buy it again"),
        "{reminders:?}"
    );
}

#[tokio::test]
async fn a_license_key_is_reminded_once_before_it_ends_unless_voided() {
    let _serial = SERIAL.lock().await;
    let licensed = bought(
        4_100,
        json!({"type": "license_key", "activation_limit": 1, "valid_days": 30}),
    )
    .await;
    let refunded = bought(
        4_100,
        json!({"type": "license_key", "activation_limit": 1, "valid_days": 30}),
    )
    .await;
    for buyer in [&licensed, &refunded] {
        assert_eq!(buyer.queued_kinds().await, vec![NotificationKind::Delivery]);
    }
    let end = FakeClock::DEFAULT.plus_seconds((4_100 + 30) * DAY);
    // A key taken back before its reminder is not reminded of.
    let stored = stored_order(&refunded.ctx, &refunded.order_id).await;
    kami_shared::app::fulfil::take_back(
        &refunded.ctx,
        &stored.order,
        &stored.deliveries,
        kami_shared::domain::license::LicenseStatus::Voided,
    )
    .await
    .unwrap();

    licensed.clock.advance_seconds(26 * DAY);
    licensed.remind_now().await;
    assert!(licensed.queued_kinds().await.is_empty(), "not yet");
    licensed.clock.advance_seconds(DAY + 60);
    refunded.clock.advance_seconds(27 * DAY + 60);
    licensed.remind_now().await;
    licensed.remind_now().await;
    refunded.remind_now().await;
    assert_eq!(
        licensed.queued_kinds().await,
        vec![NotificationKind::ExpiryReminder],
        "one reminder, whatever the runs"
    );
    assert!(refunded.queued_kinds().await.is_empty());
    let outbox = outbox().await;
    let reminders = reminders_ending_at(&outbox, &licensed.email, end);
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert!(
        sent_to(&outbox, &refunded.email)
            .iter()
            .all(|m| !m["subject"].as_str().unwrap().contains("ends at"))
    );
}

#[tokio::test]
async fn a_renewing_subscription_gets_no_reminder_a_cancelled_one_does() {
    let _serial = SERIAL.lock().await;
    let renewing = subscribed(5_000).await;
    let cancelled = subscribed(5_000).await;
    assert_eq!(cancel(&cancelled, &cancelled.token).await.0, 200);
    cancelled.queued_kinds().await;
    // One run for both (their periods end together), queueing into `cancelled`'s queue.
    cancelled.clock.advance_seconds(27 * DAY + 60);
    cancelled.remind_now().await;
    let url = cancelled.ctx.config.notify_queue_url.clone().unwrap();
    let queued: Vec<NotifyMessage> = receive_all(&url)
        .await
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect();
    let about = |order_id: &str| -> Vec<NotificationKind> {
        queued
            .iter()
            .filter(|notice| notice.order_id == order_id)
            .map(|notice| notice.kind)
            .collect()
    };
    assert_eq!(
        about(&cancelled.order_id),
        vec![NotificationKind::ExpiryReminder]
    );
    assert!(
        about(&renewing.order_id).is_empty(),
        "its renewal notice tells it instead: {queued:?}"
    );
}
