//! Telling the buyer: the notifier function's use case. A delivered order's message
//! (`{"kind": "delivery", "order_id"}`, queued by the delivery worker), or a renewal
//! order's (`renewal_notice`, queued by the sweep), becomes one email, and one SMS when
//! the buyer gave a phone, in the buyer's language. Each
//! (order, kind, channel) is claimed in the table before it is sent and marked sent
//! after, so duplicated and retried messages tell the buyer once; a failed send is
//! marked failed and its message retried (then dead-lettered), never touching the
//! delivery. Goods travel in the message only where the product allows it.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

use super::fulfil::{ByType, Fulfiller};
use super::orders::Delivered;
use super::reminders;
use crate::adapters::queue::NotifyMessage;
use crate::config::Context;
use crate::domain::crypto::order_access_token;
use crate::domain::license::LicenseStatus;
use crate::domain::notification::{
    Channel, DeliveryFacts, NotificationKind, ReminderFacts, RenewalFacts, render_delivery,
    render_expiry_reminder, render_renewal_notice,
};
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::notifier::Message;
use crate::store::{DeliveryRecord, NotificationClaim, NotificationStatus, OrderView};

/// How long a claim keeps other workers off a notification: longer than one send, far
/// shorter than the queue's visibility timeout (a worker that died mid-send is taken
/// over by its own message's retry).
pub const CLAIM_LEASE_SECONDS: i64 = 60;
/// The most of a failure's text kept on the record.
const MAX_ERROR_LEN: usize = 300;

/// What one channel's notification came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    Sent,
    /// Sent before, or being sent by another worker right now.
    AlreadyTold,
    /// This function has no notifier for the channel (no SES sender configured).
    NoNotifier,
}

/// One SQS batch; failed messages are reported for retry (`ReportBatchItemFailures`).
pub async fn handle_batch(ctx: &Context, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in &event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("notify_message", message_id = %id, order_id = tracing::field::Empty);
        let _guard = span.enter();
        let result = match serde_json::from_str::<NotifyMessage>(
            message.body.as_deref().unwrap_or_default(),
        ) {
            Ok(parsed) => {
                tracing::Span::current().record("order_id", parsed.order_id.as_str());
                notify(ctx, &parsed).await.map(|_| ())
            }
            Err(err) => Err(Error::invalid_json(err)),
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "notification failed; the message will be retried");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// Handles one message: what each channel came to (empty when there is nothing to tell:
/// an unknown order, or one no longer in the state the kind is about).
pub async fn notify(ctx: &Context, message: &NotifyMessage) -> Result<Vec<(Channel, Told)>> {
    let order_id = message.order_id.as_str();
    let Some(view) = ctx.store.get_order_view(order_id).await? else {
        tracing::warn!(order_id, "no such order: nothing to tell");
        return Ok(Vec::new());
    };
    // A renewal notice is for an order still to pay (a paid or expired one needs none).
    let wanted = match message.kind {
        NotificationKind::Delivery | NotificationKind::ExpiryReminder => OrderStatus::Delivered,
        NotificationKind::RenewalNotice => OrderStatus::PendingPayment,
    };
    if view.order.status != wanted {
        tracing::warn!(
            order_id,
            status = view.order.status.as_str(),
            kind = message.kind.as_str(),
            "nothing to tell"
        );
        return Ok(Vec::new());
    }
    // A reminder about a period extended, ended or taken back since (a key voided,
    // refunded or over) is not sent; one still due is rendered from what is read here.
    let reminded = if message.kind == NotificationKind::ExpiryReminder {
        match ending_of(ctx, &view, ctx.clock.now()).await? {
            Some(ending) => Some(ending),
            None => {
                tracing::info!(order_id, "the reminder is stale: not sent");
                return Ok(Vec::new());
            }
        }
    } else {
        None
    };
    let order = &view.order;
    let mut recipients = vec![(Channel::Email, order.buyer_email.as_str())];
    if let Some(phone) = &order.contact.phone {
        recipients.push((Channel::Sms, phone.as_str()));
    }
    let mut told = Vec::new();
    let mut failure = None;
    let mut contents = None;
    for (channel, recipient) in recipients {
        let claim = NotificationClaim {
            order_id,
            kind: message.kind,
            channel,
            recipient,
            language: order.contact.language,
        };
        match tell(ctx, &view, reminded.as_ref(), &mut contents, &claim).await {
            Ok(outcome) => told.push((channel, outcome)),
            Err(err) => failure = Some(err),
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(told),
    }
}

/// One channel: claim, render, send, mark. `reminded`: what an expiry reminder is about.
async fn tell(
    ctx: &Context,
    view: &OrderView,
    reminded: Option<&Ending>,
    contents: &mut Option<Contents>,
    claim: &NotificationClaim<'_>,
) -> Result<Told> {
    let Some(notifier) = ctx.notifier(claim.channel) else {
        tracing::warn!(
            channel = claim.channel.as_str(),
            "no notifier for this channel"
        );
        return Ok(Told::NoNotifier);
    };
    let earlier = ctx
        .store
        .notification(claim.order_id, claim.kind, claim.channel)
        .await?;
    if earlier
        .as_ref()
        .is_some_and(|record| record.status == NotificationStatus::Sent)
    {
        return Ok(Told::AlreadyTold);
    }
    let now = ctx.clock.now();
    let lease_until = now.plus_seconds(CLAIM_LEASE_SECONDS);
    let attempts_before = earlier.map(|record| record.attempts);
    if !ctx
        .store
        .claim_notification(claim, attempts_before, now, lease_until)
        .await?
    {
        return Ok(Told::AlreadyTold);
    }
    let sent = match message_for(ctx, view, reminded, contents, claim).await {
        Ok(message) => notifier.send(&message).await,
        Err(err) => Err(err),
    };
    match sent {
        Ok(provider_ref) => {
            ctx.store
                .notification_sent(claim, &provider_ref, ctx.clock.now())
                .await?;
            tracing::info!(
                channel = claim.channel.as_str(),
                kind = claim.kind.as_str(),
                notifier = notifier.name(),
                "buyer told"
            );
            Ok(Told::Sent)
        }
        Err(err) => {
            let text: String = err.to_string().chars().take(MAX_ERROR_LEN).collect();
            ctx.store.notification_failed(claim, &text).await?;
            Err(err)
        }
    }
}

/// What a message about one order says whatever its channel: read (and the goods
/// opened) by the first channel that sends, once.
struct Contents {
    title: String,
    /// A delivery's goods, for a product that allows them in its notices.
    goods: Vec<String>,
}

impl Contents {
    async fn read(ctx: &Context, view: &OrderView, kind: NotificationKind) -> Result<Self> {
        let product = super::catalog::find_product(ctx, &view.order.sku, false).await?;
        let goods = if kind == NotificationKind::Delivery && product.goods_in_notifications {
            ByType
                .show(ctx, &view.order, &view.deliveries)
                .await?
                .iter()
                .filter_map(goods_line)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Contents {
            title: product.title,
            goods,
        })
    }
}

async fn message_for(
    ctx: &Context,
    view: &OrderView,
    reminded: Option<&Ending>,
    contents: &mut Option<Contents>,
    claim: &NotificationClaim<'_>,
) -> Result<Message> {
    let order = &view.order;
    let contents = match contents {
        Some(contents) => contents,
        None => contents.insert(Contents::read(ctx, view, claim.kind).await?),
    };
    let order_url = ctx
        .config
        .public_api_url
        .as_ref()
        .map(|api| format!("{api}/orders/{}", order.order_id));
    let rendered = match claim.kind {
        NotificationKind::Delivery => render_delivery(
            &DeliveryFacts {
                order_id: &order.order_id,
                title: &contents.title,
                quantity: order.quantity,
                goods: &contents.goods,
                order_url: order_url.as_deref(),
            },
            claim.language,
            claim.channel,
        ),
        NotificationKind::ExpiryReminder => {
            let ending = reminded
                .ok_or_else(|| Error::Corrupt("a reminder without what it is about".into()))?;
            render_expiry_reminder(
                &ReminderFacts {
                    title: &contents.title,
                    entitlement: ending.name.as_deref(),
                    ends_at: &ending.ends_at.to_rfc3339(),
                    order_url: order_url.as_deref(),
                },
                claim.language,
                claim.channel,
            )
        }
        NotificationKind::RenewalNotice => {
            // The buyer of a renewal order has no token yet: the notice carries it
            // (derived from the order id, as at checkout; never stored).
            let token = order_access_token(ctx.secrets.order_token_key()?, &order.order_id)?;
            render_renewal_notice(
                &RenewalFacts {
                    order_id: &order.order_id,
                    title: &contents.title,
                    amount: &order.amount.for_people(),
                    period_end: &order.expires_at.to_rfc3339(),
                    access_token: &token,
                    order_url: order_url.as_deref(),
                },
                claim.language,
                claim.channel,
            )
        }
    };
    Ok(Message {
        // Kami's own id: the same for every retry of this notification.
        message_id: format!(
            "{}.{}.{}",
            order.order_id,
            claim.kind.as_str(),
            claim.channel.as_str()
        ),
        channel: claim.channel,
        to: claim.recipient.to_owned(),
        subject: rendered.subject,
        body: rendered.body,
    })
}

/// What an expiry reminder is about: what ends (an entitlement's name; none for
/// license keys) and when.
struct Ending {
    name: Option<String>,
    ends_at: Timestamp,
}

/// What of the order still ends ahead, as of `now`: the entitlement it granted or
/// extended (its grant record's), if this order's period is still its last; else the
/// soonest end of its live license keys. `None`: nothing left to remind of.
async fn ending_of(ctx: &Context, view: &OrderView, now: Timestamp) -> Result<Option<Ending>> {
    if let Some(slot) = view.deliveries.iter().find_map(DeliveryRecord::grant) {
        let record = ctx.store.entitlement(&slot.entitlement_id).await?;
        return Ok(record
            .filter(|record| reminders::still_due(record, &view.order.order_id, now))
            .and_then(|record| {
                record.ends_at.map(|ends_at| Ending {
                    name: Some(record.name),
                    ends_at,
                })
            }));
    }
    let mut soonest: Option<Timestamp> = None;
    for slot in view.deliveries.iter().filter_map(DeliveryRecord::license) {
        if let Some(state) = ctx.store.license(&slot.fingerprint).await?
            && state.license.status_at(now) == LicenseStatus::Active
            && let Some(end) = state.license.expires_at
            && soonest.is_none_or(|earlier| end < earlier)
        {
            soonest = Some(end);
        }
    }
    Ok(soonest.map(|ends_at| Ending {
        name: None,
        ends_at,
    }))
}

/// A delivered unit as one line of text: the key, the link, the entitlement, or the
/// account topped up.
fn goods_line(delivered: &Delivered) -> Option<String> {
    delivered
        .code
        .clone()
        .or_else(|| delivered.license_key.clone())
        .or_else(|| delivered.url.clone())
        .or_else(|| delivered.entitlement_id.clone())
        .or_else(|| delivered.account.clone())
}
