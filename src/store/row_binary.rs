//! The rows of a flush but the ledger's (checkpoint, daily rollup, lot and balance rows),
//! encoded by hand into the bytes of their INSERT (RowBinary, the columns of the row type
//! in order): the client's serde path checked its buffer's room field by field and cost
//! several times the bytes it wrote, for one or more rows per event.

use super::rows::{BalanceRow, CheckpointRow, DailyUsageRow, LotRow};

/// A table's rows as the bytes of one RowBinary INSERT.
pub trait Encode: clickhouse::Row {
    /// The table the rows go to.
    const TABLE: &'static str;
    /// About what one row takes, reserved before a batch is written.
    const ROW_BYTES: usize;
    /// Appends this row's columns in the order of the type's `COLUMN_NAMES`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Its INSERT's SQL (a few hundred bytes once a flush).
    fn insert_sql() -> String {
        insert_sql(Self::TABLE, Self::COLUMN_NAMES)
    }
}

/// `INSERT INTO table(columns) FORMAT RowBinary`: the columns named, so the bytes are read
/// in the order they were written whatever the table's own order.
pub(super) fn insert_sql(table: &str, columns: &[&str]) -> String {
    let columns: Vec<String> = columns.iter().map(|name| format!("`{name}`")).collect();
    format!(
        "INSERT INTO `{table}`({}) FORMAT RowBinary",
        columns.join(",")
    )
}

impl Encode for CheckpointRow {
    const TABLE: &'static str = "checkpoints";
    const ROW_BYTES: usize = 160;

    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.stream);
        put(out, self.partition.to_le_bytes());
        put_str(out, &self.row_kind);
        put_str(out, &self.account);
        put(out, self.key_hi.to_le_bytes());
        put(out, self.key_lo.to_le_bytes());
        put(out, self.version.to_le_bytes());
        put(out, self.usage_offset.to_le_bytes());
        put(out, self.commands_offset.to_le_bytes());
        put(out, self.arrival_high.to_le_bytes());
        put_bytes(out, &self.state);
        put(out, self.seen_at.to_le_bytes());
        put(out, self.written_at.to_le_bytes());
        put(out, self.claim.to_le_bytes());
    }
}

impl Encode for DailyUsageRow {
    const TABLE: &'static str = "daily_rollups";
    const ROW_BYTES: usize = 160;

    fn encode(&self, out: &mut Vec<u8>) {
        put(out, self.day.to_le_bytes());
        put_str(out, &self.account);
        put_str(out, &self.service);
        put_str(out, &self.user);
        put_str(out, &self.feature);
        put(out, self.segment.to_le_bytes());
        put(out, self.calls.to_le_bytes());
        put(out, self.failed_calls.to_le_bytes());
        for credits in [
            self.credits,
            self.included,
            self.promotional,
            self.purchased,
            self.shortfall,
            self.flex,
        ] {
            put(out, credits.to_le_bytes());
        }
        put(out, self.version.to_le_bytes());
        put(out, self.partition.to_le_bytes());
    }
}

impl Encode for LotRow {
    const TABLE: &'static str = "lots";
    const ROW_BYTES: usize = 128;

    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.account);
        put_str(out, &self.lot);
        put_str(out, &self.pool);
        put_str(out, &self.kind);
        put(out, self.granted.to_le_bytes());
        put(out, self.remaining.to_le_bytes());
        put(out, self.effective_at.to_le_bytes());
        put(out, self.expires_at.to_le_bytes());
        out.push(self.never_expires);
        put(out, self.priority.to_le_bytes());
        out.push(self.has_priority);
        put(out, self.seq.to_le_bytes());
        out.push(self.voided);
        put(out, self.version.to_le_bytes());
        out.push(self.expired);
        out.push(self.from_plan);
        put(out, self.partition.to_le_bytes());
    }
}

impl Encode for BalanceRow {
    const TABLE: &'static str = "balances";
    const ROW_BYTES: usize = 96;

    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.account);
        put_str(out, &self.pool);
        put(out, self.available.to_le_bytes());
        put(out, self.included.to_le_bytes());
        put(out, self.promotional.to_le_bytes());
        put(out, self.purchased.to_le_bytes());
        put(out, self.as_of.to_le_bytes());
        put(out, self.version.to_le_bytes());
        put(out, self.partition.to_le_bytes());
    }
}

/// The rows, in order, as one INSERT's data.
pub fn encode_all<T: Encode>(rows: &[&T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * T::ROW_BYTES);
    for row in rows {
        row.encode(&mut out);
    }
    out
}

#[inline]
fn put<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    out.extend_from_slice(&bytes);
}

/// A RowBinary string: its length, then its bytes.
#[inline]
pub(super) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A RowBinary length: LEB128. Almost every length here is under 128: one byte.
#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    let (bytes, len) = varint(value);
    out.extend_from_slice(&bytes[..len]);
}

/// `value` in LEB128, and how many of the bytes it takes.
pub(super) fn varint(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while value >= 0x80 {
        bytes[len] = (value as u8) | 0x80;
        value >>= 7;
        len += 1;
    }
    bytes[len] = value as u8;
    (bytes, len + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint_rows() -> Vec<CheckpointRow> {
        let row = |row_kind: &str, account: &str, state: Vec<u8>| CheckpointRow {
            stream: "ai.usage+credit.commands".into(),
            partition: 7,
            row_kind: row_kind.into(),
            account: account.into(),
            key_hi: 1 << 40 | 3,
            key_lo: u64::MAX - 5,
            version: 1_234_567_890_123,
            usage_offset: (1 << 53) + 1,
            commands_offset: -1,
            arrival_high: 1_700_000_000,
            state,
            seen_at: i64::MIN,
            written_at: u32::MAX - 1,
            claim: 42,
        };
        vec![
            row("offsets", "", Vec::new()),
            row("state", "acme-é日本", (0..=255).collect()),
            // A length over 127 bytes takes two bytes; one over 16,383 three.
            row("day", &"a".repeat(200), vec![b'{'; 20_000]),
            row("seen", "", vec![0; 127]),
        ]
    }

    fn daily_rows() -> Vec<DailyUsageRow> {
        vec![
            DailyUsageRow {
                day: u16::MAX,
                account: "acme".into(),
                service: "chat".into(),
                user: "ünï".into(),
                feature: "x".repeat(130),
                segment: 4 << 40 | 9,
                calls: 3,
                failed_calls: 1,
                credits: -7,
                included: 1,
                promotional: 2,
                purchased: 3,
                shortfall: 4,
                flex: 5,
                version: 11,
                partition: 4,
            },
            DailyUsageRow {
                day: 0,
                account: String::new(),
                service: String::new(),
                user: String::new(),
                feature: String::new(),
                segment: 0,
                calls: u64::MAX,
                failed_calls: 0,
                credits: i64::MAX,
                included: i64::MIN,
                promotional: 0,
                purchased: 0,
                shortfall: 0,
                flex: -1,
                version: 0,
                partition: u32::MAX,
            },
        ]
    }

    /// The client's own RowBinary reader (behind its mock server) reads the bytes back as
    /// the rows; the SQL names every column of the type in order.
    async fn read_back<T>(rows: &[T]) -> Vec<T>
    where
        T: Encode + clickhouse::RowOwned + clickhouse::RowRead,
    {
        let mock = clickhouse::test::Mock::new();
        let client = clickhouse::Client::default().with_mock(&mock);
        let recorded = mock.add(clickhouse::test::handlers::record::<T>());
        let sql = T::insert_sql();
        let columns = sql
            .trim_start_matches(&format!("INSERT INTO `{}`(", T::TABLE))
            .trim_end_matches(") FORMAT RowBinary");
        let names: Vec<String> = T::COLUMN_NAMES.iter().map(|n| format!("`{n}`")).collect();
        assert_eq!(columns, names.join(","));
        let mut insert = client.insert_formatted_with(sql.as_str());
        let refs: Vec<&T> = rows.iter().collect();
        insert
            .send(bytes::Bytes::from(encode_all(&refs)))
            .await
            .expect("sent");
        insert.end().await.expect("ended");
        recorded.collect().await
    }

    #[tokio::test]
    async fn the_client_reads_the_checkpoint_rows_from_the_bytes() {
        let rows = checkpoint_rows();
        let back = read_back(&rows).await;
        assert_eq!(back, rows);
    }

    #[tokio::test]
    async fn the_client_reads_the_lot_and_balance_rows_from_the_bytes() {
        let lot = |seq: u64, flags: u8| LotRow {
            account: "acme".into(),
            lot: format!("grant-{seq}-ü"),
            pool: "default".into(),
            kind: "purchased".into(),
            granted: 5_000_000,
            remaining: -3,
            effective_at: 1_700_000_000,
            expires_at: u32::MAX,
            never_expires: flags,
            priority: -2,
            has_priority: 1 - flags,
            seq,
            voided: flags,
            version: 99,
            expired: 1 - flags,
            from_plan: flags,
            partition: 12,
        };
        let lots = vec![lot(0, 0), lot(u64::MAX, 1)];
        assert_eq!(read_back(&lots).await, lots);
        let balance = |pool: &str, available: i64| BalanceRow {
            account: "globex".into(),
            pool: pool.into(),
            available,
            included: 1,
            promotional: -2,
            purchased: i64::MAX,
            as_of: 1_700_000_123,
            version: 7,
            partition: 3,
        };
        let balances = vec![balance("", i64::MIN), balance(&"p".repeat(300), 0)];
        assert_eq!(read_back(&balances).await, balances);
    }

    #[tokio::test]
    async fn the_client_reads_the_daily_rows_from_the_bytes() {
        let rows = daily_rows();
        let back = read_back(&rows).await;
        assert_eq!(back, rows);
    }
}
