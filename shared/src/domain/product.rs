//! Products and the rules for creating and ordering them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::card_key::CardKeyRules;
use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::request::RequestBody;

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_TITLE_LEN: usize = 200;
pub const MAX_PER_ORDER_LIMIT: u32 = 100;
const DEFAULT_MAX_PER_ORDER: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryType {
    CardKey,
}

impl DeliveryType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryType::CardKey => "card_key",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "card_key" => Ok(DeliveryType::CardKey),
            other => Err(Error::invalid(
                "unsupported_delivery_type",
                format!("delivery type {other:?} is not supported; use \"card_key\""),
            )),
        }
    }
}

/// A product's units: on sale, held by unpaid orders, and sold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stock {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub sku: String,
    pub title: String,
    pub price: Money,
    pub delivery: DeliveryType,
    pub max_per_order: u32,
    /// How its card keys compare when duplicates are looked for.
    pub card_keys: CardKeyRules,
    pub created_at: String,
}

/// The body of `POST /admin/products`, as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductRequest {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "steam-wallet-100")]
    pub sku: String,
    /// 1 to 200 printable characters.
    #[schema(min_length = 1, max_length = 200, example = "Steam wallet 100 CNY")]
    pub title: String,
    pub price: PriceRequest,
    pub delivery: DeliveryRequest,
    /// Units one order may hold (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub max_per_order: Option<u32>,
    /// How the product's card keys compare (default: case-sensitive). Fixed at creation.
    pub card_keys: Option<CardKeysRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardKeysRequest {
    /// `false` when the codes are redeemed whatever their case: keys differing only in
    /// case are then duplicates. Default `true`.
    pub case_sensitive: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    /// Minor units (fen, cents), positive.
    #[schema(minimum = 1, example = 990)]
    pub amount: i64,
    /// ISO 4217, three letters.
    #[schema(pattern = "^[A-Za-z]{3}$", example = "CNY")]
    pub currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRequest {
    /// The delivery type; `card_key` today.
    #[serde(rename = "type")]
    #[schema(example = "card_key")]
    pub kind: String,
}

impl RequestBody for NewProductRequest {}

impl NewProductRequest {
    pub fn into_product(self, created_at: String) -> Result<Product> {
        validate_sku(&self.sku).map_err(|err| err.at("sku"))?;
        let title = self.title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE_LEN || has_control(title) {
            return Err(Error::invalid_field(
                "invalid_title",
                "title",
                format!("title must be 1 to {MAX_TITLE_LEN} printable characters"),
            ));
        }
        let max_per_order = self.max_per_order.unwrap_or(DEFAULT_MAX_PER_ORDER);
        if !(1..=MAX_PER_ORDER_LIMIT).contains(&max_per_order) {
            return Err(Error::invalid_field(
                "invalid_max_per_order",
                "max_per_order",
                format!("max_per_order must be between 1 and {MAX_PER_ORDER_LIMIT}"),
            ));
        }
        Ok(Product {
            sku: self.sku,
            title: title.to_owned(),
            price: Money::price(self.price.amount, &self.price.currency).map_err(|err| {
                let field = match &err {
                    Error::InvalidRequest { code, .. } if *code == "invalid_price" => {
                        "price.amount"
                    }
                    _ => "price.currency",
                };
                err.at(field)
            })?,
            delivery: DeliveryType::parse(&self.delivery.kind)
                .map_err(|err| err.at("delivery.type"))?,
            max_per_order,
            card_keys: CardKeyRules {
                case_sensitive: self
                    .card_keys
                    .and_then(|rules| rules.case_sensitive)
                    .unwrap_or(true),
            },
            created_at,
        })
    }
}

/// Skus appear in URLs and DynamoDB keys: a small, safe alphabet.
pub fn validate_sku(sku: &str) -> Result<()> {
    let ok = !sku.is_empty()
        && sku.len() <= MAX_SKU_LEN
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_sku",
            format!("sku must be 1 to {MAX_SKU_LEN} characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// The quantity a buyer may order of this product.
pub fn validate_quantity(quantity: i64, product: &Product) -> Result<u32> {
    if quantity < 1 {
        return Err(Error::invalid(
            "invalid_quantity",
            "quantity must be a positive integer",
        ));
    }
    match u32::try_from(quantity) {
        Ok(q) if q <= product.max_per_order => Ok(q),
        _ => Err(Error::invalid(
            "quantity_over_limit",
            format!(
                "quantity must not exceed {} for this product",
                product.max_per_order
            ),
        )),
    }
}

pub fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<Product> {
        serde_json::from_value::<NewProductRequest>(json)
            .unwrap()
            .into_product("t".into())
    }

    #[test]
    fn creates_a_card_key_product() {
        let product = request(serde_json::json!({
            "sku": "game-100", "title": " Game card ", "price": {"amount": 990, "currency": "CNY"},
            "delivery": {"type": "card_key"}, "max_per_order": 5
        }))
        .unwrap();
        assert_eq!(product.title, "Game card");
        assert_eq!(product.max_per_order, 5);
        assert_eq!(product.price.amount, 990);
        assert!(
            product.card_keys.case_sensitive,
            "case-sensitive by default"
        );
    }

    #[test]
    fn a_product_may_ignore_the_case_of_its_keys() {
        let base = serde_json::json!({
            "sku": "s", "title": "t", "price": {"amount": 1, "currency": "CNY"},
            "delivery": {"type": "card_key"}
        });
        for (card_keys, expected) in [
            (serde_json::json!({"case_sensitive": false}), false),
            (serde_json::json!({"case_sensitive": true}), true),
            (serde_json::json!({}), true),
        ] {
            let mut body = base.clone();
            body["card_keys"] = card_keys;
            assert_eq!(request(body).unwrap().card_keys.case_sensitive, expected);
        }
        let mut unknown = base.clone();
        unknown["card_keys"] = serde_json::json!({"case": false});
        assert!(serde_json::from_value::<NewProductRequest>(unknown).is_err());
    }

    #[test]
    fn refuses_bad_fields() {
        let base = serde_json::json!({
            "sku": "ok", "title": "t", "price": {"amount": 1, "currency": "CNY"},
            "delivery": {"type": "card_key"}
        });
        let cases = [
            ("sku", serde_json::json!("has space"), "invalid_sku"),
            ("sku", serde_json::json!("a/b"), "invalid_sku"),
            ("title", serde_json::json!(""), "invalid_title"),
            ("title", serde_json::json!("a\u{0007}b"), "invalid_title"),
            (
                "price",
                serde_json::json!({"amount": 0, "currency": "CNY"}),
                "invalid_price",
            ),
            (
                "delivery",
                serde_json::json!({"type": "direct_topup"}),
                "unsupported_delivery_type",
            ),
            (
                "max_per_order",
                serde_json::json!(0),
                "invalid_max_per_order",
            ),
            (
                "max_per_order",
                serde_json::json!(101),
                "invalid_max_per_order",
            ),
        ];
        for (field, value, expected) in cases {
            let mut body = base.clone();
            body[field] = value;
            match request(body) {
                Err(Error::InvalidRequest { code, .. }) => assert_eq!(code, expected, "{field}"),
                other => panic!("{field}: expected {expected}, got {other:?}"),
            }
        }
    }

    #[test]
    fn quantity_limits() {
        let product = request(serde_json::json!({
            "sku": "s", "title": "t", "price": {"amount": 1, "currency": "CNY"},
            "delivery": {"type": "card_key"}, "max_per_order": 3
        }))
        .unwrap();
        assert_eq!(validate_quantity(3, &product).unwrap(), 3);
        for bad in [0, -1, 4, i64::MAX] {
            assert!(validate_quantity(bad, &product).is_err(), "{bad}");
        }
    }
}
