//! `tally run`: consume both topics, apply events through the core, and flush outputs and
//! the checkpoint to ClickHouse. One thread owns the consumer; rebalance callbacks run on
//! it, inside `poll`, so a revoke flushes and commits before the partitions go.

pub mod alerting;
pub mod merge;
pub mod metrics;
pub mod partition;
pub mod rollup;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tally_core::Rules;
use tokio::runtime::Handle;

use self::merge::{Pending, Which};
use self::metrics::{phase, RunMetrics};
use self::partition::{Counts, PartitionWork};
use crate::config::Config;
use crate::kafka::{self, DeadLetter};
use crate::store::{self, checkpoint, writes};

/// Events applied per partition between two polls, so polling stays regular.
const APPLY_BUDGET: usize = 10_000;
/// Messages taken from the consumer before applying them.
const POLL_BATCH: usize = 5_000;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a side may sit behind its known end with nothing arriving before it is read
/// again from the start.
const STALL: Duration = Duration::from_secs(2);

/// What a run did, for the caller's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub counts: Counts,
    pub flushes: u64,
}

/// A flush that has been built and not yet committed; retried as it is until it lands.
struct Flush {
    batch: writes::Batch,
    dead_letters: Vec<DeadLetter>,
    dead_letters_sent: bool,
    partitions: Vec<i32>,
    /// The flush's alerts as emails, once recorded; handed to the notifier after commit.
    mails: Option<Vec<crate::notify::Alert>>,
    /// Records (every outcome) the flush commits.
    events: usize,
}

struct Pipeline {
    rules: Rules,
    config: Config,
    store: clickhouse::Client,
    producer: FutureProducer,
    rt: Handle,
    stream: String,
    parts: BTreeMap<i32, PartitionWork>,
    pending: Option<Flush>,
    last_flush: Instant,
    applied_since_flush: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
    shutdown: Arc<AtomicBool>,
    summary: Summary,
    last_checkpoint: Option<DateTime<Utc>>,
    /// Mails low-credit alerts in the background; never blocks consumption.
    /// Taken at shutdown to stop it.
    notifier: Option<crate::notify::NotifierHandle>,
    metrics: RunMetrics,
}

impl Pipeline {
    fn topics(&self) -> (&str, &str) {
        (
            &self.config.kafka.usage_topic,
            &self.config.kafka.commands_topic,
        )
    }

    /// Loads the state of newly assigned partitions and returns where to start reading.
    /// Retries while ClickHouse is unavailable: nothing may be read before the state is.
    fn assign(&mut self, partitions: &BTreeSet<i32>) -> BTreeMap<i32, (Option<i64>, Option<i64>)> {
        let mut starts = BTreeMap::new();
        for &partition in partitions {
            let mut backoff = Duration::from_millis(200);
            loop {
                let now = Utc::now().timestamp_micros().max(0) as u64;
                let window = self.rules.dedup_window.num_milliseconds();
                let rules = &self.rules;
                let loaded = self.rt.block_on(checkpoint::claim_and_load(
                    &self.store,
                    &self.stream,
                    partition as u32,
                    now,
                    window,
                    |arrival_high| {
                        let clock =
                            chrono::DateTime::from_timestamp(arrival_high, 0).unwrap_or_default();
                        partition::first_open_day(clock, rules)
                    },
                ));
                match loaded {
                    Ok(restored) => {
                        let metrics = self.metrics.partition(self.topics(), partition);
                        tracing::info!(
                            partition,
                            accounts = restored.book.accounts.len(),
                            usage_offset = ?restored.usage_offset,
                            commands_offset = ?restored.commands_offset,
                            "partition assigned"
                        );
                        starts.insert(partition, (restored.usage_offset, restored.commands_offset));
                        self.parts
                            .insert(partition, PartitionWork::new(partition, restored, metrics));
                        break;
                    }
                    Err(e) if !self.shutdown.load(Ordering::Relaxed) => {
                        self.metrics.clickhouse_errors.inc();
                        tracing::warn!(partition, error = %e, "cannot load partition state, retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "shutting down before partition state loaded");
                        break;
                    }
                }
            }
        }
        starts
    }

    /// Claims `partitions` and returns the assignment of both topics at their
    /// checkpointed offsets.
    fn claim(&mut self, partitions: &BTreeSet<i32>) -> TopicPartitionList {
        let starts = self.assign(partitions);
        let (usage_topic, commands_topic) = self.topics();
        let mut assignment = TopicPartitionList::new();
        for (partition, (usage, commands)) in starts {
            for (topic, start) in [(usage_topic, usage), (commands_topic, commands)] {
                let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
                if let Err(e) = assignment.add_partition_offset(topic, partition, offset) {
                    tracing::error!(error = %e, "cannot build assignment");
                }
            }
        }
        assignment
    }

    /// Queues one message. Returns `Rewind` when the message skips offsets and the
    /// partition must be read again from its beginning (see [`merge::Side::rewound_at`]).
    fn ingest(&mut self, message: &BorrowedMessage<'_>) -> Ingest {
        let which = if message.topic() == self.config.kafka.usage_topic {
            Which::Usage
        } else {
            Which::Commands
        };
        let Some(work) = self.parts.get_mut(&message.partition()) else {
            return Ingest::Queued;
        };
        let side = work.side_mut(which);
        if message.offset() < side.received_next {
            return Ingest::Queued;
        }
        if message.offset() > side.received_next {
            if side.rewound_at != Some(side.received_next) {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    expected = side.received_next,
                    got = message.offset(),
                    "offsets skipped; reading the partition again from its beginning"
                );
                side.rewound_at = Some(side.received_next);
                return Ingest::Rewind;
            }
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                expected = side.received_next,
                got = message.offset(),
                "offsets skipped again after a rewind; taking the gap as real"
            );
        }
        side.received(message.offset(), Instant::now());
        let arrival = message
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let payload = message.payload().unwrap_or_default();
        side.queue.push_back(Pending {
            offset: message.offset(),
            arrival,
            parsed: tally_core::event::parse(payload, arrival),
            key: message.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            received: Instant::now(),
        });
        Ingest::Queued
    }

    fn apply_ready(&mut self, now: Instant) {
        if self.pending.is_some() {
            return;
        }
        let max_idle = self.config.kafka.max_idle;
        let (usage_topic, commands_topic) = (
            self.config.kafka.usage_topic.clone(),
            self.config.kafka.commands_topic.clone(),
        );
        for work in self.parts.values_mut() {
            let budget = self
                .config
                .pipeline
                .max_batch_events
                .saturating_sub(self.applied_since_flush)
                .min(APPLY_BUDGET);
            self.applied_since_flush += work.apply_ready(
                &self.rules,
                (&usage_topic, &commands_topic),
                now,
                max_idle,
                budget,
            );
        }
    }

    fn flush_due(&self, now: Instant) -> bool {
        match (&self.pending, self.retry_at) {
            (Some(_), Some(at)) => now >= at,
            (Some(_), None) => true,
            (None, _) => {
                self.applied_since_flush >= self.config.pipeline.max_batch_events
                    || now.duration_since(self.last_flush) >= self.config.pipeline.flush_interval
            }
        }
    }

    /// Writes outputs, then the checkpoint. Returns the group offsets to commit to Kafka
    /// once it has landed.
    fn flush(&mut self) -> anyhow::Result<Option<TopicPartitionList>> {
        self.last_flush = Instant::now();
        let started = self.last_flush;
        if self.pending.is_none() {
            let mut batch = writes::Batch::default();
            let mut dead_letters = Vec::new();
            let now_secs = Utc::now().timestamp().max(0) as u32;
            let mut partitions = Vec::new();
            for work in self.parts.values_mut() {
                if work.drain_into(
                    &mut batch,
                    &mut dead_letters,
                    &self.stream,
                    now_secs,
                    self.config.pipeline.snapshot_min_rows,
                ) {
                    partitions.push(work.partition);
                }
            }
            let events = std::mem::take(&mut self.applied_since_flush);
            if partitions.is_empty() {
                return Ok(None);
            }
            self.metrics
                .flush_phase(phase::BUILD, started.elapsed().as_secs_f64());
            self.pending = Some(Flush {
                batch,
                dead_letters,
                dead_letters_sent: false,
                partitions,
                mails: None,
                events,
            });
        }
        let Some(flush) = self.pending.as_mut() else {
            return Ok(None);
        };
        // The phase under way, so a failure is counted against it; each phase that
        // completes is timed as it does (a retried flush skips the phases it finished).
        let mut current = phase::DEAD_LETTERS;
        let metrics = &self.metrics;
        let result = self.rt.block_on(async {
            let mut at = Instant::now();
            let done = |name: &'static str, at: &mut Instant| {
                metrics.flush_phase(name, at.elapsed().as_secs_f64());
                *at = Instant::now();
            };
            if !flush.dead_letters_sent {
                kafka::send_dead_letters(
                    &self.producer,
                    &self.config.kafka.dlq_topic,
                    &flush.dead_letters,
                )
                .await
                .context("dead-letter topic")?;
                flush.dead_letters_sent = true;
                done(phase::DEAD_LETTERS, &mut at);
            }
            current = phase::WRITE_OUTPUTS;
            writes::write_outputs(&self.store, &flush.batch)
                .await
                .context("ClickHouse")?;
            done(phase::WRITE_OUTPUTS, &mut at);
            if flush.mails.is_none() {
                current = phase::ALERTS;
                let mails = alerting::record(&self.store, &flush.batch.alerts)
                    .await
                    .context("ClickHouse: alerts")?;
                flush.mails = Some(mails);
                done(phase::ALERTS, &mut at);
            }
            current = phase::CHECKPOINT;
            writes::commit(&self.store, &flush.batch)
                .await
                .context("ClickHouse")?;
            done(phase::CHECKPOINT, &mut at);
            Ok::<(), anyhow::Error>(())
        });
        if let Err(e) = result {
            self.metrics
                .flush_failures
                .with_label_values(&[current])
                .inc();
            if current != phase::DEAD_LETTERS {
                self.metrics.clickhouse_errors.inc();
            }
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            return Err(e);
        }
        let mut flush = self.pending.take().expect("pending flush checked above");
        self.metrics
            .flush_phase(phase::TOTAL, started.elapsed().as_secs_f64());
        self.metrics.flush_events.observe(flush.events as f64);
        if let Some(mails) = flush.mails.take().filter(|m| !m.is_empty()) {
            for mail in &mails {
                tracing::info!(account = %mail.account, pool = %mail.pool, kind = mail.kind.as_str(), "low-credit alert");
            }
            let submitted = self.notifier.as_ref().map(|n| n.submit(mails));
            if !matches!(submitted, Some(Ok(()))) {
                tracing::error!("the notifier has stopped; alerts stay pending in ClickHouse and are sent at the next start");
            }
        }
        self.retry_at = None;
        self.backoff = Duration::from_millis(200);
        self.summary.flushes += 1;
        self.last_checkpoint = Some(Utc::now());
        let (usage_topic, commands_topic) = self.topics();
        let mut offsets = TopicPartitionList::new();
        for partition in &flush.partitions {
            if let Some(work) = self.parts.get(partition) {
                offsets.add_partition_offset(
                    usage_topic,
                    *partition,
                    Offset::Offset(work.usage.applied_next),
                )?;
                offsets.add_partition_offset(
                    commands_topic,
                    *partition,
                    Offset::Offset(work.commands.applied_next),
                )?;
            }
        }
        for partition in &flush.partitions {
            if let Some(work) = self.parts.get_mut(partition) {
                work.committed(&self.rules);
                if let Some(version) = work.snapshot_pending.take() {
                    // The snapshot holds everything live: older checkpoint rows are dead.
                    // A failure only leaves them for the next snapshot to delete.
                    let pruned = self.rt.block_on(checkpoint::delete_before(
                        &self.store,
                        &self.stream,
                        *partition as u32,
                        version,
                    ));
                    match pruned {
                        Ok(()) => tracing::info!(
                            partition,
                            version,
                            "partition snapshotted; older checkpoint rows deleted"
                        ),
                        Err(e) => {
                            self.metrics.clickhouse_errors.inc();
                            tracing::warn!(partition, version, error = %e, "cannot delete checkpoint rows older than a snapshot")
                        }
                    }
                }
            }
        }
        tracing::debug!(
            ledger_rows = flush.batch.ledger.len(),
            dead_letters = flush.dead_letters.len(),
            "flushed"
        );
        Ok(Some(offsets))
    }

    /// Flushes with retries, for revoke and shutdown; gives up after `attempts`, leaving
    /// the uncommitted tail to be replayed by the next owner.
    fn flush_before_leaving(&mut self, attempts: u32) -> Option<TopicPartitionList> {
        for attempt in 1..=attempts {
            match self.flush() {
                Ok(offsets) => return offsets,
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "flush failed");
                    if attempt < attempts {
                        std::thread::sleep(self.backoff);
                    }
                }
            }
        }
        tracing::error!("giving up the flush; the next owner replays from the last checkpoint");
        self.pending = None;
        None
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
                usage_end: (w.usage.high != i64::MAX).then_some(w.usage.high),
                commands_end: (w.commands.high != i64::MAX).then_some(w.commands.high),
                waiting: w.wait.map(|(which, _)| which.as_str().to_string()),
                waiting_for: w.wait.map(|(which, _)| which.other().as_str().to_string()),
                wait_reason: w.wait.map(|(_, reason)| reason.to_string()),
            })
            .collect();
    }

    /// Sets every partition's lag gauges: its end as the last fetch response gave it,
    /// minus the next offset to apply.
    fn export_lag(&mut self) {
        for work in self.parts.values_mut() {
            let known = |high: i64| (high != i64::MAX).then_some(high);
            let (usage_end, usage_next) = (known(work.usage.high), work.usage.applied_next);
            let (commands_end, commands_next) =
                (known(work.commands.high), work.commands.applied_next);
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
        self.pending = None;
        self.applied_since_flush = 0;
    }

    /// Every assigned partition has applied everything up to `ends` and nothing is
    /// waiting to be written. An end is only known once a fetch response confirmed it.
    fn drained(&self, ends: &Ends) -> bool {
        !self.parts.is_empty()
            && self.pending.is_none()
            && self.parts.values().all(|work| {
                [Which::Usage, Which::Commands].iter().all(|&which| {
                    let side = match which {
                        Which::Usage => &work.usage,
                        Which::Commands => &work.commands,
                    };
                    ends.confirmed(which, work.partition)
                        .is_some_and(|end| side.applied_next >= end)
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

    fn confirm(
        &mut self,
        consumer: &BaseConsumer<TallyContext>,
        topics: (&str, &str),
        partitions: &[i32],
    ) {
        for &partition in partitions {
            for (which, topic) in [(Which::Usage, topics.0), (Which::Commands, topics.1)] {
                if self.confirmed.contains_key(&(which, partition)) {
                    continue;
                }
                if let Some(high) = kafka::fetched_high_watermark(consumer, topic, partition) {
                    let listed = self.listed.get(&(which, partition)).copied().unwrap_or(0);
                    self.confirmed.insert((which, partition), high.max(listed));
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ingest {
    Queued,
    Rewind,
}

struct TallyContext {
    pipeline: Arc<Mutex<Pipeline>>,
}

impl TallyContext {
    fn lock(&self) -> MutexGuard<'_, Pipeline> {
        lock(&self.pipeline)
    }
}

fn lock(pipeline: &Mutex<Pipeline>) -> MutexGuard<'_, Pipeline> {
    pipeline
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for TallyContext {}

impl ConsumerContext for TallyContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: BTreeSet<i32> =
                    tpl.elements().iter().map(|e| e.partition()).collect();
                let assignment = self.lock().claim(&partitions);
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "cannot assign partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut pipeline = self.lock();
                let offsets = pipeline.flush_before_leaving(5);
                let revoked = pipeline.parts.len();
                pipeline.release_all();
                drop(pipeline);
                if let Some(offsets) = offsets {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!(error = %e, "cannot commit group offsets on revoke");
                    }
                }
                tracing::info!(partitions = revoked, "partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "cannot unassign partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                self.lock().release_all();
                let _ = consumer.unassign();
            }
        }
    }
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
    status: crate::status::Shared,
    metrics: RunMetrics,
) -> anyhow::Result<Summary> {
    let store = store::client(&config.clickhouse);
    rt.block_on(store::check(&store)).with_context(|| {
        format!(
            "ClickHouse at {} (database `{}`) is not ready; run `tally migrate` first",
            config.clickhouse.url, config.clickhouse.database
        )
    })?;
    let producer = kafka::producer(&config.kafka)?;
    let notifier = crate::notify::Notifier::spawn_counted(
        &rt,
        &config.smtp,
        &config.notify,
        store::client(&config.clickhouse),
        metrics.alert_counters(),
    )
    .context("cannot start the low-credit email notifier")?;
    let kafka_config = config.kafka.clone();
    let tick_interval = config.pipeline.tick_interval;
    let stream = format!(
        "{}+{}",
        kafka_config.usage_topic, kafka_config.commands_topic
    );
    let pipeline = Arc::new(Mutex::new(Pipeline {
        rules,
        config,
        store,
        producer,
        rt,
        stream,
        parts: BTreeMap::new(),
        notifier: Some(notifier),
        pending: None,
        last_flush: Instant::now(),
        applied_since_flush: 0,
        retry_at: None,
        backoff: Duration::from_millis(200),
        shutdown: shutdown.clone(),
        summary: Summary::default(),
        last_checkpoint: None,
        metrics,
    }));
    let consumer: BaseConsumer<TallyContext> = kafka::consumer_config(&kafka_config)
        .create_with_context(TallyContext {
            pipeline: pipeline.clone(),
        })
        .context("cannot create the Kafka consumer")?;
    let mut ends = Ends {
        listed: end_offsets(&consumer, &kafka_config)?,
        confirmed: BTreeMap::new(),
    };
    match kafka_config.assignment.partitions() {
        None => consumer
            .subscribe(&[&kafka_config.usage_topic, &kafka_config.commands_topic])
            .context("cannot subscribe")?,
        Some(listed) => {
            // This process owns these partitions outright: no group rebalances.
            let partitions: BTreeSet<i32> = match listed {
                Some(chosen) => chosen.into_iter().collect(),
                None => ends
                    .listed
                    .keys()
                    .map(|(_, partition)| *partition)
                    .collect(),
            };
            if let Some(missing) = partitions
                .iter()
                .find(|p| !ends.listed.contains_key(&(Which::Usage, **p)))
            {
                bail!(
                    "kafka.assignment names partition {missing}, but topic `{}` has no such partition",
                    kafka_config.usage_topic
                );
            }
            let assignment = lock(&pipeline).claim(&partitions);
            consumer
                .assign(&assignment)
                .context("cannot assign partitions")?;
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

    let mut paused = false;
    // A drain reads up to fixed ends, so it sends no ticks of its own.
    let tick_every = Some(tick_interval).filter(|t| !drain && !t.is_zero());
    let mut last_tick: Option<Instant> = None;
    set_state(&status, "running", None);
    while !shutdown.load(Ordering::Relaxed) {
        let mut polled = 0;
        while polled < POLL_BATCH {
            let timeout = if polled == 0 {
                Duration::from_millis(20)
            } else {
                Duration::ZERO
            };
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    if lock(&pipeline).ingest(&message) == Ingest::Rewind {
                        let (topic, partition) = (message.topic().to_string(), message.partition());
                        drop(message);
                        if let Err(e) = consumer.seek(
                            &topic,
                            partition,
                            Offset::Beginning,
                            Duration::from_secs(10),
                        ) {
                            tracing::error!(topic = %topic, partition, error = %e, "cannot rewind");
                        }
                        break;
                    }
                    polled += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        let now = Instant::now();
        let mut p = lock(&pipeline);
        if let Some(every) = tick_every {
            if !p.parts.is_empty() && last_tick.is_none_or(|t| now.duration_since(t) >= every) {
                last_tick = Some(now);
                let partitions: Vec<i32> = p.parts.keys().copied().collect();
                kafka::enqueue_ticks(&p.producer, &kafka_config, &partitions, Utc::now());
            }
        }
        p.apply_ready(now);
        refresh_highs(&consumer, &mut p, now);
        p.apply_ready(now);
        if drain {
            let partitions: Vec<i32> = p.parts.keys().copied().collect();
            ends.confirm(&consumer, p.topics(), &partitions);
        }
        if p.flush_due(now) {
            match p.flush() {
                Ok(offsets) => {
                    if paused {
                        paused = false;
                        set_state(&status, "running", None);
                        resume(&consumer);
                        // Nothing was fetched while paused: the ends known are old.
                        for work in p.parts.values_mut() {
                            work.usage.forget_idle();
                            work.commands.forget_idle();
                        }
                        tracing::info!("writes succeed again, consumption resumed");
                    }
                    if let Some(offsets) = offsets {
                        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                            tracing::warn!(error = %e, "cannot commit group offsets");
                        }
                    }
                }
                Err(e) => {
                    if !paused {
                        paused = true;
                        pause(&consumer);
                    }
                    set_state(&status, "paused", Some(format!("{e:#}")));
                    tracing::warn!(error = %format!("{e:#}"), "flush failed, consumption paused, retrying");
                }
            }
        }
        p.report(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
        p.export_lag();
        if drain && p.drained(&ends) {
            // Everything up to the end offsets is applied; flush until nothing is left.
            match p.flush() {
                Ok(Some(offsets)) => {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!(error = %e, "cannot commit group offsets");
                    }
                }
                Ok(None) => break,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "flush failed, retrying"),
            }
        }
    }

    set_state(&status, "stopping", None);
    let offsets = lock(&pipeline).flush_before_leaving(if drain { 20 } else { 10 });
    if let Some(offsets) = offsets {
        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
            tracing::warn!(error = %e, "cannot commit group offsets at shutdown");
        }
    }
    drop(consumer);
    let mut p = lock(&pipeline);
    if let Some(notifier) = p.notifier.take() {
        let report = p.rt.block_on(notifier.shutdown(NOTIFIER_GRACE));
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            left_pending = report.left_pending,
            left_held = report.left_held,
            "notifier stopped"
        );
    }
    let summary = Summary {
        counts: p.counts(),
        flushes: p.summary.flushes,
    };
    Ok(summary)
}

/// The name checkpoints are stored under: the pair of topics they cover.
pub fn stream_name(config: &crate::config::KafkaConfig) -> String {
    format!("{}+{}", config.usage_topic, config.commands_topic)
}

/// End offsets of every partition of both topics now; both must have the same partitions.
fn end_offsets(
    consumer: &BaseConsumer<TallyContext>,
    config: &crate::config::KafkaConfig,
) -> anyhow::Result<BTreeMap<(Which, i32), i64>> {
    let mut ends = BTreeMap::new();
    let mut counts = Vec::new();
    for (which, topic) in [
        (Which::Usage, &config.usage_topic),
        (Which::Commands, &config.commands_topic),
    ] {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| {
                format!(
                    "cannot read metadata of topic `{topic}` from {}",
                    config.brokers
                )
            })?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
            bail!("topic `{topic}` does not exist; run `tally migrate`");
        };
        if meta.partitions().is_empty() {
            bail!("topic `{topic}` does not exist or has no partitions; run `tally migrate`");
        }
        counts.push(meta.partitions().len());
        for partition in meta.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .with_context(|| format!("cannot read the end of {topic}/{}", partition.id()))?;
            ends.insert((which, partition.id()), high);
        }
    }
    if counts[0] != counts[1] {
        bail!(
            "topics `{}` ({} partitions) and `{}` ({} partitions) must have the same number of \
             partitions: an account's usage and commands must reach the same consumer",
            config.usage_topic,
            counts[0],
            config.commands_topic,
            counts[1]
        );
    }
    Ok(ends)
}

/// Updates the known end of every side another side is waiting on, from the consumer's
/// last fetch responses (no request is sent).
fn refresh_highs(consumer: &BaseConsumer<TallyContext>, p: &mut Pipeline, now: Instant) {
    let (usage_topic, commands_topic) = (
        p.config.kafka.usage_topic.clone(),
        p.config.kafka.commands_topic.clone(),
    );
    // While a flush is pending, consumption is paused on purpose: nothing is stalled.
    let paused = p.pending.is_some();
    for work in p.parts.values_mut() {
        for (which, topic) in [
            (Which::Usage, &usage_topic),
            (Which::Commands, &commands_topic),
        ] {
            let partition = work.partition;
            let side = work.side_mut(which);
            side.observe_end(
                kafka::fetched_high_watermark(consumer, topic, partition),
                now,
            );
            // Behind the end and nothing arriving: the broker skipped to a batch after
            // our position, or there is none after it (see `Side::rewound_at`).
            if !paused
                && side.received_next < side.high
                && side.high != i64::MAX
                && now.duration_since(side.last_received) >= STALL
                && side.rewound_at != Some(side.received_next)
            {
                tracing::warn!(
                    topic = %topic,
                    partition,
                    position = side.received_next,
                    end = side.high,
                    "no records arrive before the end; reading the partition again from its beginning"
                );
                side.rewound_at = Some(side.received_next);
                side.last_received = now;
                if let Err(e) =
                    consumer.seek(topic, partition, Offset::Beginning, Duration::from_secs(10))
                {
                    tracing::error!(topic = %topic, partition, error = %e, "cannot rewind");
                }
            }
        }
    }
}

fn set_state(status: &crate::status::Shared, state: &str, reason: Option<String>) {
    let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
    status.state = state.to_string();
    status.reason = reason;
}

fn pause(consumer: &BaseConsumer<TallyContext>) {
    if let Ok(assignment) = consumer.assignment() {
        if let Err(e) = consumer.pause(&assignment) {
            tracing::warn!(error = %e, "cannot pause consumption");
        }
    }
}

fn resume(consumer: &BaseConsumer<TallyContext>) {
    if let Ok(assignment) = consumer.assignment() {
        if let Err(e) = consumer.resume(&assignment) {
            tracing::warn!(error = %e, "cannot resume consumption");
        }
    }
}
