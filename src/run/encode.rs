//! Encoding a flush's rows, off the run thread. A partition drafts what it applied (the
//! ledger entries as the core made them, copies of the states it changed, its open days,
//! its dedup keys); the flush's writing task turns the drafts into ClickHouse rows before
//! its first INSERT, so the run thread neither allocates a row's strings nor encodes a
//! state.

use chrono::{DateTime, Utc};
use tally_core::{AccountState, LedgerEntry};

use crate::store::checkpoint::Commit;
use crate::store::rollup::{daily_row, StoredDay};
use crate::store::rows::{balance_rows, BalanceRow, LedgerRow, LotRow};
use crate::store::writes::Batch;

/// A flush's rows: drafted by the run thread, encoded by the first attempt to write them
/// and kept so for its retries.
pub enum Rows {
    Drafted {
        drafts: Vec<Draft>,
        alerts: Vec<tally_core::alerts::Alert>,
    },
    Encoded(Batch),
}

/// One partition's part of a flush, as the run thread took it.
pub struct Draft {
    pub partition: i32,
    pub version: u64,
    pub usage_offset: i64,
    pub commands_offset: i64,
    /// Latest broker timestamp applied, in seconds: the clock of the balances and of the
    /// checkpoint.
    pub arrival_high: i64,
    pub as_of: DateTime<Utc>,
    pub written_at: u32,
    pub segment_records: u32,
    /// Ledger entries with their ids, in the order they were applied.
    pub ledger: Vec<(String, LedgerEntry)>,
    /// The states to write: those changed since the last flush, or all at a snapshot.
    pub states: Vec<(String, AccountState)>,
    /// Open days to write.
    pub days: Vec<(String, StoredDay)>,
    /// New dedup keys, one row each.
    pub seen: Vec<(u128, i64)>,
    /// Committed dedup keys sealed into one blob, when this flush seals.
    pub blob: Option<Vec<u8>>,
}

impl Rows {
    /// The rows as ClickHouse takes them; `stream` names the checkpoint's stream.
    pub fn encode(self, stream: &str) -> Batch {
        match self {
            Rows::Encoded(batch) => batch,
            Rows::Drafted { drafts, alerts } => {
                let mut batch = Batch {
                    alerts,
                    ..Batch::default()
                };
                for draft in drafts {
                    draft.encode(stream, &mut batch);
                }
                batch
            }
        }
    }
}

impl Draft {
    /// Appends this partition's rows to `batch`; its checkpoint rows end with the offsets
    /// row.
    fn encode(self, stream: &str, batch: &mut Batch) {
        let version = self.version;
        let partition = self.partition as u32;
        batch.ledger.reserve(self.ledger.len());
        for (entry_id, entry) in self.ledger {
            let mut row = LedgerRow::new(entry_id, entry, version);
            row.partition = partition;
            batch.ledger.push(row);
        }
        let commit = Commit {
            stream,
            partition,
            version,
            usage_offset: self.usage_offset,
            commands_offset: self.commands_offset,
            arrival_high: self.arrival_high,
            written_at: self.written_at,
            segment_records: self.segment_records,
        };
        for (account, state) in &self.states {
            for lot in &state.lots {
                let mut row = LotRow::new(account, lot, version);
                row.partition = partition;
                batch.lots.push(row);
            }
            batch.balances.extend(
                balance_rows(account, &state.lots, self.as_of, version)
                    .into_iter()
                    .map(|row| BalanceRow { partition, ..row }),
            );
            batch.checkpoint.push(commit.state(account, state));
        }
        for (account, day) in &self.days {
            batch
                .daily
                .push(daily_row(account, day, self.partition, version));
            batch.checkpoint.push(commit.day(account, day));
        }
        for &(key, seen_at) in &self.seen {
            batch.checkpoint.push(commit.seen(key, seen_at));
        }
        if let Some(blob) = &self.blob {
            batch.checkpoint.extend(commit.seen_blob(blob));
        }
        batch.checkpoint.push(commit.offsets());
    }
}
