//! Writing one flush: outputs first, each idempotent, then the checkpoint that commits them.

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::{Client, Row};
use serde::Serialize;

use super::rows::{BalanceRow, CheckpointRow, LedgerRow, LotRow};
use super::StoreError;

/// Everything one flush writes.
#[derive(Default)]
pub struct Batch {
    pub ledger: Vec<LedgerRow>,
    pub lots: Vec<LotRow>,
    pub balances: Vec<BalanceRow>,
    /// Days (since 1970) with new usage, per account: their rollups are recomputed.
    pub touched_days: BTreeMap<String, BTreeSet<u16>>,
    pub checkpoint: Vec<CheckpointRow>,
    /// Low-credit alerts the core decided; recorded before the checkpoint, mailed after.
    pub alerts: Vec<tally_core::alerts::Alert>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.checkpoint.is_empty()
    }
}

/// Accounts per rollup query: keeps each query well under ClickHouse's query size limit.
const ROLLUP_ACCOUNTS_PER_QUERY: usize = 500;

/// Everything but the commit: ledger, lots, balances and the rollups. Safe to call again
/// with the same batch after any failure: every output replaces what an earlier attempt
/// wrote, and the checkpoint (`commit`) is the last write.
pub async fn write_outputs(client: &Client, batch: &Batch) -> Result<(), StoreError> {
    insert_all(client, "ledger", &batch.ledger).await?;
    insert_all(client, "lots", &batch.lots).await?;
    insert_all(client, "balances", &batch.balances).await?;
    recompute_daily(client, &batch.touched_days).await
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

/// Recomputes the daily rollups of the touched (account, day)s from the ledger, as
/// absolute values versioned by the newest ledger row they include, so a recompute never
/// adds to an earlier one and an older recompute never wins.
async fn recompute_daily(
    client: &Client,
    touched: &BTreeMap<String, BTreeSet<u16>>,
) -> Result<(), StoreError> {
    let accounts: Vec<(&String, &BTreeSet<u16>)> = touched.iter().collect();
    for chunk in accounts.chunks(ROLLUP_ACCOUNTS_PER_QUERY) {
        let account_list = chunk
            .iter()
            .map(|(account, _)| quote(account))
            .collect::<Vec<_>>()
            .join(",");
        let days: BTreeSet<u16> = chunk
            .iter()
            .flat_map(|(_, days)| days.iter().copied())
            .collect();
        let day_list = days
            .iter()
            .map(|d| format!("toDate({d})"))
            .collect::<Vec<_>>()
            .join(",");
        let kind = |k: &str| {
            format!("sum(arraySum(arrayFilter((c, k) -> k = '{k}', paid_credits, paid_kinds)))")
        };
        let sql = format!(
            "INSERT INTO daily_usage \
             SELECT day, account, service, user, feature, count(), countIf(status = 'failed'), \
             sum(credits), {}, {}, {}, sum(shortfall), max(version), {} \
             FROM ledger FINAL \
             WHERE entry_type = 'usage' AND account IN ({account_list}) AND day IN ({day_list}) \
             GROUP BY day, account, service, user, feature",
            kind("included"),
            kind("promotional"),
            kind("purchased"),
            kind("flex"),
        );
        client.query(&sql).execute().await?;
    }
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
