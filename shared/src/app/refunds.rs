//! `POST /admin/orders/{order_id}/refunds`: give money back through the provider of the
//! payment it came from. The refund is recorded, and the amount reserved against what
//! that payment took, before the provider is asked (`Store::reserve_refund`), so the
//! refunds of a payment never add up to more than it, also under concurrent requests;
//! the refund id is the provider's refund number (`out_request_no`, `out_refund_no`,
//! Stripe's idempotency key), so asking again refunds once.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::audit::{Actor, snapshot};
use super::channels::{find_channel, notify_url, provider_for};
use crate::config::Context;
use crate::domain::crypto::{hmac_sha256_hex, sha256_hex};
use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::time::is_id;
use crate::error::{ConflictKind, Error, Result};
use crate::ports::payment::{PaymentHandle, RefundOutcome, RefundRequest as ProviderRefund};
use crate::request::RequestBody;
use crate::store::AuditSubject;
use crate::store::{
    OrderRecord, OrderView, PaymentRecord, RefundRecord, RefundReserved, RefundSettlement,
    RefundStatus,
};

const MAX_REASON_LEN: usize = 200;
/// Payment outcomes whose money paid the order (the default payment to refund).
const PAYING_OUTCOMES: [&str; 4] = ["paid", "paid_late", "amount_mismatch", "paid_after_expiry"];

/// The body of `POST /admin/orders/{order_id}/refunds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// How much to give back, in the payment's currency.
    pub amount: Money,
    /// Why (1 to 200 printable characters); sent to the provider.
    #[schema(example = "buyer could not redeem the code")]
    pub reason: String,
    /// Which payment, when the order has more than one (a `duplicate_payment`): its
    /// `payment_id`. Default: the payment that paid the order.
    pub payment_id: Option<String>,
}

impl RequestBody for RefundRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some("invalid_refund")
    }
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundStarted {
    pub refund_id: String,
    pub order_id: String,
    pub payment_id: String,
    pub amount: Money,
    pub status: RefundStatus,
}

fn started(refund: &RefundRecord) -> RefundStarted {
    RefundStarted {
        refund_id: refund.refund_id.clone(),
        order_id: refund.order_id.clone(),
        payment_id: refund.payment_id.clone(),
        amount: refund.amount.clone(),
        status: refund.status,
    }
}

/// The payment to refund: the one named, or the one that paid the order.
fn payment_to_refund<'a>(
    view: &'a OrderView,
    payment_id: Option<&str>,
) -> Result<&'a PaymentRecord> {
    let mut candidates = view.payments.iter().filter(|p| match payment_id {
        Some(id) => p.payment_id.as_deref() == Some(id),
        None => PAYING_OUTCOMES.contains(&p.outcome.as_str()),
    });
    candidates.next().ok_or(Error::NotFound("payment"))
}

/// What a refund that succeeded does to the order: the whole payment back ends it
/// (`refunded`), part of it (`partially_refunded`) only a delivered order; the money of a
/// second payment (`duplicate_payment`) leaves the order as it is.
fn transition(
    order: &OrderRecord,
    payment: &PaymentRecord,
    refunded_before: i64,
    amount: i64,
) -> Option<(OrderStatus, OrderStatus, Cause)> {
    if !PAYING_OUTCOMES.contains(&payment.outcome.as_str()) {
        return None;
    }
    let cause = if refunded_before + amount >= payment.amount.amount {
        Cause::Refund
    } else {
        Cause::PartialRefund
    };
    order
        .status
        .next(cause)
        .ok()
        .map(|to| (order.status, to, cause))
}

/// The operator's audit record (`order.refund`, the refund as recorded: `requested`) is
/// written with the refund's reservation, so a retry with the same key, which finds the
/// refund, records nothing again.
pub async fn refund(
    ctx: &Context,
    actor: &Actor,
    order_id: &str,
    idempotency_key: &str,
    request: RefundRequest,
) -> Result<RefundStarted> {
    let reason = request.reason.trim().to_owned();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON_LEN
        || reason.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            "invalid_refund",
            "reason",
            format!("reason must be 1 to {MAX_REASON_LEN} printable characters"),
        ));
    }
    if request.amount.amount <= 0 {
        return Err(Error::invalid_field(
            "invalid_refund",
            "amount.amount",
            "amount.amount must be a positive number of minor units",
        ));
    }
    let view = super::operator::find_order_view(ctx, order_id).await?;
    let key = hmac_sha256_hex(
        ctx.secrets.fingerprint_key()?,
        format!("idempotency:refunds:{order_id}:{idempotency_key}").as_bytes(),
    )?;
    let request_hash = sha256_hex(
        json!([
            request.amount.amount,
            request.amount.currency,
            reason,
            request.payment_id
        ])
        .to_string()
        .as_bytes(),
    );
    if let Some(answer) = replay(ctx, order_id, &key, &request_hash).await? {
        return Ok(answer);
    }
    let payment = payment_to_refund(&view, request.payment_id.as_deref())?;
    if request.amount.currency != payment.amount.currency {
        return Err(Error::invalid_field(
            "invalid_refund",
            "amount.currency",
            format!("the payment was in {}", payment.amount.currency),
        ));
    }
    // Money that came through a channel is given back through it; the deployment's
    // default Stripe endpoint has no API key to refund with.
    let attempt = payment
        .payment_id
        .as_deref()
        .and_then(|id| view.attempts.iter().find(|a| a.payment_id == id))
        .ok_or(Error::Conflict(ConflictKind::RefundNotPossible))?;
    let now = ctx.clock.now();
    let refund = RefundRecord {
        refund_id: format!(
            "{}R{}",
            order_id,
            &super::pay::new_payment_id(order_id)[26..]
        ),
        order_id: order_id.to_owned(),
        payment_id: attempt.payment_id.clone(),
        amount: request.amount.clone(),
        status: RefundStatus::Requested,
        reason: reason.clone(),
        failure: None,
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    let entry = actor.entry(
        ctx,
        "order.refund",
        (AuditSubject::Order, order_id),
        Some(&reason),
        None,
        snapshot(&started(&refund)),
    );
    match ctx
        .store
        .reserve_refund(
            &refund,
            &payment.amount,
            &attempt.channel_id,
            &key,
            &request_hash,
            &entry,
            now,
        )
        .await?
    {
        RefundReserved::Reserved => {}
        RefundReserved::KeyTaken => {
            return replay(ctx, order_id, &key, &request_hash)
                .await?
                .ok_or(Error::Contention("refund idempotency key"));
        }
        RefundReserved::Exceeds => return Err(Error::Conflict(ConflictKind::RefundExceedsPayment)),
    }
    let status = ask(ctx, &view, &refund, attempt.refunded).await?;
    Ok(RefundStarted {
        status,
        ..started(&refund)
    })
}

/// Asks the provider for a recorded refund (again, with the same refund id, when an
/// earlier answer was lost: it refunds at most once) and records where it ended.
/// `refunded_before`: what the payment's earlier refunds took. `Requested` when the
/// provider's answer is unknown again.
async fn ask(
    ctx: &Context,
    view: &OrderView,
    refund: &RefundRecord,
    refunded_before: i64,
) -> Result<RefundStatus> {
    let payment = view
        .payments
        .iter()
        .find(|p| p.payment_id.as_deref() == Some(refund.payment_id.as_str()))
        .ok_or_else(|| Error::Corrupt("a refund of a payment the order does not have".into()))?;
    let channel_id = view
        .attempts
        .iter()
        .find(|a| a.payment_id == refund.payment_id)
        .map(|a| a.channel_id.clone())
        .ok_or_else(|| Error::Corrupt("a refund of an attempt the order does not have".into()))?;
    let channel = find_channel(ctx, &channel_id).await?;
    let provider = provider_for(ctx, &channel).await?;
    let asked = provider
        .refund(&ProviderRefund {
            refund_id: refund.refund_id.clone(),
            payment: PaymentHandle {
                payment_id: refund.payment_id.clone(),
                provider_ref: Some(payment.provider_ref.clone()),
            },
            amount: refund.amount.clone(),
            paid: payment.amount.clone(),
            reason: refund.reason.clone(),
            notify_url: notify_url(ctx, channel.settings.provider, &channel.channel_id)?,
        })
        .await;
    let (status, failure) = match &asked {
        Ok(RefundOutcome::Refunded) => (RefundStatus::Succeeded, None),
        Ok(RefundOutcome::Pending) => (RefundStatus::Pending, None),
        Ok(RefundOutcome::Refused { reason }) => (RefundStatus::Refused, Some(reason.clone())),
        // Unknown whether it happened: stays `requested`; the same request (same key)
        // asks again with the same refund id.
        Err(err) => {
            crate::metrics::provider_error(&payment.provider);
            tracing::warn!(order_id = %refund.order_id, refund_id = %refund.refund_id, error = %err, "refund outcome unknown; a retry asks again");
            return Ok(RefundStatus::Requested);
        }
    };
    let order_move = (status == RefundStatus::Succeeded)
        .then(|| transition(&view.order, payment, refunded_before, refund.amount.amount))
        .flatten();
    settle(ctx, view, refund, status, failure.as_deref(), order_move).await?;
    tracing::info!(order_id = %refund.order_id, refund_id = %refund.refund_id, status = status.as_str(), "refund asked of the provider");
    Ok(status)
}

/// A retry with the same key: that refund as it stands now (asked again if its outcome
/// was unknown).
async fn replay(
    ctx: &Context,
    order_id: &str,
    key: &str,
    request_hash: &str,
) -> Result<Option<RefundStarted>> {
    let Some(record) = ctx.store.get_idempotency("refunds", key).await? else {
        return Ok(None);
    };
    if record.request_hash != request_hash {
        return Err(Error::IdempotencyKeyReused);
    }
    let refund_id = record
        .payment_id
        .ok_or_else(|| Error::Corrupt("refund idempotency record without its refund".into()))?;
    let refund = ctx
        .store
        .get_refund(order_id, &refund_id)
        .await?
        .ok_or_else(|| Error::Corrupt("refund idempotency record without its refund".into()))?;
    if refund.status != RefundStatus::Requested {
        return Ok(Some(started(&refund)));
    }
    // The provider's answer was lost last time: ask again (same refund id).
    let view = ctx
        .store
        .get_order_view(order_id)
        .await?
        .ok_or(Error::NotFound("order"))?;
    let refunded_before = view
        .attempts
        .iter()
        .find(|a| a.payment_id == refund.payment_id)
        .map_or(0, |a| a.refunded - refund.amount.amount);
    let status = ask(ctx, &view, &refund, refunded_before).await?;
    Ok(Some(RefundStarted {
        status,
        ..started(&refund)
    }))
}

/// A provider's word that a pending refund settled (WeChat Pay's `REFUND.SUCCESS`): the
/// refund id names its order.
pub async fn refund_settled(ctx: &Context, refund_id: &str, succeeded: bool) -> Result<()> {
    let Some(order_id) = refund_id.get(..26).filter(|id| is_id(id)) else {
        return Ok(());
    };
    let (Some(view), Some(refund)) = (
        ctx.store.get_order_view(order_id).await?,
        ctx.store.get_refund(order_id, refund_id).await?,
    ) else {
        return Ok(());
    };
    let payment = view
        .payments
        .iter()
        .find(|p| p.payment_id.as_deref() == Some(refund.payment_id.as_str()));
    let attempt = view
        .attempts
        .iter()
        .find(|a| a.payment_id == refund.payment_id);
    let status = if succeeded {
        RefundStatus::Succeeded
    } else {
        RefundStatus::Refused
    };
    let order_move = match (succeeded, payment, attempt) {
        // The attempt's total already counts this refund.
        (true, Some(payment), Some(attempt)) => transition(
            &view.order,
            payment,
            attempt.refunded - refund.amount.amount,
            refund.amount.amount,
        ),
        _ => None,
    };
    let failure = (!succeeded).then_some("the provider reported the refund failed");
    settle(ctx, &view, &refund, status, failure, order_move).await?;
    Ok(())
}

/// Records where a refund ended, and the order's move it makes, at the clock's now.
/// A refund that moves a referred order also reduces its commissions, by what the
/// paying payment's refunds that succeeded give back in all (a duplicate payment's
/// refunds give back money that earned nothing).
async fn settle(
    ctx: &Context,
    view: &OrderView,
    refund: &RefundRecord,
    status: RefundStatus,
    failure: Option<&str>,
    transition: Option<(OrderStatus, OrderStatus, Cause)>,
) -> Result<bool> {
    // Taken back before the order shows refunded: a crash between the two leaves the
    // refund to settle again, which takes back again (once per step).
    if matches!(transition, Some((_, _, Cause::Refund))) {
        super::fulfil::take_back(
            ctx,
            &view.order,
            &view.deliveries,
            crate::domain::license::LicenseStatus::Refunded,
        )
        .await?;
    }
    let refunded = (transition.is_some() && view.order.referral.is_some()).then(|| {
        view.refunds
            .iter()
            .filter(|r| {
                r.status == RefundStatus::Succeeded
                    && r.refund_id != refund.refund_id
                    && r.payment_id == refund.payment_id
            })
            .map(|r| r.amount.amount)
            .sum::<i64>()
            + refund.amount.amount
    });
    ctx.store
        .settle_refund(
            &view.order,
            refund,
            &RefundSettlement {
                status,
                failure,
                transition,
                refunded,
            },
            ctx.clock.now(),
        )
        .await
}
