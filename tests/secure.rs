//! tally against the secured local stack (`scripts/stack-secure.sh`, started here,
//! idempotently): Kafka over SASL_SSL (SCRAM-SHA-512 through a TLS terminator) and mutual
//! TLS, ClickHouse over HTTPS with a certificate from a test CA, `tally serve` over HTTPS.
//! Balances are checked against figures computed by hand from `config/matrix.toml`; a wrong
//! password and an untrusted certificate must each stop start-up, quickly, with an error
//! naming the setting.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::free_port;
use common::{grant, hours_ago, milli, rfc3339, usage, Deployment, Running};
use serde_json::{json, Value};

/// The secured stack's addresses and files, as the script wrote them to .stack/secure.env.
struct Stack(BTreeMap<String, String>);

impl Stack {
    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from .stack/secure.env"))
    }
}

/// Starts the secured stack once per test binary (the script is idempotent and takes a
/// lock, so other callers may run it too).
fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let status = Command::new("bash")
            .arg(format!("{root}/scripts/stack-secure.sh"))
            .status()
            .expect("stack-secure.sh runs");
        assert!(status.success(), "scripts/stack-secure.sh failed");
        let text = std::fs::read_to_string(format!("{root}/.stack/secure.env"))
            .expect(".stack/secure.env written by the script");
        Stack(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    })
}

/// Settings of a deployment on the secured stack: SASL_SSL with SCRAM-SHA-512, the
/// password from a file, the test CA for both services.
fn secure_env(s: &Stack) -> Vec<(String, String)> {
    [
        ("TALLY_KAFKA__BROKERS", s.get("SECURE_KAFKA_SASL_SSL")),
        ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
        ("TALLY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
        ("TALLY_KAFKA__SASL_USERNAME", s.get("SECURE_KAFKA_USER")),
        (
            "TALLY_KAFKA__SASL_PASSWORD_FILE",
            s.get("SECURE_KAFKA_PASSWORD_FILE"),
        ),
        ("TALLY_KAFKA__SSL_CA_FILE", s.get("SECURE_CA_FILE")),
        ("TALLY_CLICKHOUSE__URL", s.get("SECURE_CH_HTTPS")),
        ("TALLY_CLICKHOUSE__CA_FILE", s.get("SECURE_CA_FILE")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn secure_deployment(partitions: i32) -> Deployment {
    let s = stack();
    Deployment::with_env(
        partitions,
        secure_env(s),
        s.get("SECURE_CH_HTTP").to_string(),
    )
}

/// How long a command that must fail at start-up may take: the access check gives up on
/// a silent broker after 10 s, so a refusal comes well within this, and a hang shows.
const START_UP_LIMIT: Duration = Duration::from_secs(60);

/// Runs `command` with stdin closed, killing it (and failing) after `limit`.
fn bounded(command: &mut Command, limit: Duration, what: &str) -> Output {
    command.stdin(std::process::Stdio::null());
    let mut child = Running::spawn(command);
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait works").is_none() {
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {limit:?} (a hang): {}",
            child.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("exits")
}

/// Runs `command`, which must fail at start-up within `START_UP_LIMIT`; returns stderr.
fn fails(command: &mut Command, what: &str) -> String {
    let out = bounded(command, START_UP_LIMIT, what);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: succeeded: {stderr}");
    stderr
}

#[test]
fn sasl_ssl_and_https_end_to_end_with_balances_computed_by_hand() {
    let d = secure_deployment(2);
    let soon = rfc3339(hours_ago(-24 * 10));
    let at = |h: i64| hours_ago(h);
    d.send(&[
        grant(
            "pack",
            "acme",
            at(6),
            json!({"kind": "purchased", "credits": 100, "expires_at": null}),
        ),
        grant(
            "promo",
            "acme",
            at(6),
            json!({"kind": "promotional", "credits": 20, "expires_at": soon}),
        ),
        grant(
            "plan",
            "globex",
            at(6),
            json!({"kind": "included", "credits": 50, "expires_at": soon}),
        ),
        usage("u1", "acme", at(5), json!({"user": "kim", "feature": "text_to_image"})),
        usage(
            "u2",
            "acme",
            at(5),
            json!({"user": "kim", "feature": "image_generation", "variant": "mid"}),
        ),
        usage("u3", "acme", at(4), json!({"user": "lee", "feature": "erase"})),
        usage(
            "u4",
            "acme",
            at(4),
            json!({"user": "lee", "feature": "video_generation", "variant": "long", "status": "failed"}),
        ),
        usage("u5", "acme", at(3), json!({"user": "lee", "feature": "upscale"})),
        usage(
            "g1",
            "globex",
            at(5),
            json!({"user": "park", "feature": "audio_generation", "variant": "short", "quantity": 2}),
        ),
        usage(
            "g2",
            "globex",
            at(4),
            json!({"user": "park", "feature": "regeneration", "variant": "long"}),
        ),
    ]);
    let summary = d.drain();
    assert_eq!(summary["applied"], 10, "{summary}");

    // acme: text_to_image 8 + image_generation/mid 10 + erase 7 + a failed call 0 +
    // upscale 0 = 25. Earliest expiry first: the promotional 20 (expires in 10 days)
    // pays first, the never-expiring pack the other 5: 120 - 25 = 95, all purchased.
    let acme = d.balance("acme");
    let ai = &acme["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 95_000, "{acme}");
    assert_eq!(milli(&ai["by_kind"]["purchased"]), 95_000, "{acme}");
    assert_eq!(milli(&ai["by_kind"]["promotional"]), 0, "{acme}");
    // globex: audio_generation/short 15 x 2 + regeneration/long 2 = 32 of 50: 18 left.
    let globex = d.balance("globex");
    assert_eq!(
        milli(&globex["pools"]["ai"]["available"]),
        18_000,
        "{globex}"
    );
    // The failed call is in the ledger at 0 credits.
    let failed = d
        .ledger("acme")
        .into_iter()
        .find(|r| r["event_id"] == "u4")
        .expect("the failed call's ledger row");
    assert_eq!(
        (failed["status"].as_str(), milli(&failed["credits"])),
        (Some("failed"), 0),
        "{failed}"
    );

    // `tally serve` over HTTPS: an ingest with curl trusting only the test CA, produced
    // over SASL_SSL, applied by the next drain.
    let s = stack();
    let port = free_port();
    let key = "admin-secure-test-key-0123456789";
    let mut serve = Running::spawn(
        d.command()
            .arg("serve")
            .env("TALLY_SERVE__LISTEN", format!("127.0.0.1:{port}"))
            .env("TALLY_SERVE__KEYS", format!("admin={key}"))
            .env("TALLY_SERVE__TLS_CERT", s.get("SECURE_SERVER_CERT"))
            .env("TALLY_SERVE__TLS_KEY", s.get("SECURE_SERVER_KEY")),
    );
    let base = format!("https://127.0.0.1:{port}");
    let ca = s.get("SECURE_CA_FILE");
    let curl = |args: &[&str]| -> (bool, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--fail-with-body",
                "--cacert",
                ca,
            ])
            .args(args)
            .output()
            .expect("curl runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let deadline = Instant::now() + START_UP_LIMIT;
    loop {
        if curl(&[&format!("{base}/healthz")]).0 {
            break;
        }
        if let Some(status) = serve.try_wait().expect("wait works") {
            panic!("tally serve exited ({status}): {}", serve.stderr_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "tally serve never answered over HTTPS: {}",
            serve.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP on the TLS port gets no answer, and a client without the CA refuses it.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .expect("curl runs");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"));
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("{base}/healthz")])
        .output()
        .expect("curl runs");
    assert!(
        !untrusted.status.success(),
        "curl without the CA trusted it"
    );

    let event = usage(
        "s1",
        "acme",
        at(2),
        json!({"user": "kim", "feature": "erase"}),
    );
    let auth = format!("Authorization: Bearer {key}");
    let (ok, answer) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/cloudevents+json",
        "--data-binary",
        &event.to_string(),
        &format!("{base}/v1/events"),
    ]);
    assert!(ok, "ingest over HTTPS: {answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let (ok, balance) = curl(&["-H", &auth, &format!("{base}/v1/accounts/globex/balance")]);
    assert!(ok && balance.contains("globex"), "{balance}");
    drop(serve);

    let summary = d.drain();
    assert_eq!(summary["applied"], 1, "{summary}");
    // The erase (7) is paid by the pack: 95 - 7 = 88.
    let acme = d.balance("acme");
    assert_eq!(milli(&acme["pools"]["ai"]["available"]), 88_000, "{acme}");
}

#[test]
fn a_wrong_password_stops_start_up_naming_the_settings() {
    let d = secure_deployment(1);
    let wrong = |args: &[&str]| {
        let mut command = d.command();
        command
            .args(args)
            .env(
                "TALLY_SERVE__KEYS",
                "admin=admin-secure-test-key-0123456789",
            )
            .env("TALLY_SERVE__LISTEN", format!("127.0.0.1:{}", free_port()))
            .env_remove("TALLY_KAFKA__SASL_PASSWORD_FILE")
            .env("TALLY_KAFKA__SASL_PASSWORD", "not-the-password");
        command
    };
    let event = usage("w1", "acme", hours_ago(1), json!({"feature": "erase"}));
    for args in [
        &["migrate"][..],
        &["run", "--drain"][..],
        &["grant", "acme", "--credits", "5", "--kind", "promotional"][..],
        &["serve"][..],
    ] {
        let stderr = fails(
            &mut wrong(args),
            &format!("tally {args:?} with a wrong password"),
        );
        assert!(
            stderr.contains("refused the SASL login")
                && stderr.contains("kafka.sasl_username")
                && stderr.contains("TALLY_KAFKA__SASL_PASSWORD"),
            "tally {args:?}: {stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{stderr}");
    }
    // `tally send` reads its events first: give it one.
    let mut send = wrong(&["send", "-"]);
    let mut child = send
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tally send starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{event}").expect("writes");
    }
    let deadline = Instant::now() + START_UP_LIMIT;
    while child.try_wait().expect("wait works").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally send with a wrong password hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("kafka.sasl_username"),
        "{stderr}"
    );
    // Nothing reached the topic: a drain with the right password applies nothing.
    assert_eq!(d.drain()["applied"], 0);
}

#[test]
fn untrusted_certificates_stop_start_up_naming_the_setting() {
    let d = secure_deployment(1);
    // The broker's certificate without kafka.ssl_ca_file: the system's CAs do not sign it.
    for args in [&["migrate"][..], &["run", "--drain"][..]] {
        let stderr = fails(
            d.command()
                .args(args)
                .env_remove("TALLY_KAFKA__SSL_CA_FILE"),
            &format!("tally {args:?} without kafka.ssl_ca_file"),
        );
        assert!(
            stderr.contains("kafka.ssl_ca_file") && stderr.contains("not trusted"),
            "tally {args:?}: {stderr}"
        );
    }
    // ClickHouse's certificate without clickhouse.ca_file: the built-in public CAs do not
    // sign it.
    for args in [&["migrate"][..], &["run", "--drain"][..], &["serve"][..]] {
        let stderr = fails(
            d.command()
                .args(args)
                .env(
                    "TALLY_SERVE__KEYS",
                    "admin=admin-secure-test-key-0123456789",
                )
                .env("TALLY_SERVE__LISTEN", format!("127.0.0.1:{}", free_port()))
                .env_remove("TALLY_CLICKHOUSE__CA_FILE"),
            &format!("tally {args:?} without clickhouse.ca_file"),
        );
        assert!(
            stderr.contains("clickhouse.ca_file") && stderr.contains("not trusted"),
            "tally {args:?}: {stderr}"
        );
    }
    // `balance` reads ClickHouse only: the same error, at its first query.
    let stderr = fails(
        d.command()
            .args(["balance", "acme"])
            .env_remove("TALLY_CLICKHOUSE__CA_FILE"),
        "tally balance without clickhouse.ca_file",
    );
    assert!(stderr.contains("clickhouse.ca_file"), "{stderr}");
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let s = stack();
    let d = secure_deployment(1);
    let mtls = |command: &mut Command| {
        command.env("TALLY_KAFKA__BROKERS", s.get("SECURE_KAFKA_MTLS"));
    };
    // Without a client certificate the terminator refuses the handshake.
    let mut without = d.command();
    mtls(without.arg("migrate"));
    let stderr = fails(&mut without, "tally migrate without a client certificate");
    assert!(stderr.contains("kafka.ssl_cert_file"), "{stderr}");
    // With it, commands go through.
    let mut with = d.command();
    mtls(
        with.args(["grant", "acme", "--credits", "5", "--kind", "promotional"])
            .env("TALLY_KAFKA__SSL_CERT_FILE", s.get("SECURE_CLIENT_CERT"))
            .env("TALLY_KAFKA__SSL_KEY_FILE", s.get("SECURE_CLIENT_KEY")),
    );
    let out = bounded(
        &mut with,
        START_UP_LIMIT,
        "tally grant with a client certificate",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.drain()["applied"], 1);
    assert_eq!(milli(&d.balance("acme")["pools"]["ai"]["available"]), 5_000);
}
