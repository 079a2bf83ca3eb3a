//! The protocols a supplier can speak: for each, one registration here (how its adapter
//! is built). And the per-instance cache of suppliers and their built adapters, so a
//! top-up does not read the suppliers or open a supplier's secret every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::adapters::http_client::HttpClient;
use crate::adapters::supplier_http::HttpJsonSupplier;
use crate::domain::supplier::{SupplierKind, SupplierSettings};
use crate::domain::time::Timestamp;
use crate::ports::{Clock, Supplier};
use crate::store::SupplierRecord;

/// How long an instance trusts its copy of the supplier list: an operator's change
/// (disabling a supplier, say) reaches every instance within this (docs/suppliers.md).
pub const SUPPLIER_LIST_TTL_SECONDS: i64 = 30;

/// The adapter for a supplier's settings and opened secret.
pub fn build(
    settings: &SupplierSettings,
    secret: Zeroizing<Vec<u8>>,
    http: HttpClient,
    clock: Arc<dyn Clock>,
) -> Arc<dyn Supplier> {
    match settings.kind {
        SupplierKind::HttpJson => Arc::new(HttpJsonSupplier::new(
            &settings.base_url,
            secret,
            Duration::from_millis(u64::from(settings.timeout_ms)),
            http,
            clock,
        )),
    }
}

type BuiltSupplier = (String, Arc<dyn Supplier>);

/// An instance's suppliers and built adapters (an adapter is rebuilt when its
/// supplier's `updated_at` changes).
#[derive(Default)]
pub struct SupplierCache {
    list: Mutex<Option<(Timestamp, Arc<Vec<SupplierRecord>>)>>,
    built: Mutex<HashMap<String, BuiltSupplier>>,
    /// Adapters given at start-up (fakes in tests), whatever the record says.
    replaced: Mutex<HashMap<String, Arc<dyn Supplier>>>,
}

impl SupplierCache {
    /// The list read at most `SUPPLIER_LIST_TTL_SECONDS` before `now`.
    pub fn fresh_list(&self, now: Timestamp) -> Option<Arc<Vec<SupplierRecord>>> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.as_ref()
            .filter(|(read, _)| {
                let age = now.unix_seconds() - read.unix_seconds();
                (0..SUPPLIER_LIST_TTL_SECONDS).contains(&age)
            })
            .map(|(_, suppliers)| suppliers.clone())
    }

    pub fn remember_list(&self, now: Timestamp, suppliers: Arc<Vec<SupplierRecord>>) {
        *self.list.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, suppliers));
    }

    /// The adapter built for this version of the supplier, if any.
    pub fn adapter(&self, supplier: &SupplierRecord) -> Option<Arc<dyn Supplier>> {
        if let Some(replaced) = self
            .replaced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&supplier.supplier_id)
        {
            return Some(replaced.clone());
        }
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&supplier.supplier_id)
            .filter(|(version, _)| *version == supplier.updated_at)
            .map(|(_, adapter)| adapter.clone())
    }

    pub fn remember_adapter(&self, supplier: &SupplierRecord, adapter: Arc<dyn Supplier>) {
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                supplier.supplier_id.clone(),
                (supplier.updated_at.clone(), adapter),
            );
    }

    pub(crate) fn replace(&self, supplier_id: &str, adapter: Arc<dyn Supplier>) {
        self.replaced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(supplier_id.to_owned(), adapter);
    }
}
