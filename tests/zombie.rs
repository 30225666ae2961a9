//! A zombie owner on the real services: a `tally run` frozen (SIGSTOP) with its flush built
//! and not committed, whose partition the group gives to another process, commits when it
//! is resumed. Nothing it wrote after the next owner's claim may count: every call is
//! debited exactly once, as the reference model says.

mod common;

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use common::{expected, grant, hours_ago, usage, Deployment, Running};
use serde_json::{json, Value};

/// The debug build's hook (src/run/clickhouse_edge.rs): SIGSTOP before the n-th checkpoint
/// INSERT.
const FREEZE_AT: &str = "DEBUG_TALLY_FREEZE_AT_COMMIT";

/// Long enough that no flush is due by time: flushes happen by batch size only.
const NEVER: &str = "1h";

/// Whether the process is stopped (SIGSTOP): its state in /proc/<pid>/stat.
fn stopped(run: &Running) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", run.id())).unwrap_or_default();
    // The state follows the command's name, which is in parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// Waits until `run` has stopped itself at its hook, with a bound.
fn wait_stopped(run: &mut Running, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stopped(run) {
        if let Some(status) = run.try_wait().expect("wait works") {
            panic!("{what}: exited ({status}): {}", run.stderr_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not frozen after 120 s: {}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn offsets_rows(d: &Deployment) -> u64 {
    d.sql("SELECT count() FROM checkpoints WHERE row_kind = 'offsets'")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// One grant, then five calls of one account, in one partition.
fn events() -> Vec<Value> {
    let start = hours_ago(2);
    let mut events = vec![grant(
        "g-1",
        "acct-z",
        start,
        json!({"kind": "purchased", "credits": 1000, "expires_at": null}),
    )];
    for i in 1..=5 {
        events.push(usage(
            &format!("call-{i}"),
            "acct-z",
            start + TimeDelta::minutes(i),
            json!({"user": "user-1", "feature": "image_generation", "variant": "mid"}),
        ));
    }
    events
}

#[test]
fn a_resumed_zombie_owner_changes_nothing() {
    let d = Deployment::new(1);
    let events = events();
    d.send(&events);

    // A applies all six events, builds its first flush and freezes before its INSERT.
    let mut a = d.spawn_run(
        &[],
        &[
            ("TALLY_PIPELINE__MAX_BATCH_EVENTS", "6"),
            ("TALLY_PIPELINE__FLUSH_INTERVAL", NEVER),
            (FREEZE_AT, "1"),
        ],
    );
    wait_stopped(&mut a, "owner A before its first commit");

    // The group drops A (session timeout) and gives the partition to B, which claims it,
    // commits the grant and the first call (two events a flush), and freezes before its
    // second commit; then it dies there, so the checkpoints end at a prefix of A's flush.
    let mut b = d.spawn_run(
        &[],
        &[
            ("TALLY_PIPELINE__MAX_BATCH_EVENTS", "2"),
            ("TALLY_PIPELINE__FLUSH_INTERVAL", NEVER),
            (FREEZE_AT, "2"),
        ],
    );
    d.wait_committed(2, &mut [&mut b], "owner B's first flush");
    wait_stopped(&mut b, "owner B before its second commit");
    assert_eq!(offsets_rows(&d), 1, "only B's first flush has committed");
    b.kill().expect("SIGKILL B");
    b.wait().expect("B reaped");

    // A is resumed: its frozen flush (all six events, under its superseded claim) lands.
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &a.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(resumed.success(), "SIGCONT to A failed");
    let deadline = Instant::now() + Duration::from_secs(120);
    while offsets_rows(&d) < 2 {
        if let Some(status) = a.try_wait().expect("wait works") {
            panic!(
                "A exited ({status}) before its flush landed: {}",
                a.stderr_so_far()
            );
        }
        assert!(
            Instant::now() < deadline,
            "A's flush never landed: {}",
            a.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill().expect("SIGKILL A");
    a.wait().expect("A reaped");

    // C starts from the checkpoints: every call debited once.
    d.drain();
    eprintln!(
        "checkpoint rows (kind, claim, version, offsets): {}",
        d.sql(
            "SELECT row_kind, claim, version, usage_offset, commands_offset FROM checkpoints \
             WHERE row_kind NOT IN ('state', 'day') ORDER BY version FORMAT CSV"
        )
    );
    let rules = expected::rules(&d.env());
    let expected = expected::expect(&rules, &events, chrono::Utc::now());
    // The ledger (A's outputs landed before its checkpoint, as a crashed owner's do) and
    // the lots, whose state a restart loads: the calls after B's commit must be paid.
    expected::assert_matches(&d, &expected, "after a zombie owner's late commit");
}
