//! The client side of `tally status`: asks a running `tally run` for its status over
//! plain HTTP, within a deadline.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::model::ProcessStatus;

/// How long `tally status` waits for the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the process at `listen` for its status (`GET /status`), within a deadline.
pub async fn fetch(listen: &str) -> io::Result<ProcessStatus> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_unbounded(listen))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {FETCH_TIMEOUT:?}"),
            )
        })?
}

async fn fetch_unbounded(listen: &str) -> io::Result<ProcessStatus> {
    let mut socket = TcpStream::connect(listen).await?;
    socket
        .write_all(b"GET /status HTTP/1.1\r\nhost: tally\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_default();
    if code != "200" {
        let first = head.lines().next().unwrap_or("no answer");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{first}` instead of the status"),
        ));
    }
    // The endpoint answers with a content-length (never chunked), and the connection
    // closes after it: what follows the head is the JSON.
    serde_json::from_str(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn fetch_refuses_what_is_not_a_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accepts");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let err = fetch(&addr).await.expect_err("a 404 is no status");
        assert!(err.to_string().contains("404"), "{err}");
    }
}
