//! Faults a real network and a busy DynamoDB have and moto on loopback does not: a TCP
//! proxy in front of moto (every AWS call of a context built with
//! `context_via(proxy.endpoint)` goes through it) that answers chosen calls itself with
//! throttling or a 5xx, or lets them through and then spoils their answer (lost, or
//! `TransactionInProgressException`), for the first N calls that match.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What the caller gets from a call a fault matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The call reaches moto (the write takes effect), then the connection closes
    /// instead of passing the answer back, as after a network timeout.
    Lost,
    /// The call reaches moto, and `TransactionInProgressException` comes back instead
    /// of its answer, as DynamoDB answers while a transaction may still commit.
    InProgress,
    /// The call never reaches moto: this error comes back instead, as the service sends
    /// it (the `__type` of its JSON protocol, and `x-amzn-errortype`).
    Error { status: u16, code: &'static str },
    /// The transaction never reaches moto: `TransactionCanceledException` comes back with
    /// this reason for each of its items (DynamoDB throttles a transaction's items this
    /// way, `ThrottlingError`), so nothing was written.
    CancelledFor(&'static str),
}

impl Answer {
    pub const THROUGHPUT_EXCEEDED: Answer =
        Answer::error(400, "ProvisionedThroughputExceededException");
    pub const THROTTLED: Answer = Answer::error(400, "ThrottlingException");
    pub const INTERNAL_SERVER_ERROR: Answer = Answer::error(500, "InternalServerError");
    /// Any AWS service's overloaded answer (SQS's, say).
    pub const SERVICE_UNAVAILABLE: Answer = Answer::error(503, "ServiceUnavailable");

    const fn error(status: u16, code: &'static str) -> Answer {
        Answer::Error { status, code }
    }

    /// Whether the call reaches moto.
    fn lets_through(self) -> bool {
        matches!(self, Answer::Lost | Answer::InProgress)
    }

    /// The HTTP answer the caller gets instead of moto's (`None`: none, the connection
    /// drops), to `request`.
    fn instead(self, request: &Request) -> Option<Vec<u8>> {
        let (status, code, extra) = match self {
            Answer::Lost => return None,
            Answer::InProgress => (400, "TransactionInProgressException", String::new()),
            Answer::Error { status, code } => (status, code, String::new()),
            Answer::CancelledFor(reason) => {
                let items = serde_json::from_str::<serde_json::Value>(&request.body)
                    .ok()
                    .and_then(|body| body["TransactItems"].as_array().map(Vec::len))
                    .unwrap_or(1);
                let reasons = vec![serde_json::json!({"Code": reason}); items];
                (
                    400,
                    "TransactionCanceledException",
                    format!(
                        ",\"CancellationReasons\":{}",
                        serde_json::Value::from(reasons)
                    ),
                )
            }
        };
        // The SDK reads the code after the `#` of `__type`; the namespace is the
        // service's, as the real one sends it.
        let namespace = if request.target.starts_with("AmazonSQS.") {
            "com.amazonaws.sqs"
        } else {
            "com.amazonaws.dynamodb.v20120810"
        };
        let body = format!(
            "{{\"__type\":\"{namespace}#{code}\",\"message\":\"{code} (the test's fault proxy)\"{extra}}}"
        );
        let reason = match status {
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        Some(
            format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-amz-json-1.0\r\n\
                 x-amzn-errortype: {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }
}

type BodyTest = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Calls of one operation (by `X-Amz-Target`), optionally only those whose body passes a
/// test, answered with `answer` the first `times` times they match (once by default).
pub struct Fault {
    target: String,
    when: Option<BodyTest>,
    answer: Answer,
    times: usize,
    fired: AtomicUsize,
}

impl Fault {
    /// A DynamoDB operation by name (`TransactWriteItems`, `Query`, `GetItem`...).
    pub fn dynamodb(operation: &str, answer: Answer) -> Self {
        Self::on(format!("DynamoDB_20120810.{operation}"), answer)
    }

    /// An SQS operation by name (`SendMessage`...).
    pub fn sqs(operation: &str, answer: Answer) -> Self {
        Self::on(format!("AmazonSQS.{operation}"), answer)
    }

    fn on(target: String, answer: Answer) -> Self {
        Fault {
            target,
            when: None,
            answer,
            times: 1,
            fired: AtomicUsize::new(0),
        }
    }

    /// Only calls whose JSON body passes `test` (names an item's key, say).
    pub fn when(mut self, test: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(test));
        self
    }

    /// The first `times` matching calls, not only the first.
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    /// This fault's answer to `request` if it matches and has not fired `times` times.
    fn fire(&self, request: &Request) -> Option<Answer> {
        let matches = request.target == self.target
            && self.when.as_ref().is_none_or(|test| test(&request.body));
        (matches
            && self
                .fired
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.times).then_some(n + 1)
                })
                .is_ok())
        .then_some(self.answer)
    }
}

/// The faults of a proxy, in the order they were injected: a call meets the first that
/// matches it and has not fired its `times` yet.
type Faults = Arc<Mutex<Vec<Fault>>>;

/// A TCP proxy in front of moto that answers the calls its faults match as they say,
/// and passes every other call and answer through unchanged.
pub struct FaultProxy {
    pub endpoint: String,
    faults: Faults,
}

impl FaultProxy {
    pub async fn start(upstream: &str, faults: Vec<Fault>) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let faults: Faults = Arc::new(Mutex::new(faults));
        let shared = faults.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let faults = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, &faults).await;
                    }
                });
            }
        });
        FaultProxy { endpoint, faults }
    }

    /// Adds a fault from now on (one that names an item made after the proxy started).
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().expect("the proxy's faults").push(fault);
    }

    /// How many times each fault fired, in the order they were given or injected.
    pub fn fired(&self) -> Vec<usize> {
        self.faults
            .lock()
            .expect("the proxy's faults")
            .iter()
            .map(|fault| fault.fired.load(Ordering::SeqCst))
            .collect()
    }
}

/// The answer the first fault that matches `request` gives it, if any fires.
fn fire(faults: &Faults, request: &Request) -> Option<Answer> {
    let faults = faults.lock().ok()?;
    faults.iter().find_map(|fault| fault.fire(request))
}

/// One HTTP/1.1 request as the SDK sends it: a head, then `Content-Length` bytes of body
/// (the SDK's JSON calls always carry one).
struct Request {
    bytes: Vec<u8>,
    target: String,
    body: String,
}

/// The next whole request from the client, or `None` once it closes the connection.
async fn read_request(client: &mut OwnedReadHalf, pending: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    while pending.len() < head_end + length {
        let n = client.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        pending.extend_from_slice(&chunk[..n]);
    }
    let bytes: Vec<u8> = pending.drain(..head_end + length).collect();
    Some(Request {
        target: header("x-amz-target").unwrap_or_default(),
        body: String::from_utf8_lossy(&bytes[head_end..]).into_owned(),
        bytes,
    })
}

/// What the caller gets instead of a spoiled answer (`None`: nothing).
struct Spoiled(Option<Vec<u8>>);

async fn relay(client: TcpStream, server: TcpStream, faults: &Faults) {
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let client_write = tokio::sync::Mutex::new(client_write);
    // Set when the request in flight is to have its answer spoiled. HTTP/1.1 without
    // pipelining: a client sends a request only after the last answer, so the next
    // bytes from moto are this request's answer.
    let spoil: Mutex<Option<Spoiled>> = Mutex::new(None);
    let requests = async {
        let mut pending = Vec::new();
        while let Some(request) = read_request(&mut client_read, &mut pending).await {
            match fire(faults, &request) {
                Some(answer) if answer.lets_through() => {
                    if let Ok(mut spoil) = spoil.lock() {
                        *spoil = Some(Spoiled(answer.instead(&request)));
                    }
                }
                Some(answer) => {
                    answer_instead(&client_write, answer.instead(&request)).await;
                    return;
                }
                None => {}
            }
            if server_write.write_all(&request.bytes).await.is_err() {
                return;
            }
        }
    };
    let answers = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                return;
            }
            let spoiled = spoil.lock().ok().and_then(|mut spoil| spoil.take());
            if let Some(Spoiled(instead)) = spoiled {
                answer_instead(&client_write, instead).await;
                return;
            }
            if client_write
                .lock()
                .await
                .write_all(&buf[..n])
                .await
                .is_err()
            {
                return;
            }
        }
    };
    // Either side done ends both: the connection closes, and the SDK opens another.
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}

/// Sends `answer` (if any) to the client and closes the connection.
async fn answer_instead(client: &tokio::sync::Mutex<OwnedWriteHalf>, answer: Option<Vec<u8>>) {
    let mut client = client.lock().await;
    if let Some(answer) = answer {
        let _ = client.write_all(&answer).await;
    }
    let _ = client.shutdown().await;
}
