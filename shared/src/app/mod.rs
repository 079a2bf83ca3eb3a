//! Use cases: one module each, plain async functions over the `Context`.

pub mod api_keys;
pub mod audit;
pub mod bills;
pub mod bundles;
pub mod catalog;
pub mod channels;
pub mod delivery;
pub mod distributors;
pub mod entitlements;
pub mod exceptions;
pub mod fulfil;
pub mod import;
pub mod licenses;
pub mod links;
pub mod notify;
pub mod operator;
pub mod orders;
pub(crate) mod page;
pub mod pay;
pub mod payments;
pub mod reconcile;
pub mod refunds;
pub mod reminders;
pub mod sealed;
pub mod settlement;
mod stock;
pub mod stock_audit;
pub mod subscriptions;
pub mod suppliers;
pub mod sweep;

/// A view with a CSV form (`Accept: text/csv`): its columns and one row per record.
pub trait CsvView {
    const COLUMNS: &'static [&'static str];

    fn rows(&self) -> Vec<Vec<String>>;

    fn to_csv(&self) -> crate::error::Result<String> {
        let csv_error = |_| crate::error::Error::Corrupt("CSV export".into());
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(Self::COLUMNS).map_err(csv_error)?;
        for row in self.rows() {
            writer.write_record(&row).map_err(csv_error)?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|_| crate::error::Error::Corrupt("CSV export".into()))?;
        String::from_utf8(bytes).map_err(|_| crate::error::Error::Corrupt("CSV export".into()))
    }
}
