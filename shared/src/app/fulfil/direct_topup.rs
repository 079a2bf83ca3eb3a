//! Direct top-ups (直充): the order's account is topped up by an upstream supplier. The
//! hard part is the unknown outcome: a supplier that did not answer may have topped the
//! account up. So every request is recorded (`sending`) before it leaves, and before
//! anything new is sent every open request of the order is asked about
//! (`GET /topups/{request_id}`); a request is sent again, with the same id, only when its
//! supplier says it never saw it; and an order never moves to another supplier while a
//! request's outcome is unknown or pending. Suppliers are tried in the product's order;
//! a definite failure moves on to the next. docs/suppliers.md has the whole story.

use super::{Fulfiller, Fulfilment};
use crate::app::delivery::Budget;
use crate::app::orders::Delivered;
use crate::app::suppliers::{adapter_for, admit, known_supplier, record_call};
use crate::config::Context;
use crate::domain::order::{OrderStatus, TopUpOrder};
use crate::domain::product::DeliveryType;
use crate::domain::supplier::{DEFAULT_UNKNOWN_OUTCOME_DEADLINE_S, validate_supplier_id};
use crate::error::{Error, Result};
use crate::ports::payment::Notification;
use crate::ports::supplier::{TopUpOutcome, TopUpRequest};
use crate::store::{
    DeliveryRecord, OpenAttempt, OrderRecord, SupplierLogEntry, SupplierRecord, TopUpAttempt,
    TopUpChange, TopUpStatus, parse_topup_request_id, topup_request_id,
};

/// Besides the supplier's own timeout, what a call and its records need.
const CALL_RESERVE_MS: i64 = 1_500;
/// The order's `exception` when no supplier topped the account up.
pub const NO_SUPPLIER_SUCCEEDED: &str = "no_supplier_succeeded";
/// The order's `exception` when a request stayed unknown or pending past its supplier's
/// `unknown_outcome_deadline_s`: for an operator, never sent elsewhere automatically.
pub const SUPPLIER_OUTCOME_UNKNOWN: &str = "supplier_outcome_unknown";

/// The direct top-up fulfiller.
pub struct DirectTopUps;

/// Where one request stands after Kami has asked or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    Success,
    Failed,
    Open,
}

impl Standing {
    fn of(status: TopUpStatus) -> Standing {
        match status {
            TopUpStatus::Success => Standing::Success,
            TopUpStatus::Failed => Standing::Failed,
            _ => Standing::Open,
        }
    }
}

impl Fulfiller for DirectTopUps {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        let spec = order
            .top_up
            .as_ref()
            .ok_or_else(|| Error::Corrupt("a top-up order without its top-up".into()))?;
        let mut attempts: Vec<TopUpAttempt> = done
            .iter()
            .filter_map(DeliveryRecord::top_up)
            .cloned()
            .collect();
        attempts.sort_by_key(|attempt| attempt.seq);
        if attempts.iter().any(|a| a.status == TopUpStatus::Success) {
            return Ok(Fulfilment::Done);
        }
        // Whatever is open is asked about first: it may have happened.
        let mut open = false;
        let mut overdue = false;
        for attempt in attempts.iter_mut().filter(|a| a.status.is_open()) {
            let supplier = known_supplier(ctx, &attempt.supplier_id).await?;
            match settle_open(ctx, order, spec, supplier.as_ref(), attempt, budget).await? {
                Standing::Success => return Ok(Fulfilment::Done),
                Standing::Failed => {}
                Standing::Open => {
                    open = true;
                    overdue |= past_deadline(ctx, supplier.as_ref(), attempt);
                }
            }
        }
        if overdue {
            return Ok(Fulfilment::Failed {
                reason: SUPPLIER_OUTCOME_UNKNOWN,
            });
        }
        if open {
            return waiting(ctx, order).await;
        }
        // Every request so far failed for certain: the next supplier.
        send_to_next(ctx, order, spec, &attempts, budget).await
    }

    async fn show(
        &self,
        _ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        Ok(done
            .iter()
            .filter_map(DeliveryRecord::top_up)
            .filter(|attempt| attempt.status == TopUpStatus::Success)
            .take(1)
            .map(|attempt| Delivered {
                account: Some(
                    order
                        .top_up
                        .as_ref()
                        .map_or_else(|| attempt.account.clone(), |t| t.account.clone()),
                ),
                supplier_ref: attempt.supplier_ref.clone(),
                ..Delivered::of(DeliveryType::DirectTopup)
            })
            .collect())
    }
}

fn log(attempt: &TopUpAttempt, ctx: &Context, action: &str, status: &str) -> SupplierLogEntry {
    SupplierLogEntry {
        at: ctx.clock.now().to_rfc3339(),
        request_id: attempt.request_id.clone(),
        supplier_id: attempt.supplier_id.clone(),
        action: action.to_owned(),
        status: status.to_owned(),
        supplier_ref: None,
        reason: None,
    }
}

/// Whether an open request has been open longer than its supplier allows.
fn past_deadline(ctx: &Context, supplier: Option<&SupplierRecord>, attempt: &TopUpAttempt) -> bool {
    let deadline_s = supplier.map_or(DEFAULT_UNKNOWN_OUTCOME_DEADLINE_S, |s| {
        s.settings.unknown_outcome_deadline_s
    });
    attempt.sent_at.plus_seconds(i64::from(deadline_s)) <= ctx.clock.now()
}

/// Asks the supplier about an open request (whatever its circuit says) and records what
/// it learns; sends it again, same id, only if the supplier never saw it.
async fn settle_open(
    ctx: &Context,
    order: &OrderRecord,
    spec: &TopUpOrder,
    supplier: Option<&SupplierRecord>,
    attempt: &mut TopUpAttempt,
    budget: &Budget,
) -> Result<Standing> {
    let Some(supplier) = supplier else {
        tracing::error!(supplier_id = %attempt.supplier_id, request_id = %attempt.request_id, "an open top-up request's supplier is gone");
        return Ok(Standing::Open);
    };
    budget.check(
        i64::from(supplier.settings.timeout_ms) + CALL_RESERVE_MS,
        "a supplier query",
    )?;
    let adapter = adapter_for(ctx, supplier).await?;
    let answer = adapter.query(&attempt.request_id).await;
    tracing::info!(request_id = %attempt.request_id, supplier_id = %attempt.supplier_id, answer = ?answer.as_ref().map(TopUpOutcome::status), "supplier asked about a top-up");
    match answer {
        Ok(TopUpOutcome::NotFound) if attempt.status != TopUpStatus::Pending => {
            ctx.store
                .log_topup(&attempt.order_id, &log(attempt, ctx, "poll", "not_found"))
                .await?;
            if !admit(ctx, supplier).await? {
                return Ok(Standing::Open);
            }
            let request = top_up_request(ctx, order, spec, attempt)?;
            let result = adapter.submit(&request).await;
            apply_submit(ctx, attempt, supplier, result, "resend").await
        }
        Ok(outcome) => apply(ctx, attempt, &outcome, "poll").await,
        Err(err) => {
            apply(
                ctx,
                attempt,
                &TopUpOutcome::Unreadable {
                    detail: err.to_string(),
                },
                "poll",
            )
            .await
        }
    }
}

/// The request `attempt` is: the same body however often it is sent.
fn top_up_request(
    ctx: &Context,
    order: &OrderRecord,
    spec: &TopUpOrder,
    attempt: &TopUpAttempt,
) -> Result<TopUpRequest> {
    Ok(TopUpRequest {
        request_id: attempt.request_id.clone(),
        product: spec.supplier_product.clone(),
        account: spec.account.clone(),
        quantity: order.quantity,
        callback_url: callback_url(ctx, &attempt.supplier_id)?,
    })
}

/// Where a supplier calls back.
pub fn callback_url(ctx: &Context, supplier_id: &str) -> Result<String> {
    let base = ctx.config.public_api_url.as_deref().ok_or_else(|| {
        Error::Config("PUBLIC_API_URL is not set: suppliers would have nowhere to call back".into())
    })?;
    Ok(format!("{base}/webhooks/suppliers/{supplier_id}"))
}

/// Records what a submit came to, and counts it on the supplier's circuit.
async fn apply_submit(
    ctx: &Context,
    attempt: &mut TopUpAttempt,
    supplier: &SupplierRecord,
    result: Result<TopUpOutcome>,
    action: &str,
) -> Result<Standing> {
    record_call(ctx, supplier, &result).await?;
    let outcome = result.unwrap_or_else(|err| TopUpOutcome::Unreadable {
        detail: err.to_string(),
    });
    apply(ctx, attempt, &outcome, action).await
}

/// Moves an open request to what `outcome` says (an unreadable answer or none leaves it
/// `unknown`), with its history line. If a callback changed it meanwhile, what it now is.
pub(crate) async fn apply(
    ctx: &Context,
    attempt: &mut TopUpAttempt,
    outcome: &TopUpOutcome,
    action: &str,
) -> Result<Standing> {
    let (to, supplier_ref, reason, status) = match outcome {
        TopUpOutcome::Success { supplier_ref } => (
            TopUpStatus::Success,
            Some(supplier_ref.as_str()),
            None,
            "success",
        ),
        TopUpOutcome::Pending { supplier_ref } => (
            TopUpStatus::Pending,
            supplier_ref.as_deref(),
            None,
            "pending",
        ),
        TopUpOutcome::Failed { reason } => {
            (TopUpStatus::Failed, None, Some(reason.as_str()), "failed")
        }
        TopUpOutcome::NotFound => (TopUpStatus::Unknown, None, None, "not_found"),
        TopUpOutcome::Unreadable { detail } => (
            TopUpStatus::Unknown,
            None,
            Some(detail.as_str()),
            "no_answer",
        ),
    };
    let mut line = log(attempt, ctx, action, status);
    line.supplier_ref = supplier_ref.map(str::to_owned);
    line.reason = reason.map(str::to_owned);
    if to == attempt.status
        || (to == TopUpStatus::Unknown && attempt.status == TopUpStatus::Pending)
    {
        // Nothing new (or nothing learnt about a pending one): the history only.
        ctx.store.log_topup(&attempt.order_id, &line).await?;
        return Ok(Standing::of(attempt.status));
    }
    let change = TopUpChange {
        to,
        at: ctx.clock.now(),
        supplier_ref,
        reason,
    };
    if ctx
        .store
        .change_topup_attempt(attempt, &TopUpStatus::OPEN, &change, &line)
        .await?
    {
        attempt.status = to;
        attempt.supplier_ref = supplier_ref
            .map(str::to_owned)
            .or(attempt.supplier_ref.take());
        return Ok(Standing::of(to));
    }
    // Settled meanwhile (a callback): go by what is stored.
    let stored = ctx
        .store
        .get_topup_attempt(&attempt.order_id, attempt.seq)
        .await?
        .ok_or_else(|| Error::Corrupt("a top-up request vanished".into()))?;
    *attempt = stored;
    Ok(Standing::of(attempt.status))
}

/// `POST /webhooks/suppliers/{supplier_id}`: a supplier's word on a request, verified
/// under that supplier's secret and bound to a request Kami sent that supplier (any
/// other → `topup_request_not_found`, nothing changed). An open request moves to what it
/// says and, once settled, its order goes to the delivery queue (the worker delivers it
/// or moves on to the next supplier). A callback on a settled request is recorded in the
/// history and changes nothing, a duplicate as a contradiction.
pub async fn supplier_callback(
    ctx: &Context,
    supplier_id: &str,
    headers: &lambda_http::http::HeaderMap,
    body: &[u8],
) -> Result<()> {
    validate_supplier_id(supplier_id).map_err(|_| Error::NotFound("supplier"))?;
    let supplier = known_supplier(ctx, supplier_id)
        .await?
        .ok_or(Error::NotFound("supplier"))?;
    let adapter = adapter_for(ctx, &supplier).await?;
    let callback = adapter
        .verify_callback(&Notification {
            headers,
            body,
            received_at: ctx.clock.now(),
        })
        .map_err(|err| match err {
            Error::InvalidSignature(why) => Error::UnverifiedCallback(why),
            other => other,
        })?;
    let (order_id, seq) =
        parse_topup_request_id(&callback.request_id).ok_or(Error::NotFound("top-up request"))?;
    let mut attempt = ctx
        .store
        .get_topup_attempt(order_id, seq)
        .await?
        .filter(|a| a.supplier_id == supplier_id && a.request_id == callback.request_id)
        .ok_or(Error::NotFound("top-up request"))?;
    let said = callback.outcome.status();
    if !attempt.status.is_open() {
        let what = if said == attempt.status.as_str() {
            "duplicate"
        } else {
            "ignored_contradiction"
        };
        let mut line = log(&attempt, ctx, "callback", &format!("{what}_{said}"));
        line.reason = Some(format!(
            "the request is already {}",
            attempt.status.as_str()
        ));
        ctx.store.log_topup(order_id, &line).await?;
        tracing::info!(request_id = %attempt.request_id, supplier_id, said, recorded = attempt.status.as_str(), "supplier callback on a settled request");
        return Ok(());
    }
    let standing = apply(ctx, &mut attempt, &callback.outcome, "callback").await?;
    tracing::info!(request_id = %attempt.request_id, supplier_id, said, "supplier callback recorded");
    if standing != Standing::Open {
        ctx.queue()?.enqueue_delivery(order_id).await?;
    }
    Ok(())
}

/// The order waits on a supplier: it shows `delivering`, and the sweep sends it round
/// every `POLL_SUPPLIER_AFTER_SECONDS` to ask.
async fn waiting(ctx: &Context, order: &OrderRecord) -> Result<Fulfilment> {
    if order.status != OrderStatus::Delivering
        && !ctx.store.start_delivering(order, ctx.clock.now()).await?
    {
        return Ok(Fulfilment::NotPayable);
    }
    Ok(Fulfilment::Pending)
}

/// Sends the order to the next supplier that may take it: in the product's order,
/// skipping those tried in this round, disabled, or whose circuit is open.
async fn send_to_next(
    ctx: &Context,
    order: &OrderRecord,
    spec: &TopUpOrder,
    attempts: &[TopUpAttempt],
    budget: &Budget,
) -> Result<Fulfilment> {
    let mut order = order.clone();
    // A round gives every supplier of the product one request. Once every supplier had
    // its request and all failed, only an operator's redelivery asked for since the
    // last request starts another round (new request ids): a stray or duplicate message
    // for a failed order sends nothing.
    let last_sent = attempts.iter().map(|a| a.sent_at).max();
    let mut round = attempts.iter().map(|a| a.round).max().unwrap_or(0);
    let tried_in = |round: u32| -> Vec<&str> {
        attempts
            .iter()
            .filter(|a| a.round == round)
            .map(|a| a.supplier_id.as_str())
            .collect()
    };
    let mut tried = tried_in(round);
    if spec.suppliers.iter().all(|s| tried.contains(&s.as_str())) {
        let asked_again = order
            .redelivery_requested_at
            .is_some_and(|at| last_sent.is_none_or(|sent| at > sent));
        if asked_again {
            round += 1;
            tried = Vec::new();
        } else if order.status == OrderStatus::DeliveryFailed {
            // Failed for good already: it stays as it is.
            return Ok(Fulfilment::Pending);
        } else {
            return Ok(Fulfilment::Failed {
                reason: NO_SUPPLIER_SUCCEEDED,
            });
        }
    }
    let mut next_seq = attempts
        .iter()
        .map(|a| a.seq + 1)
        .max()
        .unwrap_or(order.slot_base);
    let mut held_back = false;
    for supplier_id in &spec.suppliers {
        if tried.contains(&supplier_id.as_str()) {
            continue;
        }
        let Some(supplier) = known_supplier(ctx, supplier_id).await? else {
            continue;
        };
        if !supplier.settings.enabled {
            continue;
        }
        budget.check(
            i64::from(supplier.settings.timeout_ms) + CALL_RESERVE_MS,
            "a top-up request",
        )?;
        if !admit(ctx, &supplier).await? {
            held_back = true;
            continue;
        }
        if order.status == OrderStatus::DeliveryFailed {
            if !ctx.store.start_delivering(&order, ctx.clock.now()).await? {
                return Ok(Fulfilment::NotPayable);
            }
            order.status = OrderStatus::Delivering;
        }
        let mut attempt = TopUpAttempt {
            order_id: order.order_id.clone(),
            seq: next_seq,
            request_id: topup_request_id(&order.order_id, next_seq),
            supplier_id: supplier_id.clone(),
            round,
            status: TopUpStatus::Sending,
            supplier_ref: None,
            reason: None,
            account: spec.account.clone(),
            sent_at: ctx.clock.now(),
            updated_at: ctx.clock.now().to_rfc3339(),
            cost: spec.supplier_cost.clone(),
        };
        next_seq += 1;
        match ctx
            .store
            .open_topup_attempt(&attempt, &log(&attempt, ctx, "send", "sent"))
            .await?
        {
            OpenAttempt::Opened => {}
            // Another worker is sending this order's request: it goes on from there.
            OpenAttempt::SlotTaken => return Err(Error::Contention("top-up request")),
            OpenAttempt::NotPayable => return Ok(Fulfilment::NotPayable),
        }
        let request = top_up_request(ctx, &order, spec, &attempt)?;
        let adapter = adapter_for(ctx, &supplier).await?;
        let result = adapter.submit(&request).await;
        tracing::info!(order_id = %order.order_id, request_id = %attempt.request_id, supplier_id, answer = ?result.as_ref().map(TopUpOutcome::status), "top-up sent");
        match apply_submit(ctx, &mut attempt, &supplier, result, "answer").await? {
            Standing::Success => return Ok(Fulfilment::Done),
            Standing::Open => return waiting(ctx, &order).await,
            Standing::Failed => tried.push(supplier_id.as_str()),
        }
    }
    if held_back {
        // A supplier is resting (its circuit is open): the sweep asks again in a minute.
        return waiting(ctx, &order).await;
    }
    Ok(Fulfilment::Failed {
        reason: NO_SUPPLIER_SUCCEEDED,
    })
}
