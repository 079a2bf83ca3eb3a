//! Adapters to AWS: the DynamoDB access layer, the delivery queue, the KMS key vault and
//! the secrets loader; and the clocks (`crate::ports::Clock`).

pub mod clock;
pub mod dynamo;
pub mod kms;
pub mod metrics;
pub mod queue;
pub mod secrets;
