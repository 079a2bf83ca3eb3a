//! What an operator needs for orders that need a person: see everything about an order
//! (never its codes), and send a failed or stuck delivery round again.

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::Actor;
use super::orders::OrderEventView;
use crate::config::Context;
use crate::domain::money::Money;
use crate::domain::order::{Cause, OrderStatus};
use crate::domain::product::DeliveryType;
use crate::domain::time::{is_id, new_id};
use crate::error::{Error, Result};
use crate::store::UnmatchedPayment;
use crate::store::{
    Accepted, AuditSubject, DeliveryRecord, ExceptionResolved, MismatchRef, PaymentEvent,
    SupplierLogEntry, TopUpStatus,
};

/// The buyer as the operator sees them.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuyerView {
    pub email: String,
}

/// A payment notification as recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    pub provider: String,
    pub event_id: String,
    pub amount: Money,
    pub provider_ref: String,
    /// `paid`, `amount_mismatch`, `paid_late`, `paid_after_expiry`, `repeat_notification`, ...
    pub outcome: String,
    pub received_at: String,
    /// The payment attempt it paid (a channel's payment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

/// A unit a license-key, link, membership or count-card order delivered, by id only (the
/// license's, the link's or the entitlement's; never a key or a token).
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedUnit {
    pub slot: u32,
    #[serde(rename = "type")]
    pub kind: DeliveryType,
    pub id: String,
}

/// A key allocated to the order, by id only.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocatedKey {
    pub slot: u32,
    pub key_id: String,
    pub batch_id: String,
    /// The order's money was given back in full: the key left stock when delivered and is
    /// never sold again.
    pub refunded: bool,
}

/// A payment attempt, as an operator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub payment_id: String,
    pub channel: String,
    pub provider: String,
    pub method: String,
    pub amount: Money,
    pub status: crate::store::AttemptStatus,
    /// Why it failed (the provider's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Minor units refunded from it.
    pub refunded: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A refund, as an operator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundView {
    pub refund_id: String,
    pub payment_id: String,
    pub amount: Money,
    pub status: crate::store::RefundStatus,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One step of an order's history as an operator sees it: with who took it by hand,
/// and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorEventView {
    #[serde(flatten)]
    pub event: OrderEventView,
    /// The operator, for a step taken by hand (`resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `GET /admin/orders/{order_id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorOrderView {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    pub status: OrderStatus,
    pub exception: Option<String>,
    /// A bundle whose part failed for good: that part's sku (docs/bundles.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_part: Option<String>,
    pub amount: Money,
    pub buyer: BuyerView,
    pub created_at: String,
    pub expires_at: String,
    pub updated_at: String,
    pub payment_ref: Option<String>,
    pub events: Vec<OperatorEventView>,
    pub payments: Vec<PaymentView>,
    /// Every payment attempt (channel, provider, status, amounts, failures).
    pub attempts: Vec<AttemptView>,
    pub refunds: Vec<RefundView>,
    pub allocated_keys: Vec<AllocatedKey>,
    /// License keys, links and grants it delivered, by id.
    pub generated: Vec<GeneratedUnit>,
    /// The buyer's account a membership or count card went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// A direct top-up: the account it is for and every request sent to a supplier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUpView>,
    /// Every call to a supplier, answer, callback and poll, oldest first.
    pub supplier_history: Vec<SupplierLogEntry>,
}

/// A top-up order's account and requests, as an operator sees them.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopUpView {
    pub account: String,
    pub supplier_product: String,
    pub suppliers: Vec<String>,
    pub requests: Vec<TopUpRequestView>,
}

/// One request sent to a supplier.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopUpRequestView {
    pub request_id: String,
    pub supplier_id: String,
    pub round: u32,
    pub status: TopUpStatus,
    pub supplier_ref: Option<String>,
    pub reason: Option<String>,
    pub sent_at: String,
    pub updated_at: String,
}

/// `GET /admin/orders/{id}`: status, exception, events, payments and which keys were
/// allocated (ids only: codes are shown to the buyer alone).
pub async fn order_for_operator(ctx: &Context, order_id: &str) -> Result<OperatorOrderView> {
    let view = find_order_view(ctx, order_id).await?;
    let order = view.order;
    // A bundle's top-up is one of its parts.
    let top_up = order
        .top_up
        .clone()
        .or_else(|| order.parts.iter().find_map(|part| part.top_up.clone()));
    let refunded = order.status == OrderStatus::Refunded;
    Ok(OperatorOrderView {
        expires_at: order.expires_at.to_rfc3339(),
        order_id: order.order_id,
        sku: order.sku,
        quantity: order.quantity,
        status: order.status,
        exception: order.exception,
        failed_part: order.failed_part,
        amount: order.amount,
        buyer: BuyerView {
            email: order.buyer_email,
        },
        created_at: order.created_at,
        updated_at: order.updated_at,
        payment_ref: order.payment_ref,
        events: OrderEventView::of(&view.events)
            .into_iter()
            .zip(&view.events)
            .map(|(event, stored)| OperatorEventView {
                event,
                by: stored.by.clone(),
                reason: stored.reason.clone(),
            })
            .collect(),
        payments: view
            .payments
            .into_iter()
            .map(|p| PaymentView {
                provider: p.provider,
                event_id: p.event_id,
                amount: p.amount,
                provider_ref: p.provider_ref,
                outcome: p.outcome,
                received_at: p.received_at,
                payment_id: p.payment_id,
            })
            .collect(),
        attempts: view
            .attempts
            .into_iter()
            .map(|a| AttemptView {
                payment_id: a.payment_id,
                channel: a.channel_id,
                provider: a.provider.as_str().to_owned(),
                method: a.method.as_str().to_owned(),
                amount: a.amount,
                status: a.status,
                failure: a.failure,
                refunded: a.refunded,
                created_at: a.created_at,
                updated_at: a.updated_at,
            })
            .collect(),
        refunds: view
            .refunds
            .into_iter()
            .map(|r| RefundView {
                refund_id: r.refund_id,
                payment_id: r.payment_id,
                amount: r.amount,
                status: r.status,
                reason: r.reason,
                failure: r.failure,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
            .collect(),
        allocated_keys: view
            .deliveries
            .iter()
            .filter_map(DeliveryRecord::card_key)
            .map(|d| AllocatedKey {
                slot: d.slot,
                key_id: d.key_id.clone(),
                batch_id: d.batch_id.clone(),
                refunded,
            })
            .collect(),
        generated: view
            .deliveries
            .iter()
            .filter_map(|record| match record {
                DeliveryRecord::License(slot) => Some((
                    slot.slot,
                    DeliveryType::LicenseKey,
                    slot.key.seal_id.clone(),
                )),
                DeliveryRecord::Link(slot) => {
                    Some((slot.slot, DeliveryType::Link, slot.token.seal_id.clone()))
                }
                DeliveryRecord::Grant(slot) => {
                    Some((slot.slot, slot.kind, slot.entitlement_id.clone()))
                }
                DeliveryRecord::CardKey(_) | DeliveryRecord::TopUp(_) => None,
            })
            .map(|(slot, kind, id)| GeneratedUnit { slot, kind, id })
            .collect(),
        account_id: order.account_id.clone(),
        top_up: top_up.map(|top_up| TopUpView {
            account: top_up.account,
            supplier_product: top_up.supplier_product,
            suppliers: top_up.suppliers,
            requests: view
                .deliveries
                .iter()
                .filter_map(DeliveryRecord::top_up)
                .map(|a| TopUpRequestView {
                    request_id: a.request_id.clone(),
                    supplier_id: a.supplier_id.clone(),
                    round: a.round,
                    status: a.status,
                    supplier_ref: a.supplier_ref.clone(),
                    reason: a.reason.clone(),
                    sent_at: a.sent_at.to_rfc3339(),
                    updated_at: a.updated_at.clone(),
                })
                .collect(),
        }),
        supplier_history: view.supplier_log,
    })
}

/// Most unmatched payments one answer lists.
pub const UNMATCHED_PAGE: i32 = 100;

/// The `GET /admin/payments/unmatched` answer, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnmatchedPayments {
    pub payments: Vec<UnmatchedPayment>,
}

/// `GET /admin/payments/unmatched`: money that reached Kami for no order it can apply
/// it to, newest first (at most `UNMATCHED_PAGE`).
pub async fn unmatched_payments(ctx: &Context) -> Result<UnmatchedPayments> {
    let payments = ctx.store.unmatched_payments(UNMATCHED_PAGE).await?;
    Ok(UnmatchedPayments { payments })
}

/// The `POST /admin/orders/{order_id}/redeliver` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    pub order_id: String,
    pub status: OrderStatus,
    pub queued: bool,
}

/// The order an operator names with everything in its partition; an id that cannot be
/// one is not found.
pub(crate) async fn find_order_view(
    ctx: &Context,
    order_id: &str,
) -> Result<crate::store::OrderView> {
    if !is_id(order_id) {
        return Err(Error::NotFound("order"));
    }
    ctx.store
        .get_order_view(order_id)
        .await?
        .ok_or(Error::NotFound("order"))
}

/// The order an operator names; an id that cannot be one is not found.
async fn find_order(ctx: &Context, order_id: &str) -> Result<crate::store::OrderRecord> {
    if !is_id(order_id) {
        return Err(Error::NotFound("order"));
    }
    ctx.store
        .get_order(order_id)
        .await?
        .ok_or(Error::NotFound("order"))
}

/// `POST /admin/orders/{id}/redeliver`: queues delivery again for a paid order that is
/// waiting (`paid`) or gave up (`delivery_failed`). Safe to repeat: the worker delivers
/// each order once.
pub async fn redeliver(ctx: &Context, actor: &Actor, order_id: &str) -> Result<Redelivery> {
    let order = find_order(ctx, order_id).await?;
    if !order.status.awaits_delivery() {
        return Err(Error::IllegalTransition {
            from: order.status.as_str(),
            cause: "redeliver",
        });
    }
    let status = Some(status_snapshot(order.status));
    let entry = actor.entry(
        ctx,
        "order.redeliver",
        (AuditSubject::Order, &order.order_id),
        None,
        status.clone(),
        status,
    );
    // The request is recorded first, with its audit record: a failed top-up starts a new
    // round over its suppliers only when asked (a stray message does not). The message
    // cannot join a transaction: a failed send answers an error, the request and its
    // record stand, and asking again records a second request.
    if !ctx
        .store
        .request_redelivery(&order.order_id, order.status, &entry, ctx.clock.now())
        .await?
    {
        // It moved since it was read: read again.
        return Err(Error::Contention("order"));
    }
    ctx.queue()?.enqueue_delivery(&order.order_id).await?;
    tracing::info!(order_id, status = %order.status, actor = actor.name, "delivery re-queued by an operator");
    Ok(Redelivery {
        order_id: order.order_id,
        status: order.status,
        queued: true,
    })
}

const MAX_NOTE_LEN: usize = 200;

/// The body of `POST /admin/orders/{order_id}/confirm-paid`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmPaidRequest {
    /// Why the operator confirms it (1 to 200 printable characters).
    #[schema(example = "bank transfer seen on the merchant account")]
    pub reason: String,
    /// The payment's reference where the money arrived (1 to 200 printable characters).
    #[schema(example = "2026120122001400000000000001")]
    pub reference: String,
}

impl crate::request::RequestBody for ConfirmPaidRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some("invalid_confirmation")
    }
}

/// The answer: the order as the confirmation left it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmedPayment {
    pub order_id: String,
    pub status: OrderStatus,
}

pub(crate) fn checked_note(text: &str, code: &'static str, field: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_NOTE_LEN || text.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            code,
            field,
            format!("{field} must be 1 to {MAX_NOTE_LEN} printable characters"),
        ));
    }
    Ok(text.to_owned())
}

/// `POST /admin/orders/{order_id}/confirm-paid`: an operator saw the order's money arrive
/// outside the providers' notifications. The same idempotent path as a notification
/// (provider `manual`, one confirmation per order: repeating it changes nothing), so an
/// unpaid order is paid and delivered, an expired one takes its stock again if it is
/// there. An order already paid is refused (`illegal_transition`): nothing to confirm.
pub async fn confirm_paid(
    ctx: &Context,
    actor: &Actor,
    order_id: &str,
    request: ConfirmPaidRequest,
) -> Result<ConfirmedPayment> {
    let reason = checked_note(&request.reason, "invalid_confirmation", "reason")?;
    let reference = checked_note(&request.reference, "invalid_confirmation", "reference")?;
    let order = find_order(ctx, order_id).await?;
    let event_id = format!("manual:{order_id}");
    let confirmed_before = order.payment_ref.as_deref() == Some(reference.as_str());
    if !confirmed_before
        && !matches!(
            order.status,
            OrderStatus::PendingPayment | OrderStatus::Expired | OrderStatus::Cancelled
        )
    {
        return Err(Error::IllegalTransition {
            from: order.status.as_str(),
            cause: "confirm_paid",
        });
    }
    let notice = crate::ports::payment::PaymentNotice {
        provider: "manual",
        event_id,
        payment_id: None,
        order_id: Some(order.order_id.clone()),
        amount: order.amount.clone(),
        provider_ref: reference,
    };
    let entry = |from: OrderStatus, to: OrderStatus| {
        actor.entry(
            ctx,
            "order.confirm_paid",
            (AuditSubject::Order, order_id),
            Some(&reason),
            Some(status_snapshot(from)),
            Some(status_snapshot(to)),
        )
    };
    super::payments::record_payment(ctx, &notice, None, Some(&entry)).await?;
    tracing::warn!(
        order_id,
        reason,
        actor = actor.name,
        "payment confirmed by an operator"
    );
    let status = ctx
        .store
        .get_order(order_id)
        .await?
        .map_or(order.status, |o| o.status);
    Ok(ConfirmedPayment {
        order_id: order.order_id,
        status,
    })
}

/// What the audit trail keeps of an order: its status (its money and keys are in its
/// own history).
fn status_snapshot(status: OrderStatus) -> String {
    format!("{{\"status\":\"{}\"}}", status.as_str())
}

/// The body of an operator's action that takes a reason (resolve, accept-payment).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why (1 to 200 printable characters).
    #[schema(example = "buyer refunded by bank transfer, ticket 4411")]
    pub reason: String,
}

impl crate::request::RequestBody for ReasonRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some("invalid_reason")
    }
}

/// The answer: the order as the resolution left it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resolution {
    pub order_id: String,
    /// `resolved`.
    pub status: OrderStatus,
}

/// `POST /admin/orders/{order_id}/resolve`: an operator settles an order that needs a
/// person (`delivery_failed`, `payment_exception`, `paid_after_expiry`) with a reason:
/// it leaves the exception queue, gives back the stock it held (keys already handed out
/// count as sold) and its history names who and why, in one transaction with the audit
/// record. Idempotent: a resolved order answers the same, however many ask at once.
pub async fn resolve(
    ctx: &Context,
    actor: &Actor,
    order_id: &str,
    request: ReasonRequest,
) -> Result<Resolution> {
    let reason = checked_note(&request.reason, "invalid_reason", "reason")?;
    let view = find_order_view(ctx, order_id).await?;
    let delivered = stock_keys_by_sku(&view);
    let order = view.order;
    if order.status != OrderStatus::Resolved {
        order.status.next(Cause::Resolve)?;
        let note = actor.note(&reason);
        let entry = actor.entry(
            ctx,
            "order.resolve",
            (AuditSubject::Order, &order.order_id),
            Some(&reason),
            Some(status_snapshot(order.status)),
            Some(status_snapshot(OrderStatus::Resolved)),
        );
        if !ctx
            .store
            .resolve_order(
                &order,
                &note,
                |sku| delivered.get(sku).copied().unwrap_or(0),
                &entry,
                ctx.clock.now(),
            )
            .await?
        {
            // Another action moved it first: resolved by a twin request is the same
            // answer; anything else (delivered meanwhile) is not this action's to undo.
            let now = find_order(ctx, order_id).await?;
            if now.status != OrderStatus::Resolved {
                return Err(Error::IllegalTransition {
                    from: now.status.as_str(),
                    cause: Cause::Resolve.as_str(),
                });
            }
        } else {
            tracing::warn!(
                order_id,
                actor = actor.name,
                reason,
                "order resolved by an operator"
            );
        }
    }
    Ok(Resolution {
        order_id: order.order_id,
        status: OrderStatus::Resolved,
    })
}

/// `POST /admin/orders/{order_id}/accept-payment`: an operator takes the money of a
/// `payment_exception` (short, or another currency) or `paid_after_expiry` order as it
/// came, and sends the order to delivery: it becomes `paid` (its history names who and
/// why, with the audit record in the same transaction) and is queued. An order whose
/// stock went back at expiry takes it again: first the counters it held, then any that
/// hold its units (`409 out_of_stock` when none does: import keys, or resolve or refund
/// it). Idempotent: an order the action already moved answers the same.
pub async fn accept_payment(
    ctx: &Context,
    actor: &Actor,
    order_id: &str,
    request: ReasonRequest,
) -> Result<Redelivery> {
    let reason = checked_note(&request.reason, "invalid_reason", "reason")?;
    let mut order = find_order(ctx, order_id).await?;
    let mut retake = super::stock::Retake::default();
    for _ in 0..ACCEPT_ATTEMPTS {
        if order.status.next(Cause::AcceptPayment).is_err() {
            break;
        }
        // A payment exception's stock is still reserved; after expiry it went back.
        let reserve = match order.status {
            OrderStatus::PaymentException => None,
            _ => Some(
                retake
                    .next(&order)
                    .ok_or(Error::Conflict(crate::error::ConflictKind::OutOfStock))?,
            ),
        };
        let entry = actor.entry(
            ctx,
            "order.accept_payment",
            (AuditSubject::Order, &order.order_id),
            Some(&reason),
            Some(status_snapshot(order.status)),
            Some(status_snapshot(OrderStatus::Paid)),
        );
        let note = actor.note(&reason);
        match ctx
            .store
            .accept_payment(&order, &note, reserve, &entry, ctx.clock.now())
            .await?
        {
            Accepted::Moved => {
                tracing::warn!(
                    order_id,
                    actor = actor.name,
                    reason,
                    "payment accepted by an operator"
                );
                ctx.queue()?.enqueue_delivery(&order.order_id).await?;
                return Ok(Redelivery {
                    order_id: order.order_id,
                    status: OrderStatus::Paid,
                    queued: true,
                });
            }
            Accepted::NoStock => retake.short(ctx, &order).await?,
            Accepted::Raced => order = find_order(ctx, order_id).await?,
        }
    }
    // Moved by a twin request (or delivered since): the same answer; anything else was
    // never this action's to take.
    let accepted_before = took(
        &find_order_view(ctx, order_id).await?.events,
        Cause::AcceptPayment,
    );
    if accepted_before {
        return Ok(Redelivery {
            order_id: order.order_id,
            status: order.status,
            queued: false,
        });
    }
    Err(Error::IllegalTransition {
        from: order.status.as_str(),
        cause: Cause::AcceptPayment.as_str(),
    })
}

/// The body of `POST /admin/orders/{order_id}/substitute`: `keys` or `product`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubstituteRequest {
    /// Why (1 to 200 printable characters).
    #[schema(example = "stock ran out; keys bought from the publisher, ticket 4412")]
    pub reason: String,
    /// Card keys typed by the operator, one per slot the order still lacks, checked like
    /// an import's; never shown again but to the buyer.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Or another card-key product whose stock fills the slots (its sku).
    #[serde(default)]
    pub product: Option<String>,
}

impl crate::request::RequestBody for SubstituteRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some("invalid_substitute")
    }
}

fn invalid_substitute(path: &str, message: impl Into<String>) -> Error {
    Error::invalid_field("invalid_substitute", path, message)
}

/// `POST /admin/orders/{order_id}/substitute`: an operator delivers a card-key order that
/// needs a person (`delivery_failed`, `payment_exception`, `paid_after_expiry`) with
/// something else, one key per slot it still lacks: card keys they typed (checked and
/// fingerprinted like an import's: a key already anywhere in the inventory is refused,
/// `400 duplicate_key` naming its index; sealed under a KMS data key of their own batch),
/// or keys of another card-key product's stock (each taken with one of that product's
/// units sold, as a delivery would). The order is then delivered in one transaction with
/// its history event and audit record, and the stock it held goes back. Idempotent: a
/// twin request that delivered first answers the same.
pub async fn substitute(
    ctx: &Context,
    actor: &Actor,
    order_id: &str,
    request: SubstituteRequest,
) -> Result<Resolution> {
    use crate::store::Substituted;

    let reason = checked_note(&request.reason, "invalid_substitute", "reason")?;
    let view = find_order_view(ctx, order_id).await?;
    let own_before = own_stock_keys(&view);
    let order = view.order;
    if order.status == OrderStatus::Delivered && took(&view.events, Cause::Substitute) {
        return Ok(Resolution {
            order_id: order.order_id,
            status: order.status,
        });
    }
    order.status.next(Cause::Substitute)?;
    if order.delivery_type != DeliveryType::CardKey {
        return Err(Error::invalid(
            "unsupported_delivery_type",
            "only a card-key order takes substitute keys",
        ));
    }
    let filled: Vec<u32> = view
        .deliveries
        .iter()
        .filter_map(DeliveryRecord::card_key)
        .map(|slot| slot.slot)
        .collect();
    let empty: Vec<u32> = (0..order.quantity)
        .filter(|s| !filled.contains(s))
        .collect();
    let typed = match (request.keys, request.product) {
        (Some(keys), None) => Some(typed_keys(ctx, &order, &empty, keys).await?),
        (None, Some(sku)) => {
            fill_from_product(ctx, &order, &empty, &sku).await?;
            None
        }
        _ => return Err(invalid_substitute("keys", "give either keys or product")),
    };
    // Keys the order holds from its own product's stock count as sold from it (read
    // again after another product's keys filled slots: those were sold there).
    let from_stock = match typed {
        Some(_) => own_before,
        None => own_stock_keys(&find_order_view(ctx, order_id).await?),
    };
    let (batch, keys_by_slot) = typed.unwrap_or_default();
    let entry = actor.entry(
        ctx,
        "order.substitute",
        (AuditSubject::Order, &order.order_id),
        Some(&reason),
        Some(status_snapshot(order.status)),
        Some(status_snapshot(OrderStatus::Delivered)),
    );
    let note = actor.note(&reason);
    let outcome = ctx
        .store
        .deliver_substitute(
            &order,
            batch.as_ref(),
            &keys_by_slot,
            from_stock,
            &note,
            &entry,
            ctx.clock.now(),
        )
        .await?;
    if outcome == Substituted::Delivered {
        tracing::warn!(
            order_id,
            actor = actor.name,
            slots = empty.len(),
            "order delivered with a substitute"
        );
        return Ok(Resolution {
            order_id: order.order_id,
            status: OrderStatus::Delivered,
        });
    }
    // A twin request may have delivered first: the same answer.
    let now = find_order_view(ctx, order_id).await?;
    if now.order.status == OrderStatus::Delivered && took(&now.events, Cause::Substitute) {
        return Ok(Resolution {
            order_id: now.order.order_id,
            status: now.order.status,
        });
    }
    match outcome {
        Substituted::KeyInInventory(index) => Err(Error::invalid_field(
            "duplicate_key",
            &format!("keys[{index}]"),
            "this key is already in the inventory",
        )),
        _ => Err(Error::IllegalTransition {
            from: now.order.status.as_str(),
            cause: Cause::Substitute.as_str(),
        }),
    }
}

/// The operator's typed keys for the `empty` slots: checked, fingerprinted and sealed
/// under a data key of a batch of their own.
async fn typed_keys(
    ctx: &Context,
    order: &crate::store::OrderRecord,
    empty: &[u32],
    keys: Vec<String>,
) -> Result<(
    Option<crate::store::BatchRecord>,
    Vec<(u32, crate::store::SealedKey)>,
)> {
    use super::import::seal_key;
    use crate::domain::card_key::{ImportFormat, parse_import};
    use crate::domain::crypto::fingerprint;
    use crate::ports::vault::{EncryptionContext, NewDataKey};
    use crate::store::BatchRecord;

    if keys.len() != empty.len() {
        return Err(invalid_substitute(
            "keys",
            format!(
                "the order lacks {} key(s): give exactly that many",
                empty.len()
            ),
        ));
    }
    let body = serde_json::json!({ "keys": keys }).to_string();
    let candidates = parse_import(ImportFormat::Json, body.as_bytes())?;
    if let Some(invalid) = candidates.invalid.first() {
        return Err(invalid_substitute(
            &format!("keys[{}]", invalid.index),
            "not a card key (empty, too long, or with characters a buyer cannot see)",
        ));
    }
    let product = super::catalog::find_product(ctx, &order.sku, false).await?;
    let fingerprint_key = ctx.secrets.fingerprint_key()?;
    let batch_id = new_id();
    let NewDataKey { plaintext, wrapped } = ctx
        .vault()?
        .new_data_key(&EncryptionContext::card_key_batch(&order.sku, &batch_id))
        .await?;
    let mut keys_by_slot = Vec::with_capacity(empty.len());
    let mut seen = Vec::new();
    for ((index, code), slot) in candidates.valid.iter().zip(empty) {
        let fp = fingerprint(fingerprint_key, code, product.card_keys)?;
        if seen.contains(&fp) {
            return Err(invalid_substitute(
                &format!("keys[{index}]"),
                "the same key twice",
            ));
        }
        seen.push(fp.clone());
        keys_by_slot.push((*slot, seal_key(&plaintext, &order.sku, fp, code)?));
    }
    let batch = BatchRecord {
        batch_id,
        sku: order.sku.clone(),
        wrapped_key: wrapped,
    };
    Ok((Some(batch), keys_by_slot))
}

/// Fills the `empty` slots with keys of product `sku`, one transaction per key (a key
/// out of its stock, a unit of it sold). A request cut short leaves the slots it filled;
/// the next one fills the rest.
async fn fill_from_product(
    ctx: &Context,
    order: &crate::store::OrderRecord,
    empty: &[u32],
    sku: &str,
) -> Result<()> {
    use crate::store::{STOCK_SHARDS, Store, SubstituteKey};

    let other = super::catalog::find_product(ctx, sku, false)
        .await
        .ok()
        .filter(|p| p.delivery == DeliveryType::CardKey && p.sku != order.sku)
        .ok_or_else(|| invalid_substitute("product", "not another card-key product"))?;
    let mut counters: Vec<(u32, i64)> = ctx
        .store
        .stock_shards(&other.sku, true)
        .await?
        .into_iter()
        .map(|(shard, stock)| (shard, stock.available))
        .filter(|(_, available)| *available > 0)
        .collect();
    counters.sort_by_key(|counter| std::cmp::Reverse(counter.1));
    let home = Store::home_shard(&order.order_id);
    'slots: for &slot in empty {
        for step in 0..STOCK_SHARDS {
            let keys = ctx
                .store
                .available_keys(&other.sku, (home + step) % STOCK_SHARDS, 10)
                .await?;
            for key in &keys {
                while let Some(&(counter, _)) = counters.first() {
                    match ctx
                        .store
                        .take_substitute_key(order, slot, &other.sku, key, counter, ctx.clock.now())
                        .await?
                    {
                        SubstituteKey::Taken | SubstituteKey::SlotFilled => continue 'slots,
                        // Settled by the order's own state below.
                        SubstituteKey::OrderMoved => return Ok(()),
                        SubstituteKey::CounterEmpty => {
                            counters.remove(0);
                        }
                        SubstituteKey::KeyGone => break,
                    }
                }
            }
        }
        return Err(Error::Conflict(crate::error::ConflictKind::OutOfStock));
    }
    Ok(())
}

/// Whether the order's history has a step taken for `cause`.
fn took(events: &[crate::store::OrderEvent], cause: Cause) -> bool {
    events.iter().any(|e| e.cause == cause.as_str())
}

/// How many of the order's delivered keys came from each product's stock.
fn stock_keys_by_sku(view: &crate::store::OrderView) -> std::collections::HashMap<String, u32> {
    let mut counts = std::collections::HashMap::new();
    for slot in view.deliveries.iter().filter_map(DeliveryRecord::card_key) {
        *counts.entry(slot.sku.clone()).or_insert(0) += 1;
    }
    counts
}

/// How many of the order's delivered keys came from its own product's stock (a
/// substitute's from another product were sold there).
fn own_stock_keys(view: &crate::store::OrderView) -> u32 {
    stock_keys_by_sku(view)
        .get(view.order.sku.as_str())
        .copied()
        .unwrap_or(0)
}

/// Tries of `accept_payment`: the order moving meanwhile, or counters running short.
const ACCEPT_ATTEMPTS: usize = 10;

/// The answer of `POST /admin/payments/{provider}/{event_id}/resolve`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentResolution {
    pub provider: String,
    pub event_id: String,
    pub resolved: bool,
}

/// `POST /admin/payments/{provider}/{event_id}/resolve`: an operator settled a payment
/// record in the exception queue (a duplicate payment given back, a payment for no known
/// order refunded or attached by hand): it leaves the queue, with who and why, in one
/// transaction with the audit record. Idempotent: a resolved record answers the same.
pub async fn resolve_payment(
    ctx: &Context,
    actor: &Actor,
    (provider, event_id): (String, String),
    request: ReasonRequest,
) -> Result<PaymentResolution> {
    let event = PaymentEvent { provider, event_id };
    let subject_id = format!("{}:{}", event.provider, event.event_id);
    let (note, entry) = resolution(
        ctx,
        actor,
        "payment.resolve",
        (AuditSubject::Payment, &subject_id),
        &request,
    )?;
    match ctx
        .store
        .resolve_payment_exception(&event, &note, &entry, ctx.clock.now())
        .await?
    {
        ExceptionResolved::Resolved | ExceptionResolved::AlreadyResolved => Ok(PaymentResolution {
            provider: event.provider,
            event_id: event.event_id,
            resolved: true,
        }),
        ExceptionResolved::NotFound => Err(Error::NotFound("payment")),
        ExceptionResolved::NotAnException => Err(Error::IllegalTransition {
            from: "applied",
            cause: "resolve",
        }),
    }
}

/// What an operator's resolving of an item in the exception queue keeps: the note on
/// the item (who, why) and its audit record. A blank or overlong reason is
/// `400 invalid_reason`.
fn resolution(
    ctx: &Context,
    actor: &Actor,
    action: &str,
    subject: (AuditSubject, &str),
    request: &ReasonRequest,
) -> Result<(crate::store::OperatorNote, crate::store::AuditEntry)> {
    let reason = checked_note(&request.reason, "invalid_reason", "reason")?;
    let entry = actor.entry(ctx, action, subject, Some(&reason), None, None);
    Ok((actor.note(&reason), entry))
}

/// The answer of `POST /admin/reconciliation/{period}/mismatches/{mismatch_id}/resolve`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MismatchResolution {
    pub period: String,
    pub mismatch_id: String,
    pub resolved: bool,
}

/// `POST /admin/reconciliation/{period}/mismatches/{mismatch_id}/resolve`: an operator
/// settled a difference between a provider's bill and Kami's records (the provider
/// corrected, money given back or booked by hand): it leaves the exception queue, with
/// who and why, in one transaction with the audit record; the mismatch itself stays
/// listed for its period. Idempotent: a resolved mismatch answers the same.
pub async fn resolve_mismatch(
    ctx: &Context,
    actor: &Actor,
    (period, mismatch_id): (String, String),
    request: ReasonRequest,
) -> Result<MismatchResolution> {
    let mismatch = MismatchRef {
        period,
        mismatch_id,
    };
    let subject_id = format!("{}/{}", mismatch.period, mismatch.mismatch_id);
    let (note, entry) = resolution(
        ctx,
        actor,
        "mismatch.resolve",
        (AuditSubject::Mismatch, &subject_id),
        &request,
    )?;
    match ctx
        .store
        .resolve_mismatch(&mismatch, &note, &entry, ctx.clock.now())
        .await?
    {
        ExceptionResolved::Resolved | ExceptionResolved::AlreadyResolved => {
            Ok(MismatchResolution {
                period: mismatch.period,
                mismatch_id: mismatch.mismatch_id,
                resolved: true,
            })
        }
        // Every mismatch is filed in the queue when it is written: one that is not there
        // and was never resolved does not exist.
        ExceptionResolved::NotFound | ExceptionResolved::NotAnException => {
            Err(Error::NotFound("mismatch"))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::order::{ALL_STATUSES, OrderStatus};

    #[test]
    fn only_paid_delivering_and_failed_orders_can_be_sent_again() {
        let allowed: Vec<_> = ALL_STATUSES
            .iter()
            .filter(|s| s.awaits_delivery())
            .collect();
        assert_eq!(
            allowed,
            [
                &OrderStatus::Paid,
                &OrderStatus::Delivering,
                &OrderStatus::DeliveryFailed
            ]
        );
    }
}
