//! ClickHouse stopped mid-stream and started again: tally pauses, says why, resumes, and
//! ends where one clean run ends. Alone in its test binary because it stops the shared
//! ClickHouse server (cargo runs test binaries one after another).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::free_port;
use common::{workload, Deployment};
use serde_json::Value;

fn stack(script: &str, args: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash")
        .arg(format!("{root}/scripts/{script}"))
        .args(args)
        .status()
        .expect("stack script runs");
    assert!(status.success(), "{script} {args:?} failed");
}

/// ClickHouse stopped until dropped: a failing test still brings it back for the others.
struct Outage;

impl Outage {
    fn start() -> Outage {
        stack("stack-down.sh", &["clickhouse"]);
        Outage
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        stack("stack-up.sh", &[]);
    }
}

/// Polls `check` until it holds: a bound on waiting for another process to change state.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clickhouse_outage_pauses_then_resumes_and_loses_nothing() {
    // Only the opening grants: half the events arrive during the outage, and a grant that
    // arrives with them could meet its calls in another order than in the clean run
    // (arrival order is real input). The outage must change nothing else.
    let mut events = workload(100, 40_000, 21);
    events.retain(|e| !e["id"].as_str().unwrap_or_default().starts_with("topup-"));
    let clean = {
        let d = Deployment::new(2);
        d.send(&events);
        d.drain();
        d.snapshot()
    };

    let d = Deployment::new(2);
    let (before, during) = events.split_at(events.len() / 2);
    d.send(before);
    let listen = format!("127.0.0.1:{}", free_port());
    let status = || -> Value {
        let out = d
            .command()
            .args(["--json", "status"])
            .env("TALLY_STATUS__LISTEN", &listen)
            .output()
            .expect("tally status runs");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let started = Instant::now();
    let run = d.spawn_run(&[], &[("TALLY_STATUS__LISTEN", &listen)]);
    eventually("some events are checkpointed", || {
        status()["process"]["flushes"].as_u64().unwrap_or(0) > 0
    });

    let outage = Outage::start();
    // Events keep coming while ClickHouse is away; the next flush fails.
    d.send(during);
    eventually(
        "tally status says paused, with ClickHouse as the reason",
        || {
            let s = status();
            s["process"]["state"] == "paused"
                && s["process"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("ClickHouse"))
        },
    );
    let paused = status();
    assert!(
        paused["clickhouse"].as_str() != Some("ok"),
        "status reads checkpoints while ClickHouse is down: {paused}"
    );

    drop(outage);
    eventually("tally status says running again", || {
        status()["process"]["state"] == "running"
    });

    let pid = run.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let out = run.wait_with_output().expect("tally run exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.drain();
    eprintln!(
        "outage test: {} events, ClickHouse stopped and restarted once, {:?}",
        events.len(),
        started.elapsed()
    );
    d.snapshot()
        .assert_same(&clean, "after a ClickHouse outage");
}
