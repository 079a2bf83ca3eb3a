//! Thin entrypoint: the merchant API (routes in `kami_shared::http::merchant`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // A merchant key is checked by its hash in the table; a license is found by its
    // key's keyed fingerprint (a secret). Nothing here decrypts.
    let ctx = Context::from_env().await?.with_secrets().await?.build();
    serve(http::merchant::router(ctx)).await
}
