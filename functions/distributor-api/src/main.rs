//! Thin entrypoint: the distributor HTTP API (routes in `kami_shared::http::distributor`).

use kami_shared::Context;
use kami_shared::http::{self, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    // DynamoDB only: a distributor's key is checked by its hash in the table.
    let ctx = Context::from_env().await?.build();
    serve(http::distributor::router(ctx)).await
}
