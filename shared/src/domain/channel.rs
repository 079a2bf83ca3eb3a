//! Payment channels: a merchant's account at a payment provider (Alipay, WeChat Pay,
//! Stripe), set up by an operator with `PUT /admin/payment-channels/{channel_id}`, and
//! the rules for which channels may take an order.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::money::{Money, parse_currency};
use crate::error::{Error, Result};
use crate::ports::payment::PaymentMethod;
use crate::request::RequestBody;

pub const MAX_CHANNEL_ID_LEN: usize = 40;
pub const MAX_DISPLAY_NAME_LEN: usize = 100;
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u32> = 100..=30_000;
const DEFAULT_PRIORITY: i32 = 100;
/// What a secret field shows in every view: set, never its value.
pub const SECRET_SHOWN_AS: &str = "<set>";

/// Channel ids appear in webhook URLs and keys: a small alphabet.
pub fn validate_channel_id(channel_id: &str) -> Result<()> {
    if crate::domain::is_slug(channel_id, MAX_CHANNEL_ID_LEN) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_channel_id",
            format!("channel_id must be 1 to {MAX_CHANNEL_ID_LEN} characters of a-z 0-9 _ -"),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Alipay,
    Wechatpay,
    Stripe,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Alipay => "alipay",
            ProviderKind::Wechatpay => "wechatpay",
            ProviderKind::Stripe => "stripe",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "alipay" => Ok(ProviderKind::Alipay),
            "wechatpay" => Ok(ProviderKind::Wechatpay),
            "stripe" => Ok(ProviderKind::Stripe),
            other => Err(Error::invalid_field(
                "invalid_channel_config",
                "provider",
                format!("provider {other:?} is not one of alipay, wechatpay, stripe"),
            )),
        }
    }

    /// Whether this provider offers `method` (the adapter refuses any other).
    pub fn offers(self, method: PaymentMethod) -> bool {
        matches!(
            (self, method),
            (
                ProviderKind::Alipay,
                PaymentMethod::Page | PaymentMethod::Wap
            ) | (ProviderKind::Wechatpay, PaymentMethod::Native)
                | (ProviderKind::Stripe, PaymentMethod::Checkout)
        )
    }

    /// The method a buyer gets when they name none.
    pub fn default_method(self) -> PaymentMethod {
        match self {
            ProviderKind::Alipay => PaymentMethod::Page,
            ProviderKind::Wechatpay => PaymentMethod::Native,
            ProviderKind::Stripe => PaymentMethod::Checkout,
        }
    }
}

/// The body of `PUT /admin/payment-channels/{channel_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    #[schema(example = "alipay")]
    pub provider: String,
    /// Default true.
    pub enabled: Option<bool>,
    /// What buyers see (1 to 100 printable characters).
    #[schema(example = "Alipay")]
    pub display_name: String,
    /// ISO 4217 codes the channel takes.
    #[schema(example = json!(["CNY"]))]
    pub currencies: Vec<String>,
    /// Lower first (default 100).
    pub priority: Option<i32>,
    /// Smallest order amount it takes, minor units, inclusive (default 1).
    pub min_amount: Option<i64>,
    /// Largest order amount it takes, minor units, inclusive (default no limit).
    pub max_amount: Option<i64>,
    /// Bound on every call to the provider, 100 to 30000 (default 5000).
    pub timeout_ms: Option<u32>,
    /// The provider's settings (docs/payments.md); secret fields may be omitted on a
    /// replace to keep the stored ones.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

impl RequestBody for ChannelRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            path if path.starts_with("config") || path == "provider" => {
                Some("invalid_channel_config")
            }
            _ => Some("invalid_channel"),
        }
    }
}

/// A channel's settings besides its provider config, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelSettings {
    pub provider: ProviderKind,
    pub enabled: bool,
    pub display_name: String,
    pub currencies: Vec<String>,
    pub priority: i32,
    pub min_amount: i64,
    pub max_amount: Option<i64>,
    pub timeout_ms: u32,
}

impl ChannelRequest {
    /// The checked settings and the raw config (checked by its provider's adapter).
    pub fn into_parts(self) -> Result<(ChannelSettings, serde_json::Value)> {
        let provider = ProviderKind::parse(&self.provider)?;
        let display_name = self.display_name.trim();
        if display_name.is_empty()
            || display_name.chars().count() > MAX_DISPLAY_NAME_LEN
            || display_name.chars().any(char::is_control)
        {
            return Err(Error::invalid_field(
                "invalid_channel",
                "display_name",
                format!("display_name must be 1 to {MAX_DISPLAY_NAME_LEN} printable characters"),
            ));
        }
        if self.currencies.is_empty() {
            return Err(Error::invalid_field(
                "invalid_channel",
                "currencies",
                "currencies must name at least one ISO 4217 code",
            ));
        }
        let currencies = self
            .currencies
            .iter()
            .enumerate()
            .map(|(i, code)| {
                parse_currency(code).map_err(|_| {
                    Error::invalid_field(
                        "invalid_channel",
                        &format!("currencies[{i}]"),
                        "currencies must be ISO 4217 codes",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let min_amount = self.min_amount.unwrap_or(1);
        if min_amount < 1 {
            return Err(Error::invalid_field(
                "invalid_channel",
                "min_amount",
                "min_amount must be a positive number of minor units",
            ));
        }
        if self.max_amount.is_some_and(|max| max < min_amount) {
            return Err(Error::invalid_field(
                "invalid_channel",
                "max_amount",
                "max_amount must not be below min_amount",
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !TIMEOUT_MS_RANGE.contains(&timeout_ms) {
            return Err(Error::invalid_field(
                "invalid_channel",
                "timeout_ms",
                "timeout_ms must be between 100 and 30000",
            ));
        }
        if !self.config.is_object() {
            return Err(Error::invalid_field(
                "invalid_channel_config",
                "config",
                "config must be an object",
            ));
        }
        Ok((
            ChannelSettings {
                provider,
                enabled: self.enabled.unwrap_or(true),
                display_name: display_name.to_owned(),
                currencies,
                priority: self.priority.unwrap_or(DEFAULT_PRIORITY),
                min_amount,
                max_amount: self.max_amount,
                timeout_ms,
            },
            self.config,
        ))
    }
}

impl ChannelSettings {
    /// Whether the channel may take an order of `amount` (enabled, its currency, within
    /// its bounds).
    pub fn takes(&self, amount: &Money) -> bool {
        self.enabled
            && self.currencies.contains(&amount.currency)
            && amount.amount >= self.min_amount
            && self.max_amount.is_none_or(|max| amount.amount <= max)
    }
}

/// Splits a provider config into what may be shown and stored in the clear, and its
/// secret fields. `kept` are the secret fields already stored: a field the request omits
/// keeps its stored value (a replace need not repeat secrets).
pub fn split_secrets(
    config: &serde_json::Value,
    secret_fields: &[&str],
    kept: Option<&serde_json::Map<String, serde_json::Value>>,
) -> (
    serde_json::Value,
    serde_json::Map<String, serde_json::Value>,
) {
    let mut public = config.clone();
    let mut secrets = serde_json::Map::new();
    if let Some(fields) = public.as_object_mut() {
        for field in secret_fields {
            match fields.remove(*field) {
                Some(value) => {
                    secrets.insert((*field).to_owned(), value);
                }
                None => {
                    if let Some(stored) = kept.and_then(|kept| kept.get(*field)) {
                        secrets.insert((*field).to_owned(), stored.clone());
                    }
                }
            }
        }
    }
    (public, secrets)
}

/// The config as an operator sees it: the public fields, and every secret field that is
/// set shown as `"<set>"` (a list of secrets as a list of `"<set>"`).
pub fn shown_config(
    public: &serde_json::Value,
    secret_shapes: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut shown = public.clone();
    if let Some(fields) = shown.as_object_mut() {
        for (field, shape) in secret_shapes {
            fields.insert(field.clone(), shape.clone());
        }
    }
    shown
}

/// What a stored secret value looks like in views: `"<set>"`, or a list of them.
pub fn secret_shape(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|_| serde_json::Value::from(SECRET_SHOWN_AS))
                .collect(),
        ),
        _ => serde_json::Value::from(SECRET_SHOWN_AS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> Result<(ChannelSettings, serde_json::Value)> {
        serde_json::from_value::<ChannelRequest>(body)
            .unwrap()
            .into_parts()
    }

    #[test]
    fn channel_ids_are_a_small_alphabet() {
        for good in ["a", "alipay-main", "wx_2", &"a".repeat(40)] {
            validate_channel_id(good).unwrap();
        }
        for bad in ["", "Alipay", "a b", "a/b", "é", &"a".repeat(41)] {
            assert!(validate_channel_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked_and_defaulted() {
        let (settings, config) = request(json!({"provider": "alipay", "display_name": " Alipay ",
            "currencies": ["cny"], "config": {"app_id": "1"}}))
        .unwrap();
        assert_eq!(settings.display_name, "Alipay");
        assert_eq!(settings.currencies, vec!["CNY"]);
        assert_eq!(
            (settings.enabled, settings.priority, settings.min_amount),
            (true, 100, 1)
        );
        assert_eq!(settings.timeout_ms, 5000);
        assert_eq!(config, json!({"app_id": "1"}));
        for (body, path) in [
            (
                json!({"provider": "paypal", "display_name": "x", "currencies": ["CNY"], "config": {}}),
                "provider",
            ),
            (
                json!({"provider": "alipay", "display_name": "", "currencies": ["CNY"], "config": {}}),
                "display_name",
            ),
            (
                json!({"provider": "alipay", "display_name": "x", "currencies": ["yuan"], "config": {}}),
                "currencies[0]",
            ),
            (
                json!({"provider": "alipay", "display_name": "x", "currencies": ["CNY"], "min_amount": 5, "max_amount": 4, "config": {}}),
                "max_amount",
            ),
            (
                json!({"provider": "alipay", "display_name": "x", "currencies": ["CNY"], "timeout_ms": 50, "config": {}}),
                "timeout_ms",
            ),
            (
                json!({"provider": "alipay", "display_name": "x", "currencies": ["CNY"], "config": []}),
                "config",
            ),
        ] {
            match request(body) {
                Err(Error::InvalidRequest { path: Some(p), .. }) => assert_eq!(p, path),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_channel_takes_its_currencies_within_its_bounds_while_enabled() {
        let (settings, _) = request(json!({"provider": "wechatpay", "display_name": "WeChat",
            "currencies": ["CNY"], "min_amount": 100, "max_amount": 1000, "config": {}}))
        .unwrap();
        let cny = |amount| Money {
            amount,
            currency: "CNY".into(),
        };
        assert!(settings.takes(&cny(100)) && settings.takes(&cny(1000)));
        assert!(!settings.takes(&cny(99)) && !settings.takes(&cny(1001)));
        assert!(!settings.takes(&Money {
            amount: 500,
            currency: "USD".into()
        }));
        let disabled = ChannelSettings {
            enabled: false,
            ..settings
        };
        assert!(!disabled.takes(&cny(500)));
    }

    #[test]
    fn each_provider_offers_its_own_methods_and_defaults_to_one_of_them() {
        let all = [
            PaymentMethod::Page,
            PaymentMethod::Wap,
            PaymentMethod::Native,
            PaymentMethod::Checkout,
        ];
        for (kind, offered) in [
            (
                ProviderKind::Alipay,
                vec![PaymentMethod::Page, PaymentMethod::Wap],
            ),
            (ProviderKind::Wechatpay, vec![PaymentMethod::Native]),
            (ProviderKind::Stripe, vec![PaymentMethod::Checkout]),
        ] {
            let got: Vec<_> = all.into_iter().filter(|m| kind.offers(*m)).collect();
            assert_eq!(got, offered, "{kind:?}");
            assert!(kind.offers(kind.default_method()));
        }
    }

    #[test]
    fn secrets_are_split_out_kept_on_replace_and_shown_as_set() {
        let fields = ["secret_key", "webhook_secrets"];
        let (public, secrets) = split_secrets(
            &json!({"secret_key": "sk_1", "webhook_secrets": ["a", "b"], "api_base_url": "u"}),
            &fields,
            None,
        );
        assert_eq!(public, json!({"api_base_url": "u"}));
        assert_eq!(secrets.len(), 2);
        let (_, replaced) = split_secrets(
            &json!({"webhook_secrets": ["c"], "api_base_url": "u"}),
            &fields,
            Some(&secrets),
        );
        assert_eq!(replaced["secret_key"], "sk_1", "kept");
        assert_eq!(replaced["webhook_secrets"], json!(["c"]), "replaced");
        let shapes = replaced
            .iter()
            .map(|(k, v)| (k.clone(), secret_shape(v)))
            .collect();
        let shown = shown_config(&public, &shapes);
        assert_eq!(
            shown,
            json!({"api_base_url": "u", "secret_key": "<set>", "webhook_secrets": ["<set>"]})
        );
    }
}
