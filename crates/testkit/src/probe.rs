//! A minimal HTTP/1.0 GET for loopback endpoints (the controller's metrics and probes,
//! Prometheus's API): the demo and the tests need no HTTP client crate for that.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `(status code, body)` of `GET path` at `address` (`host:port`).
pub async fn get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Waits until `GET path` at `address` answers 200, while `process` (which serves it) runs;
/// fails with its log's tail if it exits or `timeout` passes first.
pub async fn wait_ready(
    process: &mut crate::envtest::process::Supervised,
    name: &str,
    address: &str,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if matches!(get(address, path).await, Ok((200, _))) {
            return Ok(());
        }
        if let Some(exit) = process.exited() {
            anyhow::bail!("{name} did not start: {exit}\n{}", process.log_tail(30));
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "{name} was not ready after {}s\n{}",
                timeout.as_secs(),
                process.log_tail(30)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Percent-encodes a query-string value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
