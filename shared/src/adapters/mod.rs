//! Adapters: the DynamoDB access layer, the delivery queue, the secrets loader, and the
//! real implementations of the ports (`crate::ports`): the clocks, the KMS key vault and
//! Stripe.

pub mod clock;
pub mod dynamo;
pub mod kms;
pub mod metrics;
pub mod queue;
pub mod secrets;
pub mod stripe;
