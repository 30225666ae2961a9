//! The edges of `tally serve` and of `tally run`'s endpoint refuse what they cannot trust
//! (issue 19, points 5 to 8), against the real stack: ids and names with limits, keys that
//! do what their role needs and no more, servers that slow or idle clients cannot hold,
//! bounded metric labels, internal routes behind a shared token, and no panic, 5xx or
//! leaked error text for bad input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::free_port;
use common::server::{
    Answer, Server, ACME_KEY, ACME_SERVICE_KEY, ADMIN_KEY, GLOBEX_KEY, GLOBEX_SERVICE_KEY,
};
use common::{grant, usage, Deployment, Running};
use serde_json::{json, Value};

/// The shared token of the `/internal` routes in these tests.
const INTERNAL_TOKEN: &str = "internal-test-token-0123456789";

fn post_json(server: &Server, path: &str, key: &str, body: &Value) -> Answer {
    server.post(path, key, "application/json", &body.to_string())
}

/// Waits, bounded, until `tally run`'s endpoint on `port` answers `/healthz`.
fn wait_endpoint(run: &mut Running, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/healthz"))
            .output()
            .expect("curl runs");
        if String::from_utf8_lossy(&out.stdout) == "200" {
            return;
        }
        if let Some(status) = run.try_wait().expect("wait works") {
            panic!("tally run exited ({status}): {}", run.stderr_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "tally run's endpoint never answered: {}",
            run.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tally args` for `d` with `env`, which must exit (within a bound) with a failure;
/// returns its stderr.
fn fails_to_start(d: &Deployment, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Running::spawn(d.command().args(args).envs(env.iter().copied()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait works").is_none() {
        assert!(
            Instant::now() < deadline,
            "tally {args:?} with {env:?} kept running instead of refusing to start: {}",
            child.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("tally exits");
    assert!(
        !out.status.success(),
        "tally {args:?} with {env:?} started: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Point 5: a 300-byte id is refused everywhere, naming the field: by ingest (400), by
/// `tally run` (a dead letter, nothing billed), by the API's path and query parameters and
/// by the CLI. A newline in an account is refused the same way.
#[test]
fn a_300_byte_id_is_refused_naming_the_field() {
    let d = Deployment::new(1);
    let server = Server::start(&d, &[]);
    let long = "i".repeat(300);
    let at = Utc::now() - TimeDelta::minutes(1);
    let event = usage(
        &long,
        "acme",
        at,
        json!({"user": "kim", "feature": "erase"}),
    );
    let answer = server.post(
        "/v1/events",
        ADMIN_KEY,
        "application/cloudevents+json",
        &event.to_string(),
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    let result = &answer.json()["results"][0];
    assert_eq!(result["code"], "bad_data", "{result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`id`") && reason.contains("256"),
        "{reason}"
    );

    // Through Kafka: dead-lettered, naming the field; the valid call beside it is billed.
    let forged = usage(
        "evt-forged",
        "acme",
        at,
        json!({"user": "kim\nINFO forged log line", "feature": "erase"}),
    );
    let fine = usage(
        "evt-fine",
        "acme",
        at,
        json!({"user": "kim", "feature": "erase"}),
    );
    let grant = grant(
        "g-1",
        "acme",
        at - TimeDelta::minutes(1),
        json!({"kind": "promotional", "credits": 100}),
    );
    d.send(&[grant, event, forged, fine]);
    let summary = d.drain();
    assert_eq!(summary["rejected"], 2, "{summary}");
    let letters = d.dead_letters(2);
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|(_, code, reason)| (code.clone(), reason.clone()))
        .collect();
    reasons.sort();
    assert!(
        reasons.iter().all(|(code, _)| code == "bad_data"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.contains("`id`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("`data.user`") && r.contains("control character")),
        "{reasons:?}"
    );
    let ids: Vec<String> = d
        .ledger("acme")
        .iter()
        .filter_map(|row| row["event_id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.contains(&"evt-fine".to_string()), "{ids:?}");
    assert!(
        !ids.iter().any(|id| id == &long || id == "evt-forged"),
        "{ids:?}"
    );

    // The API's path and query parameters: 400 naming the parameter, for any key.
    for (path, parameter) in [
        (format!("/v1/accounts/{long}/balance"), "account"),
        (format!("/v1/accounts/{long}/ledger"), "account"),
        ("/v1/accounts/ac%0Ame/history".to_string(), "account"),
        (
            format!("/v1/reports/daily?from=2026-01-01&to=2026-01-02&account={long}"),
            "account",
        ),
        (
            format!("/v1/reports/monthly?month=2026-01&account={long}"),
            "account",
        ),
    ] {
        let answer = server.get(&path, Some(ADMIN_KEY));
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(
            answer.json()["parameter"],
            parameter,
            "{path}: {}",
            answer.body
        );
    }
    let release = server.curl(
        &format!("/v1/holds/{long}?account=acme"),
        &[
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {ADMIN_KEY}"),
        ],
    );
    assert_eq!(release.status, 400, "{}", release.body);
    assert_eq!(release.json()["parameter"], "id");
    // The CLI takes the same rules.
    let out = d.tally(&["balance", &long]);
    assert!(
        !out.status.success(),
        "tally balance took a 300-byte account"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("longer than 256 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.tally(&[
        "grant",
        "acme",
        "--credits",
        "1",
        "--kind",
        "promotional",
        "--lot",
        &long,
    ]);
    assert!(!out.status.success(), "tally grant took a 300-byte lot");
}

/// Point 6: an `account:` key reads and nothing more: no check, hold or release; a
/// `service:` key acts for its own account only and reads nothing; a variant on a
/// feature without variants is refused; open holds per account are capped; and a key
/// over its rate limit gets 429 with `Retry-After` while other keys go on.
#[test]
fn a_read_key_cannot_hold_and_service_keys_are_bounded() {
    let d = Deployment::new(1);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut run = d.spawn_run(
        &[],
        &[
            ("TALLY_STATUS__LISTEN", &listen),
            ("TALLY_STATUS__TOKEN", INTERNAL_TOKEN),
            ("TALLY_RULES__MAX_OPEN_HOLDS", "2"),
        ],
    );
    wait_endpoint(&mut run, port);
    let server = Server::start(&d, &[("TALLY_STATUS__TOKEN", INTERNAL_TOKEN)]);
    let at = Utc::now() - TimeDelta::minutes(5);
    d.send(&[grant(
        "g-1",
        "acme",
        at,
        json!({"lot": "pack", "kind": "purchased", "credits": 1000}),
    )]);
    let hold = |key: &str, id: &str| {
        post_json(
            &server,
            "/v1/holds",
            key,
            &json!({"id": id, "account": "acme", "feature": "erase", "ttl": 600}),
        )
    };

    // The read key of acme: 403 for a hold, a check and a release; reads still work.
    let refused = hold(ACME_KEY, "h-read");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let check = json!({"account": "acme", "feature": "erase"});
    assert_eq!(
        post_json(&server, "/v1/check", ACME_KEY, &check).status,
        403
    );
    let release = server.curl(
        "/v1/holds/h-read?account=acme",
        &[
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {ACME_KEY}"),
        ],
    );
    assert_eq!(release.status, 403, "{}", release.body);
    assert_eq!(
        server
            .get("/v1/accounts/acme/balance", Some(ACME_KEY))
            .status,
        200
    );
    // A service key: its own account only, and no reads.
    assert_eq!(hold(GLOBEX_SERVICE_KEY, "h-other").status, 403);
    assert_eq!(
        server
            .get("/v1/accounts/acme/balance", Some(ACME_SERVICE_KEY))
            .status,
        403
    );
    assert_eq!(
        server
            .get("/v1/reports/monthly?month=2026-01", Some(ACME_SERVICE_KEY))
            .status,
        403
    );
    assert_eq!(
        server
            .post(
                "/v1/events",
                ACME_SERVICE_KEY,
                "application/cloudevents+json",
                "{}"
            )
            .status,
        403
    );

    // A variant on a feature without variants, short or huge: 400 naming `variant`.
    for variant in ["long".to_string(), "v".repeat(5000)] {
        let body = json!({"account": "acme", "feature": "erase", "variant": variant});
        let answer = post_json(&server, "/v1/check", ACME_SERVICE_KEY, &body);
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.json()["parameter"], "variant", "{}", answer.body);
    }

    // The service key holds (through the owner, which wants the shared token that tally
    // serve sends), up to the cap of open holds.
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let answer = hold(ACME_SERVICE_KEY, "h-1");
        // 402 until the grant is applied; 503 until the owner's claim row is written.
        if answer.status == 201 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(hold(ACME_SERVICE_KEY, "h-2").status, 201);
    let third = hold(ACME_SERVICE_KEY, "h-3");
    assert_eq!(third.status, 409, "{}", third.body);
    assert!(third.body.contains("open holds"), "{}", third.body);
    // Released, a slot opens again.
    let released = server.curl(
        "/v1/holds/h-1?account=acme",
        &[
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {ACME_SERVICE_KEY}"),
        ],
    );
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(hold(ACME_SERVICE_KEY, "h-3").status, 201);
    drop(server);

    // Rate limits: one request a second and two at once, per key. Ten requests in a row
    // cannot all pass unless eight seconds go by; the other key is not held back.
    let server = Server::start(
        &d,
        &[
            ("TALLY_SERVE__RATE_PER_SECOND", "1"),
            ("TALLY_SERVE__RATE_BURST", "2"),
        ],
    );
    let started = Instant::now();
    let limited: Vec<Answer> = (0..10)
        .map(|_| server.get("/v1/whoami", Some(ACME_KEY)))
        .filter(|a| a.status == 429)
        .collect();
    if started.elapsed() < Duration::from_secs(8) {
        let first = limited.first().expect("no 429 among ten requests at once");
        let retry: u64 = first
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("429 says Retry-After in seconds");
        assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    }
    assert_eq!(server.get("/v1/whoami", Some(GLOBEX_KEY)).status, 200);
    drop(server);
    run.terminate("tally run");
}

/// Point 7: a client sending its headers a byte at a time is closed after the header
/// timeout, while others are answered; connections over the cap are answered 503 and
/// closed, and the server answers again once they go.
#[test]
fn slowloris_is_closed_and_others_are_answered() {
    let d = Deployment::new(1);
    let server = Server::start(
        &d,
        &[
            ("TALLY_SERVE__HEADER_TIMEOUT", "2s"),
            ("TALLY_SERVE__MAX_CONNECTIONS", "4"),
        ],
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let slow = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut socket = TcpStream::connect(&addr).expect("connects");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            let started = Instant::now();
            let head = b"GET /v1/whoami HTTP/1.1\r\nHost: tally\r\nX-Slow: ";
            let mut sent = 0usize;
            // A generous bound: the header timeout is 2 s.
            while started.elapsed() < Duration::from_secs(60) {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if socket.write_all(&[byte]).is_err() {
                    return Some(started.elapsed());
                }
                sent += 1;
                // Pacing the drip; the read's timeout is what waits.
                let mut buf = [0u8; 256];
                match socket.read(&mut buf) {
                    Ok(_) => return Some(started.elapsed()),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return Some(started.elapsed()),
                }
            }
            None
        }
    });
    // While it drips, others are answered.
    for _ in 0..3 {
        assert_eq!(server.get("/healthz", None).status, 200);
    }
    let closed = slow.join().expect("the slow client ran");
    assert!(
        closed.is_some(),
        "a client sending a header byte every 100 ms was never closed"
    );
    assert_eq!(server.get("/healthz", None).status, 200);

    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");

    // The cap: silent connections take every slot (a long header timeout keeps them);
    // then a request is answered 503 and closed. Connections the server refused were
    // closed by it, so more are opened until one request meets a full house.
    let server = Server::start(
        &d,
        &[
            ("TALLY_SERVE__HEADER_TIMEOUT", "5min"),
            ("TALLY_SERVE__MAX_CONNECTIONS", "4"),
        ],
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&addr).expect("connects"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let busy = loop {
        let answer = server.get("/healthz", None);
        if answer.status == 503 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "never refused with {} silent connections open: {} {}",
            idle.len(),
            answer.status,
            answer.body
        );
        idle.push(TcpStream::connect(&addr).expect("connects"));
    };
    assert!(busy.header("retry-after").is_some(), "{}", busy.headers);
    assert!(busy.body.contains("too many connections"), "{}", busy.body);
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = server.get("/healthz", None);
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots never came back: {} {}",
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Point 7: methods HTTP does not define are counted under one label, `other`, on both
/// servers, so invented methods cannot create series.
#[test]
fn unknown_http_methods_share_one_metric_label() {
    let d = Deployment::new(1);
    let server = Server::start(&d, &[]);
    for (method, path) in [
        ("FOOBAR", "/v1/whoami"),
        ("BREW", "/healthz"),
        ("XYZZY1", "/nowhere"),
    ] {
        let answer = server.curl(path, &["-X", method]);
        assert!(
            (400..500).contains(&answer.status),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }
    let metrics = server.get("/metrics", None).body;
    for invented in ["FOOBAR", "BREW", "XYZZY1"] {
        assert!(
            !metrics.contains(invented),
            "{invented} became a label: {metrics}"
        );
    }
    assert!(metrics.contains(r#"method="other""#), "{metrics}");

    // tally run's endpoint too.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut run = d.spawn_run(&[], &[("TALLY_STATUS__LISTEN", &listen)]);
    wait_endpoint(&mut run, port);
    let out = Command::new("curl")
        .args(["-s", "-X", "FOOBAR"])
        .arg(format!("http://{listen}/status"))
        .output()
        .expect("curl runs");
    assert!(out.status.success());
    let metrics = Command::new("curl")
        .arg("-s")
        .arg(format!("http://{listen}/metrics"))
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(!metrics.contains("FOOBAR"), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    run.terminate("tally run");
}

/// Point 7: `/internal/check` and `/internal/answers` answer only with the shared token,
/// and `tally run` refuses to listen beyond loopback without one.
#[test]
fn internal_routes_need_the_shared_token() {
    let d = Deployment::new(1);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut run = d.spawn_run(
        &[],
        &[
            ("TALLY_STATUS__LISTEN", &listen),
            ("TALLY_STATUS__TOKEN", INTERNAL_TOKEN),
        ],
    );
    wait_endpoint(&mut run, port);
    let call = |args: &[&str], path: &str| -> u16 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(format!("http://{listen}{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    };
    let body = r#"{"account": "acme", "feature": "erase"}"#;
    let check = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    assert_eq!(call(&check, "/internal/check?partition=0"), 401);
    let wrong = "Authorization: Bearer internal-test-token-0123456780";
    let mut with_wrong = check.to_vec();
    with_wrong.extend(["-H", wrong]);
    assert_eq!(call(&with_wrong, "/internal/check?partition=0"), 401);
    assert_eq!(call(&[], "/internal/answers/0/0?wait_ms=0"), 401);
    let right = format!("Authorization: Bearer {INTERNAL_TOKEN}");
    let mut with_right = check.to_vec();
    with_right.extend(["-H", &right]);
    let status = call(&with_right, "/internal/check?partition=0");
    assert!(
        [200, 421, 503].contains(&status),
        "with the token: {status}"
    );
    // The public routes need none.
    assert_eq!(call(&[], "/healthz"), 200);
    run.terminate("tally run");

    // Beyond loopback without a token: refused at start-up, naming the setting.
    let wide = format!("0.0.0.0:{}", free_port());
    let err = fails_to_start(&d, &["run"], &[("TALLY_STATUS__LISTEN", &wide)]);
    assert!(
        err.contains("status.listen") && err.contains("TALLY_STATUS__TOKEN"),
        "{err}"
    );
}

/// Point 8: dates past any calendar are a 400 naming the parameter, never a panic; the
/// server goes on answering.
#[test]
fn a_date_past_any_calendar_is_a_400_not_a_panic() {
    let d = Deployment::new(1);
    let server = Server::start(&d, &[]);
    for (path, parameter) in [
        (
            "/v1/reports/monthly?from=2026-01-01&to=%2B262142-12-31",
            "to",
        ),
        (
            "/v1/reports/monthly?from=%2B262142-12-31&to=%2B262142-12-31",
            "from",
        ),
        ("/v1/reports/monthly?month=%2B262142-12", "month"),
        ("/v1/reports/daily?from=2026-01-01&to=%2B262142-12-31", "to"),
        ("/v1/reports/daily?from=-262143-01-01&to=2026-01-01", "from"),
        ("/v1/accounts/acme/ledger?from=%2B262142-01-01", "from"),
        ("/v1/accounts/acme/balance?at=%2B262142-01-01", "at"),
    ] {
        let answer = server.get(path, Some(ADMIN_KEY));
        assert_eq!(
            answer.status, 400,
            "{path}: {} {}",
            answer.status, answer.body
        );
        assert_eq!(
            answer.json()["parameter"],
            parameter,
            "{path}: {}",
            answer.body
        );
    }
    assert_eq!(server.get("/healthz", None).status, 200);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Point 8: key lines are strict and never print a token; a password in the config file
/// is refused; ClickHouse's error text never reaches an account key.
#[test]
fn keys_secrets_and_errors_are_not_echoed() {
    let d = Deployment::new(1);
    // `account:a=b=TOKEN` would scope account `a` with the token `b=TOKEN`.
    let err = fails_to_start(
        &d,
        &["serve"],
        &[
            ("TALLY_SERVE__KEYS", "account:a=b=acme-key-0123456789abcdef"),
            ("TALLY_SERVE__LISTEN", &format!("127.0.0.1:{}", free_port())),
        ],
    );
    assert!(err.contains("key 1"), "{err}");
    // A swapped line: refused, and the token is not in the message.
    let err = fails_to_start(
        &d,
        &["serve"],
        &[
            ("TALLY_SERVE__KEYS", "swapped-secret-token-0123456789=admin"),
            ("TALLY_SERVE__LISTEN", &format!("127.0.0.1:{}", free_port())),
        ],
    );
    assert!(
        !err.contains("swapped-secret-token"),
        "the token was printed: {err}"
    );

    // A password written in the config file: refused, naming the key, not printing it.
    let dir = std::env::temp_dir().join(format!("{}-config", d.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tally.toml");
    std::fs::write(&file, "[clickhouse]\npassword = \"hunter2-in-the-file\"\n").expect("writes");
    let file = file.display().to_string();
    let err = fails_to_start(&d, &["plans"], &[("TALLY_CONFIG", &file)]);
    assert!(err.contains("clickhouse.password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // A store that fails: the account key learns it is unavailable, not ClickHouse's text.
    let missing = format!("{}_missing", d.database);
    let server = Server::start(&d, &[("TALLY_CLICKHOUSE__DATABASE", &missing)]);
    for path in ["/v1/accounts/acme/balance", "/v1/accounts/acme/alerts"] {
        let answer = server.get(path, Some(ACME_KEY));
        assert_eq!(answer.status, 503, "{path}: {}", answer.body);
        for leak in [missing.as_str(), "DB::Exception", "Code:", "8123"] {
            assert!(
                !answer.body.contains(leak),
                "{path} leaked {leak}: {}",
                answer.body
            );
        }
    }
    let ready = server.get("/readyz", None);
    assert_eq!(ready.status, 503);
    assert!(!ready.body.contains(&missing), "{}", ready.body);
}
