//! Kami's own supplier protocol, `http_json` (docs/suppliers.md): JSON over HTTP, every
//! message in both directions signed with `X-Kami-Timestamp` and `X-Kami-Signature` =
//! hex HMAC-SHA256(secret, "{timestamp}.{raw body}"), refused when the signature is bad
//! or the timestamp more than 300 s off.
//!
//! How an answer is read: 200 with a valid body → what `status` says; a 4xx → a definite
//! failure; a timeout, a connection error or a 5xx → `Err` (unknown outcome, counted by
//! the circuit); a 200 that does not parse, or any answer whose signature does not
//! verify → `Unreadable` (unknown outcome: a forged "success" never delivers, a forged
//! refusal never moves an order to another supplier).

use std::sync::Arc;
use std::time::Duration;

use lambda_http::http::Method;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::adapters::http_client::HttpClient;
use crate::domain::crypto::{hmac_sha256_hex, secrets_equal};
use crate::error::{Error, Result};
use crate::ports::payment::Notification;
use crate::ports::supplier::{Supplier, SupplierCallback, TopUpOutcome, TopUpRequest};
use crate::ports::{Clock, PortFuture};

pub const KIND: &str = "http_json";
pub const TIMESTAMP_HEADER: &str = "x-kami-timestamp";
pub const SIGNATURE_HEADER: &str = "x-kami-signature";
/// How far a message's timestamp may be from the receiver's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;
const SYSTEM: &str = "supplier";
/// A supplier's text kept in records and history (never the buyer's view).
const MAX_TEXT: usize = 200;

/// The signature of a message sent at `timestamp` (unix seconds) with `body`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<String> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    hmac_sha256_hex(secret, &message)
}

/// A supplier speaking `http_json`.
pub struct HttpJsonSupplier {
    base_url: String,
    secret: Zeroizing<Vec<u8>>,
    timeout: Duration,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for HttpJsonSupplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJsonSupplier")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    request_id: &'a str,
    product: &'a str,
    account: &'a str,
    quantity: u32,
    callback_url: &'a str,
}

/// An answer's body, and a callback's (with its `request_id`).
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    request_id: Option<String>,
    status: String,
    #[serde(default)]
    supplier_ref: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Answer {
    /// What the answer says; `None` for a status the protocol does not have.
    fn outcome(self) -> Option<TopUpOutcome> {
        let supplier_ref = self.supplier_ref.filter(|r| !r.is_empty()).map(clip);
        Some(match self.status.as_str() {
            "success" => TopUpOutcome::Success {
                supplier_ref: supplier_ref.unwrap_or_default(),
            },
            "pending" => TopUpOutcome::Pending { supplier_ref },
            "failed" => TopUpOutcome::Failed {
                reason: clip(self.reason.unwrap_or_else(|| "failed".into())),
            },
            _ => return None,
        })
    }
}

/// An answer whose signature does not verify: whatever it says, the outcome is unknown.
fn unverified(status: u16) -> TopUpOutcome {
    TopUpOutcome::Unreadable {
        detail: format!("an answer (HTTP {status}) whose signature does not verify"),
    }
}

fn clip(text: String) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

impl HttpJsonSupplier {
    pub fn new(
        base_url: &str,
        secret: Zeroizing<Vec<u8>>,
        timeout: Duration,
        http: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        HttpJsonSupplier {
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret,
            timeout,
            http,
            clock,
        }
    }

    /// Sends a signed request; the answer's status and body, `None` for a body whose
    /// signature does not verify. A 5xx is an error (no answer).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Option<Vec<u8>>)> {
        let timestamp = self.clock.now().unix_seconds();
        let signed = signature(&self.secret, timestamp, &body)?;
        let timestamp = timestamp.to_string();
        let mut headers = vec![
            (TIMESTAMP_HEADER, timestamp.as_str()),
            (SIGNATURE_HEADER, signed.as_str()),
        ];
        let has_body = method == Method::POST;
        if has_body {
            headers.push(("content-type", "application/json"));
        }
        let response = self
            .http
            .send(
                SYSTEM,
                method,
                &format!("{}{path}", self.base_url),
                &headers,
                has_body.then_some(body),
                self.timeout,
            )
            .await?;
        if response.status >= 500 {
            return Err(Error::Upstream {
                system: SYSTEM,
                message: format!("answered HTTP {}", response.status),
            });
        }
        let verified = self
            .check_signed(&response.headers, &response.body, self.clock.now())
            .is_ok();
        Ok((response.status, verified.then_some(response.body)))
    }

    /// A message's signature and freshness, over the raw bytes.
    fn check_signed(
        &self,
        headers: &lambda_http::http::HeaderMap,
        body: &[u8],
        now: crate::domain::time::Timestamp,
    ) -> Result<()> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let timestamp: i64 = header(TIMESTAMP_HEADER)
            .and_then(|value| value.parse().ok())
            .ok_or(Error::InvalidSignature("no X-Kami-Timestamp"))?;
        if (now.unix_seconds() - timestamp).abs() > MAX_SKEW_SECONDS {
            return Err(Error::InvalidSignature(
                "X-Kami-Timestamp is more than 300 s off",
            ));
        }
        let presented =
            header(SIGNATURE_HEADER).ok_or(Error::InvalidSignature("no X-Kami-Signature"))?;
        let expected = signature(&self.secret, timestamp, body)?;
        if secrets_equal(presented.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Error::InvalidSignature("X-Kami-Signature does not match"))
        }
    }

    /// A 200's body read as an outcome; anything else 2xx/3xx is unreadable too.
    fn read_answer(status: u16, body: &[u8]) -> TopUpOutcome {
        if status != 200 {
            return TopUpOutcome::Unreadable {
                detail: format!("answered HTTP {status}"),
            };
        }
        serde_json::from_slice::<Answer>(body)
            .ok()
            .and_then(Answer::outcome)
            .unwrap_or_else(|| TopUpOutcome::Unreadable {
                detail: "a 200 whose body is not a top-up answer".into(),
            })
    }

    async fn submit_now(&self, request: &TopUpRequest) -> Result<TopUpOutcome> {
        let body = serde_json::to_vec(&SubmitBody {
            request_id: &request.request_id,
            product: &request.product,
            account: &request.account,
            quantity: request.quantity,
            callback_url: &request.callback_url,
        })
        .map_err(|_| Error::Corrupt("a top-up request does not serialise".into()))?;
        let (status, body) = self.call(Method::POST, "/topups", body).await?;
        let Some(body) = body else {
            return Ok(unverified(status));
        };
        Ok(match status {
            400..=499 => TopUpOutcome::Failed {
                reason: format!("refused with HTTP {status}"),
            },
            _ => Self::read_answer(status, &body),
        })
    }

    async fn query_now(&self, request_id: &str) -> Result<TopUpOutcome> {
        // Request ids are Kami's own (order id and a number): nothing to escape.
        let path = format!("/topups/{request_id}");
        let (status, body) = self.call(Method::GET, &path, Vec::new()).await?;
        let Some(body) = body else {
            return Ok(unverified(status));
        };
        Ok(match status {
            404 => TopUpOutcome::NotFound,
            400..=499 => TopUpOutcome::Unreadable {
                detail: format!("the query was refused with HTTP {status}"),
            },
            _ => Self::read_answer(status, &body),
        })
    }

    fn verify(&self, callback: &Notification<'_>) -> Result<SupplierCallback> {
        self.check_signed(callback.headers, callback.body, callback.received_at)?;
        let answer: Answer = serde_json::from_slice(callback.body).map_err(Error::invalid_json)?;
        let request_id = answer
            .request_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                Error::invalid_field("invalid_callback", "request_id", "request_id is required")
            })?;
        let outcome = answer.outcome().ok_or_else(|| {
            Error::invalid_field(
                "invalid_callback",
                "status",
                "status must be success, pending or failed",
            )
        })?;
        Ok(SupplierCallback {
            request_id,
            outcome,
        })
    }
}

impl Supplier for HttpJsonSupplier {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn submit<'a>(&'a self, request: &'a TopUpRequest) -> PortFuture<'a, TopUpOutcome> {
        Box::pin(self.submit_now(request))
    }

    fn query<'a>(&'a self, request_id: &'a str) -> PortFuture<'a, TopUpOutcome> {
        Box::pin(self.query_now(request_id))
    }

    fn verify_callback(&self, callback: &Notification<'_>) -> Result<SupplierCallback> {
        self.verify(callback)
    }
}

/// Against a real HTTP server on loopback playing a supplier: it checks every
/// signature Kami sends and answers as each test tells it.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use lambda_http::http::HeaderValue;

    use super::*;
    use crate::domain::time::Timestamp;
    use crate::fakes::FakeClock;

    const SECRET: &[u8] = b"supplier-secret-0123456789";

    /// What the server answers next, and every request it got (path, body).
    #[derive(Default)]
    struct Server {
        answer: Mutex<Option<(u16, String)>>,
        /// Never answer (the client's timeout decides).
        hang: Mutex<bool>,
        /// Sign answers with another secret (a forged answer).
        forge: Mutex<bool>,
        seen: Mutex<Vec<(String, String)>>,
    }

    async fn handle(
        server: Arc<Server>,
        path: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, HeaderMap, String) {
        let timestamp: i64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
        let expected = signature(SECRET, timestamp, &body).unwrap();
        assert_eq!(
            headers[SIGNATURE_HEADER],
            expected.as_str(),
            "Kami signs every request"
        );
        server
            .seen
            .lock()
            .unwrap()
            .push((path, String::from_utf8(body.to_vec()).unwrap()));
        if *server.hang.lock().unwrap() {
            std::future::pending::<()>().await;
        }
        let (status, body) = server.answer.lock().unwrap().clone().unwrap();
        let mut headers = HeaderMap::new();
        let secret = if *server.forge.lock().unwrap() {
            b"not-the-secret".as_slice()
        } else {
            SECRET
        };
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&signature(secret, timestamp, body.as_bytes()).unwrap()).unwrap(),
        );
        (StatusCode::from_u16(status).unwrap(), headers, body)
    }

    async fn serve() -> (Arc<Server>, String) {
        let server = Arc::new(Server::default());
        let app = Router::new()
            .route(
                "/s/a/topups",
                post(|State(s): State<Arc<Server>>, h: HeaderMap, b: Bytes| {
                    handle(s, "/topups".into(), h, b)
                }),
            )
            .route(
                "/s/a/topups/{id}",
                get(
                    |State(s): State<Arc<Server>>,
                     axum::extract::Path(id): axum::extract::Path<String>,
                     h: HeaderMap,
                     b: Bytes| handle(s, format!("/topups/{id}"), h, b),
                ),
            )
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/s/a", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, url)
    }

    fn supplier(url: &str, clock: Arc<FakeClock>) -> HttpJsonSupplier {
        HttpJsonSupplier::new(
            url,
            Zeroizing::new(SECRET.to_vec()),
            Duration::from_millis(300),
            HttpClient::new().unwrap(),
            clock,
        )
    }

    fn request() -> TopUpRequest {
        TopUpRequest {
            request_id: "01ORDER-00".into(),
            product: "cmcc-50".into(),
            account: "13800000000".into(),
            quantity: 2,
            callback_url: "http://127.0.0.1/webhooks/suppliers/a".into(),
        }
    }

    #[tokio::test]
    async fn each_answer_is_read_as_the_protocol_says() {
        let (server, url) = serve().await;
        let supplier = supplier(&url, Arc::new(FakeClock::default()));
        let cases: Vec<((u16, &str), Option<TopUpOutcome>)> = vec![
            (
                (
                    200,
                    r#"{"status":"success","supplier_ref":"S-1","reason":null}"#,
                ),
                Some(TopUpOutcome::Success {
                    supplier_ref: "S-1".into(),
                }),
            ),
            (
                (200, r#"{"status":"pending","supplier_ref":"S-2"}"#),
                Some(TopUpOutcome::Pending {
                    supplier_ref: Some("S-2".into()),
                }),
            ),
            (
                (200, r#"{"status":"failed","reason":"account closed"}"#),
                Some(TopUpOutcome::Failed {
                    reason: "account closed".into(),
                }),
            ),
            (
                (422, r#"{"error":"bad account"}"#),
                Some(TopUpOutcome::Failed {
                    reason: "refused with HTTP 422".into(),
                }),
            ),
            ((200, "<html>ok</html>"), None),
            ((200, r#"{"status":"maybe"}"#), None),
        ];
        for ((status, body), expected) in cases {
            *server.answer.lock().unwrap() = Some((status, body.into()));
            let outcome = supplier.submit(&request()).await.unwrap();
            match expected {
                Some(expected) => assert_eq!(outcome, expected, "{status} {body}"),
                None => assert!(
                    matches!(outcome, TopUpOutcome::Unreadable { .. }),
                    "{status} {body}: {outcome:?}"
                ),
            }
        }
        *server.answer.lock().unwrap() = Some((503, "busy".into()));
        assert!(matches!(
            supplier.submit(&request()).await,
            Err(Error::Upstream { .. })
        ));
        let (path, body) = server.seen.lock().unwrap()[0].clone();
        assert_eq!(path, "/topups");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"request_id": "01ORDER-00", "product": "cmcc-50",
                "account": "13800000000", "quantity": 2,
                "callback_url": "http://127.0.0.1/webhooks/suppliers/a"})
        );
    }

    #[tokio::test]
    async fn an_answer_that_does_not_verify_is_an_unknown_outcome() {
        let (server, url) = serve().await;
        let supplier = supplier(&url, Arc::new(FakeClock::default()));
        *server.forge.lock().unwrap() = true;
        for (status, body) in [
            (200, r#"{"status":"success","supplier_ref":"S-1"}"#),
            (422, r#"{"error":"bad account"}"#),
            (404, ""),
        ] {
            *server.answer.lock().unwrap() = Some((status, body.into()));
            for outcome in [
                supplier.submit(&request()).await.unwrap(),
                supplier.query("01ORDER-00").await.unwrap(),
            ] {
                assert!(
                    matches!(outcome, TopUpOutcome::Unreadable { .. }),
                    "{status}: {outcome:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_query_of_a_request_never_seen_is_not_found() {
        let (server, url) = serve().await;
        let supplier = supplier(&url, Arc::new(FakeClock::default()));
        *server.answer.lock().unwrap() = Some((404, String::new()));
        assert_eq!(
            supplier.query("01ORDER-00").await.unwrap(),
            TopUpOutcome::NotFound
        );
        *server.answer.lock().unwrap() =
            Some((200, r#"{"status":"success","supplier_ref":"S-9"}"#.into()));
        assert_eq!(
            supplier.query("01ORDER-00").await.unwrap(),
            TopUpOutcome::Success {
                supplier_ref: "S-9".into()
            }
        );
        let (path, body) = server.seen.lock().unwrap()[0].clone();
        assert_eq!((path.as_str(), body.as_str()), ("/topups/01ORDER-00", ""));
    }

    #[tokio::test]
    async fn no_answer_in_time_or_no_server_is_an_unknown_outcome() {
        let (server, url) = serve().await;
        *server.hang.lock().unwrap() = true;
        let clock = Arc::new(FakeClock::default());
        assert!(matches!(
            supplier(&url, clock.clone()).submit(&request()).await,
            Err(Error::Timeout { .. })
        ));
        assert!(matches!(
            supplier("http://127.0.0.1:9/s/a", clock)
                .submit(&request())
                .await,
            Err(Error::Upstream { .. })
        ));
    }

    fn callback_headers(timestamp: i64, body: &[u8], secret: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            TIMESTAMP_HEADER,
            HeaderValue::from_str(&timestamp.to_string()).unwrap(),
        );
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&signature(secret, timestamp, body).unwrap()).unwrap(),
        );
        headers
    }

    #[test]
    fn callbacks_verify_only_signed_fresh_and_well_formed() {
        let clock = Arc::new(FakeClock::default());
        let supplier = HttpJsonSupplier::new(
            "http://127.0.0.1:9",
            Zeroizing::new(SECRET.to_vec()),
            Duration::from_millis(300),
            HttpClient::new().unwrap(),
            clock.clone(),
        );
        let now = clock.now();
        let body =
            br#"{"request_id":"01ORDER-00","status":"success","supplier_ref":"S-1","reason":null}"#;
        let check = |headers: &HeaderMap, body: &[u8], at: Timestamp| {
            supplier.verify_callback(&Notification {
                headers,
                body,
                received_at: at,
            })
        };
        let good = callback_headers(now.unix_seconds(), body, SECRET);
        assert_eq!(
            check(&good, body, now).unwrap(),
            SupplierCallback {
                request_id: "01ORDER-00".into(),
                outcome: TopUpOutcome::Success {
                    supplier_ref: "S-1".into()
                }
            }
        );
        assert!(check(&good, body, now.plus_seconds(300)).is_ok());
        for (headers, at) in [
            (
                callback_headers(now.unix_seconds(), body, b"another-secret"),
                now,
            ),
            (good.clone(), now.plus_seconds(301)),
            (good.clone(), now.plus_seconds(-301)),
            (HeaderMap::new(), now),
        ] {
            assert!(matches!(
                check(&headers, body, at),
                Err(Error::InvalidSignature(_))
            ));
        }
        let tampered =
            br#"{"request_id":"01ORDER-01","status":"success","supplier_ref":"S-1","reason":null}"#;
        assert!(matches!(
            check(&good, tampered, now),
            Err(Error::InvalidSignature(_))
        ));
        let no_status = br#"{"request_id":"01ORDER-00","status":"done"}"#;
        let headers = callback_headers(now.unix_seconds(), no_status, SECRET);
        assert!(matches!(
            check(&headers, no_status, now),
            Err(Error::InvalidRequest { .. })
        ));
    }
}
