//! Stripe, the first payment provider: webhook signatures and the events that mean
//! "this order is paid", turned into Kami's `PaymentEvent`.
//!
//! Scheme: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC-SHA256 of
//! `"{t}.{raw body}"` under the endpoint secret; any `v1` may match; several endpoint
//! secrets are accepted while one is being rotated.
//!
//! An event's `livemode` must match the deployment's mode (`STRIPE_LIVEMODE`, false
//! unless set): a test-mode event, signed with a leaked or shared test secret, never pays
//! a live order, nor a live one a test deployment's.
//!
//! A payment channel of provider `stripe` also calls Stripe's API with its secret key:
//! Checkout Sessions (create, retrieve, expire) and refunds, each with an
//! `Idempotency-Key`. The deployment's default endpoint (`/webhooks/stripe`, secrets from
//! Secrets Manager) only verifies: its API calls answer `Error::NotAvailable`.
//!
//! A channel's bill is its balance transactions created in the period (`GET
//! /v1/balance_transactions`, sources expanded to read the payment intent and Kami's
//! metadata), a page of 100 at a time.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::adapters::http_client::HttpClient;
use crate::adapters::secrets::RevocableSecrets;
use crate::domain::money::{Money, parse_currency};
use crate::error::{Error, Result};
use crate::ports::Clock;
use crate::ports::PortFuture;
use crate::ports::payment::{
    BillLine, BillLineKind, BillLineStatus, BillPeriod, BillSource, Notification,
    NotificationAnswer, PaymentAction, PaymentEvent, PaymentHandle, PaymentMethod, PaymentNotice,
    PaymentProvider, PaymentRequest, PaymentSession, PaymentState, RefundOutcome, RefundRequest,
};

pub const PROVIDER: &str = "stripe";
pub const SIGNATURE_HEADER: &str = "stripe-signature";
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

/// Stripe as a `PaymentProvider`: verifies webhooks under the endpoint secrets.
pub struct StripeProvider {
    /// The endpoint secrets as last read (`RevocableSecrets`): a retired one stops
    /// verifying within the refresh interval.
    webhook_secrets: Arc<RevocableSecrets>,
    tolerance_seconds: i64,
    livemode: bool,
    /// Stripe's API, for a channel (its secret key).
    api: Option<StripeApi>,
}

/// Secret fields of a `stripe` channel's config (stored sealed, shown as "<set>").
pub const SECRET_FIELDS: &[&str] = &["secret_key", "webhook_secrets"];
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// Stripe refuses a Checkout Session that expires sooner than this after its creation.
const SHORTEST_SESSION_SECONDS: i64 = 30 * 60;

/// A `stripe` channel's config, parsed and checked.
#[derive(Clone)]
pub struct StripeChannelConfig {
    secret_key: Zeroizing<String>,
    webhook_secrets: Vec<Zeroizing<String>>,
    api_base_url: String,
    success_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannelConfig {
    secret_key: Option<String>,
    webhook_secrets: Option<Vec<String>>,
    api_base_url: Option<String>,
    success_url: Option<String>,
}

fn bad_config(field: &str, message: &str) -> Error {
    Error::invalid_field(
        "invalid_channel_config",
        &format!("config.{field}"),
        format!("config.{field} {message}"),
    )
}

/// An http(s) URL without a trailing slash (a local sandbox on loopback is fine).
pub fn checked_base_url(field: &str, url: &str) -> Result<String> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "http://".len()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(bad_config(field, "must be an http(s) URL"))
    }
}

impl StripeChannelConfig {
    /// Parses a channel's `config` (secrets opened). Errors name the field
    /// (`invalid_channel_config`, `config.<field>`), never a secret.
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        let raw: RawChannelConfig = serde_json::from_value(config.clone()).map_err(|err| {
            let field = err.to_string();
            Error::invalid_field(
                "invalid_channel_config",
                "config",
                format!(
                    "config is not a stripe config: {}",
                    field.split(" at ").next().unwrap_or("")
                ),
            )
        })?;
        let secret_key = raw
            .secret_key
            .filter(|key| key.starts_with("sk_") || key.starts_with("rk_"))
            .ok_or_else(|| {
                bad_config(
                    "secret_key",
                    "must be a Stripe secret key (sk_... or rk_...)",
                )
            })?;
        let webhook_secrets = raw.webhook_secrets.unwrap_or_default();
        if webhook_secrets.is_empty()
            || webhook_secrets
                .iter()
                .any(|secret| !secret.starts_with("whsec_"))
        {
            return Err(bad_config(
                "webhook_secrets",
                "must list at least one endpoint secret (whsec_...)",
            ));
        }
        Ok(StripeChannelConfig {
            secret_key: Zeroizing::new(secret_key),
            webhook_secrets: webhook_secrets.into_iter().map(Zeroizing::new).collect(),
            api_base_url: checked_base_url(
                "api_base_url",
                raw.api_base_url.as_deref().unwrap_or(DEFAULT_API_BASE),
            )?,
            success_url: raw
                .success_url
                .map(|url| checked_base_url("success_url", &url))
                .transpose()?,
        })
    }
}

/// Stripe's API as one channel calls it.
struct StripeApi {
    secret_key: Zeroizing<String>,
    base_url: String,
    success_url: Option<String>,
    http: HttpClient,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl StripeApi {
    async fn call(
        &self,
        method: lambda_http::http::Method,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.base_url);
        let auth = format!("Bearer {}", self.secret_key.as_str());
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(key) = idempotency_key {
            headers.push(("idempotency-key", key));
        }
        let body = (!form.is_empty()).then(|| {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
            let mut encoded = form_urlencoded::Serializer::new(String::new());
            for (name, value) in form {
                encoded.append_pair(name, value);
            }
            encoded.finish().into_bytes()
        });
        let response = self
            .http
            .send(PROVIDER, method, &url, &headers, body, self.timeout)
            .await?;
        let json = serde_json::from_slice(&response.body).map_err(|_| Error::Upstream {
            system: PROVIDER,
            message: format!("answer {} is not JSON", response.status),
        })?;
        Ok((response.status, json))
    }

    fn failure(status: u16, answer: &serde_json::Value) -> Error {
        Error::Upstream {
            system: PROVIDER,
            message: format!(
                "{status}: {}",
                answer
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("no message")
            ),
        }
    }

    async fn create(&self, request: &PaymentRequest) -> Result<PaymentSession> {
        if request.method != PaymentMethod::Checkout {
            return Err(Error::invalid(
                "unsupported_payment_method",
                "Stripe channels take the checkout method",
            ));
        }
        let mut form = vec![
            ("mode", "payment".to_owned()),
            (
                "line_items[0][price_data][currency]",
                request.amount.currency.to_ascii_lowercase(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                request.amount.amount.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                request.subject.clone(),
            ),
            ("line_items[0][quantity]", "1".to_owned()),
            ("client_reference_id", request.order_id.clone()),
            ("metadata[order_id]", request.order_id.clone()),
            ("metadata[payment_id]", request.payment_id.clone()),
            (
                "payment_intent_data[metadata][order_id]",
                request.order_id.clone(),
            ),
            (
                "payment_intent_data[metadata][payment_id]",
                request.payment_id.clone(),
            ),
            ("customer_email", request.buyer_email.clone()),
        ];
        // Stripe takes a session expiry 30 minutes to 24 hours ahead: an order due
        // sooner gets Stripe's default, and the reconciler expires the session when the
        // order expires (docs/payments.md).
        let now = self.clock.now();
        if request.expires_at.unix_seconds() - now.unix_seconds() >= SHORTEST_SESSION_SECONDS + 60 {
            form.push(("expires_at", request.expires_at.unix_seconds().to_string()));
        }
        if let Some(url) = &self.success_url {
            form.push(("success_url", url.clone()));
        }
        let (status, answer) = self
            .call(
                lambda_http::http::Method::POST,
                "/v1/checkout/sessions",
                &form,
                Some(&request.payment_id),
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(Self::failure(status, &answer));
        }
        let text = |name: &str| answer.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        match (text("id"), text("url")) {
            (Some(id), Some(url)) => Ok(PaymentSession {
                provider_ref: Some(id),
                action: PaymentAction::Redirect { url },
            }),
            _ => Err(Error::Upstream {
                system: PROVIDER,
                message: "session without id or url".into(),
            }),
        }
    }

    async fn query(&self, payment: &PaymentHandle) -> Result<PaymentState> {
        let Some(session) = &payment.provider_ref else {
            return Ok(PaymentState::Unknown);
        };
        let (status, answer) = self
            .call(
                lambda_http::http::Method::GET,
                &format!("/v1/checkout/sessions/{session}"),
                &[],
                None,
            )
            .await?;
        if status == 404 {
            return Ok(PaymentState::Unknown);
        }
        if !(200..300).contains(&status) {
            return Err(Self::failure(status, &answer));
        }
        let text = |name: &str| answer.get(name).and_then(|v| v.as_str());
        Ok(match (text("payment_status"), text("status")) {
            (Some("paid"), _) => {
                let amount = answer.get("amount_total").and_then(|v| v.as_i64());
                let currency = text("currency").and_then(|c| parse_currency(c).ok());
                match (amount, currency, text("payment_intent")) {
                    (Some(amount), Some(currency), Some(intent)) => PaymentState::Paid {
                        amount: Money { amount, currency },
                        provider_ref: intent.to_owned(),
                    },
                    _ => {
                        return Err(Error::Upstream {
                            system: PROVIDER,
                            message: "paid session without amount, currency or intent".into(),
                        });
                    }
                }
            }
            (_, Some("expired")) => PaymentState::Closed,
            _ => PaymentState::AwaitingPayment,
        })
    }

    async fn close(&self, payment: &PaymentHandle) -> Result<()> {
        let Some(session) = &payment.provider_ref else {
            return Ok(());
        };
        let (status, answer) = self
            .call(
                lambda_http::http::Method::POST,
                &format!("/v1/checkout/sessions/{session}/expire"),
                &[],
                Some(&format!("expire-{}", payment.payment_id)),
            )
            .await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        // Already expired is closed; already paid is not.
        match self.query(payment).await? {
            PaymentState::Closed | PaymentState::Unknown => Ok(()),
            _ => Err(Self::failure(status, &answer)),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundOutcome> {
        let Some(intent) = &request.payment.provider_ref else {
            return Ok(RefundOutcome::Refused {
                reason: "no Stripe payment to refund".into(),
            });
        };
        let form = [
            ("payment_intent", intent.clone()),
            ("amount", request.amount.amount.to_string()),
            ("metadata[refund_id]", request.refund_id.clone()),
        ];
        let (status, answer) = self
            .call(
                lambda_http::http::Method::POST,
                "/v1/refunds",
                &form,
                Some(&request.refund_id),
            )
            .await?;
        if !(200..300).contains(&status) {
            return Ok(RefundOutcome::Refused {
                reason: answer
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("refused")
                    .to_owned(),
            });
        }
        Ok(match answer.get("status").and_then(|s| s.as_str()) {
            Some("succeeded") => RefundOutcome::Refunded,
            Some("pending" | "requires_action") => RefundOutcome::Pending,
            other => RefundOutcome::Refused {
                reason: format!("refund {}", other.unwrap_or("without status")),
            },
        })
    }
}

/// Balance transactions asked per page (Stripe's largest).
const BILL_PAGE: &str = "100";
/// Pages read at most for one bill: 100,000 transactions a day per channel.
const BILL_PAGES: usize = 1000;

impl StripeApi {
    /// Every balance transaction created in `period` that is a payment or a refund.
    async fn bill(&self, period: &BillPeriod) -> Result<Vec<BillLine>> {
        let mut lines = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..BILL_PAGES {
            // Built apart: the serializer is not `Send`, and must not live across an await.
            let path = {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query
                    .append_pair("created[gte]", &period.start.unix_seconds().to_string())
                    .append_pair("created[lt]", &period.end.unix_seconds().to_string())
                    .append_pair("limit", BILL_PAGE)
                    .append_pair("expand[]", "data.source");
                if let Some(last) = &after {
                    query.append_pair("starting_after", last);
                }
                format!("/v1/balance_transactions?{}", query.finish())
            };
            let (status, answer) = self
                .call(lambda_http::http::Method::GET, &path, &[], None)
                .await?;
            if !(200..300).contains(&status) {
                return Err(Self::failure(status, &answer));
            }
            let page = bill_page(&answer)?;
            lines.extend(page.lines);
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => return Ok(lines),
            }
        }
        Err(Error::Upstream {
            system: PROVIDER,
            message: "the bill has more pages than Kami reads".into(),
        })
    }
}

/// One page of `GET /v1/balance_transactions`, read.
#[derive(Debug)]
pub struct BillPage {
    pub lines: Vec<BillLine>,
    pub has_more: bool,
    /// The page's last transaction: where the next page starts (`starting_after`).
    pub last_id: Option<String>,
}

fn bill_failure(message: &str) -> Error {
    Error::Upstream {
        system: PROVIDER,
        message: format!("balance transaction {message}"),
    }
}

/// Reads a page of balance transactions (sources expanded). Fees, payouts and the like
/// are not payments or refunds and are left out.
pub fn bill_page(answer: &serde_json::Value) -> Result<BillPage> {
    let data = answer
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| bill_failure("list without data"))?;
    let mut lines = Vec::new();
    for txn in data {
        let text = |pointer: &str| txn.pointer(pointer).and_then(|v| v.as_str());
        let kind = match text("/type") {
            Some("charge" | "payment") => BillLineKind::Payment,
            Some("refund" | "payment_refund" | "refund_failure" | "payment_failure_refund") => {
                BillLineKind::Refund
            }
            _ => continue,
        };
        let amount = txn
            .get("amount")
            .and_then(|a| a.as_i64())
            .ok_or_else(|| bill_failure("without amount"))?;
        let currency = parse_currency(text("/currency").unwrap_or_default())
            .map_err(|_| bill_failure("without a currency"))?;
        // An unexpanded source is only its id; an expanded one names the intent.
        let source_id = text("/source").or_else(|| text("/source/id"));
        let provider_ref = text("/source/payment_intent")
            .or(source_id)
            .ok_or_else(|| bill_failure("without a source"))?
            .to_owned();
        let provider_ref = Some(provider_ref);
        let status = match (kind, text("/type"), text("/source/status")) {
            (_, Some("refund_failure" | "payment_failure_refund"), _) => BillLineStatus::Failed,
            (BillLineKind::Refund, _, Some("pending" | "requires_action")) => {
                BillLineStatus::Pending
            }
            (BillLineKind::Refund, _, Some("failed" | "canceled")) => BillLineStatus::Failed,
            // A balance transaction is money that moved (pending only means not yet
            // available for payout).
            _ => BillLineStatus::Succeeded,
        };
        lines.push(BillLine {
            kind,
            provider_ref,
            payment_id: text("/source/metadata/payment_id").map(str::to_owned),
            refund_id: match kind {
                BillLineKind::Refund => text("/source/metadata/refund_id").map(str::to_owned),
                BillLineKind::Payment => None,
            },
            amount: Money {
                amount: amount.abs(),
                currency,
            },
            status,
        });
    }
    Ok(BillPage {
        lines,
        has_more: answer
            .get("has_more")
            .and_then(|m| m.as_bool())
            .unwrap_or(false),
        last_id: data
            .last()
            .and_then(|txn| txn.get("id"))
            .and_then(|id| id.as_str())
            .map(str::to_owned),
    })
}

impl StripeProvider {
    /// A test-mode provider (`with_livemode(true)` for live events).
    pub fn new(webhook_secrets: Arc<RevocableSecrets>) -> Self {
        StripeProvider {
            webhook_secrets,
            tolerance_seconds: DEFAULT_TOLERANCE_SECONDS,
            livemode: false,
            api: None,
        }
    }

    /// A channel's provider: its own endpoint secrets, and Stripe's API with its key.
    pub fn for_channel(
        config: StripeChannelConfig,
        http: HttpClient,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        livemode: bool,
    ) -> Self {
        let secrets = RevocableSecrets::fixed(crate::adapters::secrets::Revocable {
            stripe_webhook_secrets: config.webhook_secrets,
            ..Default::default()
        });
        StripeProvider {
            api: Some(StripeApi {
                secret_key: config.secret_key,
                base_url: config.api_base_url,
                success_url: config.success_url,
                http,
                timeout,
                clock,
            }),
            ..Self::new(secrets).with_livemode(livemode)
        }
    }

    fn api(&self, operation: &'static str) -> Result<&StripeApi> {
        self.api.as_ref().ok_or(Error::NotAvailable {
            system: PROVIDER,
            operation,
        })
    }

    /// A provider whose endpoint secrets never change (tests).
    #[cfg(any(test, feature = "fakes"))]
    pub fn with_fixed_secrets(webhook_secrets: Vec<zeroize::Zeroizing<String>>) -> Self {
        Self::new(RevocableSecrets::fixed(
            crate::adapters::secrets::Revocable {
                stripe_webhook_secrets: webhook_secrets,
                ..Default::default()
            },
        ))
    }

    /// Accept only events whose `livemode` is `livemode` (the deployment's mode).
    pub fn with_livemode(mut self, livemode: bool) -> Self {
        self.livemode = livemode;
        self
    }

    fn verify(&self, notification: &Notification<'_>) -> Result<PaymentEvent> {
        let header = notification
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::InvalidSignature("missing Stripe-Signature header"))?;
        verify_signature(
            header,
            notification.body,
            &self.webhook_secrets.current().stripe_webhook_secrets,
            notification.received_at.unix_seconds(),
            self.tolerance_seconds,
        )?;
        check_mode(notification.body, self.livemode)?;
        parse_event(notification.body)
    }
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StripeProvider(<redacted>)")
    }
}

impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession> {
        Box::pin(async move { self.api("create_payment")?.create(request).await })
    }

    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent> {
        Box::pin(async move { self.verify(notification) })
    }

    fn notification_answer(&self, outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
        json_answer(outcome)
    }

    fn query_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, PaymentState> {
        Box::pin(async move { self.api("query_payment")?.query(payment).await })
    }

    fn close_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, ()> {
        Box::pin(async move { self.api("close_payment")?.close(payment).await })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> PortFuture<'a, RefundOutcome> {
        Box::pin(async move { self.api("refund")?.refund(request).await })
    }
}

impl BillSource for StripeProvider {
    fn fetch_bill<'a>(&'a self, period: &'a BillPeriod) -> PortFuture<'a, Vec<BillLine>> {
        Box::pin(async move { self.api("fetch_bill")?.bill(period).await })
    }
}

/// Stripe's answer: 200 `{"received": true}` once recorded, else the JSON error shape
/// with the error's status (the same `ErrorBody` as every API error).
pub fn json_answer(outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
    match outcome {
        Ok(()) => NotificationAnswer {
            status: 200,
            content_type: "application/json",
            body: br#"{"received":true}"#.to_vec(),
        },
        Err(err) => NotificationAnswer {
            status: 400,
            content_type: "application/json",
            body: serde_json::json!({"error": {"code": "invalid_signature", "message": err.to_string()}})
                .to_string()
                .into_bytes(),
        },
    }
}

/// Verifies the raw body against the header. `now` is Unix seconds.
pub fn verify_signature<S: AsRef<str>>(
    header: &str,
    raw_body: &[u8],
    secrets: &[S],
    now: i64,
    tolerance_seconds: i64,
) -> Result<()> {
    let secrets: Vec<&str> = secrets
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| !s.trim().is_empty())
        .collect();
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) => {
                if timestamp.is_some() {
                    return Err(Error::InvalidSignature("header has several timestamps"));
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| Error::InvalidSignature("timestamp is not a number"))?,
                );
            }
            Some(("v1", value)) => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Error::InvalidSignature("header has no timestamp"))?;
    if signatures.is_empty() {
        return Err(Error::InvalidSignature("header has no v1 signature"));
    }
    if now.abs_diff(timestamp) > tolerance_seconds.unsigned_abs() {
        return Err(Error::InvalidSignature("timestamp outside the tolerance"));
    }
    if secrets.is_empty() {
        // An empty secret would make every signature "valid": refuse everything. The
        // caller hears what a forgery hears (it must not learn that no secret is set);
        // the operator reads it in the log.
        tracing::error!("no Stripe endpoint secret is configured; refusing every webhook");
        return Err(Error::InvalidSignature(NO_MATCH));
    }
    let prefix = format!("{timestamp}.");
    for secret in secrets {
        for signature in &signatures {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|_| Error::InvalidSignature("unusable endpoint secret"))?;
            mac.update(prefix.as_bytes());
            mac.update(raw_body);
            // verify_slice compares in constant time.
            if mac.verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(Error::InvalidSignature(NO_MATCH))
}

const NO_MATCH: &str = "no signature matches";

#[derive(Deserialize)]
struct RawMode {
    #[serde(default)]
    livemode: Option<bool>,
}

/// Refuses a verified event of the other mode (live against test or the reverse). An
/// event without `livemode` counts as a test event: a live deployment refuses it.
pub fn check_mode(raw_body: &[u8], deployment_livemode: bool) -> Result<()> {
    let mode: RawMode = serde_json::from_slice(raw_body).map_err(Error::invalid_json)?;
    let event_livemode = mode.livemode.unwrap_or(false);
    if event_livemode == deployment_livemode {
        return Ok(());
    }
    tracing::warn!(
        event_livemode,
        deployment_livemode,
        "Stripe event of the other mode refused"
    );
    Err(Error::InvalidRequest {
        code: "livemode_mismatch",
        message: "the event's livemode does not match this endpoint".into(),
        path: Some("livemode".into()),
    })
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: serde_json::Value,
}

/// What a verified event body means to Kami.
pub fn parse_event(raw_body: &[u8]) -> Result<PaymentEvent> {
    let event: RawEvent = serde_json::from_slice(raw_body).map_err(Error::invalid_json)?;
    let object = &event.data.object;
    let text = |pointer: &str| object.pointer(pointer).and_then(|v| v.as_str());
    let (order_id, amount, provider_ref) = match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            // Only a paid session is money; a delayed payment method completes later.
            if text("/payment_status") != Some("paid") {
                return Ok(PaymentEvent::Ignored {
                    event_id: event.id,
                    kind: event.kind,
                });
            }
            (
                text("/client_reference_id").or_else(|| text("/metadata/order_id")),
                object.get("amount_total").and_then(|v| v.as_i64()),
                text("/payment_intent").or_else(|| text("/id")),
            )
        }
        // Checkout's own PaymentIntents carry no order id: the session event binds them.
        "payment_intent.succeeded" if text("/metadata/order_id").is_none() => {
            return Ok(PaymentEvent::Ignored {
                event_id: event.id,
                kind: event.kind,
            });
        }
        "payment_intent.succeeded" => (
            text("/metadata/order_id"),
            object.get("amount_received").and_then(|v| v.as_i64()),
            text("/id"),
        ),
        _ => {
            return Ok(PaymentEvent::Ignored {
                event_id: event.id,
                kind: event.kind,
            });
        }
    };
    let currency = text("/currency").and_then(|c| parse_currency(c).ok());
    let (order_id, amount, currency, provider_ref) =
        match (order_id, amount, currency, provider_ref) {
            (Some(o), Some(a), Some(c), Some(r)) => (o, a, c, r),
            (o, a, c, _) => {
                let missing = if o.is_none() {
                    "order id"
                } else if a.is_none() {
                    "amount"
                } else if c.is_none() {
                    "currency"
                } else {
                    "payment reference"
                };
                return Ok(PaymentEvent::Unbound {
                    event_id: event.id,
                    kind: event.kind,
                    missing,
                });
            }
        };
    Ok(PaymentEvent::Paid(PaymentNotice {
        provider: PROVIDER,
        payment_id: text("/metadata/payment_id").map(str::to_owned),
        order_id: Some(order_id.to_owned()),
        amount: Money { amount, currency },
        provider_ref: provider_ref.to_owned(),
        event_id: event.id,
    }))
}

/// The `Stripe-Signature` header Stripe sends with `body` at `timestamp` (tests).
#[cfg(any(test, feature = "fakes"))]
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let signature = crate::domain::crypto::hmac_sha256_hex(secret.as_bytes(), &message)?;
    Ok(format!("t={timestamp},v1={signature}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn header(secret: &str, t: i64, body: &[u8]) -> String {
        signature_header(secret, t, body).unwrap()
    }

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_a_correct_signature() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header("whsec_a", NOW, body);
        verify_signature(&h, body, &secrets(&["whsec_a"]), NOW, 300).unwrap();
    }

    #[test]
    fn any_v1_and_any_rotated_secret_may_match() {
        let body = b"{}";
        let good = header("whsec_new", NOW, body);
        let sig = good.split("v1=").nth(1).unwrap();
        let h = format!("t={NOW},v1={},v1={sig}", "00".repeat(32));
        verify_signature(&h, body, &secrets(&["whsec_old", "whsec_new"]), NOW, 300).unwrap();
    }

    #[test]
    fn refuses_forged_stale_future_resigned_and_tampered() {
        let body = br#"{"id":"evt_1"}"#;
        let s = secrets(&["whsec_a"]);
        let cases = [
            header("whsec_other", NOW, body),
            header("whsec_a", NOW - 301, body),
            header("whsec_a", NOW + 301, body),
            format!("t={NOW}"),
            "v1=abcd".to_owned(),
            String::new(),
            format!("t={NOW},t={NOW},v1=00"),
        ];
        for h in cases {
            assert!(verify_signature(&h, body, &s, NOW, 300).is_err(), "{h}");
        }
        let h = header("whsec_a", NOW, body);
        assert!(verify_signature(&h, br#"{"id":"evt_2"}"#, &s, NOW, 300).is_err());
    }

    #[test]
    fn an_empty_secret_verifies_nothing() {
        let body = b"{}";
        let h = header("", NOW, body);
        assert!(verify_signature(&h, body, &secrets(&[""]), NOW, 300).is_err());
        assert!(verify_signature::<String>(&h, body, &[], NOW, 300).is_err());
    }

    #[test]
    fn parses_checkout_session_and_payment_intent() {
        let session = serde_json::json!({"id": "evt_1", "type": "checkout.session.completed",
            "data": {"object": {"id": "cs_1", "client_reference_id": "01ORDER", "amount_total": 990,
            "currency": "cny", "payment_intent": "pi_1", "payment_status": "paid"}}});
        assert_eq!(
            parse_event(session.to_string().as_bytes()).unwrap(),
            PaymentEvent::Paid(PaymentNotice {
                provider: "stripe",
                event_id: "evt_1".into(),
                payment_id: None,
                order_id: Some("01ORDER".into()),
                amount: Money {
                    amount: 990,
                    currency: "CNY".into(),
                },
                provider_ref: "pi_1".into(),
            })
        );
        let intent = serde_json::json!({"id": "evt_2", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_2", "metadata": {"order_id": "01ORDER"},
            "amount_received": 1980, "currency": "usd"}}});
        match parse_event(intent.to_string().as_bytes()).unwrap() {
            PaymentEvent::Paid(notice) => {
                assert_eq!(
                    (notice.amount.amount, notice.amount.currency.as_str()),
                    (1980, "USD")
                );
                assert_eq!(notice.provider_ref, "pi_2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payment_events_without_an_order_are_unbound_not_errors() {
        let body = serde_json::json!({"id": "evt_5", "type": "checkout.session.completed",
            "data": {"object": {"payment_status": "paid", "amount_total": 5, "currency": "cny", "id": "cs_5"}}});
        assert!(matches!(
            parse_event(body.to_string().as_bytes()).unwrap(),
            PaymentEvent::Unbound {
                missing: "order id",
                ..
            }
        ));
        let no_amount = serde_json::json!({"id": "evt_6", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_6", "metadata": {"order_id": "01X"}, "currency": "cny"}}});
        assert!(matches!(
            parse_event(no_amount.to_string().as_bytes()).unwrap(),
            PaymentEvent::Unbound {
                missing: "amount",
                ..
            }
        ));
    }

    fn notification_at<'a>(
        headers: &'a lambda_http::http::HeaderMap,
        body: &'a [u8],
        clock: &crate::fakes::FakeClock,
    ) -> Notification<'a> {
        use crate::ports::Clock;
        Notification {
            headers,
            body,
            received_at: clock.now(),
        }
    }

    fn signed(secret: &str, t: i64, body: &[u8]) -> lambda_http::http::HeaderMap {
        let mut headers = lambda_http::http::HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            lambda_http::http::HeaderValue::from_str(&header(secret, t, body)).unwrap(),
        );
        headers
    }

    fn paid_session(livemode: Option<bool>) -> Vec<u8> {
        let mut event = serde_json::json!({"id": "evt_m", "type": "checkout.session.completed",
            "data": {"object": {"id": "cs_m", "client_reference_id": "01ORDER",
            "amount_total": 990, "currency": "cny", "payment_intent": "pi_m",
            "payment_status": "paid"}}});
        if let Some(mode) = livemode {
            event["livemode"] = serde_json::json!(mode);
        }
        event.to_string().into_bytes()
    }

    #[tokio::test]
    async fn an_event_of_the_other_mode_is_refused() {
        let clock = crate::fakes::FakeClock::default();
        let t = crate::ports::Clock::now(&clock).unix_seconds();
        let secret = "whsec_mode_test_secret_000000000000000";
        let test_mode = StripeProvider::with_fixed_secrets(vec![secret.to_owned().into()]);
        let live_mode =
            StripeProvider::with_fixed_secrets(vec![secret.to_owned().into()]).with_livemode(true);
        for (provider, livemode, accepted) in [
            (&test_mode, Some(false), true),
            (&test_mode, None, true),
            (&test_mode, Some(true), false),
            (&live_mode, Some(true), true),
            (&live_mode, Some(false), false),
            (&live_mode, None, false),
        ] {
            let body = paid_session(livemode);
            let headers = signed(secret, t, &body);
            let answer = provider
                .verify_notification(&notification_at(&headers, &body, &clock))
                .await;
            match (accepted, answer) {
                (true, Ok(PaymentEvent::Paid(_))) => {}
                (
                    false,
                    Err(Error::InvalidRequest {
                        code: "livemode_mismatch",
                        ..
                    }),
                ) => {}
                (_, other) => panic!("live {:?} event {livemode:?}: {other:?}", provider.livemode),
            }
        }
    }

    #[tokio::test]
    async fn an_unsigned_caller_hears_the_same_whether_or_not_a_secret_is_set() {
        let clock = crate::fakes::FakeClock::default();
        let t = crate::ports::Clock::now(&clock).unix_seconds();
        let configured = StripeProvider::with_fixed_secrets(vec![
            "whsec_configured_000000000000000000".to_owned().into(),
        ]);
        let unconfigured = StripeProvider::with_fixed_secrets(Vec::new());
        let body = paid_session(Some(false));
        for headers in [
            signed("whsec_guessed", t, &body),
            signed("whsec_guessed", t - 10_000, &body),
            lambda_http::http::HeaderMap::new(),
        ] {
            let notification = notification_at(&headers, &body, &clock);
            let with = configured.verify_notification(&notification).await;
            let without = unconfigured.verify_notification(&notification).await;
            let (Err(with), Err(without)) = (with, without) else {
                panic!("a forged webhook was accepted");
            };
            assert!(matches!(with, Error::InvalidSignature(_)));
            assert_eq!(with.to_string(), without.to_string());
            assert!(!without.to_string().contains("configured"), "{without}");
        }
    }

    #[test]
    fn extreme_timestamps_are_refused_not_panics() {
        let body = b"{}";
        for t in [i64::MIN, i64::MAX] {
            let h = format!("t={t},v1={}", "00".repeat(32));
            assert!(verify_signature(&h, body, &secrets(&["whsec_a"]), NOW, 300).is_err());
        }
    }

    #[test]
    fn other_events_and_unpaid_sessions_are_ignored() {
        for body in [
            serde_json::json!({"id": "evt_3", "type": "charge.refunded", "data": {"object": {}}}),
            serde_json::json!({"id": "evt_4", "type": "checkout.session.completed",
                "data": {"object": {"payment_status": "unpaid", "client_reference_id": "x"}}}),
            serde_json::json!({"id": "evt_7", "type": "checkout.session.completed",
                "data": {"object": {"client_reference_id": "x", "amount_total": 5}}}),
            serde_json::json!({"id": "evt_8", "type": "payment_intent.succeeded",
                "data": {"object": {"id": "pi_8", "amount_received": 5, "currency": "cny"}}}),
        ] {
            assert!(matches!(
                parse_event(body.to_string().as_bytes()).unwrap(),
                PaymentEvent::Ignored { .. }
            ));
        }
    }

    /// GIVEN a page of balance transactions as Stripe lists them (sources expanded)
    /// WHEN read THEN charges and refunds become bill lines naming the payment intent
    /// and Kami's ids, amounts positive in minor units; fees and payouts are left out.
    #[test]
    fn reads_a_page_of_balance_transactions() {
        let answer = serde_json::json!({"object": "list", "has_more": true, "data": [
            {"id": "txn_1", "type": "charge", "amount": 990, "currency": "cny", "status": "available",
             "source": {"id": "ch_1", "object": "charge", "payment_intent": "pi_1",
                        "metadata": {"order_id": "01ORDER", "payment_id": "01ORDERABCD"}}},
            {"id": "txn_2", "type": "refund", "amount": -500, "currency": "cny", "status": "pending",
             "source": {"id": "re_1", "object": "refund", "payment_intent": "pi_1", "status": "succeeded",
                        "metadata": {"refund_id": "01ORDERRWXYZ"}}},
            {"id": "txn_3", "type": "stripe_fee", "amount": -30, "currency": "cny", "source": null},
            {"id": "txn_4", "type": "refund", "amount": -100, "currency": "usd",
             "source": {"id": "re_2", "object": "refund", "payment_intent": "pi_2", "status": "pending",
                        "metadata": {}}},
            {"id": "txn_5", "type": "payout", "amount": -1000, "currency": "cny", "source": "po_1"}]});
        let page = bill_page(&answer).unwrap();
        assert!(page.has_more);
        assert_eq!(page.last_id.as_deref(), Some("txn_5"));
        assert_eq!(
            page.lines,
            vec![
                BillLine {
                    kind: BillLineKind::Payment,
                    provider_ref: Some("pi_1".into()),
                    payment_id: Some("01ORDERABCD".into()),
                    refund_id: None,
                    amount: Money {
                        amount: 990,
                        currency: "CNY".into()
                    },
                    status: BillLineStatus::Succeeded,
                },
                BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: Some("pi_1".into()),
                    payment_id: None,
                    refund_id: Some("01ORDERRWXYZ".into()),
                    amount: Money {
                        amount: 500,
                        currency: "CNY".into()
                    },
                    status: BillLineStatus::Succeeded,
                },
                BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: Some("pi_2".into()),
                    payment_id: None,
                    refund_id: None,
                    amount: Money {
                        amount: 100,
                        currency: "USD".into()
                    },
                    status: BillLineStatus::Pending,
                },
            ]
        );
        let broken = serde_json::json!({"data": [{"id": "txn_9", "type": "charge", "currency": "cny", "source": "ch_9"}]});
        assert!(matches!(bill_page(&broken), Err(Error::Upstream { .. })));
    }
}
