//! GIVEN a product with 50 keys WHEN 200 buyers order at once THEN exactly 50 orders
//! succeed, all 50 are paid and delivered, and the 50 delivered keys are exactly the
//! imported ones; while they are delivered, the admin stock view never lags the orders.

use std::collections::HashSet;

use kami_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn two_hundred_concurrent_orders_for_fifty_keys() {
    let ctx = context().await;
    let keys = make_keys("FLASH", 50);
    let sku = product_with_keys(&ctx, "flash", 990, 5, &keys).await;

    let mut buyers = Vec::new();
    for i in 0..200 {
        let ctx = ctx.clone();
        let sku = sku.clone();
        buyers.push(tokio::spawn(async move {
            order(&ctx, &sku, 1, &format!("idem-flash-{sku}-{i}")).await
        }));
    }
    let mut created = Vec::new();
    let mut refused = 0;
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer task");
        match status {
            201 => created.push(body),
            409 => {
                assert_eq!(body["error"]["code"], "out_of_stock", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 50);
    assert_eq!(refused, 150);

    let mut payments = Vec::new();
    for (i, order) in created.iter().enumerate() {
        let ctx = ctx.clone();
        let order_id = order["order_id"].as_str().expect("id").to_owned();
        let amount = order["amount"]["amount"].as_i64().expect("amount");
        payments.push(tokio::spawn(async move {
            pay(
                &ctx,
                &format!("evt_flash_{i}_{order_id}"),
                &order_id,
                amount,
                "CNY",
            )
            .await
        }));
    }
    for payment in payments {
        let (status, body) = payment.await.expect("payment task");
        assert_eq!(status, 200, "{body}");
    }
    // Deliver while watching: every look at the admin stock view lies between two counts
    // of delivered orders (an order becomes delivered and its stock sold in one write).
    let order_ids: Vec<String> = created
        .iter()
        .map(|o| o["order_id"].as_str().expect("id").to_owned())
        .collect();
    let delivering = tokio::spawn({
        let ctx = ctx.clone();
        async move { drain_delivery_queue(&ctx).await }
    });
    let mut looks_during_delivery = 0;
    while !delivering.is_finished() {
        let before = delivered_count(&ctx, &order_ids).await;
        let (_, product) = admin_product(&ctx, &sku).await;
        let sold = product["stock"]["sold"].as_i64().expect("sold");
        let after = delivered_count(&ctx, &order_ids).await;
        assert!(
            before <= sold && sold <= after,
            "stock view says {sold} sold between {before} and {after} delivered orders"
        );
        if before < 50 {
            looks_during_delivery += 1;
        }
    }
    delivering.await.expect("delivery task");
    assert!(looks_during_delivery > 0, "no look while delivering");

    let mut delivered = HashSet::new();
    for order in &created {
        let (status, view) = view_order(
            &ctx,
            order["order_id"].as_str().expect("id"),
            order["access_token"].as_str().expect("token"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(view["status"], "delivered", "{view}");
        let deliveries = view["deliveries"].as_array().expect("deliveries");
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0]["type"], "card_key");
        assert!(
            delivered.insert(deliveries[0]["code"].as_str().expect("code").to_owned()),
            "a key was delivered twice"
        );
    }
    let imported: HashSet<String> = keys.into_iter().collect();
    assert_eq!(delivered, imported);

    let (_, product) = admin_product(&ctx, &sku).await;
    assert_eq!(
        product["stock"],
        json!({"available": 0, "reserved": 0, "sold": 50})
    );
    let (_, public) = checkout(&ctx, request("GET", &format!("/products/{sku}"), &[], "")).await;
    assert_eq!(public["stock"], json!({"available": 0}));
    let _: Value = public;
}

async fn delivered_count(ctx: &std::sync::Arc<kami_shared::Context>, order_ids: &[String]) -> i64 {
    let mut delivered = 0;
    for order_id in order_ids {
        let order = ctx
            .store
            .get_order(order_id)
            .await
            .expect("read")
            .expect("order");
        if order.status == kami_shared::domain::order::OrderStatus::Delivered {
            delivered += 1;
        }
    }
    delivered
}

/// GIVEN 100 keys (on three counters: 49, 49 and 2) WHEN orders of 10 come one after
/// another THEN all ten succeed (the ninth and tenth draw from several counters at
/// once), the eleventh is refused, and all 100 keys are delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_for_several_units_use_stock_on_every_counter() {
    let ctx = context().await;
    let keys = make_keys("MULTI", 100);
    let sku = product_with_keys(&ctx, "multi", 100, 10, &keys).await;
    let mut created = Vec::new();
    for i in 0..10 {
        let (status, body) = order(&ctx, &sku, 10, &format!("idem-multi-{sku}-{i}")).await;
        assert_eq!(status, 201, "order {i}: {body}");
        created.push(body);
    }
    let (status, refused) = order(&ctx, &sku, 1, &format!("idem-multi-{sku}-last")).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("out_of_stock"))
    );
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 0, "reserved": 100, "sold": 0})
    );
    let mut split = 0;
    for order in &created {
        let id = order["order_id"].as_str().expect("id");
        let stored = ctx.store.get_order(id).await.expect("read").expect("order");
        split += usize::from(stored.stock_shards.len() > 1);
        let (status, body) = pay(&ctx, &format!("evt_multi_{id}"), id, 1000, "CNY").await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(split > 0, "some order was drawn from several counters");
    drain_delivery_queue(&ctx).await;
    let mut delivered = HashSet::new();
    for order in &created {
        let (_, view) = view_order(
            &ctx,
            order["order_id"].as_str().expect("id"),
            order["access_token"].as_str().expect("token"),
        )
        .await;
        assert_eq!(view["status"], "delivered", "{view}");
        for delivery in view["deliveries"].as_array().expect("deliveries") {
            assert!(delivered.insert(delivery["code"].as_str().expect("code").to_owned()));
        }
    }
    assert_eq!(delivered, keys.into_iter().collect::<HashSet<_>>());
    let shards = ctx.store.stock_shards(&sku, true).await.expect("stock");
    assert!(
        shards
            .iter()
            .all(|(_, s)| s.available == 0 && s.reserved == 0),
        "{shards:?}"
    );
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 0, "reserved": 0, "sold": 100})
    );
}

/// GIVEN 100 keys WHEN 40 buyers order 7 units each at once THEN no counter goes
/// below zero and exactly the units of the created orders are reserved (never more
/// than 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_multi_unit_orders_never_oversell() {
    let ctx = context().await;
    let sku = product_with_keys(&ctx, "multi-race", 100, 10, &make_keys("MRACE", 100)).await;
    let mut buyers = Vec::new();
    for i in 0..40 {
        let ctx = ctx.clone();
        let sku = sku.clone();
        buyers.push(tokio::spawn(async move {
            order(&ctx, &sku, 7, &format!("idem-mrace-{sku}-{i}")).await
        }));
    }
    let mut units = 0;
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer task");
        match status {
            201 => units += 7,
            409 => assert_eq!(body["error"]["code"], "out_of_stock", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(units <= 100);
    assert!(units >= 70, "only {units} units sold of 100");
    let shards = ctx.store.stock_shards(&sku, true).await.expect("stock");
    assert!(shards.iter().all(|(_, s)| s.available >= 0), "{shards:?}");
    assert_eq!(
        admin_product(&ctx, &sku).await.1["stock"],
        json!({"available": 100 - units, "reserved": units, "sold": 0})
    );
}

/// GIVEN a reservation split over two counters, one of which is short WHEN the order is
/// written THEN it is refused `out_of_stock` and neither counter moves (one transaction).
#[tokio::test]
async fn a_split_reservation_with_one_short_counter_moves_nothing() {
    use kami_shared::domain::time::{Timestamp, new_id};
    use kami_shared::error::{ConflictKind, Error};
    use kami_shared::fakes::order_fixture;
    use kami_shared::store::{OrderRecord, StockShare};

    let ctx = context().await;
    let sku = product_with_keys(&ctx, "split-short", 100, 10, &make_keys("SSHORT", 3)).await;
    let before = ctx.store.stock_shards(&sku, true).await.expect("stock");
    let (full, _) = before
        .iter()
        .find(|(_, stock)| stock.available == 3)
        .expect("the three keys are on one counter");
    let empty = (full + 1) % kami_shared::store::COUNTER_SHARDS;
    let order = OrderRecord {
        stock_shards: vec![
            StockShare {
                shard: *full,
                units: 3,
            },
            StockShare {
                shard: empty,
                units: 1,
            },
        ],
        ..order_fixture(&sku, 4, Timestamp::now())
    };
    let now = Timestamp::now();
    let outcome = ctx
        .store
        .create_order(
            &order,
            &[],
            &format!("idem-{}", new_id()),
            "source",
            "split",
            now,
        )
        .await;
    assert!(
        matches!(outcome, Err(Error::Conflict(ConflictKind::OutOfStock))),
        "refused"
    );
    let after = ctx.store.stock_shards(&sku, true).await.expect("stock");
    assert_eq!(format!("{after:?}"), format!("{before:?}"));
}
