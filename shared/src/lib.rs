//! Kami's domain, its adapters and the HTTP mapping, shared by every Lambda function.
//!
//! Layout (hexagonal): `domain` holds types and rules with no I/O; `ports` holds one
//! trait per outside system; `adapters` holds the DynamoDB access layer, the SQS queue
//! and the KMS key vault; `app` holds one module per
//! use case, each a plain async function over the adapters; `http` is the one place where
//! errors become HTTP responses.

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod ports;

pub use config::{Config, Context};
pub use error::{Error, Result};
