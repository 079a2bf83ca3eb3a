//! Kami's domain, its adapters and the HTTP mapping, shared by every Lambda function.
//!
//! Layout (hexagonal): `domain` holds types and rules with no I/O; `ports` holds one
//! trait per outside system (clock, key vault, payment provider, supplier, notifier);
//! `store` is the DynamoDB access layer (one module per aggregate); `adapters` holds the
//! SQS queue, the secrets loader and the ports' real implementations; `fakes` (tests and
//! the `fakes` feature only, never in a Lambda binary) holds a fake for every port; `app`
//! holds one module per use case, each a plain async function over the `Context`; `http`
//! holds the routers and is the one place where errors become HTTP responses
//! (docs/architecture.md).

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod request;
pub mod store;

pub use config::{Config, Context};
pub use error::{Error, Result};
