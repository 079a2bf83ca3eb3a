//! `POST /orders/{order_id}/payments`: the buyer (holding the order's access token)
//! opens a payment on a channel — the one named, or the first by priority that takes the
//! order, failing over to the next when a provider cannot open it. Each try is a payment
//! attempt recorded on the order before the provider is called; its `payment_id` is the
//! provider's merchant order number and is bound to the order and the channel.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::channels::{channels_taking, find_channel, notify_url, provider_for};
use crate::config::Context;
use crate::domain::crypto::{hmac_sha256_hex, sha256_hex, token_matches};
use crate::domain::money::Money;
use crate::domain::order::OrderStatus;
use crate::domain::time::is_id;
use crate::error::{ConflictKind, Error, Result};
use crate::ports::payment::{PaymentAction, PaymentMethod, PaymentRequest};
use crate::request::RequestBody;
use crate::store::{AttemptRecord, AttemptStatus, ChannelRecord, OrderRecord};

/// Characters after the order id in a `payment_id`: order id (26) + 4 = 30, within every
/// provider's 6–32 characters of `A-Z a-z 0-9 _ -`.
const PAYMENT_SUFFIX_LEN: usize = 4;
const SUFFIX_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ0123456789";

/// The body of `POST /orders/{order_id}/payments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// A channel id; omitted: the first channel by priority that takes the order, then
    /// the next if that provider cannot open the payment.
    #[schema(example = "alipay-main")]
    pub channel: Option<String>,
    /// How the buyer pays; omitted: the provider's default (`page`, `native`,
    /// `checkout`).
    pub method: Option<PaymentMethod>,
}

impl RequestBody for PayRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            "method" => Some("unsupported_payment_method"),
            "channel" => Some("invalid_channel_id"),
            _ => None,
        }
    }
}

/// The answer: where the buyer pays.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentStarted {
    /// Kami's id of the attempt, the provider's merchant order number.
    pub payment_id: String,
    pub order_id: String,
    pub channel: String,
    pub provider: String,
    #[schema(example = "pending")]
    pub status: String,
    pub amount: Money,
    pub action: PaymentAction,
}

fn started(attempt: &AttemptRecord, action: PaymentAction) -> PaymentStarted {
    PaymentStarted {
        payment_id: attempt.payment_id.clone(),
        order_id: attempt.order_id.clone(),
        channel: attempt.channel_id.clone(),
        provider: attempt.provider.as_str().to_owned(),
        status: AttemptStatus::Pending.as_str().to_owned(),
        amount: attempt.amount.clone(),
        action,
    }
}

/// A new payment id for `order_id`: the order id and 4 random characters.
pub fn new_payment_id(order_id: &str) -> String {
    let suffix: String = (0..PAYMENT_SUFFIX_LEN)
        .map(|_| {
            let i = rand::random::<u32>() as usize % SUFFIX_ALPHABET.len();
            char::from(SUFFIX_ALPHABET[i])
        })
        .collect();
    format!("{order_id}{suffix}")
}

/// The order a payment id names (its first 26 characters), if it can name one.
pub fn order_of_payment(payment_id: &str) -> Option<&str> {
    payment_id
        .get(..26)
        .filter(|order_id| is_id(order_id) && payment_id.len() == 26 + PAYMENT_SUFFIX_LEN)
}

/// The order, if `token` is its access token (anything else is "not found", as for
/// `GET /orders/{id}`).
async fn authorized_order(
    ctx: &Context,
    order_id: &str,
    token: Option<&str>,
) -> Result<OrderRecord> {
    let (Some(token), true) = (token, is_id(order_id)) else {
        return Err(Error::NotFound("order"));
    };
    ctx.store
        .get_order(order_id)
        .await?
        .filter(|order| token_matches(token, &order.token_hash))
        .ok_or(Error::NotFound("order"))
}

pub async fn start_payment(
    ctx: &Context,
    order_id: &str,
    token: Option<&str>,
    idempotency_key: &str,
    request: PayRequest,
) -> Result<PaymentStarted> {
    let order = authorized_order(ctx, order_id, token).await?;
    let key = hmac_sha256_hex(
        ctx.secrets.order_token_key()?,
        format!("idempotency:payments:{order_id}:{idempotency_key}").as_bytes(),
    )?;
    let request_hash = sha256_hex(
        json!([request.channel, request.method])
            .to_string()
            .as_bytes(),
    );
    if let Some(answer) = replay(ctx, &order, &key, &request_hash).await? {
        return Ok(answer);
    }
    let now = ctx.clock.now();
    if order.status != OrderStatus::PendingPayment || order.expires_at <= now {
        return Err(Error::Conflict(ConflictKind::OrderNotPayable));
    }
    let candidates = match &request.channel {
        Some(channel_id) => {
            let channel = find_channel(ctx, channel_id).await?;
            if !channel.settings.takes(&order.amount) {
                return Err(Error::Conflict(ConflictKind::ChannelNotEligible));
            }
            vec![channel]
        }
        None => {
            let taking: Vec<ChannelRecord> = channels_taking(ctx, &order.amount)
                .await?
                .into_iter()
                .filter(|channel| {
                    request
                        .method
                        .is_none_or(|method| channel.settings.provider.offers(method))
                })
                .collect();
            if taking.is_empty() {
                return Err(Error::Conflict(ConflictKind::ChannelNotEligible));
            }
            taking
        }
    };
    let subject = match ctx.store.get_product(&order.sku, false).await? {
        Some(product) => product.title,
        None => order.sku.clone(),
    };
    let explicit = request.channel.is_some();
    let mut failed = 0;
    for channel in &candidates {
        match try_channel(ctx, &order, channel, request.method, &subject).await {
            Ok((attempt, action)) => {
                let claimed = ctx
                    .store
                    .claim_payment_key(&key, &request_hash, order_id, &attempt.payment_id, now)
                    .await?;
                if !claimed {
                    // The same request raced this one and won: answer as it did (this
                    // attempt stays pending upstream, unused; the reconciler closes it
                    // when the order expires).
                    return replay(ctx, &order, &key, &request_hash)
                        .await?
                        .ok_or(Error::Contention("payment idempotency key"));
                }
                return Ok(started(&attempt, action));
            }
            // The buyer's choice of method, refused by the channel they named.
            Err(err @ Error::InvalidRequest { .. }) if explicit => return Err(err),
            // The provider refused, failed or did not answer: the next channel.
            Err(
                err @ (Error::Upstream { .. }
                | Error::Timeout { .. }
                | Error::InvalidRequest { .. }
                | Error::NotAvailable { .. }),
            ) => {
                failed += 1;
                crate::metrics::provider_error(channel.settings.provider.as_str());
                tracing::warn!(order_id, channel_id = %channel.channel_id, error = %err, "payment channel could not open the payment; trying the next");
            }
            // Kami's own failure (storage, a channel's secrets, configuration) is no
            // reason to try another provider: it is reported as what it is.
            Err(err) => return Err(err),
        }
    }
    Err(Error::PaymentProvidersUnavailable { attempts: failed })
}

/// One attempt on one channel: recorded (`creating`) before the provider is called, then
/// `pending` with the buyer's action, or `failed` with the reason.
async fn try_channel(
    ctx: &Context,
    order: &OrderRecord,
    channel: &ChannelRecord,
    method: Option<PaymentMethod>,
    subject: &str,
) -> Result<(AttemptRecord, PaymentAction)> {
    let now = ctx.clock.now();
    let kind = channel.settings.provider;
    let attempt = AttemptRecord {
        payment_id: new_payment_id(&order.order_id),
        order_id: order.order_id.clone(),
        channel_id: channel.channel_id.clone(),
        provider: kind,
        method: method.unwrap_or(kind.default_method()),
        amount: order.amount.clone(),
        status: AttemptStatus::Creating,
        action: None,
        provider_ref: None,
        failure: None,
        refunded: 0,
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    ctx.store.put_attempt(&attempt, now).await?;
    let opened = async {
        let provider = provider_for(ctx, channel).await?;
        provider
            .create_payment(&PaymentRequest {
                payment_id: attempt.payment_id.clone(),
                order_id: order.order_id.clone(),
                amount: order.amount.clone(),
                subject: subject.to_owned(),
                method: attempt.method,
                notify_url: notify_url(ctx, kind, &channel.channel_id)?,
                expires_at: order.expires_at,
                buyer_email: order.buyer_email.clone(),
            })
            .await
    }
    .await;
    match opened {
        Ok(session) => {
            ctx.store
                .attempt_opened(
                    &attempt,
                    &session.action,
                    session.provider_ref.as_deref(),
                    ctx.clock.now(),
                )
                .await?;
            tracing::info!(order_id = %order.order_id, payment_id = %attempt.payment_id, channel_id = %channel.channel_id, "payment opened");
            Ok((
                AttemptRecord {
                    provider_ref: session.provider_ref,
                    ..attempt
                },
                session.action,
            ))
        }
        Err(err) => {
            ctx.store
                .end_attempt(
                    &attempt,
                    &[AttemptStatus::Creating],
                    AttemptStatus::Failed,
                    Some(&err.to_string()),
                    ctx.clock.now(),
                )
                .await?;
            Err(err)
        }
    }
}

/// The answer to a retry with the same key: the same attempt, if the key was claimed.
async fn replay(
    ctx: &Context,
    order: &OrderRecord,
    key: &str,
    request_hash: &str,
) -> Result<Option<PaymentStarted>> {
    let Some(record) = ctx.store.get_idempotency("payments", key).await? else {
        return Ok(None);
    };
    if record.request_hash != request_hash {
        return Err(Error::IdempotencyKeyReused);
    }
    let payment_id = record
        .payment_id
        .ok_or_else(|| Error::Corrupt("payment idempotency record without its attempt".into()))?;
    let attempt = ctx
        .store
        .get_attempt(&order.order_id, &payment_id)
        .await?
        .ok_or_else(|| Error::Corrupt("payment idempotency record without its attempt".into()))?;
    let action = attempt
        .action
        .clone()
        .ok_or_else(|| Error::Corrupt("a claimed attempt without its action".into()))?;
    Ok(Some(started(&attempt, action)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_id_names_its_order_and_fits_every_provider() {
        let order_id = crate::domain::time::new_id();
        let payment_id = new_payment_id(&order_id);
        assert_eq!(payment_id.len(), 30);
        assert!(
            payment_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
        assert_eq!(order_of_payment(&payment_id), Some(order_id.as_str()));
        assert_eq!(order_of_payment("short"), None);
        assert_eq!(order_of_payment(&format!("{payment_id}X")), None);
        assert_ne!(new_payment_id(&order_id), payment_id, "random suffix");
    }
}
