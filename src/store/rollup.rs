//! The daily rollups as they are stored: the key and absolute totals of one row, how the
//! checkpoint carries an open total (`key_hi`, `key_lo`) and the `daily_rollups` row it
//! becomes. `tally run` keeps the open totals (`run::rollup`); the checkpoint stores and
//! restores them.

use serde::{Deserialize, Serialize};
use tally_core::{LedgerEntry, LotKind};

use super::rows::DailyUsageRow;

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
    /// Counts one usage entry: a call, its credits and the lots that paid them.
    pub fn add(&mut self, entry: &LedgerEntry) {
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

/// FNV-1a of (service, user, feature), each part ended by 0xff (a byte no UTF-8 text
/// holds), so ("ab", "c") and ("a", "bc") differ.
pub fn group_hash(parts: [&str; 3]) -> u64 {
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
}
