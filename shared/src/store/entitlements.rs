//! Entitlements (docs/dynamodb.md, "Entitlements"): one item per entitlement
//! (`ENTITLEMENT#{id}` / `ENTITLEMENT`) with its redemptions in the same partition
//! (`REDEMPTION#{redemption_id}`); per account a listing item per entitlement
//! (`ACCOUNT#{account_id}` / `ENT#{id}`) and one per membership name
//! (`MEMBERSHIP#{name}`, so a membership stays one record however often it is bought).
//! A grant is written with its delivery record (`DELIVERY#000` in the order's partition)
//! in one transaction conditional on the order still awaiting delivery.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, get_u32, item, key_item, keys, n, s};
use super::tx::{ItemName, Tx, TxOutcome};
use super::{OrderRecord, Store};
use crate::domain::entitlement::EntitlementKind;
use crate::domain::product::DeliveryType;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

const ENTITLEMENT_SK: &str = "ENTITLEMENT";
const REDEMPTION_PREFIX: &str = "REDEMPTION#";
const LISTED_PREFIX: &str = "ENT#";
/// The one partition of `gsi1` holding entitlements with an end, by their end (Unix s),
/// until their expiry reminder is queued.
const ENDING_INDEX: &str = "ENDING";

fn entitlement_pk(entitlement_id: &str) -> String {
    format!("ENTITLEMENT#{entitlement_id}")
}
fn entitlement_key(entitlement_id: &str) -> (String, String) {
    (entitlement_pk(entitlement_id), ENTITLEMENT_SK.into())
}
fn account_pk(account_id: &str) -> String {
    format!("ACCOUNT#{account_id}")
}
fn listed_key(account_id: &str, entitlement_id: &str) -> (String, String) {
    (
        account_pk(account_id),
        format!("{LISTED_PREFIX}{entitlement_id}"),
    )
}
fn membership_key(account_id: &str, name: &str) -> (String, String) {
    (account_pk(account_id), format!("MEMBERSHIP#{name}"))
}
fn redemption_key(entitlement_id: &str, redemption_id: &str) -> (String, String) {
    (
        entitlement_pk(entitlement_id),
        format!("{REDEMPTION_PREFIX}{redemption_id}"),
    )
}

/// An entitlement as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementRecord {
    pub entitlement_id: String,
    pub account_id: String,
    pub kind: EntitlementKind,
    pub name: String,
    pub starts_at: Timestamp,
    /// No end when absent (a count card without `valid_days`).
    pub ends_at: Option<Timestamp>,
    /// Count cards only.
    pub uses_left: Option<u32>,
    pub revoked_at: Option<String>,
    /// The orders that granted or extended it, oldest first.
    pub source_orders: Vec<String>,
    /// Rises with every extension: an extension is conditional on the one it read.
    pub version: i64,
}

impl FromItem for EntitlementRecord {
    fn from_item(item: &Item) -> Result<Self> {
        let opt_n = |name: &str| {
            item.contains_key(name)
                .then(|| get_n(item, name))
                .transpose()
        };
        Ok(EntitlementRecord {
            entitlement_id: get_s(item, "entitlement_id")?,
            account_id: get_s(item, "account_id")?,
            kind: EntitlementKind::parse(&get_s(item, "kind")?)?,
            name: get_s(item, "name")?,
            starts_at: Timestamp(get_n(item, "starts_at")?),
            ends_at: opt_n("ends_at")?.map(Timestamp),
            uses_left: item
                .contains_key("uses_left")
                .then(|| get_u32(item, "uses_left"))
                .transpose()?,
            revoked_at: get_opt_s(item, "revoked_at"),
            source_orders: match item.get("source_orders") {
                Some(AttributeValue::L(orders)) => orders
                    .iter()
                    .filter_map(|order| order.as_s().ok().cloned())
                    .collect(),
                _ => Vec::new(),
            },
            version: get_n(item, "version")?,
        })
    }
}

/// The delivery record of a membership or count card: the entitlement it granted or
/// extended.
#[derive(Debug, Clone)]
pub struct GrantSlot {
    /// 0, or its bundle part's first slot.
    pub slot: u32,
    pub kind: DeliveryType,
    pub entitlement_id: String,
}

impl FromItem for GrantSlot {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(GrantSlot {
            slot: super::codec::get_opt_u32(item, "slot")?.unwrap_or(0),
            kind: super::codec::get_delivery_type(item, "type")?,
            entitlement_id: get_s(item, "entitlement_id")?,
        })
    }
}

/// One consumption of a count card, as first answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedemptionRecord {
    pub redemption_id: String,
    pub uses: u32,
    pub at: String,
    /// What the first answer said was left (absent until it was answered).
    pub uses_left: Option<u32>,
}

impl FromItem for RedemptionRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(RedemptionRecord {
            redemption_id: get_s(item, "redemption_id")?,
            uses: get_u32(item, "uses")?,
            at: get_s(item, "at")?,
            uses_left: item
                .contains_key("uses_left")
                .then(|| get_u32(item, "uses_left"))
                .transpose()?,
        })
    }
}

/// What writing a grant came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    Written,
    /// An earlier attempt granted this order already.
    SlotFilled,
    NotPayable,
    /// The membership was created or extended meanwhile: read it again.
    Raced,
}

/// What a redemption came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    Redeemed,
    /// This redemption id was used before (its record).
    Seen(RedemptionRecord),
    /// Fewer uses left than asked, expired or revoked: the caller reads which.
    Refused,
}

fn entitlement_item(record: &EntitlementRecord) -> Item {
    let mut stored = item(
        entitlement_key(&record.entitlement_id),
        "entitlement",
        [
            ("entitlement_id", s(&record.entitlement_id)),
            ("account_id", s(&record.account_id)),
            ("kind", s(record.kind.as_str())),
            ("name", s(&record.name)),
            ("starts_at", n(record.starts_at.0)),
            (
                "source_orders",
                AttributeValue::L(record.source_orders.iter().map(s).collect()),
            ),
            ("version", n(record.version)),
        ],
    );
    if let Some(end) = record.ends_at {
        stored.insert("ends_at".to_owned(), n(end.0));
        // In the sweep's queue of ending entitlements (expiry reminders).
        stored.insert("gsi1pk".to_owned(), s(ENDING_INDEX));
        stored.insert("gsi1sk".to_owned(), n(end.unix_seconds()));
    }
    if let Some(uses) = record.uses_left {
        stored.insert("uses_left".to_owned(), n(uses));
    }
    stored
}

impl Tx {
    /// The order's one grant record, only if absent (`ItemName::Slot`), and the order
    /// still awaiting delivery (`ItemName::Order`).
    fn grant_slot(
        &mut self,
        order: &OrderRecord,
        kind: DeliveryType,
        entitlement_id: &str,
        now: Timestamp,
    ) -> Result<&mut Self> {
        self.put(
            ItemName::Slot,
            item(
                keys::delivery(&order.order_id, order.slot_base),
                "delivery",
                [
                    ("type", s(kind.as_str())),
                    ("slot", n(order.slot_base)),
                    ("entitlement_id", s(entitlement_id)),
                    ("allocated_at", s(now.to_rfc3339())),
                ],
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        self.awaiting_delivery(order)
    }
}

fn grant_outcome(outcome: TxOutcome) -> GrantOutcome {
    match outcome {
        TxOutcome::Committed => GrantOutcome::Written,
        TxOutcome::Cancelled(c) if c.failed(ItemName::Order) => GrantOutcome::NotPayable,
        TxOutcome::Cancelled(c) if c.failed(ItemName::Slot) => GrantOutcome::SlotFilled,
        TxOutcome::Cancelled(_) => GrantOutcome::Raced,
    }
}

impl Store {
    /// Access pattern: the membership of this name an account holds (its id).
    pub async fn membership_of(&self, account_id: &str, name: &str) -> Result<Option<String>> {
        Ok(
            match self.get(membership_key(account_id, name), true).await? {
                Some(found) => Some(get_s(&found, "entitlement_id")?),
                None => None,
            },
        )
    }

    /// Access pattern: one entitlement.
    pub async fn entitlement(&self, entitlement_id: &str) -> Result<Option<EntitlementRecord>> {
        self.get_as(entitlement_key(entitlement_id), true).await
    }

    /// Access pattern: a new entitlement for an order — its grant record, the
    /// entitlement, its account listing and, for a membership, the account's membership
    /// of that name (only if it has none: `Raced` otherwise) — in one transaction.
    pub async fn grant_new(
        &self,
        order: &OrderRecord,
        kind: DeliveryType,
        record: &EntitlementRecord,
        now: Timestamp,
    ) -> Result<GrantOutcome> {
        let mut tx = self.tx();
        tx.grant_slot(order, kind, &record.entitlement_id, now)?;
        tx.put(
            ItemName::Entitlement,
            entitlement_item(record),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.put(
            ItemName::EntitlementListing,
            item(
                listed_key(&record.account_id, &record.entitlement_id),
                "entitlement_listing",
                [("entitlement_id", s(&record.entitlement_id))],
            ),
            None,
        )?;
        if record.kind == EntitlementKind::Membership {
            tx.put(
                ItemName::Membership,
                item(
                    membership_key(&record.account_id, &record.name),
                    "membership",
                    [("entitlement_id", s(&record.entitlement_id))],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        Ok(grant_outcome(self.transact(tx).await?))
    }

    /// Access pattern: a membership extended by an order — its grant record and the new
    /// period, conditional on the version `current` was read at (`Raced` otherwise).
    pub async fn extend_membership(
        &self,
        order: &OrderRecord,
        current: &EntitlementRecord,
        (starts_at, ends_at): (Timestamp, Timestamp),
        now: Timestamp,
    ) -> Result<GrantOutcome> {
        let mut tx = self.tx();
        tx.grant_slot(order, order.delivery_type, &current.entitlement_id, now)?;
        tx.update(
            ItemName::Entitlement,
            key_item(entitlement_key(&current.entitlement_id)),
            "SET starts_at = :starts, ends_at = :ends, version = version + :one, \
             source_orders = list_append(source_orders, :order), \
             gsi1pk = :ending, gsi1sk = :ends_s",
            Some("version = :v"),
            &[],
            vec![
                (":starts", n(starts_at.0)),
                (":ends", n(ends_at.0)),
                (":ending", s(ENDING_INDEX)),
                (":ends_s", n(ends_at.unix_seconds())),
                (":one", n(1)),
                (":order", AttributeValue::L(vec![s(&order.order_id)])),
                (":v", n(current.version)),
            ],
        )?;
        Ok(grant_outcome(self.transact(tx).await?))
    }

    /// Access pattern: the entitlements ending by `by` whose reminder is not queued yet,
    /// soonest first (one Query of `gsi1` `ENDING`, keys only).
    pub async fn ending_entitlements(&self, by: Timestamp, limit: i32) -> Result<Vec<String>> {
        self.due_in_gsi1(ENDING_INDEX, by, limit, "ENTITLEMENT#")
            .await
    }

    /// Access pattern: an entitlement out of the ending queue (its reminder queued, or
    /// none needed), or back in it at its real end (`at`: a queue time that was early),
    /// conditional on the version read (an extension meanwhile re-queued it itself).
    pub async fn requeue_ending(
        &self,
        record: &EntitlementRecord,
        at: Option<Timestamp>,
    ) -> Result<bool> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(entitlement_key(&record.entitlement_id))))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", n(record.version));
        request = match at {
            Some(at) => request
                .update_expression("SET gsi1pk = :ending, gsi1sk = :at")
                .expression_attribute_values(":ending", s(ENDING_INDEX))
                .expression_attribute_values(":at", n(at.unix_seconds())),
            None => request.update_expression("REMOVE gsi1pk, gsi1sk"),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(err) if super::condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Access pattern: an account's entitlements (one Query of its listing, then
    /// BatchGetItem).
    pub async fn account_entitlements(&self, account_id: &str) -> Result<Vec<EntitlementRecord>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :listed)")
            .expression_attribute_values(":pk", s(account_pk(account_id)))
            .expression_attribute_values(":listed", s(LISTED_PREFIX));
        let keys: Vec<Item> = self
            .query_all(query)
            .await?
            .iter()
            .map(|found| Ok(key_item(entitlement_key(&get_s(found, "entitlement_id")?))))
            .collect::<Result<_>>()?;
        self.records_at(keys, "account entitlements").await
    }

    /// Access pattern: an entitlement's redemptions, oldest first (one Query).
    pub async fn redemptions(&self, entitlement_id: &str) -> Result<Vec<RedemptionRecord>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :r)")
            .expression_attribute_values(":pk", s(entitlement_pk(entitlement_id)))
            .expression_attribute_values(":r", s(REDEMPTION_PREFIX));
        let mut found: Vec<RedemptionRecord> = self
            .query_all(query)
            .await?
            .iter()
            .map(RedemptionRecord::from_item)
            .collect::<Result<_>>()?;
        found.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(found)
    }

    /// Access pattern: consume `uses` of a count card under the merchant's
    /// `redemption_id`, once: the redemption recorded only if new, and the uses taken
    /// only while enough are left and the card is live, in one transaction. Never below
    /// zero, whatever runs at the same time.
    pub async fn redeem(
        &self,
        entitlement_id: &str,
        redemption_id: &str,
        uses: u32,
        now: Timestamp,
    ) -> Result<RedeemOutcome> {
        let mut tx = self.tx();
        tx.put(
            ItemName::Redemption,
            item(
                redemption_key(entitlement_id, redemption_id),
                "redemption",
                [
                    ("redemption_id", s(redemption_id)),
                    ("uses", n(uses)),
                    ("at", s(now.to_rfc3339())),
                ],
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.update(
            ItemName::Entitlement,
            key_item(entitlement_key(entitlement_id)),
            "SET uses_left = uses_left - :uses",
            Some(
                "uses_left >= :uses AND attribute_not_exists(revoked_at) \
                 AND (attribute_not_exists(ends_at) OR ends_at > :now)",
            ),
            &[],
            vec![(":uses", n(uses)), (":now", n(now.0))],
        )?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(RedeemOutcome::Redeemed),
            TxOutcome::Cancelled(c) if c.failed(ItemName::Redemption) => self
                .get_as(redemption_key(entitlement_id, redemption_id), true)
                .await?
                .map(RedeemOutcome::Seen)
                .ok_or(Error::Contention("redemption")),
            TxOutcome::Cancelled(_) => Ok(RedeemOutcome::Refused),
        }
    }

    /// Access pattern: the answer a redemption first got, kept so a retry gets the same
    /// one (set once). Returns the answer that stands.
    pub async fn answer_redemption(
        &self,
        entitlement_id: &str,
        redemption_id: &str,
        uses_left: u32,
    ) -> Result<u32> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(redemption_key(
                entitlement_id,
                redemption_id,
            ))))
            .update_expression("SET uses_left = :left")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(uses_left)")
            .expression_attribute_values(":left", n(uses_left))
            .send()
            .await;
        match result {
            Ok(_) => Ok(uses_left),
            Err(err) if super::condition_failed(&err) => self
                .get_as::<RedemptionRecord>(redemption_key(entitlement_id, redemption_id), true)
                .await?
                .and_then(|record| record.uses_left)
                .ok_or(Error::Contention("redemption")),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Access pattern: what a refunded order granted is taken back, once per order
    /// (`refunded_orders`): a count card is revoked; a membership loses the order's
    /// `period_ms` from its end. False when this order was taken back already.
    pub async fn take_back_grant(
        &self,
        entitlement_id: &str,
        order_id: &str,
        membership_period_ms: Option<i64>,
        now: Timestamp,
    ) -> Result<bool> {
        let (expression, mut values) = match membership_period_ms {
            Some(period) => (
                // The version rises: an extension computed from the end before this
                // one fails its check and reads again.
                "SET ends_at = ends_at - :period, version = version + :one \
                 ADD refunded_orders :orders",
                vec![(":period", n(period)), (":one", n(1))],
            ),
            None => (
                "SET revoked_at = :now ADD refunded_orders :orders",
                vec![(":now", s(now.to_rfc3339()))],
            ),
        };
        values.push((":orders", AttributeValue::Ss(vec![order_id.to_owned()])));
        values.push((":order", s(order_id)));
        let mut tx = self.tx();
        tx.update(
            ItemName::Entitlement,
            key_item(entitlement_key(entitlement_id)),
            expression,
            Some("attribute_exists(pk) AND NOT contains(refunded_orders, :order)"),
            &[],
            values,
        )?;
        Ok(self.transact(tx).await?.committed())
    }
}
