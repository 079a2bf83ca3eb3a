//! `functions/merchant-api`: what a merchant's own systems call with a merchant API key
//! (`Authorization: Bearer km_...`, issued by `POST /admin/api-keys`): the license API.
//! Each route names the scope it needs; a key without it is 403 `forbidden`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::{ApiResult, ApiRouter, AppState, ErrorBody, JsonBody, Reply, bearer, routes};
use crate::app::api_keys::{self, Scope};
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
}

/// The merchant API's router.
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx)
}

/// Checks the request's key holds `scope` (before its body is looked at).
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
