//! Thin entrypoint: build the context once at cold start, route each request through
//! `kami_shared::http::checkout`.

use kami_shared::{Context, http};
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let ctx = Context::from_env().await?;
    run(service_fn(|request: Request| {
        let ctx = ctx.clone();
        async move { Ok::<_, Error>(http::checkout(&ctx, request).await) }
    }))
    .await
}
