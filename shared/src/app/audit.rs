//! The audit trail (`GET /admin/audit`): who did what to which order, product, channel
//! or supplier, when, from where, and the subject before and after, as an operator sees
//! it (secrets as `"<set>"`, card keys never). docs/operations.md, "Audit trail".

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::page;
use crate::config::Context;
use crate::domain::time::new_id;
use crate::error::{Error, Result};
use crate::store::{AuditCursor, AuditEntry, AuditOf, AuditSubject, OperatorNote};

/// The operator behind a request: the name of the admin token it carried, and the
/// client address API Gateway saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub source_ip: Option<String>,
}

impl Actor {
    /// The record of one action of this actor on `subject`, dated now.
    pub fn entry(
        &self,
        ctx: &Context,
        action: &str,
        (subject, subject_id): (AuditSubject, &str),
        reason: Option<&str>,
        before: Option<String>,
        after: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            audit_id: new_id(),
            at: ctx.clock.now().to_rfc3339(),
            actor: self.name.clone(),
            source_ip: self.source_ip.clone(),
            action: action.to_owned(),
            subject: subject.as_str().to_owned(),
            subject_id: subject_id.to_owned(),
            reason: reason.map(str::to_owned),
            before,
            after,
        }
    }

    /// What an order's history keeps of this actor's step: who, and why.
    pub fn note(&self, reason: &str) -> OperatorNote {
        OperatorNote {
            by: self.name.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Records an action that took effect on its own (no transaction to join). A lost
    /// record is logged, never turned into a failure of the action that happened.
    pub async fn record(&self, ctx: &Context, entry: AuditEntry) {
        if let Err(err) = ctx.store.put_audit(&entry).await {
            tracing::error!(error = %err, action = entry.action, subject_id = entry.subject_id, "audit record not written");
        }
    }
}

/// The JSON an audit record keeps of a subject (its operator view).
pub fn snapshot<T: Serialize>(view: &T) -> Option<String> {
    serde_json::to_string(view).ok()
}

/// The query of `GET /admin/audit`: exactly one of `order`, `product`, `channel`,
/// `supplier`, `payment`, `distributor`, `statement`, `mismatch`, `api_key`, `actor`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// An order's id: every action on it.
    pub order: Option<String>,
    /// A product's sku.
    pub product: Option<String>,
    /// A payment channel's id.
    pub channel: Option<String>,
    /// A distributor's id.
    pub distributor: Option<String>,
    /// A statement's id.
    pub statement: Option<String>,
    /// A supplier's id.
    pub supplier: Option<String>,
    /// A payment event, `{provider}:{event_id}`.
    pub payment: Option<String>,
    /// A reconciliation mismatch, `{period}/{mismatch_id}`.
    pub mismatch: Option<String>,
    /// A merchant API key's id.
    pub api_key: Option<String>,
    /// An operator's name (an admin token's name): everything they did.
    pub actor: Option<String>,
    /// Entries per page, 1 to 100 (default 50), newest first.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One page of the audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts (pass it as `cursor`); absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn invalid(field: &str, message: &str) -> Error {
    Error::invalid_field("invalid_query", field, message.to_owned())
}

impl AuditQuery {
    /// Reads a raw query string; unknown parameters are refused by name.
    pub fn parse(query: Option<&str>) -> Result<Self> {
        let mut parsed = AuditQuery::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let value = Some(value.into_owned());
            match name.as_ref() {
                "order" => parsed.order = value,
                "product" => parsed.product = value,
                "channel" => parsed.channel = value,
                "supplier" => parsed.supplier = value,
                "payment" => parsed.payment = value,
                "distributor" => parsed.distributor = value,
                "statement" => parsed.statement = value,
                "mismatch" => parsed.mismatch = value,
                "api_key" => parsed.api_key = value,
                "actor" => parsed.actor = value,
                "cursor" => parsed.cursor = value,
                "limit" => parsed.limit = Some(page::limit(value.as_deref().unwrap_or_default())?),
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        Ok(parsed)
    }

    fn of(self) -> Result<AuditOf> {
        let named = [
            (
                "order",
                self.order
                    .map(|id| AuditOf::Subject(AuditSubject::Order, id)),
            ),
            (
                "product",
                self.product
                    .map(|id| AuditOf::Subject(AuditSubject::Product, id)),
            ),
            (
                "channel",
                self.channel
                    .map(|id| AuditOf::Subject(AuditSubject::Channel, id)),
            ),
            (
                "supplier",
                self.supplier
                    .map(|id| AuditOf::Subject(AuditSubject::Supplier, id)),
            ),
            (
                "payment",
                self.payment
                    .map(|id| AuditOf::Subject(AuditSubject::Payment, id)),
            ),
            (
                "distributor",
                self.distributor
                    .map(|id| AuditOf::Subject(AuditSubject::Distributor, id)),
            ),
            (
                "statement",
                self.statement
                    .map(|id| AuditOf::Subject(AuditSubject::Statement, id)),
            ),
            (
                "mismatch",
                self.mismatch
                    .map(|id| AuditOf::Subject(AuditSubject::Mismatch, id)),
            ),
            (
                "api_key",
                self.api_key
                    .map(|id| AuditOf::Subject(AuditSubject::ApiKey, id)),
            ),
            ("actor", self.actor.map(AuditOf::Actor)),
        ];
        let mut given = named.into_iter().filter_map(|(name, of)| Some((name, of?)));
        match (given.next(), given.next()) {
            (Some((name, of)), None) => {
                let id = match &of {
                    AuditOf::Subject(_, id) | AuditOf::Actor(id) => id,
                };
                if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
                    return Err(invalid(name, "must be 1 to 128 printable characters"));
                }
                Ok(of)
            }
            (None, _) => Err(invalid(
                "order",
                "name one of order, product, channel, supplier, payment, distributor, statement, mismatch, api_key or actor",
            )),
            (Some(_), Some((second, _))) => Err(invalid(
                second,
                "name only one of order, product, channel, supplier, payment, distributor, statement, mismatch, api_key or actor",
            )),
        }
    }
}

/// `GET /admin/audit`: one page of one subject's or one actor's actions.
pub async fn list_audit(ctx: &Context, query: AuditQuery) -> Result<AuditPage> {
    let limit = query.limit.unwrap_or(page::DEFAULT_LIMIT);
    let cursor = query
        .cursor
        .as_deref()
        .map(|text| page::decode_cursor(text, AuditCursor::parse))
        .transpose()?;
    let of = query.of()?;
    let (entries, next) = ctx.store.audit_page(&of, cursor.as_ref(), limit).await?;
    Ok(AuditPage {
        entries,
        next_cursor: next.map(|c| page::encode_cursor(&c.text())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_subject_or_actor_is_named() {
        let of = |q: &str| AuditQuery::parse(Some(q)).and_then(AuditQuery::of);
        assert_eq!(
            of("order=01KB0000000000000000000000").ok(),
            Some(AuditOf::Subject(
                AuditSubject::Order,
                "01KB0000000000000000000000".into()
            ))
        );
        assert_eq!(of("actor=alice").ok(), Some(AuditOf::Actor("alice".into())));
        for (query, path) in [
            ("", "order"),
            ("order=a&actor=b", "actor"),
            ("limit=0&order=a", "limit"),
            ("who=a", "who"),
        ] {
            match of(query) {
                Err(Error::InvalidRequest { path: got, .. }) => {
                    assert_eq!(got.as_deref(), Some(path), "{query}")
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_cursor_names_an_audit_partition_and_an_id() {
        let cursor = AuditCursor {
            pk: "AUDIT#order#01KB0000000000000000000000".into(),
            audit_id: "01KB0000000000000000000001".into(),
        };
        assert_eq!(AuditCursor::parse(&cursor.text()), Some(cursor));
        assert_eq!(
            AuditCursor::parse("ORDER#x|01KB0000000000000000000001"),
            None
        );
        assert_eq!(AuditCursor::parse("AUDIT#order#x|not-an-id"), None);
    }
}
