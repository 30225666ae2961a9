//! Prometheus metrics of `tally serve` (the `prometheus` crate's registry and text
//! format): HTTP requests by route, method (HTTP's own methods, others as `other`) and
//! status, their duration, ingested and rejected
//! events, ClickHouse errors, what routing checks and holds to partition owners met, and
//! where a hold's time goes.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Buckets of [`Metrics::hold_phase_seconds`]: fine around `kafka.max_idle` (200 ms by
/// default), which every answer waits out, and at the milliseconds a produce takes.
const HOLD_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.21, 0.225, 0.25, 0.3, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric `tally serve` exposes at `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by matched route, method and status code.
    pub http_requests: IntCounterVec,
    /// Request duration by matched route, in seconds.
    pub http_seconds: HistogramVec,
    /// Ingested events by topic, once the broker acknowledged them.
    pub ingested: IntCounterVec,
    /// Ingested events refused, by reason code.
    pub rejected: IntCounterVec,
    /// Reads that failed in ClickHouse.
    pub clickhouse_errors: IntCounter,
    /// Checks and holds that had to look again, by why: `not_owner` (the process asked
    /// gave the partition up), `unreachable`, `no_owner` (no claim row with an address
    /// yet), `resent` (a hold or release produced again: its record got no decision), and
    /// `timeout` (answered 504).
    pub owner_retries: IntCounterVec,
    /// Connections closed at once because `serve.max_connections` were open.
    pub connections_refused: IntCounter,
    /// A hold's or release's time by phase: `produce` (until the broker took the command),
    /// `answer` (from then until the owner's committed answer arrived).
    pub hold_phase_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "tally_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tally_http_request_duration_seconds",
                "HTTP request duration by route",
            ),
            &["route"],
        )?;
        let ingested = IntCounterVec::new(
            Opts::new(
                "tally_ingest_events_total",
                "Events taken by POST /v1/events and acknowledged by the broker, by topic",
            ),
            &["topic"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "tally_ingest_rejected_total",
                "Events refused by POST /v1/events, by reason code",
            ),
            &["reason"],
        )?;
        let clickhouse_errors = IntCounter::new(
            "tally_clickhouse_errors_total",
            "Reads of tally serve that failed in ClickHouse",
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_seconds.clone()))?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        let owner_retries = IntCounterVec::new(
            Opts::new(
                "tally_owner_retries_total",
                "Checks and holds that looked again for the partition's owner or its answer, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(clickhouse_errors.clone()))?;
        registry.register(Box::new(owner_retries.clone()))?;
        let connections_refused = IntCounter::new(
            "tally_http_connections_refused_total",
            "Connections answered 503 and closed because serve.max_connections were open",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let hold_phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tally_hold_phase_seconds",
                "Holds and releases by phase: produce (until the broker took the command), \
                 answer (from then until the owner's committed answer arrived)",
            )
            .buckets(HOLD_BUCKETS.to_vec()),
            &["phase"],
        )?;
        registry.register(Box::new(hold_phase_seconds.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_seconds,
            ingested,
            rejected,
            clickhouse_errors,
            owner_retries,
            connections_refused,
            hold_phase_seconds,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
