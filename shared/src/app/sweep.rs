//! The scheduled sweep: re-queue paid orders that have waited too long for delivery
//! (including ones whose delivery gave up, so a passing outage heals by itself), then
//! expire unpaid orders once `expires_at` and the grace after it
//! (`EXPIRY_GRACE_SECONDS`) have passed, giving their stock back.
//!
//! After a big sale the due work can outgrow one invocation, so a run:
//! - takes the sweep's lease first: a second run while it works (the next schedule, a
//!   schedule delivered twice, an operator's manual run) finds it held and does nothing;
//! - handles paid orders before unpaid ones: a buyer who paid is waiting, an unpaid
//!   order's stock can wait a run;
//! - reads due ids a page at a time (the shards of a queue in turn), handles each page
//!   before it reads the next, `IN_FLIGHT` orders at once;
//! - stops starting pages and orders when its `Budget` runs low, reports `more_due`,
//!   and leaves the rest in the index for the next scheduled run.
//!
//! Every write is still conditional, so even overlapping runs would do each thing once;
//! one order's failure is logged and counted and does not stop the others.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::{StreamExt, stream};
use serde::Serialize;

use super::delivery::Budget;
use crate::config::Context;
use crate::domain::order::{OrderStatus, payment_overdue};
use crate::domain::time::{Timestamp, new_id};
use crate::error::Result;
use crate::store::ExceptionFilter;
use crate::store::{
    DueCursor, DuePage, DueQueue, INDEX_SHARDS, OrderRecord, SWEEP_LEASE_MAX_MS, SweepLease,
};

/// Due ids read per query.
pub const PAGE_SIZE: i32 = 100;
/// Orders of a page handled at once. Expiries of one product's orders update its
/// stock counters (8 of them), so many more at once would mostly conflict.
pub const IN_FLIGHT: usize = 8;
/// No page starts with less time left than this (a query, then its orders).
pub const PAGE_RESERVE_MS: i64 = 5_000;
/// No order starts with less (a read, a transaction with its conflict retries or a
/// message and an update).
pub const ORDER_RESERVE_MS: i64 = 2_000;
/// The lease outlives the invocation by this much, for clocks a little apart.
pub const LEASE_SLACK_MS: i64 = 2_000;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u32,
    pub requeued: u32,
    pub failed: u32,
    /// The run stopped for time before it had gone through every due order: the next
    /// run goes on.
    pub more_due: bool,
    /// Another run held the sweep's lease: this one did nothing.
    pub lease_held: bool,
    /// Subscriptions' renewal orders made and noticed (docs/subscriptions.md).
    pub renewals: super::subscriptions::RenewalReport,
    /// Expiry reminders queued (docs/notifications.md).
    pub reminders: super::reminders::ReminderReport,
}

/// Sweeps as of `now` without a time limit (tests, tools).
pub async fn sweep(ctx: &Context, now: Timestamp) -> Result<SweepReport> {
    sweep_within(ctx, now, &Budget::unlimited()).await
}

/// Sweeps as of `now`, starting no page or order once `budget` runs low (the function
/// passes its invocation's deadline).
pub async fn sweep_within(ctx: &Context, now: Timestamp, budget: &Budget) -> Result<SweepReport> {
    // Stock is released only a grace after `expires_at`: until then a late webhook for
    // a payment made in time finds the order still pending, a normal payment.
    let due_by = now.plus_seconds(-ctx.config.expiry_grace_seconds);
    let report = Run {
        orders: &Live(ctx),
        now,
        due_by,
        budget,
        page_size: PAGE_SIZE,
    }
    .sweep()
    .await;
    report_oldest_exception(ctx, now).await;
    let mut report = report?;
    // Renewals after the orders (conditional writes: overlapping runs make each renewal
    // order once), only by the run that holds the lease.
    if !report.lease_held && budget.allows(PAGE_RESERVE_MS) {
        report.renewals = super::subscriptions::renew_due(ctx, now).await?;
        report.reminders = super::reminders::remind_due(ctx, now).await?;
    }
    Ok(report)
}

/// The age of the exception queue's oldest order, once a run (one Query on its index):
/// the alarm on it fires when an order waits for a person too long, and when the sweep
/// stops reporting it.
async fn report_oldest_exception(ctx: &Context, now: Timestamp) {
    let oldest = ExceptionFilter {
        limit: 1,
        ..ExceptionFilter::default()
    };
    match ctx.store.exceptions(&oldest, None, now).await {
        Ok((entries, _)) => {
            crate::metrics::oldest_exception_age(entries.first().map_or(0, |e| e.age_seconds));
        }
        Err(err) => {
            tracing::error!(error = %err, "could not read the exception queue's oldest order")
        }
    }
}

/// Until when a run holds the lease: as long as its invocation can last (the budget's
/// remaining time, or the longest lease without one), so a run killed before it
/// released the lease holds up the next runs only until then.
fn lease_until(now: Timestamp, budget: &Budget) -> Timestamp {
    let held_for = budget
        .remaining_ms()
        .map_or(SWEEP_LEASE_MAX_MS, |left| {
            left.saturating_add(LEASE_SLACK_MS)
        })
        .clamp(0, SWEEP_LEASE_MAX_MS);
    Timestamp(now.0.saturating_add(held_for))
}

/// What the sweep reads and writes: the table and the delivery queue (`Live`), or a
/// fake in the tests below.
trait SweepOrders: Sync {
    /// Where the next page of a shard starts.
    type Cursor: Send;
    fn take_lease(
        &self,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<SweepLease>> + Send;
    /// False if the lease was no longer `holder`'s.
    fn release_lease(&self, holder: &str) -> impl Future<Output = Result<bool>> + Send;
    fn due(
        &self,
        queue: DueQueue,
        shard: u32,
        due_by: Timestamp,
        after: Option<Self::Cursor>,
        limit: i32,
    ) -> impl Future<Output = Result<DuePage<Self::Cursor>>> + Send;
    /// The order as it is now (strongly consistent).
    fn order(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderRecord>>> + Send;
    /// Expires a pending order, giving its stock back; false if it was no longer due.
    fn expire(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Sends the order to the delivery queue.
    fn requeue(&self, order_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Moves a stuck order's next re-queue time on, while it is still `status`.
    fn snooze(
        &self,
        order_id: &str,
        status: OrderStatus,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The table and queue of a function's context.
struct Live<'a>(&'a Context);

impl SweepOrders for Live<'_> {
    type Cursor = DueCursor;

    fn take_lease(
        &self,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<SweepLease>> + Send {
        self.0.store.take_sweep_lease(holder, now, until)
    }

    fn release_lease(&self, holder: &str) -> impl Future<Output = Result<bool>> + Send {
        self.0.store.release_sweep_lease(holder)
    }

    fn due(
        &self,
        queue: DueQueue,
        shard: u32,
        due_by: Timestamp,
        after: Option<DueCursor>,
        limit: i32,
    ) -> impl Future<Output = Result<DuePage>> + Send {
        self.0.store.due_orders(queue, shard, due_by, after, limit)
    }

    fn order(&self, order_id: &str) -> impl Future<Output = Result<Option<OrderRecord>>> + Send {
        self.0.store.get_order(order_id)
    }

    fn expire(
        &self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.0.store.expire_order(order, now)
    }

    fn requeue(&self, order_id: &str) -> impl Future<Output = Result<()>> + Send {
        let queue = self.0.queue();
        async move { queue?.enqueue_delivery(order_id).await }
    }

    fn snooze(
        &self,
        order_id: &str,
        status: OrderStatus,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send {
        self.0.store.snooze_stuck_order(order_id, status, now)
    }
}

/// One run of the sweep.
struct Run<'a, O> {
    orders: &'a O,
    now: Timestamp,
    /// Pending orders expire once their `expires_at` is at or before this.
    due_by: Timestamp,
    budget: &'a Budget,
    page_size: i32,
}

/// What became of one due order.
enum Handled {
    /// Expired or re-queued (true), or no longer due (false).
    Done(bool),
    Failed,
    /// Not started: too little time was left.
    NotStarted,
}

impl<O: SweepOrders> Run<'_, O> {
    async fn sweep(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        if !self.budget.allows(PAGE_RESERVE_MS) {
            report.more_due = true;
            tracing::warn!(budget = ?self.budget, "sweep skipped: too little time left to start");
            return Ok(report);
        }
        let holder = new_id();
        let until = lease_until(self.now, self.budget);
        if let SweepLease::Held { holder, until } =
            self.orders.take_lease(&holder, self.now, until).await?
        {
            tracing::info!(
                holder,
                lease_until = %until.to_rfc3339(),
                "sweep skipped: another run holds the sweep lease"
            );
            report.lease_held = true;
            return Ok(report);
        }
        let worked = self.work(&mut report).await;
        match self.orders.release_lease(&holder).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                holder,
                "sweep lease lapsed before this run released it; another run may have taken it"
            ),
            Err(err) => tracing::warn!(
                holder,
                lease_until = %until.to_rfc3339(),
                error = %err,
                "could not release the sweep lease; it lapses by itself"
            ),
        }
        worked?;
        if report.more_due {
            tracing::warn!(
                expired = report.expired,
                requeued = report.requeued,
                failed = report.failed,
                "sweep ran out of time with due orders left; the next run goes on"
            );
        } else {
            tracing::info!(
                expired = report.expired,
                requeued = report.requeued,
                failed = report.failed,
                "sweep done"
            );
        }
        Ok(report)
    }

    async fn work(&self, report: &mut SweepReport) -> Result<()> {
        // Paid orders first: their buyers are waiting for what they paid for.
        let finished = self.drain(DueQueue::Paid, report).await?
            && self.drain(DueQueue::Pending, report).await?;
        report.more_due = !finished;
        Ok(())
    }

    /// Goes through the due orders of one queue, page by page, taking its shards in
    /// turn (so no shard's backlog holds up the others'); false if time ran out first.
    async fn drain(&self, queue: DueQueue, report: &mut SweepReport) -> Result<bool> {
        let due_by = match queue {
            DueQueue::Paid => self.now,
            DueQueue::Pending => self.due_by,
        };
        let mut shards: VecDeque<(u32, Option<O::Cursor>)> =
            (0..INDEX_SHARDS).map(|shard| (shard, None)).collect();
        while let Some((shard, after)) = shards.pop_front() {
            if !self.budget.allows(PAGE_RESERVE_MS) {
                return Ok(false);
            }
            let DuePage { order_ids, next } = self
                .orders
                .due(queue, shard, due_by, after, self.page_size)
                .await?;
            // Owned ids: a closure over borrowed ones would make the future not `Send`.
            let handled: Vec<Handled> = stream::iter(order_ids)
                .map(|order_id| async move { self.handle(queue, &order_id).await })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            let mut all_started = true;
            for outcome in handled {
                match outcome {
                    Handled::Done(true) if queue == DueQueue::Paid => report.requeued += 1,
                    Handled::Done(true) => report.expired += 1,
                    Handled::Done(false) => {}
                    Handled::Failed => report.failed += 1,
                    Handled::NotStarted => all_started = false,
                }
            }
            if !all_started {
                return Ok(false);
            }
            if let Some(next) = next {
                shards.push_back((shard, Some(next)));
            }
        }
        Ok(true)
    }

    async fn handle(&self, queue: DueQueue, order_id: &str) -> Handled {
        if !self.budget.allows(ORDER_RESERVE_MS) {
            return Handled::NotStarted;
        }
        let result = match queue {
            DueQueue::Paid => self.requeue(order_id).await,
            DueQueue::Pending => self.expire(order_id).await,
        };
        match result {
            Ok(done) => Handled::Done(done),
            Err(err) => {
                match queue {
                    DueQueue::Paid => {
                        tracing::error!(order_id, error = %err, "could not re-queue delivery; next sweep retries")
                    }
                    DueQueue::Pending => {
                        tracing::error!(order_id, error = %err, "could not expire order; next sweep retries")
                    }
                }
                Handled::Failed
            }
        }
    }

    /// Expires the order if it is unpaid and its `expires_at` is at or before `due_by`.
    async fn expire(&self, order_id: &str) -> Result<bool> {
        let Some(order) = self.orders.order(order_id).await? else {
            return Ok(false);
        };
        Ok(payment_overdue(order.status, order.expires_at, self.due_by)
            && self.orders.expire(&order, self.now).await?)
    }

    async fn requeue(&self, order_id: &str) -> Result<bool> {
        let Some(order) = self.orders.order(order_id).await? else {
            return Ok(false);
        };
        if !order.status.awaits_delivery() {
            return Ok(false);
        }
        self.orders.requeue(order_id).await?;
        self.orders.snooze(order_id, order.status, self.now).await?;
        tracing::warn!(order_id, status = %order.status, "paid order still undelivered; delivery re-queued");
        Ok(true)
    }
}

/// The sweep's rules on a fake table and queue: no AWS.
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::Error;
    use crate::fakes::{FakeClock, TickingClock};
    use crate::store::STUCK_AFTER_SECONDS;

    const NOW: Timestamp = FakeClock::DEFAULT;

    #[derive(Default)]
    struct Table {
        orders: HashMap<String, OrderRecord>,
        /// The sparse index: (queue, shard, due in Unix seconds, order id).
        index: Vec<(DueQueue, u32, i64, String)>,
        lease: Option<(String, Timestamp)>,
        /// Every write the sweep made, in order: ("requeue" | "expire", order id).
        writes: Vec<(&'static str, String)>,
        /// Orders whose expiry fails (a transient error).
        failing: HashSet<String>,
        queries_fail: bool,
    }

    /// The table and queue in memory, with the store's conditions.
    #[derive(Default)]
    struct Fake(Mutex<Table>);

    impl Fake {
        fn table(&self) -> std::sync::MutexGuard<'_, Table> {
            self.0.lock().unwrap()
        }

        /// `count` unpaid orders due (an hour past `expires_at`), spread over the shards.
        fn with_pending(count: usize) -> Self {
            let fake = Fake::default();
            for i in 0..count {
                fake.add(
                    &format!("pending-{i:05}"),
                    OrderStatus::PendingPayment,
                    i as u32 % INDEX_SHARDS,
                );
            }
            fake
        }

        fn add(&self, order_id: &str, status: OrderStatus, shard: u32) {
            let expires_at = NOW.plus_seconds(-3_600);
            let (queue, due) = if status == OrderStatus::PendingPayment {
                (DueQueue::Pending, expires_at)
            } else {
                (DueQueue::Paid, NOW.plus_seconds(-60))
            };
            let mut table = self.table();
            table.orders.insert(
                order_id.to_owned(),
                OrderRecord {
                    order_id: order_id.to_owned(),
                    status,
                    expires_at,
                    ..crate::fakes::order_fixture("sku", 1, NOW)
                },
            );
            table
                .index
                .push((queue, shard, due.unix_seconds(), order_id.to_owned()));
        }

        fn writes(&self) -> Vec<(&'static str, String)> {
            self.table().writes.clone()
        }

        /// How many times each order was expired.
        fn expiries(&self) -> HashMap<String, usize> {
            let mut counts = HashMap::new();
            for (write, order_id) in self.writes() {
                if write == "expire" {
                    *counts.entry(order_id).or_default() += 1;
                }
            }
            counts
        }

        fn status(&self, order_id: &str) -> OrderStatus {
            self.table().orders[order_id].status
        }
    }

    impl SweepOrders for Fake {
        /// The (due, id) of the last entry of the page before.
        type Cursor = (i64, String);

        async fn take_lease(
            &self,
            holder: &str,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<SweepLease> {
            let mut table = self.table();
            if let Some((other, other_until)) = &table.lease
                && *other_until >= now
                && other_until.0 <= now.0 + SWEEP_LEASE_MAX_MS
            {
                return Ok(SweepLease::Held {
                    holder: other.clone(),
                    until: *other_until,
                });
            }
            table.lease = Some((holder.to_owned(), until));
            Ok(SweepLease::Taken)
        }

        async fn release_lease(&self, holder: &str) -> Result<bool> {
            let mut table = self.table();
            if table.lease.as_ref().is_some_and(|(h, _)| h == holder) {
                table.lease = None;
                return Ok(true);
            }
            Ok(false)
        }

        async fn due(
            &self,
            queue: DueQueue,
            shard: u32,
            due_by: Timestamp,
            after: Option<(i64, String)>,
            limit: i32,
        ) -> Result<DuePage<(i64, String)>> {
            let table = self.table();
            if table.queries_fail {
                return Err(Error::Contention("fake query"));
            }
            let mut due: Vec<(i64, String)> = table
                .index
                .iter()
                .filter(|(q, s, at, _)| *q == queue && *s == shard && *at <= due_by.unix_seconds())
                .map(|(_, _, at, id)| (*at, id.clone()))
                .filter(|entry| after.as_ref().is_none_or(|after| entry > after))
                .collect();
            due.sort();
            due.truncate(usize::try_from(limit).unwrap());
            // As DynamoDB: a full page always says where the next one starts.
            let next = (due.len() == usize::try_from(limit).unwrap())
                .then(|| due.last().cloned())
                .flatten();
            Ok(DuePage {
                order_ids: due.into_iter().map(|(_, id)| id).collect(),
                next,
            })
        }

        async fn order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
            Ok(self.table().orders.get(order_id).cloned())
        }

        async fn expire(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
            let mut table = self.table();
            if table.failing.contains(&order.order_id) {
                return Err(Error::Contention("fake expiry"));
            }
            let stored = table.orders.get_mut(&order.order_id).unwrap();
            if stored.status != order.status || stored.expires_at > now {
                return Ok(false);
            }
            stored.status = OrderStatus::Expired;
            table.index.retain(|(_, _, _, id)| *id != order.order_id);
            table.writes.push(("expire", order.order_id.clone()));
            Ok(true)
        }

        async fn requeue(&self, order_id: &str) -> Result<()> {
            self.table().writes.push(("requeue", order_id.to_owned()));
            Ok(())
        }

        async fn snooze(&self, order_id: &str, status: OrderStatus, now: Timestamp) -> Result<()> {
            let mut table = self.table();
            if table.orders[order_id].status == status {
                for entry in table.index.iter_mut().filter(|entry| entry.3 == order_id) {
                    entry.2 = now.unix_seconds() + STUCK_AFTER_SECONDS;
                }
            }
            Ok(())
        }
    }

    fn run<'a>(fake: &'a Fake, budget: &'a Budget, page_size: i32) -> Run<'a, Fake> {
        Run {
            orders: fake,
            now: NOW,
            due_by: NOW.plus_seconds(-300),
            budget,
            page_size,
        }
    }

    /// A budget that allows `reads` checks of `PAGE_RESERVE_MS` (each check moves its
    /// clock on by `step_ms`).
    fn budget_for(reads: i64, step_ms: i64) -> Budget {
        let start = Timestamp(0);
        Budget::until(
            Timestamp(PAGE_RESERVE_MS + (reads - 1) * step_ms),
            Arc::new(TickingClock::at(start, step_ms)),
        )
    }

    /// GIVEN unpaid orders due and one paid order still undelivered, in the last shard
    /// WHEN the sweep runs THEN it re-queues the paid order before it expires anything.
    #[tokio::test]
    async fn paid_orders_are_requeued_before_any_order_is_expired() {
        let fake = Fake::with_pending(40);
        fake.add("paid-stuck", OrderStatus::Paid, INDEX_SHARDS - 1);
        let report = run(&fake, &Budget::unlimited(), 10).sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                expired: 40,
                requeued: 1,
                ..SweepReport::default()
            }
        );
        assert_eq!(fake.writes()[0], ("requeue", "paid-stuck".to_owned()));
        assert_eq!(fake.writes().len(), 41);
        assert!(fake.table().lease.is_none(), "released");
    }

    /// GIVEN 500 due unpaid orders and a stuck paid one WHEN a run has time for only a
    /// few pages THEN it re-queues the paid order, expires some, reports more due and
    /// leaves the rest in the index; the next run expires the rest, each order once.
    #[tokio::test]
    async fn a_run_out_of_time_leaves_the_rest_to_the_next_run() {
        let fake = Fake::with_pending(500);
        fake.add("paid-stuck", OrderStatus::Paid, 3);
        let first = run(&fake, &budget_for(40, 100), 10).sweep().await.unwrap();
        assert_eq!(first.requeued, 1);
        assert!(first.more_due, "{first:?}");
        assert!(first.expired > 0 && first.expired < 500, "{first:?}");
        assert_eq!(fake.writes()[0], ("requeue", "paid-stuck".to_owned()));
        assert!(fake.table().lease.is_none(), "released");

        let second = run(&fake, &Budget::unlimited(), 10).sweep().await.unwrap();
        assert!(!second.more_due);
        assert_eq!(second.requeued, 0, "snoozed by the first run");
        assert_eq!(first.expired + second.expired, 500);
        let expiries = fake.expiries();
        assert_eq!(expiries.len(), 500);
        assert!(expiries.values().all(|times| *times == 1));
    }

    /// GIVEN a page of ten WHEN time runs low in the middle of it THEN the orders not
    /// started stay due (`more_due`), and the next run expires them.
    #[tokio::test]
    async fn a_page_is_left_part_done_when_time_runs_low_within_it() {
        let fake = Fake::default();
        for i in 0..10 {
            fake.add(&format!("order-{i}"), OrderStatus::PendingPayment, 0);
        }
        // Each check costs a second: the run's first check, the lease's, the paid
        // queue's eight pages, then shard 0's page starts with `PAGE_RESERVE_MS` left,
        // and its orders start while `ORDER_RESERVE_MS` are: three of them.
        let report = run(&fake, &budget_for(11, 1_000), 100)
            .sweep()
            .await
            .unwrap();
        assert_eq!(
            report,
            SweepReport {
                expired: 3,
                more_due: true,
                ..SweepReport::default()
            }
        );
        let next = run(&fake, &Budget::unlimited(), 100).sweep().await.unwrap();
        assert_eq!((next.expired, next.more_due), (7, false));
        assert!(fake.expiries().values().all(|times| *times == 1));
    }

    /// GIVEN another run holds the lease WHEN a run starts THEN it does nothing and says
    /// so; once the lease has lapsed, a run works.
    #[tokio::test]
    async fn a_run_that_finds_the_lease_held_does_nothing() {
        let fake = Fake::with_pending(5);
        fake.table().lease = Some(("other-run".into(), NOW.plus_seconds(60)));
        let report = run(&fake, &Budget::unlimited(), 10).sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                lease_held: true,
                ..SweepReport::default()
            }
        );
        assert!(fake.writes().is_empty());
        assert_eq!(fake.status("pending-00000"), OrderStatus::PendingPayment);
        assert_eq!(fake.table().lease.as_ref().unwrap().0, "other-run");

        let unlimited = Budget::unlimited();
        let mut later = run(&fake, &unlimited, 10);
        later.now = NOW.plus_seconds(61);
        assert_eq!(later.sweep().await.unwrap().expired, 5);
    }

    /// GIVEN a query fails WHEN the run ends with the error THEN its lease is released
    /// all the same, and the next run is not held up.
    #[tokio::test]
    async fn the_lease_is_released_when_the_run_fails() {
        let fake = Fake::with_pending(5);
        fake.table().queries_fail = true;
        assert!(run(&fake, &Budget::unlimited(), 10).sweep().await.is_err());
        assert!(fake.table().lease.is_none());
        fake.table().queries_fail = false;
        assert_eq!(
            run(&fake, &Budget::unlimited(), 10)
                .sweep()
                .await
                .unwrap()
                .expired,
            5
        );
    }

    /// One order's failure is counted and logged; the others are expired.
    #[tokio::test]
    async fn an_order_that_fails_does_not_stop_the_others() {
        let fake = Fake::with_pending(5);
        fake.table().failing.insert("pending-00002".into());
        let report = run(&fake, &Budget::unlimited(), 2).sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                expired: 4,
                failed: 1,
                ..SweepReport::default()
            }
        );
        assert_eq!(fake.status("pending-00002"), OrderStatus::PendingPayment);
    }

    /// With less time than a page needs, a run takes no lease and touches nothing.
    #[tokio::test]
    async fn with_no_time_to_start_a_run_takes_no_lease() {
        let fake = Fake::with_pending(5);
        let report = run(&fake, &budget_for(0, 1), 10).sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                more_due: true,
                ..SweepReport::default()
            }
        );
        assert!(fake.table().lease.is_none());
        assert!(fake.writes().is_empty());
    }

    /// The lease lasts as long as the invocation can (and a little more); without a
    /// deadline, the longest a lease may last.
    #[test]
    fn a_lease_lasts_as_long_as_the_invocation_can() {
        let clock = Arc::new(FakeClock::at(Timestamp(0)));
        let in_50s = Budget::until(Timestamp(50_000), clock.clone());
        assert_eq!(
            lease_until(NOW, &in_50s),
            Timestamp(NOW.0 + 50_000 + LEASE_SLACK_MS)
        );
        assert_eq!(
            lease_until(NOW, &Budget::unlimited()),
            Timestamp(NOW.0 + SWEEP_LEASE_MAX_MS)
        );
        let past = Budget::until(Timestamp(-10_000), clock);
        assert_eq!(lease_until(NOW, &past), NOW);
    }
}
