//! HTTPS to outside systems (payment providers, suppliers): one client per function,
//! rustls on ring as the AWS SDK's (no aws-lc), the platform's roots, and every call
//! bounded by the caller's timeout. A timeout is `Error::Timeout` (whether the other side
//! acted is unknown); any other failure to get an answer is `Error::Upstream`.

use std::sync::Once;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::error::{Error, Result};

/// An answer, whatever its status: the caller decides what a status means.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
}

static RING: Once = Once::new();

impl HttpClient {
    pub fn new() -> Result<Self> {
        // reqwest's rustls takes the process's default provider: ring, as the SDK's.
        RING.call_once(|| {
            // Already installed (by another client in this process) is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("kami/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Config(format!("HTTP client: {err}")))?;
        Ok(HttpClient { client })
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
        let mut request = self.client.request(method, url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let failed = |err: reqwest::Error| {
            if err.is_timeout() {
                Error::Timeout { system }
            } else {
                // Without the URL: a query string may carry a signed request.
                Error::Upstream {
                    system,
                    message: err.without_url().to_string(),
                }
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(failed)?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
