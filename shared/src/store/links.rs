//! Redemption links (docs/dynamodb.md, "Links"): a delivered link is two items written
//! in one transaction with a condition on the order: its delivery record
//! (`DELIVERY#{slot}`, the token sealed) and the link, found by the token's SHA-256
//! (`LINK#{hash}` / `LINK`: its order, expiry and opens). Opening is one conditional
//! update: at most `max_opens`, only before the expiry, under any concurrency.

use aws_sdk_dynamodb::types::ReturnValue;

use super::codec::{FromItem, Item, get_n, get_s, get_u32, item, key_item, keys, n, s};
use super::tx::ItemName;
use super::{OrderRecord, SealedSecrets, SlotWrite, Store, condition_failed};
use crate::domain::link::LinkSpec;
use crate::domain::product::DeliveryType;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

fn link_key(token_hash: &str) -> (String, String) {
    (format!("LINK#{token_hash}"), "LINK".into())
}

/// The link delivery record: one token in one slot of an order, sealed under its own
/// data key (context `EncryptionContext::link`, its seal id the link's id).
#[derive(Debug, Clone)]
pub struct LinkSlot {
    pub slot: u32,
    pub token: SealedSecrets,
}

impl FromItem for LinkSlot {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(LinkSlot {
            slot: get_u32(item, "slot")?,
            token: SealedSecrets::read_from(item, "token")?,
        })
    }
}

/// A link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    pub order_id: String,
    pub sku: String,
    pub target_url: String,
    pub expires_at: Timestamp,
    pub max_opens: u32,
    pub opens: u32,
}

impl FromItem for LinkRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(LinkRecord {
            order_id: get_s(item, "order_id")?,
            sku: get_s(item, "sku")?,
            target_url: get_s(item, "target_url")?,
            expires_at: Timestamp(get_n(item, "expires_at")?),
            max_opens: get_u32(item, "max_opens")?,
            opens: get_u32(item, "opens")?,
        })
    }
}

/// What opening a link came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOpen {
    Opened(LinkRecord),
    Expired,
    Used,
    Unknown,
}

impl Store {
    /// Access pattern: a generated link into one slot of an order, with its link item,
    /// in one transaction conditional on the slot being empty and the order awaiting
    /// delivery.
    pub async fn deliver_link(
        &self,
        order: &OrderRecord,
        slot: u32,
        (token_hash, token): (&str, &SealedSecrets),
        spec: &LinkSpec,
        now: Timestamp,
    ) -> Result<SlotWrite> {
        let at = now.to_rfc3339();
        let mut record = item(
            keys::delivery(&order.order_id, slot),
            "delivery",
            [
                ("type", s(DeliveryType::Link.as_str())),
                ("slot", n(slot)),
                ("allocated_at", s(&at)),
            ],
        );
        token.store_in(&mut record, "token");
        let mut tx = self.tx();
        tx.put(ItemName::Slot, record, Some("attribute_not_exists(pk)"))?;
        tx.put(
            ItemName::Link,
            item(
                link_key(token_hash),
                "link",
                [
                    ("order_id", s(&order.order_id)),
                    ("sku", s(&order.sku)),
                    ("slot", n(slot)),
                    ("target_url", s(&spec.target_url)),
                    (
                        "expires_at",
                        n(now.plus_seconds(i64::from(spec.valid_hours) * 3_600).0),
                    ),
                    ("max_opens", n(spec.max_opens)),
                    ("opens", n(0)),
                    ("created_at", s(&at)),
                ],
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.awaiting_delivery(order)?;
        SlotWrite::of(self.transact(tx).await?, "link token")
    }

    /// Access pattern: open a link — its count raised only below `max_opens` and only
    /// before its expiry (one conditional UpdateItem, the link as it is after).
    pub async fn open_link(&self, token_hash: &str, now: Timestamp) -> Result<LinkOpen> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(link_key(token_hash))))
            .update_expression("SET opens = opens + :one")
            .condition_expression(
                "attribute_exists(pk) AND opens < max_opens AND expires_at > :now",
            )
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now.0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(LinkOpen::Opened(LinkRecord::from_item(
                output
                    .attributes()
                    .ok_or_else(|| Error::Corrupt("link update returned nothing".into()))?,
            )?)),
            Err(err) if condition_failed(&err) => Ok(
                match self
                    .get_as::<LinkRecord>(link_key(token_hash), true)
                    .await?
                {
                    None => LinkOpen::Unknown,
                    Some(link) if link.expires_at <= now => LinkOpen::Expired,
                    Some(_) => LinkOpen::Used,
                },
            ),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}
