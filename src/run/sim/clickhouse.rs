//! ClickHouse as the run relies on it, in memory: tables as lists of rows; the output
//! tables read as ReplacingMergeTree's FINAL (the highest version per key); the
//! checkpoints a plain MergeTree read with the load's own selections. Every INSERT meets
//! its fate from the schedule: it lands, fails before landing, lands a prefix of its rows
//! (a torn insert, as 18.16 keeps the rows it parsed when the client goes away), or lands
//! and still reports a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::super::alerting;
use super::super::edges::{Answers, BoxFuture, Claim, Store};
use super::Rng;
use crate::store::checkpoint::{self, BaseRow, BlobPart, Lineage, Loaded, OffsetsRow};
use crate::store::checkpoint::{Probable, Restored, SeenLoader, SeenRow, StateRow};
use crate::store::rows::{BalanceRow, CheckpointRow, DailyUsageRow, LedgerRow, LotRow};
use crate::store::webhooks::WebhookRow;
use crate::store::writes::Batch;
use crate::store::StoreError;

/// What becomes of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Lands,
    Fails,
    /// A prefix of the rows lands, then the write fails.
    Torn,
    /// Everything lands, and the answer is lost.
    LandsThenFails,
}

/// The schedule's say over writes and reads.
pub struct Faults {
    rng: Rng,
    pub on: bool,
    /// Chance of a fault per write or read, in thousandths.
    pub per_mille: u64,
    pub injected: u64,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            rng: Rng::new(seed),
            on: false,
            per_mille: 0,
            injected: 0,
        }
    }

    pub fn fate(&mut self) -> Fate {
        if !self.on || !self.rng.chance(self.per_mille) {
            return Fate::Lands;
        }
        self.injected += 1;
        match self.rng.below(3) {
            0 => Fate::Fails,
            1 => Fate::Torn,
            _ => Fate::LandsThenFails,
        }
    }

    /// A read or a mutation: it happens or it fails.
    pub fn fails(&mut self) -> bool {
        self.fate() != Fate::Lands
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }
}

pub fn injected(what: &str) -> StoreError {
    StoreError::ClickHouse(clickhouse::error::Error::Custom(format!(
        "simulated failure: {what}"
    )))
}

#[derive(Default)]
pub struct Db {
    pub checkpoints: Vec<CheckpointRow>,
    pub ledger: Vec<LedgerRow>,
    pub lots: Vec<LotRow>,
    pub balances: Vec<BalanceRow>,
    pub daily: Vec<DailyUsageRow>,
    /// Deletions the fence refused (a later claim existed): the takeover test asks that
    /// its schedules reach it.
    pub refused_deletions: u64,
    /// Deletions done: the horizon test crashes the owner right after one.
    pub deletions: u64,
}

/// One INSERT of `rows` into `table`, as its fate says.
fn insert<T: Clone>(
    table: &mut Vec<T>,
    rows: &[T],
    faults: &mut Faults,
    what: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    match faults.fate() {
        Fate::Lands => {
            table.extend_from_slice(rows);
            Ok(())
        }
        Fate::Fails => Err(injected(what)),
        Fate::Torn => {
            let landed = faults.below(rows.len() as u64) as usize;
            table.extend_from_slice(&rows[..landed]);
            Err(injected(what))
        }
        Fate::LandsThenFails => {
            table.extend_from_slice(rows);
            Err(injected(what))
        }
    }
}

impl Db {
    fn of<'a>(
        &'a self,
        stream: &'a str,
        partition: u32,
    ) -> impl Iterator<Item = &'a CheckpointRow> {
        self.checkpoints
            .iter()
            .filter(move |r| r.stream == stream && r.partition == partition)
    }

    /// Every base row of a partition.
    fn bases(&self, stream: &str, partition: u32) -> Vec<BaseRow> {
        self.of(stream, partition)
            .filter(|r| r.row_kind == "base")
            .map(|r| BaseRow {
                claim: r.claim,
                base: r.key_hi,
                parent: r.key_lo,
            })
            .collect()
    }

    /// The offsets row a load counts last: what a new owner would start from.
    pub fn counted_offsets<'a>(
        &'a self,
        stream: &'a str,
        partition: u32,
    ) -> Option<&'a CheckpointRow> {
        let lineage = Lineage::of(&self.bases(stream, partition));
        self.of(stream, partition)
            .filter(|r| r.row_kind == "offsets" && lineage.counts(r.claim, r.version))
            .max_by_key(|r| r.version)
    }

    /// The load's selections (see `checkpoint::claim_and_load`), for the claim's version;
    /// with the base the claim's base row records.
    pub fn load(
        &self,
        stream: &str,
        partition: u32,
        version: u64,
        window: i64,
        segment_records: u32,
    ) -> Result<(Restored, (u64, u64)), StoreError> {
        let rows: Vec<&CheckpointRow> = self.of(stream, partition).collect();
        let offsets = self.counted_offsets(stream, partition).map(|r| OffsetsRow {
            usage_offset: r.usage_offset,
            commands_offset: r.commands_offset,
            arrival_high: r.arrival_high,
            segment_records: r.seen_at,
            version: r.version,
            claim: r.claim,
        });
        checkpoint::check_segments(offsets.as_ref(), partition, segment_records)?;
        let base = offsets.as_ref().map_or((0, 0), |o| (o.version, o.claim));
        let fence = Lineage::below(&self.bases(stream, partition), base.0, base.1);
        let counts = |r: &CheckpointRow| fence.counts(r.claim, r.version);
        let complete: BTreeSet<u64> = rows
            .iter()
            .filter(|r| r.row_kind == "offsets" && counts(r))
            .map(|r| r.version)
            .collect();
        let latest = |kind: &str, from_key: u64| {
            let mut by_key: BTreeMap<(String, u64, u64), &CheckpointRow> = BTreeMap::new();
            for r in rows.iter().filter(|r| {
                r.row_kind == kind
                    && counts(r)
                    && complete.contains(&r.version)
                    && r.key_hi >= from_key
            }) {
                let key = (r.account.clone(), r.key_hi, r.key_lo);
                if by_key.get(&key).is_none_or(|old| old.version < r.version) {
                    by_key.insert(key, r);
                }
            }
            by_key
                .into_values()
                .map(|r| StateRow {
                    account: r.account.clone(),
                    state: r.state.clone(),
                })
                .collect::<Vec<_>>()
        };
        let states = latest("state", 0);
        let arrival_high = offsets.as_ref().map_or(0, |o| o.arrival_high);
        let horizon = checkpoint::horizon(arrival_high, window);
        let mut loader = SeenLoader::new(partition);
        let mut parts: Vec<&&CheckpointRow> = rows
            .iter()
            .filter(|r| r.row_kind == "seen_blob" && r.seen_at >= horizon && counts(r))
            .collect();
        parts.sort_by_key(|r| (r.key_hi, r.key_lo));
        for r in parts {
            loader.part(BlobPart {
                key_hi: r.key_hi,
                key_lo: r.key_lo,
                usage_offset: r.usage_offset,
                state: r.state.clone(),
            })?;
        }
        let sealed_through = loader.blobs_done()?;
        let seen_rows = rows
            .iter()
            .filter(|r| {
                r.row_kind == "seen"
                    && r.seen_at >= horizon
                    && r.version > sealed_through
                    && counts(r)
                    && complete.contains(&r.version)
            })
            .map(|r| SeenRow {
                key_hi: r.key_hi,
                key_lo: r.key_lo,
                version: r.version,
                seen_at: r.seen_at,
            })
            .collect();
        let seen = loader.rows(seen_rows);
        let days = latest(
            "day",
            checkpoint::first_open_day(offsets.as_ref(), segment_records),
        );
        let restored = checkpoint::restore(
            Loaded {
                version,
                offsets,
                states,
                seen,
                days,
            },
            window,
            segment_records,
        )?;
        Ok((restored, base))
    }

    /// The latest rows of a ReplacingMergeTree by key, as `FINAL` reads them.
    pub fn last<T: Clone, K: Ord>(
        rows: &[T],
        key: impl Fn(&T) -> K,
        version: impl Fn(&T) -> u64,
    ) -> BTreeMap<K, T> {
        let mut latest: BTreeMap<K, T> = BTreeMap::new();
        for row in rows {
            let k = key(row);
            if latest
                .get(&k)
                .is_none_or(|old| version(old) <= version(row))
            {
                latest.insert(k, row.clone());
            }
        }
        latest
    }
}

/// The run's [`Store`] on the in-memory tables.
pub struct SimStore {
    pub db: Arc<Mutex<Db>>,
    pub faults: Arc<Mutex<Faults>>,
    pub stream: String,
}

impl SimStore {
    fn both(&self) -> (MutexGuard<'_, Db>, MutexGuard<'_, Faults>) {
        (lock(&self.db), lock(&self.faults))
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets the runtime run other tasks once, so a flush's phases interleave with the
/// schedule (a crash can fall between any two of them).
async fn step() {
    tokio::task::yield_now().await;
}

impl Store for SimStore {
    fn claim_and_load<'a>(
        &'a self,
        partition: u32,
        _attempt: u32,
        claim: &'a Claim<'a>,
    ) -> BoxFuture<'a, Result<Restored, StoreError>> {
        Box::pin(async move {
            let (mut db, mut faults) = self.both();
            let highest = db
                .of(&self.stream, partition)
                .map(|r| r.version)
                .max()
                .unwrap_or(0);
            let version = checkpoint::claim_version(claim.now_micros, highest);
            let row = checkpoint::claim_row(
                &self.stream,
                partition,
                version,
                claim.claim_info,
                claim.now_micros,
            );
            insert(&mut db.checkpoints, &[row], &mut faults, "claim")?;
            if faults.fails() {
                return Err(injected("load"));
            }
            let (restored, base) = db.load(
                &self.stream,
                partition,
                version,
                claim.dedup_window_millis,
                claim.segment_records,
            )?;
            let row =
                checkpoint::base_row(&self.stream, partition, version, base, claim.now_micros);
            insert(&mut db.checkpoints, &[row], &mut faults, "base")?;
            Ok(restored)
        })
    }

    fn write_outputs<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            step().await;
            let (mut db, mut faults) = self.both();
            let db = &mut *db;
            // Side by side, as the real writes go: each lands or not on its own.
            let ledger: Vec<LedgerRow> = batch.ledger.iter().flat_map(|b| b.decode()).collect();
            let results = [
                insert(&mut db.ledger, &ledger, &mut faults, "ledger"),
                insert(&mut db.lots, &batch.lots, &mut faults, "lots"),
                insert(&mut db.balances, &batch.balances, &mut faults, "balances"),
                insert(&mut db.daily, &batch.daily, &mut faults, "daily_rollups"),
            ];
            results.into_iter().collect()
        })
    }

    fn record_alerts<'a>(
        &'a self,
        _context: &'a alerting::Context,
        _decisions: &'a [tally_core::alerts::Alert],
    ) -> BoxFuture<'a, Result<Vec<crate::notify::Alert>, StoreError>> {
        Box::pin(async move {
            step().await;
            // No account of the simulation has admins: no emails to build.
            match lock(&self.faults).fails() {
                true => Err(injected("alerts")),
                false => Ok(Vec::new()),
            }
        })
    }

    fn record_webhooks<'a>(
        &'a self,
        _rows: &'a [WebhookRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match lock(&self.faults).fails() {
                true => Err(injected("webhooks")),
                false => Ok(()),
            }
        })
    }

    fn commit<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            step().await;
            let (mut db, mut faults) = self.both();
            insert(
                &mut db.checkpoints,
                &batch.checkpoint,
                &mut faults,
                "checkpoint",
            )
        })
    }

    fn delete_before(
        &self,
        partition: u32,
        version: u64,
        claim: u64,
        horizon_millis: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let (mut db, mut faults) = self.both();
            if faults.fails() {
                return Err(injected("delete"));
            }
            let stream = self.stream.clone();
            if db
                .of(&stream, partition)
                .any(|r| r.row_kind == "claim" && r.version > claim)
            {
                db.refused_deletions += 1;
                return Ok(false);
            }
            let dedup = |r: &CheckpointRow| {
                (r.row_kind == "seen" || r.row_kind == "seen_blob") && r.seen_at >= horizon_millis
            };
            let keep_from = db
                .of(&stream, partition)
                .filter(|r| dedup(r))
                .map(|r| r.claim)
                .min()
                .map_or(claim, |oldest| oldest.min(claim));
            db.checkpoints.retain(|r| {
                !(r.stream == stream
                    && r.partition == partition
                    && r.version < version
                    && r.claim <= claim
                    && !((r.row_kind == "claim" || r.row_kind == "base") && r.claim >= keep_from)
                    && !dedup(r))
            });
            db.deletions += 1;
            Ok(true)
        })
    }

    fn confirm<'a>(
        &'a self,
        partition: u32,
        claim: u64,
        probable: &'a [Probable],
    ) -> BoxFuture<'a, Result<Answers, StoreError>> {
        Box::pin(async move {
            step().await;
            let (db, mut faults) = self.both();
            if faults.fails() {
                return Err(injected("confirm"));
            }
            let lineage = Lineage::own(&db.bases(&self.stream, partition), claim);
            let seen: Vec<&CheckpointRow> = db
                .of(&self.stream, partition)
                .filter(|r| r.row_kind == "seen" && lineage.counts(r.claim, r.version))
                .collect();
            Ok(probable
                .iter()
                .map(|(key, written)| {
                    let latest = seen
                        .iter()
                        .filter(|r| (u128::from(r.key_hi) << 64) | u128::from(r.key_lo) == *key)
                        .filter(|r| written.iter().any(|w| w.version == r.version))
                        .map(|r| r.seen_at)
                        .max();
                    (*key, latest)
                })
                .collect())
        })
    }
}
