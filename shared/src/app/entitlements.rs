//! The entitlements API for a merchant's systems (`functions/merchant-api`): what an
//! account holds (`entitlements:read`) and consuming a count card's uses
//! (`entitlements:redeem`), once per the merchant's `redemption_id`, never below zero.
//! docs/entitlements.md.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Context;
use crate::domain::entitlement::{
    EntitlementKind, EntitlementStatus, MAX_USES, validate_account_id, validate_redemption_id,
};
use crate::domain::time::{Timestamp, is_id};
use crate::error::{ConflictKind, Error, Result};
use crate::request::RequestBody;
use crate::store::{EntitlementRecord, RedeemOutcome, RedemptionRecord};

/// An entitlement as the merchant's systems see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementView {
    pub entitlement_id: String,
    pub account_id: String,
    #[serde(rename = "type")]
    pub kind: EntitlementKind,
    /// The entitlement's name (`vip`, `yoga`), as the product grants it.
    pub name: String,
    pub starts_at: String,
    /// `null`: no end.
    pub ends_at: Option<String>,
    /// Count cards: uses left; `null` for a membership.
    pub uses_left: Option<u32>,
    pub status: EntitlementStatus,
    /// The orders that granted or extended it, oldest first.
    pub source_orders: Vec<String>,
}

impl EntitlementView {
    fn of(record: &EntitlementRecord, now: Timestamp) -> Self {
        EntitlementView {
            entitlement_id: record.entitlement_id.clone(),
            account_id: record.account_id.clone(),
            kind: record.kind,
            name: record.name.clone(),
            starts_at: record.starts_at.to_rfc3339(),
            ends_at: record.ends_at.map(Timestamp::to_rfc3339),
            uses_left: record.uses_left,
            status: status_at(record, now),
            source_orders: record.source_orders.clone(),
        }
    }
}

fn status_at(record: &EntitlementRecord, now: Timestamp) -> EntitlementStatus {
    if record.revoked_at.is_some() {
        EntitlementStatus::Revoked
    } else if record.ends_at.is_some_and(|end| end <= now) {
        EntitlementStatus::Expired
    } else if record.uses_left == Some(0) {
        EntitlementStatus::UsedUp
    } else {
        EntitlementStatus::Active
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementList {
    pub entitlements: Vec<EntitlementView>,
}

/// One redemption in an entitlement's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedemptionView {
    pub redemption_id: String,
    pub uses: u32,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementDetails {
    #[serde(flatten)]
    pub entitlement: EntitlementView,
    /// Its redemptions, oldest first.
    pub redemptions: Vec<RedemptionView>,
}

/// `POST /entitlements/{entitlement_id}/redemptions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    /// The merchant's id for this consumption (1 to 128 visible ASCII characters): sent
    /// again, it is answered again and consumed once.
    #[schema(example = "visit-2026-12-02-0930")]
    pub redemption_id: String,
    /// Uses to consume (1 to 100000), default 1.
    #[schema(minimum = 1, maximum = 100000, example = 1)]
    pub uses: Option<u32>,
}

impl RequestBody for RedeemRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            "redemption_id" => Some("invalid_redemption_id"),
            "uses" => Some("invalid_uses"),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Redeemed {
    pub redemption_id: String,
    pub uses: u32,
    /// Uses left when this redemption was first answered.
    pub uses_left: u32,
}

/// `GET /entitlements?account_id=...[&include_ended=true]`: the account's active
/// entitlements (all of them with `include_ended`), oldest first.
pub async fn list(ctx: &Context, query: Option<&str>) -> Result<EntitlementList> {
    let mut account_id = None;
    let mut include_ended = false;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "account_id" => account_id = Some(value.into_owned()),
            "include_ended" => {
                include_ended = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(super::page::invalid(
                            "include_ended",
                            "include_ended must be true or false",
                        ));
                    }
                }
            }
            other => return Err(super::page::invalid(other, "unknown query parameter")),
        }
    }
    let account_id =
        account_id.ok_or_else(|| super::page::invalid("account_id", "account_id is required"))?;
    validate_account_id(&account_id).map_err(|_| {
        super::page::invalid(
            "account_id",
            "account_id must be 1 to 128 visible ASCII characters",
        )
    })?;
    let now = ctx.clock.now();
    let mut entitlements: Vec<EntitlementView> = ctx
        .store
        .account_entitlements(&account_id)
        .await?
        .iter()
        .map(|record| EntitlementView::of(record, now))
        .filter(|view| include_ended || view.status == EntitlementStatus::Active)
        .collect();
    entitlements.sort_by(|a, b| a.entitlement_id.cmp(&b.entitlement_id));
    Ok(EntitlementList { entitlements })
}

async fn find(ctx: &Context, entitlement_id: &str) -> Result<EntitlementRecord> {
    if !is_id(entitlement_id) {
        return Err(Error::NotFound("entitlement"));
    }
    ctx.store
        .entitlement(entitlement_id)
        .await?
        .ok_or(Error::NotFound("entitlement"))
}

/// `GET /entitlements/{entitlement_id}`: one entitlement with its redemptions.
pub async fn details(ctx: &Context, entitlement_id: &str) -> Result<EntitlementDetails> {
    let record = find(ctx, entitlement_id).await?;
    let redemptions = ctx
        .store
        .redemptions(entitlement_id)
        .await?
        .into_iter()
        .map(|r: RedemptionRecord| RedemptionView {
            redemption_id: r.redemption_id,
            uses: r.uses,
            at: r.at,
        })
        .collect();
    Ok(EntitlementDetails {
        entitlement: EntitlementView::of(&record, ctx.clock.now()),
        redemptions,
    })
}

/// Consumes uses of a count card once per `redemption_id`: the same id again answers
/// the same; with other `uses` it is 409 `redemption_id_reused`.
pub async fn redeem(
    ctx: &Context,
    entitlement_id: &str,
    request: RedeemRequest,
) -> Result<Redeemed> {
    validate_redemption_id(&request.redemption_id)?;
    let uses = request.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(Error::invalid_field(
            "invalid_uses",
            "uses",
            format!("uses must be between 1 and {MAX_USES}"),
        ));
    }
    let record = find(ctx, entitlement_id).await?;
    if record.kind != EntitlementKind::CountCard {
        return Err(Error::Conflict(ConflictKind::NotRedeemable));
    }
    let rid = request.redemption_id;
    let now = ctx.clock.now();
    let seen = match ctx.store.redeem(entitlement_id, &rid, uses, now).await? {
        RedeemOutcome::Redeemed => None,
        RedeemOutcome::Seen(earlier) => {
            if earlier.uses != uses {
                return Err(Error::Conflict(ConflictKind::RedemptionIdReused));
            }
            earlier.uses_left
        }
        RedeemOutcome::Refused => {
            let now_record = find(ctx, entitlement_id).await?;
            return Err(Error::Conflict(match status_at(&now_record, now) {
                EntitlementStatus::Revoked => ConflictKind::EntitlementRevoked,
                EntitlementStatus::Expired => ConflictKind::EntitlementExpired,
                EntitlementStatus::Active | EntitlementStatus::UsedUp => ConflictKind::NoUsesLeft,
            }));
        }
    };
    let uses_left = match seen {
        Some(answered) => answered,
        None => {
            // Answered with what is left now, kept so that a retry hears the same.
            let left = find(ctx, entitlement_id).await?.uses_left.unwrap_or(0);
            ctx.store
                .answer_redemption(entitlement_id, &rid, left)
                .await?
        }
    };
    Ok(Redeemed {
        redemption_id: rid,
        uses,
        uses_left,
    })
}
