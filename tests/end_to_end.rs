//! End to end on the real broker and ClickHouse: events in through Kafka, balances, ledger
//! and daily reports out through the CLI's JSON.

mod common;

use chrono::{TimeDelta, Utc};
use common::{grant, hours_ago, milli, rfc3339, usage, Deployment};
use serde_json::{json, Value};

fn pool<'a>(balance: &'a Value, pool: &str) -> &'a Value {
    &balance["pools"][pool]
}

#[test]
fn usage_is_priced_debited_in_order_and_reported() {
    let d = Deployment::new(2);
    let t0 = hours_ago(30);
    let soon = rfc3339(Utc::now() + TimeDelta::days(10));
    d.send(&[
        grant(
            "g-month",
            "acme",
            t0,
            json!({"kind": "included", "credits": 100, "expires_at": soon}),
        ),
        grant(
            "g-pack",
            "acme",
            t0,
            json!({"kind": "purchased", "credits": "2500",
              "expires_at": null, "payment": {"method": "card", "reference": "inv-1"}}),
        ),
        grant(
            "g-scan",
            "acme",
            t0,
            json!({"kind": "purchased", "pool": "scan", "credits": 2}),
        ),
    ]);
    let t = |m: i64| t0 + TimeDelta::minutes(m);
    d.send(&[
        usage(
            "u1",
            "acme",
            t(1),
            json!({"user": "kim@acme.kr", "feature": "image_generation", "variant": "mid"}),
        ),
        usage(
            "u2",
            "acme",
            t(2),
            json!({"user": "lee@acme.kr", "feature": "text_to_image", "quantity": 2}),
        ),
        usage(
            "u3",
            "acme",
            t(3),
            json!({"user": "kim@acme.kr", "feature": "video_generation",
              "variant": "long", "status": "failed"}),
        ),
        usage(
            "u4",
            "acme",
            t(4),
            json!({"user": "kim@acme.kr", "feature": "upscale"}),
        ),
        usage(
            "u5",
            "acme",
            t(5),
            json!({"user": "kim@acme.kr", "feature": "video_generation", "variant": "long"}),
        ),
        // 3 scans against 2 scan credits: 1 short, and never taken from the ai pool.
        usage(
            "u6",
            "acme",
            t(6),
            json!({"user": "lee@acme.kr", "feature": "deep_scan", "quantity": 3}),
        ),
    ]);
    let summary = d.drain();
    assert_eq!(summary["applied"], 9, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");

    // 10 + 16 + 0 + 0 + 100 = 126 from ai: the included lot (expires sooner) pays first.
    let balance = d.balance("acme");
    let ai = pool(&balance, "ai");
    assert_eq!(milli(&ai["available"]), 2_474_000, "{balance}");
    assert_eq!(milli(&ai["by_kind"]["included"]), 0, "{balance}");
    assert_eq!(milli(&ai["by_kind"]["purchased"]), 2_474_000, "{balance}");
    assert_eq!(milli(&pool(&balance, "scan")["available"]), 0, "{balance}");

    let ledger = d.ledger("acme");
    let row = |event: &str| {
        ledger
            .iter()
            .find(|r| r["event_id"] == event)
            .unwrap_or_else(|| panic!("no ledger row for {event}: {ledger:?}"))
    };
    assert_eq!(ledger.len(), 9);
    assert_eq!(row("g-pack")["payment_method"], "card");
    assert_eq!(row("u1")["matrix_version"], "2026-01");
    assert_eq!(milli(&row("u2")["credits"]), 16_000);
    let failed = row("u3");
    assert_eq!(
        (failed["status"].as_str(), milli(&failed["credits"])),
        (Some("failed"), 0)
    );
    assert_eq!(failed["paid"], json!([]));
    // The long video straddles lots: 74 left of the month, 26 from the pack.
    assert_eq!(
        row("u5")["paid"],
        json!([{"lot": "g-month", "kind": "included", "credits": 74},
               {"lot": "g-pack", "kind": "purchased", "credits": 26}])
    );
    let scan = row("u6");
    // Two scan credits were left; flex (on by default) pays the third.
    assert_eq!(
        (milli(&scan["credits"]), milli(&scan["shortfall"])),
        (3_000, 0)
    );
    assert_eq!(
        scan["paid"][1],
        json!({"lot": "flex", "kind": "flex", "credits": 1})
    );
    assert_eq!(scan["pool"], "scan");

    let day = |at: chrono::DateTime<Utc>| {
        at.with_timezone(&chrono_tz::Asia::Seoul)
            .date_naive()
            .to_string()
    };
    let from = day(t0 - TimeDelta::days(1));
    let to = day(Utc::now());
    let by_user = d.json(&[
        "report",
        "daily",
        "--from",
        &from,
        "--to",
        &to,
        "--account",
        "acme",
        "--by",
        "user",
    ]);
    let rows = by_user.as_array().expect("report is an array");
    let total = |field: &str| {
        rows.iter()
            .map(|r| r[field].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(total("calls"), 6, "{by_user}");
    assert_eq!(total("failed_calls"), 1, "{by_user}");
    let kim: i64 = rows
        .iter()
        .filter(|r| r["user"] == "kim@acme.kr")
        .map(|r| milli(&r["credits"]))
        .sum();
    assert_eq!(kim, 110_000, "{by_user}");
    for row in rows {
        assert!(row["day"].is_string() && row["account"] == "acme", "{row}");
    }
}

#[test]
fn rollups_use_the_account_time_zone() {
    let d = Deployment::new(1);
    // 16:00 UTC is 01:00 the next day in Seoul, the configured default.
    let at = (Utc::now() - TimeDelta::days(2))
        .date_naive()
        .and_hms_opt(16, 0, 0)
        .expect("valid")
        .and_utc();
    d.send(&[
        grant(
            "g",
            "kr",
            at - TimeDelta::hours(1),
            json!({"kind": "promotional", "credits": 50}),
        ),
        usage("u", "kr", at, json!({"user": "u", "feature": "erase"})),
    ]);
    d.drain();
    let seoul_day = (at + TimeDelta::hours(9)).date_naive().to_string();
    let report = d.json(&[
        "report", "daily", "--from", &seoul_day, "--to", &seoul_day, "--by", "feature",
    ]);
    assert_eq!(
        report,
        json!([{"day": seoul_day, "account": "kr", "feature": "erase", "calls": 1, "failed_calls": 0,
                "credits": 7, "by_kind": {"included": 0, "promotional": 7, "purchased": 0, "flex": 0}, "shortfall": 0}])
    );
}

/// A database upgraded from a version that wrote `daily_usage` keeps its history: reports
/// add those rows to the segments of `daily_rollups`, which a run writes now.
#[test]
fn daily_totals_written_before_segments_still_count() {
    let d = Deployment::new(1);
    let at = (Utc::now() - TimeDelta::days(2))
        .date_naive()
        .and_hms_opt(3, 0, 0)
        .expect("valid")
        .and_utc();
    let day = (at + TimeDelta::hours(9)).date_naive().to_string();
    // What an earlier version left: 2 calls, 14 credits (thousandths in storage).
    d.sql(&format!(
        "INSERT INTO daily_usage (day, account, service, user, feature, calls, failed_calls, \
         credits, included, promotional, purchased, shortfall, version, flex) \
         VALUES (toDate('{day}'), 'old', 'svc', 'u', 'erase', 2, 0, 14000, 0, 14000, 0, 0, 1, 0)"
    ));
    d.send(&[
        grant(
            "g",
            "old",
            at - TimeDelta::hours(1),
            json!({"kind": "promotional", "credits": 50}),
        ),
        usage("u", "old", at, json!({"user": "u", "feature": "erase"})),
    ]);
    d.drain();
    let report = d.json(&[
        "report", "daily", "--from", &day, "--to", &day, "--by", "feature",
    ]);
    assert_eq!(
        report,
        json!([{"day": day, "account": "old", "feature": "erase", "calls": 3, "failed_calls": 0,
                "credits": 21, "by_kind": {"included": 0, "promotional": 21, "purchased": 0, "flex": 0}, "shortfall": 0}])
    );
}

#[test]
fn bad_input_goes_to_the_dead_letter_topic_and_the_consumer_keeps_going() {
    let d = Deployment::new(1);
    let now = Utc::now();
    let ok = |id: &str| {
        usage(
            id,
            "acme",
            hours_ago(1),
            json!({"user": "u", "feature": "erase"}),
        )
    };
    let lines = [
        "this is not json".to_string(),
        json!({"hello": "world"}).to_string(),
        json!({"specversion": "1.0", "type": "ai.usage", "id": "x1", "source": "s",
               "time": rfc3339(now), "data": {"user": "u", "feature": "erase"}})
        .to_string(),
        usage("x2", "acme", hours_ago(1), json!({"user": "u"})).to_string(),
        usage(
            "x3",
            "acme",
            hours_ago(1),
            json!({"user": "u", "feature": "teleport"}),
        )
        .to_string(),
        usage(
            "x4",
            "acme",
            hours_ago(1),
            json!({"user": "u", "feature": "erase", "quantity": -1}),
        )
        .to_string(),
        usage(
            "x5",
            "acme",
            hours_ago(1),
            json!({"user": "u", "feature": "erase", "quantity": "many"}),
        )
        .to_string(),
        usage(
            "x6",
            "acme",
            now + TimeDelta::minutes(30),
            json!({"user": "u", "feature": "erase"}),
        )
        .to_string(),
        usage(
            "x7",
            "acme",
            now - TimeDelta::days(40),
            json!({"user": "u", "feature": "erase"}),
        )
        .to_string(),
        ok("good-1").to_string(),
    ];
    d.send_lines(&lines.iter().map(|l| format!("{l}\n")).collect::<String>());
    let summary = d.drain();
    assert_eq!(
        (summary["applied"].as_u64(), summary["rejected"].as_u64()),
        (Some(1), Some(9)),
        "{summary}"
    );

    let letters = d.dead_letters(9);
    let codes: Vec<&str> = letters.iter().map(|(_, code, _)| code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "not_json",
            "not_cloudevent",
            "no_subject",
            "bad_data",
            "unknown_feature",
            "negative_quantity",
            "bad_data",
            "time_in_future",
            "too_late"
        ]
    );
    assert_eq!(
        letters[0].0, "this is not json",
        "the original payload is kept"
    );
    assert!(letters[4].2.contains("teleport"), "{}", letters[4].2);
    assert!(letters[6].2.contains("quantity"), "{}", letters[6].2);
    // The good event after all that was charged: nothing was granted, so flex paid.
    let ledger = d.ledger("acme");
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger[0]["paid"],
        json!([{"lot": "flex", "kind": "flex", "credits": 7}])
    );
}

#[test]
fn the_same_event_twice_is_charged_once_even_across_runs() {
    let d = Deployment::new(2);
    let g = grant(
        "g",
        "acme",
        hours_ago(5),
        json!({"kind": "purchased", "credits": 100}),
    );
    let u = usage(
        "dup-1",
        "acme",
        hours_ago(4),
        json!({"user": "u", "feature": "text_to_image"}),
    );
    d.send(&[g, u.clone(), u.clone()]);
    let first = d.drain();
    assert_eq!(first["duplicates"], 1, "{first}");
    // Delivered again later, after a restart: the dedup window survives in ClickHouse.
    d.send(&[u]);
    let second = d.drain();
    assert_eq!(
        (second["applied"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{second}"
    );
    assert_eq!(
        milli(&d.balance("acme")["pools"]["ai"]["available"]),
        92_000
    );
    assert_eq!(d.ledger("acme").len(), 2);
}

#[test]
fn a_grant_sent_after_a_call_on_the_other_topic_still_pays_for_it() {
    let d = Deployment::new(1);
    let t = hours_ago(2);
    // The call reaches Kafka first, but the grant happened before it.
    d.send(&[usage(
        "u",
        "late",
        t,
        json!({"user": "u", "feature": "erase"}),
    )]);
    d.send(&[grant(
        "g",
        "late",
        t - TimeDelta::seconds(1),
        json!({"kind": "purchased", "credits": 10}),
    )]);
    d.drain();
    let ledger = d.ledger("late");
    let call = ledger
        .iter()
        .find(|r| r["type"] == "usage")
        .expect("usage row");
    assert_eq!(milli(&call["shortfall"]), 0, "{call}");
    assert_eq!(
        call["paid"],
        json!([{"lot": "g", "kind": "purchased", "credits": 7}])
    );
}

#[test]
fn restarts_continue_from_the_checkpoint_and_reads_count_rows_once() {
    let d = Deployment::new(3);
    let accounts = ["a1", "a2", "a3", "a4", "a5"];
    let grants: Vec<Value> = accounts
        .iter()
        .map(|a| {
            grant(
                &format!("g-{a}"),
                a,
                hours_ago(10),
                json!({"kind": "purchased", "credits": 1000}),
            )
        })
        .collect();
    d.send(&grants);
    let batch = |from: usize| -> Vec<Value> {
        (from..from + 100)
            .map(|i| {
                let a = accounts[i % accounts.len()];
                usage(&format!("e{i}"), a, hours_ago(9), json!({"user": format!("user{}", i % 3), "feature": "image_generation", "variant": "short"}))
            })
            .collect()
    };
    d.send(&batch(0));
    d.drain();
    d.send(&batch(100));
    d.drain();
    d.drain();
    for a in accounts {
        // 40 calls of 5 credits each per account.
        assert_eq!(
            milli(&d.balance(a)["pools"]["ai"]["available"]),
            800_000,
            "{a}"
        );
        assert_eq!(d.ledger(a).len(), 41, "{a}");
    }
    let day = hours_ago(9)
        .with_timezone(&chrono_tz::Asia::Seoul)
        .date_naive()
        .to_string();
    let report = d.json(&["report", "daily", "--from", &day, "--to", &day]);
    let calls: u64 = report
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["calls"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(calls, 200, "{report}");
}

#[test]
fn grant_command_adds_a_lot() {
    let d = Deployment::new(1);
    d.tally_ok(&[
        "grant",
        "acme",
        "--credits",
        "2500",
        "--kind",
        "purchased",
        "--payment-method",
        "cash",
        "--payment-reference",
        "wire-7",
        "--lot",
        "pack-1",
    ]);
    d.drain();
    let balance = d.balance("acme");
    assert_eq!(
        milli(&balance["pools"]["ai"]["by_kind"]["purchased"]),
        2_500_000,
        "{balance}"
    );
    let ledger = d.ledger("acme");
    assert_eq!(
        (
            ledger[0]["lot"].as_str(),
            ledger[0]["payment_method"].as_str()
        ),
        (Some("pack-1"), Some("cash"))
    );
}
