//! Distributors, the commission ledger and settlement against moto (docs/distributors.md):
//! the tree's rules, a referred order's chain earning each level once whatever the
//! delivery messages, refunds reducing or clawing back, statements that reconcile to
//! the minor unit whether a run is repeated, doubled or cut short, and a distributor
//! that reads only its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use kami_shared::Context;
use kami_shared::app::settlement::{self, RunReport, RunRequest, period_for};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_shared::store::{
    AuditSubject, DistributorRecord, DistributorSaved, EntryKind, EntryStatus,
};
use kami_tests::*;
use lambda_http::Body;
use serde_json::{Value, json};

const WEEK: i64 = 7 * 86_400;
const DAY: i64 = 86_400;

fn admin_auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

async fn admin_call(ctx: &Arc<Context>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Body::Empty
    } else {
        Body::from(body.to_string())
    };
    admin(
        ctx,
        request(method, path, &[("authorization", &admin_auth())], body),
    )
    .await
}

async fn put_distributor(ctx: &Arc<Context>, id: &str, body: Value) -> (u16, Value) {
    admin_call(ctx, "PUT", &format!("/admin/distributors/{id}"), body).await
}

async fn api_key(ctx: &Arc<Context>, id: &str) -> String {
    let (status, issued) = admin_call(
        ctx,
        "POST",
        &format!("/admin/distributors/{id}/api-key"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    issued["api_key"].as_str().expect("key").to_owned()
}

async fn as_distributor(ctx: &Arc<Context>, key: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    distributor_api(
        ctx,
        request("GET", path, &[("authorization", &auth)], Body::Empty),
    )
    .await
}

/// A context on `clock` whose providers have a public URL to notify.
async fn ctx_on(clock: Arc<FakeClock>) -> Arc<Context> {
    context_on_with(clock, &[("PUBLIC_API_URL", "https://kami.example.test")]).await
}

fn rate(bps: u32) -> Value {
    json!({"type": "rate", "rate_bps": bps})
}

/// A chain root ← mid ← leaf of its own (ids and codes unique to the run); root earns
/// 2 % at level 3, mid 3 % at level 2, leaf 10 % at level 1.
async fn chain(ctx: &Arc<Context>, run: &str) -> [String; 3] {
    let ids = [
        format!("root-{run}"),
        format!("mid-{run}"),
        format!("leaf-{run}"),
    ];
    let bodies = [
        json!({"name": "Root", "referral_code": format!("R{run}"), "parent_id": null,
               "commission": {"levels": [rate(1500), rate(500), rate(200)]}}),
        json!({"name": "Mid", "referral_code": format!("M{run}"), "parent_id": ids[0],
               "commission": {"levels": [rate(1200), rate(300)]}}),
        json!({"name": "Leaf", "referral_code": format!("L{run}"), "parent_id": ids[1],
               "commission": {"levels": [rate(1000)]}}),
    ];
    for (id, body) in ids.iter().zip(bodies) {
        let (status, created) = put_distributor(ctx, id, body).await;
        assert_eq!(status, 201, "{created}");
    }
    ids
}

fn run_id() -> String {
    new_id()[16..].to_ascii_lowercase()
}

/// One referred order of `sku`, paid through `channel_id` (its attempt named, so it can
/// be refunded) at the clock's time, and queued for delivery. Returns its id.
async fn referred_paid_order(
    ctx: &Arc<Context>,
    clock: &FakeClock,
    channel_id: &str,
    sku: &str,
    code: &str,
    amount: i64,
) -> String {
    let key = format!("dist-order-{}", new_id());
    let body = json!({"sku": sku, "quantity": 1, "buyer": {"email": buyer_for(&key)},
        "referral_code": code.to_ascii_lowercase()});
    paid_through_channel(ctx, clock, channel_id, &key, body, amount).await
}

trait Seconds {
    fn now_seconds(&self) -> i64;
}

impl Seconds for FakeClock {
    fn now_seconds(&self) -> i64 {
        kami_shared::ports::Clock::now(self).unix_seconds()
    }
}

async fn settle(ctx: &Arc<Context>, clock: &FakeClock, distributors: &[String]) -> RunReport {
    settlement::run(
        ctx,
        &RunRequest {
            period: None,
            distributors: Some(distributors.to_vec()),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("settlement at {:?}: {err}", clock.now_seconds()))
}

fn period_label(clock: &FakeClock) -> String {
    period_for(None, kami_shared::ports::Clock::now(clock), "Asia/Shanghai")
        .expect("period")
        .label
}

/// Entries of `order_id` by level: (status, amount).
async fn entries(ctx: &Arc<Context>, order_id: &str) -> BTreeMap<String, (EntryStatus, i64)> {
    ctx.store
        .order_commissions(order_id)
        .await
        .expect("entries")
        .into_iter()
        .map(|e| (e.entry_id, (e.status, e.amount.amount)))
        .collect()
}

/// GIVEN a distributor read (its subtree measured) for a move WHEN a child is placed
/// below it before the move commits THEN the move is refused as raced, so it measures
/// again (the subtree could now be too deep for the new parent); a move that read after
/// the child goes through.
#[tokio::test]
async fn a_move_whose_subtree_grew_meanwhile_is_refused() {
    let ctx = context().await;
    let run = run_id();
    let mover = format!("mover-{run}");
    let target = format!("target-{run}");
    for (id, code) in [(&mover, format!("MV{run}")), (&target, format!("TG{run}"))] {
        let (status, answer) =
            put_distributor(&ctx, id, json!({"name": "Root", "referral_code": code})).await;
        assert_eq!(status, 201, "{answer}");
    }
    let read = |id: String| {
        let ctx = ctx.clone();
        async move {
            ctx.store
                .get_distributor(&id)
                .await
                .expect("read")
                .expect("distributor")
        }
    };
    let stale = read(mover.clone()).await;
    let (status, answer) = put_distributor(
        &ctx,
        &format!("kid-{run}"),
        json!({"name": "Kid", "referral_code": format!("KD{run}"), "parent_id": mover}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let moved = |from: &DistributorRecord| {
        let mut moved = from.clone();
        moved.settings.parent_id = Some(target.clone());
        moved.version += 1;
        moved
    };
    let audit = || test_audit("distributor.put", (AuditSubject::Distributor, &mover));
    let chain = [read(target.clone()).await];
    let saved = ctx
        .store
        .save_distributor(&moved(&stale), Some(&stale), &chain, &audit())
        .await
        .expect("save");
    assert_eq!(saved, DistributorSaved::Raced);
    let fresh = read(mover.clone()).await;
    assert!(fresh.subtree_version > stale.subtree_version);
    let chain = [read(target.clone()).await];
    let saved = ctx
        .store
        .save_distributor(&moved(&fresh), Some(&fresh), &chain, &audit())
        .await
        .expect("save");
    assert_eq!(saved, DistributorSaved::Saved);
}

/// GIVEN the admin WHEN distributors are put into a tree THEN parents must exist, no
/// cycle and no tree deeper than 3 is accepted, referral codes are unique, and bad
/// fields are refused by path.
#[tokio::test]
async fn distributors_form_a_tree_without_cycles_or_excess_depth() {
    let ctx = context().await;
    let run = run_id();
    let [root, mid, leaf] = chain(&ctx, &run).await;

    let (status, deep) = put_distributor(
        &ctx,
        &format!("deep-{run}"),
        json!({"name": "Deep", "referral_code": format!("D{run}"), "parent_id": leaf}),
    )
    .await;
    assert_eq!(
        (status, &deep["error"]["code"], &deep["error"]["path"]),
        (
            400,
            &json!("invalid_distributor_parent"),
            &json!("parent_id")
        ),
        "{deep}"
    );
    let (status, cycle) = put_distributor(
        &ctx,
        &root,
        json!({"name": "Root", "referral_code": format!("R{run}"), "parent_id": leaf}),
    )
    .await;
    assert_eq!(
        (status, &cycle["error"]["code"]),
        (400, &json!("invalid_distributor_parent")),
        "{cycle}"
    );
    // Moving mid (with leaf below it) under a new root of depth 1 would make 4 levels.
    let (status, _) = put_distributor(
        &ctx,
        &format!("other-{run}"),
        json!({"name": "Other", "referral_code": format!("O{run}"), "parent_id": root}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, too_deep) = put_distributor(
        &ctx,
        &mid,
        json!({"name": "Mid", "referral_code": format!("M{run}"), "parent_id": format!("other-{run}")}),
    )
    .await;
    assert_eq!(status, 400, "{too_deep}");
    let (status, unknown) = put_distributor(
        &ctx,
        &format!("orphan-{run}"),
        json!({"name": "Orphan", "referral_code": format!("X{run}"), "parent_id": format!("nobody-{run}")}),
    )
    .await;
    assert_eq!(
        (status, &unknown["error"]["code"]),
        (400, &json!("invalid_distributor_parent"))
    );
    let (status, taken) = put_distributor(
        &ctx,
        &format!("copycat-{run}"),
        json!({"name": "Copycat", "referral_code": format!("l{run}").to_ascii_lowercase()}),
    )
    .await;
    assert_eq!(
        (status, &taken["error"]["code"]),
        (409, &json!("referral_code_taken")),
        "codes are unique without regard to case: {taken}"
    );
    let (status, bad) = put_distributor(
        &ctx,
        &format!("bad-{run}"),
        json!({"name": "Bad", "referral_code": format!("B{run}"),
               "commission": {"levels": [rate(500), {"type": "rate", "rate_bps": 10_001}]}}),
    )
    .await;
    assert_eq!(
        (status, &bad["error"]["code"], &bad["error"]["path"]),
        (
            400,
            &json!("invalid_commission"),
            &json!("commission.levels[1]")
        ),
        "{bad}"
    );

    // Unchanged: 200, the same; a new code frees the old one.
    let (status, same) = put_distributor(
        &ctx,
        &leaf,
        json!({"name": "Leaf", "referral_code": format!("L{run}"), "parent_id": mid,
               "commission": {"levels": [rate(1000)]}}),
    )
    .await;
    assert_eq!((status, &same["parent_id"]), (200, &json!(mid)), "{same}");
    let (status, renamed) = put_distributor(
        &ctx,
        &leaf,
        json!({"name": "Leaf", "referral_code": format!("N{run}"), "parent_id": mid,
               "commission": {"levels": [rate(1000)]}}),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    let (status, reused) = put_distributor(
        &ctx,
        &format!("copycat-{run}"),
        json!({"name": "Copycat", "referral_code": format!("L{run}")}),
    )
    .await;
    assert_eq!(status, 201, "the old code is free again: {reused}");

    let (status, got) = admin_call(
        &ctx,
        "GET",
        &format!("/admin/distributors/{mid}"),
        Value::Null,
    )
    .await;
    assert_eq!((status, &got["parent_id"]), (200, &json!(root)));
    assert!(got.get("api_key").is_none() && got["has_api_key"] == json!(false));
    let (status, page) = admin_call(&ctx, "GET", "/admin/distributors?limit=2", Value::Null).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["distributors"].as_array().map(Vec::len), Some(2));
    assert!(page["next_cursor"].is_string(), "{page}");
    let (status, _) = admin_call(
        &ctx,
        "GET",
        "/admin/distributors?cursor=bm90LWEtY3Vyc29y",
        Value::Null,
    )
    .await;
    assert_eq!(status, 400, "a cursor this listing never gave");

    // An order made with a code, retried after its distributor was disabled: the same
    // order; a new order with that code is refused.
    let sku = product_with_keys(&ctx, "retry", 1_000, 5, &make_keys("RETRY", 1)).await;
    let body = json!({"sku": sku, "quantity": 1, "buyer": {"email": "r@example.com"},
                      "referral_code": format!("L{run}")})
    .to_string();
    let place = |key: String| {
        let body = body.clone();
        let ctx = ctx.clone();
        async move {
            checkout(
                &ctx,
                request("POST", "/orders", &[("idempotency-key", &key)], body),
            )
            .await
        }
    };
    let key = format!("dist-retry-{run}-0001");
    let (status, first) = place(key.clone()).await;
    assert_eq!(status, 201, "{first}");
    let (status, _) = put_distributor(
        &ctx,
        &format!("copycat-{run}"),
        json!({"name": "Copycat", "referral_code": format!("L{run}"), "enabled": false}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, again) = place(key).await;
    assert_eq!(
        (status, &again["order_id"]),
        (201, &first["order_id"]),
        "{again}"
    );
    let (status, refused) = place(format!("dist-retry-{run}-0002")).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("invalid_referral_code")),
        "{refused}"
    );
}

/// GIVEN a three-level chain WHEN an order made with the leaf's code is paid, delivered
/// under duplicated messages, partly refunded before maturity, settled, then refunded
/// again after its statement THEN each level earns once, the pending entries shrink in
/// proportion, the statement pays what matured, the clawback lands on the next statement
/// and the balances add up; each distributor reads only its own.
#[tokio::test]
async fn a_chain_earns_matures_settles_and_claws_back_to_the_minor_unit() {
    let clock = Arc::new(FakeClock::at(Timestamp::from_unix_seconds(1_893_456_000))); // 2030-01-01
    let ctx = ctx_on(clock.clone()).await;
    let run = run_id();
    let [root, mid, leaf] = chain(&ctx, &run).await;
    let channel_id = unreachable_stripe_channel(&ctx, &format!("dist-{run}")).await;
    let sku = product_with_keys(&ctx, "dist", 10_000, 5, &make_keys("DIST", 3)).await;

    let (status, unknown) = checkout(
        &ctx,
        request(
            "POST",
            "/orders",
            &[("idempotency-key", &format!("dist-unknown-{run}"))],
            json!({"sku": sku, "quantity": 1, "buyer": {"email": "a@example.com"},
                   "referral_code": "NOSUCHCODE"})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(
        (status, &unknown["error"]["code"], &unknown["error"]["path"]),
        (
            400,
            &json!("invalid_referral_code"),
            &json!("referral_code")
        )
    );

    let order_id =
        referred_paid_order(&ctx, &clock, &channel_id, &sku, &format!("L{run}"), 10_000).await;
    // The same order queued twice more: delivered once, each level earned once.
    ctx.queue()
        .expect("queue")
        .enqueue_delivery(&order_id)
        .await
        .expect("enqueue");
    ctx.queue()
        .expect("queue")
        .enqueue_delivery(&order_id)
        .await
        .expect("enqueue");
    drain_delivery_queue(&ctx).await;
    let earned = entries(&ctx, &order_id).await;
    assert_eq!(
        earned,
        BTreeMap::from([
            (format!("{order_id}#01"), (EntryStatus::Pending, 1_000)),
            (format!("{order_id}#02"), (EntryStatus::Pending, 300)),
            (format!("{order_id}#03"), (EntryStatus::Pending, 200)),
        ])
    );

    // Later changes to the tree never rewrite the order's chain.
    let (status, _) = put_distributor(
        &ctx,
        &leaf,
        json!({"name": "Leaf", "referral_code": format!("L{run}"), "parent_id": root,
               "commission": {"levels": [rate(9000)]}}),
    )
    .await;
    assert_eq!(status, 200);

    // A partial refund (a third) before maturity: pending entries shrink, rounded down.
    clock.advance_seconds(DAY);
    refunded(&ctx, &clock, &order_id, 3_333).await;
    assert_eq!(
        entries(&ctx, &order_id).await,
        BTreeMap::from([
            (format!("{order_id}#01"), (EntryStatus::Pending, 666)),
            (format!("{order_id}#02"), (EntryStatus::Pending, 200)),
            (format!("{order_id}#03"), (EntryStatus::Pending, 133)),
        ])
    );

    // Past the refund window: matured and settled on the statement of the day before.
    clock.advance_seconds(WEEK + DAY);
    let ids = [root.clone(), mid.clone(), leaf.clone()];
    let report = settle(&ctx, &clock, &ids).await;
    assert_eq!(
        (report.statements_closed, report.statements_open),
        (3, 0),
        "{report:?}"
    );
    let period = period_label(&clock);
    let leaf_statement = format!("{period}_CNY_{leaf}");
    let (status, statement) = admin_call(
        &ctx,
        "GET",
        &format!("/admin/statements/{leaf_statement}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(
        (
            &statement["opening_balance"],
            &statement["commissions"],
            &statement["closing_balance"],
            &statement["payable"],
            &statement["status"]
        ),
        (
            &json!(0),
            &json!(666),
            &json!(666),
            &json!(666),
            &json!("closed")
        ),
        "{statement}"
    );
    // A second run changes nothing.
    let again = settle(&ctx, &clock, &ids).await;
    assert_eq!(again.statements_closed, 0, "{again:?}");

    // The payout, once; the same reference again is the same answer.
    let paid = |reference: &str| json!({"reference": reference});
    let path = format!("/admin/statements/{leaf_statement}/paid");
    let (status, first) = admin_call(&ctx, "POST", &path, paid("BANK-1")).await;
    assert_eq!(
        (status, &first["payout_reference"]),
        (200, &json!("BANK-1")),
        "{first}"
    );
    let (status, _) = admin_call(&ctx, "POST", &path, paid("BANK-1")).await;
    assert_eq!(status, 200);
    let (status, other) = admin_call(&ctx, "POST", &path, paid("BANK-2")).await;
    assert_eq!(
        (status, &other["error"]["code"]),
        (409, &json!("statement_already_paid"))
    );
    let (status, audit) =
        operations_get(&ctx, &format!("/admin/audit?statement={leaf_statement}")).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );

    // Refunded in full after settlement: each level clawed back on the next statement.
    refunded(&ctx, &clock, &order_id, 6_667).await;
    let after = entries(&ctx, &order_id).await;
    assert_eq!(
        after.get(&format!("{order_id}#01")),
        Some(&(EntryStatus::Settled, 666))
    );
    let claws: Vec<i64> = ctx
        .store
        .order_commissions(&order_id)
        .await
        .expect("entries")
        .iter()
        .filter(|e| e.kind == EntryKind::Clawback)
        .map(|e| e.amount.amount)
        .collect();
    assert_eq!(claws.iter().sum::<i64>(), -(666 + 200 + 133), "{claws:?}");
    clock.advance_seconds(DAY);
    let report = settle(&ctx, &clock, &ids).await;
    assert_eq!(report.statements_closed, 3, "{report:?}");
    let next = format!("{}_CNY_{leaf}", period_label(&clock));
    let (status, statement) = admin_call(
        &ctx,
        "GET",
        &format!("/admin/statements/{next}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(
        (
            &statement["opening_balance"],
            &statement["clawbacks"],
            &statement["closing_balance"],
            &statement["payable"]
        ),
        (&json!(0), &json!(-666), &json!(-666), &json!(0)),
        "a negative balance carries: {statement}"
    );

    // Each distributor reads its own: the leaf its order and statements, the root the
    // order of its subtree (level 3), never another's statement.
    let leaf_key = api_key(&ctx, &leaf).await;
    let root_key = api_key(&ctx, &root).await;
    let (status, orders) = as_distributor(&ctx, &leaf_key, "/distributor/orders").await;
    assert_eq!(status, 200, "{orders}");
    assert_eq!(orders["orders"][0]["order_id"], json!(order_id));
    assert!(
        orders["orders"][0]["buyer"]
            .as_str()
            .is_some_and(|b| b.contains("***@")),
        "{orders}"
    );
    let (_, orders) = as_distributor(&ctx, &root_key, "/distributor/orders").await;
    assert_eq!(
        (
            &orders["orders"][0]["order_id"],
            &orders["orders"][0]["level"]
        ),
        (&json!(order_id), &json!(3))
    );
    let (status, mine) = as_distributor(
        &ctx,
        &leaf_key,
        &format!("/distributor/statements/{leaf_statement}"),
    )
    .await;
    assert_eq!((status, &mine["payable"]), (200, &json!(666)), "{mine}");
    let (status, theirs) = as_distributor(
        &ctx,
        &leaf_key,
        &format!("/distributor/statements/{period}_CNY_{root}"),
    )
    .await;
    assert_eq!(
        (status, &theirs["error"]["code"]),
        (404, &json!("statement_not_found")),
        "a parent's statement is not the leaf's"
    );
    let (status, one) =
        as_distributor(&ctx, &leaf_key, &format!("/distributor/orders/{order_id}")).await;
    assert_eq!((status, &one["order_id"]), (200, &json!(order_id)), "{one}");
    // A sibling under the same parent reads neither the leaf's order nor its statement.
    let sibling = format!("sib-{run}");
    let (status, created) = put_distributor(
        &ctx,
        &sibling,
        json!({"name": "Sibling", "referral_code": format!("S{run}"), "parent_id": mid,
               "commission": {"levels": [rate(1000)]}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let sibling_key = api_key(&ctx, &sibling).await;
    let (status, theirs) = as_distributor(
        &ctx,
        &sibling_key,
        &format!("/distributor/orders/{order_id}"),
    )
    .await;
    assert_eq!(
        (status, &theirs["error"]["code"]),
        (404, &json!("order_not_found")),
        "a sibling's order: {theirs}"
    );
    let (status, theirs) = as_distributor(
        &ctx,
        &sibling_key,
        &format!("/distributor/statements/{leaf_statement}"),
    )
    .await;
    assert_eq!(
        (status, &theirs["error"]["code"]),
        (404, &json!("statement_not_found")),
        "a sibling's statement: {theirs}"
    );
    let (status, listed) = as_distributor(&ctx, &sibling_key, "/distributor/orders").await;
    assert_eq!((status, &listed["orders"]), (200, &json!([])), "{listed}");
    let (status, settled) =
        as_distributor(&ctx, &root_key, "/distributor/commissions?status=settled").await;
    assert_eq!(status, 200);
    assert!(
        settled["commissions"]
            .as_array()
            .is_some_and(|list| list.iter().all(|e| e["distributor_id"] == json!(root))),
        "{settled}"
    );
    let auth = format!("Bearer {leaf_key}");
    let (status, headers, csv) = distributor_api_raw(
        &ctx,
        request(
            "GET",
            &format!("/distributor/statements/{leaf_statement}"),
            &[("authorization", &auth), ("accept", "text/csv")],
            Body::Empty,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/csv"))
    );
    let csv = String::from_utf8(csv).expect("utf-8");
    assert!(
        csv.contains(&format!("{order_id}#01")) && csv.contains("payable"),
        "{csv}"
    );
    let (status, _) = as_distributor(&ctx, "kd_not-a-key", "/distributor/orders").await;
    assert_eq!(status, 401);
    // A new key replaces the old one.
    let newer = api_key(&ctx, &leaf).await;
    assert_eq!(
        as_distributor(&ctx, &leaf_key, "/distributor/orders")
            .await
            .0,
        401
    );
    assert_eq!(
        as_distributor(&ctx, &newer, "/distributor/orders").await.0,
        200
    );
}

/// Statements of `ids` for the clock's period: (id, commissions, lines) each.
async fn statements_of(ctx: &Arc<Context>, label: &str) -> Vec<(String, i64, u32, String)> {
    let mut found: Vec<_> = ctx
        .store
        .statements_in_period(label)
        .await
        .expect("statements")
        .into_iter()
        .map(|s| (s.statement_id, s.commissions, s.lines, s.status))
        .collect();
    found.sort();
    found
}

/// GIVEN many matured entries WHEN a run is cut short after part of them, then runs
/// again twice at once THEN the statements are the same single set a clean run makes,
/// each entry on one statement once.
#[tokio::test]
async fn a_run_cut_short_and_two_runs_at_once_yield_the_same_statements() {
    let clock = Arc::new(FakeClock::at(Timestamp::from_unix_seconds(1_924_992_000))); // 2031-01-01
    let ctx = ctx_on(clock.clone()).await;
    let run = run_id();
    let [root, mid, leaf] = chain(&ctx, &run).await;
    let channel_id = unreachable_stripe_channel(&ctx, &format!("dist-{run}")).await;
    let orders = 30;
    let sku = product_with_keys(&ctx, "distrun", 999, 5, &make_keys("RUN", orders)).await;
    for _ in 0..orders {
        referred_paid_order(&ctx, &clock, &channel_id, &sku, &format!("L{run}"), 999).await;
    }
    drain_delivery_queue(&ctx).await;
    clock.advance_seconds(WEEK + DAY);
    let ids = vec![root.clone(), mid.clone(), leaf.clone()];

    // Cut short: matured, the leaf's statement opened and 7 of its entries settled on it.
    let now = kami_shared::ports::Clock::now(clock.as_ref());
    for entry in ctx.store.maturing_entries(now).await.expect("due") {
        ctx.store.mature_entry(&entry).await.expect("mature");
    }
    let label = period_label(&clock);
    let end = period_for(Some(&label), now, "Asia/Shanghai")
        .expect("period")
        .end;
    let leaf_entries = ctx
        .store
        .unsettled_entries(&leaf, end)
        .await
        .expect("entries");
    assert_eq!(leaf_entries.len(), orders);
    let statement_id = format!("{label}_CNY_{leaf}");
    assert!(
        ctx.store
            .open_statement(&statement_id, &leaf, &label, "CNY", now)
            .await
            .expect("open")
    );
    assert!(
        ctx.store
            .settle_entries(&statement_id, &leaf_entries[..7])
            .await
            .expect("settle")
    );

    let (a, b) = tokio::join!(settle(&ctx, &clock, &ids), settle(&ctx, &clock, &ids));
    assert_eq!(a.statements_open + b.statements_open, 0, "{a:?} {b:?}");
    assert_eq!(a.statements_closed + b.statements_closed, 3, "{a:?} {b:?}");
    let mine: Vec<_> = statements_of(&ctx, &label)
        .await
        .into_iter()
        .filter(|(id, ..)| ids.iter().any(|d| id.ends_with(&format!("_{d}"))))
        .collect();
    // 999 × 10 % = 99.9 → 99; × 3 % = 29.97 → 29; × 2 % = 19.98 → 19.
    assert_eq!(
        mine,
        vec![
            (
                format!("{label}_CNY_{leaf}"),
                99 * 30,
                30,
                "closed".to_owned()
            ),
            (
                format!("{label}_CNY_{mid}"),
                29 * 30,
                30,
                "closed".to_owned()
            ),
            (
                format!("{label}_CNY_{root}"),
                19 * 30,
                30,
                "closed".to_owned()
            ),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    let again = settle(&ctx, &clock, &ids).await;
    assert_eq!(again.statements_closed, 0);
    assert_eq!(
        ctx.store
            .unsettled_entries(&leaf, end)
            .await
            .expect("entries")
            .len(),
        0
    );
}

/// GIVEN many orders across many distributors with random refunds WHEN settled THEN every
/// statement equals the commissions its entries earned minus clawbacks, and the sum over
/// all statements equals the sum computed from the rules alone, to the minor unit.
/// (`KAMI_SETTLEMENT_ORDERS` / `KAMI_SETTLEMENT_DISTRIBUTORS`: 1,000 and 50 in the bench;
/// fewer in CI.)
#[tokio::test]
async fn many_orders_across_many_distributors_reconcile_to_the_minor_unit() {
    let orders: usize = std::env::var("KAMI_SETTLEMENT_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let distributors: usize = std::env::var("KAMI_SETTLEMENT_DISTRIBUTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let clock = Arc::new(FakeClock::at(Timestamp::from_unix_seconds(1_956_528_000))); // 2032-01-01
    let ctx = ctx_on(clock.clone()).await;
    let run = run_id();
    let channel_id = unreachable_stripe_channel(&ctx, &format!("dist-{run}")).await;
    let sku = product_with_keys(&ctx, "distmany", 1_237, 100, &make_keys("MANY", orders)).await;
    // Roots, each with children: distributor i's parent is (i - 1) / 3 (a tree 3 deep at
    // most: depth is refused beyond that, so deeper ones are made roots).
    let mut ids: Vec<String> = Vec::new();
    let mut depth: Vec<u32> = Vec::new();
    for i in 0..distributors {
        let parent = (i > 0).then(|| (i - 1) / 3).filter(|p| depth[*p] < 3);
        let id = format!("many{i}-{run}");
        let (status, body) = put_distributor(
            &ctx,
            &id,
            json!({"name": id, "referral_code": format!("C{i}X{run}"),
                   "parent_id": parent.map(|p| ids[p].clone()),
                   "commission": {"levels": [rate(700 + i as u32), rate(300), {"type": "fixed", "amount": 7, "currency": "CNY"}]}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        depth.push(parent.map_or(1, |p| depth[p] + 1));
        ids.push(id);
    }
    let mut expected: i64 = 0;
    let mut made = Vec::new();
    for n in 0..orders {
        let referrer = n * 7 % distributors;
        let order_id = referred_paid_order(
            &ctx,
            &clock,
            &channel_id,
            &sku,
            &format!("C{referrer}X{run}"),
            1_237,
        )
        .await;
        made.push((order_id, referrer));
        if n % 10 == 9 {
            // Duplicated messages now and then.
            let (order_id, _) = made.last().expect("made");
            ctx.queue()
                .expect("queue")
                .enqueue_delivery(order_id)
                .await
                .expect("enqueue");
        }
    }
    drain_delivery_queue(&ctx).await;
    // What the rules alone say each order earns, after the refunds below.
    for (n, (order_id, referrer)) in made.iter().enumerate() {
        let refund = match n % 5 {
            0 => 1_237,
            1 => 400,
            _ => 0,
        };
        if refund > 0 {
            refunded(&ctx, &clock, order_id, refund).await;
        }
        let mut chain = vec![*referrer];
        while let Some(last) = chain.last().copied() {
            let parent = (last > 0)
                .then(|| (last - 1) / 3)
                .filter(|p| depth[*p] < 3 && depth[last] > 1);
            match parent {
                Some(p) if chain.len() < 3 => chain.push(p),
                _ => break,
            }
        }
        for (level, d) in chain.iter().enumerate() {
            let earned = match level {
                0 => 1_237 * (700 + *d as i64) / 10_000,
                1 => 1_237 * 300 / 10_000,
                _ => 7,
            };
            expected += earned * (1_237 - refund) / 1_237;
        }
    }
    clock.advance_seconds(WEEK + DAY);
    let report = settle(&ctx, &clock, &ids).await;
    assert_eq!(report.statements_open, 0, "{report:?}");
    let label = period_label(&clock);
    let statements: Vec<_> = ctx
        .store
        .statements_in_period(&label)
        .await
        .expect("statements")
        .into_iter()
        .filter(|s| ids.contains(&s.distributor_id))
        .collect();
    let total: i64 = statements.iter().map(|s| s.commissions + s.clawbacks).sum();
    assert_eq!(total, expected, "statements against the rules");
    for statement in &statements {
        let lines = ctx
            .store
            .statement_lines(&statement.statement_id)
            .await
            .expect("lines");
        assert_eq!(
            lines.iter().map(|l| l.amount).sum::<i64>(),
            statement.commissions + statement.clawbacks
        );
        assert_eq!(statement.payable, statement.closing_balance.max(0));
    }
}
