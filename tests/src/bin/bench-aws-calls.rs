//! Benchmark: AWS requests per card-key order, checkout to delivered, counted by an SDK
//! interceptor on every client the use cases use (not estimated), against moto server;
//! and the AWS cost per million orders from those counts and list prices.
//!
//!     cargo run --release -p kami-tests --bin bench-aws-calls -- [orders] [keys]
//!
//! Prints a Markdown report (docs/bench.md keeps the recorded one).

use std::time::Instant;

use kami_shared::adapters::metrics::{AwsCallCounter, AwsCalls};
use kami_tests::*;

/// us-east-1 list prices (USD) used for the cost model.
const LAMBDA_GB_SECOND_ARM: f64 = 0.000_013_333_4;
const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
const HTTP_API_PER_REQUEST: f64 = 1.00 / 1e6;
const DYNAMODB_PER_WRU: f64 = 0.625 / 1e6;
const DYNAMODB_PER_RRU: f64 = 0.125 / 1e6;
const SQS_PER_REQUEST: f64 = 0.40 / 1e6;
const KMS_PER_REQUEST: f64 = 0.03 / 1e4;
const LAMBDA_MEMORY_GB: f64 = 128.0 / 1024.0;

struct Phase {
    name: &'static str,
    calls: AwsCalls,
    invocations: f64,
    millis: f64,
}

/// Capacity by calculation: every Kami item is under 1 KB, and each read returns under
/// 4 KB, so a transactional write item costs 2 WRU, a plain write 1 WRU, a strongly
/// consistent read or query 1 RRU.
fn capacity(calls: &AwsCalls) -> (f64, f64) {
    let count = |op: &str| {
        *calls
            .requests
            .get(&format!("DynamoDB_20120810.{op}"))
            .unwrap_or(&0) as f64
    };
    let wru = 2.0 * calls.transact_items as f64
        + count("PutItem")
        + count("UpdateItem")
        + count("DeleteItem");
    let rru = count("GetItem") + count("Query") + count("BatchGetItem");
    (wru, rru)
}

/// One table row; timing columns only for a single function's phase.
fn row(phase: &Phase, orders: f64) -> String {
    let per = |n: u64| n as f64 / orders;
    let (wru, rru) = capacity(&phase.calls);
    format!(
        "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} | {} | {} |",
        phase.name,
        per(phase.calls.total("DynamoDB_")),
        per(phase.calls.transact_items),
        wru / orders,
        rru / orders,
        per(phase.calls.total("AmazonSQS.")),
        per(phase.calls.total("TrentService.")) * 1000.0,
        if phase.millis > 0.0 {
            format!("{:.1}", phase.millis / phase.invocations.max(1.0))
        } else {
            "–".into()
        },
        if phase.millis > 0.0 {
            format!("{:.2}", phase.invocations / orders)
        } else {
            "–".into()
        },
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let orders: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let keys: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(orders.max(1000));
    let counter = AwsCallCounter::default();
    let ctx = counted_context(Some(counter.clone())).await;

    let started = Instant::now();
    let sku = product_with_keys(&ctx, "bench", 990, 5, &make_keys("BENCH", keys)).await;
    let import_ms = started.elapsed().as_secs_f64() * 1000.0;
    let import = counter.take();

    let mut created = Vec::with_capacity(orders);
    let started = Instant::now();
    for i in 0..orders {
        // From an address, as through API Gateway: both caps on unpaid units are counted.
        let key = format!("idem-bench-{sku}-{i}");
        let address = format!("198.51.{}.{}", i / 250, i % 250);
        let (status, body) = checkout(
            &ctx,
            order_request_from(&sku, 1, &buyer_for(&key), &key, &address),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        created.push(body);
    }
    let checkout = Phase {
        name: "checkout `POST /orders`",
        calls: counter.take(),
        invocations: orders as f64,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    };

    let started = Instant::now();
    for (i, body) in created.iter().enumerate() {
        let id = body["order_id"].as_str().expect("id");
        let (status, _) = pay(&ctx, &format!("evt_bench_{i}_{id}"), id, 990, "CNY").await;
        assert_eq!(status, 200);
    }
    let webhook = Phase {
        name: "payment-webhook `POST /webhooks/stripe`",
        calls: counter.take(),
        invocations: orders as f64,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    };

    let (messages, in_handler) = drain_delivery_queue_timed(&ctx).await;
    let batches = messages.div_ceil(10) as f64;
    let worker = Phase {
        name: "delivery-worker (SQS batches of up to 10)",
        calls: counter.take(),
        invocations: batches,
        millis: in_handler.as_secs_f64() * 1000.0,
    };

    let started = Instant::now();
    for body in &created {
        let (status, view) = view_order(
            &ctx,
            body["order_id"].as_str().expect("id"),
            body["access_token"].as_str().expect("token"),
        )
        .await;
        assert_eq!((status, view["status"].as_str()), (200, Some("delivered")));
    }
    let view = Phase {
        name: "checkout `GET /orders/{id}` (once, delivered)",
        calls: counter.take(),
        invocations: orders as f64,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    };

    let n = orders as f64;
    let phases = [checkout, webhook, worker];
    let mut sum = AwsCalls::default();
    for phase in &phases {
        for (op, count) in &phase.calls.requests {
            *sum.requests.entry(op.clone()).or_default() += count;
        }
        sum.transact_items += phase.calls.transact_items;
    }
    // The event source mapping's own SQS calls (billed too): one ReceiveMessage and one
    // DeleteMessageBatch per batch at full batches.
    let esm_sqs = 2.0 * batches / n;
    let import_kms_per_order = import.total("TrentService.") as f64 / keys as f64;

    println!(
        "## AWS requests per order (measured: {orders} orders, 1 key each, one import of {keys} keys)\n"
    );
    println!(
        "| phase | DynamoDB requests | transact items | WRU | RRU | SQS requests | KMS requests ×1000 | ms per invocation (local) | invocations per order |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for phase in phases.iter().chain([&view]) {
        println!("{}", row(phase, n));
    }
    let all = Phase {
        name: "**checkout → delivered**",
        calls: sum.clone(),
        invocations: n,
        millis: 0.0,
    };
    println!("{}", row(&all, n));
    println!("\nOperations, checkout → delivered, per order:\n");
    for (op, count) in &sum.requests {
        println!("- `{op}`: {:.3}", *count as f64 / n);
    }
    println!(
        "- event source mapping (ReceiveMessage + DeleteMessageBatch, modelled): {esm_sqs:.3}"
    );
    println!(
        "\nImport of {keys} keys: {:.1} s, {} KMS request(s) ({import_kms_per_order:.5} per key), {} DynamoDB requests, {} transact items.",
        import_ms / 1000.0,
        import.total("TrentService."),
        import.total("DynamoDB_"),
        import.transact_items
    );

    let (wru, rru) = capacity(&sum);
    let lambda_ms: f64 = phases.iter().map(|p| p.millis).sum::<f64>() / n;
    let invocations = 2.0 + batches / n;
    let per_order = [
        (
            "DynamoDB (on-demand)",
            wru * DYNAMODB_PER_WRU / n + rru * DYNAMODB_PER_RRU / n,
        ),
        (
            "SQS",
            (sum.total("AmazonSQS.") as f64 / n + esm_sqs) * SQS_PER_REQUEST,
        ),
        (
            "KMS (import amortised)",
            import_kms_per_order * KMS_PER_REQUEST,
        ),
        ("Lambda requests", invocations * LAMBDA_PER_REQUEST),
        (
            "Lambda GB-s (arm64, 128 MB, local wall time)",
            lambda_ms / 1000.0 * LAMBDA_MEMORY_GB * LAMBDA_GB_SECOND_ARM,
        ),
        (
            "API Gateway HTTP API (2 requests)",
            2.0 * HTTP_API_PER_REQUEST,
        ),
    ];
    println!("\n## AWS cost per million orders (us-east-1 list prices)\n");
    println!("| item | USD per 1M orders |");
    println!("|---|---|");
    let mut total = 0.0;
    for (item, usd) in per_order {
        total += usd * 1e6;
        println!("| {item} | {:.2} |", usd * 1e6);
    }
    println!("| **total** | **{total:.2}** |");
}
