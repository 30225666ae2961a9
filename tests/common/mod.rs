//! Harness for tests against the real stack (`scripts/stack-up.sh`): each test gets its own
//! topics, consumer group and ClickHouse database, so tests run side by side.

#![allow(dead_code)]

pub mod expected;
pub mod maildev;
#[path = "../../core/tests/reference/mod.rs"]
pub mod reference;
pub mod server;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// The value of one series of a Prometheus text (name and labels exactly as written there).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// One isolated tally deployment on the shared stack.
pub struct Deployment {
    pub name: String,
    pub usage_topic: String,
    pub commands_topic: String,
    pub dlq_topic: String,
    pub database: String,
    pub partitions: i32,
    /// Settings on top of the shared stack's (e.g. the secured stack's brokers, protocol
    /// and certificates), after the others so they win.
    pub extra_env: Vec<(String, String)>,
    /// Where the test's own SQL (`sql`, the drop at the end) goes: plain HTTP.
    pub sql_url: String,
}

impl Deployment {
    pub fn new(partitions: i32) -> Deployment {
        Deployment::with_env(partitions, Vec::new(), "http://127.0.0.1:8123".into())
    }

    /// A deployment on another stack: `extra_env` on top of the usual settings, and the
    /// test's SQL to `sql_url`.
    pub fn with_env(
        partitions: i32,
        extra_env: Vec<(String, String)>,
        sql_url: String,
    ) -> Deployment {
        let name = format!("t{:016x}", rand::random::<u64>());
        let deployment = Deployment {
            usage_topic: format!("{name}.ai.usage"),
            commands_topic: format!("{name}.credit.commands"),
            dlq_topic: format!("{name}.tally.dlq"),
            database: format!("tally_{name}"),
            partitions,
            name,
            extra_env,
            sql_url,
        };
        deployment.tally_ok(&["migrate"]);
        deployment
    }

    /// The environment every `tally` of this deployment runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/tally.toml");
        let mut env: Vec<(String, String)> = vec![
            ("TALLY_CONFIG".into(), config.display().to_string()),
            ("TALLY_KAFKA__BROKERS".into(), brokers()),
            (
                "TALLY_KAFKA__GROUP_ID".into(),
                format!("{}-group", self.name),
            ),
            ("TALLY_KAFKA__USAGE_TOPIC".into(), self.usage_topic.clone()),
            (
                "TALLY_KAFKA__COMMANDS_TOPIC".into(),
                self.commands_topic.clone(),
            ),
            ("TALLY_KAFKA__DLQ_TOPIC".into(), self.dlq_topic.clone()),
            (
                "TALLY_KAFKA__PARTITIONS".into(),
                self.partitions.to_string(),
            ),
            ("TALLY_CLICKHOUSE__DATABASE".into(), self.database.clone()),
            ("TALLY_PIPELINE__FLUSH_INTERVAL".into(), "200ms".into()),
            // Tests count the records they sent against committed offsets, so `tally run`
            // sends no ticks of its own; tests that need time to pass send `tally tick`.
            ("TALLY_PIPELINE__TICK_INTERVAL".into(), "0s".into()),
            ("TALLY_STATUS__LISTEN".into(), String::new()),
            // Snapshots and the deletion of what they supersede happen in every test, also
            // between the crashes of the crash tests.
            ("TALLY_PIPELINE__SNAPSHOT_MIN_ROWS".into(), "1000".into()),
            // Rollup segments close and reopen many times in every test, also between the
            // crashes: a call counted twice or lost at a segment's edge shows in the daily
            // totals that every test checks.
            (
                "TALLY_PIPELINE__ROLLUP_SEGMENT_RECORDS".into(),
                "1000".into(),
            ),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        // The tests' own knobs (TALLY_TEST_SEED, ...) are not tally settings: tally refuses
        // unknown TALLY_* keys, so they must not reach it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TALLY_TEST_") {
                command.env_remove(&key);
            }
        }
        command.envs(self.env());
        command
    }

    /// Runs `tally args`, feeding `stdin`.
    pub fn tally_with_input(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally binary starts");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin.as_bytes())
            .expect("stdin accepts input");
        child.wait_with_output().expect("tally finishes")
    }

    pub fn tally(&self, args: &[&str]) -> Output {
        self.tally_with_input(args, "")
    }

    /// Runs `tally args` and returns stdout, failing the test with stderr if it fails.
    pub fn tally_ok(&self, args: &[&str]) -> String {
        let out = self.tally(args);
        assert!(
            out.status.success(),
            "tally {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.tally_ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("tally {args:?} printed non-JSON ({e}): {out}"))
    }

    /// Sends events through `tally send`, each to its topic by type, keyed by subject.
    pub fn send(&self, events: &[Value]) {
        let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
        self.send_lines(&lines);
    }

    pub fn send_lines(&self, lines: &str) {
        let out = self.tally_with_input(&["send", "-"], lines);
        assert!(
            out.status.success(),
            "send failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `tally run --drain`: applies everything sent so far, then exits. A drain that has
    /// not finished within `WAIT_LIMIT` fails the test with its log (and is killed).
    pub fn drain(&self) -> Value {
        self.drain_with(&[])
    }

    /// `drain` with `env` on top of the deployment's.
    pub fn drain_with(&self, env: &[(&str, &str)]) -> Value {
        self.drain_within(WAIT_LIMIT, env)
    }

    /// `drain_with`, failing the test (with the log) if the drain has not finished within
    /// `bound`.
    pub fn drain_within(&self, bound: Duration, env: &[(&str, &str)]) -> Value {
        let mut child = Running::spawn(
            self.command()
                .args(["--json", "run", "--drain"])
                .envs(env.iter().copied()),
        );
        let deadline = std::time::Instant::now() + bound;
        while child.try_wait().expect("wait works").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "tally run --drain still running after {bound:?}, the checkpoints covering \
                 {} records: {}",
                self.committed(),
                child.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("tally run exits");
        assert!(
            out.status.success(),
            "tally run --drain failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("run prints a JSON summary")
    }

    pub fn balance(&self, account: &str) -> Value {
        self.json(&["balance", account])
    }

    pub fn ledger(&self, account: &str) -> Vec<Value> {
        match self.json(&["ledger", account]) {
            Value::Array(rows) => rows,
            other => panic!("ledger is not an array: {other}"),
        }
    }

    /// Reads the first `expected` messages of the dead-letter topic: (payload, reason code,
    /// reason).
    pub fn dead_letters(&self, expected: usize) -> Vec<(String, String, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("{}-dlq-reader", self.name))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&self.dlq_topic]).expect("subscribe");
        let mut letters = Vec::new();
        // A bound on a wait that should end at once, not a synchronisation: poll returns
        // early on group events, so it is called until the messages are in.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while letters.len() < expected && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_secs(30)) {
                Some(Ok(m)) => {
                    let header = |name: &str| {
                        m.headers()
                            .and_then(|h| h.iter().find(|x| x.key == name))
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    };
                    letters.push((
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                        header("tally.reason.code"),
                        header("tally.reason"),
                    ));
                }
                Some(Err(e)) => panic!("reading the dead-letter topic: {e}"),
                None => {}
            }
        }
        assert_eq!(letters.len(), expected, "dead-letter messages: {letters:?}");
        letters
    }
}

impl Deployment {
    /// Runs SQL against this deployment's database and returns the TSV answer.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .arg(format!("{}/?database={}", self.sql_url, self.database))
            .arg("--data-binary")
            .arg(query)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything a billing system reads, in a form two deployments can be compared by:
    /// lots, ledger rows (without their Kafka positions, which name the topic) and daily
    /// rollups.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            lots: self.sql(
                "SELECT account, lot, pool, kind, granted, remaining, voided \
                 FROM lots FINAL ORDER BY account, lot",
            ),
            ledger: self.sql(
                "SELECT account, event_id, entry_type, time, day, service, user, feature, \
                 variant, quantity, status, pool, credits, paid_lots, paid_credits, shortfall \
                 FROM ledger FINAL ORDER BY account, event_id, entry_type",
            ),
            ledger_rows: self
                .sql("SELECT count() FROM ledger FINAL")
                .trim()
                .parse()
                .expect("a count"),
            daily: self.sql(
                "SELECT day, account, service, user, feature, sum(calls), sum(failed_calls), \
                 sum(credits), sum(included), sum(promotional), sum(purchased), sum(shortfall) \
                 FROM daily_rollups FINAL GROUP BY day, account, service, user, feature \
                 ORDER BY day, account, service, user, feature",
            ),
        }
    }

    /// How many records of both topics the checkpoints say are applied and committed: the
    /// sum over partitions of the latest checkpointed next offsets.
    pub fn committed(&self) -> u64 {
        self.sql(
            "SELECT sum(u) + sum(c) FROM (SELECT partition, \
             argMax(usage_offset, version) AS u, argMax(commands_offset, version) AS c \
             FROM checkpoints WHERE row_kind = 'offsets' GROUP BY partition)",
        )
        .trim()
        .parse()
        .unwrap_or(0)
    }

    /// Waits until the checkpoints cover at least `target` records, with a bound; fails
    /// with what it was waiting for, what the checkpoints covered, and the log of any of
    /// `runs` that exited on the way.
    pub fn wait_committed(&self, target: u64, runs: &mut [&mut Running], what: &str) -> u64 {
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        loop {
            let covered = self.committed();
            if covered >= target {
                return covered;
            }
            for run in runs.iter_mut() {
                if let Some(status) = run.try_wait().expect("wait works") {
                    panic!(
                        "{what}: a tally run exited ({status}) while the checkpoints covered \
                         {covered} of the {target} records waited for: {}",
                        run.stderr_so_far()
                    );
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: after {WAIT_LIMIT:?} the checkpoints covered {covered} of the \
                 {target} records waited for"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One crash placed by the test: `tally run` starts on what has been sent so far,
    /// is SIGKILLed `jitter` after the checkpoints first cover `target` records, and
    /// returns what they covered after the kill. The caller holds back the rest of the
    /// stream until this returns, so the kill falls mid-stream whatever the machine's
    /// speed; the target and jitter only choose where in the part sent.
    pub fn run_and_kill_at(&self, target: u64, jitter: Duration) -> u64 {
        // Small batches: the checkpoints move in steps of at most 5,000 records, so a kill
        // placed at a share of the work falls near it, not a whole batch later.
        let mut child = self.spawn_run(&[], &[("TALLY_PIPELINE__MAX_BATCH_EVENTS", "5000")]);
        self.wait_committed(target, &mut [&mut child], "a run before its SIGKILL");
        // The crash schedule: how far past the target the kill falls.
        std::thread::sleep(jitter);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        self.committed()
    }

    /// Starts `tally run` in the background with `env` on top of the deployment's.
    pub fn spawn_run(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::spawn(
            self.command()
                .arg("run")
                .args(args)
                .envs(env.iter().copied()),
        )
    }
}

/// A tally process whose output is read while it runs: a child that logs more than a pipe
/// holds (64 KiB) would otherwise block on its next log line and look like a stall.
///
/// A `Running` that is dropped while its process lives (a failed assertion, a panic in the
/// test) SIGKILLs and reaps it, so a failing test leaves nothing consuming.
pub struct Running {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// What the process wrote to stderr so far, for a failure message while it runs.
    stderr_seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally starts");
        let stderr_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader =
            |mut pipe: Box<dyn std::io::Read + Send>,
             seen: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>| {
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = pipe.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                        if let Some(seen) = &seen {
                            if let Ok(mut seen) = seen.lock() {
                                seen.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                    out
                })
            };
        let stdout = child.stdout.take().map(|p| reader(Box::new(p), None));
        let stderr = child
            .stderr
            .take()
            .map(|p| reader(Box::new(p), Some(stderr_seen.clone())));
        Running {
            child,
            stdout,
            stderr,
            stderr_seen,
        }
    }

    /// The last 4 KB of what the process has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        let seen = self
            .stderr_seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let tail = &seen[seen.len().saturating_sub(4096)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// SIGTERM: `tally run` drains, flushes, commits and must exit 0. Bounded: a process
    /// still running after the bound fails the test (and is SIGKILLed by the drop).
    pub fn terminate(mut self, what: &str) -> Output {
        let pid = self.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "{what}: SIGTERM to {pid} failed");
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        while self.try_wait().expect("wait works").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: still running {WAIT_LIMIT:?} after SIGTERM: {}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.wait_with_output().expect("tally exits");
        assert!(
            out.status.success(),
            "{what}: did not exit 0 on SIGTERM ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    /// Waits for the exit, then for the rest of its output.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        let status = self.child.wait()?;
        let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: collect(self.stdout.take()),
            stderr: collect(self.stderr.take()),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nobody listens on now, for a process a test starts, and never one this test
/// binary handed out before: the kernel may give the port just released to the next
/// bind, so two calls in a row (maildev's SMTP and web ports) once got the same one.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The bound on every wait of these tests for progress of a process they started: far
/// above what any run needs, so reaching it means a stall, never a slow machine.
pub const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// The seed of a random schedule: `TALLY_TEST_SEED` when given (to replay a failure),
/// else a fresh one. Printed either way, with how to replay it.
pub fn test_seed(what: &str) -> u64 {
    let seed: u64 = std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{what} seed {seed} (replay with TALLY_TEST_SEED={seed})");
    seed
}

/// Where to cut `events` (in time order) near `at` so that every event after the cut is
/// strictly later than every event before it: a stream sent in parts then merges as the
/// whole stream would, whatever the tie-breaking rule between topics.
pub fn cut_at(events: &[Value], at: usize) -> usize {
    let time = |i: usize| events[i]["time"].as_str().unwrap_or_default().to_string();
    let mut cut = at.clamp(1, events.len());
    while cut < events.len() && time(cut) == time(cut - 1) {
        cut += 1;
    }
    debug_assert!(cut == events.len() || time(cut) > time(cut - 1));
    cut
}

/// What two runs over the same events must agree on.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub lots: String,
    pub ledger: String,
    pub ledger_rows: u64,
    pub daily: String,
}

impl Snapshot {
    /// Asserts equality with a readable first difference instead of two huge strings.
    pub fn assert_same(&self, clean: &Snapshot, what: &str) {
        for (name, got, want) in [
            ("lots", &self.lots, &clean.lots),
            ("ledger", &self.ledger, &clean.ledger),
            ("daily", &self.daily, &clean.daily),
        ] {
            let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
            if let Some(i) = (0..g.len().max(w.len())).find(|&i| g.get(i) != w.get(i)) {
                panic!(
                    "{what}: {name} differs from the clean run at row {i} of {}/{}:\n  got  {:?}\n  want {:?}",
                    g.len(),
                    w.len(),
                    g.get(i),
                    w.get(i)
                );
            }
        }
        assert_eq!(self.ledger_rows, clean.ledger_rows, "{what}: ledger rows");
    }
}

/// A deterministic workload: grants for `accounts` accounts, then `events` calls over a
/// few hours with top-ups mid-stream, so lots run out, split and fall short.
pub fn workload(accounts: usize, events: usize, seed: u64) -> Vec<Value> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let start = hours_ago(20);
    let soon = rfc3339(Utc::now() + TimeDelta::days(10));
    let mut out = Vec::with_capacity(events + accounts * 3);
    for a in 0..accounts {
        let account = format!("acct-{a:04}");
        out.push(grant(
            &format!("plan-{a}"),
            &account,
            start - TimeDelta::hours(1),
            json!({"kind": "included", "credits": rng.gen_range(100..2000), "expires_at": soon}),
        ));
        out.push(grant(&format!("pack-{a}"), &account, start - TimeDelta::hours(1),
            json!({"kind": "purchased", "credits": rng.gen_range(0..3) * 2500 + 1, "expires_at": null})));
    }
    let features: [(&str, Option<&str>); 6] = [
        ("image_generation", Some("mid")),
        ("text_to_image", None),
        ("video_generation", Some("short")),
        ("erase", None),
        ("regeneration", Some("long")),
        ("deep_scan", None),
    ];
    let step = (TimeDelta::hours(18).num_milliseconds() / events.max(1) as i64).max(1);
    for i in 0..events {
        let at = start + TimeDelta::milliseconds(step * i as i64);
        let account = format!("acct-{:04}", rng.gen_range(0..accounts));
        if i % 997 == 0 {
            out.push(grant(
                &format!("topup-{i}"),
                &account,
                at,
                json!({"kind": "promotional", "credits": 50, "valid_days": 30}),
            ));
        }
        let (feature, variant) = features[rng.gen_range(0..features.len())];
        let mut data = json!({"user": format!("user-{}", rng.gen_range(0..5)), "feature": feature});
        if let Some(v) = variant {
            data["variant"] = json!(v);
        }
        if rng.gen_ratio(1, 20) {
            data["status"] = json!("failed");
        }
        out.push(usage(&format!("u{i}"), &account, at, data));
    }
    out
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = Command::new("curl")
                .args(["-s", &format!("{}/", self.sql_url), "--data-binary"])
                .arg(format!("DROP DATABASE IF EXISTS {}", self.database))
                .output();
        }
    }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time `hours` before now: inside the allowed lateness, never in the future.
pub fn hours_ago(hours: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::hours(hours)
}

pub fn usage(id: &str, account: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"specversion": "1.0", "type": "ai.usage", "id": id, "source": "production-room",
           "subject": account, "time": rfc3339(at), "data": data})
}

pub fn grant(id: &str, account: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"specversion": "1.0", "type": "credit.grant", "id": id, "source": "billing",
           "subject": account, "time": rfc3339(at), "data": data})
}

/// A credits value from JSON, in thousandths, so comparisons are exact.
pub fn milli(value: &Value) -> i64 {
    match value {
        Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default() * 1000,
        Value::Number(n) => n
            .to_string()
            .parse::<tally_core::Credits>()
            .map(|c| c.milli())
            .unwrap_or(i64::MIN),
        other => panic!("not a credits number: {other}"),
    }
}
