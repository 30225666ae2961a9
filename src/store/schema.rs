//! `tally migrate`: creates the database and tables; safe to run again.

use clickhouse::Client;

use super::StoreError;

/// Every statement uses only what ClickHouse 18.16 and current releases both accept.
/// Tables that tally rewrites are ReplacingMergeTree keyed by what identifies a row and
/// versioned by a number that grows across restarts, so a retried or replayed write
/// replaces the earlier one instead of adding to it. Reads use FINAL.
const TABLES: [Table; 8] = [
    // One row per call, grant or void. entry_id is the Kafka position of the event.
    Table {
        name: "ledger",
        columns: "entry_id String,
        account String,
        entry_type String,
        time DateTime,
        day Date,
        service String,
        user String,
        feature String,
        variant String,
        quantity Int64,
        status String,
        pool String,
        credits Int64,
        paid_lots Array(String),
        paid_kinds Array(String),
        paid_credits Array(Int64),
        shortfall Int64,
        matrix_version String,
        event_id String,
        lot String,
        lot_kind String,
        payment_method String,
        payment_reference String,
        comment String,
        version UInt64,
        hold_id String,
        hold_outcome String,
        hold_held Int64,
        partition UInt32",
        engine: "ReplacingMergeTree(version)",
        keys: "PARTITION BY toYYYYMM(time) ORDER BY (account, entry_id)",
        shard_by: "partition",
    },
    // Daily totals written by tally before rollups were cut by segment of the log (see
    // daily_rollups). No longer written; reports add what it holds to daily_rollups.
    Table {
        name: "daily_usage",
        columns: "day Date,
        account String,
        service String,
        user String,
        feature String,
        calls UInt64,
        failed_calls UInt64,
        credits Int64,
        included Int64,
        promotional Int64,
        purchased Int64,
        shortfall Int64,
        version UInt64,
        flex Int64",
        engine: "ReplacingMergeTree(version)",
        keys: "PARTITION BY toYYYYMM(day) ORDER BY (account, day, service, user, feature)",
        shard_by: "",
    },
    // Daily totals: absolute running totals of one (account, day, service, user, feature)
    // over the usage records of one segment of the log (`segment`: partition and a run of
    // `SEGMENT_RECORDS` offsets of the usage topic), so a replay rebuilds exactly the same
    // rows and no open total outlives its segment. Reports sum the segments of a day.
    // Credits are thousandths.
    Table {
        name: "daily_rollups",
        columns: "day Date,
        account String,
        service String,
        user String,
        feature String,
        segment UInt64,
        calls UInt64,
        failed_calls UInt64,
        credits Int64,
        included Int64,
        promotional Int64,
        purchased Int64,
        shortfall Int64,
        flex Int64,
        version UInt64,
        partition UInt32",
        engine: "ReplacingMergeTree(version)",
        keys: "PARTITION BY toYYYYMM(day) ORDER BY (account, day, service, user, feature, segment)",
        shard_by: "partition",
    },
    // What is left of every lot; all lots of an account are written together.
    Table {
        name: "lots",
        columns: "account String,
        lot String,
        pool String,
        kind String,
        granted Int64,
        remaining Int64,
        effective_at DateTime,
        expires_at DateTime,
        never_expires UInt8,
        priority Int32,
        has_priority UInt8,
        seq UInt64,
        voided UInt8,
        version UInt64,
        expired UInt8,
        from_plan UInt8,
        partition UInt32",
        engine: "ReplacingMergeTree(version)",
        keys: "ORDER BY (account, lot)",
        shard_by: "partition",
    },
    // Available credits per pool and kind as of the account's latest event.
    Table {
        name: "balances",
        columns: "account String,
        pool String,
        available Int64,
        included Int64,
        promotional Int64,
        purchased Int64,
        as_of DateTime,
        version UInt64,
        partition UInt32",
        engine: "ReplacingMergeTree(version)",
        keys: "ORDER BY (account, pool)",
        shard_by: "partition",
    },
    // The commit point. One INSERT per flush carries, per partition, the state of every
    // account that changed, the new dedup keys and, last, the partition's next offsets.
    // ClickHouse 18.16 keeps the rows it had parsed when a client dies mid-INSERT, so a
    // flush's rows only count once its offsets row exists (written last, it proves the
    // rows before it arrived), and only in the lineage of claims a load follows (`claim`:
    // the claim each row was written under; see `checkpoint::Lineage`), so a superseded
    // owner's late flushes never count. Plain MergeTree: a torn flush's rows must never
    // replace a complete one's, as a ReplacingMergeTree merge would.
    Table {
        name: "checkpoints",
        columns: "stream String,
        partition UInt32,
        row_kind String,
        account String,
        key_hi UInt64,
        key_lo UInt64,
        version UInt64,
        usage_offset Int64,
        commands_offset Int64,
        arrival_high Int64,
        state String,
        seen_at Int64,
        written_at DateTime,
        claim UInt64",
        engine: "MergeTree",
        keys: "ORDER BY (stream, partition, row_kind, version)",
        shard_by: "partition",
    },
    // One row per low-credit alert; every change of its delivery status writes the whole
    // row again with a higher version. created_at never changes, so filtering on it (or on
    // the key) before FINAL's deduplication cannot pick an outdated version. Credits are
    // thousandths; sent_at is 0 until the alert went out.
    Table {
        name: "alerts",
        columns: "alert_id String,
        account String,
        pool String,
        kind String,
        threshold Int64,
        balance Int64,
        time DateTime,
        locale String,
        recipients Array(String),
        top_features Array(String),
        top_feature_credits Array(Int64),
        top_users Array(String),
        top_user_credits Array(Int64),
        status String,
        attempts UInt32,
        error String,
        digest_of Array(String),
        sent_in String,
        created_at DateTime,
        sent_at DateTime,
        updated_at DateTime,
        version UInt64",
        engine: "ReplacingMergeTree(version)",
        keys: "ORDER BY (account, alert_id)",
        shard_by: "cityHash64(account)",
    },
    // One row per webhook delivery (a notice to one endpoint) and its status, versioned
    // like alerts. webhook_id is the same for a notice's deliveries to every endpoint;
    // payload is the exact body every attempt sends. Never a secret: an account
    // endpoint's secret is derived again from `rotation` when it is sent. Written through
    // the Distributed table on a cluster, like alerts.
    Table {
        name: "webhooks",
        columns: "webhook_id String,
        account String,
        endpoint String,
        rotation UInt32,
        url String,
        event_type String,
        notice_id String,
        payload String,
        time DateTime,
        status String,
        attempts UInt32,
        error String,
        response_status UInt16,
        created_at DateTime,
        sent_at DateTime,
        updated_at DateTime,
        version UInt64",
        engine: "ReplacingMergeTree(version)",
        keys: "ORDER BY (account, webhook_id, endpoint)",
        shard_by: "cityHash64(account)",
    },
];

/// Columns added after the first release, appended at the end of their tables, so a
/// database created by an earlier `tally migrate` is brought up to date.
const ADDED_COLUMNS: [(&str, &str, &str); 11] = [
    ("daily_usage", "flex", "Int64"),
    ("lots", "expired", "UInt8"),
    ("lots", "from_plan", "UInt8"),
    // The hold a usage row named and what became of it (issue 21); rows written before
    // read as no hold (empty strings, 0).
    ("ledger", "hold_id", "String"),
    ("ledger", "hold_outcome", "String"),
    ("ledger", "hold_held", "Int64"),
    // The Kafka partition that wrote the row, which picks its shard on a cluster (issue
    // 24); rows written before read as partition 0 (only a single server has them).
    ("ledger", "partition", "UInt32"),
    ("lots", "partition", "UInt32"),
    ("balances", "partition", "UInt32"),
    ("daily_rollups", "partition", "UInt32"),
    // The claim a checkpoint row was written under, which fences a superseded owner
    // (`checkpoint::Lineage`); rows written before read as 0, the lineage before fencing.
    ("checkpoints", "claim", "UInt64"),
];

/// One table: the statement that creates it is assembled from these, for one server
/// (`ENGINE = {engine} {keys}`) or a cluster (a Replicated `{engine}` per shard and a
/// Distributed table over them, sharded by `shard_by`).
struct Table {
    name: &'static str,
    columns: &'static str,
    /// `ReplacingMergeTree(version)` or `MergeTree`.
    engine: &'static str,
    /// PARTITION BY and ORDER BY.
    keys: &'static str,
    /// The Distributed table's sharding key: `partition` (the Kafka partition that wrote
    /// the row, `cluster::shard_of`) for every table tally run writes per partition; the
    /// account for alerts, written through the Distributed table; none for daily_usage,
    /// which is no longer written.
    shard_by: &'static str,
}

impl Table {
    fn create(&self) -> String {
        let Table {
            name,
            columns,
            engine,
            keys,
            ..
        } = self;
        format!("CREATE TABLE IF NOT EXISTS {name} ({columns}) ENGINE = {engine} {keys}")
    }

    /// The Replicated table in `local` on every server of `cluster`. Its ZooKeeper path
    /// names the cluster, the database and the shard (the server's `{shard}` macro), so
    /// the replicas of one shard share it and nothing else does.
    fn create_replicated(&self, cluster: &str, database: &str, local: &str) -> String {
        let Table {
            name,
            columns,
            engine,
            keys,
            ..
        } = self;
        let path =
            format!("'/clickhouse/tables/{cluster}/{database}/{{shard}}/{name}', '{{replica}}'");
        let engine = match engine.split_once('(') {
            Some((family, args)) => format!("Replicated{family}({path}, {args}"),
            None => format!("Replicated{engine}({path})"),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {local}.{name} ON CLUSTER {cluster} ({columns}) \
             ENGINE = {engine} {keys}"
        )
    }

    /// The Distributed table in `database` over the Replicated tables in `local`.
    fn create_distributed(&self, cluster: &str, database: &str, local: &str) -> String {
        let Table {
            name,
            columns,
            shard_by,
            ..
        } = self;
        let key = if shard_by.is_empty() {
            String::new()
        } else {
            format!(", {shard_by}")
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} ({columns}) \
             ENGINE = Distributed({cluster}, {local}, {name}{key})"
        )
    }
}

/// Creates `database` and every table in it, on one server.
pub async fn migrate(server: &Client, database: &str) -> Result<(), StoreError> {
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await?;
    let client = server.clone().with_database(database);
    for table in TABLES {
        client.query(&table.create()).execute().await?;
    }
    for (table, column, ty) in ADDED_COLUMNS {
        if !has_column(&client, database, table, column).await? {
            client
                .query(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .execute()
                .await?;
        }
    }
    Ok(())
}

/// 18.16 has no ADD COLUMN IF NOT EXISTS, so look first.
async fn has_column(
    client: &Client,
    database: &str,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    let present: u64 = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(database)
        .bind(table)
        .bind(column)
        .fetch_one()
        .await?;
    Ok(present > 0)
}

/// Creates `database` (the Distributed tables) and `<database>_local` (the Replicated
/// tables) on every server of `cluster` (see `cluster`). Every statement runs `ON CLUSTER`:
/// the server that receives it queues it in ZooKeeper
/// and answers once every server of the cluster ran it (or failed, which fails the call),
/// so a server that is down makes `tally migrate` fail after `distributed_ddl_task_timeout`
/// instead of leaving it without tables. `IF NOT EXISTS` makes it safe to run again.
pub async fn migrate_cluster(
    server: &Client,
    database: &str,
    cluster: &str,
) -> Result<(), StoreError> {
    let local = super::cluster::local_database(database);
    for db in [&local, database] {
        server
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}"
            ))
            .execute()
            .await?;
    }
    for table in TABLES {
        let replicated = table.create_replicated(cluster, database, &local);
        server.query(&replicated).execute().await?;
        let distributed = table.create_distributed(cluster, database, &local);
        server.query(&distributed).execute().await?;
    }
    // A column added since a cluster database was made: to the Replicated tables (each
    // shard's ALTER replicates to its replicas) and to the Distributed ones.
    for (table, column, ty) in ADDED_COLUMNS {
        for db in [&local, database] {
            if !has_column(server, db, table, column).await? {
                server
                    .query(&format!(
                        "ALTER TABLE {db}.{table} ON CLUSTER {cluster} ADD COLUMN {column} {ty}"
                    ))
                    .execute()
                    .await?;
            }
        }
    }
    Ok(())
}

/// Fails naming the first column added since the first release that the database lacks
/// (one created by an earlier `tally migrate` and not migrated since).
pub async fn check_columns(client: &Client) -> Result<(), StoreError> {
    let present: Vec<String> = client
        .query(
            "SELECT concat(table, '.', name) FROM system.columns \
             WHERE database = currentDatabase()",
        )
        .fetch_all()
        .await?;
    match ADDED_COLUMNS
        .iter()
        .find(|(table, column, _)| !present.iter().any(|p| *p == format!("{table}.{column}")))
    {
        Some((table, column, _)) => Err(StoreError::Outdated { table, column }),
        None => Ok(()),
    }
}
