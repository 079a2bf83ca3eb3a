//! The store against moto: a cancelled transaction means what the item whose condition
//! failed says, read by that item's name and not by its position. Each case makes an
//! item other than the first fail, alone or together with others, and checks the
//! outcome and that nothing was written.

use kami_shared::domain::money::Money;
use kami_shared::domain::order::{Cause, OrderStatus};
use kami_shared::domain::product::{DeliveryType, PendingLimits, Product};
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::error::{ConflictKind, Error, Result};
use kami_shared::fakes::order_fixture;
use kami_shared::store::{
    AllocateOutcome, AuditSubject, CreateOrderOutcome, DeliveryRecord, OrderRecord, PaymentApplied,
    PaymentChange, STOCK_SHARDS, SealedKey, StockKey, StockShare, Store,
};
use kami_tests::*;

const PRICE: i64 = 500;

fn sealed_key() -> SealedKey {
    SealedKey {
        key_id: new_id(),
        fingerprint: format!("test-{}", new_id()),
        sealed: vec![7; 16],
    }
}

/// A product with `units` keys in stock, all counted on counter `shard`.
async fn stocked_product(store: &Store, units: usize, shard: u32) -> (String, Vec<SealedKey>) {
    let sku = unique_sku("cancel");
    store
        .create_product(
            &Product {
                sku: sku.clone(),
                title: "Cancellations".into(),
                price: Money {
                    amount: PRICE,
                    currency: "CNY".into(),
                },
                delivery: DeliveryType::CardKey,
                max_per_order: 10,
                card_keys: Default::default(),
                pending_limits: PendingLimits::defaults(10),
                reservation_seconds: None,
                top_up: None,
                license: None,
                grant: None,
                link: None,
                bundle: None,
                link_secret: None,
                goods_in_notifications: false,
                created_at: Timestamp::now().to_rfc3339(),
            },
            &test_audit("product.create", (AuditSubject::Product, &sku)),
        )
        .await
        .expect("product");
    let keys: Vec<SealedKey> = (0..units).map(|_| sealed_key()).collect();
    let refs: Vec<&SealedKey> = keys.iter().collect();
    let created_at = Timestamp::now().to_rfc3339();
    let duplicates = store
        .add_stock(&sku, "batch", &refs, shard, &created_at)
        .await
        .expect("stock");
    assert!(duplicates.is_empty());
    (sku, keys)
}

fn new_order(sku: &str, quantity: u32, shard: u32) -> OrderRecord {
    OrderRecord {
        stock_shards: StockShare::whole(shard, quantity),
        amount: Money {
            amount: PRICE * i64::from(quantity),
            currency: "CNY".into(),
        },
        ..order_fixture(sku, quantity, Timestamp::now())
    }
}

fn created(outcome: Result<CreateOrderOutcome>) -> String {
    match outcome {
        Ok(CreateOrderOutcome::Created) => "created".into(),
        Ok(CreateOrderOutcome::KeyTaken) => "key_taken".into(),
        Ok(CreateOrderOutcome::HoldFull { claim }) => format!("hold_full {claim}"),
        Err(Error::Conflict(ConflictKind::OutOfStock)) => "out_of_stock".into(),
        Err(err) => format!("error: {err}"),
    }
}

/// A new pending order, created under an idempotency key of its own.
async fn pending_order(store: &Store, sku: &str, quantity: u32, shard: u32) -> OrderRecord {
    let order = new_order(sku, quantity, shard);
    let key = format!("idem-{}", new_id());
    assert_eq!(
        created(
            store
                .create_order(&order, &[], &key, "source", "request", Timestamp::now())
                .await
        ),
        "created"
    );
    order
}

fn allocated(outcome: Result<AllocateOutcome>) -> String {
    match outcome {
        Ok(AllocateOutcome::Allocated) => "allocated".into(),
        Ok(AllocateOutcome::KeyGone) => "key_gone".into(),
        Ok(AllocateOutcome::SlotFilled) => "slot_filled".into(),
        Ok(AllocateOutcome::NotPayable) => "not_payable".into(),
        Err(err) => format!("error: {err}"),
    }
}

fn applied(outcome: Result<PaymentApplied>) -> String {
    match outcome {
        Ok(PaymentApplied::Applied) => "applied".into(),
        Ok(PaymentApplied::NoStock) => "no_stock".into(),
        Ok(PaymentApplied::Duplicate) => "duplicate".into(),
        Ok(PaymentApplied::Raced) => "raced".into(),
        Err(err) => format!("error: {err}"),
    }
}

async fn counter(store: &Store, sku: &str, shard: u32) -> (i64, i64, i64) {
    let shards = store.stock_shards(sku, true).await.expect("stock");
    let (_, stock) = shards
        .into_iter()
        .find(|(s, _)| *s == shard)
        .expect("counter");
    (stock.available, stock.reserved, stock.sold)
}

async fn current(store: &Store, order_id: &str) -> OrderRecord {
    store
        .get_order(order_id)
        .await
        .expect("get")
        .expect("order")
}

fn payment<'a>(
    event_id: &'a str,
    amount: &'a Money,
    transition: (OrderStatus, OrderStatus, Cause),
    reserve_stock: Option<&'a [StockShare]>,
) -> PaymentChange<'a> {
    PaymentChange {
        provider: "stripe",
        event_id,
        provider_ref: "pi_test",
        amount,
        outcome: "test",
        transition: Some(transition),
        reserve_stock,
        attempt: None,
        channel: None,
        audit: None,
    }
}

#[tokio::test]
async fn an_order_refused_for_its_stock_or_its_key_says_which() {
    let ctx = context().await;
    let store = &ctx.store;
    let (sku, _) = stocked_product(store, 2, 5).await;
    let key = format!("idem-{}", new_id());

    // The stock counter, second in the transaction, fails alone.
    let greedy = new_order(&sku, 3, 5);
    assert_eq!(
        created(
            store
                .create_order(&greedy, &[], &key, "source", "request-a", Timestamp::now())
                .await
        ),
        "out_of_stock"
    );
    let nothing = store.get_idempotency("orders", &key).await.expect("get");
    assert!(nothing.is_none(), "the key was not claimed");
    assert!(
        store
            .get_order(&greedy.order_id)
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(counter(store, &sku, 5).await, (2, 0, 0));

    let first = new_order(&sku, 2, 5);
    assert_eq!(
        created(
            store
                .create_order(&first, &[], &key, "source", "request-a", Timestamp::now())
                .await
        ),
        "created"
    );
    assert_eq!(counter(store, &sku, 5).await, (0, 2, 0));

    // The same key again, with the stock now gone: the idempotency record and the
    // counter both fail, and the key decides (the client sees its first order).
    let again = new_order(&sku, 1, 5);
    assert_eq!(
        created(
            store
                .create_order(&again, &[], &key, "source", "request-b", Timestamp::now())
                .await
        ),
        "key_taken"
    );
    let record = store
        .get_idempotency("orders", &key)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.order_id, first.order_id);
    assert!(
        store
            .get_order(&again.order_id)
            .await
            .expect("get")
            .is_none()
    );

    // A new key on the empty counter: the counter alone, out of stock again.
    let late = new_order(&sku, 1, 5);
    let other_key = format!("idem-{}", new_id());
    assert_eq!(
        created(
            store
                .create_order(
                    &late,
                    &[],
                    &other_key,
                    "source",
                    "request-c",
                    Timestamp::now()
                )
                .await
        ),
        "out_of_stock"
    );
    assert_eq!(counter(store, &sku, 5).await, (0, 2, 0));
}

async fn stock_keys(store: &Store, sku: &str) -> Vec<StockKey> {
    let mut keys = Vec::new();
    for shard in 0..STOCK_SHARDS {
        keys.extend(store.available_keys(sku, shard, 10).await.expect("keys"));
    }
    keys
}

#[tokio::test]
async fn an_allocation_says_whether_the_key_the_slot_or_the_order_refused() {
    let ctx = context().await;
    let store = &ctx.store;
    let (sku, _) = stocked_product(store, 3, 0).await;
    let order = pending_order(store, &sku, 2, 0).await;
    let event_id = format!("evt_{}", new_id());
    let paid = payment(
        &event_id,
        &order.amount,
        (
            OrderStatus::PendingPayment,
            OrderStatus::Paid,
            Cause::PaymentReceived,
        ),
        None,
    );
    assert_eq!(
        applied(store.apply_payment(&order, &paid, Timestamp::now()).await),
        "applied"
    );
    let order = current(store, &order.order_id).await;
    let keys = stock_keys(store, &sku).await;
    let [a, b, c] = keys.as_slice() else {
        panic!("three keys in stock, not {}", keys.len());
    };

    assert_eq!(
        allocated(store.allocate_key(&order, 0, a, Timestamp::now()).await),
        "allocated"
    );
    // Items: the key leaving stock, the slot, the order's state.
    assert_eq!(
        allocated(store.allocate_key(&order, 1, a, Timestamp::now()).await),
        "key_gone",
        "the key alone failed"
    );
    assert_eq!(
        allocated(store.allocate_key(&order, 0, b, Timestamp::now()).await),
        "slot_filled",
        "the slot alone failed"
    );
    assert_eq!(
        allocated(store.allocate_key(&order, 0, a, Timestamp::now()).await),
        "slot_filled",
        "the key and the slot failed"
    );
    assert_eq!(
        allocated(store.allocate_key(&order, 1, b, Timestamp::now()).await),
        "allocated"
    );
    assert!(
        store
            .mark_delivered(&order, OrderStatus::Paid, Timestamp::now())
            .await
            .expect("deliver")
    );
    assert_eq!(
        allocated(store.allocate_key(&order, 2, c, Timestamp::now()).await),
        "not_payable",
        "the order alone failed"
    );
    assert_eq!(
        allocated(store.allocate_key(&order, 0, a, Timestamp::now()).await),
        "not_payable",
        "all three failed"
    );

    let view = store
        .get_order_view(&order.order_id)
        .await
        .expect("view")
        .expect("order");
    let mut slots: Vec<(u32, String)> = view
        .deliveries
        .iter()
        .filter_map(DeliveryRecord::card_key)
        .map(|d| (d.slot, d.key_id.clone()))
        .collect();
    slots.sort();
    assert_eq!(slots, [(0, a.key_id.clone()), (1, b.key_id.clone())]);
    let left: Vec<String> = stock_keys(store, &sku)
        .await
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(left, [c.key_id.as_str()], "the refused key stays in stock");
}

#[tokio::test]
async fn a_payment_says_whether_it_was_a_duplicate_a_race_or_out_of_stock() {
    let ctx = context().await;
    let store = &ctx.store;
    let (sku, _) = stocked_product(store, 1, 2).await;
    let late = pending_order(store, &sku, 1, 2).await;
    assert!(
        store
            .expire_order(&late, late.expires_at.plus_seconds(1))
            .await
            .expect("expire")
    );
    let late = current(store, &late.order_id).await;
    assert_eq!(late.status, OrderStatus::Expired);
    // Its unit is sold to another order meanwhile, on the same counter.
    pending_order(store, &sku, 1, 2).await;
    let reserve_again = (
        OrderStatus::Expired,
        OrderStatus::Paid,
        Cause::LatePaymentReserved,
    );

    // Items: webhook record, payment, order, event, counter. The counter, last, fails alone.
    let first = format!("evt_{}", new_id());
    let change = payment(
        &first,
        &late.amount,
        reserve_again,
        Some(&late.stock_shards),
    );
    assert_eq!(
        applied(store.apply_payment(&late, &change, Timestamp::now()).await),
        "no_stock"
    );
    assert!(
        webhook_record("stripe", &first).await.is_none(),
        "nothing written"
    );
    assert_eq!(counter(store, &sku, 2).await, (0, 1, 0));

    // Decided on a state the order has left: the order update, third, fails alone.
    let stale = format!("evt_{}", new_id());
    let change = payment(
        &stale,
        &late.amount,
        (
            OrderStatus::PendingPayment,
            OrderStatus::Paid,
            Cause::PaymentReceived,
        ),
        None,
    );
    assert_eq!(
        applied(store.apply_payment(&late, &change, Timestamp::now()).await),
        "raced"
    );
    assert!(webhook_record("stripe", &stale).await.is_none());

    let kept = format!("evt_{}", new_id());
    let change = payment(
        &kept,
        &late.amount,
        (
            OrderStatus::Expired,
            OrderStatus::PaidAfterExpiry,
            Cause::PaymentReceived,
        ),
        None,
    );
    assert_eq!(
        applied(store.apply_payment(&late, &change, Timestamp::now()).await),
        "applied"
    );
    // The same event again: the webhook record fails with the order (no longer
    // expired), and the event id decides.
    assert_eq!(
        applied(store.apply_payment(&late, &change, Timestamp::now()).await),
        "duplicate"
    );
    // ... also when the counter fails too.
    let change = payment(&kept, &late.amount, reserve_again, Some(&late.stock_shards));
    assert_eq!(
        applied(store.apply_payment(&late, &change, Timestamp::now()).await),
        "duplicate"
    );
    let view = store
        .get_order_view(&late.order_id)
        .await
        .expect("view")
        .expect("order");
    assert_eq!(view.order.status, OrderStatus::PaidAfterExpiry);
    assert_eq!(view.payments.len(), 1);
    assert_eq!(counter(store, &sku, 2).await, (0, 1, 0));
}

#[tokio::test]
async fn an_import_names_each_duplicate_by_its_position() {
    let ctx = context().await;
    let store = &ctx.store;
    let (sku, stored) = stocked_product(store, 2, 1).await;
    let fresh: Vec<SealedKey> = (0..3).map(|_| sealed_key()).collect();
    let repeat = |key: &SealedKey| SealedKey {
        key_id: new_id(),
        fingerprint: key.fingerprint.clone(),
        sealed: key.sealed.clone(),
    };
    let (again_0, again_1) = (repeat(&stored[0]), repeat(&stored[1]));
    let batch = [&fresh[0], &again_0, &fresh[1], &again_1, &fresh[2]];
    let created_at = Timestamp::now().to_rfc3339();

    // Items: fingerprint and key per key, then the counter. Two fingerprints fail.
    let duplicates = store
        .add_stock(&sku, "batch", &batch, 1, &created_at)
        .await
        .expect("add");
    assert_eq!(duplicates, [1, 3]);
    assert_eq!(counter(store, &sku, 1).await, (2, 0, 0), "nothing written");

    let accepted = [&fresh[0], &fresh[1], &fresh[2]];
    let duplicates = store
        .add_stock(&sku, "batch", &accepted, 1, &created_at)
        .await
        .expect("add");
    assert!(duplicates.is_empty());
    assert_eq!(counter(store, &sku, 1).await, (5, 0, 0));

    // A product without counters: the counter, last, fails; alone or with a duplicate.
    let missing = unique_sku("missing");
    let lone = sealed_key();
    let refused = store
        .add_stock(&missing, "batch", &[&lone], 1, &created_at)
        .await;
    assert!(
        matches!(refused, Err(Error::NotFound("product"))),
        "{refused:?}"
    );
    let refused = store
        .add_stock(&missing, "batch", &[&lone, &again_0], 1, &created_at)
        .await;
    assert!(
        matches!(refused, Err(Error::NotFound("product"))),
        "{refused:?}"
    );
}
