//! The HTTP endpoint of `tally run` (axum) on `status.listen`: `GET /status`, the JSON
//! `tally status` reads (so it can say why the process is paused even when ClickHouse is
//! the reason); `GET /metrics`, Prometheus text; `GET /healthz` (the process lives) and
//! `GET /readyz` (partitions assigned, writes succeeding); and the owner's internal
//! routes (`internal`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::internal::{self, Internal};
use super::model::{readiness, ProcessStatus, Shared};
use super::timed::TimedListener;
use crate::holds::owner::Owner;

/// A connection that moves no byte for this long is closed (a keep-alive connection
/// between two scrapes, a client that stopped sending).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection lives longer than this, however busy: a client dribbling a byte at a
/// time cannot hold a connection (and its task) forever. Scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Longest a handler may take; every handler only copies memory, so this is a backstop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen on {listen}: {source}")]
    Bind { listen: String, source: io::Error },
    #[error("the status endpoint stopped: {0}")]
    Serve(io::Error),
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
    /// The token of the internal routes ([`Internal`]).
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
    Router::new()
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(internal::routes(Internal {
            owner: endpoint.owner.clone(),
            token: endpoint.token.clone(),
        }))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            endpoint.clone(),
            track,
        ))
        .with_state(endpoint)
}

/// Binds `listen` (host:port).
pub async fn bind(listen: &str) -> Result<TimedListener, StatusError> {
    TimedListener::bind(listen, IDLE_TIMEOUT, CONNECTION_LIFETIME)
        .await
        .map_err(|source| StatusError::Bind {
            listen: listen.to_string(),
            source,
        })
}

/// Serves the endpoint on `listener` until the runtime stops.
pub async fn serve<M: Exposition>(
    listener: TimedListener,
    endpoint: Endpoint<M>,
) -> Result<(), StatusError> {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(listen = %local, "status endpoint listening: /status, /metrics, /healthz, /readyz");
    }
    axum::serve(listener, router(endpoint))
        .await
        .map_err(StatusError::Serve)
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

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: try /status, /metrics, /healthz or /readyz\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::status::client::fetch;
    use crate::status::model::{status, ProcessState};

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

    async fn start(state: ProcessState, partitions: usize) -> (String, Endpoint<Registry>) {
        let endpoint = Endpoint {
            status: Arc::new(Mutex::new(status(state, partitions))),
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
        let (addr, endpoint) = start(ProcessState::Running, 3).await;
        endpoint.status.lock().expect("lock").applied = 42;
        let fetched = fetch(&addr).await.expect("status fetched");
        assert_eq!(fetched.applied, 42);
        assert_eq!(fetched.partitions.len(), 3);
        assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(&addr, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(&addr, "/nothing").await.0, 404);
        // The owner's routes are the endpoint's too (no partition owned here: 421).
        assert_eq!(get(&addr, "/internal/answers/0/7?wait_ms=0").await.0, 421);
        endpoint.status.lock().expect("lock").state = ProcessState::Paused {
            reason: "writes failing".into(),
        };
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
        assert!(
            text.contains(r#"route="/internal/answers/{partition}/{offset}",status="421"} 1"#),
            "{text}"
        );
        assert!(text.contains("tally_own_total 0"), "{text}");
    }
}
