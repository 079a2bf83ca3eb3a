use std::collections::HashMap;
use std::sync::Mutex;

use lambda_http::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{Behaviour, Script, lock};
use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::ports::PortFuture;
use crate::ports::payment::{
    BillLine, BillLineKind, BillLineStatus, BillPeriod, BillSource, Notification,
    NotificationAnswer, PaymentAction, PaymentEvent, PaymentHandle, PaymentNotice, PaymentProvider,
    PaymentRequest, PaymentSession, PaymentState, RefundOutcome, RefundRequest,
};

const NAME: &str = "fake-pay";
pub const SIGNATURE_HEADER: &str = "fake-signature";

/// A payment provider in memory: sessions, payments and refunds by reference, and
/// notifications "signed" with a shared secret, sent by `pay`.
pub struct FakePaymentProvider {
    secret: String,
    script: Script,
    payments: Mutex<HashMap<String, PaymentState>>,
    refunds: Mutex<Vec<RefundRequest>>,
    /// The bill: a line per payment and refund made, as a provider's bill has them,
    /// edited by `add_bill_line` / `drop_bill_line` to make mismatches.
    bill: Mutex<Vec<BillLine>>,
}

/// The body of a fake notification.
#[derive(Serialize, Deserialize)]
struct Body {
    event_id: String,
    payment_id: Option<String>,
    order_id: Option<String>,
    amount: Money,
    provider_ref: String,
}

impl Default for FakePaymentProvider {
    fn default() -> Self {
        FakePaymentProvider {
            secret: "fake-secret".into(),
            script: Script::default(),
            payments: Mutex::default(),
            refunds: Mutex::default(),
            bill: Mutex::default(),
        }
    }
}

impl FakePaymentProvider {
    pub fn then(&self, behaviour: Behaviour) {
        self.script.then(behaviour);
    }

    /// The buyer pays `amount` for `order_id` (None: a payment naming no order): the
    /// notification the provider sends, as (headers, body). The payment is known by the
    /// order id as its `payment_id`.
    pub fn pay(
        &self,
        event_id: &str,
        order_id: Option<&str>,
        amount: Money,
    ) -> (HeaderMap, Vec<u8>) {
        let payment_id = order_id.unwrap_or(event_id).to_owned();
        let provider_ref = format!("fake_pay_{payment_id}");
        lock(&self.payments).insert(
            payment_id.clone(),
            PaymentState::Paid {
                amount: amount.clone(),
                provider_ref: provider_ref.clone(),
            },
        );
        lock(&self.bill).push(BillLine {
            kind: BillLineKind::Payment,
            provider_ref: Some(provider_ref.clone()),
            payment_id: Some(payment_id.clone()),
            refund_id: None,
            amount: amount.clone(),
            status: BillLineStatus::Succeeded,
        });
        let body = Body {
            event_id: event_id.to_owned(),
            payment_id: Some(payment_id),
            order_id: order_id.map(str::to_owned),
            amount,
            provider_ref,
        };
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&self.secret) {
            headers.insert(SIGNATURE_HEADER, value);
        }
        (headers, serde_json::to_vec(&body).unwrap_or_default())
    }

    /// A line in the bill Kami never heard of (or an edited copy of a real one).
    pub fn add_bill_line(&self, line: BillLine) {
        lock(&self.bill).push(line);
    }

    /// Takes the lines of a payment or refund (by `payment_id` / `refund_id`) out of the
    /// bill, returning them.
    pub fn drop_bill_line(&self, id: &str) -> Vec<BillLine> {
        let mut bill = lock(&self.bill);
        let (dropped, kept) = bill.drain(..).partition(|line: &BillLine| {
            let named = match line.kind {
                BillLineKind::Payment => line.payment_id.as_deref(),
                BillLineKind::Refund => line.refund_id.as_deref(),
            };
            named == Some(id)
        });
        *bill = kept;
        dropped
    }

    /// Every refund the provider made.
    pub fn refunds(&self) -> Vec<RefundRequest> {
        lock(&self.refunds).clone()
    }

    fn verify(&self, notification: &Notification<'_>) -> Result<PaymentEvent> {
        let signature = notification.headers.get(SIGNATURE_HEADER);
        if signature.is_none_or(|s| s.as_bytes() != self.secret.as_bytes()) {
            return Err(Error::InvalidSignature("not signed by the fake provider"));
        }
        let body: Body = serde_json::from_slice(notification.body).map_err(Error::invalid_json)?;
        Ok(match body.order_id {
            Some(order_id) => PaymentEvent::Paid(PaymentNotice {
                provider: NAME,
                event_id: body.event_id,
                payment_id: body.payment_id,
                order_id: Some(order_id),
                amount: body.amount,
                provider_ref: body.provider_ref,
            }),
            None => PaymentEvent::Unbound {
                event_id: body.event_id,
                kind: "payment".into(),
                missing: "order id",
            },
        })
    }

    fn create(&self, request: &PaymentRequest) -> Result<PaymentSession> {
        let payment_id = request.payment_id.clone();
        self.script.perform(NAME, || {
            lock(&self.payments).insert(payment_id.clone(), PaymentState::AwaitingPayment);
        })?;
        Ok(PaymentSession {
            action: PaymentAction::Redirect {
                url: format!("https://pay.invalid/{payment_id}"),
            },
            provider_ref: None,
        })
    }

    fn close(&self, payment_id: &str) -> Result<()> {
        let mut outcome = Ok(());
        self.script.perform(NAME, || {
            let mut payments = lock(&self.payments);
            outcome = match payments.get(payment_id) {
                Some(PaymentState::AwaitingPayment | PaymentState::Closed) => {
                    payments.insert(payment_id.to_owned(), PaymentState::Closed);
                    Ok(())
                }
                _ => Err(Error::Upstream {
                    system: NAME,
                    message: "only an unpaid payment can be closed".into(),
                }),
            };
        })?;
        outcome
    }

    /// Refunds once per `refund_id`, as a provider honouring idempotency keys does: a
    /// retry after a lost answer (or a duplicated request) refunds nothing more.
    fn refund_now(&self, request: &RefundRequest) -> Result<RefundOutcome> {
        let paid = matches!(
            lock(&self.payments).get(&request.payment.payment_id),
            Some(PaymentState::Paid { .. } | PaymentState::Refunded { .. })
        );
        if !paid {
            return Ok(RefundOutcome::Refused {
                reason: "no such paid payment".into(),
            });
        }
        self.script.perform(NAME, || {
            let mut refunds = lock(&self.refunds);
            if refunds.iter().all(|r| r.refund_id != request.refund_id) {
                refunds.push(request.clone());
                lock(&self.bill).push(BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: request.payment.provider_ref.clone(),
                    payment_id: Some(request.payment.payment_id.clone()),
                    refund_id: Some(request.refund_id.clone()),
                    amount: request.amount.clone(),
                    status: BillLineStatus::Succeeded,
                });
            }
            lock(&self.payments).insert(
                request.payment.payment_id.clone(),
                PaymentState::Refunded {
                    amount: request.amount.clone(),
                },
            );
        })?;
        Ok(RefundOutcome::Refunded)
    }
}

impl PaymentProvider for FakePaymentProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession> {
        Box::pin(async move { self.create(request) })
    }

    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent> {
        Box::pin(async move { self.verify(notification) })
    }

    fn notification_answer(&self, outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
        crate::adapters::stripe::json_answer(outcome)
    }

    fn query_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, PaymentState> {
        Box::pin(async move {
            Ok(lock(&self.payments)
                .get(&payment.payment_id)
                .cloned()
                .unwrap_or(PaymentState::Unknown))
        })
    }

    fn close_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, ()> {
        Box::pin(async move { self.close(&payment.payment_id) })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> PortFuture<'a, RefundOutcome> {
        Box::pin(async move { self.refund_now(request) })
    }
}

impl BillSource for FakePaymentProvider {
    /// The whole bill, whatever the period: a fake has no clock of its own.
    fn fetch_bill<'a>(&'a self, _period: &'a BillPeriod) -> PortFuture<'a, Vec<BillLine>> {
        Box::pin(async move {
            self.script.perform(NAME, || {})?;
            Ok(lock(&self.bill).clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::Timestamp;
    use crate::ports::payment::PaymentMethod;

    fn cny(amount: i64) -> Money {
        Money::cny(amount)
    }

    /// GIVEN payments and a refund made WHEN the bill is fetched THEN a line each; lines
    /// can be dropped and added (to make mismatches), and a scripted failure fails.
    #[tokio::test]
    async fn the_bill_has_what_the_fake_did_and_takes_edits() {
        let provider = FakePaymentProvider::default();
        provider.pay("evt_1", Some("01A"), cny(990));
        provider.pay("evt_2", Some("01B"), cny(500));
        let handle = PaymentHandle {
            payment_id: "01A".into(),
            provider_ref: Some("fake_pay_01A".into()),
        };
        provider
            .refund(&RefundRequest {
                refund_id: "01AR0001".into(),
                payment: handle,
                amount: cny(100),
                paid: cny(990),
                reason: "test".into(),
                notify_url: String::new(),
            })
            .await
            .unwrap();
        let period = BillPeriod {
            date: "2027-01-15".into(),
            start: Timestamp(0),
            end: Timestamp(1),
        };
        let bill = provider.fetch_bill(&period).await.unwrap();
        let kinds: Vec<_> = bill.iter().map(|l| (l.kind, l.amount.amount)).collect();
        assert_eq!(
            kinds,
            [
                (BillLineKind::Payment, 990),
                (BillLineKind::Payment, 500),
                (BillLineKind::Refund, 100)
            ]
        );
        assert_eq!(provider.drop_bill_line("01B").len(), 1);
        provider.add_bill_line(bill[1].clone());
        provider.add_bill_line(bill[1].clone());
        assert_eq!(provider.fetch_bill(&period).await.unwrap().len(), 4);
        provider.then(Behaviour::Fail);
        assert!(provider.fetch_bill(&period).await.is_err());
    }

    #[tokio::test]
    async fn notifications_are_verified_into_events() {
        let provider = FakePaymentProvider::default();
        let (headers, body) = provider.pay("evt_1", Some("01ORDER"), cny(990));
        let notification = Notification {
            headers: &headers,
            body: &body,
            received_at: Timestamp(0),
        };
        match provider.verify_notification(&notification).await.unwrap() {
            PaymentEvent::Paid(notice) => {
                assert_eq!(
                    (notice.provider, notice.order_id.as_deref()),
                    (NAME, Some("01ORDER"))
                );
                assert_eq!(notice.amount, cny(990));
            }
            other => panic!("{other:?}"),
        }
        let forged = Notification {
            headers: &HeaderMap::new(),
            ..notification
        };
        assert!(matches!(
            provider.verify_notification(&forged).await,
            Err(Error::InvalidSignature(_))
        ));
        let (headers, body) = provider.pay("evt_2", None, cny(5));
        let unbound = Notification {
            headers: &headers,
            body: &body,
            received_at: Timestamp(0),
        };
        assert!(matches!(
            provider.verify_notification(&unbound).await.unwrap(),
            PaymentEvent::Unbound { .. }
        ));
    }

    #[tokio::test]
    async fn create_query_close() {
        let provider = FakePaymentProvider::default();
        let request = PaymentRequest {
            payment_id: "P01ORDER1".into(),
            order_id: "01ORDER".into(),
            amount: cny(990),
            subject: "Card".into(),
            method: PaymentMethod::Page,
            notify_url: "https://kami.invalid/webhooks/fake".into(),
            buyer_email: "buyer@example.com".into(),
            expires_at: Timestamp(0),
        };
        let session = provider.create_payment(&request).await.unwrap();
        assert!(matches!(session.action, PaymentAction::Redirect { .. }));
        let handle = |id: &str| PaymentHandle {
            payment_id: id.into(),
            provider_ref: None,
        };
        let state = provider.query_payment(&handle("P01ORDER1")).await.unwrap();
        assert_eq!(state, PaymentState::AwaitingPayment);
        provider.close_payment(&handle("P01ORDER1")).await.unwrap();
        let state = provider.query_payment(&handle("P01ORDER1")).await.unwrap();
        assert_eq!(state, PaymentState::Closed);
        let state = provider.query_payment(&handle("nope")).await.unwrap();
        assert_eq!(state, PaymentState::Unknown);
    }

    #[tokio::test]
    async fn a_refund_retried_after_a_lost_answer_refunds_once() {
        let provider = FakePaymentProvider::default();
        provider.pay("evt_1", Some("01ORDER"), cny(990));
        let refund = RefundRequest {
            refund_id: "refund-01ORDER".into(),
            payment: PaymentHandle {
                payment_id: "01ORDER".into(),
                provider_ref: Some("fake_pay_01ORDER".into()),
            },
            amount: cny(990),
            paid: cny(990),
            reason: "test".into(),
            notify_url: "https://kami.invalid/webhooks/fake".into(),
        };
        assert!(
            provider.close_payment(&refund.payment).await.is_err(),
            "a paid payment cannot be closed"
        );
        provider.then(Behaviour::TimeOut);
        assert!(matches!(
            provider.refund(&refund).await,
            Err(Error::Timeout { .. })
        ));
        assert_eq!(
            provider.refund(&refund).await.unwrap(),
            RefundOutcome::Refunded
        );
        assert_eq!(provider.refunds().len(), 1);
        let unknown = RefundRequest {
            payment: PaymentHandle {
                payment_id: "other".into(),
                provider_ref: None,
            },
            ..refund
        };
        assert!(matches!(
            provider.refund(&unknown).await.unwrap(),
            RefundOutcome::Refused { .. }
        ));
    }
}
