//! Bundles: one product made of other products (docs/bundles.md): its shape, and where
//! each part's delivery records live in the order. The rules between a bundle and its
//! parts are with the product (`domain::product`), which this module does not know.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Parts a bundle may have.
pub const MAX_BUNDLE_ITEMS: usize = 10;
/// Units of one part in one unit of the bundle.
pub const MAX_ITEM_QUANTITY: u32 = 10;
/// Each part's delivery records are numbered from `part index × PART_SLOTS`: a part never
/// has more units than this (`MAX_PER_ORDER_LIMIT × MAX_ITEM_QUANTITY`).
pub const PART_SLOTS: u32 = 1_000;

/// What a bundle does when one of its parts fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartialFailure {
    /// The other parts are delivered; the order ends `partially_delivered` for an
    /// operator.
    Keep,
    /// What was delivered and can be taken back is (licenses voided, entitlements
    /// revoked, links closed); the order ends `delivery_failed`.
    Reverse,
}

/// One part of a bundle: `quantity` units of product `sku` per unit of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleItem {
    #[schema(example = "steam-wallet-100")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 10, example = 1)]
    pub quantity: u32,
}

/// A bundle product's delivery: its parts, delivered in this order (card keys last),
/// and what a part's definite failure does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleSpec {
    pub items: Vec<BundleItem>,
    pub on_partial_failure: PartialFailure,
}

/// The units available of a bundle, given each counted part's available units and
/// quantity per bundle; `None` when no part counts stock.
pub fn bundle_available(counted: &[(i64, u32)]) -> Option<i64> {
    counted
        .iter()
        .map(|(available, per_bundle)| available.max(&0) / i64::from(*per_bundle))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_has_what_its_scarcest_part_allows() {
        assert_eq!(bundle_available(&[(10, 1), (7, 2), (100, 3)]), Some(3));
        assert_eq!(bundle_available(&[(-2, 1)]), Some(0));
        assert_eq!(bundle_available(&[]), None);
    }
}
