//! Thin entrypoint: the EventBridge schedule's event carries nothing Kami needs; each
//! invocation sweeps as of now by the function's clock, within its deadline.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::adapters::clock::SystemClock;
use kami_shared::app::delivery::Budget;
use kami_shared::app::sweep::{self, SweepReport};
use kami_shared::domain::time::Timestamp;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Deliveries that failed are queued again; renewal orders get their access token's
    // hash (the order-token secret) and their notice queued.
    let ctx = Context::from_env()
        .await?
        .with_queue()
        .with_secrets()
        .await?
        .build();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let ctx = ctx.clone();
        // The runtime's deadline is the machine's time (not the platform clock locally).
        let deadline = Timestamp(i64::try_from(event.context.deadline).unwrap_or(i64::MAX));
        let budget = Budget::until(deadline, Arc::new(SystemClock));
        async move {
            let report = sweep::sweep_within(&ctx, ctx.clock.now(), &budget).await;
            kami_shared::metrics::flush();
            report.map_err(Error::from) as Result<SweepReport, Error>
        }
    }))
    .await
}
