//! Thin entrypoint: the EventBridge schedule's event carries nothing Kami needs; each
//! invocation sweeps as of now by the function's clock.

use kami_shared::Context;
use kami_shared::app::sweep::{self, SweepReport};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Deliveries that failed are queued again.
    let ctx = Context::from_env().await?.with_queue().build();
    run(service_fn(|_event: LambdaEvent<serde_json::Value>| {
        let ctx = ctx.clone();
        async move {
            sweep::sweep(&ctx, ctx.clock.now())
                .await
                .map_err(Error::from) as Result<SweepReport, Error>
        }
    }))
    .await
}
