//! Faults a real network has and moto on loopback does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRANSACT_WRITE_TARGET: &[u8] = b"DynamoDB_20120810.TransactWriteItems";

/// What the caller gets instead of the first `TransactWriteItems` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Instead {
    /// Nothing: the connection closes.
    Nothing,
    /// `TransactionInProgressException`, as DynamoDB answers a call whose transaction
    /// is still running.
    InProgress,
}

const IN_PROGRESS_ANSWER: &str = "{\"__type\":\"com.amazonaws.dynamodb.v20120810#TransactionInProgressException\",\"message\":\"Transaction is ongoing for the idempotency token\"}";

/// A TCP proxy in front of moto that lets the first `TransactWriteItems` through (so it
/// commits) and then closes the connection instead of passing its answer back: the
/// caller sees a lost answer to a committed transaction, as after a network timeout.
pub struct AnswerLosingProxy {
    pub endpoint: String,
    lost: Arc<AtomicUsize>,
}

impl AnswerLosingProxy {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, Instead::Nothing, 1).await
    }

    /// As `start`, but every `TransactWriteItems` reaches moto, and the first `times`
    /// answers are replaced by `TransactionInProgressException` (then the connection
    /// closes). The SDK retries that error itself, with the call's token, up to its
    /// attempt limit (3): with `times` at that limit, the error reaches the caller.
    pub async fn start_in_progress(upstream: &str, times: usize) -> Self {
        Self::start_with(upstream, Instead::InProgress, times).await
    }

    async fn start_with(upstream: &str, instead: Instead, times: usize) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let lost = Arc::new(AtomicUsize::new(0));
        let lost_by_proxy = lost.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let lost = lost_by_proxy.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, lost, instead, times).await;
                    }
                });
            }
        });
        AnswerLosingProxy { endpoint, lost }
    }

    /// How many answers were dropped or replaced.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    lost: Arc<AtomicUsize>,
    instead: Instead,
    times: usize,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let transaction_sent = Arc::new(AtomicBool::new(false));
    let seen_by_upstream = transaction_sent.clone();
    let to_server = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if buf[..n]
                .windows(TRANSACT_WRITE_TARGET.len())
                .any(|w| w == TRANSACT_WRITE_TARGET)
            {
                seen_by_upstream.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = server_read.read(&mut buf).await {
        if n == 0 {
            break;
        }
        // HTTP/1.1 without pipelining: an answer only follows its whole request, so the
        // flag is set before the transaction's answer arrives.
        if transaction_sent.load(Ordering::SeqCst)
            && lost
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < times).then_some(n + 1)
                })
                .is_ok()
        {
            if instead == Instead::InProgress {
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\n\
                     x-amzn-errortype: TransactionInProgressException\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{IN_PROGRESS_ANSWER}",
                    IN_PROGRESS_ANSWER.len()
                );
                let _ = client_write.write_all(answer.as_bytes()).await;
                let _ = client_write.shutdown().await;
            }
            break; // drop the answer and both connections
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    to_server.abort();
}
