//! Kami's domain, its adapters and the HTTP mapping, shared by every Lambda function.
//!
//! Layout (hexagonal): `domain` holds types and rules with no I/O; `store` is the
//! DynamoDB access layer (one module per aggregate); `adapters` holds the SQS queue, the
//! KMS key vault and the secrets loader; `app` holds one module per use case, each a plain
//! async function over the store and the adapters; `http` is the one place where errors
//! become HTTP responses.

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod request;
pub mod store;

pub use config::{Config, Context};
pub use error::{Error, Result};
