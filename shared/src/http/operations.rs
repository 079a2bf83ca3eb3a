//! `functions/operations`: what operators do with orders (see one, send it again, confirm
//! its payment, refund it), the exception queue and unmatched payments, behind the same
//! admin bearer token as `functions/admin`. Its own function so each binary stays small
//! and each role holds only what its routes need (docs/security.md).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;

use super::admin::authorize;
use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, IdempotencyKey, JsonBody, PathParam, Reply, routes,
};
use crate::app::api_keys::{self, ApiKeyCreated, ApiKeyList, NewApiKeyRequest};
use crate::app::audit::{self, Actor, AuditPage, AuditQuery};
use crate::app::exceptions::{self, ExceptionPage, ExceptionsQuery};
use crate::app::licenses::{self, VoidedLicense};
use crate::app::operator::{
    self, ConfirmPaidRequest, ConfirmedPayment, MismatchResolution, OperatorOrderView,
    PaymentResolution, ReasonRequest, Redelivery, Resolution, SubstituteRequest, UnmatchedPayments,
};
use crate::app::refunds::{self, RefundRequest, RefundStarted};

/// The operations function's routes; `router` adds the token check around all of them.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(get_order))
        .routes(routes!(redeliver))
        .routes(routes!(confirm_paid))
        .routes(routes!(refund_order))
        .routes(routes!(unmatched_payments))
        .routes(routes!(list_exceptions))
        .routes(routes!(resolve_order))
        .routes(routes!(resolve_payment))
        .routes(routes!(resolve_mismatch))
        .routes(routes!(accept_payment))
        .routes(routes!(substitute))
        .routes(routes!(void_license))
        .routes(routes!(list_audit))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

/// The operations router, the admin token checked before any route (and before not-found).
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx.clone()).layer(middleware::from_fn_with_state(ctx, authorize))
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
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
) -> ApiResult<Redelivery> {
    Ok(Reply(
        StatusCode::ACCEPTED,
        operator::redeliver(&ctx, &actor, &order_id).await?,
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
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
    JsonBody(request): JsonBody<ConfirmPaidRequest>,
) -> ApiResult<ConfirmedPayment> {
    Ok(Reply(
        StatusCode::OK,
        operator::confirm_paid(&ctx, &actor, &order_id, request).await?,
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
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<RefundRequest>,
) -> ApiResult<RefundStarted> {
    Ok(Reply(
        StatusCode::CREATED,
        refunds::refund(&ctx, &actor, &order_id, &key, request).await?,
    ))
}

/// Settles an order that needs a person (`delivery_failed`, `payment_exception`,
/// `paid_after_expiry`) with a reason: it leaves the exception queue as `resolved`, the
/// stock it held goes back, and its history and the audit trail name who and why.
/// Idempotent: a resolved order answers the same.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/resolve",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "Resolved (by this request or an earlier one)", body = Resolution),
        (status = 400, description = "`invalid_reason` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the order does not need a person", body = ErrorBody),
    )
)]
async fn resolve_order(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
    JsonBody(request): JsonBody<ReasonRequest>,
) -> ApiResult<Resolution> {
    Ok(Reply(
        StatusCode::OK,
        operator::resolve(&ctx, &actor, &order_id, request).await?,
    ))
}

/// Takes the money of a `payment_exception` or `paid_after_expiry` order as it came and
/// sends the order to delivery (`paid`; stock taken again after expiry). Idempotent.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/accept-payment",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    request_body = ReasonRequest,
    responses(
        (status = 202, description = "Paid and queued for delivery (or accepted before: `queued` false)", body = Redelivery),
        (status = 400, description = "`invalid_reason` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition` (not a payment exception or a payment after expiry), `out_of_stock` (its stock is gone)", body = ErrorBody),
    )
)]
async fn accept_payment(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
    JsonBody(request): JsonBody<ReasonRequest>,
) -> ApiResult<Redelivery> {
    Ok(Reply(
        StatusCode::ACCEPTED,
        operator::accept_payment(&ctx, &actor, &order_id, request).await?,
    ))
}

/// Delivers card keys typed by the operator to a card-key order that needs a person
/// (`delivery_failed`, `payment_exception`, `paid_after_expiry`), one per slot it lacks:
/// checked, fingerprinted and sealed like an import's, delivered in one transaction; the
/// stock the order held goes back. Idempotent.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/substitute",
    tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = String, Path, description = "The order's id (ULID)")),
    request_body = SubstituteRequest,
    responses(
        (status = 200, description = "Delivered (by this request or a twin)", body = Resolution),
        (status = 400, description = "`invalid_substitute` (with the field's path: `reason`, `keys`, `keys[i]`), `duplicate_key` (`keys[i]` is already in the inventory), `unsupported_delivery_type`, `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the order does not need a person", body = ErrorBody),
    )
)]
async fn substitute(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(order_id): PathParam<String>,
    JsonBody(request): JsonBody<SubstituteRequest>,
) -> ApiResult<Resolution> {
    Ok(Reply(
        StatusCode::OK,
        operator::substitute(&ctx, &actor, &order_id, request).await?,
    ))
}

/// Settles a payment record in the exception queue (`duplicate_payment`,
/// `unknown_order`, `unbound_event`) with a reason, after giving the money back or
/// attaching it by hand: it leaves the queue, and the audit trail names who and why.
/// Idempotent.
#[utoipa::path(
    post,
    path = "/admin/payments/{provider}/{event_id}/resolve",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("provider" = String, Path, description = "The provider, as in the exception queue's `payment`"),
        ("event_id" = String, Path, description = "The provider's event id"),
    ),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "Resolved (by this request or an earlier one)", body = PaymentResolution),
        (status = 400, description = "`invalid_reason` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`payment_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the payment applied to its order", body = ErrorBody),
    )
)]
async fn resolve_payment(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(event): PathParam<(String, String)>,
    JsonBody(request): JsonBody<ReasonRequest>,
) -> ApiResult<PaymentResolution> {
    Ok(Reply(
        StatusCode::OK,
        operator::resolve_payment(&ctx, &actor, event, request).await?,
    ))
}

/// Voids one license key an order delivered (leaked, abused, replaced), with a reason:
/// it validates as `voided` and activates no more; the audit trail names who and why.
/// The key is named by its license id (`generated` in the operator's order view).
/// Idempotent: a voided key answers the same.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/licenses/{license_id}/void",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("order_id" = String, Path, description = "The order's id (ULID)"),
        ("license_id" = String, Path, description = "The license's id, as the order view's `generated` lists it"),
    ),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "Voided (by this request or an earlier one)", body = VoidedLicense),
        (status = 400, description = "`invalid_reason` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`, `license_not_found` (no such key in this order)", body = ErrorBody),
        (status = 409, description = "`license_not_active`: the key was refunded", body = ErrorBody),
    )
)]
async fn void_license(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam((order_id, license_id)): PathParam<(String, String)>,
    JsonBody(request): JsonBody<ReasonRequest>,
) -> ApiResult<VoidedLicense> {
    Ok(Reply(
        StatusCode::OK,
        licenses::void_license(&ctx, &actor, (&order_id, &license_id), request).await?,
    ))
}

/// Settles a reconciliation mismatch in the exception queue (`reconciliation_mismatch`:
/// a provider's bill and Kami's records differ) with a reason, after correcting it at
/// the provider or by hand: it leaves the queue (the period's report still lists it),
/// and the audit trail names who and why. Idempotent.
#[utoipa::path(
    post,
    path = "/admin/reconciliation/{period}/mismatches/{mismatch_id}/resolve",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("period" = String, Path, description = "The settlement period (`YYYY-MM-DD`), as in the exception queue's `mismatch`"),
        ("mismatch_id" = String, Path, description = "The mismatch's id, `{channel_id}:{kind}:{line_kind}:{key}`, as in the exception queue's `mismatch`"),
    ),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "Resolved (by this request or an earlier one)", body = MismatchResolution),
        (status = 400, description = "`invalid_reason` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`mismatch_not_found`", body = ErrorBody),
    )
)]
async fn resolve_mismatch(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(mismatch): PathParam<(String, String)>,
    JsonBody(request): JsonBody<ReasonRequest>,
) -> ApiResult<MismatchResolution> {
    Ok(Reply(
        StatusCode::OK,
        operator::resolve_mismatch(&ctx, &actor, mismatch, request).await?,
    ))
}

/// The audit trail: every admin and operator action on one order, product, payment
/// channel or supplier, or by one operator, newest first (who, when, from which address,
/// what, why, before and after; never a card key or a secret).
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    security(("admin_token" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of the trail", body = AuditPage),
        (status = 400, description = "`invalid_query` (with the parameter's name as `path`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_audit(State(ctx): State<AppState>, uri: axum::http::Uri) -> ApiResult<AuditPage> {
    let query = AuditQuery::parse(uri.query())?;
    Ok(Reply(StatusCode::OK, audit::list_audit(&ctx, query).await?))
}

/// Issues a merchant API key for the merchant API (`/entitlements`, `/licenses`) with the
/// scopes it may use. The key is in this answer only: Kami keeps its hash.
#[utoipa::path(
    post,
    path = "/admin/api-keys",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = NewApiKeyRequest,
    responses(
        (status = 201, description = "The key, shown once", body = ApiKeyCreated),
        (status = 400, description = "`invalid_scope`, `invalid_name` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn create_api_key(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<NewApiKeyRequest>,
) -> ApiResult<ApiKeyCreated> {
    Ok(Reply(
        StatusCode::CREATED,
        api_keys::create(&ctx, &actor, request).await?,
    ))
}

/// Every merchant API key, oldest first, revoked ones with `revoked_at`; never the key.
#[utoipa::path(
    get,
    path = "/admin/api-keys",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn list_api_keys(State(ctx): State<AppState>) -> ApiResult<ApiKeyList> {
    Ok(Reply(StatusCode::OK, api_keys::list(&ctx).await?))
}

/// Revokes a merchant API key for good: it is refused (401) from now on. Idempotent.
#[utoipa::path(
    delete,
    path = "/admin/api-keys/{api_key_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("api_key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked (by this request or an earlier one)"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`api_key_not_found`", body = ErrorBody),
    )
)]
async fn revoke_api_key(
    State(ctx): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(api_key_id): PathParam<String>,
) -> crate::error::Result<StatusCode> {
    api_keys::revoke(&ctx, &actor, &api_key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
