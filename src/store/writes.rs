//! Writing one flush: outputs first, each idempotent, then the checkpoint that commits them.

use std::sync::OnceLock;

use clickhouse::insert::Insert;
use clickhouse::insert_formatted::InsertFormatted;
use clickhouse::{Client, Row};

use super::cluster::{shard_of, Shards, Target};
use super::ledger_block::{self, LedgerBlock};
use super::row_binary::{self, Encode};
use super::rows::{BalanceRow, CheckpointRow, DailyUsageRow, LotRow};
use super::StoreError;

/// Everything one flush writes.
#[derive(Default)]
pub struct Batch {
    /// Ledger rows, one block per partition, encoded by the run thread.
    pub ledger: Vec<LedgerBlock>,
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
/// earlier attempt wrote, and the checkpoint (`commit`) is the last write. On a cluster,
/// each shard gets the rows of its partitions, every shard side by side.
pub async fn write_outputs(target: &Target, batch: &Batch) -> Result<(), StoreError> {
    write(target, batch, Part::Outputs).await
}

/// The commit point: the checkpoint rows, offsets last. On a cluster, one INSERT per
/// shard with the rows of its partitions, in their order (each partition's offsets row
/// still last among its rows, in the same INSERT); a partition's rows never span shards,
/// so each partition's commit stays one atomic INSERT.
pub async fn commit(target: &Target, batch: &Batch) -> Result<(), StoreError> {
    write(target, batch, Part::Checkpoint).await
}

#[derive(Clone, Copy)]
enum Part {
    Outputs,
    Checkpoint,
}

/// The rows of a batch that go to one shard (all of them on one server).
struct Share<'a> {
    ledger: Vec<&'a LedgerBlock>,
    lots: Vec<&'a LotRow>,
    balances: Vec<&'a BalanceRow>,
    daily: Vec<&'a DailyUsageRow>,
    checkpoint: Vec<&'a CheckpointRow>,
}

impl<'a> Share<'a> {
    fn of(batch: &'a Batch, mine: impl Fn(u32) -> bool) -> Share<'a> {
        Share {
            ledger: batch
                .ledger
                .iter()
                .filter(|b| mine(b.partition()))
                .collect(),
            lots: batch.lots.iter().filter(|r| mine(r.partition)).collect(),
            balances: batch
                .balances
                .iter()
                .filter(|r| mine(r.partition))
                .collect(),
            daily: batch.daily.iter().filter(|r| mine(r.partition)).collect(),
            checkpoint: batch
                .checkpoint
                .iter()
                .filter(|r| mine(r.partition))
                .collect(),
        }
    }

    async fn write(&self, client: &Client, part: Part) -> Result<(), StoreError> {
        match part {
            Part::Checkpoint => insert_encoded(client, &self.checkpoint).await,
            Part::Outputs => {
                let (ledger, lots, balances, daily) = tokio::join!(
                    insert_ledger(client, &self.ledger),
                    insert_encoded(client, &self.lots),
                    insert_encoded(client, &self.balances),
                    insert_encoded(client, &self.daily),
                );
                ledger?;
                lots?;
                balances?;
                daily
            }
        }
    }
}

async fn write(target: &Target, batch: &Batch, part: Part) -> Result<(), StoreError> {
    match target {
        Target::Single(client) => Share::of(batch, |_| true).write(client, part).await,
        Target::Cluster(shards) => {
            let writes = (0..shards.len()).map(|shard| {
                let share = Share::of(batch, |p| shard_of(p, shards.len()) == shard);
                write_shard(shards, shard, share, part)
            });
            futures::future::try_join_all(writes).await.map(|_| ())
        }
    }
}

/// One shard's share, on its replicas in turn until one acknowledges it. Writing again on
/// another replica after one failed half-way is safe as any retry is (see
/// `insert_settings`).
async fn write_shard(
    shards: &Shards,
    shard: usize,
    share: Share<'_>,
    part: Part,
) -> Result<(), StoreError> {
    let mut failed = None;
    for attempt in 0..shards.replicas(shard) {
        match share.write(shards.replica(shard, attempt), part).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(shard = shard + 1, replica = attempt + 1, error = %e, "ClickHouse replica failed; trying the next");
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// The ledger's blocks, as they are, in one INSERT.
async fn insert_ledger(client: &Client, blocks: &[&LedgerBlock]) -> Result<(), StoreError> {
    if blocks.is_empty() {
        return Ok(());
    }
    static SQL: OnceLock<String> = OnceLock::new();
    let mut insert = insert_formatted(client, SQL.get_or_init(ledger_block::insert_sql)).await?;
    // A chunk per block: each is one partition's flush, large enough to send alone.
    for block in blocks {
        insert
            .send(bytes::Bytes::copy_from_slice(block.bytes()))
            .await?;
    }
    insert.end().await?;
    Ok(())
}

/// A flush's rows of one table, encoded by hand (`row_binary`), in one INSERT.
async fn insert_encoded<T: Encode>(client: &Client, rows: &[&T]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = insert_formatted(client, T::insert_sql()).await?;
    insert
        .send(bytes::Bytes::from(row_binary::encode_all(rows)))
        .await?;
    insert.end().await?;
    Ok(())
}

/// The settings every INSERT of tally carries, so that no server default or profile can
/// change what its guarantees rest on (docs/guarantees.md, "Insert settings"):
///
/// - `insert_deduplicate`: on one server `0`: every acknowledged INSERT's rows are in the
///   table. Servers deduplicate a block identical to one inserted before (Replicated
///   tables always; newer ones MergeTree too), and would then answer OK while writing
///   nothing: the commit point and the replays are reasoned on rows that land, never on
///   rows dropped because an earlier block (since deleted by a snapshot's mutation, or
///   superseded) hashed the same. Every retry and replay is harmless without it:
///   rewritten rows replace by version (ReplacingMergeTree, FINAL) and duplicated
///   checkpoint rows are read by argMax/min. 18.16 knows it (there it only acts on
///   Replicated tables).
///
///   On a cluster (`replicated`) `1`, so the retry of a flush that half-landed (on one
///   replica, its quorum not reached) is absorbed instead of written twice. That drops no
///   row that must land: every block tally writes carries its flush's version, which no
///   other write of any partition uses (versions grow per flush, and a new owner claims
///   above every version written), so an identical block is the same write again; the
///   only rows ever deleted are checkpoint rows below a committed snapshot, which no
///   retry writes again; and while the first attempt's part has not reached every
///   replica, 18.16 refuses the retry ("Quorum for previous write has not been satisfied
///   yet") rather than absorbing it, and current engines wait for that part's quorum, so an
///   absorbed retry is acknowledged only once the rows are on every replica.
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
pub fn insert_settings(
    server_version: &str,
    replicated: bool,
) -> Vec<(&'static str, &'static str)> {
    let deduplicate = if replicated { "1" } else { "0" };
    let mut settings = vec![("insert_deduplicate", deduplicate)];
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

/// The insert settings for the deployment this process writes to, from the version of the
/// server it asks first, read once (one tally process writes to one ClickHouse deployment,
/// `clickhouse.url` or `clickhouse.cluster`, whose servers run one release). A failed read
/// is not kept: the next INSERT asks again, and fails like the INSERT would have.
static INSERT_SETTINGS: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();

/// Whether this process writes to a cluster (Replicated tables); set once, by
/// `store::client`, from `clickhouse.cluster`.
pub(super) static REPLICATED: OnceLock<bool> = OnceLock::new();

async fn settings_for(
    client: &Client,
) -> Result<&'static [(&'static str, &'static str)], StoreError> {
    if let Some(settings) = INSERT_SETTINGS.get() {
        return Ok(settings);
    }
    let version: String = client.query("SELECT version()").fetch_one().await?;
    let replicated = REPLICATED.get().copied().unwrap_or(false);
    Ok(INSERT_SETTINGS.get_or_init(|| insert_settings(&version, replicated)))
}

/// Starts an INSERT into `table` with `insert_settings`. Every INSERT tally makes starts here
/// or in [`insert_formatted`].
pub async fn insert<T: Row>(client: &Client, table: &str) -> Result<Insert<T>, StoreError> {
    let mut insert = client.insert::<T>(table).await?;
    for (name, value) in settings_for(client).await? {
        insert = insert.with_setting(*name, *value);
    }
    Ok(insert)
}

/// Starts an INSERT of bytes encoded by tally (`sql` names the table, columns and format)
/// with `insert_settings`.
async fn insert_formatted(
    client: &Client,
    sql: impl Into<String>,
) -> Result<InsertFormatted, StoreError> {
    let mut insert = client.insert_formatted_with(sql);
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
            insert_settings("18.16.1", false),
            vec![("insert_deduplicate", "0")]
        );
        assert_eq!(
            insert_settings("21.10.6.2", false),
            vec![("insert_deduplicate", "0")]
        );
        let current = vec![
            ("insert_deduplicate", "0"),
            ("async_insert", "0"),
            ("wait_for_async_insert", "1"),
        ];
        assert_eq!(insert_settings("21.11.1.8636", false), current);
        // chdb 4.4.0's engine, and the releases that turned async inserts on by default.
        assert_eq!(insert_settings("26.9.2.1", false), current);
        assert_eq!(insert_settings("26.2.1.1", false), current);
        assert_eq!(insert_settings("100.1", false), current);
        // Unreadable: sent, so a server that lacks them fails loudly.
        assert_eq!(insert_settings("unknown", false), current);
        assert_eq!(
            insert_settings(" 18.16.1\n", false),
            vec![("insert_deduplicate", "0")]
        );
        // scripts/check-current-engine.py replays the captured inserts with these.
        let line = |settings: Vec<(&str, &str)>| {
            settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let script = include_str!("../../scripts/check-current-engine.py");
        assert!(script.contains(&format!(
            "CURRENT_INSERT_SETTINGS = \"{}\"",
            line(insert_settings("26.9.2.1", false))
        )));
    }

    #[test]
    fn a_cluster_lets_replicated_tables_absorb_a_retried_block() {
        assert_eq!(
            insert_settings("18.16.1", true),
            vec![("insert_deduplicate", "1")]
        );
        assert_eq!(
            insert_settings("26.9.2.1", true),
            vec![
                ("insert_deduplicate", "1"),
                ("async_insert", "0"),
                ("wait_for_async_insert", "1"),
            ]
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
