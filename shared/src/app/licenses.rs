//! The license API for a merchant's software (`functions/merchant-api`, scope
//! `licenses`): validate a key, activate an instance, deactivate one. In the manner of
//! Lemon Squeezy's license API; docs/licenses.md.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::fulfil::license_key::license_fingerprint;
use crate::config::Context;
use crate::domain::license::{LicenseKey, LicenseStatus, validate_instance_name};
use crate::error::{ConflictKind, Error, Result};
use crate::request::RequestBody;
use crate::store::{Activation, LicenseState};

/// Reads of a license racing a deactivation.
const ACTIVATE_ATTEMPTS: u32 = 3;

/// `POST /licenses/validate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The key as the buyer typed it (any case).
    #[schema(example = "7KQ2M-XW9PA-C4RTN-8HJ34")]
    pub license_key: String,
    /// An instance to check as well: its activation must be active.
    pub instance_id: Option<String>,
}

impl RequestBody for ValidateRequest {}

/// `POST /licenses/activate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub license_key: String,
    /// 1 to 200 printable characters; activating the same name again is the same
    /// instance, counted once.
    #[schema(example = "Alice's laptop")]
    pub instance_name: String,
}

impl RequestBody for ActivateRequest {}

/// `POST /licenses/deactivate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    pub license_key: String,
    pub instance_id: String,
}

impl RequestBody for DeactivateRequest {}

/// Where a key stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseValidity {
    /// True only for an active key (and, when asked, an active instance of it).
    pub valid: bool,
    pub status: LicenseStatus,
    pub activations_left: u32,
    /// When it stops being valid; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Activated {
    pub instance_id: String,
    pub activations_left: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deactivated {
    pub activations_left: u32,
}

/// The license a typed key names: malformed and mistyped keys are 400s; a well-formed
/// key Kami never generated is 404 `license_not_found`.
async fn find(ctx: &Context, typed: &str) -> Result<(String, LicenseState)> {
    let key = LicenseKey::parse(typed)?;
    let fingerprint = license_fingerprint(ctx.secrets.fingerprint_key()?, &key)?;
    let state = ctx
        .store
        .license(&fingerprint)
        .await?
        .ok_or(Error::NotFound("license"))?;
    Ok((fingerprint, state))
}

fn activations_left(state: &LicenseState) -> u32 {
    state
        .license
        .activation_limit
        .saturating_sub(state.license.activations)
}

pub async fn validate(ctx: &Context, request: ValidateRequest) -> Result<LicenseValidity> {
    let (_, state) = find(ctx, &request.license_key).await?;
    let status = state.license.status_at(ctx.clock.now());
    if let Some(instance_id) = &request.instance_id
        && !state
            .instances
            .iter()
            .any(|instance| &instance.instance_id == instance_id)
    {
        return Err(Error::NotFound("license instance"));
    }
    Ok(LicenseValidity {
        valid: status == LicenseStatus::Active,
        status,
        activations_left: activations_left(&state),
        expires_at: state.license.expires_at.map(|at| at.to_rfc3339()),
    })
}

pub async fn activate(ctx: &Context, request: ActivateRequest) -> Result<Activated> {
    validate_instance_name(&request.instance_name)?;
    let (fingerprint, state) = find(ctx, &request.license_key).await?;
    // An ended key activates nothing, not even a name already active on it.
    if state.license.status_at(ctx.clock.now()) != LicenseStatus::Active {
        return Err(Error::Conflict(ConflictKind::LicenseNotActive));
    }
    for _ in 0..ACTIVATE_ATTEMPTS {
        let outcome = ctx
            .store
            .activate_license(&fingerprint, &request.instance_name, ctx.clock.now())
            .await;
        let instance_id = match outcome {
            Ok(
                Activation::Activated { instance_id } | Activation::AlreadyActive { instance_id },
            ) => instance_id,
            Ok(Activation::LimitReached) => {
                return Err(Error::Conflict(ConflictKind::ActivationLimitReached));
            }
            Ok(Activation::NotActive) => {
                return Err(Error::Conflict(ConflictKind::LicenseNotActive));
            }
            Err(Error::Contention(_)) => continue,
            Err(err) => return Err(err),
        };
        let state = ctx
            .store
            .license(&fingerprint)
            .await?
            .ok_or(Error::NotFound("license"))?;
        return Ok(Activated {
            instance_id,
            activations_left: activations_left(&state),
        });
    }
    Err(Error::Contention("license instance"))
}

/// Deactivating an instance that is not active answers 404 `instance_not_found` (a
/// repeated deactivation too: the first one counted).
pub async fn deactivate(ctx: &Context, request: DeactivateRequest) -> Result<Deactivated> {
    let (fingerprint, state) = find(ctx, &request.license_key).await?;
    let instance = state
        .instances
        .iter()
        .find(|instance| instance.instance_id == request.instance_id)
        .ok_or(Error::NotFound("license instance"))?;
    if !ctx.store.deactivate_license(&fingerprint, instance).await? {
        return Err(Error::NotFound("license instance"));
    }
    let state = ctx
        .store
        .license(&fingerprint)
        .await?
        .ok_or(Error::NotFound("license"))?;
    Ok(Deactivated {
        activations_left: activations_left(&state),
    })
}

/// The answer of `POST /admin/orders/{order_id}/licenses/{license_id}/void`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VoidedLicense {
    pub order_id: String,
    pub license_id: String,
    /// `voided`.
    pub status: LicenseStatus,
}

/// `POST /admin/orders/{order_id}/licenses/{license_id}/void`: an operator ends one key
/// an order delivered (leaked, abused, replaced), with a reason: it validates as
/// `voided` and activates no more, in one transaction with the audit record. The key is
/// named by its license id (the operator's order view lists it), never by the key.
/// Idempotent: a voided key answers the same; a refunded one is `409
/// license_not_active`.
pub async fn void_license(
    ctx: &Context,
    actor: &crate::app::audit::Actor,
    (order_id, license_id): (&str, &str),
    request: crate::app::operator::ReasonRequest,
) -> Result<VoidedLicense> {
    let reason = crate::app::operator::checked_note(&request.reason, "invalid_reason", "reason")?;
    let view = crate::app::operator::find_order_view(ctx, order_id).await?;
    let slot = view
        .deliveries
        .iter()
        .filter_map(crate::store::DeliveryRecord::license)
        .find(|slot| slot.key.seal_id == license_id)
        .ok_or(Error::NotFound("license"))?;
    let voided = || VoidedLicense {
        order_id: order_id.to_owned(),
        license_id: license_id.to_owned(),
        status: LicenseStatus::Voided,
    };
    let entry = actor.entry(
        ctx,
        "license.void",
        (crate::store::AuditSubject::Order, order_id),
        Some(&reason),
        Some(LicenseStatus::Active.as_str().to_owned()),
        Some(LicenseStatus::Voided.as_str().to_owned()),
    );
    if ctx
        .store
        .end_license(&slot.fingerprint, LicenseStatus::Voided, Some(&entry))
        .await?
    {
        tracing::warn!(
            order_id,
            license_id,
            actor = actor.name,
            reason,
            "license voided by an operator"
        );
        return Ok(voided());
    }
    // Not active: voided before (by a twin request) is the same answer.
    match ctx.store.license(&slot.fingerprint).await? {
        Some(state) if state.license.status == LicenseStatus::Voided => Ok(voided()),
        _ => Err(Error::Conflict(ConflictKind::LicenseNotActive)),
    }
}
