//! Thin entrypoint: the checkout HTTP API (routes in `kami_shared::http`).

use kami_shared::http::{Api, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    serve(Api::Checkout).await
}
