//! Provider bill reconciliation against moto and the payment sandbox (its Stripe, WeChat
//! Pay and Alipay): buyers pay through a channel, Kami records the payments and refunds in the channel's
//! book, and the sandbox's bill is compared with it. A clean bill yields nothing; each
//! difference the sandbox can make is found and filed once; running again files nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kami_shared::Context;
use kami_shared::adapters::clock::SystemClock;
use kami_shared::adapters::http_client::HttpClient;
use kami_shared::app::bills::reconcile_channel;
use kami_shared::app::delivery::Budget;
use kami_shared::app::reconcile::reconcile;
use kami_shared::app::settlement::{Period, period_for};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::store::{
    AttemptStatus, ExceptionEntry, ExceptionFilter, MismatchKind, MismatchRef,
    RECONCILE_AFTER_SECONDS, RECONCILIATION_MISMATCH,
};
use kami_tests::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

/// The sandbox of one test (its own state, so its Stripe account's bill is this test's):
/// stopped when dropped.
struct Sandbox {
    url: String,
    child: Child,
    state: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Closing its stdin stops the shell, which stops the sandbox.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn start_sandbox() -> Sandbox {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let state = std::env::temp_dir().join(format!("kami-bills-sandbox-{port}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" -m kami_local.sandbox --port "$1" --state "$2" >"$2/log" 2>&1 & child=$!; read _ignored; kill $child"#)
        .arg(repo_root().join(".kami/venv/bin/python"))
        .arg(port.to_string())
        .arg(&state)
        .current_dir(repo_root().join("infra"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the sandbox");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sandbox did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sandbox {
        url: format!("http://127.0.0.1:{port}"),
        child,
        state,
    }
}

impl Sandbox {
    /// A control route of the sandbox: GET without a body, else POST of JSON.
    async fn control(&self, route: &str, body: Option<Value>) -> Value {
        let client = HttpClient::new().expect("client");
        let (method, headers) = match body {
            Some(_) => (Method::POST, vec![("content-type", "application/json")]),
            None => (Method::GET, Vec::new()),
        };
        let answer = client
            .send(
                "sandbox",
                method,
                &format!("{}/_sandbox/{route}", self.url),
                &headers,
                body.map(|b| b.to_string().into_bytes()),
                Duration::from_secs(30),
            )
            .await
            .expect("the sandbox answers");
        let json: Value = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(answer.status, 200, "{route}: {json}");
        json
    }

    async fn post(&self, route: &str, body: Value) -> Value {
        self.control(route, Some(body)).await
    }

    /// The sandbox's channel of `provider` (a `PUT /admin/payment-channels` body).
    async fn channel(&self, provider: &str) -> Value {
        let name = match provider {
            "wechatpay" => "wechat-sandbox",
            "alipay" => "alipay-sandbox",
            _ => "stripe-sandbox",
        };
        self.control("channels", None).await[name].clone()
    }
}

struct Shop {
    ctx: Arc<Context>,
    provider: &'static str,
    channel: String,
    sku: String,
    run: String,
}

async fn shop(sandbox: &Sandbox, provider: &'static str) -> Shop {
    let ctx = context_on_with(
        Arc::new(SystemClock),
        &[("PUBLIC_API_URL", "https://kami.example.test")],
    )
    .await;
    let run = new_id().to_ascii_lowercase();
    let channel = format!("bills-{run}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, answer) = admin(
        &ctx,
        request(
            "PUT",
            &format!("/admin/payment-channels/{channel}"),
            &[("authorization", &auth)],
            sandbox.channel(provider).await.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let sku = product_with_keys(&ctx, "bills", 990, 5, &make_keys("BILL", 10)).await;
    Shop {
        ctx,
        provider,
        channel,
        sku,
        run,
    }
}

/// A paid order: (order id, Kami's payment id). The sandbox takes the money and loses
/// the notification; Kami's payment reconciler finds it (a channel's payment either way).
async fn paid_order(shop: &Shop, sandbox: &Sandbox, n: usize) -> (String, String) {
    let (_, order) = order(&shop.ctx, &shop.sku, 1, &format!("bills-{}-{n}", shop.run)).await;
    let order_id = order["order_id"].as_str().expect("order id").to_owned();
    let token = order["access_token"].as_str().expect("token");
    let key = format!("bills-pay-{}-{n}", shop.run);
    let (status, payment) = open_payment(&shop.ctx, &order_id, token, &key, &shop.channel).await;
    assert_eq!(status, 201, "{payment}");
    let payment_id = payment["payment_id"].as_str().expect("id").to_owned();
    // Lost: the URL is only where it would have gone. Alipay's trade exists once the
    // buyer opens the pay page: the sandbox opens it first.
    let mut pay = json!({"provider": shop.provider, "payment_id": payment_id, "lose": true,
        "notify_url": "http://127.0.0.1:9/lost"});
    if shop.provider == "alipay" {
        pay["pay_url"] = payment["action"]["url"].clone();
    }
    sandbox.post("pay", pay).await;
    // Another test's run may recover it first, or ask before the sandbox took the money
    // and put it off (until its own `now` + the reconciler's delay): each next run looks
    // past that horizon. Either way it is paid once this returns.
    let now = Timestamp::now();
    let mut status = None;
    for round in 0..3 {
        let at = now.plus_seconds(120 + round * (RECONCILE_AFTER_SECONDS + 120));
        reconcile(&shop.ctx, at, &Budget::unlimited())
            .await
            .expect("reconcile");
        let attempt = shop
            .ctx
            .store
            .get_attempt(&order_id, &payment_id)
            .await
            .expect("read")
            .expect("attempt");
        status = Some(attempt.status);
        if attempt.status == AttemptStatus::Paid {
            break;
        }
    }
    assert_eq!(status, Some(AttemptStatus::Paid));
    (order_id, payment_id)
}

async fn refund(shop: &Shop, order_id: &str, amount: i64) -> String {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, answer) = operations(
        &shop.ctx,
        request(
            "POST",
            &format!("/admin/orders/{order_id}/refunds"),
            &[
                ("authorization", &auth),
                ("idempotency-key", &format!("bills-refund-{order_id}")),
            ],
            json!({"amount": {"amount": amount, "currency": "CNY"}, "reason": "test"}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        (status, &answer["status"]),
        (201, &json!("succeeded")),
        "{answer}"
    );
    answer["refund_id"].as_str().expect("refund id").to_owned()
}

/// Stripe's bill is listed by time: ten minutes either side of now, named for this test
/// alone. WeChat Pay and Alipay bill by day: today in China.
fn period(shop: &Shop) -> Period {
    let now = Timestamp::now();
    match shop.provider {
        // The day before tomorrow's.
        "wechatpay" | "alipay" => {
            period_for(None, now.plus_seconds(24 * 3600), "Asia/Shanghai").expect("period")
        }
        _ => Period {
            label: format!("test-{}", shop.run),
            start: now.plus_seconds(-600),
            end: now.plus_seconds(600),
        },
    }
}

/// GIVEN two payments and a refund through a Stripe channel, billed as they happened
/// WHEN the channel is reconciled, twice THEN every line matches, nothing is filed, and
/// the report is listed for the period.
#[tokio::test]
async fn a_clean_bill_yields_no_mismatch() {
    let sandbox = start_sandbox();
    let shop = shop(&sandbox, "stripe").await;
    let (first, _) = paid_order(&shop, &sandbox, 1).await;
    paid_order(&shop, &sandbox, 2).await;
    refund(&shop, &first, 300).await;
    let period = period(&shop);
    for _ in 0..2 {
        let report = reconcile_channel(&shop.ctx, &shop.channel, &period)
            .await
            .expect("reconcile");
        assert_eq!(
            (report.bill_lines, report.kami_lines, report.matched),
            (3, 3, 3),
            "{report:?}"
        );
        assert!(report.clean() && report.filed == 0, "{report:?}");
    }
    let reports = shop
        .ctx
        .store
        .reconciliation_reports(&period.label)
        .await
        .expect("reports");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].channel_id, shop.channel);
    assert!(
        shop.ctx
            .store
            .reconciliation_mismatches(&period.label)
            .await
            .expect("mismatches")
            .is_empty()
    );
}

/// GIVEN a Stripe bill the sandbox was told to change (one payment's amount amended,
/// one payment dropped, a payment Kami never saw added, a refund shown pending that Kami
/// has as succeeded) WHEN reconciled THEN each difference is found with both sides and
/// filed once in the exception queue; a second run files nothing new.
#[tokio::test]
async fn each_mismatch_the_sandbox_makes_is_found_and_filed_once() {
    each_mismatch_is_found_and_filed_once("stripe", Some("pending")).await;
}

/// As above, with WeChat Pay's trade bill file (a day in China time).
#[tokio::test]
async fn each_mismatch_in_a_wechat_pay_bill_is_found_and_filed_once() {
    each_mismatch_is_found_and_filed_once("wechatpay", Some("PROCESSING")).await;
}

/// As above, with Alipay's bill (a zip of GBK CSV files, a day in China time). Its bill
/// lists only money that moved, so a refund never shows another status there.
#[tokio::test]
async fn each_mismatch_in_an_alipay_bill_is_found_and_filed_once() {
    each_mismatch_is_found_and_filed_once("alipay", None).await;
}

/// `pending`: how the provider's bill shows a refund in flight, if it shows one at all.
async fn each_mismatch_is_found_and_filed_once(provider: &'static str, pending: Option<&str>) {
    let sandbox = start_sandbox();
    // Refunds settle at once (WeChat Pay's default is to hold them PROCESSING).
    sandbox
        .post("settings", json!({"wechatpay_refund_status": "SUCCESS"}))
        .await;
    let shop = shop(&sandbox, provider).await;
    let (amended, amended_payment) = paid_order(&shop, &sandbox, 1).await;
    let (dropped, dropped_payment) = paid_order(&shop, &sandbox, 2).await;
    let (refunded, _) = paid_order(&shop, &sandbox, 3).await;
    let refund_id = refund(&shop, &refunded, 400).await;
    let edit = |body: Value| {
        let mut body = body;
        body["provider"] = json!(provider);
        body
    };
    sandbox
        .post(
            "bill",
            edit(json!({"action": "amend", "id": amended_payment, "amount": 980})),
        )
        .await;
    sandbox
        .post(
            "bill",
            edit(json!({"action": "drop", "id": dropped_payment})),
        )
        .await;
    let added = sandbox
        .post(
            "bill",
            edit(json!({"action": "add", "kind": "payment", "amount": 1234})),
        )
        .await;
    if let Some(pending) = pending {
        sandbox
            .post(
                "bill",
                edit(json!({"action": "amend", "id": refund_id, "status": pending})),
            )
            .await;
    }
    let period = period(&shop);

    let report = reconcile_channel(&shop.ctx, &shop.channel, &period)
        .await
        .expect("reconcile");
    let found: BTreeSet<(&str, Option<String>)> = report
        .mismatches
        .iter()
        .map(|m| (m.kind.as_str(), m.kami.as_ref().map(|k| k.order_id.clone())))
        .collect();
    let mut expected = BTreeSet::from([
        ("amount_differs", Some(amended.clone())),
        ("missing_in_bill", Some(dropped.clone())),
        ("missing_in_kami", None),
    ]);
    if pending.is_some() {
        expected.insert(("status_differs", Some(refunded.clone())));
    }
    assert_eq!(found, expected, "{report:?}");
    // The refunded order's payment matches, and its refund too where it was left alone.
    let kinds = expected.len();
    assert_eq!(
        (report.filed, report.matched),
        (kinds, 5 - kinds),
        "{report:?}"
    );
    let amount = report
        .mismatches
        .iter()
        .find(|m| m.kind == MismatchKind::AmountDiffers)
        .expect("amount");
    assert_eq!(amount.bill.as_ref().map(|b| b.amount.amount), Some(980));
    assert_eq!(
        amount.kami.as_ref().map(|k| k.line.amount.amount),
        Some(990)
    );
    let extra = report
        .mismatches
        .iter()
        .find(|m| m.kind == MismatchKind::MissingInKami)
        .expect("extra line");
    assert_eq!(
        extra.bill.as_ref().and_then(|b| b.provider_ref.as_deref()),
        added["provider_ref"].as_str()
    );

    let again = reconcile_channel(&shop.ctx, &shop.channel, &period)
        .await
        .expect("reconcile again");
    assert_eq!(
        (again.mismatches_total, again.filed),
        (kinds, 0),
        "{again:?}"
    );
    // The period is a day every test of that day shares: this channel's are those of its
    // report.
    let filed = shop
        .ctx
        .store
        .reconciliation_mismatches(&period.label)
        .await
        .expect("mismatches");
    let ours = filed
        .iter()
        .filter(|m| report.mismatches.iter().any(|r| r.key == m.key))
        .count();
    assert_eq!(ours, kinds);

    // In the exception queue, once each, under their cause and kind.
    let entries = queued_mismatches(&shop).await;
    let ours: Vec<_> = entries
        .iter()
        .filter(|e| {
            [&amended, &dropped, &refunded]
                .iter()
                .any(|id| e.order_id.as_deref() == Some(id.as_str()))
        })
        .collect();
    assert_eq!(ours.len(), kinds - 1, "{entries:?}");
    assert!(
        ours.iter()
            .all(|e| e.cause == RECONCILIATION_MISMATCH && e.exception.is_some())
    );
    resolve_a_mismatch(&shop, ours[0].mismatch.clone().expect("the mismatch it is")).await;
}

/// The newest page of reconciliation mismatches in the exception queue (every test's).
async fn queued_mismatches(shop: &Shop) -> Vec<ExceptionEntry> {
    let filter = ExceptionFilter {
        cause: Some(RECONCILIATION_MISMATCH.into()),
        newest_first: true,
        limit: 100,
        ..Default::default()
    };
    let (entries, _) = shop
        .ctx
        .store
        .exceptions(&filter, None, Timestamp::now())
        .await
        .expect("queue");
    entries
}

/// GIVEN a mismatch in the exception queue WHEN an operator resolves it with a reason,
/// twice THEN it leaves the queue once, the audit trail names who and why, and the
/// period's report still lists it; a mismatch that does not exist is 404, a blank reason 400.
async fn resolve_a_mismatch(shop: &Shop, mismatch: MismatchRef) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let path = |id: &str| {
        format!(
            "/admin/reconciliation/{}/mismatches/{id}/resolve",
            mismatch.period
        )
    };
    let resolve = |id: String, body: Value| {
        let ctx = shop.ctx.clone();
        let path = path(&id);
        let auth = auth.clone();
        async move {
            operations(
                &ctx,
                request("POST", &path, &[("authorization", &auth)], body.to_string()),
            )
            .await
        }
    };
    let reason = json!({"reason": "the provider corrected its bill"});
    let (status, missing_reason) =
        resolve(mismatch.mismatch_id.clone(), json!({"reason": " "})).await;
    assert_eq!(
        (status, &missing_reason["error"]["code"]),
        (400, &json!("invalid_reason")),
        "{missing_reason}"
    );
    for _ in 0..2 {
        let (status, resolved) = resolve(mismatch.mismatch_id.clone(), reason.clone()).await;
        assert_eq!(status, 200, "{resolved}");
        assert_eq!(
            (&resolved["mismatch_id"], &resolved["resolved"]),
            (&json!(mismatch.mismatch_id), &json!(true))
        );
    }
    let (status, unknown) = resolve(format!("{}x", mismatch.mismatch_id), reason.clone()).await;
    assert_eq!(
        (status, &unknown["error"]["code"]),
        (404, &json!("mismatch_not_found")),
        "{unknown}"
    );
    // Out of the queue; still in the period's mismatches.
    let entries = queued_mismatches(shop).await;
    assert!(
        entries
            .iter()
            .all(|e| e.mismatch.as_ref() != Some(&mismatch)),
        "{entries:?}"
    );
    let listed = shop
        .ctx
        .store
        .reconciliation_mismatches(&mismatch.period)
        .await
        .expect("mismatches");
    assert!(
        listed
            .iter()
            .any(|m| mismatch.mismatch_id.ends_with(&format!(":{}", m.key)))
    );
    let (status, trail) = operations_get(
        &shop.ctx,
        &format!(
            "/admin/audit?mismatch={}/{}",
            mismatch.period, mismatch.mismatch_id
        ),
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let actions: Vec<&Value> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["action"])
        .collect();
    assert_eq!(actions, [&json!("mismatch.resolve")], "{trail}");
    assert_eq!(
        trail["entries"][0]["reason"],
        json!("the provider corrected its bill"),
        "{trail}"
    );
}

/// GIVEN a Stripe, a WeChat Pay and an Alipay channel of the sandbox WHEN the settlement function
/// runs for yesterday (in the settlement's zone) THEN it reconciles each channel's bill
/// for that day (none of this run's payments were then: clean, nothing filed), keeps
/// their reports for `GET /admin/settlements`, and reports the channels whose bill it
/// could not have instead of failing.
#[tokio::test]
async fn the_settlement_run_reconciles_every_channel_of_its_period() {
    use kami_shared::app::settlement::{self, RunRequest};
    let sandbox = start_sandbox();
    let stripe = shop(&sandbox, "stripe").await;
    let wechat = shop(&sandbox, "wechatpay").await;
    let alipay = shop(&sandbox, "alipay").await;
    let yesterday = period_for(None, Timestamp::now(), "Asia/Shanghai").expect("period");
    let report = settlement::run(
        &stripe.ctx,
        &RunRequest {
            period: Some(yesterday.label.clone()),
            distributors: None,
        },
    )
    .await
    .expect("run");
    assert!(report.bills_reconciled >= 3, "{report:?}");
    let (status, listed) = admin(
        &stripe.ctx,
        request(
            "GET",
            &format!("/admin/settlements?period={}", yesterday.label),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    for shop in [&stripe, &wechat, &alipay] {
        let ours: Vec<&Value> = listed["reconciliation"]
            .as_array()
            .expect("reports")
            .iter()
            .filter(|r| r["channel_id"] == json!(shop.channel))
            .collect();
        assert_eq!(ours.len(), 1, "{listed}");
        assert_eq!(
            (&ours[0]["mismatches_total"], &ours[0]["filed"]),
            (&json!(0), &json!(0)),
            "{listed}"
        );
    }
    assert!(
        !report
            .bills_not_reconciled
            .iter()
            .any(|line| [&stripe, &wechat, &alipay]
                .iter()
                .any(|shop| line.starts_with(&shop.channel))),
        "{report:?}"
    );
}
