//! Suppliers of direct top-ups: set up by operators (admin), and turned into adapters
//! with their secret opened where a supplier is called (the delivery worker) or its
//! callbacks verified (the webhook). Their circuit breakers are shared by every
//! instance through the table.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::audit::{Actor, snapshot};
use super::sealed;
use crate::adapters::suppliers;
use crate::config::Context;
use crate::domain::channel::SECRET_SHOWN_AS;
use crate::domain::supplier::{
    Admission, Circuit, CircuitSettings, CircuitState, SupplierKind, SupplierRequest,
    validate_supplier_id,
};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::Supplier;
use crate::ports::vault::EncryptionContext;
use crate::store::AuditSubject;
use crate::store::SupplierRecord;

/// Circuit writes that lose to another instance's are read again this often.
const CIRCUIT_RETRIES: u32 = 3;

/// Binds a supplier's sealed secret to that supplier: moved to another, it fails to open.
fn secret_aad(supplier_id: &str) -> Vec<u8> {
    format!("kami/supplier/v1|{supplier_id}").into_bytes()
}

/// A supplier as operators see it: the secret shown as `"<set>"`, the circuit as it
/// stands now (its settings under `circuit.settings`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SupplierView {
    pub supplier_id: String,
    pub kind: SupplierKind,
    pub base_url: String,
    #[schema(example = "<set>")]
    pub secret: &'static str,
    pub timeout_ms: u32,
    pub enabled: bool,
    pub unknown_outcome_deadline_s: u32,
    pub circuit: CircuitView,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitView {
    pub state: CircuitState,
    /// Calls without an answer counted in the current window.
    pub failures: u32,
    pub opened_at: Option<String>,
    /// What was set: `failures` within `window_s` open it for `cooldown_s`.
    pub settings: CircuitSettings,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SupplierList {
    pub suppliers: Vec<SupplierView>,
}

impl SupplierView {
    fn of(supplier: &SupplierRecord, circuit: &Circuit, now: Timestamp) -> Self {
        let settings = &supplier.settings;
        SupplierView {
            supplier_id: supplier.supplier_id.clone(),
            kind: settings.kind,
            base_url: settings.base_url.clone(),
            secret: SECRET_SHOWN_AS,
            timeout_ms: settings.timeout_ms,
            enabled: settings.enabled,
            unknown_outcome_deadline_s: settings.unknown_outcome_deadline_s,
            circuit: CircuitView {
                state: circuit.state(&settings.circuit, now),
                failures: circuit.failures,
                opened_at: circuit.opened_at.map(Timestamp::to_rfc3339),
                settings: settings.circuit,
            },
            created_at: supplier.created_at.clone(),
            updated_at: supplier.updated_at.clone(),
        }
    }
}

/// A supplier with its circuit read now.
async fn view(ctx: &Context, supplier: &SupplierRecord) -> Result<SupplierView> {
    let circuit = ctx.store.get_circuit(&supplier.supplier_id).await?;
    Ok(SupplierView::of(supplier, &circuit, ctx.clock.now()))
}

async fn open_secret(ctx: &Context, supplier: &SupplierRecord) -> Result<Zeroizing<Vec<u8>>> {
    let context = EncryptionContext::supplier(&supplier.supplier_id, &supplier.secret.seal_id);
    sealed::open(
        ctx,
        &context,
        &secret_aad(&supplier.supplier_id),
        &supplier.secret,
    )
    .await
}

/// `PUT /admin/suppliers/{supplier_id}`: creates (true) or replaces the supplier. A
/// replace without `secret` keeps the stored one.
pub async fn put_supplier(
    ctx: &Context,
    actor: &Actor,
    supplier_id: &str,
    request: SupplierRequest,
) -> Result<(bool, SupplierView)> {
    validate_supplier_id(supplier_id)?;
    let (settings, secret) = request.into_parts(ctx.config.supplier_allow_private_urls)?;
    let existing = ctx.store.get_supplier(supplier_id).await?;
    let secret = match (secret, &existing) {
        (Some(secret), _) => Zeroizing::new(secret.as_bytes().to_vec()),
        (None, Some(old)) => open_secret(ctx, old).await?,
        (None, None) => {
            return Err(Error::invalid_field(
                "invalid_supplier_config",
                "secret",
                "secret is required when a supplier is created",
            ));
        }
    };
    let sealed_secret = sealed::seal(
        ctx,
        |seal_id| EncryptionContext::supplier(supplier_id, seal_id),
        &secret_aad(supplier_id),
        &secret,
    )
    .await?;
    let now = ctx.clock.now().to_rfc3339();
    let record = SupplierRecord {
        supplier_id: supplier_id.to_owned(),
        settings,
        secret: sealed_secret,
        created_at: existing
            .as_ref()
            .map_or_else(|| now.clone(), |old| old.created_at.clone()),
        updated_at: now,
    };
    let before = match &existing {
        Some(old) => snapshot(&view(ctx, old).await?),
        None => None,
    };
    let after = view(ctx, &record).await?;
    let entry = actor.entry(
        ctx,
        "supplier.put",
        (AuditSubject::Supplier, supplier_id),
        None,
        before,
        snapshot(&after),
    );
    let read_at = existing.as_ref().map(|old| old.updated_at.as_str());
    let created = ctx.store.put_supplier(&record, read_at, &entry).await?;
    tracing::info!(supplier_id, created, "supplier saved");
    Ok((created, after))
}

/// `GET /admin/suppliers/{supplier_id}`, with its circuit.
pub async fn get_supplier(ctx: &Context, supplier_id: &str) -> Result<SupplierView> {
    validate_supplier_id(supplier_id).map_err(|_| Error::NotFound("supplier"))?;
    let supplier = ctx
        .store
        .get_supplier(supplier_id)
        .await?
        .ok_or(Error::NotFound("supplier"))?;
    view(ctx, &supplier).await
}

pub async fn list_suppliers(ctx: &Context) -> Result<SupplierList> {
    let mut suppliers = ctx.store.list_suppliers().await?;
    suppliers.sort_by(|a, b| a.supplier_id.cmp(&b.supplier_id));
    let mut views = Vec::with_capacity(suppliers.len());
    for supplier in &suppliers {
        views.push(view(ctx, supplier).await?);
    }
    Ok(SupplierList { suppliers: views })
}

/// Every supplier, from this instance's copy (read again every
/// `SUPPLIER_LIST_TTL_SECONDS`, or now with `reread`).
pub async fn known_suppliers(ctx: &Context, reread: bool) -> Result<Arc<Vec<SupplierRecord>>> {
    let now = ctx.clock.now();
    if !reread && let Some(list) = ctx.suppliers.fresh_list(now) {
        return Ok(list);
    }
    let list = Arc::new(ctx.store.list_suppliers().await?);
    ctx.suppliers.remember_list(now, list.clone());
    Ok(list)
}

/// The supplier `supplier_id`, from this instance's copy of the list; one this copy
/// does not have yet (created since) is read from the table.
pub async fn known_supplier(ctx: &Context, supplier_id: &str) -> Result<Option<SupplierRecord>> {
    if let Some(found) = known_suppliers(ctx, false)
        .await?
        .iter()
        .find(|s| s.supplier_id == supplier_id)
    {
        return Ok(Some(found.clone()));
    }
    ctx.store.get_supplier(supplier_id).await
}

/// The supplier's adapter, its secret opened (once per version per instance).
pub async fn adapter_for(ctx: &Context, supplier: &SupplierRecord) -> Result<Arc<dyn Supplier>> {
    if let Some(adapter) = ctx.suppliers.adapter(supplier) {
        return Ok(adapter);
    }
    let secret = open_secret(ctx, supplier).await?;
    let adapter = suppliers::build(&supplier.settings, secret, ctx.http()?, ctx.clock.clone());
    ctx.suppliers.remember_adapter(supplier, adapter.clone());
    Ok(adapter)
}

/// Whether a new request may go to `supplier` now, by its circuit; in half-open state
/// this claims the one trial (for as long as a call may take).
pub async fn admit(ctx: &Context, supplier: &SupplierRecord) -> Result<bool> {
    let settings = &supplier.settings;
    for _ in 0..CIRCUIT_RETRIES {
        let now = ctx.clock.now();
        let circuit = ctx.store.get_circuit(&supplier.supplier_id).await?;
        match circuit.admits(&settings.circuit, now) {
            Admission::Yes => return Ok(true),
            Admission::No => return Ok(false),
            Admission::Trial => {
                let until = now.plus_seconds(i64::from(settings.timeout_ms / 1000 + 2));
                if ctx
                    .store
                    .put_circuit(&supplier.supplier_id, &circuit.with_trial(until))
                    .await?
                {
                    return Ok(true);
                }
            }
        }
    }
    // Others keep changing it: leave this supplier for now.
    Ok(false)
}

/// Counts a submit's result on the supplier's circuit: no answer (a timeout, a
/// connection error, a 5xx) is a failure; any answer closes a half-open circuit.
pub async fn record_call<T>(
    ctx: &Context,
    supplier: &SupplierRecord,
    result: &Result<T>,
) -> Result<()> {
    let failed = matches!(result, Err(Error::Timeout { .. } | Error::Upstream { .. }));
    if result.is_err() {
        crate::metrics::supplier_error(&supplier.supplier_id);
    }
    let settings = &supplier.settings.circuit;
    for _ in 0..CIRCUIT_RETRIES {
        let now = ctx.clock.now();
        let circuit: Circuit = ctx.store.get_circuit(&supplier.supplier_id).await?;
        let next = if failed {
            circuit.after_failure(settings, now)
        } else {
            match circuit.after_answer(settings, now) {
                Some(next) => next,
                None => return Ok(()),
            }
        };
        if ctx.store.put_circuit(&supplier.supplier_id, &next).await? {
            if next.opened_at.is_some() && circuit.opened_at != next.opened_at {
                tracing::warn!(supplier_id = %supplier.supplier_id, failures = next.failures, "supplier circuit opened");
            }
            return Ok(());
        }
    }
    Err(Error::Contention("supplier circuit"))
}
