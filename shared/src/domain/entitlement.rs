//! Entitlements: rights a buyer's account holds (docs/entitlements.md). A membership is a
//! period, extended by each purchase from its current end; a count card (次卡) is a
//! number of uses, consumed by the merchant's systems through redemptions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

pub const MAX_ACCOUNT_ID_LEN: usize = 128;
pub const MAX_ENTITLEMENT_NAME_LEN: usize = 64;
pub const MAX_PERIOD_DAYS: u32 = 3_650;
pub const MAX_USES: u32 = 100_000;
pub const MAX_REDEMPTION_ID_LEN: usize = 128;

/// What an account-bound product grants per unit (the product's `delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GrantSpec {
    /// `period_days` of entitlement `entitlement`, from the end of the current period.
    Membership {
        entitlement: String,
        period_days: u32,
    },
    /// A membership's period that renews: `renewal_notice_days` before it ends, Kami
    /// makes the renewal order and sends the buyer its pay link (docs/subscriptions.md).
    Subscription {
        entitlement: String,
        period_days: u32,
        renewal_notice_days: u32,
    },
    /// `uses` uses of entitlement `entitlement`, valid `valid_days` from delivery (no
    /// end when absent).
    CountCard {
        entitlement: String,
        uses: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        valid_days: Option<u32>,
    },
}

impl GrantSpec {
    pub fn entitlement(&self) -> &str {
        match self {
            GrantSpec::Membership { entitlement, .. }
            | GrantSpec::Subscription { entitlement, .. }
            | GrantSpec::CountCard { entitlement, .. } => entitlement,
        }
    }

    /// The seconds `quantity` units add to a period (memberships and subscriptions).
    pub fn period_seconds(&self, quantity: u32) -> Option<i64> {
        match self {
            GrantSpec::Membership { period_days, .. }
            | GrantSpec::Subscription { period_days, .. } => {
                Some(i64::from(*period_days) * i64::from(quantity) * 86_400)
            }
            GrantSpec::CountCard { .. } => None,
        }
    }

    pub fn kind(&self) -> EntitlementKind {
        match self {
            // A subscription's entitlement is a membership period: buying the same name
            // as a membership extends the same record.
            GrantSpec::Membership { .. } | GrantSpec::Subscription { .. } => {
                EntitlementKind::Membership
            }
            GrantSpec::CountCard { .. } => EntitlementKind::CountCard,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntitlementKind {
    Membership,
    CountCard,
}

impl EntitlementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntitlementKind::Membership => "membership",
            EntitlementKind::CountCard => "count_card",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "membership" => Ok(EntitlementKind::Membership),
            "count_card" => Ok(EntitlementKind::CountCard),
            other => Err(Error::Corrupt(format!("entitlement kind {other:?}"))),
        }
    }
}

/// Where an entitlement stands, as the merchant API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntitlementStatus {
    Active,
    Expired,
    /// A count card whose every use is consumed.
    UsedUp,
    /// Taken back (its order refunded).
    Revoked,
}

/// A buyer's account id as a storefront sends it: 1 to 128 visible ASCII characters.
pub fn validate_account_id(account_id: &str) -> Result<()> {
    if account_id.is_empty()
        || account_id.len() > MAX_ACCOUNT_ID_LEN
        || !account_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid_field(
            "invalid_account_id",
            "buyer.account_id",
            format!("buyer.account_id must be 1 to {MAX_ACCOUNT_ID_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// An entitlement's name as a merchant chooses it (`vip`, `yoga`): a slug.
pub fn valid_entitlement_name(name: &str) -> bool {
    super::is_slug(name, MAX_ENTITLEMENT_NAME_LEN)
}

/// A redemption id: the merchant's own, 1 to 128 visible ASCII characters.
pub fn validate_redemption_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > MAX_REDEMPTION_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid_field(
            "invalid_redemption_id",
            "redemption_id",
            format!("redemption_id must be 1 to {MAX_REDEMPTION_ID_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_visible_ascii() {
        assert!(validate_account_id("user-42@example").is_ok());
        assert!(validate_account_id(&"a".repeat(128)).is_ok());
        for bad in ["", "has space", "中文", &"a".repeat(129), "tab\t"] {
            assert!(validate_account_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grants_read_back_as_written() {
        let spec = GrantSpec::CountCard {
            entitlement: "yoga".into(),
            uses: 10,
            valid_days: Some(365),
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            text,
            r#"{"type":"count_card","entitlement":"yoga","uses":10,"valid_days":365}"#
        );
        assert_eq!(serde_json::from_str::<GrantSpec>(&text).unwrap(), spec);
    }
}
