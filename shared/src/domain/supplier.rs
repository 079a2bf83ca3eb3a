//! Upstream suppliers of direct top-ups (直充), set up by an operator with
//! `PUT /admin/suppliers/{supplier_id}`, and the rules every supplier shares: how its
//! config is checked, its circuit breaker, and which supplier an order goes to next.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::request::RequestBody;

pub const MAX_SUPPLIER_ID_LEN: usize = 40;
pub const DEFAULT_TIMEOUT_MS: u32 = 3_000;
const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u32> = 100..=30_000;
pub const DEFAULT_UNKNOWN_OUTCOME_DEADLINE_S: u32 = 600;
const UNKNOWN_OUTCOME_DEADLINE_RANGE: std::ops::RangeInclusive<u32> = 60..=7 * 86_400;
const CODE: &str = "invalid_supplier_config";
const MAX_SECRET_LEN: usize = 512;
const MIN_SECRET_LEN: usize = 16;

/// Supplier ids appear in callback URLs and keys: a small alphabet.
pub fn validate_supplier_id(supplier_id: &str) -> Result<()> {
    if crate::domain::is_slug(supplier_id, MAX_SUPPLIER_ID_LEN) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_supplier_id",
            format!("supplier_id must be 1 to {MAX_SUPPLIER_ID_LEN} characters of a-z 0-9 _ -"),
        ))
    }
}

/// The protocol a supplier speaks: one adapter each (`adapters::suppliers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SupplierKind {
    /// Kami's own protocol (docs/suppliers.md).
    HttpJson,
}

impl SupplierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SupplierKind::HttpJson => "http_json",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "http_json" => Ok(SupplierKind::HttpJson),
            other => Err(Error::invalid_field(
                CODE,
                "kind",
                format!("supplier kind {other:?} is not supported; use \"http_json\""),
            )),
        }
    }
}

/// When a supplier is skipped: `failures` calls without an answer (timeouts,
/// connection errors, 5xx) within `window_s` open the circuit for `cooldown_s`; then one
/// trial request decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CircuitSettings {
    #[schema(minimum = 1, maximum = 1000, example = 5)]
    pub failures: u32,
    #[schema(minimum = 1, maximum = 86400, example = 60)]
    pub window_s: u32,
    #[schema(minimum = 1, maximum = 86400, example = 30)]
    pub cooldown_s: u32,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures: 5,
            window_s: 60,
            cooldown_s: 30,
        }
    }
}

/// The body of `PUT /admin/suppliers/{supplier_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierRequest {
    #[schema(example = "http_json")]
    pub kind: Option<String>,
    /// Where the supplier's API is: an http(s) URL without query or fragment.
    #[schema(example = "https://supplier.example/api")]
    pub base_url: Option<String>,
    /// The shared signing secret (16 to 512 characters). Required when the supplier is
    /// created; a replace without it keeps the stored one. Never shown again.
    pub secret: Option<String>,
    /// Bound on every call to the supplier, 100 to 30000 (default 3000).
    #[schema(minimum = 100, maximum = 30000, example = 3000)]
    pub timeout_ms: Option<u32>,
    /// Default true. A disabled supplier gets no new top-up; unknown outcomes at it are
    /// still queried.
    pub enabled: Option<bool>,
    /// Default `{"failures": 5, "window_s": 60, "cooldown_s": 30}`.
    pub circuit: Option<CircuitSettings>,
    /// How long an outcome may stay unknown or pending before the order is handed to an
    /// operator, 60 to 604800 (default 600).
    #[schema(minimum = 60, maximum = 604800, example = 600)]
    pub unknown_outcome_deadline_s: Option<u32>,
}

impl RequestBody for SupplierRequest {
    fn field_code(_path: &str) -> Option<&'static str> {
        Some(CODE)
    }
}

/// A supplier's settings, checked (everything but its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupplierSettings {
    pub kind: SupplierKind,
    pub base_url: String,
    pub timeout_ms: u32,
    pub enabled: bool,
    pub circuit: CircuitSettings,
    pub unknown_outcome_deadline_s: u32,
}

impl SupplierRequest {
    /// The checked settings and the secret, if the request carries one.
    pub fn into_parts(
        self,
        allow_private_urls: bool,
    ) -> Result<(SupplierSettings, Option<zeroize::Zeroizing<String>>)> {
        let kind = SupplierKind::parse(&required(self.kind, "kind")?)?;
        let base_url = required(self.base_url, "base_url")?;
        check_base_url(&base_url, allow_private_urls)?;
        let secret = match self.secret {
            Some(secret) => {
                let secret = zeroize::Zeroizing::new(secret);
                if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
                    || secret.chars().any(char::is_control)
                {
                    return Err(Error::invalid_field(
                        CODE,
                        "secret",
                        format!(
                            "secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} printable characters"
                        ),
                    ));
                }
                Some(secret)
            }
            None => None,
        };
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !TIMEOUT_MS_RANGE.contains(&timeout_ms) {
            return Err(Error::invalid_field(
                CODE,
                "timeout_ms",
                "timeout_ms must be between 100 and 30000",
            ));
        }
        let circuit = self.circuit.unwrap_or_default();
        for (field, value) in [
            ("circuit.failures", circuit.failures),
            ("circuit.window_s", circuit.window_s),
            ("circuit.cooldown_s", circuit.cooldown_s),
        ] {
            let max = if field == "circuit.failures" {
                1_000
            } else {
                86_400
            };
            if !(1..=max).contains(&value) {
                return Err(Error::invalid_field(
                    CODE,
                    field,
                    format!("{field} must be between 1 and {max}"),
                ));
            }
        }
        let deadline = self
            .unknown_outcome_deadline_s
            .unwrap_or(DEFAULT_UNKNOWN_OUTCOME_DEADLINE_S);
        if !UNKNOWN_OUTCOME_DEADLINE_RANGE.contains(&deadline) {
            return Err(Error::invalid_field(
                CODE,
                "unknown_outcome_deadline_s",
                "unknown_outcome_deadline_s must be between 60 and 604800",
            ));
        }
        Ok((
            SupplierSettings {
                kind,
                base_url: base_url.trim_end_matches('/').to_owned(),
                timeout_ms,
                enabled: self.enabled.unwrap_or(true),
                circuit,
                unknown_outcome_deadline_s: deadline,
            },
            secret,
        ))
    }
}

fn required(value: Option<String>, field: &str) -> Result<String> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(Error::invalid_field(
            CODE,
            field,
            format!("{field} is required and must not be empty"),
        )),
    }
}

/// An http(s) URL with a host and no query, fragment or credentials. Loopback and
/// private hosts only when the deployment allows them (`SUPPLIER_ALLOW_PRIVATE_URLS`:
/// the local simulators; a deployment that refuses them cannot be pointed at its own
/// network by a stolen admin token).
fn check_base_url(url: &str, allow_private_urls: bool) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid_field(CODE, "base_url", why.to_owned()));
    let Ok(uri) = url.parse::<lambda_http::http::Uri>() else {
        return bad("base_url must be an http(s) URL");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("base_url must be an http(s) URL");
    }
    let Some(authority) = uri.authority() else {
        return bad("base_url must name a host");
    };
    if authority.as_str().contains('@') || uri.query().is_some() || url.contains('#') {
        return bad("base_url must have no credentials, query or fragment");
    }
    if !allow_private_urls && is_private_host(authority.host()) {
        return bad("base_url must not point at a loopback or private address here");
    }
    Ok(())
}

fn is_private_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// A supplier's circuit as stored: the failures counted in the current window and when
/// it opened (if it did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Circuit {
    pub failures: u32,
    pub window_started: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    /// A trial request in flight until then (half-open: only one at a time).
    pub trial_until: Option<Timestamp>,
    /// Optimistic lock: every change is conditional on the version it read.
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn state(&self, settings: &CircuitSettings, now: Timestamp) -> CircuitState {
        match self.opened_at {
            None => CircuitState::Closed,
            Some(opened) if now < opened.plus_seconds(i64::from(settings.cooldown_s)) => {
                CircuitState::Open
            }
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a new request may go now. Half-open lets one trial through at a time
    /// (`trial_until`); the caller claims it with `with_trial`.
    pub fn admits(&self, settings: &CircuitSettings, now: Timestamp) -> Admission {
        match self.state(settings, now) {
            CircuitState::Closed => Admission::Yes,
            CircuitState::Open => Admission::No,
            CircuitState::HalfOpen if self.trial_until.is_some_and(|until| now < until) => {
                Admission::No
            }
            CircuitState::HalfOpen => Admission::Trial,
        }
    }

    /// The circuit with a trial claimed until `until`.
    pub fn with_trial(&self, until: Timestamp) -> Circuit {
        Circuit {
            trial_until: Some(until),
            version: self.version + 1,
            ..self.clone()
        }
    }

    /// The circuit after a call that got no answer at `now`.
    pub fn after_failure(&self, settings: &CircuitSettings, now: Timestamp) -> Circuit {
        let state = self.state(settings, now);
        if state == CircuitState::HalfOpen {
            // The trial failed: open again for a whole cooldown.
            return Circuit {
                failures: settings.failures,
                window_started: Some(now),
                opened_at: Some(now),
                trial_until: None,
                version: self.version + 1,
            };
        }
        let in_window = self
            .window_started
            .is_some_and(|start| now < start.plus_seconds(i64::from(settings.window_s)));
        let (failures, window_started) = if in_window {
            (self.failures.saturating_add(1), self.window_started)
        } else {
            (1, Some(now))
        };
        let opened_at = match (state, self.opened_at) {
            (CircuitState::Open, opened) => opened,
            _ if failures >= settings.failures => Some(now),
            _ => None,
        };
        Circuit {
            failures,
            window_started,
            opened_at,
            trial_until: None,
            version: self.version + 1,
        }
    }

    /// The circuit after an answer (any answer: the supplier is up). Closes a half-open
    /// circuit; `None` when nothing changes (no write).
    pub fn after_answer(&self, settings: &CircuitSettings, now: Timestamp) -> Option<Circuit> {
        match self.state(settings, now) {
            CircuitState::Open => None,
            CircuitState::Closed if self.failures == 0 => None,
            _ => Some(Circuit {
                version: self.version + 1,
                ..Circuit::default()
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Yes,
    /// Half-open: this request is the trial.
    Trial,
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_800_000_000_000);

    fn settings() -> CircuitSettings {
        CircuitSettings {
            failures: 3,
            window_s: 60,
            cooldown_s: 30,
        }
    }

    #[test]
    fn the_circuit_opens_after_failures_in_a_window_and_a_trial_closes_it() {
        let s = settings();
        let mut circuit = Circuit::default();
        for i in 0..2 {
            circuit = circuit.after_failure(&s, T0.plus_seconds(i));
            assert_eq!(circuit.state(&s, T0.plus_seconds(i)), CircuitState::Closed);
        }
        circuit = circuit.after_failure(&s, T0.plus_seconds(2));
        assert_eq!(circuit.state(&s, T0.plus_seconds(2)), CircuitState::Open);
        assert_eq!(circuit.admits(&s, T0.plus_seconds(31)), Admission::No);
        let half = T0.plus_seconds(32);
        assert_eq!(circuit.state(&s, half), CircuitState::HalfOpen);
        assert_eq!(circuit.admits(&s, half), Admission::Trial);
        let trying = circuit.with_trial(half.plus_seconds(5));
        assert_eq!(
            trying.admits(&s, half),
            Admission::No,
            "one trial at a time"
        );
        let closed = trying.after_answer(&s, half.plus_seconds(1)).unwrap();
        assert_eq!(closed.state(&s, half), CircuitState::Closed);
        assert_eq!(closed.failures, 0);
    }

    #[test]
    fn a_failed_trial_opens_the_circuit_again() {
        let s = settings();
        let mut circuit = Circuit::default();
        for i in 0..3 {
            circuit = circuit.after_failure(&s, T0.plus_seconds(i));
        }
        let half = T0.plus_seconds(40);
        let reopened = circuit.with_trial(half).after_failure(&s, half);
        assert_eq!(
            reopened.state(&s, half.plus_seconds(29)),
            CircuitState::Open
        );
        assert_eq!(
            reopened.state(&s, half.plus_seconds(30)),
            CircuitState::HalfOpen
        );
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let s = settings();
        let mut circuit = Circuit::default();
        circuit = circuit.after_failure(&s, T0);
        circuit = circuit.after_failure(&s, T0.plus_seconds(1));
        circuit = circuit.after_failure(&s, T0.plus_seconds(61));
        assert_eq!(circuit.failures, 1);
        assert_eq!(circuit.state(&s, T0.plus_seconds(61)), CircuitState::Closed);
        assert!(circuit.after_answer(&s, T0.plus_seconds(62)).is_some());
        assert!(
            Circuit::default().after_answer(&s, T0).is_none(),
            "a healthy circuit is not written"
        );
    }

    fn request(json: serde_json::Value) -> Result<SupplierSettings> {
        let request: SupplierRequest = crate::request::parse_json(json.to_string().as_bytes())?;
        request.into_parts(false).map(|(settings, _)| settings)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidRequest {
                code,
                path: Some(path),
                ..
            } if code == CODE => path,
            other => panic!("not an invalid_supplier_config: {other:?}"),
        }
    }

    #[test]
    fn bad_config_names_the_field() {
        let good = serde_json::json!({"kind": "http_json", "base_url": "https://s.example/api", "secret": "0123456789abcdef"});
        assert_eq!(request(good.clone()).unwrap().timeout_ms, 3000);
        for (patch, field) in [
            (serde_json::json!({"kind": "soap"}), "kind"),
            (serde_json::json!({"kind": ""}), "kind"),
            (serde_json::json!({"base_url": "ftp://x"}), "base_url"),
            (serde_json::json!({"base_url": "not a url"}), "base_url"),
            (serde_json::json!({"base_url": ""}), "base_url"),
            (
                serde_json::json!({"base_url": "http://127.0.0.1:9/x"}),
                "base_url",
            ),
            (
                serde_json::json!({"base_url": "https://10.0.0.2/x"}),
                "base_url",
            ),
            (serde_json::json!({"timeout_ms": 99}), "timeout_ms"),
            (serde_json::json!({"timeout_ms": 30001}), "timeout_ms"),
            (serde_json::json!({"timeout_ms": "fast"}), "timeout_ms"),
            (serde_json::json!({"secret": "short"}), "secret"),
            (
                serde_json::json!({"circuit": {"failures": 0, "window_s": 1, "cooldown_s": 1}}),
                "circuit.failures",
            ),
            (serde_json::json!({"circuit": {"failures": 1}}), "circuit"),
            (
                serde_json::json!({"unknown_outcome_deadline_s": 5}),
                "unknown_outcome_deadline_s",
            ),
        ] {
            let mut body = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(
                field_of(request(body.clone()).unwrap_err()),
                field,
                "{body}"
            );
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("base_url");
        assert_eq!(field_of(request(missing).unwrap_err()), "base_url");
    }

    #[test]
    fn loopback_urls_only_where_the_deployment_allows_them() {
        let body =
            serde_json::json!({"kind": "http_json", "base_url": "http://127.0.0.1:8080/s/a/"});
        let request: SupplierRequest =
            crate::request::parse_json(body.to_string().as_bytes()).unwrap();
        let (settings, secret) = request.into_parts(true).unwrap();
        assert_eq!(settings.base_url, "http://127.0.0.1:8080/s/a");
        assert!(secret.is_none());
    }
}
