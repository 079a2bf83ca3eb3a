//! The providers a payment channel can be: for each, one registration here (its secret
//! fields, how its config is checked, how its adapter is built). And the per-instance
//! cache of channels and their built providers, so an order does not read the channels
//! or open a channel's secrets every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::adapters::alipay::{self, AlipayConfig, AlipayProvider};
use crate::adapters::http_client::HttpClient;
use crate::adapters::stripe::{self, StripeChannelConfig, StripeProvider};
use crate::adapters::wechatpay::{self, WechatPayConfig, WechatPayProvider};
use crate::domain::channel::ProviderKind;
use crate::domain::time::Timestamp;
use crate::error::Result;
use crate::ports::Clock;
use crate::ports::payment::{BillSource, PaymentProvider};
use crate::store::ChannelRecord;

/// How long an instance trusts its copy of the channel list: a change made by an
/// operator reaches every instance within this (docs/payments.md).
pub const CHANNEL_LIST_TTL_SECONDS: i64 = 30;

/// The secret fields of a provider's config (stored sealed, shown as `"<set>"`).
pub fn secret_fields(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::Alipay => alipay::SECRET_FIELDS,
        ProviderKind::Wechatpay => wechatpay::SECRET_FIELDS,
        ProviderKind::Stripe => stripe::SECRET_FIELDS,
    }
}

/// Checks a channel's whole config (secrets included), naming the field at fault.
pub fn check_config(kind: ProviderKind, config: &serde_json::Value) -> Result<()> {
    match kind {
        ProviderKind::Alipay => AlipayConfig::from_json(config).map(|_| ()),
        ProviderKind::Wechatpay => WechatPayConfig::from_json(config).map(|_| ()),
        ProviderKind::Stripe => StripeChannelConfig::from_json(config).map(|_| ()),
    }
}

/// Everything a provider adapter is built with besides its config.
pub struct ProviderDeps {
    pub http: HttpClient,
    pub clock: Arc<dyn Clock>,
    pub timeout: Duration,
    /// Stripe's mode of the deployment (`STRIPE_LIVEMODE`).
    pub stripe_livemode: bool,
}

/// A channel's adapter, built once here for both of its ports (each caller takes the
/// port it needs, so a function links only what that port calls).
// Built and moved into an `Arc` at once: boxing the large variant would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Adapter {
    Alipay(AlipayProvider),
    Wechatpay(WechatPayProvider),
    Stripe(StripeProvider),
}

fn adapter(kind: ProviderKind, config: &serde_json::Value, deps: ProviderDeps) -> Result<Adapter> {
    Ok(match kind {
        ProviderKind::Alipay => Adapter::Alipay(AlipayProvider::new(
            AlipayConfig::from_json(config)?,
            deps.http,
            deps.timeout,
            deps.clock,
        )),
        ProviderKind::Wechatpay => Adapter::Wechatpay(WechatPayProvider::new(
            WechatPayConfig::from_json(config)?,
            deps.http,
            deps.timeout,
            deps.clock,
        )),
        ProviderKind::Stripe => Adapter::Stripe(StripeProvider::for_channel(
            StripeChannelConfig::from_json(config)?,
            deps.http,
            deps.timeout,
            deps.clock,
            deps.stripe_livemode,
        )),
    })
}

/// The payment adapter for a channel's whole config (secrets opened).
pub fn build(
    kind: ProviderKind,
    config: &serde_json::Value,
    deps: ProviderDeps,
) -> Result<Arc<dyn PaymentProvider>> {
    Ok(match adapter(kind, config, deps)? {
        Adapter::Alipay(provider) => Arc::new(provider),
        Adapter::Wechatpay(provider) => Arc::new(provider),
        Adapter::Stripe(provider) => Arc::new(provider),
    })
}

/// The bill reader for a channel's whole config (secrets opened). Only the settlement
/// function calls this: the functions that take payments do not link the bill readers.
pub fn build_bill_source(
    kind: ProviderKind,
    config: &serde_json::Value,
    deps: ProviderDeps,
) -> Result<Arc<dyn BillSource>> {
    Ok(match adapter(kind, config, deps)? {
        Adapter::Alipay(provider) => Arc::new(provider),
        Adapter::Wechatpay(provider) => Arc::new(provider),
        Adapter::Stripe(provider) => Arc::new(provider),
    })
}

type BuiltProvider = (String, Arc<dyn PaymentProvider>);

/// An instance's channels and built providers (a provider is rebuilt when its channel's
/// `updated_at` changes).
#[derive(Default)]
pub struct ChannelCache {
    list: Mutex<Option<(Timestamp, Arc<Vec<ChannelRecord>>)>>,
    providers: Mutex<HashMap<String, BuiltProvider>>,
}

impl ChannelCache {
    /// The channel list read at most `CHANNEL_LIST_TTL_SECONDS` before `now`.
    pub fn fresh_list(&self, now: Timestamp) -> Option<Arc<Vec<ChannelRecord>>> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.as_ref()
            .filter(|(read, _)| {
                let age = now.unix_seconds() - read.unix_seconds();
                (0..CHANNEL_LIST_TTL_SECONDS).contains(&age)
            })
            .map(|(_, channels)| channels.clone())
    }

    pub fn remember_list(&self, now: Timestamp, channels: Arc<Vec<ChannelRecord>>) {
        *self.list.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, channels));
    }

    /// The provider built for this version of the channel, if any.
    pub fn provider(&self, channel: &ChannelRecord) -> Option<Arc<dyn PaymentProvider>> {
        self.providers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel.channel_id)
            .filter(|(version, _)| *version == channel.updated_at)
            .map(|(_, provider)| provider.clone())
    }

    pub fn remember_provider(&self, channel: &ChannelRecord, provider: Arc<dyn PaymentProvider>) {
        self.providers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                channel.channel_id.clone(),
                (channel.updated_at.clone(), provider),
            );
    }
}
