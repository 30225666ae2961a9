//! `tally run`'s own HTTP endpoint against the real stack: known numbers of valid,
//! invalid and duplicate events and of alerts go through a running `tally run`, and its
//! `/metrics` must count exactly those, by topic, reason and outcome, with no lag left;
//! `/healthz`, `/readyz`, `/status` and `tally status` answer.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::free_port;
use common::maildev::MailDev;
use common::{grant, hours_ago, metric_value, rfc3339, usage, Deployment};
use serde_json::{json, Value};

/// How long the run may take to apply and commit everything; a bound, not a pace.
const DEADLINE: Duration = Duration::from_secs(120);

/// `curl` a path of the endpoint: (status code, body); (0, error) when nothing answers.
fn get(base: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("{base}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
        None => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Every series of `name` with its labels, e.g. `tally_consumer_lag`.
fn series<'a>(metrics: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels, v.parse().ok()?))
        })
        .collect()
}

/// Scrapes `/metrics` until `done` holds for the text, within `DEADLINE`; returns it.
fn scrape_until(base: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, text) = get(base, "/metrics");
        if code == 200 && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last scrape: {code}\n{text}"
        );
        // A bound on polling, not a synchronisation: the condition decides.
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Run(common::Running);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_metrics_count_what_was_applied_rejected_and_alerted() {
    let d = Deployment::new(2);
    let mail = MailDev::start();
    let at = hours_ago(3);
    let settings = |id: &str, account: &str, admins: Value| {
        json!({"specversion": "1.0", "type": "account.settings", "id": id, "source": "billing",
               "subject": account, "time": rfc3339(at),
               "data": {"admins": admins, "alerts": {"low_balance": 50}}})
    };
    let mut events = vec![
        // acme crosses its limit in two pools: one email, and one alert held back by the
        // per-account limit of 1. bogus crosses it with no address the mailer can use
        // (the core takes it for one; SMTP syntax does not): failed.
        settings("s-acme", "acme", json!(["ops@acme.example"])),
        settings("s-bogus", "bogus", json!(["a..b@example.com"])),
        grant(
            "g-acme-ai",
            "acme",
            at,
            json!({"kind": "purchased", "credits": 60}),
        ),
        grant(
            "g-acme-scan",
            "acme",
            at,
            json!({"kind": "purchased", "credits": 55, "pool": "scan"}),
        ),
        grant(
            "g-bogus",
            "bogus",
            at,
            json!({"kind": "purchased", "credits": 60}),
        ),
    ];
    let call = |feature: &str| json!({"user": "kim@acme.kr", "feature": feature});
    for account in ["acme", "bogus"] {
        // 60 - 8 = 52, then 45: below 50.
        events.push(usage(
            &format!("{account}-1"),
            account,
            hours_ago(2),
            call("text_to_image"),
        ));
        events.push(usage(
            &format!("{account}-2"),
            account,
            hours_ago(2),
            call("erase"),
        ));
    }
    // 55 - 10 = 45: below 50 in the scan pool.
    events.push(usage(
        "acme-3",
        "acme",
        hours_ago(1),
        json!({"user": "kim@acme.kr", "feature": "deep_scan", "quantity": 10}),
    ));
    let load_accounts = 10;
    for a in 0..load_accounts {
        events.push(grant(
            &format!("g-load-{a}"),
            &format!("load-{a}"),
            at,
            json!({"kind": "purchased", "credits": 100000}),
        ));
    }
    let mut load = Vec::new();
    for i in 0..200 {
        let when = hours_ago(2) + chrono::TimeDelta::seconds(i);
        load.push(usage(
            &format!("load-call-{i}"),
            &format!("load-{}", i % load_accounts),
            when,
            call("text_to_image"),
        ));
    }
    events.extend(load.iter().cloned());
    let (commands, usage_applied) = (5 + load_accounts as u64, 5 + load.len() as u64);
    // Delivered again: charged once.
    let duplicates: Vec<Value> = load.iter().step_by(29).cloned().collect();
    events.extend(duplicates.iter().cloned());
    // Rejected, with known reasons.
    for i in 0..3 {
        events.push(usage(
            &format!("bad-feature-{i}"),
            "load-0",
            hours_ago(1),
            call("teleport"),
        ));
    }
    for i in 0..2 {
        events.push(usage(
            &format!("bad-data-{i}"),
            "load-1",
            hours_ago(1),
            json!({"user": "kim@acme.kr", "feature": "erase", "quantiy": 2}),
        ));
    }
    let mut lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    lines.push_str("this is not an event\n");
    d.send_lines(&lines);
    let total = commands + usage_applied + duplicates.len() as u64 + 3 + 2 + 1;

    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let smtp_port = mail.smtp.to_string();
    let _run = Run(d.spawn_run(
        &[],
        &[
            ("TALLY_STATUS__LISTEN", listen.as_str()),
            ("TALLY_SMTP__HOST", "127.0.0.1"),
            ("TALLY_SMTP__PORT", smtp_port.as_str()),
            ("TALLY_NOTIFY__PER_ACCOUNT", "1"),
        ],
    ));

    // Everything applied and committed, and every alert's outcome known: poll the
    // endpoint (a bound, not a pace) and keep the last scrape for the failure message.
    let deadline = Instant::now() + DEADLINE;
    let metrics = loop {
        let (code, text) = get(&base, "/metrics");
        let alerts: f64 = series(&text, "tally_alerts_total")
            .iter()
            .map(|(_, v)| v)
            .sum();
        let lags = series(&text, "tally_consumer_lag");
        if code == 200
            && metric_value(&text, "tally_flush_batch_events_sum") == Some(total as f64)
            && lags.len() == 4
            && lags.iter().all(|(_, v)| *v == 0.0)
            && alerts == 3.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "tally run never reported everything applied ({total} records, 3 alerts): {code}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let m = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("no `{series}` in:\n{metrics}"))
    };
    assert_eq!(
        m(&format!(
            "tally_events_applied_total{{topic=\"{}\"}}",
            d.usage_topic
        )),
        usage_applied as f64
    );
    assert_eq!(
        m(&format!(
            "tally_events_applied_total{{topic=\"{}\"}}",
            d.commands_topic
        )),
        commands as f64
    );
    assert_eq!(m("tally_events_duplicate_total"), duplicates.len() as f64);
    let mut rejected = series(&metrics, "tally_events_rejected_total");
    rejected.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        rejected,
        [
            (r#"tally_events_rejected_total{reason="bad_data"}"#, 2.0),
            (r#"tally_events_rejected_total{reason="not_json"}"#, 1.0),
            (
                r#"tally_events_rejected_total{reason="unknown_feature"}"#,
                3.0
            ),
        ],
        "{metrics}"
    );
    // Every record applied, whatever its outcome, has its delay observed once.
    assert_eq!(m("tally_apply_delay_seconds_count"), total as f64);
    // The records were produced at most minutes ago (their event times are older, but
    // the delay runs from the broker's timestamp).
    assert_eq!(
        m(r#"tally_apply_delay_seconds_bucket{le="+Inf"}"#),
        m(r#"tally_apply_delay_seconds_bucket{le="900"}"#)
    );
    // Each committed flush observed its checkpoint and its total once, and its size.
    let flushes = m(r#"tally_flush_duration_seconds_count{phase="total"}"#);
    assert!(flushes >= 1.0, "{metrics}");
    assert_eq!(
        m(r#"tally_flush_duration_seconds_count{phase="checkpoint"}"#),
        flushes
    );
    assert_eq!(
        m(r#"tally_flush_duration_seconds_count{phase="write_outputs"}"#),
        flushes
    );
    assert_eq!(m("tally_flush_batch_events_count"), flushes);
    assert_eq!(m("tally_clickhouse_errors_total"), 0.0);
    assert_eq!(m(r#"tally_alerts_total{outcome="sent"}"#), 1.0);
    assert_eq!(m(r#"tally_alerts_total{outcome="suppressed"}"#), 1.0);
    assert_eq!(m(r#"tally_alerts_total{outcome="failed"}"#), 1.0);
    for topic in [&d.usage_topic, &d.commands_topic] {
        for partition in 0..2 {
            assert_eq!(
                m(&format!(
                    "tally_consumer_lag{{partition=\"{partition}\",topic=\"{topic}\"}}"
                )),
                0.0
            );
        }
    }
    let mails = mail.wait_for(1);
    assert_eq!(mails.len(), 1, "{mails:?}");

    // The probes and the JSON status.
    assert_eq!(get(&base, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&base, "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(&base, "/nowhere").0, 404);
    // The run loop copies its status after each flush: poll until it has copied the
    // last one (a bound, not a pace).
    let deadline = Instant::now() + DEADLINE;
    let (body, status) = loop {
        let (code, body) = get(&base, "/status");
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).expect("/status is JSON");
        if status["flushes"].as_f64() == Some(flushes) || Instant::now() > deadline {
            break (body, status);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["state"], "running");
    assert_eq!(status["applied"], commands + usage_applied);
    assert_eq!(status["duplicates"], duplicates.len() as u64);
    assert_eq!(status["rejected"], 6);
    assert_eq!(status["flushes"].as_f64(), Some(flushes), "{body}");
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(2));
    // `tally status` reads the same endpoint, and the checkpoints agree: no lag.
    let report = d
        .command()
        .args(["--json", "status"])
        .env("TALLY_STATUS__LISTEN", &listen)
        .output()
        .expect("tally status runs");
    let report: Value = serde_json::from_slice(&report.stdout).expect("tally status prints JSON");
    assert_eq!(report["process"]["state"], "running", "{report}");
    assert_eq!(
        report["process"]["applied"],
        commands + usage_applied,
        "{report}"
    );
    let partitions = report["partitions"].as_array().cloned().unwrap_or_default();
    assert_eq!(partitions.len(), 4, "{report}");
    assert!(partitions.iter().all(|p| p["lag"] == 0), "{report}");

    // The endpoint counts its own requests by route and status.
    let (_, after) = get(&base, "/metrics");
    assert!(
        metric_value(
            &after,
            r#"tally_http_requests_total{method="GET",route="/readyz",status="200"}"#
        ) == Some(1.0),
        "{after}"
    );
    assert!(
        metric_value(
            &after,
            r#"tally_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ) == Some(1.0),
        "{after}"
    );
}

/// Lag is what waits to be applied, not what was received: usage events held back by the
/// merge (the commands side sits at its end and `max_idle` is an hour) are all lag; a
/// tick on the commands side lets them through, and is then the lag itself.
#[test]
fn consumer_lag_counts_records_received_but_not_applied() {
    let d = Deployment::new(2);
    let calls = 37;
    let events: Vec<Value> = (0..calls)
        .map(|i| {
            usage(
                &format!("held-{i}"),
                &format!("acct-{}", i % 5),
                hours_ago(2),
                json!({"user": "kim@acme.kr", "feature": "upscale"}),
            )
        })
        .collect();
    d.send(&events);
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let _run = Run(d.spawn_run(
        &[],
        &[
            ("TALLY_STATUS__LISTEN", listen.as_str()),
            ("TALLY_KAFKA__MAX_IDLE", "1h"),
        ],
    ));
    let lag = |text: &str, topic: &str| -> (usize, f64) {
        let all = series(text, "tally_consumer_lag");
        let mine: Vec<f64> = all
            .iter()
            .filter(|(labels, _)| labels.contains(&format!("topic=\"{topic}\"")))
            .map(|(_, v)| *v)
            .collect();
        (mine.len(), mine.iter().sum())
    };
    let held = scrape_until(&base, "every call is lag", |text| {
        lag(text, &d.usage_topic) == (2, calls as f64)
    });
    assert_eq!(lag(&held, &d.commands_topic), (2, 0.0), "{held}");
    let applied = format!("tally_events_applied_total{{topic=\"{}\"}}", d.usage_topic);
    assert_eq!(metric_value(&held, &applied), Some(0.0), "{held}");
    // Waiting is no reason to be unready: the process works, it is the merge that waits.
    assert_eq!(get(&base, "/readyz"), (200, "ready\n".into()));
    let (_, status) = get(&base, "/status");
    let status: Value = serde_json::from_str(&status).expect("/status is JSON");
    let waiting: Vec<&Value> = status["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["waiting"] == "usage").collect())
        .unwrap_or_default();
    assert!(!waiting.is_empty(), "{status}");

    // A tick per partition on the commands side: the calls are older, so they go first,
    // and the ticks are the lag now, waiting (up to max_idle) for newer usage.
    d.tally_ok(&["tick"]);
    let caught_up = scrape_until(&base, "the tick let every call through", |text| {
        lag(text, &d.usage_topic) == (2, 0.0)
            && lag(text, &d.commands_topic) == (2, 2.0)
            && metric_value(text, &applied) == Some(calls as f64)
            // ... and committed: the ticks are in no flush yet.
            && metric_value(text, "tally_flush_batch_events_sum") == Some(calls as f64)
    });
    assert_eq!(
        metric_value(&caught_up, "tally_apply_delay_seconds_count"),
        Some(calls as f64),
        "{caught_up}"
    );
}
