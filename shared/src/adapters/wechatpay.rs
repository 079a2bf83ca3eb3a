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
use lambda_http::http::Method;
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
    BillLine, BillPeriod, BillSource, Notification, NotificationAnswer, PaymentAction,
    PaymentEvent, PaymentHandle, PaymentMethod, PaymentNotice, PaymentProvider, PaymentRequest,
    PaymentSession, PaymentState, RefundOutcome, RefundRequest,
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
    // An origin, and optionally a path prefix (a proxy, the local sandbox): the signed
    // path is always the API's own (`/v3/...`), as WeChat Pay sees it.
    let valid = rest.is_some_and(|rest| {
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
    });
    if valid {
        Ok(url.to_owned())
    } else {
        Err(config_error(
            FIELD,
            "must be http(s)://host[:port][/path] with no query or user",
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
        let apiv3_text = secret_text(object, "apiv3_key")?.as_bytes();
        if apiv3_text.len() != 32 {
            return Err(config_error(
                "apiv3_key",
                "must be the 32-character APIv3 key set in the merchant platform",
            ));
        }
        // Copied straight into wiped memory (no stray copy on the stack).
        let mut apiv3_key = Zeroizing::new([0u8; 32]);
        apiv3_key.copy_from_slice(apiv3_text);
        let platform_public_keys = parse_platform_keys(object.get("platform_public_keys"))?;
        let api_base_url = parse_base_url(object.get("api_base_url"))?;
        Ok(WechatPayConfig {
            mchid,
            appid,
            merchant_serial_no,
            merchant_private_key,
            apiv3_key,
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
    // The header's own text is what was signed; the number is for the freshness check.
    let signed_timestamp = timestamp;
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
    let mut message = Vec::with_capacity(signed_timestamp.len() + nonce.len() + body.len() + 3);
    for part in [signed_timestamp.as_bytes(), nonce.as_bytes(), body] {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
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

/// Where a bill is (`GET /v3/bill/tradebill`).
#[derive(Deserialize)]
struct RawBill {
    download_url: String,
    hash_type: String,
    hash_value: String,
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
        let url = format!("{}{path_and_query}", self.config.api_base_url);
        let HttpResponse {
            status,
            headers,
            body,
        } = self.send_signed(method, &url, path_and_query, body).await?;
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

    /// One request to `url`, signed over `path_and_query` as WeChat Pay specifies.
    async fn send_signed(
        &self,
        method: Method,
        url: &str,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<HttpResponse> {
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
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
        ];
        self.http
            .send(
                PROVIDER,
                method,
                url,
                &headers,
                body.map(String::into_bytes),
                self.timeout,
            )
            .await
    }

    /// The trade bill of `period`'s day (`bill_type=ALL`): the answer names the file and
    /// its hash; the file itself is not signed (its hash, from the verified answer, is
    /// checked instead). A day without trades is `NO_STATEMENT_EXIST`: an empty bill.
    async fn bill(&self, period: &BillPeriod) -> Result<Vec<BillLine>> {
        let date = jiff::civil::Date::strptime("%Y-%m-%d", &period.date)
            .map_err(|_| Error::Config(format!("bill date {} is not a date", period.date)))?;
        let path = format!("/v3/bill/tradebill?bill_date={date}&bill_type=ALL");
        let answer = self.call(Method::GET, &path, None).await?;
        if !answer.ok() {
            if answer.error().code == "NO_STATEMENT_EXIST" {
                return Ok(Vec::new());
            }
            return Err(answer.upstream());
        }
        let named: RawBill = answer.json()?;
        // The file is fetched only from WeChat Pay's own API (the channel's base URL):
        // a signed request never goes elsewhere.
        let path = named
            .download_url
            .strip_prefix(self.config.api_base_url.as_str())
            .filter(|path| path.starts_with('/'))
            .ok_or_else(|| upstream("WeChat Pay's bill is somewhere else than its API"))?;
        let file = self
            .send_signed(Method::GET, &named.download_url, path, None)
            .await?;
        if !(200..300).contains(&file.status) {
            return Err(upstream(&format!(
                "WeChat Pay's bill file answered HTTP {}",
                file.status
            )));
        }
        super::wechatpay_bill::check_hash(&file.body, &named.hash_type, &named.hash_value)?;
        super::wechatpay_bill::parse_trade_bill(&file.body)
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
            || transaction
                .appid
                .as_deref()
                .is_some_and(|id| id != self.config.appid)
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

impl BillSource for WechatPayProvider {
    fn fetch_bill<'a>(&'a self, period: &'a BillPeriod) -> PortFuture<'a, Vec<BillLine>> {
        Box::pin(self.bill(period))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use lambda_http::http::{HeaderName, HeaderValue};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::fakes::FakeClock;

    /// Made by `infra/tests/wechatpay_golden.py` (run it in a venv with `pip install
    /// wechatpayv3`): the Python SDK `wechatpayv3` 2.0.4 signing with the test merchant
    /// key at timestamp 1800000000 with nonce 593BEC0C930BF1AFEB40B4A08C8FB242
    /// (`utils.build_authorization`), and a notification and an answer signed with the
    /// test platform key (`utils.rsa_sign`), the notification encrypted under the test
    /// APIv3 key and accepted by the SDK's own `WeChatPay.callback`.
    mod golden {
        pub const NATIVE_BODY: &str = r#"{"appid":"wxd678efh567hg6787","mchid":"1900000001","description":"Kami 测试商品","out_trade_no":"P01JG7ZQ8K2M3N4P5Q6R7S8T9V","time_expire":"2027-01-15T16:30:00+08:00","notify_url":"https://kami.example.com/webhooks/wechatpay/ch_01","amount":{"total":990,"currency":"CNY"}}"#;
        pub const NATIVE_AUTHORIZATION: &str = r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",signature="fwuq1fbT5lt+hedGcvJVJMiU0AdIVWnQGT/vUTgXyD1tiSMiWfpJnX436jRxJjwdt7MsH28x2EBtl1GAsrCEWcm5Fu5CBnxWPdEtP7KXcZdeqofQKVCoeRczYcizFENmvU2pf0pNjaOhM9cUyfCHVJ3X6hJmyxvhA/kwIUcGCtyagFhxJ4IwmmqffvpYJ6kWEEfIWeXPS7uVf+f6aHuXzCF7m+zgqd/JVIR5p8536OXQu23NL+dd1prgUa2oQz1N829fTVzguA7s1O5KfBfx8/2JxmraY0kknqfjCCBeY/LpuD6HVbktlmE0pvbuPo6aXJQILKNLwMGCBRUvEI51zw==",timestamp="1800000000",serial_no="3775B6A45ACD588826D15E583A95F5DD4C3C7E0F""#;
        pub const QUERY_PATH: &str =
            r#"/v3/pay/transactions/out-trade-no/P01JG7ZQ8K2M3N4P5Q6R7S8T9V?mchid=1900000001"#;
        pub const QUERY_AUTHORIZATION: &str = r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",signature="rEBnVxPryG0gfm1mq4t1Y1/C/5FQ2AfdxiiFpj6jgNYdbFo4MtnBmnah9M/65PJdgXuqz8BO5023irDYbiQLVXQeP1k8+Uqbt7IOIu7/OAUjTq06g2+nLpDrSAx0BDhelotn5HsuaZ625nFHXh/JU6mbj3VK3d4XR91BJIvMtAaTkchWWOgApHLrrt/BSi3bpO2TNJwxnGrnLhBLp+KA5QBb3nz3lF+r3EqJ9/FX6LZNV91QUUCeaaErQNR3ljHOVh7yeVfPmbxLwkTjyMKOw6qoPMGXVWdAcS1U6ArUC1ElgPKAb8JsvdPy+m3MdwlVkf5ngphkQ00+m/gUEckAcg==",timestamp="1800000000",serial_no="3775B6A45ACD588826D15E583A95F5DD4C3C7E0F""#;
        pub const NOTIFY_BODY: &str = r#"{"id":"EV-2018022511223320873","create_time":"2027-01-15T16:00:00+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"UQPbRTly4mp/wSvMgYQrJyVXmKrmXxopv5GUQWNl1n4jaHEZMxBIEuKRMlvD0IOHArskkoRbI6YTHk6X7NdjTi7/PF+QNwEF2t2TJM/UWinsr/mztP9EznAv7meoZ6gP7VL6ismctNg0Z0tmjSxX3SVf8FE1eohkzn30t6SC/OeFcZ+PIXkzBXh+alt5YL2+mWHC3lJkuVg+Zjqa70I5aqUD/09BkQEVbGLg4rghu4IeoOIoehmdF72H+4PZwlySHIn8KGpR+ED5i+x/b/dBC6wD8D4dil4qSaIbc6Ca/4VGofUBIkqrWQFt1uhwyyT7x/mGEI2FJO2DKXwJ6DRb1wUoveC5BTw5keCA9GG8+n4UI//fLAME1JIp1PMceQHTxTR7KCrYrCkfs1H18Ky5u0f1jf0Lobb4sWjO7Bs91zOTqDg+VlVqMC63d8a6Qu2IW/uh9qWV7idl8lf+oCRneWOmBF9MTOiy/+u0uQH298k8DdHwoQPzBQmPAEsVUBVgRsGJrg3wfhXZNB5/5k1gX1QuqShst+BxLIukafBjzWeRNp/oRVSgvJtykTh1e9TGT0zaiqIsK3U3P8yCffA=","associated_data":"transaction","nonce":"fdasflkja484"}}"#;
        pub const NOTIFY_SIGNATURE: &str = r#"sz4OVUmw0aAfyb4XoRAXPjVeeivK9w6D/iaJx7hjuyxnX53tmG+jXwaD5LYi3JL0xcWz0e1b330HeSlv8AJLwc6esyx8igWCU9CzDQgj9IQKMRhxoB8tP1e1/8fhQ4g7KsdNNg077HTI1K0QPn/I9aZD15gKS9fXhwFhOCbX2Gdqgty87FIbQbDRhEMC323xbL3Wp6V65pmr8WpUvv7PwCOmlFqKo4oZ4PL/FC2fMZ7EXxdYCY/EcE4/2tPtX+Amt8+lex9Eegplc9blNfX5Vz4TIg0WKyq/FyLq6T0R/HVJ1Kn7RNBQVnhzqiAInSsQvE4NhBXcETwmJ17bvTIrGA=="#;
        pub const TRANSACTION: &str = r#"{"mchid":"1900000001","appid":"wxd678efh567hg6787","out_trade_no":"P01JG7ZQ8K2M3N4P5Q6R7S8T9V","transaction_id":"4200000000202701150000000001","trade_type":"NATIVE","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2027-01-15T16:00:00+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"amount":{"total":990,"payer_total":990,"currency":"CNY","payer_currency":"CNY"}}"#;
        pub const ANSWER_BODY: &str = r#"{"code_url":"weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}"#;
        pub const ANSWER_SIGNATURE: &str = r#"VjiaO6k6FmMMTvGfMWe9zwX3jR82WnRzpWlsb5sYis9rZjwGR507Fq3Twit8S1m73KbFXHm26iJ8I3+C+i0ZsP4QJlENoV9DscBl3ck8nQuWC7moMDjOm9faOzTHLM7lfNoweQm7q5BMF0thax1jXlFjhlFSxM8RbXAYqe5JkW097pCECfkJWamEul8LTuOzX8cvubJ96TriyUr2TTuNe7+0k/ylyXH40dMe/H1bpujoCHyTGUq+uCMiT6diKpx1vi/qjEbwvWx7ZKX1t1qXjjm0eAYuPE0Vqf8flTW4dG5BsmybOYyX0MliHLxF6Ad2E8tUMeLU7b4VJLmhWdqluQ=="#;
        pub const REQUEST_NONCE: &str = "593BEC0C930BF1AFEB40B4A08C8FB242";
        pub const NOTIFY_NONCE: &str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
        pub const RESPONSE_NONCE: &str = "C8F4E1A2B3D4E5F60718293A4B5C6D7E";
    }

    // Test keys, not secrets (shared/testdata/wechatpay/README.md).
    const MERCHANT_PRIVATE_KEY: &str =
        include_str!("../../testdata/wechatpay/test_merchant_private_key.pem");
    const MERCHANT_PUBLIC_KEY: &str =
        include_str!("../../testdata/wechatpay/test_merchant_public_key.pem");
    const PLATFORM_PRIVATE_KEY: &str =
        include_str!("../../testdata/wechatpay/test_platform_private_key.pem");
    const PLATFORM_PUBLIC_KEY: &str =
        include_str!("../../testdata/wechatpay/test_platform_public_key.pem");

    const MCHID: &str = "1900000001";
    const APPID: &str = "wxd678efh567hg6787";
    const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD4C3C7E0F";
    const PLATFORM_SERIAL: &str = "PUB_KEY_ID_0119000000012027011500000000";
    /// The merchant key pair plays a second (rotated) platform key.
    const OLD_PLATFORM_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
    const APIV3_KEY: &str = "kami-test-apiv3-key-0123456789ab";
    const OTHER_APIV3_KEY: &str = "another-merchants-apiv3-key-0000";
    const PAYMENT_ID: &str = "P01JG7ZQ8K2M3N4P5Q6R7S8T9V";
    /// FakeClock::DEFAULT in seconds.
    const NOW: i64 = 1_800_000_000;

    fn config_json() -> serde_json::Value {
        serde_json::json!({
            "mchid": MCHID,
            "appid": APPID,
            "merchant_serial_no": MERCHANT_SERIAL,
            "merchant_private_key": MERCHANT_PRIVATE_KEY,
            "apiv3_key": APIV3_KEY,
            "platform_public_keys": [
                {"serial_no": PLATFORM_SERIAL, "public_key": PLATFORM_PUBLIC_KEY},
                {"serial_no": OLD_PLATFORM_SERIAL, "public_key": MERCHANT_PUBLIC_KEY},
            ],
        })
    }

    fn config() -> WechatPayConfig {
        WechatPayConfig::from_json(&config_json()).unwrap()
    }

    fn signer(pem: &str) -> SigningKey<Sha256> {
        SigningKey::new(PrivateKey::from_pkcs8_pem(pem).unwrap())
    }

    fn platform() -> SigningKey<Sha256> {
        signer(PLATFORM_PRIVATE_KEY)
    }

    /// WeChat Pay's signature over `"{ts}\n{nonce}\n{body}\n"`.
    fn sign(key: &SigningKey<Sha256>, timestamp: i64, nonce: &str, body: &[u8]) -> String {
        let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message.push(b'\n');
        B64.encode(key.sign(&message).to_bytes())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// The headers WeChat Pay sends with a body signed by `key` as `serial` at `timestamp`.
    fn signed(key: &SigningKey<Sha256>, serial: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
        headers(&[
            ("Wechatpay-Timestamp", &timestamp.to_string()),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Signature", &sign(key, timestamp, nonce, body)),
            ("Wechatpay-Serial", serial),
            ("Wechatpay-Signature-Type", SCHEME),
        ])
    }

    fn encrypt(apiv3_key: &str, nonce: &str, aad: &str, plaintext: &str) -> String {
        let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes()).unwrap();
        let nonce = Nonce::try_from(nonce.as_bytes()).unwrap();
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap();
        B64.encode(sealed)
    }

    /// A notification body laid out as WeChat Pay's (and the golden script's).
    fn notification_body(
        id: &str,
        event_type: &str,
        summary: &str,
        original_type: &str,
        apiv3_key: &str,
        plaintext: &str,
    ) -> String {
        let (nonce, aad) = ("fdasflkja484", original_type);
        let ciphertext = encrypt(apiv3_key, nonce, aad, plaintext);
        format!(
            r#"{{"id":"{id}","create_time":"2027-01-15T16:00:00+08:00","resource_type":"encrypt-resource","event_type":"{event_type}","summary":"{summary}","resource":{{"original_type":"{original_type}","algorithm":"AEAD_AES_256_GCM","ciphertext":"{ciphertext}","associated_data":"{aad}","nonce":"{nonce}"}}}}"#
        )
    }

    fn transaction(mchid: &str, appid: &str, trade_state: &str) -> String {
        serde_json::json!({
            "mchid": mchid, "appid": appid, "out_trade_no": PAYMENT_ID,
            "transaction_id": "4200000000202701150000000002", "trade_type": "NATIVE",
            "trade_state": trade_state, "amount": {"total": 1980, "currency": "CNY"},
        })
        .to_string()
    }

    fn paid_notification(apiv3_key: &str, plaintext: &str) -> String {
        notification_body(
            "EV-1",
            "TRANSACTION.SUCCESS",
            "支付成功",
            "transaction",
            apiv3_key,
            plaintext,
        )
    }

    fn refund_notification(event_type: &str, mchid: &str, status: &str) -> String {
        let refund = serde_json::json!({
            "mchid": mchid, "out_trade_no": PAYMENT_ID,
            "transaction_id": "4200000000202701150000000002", "out_refund_no": "R01REFUND",
            "refund_id": "50000000382019052709732678859", "refund_status": status,
            "amount": {"total": 1980, "refund": 1980, "payer_total": 1980, "payer_refund": 1980},
        });
        notification_body(
            "EV-R",
            event_type,
            "退款成功",
            "refund",
            APIV3_KEY,
            &refund.to_string(),
        )
    }

    fn provider_at(base: &str) -> (WechatPayProvider, Arc<FakeClock>) {
        let mut config = config();
        config.api_base_url = base.to_owned();
        let clock = Arc::new(FakeClock::default());
        let provider = WechatPayProvider::new(
            config,
            HttpClient::new().unwrap(),
            Duration::from_secs(5),
            clock.clone(),
        );
        (provider, clock)
    }

    fn provider() -> WechatPayProvider {
        provider_at(DEFAULT_API_BASE).0
    }

    async fn verify(
        provider: &WechatPayProvider,
        headers: &HeaderMap,
        body: &[u8],
        at: i64,
    ) -> Result<PaymentEvent> {
        provider
            .verify_notification(&Notification {
                headers,
                body,
                received_at: Timestamp::from_unix_seconds(at),
            })
            .await
    }

    fn request() -> PaymentRequest {
        PaymentRequest {
            payment_id: PAYMENT_ID.into(),
            order_id: "01JG7ZQ8K2M3N4P5Q6R7S8T9VW".into(),
            amount: Money {
                amount: 990,
                currency: "CNY".into(),
            },
            subject: "Kami 测试商品".into(),
            method: PaymentMethod::Native,
            notify_url: "https://kami.example.com/webhooks/wechatpay/ch_01".into(),
            expires_at: Timestamp::from_unix_seconds(NOW + 1800),
            buyer_email: "buyer@example.com".into(),
        }
    }

    fn handle() -> PaymentHandle {
        PaymentHandle {
            payment_id: PAYMENT_ID.into(),
            provider_ref: None,
        }
    }

    fn refund_request() -> RefundRequest {
        RefundRequest {
            refund_id: "R01REFUND".into(),
            payment: handle(),
            amount: Money {
                amount: 500,
                currency: "CNY".into(),
            },
            paid: Money {
                amount: 990,
                currency: "CNY".into(),
            },
            reason: "buyer asked".into(),
            notify_url: "https://kami.example.com/webhooks/wechatpay/ch_01".into(),
        }
    }

    // ---- Signing: byte for byte what the Python SDK produces.

    #[test]
    fn golden_authorization_matches_the_python_sdk() {
        let config = config();
        let body = native_order_body(&config, &request()).unwrap();
        assert_eq!(body, golden::NATIVE_BODY);
        let native = config
            .authorization(
                "POST",
                "/v3/pay/transactions/native",
                &body,
                NOW,
                golden::REQUEST_NONCE,
            )
            .unwrap();
        assert_eq!(native, golden::NATIVE_AUTHORIZATION);
        let query = config
            .authorization("GET", golden::QUERY_PATH, "", NOW, golden::REQUEST_NONCE)
            .unwrap();
        assert_eq!(query, golden::QUERY_AUTHORIZATION);
    }

    #[test]
    fn a_pkcs1_private_key_is_accepted_and_signs_the_same() {
        let pkcs1 = PrivateKey::from_pkcs8_pem(MERCHANT_PRIVATE_KEY)
            .unwrap()
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let mut json = config_json();
        json["merchant_private_key"] = serde_json::json!(pkcs1.as_str());
        let config = WechatPayConfig::from_json(&json).unwrap();
        let query = config
            .authorization("GET", golden::QUERY_PATH, "", NOW, golden::REQUEST_NONCE)
            .unwrap();
        assert_eq!(query, golden::QUERY_AUTHORIZATION);
    }

    // ---- Notifications.

    fn sdk_notification_headers() -> HeaderMap {
        headers(&[
            ("Wechatpay-Timestamp", "1800000000"),
            ("Wechatpay-Nonce", golden::NOTIFY_NONCE),
            ("Wechatpay-Signature", golden::NOTIFY_SIGNATURE),
            ("Wechatpay-Serial", PLATFORM_SERIAL),
            ("Wechatpay-Signature-Type", SCHEME),
        ])
    }

    #[tokio::test]
    async fn golden_notification_from_the_sdk_pays_its_payment() {
        let event = verify(
            &provider(),
            &sdk_notification_headers(),
            golden::NOTIFY_BODY.as_bytes(),
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(
            event,
            PaymentEvent::Paid(PaymentNotice {
                provider: "wechatpay",
                event_id: "EV-2018022511223320873".into(),
                payment_id: Some(PAYMENT_ID.into()),
                order_id: None,
                amount: Money {
                    amount: 990,
                    currency: "CNY".into(),
                },
                provider_ref: "4200000000202701150000000001".into(),
            })
        );
    }

    #[test]
    fn our_test_notifications_are_the_sdks_byte_for_byte() {
        // The helpers the other tests use build what the SDK built: same ciphertext under
        // the APIv3 key, same platform signature.
        let body = paid_notification(APIV3_KEY, golden::TRANSACTION)
            .replace("\"id\":\"EV-1\"", "\"id\":\"EV-2018022511223320873\"");
        assert_eq!(body, golden::NOTIFY_BODY);
        assert_eq!(
            sign(&platform(), NOW, golden::NOTIFY_NONCE, body.as_bytes()),
            golden::NOTIFY_SIGNATURE
        );
    }

    #[tokio::test]
    async fn header_names_are_case_insensitive() {
        let body = golden::NOTIFY_BODY.as_bytes();
        let headers = headers(&[
            ("WECHATPAY-TIMESTAMP", "1800000000"),
            ("wechatpay-nonce", golden::NOTIFY_NONCE),
            ("WeChatPay-Signature", golden::NOTIFY_SIGNATURE),
            ("wechatpay-SERIAL", PLATFORM_SERIAL),
        ]);
        assert!(matches!(
            verify(&provider(), &headers, body, NOW).await,
            Ok(PaymentEvent::Paid(_))
        ));
    }

    #[tokio::test]
    async fn changed_bytes_wrong_serial_and_stale_timestamps_are_refused() {
        let provider = provider();
        let body = golden::NOTIFY_BODY.as_bytes();
        let good = sdk_notification_headers();
        // Any byte changed (a sample across the body, ciphertext included).
        for i in (0..body.len()).step_by(61).chain([body.len() - 1]) {
            let mut changed = body.to_vec();
            changed[i] ^= 0x01;
            let refused = verify(&provider, &good, &changed, NOW).await;
            assert!(
                matches!(refused, Err(Error::InvalidSignature(_))),
                "byte {i}: {refused:?}"
            );
        }
        let with = |name: &str, value: &str| {
            let mut h = good.clone();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        let without = |name: &str| {
            let mut h = good.clone();
            h.remove(name);
            h
        };
        let cases = [
            (
                "another serial",
                with("Wechatpay-Serial", "PUB_KEY_ID_UNKNOWN"),
            ),
            // The right signature under the wrong serial: that key does not verify it.
            (
                "rotated serial",
                with("Wechatpay-Serial", OLD_PLATFORM_SERIAL),
            ),
            ("changed nonce", with("Wechatpay-Nonce", "X")),
            (
                "changed timestamp",
                with("Wechatpay-Timestamp", "1800000001"),
            ),
            (
                "SM2",
                with("Wechatpay-Signature-Type", "WECHATPAY2-SM2-WITH-SM3"),
            ),
            (
                "probe",
                with("Wechatpay-Signature", "WECHATPAY/SIGNTEST/abcdef=="),
            ),
            ("no timestamp", without("wechatpay-timestamp")),
            ("no nonce", without("wechatpay-nonce")),
            ("no signature", without("wechatpay-signature")),
            ("no serial", without("wechatpay-serial")),
            ("nothing", HeaderMap::new()),
        ];
        for (what, headers) in cases {
            let refused = verify(&provider, &headers, body, NOW).await;
            assert!(
                matches!(refused, Err(Error::InvalidSignature(_))),
                "{what}: {refused:?}"
            );
        }
        let mut repeated = good.clone();
        repeated.append(
            SIGNATURE_HEADER,
            HeaderValue::from_static(golden::NOTIFY_SIGNATURE),
        );
        assert!(verify(&provider, &repeated, body, NOW).await.is_err());
        // Five minutes either way, by the time the notification arrived.
        for at in [NOW - 300, NOW + 300] {
            assert!(verify(&provider, &good, body, at).await.is_ok(), "{at}");
        }
        for at in [NOW - 301, NOW + 301, i64::MIN, i64::MAX] {
            assert!(
                matches!(
                    verify(&provider, &good, body, at).await,
                    Err(Error::InvalidSignature(_))
                ),
                "{at}"
            );
        }
        // Signed by a key WeChat Pay does not hold.
        let forged = signed(&signer(MERCHANT_PRIVATE_KEY), PLATFORM_SERIAL, NOW, body);
        assert!(verify(&provider, &forged, body, NOW).await.is_err());
    }

    #[test]
    fn the_timestamp_is_verified_as_sent() {
        // The signature covers the header's text, not the number re-printed.
        let body = br#"{"code_url":"weixin://x"}"#;
        let message = [b"01800000000\nN\n".as_slice(), body, b"\n"].concat();
        let signature = B64.encode(platform().sign(&message).to_bytes());
        let headers = headers(&[
            ("Wechatpay-Timestamp", "01800000000"),
            ("Wechatpay-Nonce", "N"),
            ("Wechatpay-Signature", &signature),
            ("Wechatpay-Serial", PLATFORM_SERIAL),
        ]);
        let config = config();
        assert_eq!(
            verify_signed_message(&config.platform_public_keys, &headers, body, NOW),
            Ok(())
        );
    }

    #[tokio::test]
    async fn another_merchants_or_apps_notification_is_refused() {
        let provider = provider();
        let key = platform();
        let cases = [
            (
                "another mchid",
                paid_notification(APIV3_KEY, &transaction("1900000002", APPID, "SUCCESS")),
            ),
            (
                "another appid",
                paid_notification(
                    APIV3_KEY,
                    &transaction(MCHID, "wx0000000000000000", "SUCCESS"),
                ),
            ),
            (
                "no mchid",
                paid_notification(
                    APIV3_KEY,
                    r#"{"appid":"wxd678efh567hg6787","trade_state":"SUCCESS"}"#,
                ),
            ),
            (
                "another APIv3 key",
                paid_notification(OTHER_APIV3_KEY, &transaction(MCHID, APPID, "SUCCESS")),
            ),
            (
                "another merchant's refund",
                refund_notification("REFUND.SUCCESS", "1900000002", "SUCCESS"),
            ),
        ];
        for (what, body) in cases {
            // Genuinely signed by WeChat Pay: only the content is another account's.
            let headers = signed(&key, PLATFORM_SERIAL, NOW, body.as_bytes());
            let refused = verify(&provider, &headers, body.as_bytes(), NOW).await;
            assert!(
                matches!(refused, Err(Error::InvalidSignature(_))),
                "{what}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn platform_key_rotation_accepts_each_configured_serial() {
        let provider = provider();
        let body = paid_notification(APIV3_KEY, &transaction(MCHID, APPID, "SUCCESS"));
        for (key, serial) in [
            (platform(), PLATFORM_SERIAL),
            (signer(MERCHANT_PRIVATE_KEY), OLD_PLATFORM_SERIAL),
            // Serials compare regardless of case (hex certificate serials).
            (
                signer(MERCHANT_PRIVATE_KEY),
                "5157f09efdc096de15ebe81a47057a7232f1b8e1",
            ),
        ] {
            let headers = signed(&key, serial, NOW, body.as_bytes());
            assert!(
                matches!(
                    verify(&provider, &headers, body.as_bytes(), NOW).await,
                    Ok(PaymentEvent::Paid(_))
                ),
                "{serial}"
            );
        }
        // The retired key, once removed from the channel, verifies nothing.
        let mut config = config();
        config
            .platform_public_keys
            .retain(|(s, _)| s == PLATFORM_SERIAL);
        let headers = signed(
            &signer(MERCHANT_PRIVATE_KEY),
            OLD_PLATFORM_SERIAL,
            NOW,
            body.as_bytes(),
        );
        assert_eq!(
            verify_signed_message(&config.platform_public_keys, &headers, body.as_bytes(), NOW),
            Err(UNKNOWN_SERIAL)
        );
    }

    #[tokio::test]
    async fn an_empty_key_list_verifies_nothing() {
        let mut config = config();
        config.platform_public_keys.clear();
        let provider = WechatPayProvider::new(
            config,
            HttpClient::new().unwrap(),
            Duration::from_secs(1),
            Arc::new(FakeClock::default()),
        );
        let refused = verify(
            &provider,
            &sdk_notification_headers(),
            golden::NOTIFY_BODY.as_bytes(),
            NOW,
        )
        .await;
        // What an unknown serial hears: nothing tells a caller that no key is set.
        match refused {
            Err(err @ Error::InvalidSignature(_)) => {
                assert_eq!(
                    err.to_string(),
                    Error::InvalidSignature(UNKNOWN_SERIAL).to_string()
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn notifications_map_to_events() {
        let provider = provider();
        let key = platform();
        let unpaid = paid_notification(APIV3_KEY, &transaction(MCHID, APPID, "NOTPAY"));
        let no_reference = paid_notification(
            APIV3_KEY,
            &serde_json::json!({"mchid": MCHID, "appid": APPID, "out_trade_no": PAYMENT_ID,
                "trade_state": "SUCCESS", "amount": {"total": 5, "currency": "CNY"}})
            .to_string(),
        );
        let other_event = r#"{"id":"EV-X","event_type":"MCHTRANSFER.BILL.FINISHED","resource_type":"encrypt-resource","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAA","nonce":"fdasflkja484","associated_data":""}}"#.to_owned();
        let cases = [
            (
                paid_notification(APIV3_KEY, &transaction(MCHID, APPID, "SUCCESS")),
                PaymentEvent::Paid(PaymentNotice {
                    provider: PROVIDER,
                    event_id: "EV-1".into(),
                    payment_id: Some(PAYMENT_ID.into()),
                    order_id: None,
                    amount: Money {
                        amount: 1980,
                        currency: "CNY".into(),
                    },
                    provider_ref: "4200000000202701150000000002".into(),
                }),
            ),
            (
                unpaid,
                PaymentEvent::Ignored {
                    event_id: "EV-1".into(),
                    kind: "TRANSACTION.SUCCESS".into(),
                },
            ),
            (
                no_reference,
                PaymentEvent::Unbound {
                    event_id: "EV-1".into(),
                    kind: "TRANSACTION.SUCCESS".into(),
                    missing: "transaction_id",
                },
            ),
            (
                refund_notification("REFUND.SUCCESS", MCHID, "SUCCESS"),
                PaymentEvent::RefundSettled {
                    event_id: "EV-R".into(),
                    refund_id: "R01REFUND".into(),
                    succeeded: true,
                },
            ),
            (
                refund_notification("REFUND.ABNORMAL", MCHID, "ABNORMAL"),
                PaymentEvent::RefundSettled {
                    event_id: "EV-R".into(),
                    refund_id: "R01REFUND".into(),
                    succeeded: false,
                },
            ),
            (
                refund_notification("REFUND.CLOSED", MCHID, "CLOSED"),
                PaymentEvent::RefundSettled {
                    event_id: "EV-R".into(),
                    refund_id: "R01REFUND".into(),
                    succeeded: false,
                },
            ),
            (
                other_event,
                PaymentEvent::Ignored {
                    event_id: "EV-X".into(),
                    kind: "MCHTRANSFER.BILL.FINISHED".into(),
                },
            ),
        ];
        for (body, expected) in cases {
            let headers = signed(&key, PLATFORM_SERIAL, NOW, body.as_bytes());
            assert_eq!(
                verify(&provider, &headers, body.as_bytes(), NOW)
                    .await
                    .unwrap(),
                expected
            );
        }
    }

    #[test]
    fn notification_answers_follow_wechat_pay() {
        let ok = notification_answer(Ok(()));
        assert_eq!((ok.status, ok.body.is_empty()), (204, true));
        for (err, status) in [
            (Error::InvalidSignature("no signature matches"), 400),
            (Error::invalid("bad", "bad request"), 400),
            (Error::invalid_json("nope"), 400),
            (
                Error::Aws {
                    service: "dynamodb",
                    message: "table kami-orders throttled".into(),
                },
                500,
            ),
        ] {
            let answer = provider().notification_answer(Err(&err));
            assert_eq!(answer.status, status, "{err}");
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(body["code"], "FAIL");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(!String::from_utf8_lossy(&answer.body).contains("kami-orders"));
        }
    }

    // ---- Configuration.

    #[test]
    fn config_from_json_parses_the_documented_fields() {
        let config = config();
        assert_eq!(
            (
                config.mchid.as_str(),
                config.appid.as_str(),
                config.merchant_serial_no.as_str()
            ),
            (MCHID, APPID, MERCHANT_SERIAL)
        );
        assert_eq!(config.api_base_url, DEFAULT_API_BASE);
        assert_eq!(config.platform_public_keys.len(), 2);
        assert_eq!(&config.apiv3_key[..], APIV3_KEY.as_bytes());
        let mut json = config_json();
        json["api_base_url"] = serde_json::json!("http://127.0.0.1:8080/");
        assert_eq!(
            WechatPayConfig::from_json(&json).unwrap().api_base_url,
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn config_errors_name_the_field_and_never_show_key_material() {
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "config.mchid",
                Box::new(|j| j["mchid"] = serde_json::json!("")),
            ),
            (
                "config.appid",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("appid");
                }),
            ),
            (
                "config.merchant_serial_no",
                Box::new(|j| j["merchant_serial_no"] = serde_json::json!("a\"b")),
            ),
            (
                "config.merchant_private_key",
                Box::new(|j| j["merchant_private_key"] = serde_json::json!(PLATFORM_PUBLIC_KEY)),
            ),
            (
                "config.merchant_private_key",
                Box::new(|j| {
                    j["merchant_private_key"] =
                        serde_json::json!(MERCHANT_PRIVATE_KEY.replace("M", "N"))
                }),
            ),
            (
                "config.apiv3_key",
                Box::new(|j| j["apiv3_key"] = serde_json::json!("kami-test-apiv3-key-0123456789a")),
            ),
            (
                "config.apiv3_key",
                Box::new(|j| j["apiv3_key"] = serde_json::json!(12345)),
            ),
            (
                "config.platform_public_keys",
                Box::new(|j| j["platform_public_keys"] = serde_json::json!([])),
            ),
            (
                "config.platform_public_keys[0].public_key",
                Box::new(|j| {
                    j["platform_public_keys"][0]["public_key"] =
                        serde_json::json!(MERCHANT_PRIVATE_KEY)
                }),
            ),
            (
                "config.platform_public_keys[1].serial_no",
                Box::new(|j| {
                    j["platform_public_keys"][1]["serial_no"] = serde_json::json!(PLATFORM_SERIAL)
                }),
            ),
            (
                "config.platform_public_keys[0].expires",
                Box::new(|j| j["platform_public_keys"][0]["expires"] = serde_json::json!(1)),
            ),
            (
                "config.api_base_url",
                Box::new(|j| j["api_base_url"] = serde_json::json!("ftp://api.mch.weixin.qq.com")),
            ),
            (
                "config.api_base_url",
                Box::new(|j| j["api_base_url"] = serde_json::json!("https://user@evil.example/v3")),
            ),
            (
                "config.secret",
                Box::new(|j| j["secret"] = serde_json::json!("x")),
            ),
        ];
        for (path, change) in cases {
            let mut json = config_json();
            change(&mut json);
            match WechatPayConfig::from_json(&json) {
                Err(Error::InvalidRequest {
                    code: "invalid_channel_config",
                    message,
                    path: Some(at),
                }) => {
                    assert_eq!(at, path, "{message}");
                    // The format is named (`BEGIN PRIVATE KEY`), never the value.
                    for secret in [
                        APIV3_KEY,
                        "kami-test-apiv3-key",
                        "MII",
                        &MERCHANT_PRIVATE_KEY[40..80],
                        &PLATFORM_PUBLIC_KEY[40..80],
                    ] {
                        assert!(!message.contains(secret), "{path}: {message}");
                    }
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(WechatPayConfig::from_json(&serde_json::json!("x")).is_err());
    }

    #[test]
    fn debug_redacts_the_secrets() {
        let shown = format!("{:?} {:?}", config(), provider());
        assert!(
            shown.contains(MCHID) && shown.contains("<redacted>"),
            "{shown}"
        );
        for secret in [APIV3_KEY, "kami-test-apiv3", "MII", "BEGIN"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    // ---- Orders.

    #[test]
    fn description_and_deadline_follow_wechat_pay() {
        // 127 bytes at most, cut on a character boundary; 4-byte characters dropped.
        let long = "测".repeat(50);
        let cut = wechat_text(&long, DESCRIPTION_MAX_BYTES);
        assert_eq!(cut.len(), 126);
        assert_eq!(wechat_text("a🎁b\nc", 127), "abc");
        assert_eq!(
            beijing_rfc3339(Timestamp::from_unix_seconds(NOW)).unwrap(),
            "2027-01-15T16:00:00+08:00"
        );
        assert_eq!(
            beijing_rfc3339(Timestamp(1_800_000_000_999)).unwrap(),
            "2027-01-15T16:00:00+08:00"
        );
        let mut untitled = request();
        untitled.subject = "🎁".into();
        let body: serde_json::Value =
            serde_json::from_str(&native_order_body(&config(), &untitled).unwrap()).unwrap();
        assert_eq!(body["description"], untitled.order_id.as_str());
    }

    #[tokio::test]
    async fn create_payment_refuses_other_methods_currencies_and_ids() {
        let provider = provider();
        let mut page = request();
        page.method = PaymentMethod::Page;
        let mut usd = request();
        usd.amount.currency = "USD".into();
        let mut zero = request();
        zero.amount.amount = 0;
        let mut path = request();
        path.payment_id = "../close".into();
        for (request, expected) in [
            (page, "unsupported_payment_method"),
            (usd, "channel_not_eligible"),
            (zero, "channel_not_eligible"),
            (path, "invalid_payment_id"),
        ] {
            match provider.create_payment(&request).await {
                Err(Error::InvalidRequest { code, .. }) => assert_eq!(code, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert_eq!(provider.name(), "wechatpay");
    }

    // ---- Over HTTP, against a tiny WeChat Pay on loopback.

    /// How the fake WeChat Pay signs an answer.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Signing {
        Platform,
        Unsigned,
        ForeignKey,
        UnknownSerial,
        Stale,
        /// Never answers (the call times out).
        Hang,
    }

    struct Canned {
        status: u16,
        body: String,
        signing: Signing,
    }

    fn canned(status: u16, body: &str) -> Canned {
        Canned {
            status,
            body: body.to_owned(),
            signing: Signing::Platform,
        }
    }

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Serves `answers` in turn, one per connection, and records what Kami sent.
    async fn fake_wechat(answers: Vec<Canned>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let at = base.clone();
        tokio::spawn(async move {
            for answer in answers {
                // An answer may name this server (a bill's download URL).
                let answer_body = answer.body.replace("{base}", &at);
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "connection closed mid-request");
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                };
                let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let request_line: Vec<&str> = lines.next().unwrap().split(' ').collect();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = raw[head_end + 4..].to_vec();
                while body.len() < length {
                    let n = stream.read(&mut buf).await.unwrap();
                    body.extend_from_slice(&buf[..n]);
                }
                record.lock().unwrap().push(Seen {
                    method: request_line[0].to_owned(),
                    target: request_line[1].to_owned(),
                    headers,
                    body: String::from_utf8(body).unwrap(),
                });
                if answer.signing == Signing::Hang {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    continue;
                }
                let (key, serial, timestamp) = match answer.signing {
                    Signing::ForeignKey => (signer(MERCHANT_PRIVATE_KEY), PLATFORM_SERIAL, NOW),
                    Signing::UnknownSerial => (platform(), "PUB_KEY_ID_UNKNOWN", NOW),
                    Signing::Stale => (platform(), PLATFORM_SERIAL, NOW - 301),
                    _ => (platform(), PLATFORM_SERIAL, NOW),
                };
                let mut signature_headers = String::new();
                if answer.signing != Signing::Unsigned {
                    let nonce = golden::RESPONSE_NONCE;
                    let signature = sign(&key, timestamp, nonce, answer_body.as_bytes());
                    signature_headers = format!(
                        "Wechatpay-Timestamp: {timestamp}\r\nWechatpay-Nonce: {nonce}\r\nWechatpay-Signature: {signature}\r\nWechatpay-Serial: {serial}\r\nWechatpay-Signature-Type: {SCHEME}\r\n"
                    );
                }
                let response = format!(
                    "HTTP/1.1 {} Answer\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nRequest-ID: 08F0A1B2C3\r\n{signature_headers}Connection: close\r\n\r\n{}",
                    answer.status,
                    answer_body.len(),
                    answer_body
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
        });
        (base, seen)
    }

    /// Checks the request as WeChat Pay would: the Authorization header's signature under
    /// the merchant's public key, over what was actually sent.
    fn check_signed_request(seen: &Seen) {
        let authorization = seen.header("authorization").unwrap();
        let fields = authorization
            .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
            .unwrap();
        let field = |name: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{name}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap()
                .to_owned()
        };
        assert_eq!(field("mchid"), MCHID);
        assert_eq!(field("serial_no"), MERCHANT_SERIAL);
        assert_eq!(field("timestamp"), NOW.to_string());
        let nonce = field("nonce_str");
        assert_eq!(nonce.len(), 32);
        let message = format!(
            "{}\n{}\n{NOW}\n{nonce}\n{}\n",
            seen.method, seen.target, seen.body
        );
        let key = VerifyingKey::<Sha256>::new(
            PublicKey::from_public_key_pem(MERCHANT_PUBLIC_KEY).unwrap(),
        );
        let signature =
            Signature::try_from(B64.decode(field("signature")).unwrap().as_slice()).unwrap();
        key.verify(message.as_bytes(), &signature).unwrap();
        assert_eq!(seen.header("accept"), Some("application/json"));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert!(
            seen.header("user-agent")
                .is_some_and(|ua| ua.starts_with("kami/"))
        );
    }

    #[tokio::test]
    async fn create_payment_over_http_sends_a_signed_native_order() {
        let (base, seen) = fake_wechat(vec![canned(200, golden::ANSWER_BODY)]).await;
        let (provider, _) = provider_at(&base);
        let session = provider.create_payment(&request()).await.unwrap();
        assert_eq!(
            session,
            PaymentSession {
                provider_ref: None,
                action: PaymentAction::QrCode {
                    code_url: "weixin://wxpay/bizpayurl?pr=p4lpSuKzz".into()
                },
            }
        );
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("POST", "/v3/pay/transactions/native")
        );
        assert_eq!(seen.body, golden::NATIVE_BODY);
        check_signed_request(&seen);
    }

    #[tokio::test]
    async fn a_signed_answer_from_the_sdk_verifies_and_a_changed_one_does_not() {
        let config = config();
        let headers = headers(&[
            ("Wechatpay-Timestamp", "1800000000"),
            ("Wechatpay-Nonce", golden::RESPONSE_NONCE),
            ("Wechatpay-Signature", golden::ANSWER_SIGNATURE),
            ("Wechatpay-Serial", PLATFORM_SERIAL),
        ]);
        let keys = &config.platform_public_keys;
        assert_eq!(
            verify_signed_message(keys, &headers, golden::ANSWER_BODY.as_bytes(), NOW),
            Ok(())
        );
        let changed = golden::ANSWER_BODY.replace("p4l", "p5l");
        assert!(verify_signed_message(keys, &headers, changed.as_bytes(), NOW).is_err());
    }

    #[tokio::test]
    async fn unverifiable_answers_are_upstream() {
        for signing in [
            Signing::Unsigned,
            Signing::ForeignKey,
            Signing::UnknownSerial,
            Signing::Stale,
        ] {
            let answers = vec![
                Canned {
                    status: 200,
                    body: golden::ANSWER_BODY.into(),
                    signing,
                },
                Canned {
                    status: 200,
                    body: r#"{"trade_state":"SUCCESS","transaction_id":"42","amount":{"total":990,"currency":"CNY"}}"#.into(),
                    signing,
                },
                // A signed error answer must verify too; an unsigned one is only an error.
                Canned {
                    status: 404,
                    body: r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#.into(),
                    signing,
                },
                Canned {
                    status: 204,
                    body: String::new(),
                    signing,
                },
                Canned {
                    status: 200,
                    body: r#"{"status":"SUCCESS"}"#.into(),
                    signing,
                },
            ];
            let (base, _) = fake_wechat(answers).await;
            let (provider, _) = provider_at(&base);
            let create = provider.create_payment(&request()).await;
            assert!(
                matches!(create, Err(Error::Upstream { .. })),
                "{signing:?} {create:?}"
            );
            let query = provider.query_payment(&handle()).await;
            assert!(
                matches!(query, Err(Error::Upstream { .. })),
                "{signing:?} {query:?}"
            );
            let not_found = provider.query_payment(&handle()).await;
            if signing == Signing::Unsigned {
                assert_eq!(not_found.unwrap(), PaymentState::Unknown);
            } else {
                assert!(
                    matches!(not_found, Err(Error::Upstream { .. })),
                    "{signing:?}"
                );
            }
            let close = provider.close_payment(&handle()).await;
            assert!(
                matches!(close, Err(Error::Upstream { .. })),
                "{signing:?} {close:?}"
            );
            let refund = provider.refund(&refund_request()).await;
            assert!(
                matches!(refund, Err(Error::Upstream { .. })),
                "{signing:?} {refund:?}"
            );
        }
    }

    #[tokio::test]
    async fn query_payment_maps_trade_states_over_http() {
        let answer = |state: &str| {
            canned(
                200,
                &serde_json::json!({"appid": APPID, "mchid": MCHID, "out_trade_no": PAYMENT_ID,
                    "transaction_id": "4200000000202701150000000001", "trade_type": "NATIVE",
                    "trade_state": state, "trade_state_desc": "",
                    "amount": {"total": 990, "payer_total": 990, "currency": "CNY", "payer_currency": "CNY"}})
                .to_string(),
            )
        };
        let paid = PaymentState::Paid {
            amount: Money {
                amount: 990,
                currency: "CNY".into(),
            },
            provider_ref: "4200000000202701150000000001".into(),
        };
        let refunded = PaymentState::Refunded {
            amount: Money {
                amount: 990,
                currency: "CNY".into(),
            },
        };
        let cases = [
            (answer("NOTPAY"), Some(PaymentState::AwaitingPayment)),
            (answer("USERPAYING"), Some(PaymentState::AwaitingPayment)),
            (answer("SUCCESS"), Some(paid)),
            (answer("CLOSED"), Some(PaymentState::Closed)),
            (answer("REVOKED"), Some(PaymentState::Closed)),
            (answer("PAYERROR"), Some(PaymentState::Closed)),
            (answer("REFUND"), Some(refunded)),
            (answer("SOMETHING_NEW"), None),
            (
                canned(404, r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#),
                Some(PaymentState::Unknown),
            ),
            (
                canned(500, r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#),
                None,
            ),
            // A verified answer about another payment is not believed.
            (
                canned(
                    200,
                    r#"{"mchid":"1900000001","out_trade_no":"P01OTHER","trade_state":"NOTPAY"}"#,
                ),
                None,
            ),
        ];
        let count = cases.len();
        let (answers, expected): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
        let (base, seen) = fake_wechat(answers).await;
        let (provider, _) = provider_at(&base);
        for expected in expected {
            let state = provider.query_payment(&handle()).await;
            match expected {
                Some(expected) => assert_eq!(state.unwrap(), expected),
                None => assert!(matches!(state, Err(Error::Upstream { .. })), "{state:?}"),
            }
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), count);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].target, golden::QUERY_PATH);
        assert_eq!(seen[0].body, "");
        check_signed_request(&seen[0]);
    }

    /// GIVEN WeChat Pay's signed answer naming the bill file and its SHA1, then the file
    /// WHEN the bill is fetched THEN both requests are signed and the file's trades come
    /// back; a file that does not match its hash, or one somewhere else than the API, is
    /// refused; a day without trades is an empty bill.
    #[tokio::test]
    async fn the_trade_bill_is_fetched_checked_and_read_over_http() {
        let file = "交易时间,微信订单号,商户订单号,交易状态,货币种类,订单金额,商户退款单号,申请退款金额,退款状态\r\n`2027-01-15 10:00:00,`4200000000202701150000000001,`P01ORDER,`SUCCESS,`CNY,`9.90,`0,`0.00,`\r\n总交易单数,订单总金额\r\n`1,`9.90\r\n";
        let sha1 = hex::encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            file.as_bytes(),
        ));
        let named = |hash: &str, at: &str| {
            canned(
                200,
                &serde_json::json!({"hash_type": "SHA1", "hash_value": hash,
                    "download_url": format!("{at}/v3/billdownload/file?token=T1")})
                .to_string(),
            )
        };
        let unsigned_file = || Canned {
            status: 200,
            body: file.to_owned(),
            signing: Signing::Unsigned,
        };
        let answers = vec![
            named(&sha1, "{base}"),
            unsigned_file(),
            named(&"0".repeat(40), "{base}"),
            unsigned_file(),
            canned(
                400,
                r#"{"code":"NO_STATEMENT_EXIST","message":"账单不存在"}"#,
            ),
            named(&sha1, "https://elsewhere.example"),
        ];
        let (base, seen) = fake_wechat(answers).await;
        let (provider, _) = provider_at(&base);
        let period = BillPeriod {
            date: "2027-01-15".into(),
            start: Timestamp(0),
            end: Timestamp(0),
        };
        let lines = provider.fetch_bill(&period).await.unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (
                lines[0].provider_ref.as_deref(),
                lines[0].payment_id.as_deref(),
                lines[0].amount.amount
            ),
            (Some("4200000000202701150000000001"), Some("P01ORDER"), 990)
        );
        let tampered = provider.fetch_bill(&period).await;
        assert!(
            matches!(tampered, Err(Error::Upstream { .. })),
            "{tampered:?}"
        );
        assert!(provider.fetch_bill(&period).await.unwrap().is_empty());
        let elsewhere = provider.fetch_bill(&period).await;
        assert!(
            matches!(elsewhere, Err(Error::Upstream { .. })),
            "{elsewhere:?}"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 6, "nothing is fetched from elsewhere");
        assert_eq!(
            seen[0].target,
            "/v3/bill/tradebill?bill_date=2027-01-15&bill_type=ALL"
        );
        assert_eq!(seen[1].target, "/v3/billdownload/file?token=T1");
        check_signed_request(&seen[0]);
        check_signed_request(&seen[1]);
    }

    #[tokio::test]
    async fn close_payment_over_http() {
        let (base, seen) = fake_wechat(vec![
            canned(204, ""),
            canned(404, r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#),
            canned(400, r#"{"code":"ORDER_CLOSED","message":"订单已关闭"}"#),
            canned(400, r#"{"code":"ORDERPAID","message":"订单已支付"}"#),
            canned(500, r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#),
        ])
        .await;
        let (provider, _) = provider_at(&base);
        provider.close_payment(&handle()).await.unwrap();
        provider.close_payment(&handle()).await.unwrap();
        provider.close_payment(&handle()).await.unwrap();
        match provider.close_payment(&handle()).await {
            Err(Error::Upstream { message, .. }) => {
                assert!(message.contains("ORDERPAID"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            provider.close_payment(&handle()).await,
            Err(Error::Upstream { .. })
        ));
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (
                seen.method.as_str(),
                seen.target.as_str(),
                seen.body.as_str()
            ),
            (
                "POST",
                "/v3/pay/transactions/out-trade-no/P01JG7ZQ8K2M3N4P5Q6R7S8T9V/close",
                r#"{"mchid":"1900000001"}"#
            )
        );
        check_signed_request(&seen);
    }

    #[tokio::test]
    async fn refund_outcomes_over_http() {
        let status = |s: &str| {
            canned(
                200,
                &serde_json::json!({"refund_id": "50000000382019052709732678859",
                    "out_refund_no": "R01REFUND", "transaction_id": "4200000000202701150000000001",
                    "out_trade_no": PAYMENT_ID, "channel": "ORIGINAL", "status": s,
                    "amount": {"total": 990, "refund": 500, "currency": "CNY"}})
                .to_string(),
            )
        };
        let refused = |reason: &str| {
            Some(RefundOutcome::Refused {
                reason: reason.into(),
            })
        };
        let cases = [
            (status("SUCCESS"), Some(RefundOutcome::Refunded)),
            (status("PROCESSING"), Some(RefundOutcome::Pending)),
            (status("CLOSED"), refused("refund status CLOSED")),
            (status("ABNORMAL"), refused("refund status ABNORMAL")),
            (
                canned(403, r#"{"code":"NOT_ENOUGH","message":"基本账户余额不足"}"#),
                refused("NOT_ENOUGH: 基本账户余额不足"),
            ),
            (
                canned(
                    400,
                    r#"{"code":"INVALID_REQUEST","message":"订单已全额退款"}"#,
                ),
                refused("INVALID_REQUEST: 订单已全额退款"),
            ),
            // Nothing about the refund itself: retried, not refused.
            (
                canned(429, r#"{"code":"RATE_LIMITED","message":"频率限制"}"#),
                None,
            ),
            (
                canned(500, r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#),
                None,
            ),
        ];
        let (answers, expected): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
        let (base, seen) = fake_wechat(answers).await;
        let (provider, _) = provider_at(&base);
        for expected in expected {
            let outcome = provider.refund(&refund_request()).await;
            match expected {
                Some(expected) => assert_eq!(outcome.unwrap(), expected),
                None => assert!(
                    matches!(outcome, Err(Error::Upstream { .. })),
                    "{outcome:?}"
                ),
            }
        }
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("POST", "/v3/refund/domestic/refunds")
        );
        assert_eq!(
            seen.body,
            r#"{"out_trade_no":"P01JG7ZQ8K2M3N4P5Q6R7S8T9V","out_refund_no":"R01REFUND","reason":"buyer asked","notify_url":"https://kami.example.com/webhooks/wechatpay/ch_01","amount":{"refund":500,"total":990,"currency":"CNY"}}"#
        );
        check_signed_request(&seen);
        let mut usd = refund_request();
        usd.paid.currency = "USD".into();
        assert!(matches!(
            provider.refund(&usd).await,
            Err(Error::InvalidRequest {
                code: "channel_not_eligible",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_upstream_and_timeout() {
        let (base, _) = fake_wechat(vec![
            canned(400, r#"{"code":"PARAM_ERROR","message":"参数错误"}"#),
            canned(200, r#"{"prepay":"no code_url"}"#),
            Canned {
                status: 200,
                body: String::new(),
                signing: Signing::Hang,
            },
        ])
        .await;
        let (provider, clock) = provider_at(&base);
        match provider.create_payment(&request()).await {
            Err(Error::Upstream { system, message }) => {
                assert_eq!(system, "wechatpay");
                assert!(
                    message.contains("PARAM_ERROR") && message.contains("参数错误"),
                    "{message}"
                );
                assert!(
                    !message.contains(APIV3_KEY) && !message.contains("signature"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            provider.create_payment(&request()).await,
            Err(Error::Upstream { .. })
        ));
        let quick = WechatPayProvider::new(
            provider.config.clone(),
            HttpClient::new().unwrap(),
            Duration::from_millis(300),
            clock,
        );
        assert!(matches!(
            quick.create_payment(&request()).await,
            Err(Error::Timeout {
                system: "wechatpay"
            })
        ));
    }
}
