//! The commit point: loading a partition's state and offsets on assignment, and the rows
//! that commit a flush.

use std::collections::BTreeMap;

use clickhouse::Client;
use tally_core::dedup::{self, Seen, Written};
use tally_core::{AccountState, Book};

use super::rollup::{self, StoredDay};
use super::rows::CheckpointRow;
use super::state_codec;
use super::StoreError;

/// The owner of every partition of `stream` that was ever claimed, as its latest claim row
/// says: (partition, `ClaimInfo` JSON).
pub async fn owners(client: &Client, stream: &str) -> Result<Vec<(u32, String)>, StoreError> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct ClaimRow {
        partition: u32,
        state: String,
    }
    let rows: Vec<ClaimRow> = client
        .query(
            "SELECT partition, argMax(state, version) FROM checkpoints \
             WHERE stream = ? AND row_kind = 'claim' GROUP BY partition",
        )
        .bind(stream)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|r| (r.partition, r.state)).collect())
}

/// What a new owner of a partition starts from.
pub struct Restored {
    /// First version this owner writes with: above anything any earlier owner wrote.
    pub version: u64,
    /// Next offsets to read; `None` when nothing was ever committed.
    pub usage_offset: Option<i64>,
    pub commands_offset: Option<i64>,
    /// Latest broker timestamp (seconds) applied before the checkpoint.
    pub arrival_high: i64,
    pub book: Book,
    /// Committed totals of the segment still open.
    pub days: Vec<(String, StoredDay)>,
    /// Usage records per rollup segment.
    pub segment_records: u32,
}

/// The latest offsets row of a partition. The load's rows are public so that a stand-in
/// of ClickHouse (the run's simulation) can select them and share the rest of the load.
#[derive(clickhouse::Row, serde::Deserialize)]
pub struct OffsetsRow {
    pub usage_offset: i64,
    pub commands_offset: i64,
    pub arrival_high: i64,
    /// The offsets row's `seen_at`: the rollup segment size it was written with (0 before
    /// segments).
    pub segment_records: i64,
    /// The flush it commits, and the claim it was written under: the new owner's base.
    pub version: u64,
    pub claim: u64,
}

/// An account's latest committed state, or an open day's totals.
#[derive(clickhouse::Row, serde::Deserialize)]
pub struct StateRow {
    pub account: String,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
pub struct SeenRow {
    pub key_hi: u64,
    pub key_lo: u64,
    pub version: u64,
    pub seen_at: i64,
}

/// One part of a sealed dedup blob.
#[derive(clickhouse::Row, serde::Deserialize)]
pub struct BlobPart {
    /// The blob: the version of the flush that wrote it.
    pub key_hi: u64,
    /// The part's index.
    pub key_lo: u64,
    /// How many parts the blob has.
    pub usage_offset: i64,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// A sealed blob is written in parts of at most this many bytes: ClickHouse 18.16 takes
/// big strings in RowBinary, but smaller values keep every insert and read block modest.
const BLOB_PART_BYTES: usize = 1 << 20;

const WHERE_PARTITION: &str = "stream = ? AND partition = ?";

/// The versions of a partition's complete flushes in `lineage` (an SQL condition, see
/// [`Lineage::sql`]): those whose offsets row landed.
fn complete(lineage: &str) -> String {
    format!(
        "SELECT version FROM checkpoints \
         WHERE {WHERE_PARTITION} AND row_kind = 'offsets' AND {lineage}"
    )
}

/// A claim's base row (`row_kind = 'base'`, `version` and `claim` the claim's version),
/// written once its owner has loaded: the flush it loaded from (`key_hi`, 0 for none) and
/// that flush's claim (`key_lo`).
#[derive(clickhouse::Row, serde::Deserialize, Debug, Clone, Copy)]
pub struct BaseRow {
    pub claim: u64,
    pub base: u64,
    pub parent: u64,
}

/// The claims whose checkpoint rows count, each with the highest version of its rows that
/// counts: the fence against superseded owners.
///
/// The head is the highest claim with a base row; its rows all count. Before it, its
/// base's claim up to the base, then that claim's base's claim up to its base, and so on.
/// A superseded owner (paused past its session, cut off from the group) keeps writing
/// under its own claim, with versions above the base the next owner recorded: none of
/// them count, whatever their versions (time-based versions of a later claim may be
/// lower). Rows written before fencing (`claim` 0) count as a claim of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// (claim, highest version that counts), newest claim first; versions of different
    /// members never overlap (a claim is above every version its base saw).
    members: Vec<(u64, u64)>,
}

impl Lineage {
    /// The lineage a load follows, from every base row of the partition; without any (a
    /// partition checkpointed before fencing, or never) the rows written before fencing.
    pub fn of(bases: &[BaseRow]) -> Lineage {
        match bases.iter().max_by_key(|b| b.claim) {
            Some(head) => {
                let mut lineage = Lineage {
                    members: vec![(head.claim, u64::MAX)],
                };
                lineage.extend(bases, head.base, head.parent);
                lineage
            }
            None => Lineage {
                members: vec![(0, u64::MAX)],
            },
        }
    }

    /// The lineage of the owner of `claim`, superseded or not: its own rows, then what its
    /// base row says it loaded.
    pub fn own(bases: &[BaseRow], claim: u64) -> Lineage {
        let mut lineage = Lineage {
            members: vec![(claim, u64::MAX)],
        };
        if let Some(own) = bases.iter().find(|b| b.claim == claim) {
            lineage.extend(bases, own.base, own.parent);
        }
        lineage
    }

    /// What a load that found its base at flush `base` of claim `parent` counts (and what
    /// its base row will tell the next owner): `parent`'s rows up to `base`, then that
    /// claim's own lineage. Nothing when `base` is 0.
    pub fn below(bases: &[BaseRow], base: u64, parent: u64) -> Lineage {
        let mut lineage = Lineage {
            members: Vec::new(),
        };
        lineage.extend(bases, base, parent);
        lineage
    }

    fn extend(&mut self, bases: &[BaseRow], mut base: u64, mut parent: u64) {
        while base != 0 {
            self.members.push((parent, base));
            // A claim's base is below it: the walk ends at the rows before fencing, or at
            // a claim whose base row a snapshot deleted (nothing of its lineage is left).
            let Some(next) = bases.iter().find(|b| b.claim == parent && parent != 0) else {
                break;
            };
            if next.base >= base {
                break;
            }
            (base, parent) = (next.base, next.parent);
        }
    }

    /// Whether the row of `claim` at `version` counts.
    pub fn counts(&self, claim: u64, version: u64) -> bool {
        self.members
            .iter()
            .any(|&(c, highest)| c == claim && version <= highest)
    }

    /// The same as an SQL condition on `claim` and `version` (numbers only).
    pub fn sql(&self) -> String {
        if self.members.is_empty() {
            return "0".into();
        }
        let terms: Vec<String> = self
            .members
            .iter()
            .map(|&(claim, highest)| match highest {
                u64::MAX => format!("claim = {claim}"),
                _ => format!("(claim = {claim} AND version <= {highest})"),
            })
            .collect();
        format!("({})", terms.join(" OR "))
    }
}

/// Every base row of a partition.
async fn bases(client: &Client, stream: &str, partition: u32) -> Result<Vec<BaseRow>, StoreError> {
    Ok(client
        .query(&format!(
            "SELECT claim, key_hi, key_lo FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'base'"
        ))
        .bind(stream)
        .bind(partition)
        .fetch_all()
        .await?)
}

/// Fails when `stream`'s checkpoints were written with another rollup segment size.
pub async fn check_segment_size(
    client: &Client,
    stream: &str,
    segment_records: u32,
) -> Result<(), StoreError> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Used {
        partition: u32,
        seen_at: i64,
    }
    let used: Option<Used> = client
        .query(
            "SELECT partition, seen_at FROM checkpoints WHERE stream = ? \
             AND row_kind = 'offsets' AND seen_at != 0 AND seen_at != ? LIMIT 1",
        )
        .bind(stream)
        .bind(i64::from(segment_records))
        .fetch_optional()
        .await?;
    match used {
        Some(used) => Err(StoreError::SegmentSize {
            partition: used.partition,
            stored: u32::try_from(used.seen_at).unwrap_or(u32::MAX),
            configured: segment_records,
        }),
        None => Ok(()),
    }
}

/// Claims `partition` for this process and loads its committed state.
///
/// The claim row takes a version above every version written so far, so this owner's
/// rows replace those of every earlier one in the output tables. Then the load follows
/// the lineage of the highest claim that has loaded (see [`Lineage`]), and the base row
/// records what it counted: from then on nothing an earlier owner writes counts. A
/// snapshot's deletions wait for no higher claim (see [`delete_before`]).
pub async fn claim_and_load(
    client: &Client,
    stream: &str,
    partition: u32,
    now_micros: u64,
    dedup_window_millis: i64,
    claim_info: &str,
    segment_records: u32,
) -> Result<Restored, StoreError> {
    let highest: u64 = client
        .query(&format!(
            "SELECT max(version) FROM checkpoints WHERE {WHERE_PARTITION}"
        ))
        .bind(stream)
        .bind(partition)
        .fetch_one()
        .await?;
    let version = claim_version(now_micros, highest);
    let mut insert = super::writes::insert::<CheckpointRow>(client, "checkpoints").await?;
    insert
        .write(&claim_row(
            stream, partition, version, claim_info, now_micros,
        ))
        .await?;
    insert.end().await?;

    let bases = bases(client, stream, partition).await?;
    let offsets: Option<OffsetsRow> = client
        .query(&format!(
            "SELECT usage_offset, commands_offset, arrival_high, seen_at, version, claim \
             FROM checkpoints WHERE {WHERE_PARTITION} AND row_kind = 'offsets' AND {} \
             ORDER BY version DESC LIMIT 1",
            Lineage::of(&bases).sql()
        ))
        .bind(stream)
        .bind(partition)
        .fetch_optional()
        .await?;
    check_segments(offsets.as_ref(), partition, segment_records)?;
    // Everything else up to the base only: the owner before may still be writing.
    let (base, parent) = offsets.as_ref().map_or((0, 0), |o| (o.version, o.claim));
    let fence = Lineage::below(&bases, base, parent).sql();
    let complete = complete(&fence);
    let states: Vec<StateRow> = client
        .query(&format!(
            "SELECT account, argMax(state, version) FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'state' AND {fence} \
             AND version IN ({complete}) GROUP BY account"
        ))
        .bind(stream)
        .bind(partition)
        .bind(stream)
        .bind(partition)
        .fetch_all()
        .await?;
    let arrival_high = offsets.as_ref().map_or(0, |o| o.arrival_high);
    let seen = load_seen(
        client,
        (stream, partition),
        &fence,
        horizon(arrival_high, dedup_window_millis),
    )
    .await?;
    let days: Vec<StateRow> = client
        .query(&format!(
            "SELECT account, argMax(state, version) FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'day' AND key_hi >= ? AND {fence} \
             AND version IN ({complete}) GROUP BY account, key_hi, key_lo"
        ))
        .bind(stream)
        .bind(partition)
        .bind(first_open_day(offsets.as_ref(), segment_records))
        .bind(stream)
        .bind(partition)
        .fetch_all()
        .await?;
    let mut insert = super::writes::insert::<CheckpointRow>(client, "checkpoints").await?;
    insert
        .write(&base_row(
            stream,
            partition,
            version,
            (base, parent),
            now_micros,
        ))
        .await?;
    insert.end().await?;
    restore(
        Loaded {
            version,
            offsets,
            states,
            seen,
            days,
        },
        dedup_window_millis,
        segment_records,
    )
}

/// The version a new owner claims with: above every version written so far.
pub fn claim_version(now_micros: u64, highest: u64) -> u64 {
    now_micros.max(highest + 2)
}

/// The row that claims a partition: who owns it, from which version.
pub fn claim_row(
    stream: &str,
    partition: u32,
    version: u64,
    claim_info: &str,
    now_micros: u64,
) -> CheckpointRow {
    CheckpointRow {
        stream: stream.to_string(),
        partition,
        row_kind: "claim".into(),
        account: String::new(),
        key_hi: 0,
        key_lo: 0,
        version,
        usage_offset: 0,
        commands_offset: 0,
        arrival_high: 0,
        state: claim_info.as_bytes().to_vec(),
        seen_at: 0,
        written_at: (now_micros / 1_000_000) as u32,
        claim: version,
    }
}

/// The row that ends a claim's load: the flush it loaded from, and that flush's claim.
pub fn base_row(
    stream: &str,
    partition: u32,
    claim: u64,
    (base, parent): (u64, u64),
    now_micros: u64,
) -> CheckpointRow {
    let mut row = claim_row(stream, partition, claim, "", now_micros);
    row.row_kind = "base".into();
    row.key_hi = base;
    row.key_lo = parent;
    row
}

/// Fails when the partition's checkpoint was cut with another rollup segment size.
pub fn check_segments(
    offsets: Option<&OffsetsRow>,
    partition: u32,
    segment_records: u32,
) -> Result<(), StoreError> {
    match offsets.map(|o| o.segment_records) {
        Some(stored) if stored != 0 && stored != i64::from(segment_records) => {
            Err(StoreError::SegmentSize {
                partition,
                stored: u32::try_from(stored).unwrap_or(u32::MAX),
                configured: segment_records,
            })
        }
        _ => Ok(()),
    }
}

/// The oldest dedup key's first arrival the window still needs (milliseconds).
pub fn horizon(arrival_high: i64, dedup_window_millis: i64) -> i64 {
    arrival_high.saturating_mul(1000) - dedup_window_millis
}

/// The first day key (`key_hi`) of the open rollup segment.
pub fn first_open_day(offsets: Option<&OffsetsRow>, segment_records: u32) -> u64 {
    rollup::first_open_key(offsets.map_or(0, |o| o.usage_offset), segment_records)
}

/// What the queries of a load selected.
pub struct Loaded {
    pub version: u64,
    pub offsets: Option<OffsetsRow>,
    /// The latest state of each account among complete flushes.
    pub states: Vec<StateRow>,
    pub seen: Seen,
    /// The latest totals of each open day among complete flushes.
    pub days: Vec<StateRow>,
}

/// Decodes what a load selected into the new owner's start.
pub fn restore(
    loaded: Loaded,
    dedup_window_millis: i64,
    segment_records: u32,
) -> Result<Restored, StoreError> {
    let Loaded {
        version,
        offsets,
        states,
        mut seen,
        days,
    } = loaded;
    let mut book = Book::default();
    for row in states {
        let state: AccountState =
            state_codec::decode(&row.state).map_err(|e| StoreError::State {
                account: row.account.clone(),
                problem: e.to_string(),
            })?;
        book.accounts.insert(row.account, state);
    }
    let arrival_high = offsets.as_ref().map_or(0, |o| o.arrival_high);
    book.clock = (arrival_high > 0)
        .then(|| chrono::DateTime::from_timestamp(arrival_high, 0))
        .flatten();
    if let Some(clock) = book.clock {
        seen.expire(clock, chrono::TimeDelta::milliseconds(dedup_window_millis));
    }
    book.seen = seen;
    let days = days
        .into_iter()
        .map(|row| {
            let day = StoredDay::decode(&row.state).map_err(|e| StoreError::State {
                account: row.account.clone(),
                problem: e.to_string(),
            })?;
            Ok((row.account, day))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Restored {
        days,
        segment_records,
        version,
        usage_offset: offsets.as_ref().map(|o| o.usage_offset),
        commands_offset: offsets.as_ref().map(|o| o.commands_offset),
        arrival_high,
        book,
    })
}

/// The dedup window of a partition as its committed rows in `fence` hold it: the sealed
/// blobs whose latest id is within the window (loaded whole: time grows with their bytes,
/// not with rows), then, one row each, the keys committed after the last sealed flush.
async fn load_seen(
    client: &Client,
    (stream, partition): (&str, u32),
    fence: &str,
    horizon_millis: i64,
) -> Result<Seen, StoreError> {
    let mut loader = SeenLoader::new(partition);
    let mut parts = client
        .query(&format!(
            "SELECT key_hi, key_lo, usage_offset, state FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'seen_blob' AND seen_at >= ? \
             AND {fence} ORDER BY key_hi, key_lo"
        ))
        .bind(stream)
        .bind(partition)
        .bind(horizon_millis)
        .fetch::<BlobPart>()?;
    while let Some(part) = parts.next().await? {
        loader.part(part)?;
    }
    let sealed_through = loader.blobs_done()?;
    // Keys of committed flushes after the last sealed one: at most one seal's worth
    // (a snapshot seals everything committed, so the offsets rows these need survive
    // its pruning).
    let rows: Vec<SeenRow> = client
        .query(&format!(
            "SELECT key_hi, key_lo, version, seen_at FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'seen' AND seen_at >= ? \
             AND version > ? AND {fence} AND version IN ({})",
            complete(fence)
        ))
        .bind(stream)
        .bind(partition)
        .bind(horizon_millis)
        .bind(sealed_through)
        .bind(stream)
        .bind(partition)
        .fetch_all()
        .await?;
    Ok(loader.rows(rows))
}

/// Rebuilds the dedup window from the sealed blobs' parts (in order of blob and part),
/// then from the keys committed after the last sealed flush.
pub struct SeenLoader {
    seen: Seen,
    partition: u32,
    /// The blob being read: its id, its count of parts and its bytes so far.
    blob: Option<(u64, i64, Vec<u8>)>,
    next_part: u64,
}

impl SeenLoader {
    pub fn new(partition: u32) -> SeenLoader {
        SeenLoader {
            seen: Seen::sealing(),
            partition,
            blob: None,
            next_part: 0,
        }
    }

    fn bad(&self, problem: String) -> StoreError {
        StoreError::State {
            account: format!("(dedup blob of partition {})", self.partition),
            problem,
        }
    }

    /// Takes the next part. Parts arrive in order, one blob after the other; a retried
    /// flush may have written a blob's parts twice (the same bytes).
    pub fn part(&mut self, part: BlobPart) -> Result<(), StoreError> {
        if self.blob.as_ref().is_some_and(|b| b.0 != part.key_hi) {
            self.finish_blob()?;
        }
        if self.blob.is_none() {
            self.next_part = 0;
            self.blob = Some((part.key_hi, part.usage_offset, Vec::new()));
        }
        if part.key_lo < self.next_part {
            return Ok(());
        }
        if part.key_lo != self.next_part {
            return Err(self.bad(format!(
                "blob {}: part {} missing",
                part.key_hi, self.next_part
            )));
        }
        if let Some((_, _, bytes)) = self.blob.as_mut() {
            bytes.extend_from_slice(&part.state);
        }
        self.next_part += 1;
        Ok(())
    }

    fn finish_blob(&mut self) -> Result<(), StoreError> {
        if let Some((id, count, bytes)) = self.blob.take() {
            if self.next_part != count as u64 {
                return Err(self.bad(format!("blob {id}: {} of {count} parts", self.next_part)));
            }
            self.seen
                .restore_blob(&bytes)
                .map_err(|e| self.bad(format!("blob {id}: {e}")))?;
        }
        Ok(())
    }

    /// Ends the blobs; returns the version the last sealed one covers (0 without any):
    /// only keys of later flushes are read one by one.
    pub fn blobs_done(&mut self) -> Result<u64, StoreError> {
        self.finish_blob()?;
        self.seen.finish_restore();
        Ok(self.seen.sealed_through().unwrap_or(0))
    }

    /// Adds the keys committed after the last sealed flush.
    pub fn rows(mut self, rows: Vec<SeenRow>) -> Seen {
        let mut written: BTreeMap<u64, Written> = BTreeMap::new();
        for row in rows {
            self.seen.restore(
                (u128::from(row.key_hi) << 64) | u128::from(row.key_lo),
                row.seen_at,
            );
            let w = written.entry(row.version).or_insert(Written {
                version: row.version,
                first_at: row.seen_at,
                last_at: row.seen_at,
            });
            w.first_at = w.first_at.min(row.seen_at);
            w.last_at = w.last_at.max(row.seen_at);
        }
        for w in written.into_values() {
            self.seen.restore_written(w);
        }
        self.seen
    }
}

/// A probable duplicate's key and the committed flushes that may hold it.
pub type Probable = (u128, Vec<Written>);

/// Keys per confirmation query: its text stays far below `max_query_size` (256 KiB).
const CONFIRM_KEYS: usize = 2_000;

/// Confirms probable duplicates against the exact rows: for each key, the latest first
/// arrival among its rows in the committed flushes named with it, or none. Reads only
/// the version range of those flushes (the table's order), not the whole window.
pub async fn confirm(
    client: &Client,
    (stream, partition): (&str, u32),
    claim: u64,
    probable: &[Probable],
) -> Result<Vec<(u128, Option<i64>)>, StoreError> {
    // Keys whose flushes fall in one range are asked together.
    let mut groups: BTreeMap<(u64, u64), Vec<&Probable>> = BTreeMap::new();
    for item in probable {
        let low = item.1.iter().map(|w| w.version).min().unwrap_or(0);
        let high = item.1.iter().map(|w| w.version).max().unwrap_or(0);
        groups.entry((low, high)).or_default().push(item);
    }
    // Only rows of this owner's lineage count: another owner's may carry the same versions.
    let fence = Lineage::own(&bases(client, stream, partition).await?, claim).sql();
    let mut answers = Vec::with_capacity(probable.len());
    for ((low, high), items) in groups {
        for chunk in items.chunks(CONFIRM_KEYS) {
            let keys = chunk
                .iter()
                .map(|(key, _)| format!("({},{})", (key >> 64) as u64, *key as u64))
                .collect::<Vec<_>>()
                .join(",");
            let rows: Vec<SeenRow> = client
                .query(&format!(
                    "SELECT key_hi, key_lo, version, seen_at FROM checkpoints \
                     WHERE {WHERE_PARTITION} AND row_kind = 'seen' \
                     AND version >= ? AND version <= ? AND {fence} \
                     AND (key_hi, key_lo) IN ({keys})"
                ))
                .bind(stream)
                .bind(partition)
                .bind(low)
                .bind(high)
                .fetch_all()
                .await?;
            for (key, written) in chunk {
                // Only rows of the committed flushes count: a crashed owner's uncommitted
                // rows may lie in the same range.
                let latest = rows
                    .iter()
                    .filter(|r| (u128::from(r.key_hi) << 64) | u128::from(r.key_lo) == *key)
                    .filter(|r| {
                        written
                            .binary_search_by_key(&r.version, |w| w.version)
                            .is_ok()
                    })
                    .map(|r| r.seen_at)
                    .max();
                answers.push((*key, latest));
            }
        }
    }
    Ok(answers)
}

/// Deletes a partition's checkpoint rows older than `version`, once the snapshot written
/// with `version` under `claim` has committed (its rows hold every live account and open
/// day, and every committed dedup key is in a sealed blob), except the dedup rows and
/// blobs still in the window (from `horizon_millis`), which no snapshot rewrites, and the
/// claim and base rows their lineage still walks through. ClickHouse runs the deletion as
/// a mutation in the background.
///
/// Fenced: nothing when a higher claim exists (this owner may have been superseded before
/// its snapshot counted), and only rows of claims up to `claim`. A claim that lands after
/// the check loads after the snapshot committed, so its lineage holds the snapshot and
/// needs nothing older that this deletes. Returns whether it deleted.
pub async fn delete_before(
    client: &Client,
    (stream, partition): (&str, u32),
    version: u64,
    claim: u64,
    horizon_millis: i64,
) -> Result<bool, StoreError> {
    let higher: u64 = client
        .query(&format!(
            "SELECT count() FROM checkpoints \
             WHERE {WHERE_PARTITION} AND row_kind = 'claim' AND version > ?"
        ))
        .bind(stream)
        .bind(partition)
        .bind(claim)
        .fetch_one()
        .await?;
    if higher > 0 {
        return Ok(false);
    }
    let oldest: Option<u64> = client
        .query(&format!(
            "SELECT claim FROM checkpoints WHERE {WHERE_PARTITION} \
             AND row_kind IN ('seen', 'seen_blob') AND seen_at >= ? ORDER BY claim LIMIT 1"
        ))
        .bind(stream)
        .bind(partition)
        .bind(horizon_millis)
        .fetch_optional()
        .await?;
    client
        .query(&format!(
            "ALTER TABLE checkpoints DELETE WHERE {WHERE_PARTITION} AND version < ? \
             AND claim <= ? AND NOT (row_kind IN ('claim', 'base') AND claim >= ?) \
             AND NOT (row_kind IN ('seen', 'seen_blob') AND seen_at >= ?)"
        ))
        .bind(stream)
        .bind(partition)
        .bind(version)
        .bind(claim)
        .bind(oldest.map_or(claim, |o| o.min(claim)))
        .bind(horizon_millis)
        .execute()
        .await?;
    Ok(true)
}

/// The rows of one partition's commit.
pub struct Commit<'a> {
    pub stream: &'a str,
    pub partition: u32,
    pub version: u64,
    /// The claim this owner writes under.
    pub claim: u64,
    pub usage_offset: i64,
    pub commands_offset: i64,
    pub arrival_high: i64,
    pub written_at: u32,
    /// `pipeline.rollup_segment_records`, kept in the offsets row (its `seen_at`).
    pub segment_records: u32,
}

impl Commit<'_> {
    fn row(&self, row_kind: &str) -> CheckpointRow {
        CheckpointRow {
            stream: self.stream.to_string(),
            partition: self.partition,
            row_kind: row_kind.to_string(),
            account: String::new(),
            key_hi: 0,
            key_lo: 0,
            version: self.version,
            usage_offset: self.usage_offset,
            commands_offset: self.commands_offset,
            arrival_high: self.arrival_high,
            state: Vec::new(),
            seen_at: 0,
            written_at: self.written_at,
            claim: self.claim,
        }
    }

    pub fn offsets(&self) -> CheckpointRow {
        let mut row = self.row("offsets");
        row.seen_at = i64::from(self.segment_records);
        row
    }

    pub fn state(&self, account: &str, state: &AccountState) -> CheckpointRow {
        let mut row = self.row("state");
        row.account = account.to_string();
        row.state = state_codec::encode(state);
        row
    }

    /// The committed totals of one open day of `account`.
    pub fn day(&self, account: &str, day: &StoredDay) -> CheckpointRow {
        let mut row = self.row("day");
        row.account = account.to_string();
        row.key_hi = rollup::checkpoint_key(&day.key);
        row.key_lo = day.key.group_hash();
        row.state = day.encode();
        row
    }

    /// A sealed dedup blob, in parts: `key_hi` names the blob (this flush's version),
    /// `key_lo` the part, `usage_offset` the number of parts, `seen_at` its latest id's
    /// first arrival (it expires whole after that).
    pub fn seen_blob(&self, blob: &[u8]) -> Vec<CheckpointRow> {
        let last_at = dedup::blob_last_at(blob).unwrap_or(i64::MAX);
        let parts = blob.len().div_ceil(BLOB_PART_BYTES).max(1);
        (0..parts)
            .map(|i| {
                let mut row = self.row("seen_blob");
                row.key_hi = self.version;
                row.key_lo = i as u64;
                row.usage_offset = parts as i64;
                row.seen_at = last_at;
                let end = ((i + 1) * BLOB_PART_BYTES).min(blob.len());
                row.state = blob[i * BLOB_PART_BYTES..end].to_vec();
                row
            })
            .collect()
    }

    pub fn seen(&self, key: u128, seen_at: i64) -> CheckpointRow {
        let mut row = self.row("seen");
        row.key_hi = (key >> 64) as u64;
        row.key_lo = key as u64;
        row.seen_at = seen_at;
        row
    }
}
