//! Encoding a flush's rows, off the run thread. A partition drafts what it applied (its
//! ledger rows, copies of the states it changed, its open days, its dedup keys); the
//! flush's writing task turns the drafts into ClickHouse rows before its first INSERT, so
//! the run thread neither encodes a state nor builds its lot, balance and day rows.

use chrono::{DateTime, Utc};
use tally_core::AccountState;

use super::lot_rows::LotRows;
use crate::store::checkpoint::Commit;
use crate::store::ledger_block::LedgerBlock;
use crate::store::rollup::{daily_row, StoredDay};
use crate::store::rows::{balance_rows, BalanceRow, LotRow};
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
    /// The claim this owner writes under (`checkpoint::Lineage`).
    pub claim: u64,
    pub usage_offset: i64,
    pub commands_offset: i64,
    /// Latest broker timestamp applied, in seconds: the clock of the balances and of the
    /// checkpoint.
    pub arrival_high: i64,
    pub as_of: DateTime<Utc>,
    pub written_at: u32,
    pub segment_records: u32,
    /// Ledger rows in the order they were applied, encoded.
    pub ledger: LedgerBlock,
    /// The states to write: those changed since the last flush, or all at a snapshot; and
    /// whether each account's `lots` rows go too.
    pub states: Vec<(String, AccountState, LotRows)>,
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
                reserve(&mut batch, &drafts);
                for draft in drafts {
                    draft.encode(stream, &mut batch);
                }
                batch
            }
        }
    }
}

/// Room for every row the drafts make, taken once: the vectors would otherwise grow by
/// doubling, copying every row built so far several times over.
fn reserve(batch: &mut Batch, drafts: &[Draft]) {
    let count = |rows: fn(&Draft) -> usize| drafts.iter().map(rows).sum::<usize>();
    let lots = count(|d| d.states.iter().map(|(_, s, _)| s.lots.len()).sum());
    batch.ledger.reserve(drafts.len());
    batch.lots.reserve(lots);
    batch.balances.reserve(count(|d| d.states.len()));
    batch.daily.reserve(count(|d| d.days.len()));
    batch.checkpoint.reserve(count(|d| {
        d.states.len() + d.days.len() + d.seen.len() + usize::from(d.blob.is_some()) + 1
    }));
}

impl Draft {
    /// Appends this partition's rows to `batch`; its checkpoint rows end with the offsets
    /// row.
    fn encode(self, stream: &str, batch: &mut Batch) {
        let version = self.version;
        let partition = self.partition as u32;
        debug_assert_eq!(
            (self.ledger.version(), self.ledger.partition()),
            (version, partition),
            "ledger rows of this draft"
        );
        if !self.ledger.is_empty() {
            batch.ledger.push(self.ledger);
        }
        let commit = Commit {
            stream,
            partition,
            version,
            claim: self.claim,
            usage_offset: self.usage_offset,
            commands_offset: self.commands_offset,
            arrival_high: self.arrival_high,
            written_at: self.written_at,
            segment_records: self.segment_records,
        };
        for (account, state, lots) in &self.states {
            if *lots == LotRows::Write {
                for lot in &state.lots {
                    let mut row = LotRow::new(account, lot, version);
                    row.partition = partition;
                    batch.lots.push(row);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state_codec;

    fn draft(partition: i32, version: u64) -> Draft {
        Draft {
            partition,
            version,
            // A claim apart from the version, so a row that took one for the other shows.
            claim: 1_000 + version,
            usage_offset: 120,
            commands_offset: 7,
            arrival_high: 1_700_000_000,
            as_of: from_secs(1_700_000_000),
            written_at: 1_700_000_100,
            segment_records: 1_000,
            ledger: LedgerBlock::new(partition as u32, version, 0),
            states: vec![
                ("acme".to_string(), AccountState::default(), LotRows::Write),
                (
                    "globex".to_string(),
                    AccountState::default(),
                    LotRows::Write,
                ),
            ],
            days: Vec::new(),
            seen: vec![((1 << 64) | 5, 11), (9, 12)],
            blob: None,
        }
    }

    fn from_secs(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("a valid time")
    }

    #[test]
    fn each_partition_encodes_its_states_then_its_keys_and_ends_with_its_offsets() {
        let rows = Rows::Drafted {
            drafts: vec![draft(0, 4), draft(3, 9)],
            alerts: Vec::new(),
        };
        let batch = rows.encode("usage+commands");
        let kinds: Vec<(u32, &str, &str, u64, u64)> = batch
            .checkpoint
            .iter()
            .map(|r| {
                (
                    r.partition,
                    r.row_kind.as_str(),
                    r.account.as_str(),
                    r.version,
                    r.claim,
                )
            })
            .collect();
        let expected = |p: u32, v: u64| {
            let c = 1_000 + v;
            [
                (p, "state", "acme", v, c),
                (p, "state", "globex", v, c),
                (p, "seen", "", v, c),
                (p, "seen", "", v, c),
                (p, "offsets", "", v, c),
            ]
        };
        let mut want = expected(0, 4).to_vec();
        want.extend(expected(3, 9));
        assert_eq!(kinds, want);
        let offsets = &batch.checkpoint[4];
        assert_eq!(
            (
                offsets.stream.as_str(),
                offsets.usage_offset,
                offsets.commands_offset
            ),
            ("usage+commands", 120, 7)
        );
        assert_eq!(
            (offsets.seen_at, offsets.written_at),
            (1_000, 1_700_000_100)
        );
        let key = &batch.checkpoint[2];
        assert_eq!((key.key_hi, key.key_lo, key.seen_at), (1, 5, 11));
        let state = state_codec::decode(&batch.checkpoint[0].state).expect("a state");
        assert_eq!(state, AccountState::default());
        // Accounts without lots have no lot or balance rows.
        assert!(batch.lots.is_empty() && batch.balances.is_empty() && batch.ledger.is_empty());
    }

    #[test]
    fn encoded_rows_stay_as_they_are() {
        let batch = Rows::Drafted {
            drafts: vec![draft(1, 2)],
            alerts: Vec::new(),
        }
        .encode("s");
        let again = Rows::Encoded(batch).encode("another stream");
        assert!(again.checkpoint.iter().all(|r| r.stream == "s"));
    }
}
