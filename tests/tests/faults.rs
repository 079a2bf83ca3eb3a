//! AWS faults on the order path (docs/reliability.md, the fault table): checkout, the
//! payment webhook and the delivery worker run with every AWS call going through a
//! `FaultProxy` in front of moto, which throttles, fails or loses the answers of chosen
//! calls. After each fault, the invariants hold: no order lost, no key delivered twice,
//! no stock leaked. Its own test binary (own moto), since the sweep sees every order.

use std::collections::HashSet;
use std::sync::Arc;

use kami_shared::Context;
use kami_shared::app::stock_audit::{judge_keys, judge_reservations};
use kami_shared::app::sweep::sweep;
use kami_shared::domain::order::OrderStatus;
use kami_shared::domain::product::Stock;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::store::{DeliveryRecord, OrderView, STUCK_AFTER_SECONDS};
use kami_tests::faults::{Answer, Fault, FaultProxy};
use kami_tests::*;

/// The sweep's tests re-queue every paid order in the table: the others wait for them.
static SWEEP: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const PRICE: i64 = 100;
/// Delivery rounds after which a message still failing fails the test.
const MAX_ROUNDS: usize = 6;

/// One card-key product; the functions, with every AWS call through a fault proxy; the
/// table, straight from moto, for the checks.
struct Shop {
    proxy: FaultProxy,
    via: Arc<Context>,
    table: Arc<Context>,
    sku: String,
    imported: usize,
}

impl Shop {
    /// A proxy without faults yet, and a product with `keys` keys (imported straight).
    async fn open(prefix: &str, keys: usize) -> Self {
        let proxy = FaultProxy::start(&stack().endpoint, Vec::new()).await;
        let table = context_with(&[]).await;
        let sku = product_with_keys(&table, prefix, PRICE, 5, &make_keys(prefix, keys)).await;
        Shop {
            via: context_via(&proxy.endpoint).await,
            table,
            proxy,
            sku,
            imported: keys,
        }
    }

    /// An order of `quantity` units, made through the proxy: its id.
    async fn order(&self, quantity: i64, idempotency_key: &str) -> String {
        let (status, created) = order(&self.via, &self.sku, quantity, idempotency_key).await;
        assert_eq!(status, 201, "{created}");
        created["order_id"].as_str().expect("order id").to_owned()
    }

    /// An order of `quantity` units, made and paid through the proxy: its id.
    async fn paid_order(&self, quantity: i64) -> String {
        let order_id = self.order(quantity, &format!("faults-{}", new_id())).await;
        assert_eq!(self.pay(&format!("evt_{}", new_id()), &order_id).await, 200);
        order_id
    }

    /// Stripe's notification of `event_id` paying `order_id` in full, through the proxy:
    /// the webhook's status.
    async fn pay(&self, event_id: &str, order_id: &str) -> u16 {
        let amount = PRICE * i64::from(self.view(order_id).await.order.quantity);
        pay(&self.via, event_id, order_id, amount, "CNY").await.0
    }

    /// Runs the delivery queue's event source mapping through the proxy until the queue
    /// is empty: how many messages failed in each round.
    async fn deliver(&self) -> Vec<usize> {
        let mut failures = Vec::new();
        loop {
            let round = delivery_round(&self.via).await;
            if round.received == 0 {
                return failures;
            }
            failures.push(round.failed.len());
            assert!(failures.len() <= MAX_ROUNDS, "still failing: {failures:?}");
        }
    }

    async fn view(&self, order_id: &str) -> OrderView {
        self.table
            .store
            .get_order_view(order_id)
            .await
            .expect("read the order")
            .unwrap_or_else(|| panic!("order {order_id} lost"))
    }

    async fn status(&self, order_id: &str) -> OrderStatus {
        self.view(order_id).await.order.status
    }

    async fn stock(&self) -> Stock {
        self.table
            .store
            .stock(&self.sku, true)
            .await
            .expect("counters")
    }

    /// The order has one payment, was paid once, and is delivered.
    async fn assert_paid_once_and_delivered(&self, order_id: &str) {
        let view = self.view(order_id).await;
        assert_eq!(view.order.status, OrderStatus::Delivered);
        assert_eq!(view.payments.len(), 1);
        assert_eq!(transitions_to(&view, OrderStatus::Paid), 1);
    }

    /// The invariants, for the product and all its `orders`: each order delivered
    /// (every slot filled once, marked delivered once) or in the exception queue; no key
    /// in two slots; every key in stock or in one slot; the counters add up to the keys
    /// imported and agree with the keys in stock and the orders holding stock (the stock
    /// audit's rules).
    async fn assert_invariants(&self, orders: &[&str]) {
        let mut handed_out = HashSet::new();
        let mut sold = 0;
        let mut held = 0;
        for order_id in orders {
            let view = self.view(order_id).await;
            let order = &view.order;
            let delivered = order.status == OrderStatus::Delivered;
            assert!(
                delivered || order.status.needs_a_person(),
                "order {order_id} is neither delivered nor in the exception queue: {:?}",
                order.status
            );
            let mut slots = Vec::new();
            for slot in view.deliveries.iter().filter_map(DeliveryRecord::card_key) {
                assert!(
                    handed_out.insert(slot.key_id.clone()),
                    "key {} delivered twice",
                    slot.key_id
                );
                slots.push(slot.slot);
            }
            slots.sort_unstable();
            assert_eq!(
                transitions_to(&view, OrderStatus::Delivered),
                usize::from(delivered),
                "order {order_id} marked delivered once"
            );
            if delivered {
                assert_eq!(slots, (0..order.quantity).collect::<Vec<_>>());
                sold += i64::from(order.quantity);
            }
            if order.status.holds_stock() {
                held += i64::from(order.quantity);
            }
        }
        let stock = self.stock().await;
        let imported = i64::try_from(self.imported).expect("a small count");
        assert_eq!(
            stock.available + stock.reserved + stock.sold,
            imported,
            "{stock:?}"
        );
        assert_eq!(stock.sold, sold, "{stock:?}");
        let in_stock = self
            .table
            .store
            .count_stock_keys(&self.sku)
            .await
            .expect("count keys");
        assert_eq!(judge_keys(&self.sku, in_stock, &stock), None);
        assert_eq!(judge_reservations(&self.sku, held, &stock), None);
        assert_eq!(
            usize::try_from(in_stock).expect("a small count") + handed_out.len(),
            self.imported,
            "every key is in stock or in one slot"
        );
    }
}

fn transitions_to(view: &OrderView, status: OrderStatus) -> usize {
    view.events
        .iter()
        .filter(|event| event.to == status)
        .count()
}

/// A call whose body names `text` (an item's key).
fn naming(text: String) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |body| body.contains(&text)
}

/// GIVEN checkout's order transaction commits and every answer to it is lost (the SDK's
/// 3 attempts, the same token: committed once) WHEN the buyer, told 500, retries with
/// the same Idempotency-Key THEN it gets the order made the first time: one order, one
/// reservation, delivered.
#[tokio::test]
async fn an_order_whose_answer_is_lost_is_made_once_when_the_buyer_retries() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("lostorder", 3).await;
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::Lost)
            .when(naming("IDEMPOTENCY#orders#".to_owned()))
            .times(3),
    );
    let key = "faults-lost-order-idempotency";
    let (status, lost) = order(&shop.via, &shop.sku, 2, key).await;
    assert_eq!(status, 500, "{lost}");
    assert_eq!(shop.proxy.fired(), [3]);

    let order_id = shop.order(2, key).await;
    let one_reservation = Stock {
        available: 1,
        reserved: 2,
        sold: 0,
    };
    assert_eq!(shop.stock().await, one_reservation);
    assert_eq!(shop.pay("evt_faults_lost_order", &order_id).await, 200);
    assert_eq!(shop.deliver().await, [0]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Delivered);
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN the webhook's order read is throttled once, and its payment transaction twice
/// (`ThrottlingException`: the SDK retries) and then cancelled for `ThrottlingError`
/// (Kami retries, as a new call) WHEN the payment arrives THEN it is recorded once, the
/// order is paid once and delivered.
#[tokio::test]
async fn a_throttled_payment_is_retried_and_recorded_once() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("throttledpay", 2).await;
    let order_id = shop.order(1, "faults-throttled-pay-idempotency").await;
    let event = "evt_faults_throttled";
    let webhook = format!("WEBHOOK#stripe#{event}");
    shop.proxy.inject(
        Fault::dynamodb("GetItem", Answer::THROUGHPUT_EXCEEDED)
            .when(naming(format!("ORDER#{order_id}"))),
    );
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::THROTTLED)
            .when(naming(webhook.clone()))
            .times(2),
    );
    shop.proxy.inject(
        Fault::dynamodb(
            "TransactWriteItems",
            Answer::CancelledFor("ThrottlingError"),
        )
        .when(naming(webhook)),
    );

    assert_eq!(shop.pay(event, &order_id).await, 200);
    assert_eq!(shop.proxy.fired(), [1, 2, 1]);
    assert_eq!(shop.deliver().await, [0]);
    shop.assert_paid_once_and_delivered(&order_id).await;
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN the payment transaction commits and every answer to it is lost, so Stripe is
/// told 500 and nothing is queued WHEN Stripe sends the same event again THEN it is a
/// duplicate that queues the delivery: one payment, paid once, delivered.
#[tokio::test]
async fn a_payment_whose_answer_is_lost_is_recorded_once_when_the_provider_retries() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("lostpay", 2).await;
    let order_id = shop.order(1, "faults-lost-pay-idempotency").await;
    let event = "evt_faults_lost_pay";
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::Lost)
            .when(naming(format!("WEBHOOK#stripe#{event}")))
            .times(3),
    );

    assert_eq!(shop.pay(event, &order_id).await, 500);
    assert_eq!(shop.proxy.fired(), [3]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Paid);
    assert_eq!(shop.deliver().await, [0; 0], "nothing was queued");

    assert_eq!(shop.pay(event, &order_id).await, 200);
    assert_eq!(shop.deliver().await, [0]);
    shop.assert_paid_once_and_delivered(&order_id).await;
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN a paid order of 2 WHEN the first key's allocation commits with every answer
/// lost, and, on the message's next receive, marking the order delivered does too THEN
/// each receive fails, the one after settles on `delivered`: each slot holds one key,
/// the order is delivered once, and the counters are exact.
#[tokio::test]
async fn allocations_and_deliveries_whose_answers_are_lost_hand_out_each_key_once() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("lostkey", 3).await;
    let order_id = shop.paid_order(2).await;
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::Lost)
            .when(naming("DELIVERY#000".to_owned()))
            .times(3),
    );
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::Lost)
            .when(naming(r#""cause":{"S":"deliver"}"#.to_owned()))
            .times(3),
    );

    assert_eq!(shop.deliver().await, [1, 1, 0]);
    assert_eq!(shop.proxy.fired(), [3, 3]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Delivered);
    let sold_once = Stock {
        available: 1,
        reserved: 0,
        sold: 2,
    };
    assert_eq!(shop.stock().await, sold_once);
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN a paid order WHEN its key's allocation is answered `InternalServerError` on
/// all of the SDK's attempts (nothing written) THEN the message fails, and its next
/// receive delivers it.
#[tokio::test]
async fn an_allocation_failing_with_5xx_fails_the_message_and_its_retry_delivers() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("failedkey", 2).await;
    let order_id = shop.paid_order(1).await;
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::INTERNAL_SERVER_ERROR)
            .when(naming("DELIVERY#000".to_owned()))
            .times(3),
    );

    assert_eq!(shop.deliver().await, [1, 0]);
    assert_eq!(shop.proxy.fired(), [3]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Delivered);
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN SQS answers 503 to every attempt of the webhook's `SendMessage`, after the
/// payment committed WHEN the sweep runs once the order is due on the stuck-order index,
/// and the answer to its snooze (a conditional `UpdateItem`) is lost THEN it re-queues
/// the order (the SDK's retry of the snooze meets its own write, harmlessly), and the
/// order is delivered.
#[tokio::test]
async fn a_delivery_never_queued_is_found_by_the_sweep_and_delivered() {
    let _all = SWEEP.write().await;
    let shop = Shop::open("unqueued", 2).await;
    let order_id = paid_but_never_queued(&shop).await;
    shop.proxy.inject(
        Fault::dynamodb("UpdateItem", Answer::Lost).when(naming(format!("ORDER#{order_id}"))),
    );

    let due = Timestamp::now().plus_seconds(STUCK_AFTER_SECONDS + 1);
    let report = sweep(&shop.via, due).await.expect("sweep");
    assert!(report.requeued >= 1, "{report:?}");
    assert_eq!(shop.proxy.fired(), [3, 1]);
    assert_eq!(shop.deliver().await, [0]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Delivered);
    shop.assert_invariants(&[&order_id]).await;
}

/// GIVEN a paid order whose delivery was never queued WHEN the answer to the sweep's
/// lease put (a conditional `PutItem`) is lost THEN the run still sweeps and the order
/// is delivered.
///
/// The SDK retries the put without a token; the retry meets the run's own lease, fails
/// its condition, and the run reads its own lease as another run's.
#[tokio::test]
async fn a_sweep_whose_lease_answer_is_lost_still_sweeps() {
    let _all = SWEEP.write().await;
    let shop = Shop::open("lostlease", 2).await;
    let order_id = paid_but_never_queued(&shop).await;
    shop.proxy
        .inject(Fault::dynamodb("PutItem", Answer::Lost).when(naming("SWEEP#expiry".to_owned())));

    // A day ahead: a lease this run leaves behind is one the other sweep test, on
    // today's clock, reads as taken on a clock since moved back, and takes.
    let due = Timestamp::now().plus_seconds(86_400);
    let report = sweep(&shop.via, due).await.expect("sweep");
    assert_eq!(shop.proxy.fired(), [3, 1]);
    assert!(
        !report.lease_held && report.requeued >= 1,
        "the run skipped itself: {report:?}"
    );
    assert_eq!(shop.deliver().await, [0]);
    shop.assert_invariants(&[&order_id]).await;
}

/// An order paid while SQS answers 503 to every attempt of the webhook's `SendMessage`
/// (the proxy's first fault): Stripe is told 500, the order is `paid` and nothing is
/// queued.
async fn paid_but_never_queued(shop: &Shop) -> String {
    let order_id = shop.order(1, &format!("faults-{}", new_id())).await;
    shop.proxy
        .inject(Fault::sqs("SendMessage", Answer::SERVICE_UNAVAILABLE).times(3));
    assert_eq!(shop.pay(&format!("evt_{}", new_id()), &order_id).await, 500);
    assert_eq!(shop.proxy.fired(), [3]);
    assert_eq!(shop.status(&order_id).await, OrderStatus::Paid);
    assert_eq!(shop.deliver().await, [0; 0], "nothing was queued");
    order_id
}

/// GIVEN two paid orders WHEN the worker's read of the first is throttled twice
/// (`ProvisionedThroughputExceededException`) and of the second three times
/// (`ThrottlingException`, every attempt) THEN the SDK's retries absorb the first; the
/// second's message fails with nothing written, and its retry delivers it. A duplicate
/// message afterwards delivers nothing more.
#[tokio::test]
async fn throttled_order_reads_are_retried_and_never_deliver_twice() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("throttledread", 3).await;
    let absorbed = shop.paid_order(1).await;
    let retried = shop.paid_order(1).await;
    shop.proxy.inject(
        Fault::dynamodb("Query", Answer::THROUGHPUT_EXCEEDED)
            .when(naming(format!("ORDER#{absorbed}")))
            .times(2),
    );
    shop.proxy.inject(
        Fault::dynamodb("Query", Answer::THROTTLED)
            .when(naming(format!("ORDER#{retried}")))
            .times(3),
    );

    let failures = shop.deliver().await;
    assert_eq!(failures.iter().sum::<usize>(), 1, "{failures:?}");
    assert_eq!(shop.proxy.fired(), [2, 3]);
    shop.via
        .queue()
        .expect("queue")
        .enqueue_delivery(&retried)
        .await
        .expect("a duplicate message");
    assert_eq!(shop.deliver().await, [0]);
    for order_id in [&absorbed, &retried] {
        assert_eq!(shop.status(order_id).await, OrderStatus::Delivered);
    }
    shop.assert_invariants(&[&absorbed, &retried]).await;
}

/// GIVEN checkout's order transaction throttled twice (the SDK's retries absorb it), then
/// a second order's throttled on every attempt WHEN the buyer retries that one with the
/// same Idempotency-Key THEN the first is made once, the second answers a server error
/// and then is made once: two orders, two reservations, both delivered.
#[tokio::test]
async fn throttled_order_transactions_make_each_order_once() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("throttledorder", 3).await;
    let counters = format!("STOCKCOUNT#{}", shop.sku);
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::THROTTLED)
            .when(naming(counters.clone()))
            .times(2),
    );
    let absorbed = shop.order(1, "faults-throttled-order-1").await;
    assert_eq!(shop.proxy.fired(), [2]);

    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::THROUGHPUT_EXCEEDED)
            .when(naming(counters))
            .times(3),
    );
    let key = "faults-throttled-order-2";
    let (status, refused) = order(&shop.via, &shop.sku, 1, key).await;
    assert!(status >= 500, "{status} {refused}");
    assert_eq!(shop.proxy.fired(), [2, 3], "every attempt throttled");
    let retried = shop.order(1, key).await;
    let (status, again) = order(&shop.via, &shop.sku, 1, key).await;
    assert_eq!(
        (status, &again["order_id"]),
        (201, &serde_json::json!(retried))
    );

    for order_id in [&absorbed, &retried] {
        assert_eq!(shop.pay(&format!("evt_{}", new_id()), order_id).await, 200);
    }
    assert_eq!(shop.deliver().await, [0]);
    assert_eq!(shop.stock().await.sold, 2);
    shop.assert_invariants(&[&absorbed, &retried]).await;
}

/// GIVEN a paid order WHEN its key's allocation is throttled (the SDK's attempts, then a
/// transaction cancelled for throttling) and so is the move to `delivered` THEN the
/// worker's retries deliver it in the same message: one key, marked delivered once.
#[tokio::test]
async fn throttled_allocation_and_mark_delivered_are_retried_and_deliver_once() {
    let _others = SWEEP.read().await;
    let shop = Shop::open("throttleddeliver", 2).await;
    let order_id = shop.paid_order(1).await;
    let keys = format!("STOCK#{}#", shop.sku);
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::THROTTLED)
            .when(naming(keys.clone()))
            .times(2),
    );
    shop.proxy.inject(
        Fault::dynamodb(
            "TransactWriteItems",
            Answer::CancelledFor("ThrottlingError"),
        )
        .when(naming(keys)),
    );
    let order_key = format!("ORDER#{order_id}");
    shop.proxy.inject(
        Fault::dynamodb("TransactWriteItems", Answer::THROTTLED)
            .when(move |body| body.contains(&order_key) && body.contains("\"delivered\""))
            .times(2),
    );

    assert_eq!(shop.deliver().await, [0]);
    assert_eq!(shop.proxy.fired(), [2, 1, 2]);
    shop.assert_paid_once_and_delivered(&order_id).await;
    shop.assert_invariants(&[&order_id]).await;
}
