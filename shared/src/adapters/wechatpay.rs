//! WeChat Pay API v3 (微信支付 APIv3), direct merchant, Native (QR code) payments, as a
//! `PaymentProvider` (docs/payments-wechatpay.md).
//!
//! - Every request is signed with the merchant's API key: `Authorization:
//!   WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,signature=..,timestamp=..,serial_no=..`,
//!   the signature SHA256withRSA (PKCS#1 v1.5) over
//!   `"{METHOD}\n{path?query}\n{timestamp}\n{nonce}\n{body}\n"`.
//! - Every answer Kami acts on, and every notification, is verified with the WeChat Pay
//!   platform key named by `Wechatpay-Serial`: SHA256withRSA over
//!   `"{Wechatpay-Timestamp}\n{Wechatpay-Nonce}\n{body}\n"`, the timestamp within 5 minutes
//!   of Kami's clock either way. An unknown serial verifies nothing; several serials are
//!   configured while WeChat Pay rotates its key.
//! - A notification's `resource` is AES-256-GCM under the APIv3 key; the decrypted payment
//!   or refund must name this channel's `mchid` (and `appid`), or it is another account's
//!   genuine notification replayed here (anchors.md, pain point 5).
//!
//! Interoperates byte for byte with the Python SDK `wechatpayv3` (tests, `golden`; the
//! values come from `infra/tests/wechatpay_golden.py`).

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lambda_http::http::HeaderMap;
use reqwest::Method;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::adapters::http_client::{HttpClient, HttpResponse};
use crate::domain::money::{Money, parse_currency};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::ports::Clock;
use crate::ports::PortFuture;
use crate::ports::payment::{
    Notification, NotificationAnswer, PaymentAction, PaymentEvent, PaymentHandle, PaymentMethod,
    PaymentNotice, PaymentProvider, PaymentRequest, PaymentSession, PaymentState, RefundOutcome,
    RefundRequest,
};

pub const PROVIDER: &str = "wechatpay";
/// The fields of a channel's `config` that are secrets (stored sealed, never shown).
pub const SECRET_FIELDS: &[&str] = &["merchant_private_key", "apiv3_key"];
pub const DEFAULT_API_BASE: &str = "https://api.mch.weixin.qq.com";
/// WeChat Pay's rule: refuse a signed message more than 5 minutes off, either way.
pub const TOLERANCE_SECONDS: i64 = 300;

const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";
const AEAD_ALGORITHM: &str = "AEAD_AES_256_GCM";
const CURRENCY: &str = "CNY";
const CONFIG_ERROR: &str = "invalid_channel_config";
/// `description` is string(127) (bytes of UTF-8).
const DESCRIPTION_MAX_BYTES: usize = 127;
/// A refund's `reason` is string(80).
const REASON_MAX_BYTES: usize = 80;
const USER_AGENT: &str = concat!("kami/", env!("CARGO_PKG_VERSION"), " (wechatpay-apiv3)");

const TIMESTAMP_HEADER: &str = "wechatpay-timestamp";
const NONCE_HEADER: &str = "wechatpay-nonce";
const SIGNATURE_HEADER: &str = "wechatpay-signature";
const SERIAL_HEADER: &str = "wechatpay-serial";
const SIGNATURE_TYPE_HEADER: &str = "wechatpay-signature-type";

/// One channel's WeChat Pay account. Secrets are parsed keys, wiped on drop and never
/// printed (`Debug` redacts them).
#[derive(Clone)]
pub struct WechatPayConfig {
    /// The merchant id (商户号).
    pub mchid: String,
    /// The app id bound to the merchant (公众号/应用 AppID).
    pub appid: String,
    /// The serial number of the merchant API certificate (商户API证书序列号).
    pub merchant_serial_no: String,
    /// `rsa::PrivateKey` zeroizes itself on drop.
    merchant_private_key: SigningKey<Sha256>,
    apiv3_key: Zeroizing<[u8; 32]>,
    /// WeChat Pay's platform keys by serial (a platform certificate's serial or a
    /// `PUB_KEY_ID_...` of the WeChat Pay public key).
    pub platform_public_keys: Vec<(String, VerifyingKey<Sha256>)>,
    /// `scheme://host[:port]`, no trailing slash.
    pub api_base_url: String,
}

impl std::fmt::Debug for WechatPayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serials: Vec<&str> = self
            .platform_public_keys
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        f.debug_struct("WechatPayConfig")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("merchant_serial_no", &self.merchant_serial_no)
            .field("merchant_private_key", &"<redacted>")
            .field("apiv3_key", &"<redacted>")
            .field("platform_public_keys", &serials)
            .field("api_base_url", &self.api_base_url)
            .finish()
    }
}

const CONFIG_FIELDS: &[&str] = &[
    "mchid",
    "appid",
    "merchant_serial_no",
    "merchant_private_key",
    "apiv3_key",
    "platform_public_keys",
    "api_base_url",
];

fn config_error(field: &str, message: impl Into<String>) -> Error {
    Error::invalid_field(CONFIG_ERROR, &format!("config.{field}"), message)
}

/// Ids that go into the Authorization header, a URL or a JSON field as they are: no
/// quote, comma or space can end up there.
fn is_plain_id(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn id_field(object: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<String> {
    match object.get(field) {
        None | Some(serde_json::Value::Null) => Err(config_error(field, "is required")),
        Some(serde_json::Value::String(value)) if is_plain_id(value, 64) => Ok(value.clone()),
        Some(_) => Err(config_error(
            field,
            "must be 1 to 64 of A-Z a-z 0-9 _ - (as WeChat Pay shows it)",
        )),
    }
}

fn secret_text<'v>(
    object: &'v serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'v str> {
    match object.get(field) {
        None | Some(serde_json::Value::Null) => Err(config_error(field, "is required")),
        Some(serde_json::Value::String(value)) => Ok(value.as_str()),
        // The message names the expected type only: never the value.
        Some(_) => Err(config_error(field, "must be a string")),
    }
}

/// WECHATPAY2-SHA256-RSA2048: nothing weaker than 2048 bits is accepted.
const MIN_KEY_BYTES: usize = 256;

fn parse_private_key(pem: &str) -> Result<SigningKey<Sha256>> {
    let pem = pem.trim();
    // The error texts of the PEM and DER parsers are not shown: the field's path is enough.
    let parsed = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        PrivateKey::from_pkcs1_pem(pem).ok()
    } else {
        PrivateKey::from_pkcs8_pem(pem).ok()
    };
    let key = parsed.ok_or_else(|| {
        config_error(
            "merchant_private_key",
            "must be the merchant API private key as PEM (PKCS#8 `BEGIN PRIVATE KEY`, or PKCS#1 `BEGIN RSA PRIVATE KEY`)",
        )
    })?;
    if key.size() < MIN_KEY_BYTES {
        return Err(config_error(
            "merchant_private_key",
            "must be an RSA key of at least 2048 bits",
        ));
    }
    Ok(SigningKey::new(key))
}

fn parse_public_key(pem: &str, field: &str) -> Result<VerifyingKey<Sha256>> {
    let key = PublicKey::from_public_key_pem(pem.trim()).map_err(|_| {
        config_error(
            field,
            "must be an RSA public key as SPKI PEM (`BEGIN PUBLIC KEY`)",
        )
    })?;
    if key.size() < MIN_KEY_BYTES {
        return Err(config_error(
            field,
            "must be an RSA key of at least 2048 bits",
        ));
    }
    Ok(VerifyingKey::new(key))
}

fn parse_platform_keys(
    value: Option<&serde_json::Value>,
) -> Result<Vec<(String, VerifyingKey<Sha256>)>> {
    const FIELD: &str = "platform_public_keys";
    let items = match value {
        Some(serde_json::Value::Array(items)) if !items.is_empty() => items,
        Some(serde_json::Value::Array(_)) => {
            return Err(config_error(FIELD, "must name at least one platform key"));
        }
        None | Some(serde_json::Value::Null) => return Err(config_error(FIELD, "is required")),
        Some(_) => {
            return Err(config_error(
                FIELD,
                "must be a list of {\"serial_no\", \"public_key\"}",
            ));
        }
    };
    let mut keys: Vec<(String, VerifyingKey<Sha256>)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{FIELD}[{i}]");
        let object = item
            .as_object()
            .ok_or_else(|| config_error(&at, "must be {\"serial_no\", \"public_key\"}"))?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !["serial_no", "public_key"].contains(&k.as_str()))
        {
            return Err(config_error(&format!("{at}.{unknown}"), "unknown field"));
        }
        let serial =
            id_field(object, "serial_no").map_err(|e| e.at(&format!("config.{at}.serial_no")))?;
        if keys.iter().any(|(s, _)| s.eq_ignore_ascii_case(&serial)) {
            return Err(config_error(&format!("{at}.serial_no"), "is listed twice"));
        }
        let field = format!("{at}.public_key");
        let pem = match object.get("public_key") {
            Some(serde_json::Value::String(pem)) => pem,
            None | Some(serde_json::Value::Null) => {
                return Err(config_error(&field, "is required"));
            }
            Some(_) => return Err(config_error(&field, "must be a string")),
        };
        keys.push((serial, parse_public_key(pem, &field)?));
    }
    Ok(keys)
}

fn parse_base_url(value: Option<&serde_json::Value>) -> Result<String> {
    const FIELD: &str = "api_base_url";
    let url = match value {
        None | Some(serde_json::Value::Null) => return Ok(DEFAULT_API_BASE.to_owned()),
        Some(serde_json::Value::String(url)) => url.strip_suffix('/').unwrap_or(url),
        Some(_) => return Err(config_error(FIELD, "must be a string")),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    // Only an origin: the signed path is the API's own (`/v3/...`), as WeChat Pay sees it.
    let valid = rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    if valid {
        Ok(url.to_owned())
    } else {
        Err(config_error(
            FIELD,
            "must be http(s)://host[:port] with no path, query or user",
        ))
    }
}

impl WechatPayConfig {
    /// Parses and checks a channel's `config` JSON (secrets included, opened): fields
    /// `mchid`, `appid`, `merchant_serial_no`, `merchant_private_key` (PEM PKCS#8;
    /// PKCS#1 also accepted), `apiv3_key` (32 bytes), `platform_public_keys`:
    /// `[{"serial_no", "public_key" (SPKI PEM)}]` (non-empty), `api_base_url` (optional,
    /// http(s)). Errors are `invalid_channel_config` at `config.<field>`; unknown fields
    /// are refused; messages never contain key material.
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        let object = config
            .as_object()
            .ok_or_else(|| Error::invalid_field(CONFIG_ERROR, "config", "must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| !CONFIG_FIELDS.contains(&k.as_str())) {
            return Err(config_error(unknown, "unknown field"));
        }
        let mchid = id_field(object, "mchid")?;
        let appid = id_field(object, "appid")?;
        let merchant_serial_no = id_field(object, "merchant_serial_no")?;
        let merchant_private_key = parse_private_key(secret_text(object, "merchant_private_key")?)?;
        let apiv3_key: [u8; 32] = secret_text(object, "apiv3_key")?
            .as_bytes()
            .try_into()
            .map_err(|_| {
                config_error(
                    "apiv3_key",
                    "must be the 32-character APIv3 key set in the merchant platform",
                )
            })?;
        let platform_public_keys = parse_platform_keys(object.get("platform_public_keys"))?;
        let api_base_url = parse_base_url(object.get("api_base_url"))?;
        Ok(WechatPayConfig {
            mchid,
            appid,
            merchant_serial_no,
            merchant_private_key,
            apiv3_key: Zeroizing::new(apiv3_key),
            platform_public_keys,
            api_base_url,
        })
    }

    /// The `Authorization` header of a request (`path_and_query` as sent, `body` as sent,
    /// empty for a GET).
    fn authorization(
        &self,
        method: &str,
        path_and_query: &str,
        body: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Result<String> {
        let message = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n");
        let signature: Signature = self
            .merchant_private_key
            .try_sign(message.as_bytes())
            .map_err(|_| Error::Config("WeChat Pay: signing a request failed".into()))?;
        Ok(format!(
            "{SCHEME} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
            self.mchid,
            B64.encode(signature.to_bytes()),
            self.merchant_serial_no,
        ))
    }
}

/// One header, once: a repeated signature header is refused rather than guessed at.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
    missing: &'static str,
) -> std::result::Result<&'h str, &'static str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(missing)?;
    if values.next().is_some() {
        return Err("a Wechatpay-* header is repeated");
    }
    value
        .to_str()
        .map_err(|_| "a Wechatpay-* header is not text")
}

/// Verifies a message signed by WeChat Pay (an answer or a notification): the raw
/// `body`, the platform key of `Wechatpay-Serial`, the timestamp within
/// `TOLERANCE_SECONDS` of `now` (Unix seconds). The error says why, for a log.
pub fn verify_signed_message(
    platform_keys: &[(String, VerifyingKey<Sha256>)],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> std::result::Result<(), &'static str> {
    let timestamp = single_header(headers, TIMESTAMP_HEADER, "missing Wechatpay-Timestamp")?;
    let nonce = single_header(headers, NONCE_HEADER, "missing Wechatpay-Nonce")?;
    let signature = single_header(headers, SIGNATURE_HEADER, "missing Wechatpay-Signature")?;
    let serial = single_header(headers, SERIAL_HEADER, "missing Wechatpay-Serial")?;
    // Absent in older notifications; when present it must be the RSA scheme (not SM2).
    if headers.contains_key(SIGNATURE_TYPE_HEADER)
        && single_header(headers, SIGNATURE_TYPE_HEADER, "")? != SCHEME
    {
        return Err("unsupported Wechatpay-Signature-Type");
    }
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Wechatpay-Timestamp is not a number");
    }
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| "Wechatpay-Timestamp is not a number")?;
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err("Wechatpay-Timestamp is more than 5 minutes off");
    }
    if platform_keys.is_empty() {
        // Nothing verifies; the caller hears what a forgery hears, the operator reads why.
        tracing::error!("no WeChat Pay platform key is configured; refusing every signature");
        return Err(UNKNOWN_SERIAL);
    }
    let key = platform_keys
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(serial))
        .map(|(_, key)| key)
        .ok_or(UNKNOWN_SERIAL)?;
    // WeChat Pay's probes (`WECHATPAY/SIGNTEST/...`) are not base64 and fail here, as
    // they are meant to.
    let signature = B64
        .decode(signature)
        .map_err(|_| "Wechatpay-Signature is not base64")?;
    let signature = Signature::try_from(signature.as_slice())
        .map_err(|_| "Wechatpay-Signature is malformed")?;
    let mut message =
        Vec::with_capacity(timestamp.to_string().len() + nonce.len() + body.len() + 3);
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'\n');
    message.extend_from_slice(nonce.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message.push(b'\n');
    key.verify(&message, &signature)
        .map_err(|_| "Wechatpay-Signature does not match")
}

const UNKNOWN_SERIAL: &str = "unknown Wechatpay-Serial";

/// Decrypts a notification's `resource` (AEAD_AES_256_GCM under the APIv3 key, nonce and
/// associated data as given, UTF-8).
fn decrypt_resource(apiv3_key: &[u8; 32], resource: &RawResource) -> Result<Vec<u8>> {
    if resource.algorithm != AEAD_ALGORITHM {
        return Err(Error::InvalidSignature("unsupported resource algorithm"));
    }
    let nonce = Nonce::try_from(resource.nonce.as_bytes())
        .map_err(|_| Error::InvalidSignature("resource nonce is not 12 bytes"))?;
    let ciphertext = B64
        .decode(&resource.ciphertext)
        .map_err(|_| Error::InvalidSignature("resource ciphertext is not base64"))?;
    let cipher = Aes256Gcm::new_from_slice(apiv3_key)
        .map_err(|_| Error::InvalidSignature("unusable APIv3 key"))?;
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &ciphertext,
                aad: resource.associated_data.as_deref().unwrap_or("").as_bytes(),
            },
        )
        // Another key (another account's notification) or a changed byte.
        .map_err(|_| Error::InvalidSignature("resource does not decrypt under the APIv3 key"))
}

#[derive(Deserialize)]
struct RawEnvelope {
    id: String,
    event_type: String,
    #[serde(default)]
    resource: Option<RawResource>,
}

#[derive(Deserialize)]
struct RawResource {
    algorithm: String,
    ciphertext: String,
    nonce: String,
    #[serde(default)]
    associated_data: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawAmount {
    #[serde(default)]
    total: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
}

/// A payment (`transaction`) as notifications and the order query show it.
#[derive(Deserialize)]
struct RawTransaction {
    #[serde(default)]
    mchid: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    trade_state: Option<String>,
    #[serde(default)]
    amount: Option<RawAmount>,
}

impl RawTransaction {
    fn money(&self) -> Option<Money> {
        let amount = self.amount.as_ref()?;
        Some(Money {
            amount: amount.total?,
            currency: parse_currency(amount.currency.as_deref()?).ok()?,
        })
    }
}

#[derive(Deserialize)]
struct RawRefund {
    mchid: String,
    out_refund_no: String,
    refund_status: String,
}

/// What a verified notification body means; `mchid`/`appid` are the channel's.
fn parse_notification(body: &[u8], config: &WechatPayConfig) -> Result<PaymentEvent> {
    let envelope: RawEnvelope = serde_json::from_slice(body)
        .map_err(|_| Error::invalid_json("not a WeChat Pay notification"))?;
    let ignored = |envelope: RawEnvelope| PaymentEvent::Ignored {
        event_id: envelope.id,
        kind: envelope.event_type,
    };
    let is_refund = matches!(
        envelope.event_type.as_str(),
        "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED"
    );
    if envelope.event_type != "TRANSACTION.SUCCESS" && !is_refund {
        return Ok(ignored(envelope));
    }
    let resource = envelope
        .resource
        .as_ref()
        .ok_or_else(|| Error::invalid_json("the notification has no resource"))?;
    let plaintext = decrypt_resource(&config.apiv3_key, resource)?;
    if is_refund {
        let refund: RawRefund = serde_json::from_slice(&plaintext).map_err(|_| {
            Error::invalid_json("the notification's refund is not of the expected shape")
        })?;
        if refund.mchid != config.mchid {
            return Err(Error::InvalidSignature("the refund is another merchant's"));
        }
        return Ok(PaymentEvent::RefundSettled {
            event_id: envelope.id,
            refund_id: refund.out_refund_no,
            succeeded: refund.refund_status == "SUCCESS",
        });
    }
    let transaction: RawTransaction = serde_json::from_slice(&plaintext).map_err(|_| {
        Error::invalid_json("the notification's transaction is not of the expected shape")
    })?;
    // A genuine notification of another merchant or app (shared platform key, shared
    // APIv3 key) pays nothing here.
    if transaction.mchid.as_deref() != Some(config.mchid.as_str())
        || transaction.appid.as_deref() != Some(config.appid.as_str())
    {
        return Err(Error::InvalidSignature(
            "the payment is another merchant's or app's",
        ));
    }
    if transaction.trade_state.as_deref() != Some("SUCCESS") {
        return Ok(ignored(envelope));
    }
    let money = transaction.money();
    match (transaction.out_trade_no, money, transaction.transaction_id) {
        (Some(payment_id), Some(amount), Some(provider_ref)) => {
            Ok(PaymentEvent::Paid(PaymentNotice {
                provider: PROVIDER,
                event_id: envelope.id,
                payment_id: Some(payment_id),
                order_id: None,
                amount,
                provider_ref,
            }))
        }
        (payment_id, amount, _) => Ok(PaymentEvent::Unbound {
            event_id: envelope.id,
            kind: envelope.event_type,
            missing: if payment_id.is_none() {
                "out_trade_no"
            } else if amount.is_none() {
                "amount"
            } else {
                "transaction_id"
            },
        }),
    }
}

/// WeChat Pay's answer to a notification: 204 with no body once recorded; otherwise
/// `{"code":"FAIL","message":..}`, 400 for what the sender caused, 500 for Kami's own
/// trouble (WeChat Pay retries both).
pub fn notification_answer(outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
    let (status, message) = match outcome {
        Ok(()) => {
            return NotificationAnswer {
                status: 204,
                content_type: "application/json",
                body: Vec::new(),
            };
        }
        Err(
            err @ (Error::InvalidSignature(_)
            | Error::InvalidRequest { .. }
            | Error::InvalidJson { .. }),
        ) => (400, err.to_string()),
        // Kami's own trouble: no detail of it goes out.
        Err(_) => (
            500,
            "the notification could not be recorded; retry".to_owned(),
        ),
    };
    NotificationAnswer {
        status,
        content_type: "application/json",
        body: serde_json::json!({"code": "FAIL", "message": message})
            .to_string()
            .into_bytes(),
    }
}

/// WeChat Pay's error body (`{"code": .., "message": ..}`).
#[derive(Deserialize, Default)]
struct RawError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// An answer whose signature, if it carries one, verified.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn error(&self) -> RawError {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    fn upstream(&self) -> Error {
        let error = self.error();
        Error::Upstream {
            system: PROVIDER,
            message: if error.code.is_empty() {
                format!("WeChat Pay answered HTTP {}", self.status)
            } else {
                format!(
                    "WeChat Pay answered HTTP {} {}: {}",
                    self.status, error.code, error.message
                )
            },
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|_| Error::Upstream {
            system: PROVIDER,
            message: "WeChat Pay's answer is not of the expected shape".into(),
        })
    }
}

fn upstream(message: &str) -> Error {
    Error::Upstream {
        system: PROVIDER,
        message: message.to_owned(),
    }
}

/// `out_trade_no` goes into a URL path: only the characters Kami's payment ids use.
fn checked_payment_id(payment_id: &str) -> Result<&str> {
    if is_plain_id(payment_id, 32) {
        Ok(payment_id)
    } else {
        Err(Error::invalid(
            "invalid_payment_id",
            "a WeChat Pay payment id is 1 to 32 of A-Z a-z 0-9 _ -",
        ))
    }
}

/// WeChat Pay takes only 1-3 byte UTF-8 characters and at most `max` bytes: others are
/// dropped, and the text is cut on a character boundary.
fn wechat_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text
        .chars()
        .filter(|c| c.len_utf8() <= 3 && !c.is_control())
    {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// RFC 3339 in Beijing time, to the second (`2027-01-15T16:30:00+08:00`).
fn beijing_rfc3339(at: Timestamp) -> Result<String> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
    );
    time::OffsetDateTime::from_unix_timestamp(at.unix_seconds())
        .map(|t| t.to_offset(time::macros::offset!(+8)))
        .ok()
        .and_then(|t| t.format(format).ok())
        .ok_or_else(|| Error::invalid("invalid_expiry", "the payment's deadline is out of range"))
}

fn fen(money: &Money) -> Result<i64> {
    if money.currency != CURRENCY {
        return Err(Error::invalid(
            "channel_not_eligible",
            "WeChat Pay takes CNY only",
        ));
    }
    if money.amount < 1 || money.amount > i64::from(i32::MAX) {
        return Err(Error::invalid(
            "channel_not_eligible",
            "WeChat Pay takes 1 to 2147483647 fen",
        ));
    }
    Ok(money.amount)
}

#[derive(Serialize)]
struct NativeOrder<'a> {
    appid: &'a str,
    mchid: &'a str,
    description: String,
    out_trade_no: &'a str,
    time_expire: String,
    notify_url: &'a str,
    amount: OrderAmount,
}

#[derive(Serialize)]
struct OrderAmount {
    total: i64,
    currency: &'static str,
}

#[derive(Serialize)]
struct CloseOrder<'a> {
    mchid: &'a str,
}

#[derive(Serialize)]
struct RefundOrder<'a> {
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    notify_url: &'a str,
    amount: RefundAmount,
}

#[derive(Serialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    currency: &'static str,
}

#[derive(Deserialize)]
struct RawCodeUrl {
    #[serde(default)]
    code_url: Option<String>,
}

#[derive(Deserialize)]
struct RawRefundAnswer {
    #[serde(default)]
    status: Option<String>,
}

/// The body of a Native order (`POST /v3/pay/transactions/native`).
fn native_order_body(config: &WechatPayConfig, request: &PaymentRequest) -> Result<String> {
    if request.method != PaymentMethod::Native {
        return Err(Error::invalid(
            "unsupported_payment_method",
            format!(
                "WeChat Pay offers the native method here, not {}",
                request.method.as_str()
            ),
        ));
    }
    let total = fen(&request.amount)?;
    let out_trade_no = checked_payment_id(&request.payment_id)?;
    let mut description = wechat_text(&request.subject, DESCRIPTION_MAX_BYTES);
    if description.trim().is_empty() {
        // WeChat Pay requires one; the order id is better than a refusal.
        description = wechat_text(&request.order_id, DESCRIPTION_MAX_BYTES);
    }
    let order = NativeOrder {
        appid: &config.appid,
        mchid: &config.mchid,
        description,
        out_trade_no,
        time_expire: beijing_rfc3339(request.expires_at)?,
        notify_url: &request.notify_url,
        amount: OrderAmount {
            total,
            currency: CURRENCY,
        },
    };
    serde_json::to_string(&order).map_err(|err| Error::Config(format!("WeChat Pay order: {err}")))
}

/// WeChat Pay as a `PaymentProvider` for one channel (one merchant account).
pub struct WechatPayProvider {
    config: WechatPayConfig,
    http: HttpClient,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WechatPayProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatPayProvider")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WechatPayProvider {
    pub fn new(
        config: WechatPayConfig,
        http: HttpClient,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        WechatPayProvider {
            config,
            http,
            timeout,
            clock,
        }
    }

    /// One signed call. A 2xx answer must carry a signature that verifies (WeChat Pay:
    /// an unsigned success is forged); an error answer is checked when it carries one.
    /// Either failing is `Error::Upstream`: the answer is not believed.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer> {
        let timestamp = self.clock.now().unix_seconds();
        // 32 characters, as the SDKs' nonces; unique per request.
        let nonce = format!("{:032X}", rand::random::<u128>());
        let authorization = self.config.authorization(
            method.as_str(),
            path_and_query,
            body.as_deref().unwrap_or(""),
            timestamp,
            &nonce,
        )?;
        let url = format!("{}{path_and_query}", self.config.api_base_url);
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
        ];
        let HttpResponse {
            status,
            headers,
            body,
        } = self
            .http
            .send(
                PROVIDER,
                method,
                &url,
                &headers,
                body.map(String::into_bytes),
                self.timeout,
            )
            .await?;
        let answer = Answer { status, body };
        let signed = headers.contains_key(SIGNATURE_HEADER);
        if answer.ok() || signed {
            let now = self.clock.now().unix_seconds();
            if let Err(why) = verify_signed_message(
                &self.config.platform_public_keys,
                &headers,
                &answer.body,
                now,
            ) {
                tracing::warn!(status, why, "WeChat Pay answer failed verification");
                return Err(upstream(&format!(
                    "WeChat Pay's answer (HTTP {status}) failed verification: {why}"
                )));
            }
        }
        Ok(answer)
    }

    async fn create(&self, request: &PaymentRequest) -> Result<PaymentSession> {
        let body = native_order_body(&self.config, request)?;
        let answer = self
            .call(Method::POST, "/v3/pay/transactions/native", Some(body))
            .await?;
        if !answer.ok() {
            return Err(answer.upstream());
        }
        let code_url = answer
            .json::<RawCodeUrl>()?
            .code_url
            .filter(|url| !url.is_empty())
            .ok_or_else(|| upstream("WeChat Pay's order answer has no code_url"))?;
        Ok(PaymentSession {
            provider_ref: None,
            action: PaymentAction::QrCode { code_url },
        })
    }

    async fn query(&self, payment: &PaymentHandle) -> Result<PaymentState> {
        let payment_id = checked_payment_id(&payment.payment_id)?;
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{payment_id}?mchid={}",
            self.config.mchid
        );
        let answer = self.call(Method::GET, &path, None).await?;
        if !answer.ok() {
            if answer.status == 404 && is_order_not_exist(&answer.error().code) {
                return Ok(PaymentState::Unknown);
            }
            return Err(answer.upstream());
        }
        let transaction: RawTransaction = answer.json()?;
        // A verified answer about another order or merchant is not about this payment.
        if transaction
            .out_trade_no
            .as_deref()
            .is_some_and(|id| id != payment_id)
            || transaction
                .mchid
                .as_deref()
                .is_some_and(|id| id != self.config.mchid)
        {
            return Err(upstream("WeChat Pay answered about another payment"));
        }
        let money = || {
            transaction
                .money()
                .ok_or_else(|| upstream("WeChat Pay's order answer has no amount"))
        };
        match transaction.trade_state.as_deref() {
            Some("NOTPAY" | "USERPAYING") => Ok(PaymentState::AwaitingPayment),
            Some("SUCCESS") => Ok(PaymentState::Paid {
                amount: money()?,
                provider_ref: transaction
                    .transaction_id
                    .clone()
                    .ok_or_else(|| upstream("WeChat Pay's order answer has no transaction_id"))?,
            }),
            Some("CLOSED" | "REVOKED" | "PAYERROR") => Ok(PaymentState::Closed),
            Some("REFUND") => Ok(PaymentState::Refunded { amount: money()? }),
            _ => Err(upstream(
                "WeChat Pay's order answer has an unknown trade_state",
            )),
        }
    }

    async fn close(&self, payment: &PaymentHandle) -> Result<()> {
        let payment_id = checked_payment_id(&payment.payment_id)?;
        let path = format!("/v3/pay/transactions/out-trade-no/{payment_id}/close");
        let body = serde_json::to_string(&CloseOrder {
            mchid: &self.config.mchid,
        })
        .map_err(|err| Error::Config(format!("WeChat Pay close: {err}")))?;
        let answer = self.call(Method::POST, &path, Some(body)).await?;
        if answer.ok() {
            return Ok(());
        }
        match answer.error().code.as_str() {
            // Never opened, or already closed: it cannot be paid, which is the point.
            code if is_order_not_exist(code) => Ok(()),
            "ORDER_CLOSED" => Ok(()),
            _ => Err(answer.upstream()),
        }
    }

    async fn refund_payment(&self, request: &RefundRequest) -> Result<RefundOutcome> {
        let out_trade_no = checked_payment_id(&request.payment.payment_id)?;
        let refund = fen(&request.amount)?;
        let total = fen(&request.paid)?;
        let body = serde_json::to_string(&RefundOrder {
            out_trade_no,
            out_refund_no: &request.refund_id,
            reason: wechat_text(&request.reason, REASON_MAX_BYTES),
            notify_url: &request.notify_url,
            amount: RefundAmount {
                refund,
                total,
                currency: CURRENCY,
            },
        })
        .map_err(|err| Error::Config(format!("WeChat Pay refund: {err}")))?;
        let answer = self
            .call(Method::POST, "/v3/refund/domestic/refunds", Some(body))
            .await?;
        if !answer.ok() {
            // 401 (our signature) and 429 (rate) say nothing about the refund: retry.
            if (400..500).contains(&answer.status) && !matches!(answer.status, 401 | 429) {
                let error = answer.error();
                return Ok(RefundOutcome::Refused {
                    reason: if error.code.is_empty() {
                        format!("HTTP {}", answer.status)
                    } else {
                        format!("{}: {}", error.code, error.message)
                    },
                });
            }
            return Err(answer.upstream());
        }
        match answer.json::<RawRefundAnswer>()?.status.as_deref() {
            Some("SUCCESS") => Ok(RefundOutcome::Refunded),
            Some("PROCESSING") => Ok(RefundOutcome::Pending),
            Some(status @ ("CLOSED" | "ABNORMAL")) => Ok(RefundOutcome::Refused {
                reason: format!("refund status {status}"),
            }),
            _ => Err(upstream("WeChat Pay's refund answer has an unknown status")),
        }
    }

    fn verify(&self, notification: &Notification<'_>) -> Result<PaymentEvent> {
        verify_signed_message(
            &self.config.platform_public_keys,
            notification.headers,
            notification.body,
            notification.received_at.unix_seconds(),
        )
        .map_err(Error::InvalidSignature)?;
        parse_notification(notification.body, &self.config)
    }
}

/// WeChat Pay spells it `ORDER_NOT_EXIST`; one page of its docs `ORDER_NOT_EXISTS`.
fn is_order_not_exist(code: &str) -> bool {
    matches!(code, "ORDER_NOT_EXIST" | "ORDER_NOT_EXISTS")
}

impl PaymentProvider for WechatPayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn default_method(&self) -> PaymentMethod {
        PaymentMethod::Native
    }

    fn create_payment<'a>(&'a self, request: &'a PaymentRequest) -> PortFuture<'a, PaymentSession> {
        Box::pin(self.create(request))
    }

    fn verify_notification<'a>(
        &'a self,
        notification: &'a Notification<'a>,
    ) -> PortFuture<'a, PaymentEvent> {
        Box::pin(async move { self.verify(notification) })
    }

    fn notification_answer(&self, outcome: std::result::Result<(), &Error>) -> NotificationAnswer {
        notification_answer(outcome)
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
