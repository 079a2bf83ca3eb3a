//! `functions/admin`: merchant administration, every route behind the admin bearer token
//! (checked before routing: an unknown admin path without the token answers 401).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa_axum::routes;

use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, IdempotencyKey, JsonBody, PathParam, RawBody, Reply,
    bearer, header_str,
};
use crate::app::catalog::{self, AdminProductView};
use crate::app::channels::{self, ChannelList, ChannelView};
use crate::app::exceptions::{self, ExceptionPage, ExceptionsQuery};
use crate::app::import::{self, ImportReport};
use crate::app::operator::{
    self, ConfirmPaidRequest, ConfirmedPayment, OperatorOrderView, Redelivery, UnmatchedPayments,
};
use crate::app::refunds::{self, RefundRequest, RefundStarted};
use crate::app::suppliers::{self, SupplierList, SupplierView};
use crate::domain::card_key::{ImportFormat, JsonImport};
use crate::domain::channel::ChannelRequest;
use crate::domain::crypto::secrets_equal;
use crate::domain::product::NewProductRequest;
use crate::domain::supplier::SupplierRequest;
use crate::error::{Error, Result};
use crate::request::MAX_IMPORT_BODY;

/// The admin function's routes; `finish` adds the token check around all of them.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create_product))
        .routes(routes!(get_product))
        .routes(routes!(import_card_keys))
        .routes(routes!(get_order))
        .routes(routes!(redeliver))
        .routes(routes!(confirm_paid))
        .routes(routes!(refund_order))
        .routes(routes!(put_payment_channel, get_payment_channel))
        .routes(routes!(list_payment_channels))
        .routes(routes!(put_supplier, get_supplier))
        .routes(routes!(list_suppliers))
        .routes(routes!(unmatched_payments))
        .routes(routes!(list_exceptions))
}

/// The admin router, the token checked before any route (and before not-found).
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx.clone()).layer(middleware::from_fn_with_state(ctx, authorize))
}

async fn authorize(State(ctx): State<AppState>, request: Request, next: Next) -> Result<Response> {
    // This check runs before the router's own refresh (it guards unknown paths too).
    ctx.secrets.refresh_if_due(ctx.clock.now()).await;
    let expected = ctx.secrets.admin_token()?;
    match bearer(request.headers()) {
        Some(token) if secrets_equal(token.as_bytes(), expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(Error::Unauthorized),
    }
}

/// Creates a product (stock arrives with a card-key import).
#[utoipa::path(
    post,
    path = "/admin/products",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = NewProductRequest,
    responses(
        (status = 201, description = "Created, with empty stock", body = AdminProductView),
        (status = 400, description = "`invalid_json`, `invalid_sku`, `invalid_title`, `invalid_price`, `invalid_currency`, `invalid_max_per_order`, `invalid_pending_limits`, `invalid_reservation_seconds`, `unsupported_delivery_type`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 409, description = "`product_exists`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    )
)]
async fn create_product(
    State(ctx): State<AppState>,
    JsonBody(request): JsonBody<NewProductRequest>,
) -> ApiResult<AdminProductView> {
    Ok(Reply(
        StatusCode::CREATED,
        catalog::create_product(&ctx, request).await?,
    ))
}

/// A product with its whole stock (available, reserved, sold), read consistently.
#[utoipa::path(
    get,
    path = "/admin/products/{sku}",
    operation_id = "admin_get_product",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sku" = String, Path, description = "The product's sku")),
    responses(
        (status = 200, description = "The product", body = AdminProductView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
    )
)]
async fn get_product(
    State(ctx): State<AppState>,
    PathParam(sku): PathParam<String>,
) -> ApiResult<AdminProductView> {
    Ok(Reply(
        StatusCode::OK,
        catalog::admin_product(&ctx, &sku).await?,
    ))
}

fn import_format(headers: &HeaderMap) -> Result<ImportFormat> {
    let content_type = header_str(headers, "content-type").unwrap_or("application/json");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(ImportFormat::Json),
        "text/plain" => Ok(ImportFormat::Lines),
        "text/csv" => Ok(ImportFormat::Csv),
        other => Err(Error::UnsupportedMediaType(other.to_owned())),
    }
}

/// Imports card keys: validated, de-duplicated against every key ever imported, sealed
/// under KMS and added to stock. 201 when any key was accepted, 200 when none was.
#[utoipa::path(
    post,
    path = "/admin/products/{sku}/card-keys",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sku" = String, Path, description = "The product's sku")),
    request_body(
        description = "`{\"keys\": [...]}`; `text/plain`, one key per line; or `text/csv`, the key in the first column (a first record whose first field is `key` or `code` is a header). Keys are trimmed and NFKC-normalised; the normalised key is what is stored and delivered.",
        content(
            (JsonImport = "application/json"),
            (String = "text/plain"),
            (String = "text/csv"),
        )
    ),
    responses(
        (status = 201, description = "Keys accepted (some may be duplicates or invalid)", body = ImportReport),
        (status = 200, description = "No key accepted", body = ImportReport),
        (status = 400, description = "`invalid_json`, `invalid_encoding`, `invalid_csv`, `too_many_keys`, `unsupported_delivery_type`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
    )
)]
async fn import_card_keys(
    State(ctx): State<AppState>,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_IMPORT_BODY>,
) -> ApiResult<ImportReport> {
    let format = import_format(&headers)?;
    let report = import::import_card_keys(&ctx, &sku, format, &body).await?;
    let status = if report.accepted > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply(status, report))
}

/// Everything about an order for an operator: status, exception, history, payments and
/// which keys were allocated (ids only; codes are the buyer's alone).
#[utoipa::path(
    get,
    path = "/admin/orders/{order_id}",
    operation_id = "admin_get_order",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    responses(
        (status = 200, description = "The order", body = OperatorOrderView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    )
)]
async fn get_order(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
) -> ApiResult<OperatorOrderView> {
    Ok(Reply(
        StatusCode::OK,
        operator::order_for_operator(&ctx, &order_id).await?,
    ))
}

/// Queues delivery again for a paid order that waits (`paid`) or gave up
/// (`delivery_failed`). Safe to repeat: each order is delivered once.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/redeliver",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    responses(
        (status = 202, description = "Delivery queued", body = Redelivery),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the order does not await delivery", body = ErrorBody),
    )
)]
async fn redeliver(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
) -> ApiResult<Redelivery> {
    Ok(Reply(
        StatusCode::ACCEPTED,
        operator::redeliver(&ctx, &order_id).await?,
    ))
}

/// The exception queue: every order that needs a person (`delivery_failed`,
/// `payment_exception`, `paid_after_expiry`), with its cause, detail and age, oldest first
/// by default; one page per request (served by an index). Its history:
/// `GET /admin/orders/{order_id}`.
#[utoipa::path(
    get,
    path = "/admin/exceptions",
    tag = "admin",
    security(("admin_token" = [])),
    params(ExceptionsQuery),
    responses(
        (status = 200, description = "One page of the queue", body = ExceptionPage),
        (status = 400, description = "`invalid_query` (with the parameter's name as `path`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_exceptions(
    State(ctx): State<AppState>,
    uri: axum::http::Uri,
) -> ApiResult<ExceptionPage> {
    let query = ExceptionsQuery::parse(uri.query())?;
    Ok(Reply(
        StatusCode::OK,
        exceptions::list_exceptions(&ctx, query).await?,
    ))
}

/// Verified payments that name no order Kami can apply them to (`unknown_order`,
/// `unbound_event`), newest first, at most 100: money an operator must settle by hand.
/// Kept forever (no TTL).
#[utoipa::path(
    get,
    path = "/admin/payments/unmatched",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The unmatched payments", body = UnmatchedPayments),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn unmatched_payments(State(ctx): State<AppState>) -> ApiResult<UnmatchedPayments> {
    Ok(Reply(
        StatusCode::OK,
        operator::unmatched_payments(&ctx).await?,
    ))
}

/// Creates or replaces a payment channel (201 created, 200 replaced). Secret config
/// fields are sealed under KMS and never shown; a replace that omits one keeps it.
#[utoipa::path(
    put,
    path = "/admin/payment-channels/{channel_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("channel_id" = String, Path, description = "1 to 40 of a-z 0-9 _ -")),
    request_body = ChannelRequest,
    responses(
        (status = 201, description = "Created", body = ChannelView),
        (status = 200, description = "Replaced", body = ChannelView),
        (status = 400, description = "`invalid_channel_id`, `invalid_channel`, `invalid_channel_config` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    )
)]
async fn put_payment_channel(
    State(ctx): State<AppState>,
    PathParam(channel_id): PathParam<String>,
    JsonBody(request): JsonBody<ChannelRequest>,
) -> ApiResult<ChannelView> {
    let (created, view) = channels::put_channel(&ctx, &channel_id, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply(status, view))
}

/// One payment channel, secrets shown as `"<set>"`.
#[utoipa::path(
    get,
    path = "/admin/payment-channels/{channel_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("channel_id" = String, Path, description = "The channel's id")),
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`channel_not_found`", body = ErrorBody),
    )
)]
async fn get_payment_channel(
    State(ctx): State<AppState>,
    PathParam(channel_id): PathParam<String>,
) -> ApiResult<ChannelView> {
    Ok(Reply(
        StatusCode::OK,
        channels::get_channel(&ctx, &channel_id).await?,
    ))
}

/// Creates or replaces a top-up supplier (201 created, 200 replaced). The secret is
/// sealed under KMS and never shown; a replace without it keeps the stored one.
#[utoipa::path(
    put,
    path = "/admin/suppliers/{supplier_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("supplier_id" = String, Path, description = "1 to 40 of a-z 0-9 _ -")),
    request_body = SupplierRequest,
    responses(
        (status = 201, description = "Created", body = SupplierView),
        (status = 200, description = "Replaced", body = SupplierView),
        (status = 400, description = "`invalid_supplier_id`, `invalid_supplier_config` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    )
)]
async fn put_supplier(
    State(ctx): State<AppState>,
    PathParam(supplier_id): PathParam<String>,
    JsonBody(request): JsonBody<SupplierRequest>,
) -> ApiResult<SupplierView> {
    let (created, view) = suppliers::put_supplier(&ctx, &supplier_id, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply(status, view))
}

/// One supplier with its circuit breaker's state; the secret shown as `"<set>"`.
#[utoipa::path(
    get,
    path = "/admin/suppliers/{supplier_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("supplier_id" = String, Path, description = "The supplier's id")),
    responses(
        (status = 200, description = "The supplier", body = SupplierView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`supplier_not_found`", body = ErrorBody),
    )
)]
async fn get_supplier(
    State(ctx): State<AppState>,
    PathParam(supplier_id): PathParam<String>,
) -> ApiResult<SupplierView> {
    Ok(Reply(
        StatusCode::OK,
        suppliers::get_supplier(&ctx, &supplier_id).await?,
    ))
}

/// Every supplier, by id, with its circuit; secrets shown as `"<set>"`.
#[utoipa::path(
    get,
    path = "/admin/suppliers",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The suppliers", body = SupplierList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_suppliers(State(ctx): State<AppState>) -> ApiResult<SupplierList> {
    Ok(Reply(
        StatusCode::OK,
        suppliers::list_suppliers(&ctx).await?,
    ))
}

/// Every payment channel, by priority, secrets shown as `"<set>"`.
#[utoipa::path(
    get,
    path = "/admin/payment-channels",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The channels", body = ChannelList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_payment_channels(State(ctx): State<AppState>) -> ApiResult<ChannelList> {
    Ok(Reply(StatusCode::OK, channels::list_channels(&ctx).await?))
}

/// An operator confirms that the order's money arrived (seen outside the providers'
/// notifications): paid through the same idempotent path, delivered as any paid order.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/confirm-paid",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    request_body = ConfirmPaidRequest,
    responses(
        (status = 200, description = "Confirmed (or confirmed before): the order's status now", body = ConfirmedPayment),
        (status = 400, description = "`invalid_confirmation`, `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the order is already paid", body = ErrorBody),
    )
)]
async fn confirm_paid(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
    JsonBody(request): JsonBody<ConfirmPaidRequest>,
) -> ApiResult<ConfirmedPayment> {
    Ok(Reply(
        StatusCode::OK,
        operator::confirm_paid(&ctx, &order_id, request).await?,
    ))
}

/// Gives money back through the provider of the payment it came from (the one that paid
/// the order, or the `payment_id` named). The refunds of a payment never add up to more
/// than it took, also under concurrent requests. A retry with the same `Idempotency-Key`
/// answers the same refund (asked of the provider again while its outcome is unknown).
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/refunds",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("order_id" = String, Path, description = "The order's id (ULID)"),
        ("Idempotency-Key" = String, Header, description = "16 to 128 visible ASCII characters, one per refund meant"),
    ),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "Recorded and asked of the provider: `succeeded`, `pending` (settles later), `refused` (nothing given back) or `requested` (the provider's answer was lost: retry with the same key)", body = RefundStarted),
        (status = 400, description = "`invalid_refund` (with the field's path), `invalid_json`, `missing_idempotency_key`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`, `payment_not_found`", body = ErrorBody),
        (status = 409, description = "`refund_exceeds_payment`, `refund_not_possible` (the money did not come through a channel)", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorBody),
    )
)]
async fn refund_order(
    State(ctx): State<AppState>,
    PathParam(order_id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<RefundRequest>,
) -> ApiResult<RefundStarted> {
    Ok(Reply(
        StatusCode::CREATED,
        refunds::refund(&ctx, &order_id, &key, request).await?,
    ))
}
