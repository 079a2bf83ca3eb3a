//! Configuration, read once at cold start, and the `Context` every use case receives.

use std::str::FromStr;
use std::sync::Arc;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use lambda_runtime::tracing::subscriber as tracing_subscriber;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::adapters::clock::{SystemClock, clock_from_env};
use crate::adapters::http_client::HttpClient;
use crate::adapters::kms::KmsVault;
use crate::adapters::metrics::AwsCallCounter;
use crate::adapters::notify::{SesEmail, SnsSms};
use crate::adapters::payment_channels::ChannelCache;
use crate::adapters::queue::{SqsDeliveryQueue, SqsNotifyQueue};
pub use crate::adapters::secrets::Secrets;
use crate::adapters::secrets::{self, SecretIds};
use crate::adapters::stripe::StripeProvider;
use crate::adapters::suppliers::SupplierCache;
use crate::error::{Error, Result};
use crate::ports::notifier::{Channel, Notifier};
use crate::ports::{Clock, KeyVault, PaymentProvider, Supplier};
use crate::store::Store;

/// Plain settings from the environment the template gives each function.
#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    pub delivery_queue_url: Option<String>,
    /// `NOTIFY_QUEUE_URL`: where delivered orders are queued for the notifier (unset: no
    /// notifications).
    pub notify_queue_url: Option<String>,
    /// `NOTIFY_FROM_EMAIL`: the verified SES sender notifications come from.
    pub notify_from_email: Option<String>,
    /// `EXPIRY_REMINDER_DAYS` (default 3, at most 90; 0: none): how long before an
    /// entitlement's period ends the buyer is reminded.
    pub expiry_reminder_days: i64,
    pub card_key_kms_key_id: Option<String>,
    pub order_ttl_seconds: i64,
    /// How long after an order's `expires_at` the sweep waits before it expires the
    /// order and returns its stock (`EXPIRY_GRACE_SECONDS`, default 300): a payment
    /// confirmed just before `expires_at` whose webhook comes late still finds it pending.
    pub expiry_grace_seconds: i64,
    pub delivery_max_attempts: u32,
    pub admin_token_secret_id: Option<String>,
    pub stripe_webhook_secret_id: Option<String>,
    pub fingerprint_secret_id: Option<String>,
    pub order_token_secret_id: Option<String>,
    /// `SECRETS_REFRESH_SECONDS` (default 60): how often a warm instance reads the
    /// revocable secrets (admin token, Stripe webhook secrets) again, so a rotated one
    /// stops working within it.
    pub secrets_refresh_seconds: i64,
    /// `STRIPE_LIVEMODE`: whether this deployment takes Stripe's live events (`true`) or
    /// its test-mode events (`false`, the default); the other mode's are refused.
    pub stripe_livemode: bool,
    /// `PUBLIC_API_URL`: the API's public base URL (API Gateway's in AWS, the local API's
    /// locally), for the notify URLs payment providers call.
    pub public_api_url: Option<String>,
    /// Whether a supplier's `base_url` may be a loopback or private address
    /// (`SUPPLIER_ALLOW_PRIVATE_URLS`, default false; true on the local platform, whose
    /// simulator is on loopback).
    pub supplier_allow_private_urls: bool,
    /// How deep the distributor tree may be (`DISTRIBUTOR_MAX_DEPTH`, default 3, at most
    /// 10): the levels of an order's chain that earn commission.
    pub distributor_max_depth: u32,
    /// How long a commission stays `pending` after delivery, the refund window
    /// (`COMMISSION_REFUND_WINDOW_SECONDS`, default 7 days).
    pub commission_refund_window_seconds: i64,
    /// The zone settlement periods are days of (`SETTLEMENT_TIME_ZONE`, default
    /// `Asia/Shanghai`).
    pub settlement_time_zone: String,
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests pass a map instead of mutating the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let optional = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let number = |name: &str, default: i64| -> Result<i64> {
            optional(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| Error::Config(format!("{name} must be an integer")))
            })
        };
        Ok(Config {
            table: optional("KAMI_TABLE")
                .ok_or_else(|| Error::Config("KAMI_TABLE is not set".into()))?,
            delivery_queue_url: optional("DELIVERY_QUEUE_URL"),
            notify_queue_url: optional("NOTIFY_QUEUE_URL"),
            notify_from_email: optional("NOTIFY_FROM_EMAIL"),
            expiry_reminder_days: Some(number("EXPIRY_REMINDER_DAYS", 3)?)
                .filter(|days| (0..=90).contains(days))
                .ok_or_else(|| Error::Config("EXPIRY_REMINDER_DAYS must be 0 to 90".into()))?,
            card_key_kms_key_id: optional("CARD_KEY_KMS_KEY_ID"),
            order_ttl_seconds: number("ORDER_TTL_SECONDS", 1800)?,
            expiry_grace_seconds: Some(number("EXPIRY_GRACE_SECONDS", 300)?)
                .filter(|grace| *grace >= 0)
                .ok_or_else(|| Error::Config("EXPIRY_GRACE_SECONDS must not be negative".into()))?,
            delivery_max_attempts: u32::try_from(number("DELIVERY_MAX_ATTEMPTS", 5)?)
                .map_err(|_| Error::Config("DELIVERY_MAX_ATTEMPTS must be positive".into()))?,
            admin_token_secret_id: optional("ADMIN_TOKEN_SECRET_ID"),
            stripe_webhook_secret_id: optional("STRIPE_WEBHOOK_SECRET_ID"),
            fingerprint_secret_id: optional("FINGERPRINT_SECRET_ID"),
            order_token_secret_id: optional("ORDER_TOKEN_SECRET_ID"),
            public_api_url: optional("PUBLIC_API_URL")
                .map(|url| url.trim_end_matches('/').to_owned()),
            secrets_refresh_seconds: Some(number("SECRETS_REFRESH_SECONDS", 60)?)
                .filter(|seconds| *seconds > 0)
                .ok_or_else(|| Error::Config("SECRETS_REFRESH_SECONDS must be positive".into()))?,
            supplier_allow_private_urls: match optional("SUPPLIER_ALLOW_PRIVATE_URLS").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(Error::Config(
                        "SUPPLIER_ALLOW_PRIVATE_URLS must be true or false".into(),
                    ));
                }
            },
            distributor_max_depth: u32::try_from(number(
                "DISTRIBUTOR_MAX_DEPTH",
                i64::from(crate::domain::distributor::DEFAULT_MAX_DEPTH),
            )?)
            .ok()
            .filter(|depth| (1..=crate::domain::distributor::MAX_DEPTH_LIMIT).contains(depth))
            .ok_or_else(|| Error::Config("DISTRIBUTOR_MAX_DEPTH must be 1 to 10".into()))?,
            commission_refund_window_seconds: Some(number(
                "COMMISSION_REFUND_WINDOW_SECONDS",
                7 * 86_400,
            )?)
            .filter(|seconds| *seconds >= 0)
            .ok_or_else(|| {
                Error::Config("COMMISSION_REFUND_WINDOW_SECONDS must not be negative".into())
            })?,
            settlement_time_zone: optional("SETTLEMENT_TIME_ZONE")
                .unwrap_or_else(|| "Asia/Shanghai".to_owned()),
            stripe_livemode: match optional("STRIPE_LIVEMODE").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(Error::Config(
                        "STRIPE_LIVEMODE must be true or false".into(),
                    ));
                }
            },
        })
    }
}

/// Crates whose own logs are capped at DEBUG whatever `RUST_LOG` says: at TRACE the
/// Lambda runtime logs every invocation event whole (`raw JSON event received from
/// Lambda`: import bodies with plaintext card keys, bearer tokens, webhook bodies), and
/// the HTTP stack below it may log what it reads and writes. (A target prefix: `hyper`
/// covers `hyper_util` and `hyper_rustls`, `lambda_runtime` its API client.)
pub const CAPPED_LOG_TARGETS: [&str; 5] = ["lambda_runtime", "lambda_http", "hyper", "h2", "tower"];

/// The most these crates may log.
pub const CAPPED_LOG_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// The filter that holds `CAPPED_LOG_TARGETS` below TRACE; every other target is left
/// to `RUST_LOG`.
pub fn log_cap() -> Targets {
    CAPPED_LOG_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, CAPPED_LOG_LEVEL),
    )
}

/// The subscriber of `init_logging`: as the runtime's default one (the level from
/// `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`'s directives; JSON when
/// `AWS_LAMBDA_LOG_FORMAT=JSON`), plus `log_cap`, which no directive can lift.
pub fn log_subscriber<W>(
    lambda_log_level: Option<&str>,
    rust_log: Option<&str>,
    json: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = lambda_log_level
        .or(rust_log)
        .and_then(|level| LevelFilter::from_str(level).ok())
        .unwrap_or(LevelFilter::INFO);
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .parse_lossy(rust_log.unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        Box::new(builder.json().finish().with(log_cap()))
    } else {
        Box::new(builder.finish().with(log_cap()))
    }
}

/// Logging for a function, from the environment Lambda gives it (stdout).
pub fn init_logging() {
    let lambda_log_level = std::env::var("AWS_LAMBDA_LOG_LEVEL").ok();
    let rust_log = std::env::var("RUST_LOG").ok();
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT")
        .is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let subscriber = log_subscriber(
        lambda_log_level.as_deref(),
        rust_log.as_deref(),
        json,
        std::io::stdout,
    );
    // Already set (a second cold start in one process, in tests): keep the first.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// A client of one AWS service from the shared config, counted when a counter is given.
/// (A macro: each service has its own config builder type.)
macro_rules! client_with_counter {
    ($service:ident, $sdk:expr, $counter:expr) => {{
        let mut builder = $service::config::Builder::from($sdk);
        if let Some(counter) = $counter {
            builder = builder.interceptor(counter.clone());
        }
        $service::Client::from_conf(builder.build())
    }};
}

/// The SDK's own retries of transient errors (throttling, 5xx, timeouts, dropped
/// connections) for every AWS call: standard mode (a retry token bucket, so a failing
/// service is not hammered), at most 3 attempts, exponential backoff with jitter from
/// 50 ms, capped at 1 s so a retried call still fits a 10 s invocation. Every call
/// retried is idempotent: conditional writes, and transactions with a client request
/// token (docs/operations.md, "Retries").
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(1))
}

/// The one way to load the shared `SdkConfig`: HTTPS through rustls on ring (see the
/// workspace `Cargo.toml` for why not the SDK's default aws-lc client), `retry_config`.
pub fn sdk_loader() -> ConfigLoader {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .retry_config(retry_config())
}

/// Everything a use case needs, built once per cold start and shared by invocations.
/// Each function asks `ContextBuilder` for only the AWS clients and ports it uses, so
/// its binary links no SDK it never calls (docs/bench.md, binary size).
pub struct Context {
    pub config: Config,
    pub store: Store,
    /// The time for every rule (docs/ports.md): the system's, or locally the platform's.
    pub clock: Arc<dyn Clock>,
    queue: Option<SqsDeliveryQueue>,
    notify_queue: Option<SqsNotifyQueue>,
    notifiers: Vec<(Channel, Arc<dyn Notifier>)>,
    vault: Option<Arc<dyn KeyVault>>,
    payment_providers: Vec<Arc<dyn PaymentProvider>>,
    pub secrets: Secrets,
    /// This instance's copy of the payment channels and their built providers.
    pub channels: ChannelCache,
    /// This instance's copy of the suppliers and their built adapters.
    pub suppliers: SupplierCache,
    /// The instance's HTTPS client for providers and suppliers (made on first use).
    http: std::sync::OnceLock<HttpClient>,
}

impl Context {
    /// Cold start: logging (`init_logging`: `RUST_LOG`, the Lambda log format, the
    /// runtime's own modules capped below TRACE),
    /// settings from the environment and one shared `SdkConfig` for every client
    /// (credentials resolved once).
    pub async fn from_env() -> Result<ContextBuilder> {
        init_logging();
        crate::metrics::init();
        let config = Config::from_env()?;
        let sdk = sdk_loader().load().await;
        Ok(ContextBuilder::new(config, sdk, None).with_clock(clock_from_env()))
    }

    pub fn queue(&self) -> Result<&SqsDeliveryQueue> {
        self.queue.as_ref().ok_or_else(|| {
            Error::Config("this function has no delivery queue (DELIVERY_QUEUE_URL)".into())
        })
    }

    /// The notification queue, if this deployment notifies buyers (`NOTIFY_QUEUE_URL`).
    pub fn notify_queue(&self) -> Option<&SqsNotifyQueue> {
        self.notify_queue.as_ref()
    }

    /// The notifier sending over `channel`, if this function has one.
    pub fn notifier(&self, channel: Channel) -> Option<&dyn Notifier> {
        self.notifiers
            .iter()
            .find(|(of, _)| *of == channel)
            .map(|(_, notifier)| notifier.as_ref())
    }

    pub fn vault(&self) -> Result<&dyn KeyVault> {
        self.vault
            .as_deref()
            .ok_or_else(|| Error::Config("this function has no card-key vault".into()))
    }

    /// The instance's HTTPS client for outside systems (one per instance: its
    /// connection pool is shared by every call).
    pub fn http(&self) -> Result<HttpClient> {
        if let Some(http) = self.http.get() {
            return Ok(http.clone());
        }
        let http = HttpClient::new()?;
        Ok(self.http.get_or_init(|| http).clone())
    }

    /// The payment provider called `name` (as in `/webhooks/{name}`).
    pub fn payment_provider(&self, name: &str) -> Result<&dyn PaymentProvider> {
        self.payment_providers
            .iter()
            .find(|provider| provider.name() == name)
            .map(|provider| provider.as_ref())
            .ok_or_else(|| Error::Config(format!("this function has no payment provider {name}")))
    }
}

/// Builds a `Context`: DynamoDB and the system clock always, the rest on request.
pub struct ContextBuilder {
    config: Config,
    sdk: SdkConfig,
    counter: Option<AwsCallCounter>,
    clock: Arc<dyn Clock>,
    queue: Option<SqsDeliveryQueue>,
    notify_queue: Option<SqsNotifyQueue>,
    notifiers: Vec<(Channel, Arc<dyn Notifier>)>,
    vault: Option<Arc<dyn KeyVault>>,
    stripe: bool,
    payment_providers: Vec<Arc<dyn PaymentProvider>>,
    suppliers: SupplierCache,
    secrets: Secrets,
}

impl ContextBuilder {
    /// With a `counter`, every DynamoDB, SQS and KMS request is counted (benchmarks).
    pub fn new(config: Config, sdk: SdkConfig, counter: Option<AwsCallCounter>) -> Self {
        ContextBuilder {
            config,
            sdk,
            counter,
            clock: Arc::new(SystemClock),
            queue: None,
            notify_queue: None,
            notifiers: Vec::new(),
            vault: None,
            stripe: false,
            payment_providers: Vec::new(),
            suppliers: SupplierCache::default(),
            secrets: Secrets::default(),
        }
    }

    /// Another clock (the local platform's; a fake in tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The delivery queue (SQS), when `DELIVERY_QUEUE_URL` is set, and the notification
    /// queue, when `NOTIFY_QUEUE_URL` is.
    pub fn with_queue(mut self) -> Self {
        let sqs = client_with_counter!(aws_sdk_sqs, &self.sdk, &self.counter);
        self.notify_queue = self
            .config
            .notify_queue_url
            .clone()
            .map(|url| SqsNotifyQueue::new(sqs.clone(), url));
        self.queue = self
            .config
            .delivery_queue_url
            .clone()
            .map(|url| SqsDeliveryQueue::new(sqs, url));
        self
    }

    /// The notifiers: email through SES (when `NOTIFY_FROM_EMAIL` is set) and SMS
    /// through SNS.
    pub fn with_notifiers(mut self) -> Self {
        if let Some(from) = self.config.notify_from_email.clone() {
            let ses = client_with_counter!(aws_sdk_sesv2, &self.sdk, &self.counter);
            self.notifiers
                .push((Channel::Email, Arc::new(SesEmail::new(ses, from))));
        }
        let sns = client_with_counter!(aws_sdk_sns, &self.sdk, &self.counter);
        self.with_notifier(Channel::Sms, Arc::new(SnsSms::new(sns)))
    }

    /// Another notifier for `channel` (a fake in tests), in place of any before it.
    pub fn with_notifier(mut self, channel: Channel, notifier: Arc<dyn Notifier>) -> Self {
        self.notifiers.retain(|(of, _)| *of != channel);
        self.notifiers.push((channel, notifier));
        self
    }

    /// The card-key vault (KMS).
    pub fn with_vault(self) -> Self {
        let kms = client_with_counter!(aws_sdk_kms, &self.sdk, &self.counter);
        let vault = KmsVault::new(kms, self.config.card_key_kms_key_id.clone());
        self.with_key_vault(Arc::new(vault))
    }

    /// Another key vault (a fake in tests).
    pub fn with_key_vault(mut self, vault: Arc<dyn KeyVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// The payment providers: Stripe, verifying webhooks under the endpoint secrets
    /// `with_secrets` loads (in either order).
    pub fn with_payments(mut self) -> Self {
        self.stripe = true;
        self
    }

    /// Another payment provider (a fake in tests).
    pub fn with_payment_provider(mut self, provider: Arc<dyn PaymentProvider>) -> Self {
        self.payment_providers.push(provider);
        self
    }

    /// Another adapter for the supplier `supplier_id` (a fake in tests); its record
    /// still comes from the table.
    pub fn with_supplier(self, supplier_id: &str, supplier: Arc<dyn Supplier>) -> Self {
        self.suppliers.replace(supplier_id, supplier);
        self
    }

    /// The secrets this function's configuration names (Secrets Manager).
    pub async fn with_secrets(mut self) -> Result<Self> {
        let ids = SecretIds {
            admin_token: self.config.admin_token_secret_id.as_deref(),
            stripe_webhook: self.config.stripe_webhook_secret_id.as_deref(),
            fingerprint_key: self.config.fingerprint_secret_id.as_deref(),
            order_token_key: self.config.order_token_secret_id.as_deref(),
        };
        // A weak or unreadable secret stops the cold start; the log names which, never
        // its value (the function fails to start rather than serve with it).
        let now = self.clock.now();
        let refresh_seconds = self.config.secrets_refresh_seconds;
        self.secrets = secrets::load(&self.sdk, &ids, refresh_seconds, now)
            .await
            .inspect_err(|err| {
                tracing::error!(error = %err, "cold start refused: secrets");
            })?;
        Ok(self)
    }

    pub fn build(mut self) -> Arc<Context> {
        let dynamodb = client_with_counter!(aws_sdk_dynamodb, &self.sdk, &self.counter);
        if self.stripe {
            self.payment_providers.push(Arc::new(
                StripeProvider::new(self.secrets.revocable())
                    .with_livemode(self.config.stripe_livemode),
            ));
        }
        Arc::new(Context {
            store: Store::new(dynamodb, self.config.table.clone()),
            clock: self.clock,
            queue: self.queue,
            notify_queue: self.notify_queue,
            notifiers: self.notifiers,
            vault: self.vault,
            payment_providers: self.payment_providers,
            secrets: self.secrets,
            channels: ChannelCache::default(),
            suppliers: self.suppliers,
            http: std::sync::OnceLock::new(),
            config: self.config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server answering every request 503, counting them.
    async fn unavailable_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 65536];
                    // One request per read is enough for the SDK's small JSON calls.
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 2\r\n\r\n{}";
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_transient_aws_error_is_retried_by_the_sdk_three_times_in_all() {
        let (url, seen) = unavailable_server().await;
        let sdk = sdk_loader()
            .endpoint_url(url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
            .load()
            .await;
        assert_eq!(sdk.retry_config(), Some(&retry_config()));
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let result = client.describe_limits().send().await;
        assert!(result.is_err());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn at_rust_log_trace_the_runtime_never_logs_raw_events() {
        for (rust_log, json) in [
            ("trace", false),
            ("trace", true),
            (
                "lambda_runtime=trace,lambda_runtime::layers::api_response=trace",
                false,
            ),
            ("info,hyper=trace,h2=trace,lambda_http=trace", false),
        ] {
            let capture = Capture::default();
            let subscriber = log_subscriber(None, Some(rust_log), json, capture.clone());
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(
                    target: "lambda_runtime::layers::api_response",
                    body = "RAW-EVENT-BODY",
                    "raw JSON event received from Lambda"
                );
                tracing::trace!(target: "lambda_runtime_api_client", "RAW-CLIENT");
                tracing::trace!(target: "lambda_http::request", "RAW-HTTP");
                tracing::trace!(target: "hyper_util::client", "RAW-HYPER");
                tracing::trace!(target: "h2::codec", "RAW-H2");
                tracing::debug!(target: "lambda_runtime", "runtime-debug-kept");
                tracing::trace!(target: "kami_shared::app", "kami-trace-kept");
            });
            let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
            assert!(!text.contains("RAW-"), "{rust_log}: {text}");
            if rust_log == "trace" {
                assert!(text.contains("runtime-debug-kept"), "{text}");
                assert!(text.contains("kami-trace-kept"), "{text}");
            }
        }
    }

    /// In JSON (the template's `LogFormat: JSON`), every line is one object carrying the
    /// spans it is in: the runtime's (`requestId`) and Kami's (`order_id`).
    #[test]
    fn json_lines_carry_the_request_id_and_the_order_id() {
        let capture = Capture::default();
        let subscriber = log_subscriber(None, None, true, capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            let invoke = tracing::info_span!("Lambda runtime invoke", requestId = "req-123");
            let _invoke = invoke.enter();
            let request = tracing::info_span!("request", order_id = tracing::field::Empty);
            request.record("order_id", "01KB0000000000000000000000");
            let _request = request.enter();
            tracing::info!("something about the order");
        });
        let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        let spans = line["spans"].as_array().expect("spans");
        assert!(spans.iter().any(|s| s["requestId"] == "req-123"), "{line}");
        assert_eq!(
            line["span"]["order_id"], "01KB0000000000000000000000",
            "{line}"
        );
        assert_eq!(line["fields"]["message"], "something about the order");
    }

    #[test]
    fn the_lambda_log_level_wins_and_info_is_the_default() {
        let capture = Capture::default();
        let subscriber = log_subscriber(Some("error"), None, false, capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("hidden-warning");
            tracing::error!("shown-error");
        });
        let capture_default = Capture::default();
        let subscriber = log_subscriber(None, None, false, capture_default.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("hidden-debug");
            tracing::info!("shown-info");
        });
        let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        assert!(
            text.contains("shown-error") && !text.contains("hidden-warning"),
            "{text}"
        );
        let text = String::from_utf8_lossy(&capture_default.0.lock().unwrap()).into_owned();
        assert!(
            text.contains("shown-info") && !text.contains("hidden-debug"),
            "{text}"
        );
    }

    fn config(livemode: Option<&str>) -> Result<Config> {
        Config::from_lookup(|name| match name {
            "KAMI_TABLE" => Some("kami".into()),
            "STRIPE_LIVEMODE" => livemode.map(str::to_owned),
            _ => None,
        })
    }

    #[test]
    fn stripe_livemode_is_false_unless_set_and_only_true_or_false() {
        assert!(!config(None).unwrap().stripe_livemode);
        assert!(!config(Some("false")).unwrap().stripe_livemode);
        assert!(config(Some("true")).unwrap().stripe_livemode);
        assert!(matches!(config(Some("yes")), Err(Error::Config(_))));
    }
}
