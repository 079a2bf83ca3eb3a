//! `functions/checkout`: the storefront. Public, but for `GET /orders/{order_id}`, which
//! takes the order's access token.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use lambda_http::request::RequestContext;

use super::openapi::{__path_get_spec, get_spec};
use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, IdempotencyKey, JsonBody, PathParam, Reply, bearer,
    routes,
};
use crate::app::catalog::{self, ProductView};
use crate::app::orders::{self, OrderCreated, OrderDetails, OrderRequest};
use crate::app::pay::{self, PayRequest, PaymentStarted};
use crate::app::subscriptions::{self, SubscriptionView};
use crate::error::Result;

/// The checkout function's routes (and the spec, which it serves).
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(get_product))
        .routes(routes!(create_order))
        .routes(routes!(get_order))
        .routes(routes!(start_payment))
        .routes(routes!(get_spec))
        .routes(routes!(open_link))
        .routes(routes!(cancel_subscription))
}

/// Turns a subscription's renewal off: no renewal order is made for its next period;
/// the paid period runs to its end (a renewal order already made stays payable until
/// then). Takes the access token of the order that started it; repeating it answers
/// the same.
#[utoipa::path(
    post,
    path = "/subscriptions/{subscription_id}/cancel",
    tag = "storefront",
    params(("subscription_id" = String, Path, description = "The subscription's id (the order that started it)")),
    security(("order_token" = [])),
    responses(
        (status = 200, description = "Renewal is off", body = SubscriptionView),
        (status = 404, description = "`subscription_not_found` (also for a wrong or missing token)", body = ErrorBody),
    )
)]
async fn cancel_subscription(
    State(ctx): State<AppState>,
    PathParam(subscription_id): PathParam<String>,
    headers: HeaderMap,
) -> ApiResult<SubscriptionView> {
    Ok(Reply(
        StatusCode::OK,
        subscriptions::cancel(&ctx, &subscription_id, bearer(&headers)).await?,
    ))
}

/// Opens a redemption link: while it is valid and has opens left, 302 to the
/// merchant's target with the signed assertion (`kami_order`, `kami_sku`, `kami_exp`,
/// `kami_sig`; docs/links.md); each answer counts as an open.
#[utoipa::path(
    get,
    path = "/r/{token}",
    tag = "storefront",
    params(("token" = String, Path, description = "The link's token, as delivered")),
    responses(
        (status = 302, description = "To the merchant's target with the signed assertion", headers(("location" = String, description = "target_url?...&kami_order=&kami_sku=&kami_exp=&kami_sig="))),
        (status = 404, description = "`link_not_found` (also a tampered token)", body = ErrorBody),
        (status = 410, description = "`link_expired`, `link_used`", body = ErrorBody),
    )
)]
async fn open_link(
    State(ctx): State<AppState>,
    PathParam(token): PathParam<String>,
) -> Result<axum::response::Response> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let location = crate::app::links::open(&ctx, &token).await?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            // The token is in this URL: the target must not see it as the referrer.
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response())
}

/// A product with its price and the units on sale.
#[utoipa::path(
    get,
    path = "/products/{sku}",
    tag = "storefront",
    params(("sku" = String, Path, description = "The product's sku")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
    )
)]
async fn get_product(
    State(ctx): State<AppState>,
    PathParam(sku): PathParam<String>,
) -> ApiResult<ProductView> {
    Ok(Reply(
        StatusCode::OK,
        catalog::public_product(&ctx, &sku).await?,
    ))
}

/// Reserves stock for the buyer and opens an order awaiting payment. A retry with the
/// same `Idempotency-Key` and body answers the same order; another body with that key
/// is refused.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "storefront",
    params(("Idempotency-Key" = String, Header, description = "16 to 128 visible ASCII characters, one per purchase (a UUID); stored as an HMAC")),
    request_body = OrderRequest,
    responses(
        (status = 201, description = "Order created (or the same order, on a retry)", body = OrderCreated),
        (status = 400, description = "`invalid_json`, `invalid_sku`, `invalid_quantity`, `quantity_over_limit`, `invalid_email`, `invalid_recipient`, `invalid_referral_code`, `missing_idempotency_key`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 409, description = "`out_of_stock`, `product_unavailable`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the key was used with another body", body = ErrorBody),
        (status = 429, description = "`too_many_pending_orders`: the client (its address, or the buyer email) already holds the product's cap of unpaid units", body = ErrorBody,
            headers(("Retry-After" = i64, description = "Seconds until the client's unpaid units have been paid for or released"))),
        (status = 503, description = "`busy_retry`: retry with the same key", body = ErrorBody),
    )
)]
async fn create_order(
    State(ctx): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    SourceIp(source): SourceIp,
    JsonBody(request): JsonBody<OrderRequest>,
) -> ApiResult<OrderCreated> {
    Ok(Reply(
        StatusCode::CREATED,
        orders::create_order(&ctx, &key, source.as_deref(), request).await?,
    ))
}

/// The client's address as API Gateway saw it (its request context), never a header a
/// client can set; none outside API Gateway.
struct SourceIp(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SourceIp {
    type Rejection = crate::error::Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self> {
        let source = match parts.extensions.get::<RequestContext>() {
            Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
            _ => None,
        };
        Ok(SourceIp(source))
    }
}

/// The order, its history and, once delivered, its card keys. Any mismatch of id or
/// token answers exactly as a missing order.
#[utoipa::path(
    get,
    path = "/orders/{order_id}",
    tag = "storefront",
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    security(("order_token" = [])),
    responses(
        (status = 200, description = "The order", body = OrderDetails),
        (status = 404, description = "`order_not_found` (also for a wrong or missing token)", body = ErrorBody),
    )
)]
async fn get_order(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
    headers: HeaderMap,
) -> ApiResult<OrderDetails> {
    Ok(Reply(
        StatusCode::OK,
        orders::get_order(&ctx, &order_id, bearer(&headers)).await?,
    ))
}

/// Opens a payment for the order on a channel (the one named, or the first by priority
/// that takes the order, failing over to the next when a provider cannot open it). A
/// retry with the same `Idempotency-Key` and body answers the same payment.
#[utoipa::path(
    post,
    path = "/orders/{order_id}/payments",
    tag = "storefront",
    params(
        ("order_id" = String, Path, description = "The order's id (ULID)"),
        ("Idempotency-Key" = String, Header, description = "16 to 128 visible ASCII characters, one per payment attempt the buyer means"),
    ),
    security(("order_token" = [])),
    request_body = PayRequest,
    responses(
        (status = 201, description = "The payment is open: `action` says where the buyer pays", body = PaymentStarted),
        (status = 400, description = "`invalid_json`, `unsupported_payment_method`, `invalid_channel_id`, `missing_idempotency_key`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 404, description = "`order_not_found` (also for a wrong or missing token), `channel_not_found`", body = ErrorBody),
        (status = 409, description = "`order_not_payable`, `channel_not_eligible`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 502, description = "`payment_provider_unavailable`: every eligible channel failed (each attempt is recorded on the order)", body = ErrorBody),
    )
)]
async fn start_payment(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PayRequest>,
) -> ApiResult<PaymentStarted> {
    Ok(Reply(
        StatusCode::CREATED,
        pay::start_payment(&ctx, &order_id, bearer(&headers), &key, request).await?,
    ))
}
