//! Adapters: the DynamoDB access layer, the delivery queue, the secrets loader, and the
//! real implementations of the ports (`crate::ports`): the clocks and the KMS key vault.

pub mod clock;
pub mod dynamo;
pub mod kms;
pub mod metrics;
pub mod queue;
pub mod secrets;
