//! The run's [`Source`] and [`Outbox`] on Kafka (rdkafka). The rebalance callbacks only
//! hand the change to the run thread over a bounded channel: the run thread claims the
//! partitions (or flushes before giving them up) and then assigns (or unassigns), which
//! librdkafka waits for before the group goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;

use super::edges::{BoxFuture, Headers, Ingest, Outbox, Rebalance, Record, Source};
use super::merge::{Rewind, Which};
use crate::config::KafkaConfig;
use crate::kafka::{self, Outgoing};

/// Rebalance changes waiting for the run thread. The group waits for the run thread's
/// assign or unassign before it changes again, so a few are plenty.
const REBALANCES: usize = 8;

/// How long an end read from librdkafka is answered again without asking it. Each read
/// takes librdkafka's client-wide write lock (the topic lookup), which its broker threads
/// contend on, and the run loop asks for every side at every turn: 6.8% of a drain's
/// samples (docs/benchmarks.md, session 17). A millisecond is far below anything the ends
/// decide (`kafka.max_idle`, the stalls).
const FETCHED_END_REUSE: Duration = Duration::from_millis(1);

/// Hands rebalances to the run thread; does no work itself.
pub struct TallyContext {
    rebalances: SyncSender<Rebalance>,
    /// Set when the consumer closes: the run thread has flushed and released everything
    /// and polls no more, while closing waits for the revoke's unassign.
    closing: AtomicBool,
}

impl ClientContext for TallyContext {}

impl ConsumerContext for TallyContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if self.closing.load(Ordering::Relaxed) {
            if let Err(e) = consumer.unassign() {
                tracing::warn!(error = %e, "cannot unassign partitions while closing");
            }
            return;
        }
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                Rebalance::Assign(tpl.elements().iter().map(|e| e.partition()).collect())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if consumer.assignment_lost() => {
                tracing::warn!("partitions lost to the group: dropping uncommitted work");
                Rebalance::Failed
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke,
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                Rebalance::Failed
            }
        };
        // The callback runs inside `poll`, on the run thread itself: it must never wait.
        if let Err(TrySendError::Full(change) | TrySendError::Disconnected(change)) =
            self.rebalances.try_send(change)
        {
            tracing::error!(change = ?change, "rebalance dropped: the run thread is not taking them");
        }
    }
}

pub struct KafkaSource {
    consumer: BaseConsumer<TallyContext>,
    rebalances: Receiver<Rebalance>,
    usage_topic: String,
    commands_topic: String,
    /// The topics' names as librdkafka takes them, made once.
    topics_c: [CString; 2],
    /// The ends last read from librdkafka.
    ends: KnownEnds,
    brokers: String,
}

impl KafkaSource {
    pub fn new(config: &KafkaConfig) -> anyhow::Result<KafkaSource> {
        let (sender, rebalances) = std::sync::mpsc::sync_channel(REBALANCES);
        let consumer: BaseConsumer<TallyContext> = kafka::consumer_config(config)
            .create_with_context(TallyContext {
                rebalances: sender,
                closing: AtomicBool::new(false),
            })
            .context("cannot create the Kafka consumer")?;
        let c_name = |topic: &str| {
            CString::new(topic).with_context(|| format!("topic `{topic}` holds a NUL byte"))
        };
        Ok(KafkaSource {
            consumer,
            rebalances,
            usage_topic: config.usage_topic.clone(),
            commands_topic: config.commands_topic.clone(),
            topics_c: [
                c_name(&config.usage_topic)?,
                c_name(&config.commands_topic)?,
            ],
            ends: KnownEnds::default(),
            brokers: config.brokers.clone(),
        })
    }

    /// Joins the group on both topics; assignments come as [`Rebalance`]s.
    pub fn subscribe(&self) -> anyhow::Result<()> {
        self.consumer
            .subscribe(&[&self.usage_topic, &self.commands_topic])
            .context("cannot subscribe")
    }

    fn topic(&self, which: Which) -> &str {
        match which {
            Which::Usage => &self.usage_topic,
            Which::Commands => &self.commands_topic,
        }
    }

    /// The list of these sides, for `pause` and `resume`.
    fn sides(&self, sides: &[(Which, i32)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &(which, partition) in sides {
            list.add_partition(self.topic(which), partition);
        }
        list
    }
}

/// Each side's end as last read from librdkafka, and when, answered again for
/// [`FETCHED_END_REUSE`]. librdkafka raises a side's end before it hands over the records
/// of that fetch, so an end read afresh is never below what was received; a kept one may
/// be, and the side would be taken as at its end while more records wait (with
/// `kafka.max_idle` 0 the other side would go ahead of them). So a kept end is forgotten
/// once a record at or past it arrives.
#[derive(Default)]
struct KnownEnds(FxHashMap<(Which, i32), (Instant, Option<i64>)>);

impl KnownEnds {
    /// The end kept for the side, if read less than [`FETCHED_END_REUSE`] before `now`.
    fn kept(&self, which: Which, partition: i32, now: Instant) -> Option<Option<i64>> {
        let &(at, end) = self.0.get(&(which, partition))?;
        (now.duration_since(at) < FETCHED_END_REUSE).then_some(end)
    }

    fn read(&mut self, which: Which, partition: i32, now: Instant, end: Option<i64>) {
        self.0.insert((which, partition), (now, end));
    }

    fn received(&mut self, which: Which, partition: i32, offset: i64) {
        if let Some(&(_, end)) = self.0.get(&(which, partition)) {
            if end.is_none_or(|end| offset >= end) {
                self.0.remove(&(which, partition));
            }
        }
    }
}

fn offset(to: Rewind) -> Offset {
    match to {
        Rewind::To(offset) => Offset::Offset(offset),
        Rewind::Beginning => Offset::Beginning,
    }
}

impl Source for KafkaSource {
    fn poll(
        &mut self,
        timeout: Duration,
        take: &mut dyn FnMut(&Record<'_>) -> Ingest,
    ) -> Option<Result<Ingest, String>> {
        match self.consumer.poll(timeout)? {
            Ok(message) => {
                let which = if message.topic() == self.usage_topic {
                    Which::Usage
                } else {
                    Which::Commands
                };
                let (partition, offset) = (message.partition(), message.offset());
                self.ends.received(which, partition, offset);
                let record = Record {
                    which,
                    topic: message.topic(),
                    partition,
                    offset,
                    key: message.key(),
                    payload: message.payload().unwrap_or_default(),
                    timestamp: message.timestamp().to_millis(),
                    headers: &message,
                };
                Some(Ok(take(&record)))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }

    fn rebalance(&mut self) -> Option<Rebalance> {
        self.rebalances.try_recv().ok()
    }

    fn assign(&mut self, starts: &[(Which, i32, Rewind)]) {
        // librdkafka keeps a partition the application paused paused across unassign and
        // assign (the flag lives on the partition, not the assignment): a side paused
        // under an earlier assignment would never be fetched again. Resuming one that is
        // not paused does nothing.
        let sides: Vec<(Which, i32)> = starts.iter().map(|&(w, p, _)| (w, p)).collect();
        self.resume(&sides);
        let mut assignment = TopicPartitionList::new();
        for &(which, partition, to) in starts {
            let topic = self.topic(which).to_string();
            if let Err(e) = assignment.add_partition_offset(&topic, partition, offset(to)) {
                tracing::error!(error = %e, "cannot build assignment");
            }
        }
        if let Err(e) = self.consumer.assign(&assignment) {
            tracing::error!(error = %e, "cannot assign partitions");
        }
    }

    fn unassign(&mut self) {
        if let Err(e) = self.consumer.unassign() {
            tracing::error!(error = %e, "cannot unassign partitions");
        }
    }

    fn seek(&mut self, which: Which, partition: i32, to: Rewind) {
        let topic = self.topic(which).to_string();
        if let Err(e) = self
            .consumer
            .seek(&topic, partition, offset(to), Duration::from_secs(10))
        {
            tracing::error!(topic = %topic, partition, error = %e, "cannot rewind");
        }
    }

    fn pause(&mut self, sides: &[(Which, i32)]) {
        if sides.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.pause(&self.sides(sides)) {
            tracing::warn!(error = %e, "cannot pause consumption");
        }
    }

    fn resume(&mut self, sides: &[(Which, i32)]) {
        if sides.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.resume(&self.sides(sides)) {
            tracing::warn!(error = %e, "cannot resume consumption");
        }
    }

    fn fetched_end(&mut self, which: Which, partition: i32) -> Option<i64> {
        let now = Instant::now();
        if let Some(end) = self.ends.kept(which, partition, now) {
            return end;
        }
        let topic = match which {
            Which::Usage => &self.topics_c[0],
            Which::Commands => &self.topics_c[1],
        };
        let end = kafka::fetched_high_watermark_of(&self.consumer, topic, partition);
        self.ends.read(which, partition, now, end);
        end
    }

    fn end_offsets(&self) -> anyhow::Result<BTreeMap<(Which, i32), i64>> {
        let mut ends = BTreeMap::new();
        let mut counts = Vec::new();
        for which in [Which::Usage, Which::Commands] {
            let topic = self.topic(which);
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| {
                    format!(
                        "cannot read metadata of topic `{topic}` from {}",
                        self.brokers
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
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                    .with_context(|| {
                        format!("cannot read the end of {topic}/{}", partition.id())
                    })?;
                ends.insert((which, partition.id()), high);
            }
        }
        if counts[0] != counts[1] {
            bail!(
                "topics `{}` ({} partitions) and `{}` ({} partitions) must have the same number of \
                 partitions: an account's usage and commands must reach the same consumer",
                self.usage_topic,
                counts[0],
                self.commands_topic,
                counts[1]
            );
        }
        Ok(ends)
    }

    fn commit(&mut self, offsets: &[(i32, i64, i64)], sync: bool) {
        // An empty list would commit the consumer's positions instead.
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, usage, commands) in offsets {
            for (which, next) in [(Which::Usage, usage), (Which::Commands, commands)] {
                let topic = self.topic(which).to_string();
                if let Err(e) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                    tracing::warn!(error = %e, "cannot build group offsets");
                    return;
                }
            }
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = self.consumer.commit(&list, mode) {
            tracing::warn!(error = %e, "cannot commit group offsets");
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Closing the consumer revokes and waits for the unassign, with no run thread
        // left to take the change.
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Relaxed);
    }
}

impl Headers for BorrowedMessage<'_> {
    fn read(&self) -> Option<&BorrowedHeaders> {
        Message::headers(self)
    }
}

/// Dead letters and forwards through the producer; ticks queued on the commands topic.
pub struct KafkaOutbox {
    /// Made for the first record to send: a drain with no dead letter and no forward needs
    /// none, and dropping one waits for its poll thread's 100 ms poll (rdkafka's
    /// `ThreadedProducer`). `kafka::check_access` has made one from the same settings at
    /// start, so a setting it refuses stops start-up; one that fails here fails the flush
    /// (retried, nothing committed) or skips the tick, with the error.
    producer: OnceLock<FutureProducer>,
    dlq_topic: String,
    config: KafkaConfig,
}

impl KafkaOutbox {
    pub fn new(config: &KafkaConfig) -> KafkaOutbox {
        KafkaOutbox {
            producer: OnceLock::new(),
            dlq_topic: config.dlq_topic.clone(),
            config: config.clone(),
        }
    }

    fn producer(&self) -> Result<&FutureProducer, kafka::KafkaError> {
        if let Some(producer) = self.producer.get() {
            return Ok(producer);
        }
        // Two first sends at once (a tick and a flush) make two; the one not kept is dropped
        // where it was made, waiting out its poll thread once.
        let made = kafka::producer(&self.config)?;
        Ok(self.producer.get_or_init(|| made))
    }
}

impl Outbox for KafkaOutbox {
    fn send<'a>(
        &'a self,
        outgoing: &'a Outgoing,
    ) -> BoxFuture<'a, anyhow::Result<Vec<(String, i32, i64)>>> {
        Box::pin(async move {
            if outgoing.dead_letters.is_empty() && outgoing.forwards.is_empty() {
                return Ok(Vec::new());
            }
            let producer = self
                .producer()
                .context("cannot create the Kafka producer")?;
            kafka::send_outgoing(producer, &self.dlq_topic, outgoing)
                .await
                .map_err(anyhow::Error::new)
        })
    }

    fn ticks(&self, partitions: &[i32], at: DateTime<Utc>) {
        match self.producer() {
            Ok(producer) => kafka::enqueue_ticks(producer, &self.config, partitions, at),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the Kafka producer for clock ticks")
            }
        }
    }
}

/// The partitions `assignment` names, for a process that owns them outright.
pub fn listed_partitions(
    listed: Option<Vec<i32>>,
    ends: &BTreeMap<(Which, i32), i64>,
) -> BTreeSet<i32> {
    match listed {
        Some(chosen) => chosen.into_iter().collect(),
        None => ends.keys().map(|(_, partition)| *partition).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_end_is_answered_for_a_millisecond_and_forgotten_once_passed() {
        let t0 = Instant::now();
        let mut ends = KnownEnds::default();
        assert_eq!(ends.kept(Which::Usage, 0, t0), None, "nothing read yet");
        ends.read(Which::Usage, 0, t0, Some(100));
        ends.read(Which::Commands, 0, t0, None);
        let soon = t0 + FETCHED_END_REUSE / 2;
        assert_eq!(ends.kept(Which::Usage, 0, soon), Some(Some(100)));
        assert_eq!(ends.kept(Which::Usage, 1, soon), None, "another partition");
        assert_eq!(
            ends.kept(Which::Usage, 0, t0 + FETCHED_END_REUSE),
            None,
            "too old"
        );
        // A record before the end keeps it; one at the end means the end moved on.
        ends.received(Which::Usage, 0, 99);
        assert_eq!(ends.kept(Which::Usage, 0, soon), Some(Some(100)));
        ends.received(Which::Commands, 1, 500);
        assert_eq!(
            ends.kept(Which::Usage, 0, soon),
            Some(Some(100)),
            "other sides"
        );
        ends.received(Which::Usage, 0, 100);
        assert_eq!(ends.kept(Which::Usage, 0, soon), None);
        // An unknown end is read again as soon as anything arrives.
        assert_eq!(ends.kept(Which::Commands, 0, soon), Some(None));
        ends.received(Which::Commands, 0, 0);
        assert_eq!(ends.kept(Which::Commands, 0, soon), None);
    }
}
