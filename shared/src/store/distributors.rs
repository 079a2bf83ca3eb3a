//! Distributors: one item each (`DISTRIBUTOR#{id}`), listed through `gsi1`
//! (`DISTRIBUTORS`); a child-link item under its parent's partition per child (the tree
//! read downwards); a referral-code item per code (unique codes); a key item per
//! distributor API key (only its hash); and per distributor the orders attributed to
//! it (`DISTORDERS#{id}`, written with the order). docs/dynamodb.md, "Distributors".

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{
    FromItem, Item, get_money, get_n, get_opt_s, get_s, get_u32, item, json, key_item, n, s,
};
use super::tx::{ItemName, Tx, TxOutcome};
use super::{AuditEntry, ORDER_INDEX, Page, Store};
use crate::domain::distributor::{CommissionPlan, DistributorSettings, Referral, mask_email};
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::store::OrderRecord;

const DISTRIBUTOR_SK: &str = "DISTRIBUTOR";
const CHILD_PREFIX: &str = "CHILD#";
const DISTRIBUTORS_INDEX: &str = "DISTRIBUTORS";
const ATTRIBUTED_ORDER_PREFIX: &str = "ORDER#";

fn distributor_pk(distributor_id: &str) -> String {
    format!("DISTRIBUTOR#{distributor_id}")
}
fn distributor_key(distributor_id: &str) -> (String, String) {
    (distributor_pk(distributor_id), DISTRIBUTOR_SK.into())
}
fn child_key(parent_id: &str, child_id: &str) -> (String, String) {
    (
        distributor_pk(parent_id),
        format!("{CHILD_PREFIX}{child_id}"),
    )
}
fn referral_key(code: &str) -> (String, String) {
    (format!("REFERRAL#{code}"), "REFERRAL".into())
}
fn api_key_key(key_hash: &str) -> (String, String) {
    (format!("DISTKEY#{key_hash}"), "DISTKEY".into())
}
fn attributed_pk(distributor_id: &str) -> String {
    format!("DISTORDERS#{distributor_id}")
}

/// A distributor as stored. `version` rises with every write: a change that read the
/// tree checks the versions it read, so two moves at once cannot make a cycle.
/// `subtree_version` rises whenever a distributor is placed anywhere below it: a move
/// that measured the moved distributor's subtree checks it, so the subtree cannot grow
/// past the maximum depth meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributorRecord {
    pub distributor_id: String,
    pub settings: DistributorSettings,
    pub version: i64,
    pub subtree_version: i64,
    /// SHA-256 of its current API key, if one was issued.
    pub api_key_hash: Option<String>,
    pub created: Timestamp,
    pub updated_at: String,
}

fn get_bool(item: &Item, name: &str) -> Result<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Ok(*value),
        _ => Err(Error::Corrupt(format!("item has no boolean {name}"))),
    }
}

impl FromItem for DistributorRecord {
    fn from_item(item: &Item) -> Result<Self> {
        let commission: CommissionPlan = super::codec::get_opt_json(item, "commission")?
            .ok_or_else(|| Error::Corrupt("distributor has no commission".into()))?;
        Ok(DistributorRecord {
            distributor_id: get_s(item, "distributor_id")?,
            settings: DistributorSettings {
                name: get_s(item, "name")?,
                parent_id: get_opt_s(item, "parent_id"),
                referral_code: get_s(item, "referral_code")?,
                enabled: get_bool(item, "enabled")?,
                commission,
            },
            version: get_n(item, "version")?,
            // Absent on a distributor nothing was ever placed below.
            subtree_version: match item.get("subtree_version") {
                Some(_) => get_n(item, "subtree_version")?,
                None => 0,
            },
            api_key_hash: get_opt_s(item, "api_key_hash"),
            created: Timestamp(get_n(item, "gsi1sk")?),
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

fn distributor_item(record: &DistributorRecord) -> Result<Item> {
    let settings = &record.settings;
    let mut stored = item(
        distributor_key(&record.distributor_id),
        "distributor",
        [
            ("distributor_id", s(&record.distributor_id)),
            ("name", s(&settings.name)),
            ("referral_code", s(&settings.referral_code)),
            ("enabled", AttributeValue::Bool(settings.enabled)),
            ("commission", json(&settings.commission)?),
            ("version", n(record.version)),
            ("subtree_version", n(record.subtree_version)),
            ("created_at", s(record.created.to_rfc3339())),
            ("updated_at", s(&record.updated_at)),
            ("gsi1pk", s(DISTRIBUTORS_INDEX)),
            ("gsi1sk", n(record.created.0)),
        ],
    );
    if let Some(parent) = &settings.parent_id {
        stored.insert("parent_id".to_owned(), s(parent));
    }
    if let Some(hash) = &record.api_key_hash {
        stored.insert("api_key_hash".to_owned(), s(hash));
    }
    Ok(stored)
}

/// What saving a distributor came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributorSaved {
    Saved,
    /// Another distributor has the referral code.
    CodeTaken,
    /// The distributor or a part of the tree it was checked against changed meanwhile.
    Raced,
}

/// One order attributed to a distributor (it sits at `level` of the order's chain), as
/// the distributor sees it: never the buyer's whole email.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AttributedOrder {
    pub order_id: String,
    pub level: u32,
    /// The distributor whose code the order carried (level 1).
    pub referrer_id: String,
    pub sku: String,
    pub quantity: u32,
    pub amount: Money,
    /// The buyer's email, masked (`b***@example.com`).
    pub buyer: String,
    pub created_at: String,
}

impl FromItem for AttributedOrder {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(AttributedOrder {
            order_id: get_s(item, "order_id")?,
            level: get_u32(item, "level")?,
            referrer_id: get_s(item, "referrer_id")?,
            sku: get_s(item, "sku")?,
            quantity: get_u32(item, "quantity")?,
            amount: get_money(item, "amount")?,
            buyer: get_s(item, "buyer")?,
            created_at: get_s(item, "created_at")?,
        })
    }
}

impl Tx {
    /// The order's attribution, written with the order: one item per distributor of its
    /// chain, in that distributor's partition.
    pub(crate) fn attribute_order(
        &mut self,
        order: &OrderRecord,
        referral: &Referral,
    ) -> Result<&mut Self> {
        let referrer = referral
            .chain
            .first()
            .map(|link| link.distributor_id.clone())
            .unwrap_or_default();
        for (i, link) in referral.chain.iter().enumerate() {
            self.put(
                ItemName::Attribution(i),
                item(
                    (
                        attributed_pk(&link.distributor_id),
                        format!("{ATTRIBUTED_ORDER_PREFIX}{}", order.order_id),
                    ),
                    "attributed_order",
                    [
                        ("order_id", s(&order.order_id)),
                        ("distributor_id", s(&link.distributor_id)),
                        ("level", n(link.level)),
                        ("referrer_id", s(&referrer)),
                        ("sku", s(&order.sku)),
                        ("quantity", n(order.quantity)),
                        ("amount", n(order.amount.amount)),
                        ("currency", s(&order.amount.currency)),
                        ("buyer", s(mask_email(&order.buyer_email))),
                        ("created_at", s(&order.created_at)),
                    ],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
        }
        Ok(self)
    }
}

impl Store {
    /// Access pattern: one distributor (strongly consistent).
    pub async fn get_distributor(&self, distributor_id: &str) -> Result<Option<DistributorRecord>> {
        self.get_as(distributor_key(distributor_id), true).await
    }

    /// Access pattern: the distributor a referral code names (upper case).
    pub async fn distributor_by_code(&self, code: &str) -> Result<Option<String>> {
        Ok(match self.get(referral_key(code), true).await? {
            Some(found) => Some(get_s(&found, "distributor_id")?),
            None => None,
        })
    }

    /// Access pattern: the distributor an API key (its SHA-256) belongs to.
    pub async fn distributor_by_key(&self, key_hash: &str) -> Result<Option<String>> {
        Ok(match self.get(api_key_key(key_hash), true).await? {
            Some(found) => Some(get_s(&found, "distributor_id")?),
            None => None,
        })
    }

    /// Access pattern: a distributor's children (one Query on its partition).
    pub async fn distributor_children(&self, distributor_id: &str) -> Result<Vec<String>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :child)")
            .expression_attribute_values(":pk", s(distributor_pk(distributor_id)))
            .expression_attribute_values(":child", s(CHILD_PREFIX));
        self.query_all(query)
            .await?
            .iter()
            .map(|child| get_s(child, "distributor_id"))
            .collect()
    }

    /// Access pattern: create (`previous` None) or replace a distributor (still at the
    /// version and subtree version read), in one transaction with its referral code's
    /// item (taken only if free; the old code's item released), its child link under its
    /// parent (moved if the parent changed), and, for each of `checked` (the new parent's
    /// chain, as read), a check that it is still at the version read and a rise of its
    /// subtree version, and the change's audit record.
    pub async fn save_distributor(
        &self,
        record: &DistributorRecord,
        previous: Option<&DistributorRecord>,
        checked: &[DistributorRecord],
        audit: &AuditEntry,
    ) -> Result<DistributorSaved> {
        let mut tx = self.tx();
        // DynamoDB expressions take no literals: the version read is a value.
        let (condition, values) = match previous {
            None => ("attribute_not_exists(pk)", Vec::new()),
            Some(old) => (
                "version = :read AND (attribute_not_exists(subtree_version) OR subtree_version = :subtree)",
                vec![
                    (":read", n(old.version)),
                    (":subtree", n(old.subtree_version)),
                ],
            ),
        };
        tx.put_if(
            ItemName::Distributor,
            distributor_item(record)?,
            Some(condition),
            values,
        )?;
        let id = &record.distributor_id;
        let code = &record.settings.referral_code;
        let old_code = previous.map(|old| old.settings.referral_code.as_str());
        if old_code != Some(code.as_str()) {
            tx.put(
                ItemName::ReferralCode,
                item(
                    referral_key(code),
                    "referral_code",
                    [("distributor_id", s(id))],
                ),
                Some("attribute_not_exists(pk)"),
            )?;
            if let Some(old_code) = old_code {
                tx.delete(
                    ItemName::OldReferralCode,
                    key_item(referral_key(old_code)),
                    "attribute_exists(pk)",
                )?;
            }
        }
        let old_parent = previous.and_then(|old| old.settings.parent_id.as_deref());
        let parent = record.settings.parent_id.as_deref();
        if old_parent != parent {
            if let Some(parent) = parent {
                tx.put(
                    ItemName::ChildLink,
                    item(
                        child_key(parent, id),
                        "distributor_child",
                        [("distributor_id", s(id))],
                    ),
                    None,
                )?;
            }
            if let Some(old_parent) = old_parent {
                tx.delete(
                    ItemName::OldChildLink,
                    key_item(child_key(old_parent, id)),
                    "attribute_exists(pk)",
                )?;
            }
        }
        for (i, ancestor) in checked.iter().enumerate() {
            tx.update(
                ItemName::Ancestor(i),
                key_item(distributor_key(&ancestor.distributor_id)),
                "SET subtree_version = if_not_exists(subtree_version, :zero) + :one",
                Some("version = :v"),
                &[],
                vec![(":v", n(ancestor.version)), (":zero", n(0)), (":one", n(1))],
            )?;
        }
        tx.audit(audit)?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => DistributorSaved::Saved,
            TxOutcome::Cancelled(c) if c.failed(ItemName::ReferralCode) => {
                DistributorSaved::CodeTaken
            }
            TxOutcome::Cancelled(c) => {
                let failed: Vec<ItemName> = c.failed_items().collect();
                tracing::debug!(?failed, "distributor save raced");
                DistributorSaved::Raced
            }
        })
    }

    /// Access pattern: give a distributor a new API key (its hash), the old one's item
    /// deleted, in one transaction with its audit record, conditional on the
    /// distributor's version.
    pub async fn replace_distributor_key(
        &self,
        distributor: &DistributorRecord,
        key_hash: &str,
        now: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.update(
            ItemName::Distributor,
            key_item(distributor_key(&distributor.distributor_id)),
            "SET api_key_hash = :hash, version = version + :one, updated_at = :at",
            Some("version = :v"),
            &[],
            vec![
                (":hash", s(key_hash)),
                (":one", n(1)),
                (":at", s(now)),
                (":v", n(distributor.version)),
            ],
        )?;
        tx.put(
            ItemName::ApiKey,
            item(
                api_key_key(key_hash),
                "distributor_key",
                [
                    ("distributor_id", s(&distributor.distributor_id)),
                    ("created_at", s(now)),
                ],
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        if let Some(old) = &distributor.api_key_hash {
            tx.delete(
                ItemName::OldApiKey,
                key_item(api_key_key(old)),
                "attribute_exists(pk)",
            )?;
        }
        tx.audit(audit)?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: one page of distributors, oldest first (`gsi1` `DISTRIBUTORS`,
    /// keys only, then one BatchGetItem).
    pub async fn distributors_page(
        &self,
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page<DistributorRecord>> {
        let query = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk")
            .expression_attribute_values(":pk", s(DISTRIBUTORS_INDEX));
        let page = self
            .page(query, ("gsi1pk", DISTRIBUTORS_INDEX), after, limit)
            .await?;
        let keys: Vec<Item> = page
            .items
            .iter()
            .filter_map(|found| {
                Some(
                    [("pk", found.get("pk")?), ("sk", found.get("sk")?)]
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value.clone()))
                        .collect(),
                )
            })
            .collect();
        let mut records = if keys.is_empty() {
            Vec::new()
        } else {
            self.batch_get(keys, true, "distributors")
                .await?
                .iter()
                .map(DistributorRecord::from_item)
                .collect::<Result<Vec<_>>>()?
        };
        records.sort_by(|a, b| {
            (a.created, a.distributor_id.as_str()).cmp(&(b.created, b.distributor_id.as_str()))
        });
        Ok(Page {
            items: records,
            next: page.next,
        })
    }

    /// Access pattern: one page of the orders attributed to a distributor, newest first
    /// (one Query on its `DISTORDERS#` partition).
    pub async fn attributed_orders_page(
        &self,
        distributor_id: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page<AttributedOrder>> {
        let pk = attributed_pk(distributor_id);
        let query = self
            .query()
            .scan_index_forward(false)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(&pk));
        let page = self.page(query, ("pk", &pk), after, limit).await?;
        Ok(Page {
            items: page
                .items
                .iter()
                .map(AttributedOrder::from_item)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// Access pattern: one order attributed to a distributor (one GetItem); `None` for an
    /// order outside its subtree, as for a missing one.
    pub async fn attributed_order(
        &self,
        distributor_id: &str,
        order_id: &str,
    ) -> Result<Option<AttributedOrder>> {
        self.get_as(
            (
                attributed_pk(distributor_id),
                format!("{ATTRIBUTED_ORDER_PREFIX}{order_id}"),
            ),
            false,
        )
        .await
    }
}
