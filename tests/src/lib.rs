//! Test harness: one moto server per test binary (started here, stopped when the test
//! process exits), provisioned from template.yaml by `infra/kami_local/provision.py`,
//! and helpers that drive the real HTTP handlers and use cases against it.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::Region;
use aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::config::Credentials;
use hmac::{Hmac, KeyInit, Mac};
use kami_shared::adapters::metrics::AwsCallCounter;
use kami_shared::app::delivery;
use kami_shared::config::ContextBuilder;
use kami_shared::ports::Clock;
use kami_shared::{Config, Context, http};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request};
use serde_json::{Value, json};
use sha2::Sha256;

pub mod faults;

pub const ADMIN_TOKEN: &str = "kami-local-admin-token-not-a-secret-22222222";
pub const STRIPE_SECRET: &str = "whsec_kami_local_test_secret_not_a_secret_3333";

pub struct Stack {
    pub endpoint: String,
    pub env: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
    // Holding the pipe keeps moto alive; the OS closes it when the test process exits.
    _moto: Mutex<Child>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn venv_python() -> PathBuf {
    let python = repo_root().join(".kami/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash infra/setup.sh` first (infra/test.sh does)",
        python.display()
    );
    python
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(port: u16, deadline: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < deadline,
            "moto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The moto server and provisioned stack of this test binary.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let python = venv_python();
        let port = free_port();
        // The shell stops moto when our end of its stdin closes, i.e. when this test
        // process exits, however it exits.
        let moto = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -m kami_local.moto_serve --host 127.0.0.1 --port "$1" >"$2" 2>&1 & child=$!; read _ignored; kill $child"#)
            .arg(&python)
            .arg(port.to_string())
            .arg(std::env::temp_dir().join(format!("kami-moto-{port}.log")))
            .current_dir(repo_root().join("infra"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start moto");
        wait_for_port(port, Duration::from_secs(30));
        let endpoint = format!("http://127.0.0.1:{port}");
        let output = Command::new(&python)
            .args(["-m", "kami_local.provision", "--endpoint", &endpoint, "--json"])
            .current_dir(repo_root().join("infra"))
            .output()
            .expect("run the provisioner");
        assert!(
            output.status.success(),
            "provisioning failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let provisioned: Value = serde_json::from_slice(&output.stdout).expect("provisioner JSON");
        let env = provisioned["env"]
            .as_object()
            .expect("env map")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let defaults: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("infra/local-defaults.json")).expect("defaults"),
        )
        .expect("defaults JSON");
        let secrets = defaults["secrets"]
            .as_object()
            .expect("secrets")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Stack {
            endpoint,
            env,
            secrets,
            _moto: Mutex::new(moto),
        }
    })
}

pub async fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_via(&stack().endpoint).await
}

/// As `sdk_config`, with every request sent to `endpoint` (a proxy in front of moto).
pub async fn sdk_config_via(endpoint: &str) -> aws_config::SdkConfig {
    kami_shared::config::sdk_loader()
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "kami-tests"))
        .load()
        .await
}

/// A context as a function's cold start would build it, with `overrides` applied.
pub async fn context_with(overrides: &[(&str, &str)]) -> Arc<Context> {
    counted_context_with(overrides, None).await
}

/// A context whose AWS requests all go through `endpoint` (a proxy in front of moto),
/// with a delivery queue of its own (as `context`).
pub async fn context_via(endpoint: &str) -> Arc<Context> {
    let mut env = stack().env.clone();
    env.insert("DELIVERY_QUEUE_URL".to_owned(), test_queue().await);
    context_from(&env, sdk_config_via(endpoint).await, None).await
}

/// Every client a function could have, as its cold start would build them.
async fn context_from(
    env: &HashMap<String, String>,
    sdk: aws_config::SdkConfig,
    counter: Option<AwsCallCounter>,
) -> Arc<Context> {
    builder_from(env, sdk, counter, None).await.build()
}

/// The builder a cold start makes, on `clock` if given (before the secrets are read: the
/// time they are due again is the clock's).
async fn builder_from(
    env: &HashMap<String, String>,
    sdk: aws_config::SdkConfig,
    counter: Option<AwsCallCounter>,
    clock: Option<Arc<dyn Clock>>,
) -> ContextBuilder {
    let config = Config::from_lookup(|name| env.get(name).cloned()).expect("config");
    let builder = ContextBuilder::new(config, sdk, counter);
    let builder = match clock {
        Some(clock) => builder.with_clock(clock),
        None => builder,
    };
    builder
        .with_queue()
        .with_notifiers()
        .with_vault()
        .with_payments()
        .with_secrets()
        .await
        .expect("context")
}

/// As `context_with`, with every AWS request the use cases make counted.
pub async fn counted_context_with(
    overrides: &[(&str, &str)],
    counter: Option<AwsCallCounter>,
) -> Arc<Context> {
    let stack = stack();
    let mut env = stack.env.clone();
    for (name, value) in overrides {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    context_from(&env, sdk_config().await, counter).await
}

/// A context with a delivery queue of its own, so tests running in parallel never
/// handle each other's messages.
pub async fn context() -> Arc<Context> {
    counted_context(None).await
}

/// As `context`, with every AWS request the use cases make counted.
pub async fn counted_context(counter: Option<AwsCallCounter>) -> Arc<Context> {
    let url = test_queue().await;
    counted_context_with(&[("DELIVERY_QUEUE_URL", &url)], counter).await
}

/// As `context`, with time from `clock` (a `FakeClock`, say).
pub async fn context_on(clock: Arc<dyn Clock>) -> Arc<Context> {
    context_on_with(clock, &[]).await
}

/// As `context_on`, with `overrides` of the environment applied.
pub async fn context_on_with(clock: Arc<dyn Clock>, overrides: &[(&str, &str)]) -> Arc<Context> {
    let mut env = stack().env.clone();
    env.insert("DELIVERY_QUEUE_URL".to_owned(), test_queue().await);
    for (name, value) in overrides {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    builder_from(&env, sdk_config().await, None, Some(clock))
        .await
        .build()
}

/// As `context_on`, with these adapters for these suppliers (fakes; the suppliers'
/// records still come from the table) and a public URL for their callbacks.
pub async fn context_with_suppliers(
    clock: Arc<dyn Clock>,
    suppliers: &[(&str, Arc<dyn kami_shared::ports::Supplier>)],
) -> Arc<Context> {
    let mut env = stack().env.clone();
    env.insert("DELIVERY_QUEUE_URL".to_owned(), test_queue().await);
    env.insert(
        "PUBLIC_API_URL".to_owned(),
        "https://kami.example".to_owned(),
    );
    let mut builder = builder_from(&env, sdk_config().await, None, Some(clock)).await;
    for (supplier_id, supplier) in suppliers {
        builder = builder.with_supplier(supplier_id, supplier.clone());
    }
    builder.build()
}

/// As `context_with`, with `notifier` sending over `channel` (a fake).
pub async fn context_with_notifier(
    overrides: &[(&str, &str)],
    channel: kami_shared::ports::notifier::Channel,
    notifier: Arc<dyn kami_shared::ports::notifier::Notifier>,
) -> Arc<Context> {
    let mut env = stack().env.clone();
    for (name, value) in overrides {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    builder_from(&env, sdk_config().await, None, None)
        .await
        .with_notifier(channel, notifier)
        .build()
}

/// A queue of a test's own (a notification queue, say).
pub async fn fresh_queue() -> String {
    test_queue().await
}

/// Everything moto's SES and SNS were given to send (`GET /_kami/outbox` of Kami's moto
/// wrapper): `{"channel", "message_id", "recipient", "subject", "body"}` each.
pub async fn outbox() -> Vec<Value> {
    let http = kami_shared::adapters::http_client::HttpClient::new().expect("an HTTP client");
    let answer = http
        .send(
            "moto",
            lambda_http::http::Method::GET,
            &format!("{}/_kami/outbox", stack().endpoint),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        .expect("the outbox");
    assert_eq!(answer.status, 200);
    let body: Value = serde_json::from_slice(&answer.body).expect("outbox JSON");
    body["messages"].as_array().expect("messages").clone()
}

/// Every message now in the queue at `url`, received (each once; none deleted) as the
/// event source mapping would hand them to a function.
pub async fn receive_all(url: &str) -> Vec<SqsMessage> {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let mut records = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return records;
        }
        records.extend(messages.iter().map(event_record));
    }
}

/// An SQS message as the event source mapping hands it to a function.
fn event_record(m: &aws_sdk_sqs::types::Message) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = m.message_id.clone();
    record.receipt_handle = m.receipt_handle.clone();
    record.body = m.body.clone();
    record.attributes = m
        .attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    record
}

/// A delivery queue of a test's own.
async fn test_queue() -> String {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let name = format!("test-deliveries-{}", kami_shared::domain::time::new_id());
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create a test queue")
        .queue_url
        .expect("queue url")
}

pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request {
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("request")
}

/// `request` as API Gateway passes it on from a client at `source_ip` (its request
/// context; the only place Kami takes a client's address from).
pub fn from_address(mut request: Request, source_ip: &str) -> Request {
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http.source_ip = Some(source_ip.to_owned());
    request
        .extensions_mut()
        .insert(RequestContext::ApiGatewayV2(context));
    request
}

/// One request through a function's router, as Lambda would run it: status, headers,
/// raw body.
async fn answer_raw(
    router: axum::Router,
    request: Request,
) -> (u16, lambda_http::http::HeaderMap, Vec<u8>) {
    let response = http::call(router, request).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("response body");
    (status, headers, body.to_vec())
}

/// As `answer_raw`, the body read as JSON.
async fn answer_with_headers(
    router: axum::Router,
    request: Request,
) -> (u16, lambda_http::http::HeaderMap, Value) {
    let (status, headers, body) = answer_raw(router, request).await;
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON response")
    };
    (status, headers, value)
}

async fn answer(router: axum::Router, request: Request) -> (u16, Value) {
    let (status, _, body) = answer_with_headers(router, request).await;
    (status, body)
}

pub async fn checkout(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::finish(http::checkout::routes(), ctx.clone()), request).await
}

/// As `checkout`, with the answer's headers.
pub async fn checkout_with_headers(
    ctx: &Arc<Context>,
    request: Request,
) -> (u16, lambda_http::http::HeaderMap, Value) {
    answer_with_headers(http::finish(http::checkout::routes(), ctx.clone()), request).await
}

/// `POST /orders/{order_id}/payments` through `channel`, as the buyer holding `token`.
pub async fn open_payment(
    ctx: &Arc<Context>,
    order_id: &str,
    token: &str,
    idempotency_key: &str,
    channel: &str,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    checkout(
        ctx,
        request(
            "POST",
            &format!("/orders/{order_id}/payments"),
            &[
                ("authorization", &auth),
                ("idempotency-key", idempotency_key),
            ],
            serde_json::json!({"channel": channel}).to_string(),
        ),
    )
    .await
}

pub async fn admin(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::admin::router(ctx.clone()), request).await
}

/// The operations function (orders, refunds, the exception queue), as API Gateway routes
/// those `/admin/...` paths to it.
/// The order as stored (it must exist).
pub async fn stored_order(ctx: &Arc<Context>, order_id: &str) -> kami_shared::store::OrderView {
    ctx.store
        .get_order_view(order_id)
        .await
        .expect("read")
        .expect("order")
}

/// The payment id of the order's first payment attempt, as stored.
pub async fn first_attempt_payment_id(ctx: &Arc<Context>, order_id: &str) -> String {
    stored_order(ctx, order_id).await.attempts[0]
        .payment_id
        .clone()
}

pub async fn operations(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::operations::router(ctx.clone()), request).await
}

/// `GET path` on the operations function as the admin.
pub async fn operations_get(ctx: &Arc<Context>, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    operations(ctx, request("GET", path, &[("authorization", &auth)], "")).await
}

/// The distributor API (`/distributor/...`), the key checked as its function does.
pub async fn distributor_api(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::distributor::router(ctx.clone()), request).await
}

/// The merchant API (`/licenses/...`), the key checked as its function does.
pub async fn merchant_api(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::merchant::router(ctx.clone()), request).await
}

/// As `distributor_api`, with the answer's headers and raw body (CSV answers).
pub async fn distributor_api_raw(
    ctx: &Arc<Context>,
    request: Request,
) -> (u16, lambda_http::http::HeaderMap, Vec<u8>) {
    answer_raw(http::distributor::router(ctx.clone()), request).await
}

/// As `admin`, with the answer's headers and its body as text (CSV answers).
pub async fn admin_raw(
    ctx: &Arc<Context>,
    request: Request,
) -> (u16, lambda_http::http::HeaderMap, String) {
    let (status, headers, body) = answer_raw(http::admin::router(ctx.clone()), request).await;
    (
        status,
        headers,
        String::from_utf8(body).expect("UTF-8 body"),
    )
}

pub async fn webhook(ctx: &Arc<Context>, request: Request) -> (u16, Value) {
    answer(http::finish(http::webhook::routes(), ctx.clone()), request).await
}

pub fn unique_sku(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        kami_shared::domain::time::new_id().to_ascii_lowercase()
    )
}

/// Creates the product `body` describes through the admin API (201 or the test fails).
pub async fn create_product(ctx: &Arc<Context>, body: Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, created) = admin(
        ctx,
        request(
            "POST",
            "/admin/products",
            &[("authorization", &auth)],
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
}

/// Creates a card-key product and imports `keys`; returns the sku.
pub async fn product_with_keys(
    ctx: &Arc<Context>,
    prefix: &str,
    price: i64,
    max_per_order: u32,
    keys: &[String],
) -> String {
    let sku = unique_sku(prefix);
    create_product(
        ctx,
        json!({"sku": sku, "title": "Test card", "price": {"amount": price, "currency": "CNY"},
            "delivery": {"type": "card_key"}, "max_per_order": max_per_order}),
    )
    .await;
    import_all(ctx, &sku, keys).await;
    sku
}

/// Imports `keys` into `sku` (every one accepted, or the test fails).
pub async fn import_all(ctx: &Arc<Context>, sku: &str, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let (status, report) = import_keys(
        ctx,
        sku,
        "application/json",
        json!({"keys": keys}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["accepted"], json!(keys.len()), "{report}");
}

pub fn make_keys(prefix: &str, count: usize) -> Vec<String> {
    let run = kami_shared::domain::time::new_id();
    (0..count)
        .map(|i| format!("{prefix}-{run}-{i:06}"))
        .collect()
}

/// `POST /orders` as a buyer at `source_ip` sends it through API Gateway.
pub fn order_request_from(
    sku: &str,
    quantity: u32,
    email: &str,
    idempotency_key: &str,
    source_ip: &str,
) -> Request {
    let body = json!({"sku": sku, "quantity": quantity, "buyer": {"email": email}});
    from_address(
        request(
            "POST",
            "/orders",
            &[("idempotency-key", idempotency_key)],
            body.to_string(),
        ),
        source_ip,
    )
}

/// The buyer email `order` sends with this key: one buyer per purchase (as in a real
/// sale), so no buyer's cap on unpaid units is reached.
pub fn buyer_for(idempotency_key: &str) -> String {
    format!(
        "buyer-{}@example.com",
        &kami_shared::domain::crypto::sha256_hex(idempotency_key.as_bytes())[..16]
    )
}

/// `POST /orders`; returns (status, body).
pub async fn order(
    ctx: &Arc<Context>,
    sku: &str,
    quantity: i64,
    idempotency_key: &str,
) -> (u16, Value) {
    let body =
        json!({"sku": sku, "quantity": quantity, "buyer": {"email": buyer_for(idempotency_key)}});
    checkout(
        ctx,
        request(
            "POST",
            "/orders",
            &[("idempotency-key", idempotency_key)],
            body.to_string(),
        ),
    )
    .await
}

/// `POST /orders` with `body` and `key`, which must make the order: its 201 body.
pub async fn place_order(ctx: &Arc<Context>, key: &str, body: &Value) -> Value {
    let (status, created) = checkout(
        ctx,
        request(
            "POST",
            "/orders",
            &[("idempotency-key", key)],
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The paid order's delivery message `times` more (duplicated messages).
pub async fn enqueue_again(ctx: &Arc<Context>, order_id: &str, times: usize) {
    for _ in 0..times {
        ctx.queue()
            .unwrap()
            .enqueue_delivery(order_id)
            .await
            .unwrap();
    }
}

pub async fn view_order(ctx: &Arc<Context>, order_id: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    checkout(
        ctx,
        request(
            "GET",
            &format!("/orders/{order_id}"),
            &[("authorization", &auth)],
            Body::Empty,
        ),
    )
    .await
}

pub fn stripe_signature(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

pub fn now_seconds() -> i64 {
    kami_shared::domain::time::Timestamp::now().unix_seconds()
}

pub fn checkout_completed(event_id: &str, order_id: &str, amount: i64, currency: &str) -> String {
    json!({
        "id": event_id, "object": "event", "type": "checkout.session.completed",
        "data": {"object": {"id": format!("cs_{event_id}"), "object": "checkout.session",
            "client_reference_id": order_id, "metadata": {"order_id": order_id},
            "amount_total": amount, "currency": currency.to_ascii_lowercase(),
            "payment_intent": format!("pi_{order_id}"), "payment_status": "paid"}}
    })
    .to_string()
}

/// Sends a correctly signed Stripe webhook.
pub async fn pay(
    ctx: &Arc<Context>,
    event_id: &str,
    order_id: &str,
    amount: i64,
    currency: &str,
) -> (u16, Value) {
    let payload = checkout_completed(event_id, order_id, amount, currency);
    let signature = stripe_signature(STRIPE_SECRET, now_seconds(), &payload);
    send_webhook(ctx, &signature, payload).await
}

/// Plays the SQS event source mapping for the delivery queue until it is empty:
/// receive, invoke the worker's batch handler, delete only the successes.
pub async fn drain_delivery_queue(ctx: &Arc<Context>) -> usize {
    drain_delivery_queue_timed(ctx).await.0
}

/// As `drain_delivery_queue`, also returning the time spent inside the worker's
/// handler (what Lambda would bill), excluding the mapping's own SQS calls.
pub async fn drain_delivery_queue_timed(ctx: &Arc<Context>) -> (usize, Duration) {
    let mut handled = 0;
    let mut in_handler = Duration::ZERO;
    loop {
        let round = delivery_round(ctx).await;
        assert!(
            round.failed.is_empty(),
            "delivery failures: {:?}",
            round.failed
        );
        if round.received == 0 {
            return (handled, in_handler);
        }
        handled += round.received;
        in_handler += round.in_handler;
    }
}

/// What one round of the delivery queue's event source mapping did.
pub struct DeliveryRound {
    pub received: usize,
    /// The ids of the messages the worker reported failed.
    pub failed: HashSet<String>,
    /// Time spent inside the worker's handler.
    pub in_handler: Duration,
}

/// One round of the SQS event source mapping for the delivery queue: receive a batch,
/// invoke the worker's batch handler, delete the successes. A failed message is made
/// visible again at once, as if its visibility timeout had passed (a test does not wait
/// for it): the next round receives it again, one receive later.
pub async fn delivery_round(ctx: &Arc<Context>) -> DeliveryRound {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let url = ctx
        .config
        .delivery_queue_url
        .clone()
        .expect("a delivery queue");
    let received = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive");
    let messages = received.messages.unwrap_or_default();
    let mut round = DeliveryRound {
        received: messages.len(),
        failed: HashSet::new(),
        in_handler: Duration::ZERO,
    };
    if messages.is_empty() {
        return round;
    }
    let mut event = SqsEvent::default();
    event.records = messages.iter().map(event_record).collect();
    let started = Instant::now();
    let response = delivery::handle_batch(ctx, event).await;
    round.in_handler = started.elapsed();
    round.failed = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    for message in &messages {
        let receipt = message.receipt_handle.clone().unwrap_or_default();
        if round
            .failed
            .contains(message.message_id.as_deref().unwrap_or_default())
        {
            sqs.change_message_visibility()
                .queue_url(&url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .expect("make visible again");
        } else {
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(receipt)
                .send()
                .await
                .expect("delete");
        }
    }
    round
}

/// Collects a test's log output so it can be searched for secrets.
#[derive(Clone, Default)]
pub struct LogCapture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// `POST /webhooks/stripe` with this signature header.
pub async fn send_webhook(
    ctx: &Arc<Context>,
    signature: &str,
    payload: impl Into<Body>,
) -> (u16, Value) {
    webhook(
        ctx,
        request(
            "POST",
            "/webhooks/stripe",
            &[("stripe-signature", signature)],
            payload,
        ),
    )
    .await
}

/// `GET /admin/products/{sku}` as the admin.
pub async fn admin_product(ctx: &Arc<Context>, sku: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(
        ctx,
        request(
            "GET",
            &format!("/admin/products/{sku}"),
            &[("authorization", &auth)],
            Body::Empty,
        ),
    )
    .await
}

/// `POST /admin/products/{sku}/card-keys` as the admin, with this content type.
pub async fn import_keys(
    ctx: &Arc<Context>,
    sku: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    admin(
        ctx,
        request(
            "POST",
            &format!("/admin/products/{sku}/card-keys"),
            &[("authorization", &auth), ("content-type", content_type)],
            body,
        ),
    )
    .await
}

/// Deletes every key in a product's stock behind Kami's back (a broken invariant).
pub async fn steal_stock(sku: &str) {
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let table = stack().env["KAMI_TABLE"].clone();
    for shard in 0..kami_shared::store::STOCK_SHARDS {
        let partition = format!("STOCK#{}#{shard}", sku);
        let found = dynamo
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(partition.clone()),
            )
            .send()
            .await
            .expect("query");
        for item in found.items() {
            dynamo
                .delete_item()
                .table_name(&table)
                .key("pk", item["pk"].clone())
                .key("sk", item["sk"].clone())
                .send()
                .await
                .expect("delete");
        }
    }
}

/// The causes of an order view's events, in order.
pub fn causes(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["cause"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The stored dedupe record of a provider event, straight from the table.
pub async fn webhook_record(
    provider: &str,
    event_id: &str,
) -> Option<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    table_item(&format!("WEBHOOK#{provider}#{event_id}"), "WEBHOOK").await
}

/// An item straight from the table, by its keys (strongly consistent).
pub async fn table_item(
    pk: &str,
    sk: &str,
) -> Option<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
        .get_item()
        .table_name(&stack().env["KAMI_TABLE"])
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
}

/// A Stripe payment channel whose API is nowhere: payment attempts are recorded (the
/// call fails), and its signed notifications pay them, so its orders can be refunded.
pub async fn unreachable_stripe_channel(ctx: &Arc<Context>, id: &str) -> String {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = json!({"provider": "stripe", "display_name": "Card", "currencies": ["CNY"],
        "priority": 1, "min_amount": 1, "max_amount": 10_000_000, "timeout_ms": 500,
        "config": {"secret_key": format!("sk_test_{id}_secret_key_value"),
            "webhook_secrets": [webhook_secret(id)], "api_base_url": "http://127.0.0.1:9"}});
    let (status, answer) = admin(
        ctx,
        request(
            "PUT",
            &format!("/admin/payment-channels/{id}"),
            &[("authorization", &auth)],
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    id.to_owned()
}

/// The webhook secret of an `unreachable_stripe_channel`.
pub fn webhook_secret(channel_id: &str) -> String {
    format!("whsec_{channel_id}_channel_test_secret")
}

/// `POST /orders` with `body` (idempotency key `key`), its payment opened on
/// `channel_id` and paid by the channel's signed notification at the clock's time.
/// Returns the order's id.
pub async fn paid_through_channel(
    ctx: &Arc<Context>,
    clock: &kami_shared::fakes::FakeClock,
    channel_id: &str,
    key: &str,
    body: Value,
    amount: i64,
) -> String {
    let order = place_order(ctx, key, &body).await;
    let order_id = order["order_id"].as_str().expect("id").to_owned();
    let token = order["access_token"].as_str().expect("token");
    let (status, answer) = open_payment(ctx, &order_id, token, key, channel_id).await;
    assert_eq!(
        status, 502,
        "the provider is nowhere; the attempt is recorded: {answer}"
    );
    let payment_id = first_attempt_payment_id(ctx, &order_id).await;
    let event = format!("evt_{}", kami_shared::domain::time::new_id());
    let paid = json!({"id": event, "object": "event", "type": "checkout.session.completed",
        "livemode": false, "data": {"object": {"id": format!("cs_{event}"), "object": "checkout.session",
        "client_reference_id": order_id, "metadata": {"order_id": order_id, "payment_id": payment_id},
        "amount_total": amount, "currency": "cny", "payment_intent": format!("pi_{payment_id}"),
        "payment_status": "paid"}}})
    .to_string();
    let signature = stripe_signature(
        &webhook_secret(channel_id),
        clock.now().unix_seconds(),
        &paid,
    );
    let (status, answer) = webhook(
        ctx,
        request(
            "POST",
            &format!("/webhooks/stripe/{channel_id}"),
            &[("stripe-signature", &signature)],
            paid,
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    order_id
}

/// The audit record a test's direct store call writes with its change (actor `test`).
pub fn test_audit(
    action: &str,
    (subject, subject_id): (kami_shared::store::AuditSubject, &str),
) -> kami_shared::store::AuditEntry {
    kami_shared::store::AuditEntry {
        audit_id: kami_shared::domain::time::new_id(),
        at: kami_shared::domain::time::Timestamp::now().to_rfc3339(),
        actor: "test".into(),
        source_ip: None,
        action: action.into(),
        subject: subject.as_str().into(),
        subject_id: subject_id.into(),
        reason: None,
        before: None,
        after: None,
    }
}

/// A refund of `amount` the provider confirmed: recorded as the refunds API records it,
/// then settled as a provider's confirmation settles it (`refund_settled`).
pub async fn refunded(
    ctx: &Arc<Context>,
    clock: &kami_shared::fakes::FakeClock,
    order_id: &str,
    amount: i64,
) {
    use kami_shared::domain::money::Money;
    use kami_shared::domain::time::new_id;
    use kami_shared::store::{AttemptRecord, AttemptStatus, RefundRecord, RefundStatus};
    let view = stored_order(ctx, order_id).await;
    let attempt: &AttemptRecord = view
        .attempts
        .iter()
        .find(|a| a.status == AttemptStatus::Paid)
        .expect("a paid attempt");
    let now = clock.now();
    let refund = RefundRecord {
        refund_id: format!("{order_id}R{}", &new_id()[22..]),
        order_id: order_id.to_owned(),
        payment_id: attempt.payment_id.clone(),
        amount: Money {
            amount,
            currency: "CNY".into(),
        },
        status: RefundStatus::Requested,
        reason: "test".into(),
        failure: None,
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    let reserved = ctx
        .store
        .reserve_refund(
            &refund,
            &attempt.amount,
            &attempt.channel_id,
            &new_id(),
            "hash",
            &test_audit(
                "order.refund",
                (kami_shared::store::AuditSubject::Order, order_id),
            ),
            now,
        )
        .await
        .expect("reserve");
    assert!(
        matches!(reserved, kami_shared::store::RefundReserved::Reserved),
        "{reserved:?}"
    );
    kami_shared::app::refunds::refund_settled(ctx, &refund.refund_id, true)
        .await
        .expect("settled");
}
