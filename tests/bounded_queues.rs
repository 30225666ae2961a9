//! Bounded queues on the real broker: a backlog whose commands side lags (a large block of
//! account settings ahead of the grants, several of tansu's 5 MB fetches, so calls arrive
//! while earlier commands are still on the broker) read by `tally run` with a bound of a
//! few dozen records per partition side. The usage side must pause instead of growing, the
//! backlog must still drain exactly (ledger and lots as the reference model says), and the
//! metrics must show that sides paused and that no side's queue ever passed its bound.

mod common;

use std::process::Command;
use std::time::Instant;

use common::expected::{assert_matches, expect, rules};
use common::{free_port, hours_ago, metric_value, rfc3339, test_seed, workload, Deployment};
use serde_json::{json, Value};

/// The bound of the test: a fifth of what one batch of polls takes (5,000), a twentieth of
/// the default (20,000). Each resume costs a rewind on tansu (it answers a fetch from the
/// middle of a record batch with the next batch), so a smaller bound makes the test slow,
/// not stronger.
const BOUND: u64 = 1_000;
/// Settings ahead of the grants: about 7 MB on the commands topic, more than one of tansu's
/// 5 MB fetches (a byte budget shared by every partition of a fetch).
const SETTINGS: usize = 30_000;
const ACCOUNTS: usize = 30;
const CALLS: usize = 4_000;

fn scrape(base: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("{base}/metrics")])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "no metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_side_pauses_while_the_other_lags_and_the_backlog_drains_exactly() {
    let d = Deployment::new(2);
    // Settings change no credits, so the model is given the grants and calls only.
    let at = rfc3339(hours_ago(22));
    let settings: Vec<Value> = (0..SETTINGS)
        .map(|i| {
            json!({"specversion": "1.0", "type": "account.settings", "id": format!("s-{i}"),
                   "source": "billing", "subject": format!("acct-{:04}", i % ACCOUNTS),
                   "time": at, "data": {"locale": if i % 2 == 0 { "en" } else { "ko" }}})
        })
        .collect();
    let events = workload(ACCOUNTS, CALLS, test_seed("bounded queues workload"));
    d.send(&settings);
    d.send(&events);
    let total = (SETTINGS + events.len()) as u64;

    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let bound = BOUND.to_string();
    let started = Instant::now();
    let mut run = d.spawn_run(
        &[],
        &[
            ("TALLY_STATUS__LISTEN", listen.as_str()),
            ("TALLY_PIPELINE__MAX_QUEUED_RECORDS", bound.as_str()),
            // The order comes from the broker's ends alone, as in the backlog test.
            ("TALLY_KAFKA__MAX_IDLE", "0s"),
        ],
    );
    d.wait_committed(
        total,
        &mut [&mut run],
        "the backlog drained with tiny queues",
    );
    let drained = started.elapsed();
    let metrics = scrape(&base);
    let log = run.terminate("after the drain");
    let rewinds = String::from_utf8_lossy(&log.stderr)
        .matches("reading the partition again")
        .count();

    let count = |series: &str| metric_value(&metrics, series).unwrap_or(-1.0);
    let usage_full = count(r#"tally_fetch_pauses_total{reason="full",side="usage"}"#);
    let commands_full = count(r#"tally_fetch_pauses_total{reason="full",side="commands"}"#);
    let peak = count("tally_queue_peak_records");
    eprintln!(
        "{total} records drained in {drained:?} with a bound of {BOUND}: pauses usage \
         {usage_full}, commands {commands_full}; the largest queue {peak}; {rewinds} rewinds"
    );
    assert!(
        usage_full >= 1.0,
        "the usage side never paused while commands lagged:\n{metrics}"
    );
    assert!(
        (1.0..=BOUND as f64).contains(&peak),
        "a side held {peak} records; the bound is {BOUND}"
    );
    assert_eq!(count("tally_queued_records"), 0.0, "all applied");

    let expected = expect(&rules(&d.env()), &events, chrono::Utc::now());
    assert_matches(&d, &expected, "a backlog read through bounded queues");
    // Nothing was lost or read twice: every record applied once, nothing rejected.
    let applied: u64 = d
        .sql("SELECT count() FROM ledger FINAL WHERE entry_type = 'usage'")
        .trim()
        .parse()
        .expect("a count");
    let calls = events.iter().filter(|e| e["type"] == "ai.usage").count() as u64;
    assert_eq!(applied, calls, "one usage row per call");
}
