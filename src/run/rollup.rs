//! Daily rollups kept as running absolute totals, so a flush writes them without reading
//! the ledger back. A total covers one (account, day, service, user, feature) within one
//! segment of the usage log: `i64::from(SIZE)` offsets of one partition. Which segment a
//! call counts in is a function of its record's position alone, so a replay after a crash
//! rebuilds exactly the rows the crashed run wrote, whatever the interleaving, and writes
//! them again with a higher version: never adds. A segment's totals stay open only until
//! the partition has applied past its end, so the open totals (and the checkpoint that
//! carries them) are bounded by one segment of traffic, not by history or the lateness
//! window; a late call opens a row of its old day in the current segment.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};

use tally_core::{EntryType, LedgerEntry, Name};

use crate::store::rollup::{group_hash, segment_of, DayKey, StoredDay, Totals};
use crate::store::rows::day_number;

/// One open day of an account: its key (kept to write the row) and its totals.
#[derive(Debug)]
struct Open {
    key: OpenKey,
    totals: Totals,
    /// Changed since the last flush.
    dirty: bool,
}

/// A [`DayKey`] holding the entry's shared names: a new day costs three pointer copies, not
/// three string copies (in a busy partition nearly every call opens a day of its own).
/// The names stay on the run thread; a flush takes owned copies (`DayKey`).
#[derive(Debug)]
struct OpenKey {
    segment: u64,
    day: u16,
    service: Name,
    user: Name,
    feature: Name,
}

impl OpenKey {
    fn stored(&self) -> DayKey {
        DayKey {
            segment: self.segment,
            day: self.day,
            service: self.service.as_str().to_owned(),
            user: self.user.as_str().to_owned(),
            feature: self.feature.as_str().to_owned(),
        }
    }
}

/// The open days of one partition's accounts, by account, then by (segment, day, group
/// hash): the same identity the checkpoint gives a day row, so a call to a day already
/// open costs two lookups and no allocation.
#[derive(Debug)]
pub struct Rollups {
    /// Usage records per segment.
    size: u32,
    open: FxHashMap<String, FxHashMap<(u64, u16, u64), Open>>,
    /// Accounts with a day changed since the last flush.
    dirty: FxHashSet<String>,
    /// Days changed since the last flush: the room `take_changed` takes at once.
    dirty_days: usize,
}

impl Rollups {
    /// No open totals, segments of `size` usage records.
    pub fn new(size: u32) -> Rollups {
        Rollups {
            size,
            open: FxHashMap::default(),
            dirty: FxHashSet::default(),
            dirty_days: 0,
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
            let DayKey {
                segment,
                day: number,
                service,
                user,
                feature,
            } = day.key;
            let key = OpenKey {
                segment,
                day: number,
                service: service.into(),
                user: user.into(),
                feature: feature.into(),
            };
            rollups.open.entry(account).or_default().insert(
                id,
                Open {
                    key,
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
            None => self
                .open
                .entry(entry.account.as_str().to_owned())
                .or_default(),
        };
        let open = days.entry(id).or_insert_with(|| Open {
            key: OpenKey {
                segment,
                day,
                service: entry.service.clone(),
                user: entry.user.clone(),
                feature: entry.feature.clone(),
            },
            totals: Totals::default(),
            dirty: false,
        });
        open.totals.add(entry);
        if !open.dirty {
            open.dirty = true;
            self.dirty_days += 1;
            if !self.dirty.contains(entry.account.as_str()) {
                self.dirty.insert(entry.account.as_str().to_owned());
            }
        }
    }

    /// The rows changed since the last call, as absolute totals.
    pub fn take_changed(&mut self) -> Vec<(String, StoredDay)> {
        let dirty_days = std::mem::take(&mut self.dirty_days);
        let mut changed = Vec::with_capacity(dirty_days);
        for account in std::mem::take(&mut self.dirty) {
            let Some(days) = self.open.get_mut(&account) else {
                continue;
            };
            let first = changed.len();
            for open in days.values_mut().filter(|open| open.dirty) {
                open.dirty = false;
                changed.push((
                    String::new(),
                    StoredDay {
                        key: open.key.stored(),
                        totals: open.totals,
                    },
                ));
            }
            // The account's name taken from the set into its last day, copied for the
            // others (usually none: a flush changes one day of most accounts).
            if let Some(((last, _), rest)) = changed[first..].split_last_mut() {
                for (name, _) in rest {
                    name.clone_from(&account);
                }
                *last = account;
            }
        }
        debug_assert_eq!(
            changed.len(),
            dirty_days,
            "every day counted dirty is taken"
        );
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
                            key: open.key.stored(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger_block;
    use crate::store::rollup::{checkpoint_key, daily_row, first_open_key};
    use tally_core::LotKind;

    /// A call of `user`, every lot named "l".
    fn call(account: &str, user: &str, paid: &[(LotKind, i64)], shortfall: i64) -> LedgerEntry {
        let paid: Vec<(&str, LotKind, i64)> = paid.iter().map(|&(k, c)| ("l", k, c)).collect();
        LedgerEntry {
            user: user.into(),
            ..ledger_block::tests::call(account, &paid, shortfall)
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
