//! Ports: one small trait per outside system the domain talks to beyond its table,
//! named in the domain's words (docs/ports.md lists each port, its adapters, its fake
//! and the functions that use it).
//!
//! | port | real adapter | fake (`fakes`, tests only) |
//! |---|---|---|
//! | [`Clock`] | `adapters::clock::{SystemClock, LocalClock}` | `FakeClock` |
//! | [`KeyVault`] | `adapters::kms::KmsVault` | `FakeVault` |
//! | [`PaymentProvider`] | `adapters::{alipay, wechatpay, stripe}` | `FakePaymentProvider` |
//! | [`BillSource`] | `adapters::{alipay, wechatpay, stripe}` | `FakePaymentProvider` |
//! | [`Supplier`] | `adapters::supplier_http::HttpJsonSupplier` | `FakeSupplier` |
//! | [`Notifier`] | none yet | `FakeNotifier` |
//!
//! The `Context` holds ports as `Arc<dyn Port>`: one dispatch style everywhere. Async
//! methods return a [`PortFuture`] (a boxed `Send` future), so the traits stay usable
//! as trait objects without a macro crate.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;

pub mod clock;
pub mod notifier;
pub mod payment;
pub mod supplier;
pub mod vault;

pub use clock::Clock;
pub use notifier::Notifier;
pub use payment::{BillSource, PaymentProvider};
pub use supplier::Supplier;
pub use vault::KeyVault;

/// What an async port method returns.
pub type PortFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use crate::error::Error;

    #[tokio::test]
    async fn an_outside_system_failing_is_a_server_error_without_detail() {
        for err in [
            Error::Upstream {
                system: "supplier-x",
                message: "account 13800000000 refused".into(),
            },
            Error::Timeout {
                system: "supplier-x",
            },
            Error::NotAvailable {
                system: "stripe",
                operation: "refund",
            },
        ] {
            let response = err.into_response();
            assert_eq!(response.status().as_u16(), 500);
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("internal_error") && !body.contains("supplier-x"));
        }
    }
}
