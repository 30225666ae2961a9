//! Signed webhooks end to end: events through Kafka make `tally run` decide alerts and
//! lifecycle notices, record them in ClickHouse and POST them to a receiver that verifies
//! every signature with the `standardwebhooks` package (PyPI), not tally's code. The
//! receiver fails at first, `tally run` is SIGKILLed while the deliveries wait for a retry,
//! the receiver recovers, a new run sends them, is SIGKILLed again, and a third run sends
//! what the clock decides later: every webhook arrives exactly once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use common::{free_port, grant, hours_ago, rfc3339, usage, Deployment, Running, WAIT_LIMIT};
use serde_json::{json, Value};

/// The global endpoint's secret: the example secret of the specification.
const GLOBAL_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SIGNING_KEY: &str = "a-test-signing-key-of-at-least-32-characters";

/// `scripts/webhook-receiver.py`, stopped however the test ends.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(secrets: &Value) -> Receiver {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/webhook-receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(secrets.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts the receiver");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver says it is ready");
        assert_eq!(line.trim(), "ready", "the receiver did not start");
        Receiver { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn mode(&self, mode: &str) {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--data-binary", mode, &self.url("/_mode")])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "{out:?}");
    }

    fn log(&self) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", &self.url("/_log")])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("the log is JSON")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(d: &Deployment, filter: &str) -> u64 {
    d.sql(&format!(
        "SELECT count() FROM webhooks FINAL WHERE {filter}"
    ))
    .trim()
    .parse()
    .expect("a count")
}

/// Waits, with a bound, until `filter` matches `want` rows of the webhooks table; fails
/// with the run's log if it exits on the way.
fn wait_rows(d: &Deployment, run: &mut Running, filter: &str, want: u64, what: &str) {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let n = count(d, filter);
        if n >= want {
            assert_eq!(n, want, "{what}: more rows than expected");
            return;
        }
        if let Some(status) = run.try_wait().expect("wait works") {
            panic!(
                "{what}: tally run exited ({status}): {}",
                run.stderr_so_far()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} of {want} rows after {WAIT_LIMIT:?}; {}",
            d.sql("SELECT endpoint, event_type, status, attempts, error FROM webhooks FINAL")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A start time for the scenario whose events (10 minutes of them) all fall in one
/// calendar month in Seoul, so every alert belongs to one cycle.
fn start() -> DateTime<Utc> {
    let seoul = chrono_tz::Asia::Seoul;
    let mut t0 = hours_ago(4);
    while (t0 + TimeDelta::minutes(10)).with_timezone(&seoul).month()
        != t0.with_timezone(&seoul).month()
    {
        t0 -= TimeDelta::minutes(20);
    }
    t0
}

fn command(id: &str, ty: &str, account: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"specversion": "1.0", "type": ty, "id": id, "source": "billing",
           "subject": account, "time": rfc3339(at), "data": data})
}

#[test]
fn every_webhook_arrives_signed_and_once_across_failures_and_kills() {
    // The account endpoint's secret, as its owner gets it: `tally webhook-secret`, which
    // needs only the signing key.
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["webhook-secret", "acme", "main"])
        .env("TALLY_WEBHOOKS__SIGNING_KEY", SIGNING_KEY)
        .output()
        .expect("tally runs");
    assert!(out.status.success(), "{out:?}");
    let acme_secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(acme_secret.starts_with("whsec_"), "{acme_secret}");
    let receiver = Receiver::start(&json!({"/acme": acme_secret, "/global": GLOBAL_SECRET}));
    let env: Vec<(String, String)> = [
        ("TALLY_WEBHOOKS__SIGNING_KEY", SIGNING_KEY.to_string()),
        (
            "TALLY_WEBHOOKS__SECRETS",
            format!("billing={GLOBAL_SECRET}"),
        ),
        (
            "TALLY_WEBHOOKS__ENDPOINTS__BILLING__URL",
            receiver.url("/global"),
        ),
        (
            "TALLY_WEBHOOKS__ENDPOINTS__BILLING__EVENTS",
            "credit.low_balance,credit.included_used,credit.shortfall,credit.expiring,\
             credit.reset,credit.lot_expired,credit.hold_expired,credit.shortfall_recorded,\
             credit.top_up_requested"
                .to_string(),
        ),
        // The receiver is on loopback: allowed here, refused by default.
        ("TALLY_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true".into()),
        ("TALLY_WEBHOOKS__INITIAL_BACKOFF", "100ms".into()),
        ("TALLY_WEBHOOKS__MAX_BACKOFF", "300ms".into()),
        ("TALLY_WEBHOOKS__MAX_ATTEMPTS", "100000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let d = Deployment::with_env(2, env, "http://127.0.0.1:8123".into());

    let t0 = start();
    let at = |minutes: i64| t0 + TimeDelta::minutes(minutes);
    d.send(&[
        grant(
            "g1",
            "acme",
            at(0),
            json!({"kind": "purchased", "credits": 60, "expires_at": null}),
        ),
        command(
            "s1",
            "account.settings",
            "acme",
            at(1),
            json!({"webhooks": [{"id": "main", "url": receiver.url("/acme")}],
                   "top_up": {"below": 50, "credits": 500},
                   "flex": {"enabled": false},
                   "alerts": {"enabled": true, "low_balance": 50, "included_used_percent": 0,
                              "expiring_min": 0, "shortfall": true}}),
        ),
        // Scan credits that expired two hours ago: written off at the next event.
        grant(
            "g2",
            "acme",
            at(2),
            json!({"kind": "promotional", "pool": "scan", "credits": 30,
                   "expires_at": rfc3339(hours_ago(2))}),
        ),
        usage(
            "u1",
            "acme",
            at(3),
            json!({"user": "kim", "feature": "text_to_image"}),
        ),
        usage(
            "u2",
            "acme",
            at(4),
            json!({"user": "kim", "feature": "erase"}),
        ),
        grant(
            "g3",
            "acme",
            at(5),
            json!({"kind": "purchased", "credits": 100, "expires_at": null}),
        ),
        command(
            "h1",
            "credit.hold",
            "acme",
            at(6),
            json!({"hold": "h-1", "feature": "erase", "ttl": 1}),
        ),
        usage(
            "u3",
            "acme",
            at(7),
            json!({"user": "lee", "feature": "video_generation", "variant": "long"}),
        ),
        usage(
            "u4",
            "acme",
            at(8),
            json!({"user": "lee", "feature": "video_generation", "variant": "long"}),
        ),
        command("p1", "account.plan", "beta", at(0), json!({"plan": "pro"})),
    ]);

    // By hand: 60 - 8 = 52, - 7 = 45 < 50: the low-balance alert and top-up 1; + 100 = 145,
    // back above (re-armed); the hold reserves 7 (138 free); - 100 = 38: top-up 2 (the
    // alert fired this cycle already); the next 100 finds 38: 62 unpaid, the shortfall
    // alert and a shortfall recorded. The scan lot's 30 expire. beta's plan brings its
    // allowance (a reset, which only the global endpoint asked for).
    let mut acme: Vec<(String, Value)> = vec![
        (
            "credit.lot_expired".into(),
            json!({"pool": "scan", "credits": 30, "lot": "g2"}),
        ),
        (
            "credit.low_balance".into(),
            json!({"pool": "ai", "threshold": 50, "balance": 45}),
        ),
        (
            "credit.top_up_requested".into(),
            json!({"pool": "ai", "credits": 500, "balance": 45, "below": "50"}),
        ),
        (
            "credit.top_up_requested".into(),
            json!({"pool": "ai", "credits": 500, "balance": 38, "below": "50"}),
        ),
        (
            "credit.shortfall".into(),
            json!({"pool": "ai", "balance": 0}),
        ),
        (
            "credit.shortfall_recorded".into(),
            json!({"pool": "ai", "credits": 62, "event": "u4", "balance": 0}),
        ),
    ];
    let reset = (
        "credit.reset".to_string(),
        json!({"account": "beta", "pool": "ai", "credits": 100, "balance": 100}),
    );
    let first = (acme.len() * 2 + 1) as u64;

    // 1. The receiver answers 503: every delivery is recorded and tried, then the run is
    //    killed while all of them wait for a retry.
    let mut run = d.spawn_run(&[], &[]);
    wait_rows(&d, &mut run, "attempts >= 1", first, "first attempts");
    assert_eq!(count(&d, "status = 'sent'"), 0);
    run.kill().expect("SIGKILL");
    run.wait().expect("reaped");
    let failed_tries = receiver.log();
    assert!(failed_tries.len() as u64 >= first, "{failed_tries:?}");
    assert!(failed_tries.iter().all(|e| e["answer"] == 503));

    // 2. The receiver recovers; a new run resends what the killed one left pending, and
    //    is killed once everything is sent.
    receiver.mode("ok");
    let mut run = d.spawn_run(&[], &[]);
    wait_rows(
        &d,
        &mut run,
        "status = 'sent'",
        first,
        "resent after the kill",
    );
    run.kill().expect("SIGKILL");
    run.wait().expect("reaped");

    // 3. Time passes (a tick three minutes ahead): the hold expires; a third run sends
    //    that and nothing it sent before.
    let tick = Utc::now() + TimeDelta::minutes(3);
    d.tally_ok(&["tick", "--at", &rfc3339(tick)]);
    let mut run = d.spawn_run(&[], &[]);
    acme.push((
        "credit.hold_expired".into(),
        json!({"pool": "ai", "credits": 7, "hold": "h-1", "balance": 7}),
    ));
    let all = (acme.len() * 2 + 1) as u64;
    wait_rows(&d, &mut run, "status = 'sent'", all, "the hold's expiry");
    run.terminate("the last run");
    assert_eq!(count(&d, "status != 'sent'"), 0);

    // Every delivery verified, and each (endpoint, webhook-id) taken exactly once.
    let log = receiver.log();
    let bad: Vec<&Value> = log.iter().filter(|e| e["verified"] != true).collect();
    assert!(bad.is_empty(), "signatures that do not verify: {bad:?}");
    let taken: Vec<&Value> = log.iter().filter(|e| e["answer"] == 200).collect();
    let dups: Vec<&&Value> = taken.iter().filter(|e| e["duplicate"] == true).collect();
    assert!(dups.is_empty(), "sent twice: {dups:?}");
    let got = |path: &str| -> Vec<(String, Value)> {
        let mut v: Vec<(String, Value)> = taken
            .iter()
            .filter(|e| e["path"] == path)
            .map(|e| {
                let body: Value = serde_json::from_str(e["body"].as_str().unwrap_or_default())
                    .expect("a JSON body");
                (body["type"].as_str().unwrap_or_default().to_string(), body)
            })
            .collect();
        v.sort_by(|a, b| {
            a.0.cmp(&b.0).then(
                a.1["data"]["time"]
                    .to_string()
                    .cmp(&b.1["data"]["time"].to_string()),
            )
        });
        v
    };
    let matches = |got: &[(String, Value)], want: &[(String, Value)], account: &str| {
        let mut want: Vec<&(String, Value)> = want.iter().collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        let wanted: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, wanted, "{account}: {got:?}");
        // Each expected notice's figures are in one delivery of its type.
        for (ty, fields) in &want {
            let found = got.iter().any(|(t, body)| {
                t == ty
                    && fields.as_object().is_some_and(|f| {
                        f.iter().all(|(k, v)| {
                            let have = &body["data"][k];
                            have == v || have.as_f64().is_some() && have.as_f64() == v.as_f64()
                        })
                    })
            });
            assert!(found, "{account}: no {ty} with {fields} in {got:?}");
        }
    };
    let at_acme = got("/acme");
    matches(&at_acme, &acme, "the account's endpoint");
    assert!(at_acme.iter().all(|(_, b)| b["data"]["account"] == "acme"));
    let mut global_want = acme.clone();
    global_want.push(reset);
    matches(&got("/global"), &global_want, "the global endpoint");
    // One notice, one webhook-id, at every endpoint that takes it.
    let ids = |path: &str| -> std::collections::BTreeSet<String> {
        taken
            .iter()
            .filter(|e| e["path"] == path)
            .filter(|e| {
                !e["body"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("credit.reset")
            })
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(ids("/acme"), ids("/global"));
}

/// An account's endpoint on loopback is refused by default (no request reaches it), and
/// the delivery is recorded as failed with the reason.
#[test]
fn an_account_endpoint_on_a_private_address_is_refused() {
    let receiver = Receiver::start(&json!({}));
    let d = Deployment::with_env(
        1,
        vec![("TALLY_WEBHOOKS__SIGNING_KEY".into(), SIGNING_KEY.into())],
        "http://127.0.0.1:8123".into(),
    );
    let at = hours_ago(2);
    d.send(&[
        grant(
            "g1",
            "acme",
            at,
            json!({"kind": "purchased", "credits": 60, "expires_at": null}),
        ),
        // 60 is below the top-up line at once: one request, to a loopback URL.
        command(
            "s1",
            "account.settings",
            "acme",
            at + TimeDelta::minutes(1),
            json!({"webhooks": [{"id": "main", "url": receiver.url("/acme")}],
                   "top_up": {"below": 100, "credits": 500}}),
        ),
    ]);
    d.drain();
    let rows =
        d.sql("SELECT event_type, status, attempts, error FROM webhooks FINAL FORMAT JSONEachRow");
    let rows: Vec<Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["event_type"], "credit.top_up_requested");
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["attempts"], 1);
    let error = rows[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("127.0.0.1 is not a public address"),
        "{error}"
    );
    assert!(receiver.log().is_empty(), "a request reached the receiver");
    // `tally webhooks` says the same.
    let listed = d.json(&["webhooks", "acme"]);
    assert_eq!(listed[0]["status"], "failed", "{listed}");
    assert_eq!(listed[0]["endpoint"], "account:main", "{listed}");
}
