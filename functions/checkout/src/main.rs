//! Thin entrypoint: the checkout HTTP API (routes in `kami_shared::http::checkout`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // GET /orders decrypts delivered keys (KMS); order tokens are keyed by a secret.
    let ctx = Context::from_env()
        .await?
        .with_vault()
        .with_secrets()
        .await?
        .build();
    serve(http::finish(http::checkout::routes(), ctx)).await
}
