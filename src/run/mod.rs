//! `tally run`: consume both topics, apply events through the core, and flush outputs and
//! the checkpoint to ClickHouse. One thread owns the consumer; rebalance callbacks hand the
//! change to it (see [`kafka_edge`]), and it claims, or flushes and commits before the
//! partitions go. The run's logic reaches the broker, ClickHouse and the clock only through
//! the traits of [`edges`].

pub mod alerting;
pub mod clickhouse_edge;
pub mod confirm;
pub mod edges;
pub mod encode;
pub mod flush;
pub mod kafka_edge;
pub mod lot_rows;
pub mod merge;
pub mod metrics;
pub mod partition;
pub mod rollup;
pub mod screen;
pub mod view;

#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use tally_core::Rules;
use tokio::runtime::Handle;

use self::edges::{Claim, Clock, Exec, Ingest, Outbox, Rebalance, Record, Source, Store};
use self::flush::{Committed, Failed, Flush, Order, Snapshot, Writing};
use self::merge::{Pending, Which};
use self::metrics::{phase, RunMetrics};
use self::partition::{Counts, Earlier, Outputs, PartitionWork};
use crate::config::Config;
use crate::kafka;
use crate::status::ProcessState;
use crate::store::{self, checkpoint};

/// Events applied per partition between two polls, so polling stays regular.
const APPLY_BUDGET: usize = 10_000;
/// Messages taken from the consumer before applying them.
const POLL_BATCH: usize = 5_000;
/// The longest the run loop waits for a message before it looks at its partitions again.
const POLL_WAIT: Duration = Duration::from_millis(20);
/// ... and while something is due soon (see [`Pipeline::due_soon`]).
const POLL_WAIT_DUE: Duration = Duration::from_millis(5);
/// ... and while a decision waits for the flush in flight to end: its own flush starts
/// only once the loop sees that, and a caller waits for it.
const POLL_WAIT_DECISION: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a side may sit behind its known end with nothing arriving before it is read
/// again from the start.
const STALL: Duration = Duration::from_secs(2);
/// How many records before its checkpoint a partition is read from. A broker must answer
/// a fetch with the batch containing the offset; tansu 0.6 answers with the next batch,
/// so a start inside a batch would skip records. librdkafka producers put at most 10,000
/// records in a batch (`batch.num.messages`), so this reaches the batch's start; larger
/// batches still end in a rewind to the beginning. It replaces a 2 s stall and a read of
/// the whole partition at every start.
const LEAD_IN: i64 = 10_000;

/// What a run did, for the caller's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub counts: Counts,
    pub flushes: u64,
}

/// Flushes in flight at once. The second starts only for a decision a caller waits on, so
/// a hold waits for its own flush and not also for the one before; it writes its outputs
/// beside the earlier one's and its checkpoint after it, so checkpoints still land in
/// order, and it seals no dedup keys and takes no snapshot ([`Earlier::InFlight`]).
/// Session 8 measured two in flight as slower (same-table INSERTs at once took 117-158 ms
/// instead of 8 ms); that was the test server's disk, an ext4 without a journal
/// (docs/benchmarks.md, session 16).
const MAX_IN_FLIGHT: usize = 2;

struct Pipeline {
    /// What it was given: edges, settings and the process's shared parts.
    env: Env,
    parts: BTreeMap<i32, PartitionWork>,
    /// The flushes in flight, oldest first; they commit in this order.
    writing: VecDeque<Writing>,
    /// The last flush started tells here that it committed (see [`Order`]).
    last_commit: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Where the flushes before the last one built stood when it was built.
    last_built: Earlier,
    /// Flushes that failed, oldest first, written again from `retry_at`, one at a time;
    /// nothing is applied meanwhile.
    pending: VecDeque<Flush>,
    /// How many of the flushes in flight were behind one that failed: they cannot commit
    /// (each waits for the one before), and each goes to `pending` as it ends, after the
    /// failed one. The loop goes on polling meanwhile rather than wait for them.
    behind_failed: usize,
    /// When any partition last received a record.
    last_any_received: Instant,
    last_flush: Instant,
    applied_since_flush: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
    summary: Summary,
    last_checkpoint: Option<DateTime<Utc>>,
    /// Partitions of each topic, among which `kafka.partitioner` places an account.
    partition_count: i32,
    /// Sources whose misplaced records have been logged (each once).
    forward_log: screen::LoggedSources,
    /// The next offset after the last record this process forwarded, per side: a drain
    /// also applies what it forwarded, which lies past the ends it started with.
    forwarded_ends: BTreeMap<(Which, i32), i64>,
    /// Partitions the group assigned that are not claimed yet, tried again from `at`.
    claiming: BTreeMap<i32, Retry>,
    /// Partitions claimed, with their starts, waiting for the others of their assignment:
    /// the source is assigned them together.
    claimed: BTreeMap<i32, (Option<i64>, Option<i64>)>,
    /// When the first decision not yet in a flush was applied (for `decision_wait`).
    decided_since: Option<Instant>,
}

/// When a failed claim is tried again, and on which replica.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempt: u32,
    at: Instant,
    backoff: Duration,
}

impl Pipeline {
    fn topics(&self) -> (&str, &str) {
        (
            &self.env.config.kafka.usage_topic,
            &self.env.config.kafka.commands_topic,
        )
    }

    /// Takes a rebalance the source handed over: a revoke flushes, commits and lets the
    /// partitions go; an assignment is claimed (see [`Pipeline::claim_due`]).
    fn rebalance(&mut self, source: &mut dyn Source, change: Rebalance) {
        match change {
            Rebalance::Assign(partitions) => {
                tracing::debug!(partitions = ?partitions, "assigned by the group, claiming");
                let at = self.env.clock.now();
                for partition in partitions {
                    self.claiming.insert(
                        partition,
                        Retry {
                            attempt: 0,
                            at,
                            backoff: Duration::from_millis(200),
                        },
                    );
                }
            }
            Rebalance::Revoke => {
                let offsets = self.flush_before_leaving(5);
                let revoked = self.parts.len();
                self.release_all();
                source.commit(&offsets, true);
                tracing::info!(partitions = revoked, "partitions revoked");
                source.unassign();
            }
            Rebalance::Failed => {
                self.release_all();
                source.unassign();
            }
        }
    }

    /// Claims the assigned partitions whose turn it is, and loads their state; once all of
    /// an assignment is claimed, the source reads them from their checkpointed offsets.
    /// A claim that fails is tried again after a backoff (on a cluster, on the next
    /// replica of the partition's shard): nothing may be read before the state is.
    fn claim_due(&mut self, source: &mut dyn Source) {
        let now = self.env.clock.now();
        let due: Vec<(i32, Retry)> = self
            .claiming
            .iter()
            .filter(|(_, retry)| retry.at <= now)
            .map(|(p, r)| (*p, *r))
            .collect();
        if !due.is_empty() {
            let loads = self.load_claims(&due);
            for ((partition, retry), loaded) in due.into_iter().zip(loads) {
                match loaded {
                    Ok((restored, rollups)) => {
                        let start = self.take_claimed(partition, restored, rollups);
                        self.claiming.remove(&partition);
                        self.claimed.insert(partition, start);
                    }
                    Err(e) => {
                        self.env.metrics.clickhouse_errors.inc();
                        tracing::warn!(partition, error = %e, "cannot load partition state, retrying");
                        self.claiming.insert(
                            partition,
                            Retry {
                                attempt: retry.attempt + 1,
                                at: now + retry.backoff,
                                backoff: (retry.backoff * 2).min(MAX_BACKOFF),
                            },
                        );
                    }
                }
            }
        }
        if self.claiming.is_empty() && !self.claimed.is_empty() {
            let claimed = std::mem::take(&mut self.claimed);
            let starts = self.starts(&claimed);
            source.assign(&starts);
        }
    }

    /// Claims the partitions and loads their states, all at once: a claim is a few queries
    /// and two INSERTs that wait on ClickHouse, so an assignment takes the time of its
    /// slowest claim, not the sum of them (six partitions with history took 2.2 s one after
    /// another). Partitions are independent: each claim reads and writes only its own rows.
    fn load_claims(
        &self,
        due: &[(i32, Retry)],
    ) -> Vec<Result<(checkpoint::Restored, rollup::Rollups), store::StoreError>> {
        let now_micros = self.env.clock.utc().timestamp_micros().max(0) as u64;
        let dedup_window_millis = self.env.rules.dedup_window.num_milliseconds();
        let segment_records = self.env.config.pipeline.rollup_segment_records;
        // Each load on a task of its own: decoding what a claim reads (states, dedup keys,
        // open days) and indexing the open days is CPU, and on the run thread the claims
        // took turns at it (a drain's claims, 0.6 s, were mostly that).
        let loads = due.iter().map(|&(partition, retry)| {
            let store = self.env.store.clone();
            let claim_info = self.env.claim_info.clone();
            self.env.rt.spawn(async move {
                let claim = Claim {
                    now_micros,
                    dedup_window_millis,
                    claim_info: &claim_info,
                    segment_records,
                };
                let mut restored = store
                    .claim_and_load(partition as u32, retry.attempt, &claim)
                    .await?;
                let days = std::mem::take(&mut restored.days);
                let rollups = rollup::Rollups::restore(restored.segment_records, days);
                Ok((restored, rollups))
            })
        });
        let loaded = self.env.rt.block_on(futures::future::join_all(loads));
        loaded
            .into_iter()
            .map(|done| done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
            .collect()
    }

    /// Makes a claimed partition this process's, from its loaded state; returns where to
    /// start reading.
    fn take_claimed(
        &mut self,
        partition: i32,
        restored: checkpoint::Restored,
        rollups: rollup::Rollups,
    ) -> (Option<i64>, Option<i64>) {
        let metrics = self.env.metrics.partition(self.topics(), partition);
        tracing::info!(
            partition,
            accounts = restored.book.accounts.len(),
            usage_offset = ?restored.usage_offset,
            commands_offset = ?restored.commands_offset,
            "partition assigned"
        );
        let start = (restored.usage_offset, restored.commands_offset);
        self.env
            .owner
            .claimed(partition, restored.commands_offset.unwrap_or(0));
        let view = self.env.views.claimed(
            partition,
            view::Applied {
                usage_next: restored.usage_offset.unwrap_or(0),
                commands_next: restored.commands_offset.unwrap_or(0),
                usage_end: None,
                commands_end: None,
            },
        );
        let mut work = PartitionWork::new(partition, restored, rollups, metrics, view);
        let now = self.env.clock.now();
        work.usage.last_received = now;
        work.commands.last_received = now;
        self.parts.insert(partition, work);
        start
    }

    /// Where the source reads each side of the claimed partitions from.
    fn starts(
        &self,
        claimed: &BTreeMap<i32, (Option<i64>, Option<i64>)>,
    ) -> Vec<(Which, i32, merge::Rewind)> {
        let mut starts = Vec::new();
        for (&partition, &(usage, commands)) in claimed {
            for (which, start) in [(Which::Usage, usage), (Which::Commands, commands)] {
                // Read a little before the checkpoint: a start inside a record batch would
                // make tansu skip that batch; what comes before the checkpoint is dropped.
                let to = start
                    .map(|start| merge::Rewind::To(start.saturating_sub(LEAD_IN).max(0)))
                    .unwrap_or(merge::Rewind::Beginning);
                starts.push((which, partition, to));
            }
        }
        starts
    }

    /// Queues one message. Returns `Rewind` when the message skips offsets and the
    /// partition must be read again (see [`merge::Side::rewound_at`]).
    fn ingest(&mut self, message: &Record<'_>) -> Ingest {
        let which = message.which;
        let Some(work) = self.parts.get_mut(&message.partition) else {
            return Ingest::Queued;
        };
        let side = work.side_mut(which);
        if message.offset < side.received_next {
            return Ingest::Queued;
        }
        if message.offset > side.received_next {
            match side.rewind(LEAD_IN) {
                Some(to) => {
                    tracing::warn!(
                        topic = message.topic,
                        partition = message.partition,
                        expected = side.received_next,
                        got = message.offset,
                        from = ?to,
                        "offsets skipped; reading the partition again"
                    );
                    return Ingest::Rewind {
                        which,
                        partition: message.partition,
                        to,
                    };
                }
                None => tracing::warn!(
                    topic = message.topic,
                    partition = message.partition,
                    expected = side.received_next,
                    got = message.offset,
                    "offsets skipped again after rewinds; taking the gap as real"
                ),
            }
        }
        let now = self.env.clock.now();
        self.last_any_received = now;
        side.received(message.offset, now);
        let pending = self.pending(message, which, now);
        let bound = self.bound();
        let Some(work) = self.parts.get_mut(&message.partition) else {
            return Ingest::Queued;
        };
        if work.side_mut(which).push(pending, bound) {
            return Ingest::Full {
                which,
                partition: message.partition,
            };
        }
        Ingest::Queued
    }

    /// How much each side of a partition may hold received and not applied.
    fn bound(&self) -> merge::Bound {
        merge::Bound {
            records: self.env.config.pipeline.max_queued_records,
            bytes: self.env.config.pipeline.max_queued_bytes,
        }
    }

    /// Sets the queue gauges, after a batch of polls (when the queues are fullest).
    fn export_queues(&self) {
        let (mut records, mut bytes, mut most) = (0, 0, 0);
        for work in self.parts.values() {
            for side in [&work.usage, &work.commands] {
                records += side.queue.len();
                bytes += side.queued_bytes;
                most = most.max(side.queue.len());
            }
        }
        let metrics = &self.env.metrics;
        metrics.queued_records.set(records as i64);
        metrics.queued_bytes.set(bytes as i64);
        if most as i64 > metrics.queue_peak_records.get() {
            metrics.queue_peak_records.set(most as i64);
        }
    }

    /// A received record, screened at the edges (see [`screen`]): to apply here, to
    /// dead-letter, or to forward to its account's partition.
    fn pending(&mut self, message: &Record<'_>, which: Which, now: Instant) -> Pending {
        let edges = screen::Edges {
            max_future_skew: self.env.rules.max_future_skew,
            partitions: self.partition_count,
            partitioner: self.env.config.kafka.partitioner,
        };
        let timestamp = message.timestamp;
        // The wall clock is read here, at receipt; the core gets only the decision (a
        // refused timestamp) and stays free of clocks.
        let received_at = self.env.clock.utc();
        let arrival = timestamp
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(received_at);
        let payload = message.payload;
        let record = screen::Record {
            which,
            partition: message.partition,
            payload,
            arrival,
            received_at,
            size: &|| message.size(),
        };
        let (parsed, forward) = match screen::screen(&edges, &record) {
            screen::Verdict::Here(parsed) => (parsed, None),
            screen::Verdict::Forward { to, event } => {
                if self.forward_log.first_time(&event.source) {
                    tracing::warn!(
                        source = ?event.source,
                        account = ?event.account,
                        topic = message.topic,
                        partition = message.partition,
                        owner = to,
                        partitioner = edges.partitioner.as_str(),
                        "a record in a partition that does not own its account (its producer \
                         uses another partitioner than kafka.partitioner): forwarded to the \
                         account's partition; logged once per source"
                    );
                }
                let forwarding = merge::Forwarding {
                    to,
                    headers: message.headers.read().map(|h| h.detach()),
                    timestamp,
                };
                (Ok(event), Some(forwarding))
            }
        };
        Pending {
            offset: message.offset,
            arrival,
            parsed,
            key: message.key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            received: now,
            forward,
        }
    }

    fn apply_ready(&mut self, now: Instant) {
        if !self.pending.is_empty() {
            return;
        }
        let max_idle = self.env.config.kafka.max_idle;
        let (usage_topic, commands_topic) = (
            self.env.config.kafka.usage_topic.clone(),
            self.env.config.kafka.commands_topic.clone(),
        );
        let applied_at = self.env.clock.utc();
        for work in self.parts.values_mut() {
            let asker = confirm::Asker {
                rt: &self.env.rt,
                store: &self.env.store,
                partition: work.partition,
                claim: work.claim_version,
            };
            match work.confirming.step(&asker, now) {
                confirm::Step::Ready(None) => {}
                confirm::Step::Ready(Some(answers)) => {
                    tracing::debug!(
                        partition = work.partition,
                        keys = answers.len(),
                        "probable duplicates confirmed"
                    );
                    for (key, first) in answers {
                        let outcome = if first.is_some() { "duplicate" } else { "new" };
                        self.env
                            .metrics
                            .dedup_confirmed
                            .with_label_values(&[outcome])
                            .inc();
                        work.book.seen.answer(key, first);
                    }
                }
                confirm::Step::Blocked => continue,
                confirm::Step::Failed { error, backoff } => {
                    self.env.metrics.clickhouse_errors.inc();
                    tracing::warn!(partition = work.partition, error = %error, retry_in = ?backoff, "cannot confirm probable duplicates, retrying");
                    continue;
                }
            }
            let budget = self
                .env
                .config
                .pipeline
                .max_batch_events
                .saturating_sub(self.applied_since_flush)
                .min(APPLY_BUDGET);
            self.applied_since_flush += work.apply_ready(
                &self.env.rules,
                (&usage_topic, &commands_topic),
                now,
                applied_at,
                max_idle,
                budget,
            );
            if !work.decided.is_empty() {
                self.decided_since.get_or_insert(now);
            }
            if !work.confirm.is_empty() {
                // Probable duplicates (sealed fingerprints) are confirmed against the
                // exact rows before the partition goes on; the others go on meanwhile.
                let keys = std::mem::take(&mut work.confirm);
                work.confirming = confirm::Confirm::start(&asker, keys);
            }
        }
    }

    /// Publishes what each partition changed since the last pass to the checks' view, with
    /// the accounts checks have asked for; then tells those checks.
    fn publish(&mut self) {
        let mut asked: BTreeMap<i32, Vec<view::Ask>> = BTreeMap::new();
        for ask in self.env.asks.take() {
            asked.entry(ask.partition).or_default().push(ask);
        }
        for work in self.parts.values_mut() {
            let asks = asked.remove(&work.partition).unwrap_or_default();
            let accounts: Vec<String> = asks.iter().map(|a| a.account.clone()).collect();
            work.publish(&accounts);
            for ask in asks {
                let _ = ask.done.try_send(());
            }
        }
        // Asks for partitions gone meanwhile: the check finds no view and says so.
        for ask in asked.into_values().flatten() {
            let _ = ask.done.try_send(());
        }
    }

    /// Something the loop should look at again soon: a flush in flight (its end lets the
    /// next start), a decision waiting for its flush, a confirmation under way. An event
    /// waiting out `max_idle` has its own deadline (see [`Pipeline::poll_wait`]).
    fn due_soon(&self) -> bool {
        !self.writing.is_empty()
            || self.decision_waits()
            || self.parts.values().any(|work| !work.confirming.is_idle())
    }

    /// Whether a partition holds a decision that a caller waits on until its flush
    /// commits.
    fn decision_waits(&self) -> bool {
        self.parts.values().any(|work| !work.decided.is_empty())
    }

    /// How long the next poll may wait for a record before the loop looks again.
    fn poll_wait(&self, now: Instant) -> Duration {
        let usual = if self.due_soon() {
            POLL_WAIT_DUE
        } else {
            POLL_WAIT
        };
        // A failed flush waits for its retry: no decision goes before it, and the waits
        // noted are old (nothing is applied meanwhile).
        if !self.pending.is_empty() {
            return usual;
        }
        let longest = if self.decision_waits() {
            POLL_WAIT_DECISION
        } else {
            usual
        };
        let deadlines = self.parts.values().filter_map(|work| {
            let (_, reason) = work.wait?;
            reason.deadline()
        });
        merge::poll_wait(longest, deadlines, now)
    }

    fn flush_due(&self, now: Instant) -> bool {
        // A caller waits for a hold's answer until its flush commits: flush now, beside
        // the flush in flight if there is room.
        let decision_waits = self.decision_waits();
        if !self.writing.is_empty() {
            return self.may_overlap() && decision_waits;
        }
        match (self.pending.front(), self.retry_at) {
            (Some(_), Some(at)) => now >= at,
            (Some(_), None) => true,
            (None, _) => {
                decision_waits
                    || self.applied_since_flush >= self.env.config.pipeline.max_batch_events
                    || now.duration_since(self.last_flush)
                        >= self.env.config.pipeline.flush_interval
            }
        }
    }

    /// Whether another flush may start beside those in flight: there is room, no failed
    /// flush waits (those go again one at a time), the last one built could seal and
    /// snapshot (so a steady stream of decisions still lets every other flush do both),
    /// and nothing is to be produced: dead letters and forwards go before a flush's
    /// outputs, and two flushes at once could land one account's forwards out of order.
    fn may_overlap(&self) -> bool {
        self.writing.len() < MAX_IN_FLIGHT
            && self.pending.is_empty()
            && self.last_built == Earlier::Committed
            && self.parts.values().all(|work| work.outgoing.is_empty())
    }

    /// Starts writing the next flush in the background: the failed one again, or what was
    /// applied since the last one. Does nothing while one is in flight.
    fn start_flush(&mut self) {
        if !self.writing.is_empty() && !self.may_overlap() {
            return;
        }
        self.last_flush = self.env.clock.now();
        let Some(flush) = self.pending.pop_front().or_else(|| self.build_flush()) else {
            return;
        };
        // Only a flush in flight is waited for: a collected one has committed or failed,
        // and after a failure nothing newer is in flight.
        let after = if self.writing.is_empty() {
            None
        } else {
            self.last_commit.take()
        };
        let (committed, next) = tokio::sync::oneshot::channel();
        self.last_commit = Some(next);
        self.writing.push_back(self.env.rt.spawn(flush::write(
            flush::Targets {
                store: self.env.store.clone(),
                outbox: self.env.outbox.clone(),
                clock: self.env.clock.clone(),
                metrics: self.env.metrics.clone(),
                owner: self.env.owner.clone(),
                email_context: self.env.email_context.clone(),
                stream: self.env.stream.clone(),
                dedup_window_millis: self.env.rules.dedup_window.num_milliseconds(),
            },
            flush,
            Order { after, committed },
        )));
    }

    /// Takes what every partition applied since the last flush; `None` when nothing was.
    /// Its rows are drafts: the writing task encodes them.
    fn build_flush(&mut self) -> Option<Flush> {
        let started = self.env.clock.now();
        let mut out = Outputs::default();
        let now_secs = self.env.clock.utc().timestamp().max(0) as u32;
        let mut drafts = Vec::new();
        let mut offsets = Vec::new();
        let mut snapshots = Vec::new();
        let earlier = if self.writing.is_empty() {
            Earlier::Committed
        } else {
            Earlier::InFlight
        };
        self.last_built = earlier;
        for work in self.parts.values_mut() {
            let min_rows = self.env.config.pipeline.snapshot_min_rows;
            let Some(draft) = work.drain_into(&mut out, now_secs, min_rows, earlier) else {
                continue;
            };
            debug_assert_eq!(
                draft.version, work.version,
                "a draft of the current version"
            );
            offsets.push((
                work.partition,
                work.usage.applied_next,
                work.commands.applied_next,
            ));
            snapshots.extend(work.snapshot_pending.take().map(|version| Snapshot {
                partition: work.partition,
                version,
                claim: work.claim_version,
                arrival_high: draft.arrival_high,
            }));
            work.next_version(&self.env.rules);
            drafts.push(draft);
        }
        let events = std::mem::take(&mut self.applied_since_flush);
        if let Some(since) = self.decided_since.take() {
            self.env.metrics.flush_phase(
                phase::DECISION_WAIT,
                started.saturating_duration_since(since).as_secs_f64(),
            );
        }
        if offsets.is_empty() {
            return None;
        }
        let hooks: Vec<_> = out
            .notices
            .iter()
            .flat_map(|n| crate::notify::webhooks::deliveries(n, &self.env.config.webhooks))
            .collect();
        self.env.metrics.flush_phase(
            phase::BUILD,
            self.env.clock.now().duration_since(started).as_secs_f64(),
        );
        Some(Flush {
            rows: encode::Rows::Drafted {
                drafts,
                alerts: out.alerts,
            },
            step: flush::Step::Built {
                outgoing: out.outgoing,
            },
            commits: flush::Commits {
                hooks,
                events,
                decided: out.decided,
                offsets,
                snapshots,
                started,
            },
        })
    }

    /// Collects the flush in flight once it is done (`wait`: waits for it). Returns the
    /// offsets its checkpoint committed; on failure keeps it for a retry and returns why.
    fn finish_flush(&mut self, wait: bool) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let mut committed = Vec::new();
        let mut wait = wait;
        while let Some(handle) = self.writing.front() {
            if !wait && !handle.is_finished() {
                break;
            }
            wait = false;
            let handle = self
                .writing
                .pop_front()
                .expect("flush in flight checked above");
            if self.behind_failed > 0 {
                self.behind_failed -= 1;
                self.after_failed(handle);
                continue;
            }
            match self.finish_one(handle) {
                Ok(offsets) => committed.extend(offsets),
                Err(e) => {
                    self.behind_failed = self.writing.len();
                    return Err(e);
                }
            }
        }
        Ok(committed)
    }

    /// Collects a flush that was in flight behind a failed one. It cannot have committed
    /// (its checkpoint waits for the one before), so it goes again, in order, after the
    /// failed one.
    fn after_failed(&mut self, handle: Writing) {
        debug_assert!(!self.pending.is_empty(), "the failed flush waits before it");
        match self.env.rt.block_on(handle) {
            Ok(Err(Failed { flush, .. })) => self.pending.push_back(flush),
            Ok(Ok(_)) => debug_assert!(false, "a flush committed after a failed one"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Waits for the flushes in flight behind a failed one (on giving up: their rows must
    /// not land after the partitions went to another owner).
    fn collect_behind_failed(&mut self) {
        debug_assert!(
            self.behind_failed <= self.writing.len(),
            "the flushes behind a failed one are the first in flight"
        );
        let behind = std::mem::take(&mut self.behind_failed).min(self.writing.len());
        for handle in self.writing.drain(..behind).collect::<Vec<_>>() {
            self.after_failed(handle);
        }
    }

    /// Collects one flush; see [`Pipeline::finish_flush`].
    fn finish_one(&mut self, handle: Writing) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let result = match self.env.rt.block_on(handle) {
            Ok(done) => done,
            // The batch went down with the task: its events are applied in memory but
            // were never written, so no later checkpoint may land. Only a restart from
            // the last checkpoint is exact.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let committed = match result {
            Ok(committed) => committed,
            Err(failed) => return Err(self.failed(failed)),
        };
        self.after_commit(committed)
    }

    /// Keeps a failed flush to be written again first, after a backoff; returns why.
    fn failed(&mut self, failed: Failed) -> anyhow::Error {
        self.env
            .metrics
            .flush_failures
            .with_label_values(&[failed.phase])
            .inc();
        if failed.phase != phase::DEAD_LETTERS {
            self.env.metrics.clickhouse_errors.inc();
        }
        self.retry_at = Some(self.env.clock.now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        // It is the oldest flush not committed (flushes are collected in order, and a
        // retry goes alone), so it goes again first: a later checkpoint must never land
        // before it.
        self.pending.push_front(failed.flush);
        failed.error
    }

    /// Hands a committed flush's emails and webhooks on (its task has answered its
    /// decisions and pruned what its snapshots superseded); returns the offsets its
    /// checkpoint committed.
    fn after_commit(&mut self, flush: Committed) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let Committed {
            forwarded,
            mails,
            commits,
            ledger_rows,
        } = flush;
        self.env.metrics.flush_events.observe(commits.events as f64);
        if !mails.is_empty() {
            for mail in &mails {
                tracing::info!(account = %mail.account, pool = %mail.pool, kind = mail.kind.as_str(), "low-credit alert");
            }
            let submitted = self.env.notifier.as_ref().map(|n| n.submit(mails));
            if !matches!(submitted, Some(Ok(()))) {
                tracing::error!("the notifier has stopped; alerts stay pending in ClickHouse and are sent at the next start");
            }
        }
        let hooks = commits.hooks;
        if !hooks.is_empty() {
            for d in &hooks {
                tracing::info!(account = %d.account, event = %d.event_type, endpoint = %d.target.name(), "webhook decided");
            }
            let submitted = self.env.hooks.as_ref().map(|h| h.submit(hooks));
            if !matches!(submitted, Some(Ok(()))) {
                tracing::error!("the webhook worker has stopped; webhooks stay pending in ClickHouse and are sent at the next start");
            }
        }
        self.note_forwarded(&forwarded);
        self.retry_at = None;
        self.backoff = Duration::from_millis(200);
        self.summary.flushes += 1;
        self.last_checkpoint = Some(self.env.clock.utc());
        tracing::debug!(ledger_rows, forwarded = forwarded.len(), "flushed");
        Ok(commits.offsets)
    }

    fn note_forwarded(&mut self, landed: &[(String, i32, i64)]) {
        for (topic, partition, offset) in landed {
            let which = if *topic == self.env.config.kafka.usage_topic {
                Which::Usage
            } else {
                Which::Commands
            };
            let end = self.forwarded_ends.entry((which, *partition)).or_default();
            *end = (*end).max(offset + 1);
        }
    }

    /// Writes everything applied so far and waits for it: the flush in flight, a failed
    /// one, then the rest. Returns the group offsets to commit to Kafka.
    fn flush_now(&mut self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let mut committed = Vec::new();
        loop {
            self.start_flush();
            if self.writing.is_empty() {
                break;
            }
            committed.extend(self.finish_flush(true)?);
        }
        Ok(group_offsets(&committed))
    }

    /// Flushes with retries, for revoke and shutdown; gives up after `attempts`, leaving
    /// the uncommitted tail to be replayed by the next owner. Returns the group offsets.
    fn flush_before_leaving(&mut self, attempts: u32) -> Vec<(i32, i64, i64)> {
        for attempt in 1..=attempts {
            match self.flush_now() {
                Ok(offsets) => return offsets,
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "flush failed");
                    if attempt < attempts {
                        self.env.clock.sleep(self.backoff);
                    }
                }
            }
        }
        tracing::error!("giving up the flush; the next owner replays from the last checkpoint");
        self.collect_behind_failed();
        self.pending.clear();
        Vec::new()
    }

    fn counts(&self) -> Counts {
        let mut total = self.summary.counts;
        for work in self.parts.values() {
            total.applied += work.counts.applied;
            total.duplicates += work.counts.duplicates;
            total.rejected += work.counts.rejected;
        }
        total
    }

    /// Copies what `tally status` shows into `status`.
    fn report(&self, status: &mut crate::status::ProcessStatus) {
        let counts = self.counts();
        status.applied = counts.applied;
        status.duplicates = counts.duplicates;
        status.rejected = counts.rejected;
        status.flushes = self.summary.flushes;
        status.last_checkpoint = self.last_checkpoint.map(|t| t.to_rfc3339());
        status.partitions = self
            .parts
            .values()
            .map(|w| crate::status::PartitionStatus {
                partition: w.partition,
                usage_applied: w.usage.applied_next,
                commands_applied: w.commands.applied_next,
                usage_received: w.usage.received_next,
                commands_received: w.commands.received_next,
                usage_end: w.usage.high,
                commands_end: w.commands.high,
                waiting: w.wait.map(|(which, _)| which.as_str().to_string()),
                waiting_for: w.wait.map(|(which, _)| which.other().as_str().to_string()),
                wait_reason: w.wait.map(|(_, reason)| reason.to_string()),
            })
            .collect();
    }

    /// Sets every partition's lag gauges (its end as the last fetch response gave it,
    /// minus the next offset to apply) and the dedup window's size.
    fn export_lag(&mut self) {
        let (exact, sealed) = self.parts.values().fold((0, 0), |(e, s), work| {
            (
                e + work.book.seen.exact_len(),
                s + work.book.seen.sealed_len(),
            )
        });
        self.env
            .metrics
            .dedup_ids
            .with_label_values(&["exact"])
            .set(exact as i64);
        self.env
            .metrics
            .dedup_ids
            .with_label_values(&["sealed"])
            .set(sealed as i64);
        for work in self.parts.values_mut() {
            let (usage_end, usage_next) = (work.usage.high, work.usage.applied_next);
            let (commands_end, commands_next) = (work.commands.high, work.commands.applied_next);
            work.metrics.set_lag(Which::Usage, usage_end, usage_next);
            work.metrics
                .set_lag(Which::Commands, commands_end, commands_next);
        }
    }

    /// Forgets every partition (after a revoke), keeping their counts.
    fn release_all(&mut self) {
        self.summary.counts = self.counts();
        for work in self.parts.values_mut() {
            work.metrics.forget();
        }
        self.parts.clear();
        self.env.owner.released_all();
        self.env.views.released_all();
        // Let the flushes in flight land or fail before the partitions go to a new owner.
        while let Some(handle) = self.writing.pop_front() {
            let _ = self.env.rt.block_on(handle);
        }
        self.behind_failed = 0;
        self.last_commit = None;
        self.pending.clear();
        self.applied_since_flush = 0;
        self.claiming.clear();
        self.claimed.clear();
        self.decided_since = None;
    }

    /// Records handled so far (applied, duplicates, rejected) and, once partitions are
    /// assigned, how many are left up to the drain's end offsets on them.
    fn drain_progress(&self, ends: &Ends) -> (u64, Option<u64>) {
        let counts = self.counts();
        let done = counts.applied + counts.duplicates + counts.rejected;
        if self.parts.is_empty() {
            return (done, None);
        }
        let left = self
            .parts
            .values()
            .flat_map(|work| {
                [
                    (Which::Usage, &work.usage),
                    (Which::Commands, &work.commands),
                ]
                .map(|(which, side)| {
                    let end = ends.listed.get(&(which, work.partition)).copied();
                    end.map_or(0, |end| end.saturating_sub(side.applied_next).max(0) as u64)
                })
            })
            .sum();
        (done, Some(left))
    }

    /// Every assigned partition has applied everything up to `ends` and nothing is
    /// waiting to be written. An end is only known once a fetch response confirmed it.
    fn drained(&self, ends: &Ends) -> bool {
        !self.parts.is_empty()
            && self.pending.is_empty()
            && self.writing.is_empty()
            && self.parts.values().all(|work| {
                [Which::Usage, Which::Commands].iter().all(|&which| {
                    let side = match which {
                        Which::Usage => &work.usage,
                        Which::Commands => &work.commands,
                    };
                    let forwarded = self.forwarded_ends.get(&(which, work.partition));
                    ends.confirmed(which, work.partition)
                        .is_some_and(|end| side.applied_next >= end.max(*forwarded.unwrap_or(&0)))
                })
            })
    }
}

/// End offsets seen at start: the broker's ListOffsets answer, raised by the first
/// fetch response's high watermark of each partition.
struct Ends {
    listed: BTreeMap<(Which, i32), i64>,
    confirmed: BTreeMap<(Which, i32), i64>,
}

impl Ends {
    fn confirmed(&self, which: Which, partition: i32) -> Option<i64> {
        self.confirmed.get(&(which, partition)).copied()
    }

    fn confirm(&mut self, source: &mut dyn Source, partitions: &[i32]) {
        for &partition in partitions {
            for which in [Which::Usage, Which::Commands] {
                if self.confirmed.contains_key(&(which, partition)) {
                    continue;
                }
                if let Some(high) = source.fetched_end(which, partition) {
                    let listed = self.listed.get(&(which, partition)).copied().unwrap_or(0);
                    self.confirmed.insert((which, partition), high.max(listed));
                }
            }
        }
    }
}

/// The group offsets for what checkpoints committed, the latest per partition.
fn group_offsets(committed: &[(i32, i64, i64)]) -> Vec<(i32, i64, i64)> {
    let latest: BTreeMap<i32, (i64, i64)> = committed
        .iter()
        .map(|&(partition, usage, commands)| (partition, (usage, commands)))
        .collect();
    latest
        .into_iter()
        .map(|(partition, (usage, commands))| (partition, usage, commands))
        .collect()
}

/// How long the notifier may go on sending after the last flush; what it has not sent by
/// then stays pending in ClickHouse for the next start.
const NOTIFIER_GRACE: Duration = Duration::from_secs(15);

/// Consumes until `shutdown` is set, or, with `drain`, until everything up to the end
/// offsets seen at start is applied and committed.
pub fn run(
    config: Config,
    rules: Rules,
    drain: bool,
    shutdown: Arc<AtomicBool>,
    rt: Handle,
    endpoint: crate::status::Endpoint<RunMetrics>,
) -> anyhow::Result<Summary> {
    let crate::status::Endpoint {
        status,
        metrics,
        owner,
        ..
    } = endpoint;
    let store = store::client(&config.clickhouse);
    rt.block_on(store::check(&store)).map_err(|e| {
        // A TLS failure is a setting, which the error names; anything else may be a
        // schema that is not there yet.
        let hint = if e.is_tls() {
            ""
        } else {
            "; run `tally migrate` first"
        };
        anyhow::Error::new(e).context(format!(
            "ClickHouse at {} (database `{}`) is not ready{hint}",
            config.clickhouse.url, config.clickhouse.database
        ))
    })?;
    kafka::check_access(&config.kafka)?;
    let notifier = crate::notify::Notifier::spawn_counted(
        &rt,
        &config.smtp,
        &config.notify,
        store::client(&config.clickhouse),
        metrics.alert_counters(),
    )
    .context("cannot start the low-credit email notifier")?;
    let hooks = crate::notify::webhooks::WebhookWorker::spawn_on(
        &rt,
        &config.webhooks,
        store::client(&config.clickhouse),
    )
    .context("cannot start the webhook worker")?;
    let kafka_config = config.kafka.clone();
    let tick_interval = config.pipeline.tick_interval;
    let stream = format!(
        "{}+{}",
        kafka_config.usage_topic, kafka_config.commands_topic
    );
    // Before any partition is claimed: another segment size would mix two cuttings of the
    // same rows, so it stops start-up instead of being retried like an outage.
    rt.block_on(checkpoint::check_segment_size(
        &store,
        &stream,
        config.pipeline.rollup_segment_records,
    ))
    .context("invalid configuration")?;
    let advertise = if config.status.advertise.is_empty() {
        config.status.listen.clone()
    } else {
        config.status.advertise.clone()
    };
    let claim_info = serde_json::to_string(&crate::holds::ClaimInfo {
        advertise,
        pid: std::process::id(),
    })
    .context("claim info")?;
    let email_context = Arc::new(alerting::Context {
        rules: rules.clone(),
        offers: config.offers.clone(),
    });
    let (views, asks) = view::Views::new();
    let target = store::cluster::Target::new(&config.clickhouse);
    let mut p = Pipeline::new(Env {
        store: Arc::new(clickhouse_edge::ClickHouseStore {
            client: store,
            target,
            stream: stream.clone(),
        }),
        outbox: Arc::new(kafka_edge::KafkaOutbox::new(&kafka_config)),
        clock: Arc::new(edges::SystemClock),
        rules,
        config,
        rt: Exec::Shared(rt),
        stream,
        notifier: Some(notifier),
        hooks: Some(hooks),
        email_context,
        metrics,
        owner: owner.clone(),
        views: views.clone(),
        asks,
        claim_info,
    });
    let mut source = kafka_edge::KafkaSource::new(&kafka_config)?;
    let ends = Ends {
        listed: source.end_offsets()?,
        confirmed: BTreeMap::new(),
    };
    let partition_count = ends
        .listed
        .keys()
        .filter(|(which, _)| *which == Which::Usage)
        .count() as i32;
    p.partition_count = partition_count;
    owner.set_checker(view::checker(
        views,
        view::CheckRules {
            rules: p.env.rules.clone(),
            partitions: partition_count,
            partitioner: kafka_config.partitioner,
        },
    ));
    match kafka_config.assignment.partitions() {
        None => source.subscribe()?,
        Some(listed) => {
            // This process owns these partitions outright: no group rebalances.
            let partitions = kafka_edge::listed_partitions(listed, &ends.listed);
            if let Some(missing) = partitions
                .iter()
                .find(|p| !ends.listed.contains_key(&(Which::Usage, **p)))
            {
                bail!(
                    "kafka.assignment names partition {missing}, but topic `{}` has no such partition",
                    kafka_config.usage_topic
                );
            }
            p.rebalance(&mut source, Rebalance::Assign(partitions));
        }
    }
    tracing::info!(
        brokers = %kafka_config.brokers,
        group = %kafka_config.group_id,
        usage_topic = %kafka_config.usage_topic,
        commands_topic = %kafka_config.commands_topic,
        drain,
        "consuming"
    );

    // A drain shows how far it is; a run that never ends has `tally status` for that.
    let progress = drain.then(|| {
        crate::progress::Progress::new("drain", "records", p.env.config.pipeline.progress_interval)
    });
    let mut driver = Driver {
        drain,
        ends,
        progress,
        paused: false,
        // A drain reads up to fixed ends, so it sends no ticks of its own.
        tick_every: Some(tick_interval).filter(|t| !drain && !t.is_zero()),
        last_tick: None,
        first_wait: POLL_WAIT,
        status: status.clone(),
    };
    set_state(&status, ProcessState::Running);
    while !shutdown.load(Ordering::Relaxed) {
        if turn(&mut p, &mut source, &mut driver) == Turn::Done {
            break;
        }
    }

    set_state(&status, ProcessState::Stopping);
    if let Some(mut progress) = driver.progress.take() {
        let (done, left) = p.drain_progress(&driver.ends);
        progress.finish(done, left, left.map(|l| l + done));
    }
    let offsets = p.flush_before_leaving(if drain { 20 } else { 10 });
    source.commit(&offsets, true);
    // Closing the consumer (leaving the group) waits on librdkafka in 100 ms polls; the
    // workers stop and the partitions' state is freed meanwhile.
    let closing = std::thread::Builder::new()
        .name("tally-close".into())
        .spawn(move || drop(source))
        .map_err(|e| tracing::warn!(error = %e, "closing the consumer on the run thread"))
        .ok();
    if let Some(notifier) = p.env.notifier.take() {
        let report = p.env.rt.block_on(notifier.shutdown(NOTIFIER_GRACE));
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            left_pending = report.left_pending,
            left_held = report.left_held,
            "notifier stopped"
        );
    }
    if let Some(hooks) = p.env.hooks.take() {
        let report = p.env.rt.block_on(hooks.shutdown(NOTIFIER_GRACE));
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            left_pending = report.left_pending,
            "webhook worker stopped"
        );
    }
    let summary = Summary {
        counts: p.counts(),
        flushes: p.summary.flushes,
    };
    drop(p);
    // Everything is committed by now: a close that went wrong costs the group a session
    // timeout, not a result.
    if let Some(closing) = closing {
        if closing.join().is_err() {
            tracing::warn!("closing the Kafka consumer panicked");
        }
    }
    Ok(summary)
}

/// What a [`Pipeline`] is given: its edges, its settings and the process's shared parts.
struct Env {
    store: Arc<dyn Store>,
    outbox: Arc<dyn Outbox>,
    clock: Arc<dyn Clock>,
    rules: Rules,
    config: Config,
    rt: Exec,
    stream: String,
    /// Mails low-credit alerts in the background; never blocks consumption.
    /// Taken at shutdown to stop it.
    notifier: Option<crate::notify::NotifierHandle>,
    /// Sends signed webhooks in the background; taken at shutdown to stop it.
    hooks: Option<crate::notify::webhooks::WebhookWorkerHandle>,
    /// The plans and offers the emails' recommendations come from.
    email_context: Arc<alerting::Context>,
    metrics: RunMetrics,
    /// Answers checks and hands decisions on holds to their callers.
    owner: Arc<crate::holds::owner::Owner>,
    /// What checks read, published after each pass.
    views: Arc<view::Views>,
    /// Accounts checks wait for, published at the next pass.
    asks: view::Asks,
    /// What the claim rows say about this process (`ClaimInfo` as JSON).
    claim_info: String,
}

impl Pipeline {
    fn new(env: Env) -> Pipeline {
        let now = env.clock.now();
        Pipeline {
            env,
            parts: BTreeMap::new(),
            writing: VecDeque::new(),
            last_commit: None,
            last_built: Earlier::Committed,
            pending: VecDeque::new(),
            behind_failed: 0,
            last_any_received: now,
            last_flush: now,
            applied_since_flush: 0,
            retry_at: None,
            backoff: Duration::from_millis(200),
            summary: Summary::default(),
            last_checkpoint: None,
            partition_count: 0,
            forward_log: screen::LoggedSources::default(),
            forwarded_ends: BTreeMap::new(),
            claiming: BTreeMap::new(),
            claimed: BTreeMap::new(),
            decided_since: None,
        }
    }
}

/// The run loop's own state between turns.
struct Driver {
    drain: bool,
    ends: Ends,
    progress: Option<crate::progress::Progress>,
    /// Consumption is paused while a flush fails.
    paused: bool,
    tick_every: Option<Duration>,
    last_tick: Option<Instant>,
    /// The first poll's wait: short while something is due soon (an event whose max_idle
    /// runs out, a flush in flight whose end lets the next one start, a decision a caller
    /// waits for), so a hold's answer is not late by a whole poll.
    first_wait: Duration,
    status: crate::status::Shared,
}

#[derive(Debug, PartialEq, Eq)]
enum Turn {
    Going,
    /// A drain applied and committed everything up to its ends.
    Done,
}

/// One turn of the run loop: rebalances and claims, a batch of polls, applying, the
/// checks' view, the flushes and what they committed.
fn turn(p: &mut Pipeline, source: &mut dyn Source, d: &mut Driver) -> Turn {
    while let Some(change) = source.rebalance() {
        p.rebalance(source, change);
        // A revoke leaves no failed flush to retry, and a new assignment is not paused.
        if d.paused {
            d.paused = false;
            set_state(&d.status, ProcessState::Running);
        }
    }
    if !p.claiming.is_empty() {
        p.claim_due(source);
    }
    let mut polled = 0;
    while polled < POLL_BATCH {
        let timeout = if polled == 0 {
            d.first_wait
        } else {
            Duration::ZERO
        };
        match source.poll(timeout, &mut |record| p.ingest(record)) {
            Some(Ok(Ingest::Queued)) => polled += 1,
            Some(Ok(Ingest::Full { which, partition })) => {
                // At once: the next poll must not add to it.
                let side = [(which, partition)];
                source.pause(&side);
                p.env.metrics.paused(&side, metrics::pause::FULL);
                polled += 1;
            }
            Some(Ok(Ingest::Rewind {
                which,
                partition,
                to,
            })) => {
                source.seek(which, partition, to);
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                break;
            }
            None => break,
        }
    }
    p.export_queues();
    let now = p.env.clock.now();
    if let Some(every) = d.tick_every {
        if !p.parts.is_empty() && d.last_tick.is_none_or(|t| now.duration_since(t) >= every) {
            d.last_tick = Some(now);
            let partitions: Vec<i32> = p.parts.keys().copied().collect();
            p.env.outbox.ticks(&partitions, p.env.clock.utc());
        }
    }
    p.apply_ready(now);
    refresh_highs(source, p, now);
    p.apply_ready(now);
    p.publish();
    if d.drain {
        let partitions: Vec<i32> = p.parts.keys().copied().collect();
        d.ends.confirm(source, &partitions);
    }
    let finished = p.finish_flush(false);
    if p.flush_due(now) {
        p.start_flush();
    }
    match finished.map(|committed| group_offsets(&committed)) {
        Ok(offsets) if offsets.is_empty() => {}
        Ok(offsets) => {
            if d.paused {
                d.paused = false;
                set_state(&d.status, ProcessState::Running);
                tracing::info!("writes succeed again, consumption resumed");
            }
            source.commit(&offsets, false);
        }
        Err(e) => {
            d.paused = true;
            set_state(
                &d.status,
                ProcessState::Paused {
                    reason: format!("{e:#}"),
                },
            );
            tracing::warn!(error = %format!("{e:#}"), "flush failed, consumption paused, retrying");
        }
    }
    settle_fetch(p, source, d.paused);
    p.report(&mut d.status.lock().unwrap_or_else(|e| e.into_inner()));
    p.export_lag();
    if let Some(progress) = d.progress.as_mut() {
        let (done, left) = p.drain_progress(&d.ends);
        progress.update(done, left, left.map(|l| l + done));
    }
    // Up to the instant an event's max_idle runs out, and short while something is due
    // soon (a flush in flight whose end lets the next one start, a decision a caller
    // waits for), so a hold's answer is not late by a whole poll.
    d.first_wait = p.poll_wait(p.env.clock.now());
    if d.drain && p.drained(&d.ends) {
        // Everything up to the end offsets is applied; flush until nothing is left.
        match p.flush_now() {
            Ok(offsets) if offsets.is_empty() => return Turn::Done,
            Ok(offsets) => source.commit(&offsets, true),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "flush failed, retrying"),
        }
    }
    Turn::Going
}

/// Updates the known end of every side another side is waiting on, from the consumer's
/// last fetch responses (no request is sent).
fn refresh_highs(source: &mut dyn Source, p: &mut Pipeline, now: Instant) {
    let (usage_topic, commands_topic) = (
        p.env.config.kafka.usage_topic.clone(),
        p.env.config.kafka.commands_topic.clone(),
    );
    // While a flush is pending, consumption is paused on purpose: nothing is stalled.
    let paused = !p.pending.is_empty();
    let last_any_received = p.last_any_received;
    for work in p.parts.values_mut() {
        for (which, topic) in [
            (Which::Usage, &usage_topic),
            (Which::Commands, &commands_topic),
        ] {
            let partition = work.partition;
            let end = source.fetched_end(which, partition);
            let side = work.side_mut(which);
            side.observe_end(end, now);
            // Behind the end and nothing arriving, on this side or any other: the broker
            // skipped to a batch after our position, or there is none after it (see
            // `Side::rewound_at`). While other partitions receive, a side may just be
            // starved: tansu shares one byte budget among all partitions of a fetch.
            let Some(end) = side.high else { continue };
            // A side paused because its queue is full receives nothing on purpose too.
            let quiet = now.duration_since(side.last_received);
            let stuck_after_resume = side.waits_since_resume() && quiet >= merge::RESUME_STALL;
            let stalled = quiet >= STALL && now.duration_since(last_any_received) >= STALL;
            if !paused
                && side.fetch == merge::Fetch::Open
                && side.received_next < end
                && (stuck_after_resume || stalled)
            {
                let position = side.received_next;
                side.last_received = now;
                if stuck_after_resume {
                    // The batch holding the position has none after it, and may be larger
                    // than the resume's short lead-in: read from the general one at once.
                    side.resumed_at = None;
                }
                let Some(to) = side.rewind(LEAD_IN) else {
                    continue;
                };
                tracing::warn!(
                    topic = %topic,
                    partition,
                    position,
                    end,
                    from = ?to,
                    "no records arrive before the end; reading the partition again"
                );
                source.seek(which, partition, to);
            }
        }
    }
}

/// Pauses and resumes the fetch of each side as its queue and the flushes require (see
/// [`merge::Side::settle_fetch`]): every side while flushes fail, and a full side until
/// the merge drained it, also after a failure ends. Partitions claimed but not yet
/// assigned to the source are left until they are.
fn settle_fetch(p: &mut Pipeline, source: &mut dyn Source, failing: bool) {
    let bound = p.bound();
    let now = p.env.clock.now();
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for work in p.parts.values_mut() {
        if p.claimed.contains_key(&work.partition) {
            continue;
        }
        for which in [Which::Usage, Which::Commands] {
            match work.side_mut(which).settle_fetch(bound, failing, now) {
                Some(merge::Change::Pause) => pause.push((which, work.partition)),
                Some(merge::Change::Resume) => resume.push((which, work.partition)),
                None => {}
            }
        }
    }
    let reason = if failing {
        metrics::pause::FLUSH_FAILED
    } else {
        metrics::pause::FULL
    };
    p.env.metrics.paused(&pause, reason);
    source.pause(&pause);
    source.resume(&resume);
}

fn set_state(status: &crate::status::Shared, state: ProcessState) {
    status.lock().unwrap_or_else(|e| e.into_inner()).state = state;
}
