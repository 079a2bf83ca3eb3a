//! Distributors (分销/代理): a tree of referrers, each with the commission it earns at
//! each level of an order's chain, and the rules that turn a paid amount into ledger
//! entries (docs/distributors.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::money::{Money, parse_currency};
use crate::domain::product::validate_sku;
use crate::error::{Error, Result};
use crate::request::RequestBody;

/// The tree's depth when the deployment sets none (`DISTRIBUTOR_MAX_DEPTH`): level 1
/// (the referrer), its parent and its grandparent.
pub const DEFAULT_MAX_DEPTH: u32 = 3;
/// The deepest tree a deployment may configure.
pub const MAX_DEPTH_LIMIT: u32 = 10;
pub const MAX_DISTRIBUTOR_ID_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 200;
pub const MIN_REFERRAL_CODE_LEN: usize = 4;
pub const MAX_REFERRAL_CODE_LEN: usize = 32;
/// Basis points in the whole: a rate of 10,000 is the whole amount.
pub const FULL_RATE_BPS: u32 = 10_000;
pub const MAX_PRODUCT_RULES: usize = 100;

/// What one distributor earns at one level of an order's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommissionRule {
    /// A share of the amount paid, in basis points (1,000 = 10 %), rounded down to the
    /// minor unit.
    Rate { rate_bps: u32 },
    /// A fixed amount per order in minor units; an order in another currency earns
    /// nothing by this rule.
    Fixed { amount: i64, currency: String },
}

impl CommissionRule {
    /// The entry this rule earns on `paid`, rounded down; `None` when it earns nothing.
    pub fn earned(&self, paid: &Money) -> Option<i64> {
        let amount = match self {
            CommissionRule::Rate { rate_bps } => {
                i64::try_from(i128::from(paid.amount) * i128::from(*rate_bps) / 10_000).ok()?
            }
            CommissionRule::Fixed { amount, currency } if *currency == paid.currency => *amount,
            CommissionRule::Fixed { .. } => 0,
        };
        (amount > 0).then_some(amount)
    }

    fn validate(&self, path: &str) -> Result<Self> {
        let invalid = |message: String| Error::invalid_field("invalid_commission", path, message);
        match self {
            CommissionRule::Rate { rate_bps } if *rate_bps > FULL_RATE_BPS => Err(invalid(
                format!("rate_bps must be 0 to {FULL_RATE_BPS} (basis points of the amount paid)"),
            )),
            CommissionRule::Fixed { amount, .. } if *amount < 0 => {
                Err(invalid("amount must not be negative".into()))
            }
            CommissionRule::Fixed { amount, currency } => Ok(CommissionRule::Fixed {
                amount: *amount,
                currency: parse_currency(currency)
                    .map_err(|_| invalid("currency must be three upper-case letters".into()))?,
            }),
            rate => Ok(rate.clone()),
        }
    }
}

/// A distributor's rules: `levels[0]` is what it earns as the order's referrer (level
/// 1), `levels[1]` as the referrer's parent, and so on; `products` replaces `levels`
/// for the skus it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommissionPlan {
    #[serde(default)]
    pub levels: Vec<CommissionRule>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub products: BTreeMap<String, Vec<CommissionRule>>,
}

impl CommissionPlan {
    /// The rule for an order of `sku` in which this distributor sits at `level` (1-based).
    pub fn rule_for(&self, sku: &str, level: u32) -> Option<&CommissionRule> {
        let levels = self.products.get(sku).unwrap_or(&self.levels);
        levels.get(usize::try_from(level).ok()?.checked_sub(1)?)
    }

    fn validate(&self, max_depth: u32) -> Result<Self> {
        let depth = usize::try_from(max_depth).unwrap_or(usize::MAX);
        let rules = |rules: &[CommissionRule], path: &str| -> Result<Vec<CommissionRule>> {
            if rules.len() > depth {
                return Err(Error::invalid_field(
                    "invalid_commission",
                    path,
                    format!("at most {max_depth} levels (the tree's depth)"),
                ));
            }
            rules
                .iter()
                .enumerate()
                .map(|(i, rule)| rule.validate(&format!("{path}[{i}]")))
                .collect()
        };
        if self.products.len() > MAX_PRODUCT_RULES {
            return Err(Error::invalid_field(
                "invalid_commission",
                "commission.products",
                format!("at most {MAX_PRODUCT_RULES} products"),
            ));
        }
        let mut products = BTreeMap::new();
        for (sku, levels) in &self.products {
            let path = format!("commission.products.{sku}");
            validate_sku(sku).map_err(|_| {
                Error::invalid_field("invalid_commission", &path, "not a valid sku")
            })?;
            products.insert(sku.clone(), rules(levels, &path)?);
        }
        Ok(CommissionPlan {
            levels: rules(&self.levels, "commission.levels")?,
            products,
        })
    }
}

/// The body of `PUT /admin/distributors/{distributor_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributorRequest {
    #[schema(required = true, example = "Shanghai agents")]
    pub name: Option<String>,
    /// The distributor above this one (`null`: a root).
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The code buyers' orders carry (`referral_code`): 4 to 32 letters and digits,
    /// matched without regard to case.
    #[schema(required = true, example = "SHA2026")]
    pub referral_code: Option<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub commission: CommissionPlan,
}

fn enabled_by_default() -> bool {
    true
}

impl RequestBody for DistributorRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            "name" => Some("invalid_distributor"),
            "parent_id" => Some("invalid_distributor_parent"),
            "referral_code" => Some("invalid_referral_code"),
            path if path.starts_with("commission") => Some("invalid_commission"),
            _ => Some("invalid_distributor"),
        }
    }
}

/// A distributor's settings, checked (`DistributorRequest::validate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistributorSettings {
    pub name: String,
    pub parent_id: Option<String>,
    /// Upper case: codes are matched without regard to case.
    pub referral_code: String,
    pub enabled: bool,
    pub commission: CommissionPlan,
}

impl DistributorRequest {
    pub fn validate(self, distributor_id: &str, max_depth: u32) -> Result<DistributorSettings> {
        let name = self
            .name
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty() && name.chars().count() <= MAX_NAME_LEN)
            .ok_or_else(|| {
                Error::invalid_field(
                    "invalid_distributor",
                    "name",
                    format!("name is required: 1 to {MAX_NAME_LEN} characters"),
                )
            })?;
        let referral_code = self
            .referral_code
            .ok_or(())
            .and_then(|code| normalise_referral_code(&code).ok_or(()))
            .map_err(|()| {
                Error::invalid_field(
                    "invalid_referral_code",
                    "referral_code",
                    format!(
                        "referral_code is required: {MIN_REFERRAL_CODE_LEN} to {MAX_REFERRAL_CODE_LEN} letters and digits"
                    ),
                )
            })?;
        if let Some(parent) = &self.parent_id
            && (validate_distributor_id(parent).is_err() || parent == distributor_id)
        {
            return Err(Error::invalid_field(
                "invalid_distributor_parent",
                "parent_id",
                "parent_id must name another distributor",
            ));
        }
        Ok(DistributorSettings {
            name,
            parent_id: self.parent_id,
            referral_code,
            enabled: self.enabled,
            commission: self.commission.validate(max_depth)?,
        })
    }
}

/// A referral code as stored and looked up: upper case; `None` if malformed.
pub fn normalise_referral_code(code: &str) -> Option<String> {
    let valid = (MIN_REFERRAL_CODE_LEN..=MAX_REFERRAL_CODE_LEN).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then(|| code.to_ascii_uppercase())
}

pub fn validate_distributor_id(distributor_id: &str) -> Result<()> {
    let valid = (1..=MAX_DISTRIBUTOR_ID_LEN).contains(&distributor_id.len())
        && distributor_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_distributor_id",
            format!("distributor_id must be 1 to {MAX_DISTRIBUTOR_ID_LEN} of A-Z a-z 0-9 _ -"),
        ))
    }
}

/// Where a distributor may sit: `ancestors` are the new parent's chain, parent first
/// (the parent itself included); `subtree_height` is how many levels hang below the
/// distributor (0 for a leaf). A parent whose chain holds the distributor would make a
/// cycle; a tree deeper than `max_depth` is refused.
pub fn check_placement(
    distributor_id: &str,
    ancestors: &[String],
    subtree_height: u32,
    max_depth: u32,
) -> Result<()> {
    if ancestors.iter().any(|id| id == distributor_id) {
        return Err(Error::invalid_field(
            "invalid_distributor_parent",
            "parent_id",
            "this parent is below the distributor: the tree would have a cycle",
        ));
    }
    let depth = u32::try_from(ancestors.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1)
        .saturating_add(subtree_height);
    if depth > max_depth {
        return Err(Error::invalid_field(
            "invalid_distributor_parent",
            "parent_id",
            format!("the tree would be {depth} levels deep; at most {max_depth}"),
        ));
    }
    Ok(())
}

/// One distributor of an order's attribution chain, as it was when the order was made:
/// its level (1 = the referrer) and the rule it earned by then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainLink {
    pub distributor_id: String,
    pub level: u32,
    /// `None`: it earns nothing on this order (no rule for the level, or disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<CommissionRule>,
}

/// An order's attribution: the code it came with and the chain it was made through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub referral_code: String,
    pub chain: Vec<ChainLink>,
    /// How long its commissions stay `pending` (the refund window) after delivery, as
    /// the deployment had it when the order was made.
    pub refund_window_seconds: i64,
}

/// The commission each level of `chain` earns on `paid`: each entry rounded down to the
/// minor unit, in chain order, and never more in all than `paid` (a level whose rule
/// would pass it earns what is left). Levels that earn nothing have no entry.
pub fn commission_entries(chain: &[ChainLink], paid: &Money) -> Vec<(ChainLink, i64)> {
    let mut left = paid.amount.max(0);
    let mut entries = Vec::new();
    for link in chain {
        let Some(earned) = link.rule.as_ref().and_then(|rule| rule.earned(paid)) else {
            continue;
        };
        let amount = earned.min(left);
        if amount > 0 {
            left -= amount;
            entries.push((link.clone(), amount));
        }
    }
    entries
}

/// An entry of `original` on an order that paid `paid`, once `refunded` of it went
/// back: reduced in proportion, rounded down (`original × (paid − refunded) / paid`);
/// zero after a full refund.
pub fn after_refund(original: i64, paid: i64, refunded: i64) -> i64 {
    if paid <= 0 {
        return 0;
    }
    let kept = (paid - refunded).clamp(0, paid);
    i64::try_from(i128::from(original) * i128::from(kept) / i128::from(paid)).unwrap_or(0)
}

/// A buyer's email as distributors see it: the first character of the local part and
/// the domain (`b***@example.com`).
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny(amount: i64) -> Money {
        Money::cny(amount)
    }

    fn link(id: &str, level: u32, rule: Option<CommissionRule>) -> ChainLink {
        ChainLink {
            distributor_id: id.into(),
            level,
            rule,
        }
    }

    #[test]
    fn rates_round_down_to_the_minor_unit() {
        let rule = CommissionRule::Rate { rate_bps: 333 };
        // 999 × 3.33 % = 33.2667 → 33.
        assert_eq!(rule.earned(&cny(999)), Some(33));
        assert_eq!(rule.earned(&cny(1)), None);
        let fixed = CommissionRule::Fixed {
            amount: 50,
            currency: "CNY".into(),
        };
        assert_eq!(fixed.earned(&cny(999)), Some(50));
        assert_eq!(
            fixed.earned(&Money {
                amount: 999,
                currency: "USD".into()
            }),
            None
        );
    }

    #[test]
    fn the_entries_of_one_order_never_exceed_its_amount() {
        let chain = [
            link("a", 1, Some(CommissionRule::Rate { rate_bps: 8_000 })),
            link("b", 2, None),
            link(
                "c",
                3,
                Some(CommissionRule::Fixed {
                    amount: 500,
                    currency: "CNY".into(),
                }),
            ),
        ];
        let entries = commission_entries(&chain, &cny(1_000));
        let amounts: Vec<_> = entries
            .iter()
            .map(|(l, a)| (l.distributor_id.as_str(), *a))
            .collect();
        assert_eq!(amounts, vec![("a", 800), ("c", 200)]);
        assert!(entries.iter().map(|(_, a)| a).sum::<i64>() <= 1_000);
    }

    #[test]
    fn plans_pick_the_products_rules_over_the_levels() {
        let plan = CommissionPlan {
            levels: vec![CommissionRule::Rate { rate_bps: 100 }],
            products: BTreeMap::from([(
                "vip".to_owned(),
                vec![
                    CommissionRule::Rate { rate_bps: 500 },
                    CommissionRule::Rate { rate_bps: 200 },
                ],
            )]),
        };
        assert_eq!(
            plan.rule_for("vip", 2),
            Some(&CommissionRule::Rate { rate_bps: 200 })
        );
        assert_eq!(
            plan.rule_for("other", 1),
            Some(&CommissionRule::Rate { rate_bps: 100 })
        );
        assert_eq!(plan.rule_for("other", 2), None);
        assert_eq!(plan.rule_for("other", 0), None);
    }

    #[test]
    fn plans_deeper_than_the_tree_or_rates_over_the_whole_are_refused() {
        let deep = CommissionPlan {
            levels: vec![CommissionRule::Rate { rate_bps: 1 }; 4],
            products: BTreeMap::new(),
        };
        let err = deep.validate(3).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest { code: "invalid_commission", path: Some(ref p), .. } if p == "commission.levels")
        );
        let over = CommissionPlan {
            levels: vec![CommissionRule::Rate { rate_bps: 10_001 }],
            products: BTreeMap::new(),
        };
        let err = over.validate(3).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest { path: Some(ref p), .. } if p == "commission.levels[0]")
        );
    }

    #[test]
    fn placement_refuses_cycles_and_trees_too_deep() {
        let ancestors = vec!["p".to_owned(), "g".to_owned()];
        assert!(check_placement("d", &ancestors, 0, 3).is_ok());
        assert!(check_placement("d", &ancestors, 1, 3).is_err());
        assert!(check_placement("g", &["p".to_owned(), "g".to_owned()], 0, 5).is_err());
        assert!(check_placement("d", &[], 2, 3).is_ok());
    }

    #[test]
    fn refunds_reduce_entries_in_proportion_rounded_down() {
        assert_eq!(after_refund(100, 1_000, 0), 100);
        assert_eq!(after_refund(100, 1_000, 333), 66);
        assert_eq!(after_refund(100, 1_000, 1_000), 0);
        assert_eq!(after_refund(100, 1_000, 5_000), 0);
        assert_eq!(after_refund(7, 3, 1), 4);
    }

    #[test]
    fn referral_codes_are_matched_without_case_and_emails_masked() {
        assert_eq!(
            normalise_referral_code("sha2026").as_deref(),
            Some("SHA2026")
        );
        assert_eq!(normalise_referral_code("ab"), None);
        assert_eq!(normalise_referral_code("with space"), None);
        assert_eq!(mask_email("buyer@example.com"), "b***@example.com");
    }
}
