//! Thin entrypoint: SQS batches of delivery messages, failures reported per message
//! (`ReportBatchItemFailures`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use kami_shared::{Context, app::delivery};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Assigning keys is DynamoDB only: no queue, vault or secrets.
    let ctx = Context::from_env().await?.build();
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let ctx = ctx.clone();
        async move { Ok::<SqsBatchResponse, Error>(delivery::handle_batch(&ctx, event.payload).await) }
    }))
    .await
}
