//! Payment channels: set up by operators (admin), offered to buyers (checkout), and
//! turned into provider adapters with their secrets opened where a provider is called
//! (checkout, webhook, reconciler, refunds).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::{Actor, snapshot};
use super::sealed;
use crate::adapters::payment_channels::{self, ProviderDeps};
use crate::config::Context;
use crate::domain::channel::{
    ChannelRequest, ChannelSettings, ProviderKind, secret_shape, shown_config, split_secrets,
    validate_channel_id,
};
use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::ports::payment::{BillSource, PaymentProvider};
use crate::ports::vault::EncryptionContext;
use crate::store::AuditSubject;
use crate::store::ChannelRecord;

/// Binds a channel's sealed secrets to that channel: moved to another, they fail to open.
fn secrets_aad(channel_id: &str) -> Vec<u8> {
    format!("kami/payment-channel/v1|{channel_id}").into_bytes()
}

/// A channel as operators see it: every secret field shown as `"<set>"`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub channel_id: String,
    #[serde(flatten)]
    pub settings: ChannelSettings,
    /// The provider config, secret fields shown as `"<set>"` (a list of them as a list).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl ChannelView {
    fn of(channel: &ChannelRecord) -> Self {
        ChannelView {
            channel_id: channel.channel_id.clone(),
            settings: channel.settings.clone(),
            config: shown_config(&channel.public_config, &channel.secret_shapes),
            created_at: channel.created_at.clone(),
            updated_at: channel.updated_at.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelView>,
}

/// A channel's secret fields, opened (only where a provider is called).
async fn open_secrets(
    ctx: &Context,
    channel: &ChannelRecord,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let context = EncryptionContext::payment_channel(&channel.channel_id, &channel.secrets.seal_id);
    let plaintext = sealed::open(
        ctx,
        &context,
        &secrets_aad(&channel.channel_id),
        &channel.secrets,
    )
    .await?;
    match serde_json::from_slice(&plaintext) {
        Ok(serde_json::Value::Object(secrets)) => Ok(secrets),
        _ => Err(Error::Corrupt(
            "channel secrets are not a JSON object".into(),
        )),
    }
}

/// `PUT /admin/payment-channels/{channel_id}`: creates (true) or replaces the channel. A
/// replace that omits a secret field keeps the stored one (same provider only).
pub async fn put_channel(
    ctx: &Context,
    actor: &Actor,
    channel_id: &str,
    request: ChannelRequest,
) -> Result<(bool, ChannelView)> {
    validate_channel_id(channel_id)?;
    let (settings, config) = request.into_parts()?;
    let kind = settings.provider;
    let fields = payment_channels::secret_fields(kind);
    let existing = ctx.store.get_channel(channel_id).await?;
    let kept = match &existing {
        Some(old) if old.settings.provider == kind => Some(open_secrets(ctx, old).await?),
        _ => None,
    };
    let (public, secrets) = split_secrets(&config, fields, kept.as_ref());
    let mut whole = public.clone();
    if let Some(fields) = whole.as_object_mut() {
        fields.extend(secrets.clone());
    }
    payment_channels::check_config(kind, &whole)?;
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&serde_json::Value::Object(secrets.clone()))
            .map_err(|_| Error::Corrupt("channel secrets do not serialise".into()))?,
    );
    let sealed_secrets = sealed::seal(
        ctx,
        |seal_id| EncryptionContext::payment_channel(channel_id, seal_id),
        &secrets_aad(channel_id),
        &plaintext,
    )
    .await?;
    let now = ctx.clock.now().to_rfc3339();
    let record = ChannelRecord {
        channel_id: channel_id.to_owned(),
        settings,
        public_config: public,
        secret_shapes: secrets
            .iter()
            .map(|(field, value)| (field.clone(), secret_shape(value)))
            .collect(),
        secrets: sealed_secrets,
        created_at: existing
            .as_ref()
            .map_or_else(|| now.clone(), |old| old.created_at.clone()),
        updated_at: now,
    };
    let view = ChannelView::of(&record);
    let entry = actor.entry(
        ctx,
        "channel.put",
        (AuditSubject::Channel, channel_id),
        None,
        existing
            .as_ref()
            .and_then(|old| snapshot(&ChannelView::of(old))),
        snapshot(&view),
    );
    let read_at = existing.as_ref().map(|old| old.updated_at.as_str());
    let created = ctx.store.put_channel(&record, read_at, &entry).await?;
    tracing::info!(
        channel_id,
        provider = kind.as_str(),
        created,
        "payment channel saved"
    );
    Ok((created, view))
}

pub async fn get_channel(ctx: &Context, channel_id: &str) -> Result<ChannelView> {
    find_channel(ctx, channel_id)
        .await
        .map(|c| ChannelView::of(&c))
}

pub async fn list_channels(ctx: &Context) -> Result<ChannelList> {
    let mut channels = ctx.store.list_channels().await?;
    channels.sort_by(|a, b| {
        (a.settings.priority, &a.channel_id).cmp(&(b.settings.priority, &b.channel_id))
    });
    Ok(ChannelList {
        channels: channels.iter().map(ChannelView::of).collect(),
    })
}

/// A channel by id; an id that cannot exist is not found.
pub async fn find_channel(ctx: &Context, channel_id: &str) -> Result<ChannelRecord> {
    validate_channel_id(channel_id).map_err(|_| Error::NotFound("channel"))?;
    ctx.store
        .get_channel(channel_id)
        .await?
        .ok_or(Error::NotFound("channel"))
}

/// The channels that take `amount`, by priority (then id): from this instance's copy of
/// the list (read again every `CHANNEL_LIST_TTL_SECONDS`).
pub async fn channels_taking(ctx: &Context, amount: &Money) -> Result<Vec<ChannelRecord>> {
    let now = ctx.clock.now();
    let all = match ctx.channels.fresh_list(now) {
        Some(list) => list,
        None => {
            let list = Arc::new(ctx.store.list_channels().await?);
            ctx.channels.remember_list(now, list.clone());
            list
        }
    };
    let mut taking: Vec<ChannelRecord> = all
        .iter()
        .filter(|channel| channel.settings.takes(amount))
        .cloned()
        .collect();
    taking.sort_by(|a, b| {
        (a.settings.priority, &a.channel_id).cmp(&(b.settings.priority, &b.channel_id))
    });
    Ok(taking)
}

/// The channel's provider adapter, its secrets opened (once per version of the channel
/// per instance).
pub async fn provider_for(
    ctx: &Context,
    channel: &ChannelRecord,
) -> Result<Arc<dyn PaymentProvider>> {
    if let Some(provider) = ctx.channels.provider(channel) {
        return Ok(provider);
    }
    let whole = whole_config(ctx, channel).await?;
    let provider = payment_channels::build(
        channel.settings.provider,
        &whole,
        provider_deps(ctx, channel)?,
    )?;
    ctx.channels.remember_provider(channel, provider.clone());
    Ok(provider)
}

/// The channel's bill reader, its secrets opened (settlement, once a run: not cached).
pub async fn bill_source_for(
    ctx: &Context,
    channel: &ChannelRecord,
) -> Result<Arc<dyn BillSource>> {
    let whole = whole_config(ctx, channel).await?;
    payment_channels::build_bill_source(
        channel.settings.provider,
        &whole,
        provider_deps(ctx, channel)?,
    )
}

/// The channel's public config with its secrets opened into it.
async fn whole_config(ctx: &Context, channel: &ChannelRecord) -> Result<serde_json::Value> {
    let mut whole = channel.public_config.clone();
    let secrets = open_secrets(ctx, channel).await?;
    if let Some(fields) = whole.as_object_mut() {
        fields.extend(secrets);
    }
    Ok(whole)
}

fn provider_deps(ctx: &Context, channel: &ChannelRecord) -> Result<ProviderDeps> {
    Ok(ProviderDeps {
        http: ctx.http()?,
        clock: ctx.clock.clone(),
        timeout: Duration::from_millis(u64::from(channel.settings.timeout_ms)),
        stripe_livemode: ctx.config.stripe_livemode,
    })
}

/// Where a channel's provider sends notifications.
pub fn notify_url(ctx: &Context, provider: ProviderKind, channel_id: &str) -> Result<String> {
    let base = ctx.config.public_api_url.as_deref().ok_or_else(|| {
        Error::Config("PUBLIC_API_URL is not set: providers would have nowhere to notify".into())
    })?;
    Ok(format!(
        "{base}/webhooks/{}/{channel_id}",
        provider.as_str()
    ))
}
