//! Plans across a month boundary on the real broker and ClickHouse: the old allowance
//! expires (also on an account that sends nothing), the new one is issued, and the
//! balance, ledger, history and monthly reports agree.

mod common;

use chrono::{DateTime, Utc};
use common::{grant, milli, usage, Deployment};
use serde_json::{json, Value};

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("test time")
}

fn command(ty: &str, id: &str, account: &str, time: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "type": ty, "id": id, "source": "billing",
           "subject": account, "time": time, "data": data})
}

/// Sends `events` stamped with their own time, as a replay of history would be.
fn send_stamped(d: &Deployment, events: &[Value]) {
    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    let out = d.tally_with_input(&["send", "--stamp-event-time", "-"], &lines);
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rows(value: Value) -> Vec<Value> {
    match value {
        Value::Array(rows) => rows,
        other => panic!("not an array: {other}"),
    }
}

/// The monthly summary row of (account, pool "ai").
fn monthly(d: &Deployment, month: &str, account: &str) -> Value {
    rows(d.json(&["report", "monthly", "--month", month, "--account", account]))
        .into_iter()
        .find(|r| r["pool"] == "ai")
        .unwrap_or_else(|| panic!("no ai row for {account} in {month}"))
}

fn part(summary: &Value, side: &str) -> [i64; 6] {
    let s = &summary[side];
    [
        "carried_forward",
        "allocated",
        "consumed",
        "expired",
        "voided",
        "remaining",
    ]
    .map(|k| milli(&s[k]))
}

#[test]
fn a_month_boundary_expires_the_old_allowance_and_issues_the_new_one() {
    let d = Deployment::new(2);
    // Cycles anchored at midnight on 1 October in Seoul (15:00 UTC the day before).
    let anchor = "2026-09-30T15:00:00Z";
    send_stamped(
        &d,
        &[
            command(
                "account.plan",
                "p-acme",
                "acme",
                "2026-10-10T00:00:00Z",
                json!({"plan": "pro", "anchor": anchor}),
            ),
            command(
                "account.plan",
                "p-globex",
                "globex",
                "2026-10-05T00:00:00Z",
                json!({"plan": "standard", "anchor": anchor, "payment": {"method": "cash"}}),
            ),
            grant(
                "g-pack",
                "acme",
                at("2026-10-11T00:00:00Z"),
                json!({"kind": "purchased", "credits": 50, "valid_days": 360,
                       "payment": {"method": "card", "reference": "inv-1"}}),
            ),
            usage(
                "u1",
                "acme",
                at("2026-10-12T00:00:00Z"),
                json!({"user": "kim", "feature": "image_generation", "variant": "mid"}),
            ),
            usage(
                "u2",
                "acme",
                at("2026-10-20T00:00:00Z"),
                json!({"user": "lee", "feature": "erase"}),
            ),
            // 23:59 on 31 October in Seoul: still October's allowance.
            usage(
                "u3",
                "acme",
                at("2026-10-31T14:59:00Z"),
                json!({"user": "kim", "feature": "text_to_image"}),
            ),
            // 00:01 on 1 November in Seoul: November's.
            usage(
                "u4",
                "acme",
                at("2026-10-31T15:01:00Z"),
                json!({"user": "kim", "feature": "regeneration", "variant": "long"}),
            ),
        ],
    );
    d.drain();
    // Nothing after 15:01 has arrived, so October's lots are within their grace: a call
    // made before midnight may still arrive and be paid by them.
    let ledger = d.ledger("acme");
    assert!(ledger.iter().all(|r| r["type"] != "expiry"), "{ledger:?}");

    // The clock moves on with a tick, as `tally run` sends every minute.
    d.tally_ok(&["tick", "--at", "2026-11-01T00:00:00Z"]);
    d.drain();
    // A second tick and drain write nothing twice.
    d.tally_ok(&["tick", "--at", "2026-11-02T00:00:00Z"]);
    d.drain();

    let ledger = d.ledger("acme");
    let entry = |id: &str| {
        ledger
            .iter()
            .find(|r| r["entry_id"] == id)
            .unwrap_or_else(|| panic!("no entry {id}: {ledger:?}"))
    };
    let paid_by = |event: &str| {
        let row = ledger
            .iter()
            .find(|r| r["event_id"] == event)
            .unwrap_or_else(|| panic!("no row for {event}"));
        row["paid"][0]["lot"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(paid_by("u1"), "pro:2026-10-10");
    assert_eq!(
        paid_by("u3"),
        "pro:2026-10-10",
        "23:59 uses October's allowance"
    );
    assert_eq!(paid_by("u4"), "pro:2026-11-01", "00:01 uses November's");
    let expiry = entry("expiry/pro:2026-10-10");
    assert_eq!(
        milli(&expiry["credits"]),
        -75_000,
        "100 - 10 - 7 - 8 expire"
    );
    let issued = entry("grant/pro:2026-11-01");
    assert_eq!(milli(&issued["credits"]), 100_000);
    assert_eq!(issued["comment"], "plan pro, cycle 1");
    let expiries = ledger.iter().filter(|r| r["type"] == "expiry").count();
    assert_eq!(expiries, 1, "written once: {ledger:?}");

    // globex sent nothing after its plan: its allowance still expired and renewed.
    let globex = d.ledger("globex");
    let kinds: Vec<(&str, i64)> = globex
        .iter()
        .map(|r| (r["type"].as_str().unwrap_or(""), milli(&r["credits"])))
        .collect();
    assert_eq!(
        kinds,
        [
            ("grant", 1_500_000),
            ("expiry", -1_500_000),
            ("grant", 1_500_000)
        ]
    );

    // The balance on 2 November: 98 of November's allowance and the pack.
    let balance = d.json(&["balance", "acme", "--at", "2026-11-02T00:00:00Z"]);
    let ai = &balance["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 148_000, "{balance}");
    assert_eq!(milli(&ai["by_kind"]["included"]), 98_000, "{balance}");
    assert_eq!(milli(&ai["by_kind"]["purchased"]), 50_000, "{balance}");
    assert_eq!(milli(&ai["used_this_cycle"]), 2_000, "{balance}");
    assert_eq!(balance["plan"]["name"], "pro");
    assert_eq!(balance["plan"]["cycle_start"], "2026-10-31T15:00:00+00:00");

    // Monthly reports: October's remaining is November's carried forward, and November's
    // remaining is the balance.
    let october = monthly(&d, "2026-10", "acme");
    assert_eq!(
        part(&october, "free"),
        [0, 100_000, 25_000, 0, 0, 75_000],
        "{october}"
    );
    assert_eq!(
        part(&october, "purchased"),
        [0, 50_000, 0, 0, 0, 50_000],
        "{october}"
    );
    let november = monthly(&d, "2026-11", "acme");
    assert_eq!(
        part(&november, "free"),
        [75_000, 100_000, 2_000, 75_000, 0, 98_000],
        "{november}"
    );
    assert_eq!(
        part(&november, "purchased"),
        [50_000, 0, 0, 0, 0, 50_000],
        "{november}"
    );
    // The daily rollups agree with the report's consumption.
    let daily = rows(d.json(&[
        "report",
        "daily",
        "--from",
        "2026-10-01",
        "--to",
        "2026-10-31",
        "--account",
        "acme",
    ]));
    let october_credits: i64 = daily.iter().map(|r| milli(&r["credits"])).sum();
    assert_eq!(october_credits, 25_000);

    // History names how credits arrived and left [000].
    let history = rows(d.json(&["history", "acme"]));
    let types: Vec<&str> = history
        .iter()
        .map(|r| r["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "plan subscription",
            "top-up (card)",
            "expired",
            "plan subscription"
        ]
    );
    let globex_history = rows(d.json(&["history", "globex"]));
    assert_eq!(globex_history[0]["type"], "top-up (cash)");
    let purchases = rows(d.json(&["history", "acme", "--purchases"]));
    assert_eq!(purchases.len(), 1);
    assert_eq!(purchases[0]["payment_reference"], "inv-1");
    assert_eq!(purchases[0]["expires_at"], "2027-10-06T00:00:00+00:00");
}

#[test]
fn tally_run_ticks_so_a_lot_expires_without_any_traffic() {
    let d = Deployment::new(2);
    // Granted two hours ago, ended an hour ago; nothing else is ever sent for globex.
    let granted = common::hours_ago(2);
    d.send(&[grant(
        "g-old",
        "globex",
        granted,
        json!({"kind": "promotional", "credits": 30,
               "expires_at": common::rfc3339(common::hours_ago(1))}),
    )]);
    let mut run = d.spawn_run(&[], &[("TALLY_PIPELINE__TICK_INTERVAL", "1s")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let expired = loop {
        let ledger = d.ledger("globex");
        if let Some(row) = ledger.iter().find(|r| r["type"] == "expiry") {
            break row.clone();
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            panic!("no expiry written by tally run's own ticks: {ledger:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let out = run.wait_with_output().expect("tally run exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(milli(&expired["credits"]), -30_000);
    assert_eq!(expired["entry_id"], "expiry/g-old");
}
