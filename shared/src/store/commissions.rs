//! The commission ledger and the statements that settle it (docs/distributors.md).
//!
//! An entry lives in its order's partition (`COMMISSION#{level:02}`, one per level:
//! written once, with the transition to `delivered`); a clawback of a refund after the
//! entry matured is an entry of its own (`COMMISSION#{level:02}#R#{refund_id}`, negative).
//! `gsi1` finds the work: `MATURING#{shard}` (pending entries by when they mature) and
//! `UNSETTLED#{distributor}` (matured entries and clawbacks not yet on a statement);
//! `gsi3` lists one distributor's entries (`COMMISSIONS#{distributor}`) and statements
//! (`STATEMENTSOF#{distributor}`). A statement is a header (`STATEMENT#{id}` /
//! `STATEMENT`) and one line per entry it settles; a distributor's running balance per
//! currency is `DISTRIBUTOR#{id}` / `BALANCE#{currency}`.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{
    FromItem, Item, get_money, get_n, get_opt_s, get_s, get_u32, item, key_item, n, s,
};
use super::tx::{ItemName, Tx, TxOutcome};
use super::{AUDIT_INDEX, ORDER_INDEX, Page, Store, shard_of};
use crate::domain::distributor::{after_refund, commission_entries};
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::store::OrderRecord;

pub(crate) const COMMISSION_PREFIX: &str = "COMMISSION#";
const MATURING_SHARDS: u32 = 8;
const STATEMENT_SK: &str = "STATEMENT";
const STATEMENT_OPEN: &str = "open";
const STATEMENT_CLOSED: &str = "closed";
const LINE_PREFIX: &str = "LINE#";

fn maturing_index(shard: u32) -> String {
    format!("MATURING#{shard}")
}
fn unsettled_index(distributor_id: &str) -> String {
    format!("UNSETTLED#{distributor_id}")
}
fn commissions_of(distributor_id: &str) -> String {
    format!("COMMISSIONS#{distributor_id}")
}
fn statements_of(distributor_id: &str) -> String {
    format!("STATEMENTSOF#{distributor_id}")
}
fn statements_in(period: &str) -> String {
    format!("STATEMENTS#{period}")
}
fn statement_pk(statement_id: &str) -> String {
    format!("STATEMENT#{statement_id}")
}
fn balance_key(distributor_id: &str, currency: &str) -> (String, String) {
    (
        format!("DISTRIBUTOR#{distributor_id}"),
        format!("BALANCE#{currency}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// Inside the refund window.
    Pending,
    /// Past it, waiting for a statement.
    Available,
    /// On a statement.
    Settled,
    /// Its order's whole payment went back before it matured.
    Cancelled,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Pending => "pending",
            EntryStatus::Available => "available",
            EntryStatus::Settled => "settled",
            EntryStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => EntryStatus::Pending,
            "available" => EntryStatus::Available,
            "settled" => EntryStatus::Settled,
            "cancelled" => EntryStatus::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Commission,
    /// Taken back after a refund of an order whose commission had matured.
    Clawback,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CommissionEntry {
    /// `{order_id}#{level}` (a clawback: `…#R#{refund_id}`).
    pub entry_id: String,
    pub kind: EntryKind,
    pub distributor_id: String,
    pub order_id: String,
    pub level: u32,
    pub sku: String,
    /// What it is worth now (a pending entry reduced by a partial refund; negative for a
    /// clawback).
    pub amount: Money,
    /// What it was worth when earned.
    pub original_amount: i64,
    /// What the order paid: the amount its rule was applied to.
    pub base_amount: i64,
    pub status: EntryStatus,
    pub earned_at: String,
    /// When it matures (pending) or matured (Unix ms).
    #[serde(skip)]
    pub available_at: Timestamp,
    pub statement_id: Option<String>,
}

impl CommissionEntry {
    fn sort_key(&self) -> String {
        entry_sk(&self.entry_id, &self.order_id)
    }
}

fn entry_sk(entry_id: &str, order_id: &str) -> String {
    // The entry id is `{order_id}#{rest}`: the sort key is the prefix and the rest.
    let rest = entry_id
        .strip_prefix(order_id)
        .and_then(|r| r.strip_prefix('#'))
        .unwrap_or(entry_id);
    format!("{COMMISSION_PREFIX}{rest}")
}

impl FromItem for CommissionEntry {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(CommissionEntry {
            entry_id: get_s(item, "entry_id")?,
            kind: match get_s(item, "kind")?.as_str() {
                "commission" => EntryKind::Commission,
                "clawback" => EntryKind::Clawback,
                _ => return Err(Error::Corrupt("unknown commission entry kind".into())),
            },
            distributor_id: get_s(item, "distributor_id")?,
            order_id: get_s(item, "order_id")?,
            level: get_u32(item, "level")?,
            sku: get_s(item, "sku")?,
            amount: get_money(item, "amount")?,
            original_amount: get_n(item, "original_amount")?,
            base_amount: get_n(item, "base_amount")?,
            status: EntryStatus::parse(&get_s(item, "status")?)
                .ok_or_else(|| Error::Corrupt("unknown commission entry status".into()))?,
            earned_at: get_s(item, "earned_at")?,
            available_at: Timestamp(get_n(item, "available_at")?),
            statement_id: get_opt_s(item, "statement_id"),
        })
    }
}

fn entry_item(entry: &CommissionEntry, index: Option<(String, i64)>) -> Item {
    let mut stored = item(
        (
            super::codec::keys::order_partition(&entry.order_id),
            entry.sort_key(),
        ),
        "commission",
        [
            ("entry_id", s(&entry.entry_id)),
            (
                "kind",
                s(match entry.kind {
                    EntryKind::Commission => "commission",
                    EntryKind::Clawback => "clawback",
                }),
            ),
            ("distributor_id", s(&entry.distributor_id)),
            ("order_id", s(&entry.order_id)),
            ("level", n(entry.level)),
            ("sku", s(&entry.sku)),
            ("amount", n(entry.amount.amount)),
            ("currency", s(&entry.amount.currency)),
            ("original_amount", n(entry.original_amount)),
            ("base_amount", n(entry.base_amount)),
            ("status", s(entry.status.as_str())),
            ("earned_at", s(&entry.earned_at)),
            ("available_at", n(entry.available_at.0)),
            ("gsi3pk", s(commissions_of(&entry.distributor_id))),
            ("gsi3sk", s(&entry.entry_id)),
        ],
    );
    if let Some((gpk, gsk)) = index {
        stored.insert("gsi1pk".to_owned(), s(gpk));
        stored.insert("gsi1sk".to_owned(), n(gsk));
    }
    stored
}

impl Tx {
    /// A delivered order's commissions, one entry per level that earns, written with the
    /// transition to `delivered` (each key once: an order is delivered once).
    pub(crate) fn earn_commissions(
        &mut self,
        order: &OrderRecord,
        now: Timestamp,
    ) -> Result<&mut Self> {
        let Some(referral) = &order.referral else {
            return Ok(self);
        };
        let paid = order
            .paid_amount
            .clone()
            .unwrap_or_else(|| order.amount.clone());
        let matures = now.plus_seconds(referral.refund_window_seconds);
        for (link, amount) in commission_entries(&referral.chain, &paid) {
            let entry = CommissionEntry {
                entry_id: format!("{}#{:02}", order.order_id, link.level),
                kind: EntryKind::Commission,
                distributor_id: link.distributor_id.clone(),
                order_id: order.order_id.clone(),
                level: link.level,
                sku: order.sku.clone(),
                amount: Money {
                    amount,
                    currency: paid.currency.clone(),
                },
                original_amount: amount,
                base_amount: paid.amount,
                status: EntryStatus::Pending,
                earned_at: now.to_rfc3339(),
                available_at: matures,
                statement_id: None,
            };
            let index = (
                maturing_index(shard_of(&entry.entry_id, MATURING_SHARDS)),
                matures.unix_seconds(),
            );
            self.put(
                ItemName::Commission(link.level),
                entry_item(&entry, Some(index)),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        Ok(self)
    }

    /// What a refund does to an order's commissions, once `refunded` of its payment went
    /// back in all: a pending entry is reduced in proportion (cancelled at zero); an entry
    /// that matured keeps its amount and a clawback entry takes back the difference, on
    /// the distributor's next statement. Conditional on each entry as read.
    pub(crate) fn refund_commissions(
        &mut self,
        entries: &[CommissionEntry],
        refunded: i64,
        refund_id: &str,
        now: Timestamp,
    ) -> Result<&mut Self> {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Commission) {
            let target = after_refund(entry.original_amount, entry.base_amount, refunded);
            let name = ItemName::Commission(entry.level);
            let key = key_item((
                super::codec::keys::order_partition(&entry.order_id),
                entry.sort_key(),
            ));
            match entry.status {
                EntryStatus::Pending if target == entry.amount.amount => {}
                EntryStatus::Pending if target == 0 => {
                    self.update(
                        name,
                        key,
                        "SET amount = :zero, #status = :cancelled REMOVE gsi1pk, gsi1sk",
                        Some("#status = :pending AND amount = :old"),
                        &["status"],
                        vec![
                            (":zero", n(0)),
                            (":cancelled", s(EntryStatus::Cancelled.as_str())),
                            (":pending", s(EntryStatus::Pending.as_str())),
                            (":old", n(entry.amount.amount)),
                        ],
                    )?;
                }
                EntryStatus::Pending => {
                    self.update(
                        name,
                        key,
                        "SET amount = :target",
                        Some("#status = :pending AND amount = :old"),
                        &["status"],
                        vec![
                            (":target", n(target)),
                            (":pending", s(EntryStatus::Pending.as_str())),
                            (":old", n(entry.amount.amount)),
                        ],
                    )?;
                }
                EntryStatus::Available | EntryStatus::Settled => {
                    let kept: i64 = entry.amount.amount
                        + entries
                            .iter()
                            .filter(|e| e.kind == EntryKind::Clawback && e.level == entry.level)
                            .map(|e| e.amount.amount)
                            .sum::<i64>();
                    let clawback = target - kept;
                    if clawback < 0 {
                        let claw = CommissionEntry {
                            entry_id: format!(
                                "{}#{:02}#R#{refund_id}",
                                entry.order_id, entry.level
                            ),
                            kind: EntryKind::Clawback,
                            amount: Money {
                                amount: clawback,
                                currency: entry.amount.currency.clone(),
                            },
                            original_amount: clawback,
                            status: EntryStatus::Available,
                            earned_at: now.to_rfc3339(),
                            available_at: now,
                            statement_id: None,
                            ..entry.clone()
                        };
                        let index = (unsettled_index(&claw.distributor_id), now.unix_seconds());
                        self.put(
                            name,
                            entry_item(&claw, Some(index)),
                            Some("attribute_not_exists(pk)"),
                        )?;
                    }
                }
                EntryStatus::Cancelled => {}
            }
        }
        Ok(self)
    }
}

/// A statement: what one distributor is owed in one currency for one period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StatementRecord {
    /// `{period}_{currency}_{distributor_id}`.
    pub statement_id: String,
    pub distributor_id: String,
    /// The day it covers, in the settlement's time zone (`YYYY-MM-DD`): entries that
    /// became available before its end.
    pub period: String,
    pub currency: String,
    /// `open` while a run is settling entries onto it, `closed` once its totals are
    /// checked and final.
    pub status: String,
    /// What the previous statement left owing (never positive: what was positive was
    /// payable then).
    pub opening_balance: i64,
    /// The sum of its commission lines.
    pub commissions: i64,
    /// The sum of its clawback lines (zero or negative).
    pub clawbacks: i64,
    pub closing_balance: i64,
    /// What Kami pays the distributor: the closing balance when positive, else zero (a
    /// negative balance carries to the next statement).
    pub payable: i64,
    pub lines: u32,
    pub closed_at: Option<String>,
    pub paid_at: Option<String>,
    pub payout_reference: Option<String>,
}

impl StatementRecord {
    pub fn is_closed(&self) -> bool {
        self.status == STATEMENT_CLOSED
    }
}

impl FromItem for StatementRecord {
    fn from_item(item: &Item) -> Result<Self> {
        let number = |name: &str| -> Result<i64> {
            if item.contains_key(name) {
                get_n(item, name)
            } else {
                Ok(0)
            }
        };
        Ok(StatementRecord {
            statement_id: get_s(item, "statement_id")?,
            distributor_id: get_s(item, "distributor_id")?,
            period: get_s(item, "period")?,
            currency: get_s(item, "currency")?,
            status: get_s(item, "status")?,
            opening_balance: number("opening_balance")?,
            commissions: number("commissions")?,
            clawbacks: number("clawbacks")?,
            closing_balance: number("closing_balance")?,
            payable: number("payable")?,
            lines: u32::try_from(number("lines")?)
                .map_err(|_| Error::Corrupt("statement lines is negative".into()))?,
            closed_at: get_opt_s(item, "closed_at"),
            paid_at: get_opt_s(item, "paid_at"),
            payout_reference: get_opt_s(item, "payout_reference"),
        })
    }
}

/// What a period's settlement run came to (`GET /admin/settlements`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SettlementRun {
    pub period: String,
    pub finished_at: String,
    /// Entries that matured (pending → available) in the run.
    pub matured: u32,
    pub statements_closed: u32,
    /// Statements left open because their totals did not reconcile.
    pub statements_open: u32,
    /// What did not reconcile, one line each (statement id and the two sums).
    pub mismatches: Vec<String>,
    /// Supplier statements closed (or found closed with the same sums).
    pub supplier_statements: u32,
    /// Channels whose bill was compared with Kami's book this run.
    pub bills_reconciled: u32,
    /// Differences those bills showed (each filed once as `reconciliation_mismatch`).
    pub bill_mismatches: u32,
    /// Channels whose bill could not be had, and why (a provider down, or one whose bill
    /// Kami cannot read yet: Alipay).
    pub bills_not_reconciled: Vec<String>,
}

/// One line of a statement: the entry it settled, as it was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub entry_id: String,
    pub kind: EntryKind,
    pub order_id: String,
    pub level: u32,
    pub sku: String,
    pub amount: i64,
    pub earned_at: String,
}

impl FromItem for StatementLine {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(StatementLine {
            entry_id: get_s(item, "entry_id")?,
            kind: match get_s(item, "kind")?.as_str() {
                "clawback" => EntryKind::Clawback,
                _ => EntryKind::Commission,
            },
            order_id: get_s(item, "order_id")?,
            level: get_u32(item, "level")?,
            sku: get_s(item, "sku")?,
            amount: get_n(item, "amount")?,
            earned_at: get_s(item, "earned_at")?,
        })
    }
}

/// A distributor's running balance in one currency: the last statement closed and
/// what it left owing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub last_statement_id: Option<String>,
    pub carry: i64,
}

fn entry_key(entry: &CommissionEntry) -> Item {
    key_item((
        super::codec::keys::order_partition(&entry.order_id),
        entry.sort_key(),
    ))
}

impl Store {
    /// Access pattern: an order's ledger entries (one Query on its partition).
    pub async fn order_commissions(&self, order_id: &str) -> Result<Vec<CommissionEntry>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(super::codec::keys::order_partition(order_id)))
            .expression_attribute_values(":prefix", s(COMMISSION_PREFIX));
        self.query_all(query)
            .await?
            .iter()
            .map(CommissionEntry::from_item)
            .collect()
    }

    /// Access pattern: entries of one `gsi1` partition due by `until` (Unix s), read
    /// whole (keys from the index, then BatchGetItem in hundreds).
    async fn entries_in_index(&self, gsi1pk: &str, until: i64) -> Result<Vec<CommissionEntry>> {
        let query = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :until")
            .expression_attribute_values(":pk", s(gsi1pk))
            .expression_attribute_values(":until", n(until));
        let mut entries: Vec<CommissionEntry> = self.indexed_as(query, "commissions").await?;
        entries.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
        Ok(entries)
    }

    /// Access pattern: pending entries that mature by `now` (`gsi1` `MATURING#{shard}`,
    /// every shard).
    pub async fn maturing_entries(&self, now: Timestamp) -> Result<Vec<CommissionEntry>> {
        let mut due = Vec::new();
        for shard in 0..MATURING_SHARDS {
            due.extend(
                self.entries_in_index(&maturing_index(shard), now.unix_seconds())
                    .await?
                    .into_iter()
                    .filter(|e| e.status == EntryStatus::Pending),
            );
        }
        Ok(due)
    }

    /// Access pattern: a pending entry becomes available (moving to its distributor's
    /// `UNSETTLED#` index, dated when it matured). False if it was no longer pending at
    /// the amount read (a refund changed it: the next run sees it again).
    pub async fn mature_entry(&self, entry: &CommissionEntry) -> Result<bool> {
        let mut tx = self.tx();
        tx.update(
            ItemName::Commission(entry.level),
            entry_key(entry),
            "SET #status = :available, gsi1pk = :gpk, gsi1sk = :gsk",
            Some("#status = :pending AND amount = :amount"),
            &["status"],
            vec![
                (":available", s(EntryStatus::Available.as_str())),
                (":pending", s(EntryStatus::Pending.as_str())),
                (":amount", n(entry.amount.amount)),
                (":gpk", s(unsettled_index(&entry.distributor_id))),
                (":gsk", n(entry.available_at.unix_seconds())),
            ],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a distributor's entries not yet on a statement that became
    /// available before `end` (`gsi1` `UNSETTLED#{distributor}`).
    pub async fn unsettled_entries(
        &self,
        distributor_id: &str,
        end: Timestamp,
    ) -> Result<Vec<CommissionEntry>> {
        Ok(self
            .entries_in_index(&unsettled_index(distributor_id), end.unix_seconds() - 1)
            .await?
            .into_iter()
            .filter(|e| e.status == EntryStatus::Available)
            .collect())
    }

    /// Access pattern: settle `entries` onto statement `statement_id`: each entry
    /// `available → settled` (leaving `UNSETTLED#`) with its line written, in one
    /// transaction (at most 49 entries). An entry already on this statement is written
    /// again the same (a second run); false if one is on another statement or changed.
    pub async fn settle_entries(
        &self,
        statement_id: &str,
        entries: &[CommissionEntry],
    ) -> Result<bool> {
        let mut tx = self.tx();
        for (i, entry) in entries.iter().enumerate() {
            tx.update(
                ItemName::SettledEntry(i),
                entry_key(entry),
                "SET #status = :settled, statement_id = :statement REMOVE gsi1pk, gsi1sk",
                Some("(#status = :available AND amount = :amount) OR statement_id = :statement"),
                &["status"],
                vec![
                    (":settled", s(EntryStatus::Settled.as_str())),
                    (":available", s(EntryStatus::Available.as_str())),
                    (":amount", n(entry.amount.amount)),
                    (":statement", s(statement_id)),
                ],
            )?;
            tx.put(
                ItemName::StatementLine(i),
                item(
                    (
                        statement_pk(statement_id),
                        format!("{LINE_PREFIX}{}", entry.entry_id),
                    ),
                    "statement_line",
                    [
                        ("entry_id", s(&entry.entry_id)),
                        (
                            "kind",
                            s(match entry.kind {
                                EntryKind::Commission => "commission",
                                EntryKind::Clawback => "clawback",
                            }),
                        ),
                        ("order_id", s(&entry.order_id)),
                        ("level", n(entry.level)),
                        ("sku", s(&entry.sku)),
                        ("amount", n(entry.amount.amount)),
                        ("earned_at", s(&entry.earned_at)),
                    ],
                ),
                None,
            )?;
        }
        // Only onto an open statement: a run that closed it meanwhile summed its lines
        // already, and a line added after would be in no total.
        tx.check(
            ItemName::Statement,
            key_item((statement_pk(statement_id), STATEMENT_SK.into())),
            "#status = :open",
            &["status"],
            vec![(":open", s(STATEMENT_OPEN))],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a statement's lines (one Query on its partition).
    pub async fn statement_lines(&self, statement_id: &str) -> Result<Vec<StatementLine>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :line)")
            .expression_attribute_values(":pk", s(statement_pk(statement_id)))
            .expression_attribute_values(":line", s(LINE_PREFIX));
        self.query_all(query)
            .await?
            .iter()
            .map(StatementLine::from_item)
            .collect()
    }

    /// Access pattern: the entries a statement's lines name, read back (BatchGetItem).
    pub async fn entries_by_id(&self, entry_ids: &[String]) -> Result<Vec<CommissionEntry>> {
        let keys: Vec<Item> = entry_ids
            .iter()
            .filter_map(|id| {
                let order_id = id.split('#').next()?;
                Some(key_item((
                    super::codec::keys::order_partition(order_id),
                    entry_sk(id, order_id),
                )))
            })
            .collect();
        self.records_at(keys, "commissions").await
    }

    /// Access pattern: a statement's header (strongly consistent).
    pub async fn get_statement(&self, statement_id: &str) -> Result<Option<StatementRecord>> {
        self.get_as((statement_pk(statement_id), STATEMENT_SK.into()), true)
            .await
    }

    /// Access pattern: a distributor's balance in a currency (strongly consistent).
    pub async fn get_balance(&self, distributor_id: &str, currency: &str) -> Result<Balance> {
        Ok(
            match self
                .get(balance_key(distributor_id, currency), true)
                .await?
            {
                Some(found) => Balance {
                    last_statement_id: get_opt_s(&found, "last_statement_id"),
                    carry: get_n(&found, "carry")?,
                },
                None => Balance::default(),
            },
        )
    }

    /// Access pattern: open a statement (its header, `open`, with no totals yet) if it
    /// is not there. True if this call opened it; false if it was there (open or closed).
    pub async fn open_statement(
        &self,
        statement_id: &str,
        distributor_id: &str,
        period: &str,
        currency: &str,
        now: Timestamp,
    ) -> Result<bool> {
        self.put_if_absent(item(
            (statement_pk(statement_id), STATEMENT_SK.into()),
            "statement",
            [
                ("statement_id", s(statement_id)),
                ("distributor_id", s(distributor_id)),
                ("period", s(period)),
                ("currency", s(currency)),
                ("status", s(STATEMENT_OPEN)),
                ("opened_at", s(now.to_rfc3339())),
                ("gsi1pk", s(statements_in(period))),
                ("gsi1sk", n(now.0)),
                ("gsi3pk", s(statements_of(distributor_id))),
                ("gsi3sk", s(statement_id)),
            ],
        ))
        .await
    }

    /// Access pattern: the open statements of a distributor for a period (a run cut
    /// short left them; `gsi3` `STATEMENTSOF#{distributor}` from the period on).
    pub async fn open_statements(&self, distributor_id: &str, period: &str) -> Result<Vec<String>> {
        let query = self
            .query()
            .index_name(AUDIT_INDEX)
            .key_condition_expression("gsi3pk = :pk AND begins_with(gsi3sk, :period)")
            .filter_expression("#status = :open")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pk", s(statements_of(distributor_id)))
            .expression_attribute_values(":period", s(format!("{period}_")))
            .expression_attribute_values(":open", s(STATEMENT_OPEN));
        self.query_all(query)
            .await?
            .iter()
            .map(|found| get_s(found, "statement_id"))
            .collect()
    }

    /// Access pattern: close an open statement with its totals, and move the
    /// distributor's balance on from `balance` (as read) to it, in one transaction.
    /// False if either changed meanwhile (another run closed it: read it back).
    pub async fn close_statement(
        &self,
        statement: &StatementRecord,
        balance: &Balance,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.update(
            ItemName::Statement,
            key_item((statement_pk(&statement.statement_id), STATEMENT_SK.into())),
            "SET #status = :closed, opening_balance = :opening, commissions = :commissions, \
             clawbacks = :clawbacks, closing_balance = :closing, payable = :payable, \
             #lines = :lines, closed_at = :at",
            Some("#status = :open"),
            &["status", "lines"],
            vec![
                (":closed", s(STATEMENT_CLOSED)),
                (":open", s(STATEMENT_OPEN)),
                (":opening", n(statement.opening_balance)),
                (":commissions", n(statement.commissions)),
                (":clawbacks", n(statement.clawbacks)),
                (":closing", n(statement.closing_balance)),
                (":payable", n(statement.payable)),
                (":lines", n(statement.lines)),
                (":at", s(statement.closed_at.as_deref().unwrap_or_default())),
            ],
        )?;
        let (condition, mut values) = match &balance.last_statement_id {
            None => ("attribute_not_exists(last_statement_id)", Vec::new()),
            Some(last) => ("last_statement_id = :last", vec![(":last", s(last))]),
        };
        values.extend([
            (":statement", s(&statement.statement_id)),
            (":carry", n(statement.closing_balance - statement.payable)),
        ]);
        tx.update(
            ItemName::Balance,
            key_item(balance_key(&statement.distributor_id, &statement.currency)),
            "SET last_statement_id = :statement, carry = :carry",
            Some(condition),
            &[],
            values,
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: record a closed statement's payout once, with its audit record,
    /// in one transaction. False if it is not closed or already paid (read it back).
    pub async fn mark_statement_paid(
        &self,
        statement_id: &str,
        reference: &str,
        audit: &super::AuditEntry,
        now: &str,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.update(
            ItemName::Statement,
            key_item((statement_pk(statement_id), STATEMENT_SK.into())),
            "SET paid_at = :now, payout_reference = :reference",
            Some("#status = :closed AND attribute_not_exists(paid_at)"),
            &["status"],
            vec![
                (":now", s(now)),
                (":reference", s(reference)),
                (":closed", s(STATEMENT_CLOSED)),
            ],
        )?;
        tx.audit(audit)?;
        Ok(matches!(self.transact(tx).await?, TxOutcome::Committed))
    }

    /// Access pattern: what a settlement run of a period came to (one item per
    /// period, the last run's).
    pub async fn put_settlement_run(&self, run: &SettlementRun) -> Result<()> {
        let stored = item(
            (format!("SETTLEMENT#{}", run.period), "RUN".into()),
            "settlement_run",
            [
                ("period", s(&run.period)),
                ("finished_at", s(&run.finished_at)),
                ("matured", n(run.matured)),
                ("statements_closed", n(run.statements_closed)),
                ("statements_open", n(run.statements_open)),
                ("supplier_statements", n(run.supplier_statements)),
                ("bills_reconciled", n(run.bills_reconciled)),
                ("bill_mismatches", n(run.bill_mismatches)),
                (
                    "bills_not_reconciled",
                    AttributeValue::L(run.bills_not_reconciled.iter().map(s).collect()),
                ),
                (
                    "mismatches",
                    AttributeValue::L(run.mismatches.iter().map(s).collect()),
                ),
            ],
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(stored))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: a period's last settlement run, if any.
    pub async fn get_settlement_run(&self, period: &str) -> Result<Option<SettlementRun>> {
        let Some(found) = self
            .get((format!("SETTLEMENT#{period}"), "RUN".into()), true)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(SettlementRun {
            period: get_s(&found, "period")?,
            finished_at: get_s(&found, "finished_at")?,
            matured: get_u32(&found, "matured")?,
            statements_closed: get_u32(&found, "statements_closed")?,
            statements_open: get_u32(&found, "statements_open")?,
            supplier_statements: get_u32(&found, "supplier_statements").unwrap_or(0),
            bills_reconciled: get_u32(&found, "bills_reconciled").unwrap_or(0),
            bill_mismatches: get_u32(&found, "bill_mismatches").unwrap_or(0),
            bills_not_reconciled: match found.get("bills_not_reconciled") {
                Some(AttributeValue::L(list)) => {
                    list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
                }
                _ => Vec::new(),
            },
            mismatches: match found.get("mismatches") {
                Some(AttributeValue::L(list)) => {
                    list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
                }
                _ => Vec::new(),
            },
        }))
    }

    /// Access pattern: the statements opened for a period (open or closed) (`gsi1` `STATEMENTS#{period}`,
    /// keys only, then BatchGetItem).
    pub async fn statements_in_period(&self, period: &str) -> Result<Vec<StatementRecord>> {
        let query = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk")
            .expression_attribute_values(":pk", s(statements_in(period)));
        let mut statements: Vec<StatementRecord> = self.indexed_as(query, "statements").await?;
        statements.sort_by(|a, b| a.statement_id.cmp(&b.statement_id));
        Ok(statements)
    }

    /// Access pattern: one page of a distributor's entries, newest first, optionally of
    /// one status (`gsi3` `COMMISSIONS#{distributor}`).
    pub async fn distributor_entries_page(
        &self,
        distributor_id: &str,
        status: Option<EntryStatus>,
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page<CommissionEntry>> {
        let gpk = commissions_of(distributor_id);
        let mut query = self
            .query()
            .index_name(AUDIT_INDEX)
            .scan_index_forward(false)
            .key_condition_expression("gsi3pk = :pk")
            .expression_attribute_values(":pk", s(&gpk));
        if let Some(status) = status {
            query = query
                .filter_expression("#status = :status")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status.as_str()));
        }
        let page = self.page(query, ("gsi3pk", &gpk), after, limit).await?;
        Ok(Page {
            items: page
                .items
                .iter()
                .map(CommissionEntry::from_item)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// Access pattern: one page of a distributor's statements, newest first (`gsi3`
    /// `STATEMENTSOF#{distributor}`).
    pub async fn distributor_statements_page(
        &self,
        distributor_id: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page<StatementRecord>> {
        let gpk = statements_of(distributor_id);
        let query = self
            .query()
            .index_name(AUDIT_INDEX)
            .scan_index_forward(false)
            .key_condition_expression("gsi3pk = :pk")
            .expression_attribute_values(":pk", s(&gpk));
        let page = self.page(query, ("gsi3pk", &gpk), after, limit).await?;
        Ok(Page {
            items: page
                .items
                .iter()
                .map(StatementRecord::from_item)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }
}

/// Whether a sort key in an order's partition is a ledger entry's.
pub(crate) fn is_commission(sk: &str) -> bool {
    sk.starts_with(COMMISSION_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sort_keys_follow_their_ids() {
        assert_eq!(entry_sk("01ORDER#02", "01ORDER"), "COMMISSION#02");
        assert_eq!(
            entry_sk("01ORDER#02#R#01ORDERRabcd", "01ORDER"),
            "COMMISSION#02#R#01ORDERRabcd"
        );
    }
}
