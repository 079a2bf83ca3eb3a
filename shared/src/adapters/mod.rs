//! Adapters to AWS: the DynamoDB access layer, the delivery queue, the KMS key vault and
//! the secrets loader.

pub mod dynamo;
pub mod kms;
pub mod metrics;
pub mod queue;
pub mod secrets;
