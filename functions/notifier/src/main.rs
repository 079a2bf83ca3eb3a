//! Thin entrypoint: SQS batches of notification messages (`app::notify`), failures
//! reported per message (`ReportBatchItemFailures`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use kami_shared::{Context, app::notify};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Email (SES) and SMS (SNS); the vault opens the goods for products that send them
    // in the notice; a renewal notice carries its order's access token (a secret).
    let ctx = Context::from_env()
        .await?
        .with_notifiers()
        .with_vault()
        .with_secrets()
        .await?
        .build();
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let ctx = ctx.clone();
        async move {
            let failures = notify::handle_batch(&ctx, event.payload).await;
            kami_shared::metrics::flush();
            Ok::<SqsBatchResponse, Error>(failures)
        }
    }))
    .await
}
