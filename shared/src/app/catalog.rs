//! Products: create (admin), view (public and admin).

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::{Actor, snapshot};
use super::sealed;
use crate::config::Context;
use crate::domain::bundle::{BundleSpec, bundle_available};
use crate::domain::card_key::CardKeyRules;
use crate::domain::entitlement::GrantSpec;
use crate::domain::license::LicenseSpec;
use crate::domain::link::LinkSpec;
use crate::domain::money::Money;
use crate::domain::product::{
    AccountField, DeliveryType, NewProductRequest, PendingLimits, Product, Stock, TopUpSpec,
    validate_sku,
};
use crate::error::{Error, Result};
use crate::ports::vault::EncryptionContext;
use crate::store::AuditSubject;

pub async fn create_product(
    ctx: &Context,
    actor: &Actor,
    request: NewProductRequest,
) -> Result<AdminProductView> {
    let mut product = request.into_product(ctx.clock.now().to_rfc3339())?;
    if let Some(bundle) = &product.bundle {
        let mut parts = Vec::with_capacity(bundle.items.len());
        for item in &bundle.items {
            parts.push(ctx.store.get_product(&item.sku, true).await?);
        }
        bundle.check_parts(&parts, |field, message| {
            Error::invalid_field("invalid_delivery", &format!("delivery.{field}"), message)
        })?;
    }
    // A link product's signing secret: made here, sealed, shown in this answer only.
    let link_secret = match &product.link {
        Some(_) => {
            let secret = zeroize::Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
            let sku = product.sku.clone();
            product.link_secret = Some(
                sealed::seal(
                    ctx,
                    |seal_id| EncryptionContext::link_secret(&sku, seal_id),
                    &link_secret_aad(&sku),
                    secret.as_bytes(),
                )
                .await?,
            );
            Some(secret)
        }
        None => None,
    };
    let counted = product.counts_stock();
    let view = AdminProductView::of(ctx, &product, (Stock::default(), counted));
    let entry = actor.entry(
        ctx,
        "product.create",
        (AuditSubject::Product, &product.sku),
        None,
        None,
        snapshot(&view),
    );
    ctx.store.create_product(&product, &entry).await?;
    tracing::info!(sku = %product.sku, "product created");
    Ok(AdminProductView {
        link_secret: link_secret.map(|secret| secret.to_string()),
        ..view
    })
}

/// Associated data binding a sealed link secret to its product.
pub fn link_secret_aad(sku: &str) -> Vec<u8> {
    format!("kami/link-secret/v1|{sku}").into_bytes()
}

pub async fn find_product(ctx: &Context, sku: &str, consistent: bool) -> Result<Product> {
    validate_sku(sku).map_err(|_| Error::NotFound("product"))?;
    ctx.store
        .get_product(sku, consistent)
        .await?
        .ok_or(Error::NotFound("product"))
}

/// `GET /products/{sku}`: what a buyer sees, with the units still available.
pub async fn public_product(ctx: &Context, sku: &str) -> Result<ProductView> {
    let product = find_product(ctx, sku, false).await?;
    let stock = stock_of(ctx, &product, false).await?;
    Ok(ProductView::of(&product, stock))
}

/// `GET /admin/products/{sku}`: with available, reserved and sold, read consistently.
pub async fn admin_product(ctx: &Context, sku: &str) -> Result<AdminProductView> {
    let product = find_product(ctx, sku, true).await?;
    let stock = stock_of(ctx, &product, true).await?;
    Ok(AdminProductView::of(ctx, &product, stock))
}

/// A product's stock, and whether it is counted: its counters', or for a bundle what
/// its parts allow (`available` only: the parts keep their own reserved and sold).
async fn stock_of(ctx: &Context, product: &Product, consistent: bool) -> Result<(Stock, bool)> {
    let Some(bundle) = &product.bundle else {
        let stock = ctx.store.stock(&product.sku, consistent).await?;
        return Ok((stock, product.counts_stock()));
    };
    let mut counted = Vec::new();
    for item in &bundle.items {
        let part = find_product(ctx, &item.sku, consistent).await?;
        if part.counts_stock() {
            let stock = ctx.store.stock(&item.sku, consistent).await?;
            counted.push((stock.available, item.quantity));
        }
    }
    let available = bundle_available(&counted);
    let stock = Stock {
        available: available.unwrap_or(0),
        ..Stock::default()
    };
    Ok((stock, available.is_some()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    #[serde(rename = "type")]
    pub kind: DeliveryType,
    /// `direct_topup`: the account an order must name (`recipient.account`), its label
    /// and the pattern it must match whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountField>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicStock {
    /// Units a buyer can order now; `null` when the product's stock is not counted (a
    /// direct top-up: its suppliers have it).
    pub available: Option<i64>,
}

/// A product as buyers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductView {
    pub sku: String,
    pub title: String,
    pub price: Money,
    pub delivery: DeliveryView,
    pub max_per_order: u32,
    pub stock: PublicStock,
}

impl ProductView {
    fn of(product: &Product, (stock, counted): (Stock, bool)) -> Self {
        ProductView {
            sku: product.sku.clone(),
            title: product.title.clone(),
            price: product.price.clone(),
            delivery: DeliveryView {
                kind: product.delivery,
                account: product.top_up.as_ref().map(|spec| spec.account.clone()),
            },
            max_per_order: product.max_per_order,
            stock: PublicStock {
                available: counted.then(|| stock.available.max(0)),
            },
        }
    }
}

/// A product as the merchant sees it: the whole stock and when it was created.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminProductView {
    pub sku: String,
    pub title: String,
    pub price: Money,
    pub delivery: DeliveryView,
    pub max_per_order: u32,
    /// How the product's card keys compare when duplicates are looked for.
    pub card_keys: CardKeyRules,
    /// Units one client may hold in unpaid orders of this product.
    pub pending_limits: PendingLimits,
    /// Seconds an unpaid order holds its units (the product's, or the deployment's
    /// default).
    pub reservation_seconds: i64,
    pub stock: Stock,
    /// `direct_topup`: the supplier product and the suppliers, first choice first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUpSpec>,
    /// `license_key`: what each generated key allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<LicenseSpec>,
    /// `membership`, `count_card`: what each unit grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantSpec>,
    /// `link`: where its links lead, for how long and how often.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkSpec>,
    /// `bundle`: its parts and what a part's failure for good does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleSpec>,
    /// `link`: the secret its links' assertions are signed with (64 hex characters, the
    /// HMAC key as this text), in the answer to the product's creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_secret: Option<String>,
    /// Whether the buyer's delivery notice carries the goods themselves.
    pub goods_in_notifications: bool,
    pub created_at: String,
}

impl AdminProductView {
    fn of(ctx: &Context, product: &Product, stock: (Stock, bool)) -> Self {
        let public = ProductView::of(product, stock.clone());
        AdminProductView {
            sku: public.sku,
            title: public.title,
            price: public.price,
            delivery: public.delivery,
            max_per_order: public.max_per_order,
            card_keys: product.card_keys,
            pending_limits: product.pending_limits,
            reservation_seconds: product.reservation_seconds(ctx.config.order_ttl_seconds),
            stock: stock.0,
            top_up: product.top_up.clone(),
            license: product.license,
            grant: product.grant.clone(),
            link: product.link.clone(),
            bundle: product.bundle.clone(),
            link_secret: None,
            goods_in_notifications: product.goods_in_notifications,
            created_at: product.created_at.clone(),
        }
    }
}
