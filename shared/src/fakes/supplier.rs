use std::collections::HashMap;
use std::sync::Mutex;

use super::{Behaviour, Script, lock};
use crate::error::{Error, Result};
use crate::ports::PortFuture;
use crate::ports::payment::Notification;
use crate::ports::supplier::{Supplier, SupplierCallback, TopUpOutcome, TopUpRequest};

const NAME: &str = "fake-supplier";
/// The header a fake callback must carry with the value `valid` to verify.
pub const FAKE_SIGNATURE_HEADER: &str = "x-fake-signature";

/// A supplier in memory. A submit that reaches it is recorded with the outcome it is
/// told to give (`Success` by default; `answer_with` for `Pending` or `Failed`);
/// `query` answers that outcome, or `NotFound` for a request it never saw; `settle`
/// finishes a pending one. It does not de-duplicate by `request_id` (a real supplier
/// may not either): `top_ups` shows every time it acted. A callback verifies when it
/// carries `x-fake-signature: valid`; its body is the `http_json` callback's.
#[derive(Default)]
pub struct FakeSupplier {
    script: Script,
    answer: Mutex<Option<TopUpOutcome>>,
    outcomes: Mutex<HashMap<String, TopUpOutcome>>,
    top_ups: Mutex<Vec<TopUpRequest>>,
}

impl FakeSupplier {
    pub fn then(&self, behaviour: Behaviour) {
        self.script.then(behaviour);
    }

    /// The outcome every later submit that reaches the supplier gets.
    pub fn answer_with(&self, outcome: TopUpOutcome) {
        *lock(&self.answer) = Some(outcome);
    }

    /// A pending top-up finishes (the supplier's callback, in a real one).
    pub fn settle(&self, request_id: &str, outcome: TopUpOutcome) {
        lock(&self.outcomes).insert(request_id.to_owned(), outcome);
    }

    /// Every top-up the supplier acted on, in order (one request twice if it was
    /// submitted twice or answered twice).
    pub fn top_ups(&self) -> Vec<TopUpRequest> {
        lock(&self.top_ups).clone()
    }

    fn submit_now(&self, request: &TopUpRequest) -> Result<TopUpOutcome> {
        let outcome = lock(&self.answer)
            .clone()
            .unwrap_or_else(|| TopUpOutcome::Success {
                supplier_ref: format!("fake_topup_{}", request.request_id),
            });
        self.script.perform(NAME, || {
            lock(&self.top_ups).push(request.clone());
            lock(&self.outcomes).insert(request.request_id.clone(), outcome.clone());
        })?;
        Ok(outcome)
    }
}

impl Supplier for FakeSupplier {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn submit<'a>(&'a self, request: &'a TopUpRequest) -> PortFuture<'a, TopUpOutcome> {
        Box::pin(async move { self.submit_now(request) })
    }

    fn query<'a>(&'a self, request_id: &'a str) -> PortFuture<'a, TopUpOutcome> {
        Box::pin(async move {
            Ok(lock(&self.outcomes)
                .get(request_id)
                .cloned()
                .unwrap_or(TopUpOutcome::NotFound))
        })
    }

    fn verify_callback(&self, callback: &Notification<'_>) -> Result<SupplierCallback> {
        let signed = callback
            .headers
            .get(FAKE_SIGNATURE_HEADER)
            .is_some_and(|value| value == "valid");
        if !signed {
            return Err(Error::InvalidSignature("fake supplier callback"));
        }
        #[derive(serde::Deserialize)]
        struct Body {
            request_id: String,
            status: String,
            supplier_ref: Option<String>,
            reason: Option<String>,
        }
        let body: Body = serde_json::from_slice(callback.body).map_err(Error::invalid_json)?;
        let outcome = match body.status.as_str() {
            "success" => TopUpOutcome::Success {
                supplier_ref: body.supplier_ref.unwrap_or_default(),
            },
            "pending" => TopUpOutcome::Pending {
                supplier_ref: body.supplier_ref,
            },
            _ => TopUpOutcome::Failed {
                reason: body.reason.unwrap_or_default(),
            },
        };
        Ok(SupplierCallback {
            request_id: body.request_id,
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn top_up(request_id: &str) -> TopUpRequest {
        TopUpRequest {
            request_id: request_id.into(),
            product: "mobile-50".into(),
            account: "13800000000".into(),
            quantity: 1,
            callback_url: "http://127.0.0.1/webhooks/suppliers/fake".into(),
        }
    }

    #[tokio::test]
    async fn success_failure_and_never_seen() {
        let supplier = FakeSupplier::default();
        assert!(matches!(
            supplier.submit(&top_up("r1")).await,
            Ok(TopUpOutcome::Success { .. })
        ));
        supplier.then(Behaviour::Fail);
        assert!(matches!(
            supplier.submit(&top_up("r2")).await,
            Err(Error::Upstream { .. })
        ));
        // A failed call never reached the supplier: safe to submit again.
        assert_eq!(supplier.query("r2").await.unwrap(), TopUpOutcome::NotFound);
        supplier.answer_with(TopUpOutcome::Failed {
            reason: "account closed".into(),
        });
        assert!(matches!(
            supplier.submit(&top_up("r3")).await,
            Ok(TopUpOutcome::Failed { .. })
        ));
        assert_eq!(supplier.top_ups().len(), 2);
    }

    #[tokio::test]
    async fn a_timed_out_submit_happened_and_a_query_says_so() {
        let supplier = FakeSupplier::default();
        supplier.then(Behaviour::TimeOut);
        assert!(matches!(
            supplier.submit(&top_up("r1")).await,
            Err(Error::Timeout { .. })
        ));
        assert!(matches!(
            supplier.query("r1").await.unwrap(),
            TopUpOutcome::Success { .. }
        ));
        assert_eq!(supplier.top_ups().len(), 1);
    }

    #[tokio::test]
    async fn pending_until_settled_and_answering_twice() {
        let supplier = FakeSupplier::default();
        supplier.answer_with(TopUpOutcome::Pending { supplier_ref: None });
        supplier.then(Behaviour::AnswerTwice);
        assert_eq!(
            supplier.submit(&top_up("r1")).await.unwrap(),
            TopUpOutcome::Pending { supplier_ref: None }
        );
        assert_eq!(supplier.top_ups().len(), 2, "the supplier acted twice");
        assert_eq!(
            supplier.query("r1").await.unwrap(),
            TopUpOutcome::Pending { supplier_ref: None }
        );
        let done = TopUpOutcome::Success {
            supplier_ref: "s-1".into(),
        };
        supplier.settle("r1", done.clone());
        assert_eq!(supplier.query("r1").await.unwrap(), done);
    }
}
