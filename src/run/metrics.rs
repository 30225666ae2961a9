//! Prometheus metrics of `tally run` (the `prometheus` crate's registry and text format):
//! events applied, rejected and duplicated, consumer lag, flush phases and sizes, the
//! delay from broker timestamp to applied, alert outcomes, ClickHouse errors and the
//! requests of its own HTTP endpoint.
//!
//! The run loop counts where it already knows the outcome. Label values are resolved
//! once per partition ([`PartitionMetrics`]), so the hot path is a relaxed atomic add per
//! event and a non-atomic histogram observation flushed once per batch.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::merge::Which;
use crate::notify::AlertCounters;

/// Flush phases, in the order a flush goes through them (`total` spans them all).
pub mod phase {
    /// Taking the partitions' outputs into one batch (CPU only).
    pub const BUILD: &str = "build";
    /// Turning the drafted rows into ClickHouse rows and encoding the states, by the
    /// writing task (the first attempt only).
    pub const ENCODE: &str = "encode";
    /// Producing the rejected events to the dead-letter topic, and misplaced records to
    /// their account's partition.
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Ledger, lots, balances and daily rollups.
    pub const WRITE_OUTPUTS: &str = "write_outputs";
    /// Recording the flush's alerts `pending`.
    pub const ALERTS: &str = "alerts";
    /// The checkpoint INSERT that commits the flush.
    pub const CHECKPOINT: &str = "checkpoint";
    /// From the start of the attempt that landed (with the build, when the batch was
    /// built by that attempt) to its commit.
    pub const TOTAL: &str = "total";
    /// From the first decision on a hold or release the flush carries to the flush's
    /// start: how long a caller's answer waited for the flush before it.
    pub const DECISION_WAIT: &str = "decision_wait";
    pub const ALL: [&str; 8] = [
        BUILD,
        ENCODE,
        DEAD_LETTERS,
        WRITE_OUTPUTS,
        ALERTS,
        CHECKPOINT,
        TOTAL,
        DECISION_WAIT,
    ];
}

/// Why a side's fetch was paused (`tally_fetch_pauses_total{reason}`).
pub mod pause {
    pub const FULL: &str = "full";
    pub const FLUSH_FAILED: &str = "flush_failed";
}

/// Seconds from a record's broker timestamp to its application: sub-second when the
/// consumer keeps up, up to an hour for a backlog (older is +Inf).
const DELAY_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Seconds per flush phase: a local ClickHouse answers in milliseconds, a struggling one
/// in up to `clickhouse.timeout` (30 s by default).
const FLUSH_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Events per flush, up to `pipeline.max_batch_events` (50,000 by default) and beyond.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0,
];

/// Every metric `tally run` exposes at `/metrics`. Cloning shares the metrics.
#[derive(Clone)]
pub struct RunMetrics {
    registry: Registry,
    /// Events applied (not duplicates, rejections or ticks), by topic.
    pub applied: IntCounterVec,
    /// Events sent to the dead-letter topic, by the core's reason code.
    pub rejected: IntCounterVec,
    /// Events charged before (same account, source and id within the dedup window).
    pub duplicates: IntCounter,
    /// Records found in a partition that does not own their account, forwarded to the
    /// one that does, by topic.
    pub forwarded: IntCounterVec,
    /// End offset minus next offset to apply, by topic and partition.
    pub lag: IntGaugeVec,
    /// Seconds per flush phase, observed as each phase completes.
    pub flush_seconds: HistogramVec,
    /// Events (every outcome) per flush that landed.
    pub flush_events: Histogram,
    /// Flush attempts that failed, by the phase that failed.
    pub flush_failures: IntCounterVec,
    /// Seconds from broker timestamp to applied, every record.
    pub apply_delay: Histogram,
    /// Seconds from a commands record's receipt to its application: the merge's wait.
    pub command_wait: Histogram,
    /// Low-credit alerts by outcome: sent, suppressed (held for a digest), failed.
    pub alerts: IntCounterVec,
    /// ClickHouse calls of the run loop that failed (flush phases, state loads,
    /// checkpoint pruning).
    pub clickhouse_errors: IntCounter,
    /// Requests of the run's own endpoint, by matched route, method and status.
    pub http_requests: IntCounterVec,
    /// Ids in the dedup windows of this process's partitions: `exact` (keys not sealed
    /// yet) and `sealed` (fingerprints, 6 bytes each).
    pub dedup_ids: IntGaugeVec,
    /// Probable duplicates (sealed fingerprints) confirmed against ClickHouse, by what
    /// the exact rows said: `duplicate` or `new`.
    pub dedup_confirmed: IntCounterVec,
    /// Records received and not applied, over every side of every partition, after the
    /// last batch of polls (when the queues are fullest).
    pub queued_records: IntGauge,
    /// The same in bytes (see `merge::Pending::footprint`).
    pub queued_bytes: IntGauge,
    /// The most records one side's queue has held since the process started: at most
    /// `pipeline.max_queued_records`.
    pub queue_peak_records: IntGauge,
    /// Sides whose fetch was paused, by side and why: `full` (the queue reached its bound)
    /// or `flush_failed` (every side, while flushes fail).
    pub fetch_pauses: IntCounterVec,
}

impl RunMetrics {
    pub fn new() -> Result<RunMetrics, prometheus::Error> {
        let registry = Registry::new();
        let applied = IntCounterVec::new(
            Opts::new(
                "tally_events_applied_total",
                "Events applied by this process (not duplicates, rejections or ticks), by topic",
            ),
            &["topic"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "tally_events_rejected_total",
                "Events sent to the dead-letter topic, by reason code",
            ),
            &["reason"],
        )?;
        let duplicates = IntCounter::new(
            "tally_events_duplicate_total",
            "Events skipped as duplicates within the dedup window",
        )?;
        let forwarded = IntCounterVec::new(
            Opts::new(
                "tally_events_forwarded_total",
                "Records found in a partition that does not own their account (another partitioner), forwarded to their account's partition, by topic",
            ),
            &["topic"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "tally_consumer_lag",
                "Records between the next offset to apply and the partition's end, as the last fetch response gave it",
            ),
            &["topic", "partition"],
        )?;
        let flush_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tally_flush_duration_seconds",
                "Duration of each flush phase as it completed (total: the attempt that committed)",
            )
            .buckets(FLUSH_BUCKETS.to_vec()),
            &["phase"],
        )?;
        let flush_events = Histogram::with_opts(
            HistogramOpts::new(
                "tally_flush_batch_events",
                "Records (every outcome) committed per flush",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )?;
        let flush_failures = IntCounterVec::new(
            Opts::new(
                "tally_flush_failures_total",
                "Flush attempts that failed (and are retried), by phase",
            ),
            &["phase"],
        )?;
        let apply_delay = Histogram::with_opts(
            HistogramOpts::new(
                "tally_apply_delay_seconds",
                "Seconds from a record's broker timestamp to its application",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
        )?;
        let command_wait = Histogram::with_opts(
            HistogramOpts::new(
                "tally_command_wait_seconds",
                "Seconds from a commands record's receipt by tally run to its application (the merge's wait for the usage side)",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
        )?;
        let alerts = IntCounterVec::new(
            Opts::new(
                "tally_alerts_total",
                "Low-credit alerts by outcome: sent, suppressed (held for a digest), failed",
            ),
            &["outcome"],
        )?;
        let clickhouse_errors = IntCounter::new(
            "tally_clickhouse_errors_total",
            "ClickHouse calls of tally run that failed",
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "tally_http_requests_total",
                "Requests to the status endpoint by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let dedup_ids = IntGaugeVec::new(
            Opts::new(
                "tally_dedup_ids",
                "Ids in the dedup windows of this process's partitions: exact (not sealed yet) and sealed (6-byte fingerprints)",
            ),
            &["state"],
        )?;
        let dedup_confirmed = IntCounterVec::new(
            Opts::new(
                "tally_dedup_confirmed_total",
                "Probable duplicates (sealed fingerprints) confirmed against the exact rows in ClickHouse, by what they were",
            ),
            &["outcome"],
        )?;
        let queued_records = IntGauge::new(
            "tally_queued_records",
            "Records received and not yet applied, all partitions and sides, after the last batch of polls",
        )?;
        let queued_bytes = IntGauge::new(
            "tally_queued_bytes",
            "Bytes of the records received and not yet applied, all partitions and sides",
        )?;
        let queue_peak_records = IntGauge::new(
            "tally_queue_peak_records",
            "The most records one partition side has held received and not applied since start (bounded by pipeline.max_queued_records)",
        )?;
        let fetch_pauses = IntCounterVec::new(
            Opts::new(
                "tally_fetch_pauses_total",
                "Partition sides whose fetch was paused, by side (usage, commands) and reason: full (its queue reached its bound) or flush_failed",
            ),
            &["side", "reason"],
        )?;
        let collectors: [Box<dyn Collector>; 19] = [
            Box::new(applied.clone()),
            Box::new(rejected.clone()),
            Box::new(duplicates.clone()),
            Box::new(forwarded.clone()),
            Box::new(lag.clone()),
            Box::new(flush_seconds.clone()),
            Box::new(flush_events.clone()),
            Box::new(flush_failures.clone()),
            Box::new(apply_delay.clone()),
            Box::new(command_wait.clone()),
            Box::new(alerts.clone()),
            Box::new(clickhouse_errors.clone()),
            Box::new(http_requests.clone()),
            Box::new(dedup_ids.clone()),
            Box::new(dedup_confirmed.clone()),
            Box::new(queued_records.clone()),
            Box::new(queued_bytes.clone()),
            Box::new(queue_peak_records.clone()),
            Box::new(fetch_pauses.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        // Known label values from the start, so a dashboard sees zeros rather than
        // nothing before the first flush or alert.
        for p in phase::ALL {
            flush_seconds.with_label_values(&[p]);
        }
        for outcome in ["sent", "suppressed", "failed"] {
            alerts.with_label_values(&[outcome]);
        }
        for state in ["exact", "sealed"] {
            dedup_ids.with_label_values(&[state]);
        }
        for outcome in ["duplicate", "new"] {
            dedup_confirmed.with_label_values(&[outcome]);
        }
        for side in [Which::Usage, Which::Commands] {
            for reason in [pause::FULL, pause::FLUSH_FAILED] {
                fetch_pauses.with_label_values(&[side.as_str(), reason]);
            }
        }
        Ok(RunMetrics {
            registry,
            applied,
            rejected,
            duplicates,
            forwarded,
            lag,
            flush_seconds,
            flush_events,
            flush_failures,
            apply_delay,
            command_wait,
            alerts,
            clickhouse_errors,
            http_requests,
            dedup_ids,
            dedup_confirmed,
            queued_records,
            queued_bytes,
            queue_peak_records,
            fetch_pauses,
        })
    }

    /// The handles one partition counts with, labels resolved.
    pub fn partition(&self, topics: (&str, &str), partition: i32) -> PartitionMetrics {
        PartitionMetrics {
            partition,
            topics: (topics.0.to_string(), topics.1.to_string()),
            applied: (
                self.applied.with_label_values(&[topics.0]),
                self.applied.with_label_values(&[topics.1]),
            ),
            duplicates: self.duplicates.clone(),
            forwarded: (
                self.forwarded.with_label_values(&[topics.0]),
                self.forwarded.with_label_values(&[topics.1]),
            ),
            rejected: self.rejected.clone(),
            apply_delay: self.apply_delay.local(),
            command_wait: self.command_wait.local(),
            lag: (None, None),
            lag_vec: self.lag.clone(),
        }
    }

    /// The notifier's counters, as `tally_alerts_total{outcome}`.
    pub fn alert_counters(&self) -> AlertCounters {
        AlertCounters {
            sent: self.alerts.with_label_values(&["sent"]),
            suppressed: self.alerts.with_label_values(&["suppressed"]),
            failed: self.alerts.with_label_values(&["failed"]),
        }
    }

    /// Counts `sides` paused for `reason` (see [`pause`]).
    pub fn paused(&self, sides: &[(Which, i32)], reason: &str) {
        for (which, _) in sides {
            self.fetch_pauses
                .with_label_values(&[which.as_str(), reason])
                .inc();
        }
    }

    /// Observes one phase of a flush that landed.
    pub fn flush_phase(&self, phase: &str, seconds: f64) {
        self.flush_seconds
            .with_label_values(&[phase])
            .observe(seconds);
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

impl crate::status::Exposition for RunMetrics {
    fn count_request(&self, route: &str, method: &str, status: &str) {
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
    }

    fn render(&self) -> String {
        RunMetrics::render(self)
    }
}

/// One partition's handles: counters shared with the registry, the delay histogram
/// buffered locally (flushed by [`PartitionMetrics::publish`]), lag gauges created once
/// the partition's end is known, so an unknown end never reads as "no lag".
pub struct PartitionMetrics {
    partition: i32,
    topics: (String, String),
    applied: (IntCounter, IntCounter),
    duplicates: IntCounter,
    forwarded: (IntCounter, IntCounter),
    rejected: IntCounterVec,
    apply_delay: LocalHistogram,
    command_wait: LocalHistogram,
    lag: (Option<IntGauge>, Option<IntGauge>),
    lag_vec: IntGaugeVec,
}

impl PartitionMetrics {
    pub fn applied(&self, which: Which) {
        match which {
            Which::Usage => self.applied.0.inc(),
            Which::Commands => self.applied.1.inc(),
        }
    }

    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub fn forwarded(&self, which: Which) {
        match which {
            Which::Usage => self.forwarded.0.inc(),
            Which::Commands => self.forwarded.1.inc(),
        }
    }

    /// Rejections are rare: the label lookup is paid only for them.
    pub fn rejected(&self, code: &str) {
        self.rejected.with_label_values(&[code]).inc();
    }

    /// A record applied `seconds` after its broker timestamp (clamped at zero: clocks of
    /// producer and consumer may disagree a little).
    pub fn delay(&self, seconds: f64) {
        self.apply_delay.observe(seconds.max(0.0));
    }

    /// A commands record applied `waited` after tally received it.
    pub fn command_waited(&self, waited: Duration) {
        self.command_wait.observe(waited.as_secs_f64());
    }

    /// Moves the buffered delay observations into the shared histograms.
    pub fn publish(&self) {
        self.apply_delay.flush();
        self.command_wait.flush();
    }

    /// Sets the lag of one side: `end` is the partition's end (None: not known yet),
    /// `next` the next offset to apply.
    pub fn set_lag(&mut self, which: Which, end: Option<i64>, next: i64) {
        let Some(end) = end else {
            return;
        };
        let (slot, topic) = match which {
            Which::Usage => (&mut self.lag.0, &self.topics.0),
            Which::Commands => (&mut self.lag.1, &self.topics.1),
        };
        let gauge = slot.get_or_insert_with(|| {
            self.lag_vec
                .with_label_values(&[topic.as_str(), &self.partition.to_string()])
        });
        gauge.set(end.saturating_sub(next).max(0));
    }

    /// Removes the partition's lag series (it was revoked: another process reports it).
    pub fn forget(&mut self) {
        self.publish();
        let partition = self.partition.to_string();
        for (slot, topic) in [
            (&mut self.lag.0, &self.topics.0),
            (&mut self.lag.1, &self.topics.1),
        ] {
            if slot.take().is_some() {
                let _ = self
                    .lag_vec
                    .remove_label_values(&[topic.as_str(), partition.as_str()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn partition_handles_count_into_the_registry() {
        let m = RunMetrics::new().expect("metrics register");
        let mut p = m.partition(("u", "c"), 3);
        for _ in 0..5 {
            p.applied(Which::Usage);
        }
        p.applied(Which::Commands);
        p.duplicate();
        p.rejected("unknown_feature");
        p.rejected("unknown_feature");
        p.delay(0.2);
        p.delay(-1.0);
        // Buffered until published.
        assert_eq!(m.apply_delay.get_sample_count(), 0);
        p.publish();
        p.set_lag(Which::Usage, Some(10), 7);
        p.set_lag(Which::Commands, None, 0);
        let text = m.render();
        assert_eq!(
            line(&text, r#"tally_events_applied_total{topic="u"}"#),
            Some("5")
        );
        assert_eq!(
            line(&text, r#"tally_events_applied_total{topic="c"}"#),
            Some("1")
        );
        assert_eq!(line(&text, "tally_events_duplicate_total"), Some("1"));
        assert_eq!(
            line(
                &text,
                r#"tally_events_rejected_total{reason="unknown_feature"}"#
            ),
            Some("2")
        );
        assert_eq!(line(&text, "tally_apply_delay_seconds_count"), Some("2"));
        // The negative delay counts as zero, in the lowest bucket.
        assert_eq!(
            line(&text, r#"tally_apply_delay_seconds_bucket{le="0.01"}"#),
            Some("1")
        );
        assert_eq!(
            line(&text, r#"tally_consumer_lag{partition="3",topic="u"}"#),
            Some("3")
        );
        // An unknown end is no series at all, never a lag of zero.
        assert!(!text.contains(r#"tally_consumer_lag{partition="3",topic="c"}"#));
        // A lag is never negative (an end seen before the last records were applied).
        p.set_lag(Which::Usage, Some(5), 7);
        assert_eq!(
            line(
                &m.render(),
                r#"tally_consumer_lag{partition="3",topic="u"}"#
            ),
            Some("0")
        );
        p.forget();
        assert!(!m.render().contains("tally_consumer_lag{"));
    }

    #[test]
    fn phases_and_outcomes_exist_before_anything_happens() {
        let m = RunMetrics::new().expect("metrics register");
        let text = m.render();
        for p in phase::ALL {
            assert!(
                text.contains(&format!(
                    "tally_flush_duration_seconds_count{{phase=\"{p}\"}} 0"
                )),
                "{p}: {text}"
            );
        }
        for o in ["sent", "suppressed", "failed"] {
            assert!(text.contains(&format!("tally_alerts_total{{outcome=\"{o}\"}} 0")));
        }
        m.alert_counters().sent.inc();
        assert!(m
            .render()
            .contains(r#"tally_alerts_total{outcome="sent"} 1"#));
    }
}
