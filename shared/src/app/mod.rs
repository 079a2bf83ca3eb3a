//! Use cases: one module each, plain async functions over the `Context`.

pub mod audit;
pub mod bills;
pub mod catalog;
pub mod channels;
pub mod delivery;
pub mod distributors;
pub mod exceptions;
pub mod fulfil;
pub mod import;
pub mod operator;
pub mod orders;
pub(crate) mod page;
pub mod pay;
pub mod payments;
pub mod reconcile;
pub mod refunds;
pub mod sealed;
pub mod settlement;
mod stock;
pub mod stock_audit;
pub mod suppliers;
pub mod sweep;
