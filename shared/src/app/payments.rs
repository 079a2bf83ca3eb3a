//! Payment notifications from any provider: verified by the provider's adapter into a
//! `PaymentEvent`, bound to the order, recorded once per provider event, and delivery
//! queued. The provider gets 2xx only after that is durable.

use lambda_http::http::HeaderMap;
use serde_json::{Value, json};

use super::stock::Retake;
use crate::config::Context;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::time::is_id;
use crate::error::{Error, Result};
use crate::ports::payment::{
    Notification, NotificationAnswer, PaymentEvent, PaymentNotice, PaymentProvider,
};
use crate::store::{
    AttemptRecord, AttemptStatus, AuditEntry, OrderRecord, PaymentApplied, PaymentChange,
    StockShare, Unmatched,
};

const DECISION_ATTEMPTS: u32 = 4;

/// The audit record of an operator's confirmation of a payment, made from the order's
/// move (`from`, `to`).
pub type ConfirmedBy<'a> = dyn Fn(OrderStatus, OrderStatus) -> AuditEntry + Sync + 'a;

/// `POST /webhooks/{provider}` with the raw body, received now by the context's clock.
pub async fn payment_notification(
    ctx: &Context,
    provider: &str,
    headers: &HeaderMap,
    raw_body: &[u8],
) -> Result<Value> {
    let provider = ctx.payment_provider(provider)?;
    let notification = Notification {
        headers,
        body: raw_body,
        received_at: ctx.clock.now(),
    };
    let name = provider.name();
    match provider.verify_notification(&notification).await? {
        PaymentEvent::Ignored { event_id, kind } => {
            tracing::info!(provider = name, event_id, kind, "payment event ignored");
        }
        PaymentEvent::Unbound {
            event_id,
            kind,
            missing,
        } => keep_unbound(ctx, name, &event_id, &kind, missing).await?,
        PaymentEvent::Paid(notice) => record_payment(ctx, &notice, None, None).await?,
        PaymentEvent::Waiting { event_id, .. }
        | PaymentEvent::Closed { event_id, .. }
        | PaymentEvent::RefundSettled { event_id, .. } => {
            tracing::info!(provider = name, event_id, "payment event acknowledged");
        }
    }
    Ok(json!({"received": true}))
}

/// `POST /webhooks/{provider}/{channel_id}`: a notification for a payment channel,
/// verified with that channel's keys and bound to the attempt it names, which must be one
/// this channel issued. Answered as the provider expects (`notification_answer`), both
/// when it is recorded and when it is refused.
pub async fn channel_notification(
    ctx: &Context,
    provider: &str,
    channel_id: &str,
    headers: &HeaderMap,
    raw_body: &[u8],
) -> Result<NotificationAnswer> {
    let channel = super::channels::find_channel(ctx, channel_id).await?;
    if channel.settings.provider.as_str() != provider {
        return Err(Error::NotFound("channel"));
    }
    let adapter = super::channels::provider_for(ctx, &channel).await?;
    let outcome =
        apply_channel_notification(ctx, adapter.as_ref(), channel_id, headers, raw_body).await;
    if let Err(err) = &outcome {
        tracing::warn!(provider, channel_id, error = %err, "payment notification refused");
    }
    Ok(adapter.notification_answer(outcome.as_ref().map(|_| ())))
}

async fn apply_channel_notification(
    ctx: &Context,
    adapter: &dyn PaymentProvider,
    channel_id: &str,
    headers: &HeaderMap,
    raw_body: &[u8],
) -> Result<()> {
    let notification = Notification {
        headers,
        body: raw_body,
        received_at: ctx.clock.now(),
    };
    let name = adapter.name();
    match adapter.verify_notification(&notification).await? {
        PaymentEvent::Paid(mut notice) => {
            let Some(payment_id) = notice.payment_id.clone() else {
                return keep_unbound(ctx, name, &notice.event_id, "payment", "payment id").await;
            };
            let attempt = match super::pay::order_of_payment(&payment_id) {
                Some(order_id) => ctx.store.get_attempt(order_id, &payment_id).await?,
                None => None,
            };
            let Some(attempt) = attempt else {
                // Verified money naming no attempt Kami issued: kept for an operator.
                notice.order_id = super::pay::order_of_payment(&payment_id).map(str::to_owned);
                return record_payment(ctx, &notice, None, None).await;
            };
            if attempt.channel_id != channel_id {
                // Verified by this channel's keys but issued by another channel: binding
                // fails, nothing changes.
                return Err(Error::InvalidSignature(
                    "the payment was not issued by this channel",
                ));
            }
            notice.order_id = Some(attempt.order_id.clone());
            record_payment(ctx, &notice, Some(&attempt), None).await
        }
        PaymentEvent::Closed {
            event_id,
            payment_id,
        } => {
            let attempt = match super::pay::order_of_payment(&payment_id) {
                Some(order_id) => ctx.store.get_attempt(order_id, &payment_id).await?,
                None => None,
            };
            if let Some(attempt) = attempt.filter(|a| a.channel_id == channel_id) {
                ctx.store
                    .end_attempt(
                        &attempt,
                        &[AttemptStatus::Creating, AttemptStatus::Pending],
                        AttemptStatus::Closed,
                        None,
                        notification.received_at,
                    )
                    .await?;
            }
            tracing::info!(
                provider = name,
                event_id,
                payment_id,
                "payment closed by the provider"
            );
            Ok(())
        }
        PaymentEvent::RefundSettled {
            event_id,
            refund_id,
            succeeded,
        } => {
            tracing::info!(
                provider = name,
                event_id,
                refund_id,
                succeeded,
                "refund settled by the provider"
            );
            super::refunds::refund_settled(ctx, &refund_id, succeeded).await
        }
        PaymentEvent::Waiting { event_id, .. } | PaymentEvent::Ignored { event_id, .. } => {
            tracing::info!(provider = name, event_id, "payment event acknowledged");
            Ok(())
        }
        PaymentEvent::Unbound {
            event_id,
            kind,
            missing,
        } => keep_unbound(ctx, name, &event_id, &kind, missing).await,
    }
}

/// Verified money that names no order: kept (never expiring) for an operator.
async fn keep_unbound(
    ctx: &Context,
    provider: &str,
    event_id: &str,
    kind: &str,
    missing: &str,
) -> Result<()> {
    let unmatched = Unmatched {
        outcome: "unbound_event",
        kind,
        claimed_order_id: None,
        amount: None,
    };
    ctx.store
        .record_unmatched_payment(provider, event_id, &unmatched, ctx.clock.now())
        .await?;
    tracing::warn!(
        provider,
        event_id,
        kind,
        missing,
        "payment event without an order kept for an operator"
    );
    Ok(())
}

/// The outcome a notice has on an order in its current state. `stock` is where a late
/// payment would take its units again; `None` once no counter holds them.
fn decide<'a>(
    order: &OrderRecord,
    notice: &'a PaymentNotice,
    stock: Option<&'a [StockShare]>,
    attempt: Option<&'a AttemptRecord>,
) -> PaymentChange<'a> {
    let amount = &notice.amount;
    let exact = *amount == order.amount;
    let mut reserve_stock = None;
    let (outcome, transition) = match order.status {
        OrderStatus::PendingPayment if exact => (
            "paid",
            Some((order.status, OrderStatus::Paid, Cause::PaymentReceived)),
        ),
        OrderStatus::PendingPayment => (
            "amount_mismatch",
            Some((
                order.status,
                OrderStatus::PaymentException,
                Cause::PaymentMismatch,
            )),
        ),
        // The buyer paid after the order expired: if its stock is still there, take it
        // again and deliver, rather than leave a paying buyer with nothing.
        OrderStatus::Expired if exact && stock.is_some() => {
            reserve_stock = stock;
            (
                "paid_late",
                Some((order.status, OrderStatus::Paid, Cause::LatePaymentReserved)),
            )
        }
        OrderStatus::Expired | OrderStatus::Cancelled => {
            let cause = if exact {
                Cause::PaymentReceived
            } else {
                Cause::PaymentMismatch
            };
            (
                "paid_after_expiry",
                Some((order.status, OrderStatus::PaidAfterExpiry, cause)),
            )
        }
        // Already settled: another event about the same payment, or a second payment.
        _ if order.payment_ref.as_deref() == Some(notice.provider_ref.as_str()) => {
            (crate::store::REPEAT_NOTIFICATION, None)
        }
        _ => (crate::store::DUPLICATE_PAYMENT, None),
    };
    PaymentChange {
        provider: notice.provider,
        event_id: &notice.event_id,
        provider_ref: &notice.provider_ref,
        amount,
        outcome,
        transition,
        reserve_stock,
        attempt: attempt.map(|a| a.payment_id.as_str()),
        channel: attempt.map(|a| a.channel_id.as_str()),
        audit: None,
    }
}

/// Applies a verified payment to the order it names (`notice.order_id`). `attempt` is the
/// payment attempt of that order it was bound to (a channel's notification, checked by
/// the caller), marked paid in the same transaction, the payment entered in its
/// channel's book. `audit` makes the record of an operator's confirmation from the
/// order's move (from, to), written in the payment's transaction: a repeated
/// confirmation, a duplicate, records nothing.
pub async fn record_payment(
    ctx: &Context,
    notice: &PaymentNotice,
    attempt: Option<&AttemptRecord>,
    audit: Option<&ConfirmedBy<'_>>,
) -> Result<()> {
    // Where a late payment takes its stock again.
    let mut retake = Retake::default();
    let mut races = 0;
    loop {
        // One reading per attempt: whatever this attempt writes is stamped alike.
        let now = ctx.clock.now();
        let order = match notice.order_id.as_deref().filter(|id| is_id(id)) {
            Some(order_id) => ctx.store.get_order(order_id).await?,
            None => None,
        };
        let Some(order) = order else {
            let unmatched = Unmatched {
                outcome: "unknown_order",
                kind: "payment",
                claimed_order_id: notice.order_id.as_deref(),
                amount: Some(&notice.amount),
            };
            let first = ctx
                .store
                .record_unmatched_payment(notice.provider, &notice.event_id, &unmatched, now)
                .await?;
            tracing::warn!(event_id = %notice.event_id, first, "payment for an unknown order kept for an operator");
            return Ok(());
        };
        let mut change = decide(&order, notice, retake.next(&order), attempt);
        let to = change.transition.map_or(order.status, |(_, to, _)| to);
        let entry = audit.map(|make| make(order.status, to));
        change.audit = entry.as_ref();
        match ctx.store.apply_payment(&order, &change, now).await? {
            PaymentApplied::Applied => {
                tracing::info!(order_id = %order.order_id, event_id = %notice.event_id, outcome = change.outcome, "payment recorded");
                let status = change.transition.map_or(order.status, |(_, to, _)| to);
                if status.awaits_delivery() {
                    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
                }
                return Ok(());
            }
            PaymentApplied::Duplicate => {
                // Seen before; make sure the delivery it led to is queued (an earlier
                // attempt may have stopped between recording and queueing).
                let current = ctx.store.get_order(&order.order_id).await?;
                if current.is_some_and(|o| o.status.awaits_delivery()) {
                    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
                }
                tracing::info!(order_id = %order.order_id, event_id = %notice.event_id, "duplicate notification acknowledged");
                return Ok(());
            }
            PaymentApplied::NoStock => retake.short(ctx, &order).await?,
            PaymentApplied::Raced => {
                races += 1;
                if races >= DECISION_ATTEMPTS {
                    return Err(Error::Contention("order state"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The payment rules on fakes: a notification verified by a provider's adapter at
    //! the clock's time, the typed event, and what it does to an order. No moto.

    use std::sync::Arc;

    use lambda_http::http::HeaderValue;

    use super::*;
    use crate::adapters::stripe::{SIGNATURE_HEADER, StripeProvider, signature_header};
    use crate::domain::money::Money;
    use crate::domain::time::Timestamp;
    use crate::fakes::{FakeClock, FakePaymentProvider, offline_context};
    use crate::ports::{Clock, PaymentProvider};

    const SECRET: &str = "whsec_unit";

    fn stripe() -> StripeProvider {
        StripeProvider::with_fixed_secrets(vec![SECRET.to_owned().into()])
    }

    fn order(status: OrderStatus, amount: i64) -> OrderRecord {
        OrderRecord {
            order_id: "01J00000000000000000000000".into(),
            amount: Money {
                amount,
                currency: "CNY".into(),
            },
            status,
            expires_at: Timestamp(0),
            payment_ref: Some("pi_1".into()),
            ..crate::fakes::order_fixture("sku", 1, Timestamp(0))
        }
    }

    fn checkout_completed(amount: i64) -> Vec<u8> {
        json!({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {
            "id": "cs_1", "client_reference_id": "01J00000000000000000000000",
            "amount_total": amount, "currency": "cny", "payment_intent": "pi_1",
            "payment_status": "paid"}}})
        .to_string()
        .into_bytes()
    }

    fn signed_at(at: Timestamp, body: &[u8]) -> HeaderMap {
        let header = signature_header(SECRET, at.unix_seconds(), body).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&header).unwrap());
        headers
    }

    async fn verify_now(
        provider: &dyn PaymentProvider,
        clock: &FakeClock,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<PaymentEvent> {
        let notification = Notification {
            headers,
            body,
            received_at: clock.now(),
        };
        provider.verify_notification(&notification).await
    }

    async fn paid(
        provider: &dyn PaymentProvider,
        headers: &HeaderMap,
        body: &[u8],
    ) -> PaymentNotice {
        match verify_now(provider, &FakeClock::default(), headers, body).await {
            Ok(PaymentEvent::Paid(notice)) => notice,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_webhook_tolerance_follows_the_clock() {
        let clock = FakeClock::default();
        let body = checkout_completed(990);
        let headers = signed_at(clock.now(), &body);
        clock.advance_seconds(300);
        assert!(verify_now(&stripe(), &clock, &headers, &body).await.is_ok());
        clock.advance_seconds(1);
        assert!(matches!(
            verify_now(&stripe(), &clock, &headers, &body).await,
            Err(Error::InvalidSignature("timestamp outside the tolerance"))
        ));
        // Signed in the future (a skewed sender): the same tolerance the other way.
        clock.set(FakeClock::DEFAULT.plus_seconds(-301));
        assert!(
            verify_now(&stripe(), &clock, &headers, &body)
                .await
                .is_err()
        );
        clock.advance_seconds(1);
        assert!(verify_now(&stripe(), &clock, &headers, &body).await.is_ok());
    }

    #[tokio::test]
    async fn a_verified_payment_pays_a_pending_order_once() {
        let body = checkout_completed(990);
        let notice = paid(&stripe(), &signed_at(FakeClock::DEFAULT, &body), &body).await;
        let change = decide(
            &order(OrderStatus::PendingPayment, 990),
            &notice,
            None,
            None,
        );
        assert_eq!(change.outcome, "paid");
        assert_eq!(
            change.transition,
            Some((
                OrderStatus::PendingPayment,
                OrderStatus::Paid,
                Cause::PaymentReceived
            ))
        );
        assert_eq!((change.provider, change.provider_ref), ("stripe", "pi_1"));
        // Another event about the same payment, then a second payment.
        let again = decide(&order(OrderStatus::Paid, 990), &notice, None, None);
        assert_eq!(
            (again.outcome, again.transition),
            ("repeat_notification", None)
        );
        let other = PaymentNotice {
            provider_ref: "pi_2".into(),
            ..notice
        };
        let second = decide(&order(OrderStatus::Delivered, 990), &other, None, None);
        assert_eq!(second.outcome, "duplicate_payment");
    }

    #[tokio::test]
    async fn wrong_money_and_late_money() {
        let body = checkout_completed(980);
        let short = paid(&stripe(), &signed_at(FakeClock::DEFAULT, &body), &body).await;
        let change = decide(&order(OrderStatus::PendingPayment, 990), &short, None, None);
        assert_eq!(change.outcome, "amount_mismatch");
        assert_eq!(
            change.transition.map(|(_, to, _)| to),
            Some(OrderStatus::PaymentException)
        );
        let body = checkout_completed(990);
        let exact = paid(&stripe(), &signed_at(FakeClock::DEFAULT, &body), &body).await;
        let elsewhere = StockShare::whole(5, 1);
        let late = decide(
            &order(OrderStatus::Expired, 990),
            &exact,
            Some(&elsewhere),
            None,
        );
        assert_eq!(
            (late.outcome, late.reserve_stock),
            ("paid_late", Some(elsewhere.as_slice()))
        );
        let sold = decide(&order(OrderStatus::Expired, 990), &exact, None, None);
        assert_eq!(
            (sold.outcome, sold.reserve_stock),
            ("paid_after_expiry", None)
        );
    }

    #[tokio::test]
    async fn any_provider_feeds_the_same_rules() {
        let provider = FakePaymentProvider::default();
        let money = Money {
            amount: 990,
            currency: "CNY".into(),
        };
        let (headers, body) = provider.pay("evt_9", Some("01J00000000000000000000000"), money);
        let notice = paid(&provider, &headers, &body).await;
        let change = decide(
            &order(OrderStatus::PendingPayment, 990),
            &notice,
            None,
            None,
        );
        assert_eq!((change.provider, change.outcome), ("fake-pay", "paid"));
    }

    #[tokio::test]
    async fn the_webhook_route_verifies_with_the_context_clock() {
        let clock = Arc::new(FakeClock::default());
        let ctx = offline_context()
            .await
            .unwrap()
            .with_clock(clock.clone())
            .with_payment_provider(Arc::new(stripe()))
            .build();
        // Verified and ignored: acknowledged without touching the store.
        let body = json!({"id": "evt_3", "type": "charge.refunded", "data": {"object": {}}})
            .to_string()
            .into_bytes();
        let headers = signed_at(clock.now(), &body);
        let answer = payment_notification(&ctx, "stripe", &headers, &body).await;
        assert_eq!(answer.unwrap(), json!({"received": true}));
        clock.advance_seconds(301);
        assert!(matches!(
            payment_notification(&ctx, "stripe", &headers, &body).await,
            Err(Error::InvalidSignature(_))
        ));
        assert!(matches!(
            payment_notification(&ctx, "paypal", &headers, &body).await,
            Err(Error::Config(_))
        ));
    }
}
