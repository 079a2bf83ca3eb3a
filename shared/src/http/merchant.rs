//! `functions/merchant-api`: what a merchant's own systems call with a merchant API key
//! (`Authorization: Bearer km_...`, issued by `POST /admin/api-keys`): the license API
//! and the entitlements API.
//! Each route names the scope it needs; a key without it is 403 `forbidden`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, JsonBody, PathParam, Reply, bearer, routes,
};
use crate::app::api_keys::{self, Scope};
use crate::app::entitlements::{
    self, EntitlementDetails, EntitlementList, RedeemRequest, Redeemed,
};
use crate::app::licenses::{
    self, ActivateRequest, Activated, DeactivateRequest, Deactivated, LicenseValidity,
    ValidateRequest,
};
use crate::error::{Error, Result};

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(validate_license))
        .routes(routes!(activate_license))
        .routes(routes!(deactivate_license))
        .routes(routes!(list_entitlements))
        .routes(routes!(get_entitlement))
        .routes(routes!(redeem))
}

/// The merchant API's router.
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx)
}

/// Checks the request's key holds `scope`, before the route does anything (its JSON
/// body is parsed first: a malformed body is 400 whatever the key).
async fn allow(ctx: &AppState, headers: &HeaderMap, scope: Scope) -> Result<()> {
    let key = bearer(headers).ok_or(Error::Unauthorized)?;
    api_keys::authenticate(ctx, key, scope).await.map(drop)
}

/// Whether a license key is valid now (and, given `instance_id`, that instance active).
#[utoipa::path(
    post,
    path = "/licenses/validate",
    tag = "merchant",
    security(("merchant_key" = ["licenses"])),
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "Where the key stands", body = LicenseValidity),
        (status = 400, description = "`invalid_license_key`, `license_key_typo` (the check character disagrees), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key lacks the `licenses` scope", body = ErrorBody),
        (status = 404, description = "`license_not_found`, `instance_not_found`", body = ErrorBody),
    )
)]
async fn validate_license(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ValidateRequest>,
) -> ApiResult<LicenseValidity> {
    allow(&ctx, &headers, Scope::Licenses).await?;
    Ok(Reply(
        StatusCode::OK,
        licenses::validate(&ctx, request).await?,
    ))
}

/// Activates an instance of a license key, within its activation limit (atomic under
/// any concurrency). The same `instance_name` again is the same instance, counted once.
#[utoipa::path(
    post,
    path = "/licenses/activate",
    tag = "merchant",
    security(("merchant_key" = ["licenses"])),
    request_body = ActivateRequest,
    responses(
        (status = 200, description = "The instance", body = Activated),
        (status = 400, description = "`invalid_license_key`, `license_key_typo`, `invalid_instance_name`, `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`license_not_found`", body = ErrorBody),
        (status = 409, description = "`activation_limit_reached`, `license_not_active` (expired, voided or refunded)", body = ErrorBody),
    )
)]
async fn activate_license(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ActivateRequest>,
) -> ApiResult<Activated> {
    allow(&ctx, &headers, Scope::Licenses).await?;
    Ok(Reply(
        StatusCode::OK,
        licenses::activate(&ctx, request).await?,
    ))
}

/// Deactivates an instance, giving its activation back.
#[utoipa::path(
    post,
    path = "/licenses/deactivate",
    tag = "merchant",
    security(("merchant_key" = ["licenses"])),
    request_body = DeactivateRequest,
    responses(
        (status = 200, description = "Deactivated", body = Deactivated),
        (status = 400, description = "`invalid_license_key`, `license_key_typo`, `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`license_not_found`, `instance_not_found` (also one deactivated already)", body = ErrorBody),
    )
)]
async fn deactivate_license(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<DeactivateRequest>,
) -> ApiResult<Deactivated> {
    allow(&ctx, &headers, Scope::Licenses).await?;
    Ok(Reply(
        StatusCode::OK,
        licenses::deactivate(&ctx, request).await?,
    ))
}

/// The account's active entitlements (every one with `include_ended=true`): memberships
/// with their period, count cards with their uses left, and the orders behind each.
#[utoipa::path(
    get,
    path = "/entitlements",
    tag = "merchant",
    security(("merchant_key" = ["entitlements:read"])),
    params(
        ("account_id" = String, Query, description = "The buyer's account (1 to 128 visible ASCII characters)"),
        ("include_ended" = Option<bool>, Query, description = "Also expired, used-up and revoked ones"),
    ),
    responses(
        (status = 200, description = "The account's entitlements", body = EntitlementList),
        (status = 400, description = "`invalid_query` (with the parameter's name as `path`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key lacks `entitlements:read`", body = ErrorBody),
    )
)]
async fn list_entitlements(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<EntitlementList> {
    allow(&ctx, &headers, Scope::EntitlementsRead).await?;
    Ok(Reply(
        StatusCode::OK,
        entitlements::list(&ctx, uri.query()).await?,
    ))
}

/// One entitlement with its redemption history.
#[utoipa::path(
    get,
    path = "/entitlements/{entitlement_id}",
    tag = "merchant",
    security(("merchant_key" = ["entitlements:read"])),
    params(("entitlement_id" = String, Path, description = "The entitlement's id")),
    responses(
        (status = 200, description = "The entitlement", body = EntitlementDetails),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`entitlement_not_found`", body = ErrorBody),
    )
)]
async fn get_entitlement(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    PathParam(entitlement_id): PathParam<String>,
) -> ApiResult<EntitlementDetails> {
    allow(&ctx, &headers, Scope::EntitlementsRead).await?;
    Ok(Reply(
        StatusCode::OK,
        entitlements::details(&ctx, &entitlement_id).await?,
    ))
}

/// Consumes uses of a count card, once per `redemption_id` (sent again: the same answer,
/// consumed once); never below zero, whatever runs at the same time.
#[utoipa::path(
    post,
    path = "/entitlements/{entitlement_id}/redemptions",
    tag = "merchant",
    security(("merchant_key" = ["entitlements:redeem"])),
    params(("entitlement_id" = String, Path, description = "The entitlement's id")),
    request_body = RedeemRequest,
    responses(
        (status = 201, description = "Consumed (by this request or an earlier one with the same id)", body = Redeemed),
        (status = 400, description = "`invalid_redemption_id`, `invalid_uses` (with the field's path), `invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key lacks `entitlements:redeem`", body = ErrorBody),
        (status = 404, description = "`entitlement_not_found`", body = ErrorBody),
        (status = 409, description = "`no_uses_left`, `entitlement_expired`, `entitlement_revoked`, `not_redeemable` (a membership), `redemption_id_reused`", body = ErrorBody),
    )
)]
async fn redeem(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    PathParam(entitlement_id): PathParam<String>,
    JsonBody(request): JsonBody<RedeemRequest>,
) -> ApiResult<Redeemed> {
    allow(&ctx, &headers, Scope::EntitlementsRedeem).await?;
    Ok(Reply(
        StatusCode::CREATED,
        entitlements::redeem(&ctx, &entitlement_id, request).await?,
    ))
}
