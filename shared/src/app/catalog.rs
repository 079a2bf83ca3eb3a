//! Products: create (admin), view (public and admin).

use serde_json::{Value, json};

use crate::config::Context;
use crate::domain::product::{NewProductRequest, Product, Stock, validate_sku};
use crate::error::{Error, Result};

pub async fn create_product(ctx: &Context, body: &[u8]) -> Result<Value> {
    let request: NewProductRequest =
        serde_json::from_slice(body).map_err(|e| Error::InvalidJson(e.to_string()))?;
    let product = request.into_product(ctx.clock.now().to_rfc3339())?;
    ctx.store.create_product(&product).await?;
    tracing::info!(sku = %product.sku, "product created");
    Ok(admin_view(&product, &Stock::default()))
}

pub async fn find_product(ctx: &Context, sku: &str, consistent: bool) -> Result<Product> {
    validate_sku(sku).map_err(|_| Error::NotFound("product"))?;
    ctx.store
        .get_product(sku, consistent)
        .await?
        .ok_or(Error::NotFound("product"))
}

/// `GET /products/{sku}`: what a buyer sees, with the units still available.
pub async fn public_product(ctx: &Context, sku: &str) -> Result<Value> {
    let product = find_product(ctx, sku, false).await?;
    let stock = ctx.store.stock(sku, false).await?;
    Ok(public_view(&product, &stock))
}

/// `GET /admin/products/{sku}`: with available, reserved and sold, read consistently.
pub async fn admin_product(ctx: &Context, sku: &str) -> Result<Value> {
    let product = find_product(ctx, sku, true).await?;
    let stock = ctx.store.stock(sku, true).await?;
    Ok(admin_view(&product, &stock))
}

fn public_view(product: &Product, stock: &Stock) -> Value {
    json!({
        "sku": product.sku,
        "title": product.title,
        "price": product.price,
        "delivery": {"type": product.delivery.as_str()},
        "max_per_order": product.max_per_order,
        "stock": {"available": stock.available.max(0)},
    })
}

fn admin_view(product: &Product, stock: &Stock) -> Value {
    let mut view = public_view(product, stock);
    view["stock"] = json!(stock);
    view["created_at"] = json!(product.created_at);
    view
}
