//! Thin entrypoint: the operations HTTP API (routes in `kami_shared::http::operations`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // Redelivery and confirmed payments enqueue; refunds open a channel's sealed secret
    // (the vault); the bearer token and the refund fingerprint key are secrets.
    let ctx = Context::from_env()
        .await?
        .with_vault()
        .with_queue()
        .with_secrets()
        .await?
        .build();
    serve(http::operations::router(ctx)).await
}
