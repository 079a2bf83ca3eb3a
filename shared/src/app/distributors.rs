//! Distributors (docs/distributors.md): the admin's tree of them, the referral an order
//! is made through, and what a distributor reads with its own API key (its orders and
//! its subtree's, its commissions, its statements).

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::{Actor, snapshot};
use super::page;
use crate::config::Context;
use crate::domain::crypto::sha256_hex;
use crate::domain::distributor::{
    ChainLink, DistributorRequest, Referral, check_placement, normalise_referral_code,
    validate_distributor_id,
};
use crate::error::{ConflictKind, Error, Result};
use crate::store::{
    AttributedOrder, AuditSubject, CommissionEntry, DistributorRecord, DistributorSaved,
    EntryStatus, Page, StatementLine, StatementRecord,
};

/// Saves that lose to a concurrent change of the tree are read and tried again this often.
const SAVE_ATTEMPTS: u32 = 3;
/// Prefix of distributor API keys (tells them apart from other secrets in a leak scan).
const API_KEY_PREFIX: &str = "kd_";

/// A distributor as the admin sees it (never its API key).
#[derive(Debug, Serialize, ToSchema)]
pub struct DistributorView {
    pub distributor_id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub referral_code: String,
    pub enabled: bool,
    pub commission: crate::domain::distributor::CommissionPlan,
    /// Whether an API key was issued.
    pub has_api_key: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl DistributorView {
    fn of(record: &DistributorRecord) -> Self {
        let settings = &record.settings;
        DistributorView {
            distributor_id: record.distributor_id.clone(),
            name: settings.name.clone(),
            parent_id: settings.parent_id.clone(),
            referral_code: settings.referral_code.clone(),
            enabled: settings.enabled,
            commission: settings.commission.clone(),
            has_api_key: record.api_key_hash.is_some(),
            created_at: record.created.to_rfc3339(),
            updated_at: record.updated_at.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DistributorList {
    pub distributors: Vec<DistributorView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A new API key, shown once: only its hash is kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistributorKeyIssued {
    pub distributor_id: String,
    #[schema(example = "kd_3q2m...")]
    pub api_key: String,
}

/// The chain above `parent_id`, parent first, as read now (the parent included).
async fn chain_from(ctx: &Context, parent_id: &str) -> Result<Vec<DistributorRecord>> {
    let mut chain = Vec::new();
    let mut next = Some(parent_id.to_owned());
    while let Some(id) = next {
        // A tree never deeper than the limit: a longer walk is a cycle already stored.
        if chain.len() > crate::domain::distributor::MAX_DEPTH_LIMIT as usize {
            return Err(Error::Corrupt(format!(
                "distributor chain above {parent_id} is longer than any tree may be"
            )));
        }
        let Some(record) = ctx.store.get_distributor(&id).await? else {
            break;
        };
        next = record.settings.parent_id.clone();
        chain.push(record);
    }
    Ok(chain)
}

/// How many levels hang below `distributor_id` (0 for a leaf), reading at most
/// `limit` levels down.
async fn subtree_height(ctx: &Context, distributor_id: &str, limit: u32) -> Result<u32> {
    let mut level = vec![distributor_id.to_owned()];
    let mut height = 0;
    while height <= limit {
        let mut below = Vec::new();
        for id in &level {
            below.extend(ctx.store.distributor_children(id).await?);
        }
        if below.is_empty() {
            return Ok(height);
        }
        height += 1;
        level = below;
    }
    Ok(height)
}

/// `PUT /admin/distributors/{distributor_id}`: creates (true) or replaces a distributor.
pub async fn put_distributor(
    ctx: &Context,
    actor: &Actor,
    distributor_id: &str,
    request: DistributorRequest,
) -> Result<(bool, DistributorView)> {
    validate_distributor_id(distributor_id)?;
    let max_depth = ctx.config.distributor_max_depth;
    let settings = request.validate(distributor_id, max_depth)?;
    for _ in 0..SAVE_ATTEMPTS {
        let existing = ctx.store.get_distributor(distributor_id).await?;
        let ancestors = match &settings.parent_id {
            Some(parent_id) => {
                let chain = chain_from(ctx, parent_id).await?;
                if chain.is_empty() {
                    return Err(Error::invalid_field(
                        "invalid_distributor_parent",
                        "parent_id",
                        format!("no distributor {parent_id}"),
                    ));
                }
                chain
            }
            None => Vec::new(),
        };
        let height = match &existing {
            Some(_) => subtree_height(ctx, distributor_id, max_depth).await?,
            None => 0,
        };
        let ancestor_ids: Vec<String> =
            ancestors.iter().map(|a| a.distributor_id.clone()).collect();
        check_placement(distributor_id, &ancestor_ids, height, max_depth)?;
        let now = ctx.clock.now();
        let record = DistributorRecord {
            distributor_id: distributor_id.to_owned(),
            settings: settings.clone(),
            version: existing.as_ref().map_or(1, |old| old.version + 1),
            subtree_version: existing.as_ref().map_or(0, |old| old.subtree_version),
            api_key_hash: existing.as_ref().and_then(|old| old.api_key_hash.clone()),
            created: existing.as_ref().map_or(now, |old| old.created),
            updated_at: now.to_rfc3339(),
        };
        if existing
            .as_ref()
            .is_some_and(|old| old.settings == settings)
        {
            return Ok((
                false,
                DistributorView::of(existing.as_ref().unwrap_or(&record)),
            ));
        }
        let after = DistributorView::of(&record);
        let entry = actor.entry(
            ctx,
            "distributor.put",
            (AuditSubject::Distributor, distributor_id),
            None,
            existing
                .as_ref()
                .and_then(|old| snapshot(&DistributorView::of(old))),
            snapshot(&after),
        );
        match ctx
            .store
            .save_distributor(&record, existing.as_ref(), &ancestors, &entry)
            .await?
        {
            DistributorSaved::Saved => {
                tracing::info!(
                    distributor_id,
                    created = existing.is_none(),
                    "distributor saved"
                );
                return Ok((existing.is_none(), after));
            }
            DistributorSaved::CodeTaken => {
                return Err(Error::Conflict(ConflictKind::ReferralCodeTaken));
            }
            DistributorSaved::Raced => {}
        }
    }
    Err(Error::Contention("distributor tree"))
}

pub async fn get_distributor(ctx: &Context, distributor_id: &str) -> Result<DistributorView> {
    validate_distributor_id(distributor_id).map_err(|_| Error::NotFound("distributor"))?;
    ctx.store
        .get_distributor(distributor_id)
        .await?
        .map(|record| DistributorView::of(&record))
        .ok_or(Error::NotFound("distributor"))
}

/// The `limit` and `cursor` of a listing's raw query; other parameters refused by
/// name unless `allowed` names them (their values returned in order).
pub fn list_query(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<(i32, Option<String>, Vec<Option<String>>)> {
    let mut limit = page::DEFAULT_LIMIT;
    let mut cursor = None;
    let mut values = vec![None; allowed.len()];
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "limit" => limit = page::limit(&value)?,
            "cursor" => {
                cursor = Some(page::decode_cursor(&value, |text| Some(text.to_owned()))?);
            }
            other => match allowed.iter().position(|name| *name == other) {
                Some(i) => values[i] = Some(value.into_owned()),
                None => {
                    return Err(Error::invalid_field(
                        "invalid_query",
                        other,
                        "unknown query parameter",
                    ));
                }
            },
        }
    }
    Ok((limit, cursor, values))
}

fn next_cursor<T>(page: &Page<T>) -> Option<String> {
    page.next.as_deref().map(page::encode_cursor)
}

/// `GET /admin/distributors`: oldest first, paged.
pub async fn list_distributors(ctx: &Context, query: Option<&str>) -> Result<DistributorList> {
    let (limit, cursor, _) = list_query(query, &[])?;
    let page = ctx
        .store
        .distributors_page(cursor.as_deref(), limit)
        .await?;
    Ok(DistributorList {
        next_cursor: next_cursor(&page),
        distributors: page.items.iter().map(DistributorView::of).collect(),
    })
}

/// `POST /admin/distributors/{distributor_id}/api-key`: a new key (the old one stops
/// working at once), shown once.
pub async fn issue_api_key(
    ctx: &Context,
    actor: &Actor,
    distributor_id: &str,
) -> Result<DistributorKeyIssued> {
    validate_distributor_id(distributor_id).map_err(|_| Error::NotFound("distributor"))?;
    for _ in 0..SAVE_ATTEMPTS {
        let record = ctx
            .store
            .get_distributor(distributor_id)
            .await?
            .ok_or(Error::NotFound("distributor"))?;
        let api_key = format!(
            "{API_KEY_PREFIX}{}",
            hex::encode(rand::random::<[u8; 32]>())
        );
        let now = ctx.clock.now().to_rfc3339();
        let entry = actor.entry(
            ctx,
            "distributor.issue_api_key",
            (AuditSubject::Distributor, distributor_id),
            None,
            None,
            None,
        );
        if ctx
            .store
            .replace_distributor_key(&record, &sha256_hex(api_key.as_bytes()), &now, &entry)
            .await?
        {
            return Ok(DistributorKeyIssued {
                distributor_id: distributor_id.to_owned(),
                api_key,
            });
        }
    }
    Err(Error::Contention("distributor"))
}

/// The distributor an API key belongs to (`Error::Unauthorized` for any other key, and
/// for a disabled distributor's).
pub async fn authenticate(ctx: &Context, api_key: &str) -> Result<String> {
    if !api_key.starts_with(API_KEY_PREFIX) || api_key.len() > 128 {
        return Err(Error::Unauthorized);
    }
    let distributor_id = ctx
        .store
        .distributor_by_key(&sha256_hex(api_key.as_bytes()))
        .await?
        .ok_or(Error::Unauthorized)?;
    match ctx.store.get_distributor(&distributor_id).await? {
        Some(record) if record.settings.enabled => Ok(distributor_id),
        _ => Err(Error::Unauthorized),
    }
}

fn invalid_referral() -> Error {
    Error::invalid_field(
        "invalid_referral_code",
        "referral_code",
        "referral_code names no enabled distributor",
    )
}

/// The referral an order of `sku` is made through with `code`: the chain from the
/// code's distributor up (at most the tree's depth), each with the rule it earns by
/// now. An unknown code, or a disabled distributor's, is `400 invalid_referral_code`.
/// Reads: one GetItem for the code and one per level of the chain.
pub async fn referral_for(ctx: &Context, code: &str, sku: &str) -> Result<Referral> {
    let code = normalise_referral_code(code).ok_or_else(invalid_referral)?;
    let referrer = ctx
        .store
        .distributor_by_code(&code)
        .await?
        .ok_or_else(invalid_referral)?;
    let mut chain = Vec::new();
    let mut next = Some(referrer);
    let mut level = 1;
    while let Some(id) = next
        && level <= ctx.config.distributor_max_depth
    {
        let Some(record) = ctx.store.get_distributor(&id).await? else {
            break;
        };
        if level == 1 && !record.settings.enabled {
            return Err(invalid_referral());
        }
        chain.push(ChainLink {
            distributor_id: record.distributor_id.clone(),
            level,
            rule: record
                .settings
                .enabled
                .then(|| record.settings.commission.rule_for(sku, level).cloned())
                .flatten(),
        });
        next = record.settings.parent_id.clone();
        level += 1;
    }
    Ok(Referral {
        referral_code: code,
        chain,
        refund_window_seconds: ctx.config.commission_refund_window_seconds,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DistributorOrders {
    pub orders: Vec<AttributedOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /distributor/orders`: orders made through the distributor or its subtree,
/// newest first.
pub async fn distributor_orders(
    ctx: &Context,
    distributor_id: &str,
    query: Option<&str>,
) -> Result<DistributorOrders> {
    let (limit, cursor, _) = list_query(query, &[])?;
    let page = ctx
        .store
        .attributed_orders_page(distributor_id, cursor.as_deref(), limit)
        .await?;
    Ok(DistributorOrders {
        next_cursor: next_cursor(&page),
        orders: page.items,
    })
}

/// `GET /distributor/orders/{order_id}`: one order made through the distributor or its
/// subtree; any other is `404 order_not_found`, as a missing one is.
pub async fn distributor_order(
    ctx: &Context,
    distributor_id: &str,
    order_id: &str,
) -> Result<AttributedOrder> {
    ctx.store
        .attributed_order(distributor_id, order_id)
        .await?
        .ok_or(Error::NotFound("order"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DistributorCommissions {
    pub commissions: Vec<CommissionEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /distributor/commissions?status=`: its own ledger entries, newest first.
pub async fn distributor_commissions(
    ctx: &Context,
    distributor_id: &str,
    query: Option<&str>,
) -> Result<DistributorCommissions> {
    let (limit, cursor, values) = list_query(query, &["status"])?;
    let status = values
        .into_iter()
        .next()
        .flatten()
        .map(|text| {
            EntryStatus::parse(&text).ok_or_else(|| {
                Error::invalid_field(
                    "invalid_query",
                    "status",
                    "status is pending, available, settled or cancelled",
                )
            })
        })
        .transpose()?;
    let page = ctx
        .store
        .distributor_entries_page(distributor_id, status, cursor.as_deref(), limit)
        .await?;
    Ok(DistributorCommissions {
        next_cursor: next_cursor(&page),
        commissions: page.items,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatementList {
    pub statements: Vec<StatementRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /distributor/statements`: its own statements, newest first.
pub async fn distributor_statements(
    ctx: &Context,
    distributor_id: &str,
    query: Option<&str>,
) -> Result<StatementList> {
    let (limit, cursor, _) = list_query(query, &[])?;
    let page = ctx
        .store
        .distributor_statements_page(distributor_id, cursor.as_deref(), limit)
        .await?;
    Ok(StatementList {
        next_cursor: next_cursor(&page),
        statements: page.items,
    })
}

/// A statement with its lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementView {
    #[serde(flatten)]
    pub statement: StatementRecord,
    pub entries: Vec<StatementLine>,
}

/// The statement as CSV: one row per line, then the totals.
impl super::CsvView for StatementView {
    const COLUMNS: &'static [&'static str] = &[
        "statement_id",
        "entry_id",
        "kind",
        "order_id",
        "level",
        "sku",
        "amount",
        "currency",
        "earned_at",
    ];

    fn rows(&self) -> Vec<Vec<String>> {
        let statement = &self.statement;
        let lines = self.entries.iter().map(|line| {
            vec![
                statement.statement_id.clone(),
                line.entry_id.clone(),
                match line.kind {
                    crate::store::EntryKind::Commission => "commission",
                    crate::store::EntryKind::Clawback => "clawback",
                }
                .to_owned(),
                line.order_id.clone(),
                line.level.to_string(),
                line.sku.clone(),
                line.amount.to_string(),
                statement.currency.clone(),
                line.earned_at.clone(),
            ]
        });
        let totals = [
            ("opening_balance", statement.opening_balance),
            ("commissions", statement.commissions),
            ("clawbacks", statement.clawbacks),
            ("closing_balance", statement.closing_balance),
            ("payable", statement.payable),
        ]
        .into_iter()
        .map(|(name, amount)| {
            vec![
                statement.statement_id.clone(),
                name.to_owned(),
                "total".to_owned(),
                String::new(),
                String::new(),
                String::new(),
                amount.to_string(),
                statement.currency.clone(),
                String::new(),
            ]
        });
        lines.chain(totals).collect()
    }
}

/// One statement with its lines; `owner` limits it to one distributor's (another's is
/// `404 statement_not_found`, as a missing one is).
pub async fn statement(
    ctx: &Context,
    statement_id: &str,
    owner: Option<&str>,
) -> Result<StatementView> {
    if statement_id.is_empty() || statement_id.len() > 128 {
        return Err(Error::NotFound("statement"));
    }
    let statement = ctx
        .store
        .get_statement(statement_id)
        .await?
        .filter(|s| owner.is_none_or(|owner| s.distributor_id == owner))
        .ok_or(Error::NotFound("statement"))?;
    let mut entries = ctx.store.statement_lines(statement_id).await?;
    entries.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    Ok(StatementView { statement, entries })
}
