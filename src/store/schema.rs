//! `tally migrate`: creates the database and tables; safe to run again.

use clickhouse::Client;

use super::StoreError;

/// Every statement uses only what ClickHouse 18.16 and current releases both accept.
/// Tables that tally rewrites are ReplacingMergeTree keyed by what identifies a row and
/// versioned by a number that grows across restarts, so a retried or replayed write
/// replaces the earlier one instead of adding to it. Reads use FINAL.
const TABLES: [&str; 8] = [
    // One row per call, grant or void. entry_id is the Kafka position of the event.
    "CREATE TABLE IF NOT EXISTS ledger (
        entry_id String,
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
        hold_held Int64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(time)
    ORDER BY (account, entry_id)",
    // Daily totals written by tally before rollups were cut by segment of the log (see
    // daily_rollups). No longer written; reports add what it holds to daily_rollups.
    "CREATE TABLE IF NOT EXISTS daily_usage (
        day Date,
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
        flex Int64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(day)
    ORDER BY (account, day, service, user, feature)",
    // Daily totals: absolute running totals of one (account, day, service, user, feature)
    // over the usage records of one segment of the log (`segment`: partition and a run of
    // `SEGMENT_RECORDS` offsets of the usage topic), so a replay rebuilds exactly the same
    // rows and no open total outlives its segment. Reports sum the segments of a day.
    // Credits are thousandths.
    "CREATE TABLE IF NOT EXISTS daily_rollups (
        day Date,
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
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(day)
    ORDER BY (account, day, service, user, feature, segment)",
    // What is left of every lot; all lots of an account are written together.
    "CREATE TABLE IF NOT EXISTS lots (
        account String,
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
        from_plan UInt8
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (account, lot)",
    // Available credits per pool and kind as of the account's latest event.
    "CREATE TABLE IF NOT EXISTS balances (
        account String,
        pool String,
        available Int64,
        included Int64,
        promotional Int64,
        purchased Int64,
        as_of DateTime,
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (account, pool)",
    // The commit point. One INSERT per flush carries, per partition, the state of every
    // account that changed, the new dedup keys and, last, the partition's next offsets.
    // ClickHouse 18.16 keeps the rows it had parsed when a client dies mid-INSERT, so a
    // flush's rows only count once its offsets row exists (written last, it proves the
    // rows before it arrived). Plain MergeTree: a torn flush's rows must never replace a
    // complete one's, as a ReplacingMergeTree merge would.
    "CREATE TABLE IF NOT EXISTS checkpoints (
        stream String,
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
        written_at DateTime
    ) ENGINE = MergeTree
    ORDER BY (stream, partition, row_kind, version)",
    // One row per low-credit alert; every change of its delivery status writes the whole
    // row again with a higher version. created_at never changes, so filtering on it (or on
    // the key) before FINAL's deduplication cannot pick an outdated version. Credits are
    // thousandths; sent_at is 0 until the alert went out.
    "CREATE TABLE IF NOT EXISTS alerts (
        alert_id String,
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
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (account, alert_id)",
    // One row per webhook delivery (a notice to one endpoint) and its status, versioned
    // like alerts. webhook_id is the same for a notice's deliveries to every endpoint;
    // payload is the exact body every attempt sends. Never a secret: an account
    // endpoint's secret is derived again from `rotation` when it is sent.
    "CREATE TABLE IF NOT EXISTS webhooks (
        webhook_id String,
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
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (account, webhook_id, endpoint)",
];

/// Columns added after the first release, appended at the end of their tables, so a
/// database created by an earlier `tally migrate` is brought up to date.
const ADDED_COLUMNS: [(&str, &str, &str); 6] = [
    ("daily_usage", "flex", "Int64"),
    ("lots", "expired", "UInt8"),
    ("lots", "from_plan", "UInt8"),
    // The hold a usage row named and what became of it (issue 21); rows written before
    // read as no hold (empty strings, 0).
    ("ledger", "hold_id", "String"),
    ("ledger", "hold_outcome", "String"),
    ("ledger", "hold_held", "Int64"),
];

/// Creates `database` and every table in it.
pub async fn migrate(server: &Client, database: &str) -> Result<(), StoreError> {
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await?;
    let client = server.clone().with_database(database);
    for table in TABLES {
        client.query(table).execute().await?;
    }
    for (table, column, ty) in ADDED_COLUMNS {
        // 18.16 has no ADD COLUMN IF NOT EXISTS, so look first.
        let present: u64 = client
            .query(
                "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
            )
            .bind(database)
            .bind(table)
            .bind(column)
            .fetch_one()
            .await?;
        if present == 0 {
            client
                .query(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .execute()
                .await?;
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
