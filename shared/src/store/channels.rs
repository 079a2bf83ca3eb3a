//! Payment channels: one item each in the `CHANNELS` partition (a handful per
//! deployment, so listing them is one Query), the provider config in the clear but for
//! its secret fields, which are sealed together under a data key of the channel's own
//! (encryption context `payment-channel` + the channel id).

use aws_sdk_dynamodb::types::AttributeValue;

use super::Store;
use super::audit::AuditEntry;
use super::codec::{FromItem, Item, get_b, get_n, get_opt_u32, get_s, item, keys, n, s};
use super::tx::ItemName;
use crate::domain::channel::{ChannelSettings, ProviderKind};
use crate::domain::crypto::SealedSecrets;
use crate::error::{Error, Result};

impl SealedSecrets {
    /// Stored as `{prefix}_seal_id`, `{prefix}_wrapped_key` and `{prefix}_sealed`.
    pub(crate) fn store_in(&self, item: &mut Item, prefix: &str) {
        item.insert(format!("{prefix}_seal_id"), s(&self.seal_id));
        item.insert(
            format!("{prefix}_wrapped_key"),
            super::codec::b(self.wrapped_key.clone()),
        );
        item.insert(
            format!("{prefix}_sealed"),
            super::codec::b(self.sealed.clone()),
        );
    }

    pub(crate) fn read_from(item: &Item, prefix: &str) -> Result<Self> {
        Ok(Self {
            seal_id: get_s(item, &format!("{prefix}_seal_id"))?,
            wrapped_key: get_b(item, &format!("{prefix}_wrapped_key"))?,
            sealed: get_b(item, &format!("{prefix}_sealed"))?,
        })
    }
}

/// A channel as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRecord {
    pub channel_id: String,
    pub settings: ChannelSettings,
    /// The config without its secret fields.
    pub public_config: serde_json::Value,
    /// Which secret fields are set, with their shape (`"<set>"` or a list of them).
    pub secret_shapes: serde_json::Map<String, serde_json::Value>,
    pub secrets: SealedSecrets,
    pub created_at: String,
    pub updated_at: String,
}

fn get_bool(item: &Item, name: &str) -> Result<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Ok(*value),
        _ => Err(Error::Corrupt(format!("item has no boolean {name}"))),
    }
}

fn get_json(item: &Item, name: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&get_s(item, name)?)
        .map_err(|_| Error::Corrupt(format!("{name} is not JSON")))
}

impl FromItem for ChannelRecord {
    fn from_item(item: &Item) -> Result<Self> {
        let currencies = match item.get("currencies") {
            Some(AttributeValue::L(list)) => list
                .iter()
                .map(|code| {
                    code.as_s()
                        .cloned()
                        .map_err(|_| Error::Corrupt("currency is not a string".into()))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(Error::Corrupt("channel has no currencies".into())),
        };
        let secret_shapes = match get_json(item, "secret_shapes")? {
            serde_json::Value::Object(map) => map,
            _ => return Err(Error::Corrupt("secret_shapes is not an object".into())),
        };
        Ok(ChannelRecord {
            channel_id: get_s(item, "channel_id")?,
            settings: ChannelSettings {
                provider: ProviderKind::parse(&get_s(item, "provider")?)
                    .map_err(|_| Error::Corrupt("unknown channel provider".into()))?,
                enabled: get_bool(item, "enabled")?,
                display_name: get_s(item, "display_name")?,
                currencies,
                priority: i32::try_from(get_n(item, "priority")?)
                    .map_err(|_| Error::Corrupt("priority out of range".into()))?,
                min_amount: get_n(item, "min_amount")?,
                max_amount: item
                    .contains_key("max_amount")
                    .then(|| get_n(item, "max_amount"))
                    .transpose()?,
                timeout_ms: get_opt_u32(item, "timeout_ms")?
                    .ok_or_else(|| Error::Corrupt("channel has no timeout_ms".into()))?,
            },
            public_config: get_json(item, "config")?,
            secret_shapes,
            secrets: SealedSecrets::read_from(item, "secrets")?,
            created_at: get_s(item, "created_at")?,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

fn channel_item(channel: &ChannelRecord) -> Item {
    let settings = &channel.settings;
    let mut stored = item(
        keys::channel(&channel.channel_id),
        "payment_channel",
        [
            ("channel_id", s(&channel.channel_id)),
            ("provider", s(settings.provider.as_str())),
            ("enabled", AttributeValue::Bool(settings.enabled)),
            ("display_name", s(&settings.display_name)),
            (
                "currencies",
                AttributeValue::L(settings.currencies.iter().map(s).collect()),
            ),
            ("priority", n(settings.priority)),
            ("min_amount", n(settings.min_amount)),
            ("timeout_ms", n(settings.timeout_ms)),
            ("config", s(channel.public_config.to_string())),
            (
                "secret_shapes",
                s(serde_json::Value::Object(channel.secret_shapes.clone()).to_string()),
            ),
            ("created_at", s(&channel.created_at)),
            ("updated_at", s(&channel.updated_at)),
        ],
    );
    if let Some(max) = settings.max_amount {
        stored.insert("max_amount".to_owned(), n(max));
    }
    channel.secrets.store_in(&mut stored, "secrets");
    stored
}

impl Store {
    /// Access pattern: create a channel, or replace it as it was read (its `updated_at`
    /// then: `read_at`), with its audit record, in one transaction. Returns true when it
    /// was created.
    pub async fn put_channel(
        &self,
        channel: &ChannelRecord,
        read_at: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.put_audited(ItemName::Channel, channel_item(channel), read_at, audit)
            .await
    }

    /// Access pattern: one channel by id.
    pub async fn get_channel(&self, channel_id: &str) -> Result<Option<ChannelRecord>> {
        self.get_as(keys::channel(channel_id), true).await
    }

    /// Access pattern: every channel (one Query on the `CHANNELS` partition).
    pub async fn list_channels(&self) -> Result<Vec<ChannelRecord>> {
        self.partition_as(keys::CHANNELS_PARTITION).await
    }
}
