//! Direct top-ups against moto, with fake suppliers (the `Supplier` port's fake: it can
//! succeed, fail, time out after acting, or answer pending): nobody is topped up twice,
//! nobody is left waiting, and a callback only moves the request it answers.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::app::delivery::{self, DeliveryOutcome};
use kami_shared::domain::time::Timestamp;
use kami_shared::fakes::{Behaviour, FakeClock, FakeSupplier};
use kami_shared::ports::Clock;
use kami_shared::ports::supplier::TopUpOutcome;
use kami_tests::*;
use serde_json::{Value, json};

const ACCOUNT: &str = "13800138000";

/// A world of its own: suppliers with unique ids, their fakes, a top-up product sold
/// through them in that order, and a clock that stands still until moved (at the real
/// time, so a Stripe signature made now verifies).
struct World {
    ctx: Arc<Context>,
    clock: Arc<FakeClock>,
    sku: String,
    suppliers: Vec<(String, Arc<FakeSupplier>)>,
}

fn real_now() -> Timestamp {
    Timestamp::from_unix_seconds(now_seconds())
}

fn supplier_config(overrides: Value) -> Value {
    let mut body = json!({
        "kind": "http_json", "base_url": "https://supplier.example/api",
        "secret": "supplier-secret-0123456789", "timeout_ms": 3000, "enabled": true,
        "circuit": {"failures": 5, "window_s": 60, "cooldown_s": 30},
        "unknown_outcome_deadline_s": 600
    });
    for (k, v) in overrides.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

async fn put_supplier(ctx: &Arc<Context>, supplier_id: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(
        ctx,
        request(
            "PUT",
            &format!("/admin/suppliers/{supplier_id}"),
            &[("authorization", &auth)],
            body.to_string(),
        ),
    )
    .await
}

async fn admin_get(ctx: &Arc<Context>, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(ctx, request("GET", path, &[("authorization", &auth)], "")).await
}

/// `POST /orders` with `body`, under an idempotency key of its own.
async fn place(ctx: &Arc<Context>, body: &Value) -> (u16, Value) {
    let key = unique_sku("topup-order-key");
    checkout(
        ctx,
        request(
            "POST",
            "/orders",
            &[("idempotency-key", &key)],
            body.to_string(),
        ),
    )
    .await
}

/// An order of one unit of `sku` for `ACCOUNT`, by a buyer of its own.
fn top_up_body(sku: &str) -> Value {
    let buyer = buyer_for(&unique_sku("topup-buyer"));
    json!({"sku": sku, "quantity": 1, "buyer": {"email": buyer}, "recipient": {"account": ACCOUNT}})
}

/// An operator's redelivery (`202`, or the test fails).
async fn redeliver(ctx: &Arc<Context>, order_id: &str) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = operations(
        ctx,
        request(
            "POST",
            &format!("/admin/orders/{order_id}/redeliver"),
            &[("authorization", &auth)],
            "",
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

/// `names` suppliers (each with `config` overrides), a product through them.
async fn world(names: &[(&str, Value)]) -> World {
    let clock = Arc::new(FakeClock::at(real_now()));
    let tag = unique_sku("s").replace('.', "-");
    let suppliers: Vec<(String, Arc<FakeSupplier>)> = names
        .iter()
        .map(|(name, _)| (format!("{name}-{tag}"), Arc::new(FakeSupplier::default())))
        .collect();
    let ports: Vec<(&str, Arc<dyn kami_shared::ports::Supplier>)> = suppliers
        .iter()
        .map(|(id, fake)| {
            (
                id.as_str(),
                fake.clone() as Arc<dyn kami_shared::ports::Supplier>,
            )
        })
        .collect();
    let ctx = context_with_suppliers(clock.clone(), &ports).await;
    for ((id, _), (_, config)) in suppliers.iter().zip(names) {
        let (status, body) = put_supplier(&ctx, id, supplier_config(config.clone())).await;
        assert_eq!(status, 201, "{body}");
    }
    let sku = unique_sku("topup");
    create_product(
        &ctx,
        json!({"sku": sku, "title": "Mobile 50", "price": {"amount": 5000, "currency": "CNY"},
               "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50",
                            "suppliers": suppliers.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
                            "account": {"label": "Phone number", "pattern": "^1[3-9][0-9]{9}$"}}}),
    )
    .await;
    World {
        ctx,
        clock,
        sku,
        suppliers,
    }
}

impl World {
    /// The status of the license stored under `fingerprint`.
    async fn license_status(
        &self,
        fingerprint: &str,
    ) -> kami_shared::domain::license::LicenseStatus {
        self.ctx
            .store
            .license(fingerprint)
            .await
            .expect("read")
            .expect("license")
            .license
            .status
    }

    /// A top-up product through the first supplier with `budget` units of stock.
    async fn budget_product(&self, prefix: &str, budget: u32) -> String {
        let sku = unique_sku(prefix);
        create_product(
            &self.ctx,
            json!({"sku": sku, "title": format!("Mobile 50, {budget} left"),
                   "price": {"amount": 5000, "currency": "CNY"},
                   "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50",
                                "suppliers": [self.id(0)], "stock_budget": budget,
                                "account": {"label": "Phone number", "pattern": "^1[3-9][0-9]{9}$"}}}),
        )
        .await;
        sku
    }

    fn fake(&self, i: usize) -> &FakeSupplier {
        &self.suppliers[i].1
    }

    fn id(&self, i: usize) -> &str {
        &self.suppliers[i].0
    }

    /// A paid top-up order for `ACCOUNT`: (order id, access token).
    async fn paid_order(&self) -> (String, String) {
        let (status, created) = place(&self.ctx, &top_up_body(&self.sku)).await;
        assert_eq!(status, 201, "{created}");
        let order_id = created["order_id"].as_str().expect("id").to_owned();
        let (status, paid) = pay(
            &self.ctx,
            &format!("evt_{order_id}"),
            &order_id,
            5000,
            "CNY",
        )
        .await;
        assert_eq!(status, 200, "{paid}");
        (
            order_id,
            created["access_token"].as_str().expect("token").to_owned(),
        )
    }

    async fn deliver(&self, order_id: &str) -> DeliveryOutcome {
        delivery::deliver(&self.ctx, order_id)
            .await
            .expect("deliver")
    }

    async fn operator_view(&self, order_id: &str) -> Value {
        let (status, view) = operations_get(&self.ctx, &format!("/admin/orders/{order_id}")).await;
        assert_eq!(status, 200, "{view}");
        view
    }

    async fn status(&self, order_id: &str) -> String {
        self.operator_view(order_id).await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    /// A callback as supplier `i` would send it (the fake verifies the header).
    async fn callback(&self, i: usize, body: Value, signed: bool) -> (u16, Value) {
        let headers: &[(&str, &str)] = if signed {
            &[("x-fake-signature", "valid")]
        } else {
            &[("x-fake-signature", "forged")]
        };
        webhook(
            &self.ctx,
            request(
                "POST",
                &format!("/webhooks/suppliers/{}", self.id(i)),
                headers,
                body.to_string(),
            ),
        )
        .await
    }

    fn request_ids(&self, i: usize) -> Vec<String> {
        self.fake(i)
            .top_ups()
            .into_iter()
            .map(|t| t.request_id)
            .collect()
    }
}

fn history(view: &Value) -> Vec<(String, String)> {
    view["supplier_history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|line| {
            (
                line["action"].as_str().expect("action").to_owned(),
                line["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_top_up_that_succeeds_is_delivered_and_shown() {
    let w = world(&[("a", json!({}))]).await;
    let (order_id, token) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let top_ups = w.fake(0).top_ups();
    assert_eq!(top_ups.len(), 1);
    assert_eq!(top_ups[0].account, ACCOUNT);
    assert_eq!(top_ups[0].product, "cmcc-50");
    assert_eq!(
        top_ups[0].callback_url,
        format!("https://kami.example/webhooks/suppliers/{}", w.id(0))
    );
    let (status, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "delivered");
    assert_eq!(
        view["deliveries"],
        json!([{"type": "direct_topup", "account": ACCOUNT,
                "supplier_ref": format!("fake_topup_{}", top_ups[0].request_id)}])
    );
    let operator = w.operator_view(&order_id).await;
    assert_eq!(
        history(&operator),
        [
            ("send".into(), "sent".into()),
            ("answer".into(), "success".into())
        ]
    );
    assert_eq!(operator["top_up"]["requests"][0]["status"], "success");
    // Delivered is final: another message changes nothing and sends nothing.
    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::AlreadyDelivered
    );
    assert_eq!(w.fake(0).top_ups().len(), 1);
}

#[tokio::test]
async fn pending_then_a_callback_delivers_once_and_duplicates_change_nothing() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0)
        .answer_with(TopUpOutcome::Pending { supplier_ref: None });
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    assert_eq!(w.status(&order_id).await, "delivering");
    // The payment's own message: the worker asks, still pending.
    assert_eq!(drain_delivery_queue(&w.ctx).await, 1);
    let request_id = w.request_ids(0)[0].clone();
    let success = json!({"request_id": request_id, "status": "success", "supplier_ref": "SUP-1", "reason": null});
    // A forged callback is refused and changes nothing.
    assert_eq!(w.callback(0, success.clone(), false).await.0, 401);
    assert_eq!(w.status(&order_id).await, "delivering");
    let (status, body) = w.callback(0, success.clone(), true).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    // The callback queued the order: the worker delivers it without sending again.
    assert_eq!(drain_delivery_queue(&w.ctx).await, 1);
    assert_eq!(w.status(&order_id).await, "delivered");
    assert_eq!(w.fake(0).top_ups().len(), 1);
    // The same callback again, and a contradicting one: recorded, nothing changes.
    assert_eq!(w.callback(0, success, true).await.0, 200);
    let failed = json!({"request_id": request_id, "status": "failed", "reason": "late"});
    assert_eq!(w.callback(0, failed, true).await.0, 200);
    let view = w.operator_view(&order_id).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["top_up"]["requests"][0]["supplier_ref"], "SUP-1");
    let lines = history(&view);
    assert!(
        lines.contains(&("callback".into(), "success".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("callback".into(), "duplicate_success".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("callback".into(), "ignored_contradiction_failed".into())),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_callback_is_bound_to_its_supplier_and_request() {
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    w.fake(0)
        .answer_with(TopUpOutcome::Pending { supplier_ref: None });
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    assert_eq!(
        drain_delivery_queue(&w.ctx).await,
        1,
        "the payment's message"
    );
    let request_id = w.request_ids(0)[0].clone();
    // Supplier b answering a's request, and a request Kami never sent: 404, unchanged.
    let (status, body) = w
        .callback(
            1,
            json!({"request_id": request_id, "status": "success"}),
            true,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("topup_request_not_found"))
    );
    let (status, _) = w
        .callback(
            0,
            json!({"request_id": format!("{order_id}-07"), "status": "success"}),
            true,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = w
        .callback(
            0,
            json!({"request_id": "01JUNK", "status": "success"}),
            true,
        )
        .await;
    assert_eq!(status, 404);
    let view = w.operator_view(&order_id).await;
    assert_eq!(view["status"], "delivering");
    assert_eq!(view["top_up"]["requests"][0]["status"], "pending");
    assert_eq!(drain_delivery_queue(&w.ctx).await, 0, "nothing was queued");
}

#[tokio::test]
async fn pending_then_a_poll_delivers() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0)
        .answer_with(TopUpOutcome::Pending { supplier_ref: None });
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    // Still pending when asked: nothing new is sent.
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    let request_id = w.request_ids(0)[0].clone();
    w.fake(0).settle(
        &request_id,
        TopUpOutcome::Success {
            supplier_ref: "SUP-9".into(),
        },
    );
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    assert_eq!(w.fake(0).top_ups().len(), 1);
    let lines = history(&w.operator_view(&order_id).await);
    assert_eq!(
        lines,
        [
            ("send".into(), "sent".into()),
            ("answer".into(), "pending".into()),
            ("poll".into(), "pending".into()),
            ("poll".into(), "success".into())
        ]
    );
}

#[tokio::test]
async fn a_definite_failure_fails_over_to_the_next_supplier() {
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "account frozen".into(),
    });
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let (a, b) = (w.request_ids(0), w.request_ids(1));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_ne!(a[0], b[0], "one request id per (order, attempt, supplier)");
    let view = w.operator_view(&order_id).await;
    let requests = view["top_up"]["requests"].as_array().expect("requests");
    assert_eq!(requests[0]["status"], "failed");
    assert_eq!(requests[0]["reason"], "account frozen");
    assert_eq!(requests[1]["status"], "success");
}

#[tokio::test]
async fn every_supplier_failing_is_delivery_failed_no_supplier_succeeded() {
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    for i in 0..2 {
        w.fake(i).answer_with(TopUpOutcome::Failed {
            reason: "no".into(),
        });
    }
    let (order_id, token) = w.paid_order().await;
    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::Failed("no_supplier_succeeded")
    );
    let (_, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivery_failed");
    assert_eq!(view["exception"], "no_supplier_succeeded");
    // A stray message (a duplicate, a late one) sends nothing: failed stays failed.
    w.fake(0).answer_with(TopUpOutcome::Success {
        supplier_ref: "R2".into(),
    });
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    assert_eq!(w.request_ids(0).len(), 1);
    assert_eq!(w.status(&order_id).await, "delivery_failed");
    // An operator's redelivery starts a new round: new request ids, a now-working
    // supplier delivers.
    drain_delivery_queue(&w.ctx).await;
    w.clock.advance_seconds(1);
    redeliver(&w.ctx, &order_id).await;
    assert_eq!(drain_delivery_queue(&w.ctx).await, 1);
    let a = w.request_ids(0);
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1]);
    let view = w.operator_view(&order_id).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["exception"], Value::Null);
    assert_eq!(view["top_up"]["requests"][2]["round"], 1);
}

#[tokio::test]
async fn a_timeout_where_the_supplier_did_top_up_is_asked_about_not_sent_again() {
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    w.fake(0).then(Behaviour::TimeOut);
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    assert_eq!(w.status(&order_id).await, "delivering");
    let view = w.operator_view(&order_id).await;
    assert_eq!(view["top_up"]["requests"][0]["status"], "unknown");
    // The next round asks first: it happened, so the order is delivered, sent once.
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    assert_eq!(w.fake(0).top_ups().len(), 1);
    assert!(
        w.fake(1).top_ups().is_empty(),
        "never moved on while unknown"
    );
}

#[tokio::test]
async fn a_timeout_where_the_supplier_never_got_it_is_sent_again_with_the_same_id() {
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    // The request never reaches the supplier (a connection error).
    w.fake(0).then(Behaviour::Fail);
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    assert!(w.fake(0).top_ups().is_empty());
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let top_ups = w.fake(0).top_ups();
    assert_eq!(top_ups.len(), 1);
    assert_eq!(top_ups[0].request_id, format!("{order_id}-00"));
    assert!(w.fake(1).top_ups().is_empty());
    let lines = history(&w.operator_view(&order_id).await);
    assert_eq!(
        lines,
        [
            ("send".into(), "sent".into()),
            ("answer".into(), "no_answer".into()),
            ("poll".into(), "not_found".into()),
            ("resend".into(), "success".into())
        ]
    );
}

#[tokio::test]
async fn an_outcome_unknown_past_the_deadline_goes_to_an_operator_and_a_late_success_still_delivers()
 {
    let w = world(&[
        ("a", json!({"unknown_outcome_deadline_s": 60})),
        ("b", json!({})),
    ])
    .await;
    w.fake(0)
        .answer_with(TopUpOutcome::Pending { supplier_ref: None });
    let (order_id, _) = w.paid_order().await;
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    w.clock.advance_seconds(59);
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Pending);
    w.clock.advance_seconds(1);
    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::Failed("supplier_outcome_unknown")
    );
    let view = w.operator_view(&order_id).await;
    assert_eq!(
        (view["status"].as_str(), view["exception"].as_str()),
        (Some("delivery_failed"), Some("supplier_outcome_unknown"))
    );
    assert!(
        w.fake(1).top_ups().is_empty(),
        "never moved to another supplier"
    );
    // The supplier did it after all: its callback delivers the order and clears the cause.
    let request_id = w.request_ids(0)[0].clone();
    let (status, _) = w
        .callback(
            0,
            json!({"request_id": request_id, "status": "success", "supplier_ref": "LATE"}),
            true,
        )
        .await;
    assert_eq!(status, 200);
    drain_delivery_queue(&w.ctx).await;
    let view = w.operator_view(&order_id).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["exception"], Value::Null);
    assert_eq!(w.fake(0).top_ups().len(), 1);
    assert!(w.fake(1).top_ups().is_empty());
}

#[tokio::test]
async fn the_circuit_opens_after_failures_skips_the_supplier_and_a_trial_closes_it() {
    let w = world(&[
        (
            "a",
            json!({"circuit": {"failures": 2, "window_s": 60, "cooldown_s": 30}}),
        ),
        ("b", json!({})),
    ])
    .await;
    // Two orders whose requests to a get no answer (and never arrive).
    w.fake(0).then(Behaviour::Fail);
    w.fake(0).then(Behaviour::Fail);
    let (first, _) = w.paid_order().await;
    let (second, _) = w.paid_order().await;
    assert_eq!(w.deliver(&first).await, DeliveryOutcome::Pending);
    assert_eq!(w.deliver(&second).await, DeliveryOutcome::Pending);
    let (_, supplier) = admin_get(&w.ctx, &format!("/admin/suppliers/{}", w.id(0))).await;
    assert_eq!(supplier["circuit"]["state"], "open", "{supplier}");
    assert_eq!(supplier["circuit"]["failures"], 2);
    assert_eq!(supplier["secret"], "<set>");
    // A new order skips a while its circuit is open: b takes it.
    let (third, _) = w.paid_order().await;
    assert_eq!(w.deliver(&third).await, DeliveryOutcome::Delivered);
    assert!(w.request_ids(0).is_empty());
    assert_eq!(w.request_ids(1).len(), 1);
    // Unknown outcomes are still asked about, open circuit or not; not sent again yet.
    assert_eq!(w.deliver(&first).await, DeliveryOutcome::Pending);
    assert!(w.request_ids(0).is_empty());
    // After the cooldown one trial goes (the first order's request, again with its id)
    // and its answer closes the circuit.
    w.clock.advance_seconds(31);
    let (_, supplier) = admin_get(&w.ctx, &format!("/admin/suppliers/{}", w.id(0))).await;
    assert_eq!(supplier["circuit"]["state"], "half_open");
    assert_eq!(w.deliver(&first).await, DeliveryOutcome::Delivered);
    let (_, supplier) = admin_get(&w.ctx, &format!("/admin/suppliers/{}", w.id(0))).await;
    assert_eq!(supplier["circuit"]["state"], "closed");
    assert_eq!(w.deliver(&second).await, DeliveryOutcome::Delivered);
    assert_eq!(
        w.request_ids(0),
        [format!("{first}-00"), format!("{second}-00")]
    );
}

#[tokio::test]
async fn parallel_workers_on_one_order_send_one_request() {
    let w = world(&[("a", json!({}))]).await;
    let (order_id, _) = w.paid_order().await;
    let mut workers = Vec::new();
    for _ in 0..10 {
        let (ctx, order_id) = (w.ctx.clone(), order_id.clone());
        workers.push(tokio::spawn(async move {
            delivery::deliver(&ctx, &order_id).await
        }));
    }
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.push(worker.await.expect("join"));
    }
    let delivered = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(DeliveryOutcome::Delivered)))
        .count();
    assert_eq!(delivered, 1, "{outcomes:?}");
    assert_eq!(w.fake(0).top_ups().len(), 1);
    assert_eq!(w.status(&order_id).await, "delivered");
}

#[tokio::test]
async fn orders_name_a_valid_recipient_and_need_an_enabled_supplier() {
    let w = world(&[("a", json!({}))]).await;
    let attempt = |body: Value| {
        let ctx = w.ctx.clone();
        async move { place(&ctx, &body).await }
    };
    let base = json!({"sku": w.sku, "quantity": 1, "buyer": {"email": "r@example.com"}});
    for (recipient, path) in [
        (None, "recipient.account"),
        (Some(json!({})), "recipient.account"),
        (
            Some(json!({"account": " 13800138000"})),
            "recipient.account",
        ),
        (Some(json!({"account": "1380013800"})), "recipient.account"),
        (
            Some(json!({"account": 13800138000_i64})),
            "recipient.account",
        ),
    ] {
        let mut body = base.clone();
        if let Some(recipient) = recipient {
            body["recipient"] = recipient;
        }
        let (status, answer) = attempt(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_recipient", "{answer}");
        assert_eq!(answer["error"]["path"], path, "{answer}");
    }
    // A card-key product takes no recipient.
    let keys = make_keys("recipient-ck", 1);
    let card_sku = product_with_keys(&w.ctx, "recipient-ck", 100, 1, &keys).await;
    let (status, answer) = attempt(json!({"sku": card_sku, "quantity": 1,
        "buyer": {"email": "r@example.com"}, "recipient": {"account": ACCOUNT}}))
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_recipient"))
    );
    // Stock is not counted for a top-up: the product shows none, and orders need no keys.
    let (_, product) = checkout(
        &w.ctx,
        request("GET", &format!("/products/{}", w.sku), &[], ""),
    )
    .await;
    assert_eq!(product["stock"]["available"], Value::Null);
    assert_eq!(product["delivery"]["account"]["label"], "Phone number");
    // With its only supplier disabled, nobody pays for what cannot be delivered.
    let (status, _) =
        put_supplier(&w.ctx, w.id(0), supplier_config(json!({"enabled": false}))).await;
    assert_eq!(status, 200);
    let fresh = context_with_suppliers(w.clock.clone(), &[]).await;
    let (status, answer) = place(&fresh, &top_up_body(&w.sku)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("product_unavailable")),
        "{answer}"
    );
}

#[tokio::test]
async fn suppliers_are_configured_with_a_sealed_secret_and_checked_fields() {
    let ctx = context_with_suppliers(Arc::new(FakeClock::at(real_now())), &[]).await;
    let id = unique_sku("cfg").replace('.', "-");
    let (status, created) = put_supplier(&ctx, &id, supplier_config(json!({}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret"], "<set>");
    assert!(!created.to_string().contains("supplier-secret-0123456789"));
    // A replace without the secret keeps it.
    let mut without = supplier_config(json!({"timeout_ms": 5000}));
    without.as_object_mut().expect("object").remove("secret");
    let (status, replaced) = put_supplier(&ctx, &id, without.clone()).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["timeout_ms"], 5000);
    let (status, listed) = admin_get(&ctx, "/admin/suppliers").await;
    assert_eq!(status, 200);
    assert!(
        listed["suppliers"]
            .as_array()
            .expect("list")
            .iter()
            .any(|s| s["supplier_id"] == id.as_str())
    );
    assert!(!listed.to_string().contains("supplier-secret-0123456789"));
    let stored = ctx
        .store
        .get_supplier(&id)
        .await
        .expect("read")
        .expect("stored");
    assert!(
        !String::from_utf8_lossy(&stored.secret.sealed).contains("supplier-secret"),
        "sealed, not stored in the clear"
    );
    // Creating without a secret, and bad fields: 400 with the field's path.
    let other = unique_sku("cfg2").replace('.', "-");
    let (status, answer) = put_supplier(&ctx, &other, without).await;
    assert_eq!(
        (status, answer["error"]["path"].as_str()),
        (400, Some("secret"))
    );
    for (patch, path) in [
        (json!({"kind": "soap"}), "kind"),
        (json!({"base_url": "ftp://x"}), "base_url"),
        (json!({"timeout_ms": 50}), "timeout_ms"),
        (
            json!({"circuit": {"failures": 0, "window_s": 1, "cooldown_s": 1}}),
            "circuit.failures",
        ),
    ] {
        let (status, answer) = put_supplier(&ctx, &other, supplier_config(patch)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_supplier_config");
        assert_eq!(answer["error"]["path"], path);
    }
    let (status, answer) = admin_get(&ctx, &format!("/admin/suppliers/{other}")).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("supplier_not_found"))
    );
}

#[tokio::test]
async fn a_worker_that_died_after_recording_a_request_is_followed_by_a_query_not_a_blind_send() {
    use kami_shared::store::{SupplierLogEntry, TopUpAttempt, TopUpStatus, topup_request_id};
    let w = world(&[("a", json!({})), ("b", json!({}))]).await;
    let (order_id, _) = w.paid_order().await;
    // What a worker leaves when it dies between recording the request and sending it.
    let now = w.clock.now();
    let attempt = TopUpAttempt {
        order_id: order_id.clone(),
        seq: 0,
        request_id: topup_request_id(&order_id, 0),
        supplier_id: w.id(0).to_owned(),
        round: 0,
        status: TopUpStatus::Sending,
        supplier_ref: None,
        reason: None,
        account: ACCOUNT.into(),
        sent_at: now,
        updated_at: now.to_rfc3339(),
        cost: None,
    };
    let line = SupplierLogEntry {
        at: now.to_rfc3339(),
        request_id: attempt.request_id.clone(),
        supplier_id: attempt.supplier_id.clone(),
        action: "send".into(),
        status: "sent".into(),
        supplier_ref: None,
        reason: None,
    };
    w.ctx
        .store
        .open_topup_attempt(&attempt, &line)
        .await
        .expect("record");
    // The next worker asks first; the supplier never saw it, so it is sent with its id.
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    assert_eq!(w.request_ids(0), std::slice::from_ref(&attempt.request_id));
    assert!(w.request_ids(1).is_empty());
    let lines = history(&w.operator_view(&order_id).await);
    assert_eq!(
        lines,
        [
            ("send".into(), "sent".into()),
            ("poll".into(), "not_found".into()),
            ("resend".into(), "success".into())
        ]
    );
}

/// The exception queue's entries for these orders (the table is shared with other tests).
async fn queue_entries(w: &World, query: &str, ours: &[&str]) -> (u16, Vec<Value>, Value) {
    let (status, page) = operations_get(&w.ctx, &format!("/admin/exceptions{query}")).await;
    let entries = page["exceptions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|e| ours.contains(&e["order_id"].as_str().unwrap_or_default()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    (status, entries, page)
}

#[tokio::test]
async fn orders_that_need_a_person_are_in_the_exception_queue_until_they_do_not() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "no".into(),
    });
    let (failed, _) = w.paid_order().await;
    assert_eq!(
        w.deliver(&failed).await,
        DeliveryOutcome::Failed("no_supplier_succeeded")
    );
    // Money that is not the order's amount: a payment exception.
    let (_, created) = place(&w.ctx, &top_up_body(&w.sku)).await;
    let mismatched = created["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(
        &w.ctx,
        &format!("evt_{mismatched}"),
        &mismatched,
        4999,
        "CNY",
    )
    .await;
    assert_eq!(status, 200);
    let ours = [failed.as_str(), mismatched.as_str()];

    let (status, entries, _) = queue_entries(&w, "?limit=100", &ours).await;
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let failed_entry = entries
        .iter()
        .find(|e| e["order_id"] == failed.as_str())
        .expect("failed");
    assert_eq!(failed_entry["cause"], "delivery_failed");
    assert_eq!(failed_entry["exception"], "no_supplier_succeeded");
    assert_eq!(failed_entry["status"], "delivery_failed");
    assert_eq!(failed_entry["age_seconds"], 0);
    let (_, by_cause, _) = queue_entries(&w, "?cause=payment_exception&limit=100", &ours).await;
    assert_eq!(by_cause.len(), 1);
    assert_eq!(by_cause[0]["order_id"], mismatched.as_str());
    let (_, by_detail, _) =
        queue_entries(&w, "?cause=no_supplier_succeeded&limit=100", &ours).await;
    assert_eq!(by_detail.len(), 1);
    assert_eq!(by_detail[0]["order_id"], failed.as_str());
    // Age: not yet a minute old; after the clock moves, it is.
    let (_, young, _) = queue_entries(&w, "?older_than=60&limit=100", &ours).await;
    assert!(young.is_empty(), "{young:?}");
    w.clock.advance_seconds(61);
    let (_, old, _) = queue_entries(&w, "?older_than=60&order=newest&limit=100", &ours).await;
    assert_eq!(old.len(), 2);
    assert!(old.iter().all(|e| e["age_seconds"].as_i64() >= Some(61)));
    // Pages of one, followed by their cursors, reach both orders once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let query = match &cursor {
            Some(c) => format!("?limit=1&cursor={c}"),
            None => "?limit=1".to_owned(),
        };
        let (status, entries, page) = queue_entries(&w, &query, &ours).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            entries
                .iter()
                .map(|e| e["order_id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    seen.sort();
    let mut expected: Vec<String> = ours.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    // Bad queries name the parameter.
    for (query, path) in [
        ("?cause=bored", "cause"),
        ("?limit=0", "limit"),
        ("?older_than=-1", "older_than"),
        ("?order=sideways", "order"),
        ("?cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("?colour=red", "colour"),
    ] {
        let (status, _, page) = queue_entries(&w, query, &ours).await;
        assert_eq!(status, 400, "{query}: {page}");
        assert_eq!(page["error"]["code"], "invalid_query");
        assert_eq!(page["error"]["path"], path);
    }
    // Delivered after all: out of the queue.
    w.fake(0).answer_with(TopUpOutcome::Success {
        supplier_ref: "OK".into(),
    });
    redeliver(&w.ctx, &failed).await;
    drain_delivery_queue(&w.ctx).await;
    assert_eq!(w.status(&failed).await, "delivered");
    let (_, left, _) = queue_entries(&w, "?limit=100", &ours).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["order_id"], mismatched.as_str());
}

#[tokio::test]
async fn a_budget_counts_a_top_up_product_like_stock() {
    let w = world(&[("a", json!({}))]).await;
    let sku = w.budget_product("budget", 2).await;
    let (_, product) = checkout(&w.ctx, request("GET", &format!("/products/{sku}"), &[], "")).await;
    assert_eq!(product["stock"]["available"], 2);
    let (first_status, first) = place(&w.ctx, &top_up_body(&sku)).await;
    let (second_status, _) = place(&w.ctx, &top_up_body(&sku)).await;
    let (third_status, third) = place(&w.ctx, &top_up_body(&sku)).await;
    assert_eq!((first_status, second_status), (201, 201));
    assert_eq!(
        (third_status, third["error"]["code"].as_str()),
        (409, Some("out_of_stock"))
    );
    let order_id = first["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(&w.ctx, &format!("evt_{order_id}"), &order_id, 5000, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let (_, admin_view) = admin_product(&w.ctx, &sku).await;
    assert_eq!(
        (
            &admin_view["stock"]["available"],
            &admin_view["stock"]["reserved"],
            &admin_view["stock"]["sold"]
        ),
        (&json!(0), &json!(1), &json!(1))
    );
    assert_eq!(admin_view["top_up"]["stock_budget"], 2);
    // A budget is a top-up's alone, and within its range.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for delivery in [
        json!({"type": "card_key", "stock_budget": 5}),
        json!({"type": "direct_topup", "supplier_product": "x", "suppliers": [w.id(0)], "stock_budget": 0,
               "account": {"label": "Phone", "pattern": "1"}}),
    ] {
        let body = json!({"sku": unique_sku("bad-budget"), "title": "t",
                          "price": {"amount": 1, "currency": "CNY"}, "delivery": delivery});
        let (status, answer) = admin(
            &w.ctx,
            request(
                "POST",
                "/admin/products",
                &[("authorization", &auth)],
                body.to_string(),
            ),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_delivery");
        assert_eq!(answer["error"]["path"], "delivery.stock_budget");
    }
}

/// `POST /admin/orders/{id}/resolve` as the admin.
async fn resolve(ctx: &Arc<Context>, order_id: &str, reason: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    operations(
        ctx,
        request(
            "POST",
            &format!("/admin/orders/{order_id}/resolve"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({ "reason": reason }).to_string(),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolving_an_exception_releases_its_stock_once_under_ten_concurrent_resolves() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "no".into(),
    });
    let sku = w.budget_product("resolve", 3).await;
    // One order whose delivery failed, one whose money was short: each holds a unit.
    let (_, failed) = place(&w.ctx, &top_up_body(&sku)).await;
    let failed = failed["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(&w.ctx, &format!("evt_{failed}"), &failed, 5000, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(
        w.deliver(&failed).await,
        DeliveryOutcome::Failed("no_supplier_succeeded")
    );
    let (_, short) = place(&w.ctx, &top_up_body(&sku)).await;
    let short = short["order_id"].as_str().expect("id").to_owned();
    let (status, _) = pay(&w.ctx, &format!("evt_{short}"), &short, 4999, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(w.status(&short).await, "payment_exception");
    let stock = |view: &Value| {
        (
            view["stock"]["available"].as_i64(),
            view["stock"]["reserved"].as_i64(),
            view["stock"]["sold"].as_i64(),
        )
    };
    let (_, before) = admin_product(&w.ctx, &sku).await;
    assert_eq!(stock(&before), (Some(1), Some(2), Some(0)));

    // Bad requests change nothing.
    let (status, body) = resolve(&w.ctx, &failed, " ").await;
    assert_eq!(
        (status, body["error"]["path"].as_str()),
        (400, Some("reason"))
    );
    assert_eq!(body["error"]["code"], "invalid_reason");

    // Ten identical resolves at once, for each order: one transition each.
    for order_id in [&failed, &short] {
        let resolves: Vec<_> = (0..10)
            .map(|_| {
                let (ctx, order_id) = (w.ctx.clone(), order_id.clone());
                tokio::spawn(async move {
                    resolve(&ctx, &order_id, "refunded by bank transfer, ticket 4411").await
                })
            })
            .collect();
        for task in resolves {
            let (status, body) = task.await.expect("task");
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "resolved");
        }
        let view = w.operator_view(order_id).await;
        let resolves: Vec<&Value> = view["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["cause"] == "resolve")
            .collect();
        assert_eq!(resolves.len(), 1, "{view}");
        assert_eq!(resolves[0]["by"], "admin");
        assert_eq!(
            resolves[0]["reason"],
            "refunded by bank transfer, ticket 4411"
        );
        assert_eq!(view["status"], "resolved");
    }
    let (_, after) = admin_product(&w.ctx, &sku).await;
    assert_eq!(stock(&after), (Some(3), Some(0), Some(0)));
    let ours = [failed.as_str(), short.as_str()];
    let (_, entries, _) = queue_entries(&w, "?limit=100", &ours).await;
    assert!(entries.is_empty(), "{entries:?}");

    // Resolved is final: another resolve answers the same; a delivered order has
    // nothing to resolve.
    let (status, _) = resolve(&w.ctx, &failed, "again").await;
    assert_eq!(status, 200);
    w.fake(0).answer_with(TopUpOutcome::Success {
        supplier_ref: "ok".into(),
    });
    let (delivered, _) = w.paid_order().await;
    assert_eq!(w.deliver(&delivered).await, DeliveryOutcome::Delivered);
    let (status, body) = resolve(&w.ctx, &delivered, "nothing to do").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("illegal_transition"))
    );

    // The audit trail: one record per order, by subject and by actor, newest first.
    let (status, trail) = operations_get(&w.ctx, &format!("/admin/audit?order={failed}")).await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!(entries[0]["action"], "order.resolve");
    assert_eq!(entries[0]["actor"], "admin");
    assert_eq!(entries[0]["before"], json!({"status": "delivery_failed"}));
    assert_eq!(entries[0]["after"], json!({"status": "resolved"}));
    let (status, by_actor) = operations_get(&w.ctx, "/admin/audit?actor=admin&limit=1").await;
    assert_eq!(status, 200, "{by_actor}");
    assert_eq!(by_actor["entries"].as_array().map(Vec::len), Some(1));
    let cursor = by_actor["next_cursor"]
        .as_str()
        .expect("more than one entry");
    let (status, next) = operations_get(
        &w.ctx,
        &format!("/admin/audit?actor=admin&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert!(next["entries"][0]["audit_id"].as_str() < by_actor["entries"][0]["audit_id"].as_str());
    let (status, product_trail) =
        operations_get(&w.ctx, &format!("/admin/audit?product={sku}")).await;
    assert_eq!(status, 200);
    assert_eq!(product_trail["entries"][0]["action"], "product.create");
    let (status, bad) = operations_get(&w.ctx, "/admin/audit?order=a&actor=b").await;
    assert_eq!(
        (status, bad["error"]["path"].as_str()),
        (400, Some("actor"))
    );
}

/// GIVEN a top-up product with a supplier cost, sold through a supplier that fails and
/// one that succeeds (once at once, once after a pending answer, its success called
/// back twice) WHEN the period is settled, twice THEN the succeeding supplier's statement
/// owes exactly its two top-ups at cost, the failing one is owed nothing, and the
/// payables list and CSV show each top-up once.
#[tokio::test]
async fn suppliers_are_owed_their_successful_top_ups_at_cost_once() {
    use kami_shared::app::settlement::{self, RunRequest, period_for};
    let w = world(&[("fails", json!({})), ("tops", json!({}))]).await;
    let sku = unique_sku("costed");
    create_product(
        &w.ctx,
        json!({"sku": sku, "title": "Mobile 50 (costed)", "price": {"amount": 5000, "currency": "CNY"},
               "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50",
                            "suppliers": [w.id(0), w.id(1)],
                            "supplier_cost": {"amount": 4875, "currency": "CNY"},
                            "account": {"label": "Phone number", "pattern": "^1[3-9][0-9]{9}$"}}}),
    )
    .await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "no stock upstream".into(),
    });
    let mut orders = Vec::new();
    for _ in 0..2 {
        let (status, created) = place(&w.ctx, &top_up_body(&sku)).await;
        assert_eq!(status, 201, "{created}");
        let order_id = created["order_id"].as_str().expect("id").to_owned();
        let (status, paid) = pay(&w.ctx, &format!("evt_{order_id}"), &order_id, 5000, "CNY").await;
        assert_eq!(status, 200, "{paid}");
        orders.push(order_id);
    }
    assert_eq!(w.deliver(&orders[0]).await, DeliveryOutcome::Delivered);
    w.fake(1)
        .answer_with(TopUpOutcome::Pending { supplier_ref: None });
    assert_eq!(w.deliver(&orders[1]).await, DeliveryOutcome::Pending);
    let pending = w.request_ids(1)[1].clone();
    let success = json!({"request_id": pending, "status": "success", "supplier_ref": "SUP-2", "reason": null});
    for _ in 0..2 {
        assert_eq!(w.callback(1, success.clone(), true).await.0, 200);
    }
    drain_delivery_queue(&w.ctx).await;
    assert_eq!(w.status(&orders[1]).await, "delivered");

    // The day after the top-ups: their period is over.
    let delivered_at = w.clock.now();
    w.clock.advance_seconds(86_400);
    let period = period_for(None, w.clock.now(), "Asia/Shanghai").expect("period");
    assert!(period.start <= delivered_at && delivered_at < period.end);
    let run_request = RunRequest {
        period: Some(period.label.clone()),
        distributors: Some(Vec::new()),
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let report = settlement::run(&w.ctx, &run_request).await.expect("run");
        assert!(
            report.mismatches.iter().all(|m| !m.contains(w.id(1))),
            "{report:?}"
        );
        let (status, found) = admin_get(
            &w.ctx,
            &format!("/admin/settlements/{}/suppliers/{}", period.label, w.id(1)),
        )
        .await;
        assert_eq!(status, 200, "{found}");
        runs.push(found);
    }
    assert_eq!(
        runs[0]["statements"], runs[1]["statements"],
        "a second run changes nothing"
    );
    let owed = &runs[0];
    assert_eq!(
        owed["statements"]
            .as_array()
            .expect("statements")
            .iter()
            .map(|s| (
                s["currency"].clone(),
                s["lines"].clone(),
                s["payable"].clone()
            ))
            .collect::<Vec<_>>(),
        vec![(json!("CNY"), json!(2), json!(9750))]
    );
    let mut paid_for: Vec<&str> = owed["payables"]
        .as_array()
        .expect("payables")
        .iter()
        .map(|p| p["order_id"].as_str().expect("order"))
        .collect();
    paid_for.sort_unstable();
    let mut expected: Vec<&str> = orders.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(
        paid_for, expected,
        "each top-up once, the doubled callback too"
    );
    let (status, failing) = admin_get(
        &w.ctx,
        &format!("/admin/settlements/{}/suppliers/{}", period.label, w.id(0)),
    )
    .await;
    assert_eq!(status, 200, "{failing}");
    assert_eq!(
        (&failing["statements"], &failing["payables"]),
        (&json!([]), &json!([])),
        "a supplier that failed is owed nothing"
    );

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, csv) = admin_raw(
        &w.ctx,
        request(
            "GET",
            &format!("/admin/settlements/{}/suppliers/{}", period.label, w.id(1)),
            &[("authorization", auth.as_str()), ("accept", "text/csv")],
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("supplier_id,period,order_id"));
    assert!(
        rows[1..].iter().all(|row| row.contains(",4875,CNY,")),
        "{csv}"
    );
    let (status, missing) = admin_get(
        &w.ctx,
        &format!(
            "/admin/settlements/{}/suppliers/no-such-supplier",
            period.label
        ),
    )
    .await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("supplier_not_found"))
    );
}

// ---------- bundles (docs/bundles.md): a top-up as one part among others ----------

/// Products of every kind the bundle tests put together, sold alongside `w.sku` (the
/// top-up): (card-key sku with `keys` keys, license sku, membership sku).
async fn bundle_parts(w: &World, keys: usize) -> (String, String, String) {
    let card = product_with_keys(&w.ctx, "bundle-card", 1000, 10, &make_keys("bk", keys)).await;
    let license = unique_sku("bundle-lic");
    create_product(
        &w.ctx,
        json!({"sku": license, "title": "Editor Pro", "price": {"amount": 3000, "currency": "CNY"},
               "delivery": {"type": "license_key", "activation_limit": 2}}),
    )
    .await;
    let membership = unique_sku("bundle-vip");
    create_product(
        &w.ctx,
        json!({"sku": membership, "title": "VIP month", "price": {"amount": 2000, "currency": "CNY"},
               "delivery": {"type": "membership", "entitlement": unique_sku("vip"), "period_days": 30}}),
    )
    .await;
    (card, license, membership)
}

/// A bundle of `items` (sku, quantity) with `policy`, priced 9900.
async fn bundle(w: &World, items: &[(&str, u32)], policy: &str) -> String {
    let sku = unique_sku("bundle");
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    create_product(
        &w.ctx,
        json!({"sku": sku, "title": "Gift pack", "price": {"amount": 9900, "currency": "CNY"},
               "delivery": {"type": "bundle", "items": items, "on_partial_failure": policy}}),
    )
    .await;
    sku
}

/// A paid order of one `sku` bundle for `ACCOUNT` and account `account`: (id, token).
async fn paid_bundle(w: &World, sku: &str, account: &str) -> (String, String) {
    let mut body = top_up_body(sku);
    body["buyer"]["account_id"] = json!(account);
    let (status, created) = place(&w.ctx, &body).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();
    let (status, paid) = pay(&w.ctx, &format!("evt_{order_id}"), &order_id, 9900, "CNY").await;
    assert_eq!(status, 200, "{paid}");
    (
        order_id,
        created["access_token"].as_str().expect("token").to_owned(),
    )
}

/// The (part, type) of each delivery an order view lists.
fn parts_delivered(view: &Value) -> Vec<(&str, &str)> {
    view["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| (d["part"].as_str().unwrap(), d["type"].as_str().unwrap()))
        .collect()
}

fn stock_of(product: &Value) -> (i64, i64, i64) {
    let stock = &product["stock"];
    (
        stock["available"].as_i64().expect("available"),
        stock["reserved"].as_i64().expect("reserved"),
        stock["sold"].as_i64().expect("sold"),
    )
}

#[tokio::test]
async fn a_bundle_whose_top_up_fails_keeps_the_rest_with_keep() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "account frozen".into(),
    });
    let (card, license, _) = bundle_parts(&w, 3).await;
    let sku = bundle(&w, &[(&card, 1), (&w.sku, 1), (&license, 1)], "keep").await;
    let (order_id, token) = paid_bundle(&w, &sku, "acct-keep").await;

    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::PartiallyDelivered("no_supplier_succeeded")
    );
    let (status, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "partially_delivered", "{view}");
    assert_eq!(view["failed_part"], w.sku.as_str());
    assert_eq!(view["exception"], "no_supplier_succeeded");
    let parts = parts_delivered(&view);
    assert_eq!(
        parts,
        [
            (card.as_str(), "card_key"),
            (license.as_str(), "license_key")
        ]
    );
    // The operator sees the failed part, its supplier requests, and what was delivered
    // by id, each unit with its own type.
    let operator = w.operator_view(&order_id).await;
    assert_eq!(operator["failed_part"], w.sku.as_str(), "{operator}");
    assert_eq!(
        operator["top_up"]["requests"][0]["status"], "failed",
        "{operator}"
    );
    assert_eq!(
        operator["generated"][0]["type"], "license_key",
        "{operator}"
    );
    assert_eq!(operator["allocated_keys"].as_array().map(Vec::len), Some(1));
    // The card key part sold its unit at once; nothing stays reserved.
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (2, 0, 1));
    // The operator finds it in the exception queue, by its cause.
    let (status, queue) = operations_get(
        &w.ctx,
        "/admin/exceptions?cause=partially_delivered&order=newest&limit=100",
    )
    .await;
    assert_eq!(status, 200, "{queue}");
    assert!(
        queue["exceptions"]
            .as_array()
            .is_some_and(|all| all.iter().any(|e| e["order_id"] == order_id.as_str())),
        "{queue}"
    );
    // Duplicate messages change nothing; one supplier request was ever sent.
    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::Skipped(Some(
            kami_shared::domain::order::OrderStatus::PartiallyDelivered
        ))
    );
    assert_eq!(w.fake(0).top_ups().len(), 1);
    // Resolving it settles nothing twice: the stock stays as it is.
    let (status, body) = resolve(&w.ctx, &order_id, "top-up made by hand, ticket 12").await;
    assert_eq!(status, 200, "{body}");
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (2, 0, 1));
}

#[tokio::test]
async fn a_bundle_whose_top_up_fails_takes_back_what_it_gave_with_reverse() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "account frozen".into(),
    });
    let (card, license, membership) = bundle_parts(&w, 3).await;
    // Listed first, the card key is still delivered last: never handed out here.
    let sku = bundle(
        &w,
        &[(&card, 1), (&license, 1), (&membership, 1), (&w.sku, 1)],
        "reverse",
    )
    .await;
    let (order_id, token) = paid_bundle(&w, &sku, "acct-reverse").await;

    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::Failed("no_supplier_succeeded")
    );
    let (_, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivery_failed", "{view}");
    assert_eq!(view["failed_part"], w.sku.as_str());
    assert_eq!(view["deliveries"], json!([]));
    let stored = stored_order(&w.ctx, &order_id).await;
    let license_slot = stored
        .deliveries
        .iter()
        .find_map(|record| record.license())
        .expect("the license part was delivered before the top-up");
    let grant = stored
        .deliveries
        .iter()
        .find_map(|record| record.grant())
        .expect("the membership part was delivered before the top-up");
    assert!(stored.deliveries.iter().all(|r| r.card_key().is_none()));
    // Taken back: the key is voided, the membership loses the order's period.
    assert_eq!(
        w.license_status(&license_slot.fingerprint).await,
        kami_shared::domain::license::LicenseStatus::Voided
    );
    let entitlement = w
        .ctx
        .store
        .entitlement(&grant.entitlement_id)
        .await
        .expect("read")
        .expect("entitlement");
    assert!(
        entitlement.revoked_at.is_some()
            || entitlement.ends_at.is_some_and(|end| end <= w.clock.now()),
        "{entitlement:?}"
    );
    // A duplicate message neither sends again nor delivers the card key.
    enqueue_again(&w.ctx, &order_id, 2).await;
    drain_delivery_queue(&w.ctx).await;
    assert_eq!(w.status(&order_id).await, "delivery_failed");
    assert_eq!(w.fake(0).top_ups().len(), 1);
    assert!(
        stored_order(&w.ctx, &order_id)
            .await
            .deliveries
            .iter()
            .all(|r| r.card_key().is_none())
    );
    // The card key's unit is held until an operator settles the order, then goes back.
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (2, 1, 0));
    let (status, body) = resolve(&w.ctx, &order_id, "refunded by bank transfer").await;
    assert_eq!(status, 200, "{body}");
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_has_what_its_parts_allow_and_is_never_oversold() {
    let w = world(&[("a", json!({}))]).await;
    let budget = w.budget_product("bundle-budget", 4).await;
    // Two keys per bundle of 5 keys, one budgeted top-up of 4: two bundles at most.
    let (card, _, _) = bundle_parts(&w, 5).await;
    let sku = bundle(&w, &[(&card, 2), (&budget, 1)], "keep").await;
    let (status, product) =
        checkout(&w.ctx, request("GET", &format!("/products/{sku}"), &[], "")).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["stock"]["available"], 2);
    assert_eq!(product["delivery"]["type"], "bundle");

    let answers: Vec<(u16, Value)> = {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let ctx = w.ctx.clone();
                let body = top_up_body(&sku);
                tokio::spawn(async move { place(&ctx, &body).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("task"));
        }
        answers
    };
    let made: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(made.len(), 2, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s != 201)
            .all(|(s, v)| *s == 409 && v["error"]["code"] == "out_of_stock"),
        "{answers:?}"
    );
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (1, 4, 0));

    // One is paid and delivered whole: two keys and the top-up, each naming its part.
    let order_id = made[0]["order_id"].as_str().expect("id").to_owned();
    let token = made[0]["access_token"].as_str().expect("token").to_owned();
    let (status, _) = pay(&w.ctx, &format!("evt_{order_id}"), &order_id, 9900, "CNY").await;
    assert_eq!(status, 200);
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let (_, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(view["status"], "delivered", "{view}");
    let parts = parts_delivered(&view);
    assert_eq!(
        parts,
        [
            (card.as_str(), "card_key"),
            (card.as_str(), "card_key"),
            (budget.as_str(), "direct_topup")
        ]
    );
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (1, 2, 2));
    let (_, budget_view) = admin_product(&w.ctx, &budget).await;
    assert_eq!(stock_of(&budget_view), (2, 1, 1));
}

#[tokio::test]
async fn a_bundle_refuses_parts_it_cannot_hold() {
    let w = world(&[("a", json!({}))]).await;
    let (card, _, membership) = bundle_parts(&w, 0).await;
    let (_, _, other_membership) = bundle_parts(&w, 0).await;
    let inner = bundle(&w, &[(&card, 1)], "keep").await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (items, path) in [
        (
            json!([{"sku": inner, "quantity": 1}]),
            "delivery.items[0].sku",
        ),
        (
            json!([{"sku": "no-such-product", "quantity": 1}]),
            "delivery.items[0].sku",
        ),
        (
            json!([{"sku": card, "quantity": 1}, {"sku": card, "quantity": 2}]),
            "delivery.items[1].sku",
        ),
        (
            json!([{"sku": card, "quantity": 11}]),
            "delivery.items[0].quantity",
        ),
        (json!([]), "delivery.items"),
        (
            json!([{"sku": membership, "quantity": 1}, {"sku": other_membership, "quantity": 1}]),
            "delivery.items[1].sku",
        ),
        (
            json!([{"sku": w.sku, "quantity": 1}, {"sku": w.budget_product("b", 1).await, "quantity": 1}]),
            "delivery.items[1].sku",
        ),
    ] {
        let (status, answer) = admin(
            &w.ctx,
            request(
                "POST",
                "/admin/products",
                &[("authorization", &auth)],
                json!({"sku": unique_sku("bad-bundle"), "title": "Bad", "price": {"amount": 100, "currency": "CNY"},
                       "delivery": {"type": "bundle", "items": items, "on_partial_failure": "keep"}})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_delivery", "{answer}");
        assert_eq!(answer["error"]["path"], path, "{answer}");
    }
}

#[tokio::test]
async fn an_expired_bundle_gives_back_every_part_and_a_late_payment_takes_them_again() {
    let w = world(&[("a", json!({}))]).await;
    let budget = w.budget_product("bundle-late", 3).await;
    let (card, _, _) = bundle_parts(&w, 2).await;
    let sku = bundle(&w, &[(&card, 1), (&budget, 1)], "keep").await;
    let (status, created) = place(&w.ctx, &top_up_body(&sku)).await;
    assert_eq!(status, 201, "{created}");
    let order_id = created["order_id"].as_str().expect("id").to_owned();
    let token = created["access_token"].as_str().expect("token").to_owned();
    let held = |available, reserved| (available, reserved, 0);
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), held(1, 1));

    // Unpaid past its deadline: the sweep expires it and both parts' units go back.
    w.clock.advance_seconds(2 * 3_600);
    kami_shared::app::sweep::sweep(&w.ctx, w.clock.now())
        .await
        .expect("sweep");
    assert_eq!(w.status(&order_id).await, "expired");
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), held(2, 0));
    let (_, budget_view) = admin_product(&w.ctx, &budget).await;
    assert_eq!(stock_of(&budget_view), held(3, 0));

    // The buyer pays late: each part's units are taken again where they were.
    let payload = checkout_completed(&format!("evt_{order_id}"), &order_id, 9900, "CNY");
    let signature = stripe_signature(STRIPE_SECRET, w.clock.now().unix_seconds(), &payload);
    let (status, answer) = send_webhook(&w.ctx, &signature, payload).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(w.status(&order_id).await, "paid");
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), held(1, 1));
    assert_eq!(w.deliver(&order_id).await, DeliveryOutcome::Delivered);
    let (_, view) = view_order(&w.ctx, &order_id, &token).await;
    assert_eq!(
        parts_delivered(&view),
        [
            (card.as_str(), "card_key"),
            (budget.as_str(), "direct_topup")
        ]
    );
    let (_, budget_view) = admin_product(&w.ctx, &budget).await;
    assert_eq!(stock_of(&budget_view), (2, 0, 1));
}

#[tokio::test]
async fn a_partly_delivered_bundle_refunded_in_full_takes_back_what_it_delivered() {
    let w = world(&[("a", json!({}))]).await;
    w.fake(0).answer_with(TopUpOutcome::Failed {
        reason: "account frozen".into(),
    });
    let (card, license, _) = bundle_parts(&w, 1).await;
    let sku = bundle(&w, &[(&card, 1), (&w.sku, 1), (&license, 1)], "keep").await;
    let channel_id = format!(
        "bun-{}",
        &kami_shared::domain::time::new_id()[16..].to_ascii_lowercase()
    );
    let channel = unreachable_stripe_channel(&w.ctx, &channel_id).await;
    let key = unique_sku("bundle-refund-key");
    let order_id =
        paid_through_channel(&w.ctx, &w.clock, &channel, &key, top_up_body(&sku), 9900).await;
    assert_eq!(
        w.deliver(&order_id).await,
        DeliveryOutcome::PartiallyDelivered("no_supplier_succeeded")
    );

    refunded(&w.ctx, &w.clock, &order_id, 9900).await;
    assert_eq!(w.status(&order_id).await, "refunded");
    let stored = stored_order(&w.ctx, &order_id).await;
    let license_slot = stored
        .deliveries
        .iter()
        .find_map(|record| record.license())
        .expect("the license part was delivered");
    assert_eq!(
        w.license_status(&license_slot.fingerprint).await,
        kami_shared::domain::license::LicenseStatus::Refunded
    );
    // The card key stays sold: the buyer has seen it.
    let (_, card_view) = admin_product(&w.ctx, &card).await;
    assert_eq!(stock_of(&card_view), (0, 0, 1));
}
