//! Thin entrypoint: every hour (the `StockAudit` schedule), check every card-key
//! product's stock counters against its keys, within the invocation's deadline.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::adapters::clock::SystemClock;
use kami_shared::app::delivery::Budget;
use kami_shared::app::stock_audit::{self, StockAuditReport};
use kami_shared::domain::time::Timestamp;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // DynamoDB only: it reads and reports, it changes nothing.
    let ctx = Context::from_env().await?.build();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let ctx = ctx.clone();
        // The runtime's deadline is the machine's time (not the platform clock locally).
        let deadline = Timestamp(i64::try_from(event.context.deadline).unwrap_or(i64::MAX));
        let budget = Budget::until(deadline, Arc::new(SystemClock));
        async move {
            let report = stock_audit::audit_stock(&ctx, &budget).await;
            kami_shared::metrics::flush();
            report.map_err(Error::from) as Result<StockAuditReport, Error>
        }
    }))
    .await
}
