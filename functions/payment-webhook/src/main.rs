//! Thin entrypoint: the payment-webhook HTTP API (routes in `kami_shared::http`).

use kami_shared::http::{Api, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    serve(Api::PaymentWebhook).await
}
