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
use lambda_http::http::Method;
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
    BillLine, BillPeriod, BillSource, Notification, NotificationAnswer, PaymentAction,
    PaymentEvent, PaymentHandle, PaymentMethod, PaymentNotice, PaymentProvider, PaymentRequest,
    PaymentSession, PaymentState, RefundOutcome, RefundRequest,
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
            Some(Value::String(id)) => account_id(id, 32)
                .ok_or_else(|| config_error("app_id", "must be 1 to 32 ASCII letters or digits"))?,
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
    let parsed = url::Url::parse(url.trim()).ok()?;
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
            return Err(upstream(format!("{method}: {}", answer.describe())));
        }
        let reason = ["sub_msg", "msg", "sub_code"]
            .iter()
            .find_map(|field| answer.text(field).filter(|t| !t.is_empty()))
            .unwrap_or("refused")
            .to_owned();
        Ok(RefundOutcome::Refused { reason })
    }
    /// The trade bill of `period`'s day: the verified answer names the file (a zip,
    /// fetched as it is named: the answer's signature vouches for it). A day Alipay has
    /// no bill for (`isp.bill_not_exist`) is an empty bill.
    async fn bill(&self, period: &BillPeriod) -> Result<Vec<BillLine>> {
        let method = "alipay.data.dataservice.bill.downloadurl.query";
        let biz_content = json_object(&[("bill_type", "trade"), ("bill_date", &period.date)]);
        let answer = self.call(method, biz_content).await?;
        if answer.text("sub_code") == Some("isp.bill_not_exist") {
            return Ok(Vec::new());
        }
        answer.succeeded(method)?;
        let url = answer
            .text("bill_download_url")
            .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
            .ok_or_else(|| upstream(format!("{method}: no bill_download_url")))?;
        let file = self
            .http
            .send(PROVIDER, Method::GET, url, &[], None, self.timeout)
            .await?;
        if !(200..300).contains(&file.status) {
            return Err(upstream(format!(
                "Alipay's bill file answered HTTP {}",
                file.status
            )));
        }
        super::alipay_bill::read_bill_zip(&file.body)
    }
}

impl BillSource for AlipayProvider {
    fn fetch_bill<'a>(&'a self, period: &'a BillPeriod) -> PortFuture<'a, Vec<BillLine>> {
        Box::pin(self.bill(period))
    }
}

impl PaymentProvider for AlipayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
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
    let text = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
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
    Money::cny(amount)
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
pub(crate) fn parse_yuan(text: &str) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.len() <= 2 => (whole, fraction),
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
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(fen)
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
            return Err(upstream(format!(
                "{method}: the answer is about another trade"
            )));
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
    while text
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use serde_json::json;

    use super::*;
    use crate::fakes::FakeClock;

    // Test-only keys (shared/testdata/alipay/README.md): "app" is the merchant's pair,
    // "alipay" stands in for Alipay's.
    const APP_PRIVATE: &str = include_str!("../../testdata/alipay/app_private_key.test.pem");
    const APP_PRIVATE_PKCS1: &str =
        include_str!("../../testdata/alipay/app_private_key_pkcs1.test.pem");
    const APP_PUBLIC: &str = include_str!("../../testdata/alipay/app_public_key.test.pem");
    const ALIPAY_PRIVATE: &str = include_str!("../../testdata/alipay/alipay_private_key.test.pem");
    const ALIPAY_PUBLIC: &str = include_str!("../../testdata/alipay/alipay_public_key.test.pem");

    const APP_ID: &str = "2021000000000001";
    const SELLER_ID: &str = "2088000000000002";
    const NOTIFY_URL: &str = "https://kami.example.com/webhooks/alipay/01J0CHANNEL";
    const PAYMENT_ID: &str = "pay_01J0ATTEMPT";
    const TRADE_NO: &str = "2027011522001400000000000001";

    // Produced by python-alipay-sdk 3.4.0 (fzlee/alipay) on the test keys above with
    // `/tmp/alipay-venv/bin/python infra/tests/alipay_golden.py` (the script says how to
    // make the venv): the SDK's string to sign and signed query for a page payment, and a
    // notification it signed with the "alipay" key, as a form body.
    const SDK_PAGE_PAY_STRING_TO_SIGN: &str = r#"app_id=2021000000000001&biz_content={"out_trade_no":"pay_01J0ATTEMPT","total_amount":"12.34","subject":"\u4f1a\u5458\u6708\u5361 \"VIP\" & 1+1","product_code":"FAST_INSTANT_TRADE_PAY","time_expire":"2027-01-15 16:30:00"}&charset=utf-8&format=JSON&method=alipay.trade.page.pay&notify_url=https://kami.example.com/webhooks/alipay/01J0CHANNEL&sign_type=RSA2&timestamp=2027-01-15 16:00:00&version=1.0"#;
    const SDK_PAGE_PAY_SIGNED_QUERY: &str = "app_id=2021000000000001&biz_content=%7B%22out_trade_no%22%3A%22pay_01J0ATTEMPT%22%2C%22total_amount%22%3A%2212.34%22%2C%22subject%22%3A%22%5Cu4f1a%5Cu5458%5Cu6708%5Cu5361+%5C%22VIP%5C%22+%26+1%2B1%22%2C%22product_code%22%3A%22FAST_INSTANT_TRADE_PAY%22%2C%22time_expire%22%3A%222027-01-15+16%3A30%3A00%22%7D&charset=utf-8&format=JSON&method=alipay.trade.page.pay&notify_url=https%3A%2F%2Fkami.example.com%2Fwebhooks%2Falipay%2F01J0CHANNEL&sign_type=RSA2&timestamp=2027-01-15+16%3A00%3A00&version=1.0&sign=zFXarDNTqgLrMeu%2F0ipIXSS1OFg7J94w3vWmZSCQeN10%2FJThCw2jMI3VXuMnhZaQiTYcj%2Fh499EfIpoie42HXAw9kIUlVVTCqAPK3CdDt6iHkQUSSj44fjYvptEVrJUGVpWgctireyXtmWEZFo95lUzaTi2L5i5%2FaogSeM4BfYaqZL3UnwbJ%2BYWxPmUId2AnYUXSXKoRqa0AllGtsmlJZAtrcR1ptS2H5O9U%2F1%2B27dVE7ypkY3SbntDKVT2tOO65Mf5k3UKduf317XeJqMfWg2mRsK6g%2FA4%2FOT%2BKRHTOJdXyJwFGxtH1w0PhU5PivVUTXzeMzXyR7yEGHX1J97SU8A%3D%3D";
    const SDK_NOTIFICATION: &str = "app_id=2021000000000001&auth_app_id=2021000000000001&buyer_id=2088000000000003&buyer_pay_amount=12.34&charset=utf-8&fund_bill_list=%5B%7B%22amount%22%3A%2212.34%22%2C%22fundChannel%22%3A%22ALIPAYACCOUNT%22%7D%5D&gmt_create=2027-01-15+16%3A01%3A02&invoice_amount=12.34&notify_id=2027011500222160105000000000000001&notify_time=2027-01-15+16%3A01%3A05&notify_type=trade_status_sync&out_trade_no=pay_01J0ATTEMPT&point_amount=0.00&receipt_amount=12.34&seller_id=2088000000000002&subject=%E4%BC%9A%E5%91%98%E6%9C%88%E5%8D%A1&total_amount=12.34&trade_no=2027011522001400000000000001&trade_status=TRADE_SUCCESS&version=1.0&sign=gReez1sEfcuNeXTpgo5t4%2FhRaHjKYE4tav3fALYkOX6vXE%2Bsslz7wkR14bxvCQW584rfxxs1MgNHaxYpVCXOEoLCBpeelIx%2BMQQCL%2B78j9wxutl7Hw%2FLQ7KEw2VQZgRAlc0JFL%2B8pnjcKAeKFFFPefzUM9%2FfSoOaaZ%2FxN78YKOyvGlRFMOvfhGlkOWKlU4nhz7d8N%2F8w9XnXCAcurR7lkMKsfJ08gup1IxEfAfKvxt8C2%2BDDAViU2d2bK8f1YLVi8IWzHrNw6fOBRaeFrX6AqkGckreAyp9QispzGKhZ0klaLEH6gqkgzbEfK5dO6KE68IFNw53y1HgpW85NBdCKXg%3D%3D&sign_type=RSA2";

    fn config_json(gateway_url: &str) -> Value {
        json!({
            "app_id": APP_ID,
            "seller_id": SELLER_ID,
            "app_private_key": APP_PRIVATE,
            "alipay_public_keys": [ALIPAY_PUBLIC],
            "gateway_url": gateway_url,
        })
    }

    fn provider_with(config: AlipayConfig) -> AlipayProvider {
        AlipayProvider::new(
            config,
            HttpClient::new().unwrap(),
            Duration::from_secs(5),
            Arc::new(FakeClock::default()),
        )
    }

    fn provider(gateway_url: &str) -> AlipayProvider {
        provider_with(AlipayConfig::from_json(&config_json(gateway_url)).unwrap())
    }

    /// Signs as Alipay does, with the "alipay" test key.
    fn alipay_sign(content: &[u8]) -> String {
        let key = AppKey::new(PrivateKey::from_pkcs8_pem(ALIPAY_PRIVATE).unwrap());
        STANDARD.encode(key.sign(content).to_bytes())
    }

    /// A notification form body as Alipay sends it: `params` signed with the "alipay"
    /// test key (everything but sign_type), url-encoded, `sign` and `sign_type` added.
    fn notification_body(params: &[(&str, &str)]) -> Vec<u8> {
        let mut sorted = params.to_vec();
        sorted.sort();
        let content = sorted
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut body = sorted
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_plus(v)))
            .collect::<Vec<_>>()
            .join("&");
        body.push_str(&format!(
            "&sign={}&sign_type=RSA2",
            quote_plus(&alipay_sign(content.as_bytes()))
        ));
        body.into_bytes()
    }

    fn paid_params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("notify_id", "ntf_1"),
            ("notify_type", "trade_status_sync"),
            ("app_id", APP_ID),
            ("seller_id", SELLER_ID),
            ("out_trade_no", PAYMENT_ID),
            ("trade_no", TRADE_NO),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", "12.34"),
            ("subject", "会员月卡 & more"),
            ("charset", "utf-8"),
        ]
    }

    fn with(
        params: &[(&'static str, &'static str)],
        field: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = params
            .iter()
            .copied()
            .filter(|(k, _)| *k != field)
            .collect();
        out.push((field, value));
        out
    }

    async fn verify_body(provider: &AlipayProvider, body: &[u8]) -> Result<PaymentEvent> {
        let headers = lambda_http::http::HeaderMap::new();
        let notification = Notification {
            headers: &headers,
            body,
            received_at: FakeClock::DEFAULT,
        };
        provider.verify_notification(&notification).await
    }

    fn payment_request(method: PaymentMethod) -> PaymentRequest {
        PaymentRequest {
            payment_id: PAYMENT_ID.into(),
            order_id: "01J0ORDER".into(),
            amount: cny(1234),
            subject: r#"会员月卡 "VIP" & 1+1"#.into(),
            method,
            notify_url: NOTIFY_URL.into(),
            expires_at: FakeClock::DEFAULT.plus_seconds(1800),
            buyer_email: "buyer@example.com".into(),
        }
    }

    fn redirect_url(session: PaymentSession) -> String {
        match session.action {
            PaymentAction::Redirect { url } => url,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn signing_then_verifying_round_trips() {
        let config = AlipayConfig::from_json(&config_json(DEFAULT_GATEWAY)).unwrap();
        let content = "a=1&b=会员&c=x y";
        let signature = config.app_private_key.sign(content.as_bytes());
        let signature = STANDARD.encode(signature.to_bytes());
        let app_public = vec![AlipayKey::new(
            PublicKey::from_public_key_pem(APP_PUBLIC).unwrap(),
        )];
        assert!(verify_rsa2(&app_public, content.as_bytes(), &signature));
        assert!(!verify_rsa2(&app_public, b"a=1&b=2&c=x y", &signature));
        // The channel's Alipay key is not the app's: it does not verify the app's signature.
        assert!(!verify_rsa2(
            &config.alipay_public_keys,
            content.as_bytes(),
            &signature
        ));
        assert!(!verify_rsa2(&app_public, content.as_bytes(), "not base64!"));
    }

    #[tokio::test]
    async fn the_page_pay_url_is_byte_for_byte_what_python_alipay_sdk_signs() {
        let provider = provider(DEFAULT_GATEWAY);
        let request = payment_request(PaymentMethod::Page);
        let params = provider.payment_params(&request).unwrap();
        assert_eq!(
            join_raw(&sorted_params(&params)),
            SDK_PAGE_PAY_STRING_TO_SIGN
        );
        let session = provider.create_payment(&request).await.unwrap();
        assert_eq!(session.provider_ref, None);
        assert_eq!(
            redirect_url(session),
            format!("{DEFAULT_GATEWAY}?{SDK_PAGE_PAY_SIGNED_QUERY}")
        );
    }

    #[tokio::test]
    async fn wap_pay_has_its_method_product_code_and_deadline_to_the_minute() {
        let provider = provider(DEFAULT_GATEWAY);
        let mut request = payment_request(PaymentMethod::Wap);
        request.expires_at = FakeClock::DEFAULT.plus_seconds(1859);
        let content = join_raw(&sorted_params(&provider.payment_params(&request).unwrap()));
        assert!(
            content.contains("&method=alipay.trade.wap.pay&"),
            "{content}"
        );
        assert!(
            content.contains(r#""product_code":"QUICK_WAP_WAY""#),
            "{content}"
        );
        // 16:30:59 Beijing, truncated: Alipay stops no later than the order's deadline.
        assert!(
            content.contains(r#""time_expire":"2027-01-15 16:30""#),
            "{content}"
        );
        let url = redirect_url(provider.create_payment(&request).await.unwrap());
        let query = url.strip_prefix(&format!("{DEFAULT_GATEWAY}?")).unwrap();
        let params = parse_form(query.as_bytes()).unwrap();
        assert_eq!(params["method"], "alipay.trade.wap.pay");
        // The app's public key verifies the request (everything but sign, sign_type included).
        let mut signed = params.clone();
        let signature = signed.remove("sign").unwrap();
        let content = signed
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let app_public = vec![AlipayKey::new(
            PublicKey::from_public_key_pem(APP_PUBLIC).unwrap(),
        )];
        assert!(verify_rsa2(&app_public, content.as_bytes(), &signature));
    }

    #[tokio::test]
    async fn other_methods_currencies_and_amounts_are_refused() {
        let provider = provider(DEFAULT_GATEWAY);
        for method in [PaymentMethod::Native, PaymentMethod::Checkout] {
            let err = provider
                .create_payment(&payment_request(method))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidRequest {
                        code: "unsupported_payment_method",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        let mut usd = payment_request(PaymentMethod::Page);
        usd.amount.currency = "USD".into();
        let err = provider.create_payment(&usd).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidRequest {
                    code: "channel_not_eligible",
                    ..
                }
            ),
            "{err:?}"
        );
        let mut free = payment_request(PaymentMethod::Page);
        free.amount.amount = 0;
        assert!(provider.create_payment(&free).await.is_err());
        assert_eq!(provider.name(), "alipay");
    }

    #[test]
    fn amounts_are_yuan_with_two_decimals_exactly() {
        for (fen, text) in [
            (1, "0.01"),
            (10, "0.10"),
            (1230, "12.30"),
            (10_000_000_000, "100000000.00"),
        ] {
            assert_eq!(yuan(&cny(fen)).unwrap(), text);
            assert_eq!(parse_yuan(text), Some(fen));
        }
        assert_eq!(parse_yuan("12.3"), Some(1230));
        assert_eq!(parse_yuan("12"), Some(1200));
        assert_eq!(parse_yuan("0.00"), Some(0));
        for garbage in [
            "12.345",
            "1e3",
            "-1",
            "+1",
            "",
            ".5",
            "12.",
            "1 2",
            " 12.00",
            "12,00",
            "0x10",
            "１２",
            "99999999999999999999.00",
            "12.3a",
        ] {
            assert_eq!(parse_yuan(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn biz_content_is_json_as_python_writes_it() {
        assert_eq!(
            json_object(&[("a", "x\"\\\n\u{1}\u{7f}é😀"), ("b", "")]),
            r#"{"a":"x\"\\\n\u0001\u007f\u00e9\ud83d\ude00","b":""}"#
        );
        assert_eq!(quote_plus("a b+c/é~_.-"), "a+b%2Bc%2F%C3%A9~_.-");
    }

    #[tokio::test]
    async fn a_notification_signed_by_python_alipay_sdk_is_verified() {
        let provider = provider(DEFAULT_GATEWAY);
        let event = verify_body(&provider, SDK_NOTIFICATION.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            event,
            PaymentEvent::Paid(PaymentNotice {
                provider: "alipay",
                event_id: "2027011500222160105000000000000001".into(),
                payment_id: Some(PAYMENT_ID.into()),
                order_id: None,
                amount: cny(1234),
                provider_ref: TRADE_NO.into(),
            })
        );
    }

    #[tokio::test]
    async fn a_changed_byte_another_key_or_no_signature_is_refused() {
        let provider = provider(DEFAULT_GATEWAY);
        let good = SDK_NOTIFICATION.as_bytes();
        // One byte changed anywhere in the signed part (total_amount 12.34 -> 92.34).
        let tampered = SDK_NOTIFICATION.replacen("total_amount=12.34", "total_amount=92.34", 1);
        // Signed by the app's key instead of Alipay's.
        let mut params = parse_form(good).unwrap();
        params.remove("sign");
        params.remove("sign_type");
        let content = join_raw(
            &params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        let config = AlipayConfig::from_json(&config_json(DEFAULT_GATEWAY)).unwrap();
        let by_app = STANDARD.encode(config.app_private_key.sign(content.as_bytes()).to_bytes());
        let (before, _) = SDK_NOTIFICATION.split_once("&sign=").unwrap();
        let wrong_key = format!("{before}&sign={}&sign_type=RSA2", quote_plus(&by_app));
        let unsigned = format!("{before}&sign_type=RSA2");
        let empty_sign = format!("{before}&sign=&sign_type=RSA2");
        let rsa1 = SDK_NOTIFICATION.replace("sign_type=RSA2", "sign_type=RSA");
        for body in [tampered, wrong_key, unsigned, empty_sign, rsa1] {
            let err = verify_body(&provider, body.as_bytes()).await.unwrap_err();
            assert!(matches!(err, Error::InvalidSignature(_)), "{err:?}");
        }
        // Every byte of the signature matters, too.
        let mut flipped = good.to_vec();
        let at = SDK_NOTIFICATION.find("&sign=").unwrap() + 10;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            verify_body(&provider, &flipped).await,
            Err(Error::InvalidSignature(_))
        ));
    }

    #[tokio::test]
    async fn another_app_or_seller_is_refused_though_alipay_signed_it() {
        let provider = provider(DEFAULT_GATEWAY);
        let paid = paid_params();
        assert!(matches!(
            verify_body(&provider, &notification_body(&paid)).await,
            Ok(PaymentEvent::Paid(_))
        ));
        for params in [
            with(&paid, "app_id", "2021000000000999"),
            with(&paid, "seller_id", "2088000000000999"),
            paid.iter()
                .copied()
                .filter(|(k, _)| *k != "app_id")
                .collect(),
            paid.iter()
                .copied()
                .filter(|(k, _)| *k != "seller_id")
                .collect(),
        ] {
            let err = verify_body(&provider, &notification_body(&params))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidSignature(_)),
                "{params:?}: {err:?}"
            );
        }
        // Without a configured seller_id, any seller of this app is accepted.
        let mut config = AlipayConfig::from_json(&config_json(DEFAULT_GATEWAY)).unwrap();
        config.seller_id = None;
        let any_seller = provider_with(config);
        let other_seller = with(&paid, "seller_id", "2088000000000999");
        assert!(
            verify_body(&any_seller, &notification_body(&other_seller))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn either_key_verifies_during_rotation() {
        let mut rotating = config_json(DEFAULT_GATEWAY);
        // The "app" public key stands for Alipay's next key here.
        rotating["alipay_public_keys"] = json!([APP_PUBLIC, ALIPAY_PUBLIC]);
        let provider = provider_with(AlipayConfig::from_json(&rotating).unwrap());
        assert!(
            verify_body(&provider, SDK_NOTIFICATION.as_bytes())
                .await
                .is_ok()
        );
        // A notification signed with the other key of the pair verifies too.
        let mut params = parse_form(SDK_NOTIFICATION.as_bytes()).unwrap();
        params.remove("sign");
        params.remove("sign_type");
        let content = join_raw(
            &params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        let signature = STANDARD.encode(
            provider
                .config
                .app_private_key
                .sign(content.as_bytes())
                .to_bytes(),
        );
        let (before, _) = SDK_NOTIFICATION.split_once("&sign=").unwrap();
        let body = format!("{before}&sign={}&sign_type=RSA2", quote_plus(&signature));
        assert!(verify_body(&provider, body.as_bytes()).await.is_ok());
        // Retired: only the new key is left, the old one's notification is refused.
        rotating["alipay_public_keys"] = json!([APP_PUBLIC]);
        let retired = provider_with(AlipayConfig::from_json(&rotating).unwrap());
        assert!(verify_body(&retired, body.as_bytes()).await.is_ok());
        assert!(matches!(
            verify_body(&retired, SDK_NOTIFICATION.as_bytes()).await,
            Err(Error::InvalidSignature(_))
        ));
    }

    #[tokio::test]
    async fn an_empty_key_list_verifies_nothing_and_says_so_to_no_one() {
        let mut config = AlipayConfig::from_json(&config_json(DEFAULT_GATEWAY)).unwrap();
        config.alipay_public_keys.clear();
        let keyless = provider_with(config);
        let keyed = provider(DEFAULT_GATEWAY);
        let forged = SDK_NOTIFICATION.replacen("12.34", "92.34", 1);
        let with_keys = verify_body(&keyed, forged.as_bytes()).await.unwrap_err();
        let without = verify_body(&keyless, SDK_NOTIFICATION.as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(without, Error::InvalidSignature(_)));
        assert_eq!(with_keys.to_string(), without.to_string());
        assert!(!verify_rsa2(&[], b"x", &alipay_sign(b"x")));
        // And a channel cannot be configured so.
        let mut empty = config_json(DEFAULT_GATEWAY);
        empty["alipay_public_keys"] = json!([]);
        assert!(AlipayConfig::from_json(&empty).is_err());
    }

    #[tokio::test]
    async fn trade_statuses_map_to_events() {
        let provider = provider(DEFAULT_GATEWAY);
        let paid = paid_params();
        let event = |params: Vec<(&'static str, &'static str)>| {
            let body = notification_body(&params);
            let provider = &provider;
            async move { verify_body(provider, &body).await.unwrap() }
        };
        assert!(matches!(
            event(with(&paid, "trade_status", "TRADE_FINISHED")).await,
            PaymentEvent::Paid(PaymentNotice {
                amount: Money { amount: 1234, .. },
                ..
            })
        ));
        assert_eq!(
            event(with(&paid, "trade_status", "WAIT_BUYER_PAY")).await,
            PaymentEvent::Waiting {
                event_id: "ntf_1".into(),
                payment_id: PAYMENT_ID.into()
            }
        );
        assert_eq!(
            event(with(&paid, "trade_status", "TRADE_CLOSED")).await,
            PaymentEvent::Closed {
                event_id: "ntf_1".into(),
                payment_id: PAYMENT_ID.into()
            }
        );
        assert_eq!(
            event(with(&paid, "trade_status", "SOMETHING_NEW")).await,
            PaymentEvent::Ignored {
                event_id: "ntf_1".into(),
                kind: "SOMETHING_NEW".into()
            }
        );
        // Refund notifications (partial: TRADE_SUCCESS, full: TRADE_CLOSED) are ignored.
        for status in ["TRADE_SUCCESS", "TRADE_CLOSED"] {
            let mut refund = with(&paid, "trade_status", status);
            refund.extend([
                ("refund_fee", "1.00"),
                ("gmt_refund", "2027-01-16 10:00:00.123"),
                ("out_biz_no", "rf_1"),
            ]);
            assert_eq!(
                event(refund).await,
                PaymentEvent::Ignored {
                    event_id: "ntf_1".into(),
                    kind: "refund".into()
                }
            );
        }
        for (amount, missing) in [
            ("12.345", "amount"),
            ("1e3", "amount"),
            ("-1", "amount"),
            ("", "amount"),
        ] {
            assert_eq!(
                event(with(&paid, "total_amount", amount)).await,
                PaymentEvent::Unbound {
                    event_id: "ntf_1".into(),
                    kind: "TRADE_SUCCESS".into(),
                    missing
                },
            );
        }
        assert!(matches!(
            event(
                paid.iter()
                    .copied()
                    .filter(|(k, _)| *k != "out_trade_no")
                    .collect()
            )
            .await,
            PaymentEvent::Unbound {
                missing: "payment id",
                ..
            }
        ));
        assert!(matches!(
            event(
                paid.iter()
                    .copied()
                    .filter(|(k, _)| *k != "trade_no")
                    .collect()
            )
            .await,
            PaymentEvent::Unbound {
                missing: "payment reference",
                ..
            }
        ));
        assert_eq!(
            event(with(&paid, "total_amount", "0.01")).await,
            PaymentEvent::Paid(PaymentNotice {
                provider: "alipay",
                event_id: "ntf_1".into(),
                payment_id: Some(PAYMENT_ID.into()),
                order_id: None,
                amount: cny(1),
                provider_ref: TRADE_NO.into(),
            })
        );
        // A verified notification without notify_id cannot be applied once: refused.
        let no_id: Vec<_> = paid
            .iter()
            .copied()
            .filter(|(k, _)| *k != "notify_id")
            .collect();
        assert!(matches!(
            verify_body(&provider, &notification_body(&no_id)).await,
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused_not_panics() {
        let provider = provider(DEFAULT_GATEWAY);
        for body in [
            &b""[..],
            b"sign",
            b"a=%zz&sign=x",
            b"a=%e4&sign=x",
            b"a=%",
            b"a=1&a=2&sign=x",
            b"\xff\xfe=1",
        ] {
            let err = verify_body(&provider, body).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidRequest { .. } | Error::InvalidSignature(_)
                ),
                "{body:?}: {err:?}"
            );
        }
    }

    #[test]
    fn notification_answers_are_success_or_failure() {
        let provider = provider(DEFAULT_GATEWAY);
        let ok = provider.notification_answer(Ok(()));
        assert_eq!(
            (ok.status, ok.content_type, ok.body.as_slice()),
            (200, "text/plain", &b"success"[..])
        );
        for (err, status) in [
            (Error::InvalidSignature("x"), 400),
            (Error::invalid("invalid_notification", "x"), 400),
            (Error::invalid_json("x"), 400),
            (Error::Contention("orders"), 500),
            (Error::Timeout { system: "dynamodb" }, 500),
        ] {
            let answer = provider.notification_answer(Err(&err));
            assert_eq!(
                (answer.status, answer.body.as_slice()),
                (status, &b"failure"[..]),
                "{err:?}"
            );
        }
    }

    #[test]
    fn config_accepts_pkcs8_pkcs1_and_bare_base64_keys() {
        let mut config = config_json(DEFAULT_GATEWAY);
        let pkcs8 = AlipayConfig::from_json(&config).unwrap();
        config["app_private_key"] = json!(APP_PRIVATE_PKCS1);
        let pkcs1 = AlipayConfig::from_json(&config).unwrap();
        let bare = |pem: &str| -> String {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        config["app_private_key"] = json!(bare(APP_PRIVATE));
        config["alipay_public_keys"] = json!([bare(ALIPAY_PUBLIC)]);
        let bare = AlipayConfig::from_json(&config).unwrap();
        // One key, three spellings: the same signature.
        let sign = |c: &AlipayConfig| c.app_private_key.sign(b"x").to_bytes();
        assert_eq!(sign(&pkcs8), sign(&pkcs1));
        assert_eq!(sign(&pkcs8), sign(&bare));
        assert_eq!(bare.alipay_public_keys.len(), 1);
        assert_eq!(pkcs8.gateway_url, DEFAULT_GATEWAY);
        assert_eq!(pkcs8.seller_id.as_deref(), Some(SELLER_ID));
        let mut minimal = config_json(DEFAULT_GATEWAY);
        let object = minimal.as_object_mut().unwrap();
        object.remove("gateway_url");
        object.remove("seller_id");
        let minimal = AlipayConfig::from_json(&minimal).unwrap();
        assert_eq!(
            (minimal.gateway_url.as_str(), minimal.seller_id),
            (DEFAULT_GATEWAY, None)
        );
    }

    #[test]
    fn config_errors_name_the_field_and_never_the_key() {
        let base = config_json(DEFAULT_GATEWAY);
        let broken_key = APP_PRIVATE.replace("MII", "MIJ");
        let cases: Vec<(&str, Value, &str)> = vec![
            ("app_id", Value::Null, "config.app_id"),
            ("app_id", json!(""), "config.app_id"),
            ("app_id", json!("2021 0001"), "config.app_id"),
            ("seller_id", json!(""), "config.seller_id"),
            ("seller_id", json!(2088), "config.seller_id"),
            (
                "app_private_key",
                json!(broken_key),
                "config.app_private_key",
            ),
            (
                "app_private_key",
                json!(ALIPAY_PUBLIC),
                "config.app_private_key",
            ),
            ("app_private_key", json!(123), "config.app_private_key"),
            ("alipay_public_keys", json!([]), "config.alipay_public_keys"),
            (
                "alipay_public_keys",
                json!(ALIPAY_PUBLIC),
                "config.alipay_public_keys",
            ),
            (
                "alipay_public_keys",
                json!([ALIPAY_PUBLIC, APP_PRIVATE]),
                "config.alipay_public_keys[1]",
            ),
            (
                "alipay_public_keys",
                json!([7]),
                "config.alipay_public_keys[0]",
            ),
            (
                "gateway_url",
                json!("ftp://openapi.alipay.com/gateway.do"),
                "config.gateway_url",
            ),
            (
                "gateway_url",
                json!("https://openapi.alipay.com/gateway.do?charset=utf-8"),
                "config.gateway_url",
            ),
            (
                "gateway_url",
                json!("https://user:pw@openapi.alipay.com/gateway.do"),
                "config.gateway_url",
            ),
            ("gateway_url", json!("gateway.do"), "config.gateway_url"),
            ("app_secret", json!("x"), "config.app_secret"),
        ];
        for (field, value, path) in cases {
            let mut config = base.clone();
            if value.is_null() {
                config.as_object_mut().unwrap().remove(field);
            } else {
                config[field] = value;
            }
            match AlipayConfig::from_json(&config) {
                Err(Error::InvalidRequest {
                    code,
                    message,
                    path: Some(got),
                }) => {
                    assert_eq!(
                        (code, got.as_str()),
                        ("invalid_channel_config", path),
                        "{field}"
                    );
                    for secret in [APP_PRIVATE, ALIPAY_PRIVATE] {
                        let body: String = secret.lines().nth(1).unwrap().into();
                        assert!(!message.contains(&body), "{field}: {message}");
                    }
                    assert!(!message.contains("MII"), "{field}: {message}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(AlipayConfig::from_json(&json!("x")).is_err());
        // A key below 2048 bits is refused (RSA2).
        let mut short = base.clone();
        short["app_private_key"] = json!(SHORT_KEY);
        let err = AlipayConfig::from_json(&short).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
        let mut http = base;
        http["gateway_url"] = json!("http://127.0.0.1:8080/gateway.do");
        assert_eq!(
            AlipayConfig::from_json(&http).unwrap().gateway_url,
            "http://127.0.0.1:8080/gateway.do"
        );
    }

    /// A 1024-bit key (test only): too short for RSA2.
    const SHORT_KEY: &str = include_str!("../../testdata/alipay/short_private_key.test.pem");

    #[test]
    fn debug_output_shows_no_key() {
        let provider = provider(DEFAULT_GATEWAY);
        for text in [format!("{provider:?}"), format!("{:?}", provider.config)] {
            assert!(
                text.contains(APP_ID) && text.contains("<redacted>"),
                "{text}"
            );
            assert!(
                !text.contains("PrivateKey") && !text.to_lowercase().contains("limbs"),
                "{text}"
            );
            let key_line = APP_PRIVATE.lines().nth(1).unwrap();
            assert!(!text.contains(&key_line[..16]), "{text}");
        }
    }

    // ---- query, close and refund against a gateway on 127.0.0.1 ----

    /// An answer as Alipay signs it: `response` (raw JSON text) under `key`, then `sign`.
    fn signed_answer(key: &str, response: &str) -> Vec<u8> {
        format!(
            r#"{{"{key}":{response},"sign":"{}"}}"#,
            alipay_sign(response.as_bytes())
        )
        .into_bytes()
    }

    /// A gateway that answers one request with `status` and `body` after `delay`, and
    /// hands back the request's body.
    fn one_shot_gateway(
        status: u16,
        body: Vec<u8>,
        delay: Duration,
    ) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/gateway.do", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            let head_end = loop {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed before the request ended");
                request.extend_from_slice(&buf[..n]);
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while request.len() < head_end + length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            assert!(head.starts_with("post /gateway.do "), "{head}");
            assert!(
                head.contains("content-type: application/x-www-form-urlencoded"),
                "{head}"
            );
            std::thread::sleep(delay);
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json;charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            // The client may have given up (the timeout test).
            let _ = stream
                .write_all(answer.as_bytes())
                .and_then(|()| stream.write_all(&body));
            request[head_end..].to_vec()
        });
        (url, handle)
    }

    /// Runs `call` against a gateway answering `status`/`body`; returns its result and
    /// the signed form Kami posted, checked with the app's public key.
    async fn exchange<T, F>(
        status: u16,
        body: Vec<u8>,
        call: F,
    ) -> (Result<T>, BTreeMap<String, String>)
    where
        F: for<'a> FnOnce(&'a AlipayProvider) -> PortFuture<'a, T>,
    {
        let (url, server) = one_shot_gateway(status, body, Duration::ZERO);
        let provider = provider(&url);
        let result = call(&provider).await;
        let posted = server.join().unwrap();
        let mut params = parse_form(&posted).unwrap();
        let signature = params.remove("sign").unwrap();
        let content = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let app_public = vec![AlipayKey::new(
            PublicKey::from_public_key_pem(APP_PUBLIC).unwrap(),
        )];
        assert!(
            verify_rsa2(&app_public, content.as_bytes(), &signature),
            "{content}"
        );
        assert_eq!(params["timestamp"], "2027-01-15 16:00:00");
        (result, params)
    }

    fn handle() -> PaymentHandle {
        PaymentHandle {
            payment_id: PAYMENT_ID.into(),
            provider_ref: None,
        }
    }

    const QUERY: &str = "alipay_trade_query_response";

    #[tokio::test]
    async fn query_maps_trade_statuses() {
        let paid = format!(
            r#"{{"code":"10000","msg":"Success","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}","trade_status":"TRADE_SUCCESS","total_amount":"12.30","buyer_logon_id":"abc***@example.com"}}"#
        );
        let (state, posted) = exchange(200, signed_answer(QUERY, &paid), |p| {
            p.query_payment_for_test()
        })
        .await;
        assert_eq!(
            state.unwrap(),
            PaymentState::Paid {
                amount: cny(1230),
                provider_ref: TRADE_NO.into()
            }
        );
        assert_eq!(posted["method"], "alipay.trade.query");
        assert_eq!(
            posted["biz_content"],
            format!(r#"{{"out_trade_no":"{PAYMENT_ID}"}}"#)
        );
        for (status, expected) in [
            ("WAIT_BUYER_PAY", PaymentState::AwaitingPayment),
            ("TRADE_CLOSED", PaymentState::Closed),
        ] {
            let answer = format!(
                r#"{{"code":"10000","msg":"Success","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}","trade_status":"{status}","total_amount":"12.30"}}"#
            );
            let (state, _) = exchange(200, signed_answer(QUERY, &answer), |p| {
                p.query_payment_for_test()
            })
            .await;
            assert_eq!(state.unwrap(), expected);
        }
        // Alipay's own Chinese text and a brace inside a string: still the raw text.
        let missing = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在 {\"x\":\"}\"}"}"#;
        let (state, _) = exchange(200, signed_answer(QUERY, missing), |p| {
            p.query_payment_for_test()
        })
        .await;
        assert_eq!(state.unwrap(), PaymentState::Unknown);
        // Another trade's answer, an inexact amount, a system error: not believed.
        for answer in [
            format!(r#"{{"code":"10000","trade_no":"{TRADE_NO}","out_trade_no":"pay_other","trade_status":"TRADE_SUCCESS","total_amount":"12.30"}}"#),
            format!(r#"{{"code":"10000","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}","trade_status":"TRADE_SUCCESS","total_amount":"12.305"}}"#),
            r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"}"#.to_owned(),
        ] {
            let (state, _) = exchange(200, signed_answer(QUERY, &answer), |p| p.query_payment_for_test()).await;
            assert!(matches!(state, Err(Error::Upstream { .. })), "{answer}: {state:?}");
        }
    }

    #[tokio::test]
    async fn an_unsigned_forged_or_failed_answer_is_upstream() {
        let paid = format!(
            r#"{{"code":"10000","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}","trade_status":"TRADE_SUCCESS","total_amount":"12.30"}}"#
        );
        let signed = String::from_utf8(signed_answer(QUERY, &paid)).unwrap();
        let answers: Vec<(u16, Vec<u8>)> = vec![
            // Unsigned (Alipay does not sign errors for an app it cannot identify).
            (200, br#"{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}"#.to_vec()),
            // Signed, then the amount changed.
            (200, signed.replace("12.30", "99.30").into_bytes()),
            // Re-serialised (a space added): Alipay signed the text, not the value.
            (200, signed.replacen(r#""code":"10000""#, r#""code": "10000""#, 1).into_bytes()),
            // Signed by the app's key, not Alipay's.
            (200, format!(r#"{{"{QUERY}":{paid},"sign":"{}"}}"#, STANDARD.encode(AlipayConfig::from_json(&config_json(DEFAULT_GATEWAY)).unwrap().app_private_key.sign(paid.as_bytes()).to_bytes())).into_bytes()),
            // The response twice: which one was signed?
            (200, format!(r#"{{"{QUERY}":{{"code":"10000"}},"{QUERY}":{paid},"sign":"{}"}}"#, alipay_sign(paid.as_bytes())).into_bytes()),
            (200, b"<html>busy</html>".to_vec()),
            (502, signed.clone().into_bytes()),
        ];
        for (status, body) in answers {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let (state, _) = exchange(status, body, |p| p.query_payment_for_test()).await;
            assert!(
                matches!(
                    state,
                    Err(Error::Upstream {
                        system: "alipay",
                        ..
                    })
                ),
                "{status} {shown}: {state:?}"
            );
        }
        // A signed error_response is verified and read like any answer.
        let error = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST"}"#;
        let (state, _) = exchange(200, signed_answer("error_response", error), |p| {
            p.query_payment_for_test()
        })
        .await;
        assert_eq!(state.unwrap(), PaymentState::Unknown);
    }

    #[tokio::test]
    async fn a_gateway_that_does_not_answer_in_time_is_a_timeout() {
        let (url, server) = one_shot_gateway(200, b"{}".to_vec(), Duration::from_millis(1500));
        let mut provider = provider(&url);
        provider.timeout = Duration::from_millis(200);
        let result = provider.query_payment(&handle()).await;
        assert!(
            matches!(result, Err(Error::Timeout { system: "alipay" })),
            "{result:?}"
        );
        server.join().unwrap();
    }

    const CLOSE: &str = "alipay_trade_close_response";

    #[tokio::test]
    async fn close_accepts_a_closed_or_unknown_trade_and_not_a_paid_one() {
        let closed = format!(
            r#"{{"code":"10000","msg":"Success","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}"}}"#
        );
        let (result, posted) = exchange(200, signed_answer(CLOSE, &closed), |p| {
            p.close_payment_for_test()
        })
        .await;
        result.unwrap();
        assert_eq!(posted["method"], "alipay.trade.close");
        let unknown = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"}"#;
        let (result, _) = exchange(200, signed_answer(CLOSE, unknown), |p| {
            p.close_payment_for_test()
        })
        .await;
        result.unwrap();
        let paid = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_STATUS_ERROR","sub_msg":"交易状态不合法"}"#;
        let (result, _) = exchange(200, signed_answer(CLOSE, paid), |p| {
            p.close_payment_for_test()
        })
        .await;
        match result {
            Err(Error::Upstream { message, .. }) => {
                assert!(message.contains("ACQ.TRADE_STATUS_ERROR"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    const REFUND: &str = "alipay_trade_refund_response";

    fn refund_request() -> RefundRequest {
        RefundRequest {
            refund_id: "rf_01J0REFUND".into(),
            payment: handle(),
            amount: cny(500),
            paid: cny(1234),
            reason: "缺货".into(),
            notify_url: NOTIFY_URL.into(),
        }
    }

    #[tokio::test]
    async fn refund_maps_fund_change_and_refusals() {
        let done = format!(
            r#"{{"code":"10000","msg":"Success","trade_no":"{TRADE_NO}","out_trade_no":"{PAYMENT_ID}","fund_change":"Y","refund_fee":"5.00"}}"#
        );
        let (outcome, posted) =
            exchange(200, signed_answer(REFUND, &done), |p| p.refund_for_test()).await;
        assert_eq!(outcome.unwrap(), RefundOutcome::Refunded);
        assert_eq!(posted["method"], "alipay.trade.refund");
        assert_eq!(
            posted["biz_content"],
            r#"{"out_trade_no":"pay_01J0ATTEMPT","refund_amount":"5.00","out_request_no":"rf_01J0REFUND","refund_reason":"\u7f3a\u8d27"}"#
        );
        let repeat = done.replace(r#""fund_change":"Y""#, r#""fund_change":"N""#);
        let (outcome, _) =
            exchange(200, signed_answer(REFUND, &repeat), |p| p.refund_for_test()).await;
        assert_eq!(outcome.unwrap(), RefundOutcome::Pending);
        let refused = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.REFUND_AMT_NOT_EQUAL_TOTAL","sub_msg":"退款金额超限"}"#;
        let (outcome, _) =
            exchange(200, signed_answer(REFUND, refused), |p| p.refund_for_test()).await;
        assert_eq!(
            outcome.unwrap(),
            RefundOutcome::Refused {
                reason: "退款金额超限".into()
            }
        );
        // A system error leaves the outcome unknown: an error to retry, not a refusal.
        let busy = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.SYSTEM_ERROR","sub_msg":"系统错误"}"#;
        let (outcome, _) =
            exchange(200, signed_answer(REFUND, busy), |p| p.refund_for_test()).await;
        assert!(
            matches!(outcome, Err(Error::Upstream { .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_refund_in_another_currency_is_refused_before_any_call() {
        let provider = provider("http://127.0.0.1:9/gateway.do");
        let mut request = refund_request();
        request.amount.currency = "USD".into();
        let err = provider.refund(&request).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidRequest {
                    code: "channel_not_eligible",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_response_member_is_cut_from_the_raw_text() {
        let body =
            br#" { "sign" : "s" , "x_response" : {"a":"}\"{","b":[1,{"c":null}]} , "n": -1.5e3 } "#;
        let members = top_level_members(body).unwrap();
        let names: Vec<_> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sign", "x_response", "n"]);
        assert_eq!(
            &body[members[1].1.clone()],
            br#"{"a":"}\"{","b":[1,{"c":null}]}"#
        );
        assert_eq!(&body[members[2].1.clone()], b"-1.5e3");
        assert_eq!(top_level_members(b"{}").unwrap().len(), 0);
        assert!(top_level_members(b"[1]").is_none());
    }

    impl AlipayProvider {
        fn query_payment_for_test(&self) -> PortFuture<'_, PaymentState> {
            Box::pin(async move { self.query(&handle()).await })
        }

        fn close_payment_for_test(&self) -> PortFuture<'_, ()> {
            Box::pin(async move { self.close(&handle()).await })
        }

        fn refund_for_test(&self) -> PortFuture<'_, RefundOutcome> {
            Box::pin(async move { self.refund_payment(&refund_request()).await })
        }
    }
}
