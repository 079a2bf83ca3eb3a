//! The delivery worker: hands each paid order to the fulfiller of its delivery type
//! (`app::fulfil`) and keeps what every type shares. A message for an order that is
//! delivered, or not waiting for delivery, is a no-op; failures are reported per message
//! (`ReportBatchItemFailures`); after the queue's last attempt the order becomes
//! `delivery_failed`, as it does at once when its fulfiller reports a definite failure;
//! a fulfiller that is done has the order marked delivered here, once.
//!
//! Time: an SQS batch runs within one invocation's timeout. The worker checks the
//! invocation's `Budget` before each message (and the card-key fulfiller before each
//! key): a message it has no time to start is reported for a retry untouched, one that
//! runs out of time mid-way stops between two keys and is reported too, and a message
//! on its last receive marks its order `delivery_failed` while there is still time to,
//! instead of being killed by the timeout with the order left `paid`.

use std::future::Future;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

use super::fulfil::{ByType, Fulfiller, Fulfilment};
use crate::adapters::queue::DeliveryMessage;
use crate::config::Context;
use crate::domain::notification::NotificationKind;
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::Clock;
use crate::store::{OrderRecord, OrderView, Store};

/// No message starts with less time left than this (a few keys, their retries and
/// marking the order).
pub const MESSAGE_RESERVE_MS: i64 = 3_000;
/// No card key (a query and a transaction, with its conflict retries) starts with less.
pub const KEY_RESERVE_MS: i64 = 1_500;
/// Marking an order `delivery_failed` (a read and a conditional write) needs this.
pub const GIVE_UP_RESERVE_MS: i64 = 500;

/// The time an invocation has left: its deadline read on a clock (in Lambda the
/// context's deadline on the system clock, which is what the runtime's deadline is
/// measured in; a fake clock in tests). App code never reads the machine's time.
#[derive(Clone)]
pub struct Budget {
    deadline: Option<(Timestamp, Arc<dyn Clock>)>,
}

impl Budget {
    /// No deadline (an operator's redelivery, tests).
    pub fn unlimited() -> Self {
        Budget { deadline: None }
    }

    /// Until `deadline` on `clock`.
    pub fn until(deadline: Timestamp, clock: Arc<dyn Clock>) -> Self {
        Budget {
            deadline: Some((deadline, clock)),
        }
    }

    /// Milliseconds left; `None` without a deadline.
    pub fn remaining_ms(&self) -> Option<i64> {
        self.deadline
            .as_ref()
            .map(|(deadline, clock)| deadline.0.saturating_sub(clock.now().0))
    }

    /// Whether at least `reserve_ms` are left.
    pub fn allows(&self, reserve_ms: i64) -> bool {
        self.remaining_ms().is_none_or(|left| left >= reserve_ms)
    }

    /// `Err(OutOfTime(before))` unless at least `reserve_ms` are left.
    pub fn check(&self, reserve_ms: i64, before: &'static str) -> Result<()> {
        if self.allows(reserve_ms) {
            Ok(())
        } else {
            Err(Error::OutOfTime(before))
        }
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget(remaining_ms: {:?})", self.remaining_ms())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    AlreadyDelivered,
    /// The fulfiller's work goes on elsewhere; the sweep sends the order round again.
    Pending,
    /// The fulfiller reported a definite failure: the order is `delivery_failed`.
    Failed(&'static str),
    /// A bundle's part failed for good and the others were delivered: the order is
    /// `partially_delivered`.
    PartiallyDelivered(&'static str),
    /// The order is not (or no longer) waiting for delivery; nothing to do.
    Skipped(Option<OrderStatus>),
}

/// Delivers one order, from wherever an earlier attempt stopped (no time budget).
pub async fn deliver(ctx: &Context, order_id: &str) -> Result<DeliveryOutcome> {
    Worker::new(ctx)
        .deliver(order_id, &Budget::unlimited())
        .await
}

/// The SQS handler without a time budget (tests, local tools); the Lambda function
/// uses `handle_batch_within`.
pub fn handle_batch(ctx: &Context, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> {
    handle_batch_within(ctx, event, Budget::unlimited())
}

/// The SQS handler: failures are reported per message, so only they come back; no
/// message or key starts once `budget` runs low.
pub fn handle_batch_within(
    ctx: &Context,
    event: SqsEvent,
    budget: Budget,
) -> impl Future<Output = SqsBatchResponse> {
    // Not an `async fn`: one level less in the deeply nested future the binary lays out.
    Worker::new(ctx).handle_batch(event, budget)
}

/// What the worker reads and writes of an order, whatever its delivery type: the
/// `Store`, or a fake in the tests below.
pub trait DeliveryOrders: Sync {
    /// The order with the delivery records earlier attempts wrote (one read).
    fn load(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderView>>> + Send;
    /// The order as it is now (strongly consistent).
    fn current(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderRecord>>> + Send;
    /// Marks it delivered from the status it was read in, at `now`; false if that
    /// changed.
    fn finish(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// `paid → delivery_failed` after the last attempt, at `now`; false if no longer
    /// `paid`.
    fn give_up(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// `→ delivery_failed` (or, for a bundle that keeps what it delivered,
    /// `partially_delivered`) as `failure` says, at `now`; false if its status changed.
    fn fail(
        &self,
        order: &OrderRecord,
        failure: &Failure,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// A definite failure, as the order records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The order's delivery cannot succeed: `reason` is its exception.
    Whole(&'static str),
    /// A bundle's part `sku` cannot: with `keep` the others were delivered.
    Part {
        sku: String,
        reason: &'static str,
        keep: bool,
    },
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Whole(reason) | Failure::Part { reason, .. } => reason,
        }
    }

    fn outcome(&self) -> DeliveryOutcome {
        match self {
            Failure::Part {
                reason, keep: true, ..
            } => DeliveryOutcome::PartiallyDelivered(reason),
            other => DeliveryOutcome::Failed(other.reason()),
        }
    }
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

    fn finish(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.mark_delivered(order, order.status, now)
    }

    fn give_up(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.give_up_delivery(order, now)
    }

    async fn fail(&self, order: &OrderRecord, failure: &Failure, now: Timestamp) -> Result<bool> {
        match failure {
            Failure::Whole(reason) => self.fail_delivery(order, reason, now).await,
            Failure::Part { sku, reason, keep } => {
                self.fail_part(order, (sku, reason), *keep, now).await
            }
        }
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
    async fn deliver(&self, order_id: &str, budget: &Budget) -> Result<DeliveryOutcome> {
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
        match self
            .fulfiller
            .fulfil(self.ctx, &order, &deliveries, budget)
            .await?
        {
            Fulfilment::Done => self.finish(&order).await,
            // Another worker finished (or an operator moved the order) meanwhile.
            Fulfilment::NotPayable => self.settled_outcome(order_id).await,
            Fulfilment::Pending => Ok(DeliveryOutcome::Pending),
            Fulfilment::Failed { reason } => self.fail(&order, Failure::Whole(reason)).await,
            Fulfilment::PartFailed { sku, reason, keep } => {
                self.fail(&order, Failure::Part { sku, reason, keep }).await
            }
        }
    }

    /// Marks the order delivered once its fulfiller is done (from the status the
    /// fulfiller left it in: a top-up moves it to `delivering` on the way).
    async fn finish(&self, order: &OrderRecord) -> Result<DeliveryOutcome> {
        let now = self.ctx.clock.now();
        if self.orders.finish(order, now).await? {
            tracing::info!(order_id = %order.order_id, quantity = order.quantity, "order delivered");
            return Ok(DeliveryOutcome::Delivered);
        }
        if let Some(moved) = self.moved_on_the_way(order).await?
            && self.orders.finish(&moved, now).await?
        {
            tracing::info!(order_id = %order.order_id, quantity = order.quantity, "order delivered");
            return Ok(DeliveryOutcome::Delivered);
        }
        self.settled_outcome(&order.order_id).await
    }

    /// The order as it is now, if it still awaits delivery in another status than it
    /// was read in (its fulfiller moved it).
    async fn moved_on_the_way(&self, order: &OrderRecord) -> Result<Option<OrderRecord>> {
        Ok(self
            .orders
            .current(&order.order_id)
            .await?
            .filter(|now| now.status.awaits_delivery() && now.status != order.status))
    }

    /// A definite failure: the order shows `delivery_failed` and why, at once; only an
    /// operator's redelivery sends it round again.
    async fn fail(&self, order: &OrderRecord, failure: Failure) -> Result<DeliveryOutcome> {
        let now = self.ctx.clock.now();
        let mut failed = self.orders.fail(order, &failure, now).await?;
        if !failed && let Some(moved) = self.moved_on_the_way(order).await? {
            failed = self.orders.fail(&moved, &failure, now).await?;
        }
        if failed {
            tracing::error!(
                order_id = %order.order_id,
                ?failure,
                "delivery failed for good; order needs a person"
            );
            return Ok(failure.outcome());
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
            && self.orders.give_up(&order, self.ctx.clock.now()).await?
        {
            tracing::error!(
                order_id,
                "delivery failed on its last attempt; order marked delivery_failed"
            );
        }
        Ok(())
    }

    /// Queues the buyer's delivery notice. Also for an order found delivered already:
    /// the message that delivered it may have died before queueing, and the notifier
    /// tells the buyer once however often it is queued. A failure here fails the
    /// delivery message, whose retry finds the order delivered and queues again.
    async fn queue_notification(&self, order_id: &str) -> Result<()> {
        match self.ctx.notify_queue() {
            Some(queue) => {
                queue
                    .enqueue_notification(NotificationKind::Delivery, order_id)
                    .await
            }
            None => Ok(()),
        }
    }

    async fn handle_message(&self, message: &SqsMessage, budget: &Budget) -> Result<()> {
        let body = message.body.as_deref().unwrap_or_default();
        let parsed: DeliveryMessage = serde_json::from_str(body).map_err(Error::invalid_json)?;
        // Every line about this message names its order (the span is the message's).
        tracing::Span::current().record("order_id", parsed.order_id.as_str());
        let last_receive = receive_count(message) >= self.ctx.config.delivery_max_attempts;
        let result = match budget.check(MESSAGE_RESERVE_MS, "the delivery message") {
            Ok(()) => self.deliver(&parsed.order_id, budget).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(outcome) => {
                tracing::info!(order_id = %parsed.order_id, ?outcome, "delivery message handled");
                if matches!(
                    outcome,
                    DeliveryOutcome::Delivered | DeliveryOutcome::AlreadyDelivered
                ) {
                    self.queue_notification(&parsed.order_id).await?;
                }
                Ok(())
            }
            Err(err) => {
                // On the last receive the order is marked while there is time to; with
                // none left the sweep finds it still `paid` later.
                if last_receive && budget.allows(GIVE_UP_RESERVE_MS) {
                    self.give_up(&parsed.order_id).await?;
                }
                Err(err)
            }
        }
    }

    async fn handle_batch(self, event: SqsEvent, budget: Budget) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let mut out_of_time = Vec::new();
        for message in &event.records {
            let id = message.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!("delivery_message", message_id = %id, order_id = tracing::field::Empty);
            let _guard = span.enter();
            if let Err(err) = self.handle_message(message, &budget).await {
                tracing::error!(error = %err, "delivery message failed");
                if let (Error::OutOfTime(_), Some(handle)) = (&err, &message.receipt_handle) {
                    out_of_time.push(handle.as_str());
                }
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        self.hand_back(&out_of_time, &budget).await;
        response
    }

    /// Messages this invocation had no time for are not the order's fault: they are
    /// handed back to be received again at once rather than after the visibility
    /// timeout (B1 in docs/reliability.md). Failing that, they come back after it, so a
    /// failure is only logged.
    async fn hand_back(&self, receipt_handles: &[&str], budget: &Budget) {
        if receipt_handles.is_empty() || !budget.allows(GIVE_UP_RESERVE_MS) {
            return;
        }
        let Ok(queue) = self.ctx.queue() else {
            return;
        };
        match queue.hand_back(receipt_handles).await {
            Ok(()) => tracing::info!(
                messages = receipt_handles.len(),
                "out of time: messages handed back to the queue"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "messages not handed back; they return after the visibility timeout")
            }
        }
    }
}

fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// The worker's shared part with a fake order store and a scripted fulfiller: no AWS.
/// The fulfiller stands for any delivery type; what it answers is what these test.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use aws_config::{BehaviorVersion, Region, SdkConfig};

    use super::*;
    use crate::app::orders::Delivered;
    use crate::config::{Config, ContextBuilder};
    use crate::domain::order::Cause;
    use crate::fakes::FakeClock;
    use crate::store::{CardKeySlot, DeliveryRecord};

    /// A context whose clients are never called (the fakes stand in for them), with time
    /// from `clock`.
    fn offline_context(clock: Arc<FakeClock>) -> Arc<Context> {
        let config =
            Config::from_lookup(|name| (name == "KAMI_TABLE").then(|| "t".to_owned())).unwrap();
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::from_static("us-east-1"))
            .build();
        ContextBuilder::new(config, sdk, None)
            .with_clock(clock)
            .build()
    }

    /// When the fixtures' orders were made.
    const MADE: Timestamp = FakeClock::DEFAULT;

    fn order(order_id: &str, sku: &str, status: OrderStatus) -> OrderRecord {
        OrderRecord {
            order_id: order_id.to_owned(),
            status,
            expires_at: MADE,
            ..crate::fakes::order_fixture(sku, 2, MADE)
        }
    }

    fn record(slot: u32) -> DeliveryRecord {
        DeliveryRecord::CardKey(CardKeySlot {
            slot,
            key_id: format!("key-{slot}"),
            batch_id: "batch".into(),
            sku: "sku".into(),
            sealed: Vec::new(),
        })
    }

    /// Orders in memory; every move is conditional on the status the worker read, and
    /// follows the domain's transition table, as the store's do.
    #[derive(Default)]
    struct FakeOrders {
        orders: Mutex<HashMap<String, (OrderRecord, Vec<DeliveryRecord>)>>,
        /// Another actor moves the order to this status right after the worker reads it.
        moved_after_read: Mutex<HashMap<String, OrderStatus>>,
    }

    impl FakeOrders {
        fn with(orders: impl IntoIterator<Item = (OrderRecord, Vec<DeliveryRecord>)>) -> Self {
            let orders = orders
                .into_iter()
                .map(|(order, done)| (order.order_id.clone(), (order, done)))
                .collect();
            FakeOrders {
                orders: Mutex::new(orders),
                ..FakeOrders::default()
            }
        }

        fn stored(&self, order_id: &str) -> OrderRecord {
            self.orders.lock().unwrap()[order_id].0.clone()
        }

        fn moves_after_read(&self, order_id: &str, to: OrderStatus) {
            self.moved_after_read
                .lock()
                .unwrap()
                .insert(order_id.to_owned(), to);
        }

        fn apply(
            &self,
            read: &OrderRecord,
            cause: Cause,
            exception: Option<&str>,
            now: Timestamp,
        ) -> Result<bool> {
            let mut orders = self.orders.lock().unwrap();
            let Some((stored, _)) = orders.get_mut(&read.order_id) else {
                return Ok(false);
            };
            if stored.status != read.status {
                return Ok(false);
            }
            stored.status = stored.status.next(cause)?;
            stored.updated_at = now.to_rfc3339();
            if cause == Cause::Deliver || exception.is_some() {
                stored.exception = exception.map(str::to_owned);
            }
            Ok(true)
        }
    }

    impl DeliveryOrders for FakeOrders {
        async fn load(&self, order_id: &str) -> Result<Option<OrderView>> {
            let mut orders = self.orders.lock().unwrap();
            let Some((order, done)) = orders.get_mut(order_id) else {
                return Ok(None);
            };
            let view = OrderView {
                attempts: Vec::new(),
                refunds: Vec::new(),
                order: order.clone(),
                events: Vec::new(),
                deliveries: done.clone(),
                payments: Vec::new(),
                supplier_log: Vec::new(),
                commissions: Vec::new(),
            };
            if let Some(to) = self.moved_after_read.lock().unwrap().remove(order_id) {
                order.status = to;
            }
            Ok(Some(view))
        }

        async fn current(&self, order_id: &str) -> Result<Option<OrderRecord>> {
            let orders = self.orders.lock().unwrap();
            Ok(orders.get(order_id).map(|(order, _)| order.clone()))
        }

        async fn finish(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
            self.apply(order, Cause::Deliver, None, now)
        }

        async fn give_up(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
            self.apply(order, Cause::DeliveryGaveUp, None, now)
        }

        async fn fail(
            &self,
            order: &OrderRecord,
            failure: &Failure,
            now: Timestamp,
        ) -> Result<bool> {
            let cause = match failure {
                Failure::Part { keep: true, .. } => Cause::PartFailed,
                _ => Cause::FulfilmentFailed,
            };
            self.apply(order, cause, Some(failure.reason()), now)
        }
    }

    /// A fulfiller scripted by the order's sku: `done`, `pending`, `failed`,
    /// `not_payable`, `keys` (one unit after another, each checking the budget as the
    /// card-key fulfiller does); anything else is a transient error. Remembers each call as
    /// (order id, records it was handed).
    #[derive(Default)]
    struct Scripted {
        calls: Mutex<Vec<(String, usize)>>,
        /// What each call (each key, for `keys`) costs on this clock, in milliseconds.
        cost: Option<(Arc<FakeClock>, i64)>,
    }

    impl Scripted {
        fn calls(&self) -> Vec<(String, usize)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Fulfiller for Scripted {
        async fn fulfil(
            &self,
            _ctx: &Context,
            order: &OrderRecord,
            done: &[DeliveryRecord],
            budget: &Budget,
        ) -> Result<Fulfilment> {
            self.calls
                .lock()
                .unwrap()
                .push((order.order_id.clone(), done.len()));
            let spend = || {
                if let Some((clock, ms)) = &self.cost {
                    clock.set(Timestamp(clock.now().0 + ms));
                }
            };
            if order.sku == "keys" {
                for _ in 0..order.quantity {
                    budget.check(KEY_RESERVE_MS, "the next card key")?;
                    spend();
                }
                return Ok(Fulfilment::Done);
            }
            spend();
            match order.sku.as_str() {
                "done" => Ok(Fulfilment::Done),
                "pending" => Ok(Fulfilment::Pending),
                "failed" => Ok(Fulfilment::Failed {
                    reason: "supplier_refused",
                }),
                "not_payable" => Ok(Fulfilment::NotPayable),
                _ => Err(Error::Aws {
                    service: "supplier",
                    message: "timed out".into(),
                }),
            }
        }

        async fn show(
            &self,
            _ctx: &Context,
            _order: &OrderRecord,
            _done: &[DeliveryRecord],
        ) -> Result<Vec<Delivered>> {
            Ok(Vec::new())
        }
    }

    fn message(message_id: &str, body: &str, receive_count: u32) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = Some(message_id.to_owned());
        message.body = Some(body.to_owned());
        message
            .attributes
            .insert("ApproximateReceiveCount".into(), receive_count.to_string());
        message
    }

    fn for_order(order_id: &str, receive_count: u32) -> SqsMessage {
        let body = format!(r#"{{"order_id":"{order_id}"}}"#);
        message(&format!("msg-{order_id}"), &body, receive_count)
    }

    /// The worker over fakes, with its orders.
    struct Fixture {
        ctx: Arc<Context>,
        clock: Arc<FakeClock>,
        orders: FakeOrders,
        fulfiller: Scripted,
    }

    impl Fixture {
        fn new(orders: impl IntoIterator<Item = (OrderRecord, Vec<DeliveryRecord>)>) -> Self {
            let clock = Arc::new(FakeClock::at(MADE));
            Fixture {
                ctx: offline_context(clock.clone()),
                clock,
                orders: FakeOrders::with(orders),
                fulfiller: Scripted::default(),
            }
        }

        /// Paid orders without records, each (id, sku: what the fulfiller answers).
        fn paid(orders: &[(&str, &str)]) -> Self {
            Fixture::new(
                orders
                    .iter()
                    .map(|(id, sku)| (order(id, sku, OrderStatus::Paid), Vec::new())),
            )
        }

        fn worker(&self) -> Worker<'_, FakeOrders, Scripted> {
            Worker {
                ctx: &self.ctx,
                orders: &self.orders,
                fulfiller: &self.fulfiller,
            }
        }

        async fn deliver(&self, order_id: &str) -> Result<DeliveryOutcome> {
            self.worker().deliver(order_id, &Budget::unlimited()).await
        }

        /// Runs one SQS batch; the ids of the messages reported failed.
        async fn batch(&self, messages: Vec<SqsMessage>) -> Vec<String> {
            self.batch_within(messages, Budget::unlimited()).await
        }

        /// Each fulfiller call (each key for `keys`) costs `ms` on the fixture's clock.
        fn costing(mut self, ms: i64) -> Self {
            self.fulfiller.cost = Some((self.clock.clone(), ms));
            self
        }

        /// A budget of `ms` from now on the fixture's clock.
        fn budget_ms(&self, ms: i64) -> Budget {
            Budget::until(Timestamp(self.clock.now().0 + ms), self.clock.clone())
        }

        /// Runs one SQS batch within `budget`; the ids of the messages reported failed.
        async fn batch_within(&self, messages: Vec<SqsMessage>, budget: Budget) -> Vec<String> {
            let mut event = SqsEvent::default();
            event.records = messages;
            let response = self.worker().handle_batch(event, budget).await;
            response
                .batch_item_failures
                .into_iter()
                .map(|failure| failure.item_identifier)
                .collect()
        }

        fn status(&self, order_id: &str) -> (OrderStatus, Option<String>) {
            let stored = self.orders.stored(order_id);
            (stored.status, stored.exception)
        }

        fn last_attempt(&self) -> u32 {
            self.ctx.config.delivery_max_attempts
        }
    }

    #[tokio::test]
    async fn the_fulfiller_is_handed_the_order_with_what_earlier_attempts_recorded() {
        let fixture = Fixture::new([
            (order("A", "done", OrderStatus::Paid), vec![record(0)]),
            (order("B", "done", OrderStatus::DeliveryFailed), Vec::new()),
        ]);
        let failed = fixture
            .batch(vec![for_order("A", 1), for_order("B", 1)])
            .await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            fixture.fulfiller.calls(),
            [("A".into(), 1), ("B".into(), 0)]
        );
        assert_eq!(fixture.status("A"), (OrderStatus::Delivered, None));
        assert_eq!(fixture.status("B"), (OrderStatus::Delivered, None));
    }

    #[tokio::test]
    async fn a_delivered_order_is_delivered_once_and_then_left_alone() {
        let fixture = Fixture::paid(&[("A", "done")]);
        assert_eq!(
            fixture.deliver("A").await.unwrap(),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            fixture.deliver("A").await.unwrap(),
            DeliveryOutcome::AlreadyDelivered
        );
        assert_eq!(
            fixture.fulfiller.calls().len(),
            1,
            "the second message is a no-op"
        );
    }

    #[tokio::test]
    async fn orders_not_waiting_for_delivery_never_reach_the_fulfiller() {
        // Every status but those awaiting delivery and `delivered`: a message arriving
        // after an operator resolved, refunded or a buyer cancelled the order included
        // (a sweep's re-queue racing the operator).
        let waiting_for_nothing: Vec<OrderStatus> = crate::domain::order::ALL_STATUSES
            .into_iter()
            .filter(|s| !s.awaits_delivery() && *s != OrderStatus::Delivered)
            .collect();
        for settled in [
            OrderStatus::Resolved,
            OrderStatus::Refunded,
            OrderStatus::PartiallyRefunded,
            OrderStatus::Cancelled,
        ] {
            assert!(waiting_for_nothing.contains(&settled), "{settled}");
        }
        let fixture = Fixture::new(
            waiting_for_nothing
                .iter()
                .map(|status| (order(status.as_str(), "done", *status), Vec::new())),
        );
        for status in waiting_for_nothing {
            assert_eq!(
                fixture.deliver(status.as_str()).await.unwrap(),
                DeliveryOutcome::Skipped(Some(status)),
                "{status}"
            );
        }
        assert_eq!(
            fixture.deliver("unknown").await.unwrap(),
            DeliveryOutcome::Skipped(None)
        );
        assert!(fixture.fulfiller.calls().is_empty());
    }

    #[tokio::test]
    async fn pending_leaves_the_order_for_the_sweep_and_acknowledges_the_message() {
        let fixture = Fixture::paid(&[("A", "pending")]);
        let failed = fixture
            .batch(vec![for_order("A", fixture.last_attempt())])
            .await;
        assert!(failed.is_empty(), "pending is not a failure: {failed:?}");
        assert_eq!(fixture.status("A"), (OrderStatus::Paid, None));
    }

    #[tokio::test]
    async fn a_definite_failure_takes_the_exception_path_at_once() {
        let fixture = Fixture::paid(&[("A", "failed")]);
        let failed = fixture.batch(vec![for_order("A", 1)]).await;
        assert!(failed.is_empty(), "nothing to retry: {failed:?}");
        let failed_with_reason = (OrderStatus::DeliveryFailed, Some("supplier_refused".into()));
        assert_eq!(fixture.status("A"), failed_with_reason);

        // An operator's redelivery that fails again says so again.
        assert_eq!(
            fixture.deliver("A").await.unwrap(),
            DeliveryOutcome::Failed("supplier_refused")
        );
        assert_eq!(fixture.status("A"), failed_with_reason);
    }

    #[tokio::test]
    async fn not_payable_settles_on_what_became_of_the_order() {
        let fixture = Fixture::paid(&[("A", "not_payable"), ("B", "not_payable")]);
        // Another worker delivers A while this one works on it; B stays paid.
        fixture.orders.moves_after_read("A", OrderStatus::Delivered);
        assert_eq!(
            fixture.deliver("A").await.unwrap(),
            DeliveryOutcome::AlreadyDelivered
        );
        assert!(matches!(
            fixture.deliver("B").await,
            Err(Error::Contention("delivery"))
        ));
    }

    #[tokio::test]
    async fn errors_are_retried_and_given_up_after_the_last_attempt() {
        let fixture = Fixture::paid(&[("A", "error")]);
        let failed = fixture.batch(vec![for_order("A", 1)]).await;
        assert_eq!(failed, ["msg-A"], "reported for a retry");
        assert_eq!(fixture.status("A"), (OrderStatus::Paid, None));

        let failed = fixture
            .batch(vec![for_order("A", fixture.last_attempt())])
            .await;
        assert_eq!(failed, ["msg-A"], "the last failure goes to the DLQ");
        assert_eq!(fixture.status("A"), (OrderStatus::DeliveryFailed, None));
    }

    #[tokio::test]
    async fn a_batch_reports_only_its_failed_messages() {
        let fixture = Fixture::paid(&[
            ("done", "done"),
            ("pending", "pending"),
            ("failed", "failed"),
            ("error", "error"),
        ]);
        let failed = fixture
            .batch(vec![
                for_order("done", 1),
                message("poison", "not json", 1),
                for_order("pending", 1),
                for_order("error", 1),
                for_order("failed", 1),
            ])
            .await;
        assert_eq!(failed, ["poison", "msg-error"]);
        assert_eq!(fixture.status("done").0, OrderStatus::Delivered);
        assert_eq!(fixture.status("pending").0, OrderStatus::Paid);
        assert_eq!(fixture.status("failed").0, OrderStatus::DeliveryFailed);
    }

    #[tokio::test]
    async fn every_move_is_stamped_by_the_context_clock() {
        let fixture = Fixture::paid(&[("done", "done"), ("failed", "failed"), ("error", "error")]);
        // Years away from when the orders were made (and from the machine's time).
        let later = MADE.plus_seconds(20 * 365 * 86_400);
        fixture.clock.set(later);
        let failed = fixture
            .batch(vec![
                for_order("done", 1),
                for_order("failed", 1),
                for_order("error", fixture.last_attempt()),
            ])
            .await;
        assert_eq!(failed, ["msg-error"]);
        for (order_id, status) in [
            ("done", OrderStatus::Delivered),
            ("failed", OrderStatus::DeliveryFailed),
            ("error", OrderStatus::DeliveryFailed),
        ] {
            let stored = fixture.orders.stored(order_id);
            assert_eq!(stored.status, status, "{order_id}");
            assert_eq!(stored.updated_at, later.to_rfc3339(), "{order_id}");
        }
    }

    #[tokio::test]
    async fn messages_left_without_time_are_reported_unstarted() {
        let fixture = Fixture::paid(&[("A", "done"), ("B", "done"), ("C", "done"), ("D", "done")])
            .costing(4_000);
        // 10 s: A (4 s) and B (4 s) run; with 2 s left, C and D do not start.
        let budget = fixture.budget_ms(10_000);
        let failed = fixture
            .batch_within(
                vec![
                    for_order("A", 1),
                    for_order("B", 1),
                    for_order("C", 1),
                    for_order("D", 1),
                ],
                budget,
            )
            .await;
        assert_eq!(failed, ["msg-C", "msg-D"]);
        let called: Vec<String> = fixture.fulfiller.calls().into_iter().map(|c| c.0).collect();
        assert_eq!(called, ["A", "B"], "C and D never reach the fulfiller");
        assert_eq!(fixture.status("B").0, OrderStatus::Delivered);
        assert_eq!(fixture.status("C"), (OrderStatus::Paid, None));
        assert_eq!(fixture.status("D"), (OrderStatus::Paid, None));
    }

    #[tokio::test]
    async fn a_message_stops_between_keys_when_time_runs_low() {
        // Two keys of 4 s each with 5 s left: the first runs, the second does not start.
        let fixture = Fixture::paid(&[("A", "keys")]).costing(4_000);
        let budget = fixture.budget_ms(5_000);
        let failed = fixture.batch_within(vec![for_order("A", 1)], budget).await;
        assert_eq!(failed, ["msg-A"], "reported for a retry");
        assert_eq!(fixture.status("A"), (OrderStatus::Paid, None));
        assert_eq!(fixture.clock.now(), MADE.plus_seconds(4));
    }

    #[tokio::test]
    async fn on_its_last_receive_an_order_out_of_time_is_marked_delivery_failed() {
        let fixture = Fixture::paid(&[("A", "keys"), ("B", "done"), ("C", "done")]).costing(4_000);
        let last = fixture.last_attempt();
        // A runs out of time after its first key, B gets no time to start: both are on
        // their last receive and marked before the timeout. C, not on its last, waits.
        let budget = fixture.budget_ms(5_000);
        let failed = fixture
            .batch_within(
                vec![
                    for_order("A", last),
                    for_order("B", last),
                    for_order("C", 1),
                ],
                budget,
            )
            .await;
        assert_eq!(failed, ["msg-A", "msg-B", "msg-C"]);
        assert_eq!(fixture.status("A"), (OrderStatus::DeliveryFailed, None));
        assert_eq!(fixture.status("B"), (OrderStatus::DeliveryFailed, None));
        assert_eq!(fixture.status("C"), (OrderStatus::Paid, None));
    }

    #[tokio::test]
    async fn with_no_time_even_to_mark_it_the_order_is_left_for_the_sweep() {
        let fixture = Fixture::paid(&[("A", "done")]);
        let budget = fixture.budget_ms(GIVE_UP_RESERVE_MS - 1);
        let failed = fixture
            .batch_within(vec![for_order("A", fixture.last_attempt())], budget)
            .await;
        assert_eq!(failed, ["msg-A"]);
        assert_eq!(fixture.status("A"), (OrderStatus::Paid, None));
        assert!(fixture.fulfiller.calls().is_empty());
    }
}
