//! Products and the rules for creating and ordering them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::bundle::{
    BundleItem, BundleSpec, MAX_BUNDLE_ITEMS, MAX_ITEM_QUANTITY, PartialFailure,
};
use crate::domain::card_key::CardKeyRules;
use crate::domain::entitlement::{
    GrantSpec, MAX_ENTITLEMENT_NAME_LEN, MAX_PERIOD_DAYS, MAX_USES, valid_entitlement_name,
};
use crate::domain::license::{LicenseSpec, MAX_ACTIVATION_LIMIT, MAX_VALID_DAYS};
use crate::domain::link::{
    LinkSpec, MAX_OPENS, MAX_TARGET_URL_LEN, MAX_VALID_HOURS, valid_target_url,
};
use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::request::RequestBody;

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_TITLE_LEN: usize = 200;
pub const MAX_PER_ORDER_LIMIT: u32 = 100;
const DEFAULT_MAX_PER_ORDER: u32 = 10;
/// Units one client may hold in unpaid orders of a product, by default (docs/security.md,
/// stock hoarding): per source address and per buyer email.
pub const DEFAULT_PENDING_UNITS_PER_ADDRESS: u32 = 20;
pub const DEFAULT_PENDING_UNITS_PER_EMAIL: u32 = 10;
pub const MAX_PENDING_UNITS: u32 = 1_000_000;
/// How long an unpaid order may hold its stock, when a product sets it.
pub const MIN_RESERVATION_SECONDS: u32 = 60;
pub const MAX_RESERVATION_SECONDS: u32 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryType {
    CardKey,
    /// A top-up an upstream supplier performs on the buyer's account (直充).
    DirectTopup,
    /// A software license key Kami generates at delivery (docs/licenses.md).
    LicenseKey,
    /// A period of an entitlement on the buyer's account (docs/entitlements.md).
    Membership,
    /// A number of uses of an entitlement on the buyer's account (次卡).
    CountCard,
    /// A redemption link to the merchant's own site, signed (docs/links.md).
    Link,
    /// A membership period that renews through a renewal order (docs/subscriptions.md).
    Subscription,
    /// Other products delivered together as one (docs/bundles.md).
    Bundle,
}

impl DeliveryType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryType::CardKey => "card_key",
            DeliveryType::DirectTopup => "direct_topup",
            DeliveryType::LicenseKey => "license_key",
            DeliveryType::Membership => "membership",
            DeliveryType::CountCard => "count_card",
            DeliveryType::Link => "link",
            DeliveryType::Subscription => "subscription",
            DeliveryType::Bundle => "bundle",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "card_key" => Ok(DeliveryType::CardKey),
            "direct_topup" => Ok(DeliveryType::DirectTopup),
            "license_key" => Ok(DeliveryType::LicenseKey),
            "membership" => Ok(DeliveryType::Membership),
            "count_card" => Ok(DeliveryType::CountCard),
            "link" => Ok(DeliveryType::Link),
            "subscription" => Ok(DeliveryType::Subscription),
            "bundle" => Ok(DeliveryType::Bundle),
            other => Err(Error::invalid(
                "unsupported_delivery_type",
                format!(
                    "delivery type {other:?} is not supported; use card_key, direct_topup, license_key, membership, count_card, link, subscription or bundle"
                ),
            )),
        }
    }
}

pub const MAX_ACCOUNT_PATTERN_LEN: usize = 200;
pub const MAX_SUPPLIERS_PER_PRODUCT: usize = 10;
pub const MAX_STOCK_BUDGET: u32 = 100_000_000;
/// A subscription's renewal order is made at most this many days before its period ends.
pub const MAX_RENEWAL_NOTICE_DAYS: u32 = 90;
const MAX_SUPPLIER_PRODUCT_LEN: usize = 100;
const MAX_ACCOUNT_LEN: usize = 200;

/// How a direct top-up product is fulfilled: which supplier product, by which suppliers
/// (tried in this order), and the buyer account it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopUpSpec {
    /// The suppliers' code for what is topped up.
    pub supplier_product: String,
    /// Supplier ids, first choice first.
    pub suppliers: Vec<String>,
    pub account: AccountField,
    /// Units the product may sell in all, counted on its stock counters like card keys
    /// (reserved by an order, released on expiry, sold on delivery); `None`: not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_budget: Option<u32>,
    /// What Kami owes its supplier for one unit topped up (the supplier payables);
    /// `None`: not tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier_cost: Option<Money>,
}

/// The account a buyer names on the order (`recipient.account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountField {
    /// What a storefront labels the field with.
    #[schema(example = "Phone number")]
    pub label: String,
    /// A regular expression the whole account must match (no trimming).
    #[schema(example = "^1[3-9][0-9]{9}$")]
    pub pattern: String,
}

impl AccountField {
    /// Whether `account` matches the pattern as a whole.
    pub fn accepts(&self, account: &str) -> Result<bool> {
        Ok(account.len() <= MAX_ACCOUNT_LEN
            && !has_control(account)
            && whole_pattern(&self.pattern)?.is_match(account))
    }
}

/// The pattern anchored at both ends: an account matches as a whole or not at all.
fn whole_pattern(pattern: &str) -> Result<regex_lite::Regex> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|_| Error::Corrupt("stored account pattern does not compile".into()))
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
    pub pending_limits: PendingLimits,
    /// How long an unpaid order holds its units; `None`: the deployment's
    /// `ORDER_TTL_SECONDS`.
    pub reservation_seconds: Option<u32>,
    /// For `direct_topup`: how it is fulfilled.
    pub top_up: Option<TopUpSpec>,
    /// For `license_key`: what each generated key allows.
    pub license: Option<LicenseSpec>,
    /// For `membership` and `count_card`: what each unit grants the buyer's account.
    pub grant: Option<GrantSpec>,
    /// For `link`: where each unit's link leads, for how long and how often.
    pub link: Option<LinkSpec>,
    /// For `bundle`: its parts and what a part's failure does.
    pub bundle: Option<BundleSpec>,
    /// For `link`: the secret its links' assertions are signed with, sealed (set when
    /// the product is created; shown to the merchant then only).
    pub link_secret: Option<crate::domain::crypto::SealedSecrets>,
    /// Whether notifications may carry the goods (card keys among them).
    pub goods_in_notifications: bool,
    pub created_at: String,
}

impl Product {
    /// Whether its orders reserve units on its stock counters: card keys always, a
    /// top-up when it has a budget (its suppliers have the stock otherwise).
    pub fn counts_stock(&self) -> bool {
        match self.delivery {
            DeliveryType::CardKey => true,
            DeliveryType::DirectTopup => self
                .top_up
                .as_ref()
                .is_some_and(|spec| spec.stock_budget.is_some()),
            // Generated or granted at delivery: there is nothing to run out of.
            DeliveryType::LicenseKey
            | DeliveryType::Membership
            | DeliveryType::CountCard
            | DeliveryType::Link
            | DeliveryType::Subscription => false,
            // Its parts count their own (`app::bundles`).
            DeliveryType::Bundle => false,
        }
    }

    /// The units its counters start with: a top-up's budget; card keys come by import.
    pub fn initial_stock(&self) -> u32 {
        self.top_up
            .as_ref()
            .and_then(|spec| spec.stock_budget)
            .unwrap_or(0)
    }

    /// How long an unpaid order of this product holds its units, in seconds.
    pub fn reservation_seconds(&self, deployment_default: i64) -> i64 {
        self.reservation_seconds
            .map_or(deployment_default, i64::from)
    }
}

/// The most units of one product that one client may hold in unpaid orders at once: a
/// buyer who needs more pays first. Never below the product's `max_per_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct PendingLimits {
    /// Per source address (an IPv6 address counts by its /64).
    pub per_address: u32,
    /// Per buyer email.
    pub per_email: u32,
}

impl PendingLimits {
    /// The defaults, raised to `max_per_order` where it is higher (so one order of the
    /// most a product allows always fits).
    pub fn defaults(max_per_order: u32) -> Self {
        PendingLimits {
            per_address: DEFAULT_PENDING_UNITS_PER_ADDRESS.max(max_per_order),
            per_email: DEFAULT_PENDING_UNITS_PER_EMAIL.max(max_per_order),
        }
    }
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
    /// Units one client may hold in unpaid orders of this product (defaults: 20 per
    /// address, 10 per email, each at least `max_per_order`).
    pub pending_limits: Option<PendingLimitsRequest>,
    /// Seconds an unpaid order holds its units before it expires (60 to 86400; default:
    /// the deployment's `OrderTtlSeconds`, 1800). A payment session opened for an order
    /// expires with it.
    #[schema(minimum = 60, maximum = 86400, example = 1800)]
    pub reservation_seconds: Option<u32>,
    /// Whether the buyer's delivery notice carries the goods themselves (card keys,
    /// license keys, links) or only points to the order page (default `false`).
    pub goods_in_notifications: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingLimitsRequest {
    /// Units per source address (at least `max_per_order`, at most 1000000).
    #[schema(minimum = 1, maximum = 1000000, example = 20)]
    pub per_address: Option<u32>,
    /// Units per buyer email (at least `max_per_order`, at most 1000000).
    #[schema(minimum = 1, maximum = 1000000, example = 10)]
    pub per_email: Option<u32>,
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
    /// The delivery type: `card_key`, `direct_topup`, `license_key`, `membership`,
    /// `count_card`, `link`, `subscription` or `bundle`.
    #[serde(rename = "type")]
    #[schema(example = "card_key")]
    pub kind: String,
    /// `direct_topup`: the suppliers' product code.
    #[schema(example = "cmcc-50")]
    pub supplier_product: Option<String>,
    /// `direct_topup`: supplier ids, tried in this order (1 to 10).
    #[schema(example = json!(["sup_a", "sup_b"]))]
    pub suppliers: Option<Vec<String>>,
    /// `direct_topup`: the buyer account the order must name.
    pub account: Option<AccountField>,
    /// `direct_topup`: units it may sell in all (1 to 100000000), counted like stock;
    /// absent: not counted.
    #[schema(minimum = 1, maximum = 100000000, example = 1000)]
    pub stock_budget: Option<u32>,
    /// `direct_topup`: what one unit costs Kami at its suppliers (positive minor units),
    /// owed to the supplier that tops it up: the settlement's supplier statements.
    pub supplier_cost: Option<PriceRequest>,
    /// `license_key`: instances one key may have active at once (1 to 1000).
    #[schema(minimum = 1, maximum = 1000, example = 3)]
    pub activation_limit: Option<u32>,
    /// `license_key`, `count_card`: days a key or card is valid from its delivery (1 to
    /// 36500); absent: no end.
    #[schema(minimum = 1, maximum = 36500, example = 365)]
    pub valid_days: Option<u32>,
    /// `membership`, `count_card`, `subscription`: the entitlement granted (a-z 0-9 _ -,
    /// 1 to 64).
    #[schema(example = "vip")]
    pub entitlement: Option<String>,
    /// `membership`, `subscription`: days each unit adds (1 to 3650).
    #[schema(minimum = 1, maximum = 3650, example = 30)]
    pub period_days: Option<u32>,
    /// `subscription`: days before a period ends that its renewal order is made and
    /// sent to the buyer (1 to 90, less than `period_days`).
    #[schema(minimum = 1, maximum = 90, example = 3)]
    pub renewal_notice_days: Option<u32>,
    /// `count_card`: uses each unit grants (1 to 100000).
    #[schema(minimum = 1, maximum = 100000, example = 10)]
    pub uses: Option<u32>,
    /// `link`: where an opened link redirects (absolute https, no fragment).
    #[schema(example = "https://merchant.example/redeem")]
    pub target_url: Option<String>,
    /// `link`: hours a link stays valid from delivery (1 to 8760).
    #[schema(minimum = 1, maximum = 8760, example = 72)]
    pub valid_hours: Option<u32>,
    /// `link`: how many times a link opens (1 to 1000).
    #[schema(minimum = 1, maximum = 1000, example = 1)]
    pub max_opens: Option<u32>,
    /// `bundle`: its parts (1 to 10 distinct products, none a bundle or a subscription,
    /// at most one direct top-up), each with the units one bundle holds (1 to 10).
    pub items: Option<Vec<BundleItem>>,
    /// `bundle`: `keep` (deliver the other parts, the order ends `partially_delivered`)
    /// or `reverse` (take back what can be, the order ends `delivery_failed`) when a part
    /// fails for good.
    pub on_partial_failure: Option<PartialFailure>,
}

/// A product's checked delivery: its type and the spec the type needs.
struct DeliveryParts {
    kind: DeliveryType,
    top_up: Option<TopUpSpec>,
    license: Option<LicenseSpec>,
    grant: Option<GrantSpec>,
    link: Option<LinkSpec>,
    bundle: Option<BundleSpec>,
}

impl DeliveryRequest {
    /// The type and its checked spec.
    fn into_parts(self) -> Result<DeliveryParts> {
        use DeliveryType::{
            Bundle, CardKey, CountCard, DirectTopup, LicenseKey, Link, Membership, Subscription,
        };
        let kind = DeliveryType::parse(&self.kind).map_err(|err| err.at("delivery.type"))?;
        let bad = |field: &str, message: String| {
            Error::invalid_field("invalid_delivery", &format!("delivery.{field}"), message)
        };
        // Each field belongs to the types named with it; any other type refuses it.
        for (field, present, types) in [
            (
                "supplier_product",
                self.supplier_product.is_some(),
                &[DirectTopup][..],
            ),
            ("suppliers", self.suppliers.is_some(), &[DirectTopup]),
            ("account", self.account.is_some(), &[DirectTopup]),
            ("stock_budget", self.stock_budget.is_some(), &[DirectTopup]),
            (
                "supplier_cost",
                self.supplier_cost.is_some(),
                &[DirectTopup],
            ),
            (
                "activation_limit",
                self.activation_limit.is_some(),
                &[LicenseKey],
            ),
            (
                "valid_days",
                self.valid_days.is_some(),
                &[LicenseKey, CountCard],
            ),
            (
                "entitlement",
                self.entitlement.is_some(),
                &[Membership, CountCard, Subscription],
            ),
            (
                "period_days",
                self.period_days.is_some(),
                &[Membership, Subscription],
            ),
            (
                "renewal_notice_days",
                self.renewal_notice_days.is_some(),
                &[Subscription],
            ),
            ("uses", self.uses.is_some(), &[CountCard]),
            ("target_url", self.target_url.is_some(), &[Link]),
            ("valid_hours", self.valid_hours.is_some(), &[Link]),
            ("max_opens", self.max_opens.is_some(), &[Link]),
            ("items", self.items.is_some(), &[Bundle]),
            (
                "on_partial_failure",
                self.on_partial_failure.is_some(),
                &[Bundle],
            ),
        ] {
            if present && !types.contains(&kind) {
                let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
                return Err(bad(
                    field,
                    format!("{field} is only for {} products", names.join(" and ")),
                ));
            }
        }
        if self
            .valid_days
            .is_some_and(|days| !(1..=MAX_VALID_DAYS).contains(&days))
        {
            return Err(bad(
                "valid_days",
                format!("valid_days must be between 1 and {MAX_VALID_DAYS}"),
            ));
        }
        let entitlement = || {
            self.entitlement
                .clone()
                .filter(|name| valid_entitlement_name(name))
                .ok_or_else(|| {
                    bad(
                        "entitlement",
                        format!("entitlement is required: 1 to {MAX_ENTITLEMENT_NAME_LEN} characters of a-z 0-9 _ -"),
                    )
                })
        };
        let in_range = |field: &str, value: Option<u32>, max: u32| {
            value
                .filter(|value| (1..=max).contains(value))
                .ok_or_else(|| bad(field, format!("{field} is required: 1 to {max}")))
        };
        let none = DeliveryParts {
            kind,
            top_up: None,
            license: None,
            grant: None,
            link: None,
            bundle: None,
        };
        match kind {
            CardKey => return Ok(none),
            Bundle => {
                let items = self.items.clone().unwrap_or_default();
                let on_partial_failure = self.on_partial_failure.ok_or_else(|| {
                    bad(
                        "on_partial_failure",
                        "on_partial_failure is required: keep or reverse".into(),
                    )
                })?;
                return Ok(DeliveryParts {
                    bundle: Some(BundleSpec {
                        items,
                        on_partial_failure,
                    }),
                    ..none
                });
            }
            LicenseKey => {
                return Ok(DeliveryParts {
                    license: Some(LicenseSpec {
                        activation_limit: in_range(
                            "activation_limit",
                            self.activation_limit,
                            MAX_ACTIVATION_LIMIT,
                        )?,
                        valid_days: self.valid_days,
                    }),
                    ..none
                });
            }
            Membership => {
                return Ok(DeliveryParts {
                    grant: Some(GrantSpec::Membership {
                        entitlement: entitlement()?,
                        period_days: in_range("period_days", self.period_days, MAX_PERIOD_DAYS)?,
                    }),
                    ..none
                });
            }
            Subscription => {
                let period_days = in_range("period_days", self.period_days, MAX_PERIOD_DAYS)?;
                let renewal_notice_days = in_range(
                    "renewal_notice_days",
                    self.renewal_notice_days,
                    MAX_RENEWAL_NOTICE_DAYS,
                )?;
                if renewal_notice_days >= period_days {
                    return Err(bad(
                        "renewal_notice_days",
                        "renewal_notice_days must be less than period_days".into(),
                    ));
                }
                return Ok(DeliveryParts {
                    grant: Some(GrantSpec::Subscription {
                        entitlement: entitlement()?,
                        period_days,
                        renewal_notice_days,
                    }),
                    ..none
                });
            }
            CountCard => {
                return Ok(DeliveryParts {
                    grant: Some(GrantSpec::CountCard {
                        entitlement: entitlement()?,
                        uses: in_range("uses", self.uses, MAX_USES)?,
                        valid_days: self.valid_days,
                    }),
                    ..none
                });
            }
            Link => {
                let target_url = self
                    .target_url
                    .clone()
                    .filter(|url| valid_target_url(url))
                    .ok_or_else(|| {
                        bad(
                            "target_url",
                            format!("target_url is required: an absolute https URL without a fragment, at most {MAX_TARGET_URL_LEN} characters"),
                        )
                    })?;
                return Ok(DeliveryParts {
                    link: Some(LinkSpec {
                        target_url,
                        valid_hours: in_range("valid_hours", self.valid_hours, MAX_VALID_HOURS)?,
                        max_opens: in_range("max_opens", self.max_opens, MAX_OPENS)?,
                    }),
                    ..none
                });
            }
            DirectTopup => {}
        }
        let supplier_product = self
            .supplier_product
            .filter(|code| {
                !code.trim().is_empty()
                    && code.len() <= MAX_SUPPLIER_PRODUCT_LEN
                    && !has_control(code)
            })
            .ok_or_else(|| {
                bad(
                    "supplier_product",
                    format!("supplier_product is required: 1 to {MAX_SUPPLIER_PRODUCT_LEN} printable characters"),
                )
            })?;
        let suppliers = self.suppliers.unwrap_or_default();
        if suppliers.is_empty() || suppliers.len() > MAX_SUPPLIERS_PER_PRODUCT {
            return Err(bad(
                "suppliers",
                format!("suppliers must name 1 to {MAX_SUPPLIERS_PER_PRODUCT} supplier ids"),
            ));
        }
        for (i, supplier) in suppliers.iter().enumerate() {
            if crate::domain::supplier::validate_supplier_id(supplier).is_err()
                || suppliers[..i].contains(supplier)
            {
                return Err(bad(
                    &format!("suppliers[{i}]"),
                    "suppliers must be distinct supplier ids".into(),
                ));
            }
        }
        let account = self
            .account
            .ok_or_else(|| bad("account", "account {label, pattern} is required".into()))?;
        if account.label.trim().is_empty() || account.label.chars().count() > 100 {
            return Err(bad(
                "account.label",
                "account.label must be 1 to 100 characters".into(),
            ));
        }
        if account.pattern.is_empty()
            || account.pattern.len() > MAX_ACCOUNT_PATTERN_LEN
            || whole_pattern(&account.pattern).is_err()
        {
            return Err(bad(
                "account.pattern",
                format!(
                    "account.pattern must be a regular expression of 1 to {MAX_ACCOUNT_PATTERN_LEN} characters"
                ),
            ));
        }
        if self
            .stock_budget
            .is_some_and(|budget| !(1..=MAX_STOCK_BUDGET).contains(&budget))
        {
            return Err(bad(
                "stock_budget",
                format!("stock_budget must be between 1 and {MAX_STOCK_BUDGET}"),
            ));
        }
        let supplier_cost = self
            .supplier_cost
            .map(|cost| {
                Money::price(cost.amount, &cost.currency).map_err(|_| {
                    bad(
                        "supplier_cost",
                        "supplier_cost must be a positive amount in minor units with a currency"
                            .into(),
                    )
                })
            })
            .transpose()?;
        Ok(DeliveryParts {
            kind,
            top_up: Some(TopUpSpec {
                supplier_product,
                suppliers,
                account,
                stock_budget: self.stock_budget,
                supplier_cost,
            }),
            license: None,
            grant: None,
            link: None,
            bundle: None,
        })
    }
}

impl RequestBody for NewProductRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            "max_per_order" => Some("invalid_max_per_order"),
            "reservation_seconds" => Some("invalid_reservation_seconds"),
            "goods_in_notifications" => Some("invalid_goods_in_notifications"),
            path if path.starts_with("pending_limits") => Some("invalid_pending_limits"),
            path if path.starts_with("delivery.") && path != "delivery.type" => {
                Some("invalid_delivery")
            }
            _ => None,
        }
    }
}

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
        let DeliveryParts {
            kind: delivery,
            top_up,
            license,
            grant,
            link,
            bundle,
        } = self.delivery.into_parts()?;
        if let Some(bundle) = &bundle {
            bundle.check_shape(&self.sku, |field, message| {
                Error::invalid_field("invalid_delivery", &format!("delivery.{field}"), message)
            })?;
        }
        // A top-up is one supplier request per order: one unit unless the product says.
        let default_max = if top_up.is_some() {
            1
        } else {
            DEFAULT_MAX_PER_ORDER
        };
        let max_per_order = self.max_per_order.unwrap_or(default_max);
        if !(1..=MAX_PER_ORDER_LIMIT).contains(&max_per_order) {
            return Err(Error::invalid_field(
                "invalid_max_per_order",
                "max_per_order",
                format!("max_per_order must be between 1 and {MAX_PER_ORDER_LIMIT}"),
            ));
        }
        let pending_limits = pending_limits(self.pending_limits, max_per_order)?;
        if let Some(seconds) = self.reservation_seconds
            && !(MIN_RESERVATION_SECONDS..=MAX_RESERVATION_SECONDS).contains(&seconds)
        {
            return Err(Error::invalid_field(
                "invalid_reservation_seconds",
                "reservation_seconds",
                format!(
                    "reservation_seconds must be between {MIN_RESERVATION_SECONDS} and {MAX_RESERVATION_SECONDS}"
                ),
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
            delivery,
            max_per_order,
            card_keys: CardKeyRules {
                case_sensitive: self
                    .card_keys
                    .and_then(|rules| rules.case_sensitive)
                    .unwrap_or(true),
            },
            pending_limits,
            reservation_seconds: self.reservation_seconds,
            top_up,
            license,
            grant,
            link,
            bundle,
            link_secret: None,
            goods_in_notifications: self.goods_in_notifications.unwrap_or(false),
            created_at,
        })
    }
}

/// The limits a product asks for, each defaulted and at least `max_per_order`.
fn pending_limits(
    request: Option<PendingLimitsRequest>,
    max_per_order: u32,
) -> Result<PendingLimits> {
    let defaults = PendingLimits::defaults(max_per_order);
    let Some(request) = request else {
        return Ok(defaults);
    };
    let checked = |value: Option<u32>, default: u32, field: &str| {
        let value = value.unwrap_or(default);
        if (max_per_order..=MAX_PENDING_UNITS).contains(&value) {
            Ok(value)
        } else {
            Err(Error::invalid_field(
                "invalid_pending_limits",
                &format!("pending_limits.{field}"),
                format!(
                    "pending_limits.{field} must be between max_per_order ({max_per_order}) and {MAX_PENDING_UNITS}"
                ),
            ))
        }
    };
    Ok(PendingLimits {
        per_address: checked(request.per_address, defaults.per_address, "per_address")?,
        per_email: checked(request.per_email, defaults.per_email, "per_email")?,
    })
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

/// The rules of a bundle and its parts (docs/bundles.md).
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
                serde_json::json!({"type": "gift_card"}),
                "unsupported_delivery_type",
            ),
            (
                "delivery",
                serde_json::json!({"type": "direct_topup"}),
                "invalid_delivery",
            ),
            (
                "delivery",
                serde_json::json!({"type": "card_key", "suppliers": ["a"]}),
                "invalid_delivery",
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
    fn pending_limits_default_to_20_and_10_and_never_below_max_per_order() {
        let base = serde_json::json!({
            "sku": "s", "title": "t", "price": {"amount": 1, "currency": "CNY"},
            "delivery": {"type": "card_key"}
        });
        let product = request(base.clone()).unwrap();
        assert_eq!(
            (product.pending_limits, product.reservation_seconds),
            (
                PendingLimits {
                    per_address: 20,
                    per_email: 10
                },
                None
            )
        );
        let mut big = base.clone();
        big["max_per_order"] = serde_json::json!(50);
        assert_eq!(
            request(big.clone()).unwrap().pending_limits,
            PendingLimits {
                per_address: 50,
                per_email: 50
            }
        );
        big["pending_limits"] = serde_json::json!({"per_email": 49});
        assert!(matches!(
            request(big),
            Err(Error::InvalidRequest { code: "invalid_pending_limits", path: Some(path), .. })
                if path == "pending_limits.per_email"
        ));
        let mut own = base.clone();
        own["pending_limits"] = serde_json::json!({"per_address": 1000000, "per_email": 10});
        own["reservation_seconds"] = serde_json::json!(86400);
        let product = request(own).unwrap();
        assert_eq!(product.pending_limits.per_address, 1_000_000);
        assert_eq!(product.reservation_seconds(1800), 86_400);
        assert_eq!(request(base).unwrap().reservation_seconds(1800), 1800);
    }

    #[test]
    fn a_top_up_product_names_its_suppliers_and_the_account_it_needs() {
        let base = serde_json::json!({
            "sku": "m50", "title": "Mobile 50", "price": {"amount": 5000, "currency": "CNY"},
            "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50",
                "suppliers": ["sup_a", "sup_b"],
                "account": {"label": "Phone number", "pattern": "1[3-9][0-9]{9}"}}
        });
        let product = request(base.clone()).unwrap();
        assert_eq!(product.delivery, DeliveryType::DirectTopup);
        assert_eq!(product.max_per_order, 1, "one top-up per order by default");
        let spec = product.top_up.unwrap();
        assert_eq!(spec.suppliers, ["sup_a", "sup_b"]);
        // Matched whole, never trimmed or searched within.
        assert!(spec.account.accepts("13800000000").unwrap());
        for bad in [
            " 13800000000",
            "13800000000 ",
            "138000000001",
            "x13800000000",
            "12800000000",
        ] {
            assert!(!spec.account.accepts(bad).unwrap(), "{bad:?}");
        }
        for (patch, path) in [
            (
                serde_json::json!({"supplier_product": ""}),
                "delivery.supplier_product",
            ),
            (serde_json::json!({"suppliers": []}), "delivery.suppliers"),
            (
                serde_json::json!({"suppliers": ["a", "a"]}),
                "delivery.suppliers[1]",
            ),
            (
                serde_json::json!({"suppliers": ["Not An Id"]}),
                "delivery.suppliers[0]",
            ),
            (
                serde_json::json!({"account": {"label": "x", "pattern": "(unclosed"}}),
                "delivery.account.pattern",
            ),
            (
                serde_json::json!({"account": {"label": "", "pattern": "1"}}),
                "delivery.account.label",
            ),
        ] {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body["delivery"][k] = v.clone();
            }
            match request(body) {
                Err(Error::InvalidRequest {
                    code: "invalid_delivery",
                    path: Some(p),
                    ..
                }) => {
                    assert_eq!(p, path)
                }
                other => panic!("{path}: {other:?}"),
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
}
