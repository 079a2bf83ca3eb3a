//! The audit trail: one item per admin or operator action, never updated or deleted
//! (`attribute_not_exists` on every put; no role may update or delete `AUDIT#` items,
//! docs/security.md). Partitioned by what the action was on (`AUDIT#{kind}#{id}`),
//! newest last by its ULID; the sparse index `gsi3` (`gsi3pk = AUDITBY#{actor}`) lists
//! one actor's actions. docs/dynamodb.md, "Audit trail".

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{Item, get_opt_s, get_s, s};
use super::tx::{ItemName, Tx};
use super::{AUDIT_INDEX, Store};
use crate::error::{Error, Result};

const AUDIT_PREFIX: &str = "AUDIT#";
const ACTOR_PREFIX: &str = "AUDITBY#";

/// What an action was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditSubject {
    Order,
    Product,
    Channel,
    Supplier,
    /// A provider's payment event (`{provider}:{event_id}`).
    Payment,
    Distributor,
    Statement,
    /// A reconciliation mismatch (`{period}/{mismatch_id}`).
    Mismatch,
    /// A merchant API key.
    ApiKey,
}

impl AuditSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSubject::Order => "order",
            AuditSubject::Product => "product",
            AuditSubject::Channel => "channel",
            AuditSubject::Supplier => "supplier",
            AuditSubject::Payment => "payment",
            AuditSubject::Distributor => "distributor",
            AuditSubject::Statement => "statement",
            AuditSubject::Mismatch => "mismatch",
            AuditSubject::ApiKey => "api_key",
        }
    }
}

/// One action as recorded. `before` and `after` are the JSON of what an operator sees
/// of the subject (secrets as `"<set>"`, never a card key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub audit_id: String,
    pub at: String,
    /// The operator: the name of the admin token used (docs/security.md).
    pub actor: String,
    /// The client address API Gateway saw, when there was one.
    pub source_ip: Option<String>,
    /// `order.resolve`, `order.redeliver`, `product.create`, `supplier.put`, ...
    pub action: String,
    /// `order`, `product`, `channel` or `supplier`.
    pub subject: String,
    pub subject_id: String,
    pub reason: Option<String>,
    /// The subject before the action, as an operator sees it (absent for a creation).
    #[serde(serialize_with = "as_json")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<String>,
    /// The subject after it.
    #[serde(serialize_with = "as_json")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<String>,
}

/// Stored as JSON text, shown as the JSON it is.
fn as_json<S: serde::Serializer>(
    text: &Option<String>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    match text
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Ok(value)) => value.serialize(serializer),
        _ => text.serialize(serializer),
    }
}

fn partition(subject: &str, subject_id: &str) -> String {
    format!("{AUDIT_PREFIX}{subject}#{subject_id}")
}

fn entry_item(entry: &AuditEntry) -> Item {
    let mut item: Item = [
        ("pk", s(partition(&entry.subject, &entry.subject_id))),
        ("sk", s(&entry.audit_id)),
        ("entity", s("audit")),
        ("gsi3pk", s(format!("{ACTOR_PREFIX}{}", entry.actor))),
        ("gsi3sk", s(&entry.audit_id)),
        ("at", s(&entry.at)),
        ("actor", s(&entry.actor)),
        ("action", s(&entry.action)),
        ("subject", s(&entry.subject)),
        ("subject_id", s(&entry.subject_id)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let optional = [
        ("source_ip", &entry.source_ip),
        ("reason", &entry.reason),
        ("before", &entry.before),
        ("after", &entry.after),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            item.insert(name.to_owned(), s(value));
        }
    }
    item
}

fn read_entry(item: &Item) -> Result<AuditEntry> {
    Ok(AuditEntry {
        audit_id: get_s(item, "sk")?,
        at: get_s(item, "at")?,
        actor: get_s(item, "actor")?,
        source_ip: get_opt_s(item, "source_ip"),
        action: get_s(item, "action")?,
        subject: get_s(item, "subject")?,
        subject_id: get_s(item, "subject_id")?,
        reason: get_opt_s(item, "reason"),
        before: get_opt_s(item, "before"),
        after: get_opt_s(item, "after"),
    })
}

/// Whose actions a page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOf {
    Subject(AuditSubject, String),
    Actor(String),
}

const NOT_YET_WRITTEN: &str = "attribute_not_exists(pk)";

impl Tx {
    /// The action's record, written with the change it records or not at all.
    pub(crate) fn audit(&mut self, entry: &AuditEntry) -> Result<&mut Self> {
        self.put(ItemName::Audit, entry_item(entry), Some(NOT_YET_WRITTEN))
    }
}

impl Store {
    /// Access pattern: record an action that has no transaction of its own (after it
    /// took effect).
    pub async fn put_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(entry_item(entry)))
            .condition_expression(NOT_YET_WRITTEN)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: one page of a subject's or an actor's actions, newest first (one
    /// Query on the table or on `gsi3`), from after the previous page's last entry; the
    /// cursor of the page's last entry when there may be more.
    pub async fn audit_page(
        &self,
        of: &AuditOf,
        after: Option<&AuditCursor>,
        limit: i32,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>)> {
        let query = self.query().scan_index_forward(false).limit(limit);
        let query = match of {
            AuditOf::Subject(subject, id) => {
                let pk = partition(subject.as_str(), id);
                let start = after.map(|c| start_key([("pk", &c.pk), ("sk", &c.audit_id)]));
                query
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(&pk))
                    .set_exclusive_start_key(start)
            }
            AuditOf::Actor(actor) => {
                let gpk = format!("{ACTOR_PREFIX}{actor}");
                let start = after.map(|c| {
                    start_key([
                        ("pk", &c.pk),
                        ("sk", &c.audit_id),
                        ("gsi3pk", &gpk),
                        ("gsi3sk", &c.audit_id),
                    ])
                });
                query
                    .index_name(AUDIT_INDEX)
                    .key_condition_expression("gsi3pk = :pk")
                    .expression_attribute_values(":pk", s(&gpk))
                    .set_exclusive_start_key(start)
            }
        };
        let output = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let entries = output
            .items()
            .iter()
            .map(read_entry)
            .collect::<Result<Vec<_>>>()?;
        let next = match (output.last_evaluated_key(), entries.last()) {
            (Some(_), Some(last)) => Some(AuditCursor {
                pk: partition(&last.subject, &last.subject_id),
                audit_id: last.audit_id.clone(),
            }),
            _ => None,
        };
        Ok((entries, next))
    }
}

/// Where a page of the audit trail goes on from: its last entry's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub pk: String,
    pub audit_id: String,
}

impl AuditCursor {
    /// `pk|audit_id`, for an opaque cursor.
    pub fn text(&self) -> String {
        format!("{}|{}", self.pk, self.audit_id)
    }

    /// The cursor a text names; `None` if it is not one of an audit page's.
    pub fn parse(text: &str) -> Option<Self> {
        let (pk, audit_id) = text.split_once('|')?;
        (pk.starts_with(AUDIT_PREFIX) && crate::domain::time::is_id(audit_id)).then(|| {
            AuditCursor {
                pk: pk.to_owned(),
                audit_id: audit_id.to_owned(),
            }
        })
    }
}

fn start_key<const N: usize>(parts: [(&str, &str); N]) -> Item {
    parts
        .into_iter()
        .map(|(name, value)| (name.to_owned(), AttributeValue::S(value.to_owned())))
        .collect()
}
