//! Provider bill reconciliation (docs/reconciliation.md): the channel book (every
//! payment and refund a channel took, by time, in the sparse index `gsi3`), the
//! mismatches filed in the exception queue (`gsi2`) once each, and the report of each
//! (period, channel).
//!
//! The book is not an item of its own: a channel's payment records and refunds carry
//! `gsi3pk = BOOK#{channel_id}`, `gsi3sk = {ms:013}#{sk}` (the time the money was
//! recorded, zero-padded so text order is time order), written in the transaction that
//! records them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::AuditEntry;
use super::codec::{FromItem, Item, get_s, item, keys, n, s};
use super::exceptions::ExceptionResolved;
use super::orders::OperatorNote;
use super::payments::PaymentRecord;
use super::refunds::{RefundRecord, is_refund};
use super::tx::ItemName;
use super::{AUDIT_INDEX, Store};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::payment::{BillLine, BillLineKind, BillLineStatus};

/// The exception queue's cause of a difference between a bill and Kami's records.
pub const RECONCILIATION_MISMATCH: &str = "reconciliation_mismatch";

/// Mismatches a report lists in full (each one is also its own item, and an exception).
pub const REPORT_MISMATCHES: usize = 100;

fn book_partition(channel_id: &str) -> String {
    format!("BOOK#{channel_id}")
}

fn book_sort(at: Timestamp, sk: &str) -> String {
    format!("{:013}#{sk}", at.0.max(0))
}

/// Enters an item (a payment record, a refund) in its channel's book as of `at`.
pub(crate) fn enter_in_book(record: &mut Item, channel_id: &str, at: Timestamp) -> Result<()> {
    let sk = get_s(record, "sk")?;
    record.insert("channel_id".to_owned(), s(channel_id));
    record.insert("gsi3pk".to_owned(), s(book_partition(channel_id)));
    record.insert("gsi3sk".to_owned(), s(book_sort(at, &sk)));
    Ok(())
}

fn reconcile_partition(period: &str) -> String {
    format!("RECONCILE#{period}")
}

/// A mismatch's key: one per (period, channel, kind of difference, line); filing the
/// same difference again finds it there.
fn mismatch_key(period: &str, channel_id: &str, mismatch: &Mismatch) -> (String, String) {
    (
        reconcile_partition(period),
        format!(
            "MISMATCH#{channel_id}#{}#{}#{}",
            mismatch.kind.as_str(),
            mismatch.line_kind.as_str(),
            mismatch.key
        ),
    )
}

/// Whether an exception queue key is a reconciliation mismatch's.
pub(crate) fn is_mismatch_key(pk: &str, sk: &str) -> bool {
    pk.starts_with("RECONCILE#") && sk.starts_with("MISMATCH#")
}

/// A mismatch as the exception queue names it: its period and its id,
/// `{channel_id}:{kind}:{line_kind}:{key}` (resolve it with
/// `POST /admin/reconciliation/{period}/mismatches/{mismatch_id}/resolve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MismatchRef {
    pub period: String,
    pub mismatch_id: String,
}

impl MismatchRef {
    /// The mismatch a queue key names, if it names one.
    pub fn of_key(pk: &str, sk: &str) -> Option<Self> {
        let period = pk.strip_prefix("RECONCILE#")?;
        let id = sk.strip_prefix("MISMATCH#")?;
        // Channel ids, kinds and line kinds have no `#` or `:`; the key keeps its own.
        Some(MismatchRef {
            period: period.to_owned(),
            mismatch_id: id.replacen('#', ":", 3),
        })
    }

    fn key(&self) -> (String, String) {
        (
            reconcile_partition(&self.period),
            format!("MISMATCH#{}", self.mismatch_id.replacen(':', "#", 3)),
        )
    }
}

/// Money a channel took or gave back as Kami recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KamiLine {
    pub order_id: String,
    /// When Kami recorded it (RFC 3339).
    pub at: String,
    /// What it is, as a bill would have it.
    #[serde(flatten)]
    pub line: BillLine,
}

/// Every payment and refund of a channel Kami recorded in a period.
#[derive(Debug, Clone, Default)]
pub struct ChannelBook {
    pub lines: Vec<KamiLine>,
}

/// How a bill and Kami's records differ on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// The provider billed money Kami has no record of.
    MissingInKami,
    /// Kami recorded money the provider's bill does not have.
    MissingInBill,
    AmountDiffers,
    StatusDiffers,
}

impl MismatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::MissingInKami => "missing_in_kami",
            MismatchKind::MissingInBill => "missing_in_bill",
            MismatchKind::AmountDiffers => "amount_differs",
            MismatchKind::StatusDiffers => "status_differs",
        }
    }
}

impl BillLineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BillLineKind::Payment => "payment",
            BillLineKind::Refund => "refund",
        }
    }
}

/// One difference, with both sides as each has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub line_kind: BillLineKind,
    /// What the line is known by: a payment's provider reference, a refund's id.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bill: Option<BillLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kami: Option<KamiLine>,
}

/// What reconciling one channel's bill for one period found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReconciliationReport {
    /// `YYYY-MM-DD` in the settlement's zone.
    pub period: String,
    pub channel_id: String,
    pub provider: String,
    pub bill_lines: usize,
    pub kami_lines: usize,
    /// Lines found alike on both sides.
    pub matched: usize,
    /// Refunds Kami holds as pending that the bill does not have yet: not a difference
    /// until they settle.
    pub in_flight: usize,
    /// Every difference found (this run).
    pub mismatches_total: usize,
    /// Differences filed in the exception queue by this run (0 when a run repeats).
    pub filed: usize,
    /// The first `REPORT_MISMATCHES` differences.
    pub mismatches: Vec<Mismatch>,
    /// When the run finished (RFC 3339).
    pub reconciled_at: String,
}

impl ReconciliationReport {
    pub fn clean(&self) -> bool {
        self.mismatches_total == 0
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(item: &Item, name: &str) -> Result<T> {
    serde_json::from_str(&get_s(item, name)?)
        .map_err(|e| Error::Corrupt(format!("{name} is not what Kami wrote: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("cannot encode: {e}")))
}

impl Store {
    /// Access pattern: a channel's book from `start` (inclusive) to `end` (exclusive):
    /// `gsi3` `gsi3pk = BOOK#{channel}`, `gsi3sk BETWEEN`, every page.
    pub async fn channel_book(
        &self,
        channel_id: &str,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<ChannelBook> {
        let query = self
            .query()
            .index_name(AUDIT_INDEX)
            .key_condition_expression("gsi3pk = :pk AND gsi3sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(book_partition(channel_id)))
            .expression_attribute_values(":from", s(format!("{:013}", start.0.max(0))))
            // `~` sorts after every character of a key, so the last millisecond is in.
            .expression_attribute_values(":to", s(format!("{:013}~", (end.0 - 1).max(0))));
        let mut book = ChannelBook::default();
        for item in self.query_all(query).await? {
            let pk = get_s(&item, "pk")?;
            let order_id = keys::order_id_of(&pk)
                .ok_or_else(|| Error::Corrupt(format!("book entry outside an order: {pk}")))?
                .to_owned();
            let (at, line) = if is_refund(&get_s(&item, "sk")?) {
                let refund = RefundRecord::from_item(&item)?;
                let status = match refund.status {
                    super::RefundStatus::Succeeded => BillLineStatus::Succeeded,
                    super::RefundStatus::Requested | super::RefundStatus::Pending => {
                        BillLineStatus::Pending
                    }
                    super::RefundStatus::Refused => BillLineStatus::Failed,
                };
                let line = BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: None,
                    payment_id: Some(refund.payment_id),
                    refund_id: Some(refund.refund_id),
                    amount: refund.amount,
                    status,
                };
                (refund.created_at, line)
            } else {
                let payment = PaymentRecord::from_item(&item)?;
                let line = BillLine {
                    kind: BillLineKind::Payment,
                    provider_ref: Some(payment.provider_ref),
                    payment_id: payment.payment_id,
                    refund_id: None,
                    amount: payment.amount,
                    // A payment record is money that arrived.
                    status: BillLineStatus::Succeeded,
                };
                (payment.received_at, line)
            };
            book.lines.push(KamiLine { order_id, at, line });
        }
        Ok(book)
    }

    /// Access pattern: file a difference in the exception queue once (PutItem
    /// `RECONCILE#{period}` / `MISMATCH#...`, `attribute_not_exists(pk)`); false when it
    /// was filed before.
    pub async fn file_mismatch(
        &self,
        period: &str,
        channel_id: &str,
        mismatch: &Mismatch,
        now: Timestamp,
    ) -> Result<bool> {
        let order_id = mismatch.kami.as_ref().map(|line| line.order_id.clone());
        let mut record = item(
            mismatch_key(period, channel_id, mismatch),
            "reconciliation_mismatch",
            [
                ("period", s(period)),
                ("channel_id", s(channel_id)),
                ("mismatch", s(to_json(mismatch)?)),
                ("gsi2pk", s(keys::EXCEPTIONS_INDEX)),
                ("gsi2sk", n(now.0)),
                ("exception_cause", s(RECONCILIATION_MISMATCH)),
                ("exception", s(mismatch.kind.as_str())),
                ("updated_at", s(now.to_rfc3339())),
            ],
        );
        if let Some(order_id) = order_id {
            record.insert("order_id".to_owned(), s(order_id));
        }
        let filed = self.put_if_absent(record).await?;
        if filed {
            crate::metrics::exception_filed(RECONCILIATION_MISMATCH);
        }
        Ok(filed)
    }

    /// Access pattern: an operator settles a filed mismatch (`resolve_filed` of its item).
    pub async fn resolve_mismatch(
        &self,
        mismatch: &MismatchRef,
        note: &OperatorNote,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<ExceptionResolved> {
        self.resolve_filed(ItemName::Mismatch, mismatch.key(), note, audit, now)
            .await
    }

    /// Access pattern: the mismatches filed for a period (`pk = RECONCILE#{period}`,
    /// `begins_with(sk, MISMATCH#)`, every page), each with both sides.
    pub async fn reconciliation_mismatches(&self, period: &str) -> Result<Vec<Mismatch>> {
        self.reconcile_items(period, "MISMATCH#")
            .await?
            .iter()
            .map(|item| parse_json(item, "mismatch"))
            .collect()
    }

    /// Access pattern: keep what a run found for (period, channel) (PutItem
    /// `RECONCILE#{period}` / `CHANNEL#{channel}`; the latest run's replaces it).
    pub async fn put_reconciliation_report(&self, report: &ReconciliationReport) -> Result<()> {
        let record = item(
            (
                reconcile_partition(&report.period),
                format!("CHANNEL#{}", report.channel_id),
            ),
            "reconciliation_report",
            [
                ("channel_id", s(&report.channel_id)),
                ("report", s(to_json(report)?)),
            ],
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: every channel's report of a period (`pk = RECONCILE#{period}`,
    /// `begins_with(sk, CHANNEL#)`, every page), by channel id.
    pub async fn reconciliation_reports(&self, period: &str) -> Result<Vec<ReconciliationReport>> {
        self.reconcile_items(period, "CHANNEL#")
            .await?
            .iter()
            .map(|item| parse_json(item, "report"))
            .collect()
    }

    async fn reconcile_items(&self, period: &str, prefix: &str) -> Result<Vec<Item>> {
        let query = self
            .query()
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(reconcile_partition(period)))
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true);
        self.query_all(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_keys_sort_by_time_and_the_range_takes_the_last_millisecond() {
        let early = book_sort(Timestamp(999), "PAYMENT#x");
        let late = book_sort(Timestamp(1_000), "PAYMENT#a");
        assert!(early < late, "zero-padded: text order is time order");
        let to = format!("{:013}~", 999);
        assert!(early <= to && late > to);
    }
}
