//! The delivery worker: moves reserved stock's card keys into a paid order's delivery
//! slots, one transaction per key, then marks the order delivered. Every step is
//! conditional, so duplicate messages, parallel workers and a crash between any two
//! writes all converge on each slot holding exactly one key and no key in two slots.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

use crate::adapters::queue::DeliveryMessage;
use crate::config::Context;
use crate::domain::order::OrderStatus;
use crate::error::{Error, Result};
use crate::store::{AllocateOutcome, DeliveryRecord, OrderRecord, STOCK_SHARDS, Store};

const KEYS_PER_QUERY: i32 = 10;
/// Re-reads of one stock shard when other deliveries keep taking its keys first.
const SHARD_RETRIES: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    AlreadyDelivered,
    /// The order is not (or no longer) waiting for delivery; nothing to do.
    Skipped(Option<OrderStatus>),
}

/// Delivers one order, from wherever an earlier attempt stopped.
pub async fn deliver(ctx: &Context, order_id: &str) -> Result<DeliveryOutcome> {
    // One query reads the order and the slots an earlier attempt filled.
    let Some(view) = ctx.store.get_order_view(order_id).await? else {
        return Ok(DeliveryOutcome::Skipped(None));
    };
    let order = view.order;
    let filled: Vec<u32> = view
        .deliveries
        .iter()
        .filter_map(DeliveryRecord::card_key)
        .map(|slot| slot.slot)
        .collect();
    if order.status == OrderStatus::Delivered {
        return Ok(DeliveryOutcome::AlreadyDelivered);
    }
    if !order.status.awaits_delivery() {
        return Ok(DeliveryOutcome::Skipped(Some(order.status)));
    }
    if allocate_keys(ctx, &order, &filled).await? {
        finish(ctx, &order).await
    } else {
        // Another worker finished (or an operator moved the order) meanwhile.
        settled_outcome(ctx, &order.order_id).await
    }
}

/// Fills every slot of the order not in `filled` (a slot filled meanwhile by another
/// worker is detected by its condition). Returns false if the order stopped waiting for
/// delivery meanwhile.
pub async fn allocate_keys(ctx: &Context, order: &OrderRecord, filled: &[u32]) -> Result<bool> {
    for slot in (0..order.quantity).filter(|slot| !filled.contains(slot)) {
        if !fill_slot(ctx, order, slot).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn fill_slot(ctx: &Context, order: &OrderRecord, slot: u32) -> Result<bool> {
    let home = Store::home_shard(&order.order_id);
    for step in 0..STOCK_SHARDS {
        let shard = (home + step) % STOCK_SHARDS;
        for _ in 0..SHARD_RETRIES {
            let candidates = ctx
                .store
                .available_keys(&order.sku, shard, KEYS_PER_QUERY)
                .await?;
            if candidates.is_empty() {
                break;
            }
            for key in &candidates {
                match ctx.store.allocate_key(order, slot, key).await? {
                    AllocateOutcome::Allocated | AllocateOutcome::SlotFilled => return Ok(true),
                    AllocateOutcome::NotPayable => return Ok(false),
                    AllocateOutcome::KeyGone => continue,
                }
            }
        }
    }
    // Stock was reserved at order time, so this means the inventory and the counters
    // disagree: fail loudly (the message retries, then the order shows delivery_failed).
    Err(Error::Corrupt(format!(
        "no card key left in stock for paid order {}",
        order.order_id
    )))
}

/// Marks the order delivered once every slot is filled.
pub async fn finish(ctx: &Context, order: &OrderRecord) -> Result<DeliveryOutcome> {
    if ctx.store.mark_delivered(order, order.status).await? {
        tracing::info!(order_id = %order.order_id, quantity = order.quantity, "order delivered");
        return Ok(DeliveryOutcome::Delivered);
    }
    settled_outcome(ctx, &order.order_id).await
}

async fn settled_outcome(ctx: &Context, order_id: &str) -> Result<DeliveryOutcome> {
    match ctx.store.get_order(order_id).await? {
        Some(current) if current.status == OrderStatus::Delivered => {
            Ok(DeliveryOutcome::AlreadyDelivered)
        }
        Some(current) if current.status.awaits_delivery() => Err(Error::Contention("delivery")),
        current => Ok(DeliveryOutcome::Skipped(current.map(|o| o.status))),
    }
}

/// Gives up on an order after the queue's last attempt: it shows `delivery_failed`;
/// the sweep sends it round again every few minutes, and an operator can too.
async fn give_up(ctx: &Context, order_id: &str) -> Result<()> {
    if let Some(order) = ctx.store.get_order(order_id).await?
        && order.status == OrderStatus::Paid
        && ctx.store.give_up_delivery(&order).await?
    {
        tracing::error!(
            order_id,
            "delivery failed on its last attempt; order marked delivery_failed"
        );
    }
    Ok(())
}

fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

async fn handle_message(ctx: &Context, message: &SqsMessage) -> Result<()> {
    let body = message.body.as_deref().unwrap_or_default();
    let parsed: DeliveryMessage = serde_json::from_str(body).map_err(Error::invalid_json)?;
    match deliver(ctx, &parsed.order_id).await {
        Ok(outcome) => {
            tracing::info!(order_id = %parsed.order_id, ?outcome, "delivery message handled");
            Ok(())
        }
        Err(err) => {
            if receive_count(message) >= ctx.config.delivery_max_attempts {
                give_up(ctx, &parsed.order_id).await?;
            }
            Err(err)
        }
    }
}

/// The SQS handler: failures are reported per message, so only they come back.
pub async fn handle_batch(ctx: &Context, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in &event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("delivery_message", message_id = %id);
        let _guard = span.enter();
        if let Err(err) = handle_message(ctx, message).await {
            tracing::error!(error = %err, "delivery message failed");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
