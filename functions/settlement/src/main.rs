//! Thin entrypoint: every day (the `Settlement` schedule), mature commissions past the
//! refund window and close each distributor's statements of the day before; an event
//! with `{"period": "YYYY-MM-DD"}` closes that day instead, and `"distributors": [...]`
//! only theirs.

use kami_shared::Context;
use kami_shared::app::settlement::{self, RunReport, RunRequest};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // The ledger in DynamoDB; the channels' secrets opened by the vault to fetch bills.
    let ctx = Context::from_env().await?.with_vault().build();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let ctx = ctx.clone();
        async move {
            // A scheduled event (EventBridge's own fields) names no period: yesterday.
            let request: RunRequest = serde_json::from_value(event.payload)?;
            let report = settlement::run(&ctx, &request).await;
            kami_shared::metrics::flush();
            report.map_err(Error::from) as Result<RunReport, Error>
        }
    }))
    .await
}
