//! Products and their stock: the product item, and its `COUNTER_SHARDS` stock counters
//! (available / reserved / sold), whose sum is the product's stock.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{
    FromItem, Item, get_delivery_type, get_money, get_n, get_opt_json, get_opt_u32, get_s, get_u32,
    item, json, key_item, keys, n, s,
};
use super::orders::{OrderRecord, StockShare};
use super::tx::{ItemName, Tx, TxOutcome};
use super::{AuditEntry, COUNTER_SHARDS, Store};
use crate::domain::card_key::CardKeyRules;
use crate::domain::product::{PendingLimits, Product, Stock};
use crate::error::{ConflictKind, Error, Result};

impl FromItem for Product {
    fn from_item(item: &Item) -> Result<Product> {
        let max_per_order = get_u32(item, "max_per_order")?;
        // Products created before the limits existed get the defaults.
        let defaults = PendingLimits::defaults(max_per_order);
        Ok(Product {
            sku: get_s(item, "sku")?,
            title: get_s(item, "title")?,
            price: get_money(item, "price_amount")?,
            delivery: get_delivery_type(item, "delivery_type")?,
            max_per_order,
            // Products created before the setting existed compare keys exactly.
            card_keys: CardKeyRules {
                case_sensitive: item
                    .get("case_sensitive_keys")
                    .and_then(|value| value.as_bool().ok())
                    .copied()
                    .unwrap_or(true),
            },
            pending_limits: PendingLimits {
                per_address: get_opt_u32(item, "pending_per_address")?
                    .unwrap_or(defaults.per_address),
                per_email: get_opt_u32(item, "pending_per_email")?.unwrap_or(defaults.per_email),
            },
            reservation_seconds: get_opt_u32(item, "reservation_seconds")?,
            top_up: get_opt_json(item, "top_up")?,
            license: get_opt_json(item, "license")?,
            grant: get_opt_json(item, "grant")?,
            link: get_opt_json(item, "link")?,
            bundle: get_opt_json(item, "bundle")?,
            link_secret: item
                .contains_key("link_secret_seal_id")
                .then(|| super::SealedSecrets::read_from(item, "link_secret"))
                .transpose()?,
            goods_in_notifications: item
                .get("goods_in_notifications")
                .and_then(|value| value.as_bool().ok())
                .copied()
                .unwrap_or(false),
            created_at: get_s(item, "created_at")?,
        })
    }
}

/// How an order's units move between a stock counter's columns.
#[derive(Clone, Copy)]
pub(crate) enum StockMove {
    /// available → reserved, only if enough is available.
    Reserve,
    /// reserved → available (an expired order).
    Release,
    /// reserved → sold (a delivered order).
    Sell,
}

impl Tx {
    /// Moves every unit `order` holds (its own, or each counted part's of a bundle).
    pub(crate) fn move_order_stock(
        &mut self,
        order: &OrderRecord,
        movement: StockMove,
    ) -> Result<&mut Self> {
        for (line, (sku, shares)) in order.stock_lines().into_iter().enumerate() {
            self.move_stock((line, sku), shares, movement)?;
        }
        Ok(self)
    }

    /// Ends every reservation `order` holds that was partly delivered: of each line
    /// (`stock_lines`), the units `delivered` says were handed out are sold, the rest go
    /// back.
    pub(crate) fn settle_order_stock(
        &mut self,
        order: &OrderRecord,
        delivered: impl Fn(&str) -> u32,
    ) -> Result<&mut Self> {
        for (line, (sku, shares)) in order.stock_lines().into_iter().enumerate() {
            self.settle_stock((line, sku), shares, delivered(sku))?;
        }
        Ok(self)
    }

    /// Moves an order's units on each counter they are reserved on (`ItemName::Counter`
    /// per share): with `Reserve`, each counter must hold its share.
    pub(crate) fn move_stock(
        &mut self,
        (line, sku): (usize, &str),
        shares: &[StockShare],
        movement: StockMove,
    ) -> Result<&mut Self> {
        let (expression, condition, columns): (_, _, &[&str]) = match movement {
            StockMove::Reserve => (
                "SET #available = #available - :q, #reserved = #reserved + :q",
                Some("#available >= :q"),
                &["available", "reserved"],
            ),
            StockMove::Release => (
                "SET #available = #available + :q, #reserved = #reserved - :q",
                None,
                &["available", "reserved"],
            ),
            StockMove::Sell => (
                "SET #reserved = #reserved - :q, #sold = #sold + :q",
                None,
                &["reserved", "sold"],
            ),
        };
        for share in shares {
            self.update(
                ItemName::counter(line, share.shard),
                key_item(keys::stock_counter(sku, share.shard)),
                expression,
                condition,
                columns,
                vec![(":q", n(share.units))],
            )?;
        }
        Ok(self)
    }

    /// Ends a reservation that was partly delivered: `delivered` of the order's units
    /// (the first ones, share by share) are sold, the rest go back to available. One
    /// update per counter, so a counter holding both kinds is written once.
    pub(crate) fn settle_stock(
        &mut self,
        (line, sku): (usize, &str),
        shares: &[StockShare],
        delivered: u32,
    ) -> Result<&mut Self> {
        let mut to_sell = delivered;
        for share in shares {
            let sold = to_sell.min(share.units);
            to_sell -= sold;
            self.update(
                ItemName::counter(line, share.shard),
                key_item(keys::stock_counter(sku, share.shard)),
                "SET #available = #available + :released, #reserved = #reserved - :q, #sold = #sold + :sold",
                None,
                &["available", "reserved", "sold"],
                vec![
                    (":q", n(share.units)),
                    (":released", n(share.units - sold)),
                    (":sold", n(sold)),
                ],
            )?;
        }
        Ok(self)
    }
}

impl Store {
    /// Access pattern: get a product by sku (without its stock counts).
    pub async fn get_product(&self, sku: &str, consistent: bool) -> Result<Option<Product>> {
        self.get_as(keys::product(sku), consistent).await
    }

    /// Access pattern: a product's stock, per counter shard (one BatchGetItem).
    pub async fn stock_shards(&self, sku: &str, consistent: bool) -> Result<Vec<(u32, Stock)>> {
        let keys: Vec<Item> = (0..COUNTER_SHARDS)
            .map(|shard| key_item(keys::stock_counter(sku, shard)))
            .collect();
        let mut shards = self
            .batch_get(keys, consistent, "stock read")
            .await?
            .iter()
            .map(|item| {
                Ok((
                    get_u32(item, "shard")?,
                    Stock {
                        available: get_n(item, "available")?,
                        reserved: get_n(item, "reserved")?,
                        sold: get_n(item, "sold")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        shards.sort_by_key(|(shard, _)| *shard);
        Ok(shards)
    }

    /// A product's total stock over its counter shards.
    pub async fn stock(&self, sku: &str, consistent: bool) -> Result<Stock> {
        Ok(self.stock_shards(sku, consistent).await?.into_iter().fold(
            Stock::default(),
            |total, (_, shard)| Stock {
                available: total.available + shard.available,
                reserved: total.reserved + shard.reserved,
                sold: total.sold + shard.sold,
            },
        ))
    }

    /// Access pattern: one page of every product's sku (gsi1 `PRODUCTS`, keys only), from
    /// after `after`; the last sku when there may be more.
    pub async fn product_skus(
        &self,
        after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<String>, Option<String>)> {
        let start = after.map(|sku| {
            let (pk, sk) = keys::product(sku);
            [
                ("pk", s(pk)),
                ("sk", s(sk)),
                ("gsi1pk", s(keys::PRODUCTS_INDEX)),
                ("gsi1sk", n(0)),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
        });
        let output = self
            .query()
            .index_name(super::ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk")
            .expression_attribute_values(":pk", s(keys::PRODUCTS_INDEX))
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let skus = output
            .items()
            .iter()
            .filter_map(|item| get_s(item, "pk").ok())
            .filter_map(|pk| pk.strip_prefix("PRODUCT#").map(str::to_owned))
            .collect::<Vec<_>>();
        let next = output
            .last_evaluated_key()
            .and_then(|_| skus.last().cloned());
        Ok((skus, next))
    }

    /// Access pattern: create a product and its zeroed stock counters in one
    /// transaction with its audit record; an existing sku is a conflict.
    pub async fn create_product(&self, product: &Product, audit: &AuditEntry) -> Result<()> {
        let mut stored = item(
            keys::product(&product.sku),
            "product",
            [
                ("sku", s(&product.sku)),
                ("title", s(&product.title)),
                ("price_amount", n(product.price.amount)),
                ("currency", s(&product.price.currency)),
                ("delivery_type", s(product.delivery.as_str())),
                ("max_per_order", n(product.max_per_order)),
                (
                    "case_sensitive_keys",
                    AttributeValue::Bool(product.card_keys.case_sensitive),
                ),
                ("pending_per_address", n(product.pending_limits.per_address)),
                ("pending_per_email", n(product.pending_limits.per_email)),
                ("created_at", s(&product.created_at)),
            ],
        );
        if let Some(seconds) = product.reservation_seconds {
            stored.insert("reservation_seconds".to_owned(), n(seconds));
        }
        if product.goods_in_notifications {
            stored.insert(
                "goods_in_notifications".to_owned(),
                AttributeValue::Bool(true),
            );
        }
        // Every product in one partition of `gsi1` (keys only): the stock audit lists
        // them without a scan.
        stored.insert("gsi1pk".to_owned(), s(keys::PRODUCTS_INDEX));
        stored.insert("gsi1sk".to_owned(), n(0));
        if let Some(top_up) = &product.top_up {
            stored.insert("top_up".to_owned(), json(top_up)?);
        }
        if let Some(license) = &product.license {
            stored.insert("license".to_owned(), json(license)?);
        }
        if let Some(grant) = &product.grant {
            stored.insert("grant".to_owned(), json(grant)?);
        }
        if let Some(link) = &product.link {
            stored.insert("link".to_owned(), json(link)?);
        }
        if let Some(bundle) = &product.bundle {
            stored.insert("bundle".to_owned(), json(bundle)?);
        }
        if let Some(secret) = &product.link_secret {
            secret.store_in(&mut stored, "link_secret");
        }
        let mut tx = self.tx();
        tx.put(ItemName::Product, stored, Some("attribute_not_exists(pk)"))?;
        // A top-up's budget is spread over the counters (the first get the remainder).
        let initial = product.initial_stock();
        for shard in 0..COUNTER_SHARDS {
            let share = initial / COUNTER_SHARDS + u32::from(shard < initial % COUNTER_SHARDS);
            tx.put(
                ItemName::Counter(shard),
                item(
                    keys::stock_counter(&product.sku, shard),
                    "stock_counter",
                    [
                        ("shard", n(shard)),
                        ("available", n(share)),
                        ("reserved", n(0)),
                        ("sold", n(0)),
                    ],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        tx.audit(audit)?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(()),
            // The product or one of its counters exists: the sku is taken.
            TxOutcome::Cancelled(_) => Err(Error::Conflict(ConflictKind::ProductExists)),
        }
    }
}
