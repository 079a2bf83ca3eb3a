//! What an operator needs for orders that need a person: see everything about an order
//! (never its codes), and send a failed or stuck delivery round again.

use serde_json::{Value, json};

use crate::config::Context;
use crate::domain::time::is_id;
use crate::error::{Error, Result};

/// `GET /admin/orders/{id}`: status, exception, events, payments and which keys were
/// allocated (ids only: codes are shown to the buyer alone).
pub async fn order_for_operator(ctx: &Context, order_id: &str) -> Result<Value> {
    if !is_id(order_id) {
        return Err(Error::NotFound("order"));
    }
    let view = ctx
        .store
        .get_order_view(order_id)
        .await?
        .ok_or(Error::NotFound("order"))?;
    let order = &view.order;
    Ok(json!({
        "order_id": order.order_id,
        "sku": order.sku,
        "quantity": order.quantity,
        "status": order.status,
        "exception": order.exception,
        "amount": order.amount,
        "buyer": {"email": order.buyer_email},
        "created_at": order.created_at,
        "expires_at": order.expires_at.to_rfc3339(),
        "updated_at": order.updated_at,
        "payment_ref": order.payment_ref,
        "events": view.events.iter().map(|e| json!({
            "at": e.at, "from": e.from, "to": e.to, "cause": e.cause,
        })).collect::<Vec<_>>(),
        "payments": view.payments.iter().map(|p| json!({
            "provider": p.provider, "event_id": p.event_id, "amount": p.amount,
            "provider_ref": p.provider_ref, "outcome": p.outcome, "received_at": p.received_at,
        })).collect::<Vec<_>>(),
        "allocated_keys": view.deliveries.iter().map(|d| json!({
            "slot": d.slot, "key_id": d.key_id, "batch_id": d.batch_id,
        })).collect::<Vec<_>>(),
    }))
}

/// `POST /admin/orders/{id}/redeliver`: queues delivery again for a paid order that is
/// waiting (`paid`) or gave up (`delivery_failed`). Safe to repeat: the worker delivers
/// each order once.
pub async fn redeliver(ctx: &Context, order_id: &str) -> Result<Value> {
    let order = if is_id(order_id) {
        ctx.store.get_order(order_id).await?
    } else {
        None
    };
    let order = order.ok_or(Error::NotFound("order"))?;
    if !order.status.awaits_delivery() {
        return Err(Error::IllegalTransition {
            from: order.status,
            cause: "redeliver",
        });
    }
    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
    tracing::info!(order_id, status = %order.status, "delivery re-queued by an operator");
    Ok(json!({"order_id": order.order_id, "status": order.status, "queued": true}))
}

#[cfg(test)]
mod tests {
    use crate::domain::order::{ALL_STATUSES, OrderStatus};

    #[test]
    fn only_paid_and_failed_deliveries_can_be_sent_again() {
        let allowed: Vec<_> = ALL_STATUSES
            .iter()
            .filter(|s| s.awaits_delivery())
            .collect();
        assert_eq!(allowed, [&OrderStatus::Paid, &OrderStatus::DeliveryFailed]);
    }
}
