//! The delivery worker: hands each paid order to the fulfiller of its delivery type
//! (`app::fulfil`) and keeps what every type shares. A message for an order that is
//! delivered, or not waiting for delivery, is a no-op; failures are reported per message
//! (`ReportBatchItemFailures`); after the queue's last attempt the order becomes
//! `delivery_failed`, as it does at once when its fulfiller reports a definite failure;
//! a fulfiller that is done has the order marked delivered here, once.

use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

use super::fulfil::{ByType, Fulfiller, Fulfilment};
use crate::adapters::queue::DeliveryMessage;
use crate::config::Context;
use crate::domain::order::OrderStatus;
use crate::error::{Error, Result};
use crate::store::{OrderRecord, OrderView, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    AlreadyDelivered,
    /// The fulfiller's work goes on elsewhere; the sweep sends the order round again.
    Pending,
    /// The fulfiller reported a definite failure: the order is `delivery_failed`.
    Failed(&'static str),
    /// The order is not (or no longer) waiting for delivery; nothing to do.
    Skipped(Option<OrderStatus>),
}

/// Delivers one order, from wherever an earlier attempt stopped.
pub async fn deliver(ctx: &Context, order_id: &str) -> Result<DeliveryOutcome> {
    Worker::new(ctx).deliver(order_id).await
}

/// The SQS handler: failures are reported per message, so only they come back.
pub fn handle_batch(ctx: &Context, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> {
    // Not an `async fn`: one level less in the deeply nested future the binary lays out.
    Worker::new(ctx).handle_batch(event)
}

/// What the worker reads and writes of an order, whatever its delivery type: the
/// `Store`, or a fake in the tests below.
pub trait DeliveryOrders: Sync {
    /// The order with the delivery records earlier attempts wrote (one read).
    fn load(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderView>>> + Send;
    /// The order as it is now (strongly consistent).
    fn current(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderRecord>>> + Send;
    /// Marks it delivered from the status it was read in; false if that changed.
    fn finish(&self, order: &OrderRecord) -> impl Future<Output = Result<bool>> + Send;
    /// `paid → delivery_failed` after the last attempt; false if no longer `paid`.
    fn give_up(&self, order: &OrderRecord) -> impl Future<Output = Result<bool>> + Send;
    /// `→ delivery_failed` with `reason` as its exception; false if its status changed.
    fn fail(
        &self,
        order: &OrderRecord,
        reason: &'static str,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Each method is the store's own future, not wrapped in another.
impl DeliveryOrders for Store {
    fn load(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderView>>> + Send {
        // One query reads the order and every record an earlier attempt wrote.
        self.get_order_view(order_id)
    }

    fn current(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderRecord>>> + Send {
        self.get_order(order_id)
    }

    fn finish(&self, order: &OrderRecord) -> impl Future<Output = Result<bool>> + Send {
        self.mark_delivered(order, order.status)
    }

    fn give_up(&self, order: &OrderRecord) -> impl Future<Output = Result<bool>> + Send {
        self.give_up_delivery(order)
    }

    fn fail(
        &self,
        order: &OrderRecord,
        reason: &'static str,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.fail_delivery(order, reason)
    }
}

/// The shared part of delivery, over where orders are kept (`O`) and which fulfiller
/// serves them (`F`: the registry in Lambda).
struct Worker<'a, O, F> {
    ctx: &'a Context,
    orders: &'a O,
    fulfiller: &'a F,
}

impl<'a> Worker<'a, Store, ByType> {
    fn new(ctx: &'a Context) -> Self {
        Worker {
            ctx,
            orders: &ctx.store,
            fulfiller: &ByType,
        }
    }
}

impl<O: DeliveryOrders, F: Fulfiller + Sync> Worker<'_, O, F> {
    async fn deliver(&self, order_id: &str) -> Result<DeliveryOutcome> {
        let Some(OrderView {
            order, deliveries, ..
        }) = self.orders.load(order_id).await?
        else {
            return Ok(DeliveryOutcome::Skipped(None));
        };
        if order.status == OrderStatus::Delivered {
            return Ok(DeliveryOutcome::AlreadyDelivered);
        }
        if !order.status.awaits_delivery() {
            return Ok(DeliveryOutcome::Skipped(Some(order.status)));
        }
        match self.fulfiller.fulfil(self.ctx, &order, &deliveries).await? {
            Fulfilment::Done => self.finish(&order).await,
            // Another worker finished (or an operator moved the order) meanwhile.
            Fulfilment::NotPayable => self.settled_outcome(order_id).await,
            Fulfilment::Pending => Ok(DeliveryOutcome::Pending),
            Fulfilment::Failed { reason } => self.fail(&order, reason).await,
        }
    }

    /// Marks the order delivered once its fulfiller is done.
    async fn finish(&self, order: &OrderRecord) -> Result<DeliveryOutcome> {
        if self.orders.finish(order).await? {
            tracing::info!(order_id = %order.order_id, quantity = order.quantity, "order delivered");
            return Ok(DeliveryOutcome::Delivered);
        }
        self.settled_outcome(&order.order_id).await
    }

    /// A definite failure: the order shows `delivery_failed` and why, at once; only an
    /// operator's redelivery sends it round again.
    async fn fail(&self, order: &OrderRecord, reason: &'static str) -> Result<DeliveryOutcome> {
        if self.orders.fail(order, reason).await? {
            tracing::error!(
                order_id = %order.order_id,
                reason,
                "delivery failed for good; order marked delivery_failed"
            );
            return Ok(DeliveryOutcome::Failed(reason));
        }
        self.settled_outcome(&order.order_id).await
    }

    async fn settled_outcome(&self, order_id: &str) -> Result<DeliveryOutcome> {
        match self.orders.current(order_id).await? {
            Some(current) if current.status == OrderStatus::Delivered => {
                Ok(DeliveryOutcome::AlreadyDelivered)
            }
            Some(current) if current.status.awaits_delivery() => Err(Error::Contention("delivery")),
            current => Ok(DeliveryOutcome::Skipped(current.map(|o| o.status))),
        }
    }

    /// Gives up on an order after the queue's last attempt: it shows `delivery_failed`;
    /// the sweep sends it round again every few minutes, and an operator can too.
    async fn give_up(&self, order_id: &str) -> Result<()> {
        if let Some(order) = self.orders.current(order_id).await?
            && order.status == OrderStatus::Paid
            && self.orders.give_up(&order).await?
        {
            tracing::error!(
                order_id,
                "delivery failed on its last attempt; order marked delivery_failed"
            );
        }
        Ok(())
    }

    async fn handle_message(&self, message: &SqsMessage) -> Result<()> {
        let body = message.body.as_deref().unwrap_or_default();
        let parsed: DeliveryMessage = serde_json::from_str(body).map_err(Error::invalid_json)?;
        match self.deliver(&parsed.order_id).await {
            Ok(outcome) => {
                tracing::info!(order_id = %parsed.order_id, ?outcome, "delivery message handled");
                Ok(())
            }
            Err(err) => {
                if receive_count(message) >= self.ctx.config.delivery_max_attempts {
                    self.give_up(&parsed.order_id).await?;
                }
                Err(err)
            }
        }
    }

    async fn handle_batch(self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for message in &event.records {
            let id = message.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!("delivery_message", message_id = %id);
            let _guard = span.enter();
            if let Err(err) = self.handle_message(message).await {
                tracing::error!(error = %err, "delivery message failed");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}

fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}
