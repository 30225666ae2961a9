//! Writing one flush: outputs first, each idempotent, then the checkpoint that commits them.

use clickhouse::{Client, Row};
use serde::Serialize;

use super::rows::{BalanceRow, CheckpointRow, DailyUsageRow, LedgerRow, LotRow};
use super::StoreError;

/// Everything one flush writes.
#[derive(Default)]
pub struct Batch {
    pub ledger: Vec<LedgerRow>,
    pub lots: Vec<LotRow>,
    pub balances: Vec<BalanceRow>,
    /// Absolute totals of every open day that changed.
    pub daily: Vec<DailyUsageRow>,
    pub checkpoint: Vec<CheckpointRow>,
    /// Low-credit alerts the core decided; recorded before the checkpoint, mailed after.
    pub alerts: Vec<tally_core::alerts::Alert>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.checkpoint.is_empty()
    }
}

/// Everything but the commit: ledger, lots, balances and the rollups, side by side. Safe
/// to call again with the same batch after any failure: every output replaces what an
/// earlier attempt wrote, and the checkpoint (`commit`) is the last write.
pub async fn write_outputs(client: &Client, batch: &Batch) -> Result<(), StoreError> {
    let (ledger, lots, balances, daily) = tokio::join!(
        insert_all(client, "ledger", &batch.ledger),
        insert_all(client, "lots", &batch.lots),
        insert_all(client, "balances", &batch.balances),
        insert_all(client, "daily_rollups", &batch.daily),
    );
    ledger?;
    lots?;
    balances?;
    daily
}

/// The commit point: the checkpoint rows, offsets last.
pub async fn commit(client: &Client, batch: &Batch) -> Result<(), StoreError> {
    insert_all(client, "checkpoints", &batch.checkpoint).await
}

async fn insert_all<T>(client: &Client, table: &str, rows: &[T]) -> Result<(), StoreError>
where
    T: Row + Serialize + for<'a> Row<Value<'a> = T> + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<T>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// A ClickHouse string literal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '?' => out.push_str("\\x3F"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quote_escapes_what_could_end_the_literal() {
        assert_eq!(quote("acme"), "'acme'");
        assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
        // `?` is the client's bind placeholder; it must not survive into the SQL text.
        assert_eq!(quote("a?"), r"'a\x3F'");
    }
}
