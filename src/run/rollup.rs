//! Daily rollups kept as running absolute totals, so a flush writes them without reading
//! the ledger back. A total covers one (account, day, service, user, feature) within one
//! segment of the usage log: `i64::from(SIZE)` offsets of one partition. Which segment a
//! call counts in is a function of its record's position alone, so a replay after a crash
//! rebuilds exactly the rows the crashed run wrote, whatever the interleaving, and writes
//! them again with a higher version: never adds. A segment's totals stay open only until
//! the partition has applied past its end, so the open totals (and the checkpoint that
//! carries them) are bounded by one segment of traffic, not by history or the lateness
//! window; a late call opens a row of its old day in the current segment.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tally_core::{EntryType, LedgerEntry, LotKind};

use crate::store::rows::{day_number, DailyUsageRow};

/// The segment of the usage record at `offset`, with `size` records a segment
/// (`pipeline.rollup_segment_records`). Segment 0 is the rows written before segments
/// existed (the legacy `daily_usage` table), so counting starts at 1.
pub fn segment_of(offset: i64, size: u32) -> u64 {
    (offset.max(0) / i64::from(size.max(1))) as u64 + 1
}

/// What identifies one rollup row of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DayKey {
    /// The segment of the usage log the totals cover (`segment_of`); 0 in totals stored
    /// before segments, which are never loaded again.
    #[serde(default)]
    pub segment: u64,
    /// Days since 1970-01-01 in the account's time zone.
    pub day: u16,
    pub service: String,
    pub user: String,
    pub feature: String,
}

/// One rollup row's totals; credits in thousandths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub calls: u64,
    pub failed_calls: u64,
    pub credits: i64,
    pub included: i64,
    pub promotional: i64,
    pub purchased: i64,
    pub flex: i64,
    pub shortfall: i64,
}

impl Totals {
    fn add(&mut self, entry: &LedgerEntry) {
        self.calls += 1;
        if entry.status == tally_core::event::Status::Failed {
            self.failed_calls += 1;
        }
        self.credits = self.credits.saturating_add(entry.credits.milli());
        self.shortfall = self.shortfall.saturating_add(entry.shortfall.milli());
        for payment in &entry.paid {
            let slot = match payment.kind {
                LotKind::Included => &mut self.included,
                LotKind::Promotional => &mut self.promotional,
                LotKind::Purchased => &mut self.purchased,
                LotKind::Flex => &mut self.flex,
            };
            *slot = slot.saturating_add(payment.credits.milli());
        }
    }
}

/// A stored open day: the key and its totals, as the checkpoint carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDay {
    #[serde(flatten)]
    pub key: DayKey,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The checkpoint's `key_hi` of an open total: segment, then day, so the totals of the
/// segments a partition has applied past sort below a bound and are never loaded.
pub fn checkpoint_key(key: &DayKey) -> u64 {
    key.segment << 16 | u64::from(key.day)
}

/// The lowest `key_hi` of the totals still open once `usage_offset` is the next usage
/// record to apply.
pub fn first_open_key(usage_offset: i64, size: u32) -> u64 {
    segment_of(usage_offset, size) << 16
}

/// One open day of an account: its key (kept to write the row) and its totals.
#[derive(Debug)]
struct Open {
    key: DayKey,
    totals: Totals,
    /// Changed since the last flush.
    dirty: bool,
}

/// The open days of one partition's accounts, by account, then by (segment, day, group
/// hash): the same identity the checkpoint gives a day row, so a call to a day already
/// open costs two lookups and no allocation.
#[derive(Debug)]
pub struct Rollups {
    /// Usage records per segment.
    size: u32,
    open: HashMap<String, HashMap<(u64, u16, u64), Open>>,
    /// Accounts with a day changed since the last flush.
    dirty: HashSet<String>,
}

impl Rollups {
    /// No open totals, segments of `size` usage records.
    pub fn new(size: u32) -> Rollups {
        Rollups {
            size,
            open: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Usage records per segment.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Starts from the committed totals.
    pub fn restore(size: u32, days: impl IntoIterator<Item = (String, StoredDay)>) -> Rollups {
        let mut rollups = Rollups::new(size);
        for (account, day) in days {
            let id = (day.key.segment, day.key.day, day.key.group_hash());
            rollups.open.entry(account).or_default().insert(
                id,
                Open {
                    key: day.key,
                    totals: day.totals,
                    dirty: false,
                },
            );
        }
        rollups
    }

    /// Counts a usage entry, from the usage record at `offset`, in its day; other
    /// entries do not roll up.
    pub fn add(&mut self, entry: &LedgerEntry, offset: i64) {
        if entry.entry_type != EntryType::Usage {
            return;
        }
        let day = day_number(entry.day);
        let segment = segment_of(offset, self.size);
        let id = (
            segment,
            day,
            group_hash([&entry.service, &entry.user, &entry.feature]),
        );
        let days = match self.open.get_mut(entry.account.as_str()) {
            Some(days) => days,
            None => self.open.entry(entry.account.to_string()).or_default(),
        };
        let open = days.entry(id).or_insert_with(|| Open {
            key: DayKey {
                segment,
                day,
                service: entry.service.to_string(),
                user: entry.user.to_string(),
                feature: entry.feature.to_string(),
            },
            totals: Totals::default(),
            dirty: false,
        });
        open.totals.add(entry);
        if !open.dirty {
            open.dirty = true;
            if !self.dirty.contains(entry.account.as_str()) {
                self.dirty.insert(entry.account.to_string());
            }
        }
    }

    /// The rows changed since the last call, as absolute totals.
    pub fn take_changed(&mut self) -> Vec<(String, StoredDay)> {
        let mut changed = Vec::new();
        for account in std::mem::take(&mut self.dirty) {
            let Some(days) = self.open.get_mut(&account) else {
                continue;
            };
            for open in days.values_mut().filter(|open| open.dirty) {
                open.dirty = false;
                changed.push((
                    account.clone(),
                    StoredDay {
                        key: open.key.clone(),
                        totals: open.totals,
                    },
                ));
            }
        }
        changed
    }

    /// Every open day, for a snapshot of the partition.
    pub fn all(&self) -> Vec<(String, StoredDay)> {
        self.open
            .iter()
            .flat_map(|(account, days)| {
                days.values().map(move |open| {
                    (
                        account.clone(),
                        StoredDay {
                            key: open.key.clone(),
                            totals: open.totals,
                        },
                    )
                })
            })
            .collect()
    }

    /// Forgets the totals of segments before the one of `usage_offset`, the next usage
    /// record to apply: no call can count in them any more. Totals not yet taken into a
    /// flush stay until they are.
    pub fn close_before(&mut self, usage_offset: i64) {
        let first_open = segment_of(usage_offset, self.size);
        self.open.retain(|_, days| {
            days.retain(|(segment, _, _), open| *segment >= first_open || open.dirty);
            !days.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.open.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// FNV-1a of (service, user, feature), each part ended by 0xff (a byte no UTF-8 text
/// holds), so ("ab", "c") and ("a", "bc") differ.
fn group_hash(parts: [&str; 3]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

impl DayKey {
    /// A stable 64-bit name of (service, user, feature) within an account's day, so the
    /// checkpoint can pick the latest totals of each row (FNV-1a, the same in every
    /// process and release).
    pub fn group_hash(&self) -> u64 {
        group_hash([&self.service, &self.user, &self.feature])
    }
}

/// The `daily_rollups` row of an open day of `partition`. Its `segment` column names the
/// partition too, so rows of an account that moved partitions can never replace each other.
pub fn daily_row(account: &str, day: &StoredDay, partition: i32, version: u64) -> DailyUsageRow {
    let t = &day.totals;
    DailyUsageRow {
        day: day.key.day,
        account: account.to_string(),
        service: day.key.service.clone(),
        user: day.key.user.clone(),
        feature: day.key.feature.clone(),
        segment: (u64::from(partition.unsigned_abs()) << 40) | day.key.segment,
        calls: t.calls,
        failed_calls: t.failed_calls,
        credits: t.credits,
        included: t.included,
        promotional: t.promotional,
        purchased: t.purchased,
        shortfall: t.shortfall,
        version,
        flex: t.flex,
        partition: partition.unsigned_abs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};
    use tally_core::lots::Payment;
    use tally_core::Credits;

    fn call(account: &str, user: &str, paid: &[(LotKind, i64)], shortfall: i64) -> LedgerEntry {
        let credits: i64 = paid.iter().map(|p| p.1).sum::<i64>() + shortfall;
        LedgerEntry {
            id: None,
            entry_type: EntryType::Usage,
            account: account.into(),
            time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap(),
            day: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            service: "studio".into(),
            user: user.into(),
            feature: "erase".into(),
            variant: "".into(),
            quantity: Credits::from_whole(1),
            status: tally_core::event::Status::Succeeded,
            pool: "ai".into(),
            credits: Credits::from_milli(credits),
            paid: paid
                .iter()
                .map(|(kind, c)| Payment {
                    lot: "l".into(),
                    kind: *kind,
                    credits: Credits::from_milli(*c),
                })
                .collect(),
            shortfall: Credits::from_milli(shortfall),
            matrix_version: "v".into(),
            event_id: "e".into(),
            lot: String::new(),
            lot_kind: None,
            payment_method: None,
            payment_reference: String::new(),
            comment: String::new(),
            hold: None,
        }
    }

    const SIZE: u32 = 50_000;

    #[test]
    fn totals_are_absolute_and_continue_from_what_was_restored() {
        let mut rollups = Rollups::new(SIZE);
        rollups.add(
            &call(
                "a",
                "kim",
                &[(LotKind::Included, 5000), (LotKind::Flex, 2000)],
                0,
            ),
            10,
        );
        rollups.add(&call("a", "kim", &[(LotKind::Purchased, 7000)], 1000), 11);
        rollups.add(&call("a", "lee", &[(LotKind::Promotional, 7000)], 0), 12);
        let mut changed = rollups.take_changed();
        changed.sort_by(|a, b| a.1.key.user.cmp(&b.1.key.user));
        assert_eq!(changed.len(), 2);
        let kim = changed[0].1.totals;
        assert_eq!(
            kim,
            Totals {
                calls: 2,
                failed_calls: 0,
                credits: 15000,
                included: 5000,
                promotional: 0,
                purchased: 7000,
                flex: 2000,
                shortfall: 1000,
            }
        );
        assert!(rollups.take_changed().is_empty(), "nothing changed since");
        // A new owner restores the committed totals and adds to them.
        let mut next = Rollups::restore(SIZE, changed);
        next.add(&call("a", "kim", &[(LotKind::Included, 1000)], 0), 13);
        let again = next.take_changed();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.totals.calls, 3);
        assert_eq!(again[0].1.totals.credits, 16000);
        assert_eq!(next.len(), 2);
        next.close_before(20);
        assert_eq!(next.len(), 2, "the segment is still open");
        next.close_before(i64::from(SIZE));
        assert!(next.is_empty(), "applied past the segment's end");
    }

    #[test]
    fn the_group_hash_tells_apart_what_concatenation_would_not() {
        let key = |s: &str, u: &str| DayKey {
            segment: 1,
            day: 1,
            service: s.into(),
            user: u.into(),
            feature: "f".into(),
        };
        assert_ne!(key("ab", "c").group_hash(), key("a", "bc").group_hash());
        assert_eq!(key("ab", "c").group_hash(), key("ab", "c").group_hash());
    }

    /// Which segment a call counts in depends on its record alone: the same calls give
    /// the same rows however they are cut into flushes, and a closed segment's totals
    /// leave only once they went into a flush.
    #[test]
    fn segments_follow_the_log_and_close_once_written() {
        let calls = [
            (0, "kim"),
            (i64::from(SIZE) - 1, "kim"),
            (i64::from(SIZE), "kim"),
        ];
        let mut rollups = Rollups::new(SIZE);
        for (offset, user) in calls {
            rollups.add(&call("a", user, &[(LotKind::Purchased, 1000)], 0), offset);
        }
        assert_eq!(rollups.len(), 2, "two segments of one day");
        rollups.close_before(i64::from(SIZE) + 1);
        assert_eq!(rollups.len(), 2, "nothing leaves before it is written");
        let mut changed = rollups.take_changed();
        changed.sort_by_key(|(_, day)| day.key.segment);
        let segments: Vec<(u64, u64)> = changed
            .iter()
            .map(|(_, day)| (day.key.segment, day.totals.calls))
            .collect();
        assert_eq!(segments, [(1, 2), (2, 1)]);
        rollups.close_before(i64::from(SIZE) + 1);
        assert_eq!(rollups.len(), 1, "the first segment is closed");
        // The rows name the partition, and the checkpoint orders totals by segment first.
        let row = daily_row("a", &changed[1].1, 3, 7);
        assert_eq!(row.segment, (3 << 40) | 2);
        assert!(checkpoint_key(&changed[0].1.key) < first_open_key(i64::from(SIZE), SIZE));
        assert!(checkpoint_key(&changed[1].1.key) >= first_open_key(i64::from(SIZE), SIZE));
    }
}
