//! License keys (docs/dynamodb.md, "License keys"). A delivered key is two items written
//! in one transaction with a condition on the order: its delivery record in the order's
//! partition (`DELIVERY#{slot}`, the key sealed) and the license itself, found by the
//! key's keyed fingerprint (`LICENSE#{fingerprint}` / `LICENSE`), with one item per
//! active instance in the same partition (`INSTANCE#{sha256(instance name)}`), so an
//! activation is one transaction: the count raised below its limit and the instance
//! put if absent.

use super::codec::{FromItem, Item, get_n, get_s, get_u32, item, key_item, keys, n, s};
use super::tx::{ItemName, TxOutcome};
use super::{OrderRecord, SealedSecrets, SlotWrite, Store};
use crate::domain::crypto::sha256_hex;
use crate::domain::license::{LicenseSpec, LicenseStatus};
use crate::domain::product::DeliveryType;
use crate::domain::time::{Timestamp, new_id};
use crate::error::{Error, Result};

const LICENSE_SK: &str = "LICENSE";
/// The sweep's queue (`gsi1`) of licenses with an end whose expiry reminder is not queued
/// yet, by their end.
const LICENSES_ENDING_INDEX: &str = "LICENSES_ENDING";
const INSTANCE_PREFIX: &str = "INSTANCE#";

fn license_pk(fingerprint: &str) -> String {
    format!("LICENSE#{fingerprint}")
}
fn license_key(fingerprint: &str) -> (String, String) {
    (license_pk(fingerprint), LICENSE_SK.into())
}
/// An instance is keyed by its name's hash: activating the same name twice is one
/// activation.
fn instance_key(fingerprint: &str, instance_name: &str) -> (String, String) {
    (
        license_pk(fingerprint),
        format!("{INSTANCE_PREFIX}{}", sha256_hex(instance_name.as_bytes())),
    )
}

/// The license-key delivery record: one generated key in one slot of an order, sealed
/// under its own data key (context `EncryptionContext::license`, its seal id the
/// license's id).
#[derive(Debug, Clone)]
pub struct LicenseSlot {
    pub slot: u32,
    /// Where its license is (`LICENSE#{fingerprint}`): a refund ends it.
    pub fingerprint: String,
    pub key: SealedSecrets,
}

impl FromItem for LicenseSlot {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(LicenseSlot {
            slot: get_u32(item, "slot")?,
            fingerprint: get_s(item, "fingerprint")?,
            key: SealedSecrets::read_from(item, "key")?,
        })
    }
}

/// A license as stored: what it allows and how much of it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseRecord {
    pub license_id: String,
    pub order_id: String,
    pub sku: String,
    pub activation_limit: u32,
    pub activations: u32,
    /// Set when it was voided or refunded; `active` otherwise (expiry is read from
    /// `expires_at` against the clock).
    pub status: LicenseStatus,
    pub expires_at: Option<Timestamp>,
    pub created_at: String,
}

impl LicenseRecord {
    /// Its status at `now`: a stored voided/refunded wins, then expiry.
    pub fn status_at(&self, now: Timestamp) -> LicenseStatus {
        match (self.status, self.expires_at) {
            (LicenseStatus::Active, Some(end)) if end <= now => LicenseStatus::Expired,
            (status, _) => status,
        }
    }
}

impl FromItem for LicenseRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(LicenseRecord {
            license_id: get_s(item, "license_id")?,
            order_id: get_s(item, "order_id")?,
            sku: get_s(item, "sku")?,
            activation_limit: get_u32(item, "activation_limit")?,
            activations: get_u32(item, "activations")?,
            status: LicenseStatus::parse(&get_s(item, "status")?)?,
            expires_at: item
                .contains_key("expires_at")
                .then(|| get_n(item, "expires_at").map(Timestamp::from_unix_seconds))
                .transpose()?,
            created_at: get_s(item, "created_at")?,
        })
    }
}

/// An active instance of a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseInstance {
    pub instance_id: String,
    pub instance_name: String,
    pub activated_at: String,
}

impl FromItem for LicenseInstance {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(LicenseInstance {
            instance_id: get_s(item, "instance_id")?,
            instance_name: get_s(item, "instance_name")?,
            activated_at: get_s(item, "activated_at")?,
        })
    }
}

/// A key about to be delivered: everything its two items hold.
pub struct NewLicense<'a> {
    pub fingerprint: &'a str,
    /// The key sealed; its seal id is the license's id.
    pub key: &'a SealedSecrets,
    pub spec: LicenseSpec,
}

/// What an activation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// A new instance, counted.
    Activated {
        instance_id: String,
    },
    /// An instance of this name was already active: the same one, counted once.
    AlreadyActive {
        instance_id: String,
    },
    LimitReached,
    /// Expired, voided or refunded meanwhile.
    NotActive,
}

/// Where a license and its instances stand.
#[derive(Debug, Clone)]
pub struct LicenseState {
    pub license: LicenseRecord,
    pub instances: Vec<LicenseInstance>,
}

impl Store {
    /// Access pattern: a generated key into one slot of an order, with its license, in
    /// one transaction conditional on the slot being empty and the order still awaiting
    /// delivery. A fingerprint already taken (a 94-bit collision) is an error, retried
    /// with a new key.
    pub async fn deliver_license(
        &self,
        order: &OrderRecord,
        slot: u32,
        license: &NewLicense<'_>,
        now: Timestamp,
    ) -> Result<SlotWrite> {
        let at = now.to_rfc3339();
        let mut record = item(
            keys::delivery(&order.order_id, slot),
            "delivery",
            [
                ("type", s(DeliveryType::LicenseKey.as_str())),
                ("slot", n(slot)),
                ("fingerprint", s(license.fingerprint)),
                ("allocated_at", s(&at)),
            ],
        );
        license.key.store_in(&mut record, "key");
        let mut tx = self.tx();
        tx.put(ItemName::Slot, record, Some("attribute_not_exists(pk)"))?;
        let mut stored = item(
            license_key(license.fingerprint),
            "license",
            [
                ("license_id", s(&license.key.seal_id)),
                ("order_id", s(&order.order_id)),
                ("sku", s(&order.sku)),
                ("slot", n(slot)),
                ("activation_limit", n(license.spec.activation_limit)),
                ("activations", n(0)),
                ("status", s(LicenseStatus::Active.as_str())),
                ("created_at", s(&at)),
            ],
        );
        if let Some(days) = license.spec.valid_days {
            let end = now.plus_seconds(i64::from(days) * 86_400);
            stored.insert("expires_at".to_owned(), n(end.unix_seconds()));
            stored.insert("gsi1pk".to_owned(), s(LICENSES_ENDING_INDEX));
            stored.insert("gsi1sk".to_owned(), n(end.unix_seconds()));
        }
        tx.put(ItemName::License, stored, Some("attribute_not_exists(pk)"))?;
        tx.awaiting_delivery(order)?;
        SlotWrite::of(self.transact(tx).await?, "license fingerprint")
    }

    /// Access pattern: the licenses ending by `by` whose reminder is not queued yet,
    /// soonest first (one Query of `gsi1` `LICENSES_ENDING`, keys only): their
    /// fingerprints.
    pub async fn ending_licenses(&self, by: Timestamp, limit: i32) -> Result<Vec<String>> {
        self.due_in_gsi1(LICENSES_ENDING_INDEX, by, limit, "LICENSE#")
            .await
    }

    /// Access pattern: a license out of the ending queue (its reminder queued, or none
    /// needed). Its end never moves, so nothing puts it back.
    pub async fn license_reminded(&self, fingerprint: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(license_key(fingerprint))))
            .update_expression("REMOVE gsi1pk, gsi1sk")
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: a license and its active instances, by the key's fingerprint
    /// (one Query of its partition).
    pub async fn license(&self, fingerprint: &str) -> Result<Option<LicenseState>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(license_pk(fingerprint)));
        let items = self.query_all(query).await?;
        let mut license = None;
        let mut instances = Vec::new();
        for found in &items {
            let sk = get_s(found, "sk")?;
            if sk == LICENSE_SK {
                license = Some(LicenseRecord::from_item(found)?);
            } else if sk.starts_with(INSTANCE_PREFIX) {
                instances.push(LicenseInstance::from_item(found)?);
            }
        }
        Ok(license.map(|license| LicenseState { license, instances }))
    }

    /// Access pattern: activate an instance — the count raised only while below the
    /// limit and the license active and unexpired, and the instance put only if no
    /// instance of that name is active, in one transaction.
    pub async fn activate_license(
        &self,
        fingerprint: &str,
        instance_name: &str,
        now: Timestamp,
    ) -> Result<Activation> {
        let instance_id = new_id();
        let mut tx = self.tx();
        tx.update(
            ItemName::License,
            key_item(license_key(fingerprint)),
            "SET activations = activations + :one",
            Some(
                "activations < activation_limit AND #status = :active \
                 AND (attribute_not_exists(expires_at) OR expires_at > :now)",
            ),
            &["status"],
            vec![
                (":one", n(1)),
                (":active", s(LicenseStatus::Active.as_str())),
                (":now", n(now.unix_seconds())),
            ],
        )?;
        tx.put(
            ItemName::Instance,
            item(
                instance_key(fingerprint, instance_name),
                "license_instance",
                [
                    ("instance_id", s(&instance_id)),
                    ("instance_name", s(instance_name)),
                    ("activated_at", s(now.to_rfc3339())),
                ],
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(Activation::Activated { instance_id }),
            TxOutcome::Cancelled(c) if c.failed(ItemName::Instance) => {
                let existing = self
                    .get_as::<LicenseInstance>(instance_key(fingerprint, instance_name), true)
                    .await?;
                Ok(match existing {
                    Some(instance) => Activation::AlreadyActive {
                        instance_id: instance.instance_id,
                    },
                    // Deactivated between the two reads: the caller asks again.
                    None => return Err(Error::Contention("license instance")),
                })
            }
            TxOutcome::Cancelled(_) => {
                let state = self
                    .license(fingerprint)
                    .await?
                    .ok_or(Error::NotFound("license"))?;
                Ok(if state.license.status_at(now) == LicenseStatus::Active {
                    Activation::LimitReached
                } else {
                    Activation::NotActive
                })
            }
        }
    }

    /// Access pattern: deactivate an instance — deleted only if present, the count
    /// lowered in the same transaction. False when it was not active.
    pub async fn deactivate_license(
        &self,
        fingerprint: &str,
        instance: &LicenseInstance,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.delete(
            ItemName::Instance,
            key_item(instance_key(fingerprint, &instance.instance_name)),
            "attribute_exists(pk)",
        )?;
        tx.update(
            ItemName::License,
            key_item(license_key(fingerprint)),
            "SET activations = activations - :one",
            Some("activations > :zero"),
            &[],
            vec![(":one", n(1)), (":zero", n(0))],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a delivered key is voided or refunded (its order refunded, a
    /// reversed bundle, an operator's void with its `audit` record in the same
    /// transaction): it stops validating and activating. False if it was not active.
    pub async fn end_license(
        &self,
        fingerprint: &str,
        status: LicenseStatus,
        audit: Option<&super::AuditEntry>,
    ) -> Result<bool> {
        let mut tx = self.tx();
        if let Some(entry) = audit {
            tx.audit(entry)?;
        }
        tx.update(
            ItemName::License,
            key_item(license_key(fingerprint)),
            "SET #status = :to",
            Some("#status = :active"),
            &["status"],
            vec![
                (":to", s(status.as_str())),
                (":active", s(LicenseStatus::Active.as_str())),
            ],
        )?;
        Ok(self.transact(tx).await?.committed())
    }
}
