//! Bundles: one product made of other products (docs/bundles.md). The rules a bundle
//! and its parts must keep, and where each part's delivery records live in the order.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::product::{DeliveryType, Product, validate_sku};
use crate::error::{Error, Result};

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

impl BundleSpec {
    /// The shape of a bundle as sent: 1 to `MAX_BUNDLE_ITEMS` distinct skus, each 1 to
    /// `MAX_ITEM_QUANTITY` units, none the bundle itself. `bad(field, message)` makes
    /// the field's error.
    pub fn check_shape(&self, own_sku: &str, bad: impl Fn(&str, String) -> Error) -> Result<()> {
        if self.items.is_empty() || self.items.len() > MAX_BUNDLE_ITEMS {
            return Err(bad(
                "items",
                format!("items must list 1 to {MAX_BUNDLE_ITEMS} products"),
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            if validate_sku(&item.sku).is_err()
                || item.sku == own_sku
                || self.items[..i].iter().any(|other| other.sku == item.sku)
            {
                return Err(bad(
                    &format!("items[{i}].sku"),
                    "items must name distinct products other than the bundle itself".into(),
                ));
            }
            if !(1..=MAX_ITEM_QUANTITY).contains(&item.quantity) {
                return Err(bad(
                    &format!("items[{i}].quantity"),
                    format!("quantity must be between 1 and {MAX_ITEM_QUANTITY}"),
                ));
            }
        }
        Ok(())
    }

    /// The rules between the parts, given each item's product (`None`: no such
    /// product): no bundle or subscription inside a bundle (a subscription renews by its
    /// own order), at most one top-up (its supplier requests are numbered per order),
    /// and at most one membership or count card (an order's expiry reminder and the
    /// notifier find the one entitlement it granted).
    pub fn check_parts(
        &self,
        parts: &[Option<Product>],
        bad: impl Fn(&str, String) -> Error,
    ) -> Result<()> {
        let mut top_ups = 0;
        let mut grants = 0;
        for (i, part) in parts.iter().enumerate() {
            let field = format!("items[{i}].sku");
            let Some(part) = part else {
                return Err(bad(&field, "no product has this sku".into()));
            };
            match part.delivery {
                DeliveryType::Bundle | DeliveryType::Subscription => {
                    return Err(bad(
                        &field,
                        format!("a {} cannot be part of a bundle", part.delivery.as_str()),
                    ));
                }
                DeliveryType::DirectTopup => top_ups += 1,
                _ => {}
            }
            if top_ups > 1 {
                return Err(bad(
                    &field,
                    "a bundle holds at most one direct top-up".into(),
                ));
            }
            grants += usize::from(part.grant.is_some());
            if grants > 1 {
                return Err(bad(
                    &field,
                    "a bundle holds at most one membership or count card".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The order in which a bundle's parts are delivered: as listed, card keys last, since a
/// card key, once shown, can never be taken back. Indices into the items.
pub fn delivery_sequence(kinds: &[DeliveryType]) -> Vec<usize> {
    let (last, first): (Vec<usize>, Vec<usize>) =
        (0..kinds.len()).partition(|&i| kinds[i] == DeliveryType::CardKey);
    first.into_iter().chain(last).collect()
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
    use crate::domain::product::DeliveryType::*;

    fn bad(field: &str, message: String) -> Error {
        Error::invalid_field("invalid_delivery", field, message)
    }

    fn spec(items: &[(&str, u32)]) -> BundleSpec {
        BundleSpec {
            items: items
                .iter()
                .map(|(sku, quantity)| BundleItem {
                    sku: (*sku).to_owned(),
                    quantity: *quantity,
                })
                .collect(),
            on_partial_failure: PartialFailure::Keep,
        }
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidRequest { path, .. } => path.unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bundle_names_distinct_other_products_in_small_quantities() {
        assert!(
            spec(&[("a", 1), ("b", 10)])
                .check_shape("pack", bad)
                .is_ok()
        );
        assert!(spec(&[]).check_shape("pack", bad).is_err());
        let cases = [
            (spec(&[("a", 1), ("a", 2)]), "items[1].sku"),
            (spec(&[("pack", 1)]), "items[0].sku"),
            (spec(&[("a", 0)]), "items[0].quantity"),
            (spec(&[("a", 1), ("b", 11)]), "items[1].quantity"),
            (spec(&[("bad sku", 1)]), "items[0].sku"),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(spec.check_shape("pack", bad).unwrap_err()), field);
        }
        let many: Vec<(String, u32)> = (0..11).map(|i| (format!("p{i}"), 1)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert_eq!(
            field_of(spec(&many).check_shape("pack", bad).unwrap_err()),
            "items"
        );
    }

    #[test]
    fn card_keys_come_last_and_the_rest_keep_their_order() {
        let kinds = [CardKey, LicenseKey, DirectTopup, CardKey, Membership];
        assert_eq!(delivery_sequence(&kinds), [1, 2, 4, 0, 3]);
    }

    #[test]
    fn a_bundle_has_what_its_scarcest_part_allows() {
        assert_eq!(bundle_available(&[(10, 1), (7, 2), (100, 3)]), Some(3));
        assert_eq!(bundle_available(&[(-2, 1)]), Some(0));
        assert_eq!(bundle_available(&[]), None);
    }
}
