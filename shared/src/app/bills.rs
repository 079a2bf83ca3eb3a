//! Provider bill reconciliation (对账, docs/reconciliation.md): a channel's bill for a
//! period, fetched from its provider, compared line by line with the payments and
//! refunds Kami entered in the channel's book for the same period. Each difference is
//! filed once in the exception queue (`reconciliation_mismatch`) with both sides; the
//! report is kept per (period, channel). Running it again files nothing new.

use std::collections::HashMap;

use super::settlement::Period;
use crate::config::Context;
use crate::error::{Error, Result};
use crate::ports::payment::{BillLine, BillLineKind, BillLineStatus, BillPeriod};
use crate::store::{KamiLine, Mismatch, MismatchKind, REPORT_MISMATCHES, ReconciliationReport};

/// What comparing a bill with Kami's book found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub matched: usize,
    pub in_flight: usize,
    pub mismatches: Vec<Mismatch>,
}

/// What a line is matched by: a payment's provider reference, a refund's id.
fn match_key(line: &BillLine) -> Option<&str> {
    match line.kind {
        BillLineKind::Payment => line.provider_ref.as_deref(),
        BillLineKind::Refund => line.refund_id.as_deref(),
    }
}

/// What a difference is filed under: the matching key, else any id the line has.
fn filing_key<'a>(line: &'a BillLine, order_id: Option<&'a str>) -> String {
    match_key(line)
        .or(line.provider_ref.as_deref())
        .or(line.payment_id.as_deref())
        .or(order_id)
        .unwrap_or("unnamed")
        .to_owned()
}

/// Compares `bill` with `book` line by line. A payment is matched by the provider's
/// reference, else by Kami's payment id; a refund by Kami's refund id. A line twice in
/// the bill matches Kami's record once. A refund Kami holds as pending and the bill does
/// not have yet is in flight, not a difference; one the provider refused is expected
/// absent.
pub fn compare(bill: &[BillLine], book: &[KamiLine]) -> Comparison {
    let mut unmatched: Vec<Option<&KamiLine>> = book.iter().map(Some).collect();
    let mut by_key: HashMap<(BillLineKind, &str), Vec<usize>> = HashMap::new();
    let mut by_payment_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, kami) in book.iter().enumerate() {
        let line = &kami.line;
        if let Some(key) = match_key(line) {
            by_key.entry((line.kind, key)).or_default().push(i);
        }
        if let (BillLineKind::Payment, Some(payment_id)) = (line.kind, &line.payment_id) {
            by_payment_id.entry(payment_id).or_default().push(i);
        }
    }
    let mut take = |indices: Option<&Vec<usize>>| -> Option<&KamiLine> {
        indices?
            .iter()
            .find_map(|&i| unmatched.get_mut(i).and_then(Option::take))
    };
    let mut comparison = Comparison::default();
    for line in bill {
        let found =
            take(match_key(line).and_then(|key| by_key.get(&(line.kind, key)))).or_else(|| {
                match line.kind {
                    BillLineKind::Payment => take(
                        line.payment_id
                            .as_deref()
                            .and_then(|id| by_payment_id.get(id)),
                    ),
                    BillLineKind::Refund => None,
                }
            });
        let kind = match found {
            None => Some(MismatchKind::MissingInKami),
            Some(kami) if kami.line.amount != line.amount => Some(MismatchKind::AmountDiffers),
            Some(kami) if kami.line.status != line.status => Some(MismatchKind::StatusDiffers),
            Some(_) => None,
        };
        match kind {
            None => comparison.matched += 1,
            Some(kind) => comparison.mismatches.push(Mismatch {
                kind,
                line_kind: line.kind,
                key: filing_key(line, None),
                bill: Some(line.clone()),
                kami: found.cloned(),
            }),
        }
    }
    for kami in unmatched.into_iter().flatten() {
        match kami.line.status {
            BillLineStatus::Pending => comparison.in_flight += 1,
            BillLineStatus::Failed => {}
            BillLineStatus::Succeeded => comparison.mismatches.push(Mismatch {
                kind: MismatchKind::MissingInBill,
                line_kind: kami.line.kind,
                key: filing_key(&kami.line, Some(&kami.order_id)),
                bill: None,
                kami: Some(kami.clone()),
            }),
        }
    }
    comparison
}

/// Reconciles one channel's bill for `period`: fetch, compare, file each difference
/// once, keep the report (it replaces an earlier run's). Fails, changing nothing, when
/// the provider's bill cannot be had.
pub async fn reconcile_channel(
    ctx: &Context,
    channel_id: &str,
    period: &Period,
) -> Result<ReconciliationReport> {
    let channel = ctx
        .store
        .get_channel(channel_id)
        .await?
        .ok_or(Error::NotFound("channel"))?;
    let bill = super::channels::bill_source_for(ctx, &channel)
        .await?
        .fetch_bill(&BillPeriod {
            date: period.label.clone(),
            start: period.start,
            end: period.end,
        })
        .await?;
    let book = ctx
        .store
        .channel_book(channel_id, period.start, period.end)
        .await?;
    let comparison = compare(&bill, &book.lines);
    let now = ctx.clock.now();
    let mut filed = 0;
    for mismatch in &comparison.mismatches {
        if ctx
            .store
            .file_mismatch(&period.label, channel_id, mismatch, now)
            .await?
        {
            filed += 1;
        }
    }
    let report = ReconciliationReport {
        period: period.label.clone(),
        channel_id: channel_id.to_owned(),
        provider: channel.settings.provider.as_str().to_owned(),
        bill_lines: bill.len(),
        kami_lines: book.lines.len(),
        matched: comparison.matched,
        in_flight: comparison.in_flight,
        mismatches_total: comparison.mismatches.len(),
        filed,
        mismatches: comparison
            .mismatches
            .into_iter()
            .take(REPORT_MISMATCHES)
            .collect(),
        reconciled_at: ctx.clock.now().to_rfc3339(),
    };
    ctx.store.put_reconciliation_report(&report).await?;
    if report.clean() {
        tracing::info!(channel_id, period = %period.label, lines = report.bill_lines, "bill reconciled");
    } else {
        tracing::warn!(channel_id, period = %period.label, mismatches = report.mismatches_total, filed, "bill differs from Kami's records");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Money;

    fn billed(kind: BillLineKind, reference: &str, id: &str, amount: i64) -> BillLine {
        BillLine {
            kind,
            provider_ref: Some(reference.into()),
            payment_id: (kind == BillLineKind::Payment).then(|| id.to_owned()),
            refund_id: (kind == BillLineKind::Refund).then(|| id.to_owned()),
            amount: Money::price(amount, "CNY").unwrap(),
            status: BillLineStatus::Succeeded,
        }
    }

    /// As Kami records it: a refund record knows its refund id, not the provider's
    /// reference.
    fn recorded(kind: BillLineKind, reference: &str, id: &str, amount: i64) -> KamiLine {
        let mut line = billed(kind, reference, id, amount);
        if kind == BillLineKind::Refund {
            line.provider_ref = None;
        }
        KamiLine {
            order_id: "01ORDER".into(),
            at: "2026-12-01T00:00:00Z".into(),
            line,
        }
    }

    fn kinds(comparison: &Comparison) -> Vec<(MismatchKind, String)> {
        comparison
            .mismatches
            .iter()
            .map(|m| (m.kind, m.key.clone()))
            .collect()
    }

    /// GIVEN a bill with the same payments and refunds Kami recorded THEN no difference.
    #[test]
    fn a_clean_bill_has_no_mismatch() {
        use BillLineKind::{Payment, Refund};
        let bill = [
            billed(Payment, "T1", "P1", 990),
            billed(Refund, "T1", "R1", 100),
        ];
        let book = [
            recorded(Refund, "T1", "R1", 100),
            recorded(Payment, "T1", "P1", 990),
        ];
        let comparison = compare(&bill, &book);
        assert_eq!(comparison.matched, 2);
        assert!(comparison.mismatches.is_empty(), "{comparison:?}");
    }

    /// GIVEN each kind of difference THEN each is found once, with both sides.
    #[test]
    fn each_kind_of_difference_is_found() {
        use BillLineKind::{Payment, Refund};
        let mut pending = recorded(Refund, "T3", "R3", 50);
        pending.line.status = BillLineStatus::Pending;
        let mut refused = recorded(Refund, "T3", "R4", 60);
        refused.line.status = BillLineStatus::Failed;
        let bill = [
            billed(Payment, "T1", "P1", 990),
            billed(Payment, "T1", "P1", 990),
            billed(Payment, "T2", "P2", 980),
            billed(Payment, "TX", "PX", 10),
            billed(Refund, "T3", "R3", 50),
        ];
        let book = [
            recorded(Payment, "T1", "P1", 990),
            recorded(Payment, "T2", "P2", 990),
            recorded(Payment, "T4", "P4", 500),
            pending,
            refused,
        ];
        let comparison = compare(&bill, &book);
        assert_eq!(
            kinds(&comparison),
            vec![
                (MismatchKind::MissingInKami, "T1".into()),
                (MismatchKind::AmountDiffers, "T2".into()),
                (MismatchKind::MissingInKami, "TX".into()),
                (MismatchKind::StatusDiffers, "R3".into()),
                (MismatchKind::MissingInBill, "T4".into()),
            ]
        );
        assert_eq!(comparison.matched, 1);
        let amount = &comparison.mismatches[1];
        assert_eq!(amount.bill.as_ref().map(|b| b.amount.amount), Some(980));
        assert_eq!(
            amount.kami.as_ref().map(|k| k.line.amount.amount),
            Some(990)
        );
    }

    /// GIVEN a bill line without the provider reference Kami holds but with Kami's
    /// payment id THEN it matches by the payment id; a pending refund not billed yet is
    /// in flight.
    #[test]
    fn falls_back_to_the_payment_id_and_counts_refunds_in_flight() {
        use BillLineKind::{Payment, Refund};
        let mut pending = recorded(Refund, "T1", "R1", 10);
        pending.line.status = BillLineStatus::Pending;
        let comparison = compare(
            &[billed(Payment, "ch_other", "P1", 990)],
            &[recorded(Payment, "pi_1", "P1", 990), pending],
        );
        assert_eq!((comparison.matched, comparison.in_flight), (1, 1));
        assert!(comparison.mismatches.is_empty());
    }
}
