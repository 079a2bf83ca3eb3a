//! Buyer side: create an order (reserving stock), and show it to the token holder with
//! what was delivered (each delivery type shows its own records: `app::fulfil`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::fulfil::{ByType, Fulfiller};
use crate::config::Context;
use crate::domain::crypto::{self, order_access_token, sha256_hex, token_matches};
use crate::domain::entitlement::validate_account_id;
use crate::domain::hold::{Holder, address_bucket};
use crate::domain::money::Money;
use crate::domain::notification::{Contact, Language, validate_phone};
use crate::domain::order::{OrderStatus, TopUpOrder, payment_deadline};
use crate::domain::product::{DeliveryType, Product, validate_quantity, validate_sku};
use crate::domain::time::{Timestamp, is_id, new_id};
use crate::error::{ConflictKind, Error, Result};
use crate::request::RequestBody;
use crate::store::{
    COUNTER_SHARDS, CreateOrderOutcome, HoldClaim, OrderEvent, OrderRecord, StockShare,
};

const MIN_IDEMPOTENCY_KEY_LEN: usize = 16;
/// A replay hands the access token back only this soon after the order, and only to
/// the source that made it (docs/security.md).
const REPLAY_TOKEN_SECONDS: i64 = 300;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
const MAX_EMAIL_LEN: usize = 254;
/// How often the sweep runs (template.yaml, the expiry sweep's schedule): a refused
/// client's `Retry-After` allows for one run after the grace.
const SWEEP_PERIOD_SECONDS: i64 = 60;
/// Consistent reads of a product's counters one order may make when the counter it
/// tried first is short (each followed by an attempt on every counter that fits).
const STOCK_READS: u32 = 2;

/// The body of `POST /orders`. Fields are optional here so that a missing one gets
/// its own code (`invalid_sku`, ...), as a wrong one does; a price in the body is
/// ignored on purpose.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderRequest {
    #[schema(
        required = true,
        pattern = r"^[A-Za-z0-9._-]{1,64}$",
        example = "steam-wallet-100"
    )]
    pub sku: Option<String>,
    #[schema(required = true, minimum = 1, example = 1)]
    pub quantity: Option<i64>,
    #[schema(required = true)]
    pub buyer: Option<Buyer>,
    /// Who receives a direct top-up (required for `direct_topup` products, refused for
    /// any other).
    pub recipient: Option<Recipient>,
    /// A distributor's referral code (matched without regard to case): the order is
    /// attributed to that distributor and the chain above it, as it is now.
    #[schema(example = "SHA2026")]
    pub referral_code: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Recipient {
    /// The account to top up, matching the product's `account.pattern` exactly (no
    /// trimming).
    #[schema(required = true, example = "13800000000")]
    pub account: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Buyer {
    #[schema(required = true, example = "buyer@example.com")]
    pub email: Option<String>,
    /// The buyer's account in the merchant's system (1 to 128 visible ASCII
    /// characters): required for products that grant an entitlement (`membership`,
    /// `count_card`), which it receives.
    #[schema(example = "user-42")]
    pub account_id: Option<String>,
    /// A phone number in E.164 (`+8613800000000`): the delivery notice also goes there
    /// by SMS.
    #[schema(example = "+8613800000000")]
    pub phone: Option<String>,
    /// The language of what Kami sends the buyer: `zh-CN` (the default) or `en`.
    #[schema(value_type = Option<String>, example = "en")]
    pub language: Option<String>,
}

impl RequestBody for OrderRequest {
    fn field_code(path: &str) -> Option<&'static str> {
        match path {
            "sku" => Some("invalid_sku"),
            "quantity" => Some("invalid_quantity"),
            "buyer" | "buyer.email" => Some("invalid_email"),
            "buyer.account_id" => Some("invalid_account_id"),
            "buyer.phone" => Some("invalid_phone"),
            "buyer.language" => Some("invalid_language"),
            "recipient" | "recipient.account" => Some("invalid_recipient"),
            "referral_code" => Some("invalid_referral_code"),
            _ => None,
        }
    }
}

/// An order request with every field present and the email normalised.
struct ValidOrderRequest {
    sku: String,
    quantity: i64,
    email: String,
    /// `recipient`, if given: `Some(None)` when it names no account.
    recipient: Option<Option<String>>,
    referral_code: Option<String>,
    account_id: Option<String>,
    contact: Contact,
}

impl ValidOrderRequest {
    fn from_request(request: OrderRequest) -> Result<Self> {
        let sku = request.sku.ok_or_else(|| {
            Error::invalid_field("invalid_sku", "sku", "sku is required and must be a string")
        })?;
        let quantity = request.quantity.ok_or_else(|| {
            Error::invalid_field(
                "invalid_quantity",
                "quantity",
                "quantity is required and must be an integer",
            )
        })?;
        let (email, account_id, phone, language) = request.buyer.map_or_else(
            || (None, None, None, None),
            |buyer| (buyer.email, buyer.account_id, buyer.phone, buyer.language),
        );
        if let Some(account_id) = &account_id {
            validate_account_id(account_id)?;
        }
        if let Some(phone) = &phone {
            validate_phone(phone)?;
        }
        let contact = Contact {
            phone,
            language: language
                .as_deref()
                .map(Language::parse)
                .transpose()?
                .unwrap_or_default(),
        };
        let email = email
            .map(|email| email.trim().to_ascii_lowercase())
            .filter(|email| valid_email(email))
            .ok_or_else(|| {
                Error::invalid_field(
                    "invalid_email",
                    "buyer.email",
                    "buyer.email must be an email address",
                )
            })?;
        Ok(ValidOrderRequest {
            sku,
            quantity,
            email,
            recipient: request.recipient.map(|recipient| recipient.account),
            referral_code: request.referral_code,
            account_id,
            contact,
        })
    }

    /// Hash of what the request means, so a retry with re-ordered JSON still matches.
    fn fingerprint(&self) -> String {
        // A request without a phone or language hashes as it did before they existed.
        if self.contact != Contact::default() {
            return sha256_hex(
                json!([
                    self.sku,
                    self.quantity,
                    self.email,
                    self.recipient,
                    self.referral_code.as_deref().map(str::to_ascii_uppercase),
                    self.account_id,
                    self.contact.phone,
                    self.contact.language.as_str()
                ])
                .to_string()
                .as_bytes(),
            );
        }
        sha256_hex(
            // A request without a referral (or an account) hashes as it did before
            // referrals (and accounts) existed.
            match (&self.referral_code, &self.account_id) {
                (None, None) => json!([self.sku, self.quantity, self.email, self.recipient]),
                (code, None) => json!([
                    self.sku,
                    self.quantity,
                    self.email,
                    self.recipient,
                    code.as_deref().map(str::to_ascii_uppercase)
                ]),
                (code, Some(account_id)) => json!([
                    self.sku,
                    self.quantity,
                    self.email,
                    self.recipient,
                    code.as_deref().map(str::to_ascii_uppercase),
                    account_id
                ]),
            }
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
    // A replay may return the order's access token, so the key is a secret of its own:
    // long enough not to be guessed, and stored only as an HMAC under a secret.
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
    idempotency_key: &str,
    source_ip: Option<&str>,
    request: OrderRequest,
) -> Result<OrderCreated> {
    let request = ValidOrderRequest::from_request(request)?;
    let claim = IdempotencyClaim::new(ctx, idempotency_key, source_ip)?;
    let request_hash = request.fingerprint();
    validate_sku(&request.sku).map_err(|err| err.at("sku"))?;
    // No read of the idempotency record first: the order transaction claims the key,
    // and only a refused claim (a retry) reads it. One request fewer per order.
    let product = super::catalog::find_product(ctx, &request.sku, false).await?;
    let quantity =
        validate_quantity(request.quantity, &product).map_err(|err| err.at("quantity"))?;
    let (parts, top_up) = match &product.bundle {
        Some(spec) => (
            super::bundles::order_parts(ctx, spec, quantity, request.recipient.clone()).await?,
            None,
        ),
        None => (
            Vec::new(),
            top_up_order(ctx, &product, quantity, request.recipient.clone()).await?,
        ),
    };
    // An account-bound product (or part) grants to the buyer's account; others ignore
    // one.
    let account_bound = product.grant.is_some() || parts.iter().any(|part| part.grant.is_some());
    let account_id = if account_bound {
        Some(request.account_id.clone().ok_or_else(|| {
            Error::invalid_field(
                "account_id_required",
                "buyer.account_id",
                "this product is granted to an account: buyer.account_id is required",
            )
        })?)
    } else {
        None
    };
    let referral = match &request.referral_code {
        Some(code) => match super::distributors::referral_for(ctx, code, &product.sku).await {
            Ok(referral) => Some(referral),
            // A retry of an order made before its code was changed or disabled answers
            // that order, not the code's refusal.
            Err(refused @ Error::InvalidRequest { .. }) => {
                return match replay(ctx, &claim, &request_hash).await? {
                    Some(made) => Ok(made),
                    None => Err(refused),
                };
            }
            Err(err) => return Err(err),
        },
        None => None,
    };
    let now = ctx.clock.now();
    let order_id = new_id();
    let token = order_access_token(ctx.secrets.order_token_key()?, &order_id)?;
    let mut order = OrderRecord {
        order_id: order_id.clone(),
        sku: product.sku.clone(),
        quantity,
        delivery_type: product.delivery,
        // A placeholder on the counted lines until a plan is put (`bundles::assign`).
        stock_shards: if product.counts_stock() {
            StockShare::whole(0, quantity)
        } else {
            Vec::new()
        },
        amount: product.price.times(quantity)?,
        status: OrderStatus::PendingPayment,
        buyer_email: request.email,
        token_hash: sha256_hex(token.as_bytes()),
        created_at: now.to_rfc3339(),
        expires_at: payment_deadline(
            now,
            product.reservation_seconds(ctx.config.order_ttl_seconds),
        ),
        updated_at: now.to_rfc3339(),
        payment_ref: None,
        exception: None,
        holds: Vec::new(),
        top_up,
        license: product.license,
        grant: product.grant.clone(),
        account_id,
        contact: request.contact.clone(),
        renews: None,
        link: product.link.clone(),
        redelivery_requested_at: None,
        paid_amount: None,
        referral,
        paid_at: None,
        parts,
        on_partial_failure: product.bundle.as_ref().map(|spec| spec.on_partial_failure),
        failed_part: None,
        slot_base: 0,
    };
    let holds = hold_claims(ctx, &product, &order.buyer_email, source_ip)?;
    if let Some((holder, claim)) = holds.iter().find(|(_, claim)| claim.limit < quantity) {
        return Err(too_many_pending(*holder, claim.limit, 1));
    }
    order.holds = holds
        .iter()
        .map(|(_, claim)| claim.holder.clone())
        .collect();
    let claims: Vec<HoldClaim> = holds.iter().map(|(_, claim)| claim.clone()).collect();
    // Before the order is written: an order is never made that its answer cannot carry.
    let payment_channels = offers(ctx, &order.amount).await?;
    // Each line on a random counter shard; if one has too little, read them all (at
    // most `STOCK_READS` times) and try where the order fits, as `stock` chooses.
    // Nothing counted to reserve (a top-up): the order alone.
    let lines = super::bundles::lines_to_reserve(&order);
    let mut plans = vec![
        lines
            .iter()
            .map(|(_, units)| StockShare::whole(rand::random::<u32>() % COUNTER_SHARDS, *units))
            .collect::<Vec<_>>(),
    ];
    let mut reads = 0;
    loop {
        for plan in plans {
            super::bundles::assign(&mut order, plan);
            match ctx
                .store
                .create_order(
                    &order,
                    &claims,
                    &claim.key,
                    &claim.source,
                    &request_hash,
                    now,
                )
                .await
            {
                Ok(CreateOrderOutcome::Created) => {
                    crate::metrics::order_created();
                    tracing::info!(order_id = %order.order_id, sku = %order.sku, quantity, shards = ?order.stock_shards, "order created");
                    return Ok(created_body(&order, &token, payment_channels));
                }
                Ok(CreateOrderOutcome::KeyTaken) => {
                    return replay(ctx, &claim, &request_hash)
                        .await?
                        .ok_or(Error::Contention("idempotency key"));
                }
                Ok(CreateOrderOutcome::HoldFull { claim }) => {
                    let (holder, claim) = &holds[claim];
                    return Err(hold_full(ctx, &order.sku, *holder, claim, now).await?);
                }
                Err(Error::Conflict(ConflictKind::OutOfStock)) => {}
                Err(err) => return Err(err),
            }
        }
        if reads == STOCK_READS {
            return Err(Error::Conflict(ConflictKind::OutOfStock));
        }
        reads += 1;
        plans = super::bundles::replan(ctx, &lines).await?;
        if plans.is_empty() {
            return Err(Error::Conflict(ConflictKind::OutOfStock));
        }
    }
}

/// What a top-up order asks of its suppliers: the recipient's account, checked against
/// the product's pattern, and the product's suppliers, at least one of them enabled
/// (from this instance's copy of the supplier list). `None` for other products, which
/// take no recipient.
pub(crate) async fn top_up_order(
    ctx: &Context,
    product: &Product,
    quantity: u32,
    recipient: Option<Option<String>>,
) -> Result<Option<TopUpOrder>> {
    let Some(spec) = &product.top_up else {
        return match recipient {
            None => Ok(None),
            Some(_) => Err(Error::invalid_field(
                "invalid_recipient",
                "recipient",
                "this product takes no recipient",
            )),
        };
    };
    let account = recipient.flatten().ok_or_else(|| {
        Error::invalid_field(
            "invalid_recipient",
            "recipient.account",
            format!("recipient.account ({}) is required", spec.account.label),
        )
    })?;
    if !spec.account.accepts(&account)? {
        return Err(Error::invalid_field(
            "invalid_recipient",
            "recipient.account",
            format!(
                "recipient.account is not a valid {}",
                spec.account.label.to_lowercase()
            ),
        ));
    }
    let deliverable = |suppliers: &[crate::store::SupplierRecord]| {
        spec.suppliers.iter().any(|id| {
            suppliers
                .iter()
                .any(|s| &s.supplier_id == id && s.settings.enabled)
        })
    };
    // This instance's copy of the list first; before refusing, the table (a supplier
    // enabled since the copy was read sells at once).
    if !deliverable(&super::suppliers::known_suppliers(ctx, false).await?)
        && !deliverable(&super::suppliers::known_suppliers(ctx, true).await?)
    {
        return Err(Error::Conflict(ConflictKind::ProductUnavailable));
    }
    Ok(Some(TopUpOrder {
        account,
        supplier_product: spec.supplier_product.clone(),
        suppliers: spec.suppliers.clone(),
        supplier_cost: spec
            .supplier_cost
            .as_ref()
            .map(|unit| unit.times(quantity))
            .transpose()?,
    }))
}

/// The holds a new order counts against: the client's source address (when API Gateway
/// gave one; not outside it) and the buyer's email, each under the product's limit. Each
/// holder is stored as an HMAC under the order-token key, never as sent.
fn hold_claims(
    ctx: &Context,
    product: &Product,
    email: &str,
    source_ip: Option<&str>,
) -> Result<Vec<(Holder, HoldClaim)>> {
    let secret = ctx.secrets.order_token_key()?;
    let limits = product.pending_limits;
    let mut holds = Vec::with_capacity(2);
    if let Some(source_ip) = source_ip {
        holds.push((
            Holder::Address,
            address_bucket(source_ip),
            limits.per_address,
        ));
    }
    holds.push((Holder::Email, email.to_owned(), limits.per_email));
    holds
        .into_iter()
        .map(|(holder, who, limit)| {
            let digest = crypto::hmac_sha256_hex(
                secret,
                format!("hold:{}:{who}", holder.as_str()).as_bytes(),
            )?;
            Ok((
                holder,
                HoldClaim {
                    holder: format!("{}#{digest}", holder.as_str()),
                    limit,
                },
            ))
        })
        .collect()
}

/// The refusal of an order whose client's hold is full, with when to come back: when
/// the newest order on that hold will have been paid for or expired (the sweep's grace
/// and one sweep period after its `expires_at`). Reads the hold: refusals only.
async fn hold_full(
    ctx: &Context,
    sku: &str,
    holder: Holder,
    claim: &HoldClaim,
    now: Timestamp,
) -> Result<Error> {
    let released_by = ctx.store.get_hold(sku, &claim.holder).await?.map(|hold| {
        hold.until
            .plus_seconds(ctx.config.expiry_grace_seconds + SWEEP_PERIOD_SECONDS)
    });
    let retry_after = released_by.map_or(1, |at| at.unix_seconds() - now.unix_seconds());
    Ok(too_many_pending(holder, claim.limit, retry_after))
}

fn too_many_pending(holder: Holder, limit: u32, retry_after_seconds: i64) -> Error {
    Error::TooManyPendingOrders {
        holder: holder.as_str(),
        limit,
        retry_after_seconds: retry_after_seconds.max(1),
    }
}

/// What an `Idempotency-Key` claim stores: the key and the client's source address,
/// each as an HMAC under the order-token key, never as sent.
struct IdempotencyClaim {
    key: String,
    source: String,
}

impl IdempotencyClaim {
    fn new(ctx: &Context, key: &str, source_ip: Option<&str>) -> Result<Self> {
        let secret = ctx.secrets.order_token_key()?;
        Ok(IdempotencyClaim {
            key: crypto::hmac_sha256_hex(secret, format!("idempotency:orders:{key}").as_bytes())?,
            source: crypto::hmac_sha256_hex(
                secret,
                format!("source:{}", source_ip.unwrap_or("")).as_bytes(),
            )?,
        })
    }
}

/// The answer to a retry: the same order. Its access token only to the source that made
/// the order, within `REPLAY_TOKEN_SECONDS`: a leaked or guessed key opens nothing.
async fn replay(
    ctx: &Context,
    claim: &IdempotencyClaim,
    request_hash: &str,
) -> Result<Option<OrderCreated>> {
    let Some(record) = ctx.store.get_idempotency("orders", &claim.key).await? else {
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
    let fresh = record
        .created
        .is_some_and(|created| ctx.clock.now().unix_seconds() - created <= REPLAY_TOKEN_SECONDS);
    if fresh && record.source.as_deref() == Some(claim.source.as_str()) {
        let token = order_access_token(ctx.secrets.order_token_key()?, &order.order_id)?;
        return Ok(Some(created_body(
            &order,
            &token,
            offers(ctx, &order.amount).await?,
        )));
    }
    let mut body = created_body(&order, "", offers(ctx, &order.amount).await?);
    body.access_token = None;
    body.access_token_withheld = Some(format!(
        "a retry gets the access token only from the address that made the order and within {REPLAY_TOKEN_SECONDS} s of it; use the token of the first answer"
    ));
    Ok(Some(body))
}

/// The `POST /orders` answer; rebuilt identically on replay from the stored order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderCreated {
    #[schema(example = "01JD0000000000000000000000")]
    pub order_id: String,
    pub status: OrderStatus,
    pub sku: String,
    pub quantity: u32,
    pub amount: Money,
    /// RFC 3339, UTC: unpaid by then, the order expires and its stock returns.
    pub expires_at: String,
    /// The bearer token for `GET /orders/{order_id}`; keep it: a retry gets it again only
    /// from the same address within 5 minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Why a retry's answer has no `access_token` (and what to do instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_withheld: Option<String>,
    /// The channels that take this order, by priority: pay with
    /// `POST /orders/{order_id}/payments`.
    pub payment_channels: Vec<ChannelOffer>,
}

/// A channel a buyer may pay an order with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelOffer {
    #[schema(example = "alipay-main")]
    pub channel: String,
    #[schema(example = "alipay")]
    pub provider: String,
    pub display_name: String,
}

/// The channels that take `amount` (this instance's copy of the list, read at most every
/// 30 seconds).
async fn offers(ctx: &Context, amount: &Money) -> Result<Vec<ChannelOffer>> {
    Ok(super::channels::channels_taking(ctx, amount)
        .await?
        .into_iter()
        .map(|channel| ChannelOffer {
            channel: channel.channel_id,
            provider: channel.settings.provider.as_str().to_owned(),
            display_name: channel.settings.display_name,
        })
        .collect())
}

fn created_body(
    order: &OrderRecord,
    token: &str,
    payment_channels: Vec<ChannelOffer>,
) -> OrderCreated {
    OrderCreated {
        order_id: order.order_id.clone(),
        status: OrderStatus::PendingPayment,
        sku: order.sku.clone(),
        quantity: order.quantity,
        amount: order.amount.clone(),
        expires_at: order.expires_at.to_rfc3339(),
        access_token: Some(token.to_owned()),
        access_token_withheld: None,
        payment_channels,
    }
}

/// One step of an order's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEventView {
    pub at: String,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub cause: String,
}

impl OrderEventView {
    pub fn of(events: &[OrderEvent]) -> Vec<Self> {
        events
            .iter()
            .map(|e| OrderEventView {
                at: e.at.clone(),
                from: e.from,
                to: e.to,
                cause: e.cause.clone(),
            })
            .collect()
    }
}

/// What the buyer received.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivered {
    /// The delivery type (`card_key`, `direct_topup`, `license_key`, `membership`,
    /// `count_card`, `link`, `subscription`; a bundle's parts each their own).
    #[serde(rename = "type")]
    pub kind: DeliveryType,
    /// `card_key`: the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `direct_topup`: the account that was topped up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `direct_topup`: the supplier's reference for the top-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplier_ref: Option<String>,
    /// `license_key`: the generated key (XXXXX-XXXXX-XXXXX-XXXXX).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_key: Option<String>,
    /// `membership`, `count_card`: the entitlement granted or extended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entitlement_id: Option<String>,
    /// `link`: the redemption link (`{api}/r/{token}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `subscription`: the subscription (cancel it with `POST
    /// /subscriptions/{subscription_id}/cancel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// A bundle's delivery: the sku of the part it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

impl Delivered {
    /// An entry of `kind` with nothing in it yet: each type fills its own fields.
    pub fn of(kind: DeliveryType) -> Self {
        Delivered {
            kind,
            code: None,
            account: None,
            supplier_ref: None,
            license_key: None,
            entitlement_id: None,
            url: None,
            subscription_id: None,
            part: None,
        }
    }
}

/// The `GET /orders/{order_id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderDetails {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    pub status: OrderStatus,
    pub amount: Money,
    pub created_at: String,
    pub expires_at: String,
    pub updated_at: String,
    pub events: Vec<OrderEventView>,
    /// What the order delivered, once it is delivered (a partly delivered bundle: the
    /// parts it delivered).
    pub deliveries: Vec<Delivered>,
    /// Why an order needs a person, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// A bundle whose part failed for good: that part's sku.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_part: Option<String>,
    /// `subscription`: the renewal order for the next period, made `renewal_notice_days`
    /// before this one ends and waiting for payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_order_id: Option<String>,
}

/// `GET /orders/{id}`: the order for the holder of its token. Any mismatch looks
/// exactly like a missing order.
pub async fn get_order(ctx: &Context, order_id: &str, token: Option<&str>) -> Result<OrderDetails> {
    let (Some(token), true) = (token, is_id(order_id)) else {
        return Err(Error::NotFound("order"));
    };
    let view = ctx
        .store
        .get_order_view(order_id)
        .await?
        .filter(|view| token_matches(token, &view.order.token_hash))
        .ok_or(Error::NotFound("order"))?;
    let delivered = view.order.status == OrderStatus::Delivered;
    // A partly delivered bundle shows the parts it delivered.
    let deliveries = if delivered || view.order.status == OrderStatus::PartiallyDelivered {
        ByType.show(ctx, &view.order, &view.deliveries).await?
    } else {
        Vec::new()
    };
    let renewal_order_id = if delivered && view.order.delivery_type == DeliveryType::Subscription {
        super::subscriptions::renewal_order_of(ctx, &view.order).await?
    } else {
        None
    };
    let order = &view.order;
    Ok(OrderDetails {
        order_id: order.order_id.clone(),
        sku: order.sku.clone(),
        quantity: order.quantity,
        status: order.status,
        amount: order.amount.clone(),
        created_at: order.created_at.clone(),
        expires_at: order.expires_at.to_rfc3339(),
        updated_at: order.updated_at.clone(),
        events: OrderEventView::of(&view.events),
        deliveries,
        exception: order.exception.clone(),
        failed_part: order.failed_part.clone(),
        renewal_order_id,
    })
}
