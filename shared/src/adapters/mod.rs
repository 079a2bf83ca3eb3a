//! Adapters to AWS: the delivery queue, the KMS key vault and the secrets loader. The
//! DynamoDB access layer is `crate::store`.

pub mod kms;
pub mod metrics;
pub mod queue;
pub mod secrets;
