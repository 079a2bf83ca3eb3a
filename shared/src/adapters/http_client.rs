//! HTTPS to outside systems (payment providers, suppliers): one client per function, on
//! the hyper + rustls (ring) + native roots stack the AWS SDK already links (no second
//! HTTP stack in the binaries: docs/bench.md, binary size), and every call bounded by the
//! caller's timeout. A timeout is `Error::Timeout` (whether the other side acted is
//! unknown); any other failure to get an answer is `Error::Upstream`.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_http::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};

use crate::error::{Error, Result};

/// An answer, whatever its status: the caller decides what a status means.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<Https, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

const USER_AGENT: &str = concat!("kami/", env!("CARGO_PKG_VERSION"));

impl HttpClient {
    pub fn new() -> Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|err| Error::Config(format!("HTTP client roots: {err}")))?
            // Plain http for loopback simulators (the local sandbox); providers are https.
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// One request to `url` (headers as given, body raw), answered within `timeout`.
    pub async fn send(
        &self,
        system: &'static str,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<HttpResponse> {
        let upstream = |message: String| Error::Upstream { system, message };
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header("user-agent", USER_AGENT);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| upstream(format!("bad header name {name}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| upstream(format!("bad value for header {name}")))?;
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            // Never the URL in the message: a query string may carry a signed request.
            .map_err(|_| upstream("the request could not be built".into()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| upstream(format!("no answer: {}", error_chain(&err))))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| upstream(format!("the answer broke off: {err}")))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout { system })?
    }
}

/// An error with its causes (hyper's own message is only "client error").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
