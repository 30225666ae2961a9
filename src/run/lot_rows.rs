//! Which accounts' `lots` rows a flush writes: those whose lots, as the table shows them,
//! changed since this owner last wrote them. A hold or a release changes only what a lot
//! has reserved (`held`), which the table does not show, so their flushes write no `lots`
//! rows: one INSERT fewer a hold, which on ClickHouse 18.16 is a part and its merges.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use rustc_hash::FxHashMap;
use tally_core::Lot;

use crate::store::rows::LotRow;

/// Whether a draft writes an account's `lots` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotRows {
    /// They changed since this owner last wrote them, or it has not yet.
    Write,
    /// The rows this owner wrote last still show them (the table keeps the latest version
    /// of each lot).
    Unchanged,
}

/// The lots each account's rows last showed, as fingerprints, since this owner claimed the
/// partition: a new owner writes every account's rows the first time, whatever an earlier
/// one wrote (its last flush may not have committed).
#[derive(Default)]
pub struct LotsWritten {
    written: FxHashMap<String, u64>,
    /// Keyed per process, so lot ids chosen to collide cannot hide a change.
    keys: RandomState,
}

impl LotsWritten {
    /// Notes `lots` as written for `account` unless they are what its rows show already.
    pub fn note(&mut self, account: &str, lots: &[Lot]) -> LotRows {
        let print = LotRow::fingerprint(lots, self.keys.build_hasher());
        match self.written.get_mut(account) {
            Some(last) if *last == print => LotRows::Unchanged,
            Some(last) => {
                *last = print;
                LotRows::Write
            }
            None => {
                self.written.insert(account.to_string(), print);
                LotRows::Write
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use tally_core::{Credits, LotKind};

    fn lot() -> Lot {
        let at: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().expect("a valid time");
        Lot {
            id: "g-1".into(),
            pool: "ai".into(),
            kind: LotKind::Promotional,
            granted: Credits::from_milli(10_000),
            remaining: Credits::from_milli(10_000),
            effective_at: at,
            expires_at: None,
            priority: None,
            seq: 0,
            voided: false,
            expired: false,
            from_plan: false,
            held: Credits::ZERO,
        }
    }

    #[test]
    fn only_what_the_table_shows_makes_a_write() {
        let mut written = LotsWritten::default();
        let mut lots = vec![lot()];
        assert_eq!(written.note("acme", &lots), LotRows::Write, "first time");
        assert_eq!(written.note("acme", &lots), LotRows::Unchanged);
        lots[0].held = Credits::from_milli(3_000);
        assert_eq!(written.note("acme", &lots), LotRows::Unchanged, "a hold");
        assert_eq!(
            written.note("globex", &lots),
            LotRows::Write,
            "another account"
        );
        let at = lots[0].effective_at;
        let changes: [fn(&mut Lot, DateTime<Utc>); 11] = [
            |l, _| l.id = "g-2".into(),
            |l, _| l.pool = "video".into(),
            |l, _| l.kind = LotKind::Purchased,
            |l, _| l.granted = Credits::from_milli(20_000),
            |l, _| l.remaining = Credits::from_milli(9_000),
            |l, at| l.effective_at = at + chrono::TimeDelta::seconds(1),
            |l, at| l.expires_at = Some(at),
            |l, _| l.priority = Some(0),
            |l, _| l.seq = 1,
            |l, _| l.voided = true,
            |l, _| l.expired = true,
        ];
        for (i, change) in changes.iter().enumerate() {
            let before = lots.clone();
            change(&mut lots[0], at);
            assert_eq!(written.note("acme", &lots), LotRows::Write, "change {i}");
            assert_ne!(
                LotRow::new("acme", &before[0], 1),
                LotRow::new("acme", &lots[0], 1)
            );
        }
        lots[0].from_plan = true;
        assert_eq!(written.note("acme", &lots), LotRows::Write, "from_plan");
        lots.push(lot());
        assert_eq!(written.note("acme", &lots), LotRows::Write, "a new lot");
        lots.pop();
        assert_eq!(written.note("acme", &lots), LotRows::Write, "a lot gone");
    }
}
