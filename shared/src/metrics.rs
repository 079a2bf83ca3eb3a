//! Metrics: counted through the `metrics` facade and written after each invocation as
//! CloudWatch Embedded Metric Format lines on stdout, which CloudWatch Logs turns into
//! metrics in the namespace `Kami` (no API call, no extra latency). The names, units,
//! dimensions and the alarms on them: docs/operations.md, "Metrics and alarms".

use std::sync::OnceLock;

use metrics::{Unit, counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_cloudwatch_embedded::Collector;

use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;

pub const NAMESPACE: &str = "Kami";
pub const ORDERS_CREATED: &str = "OrdersCreated";
pub const ORDERS_PAID: &str = "OrdersPaid";
pub const ORDERS_DELIVERED: &str = "OrdersDelivered";
/// Milliseconds from the order's payment to its delivery, one value per delivered order.
pub const DELIVERY_LATENCY: &str = "DeliveryLatency";
/// Orders that began to need a person; also per `Cause` (the status they went to).
pub const EXCEPTIONS_FILED: &str = "ExceptionsFiled";
/// Seconds the oldest order in the exception queue has waited (0 when it is empty),
/// once per sweep run.
pub const OLDEST_EXCEPTION_AGE: &str = "OldestExceptionAge";
/// Calls to a supplier that failed or whose outcome is unknown, per `Supplier`.
pub const SUPPLIER_ERRORS: &str = "SupplierErrors";
/// Calls to a payment provider that failed, per `Provider`.
pub const PROVIDER_ERRORS: &str = "ProviderErrors";
/// Products whose stock counters disagree with their keys, once per stock audit run.
pub const STOCK_MISMATCHES: &str = "StockMismatches";
/// Statements a settlement run left open because their totals did not reconcile.
pub const SETTLEMENT_MISMATCHES: &str = "SettlementMismatches";

static COLLECTOR: OnceLock<&'static Collector> = OnceLock::new();

/// Installs the recorder at cold start. Without it (tests, tools) metrics go nowhere.
pub fn init() {
    if COLLECTOR.get().is_some() {
        return;
    }
    match metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .init()
    {
        Ok(collector) => {
            describe_histogram!(DELIVERY_LATENCY, Unit::Milliseconds, "paid to delivered");
            describe_gauge!(OLDEST_EXCEPTION_AGE, Unit::Seconds, "oldest exception");
            let _ = COLLECTOR.set(collector);
        }
        // Another recorder is installed (a second cold start in one test process).
        Err(err) => tracing::warn!(error = %err, "metrics recorder not installed"),
    }
}

/// Writes what the invocation counted (one EMF line per dimension set) and starts over.
pub fn flush() {
    if let Some(collector) = COLLECTOR.get()
        && let Err(err) = flush_to(collector, std::io::stdout().lock())
    {
        tracing::warn!(error = %err, "metrics not written");
    }
}

fn flush_to(collector: &Collector, writer: impl std::io::Write) -> std::io::Result<()> {
    collector.flush(writer)
}

pub fn order_created() {
    counter!(ORDERS_CREATED).increment(1);
}

/// A committed transition of an order from `from` to `to` at `at`; `paid_at` is when it
/// was paid, if it was.
pub fn transition(from: OrderStatus, to: OrderStatus, at: Timestamp, paid_at: Option<Timestamp>) {
    match to {
        OrderStatus::Paid => counter!(ORDERS_PAID).increment(1),
        OrderStatus::Delivered => {
            counter!(ORDERS_DELIVERED).increment(1);
            if let Some(paid_at) = paid_at {
                #[allow(clippy::cast_precision_loss)]
                histogram!(DELIVERY_LATENCY).record((at.0 - paid_at.0).max(0) as f64);
            }
        }
        _ => {}
    }
    if to.needs_a_person() && !from.needs_a_person() {
        exception_filed(to.as_str());
    }
}

/// Something went into the exception queue: an order, or a payment record.
pub fn exception_filed(cause: &str) {
    counter!(EXCEPTIONS_FILED).increment(1);
    counter!(EXCEPTIONS_FILED, "Cause" => cause.to_owned()).increment(1);
}

pub fn oldest_exception_age(seconds: i64) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(OLDEST_EXCEPTION_AGE).set(seconds.max(0) as f64);
}

pub fn stock_mismatches(count: usize) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(STOCK_MISMATCHES).set(count as f64);
}

pub fn settlement_mismatches(count: u32) {
    gauge!(SETTLEMENT_MISMATCHES).set(f64::from(count));
}

pub fn supplier_error(supplier_id: &str) {
    counter!(SUPPLIER_ERRORS, "Supplier" => supplier_id.to_owned()).increment(1);
}

pub fn provider_error(provider: &str) {
    counter!(PROVIDER_ERRORS, "Provider" => provider.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that installs the process's recorder: the lines it writes are EMF
    /// documents CloudWatch accepts (namespace, dimension sets, units, values).
    #[test]
    fn counts_are_written_as_embedded_metric_format() {
        init();
        let collector = COLLECTOR.get().expect("installed");
        let at = Timestamp(1_800_000_000_000);
        order_created();
        transition(OrderStatus::PendingPayment, OrderStatus::Paid, at, None);
        transition(
            OrderStatus::Paid,
            OrderStatus::Delivered,
            Timestamp(at.0 + 420),
            Some(at),
        );
        transition(OrderStatus::Paid, OrderStatus::DeliveryFailed, at, None);
        // Failing again is not a new exception.
        transition(
            OrderStatus::DeliveryFailed,
            OrderStatus::DeliveryFailed,
            at,
            None,
        );
        supplier_error("sim-mobile");
        oldest_exception_age(90);
        let mut out = Vec::new();
        flush_to(collector, &mut out).expect("flush");
        let docs: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
            .collect();
        let value = |name: &str, dimension: Option<(&str, &str)>| {
            docs.iter()
                .find(|doc| {
                    doc.get(name).is_some()
                        && dimension.is_none_or(|(k, v)| doc[k] == v)
                        && doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
                            .as_array()
                            .map(Vec::len)
                            == Some(usize::from(dimension.is_some()))
                })
                .map(|doc| {
                    assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
                    doc[name].clone()
                })
        };
        assert_eq!(value(ORDERS_CREATED, None), Some(serde_json::json!(1)));
        assert_eq!(value(ORDERS_PAID, None), Some(serde_json::json!(1)));
        assert_eq!(value(ORDERS_DELIVERED, None), Some(serde_json::json!(1)));
        assert_eq!(
            value(DELIVERY_LATENCY, None),
            Some(serde_json::json!([420.0]))
        );
        assert_eq!(value(EXCEPTIONS_FILED, None), Some(serde_json::json!(1)));
        assert_eq!(
            value(EXCEPTIONS_FILED, Some(("Cause", "delivery_failed"))),
            Some(serde_json::json!(1))
        );
        assert_eq!(
            value(SUPPLIER_ERRORS, Some(("Supplier", "sim-mobile"))),
            Some(serde_json::json!(1))
        );
        assert_eq!(
            value(OLDEST_EXCEPTION_AGE, None),
            Some(serde_json::json!(90.0))
        );
        let latency = docs
            .iter()
            .find(|doc| doc.get(DELIVERY_LATENCY).is_some())
            .expect("latency");
        assert_eq!(
            latency["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["Name"] == DELIVERY_LATENCY))
                .map(|m| m["Unit"].clone()),
            Some(serde_json::json!("Milliseconds"))
        );
        // A flush starts over: counters are deltas per invocation.
        let mut again = Vec::new();
        flush_to(collector, &mut again).expect("flush");
        assert!(
            !String::from_utf8(again)
                .expect("utf-8")
                .contains(ORDERS_CREATED)
        );
    }
}
