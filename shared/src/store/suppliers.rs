//! Suppliers of direct top-ups: one item each in the `SUPPLIER#ALL` partition (a
//! handful per deployment: listing them is one Query), the secret sealed under a data
//! key of the supplier's own (encryption context `supplier` + the supplier id + the
//! seal id); and each supplier's circuit breaker, one item of its own
//! (`SUPPLIER#{id}` / `CIRCUIT`) shared by every function instance.

use aws_sdk_dynamodb::types::AttributeValue;

use super::Store;
use super::audit::AuditEntry;
use super::codec::{FromItem, Item, get_n, get_s, get_u32, item, keys, n, s};
use super::tx::ItemName;
use crate::domain::supplier::{Circuit, CircuitSettings, SupplierKind, SupplierSettings};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::store::SealedSecrets;

/// A supplier as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplierRecord {
    pub supplier_id: String,
    pub settings: SupplierSettings,
    /// The signing secret, sealed (AAD `kami/supplier/v1|{supplier_id}`).
    pub secret: SealedSecrets,
    pub created_at: String,
    pub updated_at: String,
}

fn get_bool(item: &Item, name: &str) -> Result<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Ok(*value),
        _ => Err(Error::Corrupt(format!("item has no boolean {name}"))),
    }
}

impl FromItem for SupplierRecord {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(SupplierRecord {
            supplier_id: get_s(item, "supplier_id")?,
            settings: SupplierSettings {
                kind: SupplierKind::parse(&get_s(item, "kind")?)
                    .map_err(|_| Error::Corrupt("unknown supplier kind".into()))?,
                base_url: get_s(item, "base_url")?,
                timeout_ms: get_u32(item, "timeout_ms")?,
                enabled: get_bool(item, "enabled")?,
                circuit: CircuitSettings {
                    failures: get_u32(item, "circuit_failures")?,
                    window_s: get_u32(item, "circuit_window_s")?,
                    cooldown_s: get_u32(item, "circuit_cooldown_s")?,
                },
                unknown_outcome_deadline_s: get_u32(item, "unknown_outcome_deadline_s")?,
            },
            secret: SealedSecrets::read_from(item, "secret")?,
            created_at: get_s(item, "created_at")?,
            updated_at: get_s(item, "updated_at")?,
        })
    }
}

fn supplier_item(supplier: &SupplierRecord) -> Item {
    let settings = &supplier.settings;
    let mut stored = item(
        keys::supplier(&supplier.supplier_id),
        "supplier",
        [
            ("supplier_id", s(&supplier.supplier_id)),
            ("kind", s(settings.kind.as_str())),
            ("base_url", s(&settings.base_url)),
            ("timeout_ms", n(settings.timeout_ms)),
            ("enabled", AttributeValue::Bool(settings.enabled)),
            ("circuit_failures", n(settings.circuit.failures)),
            ("circuit_window_s", n(settings.circuit.window_s)),
            ("circuit_cooldown_s", n(settings.circuit.cooldown_s)),
            (
                "unknown_outcome_deadline_s",
                n(settings.unknown_outcome_deadline_s),
            ),
            ("created_at", s(&supplier.created_at)),
            ("updated_at", s(&supplier.updated_at)),
        ],
    );
    supplier.secret.store_in(&mut stored, "secret");
    stored
}

fn get_opt_time(item: &Item, name: &str) -> Result<Option<Timestamp>> {
    item.contains_key(name)
        .then(|| get_n(item, name).map(Timestamp))
        .transpose()
}

impl FromItem for Circuit {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(Circuit {
            failures: get_u32(item, "failures")?,
            window_started: get_opt_time(item, "window_started")?,
            opened_at: get_opt_time(item, "opened_at")?,
            trial_until: get_opt_time(item, "trial_until")?,
            version: u64::try_from(get_n(item, "version")?)
                .map_err(|_| Error::Corrupt("circuit version is negative".into()))?,
        })
    }
}

impl Store {
    /// Access pattern: create a supplier, or replace it as it was read (`read_at`: its
    /// `updated_at` then), with its audit record, in one transaction. Returns true when
    /// it was created.
    pub async fn put_supplier(
        &self,
        supplier: &SupplierRecord,
        read_at: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.put_audited(ItemName::Supplier, supplier_item(supplier), read_at, audit)
            .await
    }

    /// Access pattern: one supplier by id.
    pub async fn get_supplier(&self, supplier_id: &str) -> Result<Option<SupplierRecord>> {
        self.get_as(keys::supplier(supplier_id), true).await
    }

    /// Access pattern: every supplier (one Query on the `SUPPLIER#ALL` partition).
    pub async fn list_suppliers(&self) -> Result<Vec<SupplierRecord>> {
        self.partition_as(keys::SUPPLIERS_PARTITION).await
    }

    /// Access pattern: a supplier's circuit (strongly consistent); a supplier that never
    /// failed has none (closed).
    pub async fn get_circuit(&self, supplier_id: &str) -> Result<Circuit> {
        Ok(self
            .get_as(keys::circuit(supplier_id), true)
            .await?
            .unwrap_or_default())
    }

    /// Access pattern: replace a supplier's circuit with `next` if it is still at the
    /// version it was read at (`next.version - 1`). False when another instance changed
    /// it first (read again).
    pub async fn put_circuit(&self, supplier_id: &str, next: &Circuit) -> Result<bool> {
        let mut stored = item(
            keys::circuit(supplier_id),
            "supplier_circuit",
            [
                ("supplier_id", s(supplier_id)),
                ("failures", n(next.failures)),
                ("version", n(next.version)),
            ],
        );
        for (name, value) in [
            ("window_started", next.window_started),
            ("opened_at", next.opened_at),
            ("trial_until", next.trial_until),
        ] {
            if let Some(at) = value {
                stored.insert(name.to_owned(), n(at.0));
            }
        }
        let read_version = next.version.saturating_sub(1);
        let (condition, values) = if read_version == 0 {
            ("attribute_not_exists(pk) OR version = :read", n(0))
        } else {
            ("version = :read", n(read_version))
        };
        self.put_if(stored, condition, vec![(":read", values)])
            .await
    }
}
