//! HTTP: the routers of the three API functions and the one place where errors become
//! responses (`error_response`).

use lambda_http::http::{HeaderMap, Method, StatusCode, header};
use lambda_http::{Body, Request, Response, service_fn};
use serde_json::{Value, json};
use std::sync::Arc;

use crate::app::{catalog, import, operator, orders, payments};
use crate::config::Context;
use crate::domain::card_key::ImportFormat;
use crate::domain::crypto::secrets_equal;
use crate::error::{ConflictKind, Error, Result};

/// Storefront and webhook bodies are small; key imports may be large (API Gateway's
/// own limit is 10 MB, Lambda's synchronous payload 6 MB).
pub const MAX_SMALL_BODY: usize = 64 * 1024;
pub const MAX_IMPORT_BODY: usize = 6 * 1024 * 1024;

/// Maps an error to its status, stable code and message. Server-side failures get a
/// generic message; their detail goes to the log only.
pub fn error_response(err: &Error) -> Response<Body> {
    let (status, code) = match err {
        Error::InvalidRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
        Error::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
        Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        Error::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::NotFound("product") => (StatusCode::NOT_FOUND, "product_not_found"),
        Error::NotFound("order") => (StatusCode::NOT_FOUND, "order_not_found"),
        Error::NotFound(_) | Error::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::Conflict(ConflictKind::OutOfStock) => (StatusCode::CONFLICT, "out_of_stock"),
        Error::Conflict(ConflictKind::ProductExists) => (StatusCode::CONFLICT, "product_exists"),
        Error::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        Error::InvalidSignature(_) => (StatusCode::BAD_REQUEST, "invalid_signature"),
        Error::IllegalTransition { .. } => (StatusCode::CONFLICT, "illegal_transition"),
        Error::Contention(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy_retry"),
        Error::Corrupt(_)
        | Error::Crypto(_)
        | Error::Config(_)
        | Error::Aws { .. }
        | Error::Upstream { .. }
        | Error::Timeout { .. }
        | Error::NotAvailable { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    let message = if status.is_server_error() {
        tracing::error!(error = %err, code, "request failed");
        match err {
            Error::Contention(_) => "the system is busy; retry with the same request".to_owned(),
            _ => "internal error; retry later".to_owned(),
        }
    } else {
        tracing::info!(code, status = status.as_u16(), "request refused");
        err.to_string()
    };
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // Order views carry card keys and tokens: never cache any response.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn respond(result: Result<(StatusCode, Value)>) -> Response<Body> {
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(err) => error_response(&err),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = header_str(headers, "authorization")?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn body(request: &Request, limit: usize) -> Result<&[u8]> {
    let bytes: &[u8] = request.body().as_ref();
    if bytes.len() > limit {
        return Err(Error::PayloadTooLarge { limit });
    }
    Ok(bytes)
}

fn segments(request: &Request) -> Vec<&str> {
    request
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

fn no_route(request: &Request) -> Error {
    Error::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// `functions/checkout`: the storefront.
pub async fn checkout(ctx: Arc<Context>, request: Request) -> Response<Body> {
    let ctx = ctx.as_ref();
    let result = async {
        match (request.method(), segments(&request).as_slice()) {
            (&Method::GET, ["products", sku]) => {
                Ok((StatusCode::OK, catalog::public_product(ctx, sku).await?))
            }
            (&Method::POST, ["orders"]) => {
                let bytes = body(&request, MAX_SMALL_BODY)?;
                // A header that is present but not visible ASCII is invalid, not missing.
                let key = request
                    .headers()
                    .get("idempotency-key")
                    .map(|value| value.to_str().unwrap_or(""));
                Ok((
                    StatusCode::CREATED,
                    orders::create_order(ctx, key, bytes).await?,
                ))
            }
            (&Method::GET, ["orders", order_id]) => {
                let token = bearer(request.headers());
                Ok((
                    StatusCode::OK,
                    orders::get_order(ctx, order_id, token).await?,
                ))
            }
            _ => Err(no_route(&request)),
        }
    }
    .await;
    respond(result)
}

fn authorize_admin(ctx: &Context, headers: &HeaderMap) -> Result<()> {
    let expected = ctx.secrets.admin_token()?;
    match bearer(headers) {
        Some(token) if secrets_equal(token.as_bytes(), expected) => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

fn import_format(headers: &HeaderMap) -> Result<ImportFormat> {
    let content_type = header_str(headers, "content-type").unwrap_or("application/json");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(ImportFormat::Json),
        "text/plain" | "text/csv" => Ok(ImportFormat::Lines),
        other => Err(Error::UnsupportedMediaType(other.to_owned())),
    }
}

/// `functions/admin`: merchant administration, behind the admin bearer token.
pub async fn admin(ctx: Arc<Context>, request: Request) -> Response<Body> {
    let ctx = ctx.as_ref();
    let result = async {
        authorize_admin(ctx, request.headers())?;
        match (request.method(), segments(&request).as_slice()) {
            (&Method::POST, ["admin", "products"]) => {
                let bytes = body(&request, MAX_SMALL_BODY)?;
                Ok((
                    StatusCode::CREATED,
                    catalog::create_product(ctx, bytes).await?,
                ))
            }
            (&Method::GET, ["admin", "products", sku]) => {
                Ok((StatusCode::OK, catalog::admin_product(ctx, sku).await?))
            }
            (&Method::GET, ["admin", "orders", order_id]) => Ok((
                StatusCode::OK,
                operator::order_for_operator(ctx, order_id).await?,
            )),
            (&Method::POST, ["admin", "orders", order_id, "redeliver"]) => Ok((
                StatusCode::ACCEPTED,
                operator::redeliver(ctx, order_id).await?,
            )),
            (&Method::POST, ["admin", "products", sku, "card-keys"]) => {
                let bytes = body(&request, MAX_IMPORT_BODY)?;
                let format = import_format(request.headers())?;
                let report = import::import_card_keys(ctx, sku, format, bytes).await?;
                let status = if report.accepted > 0 {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok((status, json!(report)))
            }
            _ => Err(no_route(&request)),
        }
    }
    .await;
    respond(result)
}

/// `functions/payment-webhook`: payment providers' notifications.
pub async fn payment_webhook(ctx: Arc<Context>, request: Request) -> Response<Body> {
    let ctx = ctx.as_ref();
    let result = async {
        match (request.method(), segments(&request).as_slice()) {
            (&Method::POST, ["webhooks", "stripe"]) => {
                let bytes = body(&request, MAX_SMALL_BODY)?;
                let body =
                    payments::payment_notification(ctx, "stripe", request.headers(), bytes).await?;
                Ok((StatusCode::OK, body))
            }
            _ => Err(no_route(&request)),
        }
    }
    .await;
    respond(result)
}

/// An HTTP function's life after its cold start: one router, the context shared by
/// every request. Each function passes its own router, so its binary links no other.
pub async fn serve<Router, Answer>(
    ctx: Arc<Context>,
    router: Router,
) -> Result<(), lambda_http::Error>
where
    Router: Fn(Arc<Context>, Request) -> Answer,
    Answer: Future<Output = Response<Body>> + Send,
{
    lambda_http::run(service_fn(|request: Request| {
        let answer = router(ctx.clone(), request);
        async move { Ok::<_, lambda_http::Error>(answer.await) }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(err: Error) -> (u16, Value) {
        let response = error_response(&err);
        let body: &[u8] = response.body().as_ref();
        (
            response.status().as_u16(),
            serde_json::from_slice(body).unwrap(),
        )
    }

    #[test]
    fn client_errors_keep_their_code_and_message() {
        let cases = [
            (
                Error::invalid("invalid_quantity", "quantity must be positive"),
                400,
                "invalid_quantity",
            ),
            (Error::InvalidJson("eof".into()), 400, "invalid_json"),
            (
                Error::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (
                Error::UnsupportedMediaType("x/y".into()),
                415,
                "unsupported_media_type",
            ),
            (Error::Unauthorized, 401, "unauthorized"),
            (Error::NotFound("product"), 404, "product_not_found"),
            (Error::NotFound("order"), 404, "order_not_found"),
            (
                Error::Conflict(ConflictKind::OutOfStock),
                409,
                "out_of_stock",
            ),
            (
                Error::Conflict(ConflictKind::ProductExists),
                409,
                "product_exists",
            ),
            (Error::IdempotencyKeyReused, 422, "idempotency_key_reused"),
            (
                Error::InvalidSignature("no signature matches"),
                400,
                "invalid_signature",
            ),
        ];
        for (err, status, code) in cases {
            let message = err.to_string();
            let (got_status, body) = mapped(err);
            assert_eq!(
                (got_status, body["error"]["code"].as_str()),
                (status, Some(code))
            );
            assert_eq!(body["error"]["message"], message);
        }
    }

    #[test]
    fn server_errors_hide_their_detail() {
        for err in [
            Error::Aws {
                service: "dynamodb",
                message: "table kami-secret-name missing".into(),
            },
            Error::Corrupt("item ORDER#x has no string sku".into()),
            Error::Crypto("card key failed authentication"),
            Error::Config("order token key is not configured".into()),
        ] {
            let (status, body) = mapped(err);
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (500, Some("internal_error"))
            );
            let text = body.to_string();
            assert!(
                !text.contains("kami-secret-name")
                    && !text.contains("ORDER#")
                    && !text.contains("token")
            );
        }
        let (status, body) = mapped(Error::Contention("transaction"));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("busy_retry"))
        );
    }

    #[test]
    fn responses_are_json_and_never_cached() {
        let response = json_response(StatusCode::OK, &json!({"ok": true}));
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
}
