//! Exactly once on the real services: crashes, rebalances and duplicate deliveries leave
//! the same lots, ledger and daily rollups as one clean run over the same events.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{expected, workload, Deployment, Running, Snapshot};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// One clean `--drain` run over `events` in a deployment of its own, checked against the
/// reference model of the rules, so a bug that every run shares cannot pass as "the same
/// as the clean run".
fn clean_run(partitions: i32, events: &[Value]) -> Snapshot {
    let d = Deployment::new(partitions);
    d.send(events);
    d.drain();
    let expected = expected::expect(&expected::rules(&d.env()), events, Utc::now());
    expected::assert_matches(&d, &expected, "the clean run");
    d.snapshot()
}

fn kill(mut child: Running) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Stops a `tally run` with SIGTERM and requires the clean exit: drained, flushed,
/// committed.
fn terminate(child: Running) {
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().expect("tally run exits");
    assert!(
        out.status.success(),
        "tally run did not exit 0 on SIGTERM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigkill_at_random_moments_then_restart_equals_one_clean_run() {
    let events = workload(300, 100_000, 11);
    let clean = clean_run(4, &events);

    let d = Deployment::new(4);
    d.send(&events);
    let seed: u64 = std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash schedule seed {seed} (replay with TALLY_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Kills placed by progress: at five shares of the work, in order, each a little past
    // the checkpoint that reached it, so they fall mid-flush as well as between flushes.
    let total = events.len() as u64;
    let mut shares: Vec<u64> = (0..5).map(|_| rng.gen_range(5..=85)).collect();
    shares.sort_unstable();
    let started = Instant::now();
    let mut at_kills = Vec::new();
    for share in &shares {
        let jitter = Duration::from_millis(rng.gen_range(0..150));
        let covered = d.run_and_kill_at(total * share / 100, jitter);
        at_kills.push(covered);
    }
    let before_last = d.committed();
    let summary = d.drain();
    eprintln!(
        "crash test: {} events, SIGKILLs at {shares:?}% of the work (checkpoints then covered \
         {at_kills:?}), last run applied {}, {:?}",
        events.len(),
        summary["applied"],
        started.elapsed()
    );
    assert!(
        before_last < total,
        "the kills fell after the end: the checkpoints covered {before_last} of {total}"
    );
    let last = summary["applied"].as_u64().unwrap_or(0);
    assert!(last > 0, "the last run applied nothing");
    d.snapshot().assert_same(&clean, "after 5 SIGKILLs");
}

#[test]
fn three_processes_with_one_killed_and_its_partitions_moved_equal_one_clean_run() {
    let events = workload(120, 60_000, 12);
    let clean = clean_run(6, &events);

    let d = Deployment::new(6);
    d.send(&events);
    let started = Instant::now();
    // Three processes split the six partitions; the split is static because the local
    // broker's group coordinator stalls after a member dies (docs/guarantees.md). What is
    // under test is tally's part: a partition moving to another process mid-stream.
    let member = |owned: &str| d.spawn_run(&[], &[("TALLY_KAFKA__ASSIGNMENT", owned)]);
    let mut group: Vec<Running> = ["0,1", "2,3", "4,5"]
        .iter()
        .map(|owned| member(owned))
        .collect();
    let committed = |partitions: &str| -> u64 {
        d.sql(&format!(
            "SELECT sum(u) + sum(c) FROM (SELECT partition, \
             argMax(usage_offset, version) AS u, argMax(commands_offset, version) AS c \
             FROM checkpoints WHERE row_kind = 'offsets' AND partition IN ({partitions}) \
             GROUP BY partition)"
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    };
    // Mid-stream: as soon as the first process has committed something, it dies without
    // warning, and a new process takes over its partitions from their last checkpoint.
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed("0, 1") == 0 {
        assert!(
            Instant::now() < deadline,
            "the first process never committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(group.remove(0));
    let at_kill = committed("0, 1, 2, 3, 4, 5");
    assert!(
        at_kill < events.len() as u64,
        "killed after the end: {at_kill}"
    );
    group.push(member("0,1"));
    // A bound on waiting for the group to catch up: committed offsets cover every event.
    loop {
        let committed = committed("0, 1, 2, 3, 4, 5");
        if committed == events.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group stopped at {committed} of {}",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in group {
        terminate(child);
    }
    eprintln!(
        "rebalance test: {} events, 3 processes on 6 partitions, 1 killed at {at_kill} committed, its 2 partitions moved to a new process, {:?}",
        events.len(),
        started.elapsed()
    );
    d.snapshot().assert_same(&clean, "after a rebalance");
}

#[test]
fn every_event_delivered_two_or_three_times_is_charged_once() {
    let events = workload(80, 20_000, 13);
    let clean = clean_run(3, &events);

    // Each copy goes somewhere after its original, as a producer's retry would: later
    // offsets, never ahead of the first delivery.
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut placed: Vec<(usize, usize, &Value)> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        placed.push((i, placed.len(), event));
        for _ in 0..rng.gen_range(1..=2) {
            placed.push((i + rng.gen_range(1..=3_000), placed.len(), event));
        }
    }
    placed.sort_by_key(|&(position, seq, _)| (position, seq));
    let redelivered: Vec<Value> = placed.into_iter().map(|(_, _, e)| e.clone()).collect();
    let d = Deployment::new(3);
    d.send(&redelivered);
    let summary = d.drain();
    assert_eq!(
        summary["duplicates"].as_u64(),
        Some((redelivered.len() - events.len()) as u64),
        "{summary}"
    );
    d.snapshot()
        .assert_same(&clean, "with every event delivered 2-3 times");
}

#[test]
fn three_group_members_with_one_killed_and_restarted_equal_one_clean_run() {
    let events = workload(120, 60_000, 14);
    let clean = clean_run(6, &events);

    let d = Deployment::new(6);
    d.send(&events);
    let started = Instant::now();
    // One consumer group, range assignment, static members: a killed member that comes
    // back under its name takes its partitions back (docs/guarantees.md explains why the
    // local broker needs the static names).
    let member = |id: &str| {
        d.spawn_run(
            &[],
            &[
                ("TALLY_KAFKA__ASSIGNMENT", "group"),
                ("TALLY_KAFKA__INSTANCE_ID", id),
            ],
        )
    };
    let mut group: Vec<Running> = ["a", "b", "c"].iter().map(|id| member(id)).collect();
    let committed = || d.committed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed() == 0 {
        assert!(Instant::now() < deadline, "the group never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(group.remove(0));
    let at_kill = committed();
    assert!(
        at_kill < events.len() as u64,
        "killed after the end: {at_kill}"
    );
    group.push(member("a"));
    while committed() < events.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the group stopped at {} of {}",
            committed(),
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in group {
        terminate(child);
    }
    eprintln!(
        "group test: {} events, 3 members of one group on 6 partitions, 1 killed at {at_kill} committed and restarted, {:?}",
        events.len(),
        started.elapsed()
    );
    d.snapshot().assert_same(&clean, "after a group rebalance");
}
