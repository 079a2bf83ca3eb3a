//! HTTP: one `axum` router per API function (`checkout`, `admin`, `webhook`), the
//! extractors they share, and the one place where errors become responses
//! (`impl IntoResponse for Error`). Each route is declared once, with its OpenAPI
//! description (`#[utoipa::path]`); `openapi` assembles the spec from the same routers.

pub mod admin;
pub mod checkout;
pub mod distributor;
pub mod merchant;
pub mod openapi;
pub mod operations;
pub mod webhook;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;
use utoipa::ToSchema;

use crate::config::Context;
use crate::error::{ConflictKind, Error, Result};
pub use crate::request::{MAX_IMPORT_BODY, MAX_SMALL_BODY, RequestBody, parse_json};

/// The state every handler receives: the context built at cold start.
pub type AppState = Arc<Context>;

/// A function's routes: each handler at the path and methods its `#[utoipa::path]`
/// declares (`routes!`). A binary reads only those: the OpenAPI operations and schemas
/// are built in the spec's unit test alone (`openapi.rs`), so no function links that
/// code or runs it at cold start (docs/bench.md, binary size).
pub struct ApiRouter {
    router: axum::Router<AppState>,
    #[cfg(test)]
    spec: utoipa::openapi::OpenApi,
}

impl Default for ApiRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiRouter {
    pub fn new() -> Self {
        ApiRouter {
            router: axum::Router::new(),
            #[cfg(test)]
            spec: {
                #[derive(utoipa::OpenApi)]
                struct Api;
                <Api as utoipa::OpenApi>::openapi()
            },
        }
    }

    /// Adds the handlers a `routes!(...)` names.
    pub fn routes(self, add: impl FnOnce(Self) -> Self) -> Self {
        add(self)
    }

    /// Serves `handler` at the path and methods of its declaration `P` (the
    /// `__path_<handler>` type `#[utoipa::path]` generates); `routes!` names both.
    pub fn route<P, H, T>(mut self, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        use utoipa_axum::PathItemExt;
        let path = P::path();
        let methods = P::methods();
        let method_router = methods
            .iter()
            .fold(axum::routing::MethodRouter::new(), |router, method| {
                router.on(method.to_method_filter(), handler.clone())
            });
        self.router = self.router.route(&path, method_router);
        #[cfg(test)]
        self.document::<P>(&path, methods);
        self
    }

    /// Adds `P`'s operation and the schemas it names to the spec, as utoipa-axum's
    /// `OpenApiRouter` does.
    #[cfg(test)]
    fn document<P>(&mut self, path: &str, methods: Vec<utoipa::openapi::path::HttpMethod>)
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
    {
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        let mut operation = P::operation();
        let tags = P::tags();
        if !tags.is_empty() {
            operation
                .tags
                .get_or_insert_with(Vec::new)
                .extend(tags.iter().map(ToString::to_string));
        }
        let mut paths = utoipa::openapi::path::Paths::new();
        paths.add_path_operation(path, methods, operation);
        for (path, item) in paths.paths {
            match self.spec.paths.paths.get_mut(&path) {
                Some(known) => known.merge_operations(item),
                None => {
                    self.spec.paths.paths.insert(path, item);
                }
            }
        }
        self.spec
            .components
            .get_or_insert_with(utoipa::openapi::Components::new)
            .schemas
            .extend(schemas);
    }

    /// Both functions' routes in one (the spec of the whole API).
    #[cfg(test)]
    pub fn merge(mut self, other: Self) -> Self {
        self.spec.merge(other.spec);
        self.router = self.router.merge(other.router);
        self
    }

    #[cfg(test)]
    pub fn into_openapi(self) -> utoipa::openapi::OpenApi {
        self.spec
    }
}

/// `routes!(a, b)`: the handlers `a` and `b` (in scope with their `__path_` types), each served at the path and methods its
/// `#[utoipa::path]` declares (for `ApiRouter::routes`).
macro_rules! routes {
    ($($handler:ident),+ $(,)?) => {
        |router: $crate::http::ApiRouter| {
            utoipa_axum::paste! { router $(.route::<[<__path_ $handler>], _, _>($handler))+ }
        }
    };
}
pub(crate) use routes;

/// The error shape of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`invalid_quantity`, `out_of_stock`, ...).
    #[schema(example = "invalid_quantity")]
    pub code: String,
    /// For people; may change wording.
    pub message: String,
    /// The JSON path of the request field at fault (`buyer.email`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The status and stable code of an error.
fn status_and_code(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::InvalidRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
        Error::InvalidJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json"),
        Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        Error::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::NotFound("product") => (StatusCode::NOT_FOUND, "product_not_found"),
        Error::NotFound("order") => (StatusCode::NOT_FOUND, "order_not_found"),
        Error::NotFound("channel") => (StatusCode::NOT_FOUND, "channel_not_found"),
        Error::NotFound("payment") => (StatusCode::NOT_FOUND, "payment_not_found"),
        Error::NotFound("supplier") => (StatusCode::NOT_FOUND, "supplier_not_found"),
        Error::NotFound("top-up request") => (StatusCode::NOT_FOUND, "topup_request_not_found"),
        Error::NotFound("distributor") => (StatusCode::NOT_FOUND, "distributor_not_found"),
        Error::NotFound("statement") => (StatusCode::NOT_FOUND, "statement_not_found"),
        Error::NotFound("mismatch") => (StatusCode::NOT_FOUND, "mismatch_not_found"),
        Error::NotFound("license") => (StatusCode::NOT_FOUND, "license_not_found"),
        Error::NotFound("license instance") => (StatusCode::NOT_FOUND, "instance_not_found"),
        Error::NotFound("api key") => (StatusCode::NOT_FOUND, "api_key_not_found"),
        Error::NotFound("entitlement") => (StatusCode::NOT_FOUND, "entitlement_not_found"),
        Error::NotFound("link") => (StatusCode::NOT_FOUND, "link_not_found"),
        Error::NotFound("subscription") => (StatusCode::NOT_FOUND, "subscription_not_found"),
        Error::Gone(code) => (StatusCode::GONE, *code),
        Error::NotFound(_) | Error::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::Conflict(ConflictKind::OutOfStock) => (StatusCode::CONFLICT, "out_of_stock"),
        Error::Conflict(ConflictKind::ProductExists) => (StatusCode::CONFLICT, "product_exists"),
        Error::Conflict(ConflictKind::OrderNotPayable) => {
            (StatusCode::CONFLICT, "order_not_payable")
        }
        Error::Conflict(ConflictKind::ChannelNotEligible) => {
            (StatusCode::CONFLICT, "channel_not_eligible")
        }
        Error::Conflict(ConflictKind::RefundExceedsPayment) => {
            (StatusCode::CONFLICT, "refund_exceeds_payment")
        }
        Error::Conflict(ConflictKind::RefundNotPossible) => {
            (StatusCode::CONFLICT, "refund_not_possible")
        }
        Error::Conflict(ConflictKind::ProductUnavailable) => {
            (StatusCode::CONFLICT, "product_unavailable")
        }
        Error::Conflict(ConflictKind::ReferralCodeTaken) => {
            (StatusCode::CONFLICT, "referral_code_taken")
        }
        Error::Conflict(ConflictKind::StatementAlreadyPaid) => {
            (StatusCode::CONFLICT, "statement_already_paid")
        }
        Error::Conflict(ConflictKind::StatementOpen) => (StatusCode::CONFLICT, "statement_open"),
        Error::Conflict(ConflictKind::ActivationLimitReached) => {
            (StatusCode::CONFLICT, "activation_limit_reached")
        }
        Error::Conflict(ConflictKind::LicenseNotActive) => {
            (StatusCode::CONFLICT, "license_not_active")
        }
        Error::Conflict(ConflictKind::NoUsesLeft) => (StatusCode::CONFLICT, "no_uses_left"),
        Error::Conflict(ConflictKind::EntitlementExpired) => {
            (StatusCode::CONFLICT, "entitlement_expired")
        }
        Error::Conflict(ConflictKind::EntitlementRevoked) => {
            (StatusCode::CONFLICT, "entitlement_revoked")
        }
        Error::Conflict(ConflictKind::NotRedeemable) => (StatusCode::CONFLICT, "not_redeemable"),
        Error::Conflict(ConflictKind::RedemptionIdReused) => {
            (StatusCode::CONFLICT, "redemption_id_reused")
        }
        Error::PaymentProvidersUnavailable { .. } => {
            (StatusCode::BAD_GATEWAY, "payment_provider_unavailable")
        }
        Error::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        Error::TooManyPendingOrders { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "too_many_pending_orders")
        }
        Error::InvalidSignature(_) => (StatusCode::BAD_REQUEST, "invalid_signature"),
        Error::UnverifiedCallback(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
        Error::IllegalTransition { .. } => (StatusCode::CONFLICT, "illegal_transition"),
        Error::Contention(_) | Error::OutOfTime(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy_retry")
        }
        Error::Corrupt(_)
        | Error::Crypto(_)
        | Error::Config(_)
        | Error::Aws { .. }
        | Error::Upstream { .. }
        | Error::Timeout { .. }
        | Error::NotAvailable { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

/// Maps an error to its status, stable code and message. Server-side failures get a
/// generic message; their detail goes to the log only.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self);
        let message = if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
            match self {
                Error::Contention(_) | Error::OutOfTime(_) => {
                    "the system is busy; retry with the same request".to_owned()
                }
                _ => "internal error; retry later".to_owned(),
            }
        } else {
            tracing::info!(code, status = status.as_u16(), "request refused");
            self.to_string()
        };
        let retry_after = match self {
            Error::TooManyPendingOrders {
                retry_after_seconds,
                ..
            } => Some(retry_after_seconds),
            _ => None,
        };
        let path = match self {
            Error::InvalidRequest { path, .. } | Error::InvalidJson { path, .. } => path,
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                path,
            },
        };
        let mut response = json_response(status, &body);
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON answer; never cached (order views carry card keys and tokens).
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let (status, text) = match serde_json::to_vec(body) {
        Ok(text) => (status, text),
        Err(err) => {
            tracing::error!(error = %err, "response did not serialise");
            let fallback =
                br#"{"error":{"code":"internal_error","message":"internal error; retry later"}}"#;
            (StatusCode::INTERNAL_SERVER_ERROR, fallback.to_vec())
        }
    };
    uncached(status, "application/json", Body::from(text))
}

/// An answer of `content_type` that no cache keeps (every answer here is someone's).
fn uncached(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether the client asked for CSV (`Accept: text/csv`) rather than JSON.
pub fn wants_csv(headers: &HeaderMap) -> bool {
    header_str(headers, "accept").is_some_and(|accept| {
        accept
            .split(',')
            .any(|media| media.split(';').next().unwrap_or_default().trim() == "text/csv")
    })
}

/// A CSV answer (200), never cached.
pub fn csv_response(text: String) -> Response {
    uncached(StatusCode::OK, "text/csv; charset=utf-8", Body::from(text))
}

/// A view as JSON, or CSV if asked for.
pub fn json_or_csv<T: serde::Serialize + crate::app::CsvView>(
    view: &T,
    headers: &HeaderMap,
) -> Result<Response> {
    Ok(if wants_csv(headers) {
        csv_response(view.to_csv()?)
    } else {
        json_response(StatusCode::OK, view)
    })
}

/// A handler's successful answer: a status and a JSON body.
pub struct Reply<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        json_response(self.0, &self.1)
    }
}

pub type ApiResult<T> = Result<Reply<T>>;

/// A JSON request body of type `T`: over `T::LIMIT` bytes → 413 `payload_too_large`;
/// not JSON → 400 `invalid_json`; a field of the wrong type → 400 with the field's own
/// code (`RequestBody::field_code`) or `invalid_json`, and its path either way.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: RequestBody> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self> {
        let bytes = read_body(request.into_body(), T::LIMIT).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A raw body of at most `LIMIT` bytes (signed webhooks, imports).
pub struct RawBody<const LIMIT: usize>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for RawBody<LIMIT> {
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self> {
        read_body(request.into_body(), LIMIT).await.map(RawBody)
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    // Lambda hands over the whole body at once: the only failure is its size.
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::PayloadTooLarge { limit })
}

/// A path parameter; one that cannot be read is a route that does not exist.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|_| route_not_found(parts))
    }
}

fn route_not_found(parts: &Parts) -> Error {
    Error::RouteNotFound {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
    }
}

/// The `Idempotency-Key` header: required, 16 to 128 visible ASCII characters. A header
/// that is present but not visible ASCII is invalid, not missing.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let key = parts
            .headers
            .get("idempotency-key")
            .map(|value| value.to_str().unwrap_or(""));
        crate::app::orders::validate_idempotency_key(key).map(|key| IdempotencyKey(key.to_owned()))
    }
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = header_str(headers, "authorization")?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Unknown paths and known paths with another method both answer 404 `not_found`, as
/// API Gateway routes do.
async fn no_route(request: Request) -> Error {
    let (parts, _) = request.into_parts();
    route_not_found(&parts)
}

/// Finishes a function's router: the not-found answers, then the context.
pub fn finish(router: ApiRouter, ctx: AppState) -> axum::Router {
    router
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        // What the request counted is written before its answer leaves.
        .layer(axum::middleware::map_response(flush_metrics))
        .layer(axum::middleware::from_fn(order_span))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            refresh_secrets,
        ))
        .with_state(ctx)
}

/// Every log line of a request about one order names it (`order_id` on the request's
/// span; the runtime's own span carries the request id).
async fn order_span(request: Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let span = tracing::info_span!("request", order_id = tracing::field::Empty);
    if let Some(order_id) = order_id_in_path(request.uri().path()) {
        span.record("order_id", order_id);
    }
    next.run(request).instrument(span).await
}

/// The order a path names: `/orders/{id}...` or `/admin/orders/{id}...`.
fn order_id_in_path(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next()?;
    let first = if first == "admin" {
        segments.next()?
    } else {
        first
    };
    (first == "orders")
        .then(|| segments.next())
        .flatten()
        .filter(|id| !id.is_empty())
}

async fn flush_metrics(response: Response) -> Response {
    crate::metrics::flush();
    response
}

/// Before each request: re-read the revocable secrets (admin token, webhook secrets) if
/// their interval has passed, so a rotated one stops working on warm instances too
/// (docs/operations.md). Usually a clock read and nothing else.
async fn refresh_secrets(
    axum::extract::State(ctx): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    ctx.secrets.refresh_if_due(ctx.clock.now()).await;
    next.run(request).await
}

/// One request through a router, answered as Lambda would (tests and tools).
pub async fn call(router: axum::Router, request: lambda_http::Request) -> Response {
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, Body::from(body.to_vec()));
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An HTTP function's life after its cold start: its router, the context shared by
/// every request. Each function passes its own router, so its binary links no other.
pub async fn serve(router: axum::Router) -> Result<(), lambda_http::Error> {
    lambda_http::run(router).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{Value, json};

    async fn mapped(err: Error) -> (u16, Value) {
        let response = err.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_full_hold_answers_429_with_retry_after() {
        let err = Error::TooManyPendingOrders {
            holder: "email",
            limit: 10,
            retry_after_seconds: 2160,
        };
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2160");
        let (status, body) = mapped(Error::TooManyPendingOrders {
            holder: "email",
            limit: 10,
            retry_after_seconds: 2160,
        })
        .await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["code"], "too_many_pending_orders");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("this email already holds 10 unpaid units"),
            "{body}"
        );
        let other = Error::Unauthorized.into_response();
        assert!(!other.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn client_errors_keep_their_code_and_message() {
        let cases = [
            (
                Error::invalid("invalid_quantity", "quantity must be positive"),
                400,
                "invalid_quantity",
            ),
            (Error::invalid_json("eof"), 400, "invalid_json"),
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
            let (got_status, body) = mapped(err).await;
            assert_eq!(
                (got_status, body["error"]["code"].as_str()),
                (status, Some(code))
            );
            assert_eq!(body["error"]["message"], message);
            assert!(body["error"].get("path").is_none(), "{body}");
        }
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail() {
        for err in [
            Error::Aws {
                service: "dynamodb",
                message: "table kami-secret-name missing".into(),
            },
            Error::Corrupt("item ORDER#x has no string sku".into()),
            Error::Crypto("card key failed authentication"),
            Error::Config("order token key is not configured".into()),
        ] {
            let (status, body) = mapped(err).await;
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
        let (status, body) = mapped(Error::Contention("transaction")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("busy_retry"))
        );
    }

    #[test]
    fn a_request_about_an_order_names_it() {
        assert_eq!(
            order_id_in_path("/orders/01KB0000000000000000000000"),
            Some("01KB0000000000000000000000")
        );
        assert_eq!(order_id_in_path("/orders/01KB/pay"), Some("01KB"));
        assert_eq!(order_id_in_path("/admin/orders/01KB/resolve"), Some("01KB"));
        assert_eq!(order_id_in_path("/orders"), None);
        assert_eq!(order_id_in_path("/admin/products/x"), None);
    }

    #[test]
    fn responses_are_json_and_never_cached() {
        let response = json_response(StatusCode::OK, &json!({"ok": true}));
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
    }

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        count: Option<i64>,
        #[allow(dead_code)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        name: String,
    }

    impl RequestBody for Sample {
        fn field_code(path: &str) -> Option<&'static str> {
            (path == "count").then_some("invalid_count")
        }
    }

    #[tokio::test]
    async fn bad_fields_are_named_by_their_path() {
        let cases = [
            (r#"{"count": "x"}"#, "invalid_count", Some("count")),
            (
                r#"{"inner": {"name": 3}}"#,
                "invalid_json",
                Some("inner.name"),
            ),
            (r#"{"inner": {}}"#, "invalid_json", Some("inner")),
            (r#"{"count": 1"#, "invalid_json", None),
            (r#"{"count": 1} trailing"#, "invalid_json", None),
            ("\"text\"", "invalid_json", None),
        ];
        for (text, code, path) in cases {
            let err = parse_json::<Sample>(text.as_bytes()).unwrap_err();
            let (status, body) = mapped(err).await;
            assert_eq!(status, 400, "{text}");
            assert_eq!(body["error"]["code"], code, "{text}");
            assert_eq!(body["error"]["path"].as_str(), path, "{text}");
        }
        assert!(parse_json::<Sample>(br#"{"count": 2}"#).is_ok());
    }
}
