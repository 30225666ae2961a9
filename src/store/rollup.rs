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
#[serde(from = "FlatDay")]
pub struct StoredDay {
    #[serde(flatten)]
    pub key: DayKey,
    #[serde(flatten)]
    pub totals: Totals,
}

/// A stored day's JSON as one flat struct. serde reads a `flatten`ed struct through a
/// buffer of every field and a map lookup per field; a claim reads every open day of its
/// partition on the run thread, and that took 7.6% of a drain's samples (session 17).
/// The fields and defaults are `DayKey`'s and `Totals`'s, in their order.
#[derive(Deserialize)]
struct FlatDay {
    #[serde(default)]
    segment: u64,
    day: u16,
    service: String,
    user: String,
    feature: String,
    calls: u64,
    failed_calls: u64,
    credits: i64,
    included: i64,
    promotional: i64,
    purchased: i64,
    flex: i64,
    shortfall: i64,
}

impl From<FlatDay> for StoredDay {
    fn from(d: FlatDay) -> Self {
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

impl StoredDay {
    /// The checkpoint's JSON of this day, byte for byte what `serde_json::to_vec` writes
    /// (the fields flattened, in declaration order), and what `restore` reads back with
    /// serde. Written by hand because the flush's workers wrote one per changed day and
    /// serde's flattening went through a map serializer field by field.
    pub fn json(&self) -> Vec<u8> {
        let (k, t) = (&self.key, &self.totals);
        let mut out = Vec::with_capacity(200 + k.service.len() + k.user.len() + k.feature.len());
        put_field(&mut out, b"{\"segment\":", k.segment);
        put_field(&mut out, b",\"day\":", k.day);
        put_text(&mut out, b",\"service\":", &k.service);
        put_text(&mut out, b",\"user\":", &k.user);
        put_text(&mut out, b",\"feature\":", &k.feature);
        put_field(&mut out, b",\"calls\":", t.calls);
        put_field(&mut out, b",\"failed_calls\":", t.failed_calls);
        put_field(&mut out, b",\"credits\":", t.credits);
        put_field(&mut out, b",\"included\":", t.included);
        put_field(&mut out, b",\"promotional\":", t.promotional);
        put_field(&mut out, b",\"purchased\":", t.purchased);
        put_field(&mut out, b",\"flex\":", t.flex);
        put_field(&mut out, b",\"shortfall\":", t.shortfall);
        out.push(b'}');
        out
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: impl itoa::Integer) {
    out.extend_from_slice(name);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A JSON string as serde_json escapes it: quotes and backslashes, the control characters
/// (the five with a short form, the rest as `\u00XX`); everything else, UTF-8 included,
/// as it is. Names rarely hold any of those: eight bytes at a time are checked at once and
/// copied whole when clean.
fn put_text(out: &mut Vec<u8>, name: &[u8], text: &str) {
    out.extend_from_slice(name);
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean = 0;
    while let Some(chunk) = bytes.get(clean..clean + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if needs_escape(word) {
            break;
        }
        clean += 8;
    }
    out.extend_from_slice(&bytes[..clean]);
    let mut start = clean;
    for (i, &byte) in bytes.iter().enumerate().skip(clean) {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == 0 {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `word` is below 0x20, a quote or a backslash (the
/// classic "has a byte less than n" and "has a zero byte" tests; a byte of 0x80 or more
/// never sets its lane's flag).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = word.wrapping_sub(ONES * 0x20);
    let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
    let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    ((below & !word)
        | (quote & !(word ^ (ONES * u64::from(b'"'))))
        | (backslash & !(word ^ (ONES * u64::from(b'\\')))))
        & HIGH
        != 0
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
    fn the_day_json_is_what_serde_json_wrote_and_reads_back() {
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
                let want = serde_json::to_vec(&stored).expect("serde_json writes a day");
                let json = stored.json();
                assert_eq!(
                    String::from_utf8_lossy(&json),
                    String::from_utf8_lossy(&want)
                );
                assert_eq!(json, want);
                let back: StoredDay = serde_json::from_slice(&json).expect("reads back");
                assert_eq!((back.key, back.totals), (stored.key, stored.totals));
                checked += 1;
            }
        }
        assert_eq!(checked, 15);
    }

    #[test]
    fn an_escape_is_found_at_every_position_of_a_long_name() {
        // Names longer than a checked word, one byte to escape (or a byte next to one in
        // value) at each position, among ASCII and multi-byte text.
        let specials = [
            '"', '\\', '\u{0}', '\u{1f}', '\n', ' ', '!', '#', '[', ']', '\u{7f}', 'é',
        ];
        for len in [8, 15, 16, 17, 24, 40] {
            for at in 0..len {
                for special in specials {
                    let name: String = (0..len)
                        .map(|i| if i == at { special } else { 'x' })
                        .collect();
                    let stored = day(1, 2, ["s", &name, "f"], Totals::default());
                    let want = serde_json::to_vec(&stored).expect("serde_json writes a day");
                    assert_eq!(stored.json(), want, "{special:?} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn every_character_class_is_escaped_as_serde_json_does() {
        // Each code point below 0x800 and a sample above, alone between two letters.
        let points = (0u32..0x800).chain((0x800..=0x10ffff).step_by(997));
        for c in points.filter_map(char::from_u32) {
            let name = format!("a{c}b");
            let stored = day(1, 2, [&name, "u", "f"], Totals::default());
            let want = serde_json::to_vec(&stored).expect("serde_json writes a day");
            assert_eq!(stored.json(), want, "code point {:#x}", u32::from(c));
        }
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
