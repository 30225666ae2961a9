//! Harness for tests against the real stack (`scripts/stack-up.sh`): each test gets its own
//! topics, consumer group and ClickHouse database, so tests run side by side.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

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
}

impl Deployment {
    pub fn new(partitions: i32) -> Deployment {
        let name = format!("t{:016x}", rand::random::<u64>());
        let deployment = Deployment {
            usage_topic: format!("{name}.ai.usage"),
            commands_topic: format!("{name}.credit.commands"),
            dlq_topic: format!("{name}.tally.dlq"),
            database: format!("tally_{name}"),
            partitions,
            name,
        };
        deployment.tally_ok(&["migrate"]);
        deployment
    }

    fn env(&self) -> Vec<(String, String)> {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/tally.toml");
        vec![
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
        ]
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
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

    /// `tally run --drain`: applies everything sent so far, then exits.
    pub fn drain(&self) -> Value {
        self.json(&["run", "--drain"])
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

impl Drop for Deployment {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = Command::new("curl")
                .args(["-s", "http://127.0.0.1:8123/", "--data-binary"])
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
