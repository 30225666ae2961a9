//! Writing one flush: outputs first, each idempotent, then the checkpoint that commits them.

use std::sync::OnceLock;

use clickhouse::insert::Insert;
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
    /// Webhook notices the core decided; recorded before the checkpoint, sent after.
    pub notices: Vec<tally_core::hooks::Notice>,
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
    let mut insert = insert::<T>(client, table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// The settings every INSERT of tally carries, so that no server default or profile can
/// change what its guarantees rest on (docs/guarantees.md, "Insert settings"):
///
/// - `insert_deduplicate=0`: every acknowledged INSERT's rows are in the table. Servers
///   deduplicate a block identical to one inserted before (Replicated tables always; newer
///   ones MergeTree too), and would then answer OK while writing nothing: the commit point
///   and the replays are reasoned on rows that land, never on rows dropped because an
///   earlier block (since deleted by a snapshot's mutation, or superseded) hashed the same.
///   Every retry and replay is harmless without it: rewritten rows replace by version
///   (ReplacingMergeTree, FINAL) and duplicated checkpoint rows are read by argMax/min.
///   18.16 knows it (there it only acts on Replicated tables).
/// - `async_insert=0`: the INSERT writes its own part before it is acknowledged, as on
///   18.16. An asynchronous insert is buffered with other clients' and flushed later: the
///   checkpoint could then be acknowledged, or even become durable, before the outputs it
///   commits, and a buffered block's rows are no longer "the rows of this INSERT, in
///   order", which is what an offsets row proves. Since 21.11; 26.2 turned it on by default.
/// - `wait_for_async_insert=1`: should a server still make the INSERT asynchronous (a
///   setting tally cannot override, a constraint), it acknowledges only once the rows are
///   written. Since 21.11.
///
/// A setting the server does not know fails the query there ("Unknown setting"), so the
/// newer ones go only to servers whose version (`SELECT version()`) has them.
pub fn insert_settings(server_version: &str) -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![("insert_deduplicate", "0")];
    if has_async_insert(server_version) {
        settings.push(("async_insert", "0"));
        settings.push(("wait_for_async_insert", "1"));
    }
    settings
}

/// Whether the server version (`major.minor...`) has `async_insert`: 21.11 and later. An
/// unreadable version counts as a current one (the settings are then sent, and a server
/// that does not know them says so loudly instead of changing the guarantees silently).
fn has_async_insert(server_version: &str) -> bool {
    let mut parts = server_version.trim().split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (21, 11),
        _ => true,
    }
}

/// The insert settings for the server this process writes to, from its version, read once
/// (one tally process writes to one ClickHouse deployment, `clickhouse.url`). A failed
/// read is not kept: the next INSERT asks again, and fails like the INSERT would have.
static INSERT_SETTINGS: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();

async fn settings_for(
    client: &Client,
) -> Result<&'static [(&'static str, &'static str)], StoreError> {
    if let Some(settings) = INSERT_SETTINGS.get() {
        return Ok(settings);
    }
    let version: String = client.query("SELECT version()").fetch_one().await?;
    Ok(INSERT_SETTINGS.get_or_init(|| insert_settings(&version)))
}

/// Starts an INSERT into `table` with `insert_settings`. Every INSERT tally makes starts here.
pub async fn insert<T: Row>(client: &Client, table: &str) -> Result<Insert<T>, StoreError> {
    let mut insert = client.insert::<T>(table).await?;
    for (name, value) in settings_for(client).await? {
        insert = insert.with_setting(*name, *value);
    }
    Ok(insert)
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
    use super::{insert_settings, quote};

    #[test]
    fn insert_settings_send_only_what_the_server_version_knows() {
        // 18.16 (the local stack) answers "Unknown setting" to async_insert.
        assert_eq!(
            insert_settings("18.16.1"),
            vec![("insert_deduplicate", "0")]
        );
        assert_eq!(
            insert_settings("21.10.6.2"),
            vec![("insert_deduplicate", "0")]
        );
        let current = vec![
            ("insert_deduplicate", "0"),
            ("async_insert", "0"),
            ("wait_for_async_insert", "1"),
        ];
        assert_eq!(insert_settings("21.11.1.8636"), current);
        // chdb 4.4.0's engine, and the releases that turned async inserts on by default.
        assert_eq!(insert_settings("26.9.2.1"), current);
        assert_eq!(insert_settings("26.2.1.1"), current);
        assert_eq!(insert_settings("100.1"), current);
        // Unreadable: sent, so a server that lacks them fails loudly.
        assert_eq!(insert_settings("unknown"), current);
        assert_eq!(
            insert_settings(" 18.16.1\n"),
            vec![("insert_deduplicate", "0")]
        );
    }

    #[test]
    fn quote_escapes_what_could_end_the_literal() {
        assert_eq!(quote("acme"), "'acme'");
        assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
        // `?` is the client's bind placeholder; it must not survive into the SQL text.
        assert_eq!(quote("a?"), r"'a\x3F'");
    }
}
