//! Supplier payables (docs/distributors.md, "Supplier payables"): what Kami owes a
//! supplier for each top-up it made.
//!
//! A payable is written with the request's move to `success`, in the same transaction:
//! `PAYABLE#{order_id}` / `REQUEST#{seq:03}`, one per successful request, so a request
//! settled twice is owed once (a partition of its own, not the order's: who reads
//! payables needs no grant on orders); `gsi1` `PAYABLES#{supplier}` by the success time
//! finds a supplier's payables of a period. A period's statement per supplier and
//! currency is `SUPPLIERSTATEMENTS#{period}` / `SUPPLIER#{supplier}#{currency}`.

use super::codec::{FromItem, Item, get_money, get_n, get_opt_s, get_s, get_u32, item, n, s};
use super::tx::{ItemName, Tx};
use super::{ORDER_INDEX, Store, TopUpAttempt};
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

fn payables_index(supplier_id: &str) -> String {
    format!("PAYABLES#{supplier_id}")
}
fn statements_partition(period: &str) -> String {
    format!("SUPPLIERSTATEMENTS#{period}")
}

/// One top-up a supplier made: what Kami owes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Payable {
    pub order_id: String,
    pub request_id: String,
    pub supplier_id: String,
    /// The supplier's own reference for the top-up.
    pub supplier_ref: Option<String>,
    pub cost: Money,
    /// When the supplier's success was recorded (RFC 3339, UTC).
    pub at: String,
}

impl FromItem for Payable {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(Payable {
            order_id: get_s(item, "order_id")?,
            request_id: get_s(item, "request_id")?,
            supplier_id: get_s(item, "supplier_id")?,
            supplier_ref: get_opt_s(item, "supplier_ref"),
            cost: get_money(item, "amount")?,
            at: Timestamp(get_n(item, "gsi1sk")?).to_rfc3339(),
        })
    }
}

/// A supplier's statement of a period in one currency: the sum of its payables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SupplierStatement {
    pub supplier_id: String,
    pub period: String,
    pub currency: String,
    /// Top-ups it made in the period.
    pub lines: u32,
    /// What Kami owes it for them (minor units).
    pub payable: i64,
    pub closed_at: String,
}

impl FromItem for SupplierStatement {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(SupplierStatement {
            supplier_id: get_s(item, "supplier_id")?,
            period: get_s(item, "period")?,
            currency: get_s(item, "currency")?,
            lines: get_u32(item, "lines")?,
            payable: get_n(item, "payable")?,
            closed_at: get_s(item, "closed_at")?,
        })
    }
}

impl Tx {
    /// What Kami owes for `attempt` once its supplier succeeded (nothing when the order
    /// tracks no cost). Written once per request.
    pub(crate) fn owe_supplier(
        &mut self,
        attempt: &TopUpAttempt,
        supplier_ref: Option<&str>,
        at: Timestamp,
    ) -> Result<&mut Self> {
        let Some(cost) = &attempt.cost else {
            return Ok(self);
        };
        let mut stored = item(
            (
                format!("PAYABLE#{}", attempt.order_id),
                format!("REQUEST#{:03}", attempt.seq),
            ),
            "payable",
            [
                ("order_id", s(&attempt.order_id)),
                ("request_id", s(&attempt.request_id)),
                ("supplier_id", s(&attempt.supplier_id)),
                ("amount", n(cost.amount)),
                ("currency", s(&cost.currency)),
                ("gsi1pk", s(payables_index(&attempt.supplier_id))),
                ("gsi1sk", n(at.0)),
            ],
        );
        if let Some(supplier_ref) = supplier_ref {
            stored.insert("supplier_ref".to_owned(), s(supplier_ref));
        }
        self.put(ItemName::Payable, stored, Some("attribute_not_exists(pk)"))
    }
}

/// How closing a supplier statement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupplierStatementClosed {
    /// Written now, or by an earlier run with the same sums.
    Closed,
    /// An earlier run closed it with other sums: the period changed after it closed.
    Differs(SupplierStatement),
}

impl Store {
    /// Access pattern: a supplier's payables recorded in `[start, end)` (`gsi1`
    /// `PAYABLES#{supplier}` by time, then the items themselves).
    pub async fn supplier_payables(
        &self,
        supplier_id: &str,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<Payable>> {
        let query = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :start AND :last")
            .expression_attribute_values(":pk", s(payables_index(supplier_id)))
            .expression_attribute_values(":start", n(start.0))
            .expression_attribute_values(":last", n(end.0 - 1));
        let mut payables: Vec<Payable> = self.indexed_as(query, "payables").await?;
        payables.sort_by(|a, b| (&a.at, &a.request_id).cmp(&(&b.at, &b.request_id)));
        Ok(payables)
    }

    /// Access pattern: close a supplier's statement of a period, once: a second run
    /// with the same sums changes nothing; other sums are reported, never written.
    pub async fn close_supplier_statement(
        &self,
        statement: &SupplierStatement,
    ) -> Result<SupplierStatementClosed> {
        let key = (
            statements_partition(&statement.period),
            format!("SUPPLIER#{}#{}", statement.supplier_id, statement.currency),
        );
        let stored = item(
            key.clone(),
            "supplier_statement",
            [
                ("supplier_id", s(&statement.supplier_id)),
                ("period", s(&statement.period)),
                ("currency", s(&statement.currency)),
                ("lines", n(statement.lines)),
                ("payable", n(statement.payable)),
                ("closed_at", s(&statement.closed_at)),
            ],
        );
        if self.put_if_absent(stored).await? {
            return Ok(SupplierStatementClosed::Closed);
        }
        let found = self
            .get(key, true)
            .await?
            .ok_or_else(|| Error::Corrupt("a supplier statement vanished".into()))?;
        let earlier = SupplierStatement::from_item(&found)?;
        Ok(
            if (earlier.lines, earlier.payable) == (statement.lines, statement.payable) {
                SupplierStatementClosed::Closed
            } else {
                SupplierStatementClosed::Differs(earlier)
            },
        )
    }

    /// Access pattern: a period's supplier statements (one partition).
    pub async fn supplier_statements(&self, period: &str) -> Result<Vec<SupplierStatement>> {
        self.partition_as(&statements_partition(period)).await
    }
}
