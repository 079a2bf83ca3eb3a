//! Thin entrypoint: SQS batches of delivery messages, failures reported per message
//! (`ReportBatchItemFailures`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use std::sync::Arc;

use kami_shared::adapters::clock::SystemClock;
use kami_shared::domain::time::Timestamp;
use kami_shared::{Context, app::delivery};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Card keys are DynamoDB only; top-ups open their supplier's secret and license
    // keys are sealed (the vault); a license is found by a keyed fingerprint (a secret).
    // A delivered order is queued for the notifier.
    let ctx = Context::from_env()
        .await?
        .with_queue()
        .with_vault()
        .with_secrets()
        .await?
        .build();
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let ctx = ctx.clone();
        // The runtime's deadline is the machine's time (not the platform clock locally).
        let deadline = Timestamp(i64::try_from(event.context.deadline).unwrap_or(i64::MAX));
        let budget = delivery::Budget::until(deadline, Arc::new(SystemClock));
        async move {
            let failures = delivery::handle_batch_within(&ctx, event.payload, budget).await;
            kami_shared::metrics::flush();
            Ok::<SqsBatchResponse, Error>(failures)
        }
    }))
    .await
}
