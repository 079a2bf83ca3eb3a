//! The exception queue: every order that needs a person, with its cause, age and
//! history (`GET /admin/exceptions`), served by the index `gsi2`, never a scan.
//! docs/operations.md, "The exception queue".

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::page;
use crate::config::Context;
use crate::error::{Error, Result};
use crate::store::{ExceptionEntry, ExceptionFilter, cursor_key, cursor_text};

/// What `cause` may be: a status that needs a person, or a detail of one.
pub const CAUSES: [&str; 17] = [
    "delivery_failed",
    "partially_delivered",
    crate::store::STOCK_MISMATCH,
    "payment_exception",
    "paid_after_expiry",
    "duplicate_payment",
    "unknown_order",
    "unbound_event",
    "supplier_outcome_unknown",
    "no_supplier_succeeded",
    "amount_mismatch",
    "currency_mismatch",
    crate::store::RECONCILIATION_MISMATCH,
    "missing_in_kami",
    "missing_in_bill",
    "amount_differs",
    "status_differs",
];

/// The query of `GET /admin/exceptions`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExceptionsQuery {
    /// Only this cause: `delivery_failed`, `payment_exception`, `paid_after_expiry`, or a
    /// detail (`supplier_outcome_unknown`, `no_supplier_succeeded`, `amount_mismatch`,
    /// `currency_mismatch`).
    pub cause: Option<String>,
    /// Only orders that have needed a person for at least this many seconds.
    #[param(minimum = 0)]
    pub older_than: Option<i64>,
    /// `oldest` (default) or `newest` first.
    pub order: Option<String>,
    /// Orders per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One page of the exception queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExceptionPage {
    pub exceptions: Vec<ExceptionEntry>,
    /// Where the next page starts (pass it as `cursor`); absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn invalid(field: &str, message: &str) -> Error {
    Error::invalid_field("invalid_query", field, message.to_owned())
}

impl ExceptionsQuery {
    /// Reads a raw query string; unknown parameters are refused by name.
    pub fn parse(query: Option<&str>) -> Result<Self> {
        let mut parsed = ExceptionsQuery::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            match name.as_ref() {
                "cause" => parsed.cause = Some(value),
                "older_than" => {
                    parsed.older_than = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|s: &i64| *s >= 0)
                            .ok_or_else(|| {
                                invalid(
                                    "older_than",
                                    "older_than must be a number of seconds, 0 or more",
                                )
                            })?,
                    )
                }
                "order" => parsed.order = Some(value),
                "limit" => parsed.limit = Some(page::limit(&value)?),
                "cursor" => parsed.cursor = Some(value),
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        Ok(parsed)
    }
}

fn encode_cursor(key: &crate::store::Item) -> Result<String> {
    Ok(page::encode_cursor(&cursor_text(key)?))
}

fn decode_cursor(cursor: &str) -> Result<crate::store::Item> {
    page::decode_cursor(cursor, cursor_key)
}

/// `GET /admin/exceptions`: one page, oldest first unless asked otherwise.
pub async fn list_exceptions(ctx: &Context, query: ExceptionsQuery) -> Result<ExceptionPage> {
    if let Some(cause) = &query.cause
        && !CAUSES.contains(&cause.as_str())
    {
        return Err(invalid(
            "cause",
            "cause is not one the exception queue knows",
        ));
    }
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => return Err(invalid("order", "order must be oldest or newest")),
    };
    let now = ctx.clock.now();
    let filter = ExceptionFilter {
        cause: query.cause,
        since_at_most: query.older_than.map(|seconds| now.plus_seconds(-seconds)),
        newest_first,
        limit: query.limit.unwrap_or(page::DEFAULT_LIMIT),
    };
    let start = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let (exceptions, next) = ctx.store.exceptions(&filter, start, now).await?;
    Ok(ExceptionPage {
        exceptions,
        next_cursor: next.as_ref().map(encode_cursor).transpose()?,
    })
}
