//! `functions/admin`: the merchant's catalogue, stock, payment channels and suppliers, every
//! route behind the admin bearer token (orders and exceptions: `functions/operations`)
//! (checked before routing: an unknown admin path without the token answers 401).

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;

use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, JsonBody, PathParam, RawBody, Reply, bearer,
    header_str, routes,
};
use crate::app::audit::Actor;
use crate::app::catalog::{self, AdminProductView};
use crate::app::channels::{self, ChannelList, ChannelView};
use crate::app::distributors::{
    self, DistributorKeyIssued, DistributorList, DistributorView, StatementView,
};
use crate::app::import::{self, ImportReport};
use crate::app::settlement::{self, PayoutRequest, Settlement, SupplierPayables};
use crate::app::suppliers::{self, SupplierList, SupplierView};
use crate::domain::card_key::{ImportFormat, JsonImport};
use crate::domain::channel::ChannelRequest;
use crate::domain::distributor::DistributorRequest;
use crate::domain::product::NewProductRequest;
use crate::domain::supplier::SupplierRequest;
use crate::error::{Error, Result};
use crate::request::MAX_IMPORT_BODY;
use crate::store::StatementRecord;

/// The admin function's routes; `finish` adds the token check around all of them.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create_product))
        .routes(routes!(get_product))
        .routes(routes!(import_card_keys))
        .routes(routes!(put_payment_channel, get_payment_channel))
        .routes(routes!(list_payment_channels))
        .routes(routes!(put_supplier, get_supplier))
        .routes(routes!(list_suppliers))
        .routes(routes!(put_distributor, get_distributor))
        .routes(routes!(list_distributors))
        .routes(routes!(issue_distributor_key))
        .routes(routes!(get_statement))
        .routes(routes!(mark_statement_paid))
        .routes(routes!(get_settlement))
        .routes(routes!(get_supplier_payables))
}

/// The admin router, the token checked before any route (and before not-found).
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx.clone()).layer(middleware::from_fn_with_state(ctx, authorize))
}

pub(super) async fn authorize(
    State(ctx): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response> {
    // This check runs before the router's own refresh (it guards unknown paths too).
    ctx.secrets.refresh_if_due(ctx.clock.now()).await;
    let name = match bearer(request.headers()) {
        Some(token) => ctx.secrets.admin_actor(token)?,
        None => None,
    };
    let name = name.ok_or(Error::Unauthorized)?;
    // The address API Gateway saw (never a header a client could set).
    let source_ip = match lambda_http::RequestExt::request_context_ref(&request) {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(context)) => {
            context.http.source_ip.clone()
        }
        _ => None,
    };
    request.extensions_mut().insert(Actor { name, source_ip });
    Ok(next.run(request).await)
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
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<NewProductRequest>,
) -> ApiResult<AdminProductView> {
    Ok(Reply(
        StatusCode::CREATED,
        catalog::create_product(&ctx, &actor, request).await?,
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
    Extension(actor): Extension<Actor>,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_IMPORT_BODY>,
) -> ApiResult<ImportReport> {
    let format = import_format(&headers)?;
    let report = import::import_card_keys(&ctx, &actor, &sku, format, &body).await?;
    let status = if report.accepted > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply(status, report))
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
    Extension(actor): Extension<Actor>,
    PathParam(channel_id): PathParam<String>,
    JsonBody(request): JsonBody<ChannelRequest>,
) -> ApiResult<ChannelView> {
    let (created, view) = channels::put_channel(&ctx, &actor, &channel_id, request).await?;
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
    Extension(actor): Extension<Actor>,
    PathParam(supplier_id): PathParam<String>,
    JsonBody(request): JsonBody<SupplierRequest>,
) -> ApiResult<SupplierView> {
    let (created, view) = suppliers::put_supplier(&ctx, &actor, &supplier_id, request).await?;
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

/// Creates or replaces a distributor (201 created, 200 replaced or unchanged). Its place
/// in the tree is checked against the tree as it is (no cycle, no deeper than
/// `DISTRIBUTOR_MAX_DEPTH`); orders already made keep the chain they were made through.
#[utoipa::path(
    put,
    path = "/admin/distributors/{distributor_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("distributor_id" = String, Path, description = "1 to 64 of A-Z a-z 0-9 _ -")),
    request_body = DistributorRequest,
    responses(
        (status = 201, description = "Created", body = DistributorView),
        (status = 200, description = "Replaced", body = DistributorView),
        (status = 400, description = "`invalid_distributor_id`, `invalid_distributor`, `invalid_distributor_parent`, `invalid_referral_code`, `invalid_commission` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 409, description = "`referral_code_taken`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    )
)]
async fn put_distributor(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(distributor_id): PathParam<String>,
    JsonBody(request): JsonBody<DistributorRequest>,
) -> ApiResult<DistributorView> {
    let (created, view) =
        distributors::put_distributor(&ctx, &actor, &distributor_id, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply(status, view))
}

/// One distributor (never its API key).
#[utoipa::path(
    get,
    path = "/admin/distributors/{distributor_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("distributor_id" = String, Path, description = "The distributor's id")),
    responses(
        (status = 200, description = "The distributor", body = DistributorView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`distributor_not_found`", body = ErrorBody),
    )
)]
async fn get_distributor(
    State(ctx): State<AppState>,
    PathParam(distributor_id): PathParam<String>,
) -> ApiResult<DistributorView> {
    Ok(Reply(
        StatusCode::OK,
        distributors::get_distributor(&ctx, &distributor_id).await?,
    ))
}

/// Every distributor, oldest first, a page at a time (`limit` 1 to 100, default 50;
/// `cursor` from the previous page).
#[utoipa::path(
    get,
    path = "/admin/distributors",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("limit" = Option<i32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page", body = DistributorList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_distributors(
    State(ctx): State<AppState>,
    uri: axum::http::Uri,
) -> ApiResult<DistributorList> {
    Ok(Reply(
        StatusCode::OK,
        distributors::list_distributors(&ctx, uri.query()).await?,
    ))
}

/// Issues the distributor a new API key for `/distributor/*`, shown this once (only
/// its hash is kept); the previous key stops working.
#[utoipa::path(
    post,
    path = "/admin/distributors/{distributor_id}/api-key",
    tag = "admin",
    security(("admin_token" = [])),
    params(("distributor_id" = String, Path, description = "The distributor's id")),
    responses(
        (status = 201, description = "The new key", body = DistributorKeyIssued),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`distributor_not_found`", body = ErrorBody),
    )
)]
async fn issue_distributor_key(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(distributor_id): PathParam<String>,
) -> ApiResult<DistributorKeyIssued> {
    Ok(Reply(
        StatusCode::CREATED,
        distributors::issue_api_key(&ctx, &actor, &distributor_id).await?,
    ))
}

/// One statement with its lines; CSV with `Accept: text/csv`.
#[utoipa::path(
    get,
    path = "/admin/statements/{statement_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("statement_id" = String, Path, description = "`{period}_{currency}_{distributor_id}`")),
    responses(
        (status = 200, description = "The statement", content((StatementView = "application/json"), (String = "text/csv"))),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`statement_not_found`", body = ErrorBody),
    )
)]
async fn get_statement(
    State(ctx): State<AppState>,
    PathParam(statement_id): PathParam<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let view = settlement::admin_statement(&ctx, &statement_id).await?;
    super::json_or_csv(&view, &headers)
}

/// Records a closed statement's payout, once: the same reference again answers the
/// same; the action is in the audit trail (`statement`).
#[utoipa::path(
    post,
    path = "/admin/statements/{statement_id}/paid",
    tag = "admin",
    security(("admin_token" = [])),
    params(("statement_id" = String, Path, description = "The statement's id")),
    request_body = PayoutRequest,
    responses(
        (status = 200, description = "The statement, paid", body = StatementRecord),
        (status = 400, description = "`invalid_reference`, `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`statement_not_found`", body = ErrorBody),
        (status = 409, description = "`statement_already_paid` (another reference), `statement_open`", body = ErrorBody),
    )
)]
async fn mark_statement_paid(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(statement_id): PathParam<String>,
    JsonBody(request): JsonBody<PayoutRequest>,
) -> ApiResult<StatementRecord> {
    Ok(Reply(
        StatusCode::OK,
        settlement::mark_paid(&ctx, &actor, &statement_id, request).await?,
    ))
}

/// A period's statements and its last settlement run (what matured, what closed, what
/// did not reconcile); CSV of the statements with `Accept: text/csv`.
#[utoipa::path(
    get,
    path = "/admin/settlements",
    tag = "admin",
    security(("admin_token" = [])),
    params(("period" = String, Query, description = "The day, `YYYY-MM-DD`, in the settlement's zone")),
    responses(
        (status = 200, description = "The period", content((Settlement = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_period`, `invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn get_settlement(
    State(ctx): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response> {
    super::json_or_csv(&settlement::settlement(&ctx, uri.query()).await?, &headers)
}

/// What Kami owes a supplier for its top-ups of a period: the period's statements (one
/// per currency, once a run closed them) and each top-up at its cost; CSV of the top-ups
/// with `Accept: text/csv`.
#[utoipa::path(
    get,
    path = "/admin/settlements/{period}/suppliers/{supplier_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("period" = String, Path, description = "The day, `YYYY-MM-DD`, in the settlement's zone"),
        ("supplier_id" = String, Path, description = "The supplier"),
    ),
    responses(
        (status = 200, description = "The supplier's payables", content((SupplierPayables = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_period`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`supplier_not_found`", body = ErrorBody),
    )
)]
async fn get_supplier_payables(
    State(ctx): State<AppState>,
    PathParam((period, supplier_id)): PathParam<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let found = settlement::supplier_payables(&ctx, &period, &supplier_id).await?;
    super::json_or_csv(&found, &headers)
}
