//! `functions/payment-webhook`: payment providers' notifications, each verified by its
//! signature over the raw body.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use axum::response::{IntoResponse, Response};

use super::{ApiResult, ApiRouter, AppState, ErrorBody, PathParam, RawBody, Reply, routes};
use crate::app::fulfil::direct_topup;
use crate::app::payments;
use crate::request::MAX_SMALL_BODY;

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(stripe))
        .routes(routes!(channel))
        .routes(routes!(supplier))
}

/// What a supplier gets once its callback is recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackAck {
    pub ok: bool,
}

/// A supplier's callback (docs/suppliers.md, the `http_json` protocol): signed with
/// `X-Kami-Timestamp` / `X-Kami-Signature` under the supplier's secret, and bound to a
/// request Kami sent that supplier.
#[utoipa::path(
    post,
    path = "/webhooks/suppliers/{supplier_id}",
    tag = "webhooks",
    security(("supplier_signature" = [])),
    params(("supplier_id" = String, Path, description = "The supplier's id")),
    request_body(content = Object, description = "`{\"request_id\", \"status\": \"success\" | \"pending\" | \"failed\", \"supplier_ref\", \"reason\"}`, raw and signed", content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (also a duplicate, or a callback on a settled request: recorded in the order's history, nothing changed)", body = CallbackAck),
        (status = 400, description = "`invalid_json`, `invalid_callback`", body = ErrorBody),
        (status = 401, description = "`invalid_signature`: a bad signature or a timestamp more than 300 s off", body = ErrorBody),
        (status = 404, description = "`supplier_not_found`; `topup_request_not_found`: a request Kami did not send to this supplier (nothing changed)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    )
)]
async fn supplier(
    State(ctx): State<AppState>,
    PathParam(supplier_id): PathParam<String>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_SMALL_BODY>,
) -> ApiResult<CallbackAck> {
    direct_topup::supplier_callback(&ctx, &supplier_id, &headers, &body).await?;
    Ok(Reply(StatusCode::OK, CallbackAck { ok: true }))
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

/// A payment channel's notification (`/webhooks/alipay/{channel_id}`,
/// `/webhooks/wechatpay/{channel_id}`, `/webhooks/stripe/{channel_id}`), verified with that
/// channel's keys and bound to the attempt it names. Answered as the provider expects:
/// Alipay `success` / `failure` (text), WeChat Pay 204 / `{"code":"FAIL"}`, Stripe JSON.
#[utoipa::path(
    post,
    path = "/webhooks/{provider}/{channel_id}",
    tag = "webhooks",
    security(("provider_signature" = [])),
    params(
        ("provider" = String, Path, description = "`alipay`, `wechatpay` or `stripe`: the channel's provider"),
        ("channel_id" = String, Path, description = "The channel's id"),
    ),
    request_body(content = String, description = "The provider's notification, raw (form-encoded for Alipay, JSON otherwise), signed as the provider signs it", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Recorded (Alipay: `success`; Stripe: `{\"received\": true}`)", body = String, content_type = "text/plain"),
        (status = 204, description = "Recorded (WeChat Pay)"),
        (status = 400, description = "Refused: a bad signature, another channel's or account's payment (Alipay: `failure`; WeChat Pay: `{\"code\":\"FAIL\"}`; Stripe: the JSON error shape)", body = String, content_type = "text/plain"),
        (status = 404, description = "`channel_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 500, description = "Not recorded; the provider retries", body = String, content_type = "text/plain"),
    )
)]
async fn channel(
    State(ctx): State<AppState>,
    PathParam((provider, channel_id)): PathParam<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_SMALL_BODY>,
) -> Result<Response, crate::error::Error> {
    let answer =
        payments::channel_notification(&ctx, &provider, &channel_id, &headers, &body).await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response())
}
