//! What a running `tally run` reports about itself, over HTTP (axum) on `status.listen`:
//! `GET /status`, the JSON `tally status` reads (so it can say why the process is paused
//! even when ClickHouse is the reason); `GET /metrics`, Prometheus text; `GET /healthz`
//! (the process lives) and `GET /readyz` (partitions assigned, writes succeeding). For
//! `tally serve`, behind the shared token `status.token` when one is set (it must be unless
//! the endpoint listens on loopback): `POST /internal/check` and
//! `GET /internal/answers/{partition}/{offset}`, the owner's answers to checks and holds.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::holds::owner::{CheckError, Owner, Wait};
use crate::holds::{CheckRequest, Outcome};

/// A connection that moves no byte for this long is closed (a keep-alive connection
/// between two scrapes, a client that stopped sending).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection lives longer than this, however busy: a client dribbling a byte at a
/// time cannot hold a connection (and its task) forever. Scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Longest a handler may take; every handler only copies memory, so this is a backstop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `tally status` waits for the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one wait for a hold's decision lasts; the caller asks again after it.
pub const MAX_ANSWER_WAIT: Duration = Duration::from_secs(4);
/// The longest reason `/readyz` gives; the full error is in `/status` and the log.
const READY_REASON_MAX: usize = 200;

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

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen on {listen}: {source}")]
    Bind { listen: String, source: io::Error },
    #[error("the status endpoint stopped: {0}")]
    Serve(io::Error),
}

/// Why the process is not ready, or `Ok` when it is: partitions assigned and the last
/// flush landed (a failing flush pauses consumption and says so in `state`).
pub fn readiness(status: &ProcessStatus) -> Result<(), String> {
    match status.state.as_str() {
        "running" if status.partitions.is_empty() => Err("no partitions assigned".into()),
        "running" => Ok(()),
        "paused" => {
            let reason = status.reason.as_deref().unwrap_or("writes failing");
            // The first line, cut at a character boundary: a probe wants a hint, not a
            // ClickHouse stack trace.
            let first = reason.lines().next().unwrap_or_default();
            let short: String = first.chars().take(READY_REASON_MAX).collect();
            Err(format!("paused: {short}"))
        }
        "" => Err("starting".into()),
        other => Err(other.to_string()),
    }
}

/// What the endpoint needs of the process's metrics: its own requests counted, and every
/// metric as text for `/metrics`. `tally run`'s registry provides both.
pub trait Exposition: Clone + Send + Sync + 'static {
    /// Counts one request of the endpoint by matched route, method and status.
    fn count_request(&self, route: &str, method: &str, status: &str);
    /// The Prometheus text exposition of every metric.
    fn render(&self) -> String;
}

/// What the handlers read.
#[derive(Clone)]
pub struct Endpoint<M> {
    pub status: Shared,
    pub metrics: M,
    pub owner: Arc<Owner>,
    /// The bearer token `/internal` requests must carry (`status.token`); `None`: none
    /// needed (only allowed on loopback, see the config's checks).
    pub token: Option<Arc<str>>,
}

impl<M> Endpoint<M> {
    fn snapshot(&self) -> ProcessStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The routes of the run's endpoint.
pub fn router<M: Exposition>(endpoint: Endpoint<M>) -> Router {
    let internal = Router::new()
        .route("/internal/check", post(internal_check))
        .route(
            "/internal/answers/{partition}/{offset}",
            get(internal_answer),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            endpoint.clone(),
            require_token,
        ));
    Router::new()
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(internal)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            endpoint.clone(),
            track,
        ))
        .with_state(endpoint)
}

/// Binds `listen` (host:port).
pub async fn bind(listen: &str) -> Result<TimedListener, StatusError> {
    let inner = TcpListener::bind(listen)
        .await
        .map_err(|source| StatusError::Bind {
            listen: listen.to_string(),
            source,
        })?;
    Ok(TimedListener {
        inner,
        idle: IDLE_TIMEOUT,
        lifetime: CONNECTION_LIFETIME,
    })
}

/// Serves the endpoint on `listener` until the runtime stops.
pub async fn serve<M: Exposition>(
    listener: TimedListener,
    endpoint: Endpoint<M>,
) -> Result<(), StatusError> {
    if let Ok(local) = listener.inner.local_addr() {
        tracing::info!(listen = %local, "status endpoint listening: /status, /metrics, /healthz, /readyz");
    }
    axum::serve(listener, router(endpoint))
        .await
        .map_err(StatusError::Serve)
}

/// 401 unless the request carries the endpoint's token (when it has one), compared in
/// constant time.
async fn require_token<M>(
    State(endpoint): State<Endpoint<M>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &endpoint.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return json_answer(
                401,
                serde_json::json!({"error": "the internal routes need the shared token (status.token)"}),
            );
        }
    }
    next.run(request).await
}

/// The `method` label of request metrics: the methods HTTP defines, every other one as
/// `other`, so a client cannot create series by inventing methods.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts every request by matched route, method and status, and bounds its time.
async fn track<M: Exposition>(
    State(endpoint): State<Endpoint<M>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    };
    endpoint
        .metrics
        .count_request(&route, method, response.status().as_str());
    response
}

/// Exactly the JSON the hand-written endpoint gave before, so `tally status` of any
/// version reads it.
async fn status_json<M>(State(endpoint): State<Endpoint<M>>) -> Json<ProcessStatus> {
    Json(endpoint.snapshot())
}

async fn metrics_text<M: Exposition>(State(endpoint): State<Endpoint<M>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        endpoint.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<M>(State(endpoint): State<Endpoint<M>>) -> Response {
    match readiness(&endpoint.snapshot()) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct PartitionQuery {
    partition: i32,
}

fn json_answer(status: u16, body: serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

/// `POST /internal/check?partition=P` with a [`CheckRequest`]: the check from the
/// partition's state as applied so far; 421 when this process does not own it.
async fn internal_check<M>(
    State(endpoint): State<Endpoint<M>>,
    Query(query): Query<PartitionQuery>,
    body: Bytes,
) -> Response {
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return json_answer(400, serde_json::json!({"error": e.to_string()})),
    };
    let owner = endpoint.owner.clone();
    // The check takes the run loop's lock: off the async workers.
    let checked = tokio::task::spawn_blocking(move || owner.check(query.partition, &request)).await;
    match checked {
        Ok(Ok(answer)) => (StatusCode::OK, Json(answer)).into_response(),
        Ok(Err(e @ CheckError::NotOwner(_))) => {
            json_answer(421, serde_json::json!({"error": e.to_string()}))
        }
        Ok(Err(CheckError::Rejected(rejection))) => json_answer(
            400,
            serde_json::json!({"error": rejection.to_string(), "code": rejection.code()}),
        ),
        Ok(Err(e @ CheckError::Starting)) => {
            json_answer(503, serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => json_answer(500, serde_json::json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /internal/answers/{partition}/{offset}?wait_ms=N`: the committed decision on that
/// commands record, waiting up to N ms (at most [`MAX_ANSWER_WAIT`]). 421: not the owner;
/// 410: committed without a decision here (send the command again); 202: not yet.
async fn internal_answer<M>(
    State(endpoint): State<Endpoint<M>>,
    Path((partition, offset)): Path<(i32, i64)>,
    Query(query): Query<WaitQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms).min(MAX_ANSWER_WAIT);
    match endpoint.owner.wait(partition, offset, wait).await {
        Wait::Answered(outcome, body) => (
            outcome_status(outcome),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_vec(),
        )
            .into_response(),
        Wait::NotOwner => json_answer(
            421,
            serde_json::json!({"error": format!("partition {partition} is not owned by this process")}),
        ),
        Wait::Gone => json_answer(
            410,
            serde_json::json!({"error": "committed without a decision here; send the command again"}),
        ),
        Wait::Pending => json_answer(202, serde_json::json!({"error": "not decided yet"})),
    }
}

/// The status of each of the owner's answers, on `/internal/answers` and, passed through
/// by `tally serve`, on `/v1/holds` (its OpenAPI lists them).
pub fn outcome_status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Held => StatusCode::CREATED,
        Outcome::Refused => StatusCode::PAYMENT_REQUIRED,
        Outcome::Released => StatusCode::OK,
        Outcome::Rejected => StatusCode::CONFLICT,
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: try /status, /metrics, /healthz or /readyz\n",
    )
        .into_response()
}

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

/// A TCP listener whose connections time out (see [`TimedIo`]); axum serves on it.
pub struct TimedListener {
    inner: TcpListener,
    idle: Duration,
    lifetime: Duration,
}

impl TimedListener {
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop for TCP: logs and backs off on errors (e.g. too many
        // open files) instead of giving up.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (TimedIo::new(stream, self.idle, self.lifetime), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once it has moved no byte for `idle`, or has
/// lived for `lifetime`; hyper then closes it. The timers are polled whenever the
/// connection waits, so they wake the task that owns it.
pub struct TimedIo<S> {
    inner: S,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    end: Pin<Box<Sleep>>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, idle: Duration, lifetime: Duration) -> TimedIo<S> {
        let now = Instant::now();
        TimedIo {
            inner,
            idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            end: Box::pin(tokio::time::sleep_until(now + lifetime)),
        }
    }

    /// Called when the connection waits: an error once a timer has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let idle = self.idle_timer.as_mut().poll(cx).is_ready();
        let over = self.end.as_mut().poll(cx).is_ready();
        (idle || over).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                if idle {
                    "connection idle too long"
                } else {
                    "connection open too long"
                },
            )
        })
    }

    fn progressed(&mut self) {
        let at = Instant::now() + self.idle;
        self.idle_timer.as_mut().reset(at);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, partitions: usize, reason: Option<&str>) -> ProcessStatus {
        ProcessStatus {
            state: state.into(),
            reason: reason.map(str::to_string),
            partitions: vec![PartitionStatus::default(); partitions],
            ..ProcessStatus::default()
        }
    }

    #[test]
    fn ready_only_when_running_with_partitions() {
        assert_eq!(readiness(&status("running", 2, None)), Ok(()));
        assert_eq!(
            readiness(&status("running", 0, None)),
            Err("no partitions assigned".into())
        );
        assert_eq!(
            readiness(&status("starting", 0, None)),
            Err("starting".into())
        );
        assert_eq!(
            readiness(&status("stopping", 2, None)),
            Err("stopping".into())
        );
        let long = format!("ClickHouse: {}\nsecond line", "x".repeat(500));
        let paused = readiness(&status("paused", 2, Some(&long))).unwrap_err();
        assert!(paused.starts_with("paused: ClickHouse: xxx"), "{paused}");
        assert_eq!(paused.chars().count(), "paused: ".len() + READY_REASON_MAX);
        assert!(!paused.contains("second line"));
    }

    /// A registry with the endpoint's request counter and one metric of the process's own.
    #[derive(Clone)]
    struct Registry {
        registry: prometheus::Registry,
        requests: prometheus::IntCounterVec,
    }

    impl Registry {
        fn new() -> Registry {
            let registry = prometheus::Registry::new();
            let requests = prometheus::IntCounterVec::new(
                prometheus::Opts::new("tally_http_requests_total", "requests"),
                &["route", "method", "status"],
            )
            .expect("a valid counter");
            let own = prometheus::IntCounter::new("tally_own_total", "the process's own")
                .expect("a valid counter");
            registry
                .register(Box::new(requests.clone()))
                .expect("registers");
            registry.register(Box::new(own)).expect("registers");
            Registry { registry, requests }
        }
    }

    impl Exposition for Registry {
        fn count_request(&self, route: &str, method: &str, status: &str) {
            self.requests
                .with_label_values(&[route, method, status])
                .inc();
        }

        fn render(&self) -> String {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &self.registry.gather(),
                &mut out,
            )
            .expect("encodes");
            String::from_utf8(out).expect("UTF-8")
        }
    }

    /// Each answer has a status the public API declares for the route that gives it.
    #[test]
    fn outcomes_have_the_statuses_the_api_declares() {
        let api: serde_json::Value =
            serde_json::from_str(include_str!("serve/openapi.json")).expect("valid JSON");
        let declared = |path: &str, method: &str, outcome: Outcome| {
            let code = outcome_status(outcome).as_u16().to_string();
            api["paths"][path][method]["responses"]
                .get(&code)
                .is_some()
        };
        for outcome in [Outcome::Held, Outcome::Refused, Outcome::Rejected] {
            assert!(declared("/v1/holds", "post", outcome), "{outcome:?}");
        }
        for outcome in [Outcome::Released, Outcome::Rejected] {
            assert!(declared("/v1/holds/{id}", "delete", outcome), "{outcome:?}");
        }
        // `tally serve` reads 202 (pending), 410 (gone) and 421 (not the owner) as no answer.
        for outcome in [
            Outcome::Held,
            Outcome::Refused,
            Outcome::Released,
            Outcome::Rejected,
        ] {
            let code = outcome_status(outcome).as_u16();
            assert!(![202, 410, 421].contains(&code), "{outcome:?}: {code}");
        }
    }

    async fn start(state: &str, partitions: usize) -> (String, Endpoint<Registry>) {
        let endpoint = Endpoint {
            status: Arc::new(Mutex::new(status(state, partitions, None))),
            metrics: Registry::new(),
            owner: Owner::new(),
            token: None,
        };
        let listener = bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(serve(listener, endpoint.clone()));
        (addr, endpoint)
    }

    /// One raw HTTP/1.1 request: (status code, body).
    async fn get(addr: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("sends");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_string())
    }

    #[tokio::test]
    async fn serves_status_metrics_and_probes() {
        let (addr, endpoint) = start("running", 3).await;
        endpoint.status.lock().expect("lock").applied = 42;
        let fetched = fetch(&addr).await.expect("status fetched");
        assert_eq!(fetched.applied, 42);
        assert_eq!(fetched.partitions.len(), 3);
        assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(&addr, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(&addr, "/nothing").await.0, 404);
        endpoint.status.lock().expect("lock").state = "paused".into();
        let (code, body) = get(&addr, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: paused: writes failing\n")
        );
        let (code, text) = get(&addr, "/metrics").await;
        assert_eq!(code, 200);
        // Requests are counted by route and status, the one being answered not yet.
        assert!(
            text.contains(
                r#"tally_http_requests_total{method="GET",route="/readyz",status="503"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="unmatched",status="404"} 1"#),
            "{text}"
        );
        assert!(text.contains("tally_own_total 0"), "{text}");
    }

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

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Duration::from_secs(30), Duration::from_secs(300));
        let mut client = client;
        // Bytes keep the connection alive past the idle timeout ...
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let mut got = 0;
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Ok(got),
                    Ok(n) => got += n,
                    Err(e) => return Err((got, e.kind())),
                }
            }
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"x").await.expect("writes");
        }
        // ... and silence ends it (the outer bound turns a missing timeout into a
        // failure instead of a hang).
        let result = tokio::time::timeout(Duration::from_secs(3600), reader)
            .await
            .expect("the idle timeout fired")
            .expect("reader finishes");
        assert_eq!(result, Err((3, io::ErrorKind::TimedOut)));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_end_at_their_lifetime() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Duration::from_secs(30), Duration::from_secs(100));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let started = Instant::now();
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err((started.elapsed().as_secs(), e.kind())),
                }
            }
        });
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let result = tokio::time::timeout(Duration::from_secs(3600), reader)
            .await
            .expect("the lifetime ran out")
            .expect("reader finishes");
        writer.abort();
        assert_eq!(result, Err((100, io::ErrorKind::TimedOut)));
    }
}
