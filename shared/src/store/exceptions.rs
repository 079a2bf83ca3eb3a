//! The exception queue: orders that need a person (`delivery_failed`,
//! `payment_exception`, `paid_after_expiry`), in the sparse index `gsi2` from the
//! transition that puts them there until the one that ends it (`Tx::move_order`), keyed
//! by when they began to need one. The index carries what a listing shows, so a page is
//! one Query.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{FromItem, Item, get_opt_s, get_s, keys, s};
use super::{EXCEPTION_INDEX, Store};
use crate::domain::order::OrderStatus;
use crate::error::{Error, Result};

/// One order in the exception queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ExceptionEntry {
    pub order_id: String,
    /// Why it needs a person: the status it is in (`delivery_failed`,
    /// `payment_exception`, `paid_after_expiry`).
    pub cause: String,
    /// The detail: a delivery's failure code (`no_supplier_succeeded`,
    /// `supplier_outcome_unknown`, ...) or a payment's outcome (`amount_mismatch`, ...).
    pub exception: Option<String>,
    pub status: OrderStatus,
    pub sku: String,
    /// When it began to need a person.
    pub since: String,
    pub updated_at: String,
}

impl FromItem for ExceptionEntry {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(ExceptionEntry {
            order_id: get_s(item, "order_id")?,
            cause: get_s(item, "exception_cause")?,
            exception: get_opt_s(item, "exception"),
            status: OrderStatus::parse(&get_s(item, "status")?)?,
            sku: get_s(item, "sku")?,
            since: get_s(item, "gsi2sk")?,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

/// What a page of the queue is read with.
#[derive(Debug, Clone, Default)]
pub struct ExceptionFilter {
    /// A cause or an exception detail (`supplier_outcome_unknown`).
    pub cause: Option<String>,
    /// Only orders that began to need a person at or before this (RFC 3339, UTC ms).
    pub since_at_most: Option<String>,
    pub newest_first: bool,
    pub limit: i32,
}

impl Store {
    /// Access pattern: one page of the exception queue (`gsi2`, one Query), from
    /// `start` (the previous page's `LastEvaluatedKey`); the key to go on from, if any.
    pub async fn exceptions(
        &self,
        filter: &ExceptionFilter,
        start: Option<Item>,
    ) -> Result<(Vec<ExceptionEntry>, Option<Item>)> {
        let mut query = self
            .query()
            .index_name(EXCEPTION_INDEX)
            .expression_attribute_values(":pk", s(keys::EXCEPTIONS_INDEX))
            .scan_index_forward(!filter.newest_first)
            .limit(filter.limit)
            .set_exclusive_start_key(start);
        query = match &filter.since_at_most {
            Some(at_most) => query
                .key_condition_expression("gsi2pk = :pk AND gsi2sk <= :at_most")
                .expression_attribute_values(":at_most", s(at_most)),
            None => query.key_condition_expression("gsi2pk = :pk"),
        };
        if let Some(cause) = &filter.cause {
            query = query
                .filter_expression("exception_cause = :cause OR #exception = :cause")
                .expression_attribute_names("#exception", "exception")
                .expression_attribute_values(":cause", s(cause));
        }
        let output = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let entries = output
            .items()
            .iter()
            .map(ExceptionEntry::from_item)
            .collect::<Result<Vec<_>>>()?;
        Ok((entries, output.last_evaluated_key().cloned()))
    }
}

/// The names of the attributes a page's `LastEvaluatedKey` has (the table's key and the
/// index's), all strings.
pub const CURSOR_KEYS: [&str; 4] = ["pk", "sk", "gsi2pk", "gsi2sk"];

/// A `LastEvaluatedKey` as plain strings (for an opaque cursor), and back.
pub fn cursor_fields(key: &Item) -> Result<Vec<(String, String)>> {
    CURSOR_KEYS
        .iter()
        .map(|name| Ok(((*name).to_owned(), get_s(key, name)?)))
        .collect()
}

/// The key a cursor's fields name; `None` if they are not one of this queue's keys.
pub fn cursor_key(fields: &[(String, String)]) -> Option<Item> {
    let key: Item = fields
        .iter()
        .filter(|(name, _)| CURSOR_KEYS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), AttributeValue::S(value.clone())))
        .collect();
    let valid = key.len() == CURSOR_KEYS.len()
        && get_s(&key, "gsi2pk").is_ok_and(|pk| pk == keys::EXCEPTIONS_INDEX)
        && get_s(&key, "pk").is_ok_and(|pk| keys::order_id_of(&pk).is_some());
    valid.then_some(key)
}
