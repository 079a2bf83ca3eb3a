//! Alipay (支付宝) open platform as a `PaymentProvider`: public-key mode, RSA2
//! (SHA256withRSA), JSON, UTF-8 (docs/payments-alipay.md).
//!
//! Requests: the common parameters and `biz_content`, empty values left out, sorted by
//! key, joined `k=v&k=v` with raw values, signed with the app's private key; the values
//! are then url-encoded as python-alipay-sdk does (`quote_plus`), `sign` last, so a
//! request is byte for byte what that SDK builds. A payment is a redirect to the gateway
//! with that query (no call); query, close and refund POST it as a form and verify the
//! answer's signature over the raw text of its `..._response` member.
//!
//! Notifications: a form body; every parameter but `sign` and `sign_type`, sorted and
//! joined the same way, verified against any of the channel's Alipay public keys; then
//! the channel's `app_id` (and `seller_id` when configured) must match.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use serde_json::{Map, Value};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::{format_description, offset};
use zeroize::Zeroizing;

use crate::adapters::http_client::HttpClient;
use crate::domain::money::Money;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::payment::{
    Notification, NotificationAnswer, PaymentAction, PaymentEvent, PaymentHandle, PaymentMethod,
    PaymentNotice, PaymentProvider, PaymentRequest, PaymentSession, PaymentState, RefundOutcome,
    RefundRequest,
};
use crate::ports::{Clock, PortFuture};

pub const PROVIDER: &str = "alipay";
/// Secret fields of the channel config (stored sealed, shown as "<set>").
pub const SECRET_FIELDS: &[&str] = &["app_private_key"];
pub const DEFAULT_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";

/// Alipay amounts are yuan; Kami's are fen of this currency.
const CURRENCY: &str = "CNY";
/// RSA2 keys are 2048 bits (256 bytes) or more.
const MIN_KEY_BYTES: usize = 256;
/// `subject` is at most 256 characters at Alipay.
const MAX_SUBJECT_CHARS: usize = 256;
const FIELDS: &[&str] = &[
    "app_id",
    "seller_id",
    "app_private_key",
    "alipay_public_keys",
    "gateway_url",
];
const CONFIG_CODE: &str = "invalid_channel_config";
const NO_MATCH: &str = "no signature matches";

/// `timestamp` and page-pay's `time_expire`.
const SECONDS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
/// Wap-pay's `time_expire` (its documented format has no seconds).
const MINUTES: &[FormatItem<'static>] = format_description!("[year]-[month]-[day] [hour]:[minute]");

type AppKey = SigningKey<Sha256>;
type AlipayKey = VerifyingKey<Sha256>;

/// A channel's Alipay account: checked once, keys parsed once.
#[derive(Clone)]
pub struct AlipayConfig {
    pub app_id: String,
    /// The seller's Alipay user id (`2088...`): when set, a notification must name it.
    pub seller_id: Option<String>,
    /// One parsed copy behind an `Arc`; `rsa::PrivateKey` zeroizes itself on drop.
    app_private_key: Arc<AppKey>,
    /// Any of them verifies (several while Alipay's key is rotated).
    alipay_public_keys: Vec<AlipayKey>,
    pub gateway_url: String,
}

impl std::fmt::Debug for AlipayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlipayConfig")
            .field("app_id", &self.app_id)
            .field("seller_id", &self.seller_id)
            .field("app_private_key", &"<redacted>")
            .field("alipay_public_keys", &self.alipay_public_keys.len())
            .field("gateway_url", &self.gateway_url)
            .finish()
    }
}

fn config_error(field: &str, message: &str) -> Error {
    Error::invalid_field(CONFIG_CODE, &format!("config.{field}"), message)
}

impl AlipayConfig {
    /// Parses and checks a channel's `config` JSON (secrets included, opened). Errors:
    /// `Error::invalid_field("invalid_channel_config", "config.<field>", message)`; the
    /// message never contains a key.
    ///
    /// Fields: `app_id`; `seller_id` (optional); `app_private_key` (PKCS#8 `PRIVATE KEY`
    /// or PKCS#1 `RSA PRIVATE KEY` PEM, or the bare base64 Alipay's key tool prints);
    /// `alipay_public_keys` (non-empty list of SPKI `PUBLIC KEY` PEM or bare base64);
    /// `gateway_url` (optional, http(s), default `DEFAULT_GATEWAY`).
    pub fn from_json(config: &Value) -> Result<Self> {
        let object = config
            .as_object()
            .ok_or_else(|| Error::invalid_field(CONFIG_CODE, "config", "must be an object"))?;
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(config_error(unknown, "unknown field"));
        }
        let app_id = match object.get("app_id") {
            Some(Value::String(id)) => account_id(id, 32).ok_or_else(|| {
                config_error("app_id", "must be 1 to 32 ASCII letters or digits")
            })?,
            _ => return Err(config_error("app_id", "is required (a string)")),
        };
        let seller_id = match object.get("seller_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(account_id(id, 28).ok_or_else(|| {
                config_error("seller_id", "must be 1 to 28 ASCII letters or digits")
            })?),
            Some(_) => return Err(config_error("seller_id", "must be a string")),
        };
        let app_private_key = match object.get("app_private_key") {
            Some(Value::String(text)) => parse_private_key(text)
                .map_err(|message| config_error("app_private_key", message))?,
            _ => return Err(config_error("app_private_key", "is required (a string)")),
        };
        let alipay_public_keys = match object.get("alipay_public_keys") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = format!("alipay_public_keys[{i}]");
                    let text = item
                        .as_str()
                        .ok_or_else(|| config_error(&field, "must be a string"))?;
                    parse_public_key(text).map_err(|message| config_error(&field, message))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(config_error(
                    "alipay_public_keys",
                    "is required: a non-empty list of Alipay public keys",
                ));
            }
        };
        let gateway_url = match object.get("gateway_url") {
            None | Some(Value::Null) => DEFAULT_GATEWAY.to_owned(),
            Some(Value::String(url)) => gateway(url).ok_or_else(|| {
                config_error(
                    "gateway_url",
                    "must be an http(s) URL with a host and no query, fragment or credentials",
                )
            })?,
            Some(_) => return Err(config_error("gateway_url", "must be a string")),
        };
        Ok(AlipayConfig {
            app_id,
            seller_id,
            app_private_key: Arc::new(AppKey::new(app_private_key)),
            alipay_public_keys: alipay_public_keys.into_iter().map(AlipayKey::new).collect(),
            gateway_url,
        })
    }
}

/// An app id or a seller id: ASCII letters and digits only, so it needs no escaping in a
/// string to sign.
fn account_id(id: &str, max: usize) -> Option<String> {
    (!id.is_empty() && id.len() <= max && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_owned())
}

fn gateway(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url.trim()).ok()?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.host_str().is_some_and(|h| !h.is_empty())
        && parsed.query().is_none()
        && parsed.fragment().is_none()
        && parsed.username().is_empty()
        && parsed.password().is_none();
    plain.then(|| parsed.to_string())
}

const PRIVATE_KEY_FORMAT: &str = "must be an RSA private key: PKCS#8 (BEGIN PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY) PEM, or its base64 body";
const PUBLIC_KEY_FORMAT: &str =
    "must be an RSA public key: SPKI (BEGIN PUBLIC KEY) PEM, or its base64 body";
const KEY_TOO_SHORT: &str = "must be an RSA key of at least 2048 bits (RSA2)";

/// The base64 body of a key pasted without its PEM lines (line breaks allowed).
fn bare_der(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let compact: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
    STANDARD.decode(compact.as_bytes()).ok().map(Zeroizing::new)
}

fn parse_private_key(text: &str) -> std::result::Result<PrivateKey, &'static str> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN PRIVATE KEY-----") {
        PrivateKey::from_pkcs8_pem(text).ok()
    } else if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        PrivateKey::from_pkcs1_pem(text).ok()
    } else if text.starts_with("-----") {
        // An encrypted key or another kind of PEM.
        None
    } else {
        bare_der(text).and_then(|der| {
            PrivateKey::from_pkcs8_der(&der)
                .or_else(|_| PrivateKey::from_pkcs1_der(&der))
                .ok()
        })
    };
    let key = key.ok_or(PRIVATE_KEY_FORMAT)?;
    if key.size() < MIN_KEY_BYTES {
        return Err(KEY_TOO_SHORT);
    }
    Ok(key)
}

fn parse_public_key(text: &str) -> std::result::Result<PublicKey, &'static str> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        PublicKey::from_public_key_pem(text).ok()
    } else if text.starts_with("-----") {
        None
    } else {
        bare_der(text).and_then(|der| PublicKey::from_public_key_der(&der).ok())
    };
    let key = key.ok_or(PUBLIC_KEY_FORMAT)?;
    if key.size() < MIN_KEY_BYTES {
        return Err(KEY_TOO_SHORT);
    }
    Ok(key)
}

/// Alipay as a `PaymentProvider` for one channel.
pub struct AlipayProvider {
    config: AlipayConfig,
    http: HttpClient,
    timeout: Duration,
    /// The request `timestamp` is the current time (Alipay refuses stale requests).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AlipayProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlipayProvider")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One request parameter: its name and its raw (not url-encoded) value.
type Param = (&'static str, String);

impl AlipayProvider {
    pub fn new(
        config: AlipayConfig,
        http: HttpClient,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AlipayProvider {
            config,
            http,
            timeout,
            clock,
        }
    }

    /// The common parameters of a request to `method`, `biz_content` included.
    fn request_params(
        &self,
        method: &'static str,
        biz_content: String,
        notify_url: Option<&str>,
    ) -> Result<Vec<Param>> {
        let mut params = vec![
            ("app_id", self.config.app_id.clone()),
            ("method", method.to_owned()),
            ("format", "JSON".to_owned()),
            ("charset", "utf-8".to_owned()),
            ("sign_type", "RSA2".to_owned()),
            ("timestamp", beijing(self.clock.now(), SECONDS)?),
            ("version", "1.0".to_owned()),
            ("biz_content", biz_content),
        ];
        if let Some(url) = notify_url {
            params.push(("notify_url", url.to_owned()));
        }
        Ok(params)
    }

    /// The parameters of a page or wap payment.
    fn payment_params(&self, request: &PaymentRequest) -> Result<Vec<Param>> {
        let (method, product_code, deadline_format) = match request.method {
            PaymentMethod::Page => ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY", SECONDS),
            PaymentMethod::Wap => ("alipay.trade.wap.pay", "QUICK_WAP_WAY", MINUTES),
            other => {
                return Err(Error::invalid(
                    "unsupported_payment_method",
                    format!("Alipay does not offer the {} method", other.as_str()),
                ));
            }
        };
        let total_amount = yuan(&request.amount)?;
        let subject: String = request.subject.chars().take(MAX_SUBJECT_CHARS).collect();
        // Truncated down to the second (or minute): Alipay stops taking money no later
        // than the order's deadline.
        let time_expire = beijing(request.expires_at, deadline_format)?;
        let biz_content = json_object(&[
            ("out_trade_no", &request.payment_id),
            ("total_amount", &total_amount),
            ("subject", &subject),
            ("product_code", product_code),
            ("time_expire", &time_expire),
        ]);
        self.request_params(method, biz_content, Some(&request.notify_url))
    }

    /// The url-encoded signed request: the sorted parameters, then `sign`.
    fn signed_query(&self, params: &[Param]) -> Result<String> {
        let sorted = sorted_params(params);
        let signature = self
            .config
            .app_private_key
            .try_sign(join_raw(&sorted).as_bytes())
            .map_err(|_| Error::Config("the Alipay app private key cannot sign".into()))?;
        let mut query = sorted
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_plus(v)))
            .collect::<Vec<_>>()
            .join("&");
        query.push_str("&sign=");
        query.push_str(&quote_plus(&STANDARD.encode(signature.to_bytes())));
        Ok(query)
    }

    /// One call to the gateway: POSTs the signed form and returns the verified
    /// `..._response` (or `error_response`) member of the answer.
    async fn call(&self, method: &'static str, biz_content: String) -> Result<Answer> {
        let params = self.request_params(method, biz_content, None)?;
        let body = self.signed_query(&params)?;
        let response = self
            .http
            .send(
                PROVIDER,
                Method::POST,
                &self.config.gateway_url,
                &[
                    (
                        "content-type",
                        "application/x-www-form-urlencoded;charset=utf-8",
                    ),
                    ("accept", "application/json"),
                ],
                Some(body.into_bytes()),
                self.timeout,
            )
            .await?;
        if !(200..300).contains(&response.status) {
            return Err(upstream(format!(
                "{method} answered HTTP {}",
                response.status
            )));
        }
        verified_answer(&response.body, method, &self.config.alipay_public_keys)
    }

    fn verify(&self, notification: &Notification<'_>) -> Result<PaymentEvent> {
        let mut params = parse_form(notification.body)?;
        let signature = params
            .remove("sign")
            .filter(|s| !s.is_empty())
            .ok_or(Error::InvalidSignature("missing sign"))?;
        // Never signed; present, it must say RSA2 (no downgrade to RSA/SHA-1).
        if params.remove("sign_type").is_some_and(|t| t != "RSA2") {
            return Err(Error::InvalidSignature("sign_type is not RSA2"));
        }
        if self.config.alipay_public_keys.is_empty() {
            // The caller hears what a forgery hears; the operator reads it here.
            tracing::error!("no Alipay public key is configured; refusing every notification");
            return Err(Error::InvalidSignature(NO_MATCH));
        }
        let content = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        if !verify_rsa2(
            &self.config.alipay_public_keys,
            content.as_bytes(),
            &signature,
        ) {
            return Err(Error::InvalidSignature(NO_MATCH));
        }
        // A genuine notification for another app or seller (a shared Alipay key) pays
        // nothing here.
        if params.get("app_id") != Some(&self.config.app_id) {
            return Err(Error::InvalidSignature("notification of another app"));
        }
        let seller_id = self.config.seller_id.as_ref();
        if seller_id.is_some_and(|id| params.get("seller_id") != Some(id)) {
            return Err(Error::InvalidSignature("notification of another seller"));
        }
        parse_event(&params)
    }

    async fn query(&self, payment: &PaymentHandle) -> Result<PaymentState> {
        let method = "alipay.trade.query";
        let biz_content = json_object(&[("out_trade_no", &payment.payment_id)]);
        let answer = self.call(method, biz_content).await?;
        if answer.text("sub_code") == Some("ACQ.TRADE_NOT_EXIST") {
            return Ok(PaymentState::Unknown);
        }
        answer.succeeded(method)?;
        answer.names(method, payment)?;
        match answer.text("trade_status") {
            Some("WAIT_BUYER_PAY") => Ok(PaymentState::AwaitingPayment),
            Some("TRADE_CLOSED") => Ok(PaymentState::Closed),
            Some("TRADE_SUCCESS" | "TRADE_FINISHED") => {
                let amount = answer
                    .text("total_amount")
                    .and_then(parse_yuan)
                    .ok_or_else(|| upstream(format!("{method}: no exact total_amount")))?;
                let provider_ref = answer
                    .text("trade_no")
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| upstream(format!("{method}: no trade_no")))?;
                Ok(PaymentState::Paid {
                    amount: cny(amount),
                    provider_ref: provider_ref.to_owned(),
                })
            }
            _ => Err(upstream(format!("{method}: unknown trade_status"))),
        }
    }

    async fn close(&self, payment: &PaymentHandle) -> Result<()> {
        let method = "alipay.trade.close";
        let biz_content = json_object(&[("out_trade_no", &payment.payment_id)]);
        let answer = self.call(method, biz_content).await?;
        // A trade the buyer never opened does not exist at Alipay; `time_expire` keeps
        // the signed page from opening it after the deadline.
        if answer.text("sub_code") == Some("ACQ.TRADE_NOT_EXIST") {
            return Ok(());
        }
        // ACQ.TRADE_STATUS_ERROR (paid, or finished) and any other refusal: the caller
        // queries to learn which.
        answer.succeeded(method)?;
        answer.names(method, payment)
    }

    async fn refund_payment(&self, request: &RefundRequest) -> Result<RefundOutcome> {
        let method = "alipay.trade.refund";
        let refund_amount = yuan(&request.amount)?;
        let reason: String = request.reason.chars().take(MAX_SUBJECT_CHARS).collect();
        let biz_content = json_object(&[
            ("out_trade_no", &request.payment.payment_id),
            ("refund_amount", &refund_amount),
            ("out_request_no", &request.refund_id),
            ("refund_reason", &reason),
        ]);
        let answer = self.call(method, biz_content).await?;
        let code = answer.text("code").unwrap_or_default();
        let sub_code = answer.text("sub_code").unwrap_or_default();
        if code == "10000" {
            answer.names(method, &request.payment)?;
            // fund_change N: no money moved by this call (a repeat, or still settling):
            // the caller asks again later.
            return Ok(match answer.text("fund_change") {
                Some("Y") => RefundOutcome::Refunded,
                _ => RefundOutcome::Pending,
            });
        }
        // A system error leaves the outcome unknown: retrying with the same
        // out_request_no refunds at most once.
        if code == "20000" || sub_code.ends_with("SYSTEM_ERROR") {
            return Err(upstream(format!(
                "{method}: {}",
                answer.describe()
            )));
        }
        let reason = ["sub_msg", "msg", "sub_code"]
            .iter()
            .find_map(|field| answer.text(field).filter(|t| !t.is_empty()))
            .unwrap_or("refused")
            .to_owned();
        Ok(RefundOutcome::Refused { reason })
    }
}

impl PaymentProvider for AlipayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn default_method(&self) -> PaymentMethod {
        PaymentMethod::Page
    }

    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession> {
        Box::pin(async move {
            let query = self.signed_query(&self.payment_params(request)?)?;
            Ok(PaymentSession {
                provider_ref: None,
                action: PaymentAction::Redirect {
                    url: format!("{}?{query}", self.config.gateway_url),
                },
            })
        })
    }

    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent> {
        Box::pin(async move { self.verify(notification) })
    }

    fn notification_answer(&self, outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
        text_answer(outcome)
    }

    fn query_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, PaymentState> {
        Box::pin(self.query(payment))
    }

    fn close_payment<'a>(&'a self, payment: &'a PaymentHandle) -> PortFuture<'a, ()> {
        Box::pin(self.close(payment))
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> PortFuture<'a, RefundOutcome> {
        Box::pin(self.refund_payment(request))
    }
}

/// Alipay's answer: exactly `success` once recorded; anything else makes it retry
/// (8 times over about 25 h), so `failure` with 400 for the sender's fault, 500 for ours.
pub fn text_answer(outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
    let (status, body): (u16, &[u8]) = match outcome {
        Ok(()) => (200, b"success"),
        Err(
            Error::InvalidSignature(_) | Error::InvalidRequest { .. } | Error::InvalidJson { .. },
        ) => (400, b"failure"),
        Err(_) => (500, b"failure"),
    };
    NotificationAnswer {
        status,
        content_type: "text/plain",
        body: body.to_vec(),
    }
}

fn upstream(message: String) -> Error {
    Error::Upstream {
        system: PROVIDER,
        message,
    }
}

fn invalid_notification(message: &str) -> Error {
    Error::invalid("invalid_notification", message)
}

/// What a verified notification means to Kami.
fn parse_event(params: &BTreeMap<String, String>) -> Result<PaymentEvent> {
    let text = |name: &str| params.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let event_id = text("notify_id")
        .ok_or_else(|| invalid_notification("the notification has no notify_id"))?
        .to_owned();
    // A refund's notification repeats the trade's status (TRADE_SUCCESS after a partial
    // refund, TRADE_CLOSED after a full one) with refund fields: it neither pays nor
    // closes anything. Kami learns a refund's outcome from `refund`'s answer.
    if ["refund_fee", "gmt_refund", "out_biz_no"]
        .iter()
        .any(|field| text(field).is_some())
    {
        return Ok(PaymentEvent::Ignored {
            event_id,
            kind: "refund".into(),
        });
    }
    let status = text("trade_status").unwrap_or_default();
    let kind = if status.is_empty() {
        text("notify_type").unwrap_or("unknown").to_owned()
    } else {
        status.to_owned()
    };
    let payment_id = text("out_trade_no").map(str::to_owned);
    match (status, payment_id) {
        ("TRADE_SUCCESS" | "TRADE_FINISHED", payment_id) => {
            let amount = text("total_amount").and_then(parse_yuan);
            let provider_ref = text("trade_no");
            let (payment_id, amount, provider_ref) = match (payment_id, amount, provider_ref) {
                (Some(p), Some(a), Some(r)) => (p, a, r),
                (p, a, _) => {
                    let missing = if p.is_none() {
                        "payment id"
                    } else if a.is_none() {
                        "amount"
                    } else {
                        "payment reference"
                    };
                    return Ok(PaymentEvent::Unbound {
                        event_id,
                        kind,
                        missing,
                    });
                }
            };
            Ok(PaymentEvent::Paid(PaymentNotice {
                provider: PROVIDER,
                event_id,
                payment_id: Some(payment_id),
                order_id: None,
                amount: cny(amount),
                provider_ref: provider_ref.to_owned(),
            }))
        }
        ("WAIT_BUYER_PAY", Some(payment_id)) => Ok(PaymentEvent::Waiting {
            event_id,
            payment_id,
        }),
        ("TRADE_CLOSED", Some(payment_id)) => Ok(PaymentEvent::Closed {
            event_id,
            payment_id,
        }),
        _ => Ok(PaymentEvent::Ignored { event_id, kind }),
    }
}

fn cny(amount: i64) -> Money {
    Money {
        amount,
        currency: CURRENCY.to_owned(),
    }
}

/// Fen as Alipay's yuan with two decimals ("12.34"), CNY only, exact.
fn yuan(money: &Money) -> Result<String> {
    if money.currency != CURRENCY {
        return Err(Error::invalid(
            "channel_not_eligible",
            format!("Alipay takes CNY only, not {}", money.currency),
        ));
    }
    if money.amount <= 0 {
        return Err(Error::invalid(
            "invalid_price",
            "an Alipay amount must be at least 0.01 CNY",
        ));
    }
    Ok(format!("{}.{:02}", money.amount / 100, money.amount % 100))
}

/// Alipay's yuan ("12.34", "12.3", "12") as fen, exactly: no sign, exponent, spaces or
/// third decimal.
pub fn parse_yuan(text: &str) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.len() <= 2 => {
            (whole, fraction)
        }
        Some(_) => return None,
        None => (text, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) {
        return None;
    }
    let fen = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().ok()? * 10,
        _ => fraction.parse::<i64>().ok()?,
    };
    whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(fen)
}

/// A time as Alipay reads it: Beijing time (UTC+8, no daylight saving).
fn beijing(at: Timestamp, format: &[FormatItem<'_>]) -> Result<String> {
    OffsetDateTime::from_unix_timestamp(at.unix_seconds())
        .ok()
        .map(|t| t.to_offset(offset!(+8)))
        .and_then(|t| t.format(format).ok())
        .ok_or_else(|| Error::Corrupt(format!("time {} is out of range", at.0)))
}

/// The parameters that are signed and sent: empty values left out (Alipay's rule; the
/// SDK drops an empty `notify_url` the same way), sorted by key.
fn sorted_params(params: &[Param]) -> Vec<(&'static str, &str)> {
    let mut sorted: Vec<(&'static str, &str)> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
}

/// `k=v&k=v` with raw values: the string Alipay signs.
fn join_raw(sorted: &[(&str, &str)]) -> String {
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// True when `signature` (base64) is RSA2 over `content` by any of `keys`. No key
/// verifies nothing.
fn verify_rsa2(keys: &[AlipayKey], content: &[u8], signature: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(signature) else {
        return false;
    };
    let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    keys.iter()
        .any(|key| key.verify(content, &signature).is_ok())
}

/// Python's `urllib.parse.quote_plus` (what python-alipay-sdk encodes values with):
/// `A-Z a-z 0-9 _ . - ~` as they are, space as `+`, every other UTF-8 byte `%XX`.
fn quote_plus(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

/// A JSON object of strings, in this order, as Python's
/// `json.dumps(obj, separators=(',', ':'))` writes it (what python-alipay-sdk sends as
/// `biz_content`): non-ASCII and control characters as `\uXXXX`.
fn json_object(members: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, key);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// An `application/x-www-form-urlencoded` body, UTF-8: each name once.
fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let split = pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid_notification("a form field has no '='"))?;
        let name = form_decode(&pair[..split])?;
        let value = form_decode(&pair[split + 1..])?;
        if params.insert(name, value).is_some() {
            return Err(invalid_notification("a form field appears twice"));
        }
    }
    Ok(params)
}

fn form_decode(encoded: &[u8]) -> Result<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while let Some(&b) = encoded.get(i) {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = encoded
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid_notification("a form field has a bad %-escape"))?;
                bytes.push(hex);
                i += 2;
            }
            _ => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| invalid_notification("a form field is not UTF-8"))
}

/// The verified `..._response` (or `error_response`) object of a gateway answer.
struct Answer {
    fields: Map<String, Value>,
}

impl Answer {
    fn text(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    fn describe(&self) -> String {
        describe_fields(&self.fields)
    }

    fn succeeded(&self, method: &str) -> Result<()> {
        if self.text("code") == Some("10000") {
            Ok(())
        } else {
            Err(upstream(format!("{method}: {}", self.describe())))
        }
    }

    /// The answer is about the payment asked about (its numbers, when it gives them).
    fn names(&self, method: &str, payment: &PaymentHandle) -> Result<()> {
        let other_trade = self
            .text("out_trade_no")
            .is_some_and(|id| id != payment.payment_id);
        let other_ref = match (self.text("trade_no"), &payment.provider_ref) {
            (Some(got), Some(known)) => got != known,
            _ => false,
        };
        if other_trade || other_ref {
            return Err(upstream(format!("{method}: the answer is about another trade")));
        }
        Ok(())
    }
}

/// `code`/`sub_code` for a log line: Alipay's identifiers only, never its free text.
fn describe_fields(fields: &Map<String, Value>) -> String {
    let token = |name: &str| -> String {
        fields
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(64)
            .collect()
    };
    format!("code {} sub_code {}", token("code"), token("sub_code"))
}

/// Checks an answer `{"<method>_response": {...}, "sign": "..."}`: the signature is over
/// the response member's text exactly as it appears in the body (Alipay's rule), so it is
/// cut from the raw bytes, never re-serialised. An answer without a signature (Alipay does
/// not sign some errors) or whose signature does not verify is `Error::Upstream`.
fn verified_answer(body: &[u8], method: &str, keys: &[AlipayKey]) -> Result<Answer> {
    // Valid JSON first: the scan below may then assume well-formed text.
    serde_json::from_slice::<Value>(body)
        .map_err(|_| upstream(format!("{method}: the answer is not JSON")))?;
    let members = top_level_members(body)
        .ok_or_else(|| upstream(format!("{method}: the answer is not a JSON object")))?;
    let find = |name: &str| -> Result<Option<Range<usize>>> {
        let mut found = members.iter().filter(|(key, _)| key == name);
        match (found.next(), found.next()) {
            (Some((_, range)), None) => Ok(Some(range.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(upstream(format!("{method}: {name} appears twice"))),
        }
    };
    let response_key = format!("{}_response", method.replace('.', "_"));
    let range = match find(&response_key)? {
        Some(range) => range,
        None => find("error_response")?
            .ok_or_else(|| upstream(format!("{method}: the answer has no {response_key}")))?,
    };
    let raw = body
        .get(range)
        .ok_or_else(|| upstream(format!("{method}: the answer is cut")))?;
    let fields: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|_| upstream(format!("{method}: the response is not an object")))?;
    let signature: Option<String> = match find("sign")? {
        Some(range) => body
            .get(range)
            .and_then(|raw| serde_json::from_slice(raw).ok()),
        None => None,
    };
    let Some(signature) = signature.filter(|s| !s.is_empty()) else {
        return Err(upstream(format!(
            "{method}: unsigned answer ({})",
            describe_fields(&fields)
        )));
    };
    if !verify_rsa2(keys, raw, &signature) {
        return Err(upstream(format!(
            "{method}: the answer's signature does not verify"
        )));
    }
    Ok(Answer { fields })
}

/// The members of a JSON object's top level: each name (decoded) and the byte range of
/// its value exactly as written. `text` must be valid JSON.
fn top_level_members(text: &[u8]) -> Option<Vec<(String, Range<usize>)>> {
    let mut i = skip_space(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_space(text, i + 1);
    let mut members = Vec::new();
    if text.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        let name_end = skip_string(text, i)?;
        let name: String = serde_json::from_slice(text.get(i..name_end)?).ok()?;
        i = skip_space(text, name_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_space(text, i + 1);
        let end = skip_value(text, start)?;
        members.push((name, start..end));
        i = skip_space(text, end);
        match text.get(i)? {
            b',' => i = skip_space(text, i + 1),
            b'}' => return Some(members),
            _ => return None,
        }
    }
}

fn skip_space(text: &[u8], mut i: usize) -> usize {
    while text.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// From an opening quote to just past its closing quote.
fn skip_string(text: &[u8], i: usize) -> Option<usize> {
    if text.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match text.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// From a value's first byte to just past its last.
fn skip_value(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => skip_string(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match text.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while text
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}
