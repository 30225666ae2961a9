//! Daily rollups kept as running absolute totals per open day, so a flush writes them
//! without reading the ledger back. The totals of the days still open to late events
//! travel in the checkpoint, so a new owner (or a replay after a crash) continues from
//! exactly what was committed: a replay rebuilds the same absolute values, never adds.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tally_core::{EntryType, LedgerEntry, LotKind};

use crate::store::rows::{day_number, DailyUsageRow};

/// What identifies one rollup row of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DayKey {
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

/// One open day of an account: its key (kept to write the row) and its totals.
#[derive(Debug)]
struct Open {
    key: DayKey,
    totals: Totals,
    /// Changed since the last flush.
    dirty: bool,
}

/// The open days of one partition's accounts, by account, then by (day, group hash): the
/// same identity the checkpoint gives a day row, so a call to a day already open costs
/// two lookups and no allocation.
#[derive(Debug, Default)]
pub struct Rollups {
    open: HashMap<String, HashMap<(u16, u64), Open>>,
    /// Accounts with a day changed since the last flush.
    dirty: HashSet<String>,
}

impl Rollups {
    /// Starts from the committed totals.
    pub fn restore(days: impl IntoIterator<Item = (String, StoredDay)>) -> Rollups {
        let mut rollups = Rollups::default();
        for (account, day) in days {
            let id = (day.key.day, day.key.group_hash());
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

    /// Counts a usage entry in its day; other entries do not roll up.
    pub fn add(&mut self, entry: &LedgerEntry) {
        if entry.entry_type != EntryType::Usage {
            return;
        }
        let day = day_number(entry.day);
        let id = (
            day,
            group_hash([&entry.service, &entry.user, &entry.feature]),
        );
        let days = match self.open.get_mut(&entry.account) {
            Some(days) => days,
            None => self.open.entry(entry.account.clone()).or_default(),
        };
        let open = days.entry(id).or_insert_with(|| Open {
            key: DayKey {
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
            if !self.dirty.contains(&entry.account) {
                self.dirty.insert(entry.account.clone());
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

    /// Forgets days before `first_open`: no event that late can be applied any more.
    pub fn close_before(&mut self, first_open: u16) {
        self.open.retain(|_, days| {
            days.retain(|(day, _), _| *day >= first_open);
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

/// The `daily_usage` row of an open day.
pub fn daily_row(account: &str, day: &StoredDay, version: u64) -> DailyUsageRow {
    let t = &day.totals;
    DailyUsageRow {
        day: day.key.day,
        account: account.to_string(),
        service: day.key.service.clone(),
        user: day.key.user.clone(),
        feature: day.key.feature.clone(),
        calls: t.calls,
        failed_calls: t.failed_calls,
        credits: t.credits,
        included: t.included,
        promotional: t.promotional,
        purchased: t.purchased,
        shortfall: t.shortfall,
        version,
        flex: t.flex,
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
            variant: String::new(),
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

    #[test]
    fn totals_are_absolute_and_continue_from_what_was_restored() {
        let mut rollups = Rollups::default();
        rollups.add(&call(
            "a",
            "kim",
            &[(LotKind::Included, 5000), (LotKind::Flex, 2000)],
            0,
        ));
        rollups.add(&call("a", "kim", &[(LotKind::Purchased, 7000)], 1000));
        rollups.add(&call("a", "lee", &[(LotKind::Promotional, 7000)], 0));
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
        let mut next = Rollups::restore(changed);
        next.add(&call("a", "kim", &[(LotKind::Included, 1000)], 0));
        let again = next.take_changed();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.totals.calls, 3);
        assert_eq!(again[0].1.totals.credits, 16000);
        assert_eq!(next.len(), 2);
        next.close_before(day_number(NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()));
        assert!(next.is_empty());
    }

    #[test]
    fn the_group_hash_tells_apart_what_concatenation_would_not() {
        let key = |s: &str, u: &str| DayKey {
            day: 1,
            service: s.into(),
            user: u.into(),
            feature: "f".into(),
        };
        assert_ne!(key("ab", "c").group_hash(), key("a", "bc").group_hash());
        assert_eq!(key("ab", "c").group_hash(), key("ab", "c").group_hash());
    }
}
