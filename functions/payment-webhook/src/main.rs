//! Thin entrypoint: the payment-webhook HTTP API (routes in `kami_shared::http::webhook`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // Paid orders are queued for delivery; the payment providers check signatures
    // against their secrets (a channel's, sealed under KMS: the vault opens them).
    let ctx = Context::from_env()
        .await?
        .with_queue()
        .with_vault()
        .with_payments()
        .with_secrets()
        .await?
        .build();
    serve(http::finish(http::webhook::routes(), ctx)).await
}
