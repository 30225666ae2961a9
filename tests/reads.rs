//! Issue 21, points 1, 2 and 6, against the real stack: `GET /v1/accounts` lists every
//! account with any row, in pages that give each exactly once; the ledger row of a call
//! that named a hold says which hold, what became of it and what was held (CLI, API, CSV),
//! also on a database migrated from before the columns existed; `tally run --drain` and
//! `tally send` log their progress to stderr when it is not a terminal.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use common::server::{Server, ACME_KEY, ADMIN_KEY};
use common::{grant, milli, rfc3339, usage, Deployment, Running, WAIT_LIMIT};
use serde_json::{json, Value};

fn command(id: &str, ty: &str, account: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"specversion": "1.0", "type": ty, "id": id, "source": "billing",
           "subject": account, "time": rfc3339(at), "data": data})
}

fn purchased(credits: i64) -> Value {
    json!({"kind": "purchased", "credits": credits, "expires_at": null})
}

/// Every page of `GET /v1/accounts?limit=N` with `key`, following `x-next-cursor`.
fn account_pages(server: &Server, key: &str, limit: u64) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/accounts?limit={limit}"),
            Some(c) => format!("/v1/accounts?limit={limit}&cursor={c}"),
        };
        let answer = server.get(&path, Some(key));
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        let page: Vec<String> = serde_json::from_value(answer.json())
            .unwrap_or_else(|e| panic!("{path}: not a list of ids ({e}): {}", answer.body));
        assert!(page.len() as u64 <= limit, "{path}: {page:?}");
        let next = answer.header("x-next-cursor");
        if let Some(next) = &next {
            let link = answer
                .header("link")
                .expect("a link header beside the cursor");
            assert!(
                link.contains(&format!("cursor={next}")) && link.ends_with("rel=\"next\""),
                "{link}"
            );
        }
        pages.push(page);
        assert!(pages.len() < 100, "the pages never end: {pages:?}");
        match next {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
    }
}

#[test]
fn accounts_lists_every_account_with_any_row_once_across_pages() {
    let d = Deployment::new(3);
    let at = Utc::now() - TimeDelta::minutes(30);
    let mut events = vec![
        // Lots only.
        grant("g-lots", "a-lots", at, purchased(10)),
        // Calls, no lot: the call is a shortfall on the ledger, and nothing in `lots`.
        usage(
            "c-1",
            "b-calls",
            at,
            json!({"user": "u", "feature": "erase"}),
        ),
        // A failed call only.
        usage(
            "c-2",
            "c-failed",
            at,
            json!({"user": "u", "feature": "erase", "status": "failed"}),
        ),
        // Settings only: the account exists in its checkpointed state alone.
        command(
            "s-1",
            "account.settings",
            "d-settings",
            at,
            json!({"timezone": "Asia/Seoul"}),
        ),
        grant("g-acme", "acme", at, purchased(50)),
        usage("c-3", "acme", at, json!({"user": "u", "feature": "erase"})),
    ];
    for i in 0..5 {
        events.push(usage(
            &format!("c-e{i}"),
            &format!("e-calls-{i}"),
            at,
            json!({"user": "u", "feature": "erase"}),
        ));
    }
    d.send(&events);
    d.drain();
    let lots_only: BTreeSet<String> = d
        .sql("SELECT DISTINCT account FROM lots")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        !lots_only.contains("b-calls"),
        "the test needs an account without lots: {lots_only:?}"
    );

    let mut expected: BTreeSet<String> = ["a-lots", "acme", "b-calls", "c-failed", "d-settings"]
        .into_iter()
        .map(str::to_string)
        .collect();
    expected.extend((0..5).map(|i| format!("e-calls-{i}")));

    let server = Server::start(&d, &[]);
    // One page of everything.
    let all = server.get("/v1/accounts", Some(ADMIN_KEY));
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.header("x-next-cursor"), None, "one page holds them all");
    let listed: Vec<String> = serde_json::from_value(all.json()).expect("ids");
    assert_eq!(
        listed,
        expected.iter().cloned().collect::<Vec<_>>(),
        "every account, in order"
    );

    // Pages of 3 (and of 1): each account exactly once, in order, nothing else.
    for limit in [3u64, 1] {
        let pages = account_pages(&server, ADMIN_KEY, limit);
        let flat: Vec<String> = pages.iter().flatten().cloned().collect();
        assert_eq!(
            flat,
            expected.iter().cloned().collect::<Vec<_>>(),
            "limit {limit}: {pages:?}"
        );
        assert_eq!(
            pages.len() as u64,
            (expected.len() as u64).div_ceil(limit),
            "limit {limit}: no empty page after the last: {pages:?}"
        );
    }

    // An account key sees its own account, once.
    assert_eq!(account_pages(&server, ACME_KEY, 1), vec![vec!["acme"]]);
    // CSV, with the table's column.
    let csv = server.get("/v1/accounts?limit=2&format=csv", Some(ADMIN_KEY));
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert_eq!(
        csv.body.lines().collect::<Vec<_>>(),
        ["account", "a-lots", "acme"]
    );
    // Bad paging parameters are named.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1000000", "limit"),
        ("cursor=zz", "cursor"),
        ("page=2", "page"),
    ] {
        let bad = server.get(&format!("/v1/accounts?{query}"), Some(ADMIN_KEY));
        assert_eq!(bad.status, 400, "{query}: {}", bad.body);
        assert_eq!(bad.json()["parameter"], param, "{query}");
    }
}

/// The ledger row of `event_id` among `rows`.
fn row<'a>(rows: &'a [Value], event_id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["event_id"] == event_id && r["type"] == "usage")
        .unwrap_or_else(|| panic!("no usage row of {event_id}: {rows:?}"))
}

fn assert_hold(rows: &[Value], event_id: &str, id: &str, outcome: &str, held: i64) {
    let r = row(rows, event_id);
    assert_eq!(r["hold"]["id"], id, "{event_id}: {r}");
    assert_eq!(r["hold"]["outcome"], outcome, "{event_id}: {r}");
    assert_eq!(milli(&r["hold"]["held"]), held * 1000, "{event_id}: {r}");
}

#[test]
fn the_usage_row_says_which_hold_and_what_became_of_it() {
    // One partition: the other account's call below moves the clock of acme's partition.
    let d = Deployment::new(1);
    let t0 = Utc::now() - TimeDelta::minutes(40);
    let at = |minutes: i64| t0 + TimeDelta::minutes(minutes);
    let hold = |id: &str, ttl: u64, minute: i64| {
        command(
            &format!("place-{id}"),
            "credit.hold",
            "acme",
            at(minute),
            json!({"hold": id, "feature": "erase", "ttl": ttl}),
        )
    };
    let call = |id: &str, minute: i64, hold: Option<&str>| {
        let mut data = json!({"user": "kim@acme.kr", "feature": "erase"});
        if let Some(hold) = hold {
            data["hold"] = json!(hold);
        }
        usage(id, "acme", at(minute), data)
    };
    let events = vec![
        grant("g-1", "acme", at(0), purchased(100)),
        hold("h-1", 3600, 1),
        call("call-settles", 2, Some("h-1")),
        call("call-again", 3, Some("h-1")),
        call("call-unknown", 4, Some("nope")),
        hold("h-2", 3600, 5),
        command(
            "release-h-2",
            "credit.release",
            "acme",
            at(6),
            json!({"hold": "h-2"}),
        ),
        call("call-released", 7, Some("h-2")),
        // Expires at minute 9 by the partition clock (broker timestamps = event times).
        hold("h-3", 60, 8),
        usage(
            "other",
            "globex",
            at(10),
            json!({"user": "u", "feature": "erase"}),
        ),
        call("call-expired", 12, Some("h-3")),
        call("call-plain", 13, None),
    ];
    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    let file = std::env::temp_dir().join(format!("{}-holds.jsonl", d.name));
    std::fs::write(&file, lines).expect("a temp file");
    let path = file.display().to_string();
    d.tally_ok(&["send", &path, "--stamp-event-time"]);
    let _ = std::fs::remove_file(&file);
    d.drain();

    // erase costs 7. The settling call paid from its hold, which held 7; the others were
    // billed as any call and held nothing.
    let cli = d.ledger("acme");
    assert_hold(&cli, "call-settles", "h-1", "settled", 7);
    assert_eq!(milli(&row(&cli, "call-settles")["credits"]), 7_000);
    assert_hold(&cli, "call-again", "h-1", "already_settled", 0);
    assert_hold(&cli, "call-unknown", "nope", "unknown", 0);
    assert_hold(&cli, "call-released", "h-2", "released", 0);
    assert_hold(&cli, "call-expired", "h-3", "expired", 0);
    assert_eq!(milli(&row(&cli, "call-expired")["credits"]), 7_000);
    assert!(row(&cli, "call-plain")["hold"].is_null(), "{cli:?}");
    assert!(
        cli.iter()
            .filter(|r| r["type"] == "grant")
            .all(|r| r["hold"].is_null()),
        "{cli:?}"
    );
    // The clock's release of h-3: its row names the hold and what it had reserved.
    let expiry: Vec<&Value> = cli.iter().filter(|r| r["type"] == "hold_expired").collect();
    assert_eq!(expiry.len(), 1, "{cli:?}");
    assert_eq!(expiry[0]["hold"]["id"], "h-3", "{}", expiry[0]);
    assert_eq!(expiry[0]["hold"]["outcome"], "expired", "{}", expiry[0]);
    assert_eq!(milli(&expiry[0]["hold"]["held"]), 7_000, "{}", expiry[0]);
    assert_eq!(milli(&expiry[0]["credits"]), 0, "{}", expiry[0]);
    // 100 - 6 calls of 7 (the hold_expired row moves nothing).
    assert_eq!(
        milli(&d.balance("acme")["pools"]["ai"]["available"]),
        58_000
    );

    // The table names the hold and its outcome.
    let table = d.tally_ok(&["ledger", "acme"]);
    // The first line names the zone of the times; the header follows.
    let header = table.lines().nth(1).expect("a header");
    for column in ["hold", "hold outcome", "held"] {
        assert!(header.contains(column), "{header}");
    }
    let settles = table
        .lines()
        .find(|l| l.contains("h-1") && l.contains("settled") && !l.contains("already"))
        .unwrap_or_else(|| panic!("no settled row in the table:\n{table}"));
    assert!(settles.trim_end().ends_with('7'), "{settles}");

    // The API's ledger is the same JSON, and its CSV has the columns.
    let server = Server::start(&d, &[]);
    let api = server.get("/v1/accounts/acme/ledger", Some(ACME_KEY));
    assert_eq!(api.status, 200, "{}", api.body);
    let api_rows: Vec<Value> = serde_json::from_value(api.json()).expect("rows");
    assert_eq!(api_rows, cli, "the API's ledger is `tally ledger --json`");
    let csv = server.get("/v1/accounts/acme/ledger?format=csv", Some(ACME_KEY));
    assert_eq!(csv.status, 200, "{}", csv.body);
    let mut lines = csv.body.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let (id_at, outcome_at, held_at) = (
        header.iter().position(|c| *c == "hold").expect("hold"),
        header
            .iter()
            .position(|c| *c == "hold outcome")
            .expect("hold outcome"),
        header.iter().position(|c| *c == "held").expect("held"),
    );
    let outcomes: Vec<(String, String, String)> = lines
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|cells| !cells[id_at].is_empty())
        .map(|cells| {
            (
                cells[id_at].clone(),
                cells[outcome_at].clone(),
                cells[held_at].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("h-1", "settled", "7"),
        ("h-1", "already_settled", "0"),
        ("nope", "unknown", "0"),
        ("h-2", "released", "0"),
        ("h-3", "expired", "7"),
        ("h-3", "expired", "0"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(outcomes, expected, "{}", csv.body);
}

/// The `ledger` table as `tally migrate` created it before the hold columns.
const OLD_LEDGER: &str = "CREATE TABLE ledger (
    entry_id String, account String, entry_type String, time DateTime, day Date,
    service String, user String, feature String, variant String, quantity Int64,
    status String, pool String, credits Int64, paid_lots Array(String),
    paid_kinds Array(String), paid_credits Array(Int64), shortfall Int64,
    matrix_version String, event_id String, lot String, lot_kind String,
    payment_method String, payment_reference String, comment String, version UInt64
) ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(time) ORDER BY (account, entry_id)";

#[test]
fn migrate_adds_the_hold_columns_to_an_existing_ledger() {
    let d = Deployment::new(1);
    d.sql("DROP TABLE ledger");
    d.sql(OLD_LEDGER);
    let at = Utc::now() - TimeDelta::minutes(10);
    d.send(&[usage(
        "old-call",
        "acme",
        at,
        json!({"user": "u", "feature": "erase"}),
    )]);
    // An old row, as an earlier tally wrote it.
    d.sql(&format!(
        "INSERT INTO ledger (entry_id, account, entry_type, time, day, feature, status, pool, \
         credits, event_id, version) VALUES ('old/0', 'acme', 'usage', {}, toDate({}), \
         'erase', 'succeeded', 'ai', 7000, 'before', 1)",
        at.timestamp(),
        at.timestamp()
    ));
    let columns = || {
        d.sql(&format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = 'ledger' \
             AND name LIKE 'hold%' ORDER BY name",
            d.database
        ))
    };
    assert_eq!(columns(), "", "the old table has no hold columns");
    // Before the migration, `tally run` stops at start naming what is missing, instead of
    // failing every flush.
    let refused = d.tally(&["run", "--drain"]);
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{log}");
    assert!(
        log.contains("no column `hold_id`") && log.contains("tally migrate"),
        "{log}"
    );
    d.tally_ok(&["migrate"]);
    assert_eq!(
        columns(),
        "hold_held\tInt64\nhold_id\tString\nhold_outcome\tString\n"
    );
    // Safe to run again.
    d.tally_ok(&["migrate"]);
    // The old row reads as no hold, and new rows are written with the columns.
    d.drain();
    let rows = d.ledger("acme");
    let before = rows
        .iter()
        .find(|r| r["event_id"] == "before")
        .unwrap_or_else(|| panic!("the old row: {rows:?}"));
    assert!(before["hold"].is_null(), "{before}");
    assert!(row(&rows, "old-call")["hold"].is_null(), "{rows:?}");
}

/// `key=value` of a tracing line (`left=12`), as text.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

fn number(line: &str, key: &str) -> Option<u64> {
    field(line, key).and_then(|v| v.parse().ok())
}

/// `log` without its colours (tracing writes ANSI escapes also to a pipe).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The progress lines of `what` in a (plain) log.
fn progress_lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    let tag = format!("what=\"{what}\"");
    log.lines()
        .filter(|l| l.contains("tally::progress: progress "))
        .filter(|l| l.contains(&tag))
        .collect()
}

#[test]
fn drain_logs_its_progress_to_stderr() {
    const CALLS: u64 = 3_000;
    let d = Deployment::new(2);
    let at = Utc::now() - TimeDelta::minutes(20);
    let mut events = vec![grant("g-1", "acme", at, purchased(100_000))];
    for i in 0..CALLS {
        let account = if i % 2 == 0 { "acme" } else { "globex" };
        events.push(usage(
            &format!("c-{i}"),
            account,
            at,
            json!({"user": "u", "feature": "erase"}),
        ));
    }
    d.send(&events);
    let total = CALLS + 1;

    let mut child = Running::spawn(
        d.command()
            .args(["--json", "run", "--drain"])
            .env("TALLY_PIPELINE__PROGRESS_INTERVAL", "1ms"),
    );
    let deadline = Instant::now() + WAIT_LIMIT;
    while child.try_wait().expect("wait works").is_none() {
        assert!(
            Instant::now() < deadline,
            "tally run --drain still running after {WAIT_LIMIT:?}: {}",
            child.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("tally run exits");
    let log = plain(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    // Progress never reaches stdout: it is the JSON summary alone.
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e})"));
    assert!(summary.is_object(), "{summary}");

    let lines = progress_lines(&log, "drain");
    let last = *lines
        .last()
        .unwrap_or_else(|| panic!("no progress line in the log:\n{log}"));
    assert_eq!(field(last, "finished"), Some("true"), "{last}");
    assert_eq!(number(last, "done"), Some(total), "{last}");
    assert_eq!(number(last, "left"), Some(0), "{last}");
    assert_eq!(number(last, "total"), Some(total), "{last}");
    assert!(number(last, "rate_per_second").is_some(), "{last}");
    assert_eq!(field(last, "unit"), Some("\"records\""), "{last}");
    // Periodic lines came before the last, each consistent: done + left = total, counts
    // never go back.
    let periodic: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| field(l, "finished") == Some("false"))
        .collect();
    assert!(!periodic.is_empty(), "no periodic progress line:\n{log}");
    let mut previous = 0;
    for line in &periodic {
        let done = number(line, "done").expect("done");
        assert!(done >= previous && done <= total, "{line}");
        previous = done;
        if let (Some(left), Some(all)) = (number(line, "left"), number(line, "total")) {
            assert_eq!(done + left, all, "{line}");
            assert!(all <= total, "{line}");
        }
    }
}

#[test]
fn send_logs_its_progress_to_stderr() {
    const EVENTS: u64 = 5_000;
    let d = Deployment::new(2);
    let at = Utc::now() - TimeDelta::minutes(20);
    let lines: String = (0..EVENTS)
        .map(|i| {
            format!(
                "{}\n",
                usage(
                    &format!("c-{i}"),
                    "acme",
                    at,
                    json!({"user": "u", "feature": "erase"})
                )
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("{}-send.jsonl", d.name));
    std::fs::write(&file, &lines).expect("a temp file");
    let path = file.display().to_string();
    let out = d
        .command()
        .args(["--json", "send", &path])
        .env("TALLY_PIPELINE__PROGRESS_INTERVAL", "1ms")
        .output()
        .expect("tally send runs");
    let _ = std::fs::remove_file(&file);
    let log = plain(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    // stdout is the JSON answer alone.
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(answer["sent"][&d.usage_topic], EVENTS, "{answer}");

    let progress = progress_lines(&log, "send");
    let last = *progress
        .last()
        .unwrap_or_else(|| panic!("no progress line in the log:\n{log}"));
    assert_eq!(field(last, "finished"), Some("true"), "{last}");
    assert_eq!(number(last, "done"), Some(EVENTS), "{last}");
    assert_eq!(number(last, "left"), Some(0), "{last}");
    assert_eq!(number(last, "total"), Some(lines.len() as u64), "{last}");
    assert_eq!(field(last, "unit"), Some("\"bytes\""), "{last}");
    // Every periodic line says how much of the file is left.
    for line in progress
        .iter()
        .filter(|l| field(l, "finished") == Some("false"))
    {
        let left = number(line, "left").expect("left");
        assert!(left < lines.len() as u64, "{line}");
        assert_eq!(number(line, "total"), Some(lines.len() as u64), "{line}");
    }
}

/// The CLI's ledger and history tables show an account's times in its own zone, named in
/// the title; `--json` keeps RFC 3339 in UTC. The expected local times are converted here
/// with chrono-tz from the JSON's UTC times, not read from tally's tables.
#[test]
fn cli_tables_show_times_in_the_accounts_zone() {
    let d = Deployment::new(1);
    let zone = chrono_tz::America::Los_Angeles;
    let at = common::hours_ago(3);
    let mut settings = grant(
        "s-la",
        "la-co",
        at - TimeDelta::minutes(1),
        json!({"timezone": "America/Los_Angeles"}),
    );
    settings["type"] = json!("account.settings");
    d.send(&[
        settings,
        grant(
            "g-la",
            "la-co",
            at,
            json!({"kind": "purchased", "credits": 100, "expires_at": null}),
        ),
        usage(
            "u-la",
            "la-co",
            at + TimeDelta::minutes(7),
            json!({"user": "u", "feature": "erase"}),
        ),
    ]);
    d.drain();
    let ledger = d.ledger("la-co");
    assert_eq!(ledger.len(), 2, "{ledger:?}");
    let table = d.tally_ok(&["ledger", "la-co"]);
    assert!(
        table.starts_with("times in America/Los_Angeles"),
        "no zone named: {table}"
    );
    assert!(!table.contains("(UTC)"), "{table}");
    for row in &ledger {
        let utc: DateTime<Utc> = row["time"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("an RFC 3339 time: {row}"));
        assert!(
            row["time"].as_str().is_some_and(|t| t.ends_with("+00:00")),
            "JSON keeps UTC: {row}"
        );
        let local = utc
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let in_utc = utc.format("%Y-%m-%d %H:%M:%S").to_string();
        assert!(table.contains(&local), "{local} not in {table}");
        assert!(!table.contains(&in_utc), "UTC time {in_utc} in {table}");
    }
    let history = d.tally_ok(&["history", "la-co"]);
    assert!(
        history.starts_with("times in America/Los_Angeles"),
        "{history}"
    );
    let granted: DateTime<Utc> = ledger
        .iter()
        .find(|r| r["type"] == "grant")
        .and_then(|r| r["time"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("a grant row: {ledger:?}"));
    let local = granted
        .with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert!(history.contains(&local), "{local} not in {history}");
}
