//! The dedup window in its compact form: committed ids sealed into fingerprints (at every
//! snapshot here, with the harness's small batches), copies of them confirmed against the
//! exact rows in ClickHouse, and a restart that loads the sealed blobs instead of one row
//! per id. Copies are charged once, and nothing new is taken for a copy.

mod common;

use chrono::{TimeDelta, Utc};
use common::{expected, grant, hours_ago, usage, Deployment};
use serde_json::{json, Value};

const ACCOUNTS: usize = 12;

fn calls(from: usize, to: usize) -> Vec<Value> {
    let start = hours_ago(10);
    (from..to)
        .map(|i| {
            usage(
                &format!("call-{i}"),
                &format!("acct-{:02}", i % ACCOUNTS),
                start + TimeDelta::seconds(i as i64),
                json!({"user": "kim", "feature": "erase"}),
            )
        })
        .collect()
}

fn count(d: &Deployment, query: &str) -> u64 {
    d.sql(query).trim().parse().expect("a count")
}

#[test]
fn copies_of_sealed_ids_are_confirmed_and_skipped_within_a_run_and_after_a_restart() {
    let d = Deployment::new(2);
    // Small flushes and snapshots: every snapshot seals the committed ids.
    let small = [
        ("TALLY_PIPELINE__MAX_BATCH_EVENTS", "100"),
        ("TALLY_PIPELINE__SNAPSHOT_MIN_ROWS", "20"),
    ];
    let grants: Vec<Value> = (0..ACCOUNTS)
        .map(|a| {
            grant(
                &format!("pack-{a}"),
                &format!("acct-{a:02}"),
                hours_ago(11),
                json!({"kind": "purchased", "credits": 1_000, "expires_at": null}),
            )
        })
        .collect();
    let first = calls(0, 3_000);
    // Copies of the first 1,000 calls come after 2,000 others in the same run: by then
    // their ids are sealed.
    let copies_in_run = first[..1_000].to_vec();
    let mut sent: Vec<Value> = grants.clone();
    sent.extend(first.iter().cloned());
    d.send(&sent);
    d.send(&copies_in_run);
    let one = d.drain_with(&small);
    assert_eq!(
        (one["applied"].as_u64(), one["duplicates"].as_u64()),
        (Some((ACCOUNTS + 3_000) as u64), Some(1_000)),
        "{one}"
    );
    let blobs = count(
        &d,
        "SELECT count() FROM checkpoints WHERE row_kind = 'seen_blob'",
    );
    assert!(
        blobs > 0,
        "no id was sealed: {}",
        d.sql("SELECT row_kind, count(), uniqExact(version) FROM checkpoints GROUP BY row_kind")
    );

    // After a restart (from sealed blobs): copies of every call and 500 new calls.
    let second = calls(3_000, 3_500);
    d.send(&first);
    d.send(&second);
    let two = d.drain();
    assert_eq!(
        (two["applied"].as_u64(), two["duplicates"].as_u64()),
        (Some(500), Some(3_000)),
        "{two}"
    );

    let mut all = sent;
    all.extend(copies_in_run);
    all.extend(first);
    all.extend(second);
    let rules = expected::rules(&d.env());
    expected::assert_matches(
        &d,
        &expected::expect(&rules, &all, Utc::now()),
        "after sealed copies",
    );
}
