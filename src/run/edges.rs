//! The edges of `tally run`: the clock, the broker (records in, offsets and positions
//! out), the producer of dead letters and forwards, and ClickHouse, each a small trait. The
//! run's logic goes through them only, so the simulation (`run::sim`) drives the same code
//! against in-memory stand-ins with a seeded schedule; the real ones are thin wrappers
//! (`kafka_edge`, `clickhouse_edge`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::alerting;
use super::merge::{Rewind, Which};
use crate::kafka::Outgoing;
use crate::store::checkpoint::{Probable, Restored};
use crate::store::writes::Batch;
use crate::store::StoreError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Per probable duplicate's key, its first arrival among committed rows, or none.
pub type Answers = Vec<(u128, Option<i64>)>;

/// Time as the run sees it: passed in, so a simulation decides when time moves.
pub trait Clock: Send + Sync {
    /// For intervals and deadlines.
    fn now(&self) -> Instant;
    /// The wall clock: claim versions, receipt times, row times.
    fn utc(&self) -> DateTime<Utc>;
    /// Waits `for_`, between retries that block the run thread (revoke, shutdown).
    fn sleep(&self, for_: Duration);
}

/// The machine's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep(&self, for_: Duration) {
        std::thread::sleep(for_);
    }
}

/// One record as the broker gave it, borrowed from the broker's buffer for the time of
/// [`Source::poll`]'s callback: nothing is copied to hand it over.
pub struct Record<'a> {
    pub which: Which,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The broker timestamp, in milliseconds.
    pub timestamp: Option<i64>,
    /// Read only for a record forwarded to another partition (see [`Headers`]).
    pub headers: &'a dyn Headers,
}

impl Record<'_> {
    /// Bytes of key, payload and headers: what producing it again takes. Reads the
    /// headers: ask only for a record that is produced again.
    pub fn size(&self) -> usize {
        use rdkafka::message::Headers as _;
        let headers: usize = self.headers.read().map_or(0, |headers| {
            headers
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        });
        self.payload.len() + self.key.map_or(0, <[u8]>::len) + headers
    }
}

/// A record's headers, read on demand. librdkafka parses them on every read, into a fresh
/// buffer, even when a record has none (it caches only a non-empty list), and only a
/// forwarded record needs them: reading them for every record cost about 3,400
/// instructions an event on the run thread (two reads a record).
pub trait Headers {
    fn read(&self) -> Option<&rdkafka::message::BorrowedHeaders>;
}

/// A record without headers.
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn read(&self) -> Option<&rdkafka::message::BorrowedHeaders> {
        None
    }
}

/// What the run did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingest {
    Queued,
    /// Queued, and the side's queue reached its bound (see [`super::merge::Bound`]): pause
    /// fetching the side before the next poll.
    Full {
        which: Which,
        partition: i32,
    },
    /// The record skips offsets: read the side again from `to` (see
    /// [`super::merge::Side::rewound_at`]).
    Rewind {
        which: Which,
        partition: i32,
        to: Rewind,
    },
}

/// A change of the group's assignment, handed over by the broker's callbacks; the run
/// thread does the work (claims, flushes) and then tells the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    Assign(BTreeSet<i32>),
    Revoke,
    /// The group protocol failed, or the group already gave the partitions to another
    /// member (the assignment is lost: this member missed its heartbeats or its poll
    /// interval): give everything up without a flush, since committing now would write
    /// over the new owner's claim with a zombie's work.
    Failed,
}

/// The consumer of both topics, on the run thread.
pub trait Source {
    /// Waits up to `timeout` for one record and hands it to `take`; `None` when none came.
    fn poll(
        &mut self,
        timeout: Duration,
        take: &mut dyn FnMut(&Record<'_>) -> Ingest,
    ) -> Option<Result<Ingest, String>>;
    /// The next assignment change the group asked for, if any.
    fn rebalance(&mut self) -> Option<Rebalance>;
    /// Starts reading these (topic side, partition) from these positions; replaces the
    /// assignment.
    fn assign(&mut self, starts: &[(Which, i32, Rewind)]);
    fn unassign(&mut self);
    fn seek(&mut self, which: Which, partition: i32, to: Rewind);
    /// Stops fetching these sides (topic, partition) of the assignment: no record of them
    /// comes out of `poll` after this returns, not even one the consumer fetched ahead
    /// (librdkafka drops those and fetches them again on resume). An assignment starts
    /// with every side fetched.
    fn pause(&mut self, sides: &[(Which, i32)]);
    /// Fetches these sides again, from the record after the last one `poll` handed over
    /// (or from where a seek since put them): nothing is skipped or handed over twice.
    fn resume(&mut self, sides: &[(Which, i32)]);
    /// The side's end as of the last fetch response, without a request.
    fn fetched_end(&mut self, which: Which, partition: i32) -> Option<i64>;
    /// Every partition's end of both topics now (asks the broker).
    fn end_offsets(&self) -> anyhow::Result<BTreeMap<(Which, i32), i64>>;
    /// The group offsets (partition, usage next, commands next), for lag monitoring.
    fn commit(&mut self, offsets: &[(i32, i64, i64)], sync: bool);
}

/// Dead letters, forwards and ticks: what the run produces.
pub trait Outbox: Send + Sync {
    /// Sends and waits for every acknowledgement; where each forward landed.
    fn send<'a>(
        &'a self,
        outgoing: &'a Outgoing,
    ) -> BoxFuture<'a, anyhow::Result<Vec<(String, i32, i64)>>>;
    /// Queues a tick for each partition without waiting.
    fn ticks(&self, partitions: &[i32], at: DateTime<Utc>);
}

/// What a claim writes and what a load needs besides the partition.
pub struct Claim<'a> {
    pub now_micros: u64,
    pub dedup_window_millis: i64,
    pub claim_info: &'a str,
    pub segment_records: u32,
}

/// Everything the run reads from and writes to ClickHouse, for one stream.
pub trait Store: Send + Sync {
    /// Claims the partition and loads its committed state (`attempt`: which replica).
    fn claim_and_load<'a>(
        &'a self,
        partition: u32,
        attempt: u32,
        claim: &'a Claim<'a>,
    ) -> BoxFuture<'a, Result<Restored, StoreError>>;
    /// A flush's outputs, each idempotent.
    fn write_outputs<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Records the alerts as pending; the emails to send once committed.
    fn record_alerts<'a>(
        &'a self,
        context: &'a alerting::Context,
        decisions: &'a [tally_core::alerts::Alert],
    ) -> BoxFuture<'a, Result<Vec<crate::notify::Alert>, StoreError>>;
    /// Records webhook deliveries as pending.
    fn record_webhooks<'a>(
        &'a self,
        rows: &'a [crate::store::webhooks::WebhookRow],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The commit point: the checkpoint rows, offsets last.
    fn commit<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Drops checkpoint rows a committed snapshot made dead, unless a claim above this
    /// owner's `claim` exists (then `false`: see `checkpoint::delete_before`).
    fn delete_before(
        &self,
        partition: u32,
        version: u64,
        claim: u64,
        horizon_millis: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Confirms probable duplicates against the exact rows of the lineage of `claim` (the
    /// owner's own, even once superseded: its decisions must follow its own history).
    fn confirm<'a>(
        &'a self,
        partition: u32,
        claim: u64,
        probable: &'a [Probable],
    ) -> BoxFuture<'a, Result<Answers, StoreError>>;
}

/// Where the run's background work (flush writes, confirmations) runs, and how the run
/// thread waits for it: the process's runtime, or one the run owns. A current-thread
/// runtime moves its tasks only inside its own `block_on`, which is how a simulation
/// decides when background work goes on.
#[derive(Clone)]
pub enum Exec {
    Shared(tokio::runtime::Handle),
    Owned(std::sync::Arc<tokio::runtime::Runtime>),
}

impl Exec {
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Exec::Shared(handle) => handle.spawn(future),
            Exec::Owned(rt) => rt.spawn(future),
        }
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            Exec::Shared(handle) => handle.block_on(future),
            Exec::Owned(rt) => rt.block_on(future),
        }
    }
}
