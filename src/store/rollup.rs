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
#[serde(from = "FlatDay<String>")]
pub struct StoredDay {
    #[serde(flatten)]
    pub key: DayKey,
    #[serde(flatten)]
    pub totals: Totals,
}

/// A stored day as one flat struct, from its bytes or from the JSON of earlier versions.
/// serde reads a `flatten`ed struct through a buffer of every field and a map lookup per
/// field, which took 7.6% of a drain's samples (session 17). The fields and defaults are
/// `DayKey`'s and `Totals`'s, in their order. The names are borrowed to write one
/// (postcard writes a struct as its fields in order, so writing and reading share it).
#[derive(Serialize, Deserialize)]
struct FlatDay<S> {
    #[serde(default)]
    segment: u64,
    day: u16,
    service: S,
    user: S,
    feature: S,
    calls: u64,
    failed_calls: u64,
    credits: i64,
    included: i64,
    promotional: i64,
    purchased: i64,
    flex: i64,
    shortfall: i64,
}

impl From<FlatDay<String>> for StoredDay {
    fn from(d: FlatDay<String>) -> Self {
        StoredDay {
            key: DayKey {
                segment: d.segment,
                day: d.day,
                service: d.service,
                user: d.user,
                feature: d.feature,
            },
            totals: Totals {
                calls: d.calls,
                failed_calls: d.failed_calls,
                credits: d.credits,
                included: d.included,
                promotional: d.promotional,
                purchased: d.purchased,
                flex: d.flex,
                shortfall: d.shortfall,
            },
        }
    }
}

/// The first byte of a day stored in binary. A day stored as JSON (before session 18)
/// starts with `{`.
const DAY_FORMAT_V1: u8 = 1;

/// Why a stored day cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DayError {
    #[error("empty daily totals")]
    Empty,
    #[error("unknown daily totals format byte {0}")]
    UnknownFormat(u8),
    #[error("binary daily totals: {0}")]
    Binary(#[from] postcard::Error),
    #[error("JSON daily totals: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoredDay {
    /// The checkpoint's bytes of this day: a format byte, then the fields as varints and
    /// length-prefixed names, about a quarter of the JSON earlier versions wrote. A claim
    /// reads every open day of its partition (47,000 rows a partition after three rounds
    /// of `scripts/bench.sh`), and ClickHouse picks the latest of each through the bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (k, t) = (&self.key, &self.totals);
        let flat = FlatDay::<&str> {
            segment: k.segment,
            day: k.day,
            service: &k.service,
            user: &k.user,
            feature: &k.feature,
            calls: t.calls,
            failed_calls: t.failed_calls,
            credits: t.credits,
            included: t.included,
            promotional: t.promotional,
            purchased: t.purchased,
            flex: t.flex,
            shortfall: t.shortfall,
        };
        let mut bytes = Vec::with_capacity(48 + k.service.len() + k.user.len() + k.feature.len());
        bytes.push(DAY_FORMAT_V1);
        // Serializing plain data into a growing buffer cannot fail.
        postcard::to_extend(&flat, bytes).unwrap_or_default()
    }

    /// Reads a stored day: the binary format, or the JSON of earlier versions.
    pub fn decode(bytes: &[u8]) -> Result<StoredDay, DayError> {
        match bytes.first() {
            None => Err(DayError::Empty),
            Some(b'{') => Ok(serde_json::from_slice(bytes)?),
            Some(&DAY_FORMAT_V1) => {
                Ok(postcard::from_bytes::<FlatDay<String>>(&bytes[1..])?.into())
            }
            Some(&other) => Err(DayError::UnknownFormat(other)),
        }
    }
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
    // A plain loop and the end byte after it: chaining the end byte onto the bytes as an
    // iterator cost the run thread a branch per byte.
    let step = |hash: u64, byte: u8| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.as_bytes() {
            hash = step(hash, byte);
        }
        hash = step(hash, 0xff);
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

    fn day(segment: u64, day: u16, names: [&str; 3], totals: Totals) -> StoredDay {
        let [service, user, feature] = names.map(str::to_string);
        StoredDay {
            key: DayKey {
                segment,
                day,
                service,
                user,
                feature,
            },
            totals,
        }
    }

    #[test]
    fn a_day_reads_with_the_defaults_and_the_required_fields_of_before() {
        let json = |fields: &str| {
            format!(
                r#"{{{fields}"day":3,"service":"s","user":"u","feature":"f","calls":2,"failed_calls":1,"credits":5,"included":4,"promotional":0,"purchased":1,"flex":0,"shortfall":-1}}"#
            )
        };
        // Stored before segments existed: segment 0. A field tally does not know is skipped.
        let old: StoredDay = serde_json::from_str(&json(r#""unknown":[1],"#)).expect("reads");
        assert_eq!(
            old.key,
            DayKey {
                segment: 0,
                day: 3,
                service: "s".into(),
                user: "u".into(),
                feature: "f".into()
            }
        );
        assert_eq!(
            (
                old.totals.calls,
                old.totals.failed_calls,
                old.totals.purchased,
                old.totals.shortfall
            ),
            (2, 1, 1, -1)
        );
        let new: StoredDay = serde_json::from_str(&json(r#""segment":9,"#)).expect("reads");
        assert_eq!(new.key.segment, 9);
        // Every total is required, as it was.
        let without_flex = json("").replace(r#","flex":0"#, "");
        assert!(serde_json::from_str::<StoredDay>(&without_flex).is_err());
    }

    #[test]
    fn a_day_reads_back_from_its_bytes_and_from_the_json_of_before() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        let names = [
            ["chat", "alice", ""],
            ["", "", ""],
            [
                every_ascii.as_str(),
                "\"quoted\" \\ back",
                "tab\there\nnew\r\u{c}\u{8}",
            ],
            [
                "\u{0}\u{1f}\u{7f}",
                "é日本🦀",
                "\u{2028}\u{2029}\u{fffd}\u{10ffff}",
            ],
            ["a/b</script>", "\\u0041", "trailing\\"],
        ];
        let totals = [
            Totals::default(),
            Totals {
                calls: 1,
                failed_calls: 1,
                credits: -1,
                included: 999,
                promotional: 1_000,
                purchased: -999_999,
                flex: 12_345_678_901,
                shortfall: 7,
            },
            Totals {
                calls: u64::MAX,
                failed_calls: u64::MAX - 1,
                credits: i64::MAX,
                included: i64::MIN,
                promotional: i64::MAX - 1,
                purchased: i64::MIN + 1,
                flex: -10,
                shortfall: 10,
            },
        ];
        let keys = [
            (0, 0),
            (1, 1),
            (u64::MAX >> 16, u16::MAX),
            (123_456, 20_454),
        ];
        let mut checked = 0;
        for (n, names) in names.iter().enumerate() {
            for (t, totals) in totals.iter().enumerate() {
                let (segment, number) = keys[(n + t) % keys.len()];
                let stored = day(segment, number, *names, *totals);
                let bytes = stored.encode();
                assert_eq!(bytes[0], DAY_FORMAT_V1);
                let back = StoredDay::decode(&bytes).expect("reads back");
                assert_eq!((&back.key, &back.totals), (&stored.key, &stored.totals));
                // Earlier versions wrote serde_json's bytes of the same struct.
                let json = serde_json::to_vec(&stored).expect("serde_json writes a day");
                let back = StoredDay::decode(&json).expect("reads the JSON of before");
                assert_eq!((back.key, back.totals), (stored.key, stored.totals));
                checked += 1;
            }
        }
        assert_eq!(checked, 15);
    }

    #[test]
    fn day_bytes_are_a_fixed_format_and_much_smaller_than_json() {
        let stored = day(
            3,
            20_454,
            ["chat", "alice", "summarize"],
            Totals {
                calls: 300,
                failed_calls: 1,
                credits: 1_000,
                included: 600,
                promotional: 0,
                purchased: 400,
                flex: 0,
                shortfall: -2,
            },
        );
        // Worked by hand: the format byte, segment 3, day 20454 as the varint e6 9f 01,
        // the names with their lengths, then the totals (i64 zigzagged: 1000 -> 2000).
        let mut want = vec![1, 3, 0xe6, 0x9f, 0x01, 4];
        want.extend(b"chat");
        want.push(5);
        want.extend(b"alice");
        want.push(9);
        want.extend(b"summarize");
        want.extend([0xac, 0x02, 1, 0xd0, 0x0f, 0xb0, 0x09, 0, 0xa0, 0x06, 0, 3]);
        assert_eq!(stored.encode(), want);
        let json = serde_json::to_vec(&stored).expect("serde_json writes a day");
        assert!(stored.encode().len() * 4 < json.len());
    }

    #[test]
    fn day_bytes_that_cannot_be_read_say_why() {
        assert!(matches!(StoredDay::decode(&[]), Err(DayError::Empty)));
        assert!(matches!(
            StoredDay::decode(&[7, 1]),
            Err(DayError::UnknownFormat(7))
        ));
        let whole = day(1, 2, ["s", "u", "f"], Totals::default()).encode();
        assert!(matches!(
            StoredDay::decode(&whole[..whole.len() - 1]),
            Err(DayError::Binary(_))
        ));
        assert!(matches!(
            StoredDay::decode(b"{\"day\":"),
            Err(DayError::Json(_))
        ));
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

    #[test]
    fn the_group_hash_is_the_one_stored_checkpoints_carry() {
        // FNV-1a over the parts, each ended by 0xff, computed apart from this code (Python).
        assert_eq!(
            group_hash(["chat", "alice", "summarize"]),
            0x26a8_4f77_ace7_e57b
        );
        assert_eq!(group_hash(["", "", ""]), 0xf998_341b_e47b_ae14);
        assert_eq!(group_hash(["é日本", "u", "f"]), 0x9387_eb0c_90eb_d639);
    }
}
