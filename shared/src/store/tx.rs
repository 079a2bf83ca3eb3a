//! Transactions by name. Every item of a `TransactWriteItems` is added under an
//! `ItemName`, and a cancelled transaction answers by that name which items' conditions
//! failed: adding an item to a transaction never changes what a cancellation means.
//! DynamoDB reports cancellation reasons by position; this file is the only place that
//! turns positions into names.

use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update,
};

use super::codec::Item;
use super::{Store, built};
use crate::error::{Error, Result};

/// What an item is within its transaction: the name its cancellation reason is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemName {
    Product,
    /// A subscription (its renewal order made in the same transaction).
    Subscription,
    /// The stock counter of this shard.
    Counter(u32),
    /// The stock counter of this shard of a bundle's n-th counted part after the first
    /// (the first uses `Counter`).
    PartCounter(usize, u32),
    /// The fingerprint claimed for the i-th key an import transaction adds.
    Fingerprint(usize),
    /// The i-th key an import transaction adds to stock.
    ImportedKey(usize),
    /// The stock key an allocation takes out of stock.
    AllocatedKey,
    /// The delivery slot an allocation fills.
    Slot,
    Idempotency,
    /// The order item (a put, an update or a condition check).
    Order,
    /// The order event a transition appends.
    Event,
    Payment,
    /// The webhook dedupe record of a provider event.
    Webhook,
    /// A reconciliation mismatch filed in the exception queue.
    Mismatch,
    /// The i-th hold an order claims or releases.
    Hold(usize),
    /// The payment attempt a payment pays (or a refund gives money back from).
    Attempt,
    Refund,
    /// The line a top-up change appends to its order's supplier history.
    SupplierLog,
    /// The audit record of the operator's action the transaction carries out.
    Audit,
    /// A payment channel's item, and a supplier's.
    Channel,
    Supplier,
    /// The batch record of keys an operator typed.
    Batch,
    /// The i-th delivery slot an operator's substitute fills.
    SubstituteSlot(usize),
    /// The order's attribution to the i-th distributor of its chain.
    Attribution(usize),
    Distributor,
    /// The referral code a distributor takes, and the one it gives up.
    ReferralCode,
    OldReferralCode,
    /// A distributor's link under its parent, and the one under its old parent.
    ChildLink,
    OldChildLink,
    /// The i-th distributor of a chain checked unchanged.
    Ancestor(usize),
    /// A distributor's API key, and the one it replaces (a merchant key's list item).
    ApiKey,
    OldApiKey,
    /// The ledger entry of this level of an order's chain (or its clawback).
    Commission(u32),
    /// The i-th entry a statement settles, and its line.
    SettledEntry(usize),
    StatementLine(usize),
    Statement,
    /// A distributor's running balance in a currency.
    Balance,
    /// What Kami owes a supplier for a top-up it made.
    Payable,
    /// A generated license key's own item, and one of its active instances.
    License,
    Instance,
    /// A merchant API key's item found by its hash (its list item is `ApiKey`).
    ApiKeyHash,
    Entitlement,
    /// An entitlement's item in its account's listing.
    EntitlementListing,
    /// An account's membership of one name.
    Membership,
    Redemption,
    /// A delivered redemption link's own item.
    Link,
}

impl ItemName {
    /// The counter of `shard` on the order's `line`-th stock line (`stock_lines`).
    pub(crate) fn counter(line: usize, shard: u32) -> ItemName {
        match line {
            0 => ItemName::Counter(shard),
            _ => ItemName::PartCounter(line, shard),
        }
    }

    /// Whether it is a stock counter.
    pub(crate) fn is_counter(self) -> bool {
        matches!(self, ItemName::Counter(_) | ItemName::PartCounter(..))
    }
}

/// A `TransactWriteItems` being built: its items, each under its own name.
pub(crate) struct Tx {
    table: String,
    items: Vec<TransactWriteItem>,
    names: Vec<ItemName>,
    /// The order transitions it carries, counted (`crate::metrics`) once it commits.
    pub(crate) transitions: Vec<CountedTransition>,
}

/// An order's move as the metrics count it.
pub(crate) struct CountedTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub at: Timestamp,
    pub paid_at: Option<Timestamp>,
}

/// How a transaction ended.
#[derive(Debug)]
pub(crate) enum TxOutcome {
    Committed,
    /// At least one condition failed; nothing was written.
    Cancelled(Cancelled),
}

impl TxOutcome {
    pub(crate) fn committed(&self) -> bool {
        matches!(self, TxOutcome::Committed)
    }
}

/// The items of a cancelled transaction whose condition failed, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cancelled {
    failed: Vec<ItemName>,
}

const CONDITION_FAILED: &str = "ConditionalCheckFailed";

impl Cancelled {
    /// Reads DynamoDB's cancellation reasons (one code per item, in the order the items
    /// were added; `None` for an item that passed) as names. A list that does not match
    /// the items cannot be read by name, so it is an error rather than a guess.
    pub(crate) fn from_reasons(names: &[ItemName], codes: &[String]) -> Result<Self> {
        if names.len() != codes.len() {
            return Err(Error::Aws {
                service: "dynamodb",
                message: format!(
                    "transaction cancelled with {} reasons for {} items: {codes:?}",
                    codes.len(),
                    names.len()
                ),
            });
        }
        Ok(Cancelled {
            failed: names
                .iter()
                .zip(codes)
                .filter(|(_, code)| code.as_str() == CONDITION_FAILED)
                .map(|(name, _)| *name)
                .collect(),
        })
    }

    /// True when the item added under `name` was in the transaction and its condition
    /// failed.
    pub(crate) fn failed(&self, name: ItemName) -> bool {
        self.failed.contains(&name)
    }

    /// Every item whose condition failed, in the order they were added.
    pub(crate) fn failed_items(&self) -> impl Iterator<Item = ItemName> + '_ {
        self.failed.iter().copied()
    }
}

/// Names used in expressions; `#status`, `#ttl` and friends avoid DynamoDB's reserved
/// words. `None` when there are none: DynamoDB rejects an empty map.
fn names(list: &[&str]) -> Option<HashMap<String, String>> {
    (!list.is_empty()).then(|| {
        list.iter()
            .map(|name| (format!("#{name}"), (*name).to_owned()))
            .collect()
    })
}

fn values(list: Vec<(&str, AttributeValue)>) -> Option<HashMap<String, AttributeValue>> {
    (!list.is_empty()).then(|| list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

impl Tx {
    pub(crate) fn new(table: &str) -> Self {
        Tx {
            table: table.to_owned(),
            items: Vec::new(),
            names: Vec::new(),
            transitions: Vec::new(),
        }
    }

    fn push(&mut self, name: ItemName, item: TransactWriteItem) -> Result<&mut Self> {
        if self.names.contains(&name) {
            // Two items under one name could not be told apart in a cancellation.
            return Err(Error::Corrupt(format!(
                "transaction item {name:?} added twice"
            )));
        }
        self.names.push(name);
        self.items.push(item);
        Ok(self)
    }

    pub(crate) fn put(
        &mut self,
        name: ItemName,
        item: Item,
        condition: Option<&str>,
    ) -> Result<&mut Self> {
        self.put_if(name, item, condition, Vec::new())
    }

    /// A put whose condition compares with values (`version = :read`).
    pub(crate) fn put_if(
        &mut self,
        name: ItemName,
        item: Item,
        condition: Option<&str>,
        attribute_values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let put = built(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .set_condition_expression(condition.map(str::to_owned))
                .set_expression_attribute_values(values(attribute_values))
                .build(),
        )?;
        self.push(name, TransactWriteItem::builder().put(put).build())
    }

    pub(crate) fn update(
        &mut self,
        name: ItemName,
        key: Item,
        expression: &str,
        condition: Option<&str>,
        attribute_names: &[&str],
        attribute_values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let update = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(expression)
                .set_condition_expression(condition.map(str::to_owned))
                .set_expression_attribute_names(names(attribute_names))
                .set_expression_attribute_values(values(attribute_values))
                .build(),
        )?;
        self.push(name, TransactWriteItem::builder().update(update).build())
    }

    pub(crate) fn delete(
        &mut self,
        name: ItemName,
        key: Item,
        condition: &str,
    ) -> Result<&mut Self> {
        let delete = built(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .build(),
        )?;
        self.push(name, TransactWriteItem::builder().delete(delete).build())
    }

    pub(crate) fn check(
        &mut self,
        name: ItemName,
        key: Item,
        condition: &str,
        attribute_names: &[&str],
        attribute_values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        let check = built(
            ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .set_expression_attribute_names(names(attribute_names))
                .set_expression_attribute_values(values(attribute_values))
                .build(),
        )?;
        self.push(
            name,
            TransactWriteItem::builder().condition_check(check).build(),
        )
    }
}

const CONFLICT_RETRIES: u32 = 8;
const CONFLICT: &str = "TransactionConflict";

/// Whether the item added under `name` was cancelled by a conflict with another
/// transaction (reasons by position, as `Cancelled::from_reasons` reads them).
fn conflicted_on(names: &[ItemName], codes: &[String], name: ItemName) -> bool {
    names.len() == codes.len()
        && names
            .iter()
            .zip(codes)
            .any(|(item, code)| *item == name && code == CONFLICT)
}
const RETRYABLE_CANCELLATIONS: &[&str] = &[
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

impl Store {
    /// A new transaction on this store's table.
    pub(crate) fn tx(&self) -> Tx {
        Tx::new(&self.table)
    }

    /// Runs a transaction: committed, or cancelled by a failed condition (read by name);
    /// conflicts and throttling are retried with backoff, anything else is an error.
    ///
    /// Each call carries a `ClientRequestToken`. A retry after
    /// `TransactionInProgressException` (the first attempt may still commit) keeps it:
    /// it is the same call, which DynamoDB applies at most once, never a second
    /// transaction racing the first. A retry after a cancellation (nothing was
    /// written) takes a new one: it is a new call.
    pub(crate) async fn transact(&self, tx: Tx) -> Result<TxOutcome> {
        self.transact_yielding(tx, None)
            .await?
            .ok_or(Error::Contention("transaction"))
    }

    /// As `transact`, but a conflict on the item named `yield_on` (another transaction
    /// in progress on it: another worker taking the same stock key) is answered at once
    /// with `None` instead of retried, for a caller with another item to try.
    pub(crate) async fn transact_yielding(
        &self,
        tx: Tx,
        yield_on: Option<ItemName>,
    ) -> Result<Option<TxOutcome>> {
        let mut token = client_request_token();
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(tx.items.clone()))
                .client_request_token(token.as_str())
                .send()
                .await;
            let err = match result {
                Ok(_) => {
                    for t in &tx.transitions {
                        crate::metrics::transition(t.from, t.to, t.at, t.paid_at);
                    }
                    return Ok(Some(TxOutcome::Committed));
                }
                Err(err) => err,
            };
            let (reasons, retry) = match &err {
                SdkError::ServiceError(service) => match service.err() {
                    TransactWriteItemsError::TransactionCanceledException(cancel) => (
                        Some(
                            cancel
                                .cancellation_reasons()
                                .iter()
                                .map(|r| r.code().unwrap_or("None").to_owned())
                                .collect::<Vec<_>>(),
                        ),
                        RetryAs::NewCall,
                    ),
                    TransactWriteItemsError::TransactionInProgressException(_) => (
                        Some(vec!["TransactionConflict".to_owned()]),
                        RetryAs::SameCall,
                    ),
                    _ => (None, RetryAs::SameCall),
                },
                _ => (None, RetryAs::SameCall),
            };
            let Some(reasons) = reasons else {
                return Err(Error::aws("dynamodb", err));
            };
            if reasons.iter().any(|code| code == CONDITION_FAILED) {
                return Cancelled::from_reasons(&tx.names, &reasons)
                    .map(|cancelled| Some(TxOutcome::Cancelled(cancelled)));
            }
            if yield_on.is_some_and(|name| conflicted_on(&tx.names, &reasons, name)) {
                return Ok(None);
            }
            // Conflicts with concurrent transactions and throttling pass: retry those.
            // Anything else (validation, item collection size) will not: report it.
            if !reasons
                .iter()
                .any(|code| RETRYABLE_CANCELLATIONS.contains(&code.as_str()))
            {
                return Err(Error::Aws {
                    service: "dynamodb",
                    message: format!("transaction cancelled: {reasons:?}"),
                });
            }
            attempt += 1;
            if attempt > CONFLICT_RETRIES {
                return Err(Error::Contention("transaction"));
            }
            token = retry.token(token);
            let jitter = u64::from(rand::random::<u8>() % 20);
            tokio::time::sleep(std::time::Duration::from_millis(
                (5u64 << attempt.min(6)) + jitter,
            ))
            .await;
        }
    }
}

/// What the next attempt of a transaction is, by how the last one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryAs {
    /// The last attempt may still commit (`TransactionInProgressException`): send the
    /// same call again, same token, so it commits once at most.
    SameCall,
    /// The last attempt was cancelled and wrote nothing: a new call, new token.
    NewCall,
}

impl RetryAs {
    fn token(self, last: String) -> String {
        match self {
            RetryAs::SameCall => last,
            RetryAs::NewCall => client_request_token(),
        }
    }
}

/// The idempotency token of one `transact` call, kept by all its attempts (DynamoDB
/// remembers it for 10 minutes; 1 to 36 characters: a ULID is 26).
fn client_request_token() -> String {
    crate::domain::time::new_id()
}

#[cfg(test)]
mod tests {
    use super::ItemName::*;
    use super::*;
    use crate::store::codec::{key_item, keys};

    fn codes(list: &[&str]) -> Vec<String> {
        list.iter().map(|code| (*code).to_owned()).collect()
    }

    #[test]
    fn a_failed_item_is_found_by_its_name_wherever_it_stands() {
        let names = [Idempotency, Counter(3), Order, Event];
        let stock = Cancelled::from_reasons(
            &names,
            &codes(&["None", "ConditionalCheckFailed", "None", "None"]),
        )
        .expect("readable");
        assert!(stock.failed(Counter(3)));
        assert!(!stock.failed(Idempotency));
        assert!(
            !stock.failed(Counter(2)),
            "another shard's counter is another item"
        );

        // The same transaction with its items in another order means the same.
        let reordered = [Order, Event, Counter(3), Idempotency];
        let same = Cancelled::from_reasons(
            &reordered,
            &codes(&["None", "None", "ConditionalCheckFailed", "None"]),
        )
        .expect("readable");
        assert_eq!(same, stock);
    }

    #[test]
    fn several_failures_are_all_named_in_order() {
        let names = [
            Fingerprint(0),
            ImportedKey(0),
            Fingerprint(1),
            ImportedKey(1),
            Fingerprint(2),
            ImportedKey(2),
            Counter(0),
        ];
        let cancelled = Cancelled::from_reasons(
            &names,
            &codes(&[
                "ConditionalCheckFailed",
                "None",
                "None",
                "None",
                "ConditionalCheckFailed",
                "None",
                "None",
            ]),
        )
        .expect("readable");
        assert_eq!(
            cancelled.failed_items().collect::<Vec<_>>(),
            [Fingerprint(0), Fingerprint(2)]
        );
        assert!(!cancelled.failed(Counter(0)));
        assert!(!cancelled.failed(Fingerprint(1)));
    }

    #[test]
    fn other_codes_are_not_failed_conditions() {
        let cancelled = Cancelled::from_reasons(
            &[AllocatedKey, Slot, Order],
            &codes(&["TransactionConflict", "None", "ConditionalCheckFailed"]),
        )
        .expect("readable");
        assert_eq!(cancelled.failed_items().collect::<Vec<_>>(), [Order]);
    }

    #[test]
    fn a_conflict_is_read_by_the_name_of_the_item_it_was_on() {
        let names = [AllocatedKey, Slot, Order];
        let on_key = codes(&["TransactionConflict", "None", "None"]);
        assert!(conflicted_on(&names, &on_key, AllocatedKey));
        assert!(!conflicted_on(&names, &on_key, Order));
        let on_order = codes(&["None", "None", "TransactionConflict"]);
        assert!(!conflicted_on(&names, &on_order, AllocatedKey));
        let throttled = codes(&["ThrottlingError", "None", "None"]);
        assert!(!conflicted_on(&names, &throttled, AllocatedKey));
        // TransactionInProgressException names no item: not read as one.
        assert!(!conflicted_on(&names, &codes(&[CONFLICT]), AllocatedKey));
    }

    #[test]
    fn reasons_that_do_not_match_the_items_are_an_error() {
        let short = Cancelled::from_reasons(&[Webhook, Payment, Order], &codes(&["None"]));
        assert!(matches!(short, Err(Error::Aws { .. })), "{short:?}");
    }

    #[test]
    fn a_transaction_in_progress_is_retried_with_the_same_token() {
        let first = client_request_token();
        assert!((1..=36).contains(&first.len()));
        assert_eq!(RetryAs::SameCall.token(first.clone()), first);
        let renewed = RetryAs::NewCall.token(first.clone());
        assert_ne!(renewed, first, "a cancelled call is retried as a new one");
    }

    #[test]
    fn an_item_name_is_used_once_per_transaction() {
        let mut tx = Tx::new("table");
        let key = || key_item(keys::order("01ID"));
        assert!(
            tx.check(Order, key(), "attribute_exists(pk)", &[], Vec::new())
                .is_ok()
        );
        assert!(tx.delete(Slot, key(), "attribute_exists(pk)").is_ok());
        let twice = tx.delete(Order, key(), "attribute_exists(pk)");
        assert!(matches!(twice, Err(Error::Corrupt(_))));
        assert_eq!(tx.names, [Order, Slot]);
        assert_eq!(tx.items.len(), 2);
    }
}
