//! Buyer side: create an order (reserving stock), and show it to the token holder with
//! its delivered card keys.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::adapters::dynamo::{COUNTER_SHARDS, CreateOrderOutcome, OrderRecord, OrderView};
use crate::config::Context;
use crate::domain::crypto::{
    self, DataKey, card_key_aad, order_access_token, sha256_hex, token_matches,
};
use crate::domain::order::{OrderStatus, payment_deadline};
use crate::domain::product::{validate_quantity, validate_sku};
use crate::domain::time::{is_id, new_id};
use crate::error::{ConflictKind, Error, Result};
use crate::ports::vault::EncryptionContext;

const MIN_IDEMPOTENCY_KEY_LEN: usize = 8;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
const MAX_EMAIL_LEN: usize = 254;

/// What `POST /orders` needs from the body; a price in the body is ignored on purpose.
struct OrderRequest {
    sku: String,
    quantity: i64,
    email: String,
}

impl OrderRequest {
    fn parse(body: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Error::InvalidJson(e.to_string()))?;
        let sku = value
            .get("sku")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("invalid_sku", "sku is required and must be a string"))?;
        let quantity = value
            .get("quantity")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_quantity",
                    "quantity is required and must be an integer",
                )
            })?;
        let email = value
            .pointer("/buyer/email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|email| valid_email(email))
            .ok_or_else(|| {
                Error::invalid("invalid_email", "buyer.email must be an email address")
            })?;
        Ok(OrderRequest {
            sku: sku.to_owned(),
            quantity,
            email: email.to_ascii_lowercase(),
        })
    }

    /// Hash of what the request means, so a retry with re-ordered JSON still matches.
    fn fingerprint(&self) -> String {
        sha256_hex(
            json!([self.sku, self.quantity, self.email])
                .to_string()
                .as_bytes(),
        )
    }
}

fn valid_email(email: &str) -> bool {
    email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
}

pub fn validate_idempotency_key(key: Option<&str>) -> Result<&str> {
    let key = key.ok_or_else(|| {
        Error::invalid(
            "missing_idempotency_key",
            "the Idempotency-Key header is required",
        )
    })?;
    // A replay returns the order's access token, so the key is a secret of its own:
    // long enough not to be guessed, and stored only as a hash.
    if !(MIN_IDEMPOTENCY_KEY_LEN..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len())
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be {MIN_IDEMPOTENCY_KEY_LEN} to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters (a UUID is fine)"
            ),
        ));
    }
    Ok(key)
}

/// `POST /orders`: returns the 201 body. A retry with the same key and request returns
/// the same body; the same key with another request is refused.
pub async fn create_order(
    ctx: &Context,
    idempotency_key: Option<&str>,
    body: &[u8],
) -> Result<Value> {
    let idempotency_key = validate_idempotency_key(idempotency_key)?;
    let request = OrderRequest::parse(body)?;
    let request_hash = request.fingerprint();
    validate_sku(&request.sku)?;
    // No read of the idempotency record first: the order transaction claims the key,
    // and only a refused claim (a retry) reads it. One request fewer per order.
    let product = super::catalog::find_product(ctx, &request.sku, false).await?;
    let quantity = validate_quantity(request.quantity, &product)?;
    let now = ctx.clock.now();
    let order_id = new_id();
    let token = order_access_token(ctx.secrets.order_token_key()?, &order_id)?;
    let mut order = OrderRecord {
        order_id: order_id.clone(),
        sku: product.sku.clone(),
        quantity,
        stock_shard: 0,
        amount: product.price.times(quantity)?,
        status: OrderStatus::PendingPayment,
        buyer_email: request.email,
        token_hash: sha256_hex(token.as_bytes()),
        created_at: now.to_rfc3339(),
        expires_at: payment_deadline(now, ctx.config.order_ttl_seconds),
        updated_at: now.to_rfc3339(),
        payment_ref: None,
        exception: None,
    };
    // Start on a random counter shard; if it has too little, read all of them once and
    // try those that have enough, fullest first.
    let mut candidates = vec![rand::random::<u32>() % COUNTER_SHARDS];
    let mut read_all_shards = false;
    while let Some(shard) = candidates.pop() {
        order.stock_shard = shard;
        match ctx
            .store
            .create_order(&order, idempotency_key, &request_hash)
            .await
        {
            Ok(CreateOrderOutcome::Created) => {
                tracing::info!(order_id = %order.order_id, sku = %order.sku, quantity, shard, "order created");
                return Ok(created_body(&order, &token));
            }
            Ok(CreateOrderOutcome::KeyTaken) => {
                return replay(ctx, idempotency_key, &request_hash)
                    .await?
                    .ok_or(Error::Contention("idempotency key"));
            }
            Err(Error::Conflict(ConflictKind::OutOfStock)) if !read_all_shards => {
                read_all_shards = true;
                let mut shards = ctx.store.stock_shards(&order.sku, true).await?;
                shards.retain(|(other, stock)| {
                    *other != shard && stock.available >= i64::from(quantity)
                });
                shards.sort_by_key(|(_, stock)| stock.available);
                candidates = shards.into_iter().map(|(other, _)| other).collect();
            }
            Err(Error::Conflict(ConflictKind::OutOfStock)) => {}
            Err(err) => return Err(err),
        }
    }
    Err(Error::Conflict(ConflictKind::OutOfStock))
}

async fn replay(ctx: &Context, idempotency_key: &str, request_hash: &str) -> Result<Option<Value>> {
    let Some(record) = ctx.store.get_idempotency("orders", idempotency_key).await? else {
        return Ok(None);
    };
    if record.request_hash != request_hash {
        return Err(Error::IdempotencyKeyReused);
    }
    let order = ctx
        .store
        .get_order(&record.order_id)
        .await?
        .ok_or_else(|| Error::Corrupt("idempotency record without its order".into()))?;
    let token = order_access_token(ctx.secrets.order_token_key()?, &order.order_id)?;
    Ok(Some(created_body(&order, &token)))
}

/// The creation response; rebuilt identically on replay from the stored order.
fn created_body(order: &OrderRecord, token: &str) -> Value {
    json!({
        "order_id": order.order_id,
        "status": OrderStatus::PendingPayment,
        "sku": order.sku,
        "quantity": order.quantity,
        "amount": order.amount,
        "expires_at": order.expires_at.to_rfc3339(),
        "access_token": token,
    })
}

/// `GET /orders/{id}`: the order for the holder of its token. Any mismatch looks
/// exactly like a missing order.
pub async fn get_order(ctx: &Context, order_id: &str, token: Option<&str>) -> Result<Value> {
    let (Some(token), true) = (token, is_id(order_id)) else {
        return Err(Error::NotFound("order"));
    };
    let view = ctx
        .store
        .get_order_view(order_id)
        .await?
        .filter(|view| token_matches(token, &view.order.token_hash))
        .ok_or(Error::NotFound("order"))?;
    let deliveries = if view.order.status == OrderStatus::Delivered {
        reveal_codes(ctx, &view).await?
    } else {
        Vec::new()
    };
    let order = &view.order;
    let mut body = json!({
        "order_id": order.order_id,
        "sku": order.sku,
        "quantity": order.quantity,
        "status": order.status,
        "amount": order.amount,
        "created_at": order.created_at,
        "expires_at": order.expires_at.to_rfc3339(),
        "updated_at": order.updated_at,
        "events": view.events.iter().map(|e| json!({
            "at": e.at, "from": e.from, "to": e.to, "cause": e.cause,
        })).collect::<Vec<_>>(),
        "deliveries": deliveries,
    });
    if let Some(exception) = &order.exception {
        body["exception"] = json!(exception);
    }
    Ok(body)
}

/// Decrypts the delivered keys: the only place a card key is ever decrypted.
async fn reveal_codes(ctx: &Context, view: &OrderView) -> Result<Vec<Value>> {
    let mut data_keys: HashMap<&str, DataKey> = HashMap::new();
    let mut codes = Vec::with_capacity(view.deliveries.len());
    for slot in &view.deliveries {
        if !data_keys.contains_key(slot.batch_id.as_str()) {
            let vault = ctx.vault()?;
            let recent = vault.recently_unwrapped(&EncryptionContext::card_key_batch(
                &slot.sku,
                &slot.batch_id,
            ));
            let key = match recent {
                Some(key) => key,
                None => {
                    let batch =
                        ctx.store.get_batch(&slot.batch_id).await?.ok_or_else(|| {
                            Error::Corrupt("delivered key without its batch".into())
                        })?;
                    let context = EncryptionContext::card_key_batch(&batch.sku, &batch.batch_id);
                    vault.unwrap_data_key(&context, &batch.wrapped_key).await?
                }
            };
            data_keys.insert(slot.batch_id.as_str(), key);
        }
        let data_key = data_keys
            .get(slot.batch_id.as_str())
            .ok_or(Error::Crypto("data key missing"))?;
        let code = crypto::open(
            data_key,
            &card_key_aad(&slot.sku, &slot.key_id),
            &slot.sealed,
        )?;
        codes.push(json!({"type": "card_key", "code": code.expose()}));
    }
    Ok(codes)
}
