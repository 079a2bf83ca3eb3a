//! Stripe webhook signatures and the two events that mean "this order is paid".
//!
//! Scheme: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC-SHA256 of
//! `"{t}.{raw body}"` under the endpoint secret; any `v1` may match; several endpoint
//! secrets are accepted while one is being rotated.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::domain::money::parse_currency;
use crate::error::{Error, Result};

pub const SIGNATURE_HEADER: &str = "stripe-signature";
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

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
    if secrets.is_empty() {
        // An empty secret would make every signature "valid": refuse everything.
        return Err(Error::InvalidSignature("no endpoint secret is configured"));
    }
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
    Err(Error::InvalidSignature("no signature matches"))
}

/// A provider's word that money for an order arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    pub provider: &'static str,
    pub event_id: String,
    pub order_id: String,
    pub amount: i64,
    pub currency: String,
    /// The provider's payment reference (Stripe PaymentIntent id, else session id).
    pub provider_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeEvent {
    Payment(PaymentNotice),
    /// A verified event Kami does not act on; acknowledged so Stripe stops retrying.
    Ignored {
        event_id: String,
        kind: String,
    },
    /// A verified payment event that cannot be bound to an order (no order id, amount
    /// or currency): acknowledged, and kept for an operator.
    Unbound {
        event_id: String,
        kind: String,
        missing: &'static str,
    },
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

pub fn parse_event(raw_body: &[u8]) -> Result<StripeEvent> {
    let event: RawEvent = serde_json::from_slice(raw_body).map_err(Error::invalid_json)?;
    let object = &event.data.object;
    let text = |pointer: &str| object.pointer(pointer).and_then(|v| v.as_str());
    let (order_id, amount, provider_ref) = match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            // Only a paid session is money; a delayed payment method completes later.
            if text("/payment_status") != Some("paid") {
                return Ok(StripeEvent::Ignored {
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
            return Ok(StripeEvent::Ignored {
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
            return Ok(StripeEvent::Ignored {
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
                return Ok(StripeEvent::Unbound {
                    event_id: event.id,
                    kind: event.kind,
                    missing,
                });
            }
        };
    Ok(StripeEvent::Payment(PaymentNotice {
        provider: "stripe",
        order_id: order_id.to_owned(),
        amount,
        currency,
        provider_ref: provider_ref.to_owned(),
        event_id: event.id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::crypto::hmac_sha256_hex;

    const NOW: i64 = 1_800_000_000;

    fn header(secret: &str, t: i64, body: &[u8]) -> String {
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(body);
        format!(
            "t={t},v1={}",
            hmac_sha256_hex(secret.as_bytes(), &message).unwrap()
        )
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
            StripeEvent::Payment(PaymentNotice {
                provider: "stripe",
                event_id: "evt_1".into(),
                order_id: "01ORDER".into(),
                amount: 990,
                currency: "CNY".into(),
                provider_ref: "pi_1".into(),
            })
        );
        let intent = serde_json::json!({"id": "evt_2", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_2", "metadata": {"order_id": "01ORDER"},
            "amount_received": 1980, "currency": "usd"}}});
        match parse_event(intent.to_string().as_bytes()).unwrap() {
            StripeEvent::Payment(notice) => {
                assert_eq!((notice.amount, notice.currency.as_str()), (1980, "USD"));
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
            StripeEvent::Unbound {
                missing: "order id",
                ..
            }
        ));
        let no_amount = serde_json::json!({"id": "evt_6", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_6", "metadata": {"order_id": "01X"}, "currency": "cny"}}});
        assert!(matches!(
            parse_event(no_amount.to_string().as_bytes()).unwrap(),
            StripeEvent::Unbound {
                missing: "amount",
                ..
            }
        ));
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
                StripeEvent::Ignored { .. }
            ));
        }
    }
}
