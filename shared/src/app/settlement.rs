//! The settlement function (docs/distributors.md, "Settlement"): once a day it matures
//! commissions past the refund window and closes, for each distributor and currency,
//! the statement of the day before (a day in the settlement's time zone). Safe to run
//! again, concurrently, or after a run cut short: a statement's id is its period,
//! currency and distributor; each entry is settled onto it once, with its line, in one
//! transaction; its totals are summed from its lines, checked against the entries they
//! name, and only then written, with the distributor's balance, in one transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::Actor;
use super::distributors::StatementView;
use crate::config::Context;
use crate::domain::time::Timestamp;
use crate::error::{ConflictKind, Error, Result};
use crate::request::RequestBody;
use crate::store::{
    AuditSubject, Balance, CommissionEntry, EntryKind, EntryStatus, Payable, ReconciliationReport,
    SettlementRun, StatementRecord, SupplierStatement, SupplierStatementClosed,
};

/// Entries settled per transaction: each is two items (the entry and its line), one
/// more checks the statement is open, and a transaction holds at most 100.
const ENTRIES_PER_TRANSACTION: usize = 49;
/// Closes of one statement tried before it is left open (its balance raced).
const CLOSE_ATTEMPTS: usize = 3;
const MAX_REFERENCE_LEN: usize = 200;

/// A settlement period: one day in the settlement's zone, as UTC instants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `YYYY-MM-DD`.
    pub label: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

fn zone(name: &str) -> Result<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(name)
        .map_err(|_| Error::Config(format!("SETTLEMENT_TIME_ZONE {name} is not a known zone")))
}

/// The period of the day `date` in `zone_name`.
pub fn period_of(date: jiff::civil::Date, zone_name: &str) -> Result<Period> {
    let tz = zone(zone_name)?;
    let instant = |day: jiff::civil::Date| -> Result<Timestamp> {
        day.to_zoned_datetime(tz.clone())
            .map(|zoned| Timestamp(zoned.timestamp().as_millisecond()))
            .map_err(|_| Error::Config("settlement period out of range".into()))
    };
    let next = date
        .tomorrow()
        .map_err(|_| Error::Config("settlement period out of range".into()))?;
    Ok(Period {
        label: date.to_string(),
        start: instant(date)?,
        end: instant(next)?,
    })
}

/// The period `label` names (`YYYY-MM-DD`), or the day before `now`'s day in the zone.
pub fn period_for(label: Option<&str>, now: Timestamp, zone_name: &str) -> Result<Period> {
    let date = match label {
        Some(label) => label.parse::<jiff::civil::Date>().map_err(|_| {
            Error::invalid_field(
                "invalid_period",
                "period",
                "period must be a date, YYYY-MM-DD",
            )
        })?,
        None => {
            let today = jiff::Timestamp::from_millisecond(now.0)
                .map_err(|_| Error::Config("clock out of range".into()))?
                .to_zoned_datetime(zone(zone_name)?)
                .date();
            today
                .yesterday()
                .map_err(|_| Error::Config("settlement period out of range".into()))?
        }
    };
    period_of(date, zone_name)
}

/// What one run did, also its answer (and kept per period for `GET /admin/settlements`).
pub type RunReport = SettlementRun;

/// What a run closes: `period`, or yesterday's (a scheduled run names none); for
/// every distributor, or only `distributors` (an operator settling some again by hand).
/// Read from the invocation's event, whose other fields (EventBridge's) are ignored.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RunRequest {
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub distributors: Option<Vec<String>>,
}

/// One run: mature what is due, then close each distributor's statements of `period`.
pub async fn run(ctx: &Context, request: &RunRequest) -> Result<RunReport> {
    let now = ctx.clock.now();
    let period = period_for(
        request.period.as_deref(),
        now,
        &ctx.config.settlement_time_zone,
    )?;
    if period.end > now {
        return Err(Error::invalid_field(
            "period_not_over",
            "period",
            format!("period {} has not ended yet", period.label),
        ));
    }
    let mut matured = 0;
    for entry in ctx.store.maturing_entries(now).await? {
        if ctx.store.mature_entry(&entry).await? {
            matured += 1;
        }
    }
    let mut report = RunReport {
        period: period.label.clone(),
        finished_at: String::new(),
        matured,
        statements_closed: 0,
        statements_open: 0,
        mismatches: Vec::new(),
        supplier_statements: 0,
        bills_reconciled: 0,
        bill_mismatches: 0,
        bills_not_reconciled: Vec::new(),
    };
    if let Some(named) = &request.distributors {
        for distributor_id in named {
            settle_distributor(ctx, distributor_id, &period, &mut report).await?;
        }
    } else {
        let mut cursor = None;
        loop {
            let page = ctx
                .store
                .distributors_page(cursor.as_deref(), super::page::MAX_LIMIT)
                .await?;
            for distributor in &page.items {
                settle_distributor(ctx, &distributor.distributor_id, &period, &mut report).await?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    settle_suppliers(ctx, &period, &mut report).await?;
    if request.distributors.is_none() {
        reconcile_bills(ctx, &period, &mut report).await?;
    }
    report.finished_at = ctx.clock.now().to_rfc3339();
    // Counted on every run, 0 included: the alarm sees that runs happen.
    crate::metrics::settlement_mismatches(report.statements_open);
    if report.statements_open > 0 {
        tracing::error!(period = %report.period, open = report.statements_open, mismatches = ?report.mismatches, "settlement totals did not reconcile: statements left open");
    }
    ctx.store.put_settlement_run(&report).await?;
    tracing::info!(period = %report.period, matured, closed = report.statements_closed, "settlement run finished");
    Ok(report)
}

/// Closes each supplier's statement of the period, per currency: the payables its
/// top-ups of the period left, at the cost their orders froze. Read through the
/// payables' index (the period's range), never the orders.
async fn settle_suppliers(ctx: &Context, period: &Period, report: &mut RunReport) -> Result<()> {
    let closed_at = ctx.clock.now().to_rfc3339();
    for supplier in ctx.store.list_suppliers().await? {
        let payables = ctx
            .store
            .supplier_payables(&supplier.supplier_id, period.start, period.end)
            .await?;
        let mut by_currency: BTreeMap<&str, (u32, i64)> = BTreeMap::new();
        for payable in &payables {
            let sums = by_currency.entry(&payable.cost.currency).or_default();
            sums.0 += 1;
            sums.1 += payable.cost.amount;
        }
        for (currency, (lines, payable)) in by_currency {
            let statement = SupplierStatement {
                supplier_id: supplier.supplier_id.clone(),
                period: period.label.clone(),
                currency: currency.to_owned(),
                lines,
                payable,
                closed_at: closed_at.clone(),
            };
            match ctx.store.close_supplier_statement(&statement).await? {
                SupplierStatementClosed::Closed => report.supplier_statements += 1,
                SupplierStatementClosed::Differs(earlier) => {
                    report.statements_open += 1;
                    report.mismatches.push(format!(
                        "supplier {} {currency}: closed with {} lines, {} owed; now {lines} lines, {payable} owed",
                        supplier.supplier_id, earlier.lines, earlier.payable
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Compares each payment channel's bill for the period with Kami's book of it
/// (docs/reconciliation.md); a bill that cannot be had is reported, and the run goes on.
async fn reconcile_bills(ctx: &Context, period: &Period, report: &mut RunReport) -> Result<()> {
    for channel in ctx.store.list_channels().await? {
        match super::bills::reconcile_channel(ctx, &channel.channel_id, period).await {
            Ok(reconciled) => {
                report.bills_reconciled += 1;
                report.bill_mismatches +=
                    u32::try_from(reconciled.mismatches_total).unwrap_or(u32::MAX);
            }
            Err(
                err @ (Error::NotAvailable { .. } | Error::Upstream { .. } | Error::Timeout { .. }),
            ) => {
                tracing::warn!(channel_id = %channel.channel_id, period = %period.label, error = %err, "bill not reconciled");
                report
                    .bills_not_reconciled
                    .push(format!("{}: {err}", channel.channel_id));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn statement_id(period: &str, currency: &str, distributor_id: &str) -> String {
    format!("{period}_{currency}_{distributor_id}")
}

/// Settles one distributor's entries available before the period's end onto its
/// statements of the period (one per currency), and closes each.
async fn settle_distributor(
    ctx: &Context,
    distributor_id: &str,
    period: &Period,
    report: &mut RunReport,
) -> Result<()> {
    let entries = ctx
        .store
        .unsettled_entries(distributor_id, period.end)
        .await?;
    let mut statements = ctx
        .store
        .open_statements(distributor_id, &period.label)
        .await?;
    let mut currencies: Vec<&str> = entries.iter().map(|e| e.amount.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    for currency in currencies {
        let id = statement_id(&period.label, currency, distributor_id);
        ctx.store
            .open_statement(
                &id,
                distributor_id,
                &period.label,
                currency,
                ctx.clock.now(),
            )
            .await?;
        let statement = ctx
            .store
            .get_statement(&id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("statement {id} vanished")))?;
        // Closed already: what is left waits for the next period's statement.
        if statement.is_closed() {
            continue;
        }
        let mine: Vec<CommissionEntry> = entries
            .iter()
            .filter(|e| e.amount.currency == currency)
            .cloned()
            .collect();
        for chunk in mine.chunks(ENTRIES_PER_TRANSACTION) {
            settle_chunk(ctx, &id, chunk).await?;
        }
        if !statements.contains(&id) {
            statements.push(id);
        }
    }
    for id in statements {
        if close(ctx, &id, period, report).await? {
            report.statements_closed += 1;
        }
    }
    Ok(())
}

/// Settles `chunk` onto the statement; an entry another transaction changed meanwhile
/// (a refund's clawback, another run's statement) is settled alone or left for later.
async fn settle_chunk(ctx: &Context, statement_id: &str, chunk: &[CommissionEntry]) -> Result<()> {
    if ctx.store.settle_entries(statement_id, chunk).await? {
        return Ok(());
    }
    for entry in chunk {
        if !ctx
            .store
            .settle_entries(statement_id, std::slice::from_ref(entry))
            .await?
        {
            tracing::warn!(statement_id, entry_id = %entry.entry_id, "entry changed while being settled; left for the next run");
        }
    }
    Ok(())
}

/// Sums an open statement's lines, checks them against the entries they name and
/// against the ledger (no entry due by the period's end left off), and closes it with
/// its totals and the distributor's balance. True if this call closed it; a statement
/// whose totals do not reconcile stays open (reported).
async fn close(
    ctx: &Context,
    statement_id: &str,
    period: &Period,
    report: &mut RunReport,
) -> Result<bool> {
    let Some(statement) = ctx.store.get_statement(statement_id).await? else {
        return Ok(false);
    };
    if statement.is_closed() {
        return Ok(false);
    }
    let lines = ctx.store.statement_lines(statement_id).await?;
    let ids: Vec<String> = lines.iter().map(|l| l.entry_id.clone()).collect();
    let entries = ctx.store.entries_by_id(&ids).await?;
    let from_lines: i64 = lines.iter().map(|l| l.amount).sum();
    let settled_here: Vec<&CommissionEntry> = entries
        .iter()
        .filter(|e| e.statement_id.as_deref() == Some(statement_id))
        .collect();
    let from_entries: i64 = settled_here.iter().map(|e| e.amount.amount).sum();
    let all_settled_here = entries.len() == lines.len() && settled_here.len() == entries.len();
    if from_lines != from_entries || !all_settled_here {
        report.statements_open += 1;
        report.mismatches.push(format!(
            "{statement_id}: lines sum to {from_lines}, their entries to {from_entries} ({} lines, {} entries settled here)",
            lines.len(),
            settled_here.len()
        ));
        return Ok(false);
    }
    let left_off = entries_left_off(ctx, &statement, period).await?;
    if !left_off.is_empty() {
        report.statements_open += 1;
        report.mismatches.push(format!(
            "{statement_id}: {} entries due by the period's end ({} in all) are on no statement",
            left_off.len(),
            left_off.iter().map(|e| e.amount.amount).sum::<i64>()
        ));
        return Ok(false);
    }
    let commissions: i64 = lines
        .iter()
        .filter(|l| l.kind == EntryKind::Commission)
        .map(|l| l.amount)
        .sum();
    let clawbacks: i64 = lines
        .iter()
        .filter(|l| l.kind == EntryKind::Clawback)
        .map(|l| l.amount)
        .sum();
    // The balance is carried from the distributor's last closed statement: another
    // period's run closing one meanwhile refuses this close; read it again and retry.
    for _ in 0..CLOSE_ATTEMPTS {
        let balance: Balance = ctx
            .store
            .get_balance(&statement.distributor_id, &statement.currency)
            .await?;
        let closing = balance.carry + commissions + clawbacks;
        let closed = StatementRecord {
            status: "closed".into(),
            opening_balance: balance.carry,
            commissions,
            clawbacks,
            closing_balance: closing,
            payable: closing.max(0),
            lines: u32::try_from(lines.len()).unwrap_or(u32::MAX),
            closed_at: Some(ctx.clock.now().to_rfc3339()),
            ..statement.clone()
        };
        if ctx.store.close_statement(&closed, &balance).await? {
            return Ok(true);
        }
        let now_closed = ctx
            .store
            .get_statement(statement_id)
            .await?
            .is_none_or(|found| found.is_closed());
        if now_closed {
            // Another run closed it, from the same lines.
            return Ok(false);
        }
    }
    report.statements_open += 1;
    report.mismatches.push(format!(
        "{statement_id}: the distributor's balance kept changing while it closed"
    ));
    Ok(false)
}

/// The ledger's side of the totals: the distributor's entries in the statement's
/// currency that became available before the period's end and are still on no
/// statement (there should be none once the statement has them all). Read through the
/// index, then each entry from the table itself (the index lags the settling writes).
async fn entries_left_off(
    ctx: &Context,
    statement: &StatementRecord,
    period: &Period,
) -> Result<Vec<CommissionEntry>> {
    let listed: Vec<String> = ctx
        .store
        .unsettled_entries(&statement.distributor_id, period.end)
        .await?
        .into_iter()
        .filter(|e| e.amount.currency == statement.currency)
        .map(|e| e.entry_id)
        .collect();
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    Ok(ctx
        .store
        .entries_by_id(&listed)
        .await?
        .into_iter()
        .filter(|e| e.status == EntryStatus::Available && e.statement_id.is_none())
        .collect())
}

/// The body of `POST /admin/statements/{statement_id}/paid`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    /// The payout's reference at the bank or payment service.
    #[schema(required = true, example = "BANK-2026-12-01-0042")]
    pub reference: Option<String>,
}

impl RequestBody for PayoutRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some("invalid_reference")
    }
}

/// `POST /admin/statements/{statement_id}/paid`: records the payout once (with its
/// audit record); the same reference again answers the same; another reference is
/// `409 statement_already_paid`; an open statement `409 statement_open`.
pub async fn mark_paid(
    ctx: &Context,
    actor: &Actor,
    statement_id: &str,
    request: PayoutRequest,
) -> Result<StatementRecord> {
    let reference = request
        .reference
        .map(|r| r.trim().to_owned())
        .filter(|r| {
            !r.is_empty() && r.len() <= MAX_REFERENCE_LEN && !r.chars().any(char::is_control)
        })
        .ok_or_else(|| {
            Error::invalid_field(
                "invalid_reference",
                "reference",
                format!("reference is required: 1 to {MAX_REFERENCE_LEN} printable characters"),
            )
        })?;
    let statement = super::distributors::statement(ctx, statement_id, None)
        .await?
        .statement;
    let entry = actor.entry(
        ctx,
        "statement.paid",
        (AuditSubject::Statement, statement_id),
        Some(&reference),
        super::audit::snapshot(&statement),
        None,
    );
    let now = ctx.clock.now().to_rfc3339();
    ctx.store
        .mark_statement_paid(statement_id, &reference, &entry, &now)
        .await?;
    let after = ctx
        .store
        .get_statement(statement_id)
        .await?
        .ok_or(Error::NotFound("statement"))?;
    match after.payout_reference.as_deref() {
        Some(recorded) if recorded == reference => Ok(after),
        Some(_) => Err(Error::Conflict(ConflictKind::StatementAlreadyPaid)),
        None if !after.is_closed() => Err(Error::Conflict(ConflictKind::StatementOpen)),
        None => Err(Error::Contention("statement")),
    }
}

/// `GET /admin/settlements?period=`: the period's statements and its last run.
#[derive(Debug, Serialize, ToSchema)]
pub struct Settlement {
    pub period: String,
    /// The period's last run (null before one ran).
    pub run: Option<SettlementRun>,
    pub statements: Vec<StatementRecord>,
    /// What Kami owes each supplier for the period's top-ups, per currency.
    pub supplier_statements: Vec<SupplierStatement>,
    /// Each payment channel's bill compared with Kami's records (the latest run's).
    pub reconciliation: Vec<ReconciliationReport>,
}

pub async fn settlement(ctx: &Context, query: Option<&str>) -> Result<Settlement> {
    let (_, _, values) = super::distributors::list_query(query, &["period"])?;
    let label = values.into_iter().next().flatten().ok_or_else(|| {
        Error::invalid_field(
            "invalid_period",
            "period",
            "period is required (YYYY-MM-DD)",
        )
    })?;
    let period = period_for(
        Some(&label),
        ctx.clock.now(),
        &ctx.config.settlement_time_zone,
    )?;
    Ok(Settlement {
        run: ctx.store.get_settlement_run(&period.label).await?,
        statements: ctx.store.statements_in_period(&period.label).await?,
        supplier_statements: ctx.store.supplier_statements(&period.label).await?,
        reconciliation: ctx.store.reconciliation_reports(&period.label).await?,
        period: period.label,
    })
}

/// The period's distributor statements as CSV, one row each (the suppliers' have their
/// own export).
impl super::CsvView for Settlement {
    const COLUMNS: &'static [&'static str] = &[
        "statement_id",
        "distributor_id",
        "period",
        "currency",
        "status",
        "opening_balance",
        "commissions",
        "clawbacks",
        "closing_balance",
        "payable",
        "lines",
        "paid_at",
        "payout_reference",
    ];

    fn rows(&self) -> Vec<Vec<String>> {
        self.statements
            .iter()
            .map(|s| {
                vec![
                    s.statement_id.clone(),
                    s.distributor_id.clone(),
                    s.period.clone(),
                    s.currency.clone(),
                    s.status.as_str().to_owned(),
                    s.opening_balance.to_string(),
                    s.commissions.to_string(),
                    s.clawbacks.to_string(),
                    s.closing_balance.to_string(),
                    s.payable.to_string(),
                    s.lines.to_string(),
                    s.paid_at.clone().unwrap_or_default(),
                    s.payout_reference.clone().unwrap_or_default(),
                ]
            })
            .collect()
    }
}

/// `GET /admin/settlements/{period}/suppliers/{supplier_id}`: what Kami owes a supplier
/// for the period's top-ups.
#[derive(Debug, Serialize, ToSchema)]
pub struct SupplierPayables {
    pub supplier_id: String,
    pub period: String,
    /// The closed statements, one per currency (none before a run closed the period).
    pub statements: Vec<SupplierStatement>,
    /// Each top-up the supplier made in the period, at its cost, oldest first.
    pub payables: Vec<Payable>,
}

pub async fn supplier_payables(
    ctx: &Context,
    label: &str,
    supplier_id: &str,
) -> Result<SupplierPayables> {
    let period = period_for(
        Some(label),
        ctx.clock.now(),
        &ctx.config.settlement_time_zone,
    )?;
    if ctx.store.get_supplier(supplier_id).await?.is_none() {
        return Err(Error::NotFound("supplier"));
    }
    let statements = ctx
        .store
        .supplier_statements(&period.label)
        .await?
        .into_iter()
        .filter(|statement| statement.supplier_id == supplier_id)
        .collect();
    Ok(SupplierPayables {
        payables: ctx
            .store
            .supplier_payables(supplier_id, period.start, period.end)
            .await?,
        supplier_id: supplier_id.to_owned(),
        period: period.label,
        statements,
    })
}

/// The supplier's top-ups of the period as CSV, one row each.
impl super::CsvView for SupplierPayables {
    const COLUMNS: &'static [&'static str] = &[
        "supplier_id",
        "period",
        "order_id",
        "request_id",
        "supplier_ref",
        "cost",
        "currency",
        "at",
    ];

    fn rows(&self) -> Vec<Vec<String>> {
        self.payables
            .iter()
            .map(|p| {
                vec![
                    self.supplier_id.clone(),
                    self.period.clone(),
                    p.order_id.clone(),
                    p.request_id.clone(),
                    p.supplier_ref.clone().unwrap_or_default(),
                    p.cost.amount.to_string(),
                    p.cost.currency.clone(),
                    p.at.clone(),
                ]
            })
            .collect()
    }
}

/// A statement for the admin (any distributor's).
pub async fn admin_statement(ctx: &Context, statement_id: &str) -> Result<StatementView> {
    super::distributors::statement(ctx, statement_id, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_days_in_the_zone() {
        let period = period_of(jiff::civil::date(2026, 11, 30), "Asia/Shanghai").unwrap();
        assert_eq!(period.label, "2026-11-30");
        // Midnight in Shanghai is 16:00 UTC the day before.
        assert_eq!(period.start.to_rfc3339(), "2026-11-29T16:00:00.000Z");
        assert_eq!(period.end.to_rfc3339(), "2026-11-30T16:00:00.000Z");
        let utc = period_of(jiff::civil::date(2026, 11, 30), "UTC").unwrap();
        assert_eq!(utc.start.to_rfc3339(), "2026-11-30T00:00:00.000Z");
    }

    #[test]
    fn without_a_period_a_run_closes_yesterday_in_the_zone() {
        // 2026-12-01T17:00Z is already 2026-12-02 01:00 in Shanghai.
        let now = Timestamp(1_796_144_400_000);
        assert_eq!(now.to_rfc3339(), "2026-12-01T17:00:00.000Z");
        let period = period_for(None, now, "Asia/Shanghai").unwrap();
        assert_eq!(period.label, "2026-12-01");
        let period = period_for(None, now, "UTC").unwrap();
        assert_eq!(period.label, "2026-11-30");
        assert!(period_for(Some("2026-13-01"), now, "UTC").is_err());
        assert!(zone("Mars/Olympus").is_err());
    }
}
