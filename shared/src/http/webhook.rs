//! `functions/payment-webhook`: payment providers' notifications, each verified by its
//! signature over the raw body.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{ApiResult, ApiRouter, AppState, ErrorBody, RawBody, Reply};
use crate::app::payments;
use crate::request::MAX_SMALL_BODY;

pub fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(stripe))
}

/// What a provider gets once the notification is durably recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub received: bool,
}

/// A Stripe event (`checkout.session.completed`, `payment_intent.succeeded`; others are
/// acknowledged and ignored). Answered 2xx only once the payment is recorded.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "webhooks",
    security(("stripe_signature" = [])),
    request_body(content = Object, description = "A Stripe event, as Stripe sends it (raw body, signed)", content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (or ignored, or already recorded)", body = WebhookAck),
        (status = 400, description = "`invalid_signature`, `invalid_json`, `livemode_mismatch` (an event of the other Stripe mode)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 503, description = "`busy_retry`: Stripe retries", body = ErrorBody),
    )
)]
async fn stripe(
    State(ctx): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_SMALL_BODY>,
) -> ApiResult<WebhookAck> {
    payments::payment_notification(&ctx, "stripe", &headers, &body).await?;
    Ok(Reply(StatusCode::OK, WebhookAck { received: true }))
}
