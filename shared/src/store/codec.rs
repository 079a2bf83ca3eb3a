//! The one item codec: how values become DynamoDB attributes and back, and every item's
//! key (`keys`). docs/dynamodb.md lists the items these build.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::money::Money;
use crate::domain::product::DeliveryType;
use crate::error::{Error, Result};

pub type Item = HashMap<String, AttributeValue>;

/// Every item's `pk` / `sk`, and the sparse index's partitions.
pub(crate) mod keys {
    /// Sort-key prefixes of the items that share an order's partition.
    pub const ORDER_PREFIX: &str = "ORDER#";
    pub const ORDER_SK: &str = "ORDER";
    pub const EVENT_PREFIX: &str = "EVENT#";
    pub const DELIVERY_PREFIX: &str = "DELIVERY#";
    pub const PAYMENT_PREFIX: &str = "PAYMENT#";

    pub fn product(sku: &str) -> (String, String) {
        (format!("PRODUCT#{sku}"), "PRODUCT".into())
    }
    pub fn stock_counter(sku: &str, shard: u32) -> (String, String) {
        (format!("STOCKCOUNT#{sku}#{shard}"), "COUNTER".into())
    }
    pub fn batch(batch_id: &str) -> (String, String) {
        (format!("BATCH#{batch_id}"), "BATCH".into())
    }
    pub fn stock_partition(sku: &str, shard: u32) -> String {
        format!("STOCK#{sku}#{shard}")
    }
    pub fn stock_key(key_id: &str) -> String {
        format!("KEY#{key_id}")
    }
    pub fn fingerprint(fp: &str) -> (String, String) {
        (format!("FINGERPRINT#{fp}"), "FINGERPRINT".into())
    }
    pub fn order_partition(order_id: &str) -> String {
        format!("{ORDER_PREFIX}{order_id}")
    }
    /// The order id of an order partition's `pk`.
    pub fn order_id_of(pk: &str) -> Option<&str> {
        pk.strip_prefix(ORDER_PREFIX)
    }
    pub fn order(order_id: &str) -> (String, String) {
        (order_partition(order_id), ORDER_SK.into())
    }
    pub fn event(order_id: &str, event_id: &str) -> (String, String) {
        (
            order_partition(order_id),
            format!("{EVENT_PREFIX}{event_id}"),
        )
    }
    pub fn delivery(order_id: &str, slot: u32) -> (String, String) {
        (
            order_partition(order_id),
            format!("{DELIVERY_PREFIX}{slot:03}"),
        )
    }
    pub fn payment(order_id: &str, provider: &str, event_id: &str) -> (String, String) {
        (
            order_partition(order_id),
            format!("{PAYMENT_PREFIX}{provider}#{event_id}"),
        )
    }
    pub fn webhook(provider: &str, event_id: &str) -> (String, String) {
        (format!("WEBHOOK#{provider}#{event_id}"), "WEBHOOK".into())
    }
    /// Clients' idempotency keys are stored only as hashes (a replay reveals a token).
    pub fn idempotency(scope: &str, key: &str) -> (String, String) {
        let hashed = crate::domain::crypto::sha256_hex(key.as_bytes());
        (
            format!("IDEMPOTENCY#{scope}#{hashed}"),
            "IDEMPOTENCY".into(),
        )
    }
    /// A client's hold on a product's units; `holder` is already an HMAC (never an
    /// address or an email).
    pub fn hold(sku: &str, holder: &str) -> (String, String) {
        (format!("HOLD#{sku}#{holder}"), "HOLD".into())
    }
    /// Every payment channel, in one partition (a handful per deployment).
    pub const CHANNELS_PARTITION: &str = "CHANNEL#ALL";
    pub fn channel(channel_id: &str) -> (String, String) {
        (
            CHANNELS_PARTITION.to_owned(),
            format!("CHANNEL#{channel_id}"),
        )
    }
    /// Every supplier, in one partition (a handful per deployment).
    pub const SUPPLIERS_PARTITION: &str = "SUPPLIER#ALL";
    pub fn supplier(supplier_id: &str) -> (String, String) {
        (
            SUPPLIERS_PARTITION.to_owned(),
            format!("SUPPLIER#{supplier_id}"),
        )
    }
    /// A supplier's circuit breaker, an item of its own (written on failures).
    pub fn circuit(supplier_id: &str) -> (String, String) {
        (format!("SUPPLIER#{supplier_id}"), "CIRCUIT".into())
    }
    /// A line of an order's supplier history lives in its order's partition.
    pub const SUPPLIER_LOG_PREFIX: &str = "SUPPLIERLOG#";
    pub fn supplier_log(order_id: &str, entry_id: &str) -> (String, String) {
        (
            order_partition(order_id),
            format!("{SUPPLIER_LOG_PREFIX}{entry_id}"),
        )
    }
    /// A payment attempt lives in its order's partition.
    pub const ATTEMPT_PREFIX: &str = "ATTEMPT#";
    pub fn attempt(order_id: &str, payment_id: &str) -> (String, String) {
        (
            order_partition(order_id),
            format!("{ATTEMPT_PREFIX}{payment_id}"),
        )
    }
    pub const REFUND_PREFIX: &str = "REFUND#";
    pub fn refund(order_id: &str, refund_id: &str) -> (String, String) {
        (
            order_partition(order_id),
            format!("{REFUND_PREFIX}{refund_id}"),
        )
    }
    /// Pending attempts, by creation time, for the payment reconciler.
    pub fn attempts_index(shard: u32) -> String {
        format!("ATTEMPTS#{shard}")
    }
    pub fn pending_index(shard: u32) -> String {
        format!("PENDING#{shard}")
    }
    pub fn paid_index(shard: u32) -> String {
        format!("PAID#{shard}")
    }
    /// The one lease the expiry sweep's runs take in turn.
    pub fn sweep_lease() -> (String, String) {
        ("SWEEP#expiry".into(), "LEASE".into())
    }
    /// Orders that need a person (the exception queue, `gsi2`): one partition, by the time
    /// each began to need one.
    pub const EXCEPTIONS_INDEX: &str = "EXCEPTIONS";
    /// Every product, in `gsi1` (the stock audit's list).
    pub const PRODUCTS_INDEX: &str = "PRODUCTS";
    /// Money that names no order Kami can apply it to: few, kept forever, one partition.
    pub const UNMATCHED_INDEX: &str = "UNMATCHED";
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn b(value: Vec<u8>) -> AttributeValue {
    AttributeValue::B(Blob::new(value))
}

/// The key attributes of an item.
pub(crate) fn key_item((pk, sk): (String, String)) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// A whole item: its key, what kind of `entity` it is, and its attributes.
pub(crate) fn item<const N: usize>(
    key: (String, String),
    entity: &str,
    attributes: [(&str, AttributeValue); N],
) -> Item {
    let mut item = key_item(key);
    item.insert("entity".to_owned(), s(entity));
    item.extend(
        attributes
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    item
}

/// A value stored as its JSON text (a small nested setting, read whole).
pub(crate) fn json(value: &impl serde::Serialize) -> Result<AttributeValue> {
    serde_json::to_string(value)
        .map(s)
        .map_err(|_| Error::Corrupt("a stored setting does not serialise".into()))
}

pub(crate) fn get_opt_json<T: serde::de::DeserializeOwned>(
    item: &Item,
    name: &str,
) -> Result<Option<T>> {
    get_opt_s(item, name)
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|_| Error::Corrupt(format!("{name} is not the JSON it should be")))
        })
        .transpose()
}

pub(crate) fn get_s(item: &Item, name: &str) -> Result<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(Error::Corrupt(format!("item has no string {name}"))),
    }
}

pub(crate) fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(crate) fn get_n(item: &Item, name: &str) -> Result<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| Error::Corrupt(format!("{name} is not an integer"))),
        _ => Err(Error::Corrupt(format!("item has no number {name}"))),
    }
}

pub(crate) fn get_u32(item: &Item, name: &str) -> Result<u32> {
    u32::try_from(get_n(item, name)?).map_err(|_| Error::Corrupt(format!("{name} out of range")))
}

/// A number that older items may not have.
pub(crate) fn get_opt_u32(item: &Item, name: &str) -> Result<Option<u32>> {
    item.contains_key(name)
        .then(|| get_u32(item, name))
        .transpose()
}

pub(crate) fn get_b(item: &Item, name: &str) -> Result<Vec<u8>> {
    match item.get(name) {
        Some(AttributeValue::B(v)) => Ok(v.clone().into_inner()),
        _ => Err(Error::Corrupt(format!("item has no binary {name}"))),
    }
}

/// An amount in minor units stored as `amount_name`, with its `currency`.
pub(crate) fn get_money(item: &Item, amount_name: &str) -> Result<Money> {
    Ok(Money {
        amount: get_n(item, amount_name)?,
        currency: get_s(item, "currency")?,
    })
}

/// A delivery type stored as its name (`card_key`); an unknown one is corrupt data.
pub(crate) fn get_delivery_type(item: &Item, name: &str) -> Result<DeliveryType> {
    let stored = get_s(item, name)?;
    DeliveryType::parse(&stored)
        .map_err(|_| Error::Corrupt(format!("unknown delivery type {stored:?}")))
}

/// Reads a stored item back into its record type.
pub(crate) trait FromItem: Sized {
    fn from_item(item: &Item) -> Result<Self>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_carry_their_key_and_entity() {
        let built = item(keys::order("01ID"), "order", [("quantity", n(2))]);
        assert_eq!(get_s(&built, "pk").ok().as_deref(), Some("ORDER#01ID"));
        assert_eq!(get_s(&built, "sk").ok().as_deref(), Some("ORDER"));
        assert_eq!(get_s(&built, "entity").ok().as_deref(), Some("order"));
        assert_eq!(get_u32(&built, "quantity").ok(), Some(2));
        assert_eq!(built.len(), 4);
    }

    #[test]
    fn keys_keep_their_stored_shape() {
        assert_eq!(keys::delivery("X", 7).1, "DELIVERY#007");
        assert_eq!(keys::payment("X", "stripe", "evt").1, "PAYMENT#stripe#evt");
        assert_eq!(keys::event("X", "E").1, "EVENT#E");
        assert_eq!(keys::order_id_of("ORDER#X"), Some("X"));
        assert_eq!(keys::order_id_of("PRODUCT#X"), None);
        let (pk, sk) = keys::idempotency("orders", "key");
        assert!(pk.starts_with("IDEMPOTENCY#orders#") && !pk.ends_with("#key"));
        assert_eq!(sk, "IDEMPOTENCY");
    }

    #[test]
    fn wrong_types_are_corrupt_not_panics() {
        let built = item(keys::product("p"), "product", [("title", n(1))]);
        assert!(matches!(get_s(&built, "title"), Err(Error::Corrupt(_))));
        assert!(matches!(get_n(&built, "missing"), Err(Error::Corrupt(_))));
        assert!(matches!(get_b(&built, "title"), Err(Error::Corrupt(_))));
        assert_eq!(get_opt_s(&built, "title"), None);
    }
}
