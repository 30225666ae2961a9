//! Ledger rows written straight from the core's entries into the bytes of the `ledger`
//! table's INSERT (RowBinary, the columns of [`LedgerRow`] in their order). The run thread
//! appends each entry as it is applied: no row of owned strings in between, no enum name
//! allocated, the entry id written without `format!`, and nothing reference-counted
//! crosses to the thread that sends the bytes.

use tally_core::lots::PaymentMethod;
use tally_core::LedgerEntry;

use super::row_binary::{self, put_str, put_varint, varint};
use super::rows::{day_number, seconds, LedgerRow};

/// What a usual row takes, reserved before it is written.
const ROW_BYTES: usize = 256;

/// How an entry is named in the ledger.
#[derive(Debug, Clone, Copy)]
pub enum EntryId<'a> {
    /// The id the core gave (expiries, cycle allowances).
    Given(&'a str),
    /// After the record that caused it: `topic/partition/offset`, and `#index` for every
    /// entry of the record but its first.
    Position {
        topic: &'a str,
        partition: i32,
        offset: i64,
        index: usize,
    },
}

/// One partition's ledger rows of one flush, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerBlock {
    partition: u32,
    version: u64,
    rows: usize,
    bytes: Vec<u8>,
}

impl LedgerBlock {
    /// No rows yet; the rows pushed carry `partition` and `version` (the flush's).
    pub fn new(partition: u32, version: u64, capacity: usize) -> LedgerBlock {
        LedgerBlock {
            partition,
            version,
            rows: 0,
            bytes: Vec::with_capacity(capacity),
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows, as the INSERT of [`INSERT_SQL`] sends them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The rows so far; this block starts again empty for `version`, with as much room
    /// (the next flush takes about as many: no regrowth on the way).
    pub fn take(&mut self, version: u64) -> LedgerBlock {
        let next = LedgerBlock::new(self.partition, version, self.bytes.len());
        std::mem::replace(self, next)
    }

    /// Appends one entry as a row.
    pub fn push(&mut self, id: EntryId<'_>, entry: &LedgerEntry) {
        let out = &mut self.bytes;
        // Room for a usual row at once (ids, names and numbers of a call take ~200 bytes).
        out.reserve(ROW_BYTES);
        put_id(out, id);
        put_str(out, entry.account.as_str());
        put_str(out, entry.entry_type.as_str());
        out.extend_from_slice(&seconds(entry.time).to_le_bytes());
        out.extend_from_slice(&day_number(entry.day).to_le_bytes());
        for name in [&entry.service, &entry.user, &entry.feature, &entry.variant] {
            put_str(out, name.as_str());
        }
        out.extend_from_slice(&entry.quantity.milli().to_le_bytes());
        put_str(out, entry.status.as_str());
        put_str(out, entry.pool.as_str());
        out.extend_from_slice(&entry.credits.milli().to_le_bytes());
        put_payments(out, entry);
        out.extend_from_slice(&entry.shortfall.milli().to_le_bytes());
        put_str(out, entry.matrix_version.as_str());
        put_str(out, entry.event_id.as_str());
        put_str(out, &entry.lot);
        put_str(out, entry.lot_kind.map_or("", |kind| kind.as_str()));
        put_str(out, entry.payment_method.map_or("", PaymentMethod::as_str));
        put_str(out, &entry.payment_reference);
        put_str(out, &entry.comment);
        out.extend_from_slice(&self.version.to_le_bytes());
        match &entry.hold {
            Some(hold) => {
                put_str(out, &hold.id);
                put_str(out, hold.outcome.as_str());
                out.extend_from_slice(&hold.held.milli().to_le_bytes());
            }
            None => {
                put_str(out, "");
                put_str(out, "");
                out.extend_from_slice(&0i64.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.partition.to_le_bytes());
        self.rows += 1;
    }
}

/// The INSERT the blocks' bytes are the data of.
pub fn insert_sql() -> String {
    row_binary::insert_sql("ledger", <LedgerRow as clickhouse::Row>::COLUMN_NAMES)
}

/// The three parallel arrays of a call's payments: lots, kinds, credits.
fn put_payments(out: &mut Vec<u8>, entry: &LedgerEntry) {
    let count = entry.paid.len() as u64;
    put_varint(out, count);
    for payment in &entry.paid {
        put_str(out, payment.lot.as_str());
    }
    put_varint(out, count);
    for payment in &entry.paid {
        put_str(out, payment.kind.as_str());
    }
    put_varint(out, count);
    for payment in &entry.paid {
        out.extend_from_slice(&payment.credits.milli().to_le_bytes());
    }
}

/// The id as a string; a position is written digit by digit, its length put in front
/// once known.
fn put_id(out: &mut Vec<u8>, id: EntryId<'_>) {
    let (topic, partition, offset, index) = match id {
        EntryId::Given(id) => return put_str(out, id),
        EntryId::Position {
            topic,
            partition,
            offset,
            index,
        } => (topic, partition, offset, index),
    };
    // One byte of length in front, right for any id under 128 bytes; a longer one
    // (a topic name of that size) moves its bytes to make room for the rest.
    let start = out.len();
    out.push(0);
    out.extend_from_slice(topic.as_bytes());
    out.push(b'/');
    put_decimal(out, i64::from(partition));
    out.push(b'/');
    put_decimal(out, offset);
    if index > 0 {
        out.push(b'#');
        put_decimal(out, index as i64);
    }
    let (prefix, len) = varint((out.len() - start - 1) as u64);
    out[start] = prefix[0];
    if len > 1 {
        out.splice(start + 1..start + 1, prefix[1..len].iter().copied());
    }
}

fn put_decimal(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The rows back, as ClickHouse reads them: the simulation's tables keep rows.
#[cfg(test)]
impl LedgerBlock {
    pub fn decode(&self) -> Vec<LedgerRow> {
        let mut reader = Reader(&self.bytes);
        let rows = (0..self.rows).map(|_| reader.row()).collect();
        assert!(reader.0.is_empty(), "bytes after the last row");
        rows
    }
}

#[cfg(test)]
struct Reader<'a>(&'a [u8]);

#[cfg(test)]
impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("N bytes")
    }

    fn len(&mut self) -> usize {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take::<1>();
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value as usize
    }

    fn string(&mut self) -> String {
        let len = self.len();
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).expect("UTF-8")
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }

    fn row(&mut self) -> LedgerRow {
        LedgerRow {
            entry_id: self.string(),
            account: self.string(),
            entry_type: self.string(),
            time: u32::from_le_bytes(self.take()),
            day: u16::from_le_bytes(self.take()),
            service: self.string(),
            user: self.string(),
            feature: self.string(),
            variant: self.string(),
            quantity: self.i64(),
            status: self.string(),
            pool: self.string(),
            credits: self.i64(),
            paid_lots: (0..self.len()).map(|_| self.string()).collect(),
            paid_kinds: (0..self.len()).map(|_| self.string()).collect(),
            paid_credits: (0..self.len()).map(|_| self.i64()).collect(),
            shortfall: self.i64(),
            matrix_version: self.string(),
            event_id: self.string(),
            lot: self.string(),
            lot_kind: self.string(),
            payment_method: self.string(),
            payment_reference: self.string(),
            comment: self.string(),
            version: u64::from_le_bytes(self.take()),
            hold_id: self.string(),
            hold_outcome: self.string(),
            hold_held: self.i64(),
            partition: u32::from_le_bytes(self.take()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};
    use tally_core::event::Status;
    use tally_core::ledger::{HoldUse, SettleOutcome};
    use tally_core::lots::Payment;
    use tally_core::{Credits, EntryType, LotKind};

    /// A call of kim's, paid by `paid` (lot, kind, credits) and `shortfall`.
    pub(crate) fn call(
        account: &str,
        paid: &[(&str, LotKind, i64)],
        shortfall: i64,
    ) -> LedgerEntry {
        let credits: i64 = paid.iter().map(|p| p.2).sum::<i64>() + shortfall;
        LedgerEntry {
            id: None,
            entry_type: EntryType::Usage,
            account: account.into(),
            time: Utc.with_ymd_and_hms(2026, 11, 20, 23, 59, 58).unwrap(),
            day: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
            service: "studio".into(),
            user: "kim".into(),
            feature: "erase".into(),
            variant: "hd".into(),
            quantity: Credits::from_milli(2_500),
            status: Status::Succeeded,
            pool: "ai".into(),
            credits: Credits::from_milli(credits),
            paid: paid
                .iter()
                .map(|&(lot, kind, credits)| Payment {
                    lot: lot.into(),
                    kind,
                    credits: Credits::from_milli(credits),
                })
                .collect(),
            shortfall: Credits::from_milli(shortfall),
            matrix_version: "2026-11".into(),
            event_id: "evt-0001".into(),
            lot: String::new(),
            lot_kind: None,
            payment_method: None,
            payment_reference: String::new(),
            comment: String::new(),
            hold: None,
        }
    }

    fn grant(method: PaymentMethod) -> LedgerEntry {
        LedgerEntry {
            entry_type: EntryType::Grant,
            lot: "lot-7".to_string(),
            lot_kind: Some(LotKind::Purchased),
            payment_method: Some(method),
            payment_reference: "ch_1".to_string(),
            comment: "top-up ✓ for Zoë".to_string(),
            credits: Credits::from_milli(100_000),
            ..call("acme", &[], 0)
        }
    }

    /// Holds, grants, failed calls, multi-lot payments, given and positional ids (one
    /// longer than 127 bytes, so its length takes two bytes), with the id each should
    /// get, written out by hand.
    fn cases() -> Vec<(EntryId<'static>, &'static str, LedgerEntry)> {
        let long_topic: &'static str = "t".repeat(130).leak();
        let long_id: &'static str = format!("{long_topic}/11/5").leak();
        let at = |topic, partition, offset, index| EntryId::Position {
            topic,
            partition,
            offset,
            index,
        };
        let mut failed = call("globex", &[], 0);
        failed.status = Status::Failed;
        let mut held = call(
            "Zoë & co",
            &[
                ("inc", LotKind::Included, 1_000),
                ("promo", LotKind::Promotional, 2_000),
                ("flex", LotKind::Flex, 3_000),
            ],
            500,
        );
        held.hold = Some(HoldUse {
            id: "h-1".to_string(),
            outcome: SettleOutcome::Settled,
            held: Credits::from_milli(7_000),
        });
        let mut expiry = call("acme", &[], 0);
        expiry.entry_type = EntryType::Expiry;
        expiry.id = Some("expiry/acme/lot-7".to_string());
        expiry.lot = "lot-7".to_string();
        expiry.lot_kind = Some(LotKind::Included);
        expiry.credits = Credits::from_milli(-4_000);
        let mut released = call("acme", &[], 0);
        released.entry_type = EntryType::HoldExpired;
        released.hold = Some(HoldUse {
            id: "h-2".to_string(),
            outcome: SettleOutcome::Expired,
            held: Credits::ZERO,
        });
        let two_lots = &[
            ("a", LotKind::Included, 1_500),
            ("b", LotKind::Purchased, 250),
        ];
        vec![
            (
                at("ai.usage", 3, 41, 0),
                "ai.usage/3/41",
                call("acme", two_lots, 0),
            ),
            (at("ai.usage", 3, 41, 2), "ai.usage/3/41#2", failed),
            (
                at("credit.commands", 0, 0, 0),
                "credit.commands/0/0",
                grant(PaymentMethod::Card),
            ),
            (
                at("credit.commands", 12, 9_007_199_254_740_993, 1),
                "credit.commands/12/9007199254740993#1",
                grant(PaymentMethod::Cash),
            ),
            (
                EntryId::Given("expiry/acme/lot-7"),
                "expiry/acme/lot-7",
                expiry,
            ),
            (at("ai.usage", 5, 1_000_000, 0), "ai.usage/5/1000000", held),
            (at(long_topic, 11, 5, 0), long_id, released),
        ]
    }

    /// The rows as tally built them before the blocks: one `LedgerRow` per entry.
    fn expected(partition: u32, version: u64) -> Vec<LedgerRow> {
        cases()
            .into_iter()
            .map(|(_, id, entry)| LedgerRow {
                version,
                partition,
                ..LedgerRow::new(id.to_string(), entry, 0)
            })
            .collect()
    }

    fn block(partition: u32, version: u64) -> LedgerBlock {
        let mut block = LedgerBlock::new(partition, version, 0);
        for (id, _, entry) in cases() {
            block.push(id, &entry);
        }
        block
    }

    /// ClickHouse's own RowBinary reader (the client's, behind its mock server) reads the
    /// bytes back as the rows of before.
    #[tokio::test]
    async fn the_client_reads_the_rows_of_before_from_the_bytes() {
        let mock = clickhouse::test::Mock::new();
        let client = clickhouse::Client::default().with_mock(&mock);
        let recorded = mock.add(clickhouse::test::handlers::record::<LedgerRow>());
        let block = block(7, 1_234_567_890_123);
        let mut insert = client.insert_formatted_with(insert_sql());
        insert
            .send(bytes::Bytes::copy_from_slice(block.bytes()))
            .await
            .expect("sent");
        insert.end().await.expect("ended");
        let rows: Vec<LedgerRow> = recorded.collect().await;
        assert_eq!(rows, expected(7, 1_234_567_890_123));
        assert_eq!(block.rows(), rows.len());
    }

    #[test]
    fn the_simulation_reads_the_rows_of_before_from_the_bytes() {
        assert_eq!(block(2, 9).decode(), expected(2, 9));
    }

    #[test]
    fn a_taken_block_leaves_an_empty_one_for_the_next_version() {
        let mut block = block(4, 10);
        let taken = block.take(11);
        assert_eq!((taken.version(), taken.rows()), (10, 7));
        assert!(block.is_empty() && block.bytes().is_empty());
        assert_eq!((block.partition(), block.version()), (4, 11));
    }

    #[test]
    fn the_insert_names_every_column_in_order() {
        let sql = insert_sql();
        assert!(sql.starts_with("INSERT INTO `ledger`(`entry_id`,`account`,`entry_type`,`time`,"));
        assert!(sql.ends_with("`hold_held`,`partition`) FORMAT RowBinary"));
    }
}
