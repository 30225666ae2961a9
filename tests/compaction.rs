//! Cost that does not grow with history: the checkpoint log is compacted by snapshots, the
//! daily rollups are written from running totals, and a restart from a compacted
//! checkpoint continues exactly where the rules say.

mod common;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::{expected, grant, hours_ago, usage, Deployment};
use serde_json::{json, Value};

const ACCOUNTS: usize = 20;

/// Grants, then calls of one user and feature per account over a few hours: few open days,
/// so the live state is small and many small flushes supersede it many times over.
fn events(from: usize, to: usize) -> Vec<Value> {
    let start = hours_ago(12);
    let mut out = Vec::new();
    if from == 0 {
        for a in 0..ACCOUNTS {
            out.push(grant(
                &format!("pack-{a}"),
                &format!("acct-{a:02}"),
                start - TimeDelta::hours(1),
                json!({"kind": "purchased", "credits": 400 + 150 * a, "expires_at": null}),
            ));
        }
    }
    for i in from..to {
        let at = start + TimeDelta::seconds(i as i64);
        out.push(usage(
            &format!("c{i}"),
            &format!("acct-{:02}", i % ACCOUNTS),
            at,
            json!({"user": "kim", "feature": "erase"}),
        ));
    }
    out
}

#[test]
fn snapshots_delete_the_superseded_log_and_a_restart_from_one_loses_nothing() {
    let d = Deployment::new(2);
    let small = [
        ("TALLY_PIPELINE__MAX_BATCH_EVENTS", "100"),
        ("TALLY_PIPELINE__SNAPSHOT_MIN_ROWS", "200"),
    ];
    let first = events(0, 8_000);
    d.send(&first);
    let summary = d.drain_with(&small);
    let flushes = summary["flushes"].as_u64().unwrap_or(0);
    assert!(
        flushes >= 60,
        "too few flushes to supersede anything: {summary}"
    );

    // Deletions run as mutations in the background; wait for them (a bound, not a sync).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mutations = |done: u8| -> u64 {
        d.sql(&format!(
            "SELECT count() FROM system.mutations WHERE database = '{}' \
             AND table = 'checkpoints' AND is_done = {done}",
            d.database
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    };
    while mutations(0) > 0 {
        assert!(Instant::now() < deadline, "the deletions never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mutations(1) > 0, "no snapshot deleted anything");
    let versions: u64 = d
        .sql("SELECT uniqExact(version) FROM checkpoints WHERE row_kind = 'state'")
        .trim()
        .parse()
        .expect("a count");
    eprintln!(
        "compaction: {flushes} flushes, {versions} flush versions of account states left, {} \
         checkpoint rows",
        d.sql("SELECT count() FROM checkpoints").trim()
    );
    assert!(
        versions * 3 < flushes,
        "{versions} of {flushes} flushes still have account states in the checkpoint"
    );

    // A new run starts from the compacted checkpoint and goes on.
    let second = events(8_000, 12_000);
    d.send(&second);
    d.drain();
    let all: Vec<Value> = first.into_iter().chain(second).collect();
    let rules = expected::rules(&d.env());
    expected::assert_matches(
        &d,
        &expected::expect(&rules, &all, Utc::now()),
        "after compaction",
    );
    // Only the segment being read stays open: what a restart loads is the day totals of
    // each partition's current segment of 1,000 calls (the harness's size), at most 20
    // accounts on 2 days each, where the 12 segments of the run hold up to 240.
    // ALL, and an alias on the joined subquery, so it runs and counts alike on 18.16 and on
    // current engines (which refuse a join without the alias and whose ANY INNER JOIN keeps
    // one row per key on both sides: one open day per partition). The right side has one
    // row per partition, so ALL adds no duplicates.
    let open: u64 = d
        .sql(
            "SELECT count() FROM (SELECT DISTINCT partition, key_hi, key_lo FROM checkpoints \
             ALL INNER JOIN (SELECT partition, argMax(usage_offset, version) AS u \
             FROM checkpoints WHERE row_kind = 'offsets' GROUP BY partition) AS latest \
             USING partition \
             WHERE row_kind = 'day' AND key_hi >= (intDiv(u, 1000) + 1) * 65536)",
        )
        .trim()
        .parse()
        .expect("a count");
    eprintln!("open day totals a restart loads: {open}");
    assert!(open <= 2 * 20 * 2, "{open} open day totals");

    // The segment size is part of the rows' identity: another one is refused.
    let out = d
        .command()
        .args(["run", "--drain"])
        .env("TALLY_PIPELINE__ROLLUP_SEGMENT_RECORDS", "2000")
        .output()
        .expect("tally runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("pipeline.rollup_segment_records is 2000")
            && stderr.contains("written with 1000"),
        "a changed segment size was not refused: {stderr}"
    );
}
