//! Counts the AWS requests a piece of work makes, per operation, as the SDK sends them
//! (retries included): an SDK interceptor, attached to every client when a counter is
//! given to `ContextBuilder::new`. Used by the AWS-requests-per-order benchmark.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

/// Requests per operation (`DynamoDB_20120810.GetItem`, `TrentService.Decrypt`, ...),
/// plus the number of items written through `TransactWriteItems`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsCalls {
    pub requests: BTreeMap<String, u64>,
    pub transact_items: u64,
}

impl AwsCalls {
    /// Requests whose operation starts with `prefix` (e.g. `DynamoDB_`, `AmazonSQS.`, `TrentService.`).
    pub fn total(&self, prefix: &str) -> u64 {
        self.requests
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

#[derive(Debug, Clone, Default)]
pub struct AwsCallCounter(Arc<Mutex<AwsCalls>>);

impl AwsCallCounter {
    /// The counts so far, and a reset to zero.
    pub fn take(&self) -> AwsCalls {
        self.0
            .lock()
            .map(|mut calls| std::mem::take(&mut *calls))
            .unwrap_or_default()
    }
}

const TRANSACT_WRITE: &str = "DynamoDB_20120810.TransactWriteItems";

impl Intercept for AwsCallCounter {
    fn name(&self) -> &'static str {
        "AwsCallCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        // Every service Kami uses speaks an AWS JSON protocol that names the operation here.
        let operation = request
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown")
            .to_owned();
        let items = if operation == TRANSACT_WRITE {
            request
                .body()
                .bytes()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                .and_then(|body| body["TransactItems"].as_array().map(Vec::len))
                .unwrap_or(0) as u64
        } else {
            0
        };
        if let Ok(mut calls) = self.0.lock() {
            *calls.requests.entry(operation).or_default() += 1;
            calls.transact_items += items;
        }
        Ok(())
    }
}
