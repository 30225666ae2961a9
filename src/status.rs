//! What a running `tally run` reports about itself, served as JSON over HTTP so `tally
//! status` can say why it is paused even when ClickHouse is the reason.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One process's view, refreshed by the run loop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// `starting`, `running`, `paused` or `stopping`.
    pub state: String,
    /// Why it is paused: the last write error.
    pub reason: Option<String>,
    pub group: String,
    pub pid: u32,
    pub partitions: Vec<PartitionStatus>,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub flushes: u64,
    /// RFC 3339 time of the last checkpoint this process committed.
    pub last_checkpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub usage_applied: i64,
    pub commands_applied: i64,
    pub usage_received: i64,
    pub commands_received: i64,
    /// The end of each side as the last fetch response gave it; absent until one did.
    #[serde(default)]
    pub usage_end: Option<i64>,
    #[serde(default)]
    pub commands_end: Option<i64>,
    /// The side whose next event is held back (`usage` or `commands`), if any ...
    #[serde(default)]
    pub waiting: Option<String>,
    /// ... the side it waits for ...
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// ... and why: that side's end is unknown, it lags, or it idles at its end.
    #[serde(default)]
    pub wait_reason: Option<String>,
}

pub type Shared = Arc<Mutex<ProcessStatus>>;

/// Serves `GET /status` (any path, really) on `listen` until the runtime stops.
pub async fn serve(listen: String, status: Shared) -> std::io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    tracing::info!(listen = %listen, "status endpoint listening");
    loop {
        let (mut socket, _) = listener.accept().await?;
        let status = status.clone();
        tokio::spawn(async move {
            // The request itself does not matter; read what is there and answer.
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let body = {
                let snapshot = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                serde_json::to_string(&snapshot).unwrap_or_default()
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// Asks the process at `listen` for its status.
pub async fn fetch(listen: &str) -> std::io::Result<ProcessStatus> {
    let mut socket = tokio::net::TcpStream::connect(listen).await?;
    socket
        .write_all(b"GET /status HTTP/1.1\r\nhost: tally\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
