//! Thin entrypoint: the admin HTTP API (routes in `kami_shared::http::admin`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // Imports, channels and suppliers seal under KMS; the bearer token is a secret.
    let ctx = Context::from_env()
        .await?
        .with_vault()
        .with_secrets()
        .await?
        .build();
    serve(http::admin::router(ctx)).await
}
