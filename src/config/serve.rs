//! The `[serve]` section of the config: where `tally serve` listens, its API keys, the
//! limits of its ingest and pages, its connections' timeouts and the keys' rate limit.
//! Checked without the network.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::KeySet;
use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address `tally serve` listens on (`host:port`).
    pub listen: String,
    /// Absolute path of a file of API keys, one `SCOPE=TOKEN` a line (`#` comments), read
    /// at start-up; empty: none. SCOPE is `admin`, `ingest`, `account:ID` or `service:ID`.
    pub keys_file: PathBuf,
    /// API keys as `SCOPE=TOKEN` separated by commas. Only from the environment
    /// (TALLY_SERVE__KEYS), never written in the file; never logged.
    pub keys: Secret,
    /// Largest request body `POST /v1/events` takes, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch of `POST /v1/events`.
    pub max_batch: usize,
    /// Rows of the ledger, and accounts of `GET /v1/accounts`, per page: the default and
    /// the largest `limit`.
    pub page_size: u64,
    /// Longest wait for the broker to acknowledge ingested events.
    #[serde(with = "humantime_serde")]
    pub ingest_timeout: Duration,
    /// Longest a `POST /v1/holds` or `DELETE /v1/holds/{id}` waits for the partition
    /// owner's committed answer before answering 504 (retrying with the same id is safe).
    #[serde(with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// Absolute path of the certificate chain (PEM) `tally serve` presents: set with
    /// `tls_key` to serve HTTPS itself, where no proxy terminates TLS. Empty: plain HTTP.
    pub tls_cert: PathBuf,
    /// Absolute path of the private key (PEM) of `tls_cert`. Empty: plain HTTP.
    pub tls_key: PathBuf,
    /// Requests a second each key may make, on average; over it: 429 with `Retry-After`.
    pub rate_per_second: u32,
    /// Requests a key may make at once above the average (the bucket's size).
    pub rate_burst: u32,
    /// Most connections open at once; one over it is answered 503 and closed, so a flood
    /// of slow clients cannot take every socket and task.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that moves no byte for this long is closed (idle keep-alive, a
    /// client that stopped sending or reading).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest one request may take, body included; then 503. Above the ingest and hold
    /// timeouts, which answer first.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".into(),
            keys_file: PathBuf::new(),
            keys: Secret::default(),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            page_size: 1000,
            ingest_timeout: Duration::from_secs(30),
            hold_timeout: Duration::from_secs(10),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            rate_per_second: 100,
            rate_burst: 200,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl ServeConfig {
    /// Checks every value; `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "serve.listen",
                format!("`{}` is not host:port", self.listen),
            ));
        }
        if !self.keys_file.as_os_str().is_empty() {
            if !self.keys_file.is_absolute() {
                return Err((
                    "serve.keys_file",
                    format!("`{}` must be an absolute path", self.keys_file.display()),
                ));
            }
            if !self.keys_file.is_file() {
                return Err((
                    "serve.keys_file",
                    format!("`{}` is not a readable file", self.keys_file.display()),
                ));
            }
        }
        KeySet::parse(self.keys.expose(), ',').map_err(|e| ("serve.keys", e.to_string()))?;
        if self.max_body_bytes < 1024 || self.max_body_bytes > 64 * 1024 * 1024 {
            return Err((
                "serve.max_body_bytes",
                "must be between 1024 and 67108864".into(),
            ));
        }
        if self.max_batch == 0 || self.max_batch > 100_000 {
            return Err(("serve.max_batch", "must be between 1 and 100000".into()));
        }
        if self.page_size == 0 || self.page_size > 100_000 {
            return Err(("serve.page_size", "must be between 1 and 100000".into()));
        }
        if self.ingest_timeout.is_zero() {
            return Err(("serve.ingest_timeout", "must be more than zero".into()));
        }
        if self.hold_timeout < Duration::from_millis(100)
            || self.hold_timeout > Duration::from_secs(300)
        {
            return Err((
                "serve.hold_timeout",
                "must be between 100ms and 5min".into(),
            ));
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err((
                "serve.tls_key",
                "serve.tls_cert and serve.tls_key go together (both empty: plain HTTP)".into(),
            ));
        }
        for (key, path) in [
            ("serve.tls_cert", &self.tls_cert),
            ("serve.tls_key", &self.tls_key),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            if !path.is_absolute() {
                return Err((
                    key,
                    format!("`{}` must be an absolute path", path.display()),
                ));
            }
            if let Err(e) = std::fs::File::open(path) {
                return Err((key, format!("cannot read `{}`: {e}", path.display())));
            }
        }
        if self.tls() {
            crate::tls::load_certs(&self.tls_cert).map_err(|p| ("serve.tls_cert", p))?;
            crate::tls::load_key(&self.tls_key).map_err(|p| ("serve.tls_key", p))?;
        }
        if self.rate_per_second == 0 || self.rate_burst == 0 {
            return Err((
                "serve.rate_per_second",
                "rate_per_second and rate_burst must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err((
                "serve.max_connections",
                "must be between 1 and 1000000".into(),
            ));
        }
        for (key, value) in [
            ("serve.header_timeout", self.header_timeout),
            ("serve.idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err((key, "must be at least 100ms".into()));
            }
        }
        if self.request_timeout <= self.ingest_timeout.max(self.hold_timeout) {
            return Err((
                "serve.request_timeout",
                "must be longer than serve.ingest_timeout and serve.hold_timeout".into(),
            ));
        }
        Ok(())
    }

    /// Whether `tally serve` terminates TLS itself.
    pub fn tls(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty()
    }
}
