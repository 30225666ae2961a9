//! `tally serve`: a stateless HTTP server. It reads ClickHouse for the JSON API under
//! `/v1` and the dashboard at `/`, and produces ingested events to Kafka. Any number of
//! copies can run behind a load balancer: nothing is kept between requests.

pub mod api;
pub mod conn;
pub mod dashboard;
pub mod holds;
pub mod ingest;
pub mod metrics;
pub mod rate;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use tally_core::Rules;

use crate::config::keys::KeySet;
use crate::config::Config;
use crate::kafka;
use crate::store;
use metrics::Metrics;
use rate::RateLimits;

/// What every request handler reads.
pub struct AppState {
    pub config: Config,
    pub rules: Rules,
    pub client: clickhouse::Client,
    pub producer: FutureProducer,
    /// Produces holds and releases, each at once: their callers wait for the answer.
    pub commands_producer: FutureProducer,
    pub keys: KeySet,
    /// One rate limit per key, by its index in `keys`.
    pub limits: RateLimits,
    pub metrics: Metrics,
    /// Where checks and holds go: each partition's owner.
    pub owners: holds::Owners,
}

pub type Shared = Arc<AppState>;

/// The keys from TALLY_SERVE__KEYS and `serve.keys_file`.
pub fn load_keys(config: &Config) -> anyhow::Result<KeySet> {
    let s = &config.serve;
    let mut keys = KeySet::parse(s.keys.expose(), ',').context("TALLY_SERVE__KEYS")?;
    if !s.keys_file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(&s.keys_file)
            .with_context(|| format!("cannot read serve.keys_file {}", s.keys_file.display()))?;
        keys.extend(
            KeySet::parse(&text, '\n')
                .with_context(|| format!("serve.keys_file {}", s.keys_file.display()))?,
        );
    }
    if keys.is_empty() {
        anyhow::bail!("no API keys: set TALLY_SERVE__KEYS=\"admin=TOKEN,...\" or serve.keys_file");
    }
    Ok(keys)
}

/// The application: API, ingest, dashboard, health and metrics.
pub fn router(state: Shared) -> Router {
    let max_body = state.config.serve.max_body_bytes;
    Router::new()
        .route("/v1/whoami", get(api::whoami))
        .route("/v1/accounts", get(api::accounts))
        .route("/v1/accounts/{account}/balance", get(api::balance))
        .route("/v1/accounts/{account}/ledger", get(api::ledger))
        .route("/v1/accounts/{account}/history", get(api::history))
        .route("/v1/accounts/{account}/alerts", get(api::alerts))
        .route("/v1/reports/daily", get(api::daily))
        .route("/v1/reports/monthly", get(api::monthly))
        .route("/v1/matrix", get(api::matrix))
        .route("/v1/plans", get(api::plans))
        .route("/v1/openapi.json", get(api::openapi))
        .route("/v1/check", post(holds::check))
        .route("/v1/holds", post(holds::hold))
        .route("/v1/holds/{id}", axum::routing::delete(holds::release))
        .route(
            "/v1/events",
            post(ingest::post_events).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Builds the state and serves on `serve.listen` until `shutdown` completes.
pub async fn run(
    config: Config,
    rules: Rules,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keys = load_keys(&config)?;
    // Settings no retry can cure (certificates, credentials) stop start-up here, named;
    // a service that is merely down is waited for by the requests, as before.
    let tls = if config.serve.tls() {
        Some(tls::server_config(&config.serve)?)
    } else {
        None
    };
    kafka::check_access_async(&config.kafka).await?;
    let client = store::client(&config.clickhouse);
    match store::check(&client).await {
        Err(e) if e.is_tls() => {
            return Err(e).with_context(|| format!("ClickHouse at {}", config.clickhouse.url))
        }
        Err(e) => tracing::warn!(error = %e, "ClickHouse is not ready yet; /readyz says so"),
        Ok(()) => {}
    }
    let producer = kafka::producer(&config.kafka).context("cannot create the Kafka producer")?;
    let commands_producer =
        kafka::producer_at_once(&config.kafka).context("cannot create the Kafka producer")?;
    let state = Arc::new(AppState {
        client,
        producer,
        commands_producer,
        limits: RateLimits::new(
            keys.len(),
            config.serve.rate_per_second,
            config.serve.rate_burst,
        ),
        keys,
        metrics: Metrics::new().context("cannot register metrics")?,
        owners: holds::Owners::new(Some(config.status.token.expose()).filter(|t| !t.is_empty())),
        rules,
        config,
    });
    let listen = state.config.serve.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr().context("no local address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %local, "tally serve listening; dashboard at {scheme}://{local}/");
    let s = &state.config.serve;
    let bounds = conn::Bounds {
        max_connections: s.max_connections,
        header_timeout: s.header_timeout,
        idle_timeout: s.idle_timeout,
        drain_timeout: s.request_timeout,
    };
    let refused = state.metrics.connections_refused.clone();
    conn::serve(
        listener,
        tls.map(tokio_rustls::TlsAcceptor::from),
        router(state),
        bounds,
        move || refused.inc(),
        shutdown,
    )
    .await;
    Ok(())
}

/// Counts every request by matched route, method and status, times it, and bounds its
/// time (`serve.request_timeout`, body included: a client dribbling a body ends here).
/// Every label takes a bounded set of values: routes are the router's, methods those HTTP
/// defines (others are `other`), statuses three digits.
async fn track(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = crate::status::server::method_label(request.method());
    let started = Instant::now();
    let limit = state.config.serve.request_timeout;
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => api::ApiError::Unavailable(format!("the request took longer than {limit:?}"))
            .into_response(),
    };
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[&route, method, response.status().as_str()])
        .inc();
    m.http_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when ClickHouse answers with the schema and the broker gives metadata.
async fn readyz(State(state): State<Shared>) -> Response {
    // Probes are unauthenticated: the errors go to the log, the answer only says which.
    let clickhouse = match store::check(&state.client).await {
        Ok(()) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: ClickHouse is not ready");
            "unavailable".to_string()
        }
    };
    let producer = state.producer.clone();
    let topic = state.config.kafka.usage_topic.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(3))
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "readyz: the broker is not ready");
                "unavailable".to_string()
            })
    })
    .await
    .unwrap_or_else(|_| "unavailable".to_string());
    let ready = clickhouse == "ok" && kafka == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "clickhouse": clickhouse, "kafka": kafka})),
    )
        .into_response()
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    api::ApiError::NotFound.into_response()
}
