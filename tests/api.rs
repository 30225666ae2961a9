//! `tally serve`'s read API against the real stack: every body equals the matching CLI
//! `--json` output, the ledger pages with a cursor, CSV, OpenAPI, 400s naming the
//! parameter, 401 without a valid key, and account keys that can never read another
//! account. Ingest: valid events are produced and then applied by `tally run`, invalid
//! ones answered with their reason and never produced.

mod common;

use chrono::TimeDelta;
use common::server::{Server, ACME_KEY, ADMIN_KEY, GLOBEX_KEY};
use common::{grant, hours_ago, rfc3339, usage, Deployment};
use serde_json::{json, Value};

/// Two accounts with grants, calls by two services and users, one failed call.
fn seed(d: &Deployment) {
    let start = hours_ago(6);
    let mut events = vec![
        grant(
            "g-acme-plan",
            "acme",
            start,
            json!({"kind": "included", "credits": 100,
              "expires_at": rfc3339(start + TimeDelta::days(20))}),
        ),
        grant(
            "g-acme-pack",
            "acme",
            start,
            json!({"kind": "purchased", "credits": 2500,
              "valid_days": 360, "payment": {"method": "card", "reference": "inv-1"}}),
        ),
        grant(
            "g-globex",
            "globex",
            start,
            json!({"kind": "promotional", "credits": 50}),
        ),
    ];
    for i in 0..12 {
        let (account, service, user) = match i % 3 {
            0 => ("acme", "image-studio", "kim@acme.kr"),
            1 => ("acme", "brand-scan", "lee@acme.kr"),
            _ => ("globex", "image-studio", "ops@globex.com"),
        };
        let mut data = json!({"user": user, "feature": "image_generation", "variant": "mid"});
        if i == 4 {
            data["status"] = json!("failed");
        }
        let mut event = usage(
            &format!("u{i}"),
            account,
            start + TimeDelta::minutes(i),
            data,
        );
        event["source"] = json!(service);
        events.push(event);
    }
    d.send(&events);
    d.drain();
}

/// `tally --json args` exactly as printed.
fn cli(d: &Deployment, args: &[&str]) -> String {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    d.tally_ok(&all)
}

#[test]
fn api_bodies_equal_cli_json_and_keys_are_scoped() {
    let d = Deployment::new(2);
    seed(&d);
    let server = Server::start(&d, &[]);
    let day = hours_ago(6).date_naive();
    let (from, to) = (
        (day - TimeDelta::days(1)).to_string(),
        (day + TimeDelta::days(1)).to_string(),
    );
    let month = day.format("%Y-%m").to_string();
    let at = rfc3339(hours_ago(0) + TimeDelta::minutes(1));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("/v1/accounts/acme/balance?at={at}"),
            vec!["balance", "acme", "--at", &at],
        ),
        ("/v1/accounts/acme/ledger".into(), vec!["ledger", "acme"]),
        ("/v1/accounts/acme/history".into(), vec!["history", "acme"]),
        (
            "/v1/accounts/acme/history?purchases=true".into(),
            vec!["history", "acme", "--purchases"],
        ),
        ("/v1/accounts/acme/alerts".into(), vec!["alerts", "acme"]),
        (
            format!("/v1/reports/daily?from={from}&to={to}"),
            vec!["report", "daily", "--from", &from, "--to", &to],
        ),
        (
            format!("/v1/reports/daily?from={from}&to={to}&by=service&by=user&account=acme"),
            vec![
                "report",
                "daily",
                "--from",
                &from,
                "--to",
                &to,
                "--by",
                "service",
                "--by",
                "user",
                "--account",
                "acme",
            ],
        ),
        (
            format!("/v1/reports/monthly?month={month}"),
            vec!["report", "monthly", "--month", &month],
        ),
        (
            format!("/v1/reports/monthly?from={from}&to={to}&account=globex"),
            vec![
                "report",
                "monthly",
                "--from",
                &from,
                "--to",
                &to,
                "--account",
                "globex",
            ],
        ),
        ("/v1/matrix".into(), vec!["matrix"]),
        ("/v1/plans".into(), vec!["plans"]),
    ];
    for (path, args) in &cases {
        let answer = server.get(path, Some(ADMIN_KEY));
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(
            answer.body,
            cli(&d, args),
            "{path} differs from tally {args:?}"
        );
    }
    let ledger = server
        .get("/v1/accounts/acme/ledger", Some(ADMIN_KEY))
        .json();
    assert_eq!(
        ledger.as_array().map(Vec::len),
        Some(10),
        "2 grants and 8 calls"
    );

    // Cursor pagination: pages of 3 put together are the whole ledger.
    let mut pages: Vec<Value> = Vec::new();
    let mut path = "/v1/accounts/acme/ledger?limit=3".to_string();
    for _ in 0..10 {
        let answer = server.get(&path, Some(ADMIN_KEY));
        assert_eq!(answer.status, 200, "{}", answer.body);
        pages.extend(answer.json().as_array().cloned().unwrap_or_default());
        match answer.header("x-next-cursor") {
            Some(cursor) => path = format!("/v1/accounts/acme/ledger?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(Value::Array(pages), ledger);

    // CSV: the table's columns.
    let csv = server.get_with(
        &format!("/v1/reports/daily?from={from}&to={to}&by=service"),
        Some(ADMIN_KEY),
        &["-H", "Accept: text/csv"],
    );
    assert_eq!(csv.status, 200);
    assert!(csv
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/csv"));
    assert!(
        csv.body
            .starts_with("day,account,service,calls,failed,credits,flex,shortfall\r\n"),
        "{}",
        csv.body
    );
    let rows = server
        .get(
            &format!("/v1/reports/daily?from={from}&to={to}&by=service"),
            Some(ADMIN_KEY),
        )
        .json();
    let rows = rows.as_array().map(Vec::len).unwrap_or_default();
    assert!(rows >= 3, "acme's two services and globex's one");
    assert_eq!(csv.body.lines().count(), rows + 1, "{}", csv.body);
    let csv = server.get_with(
        "/v1/accounts/acme/ledger",
        Some(ADMIN_KEY),
        &["-H", "Accept: text/csv"],
    );
    assert_eq!(csv.body.lines().count(), 11, "{}", csv.body);

    // OpenAPI.
    let openapi = server.get("/v1/openapi.json", None).json();
    assert_eq!(openapi["openapi"], "3.0.3");
    for p in [
        "/v1/accounts/{account}/balance",
        "/v1/accounts/{account}/ledger",
        "/v1/reports/daily",
        "/v1/reports/monthly",
        "/v1/events",
        "/v1/matrix",
        "/v1/plans",
    ] {
        assert!(openapi["paths"][p].is_object(), "openapi lacks {p}");
    }

    // 400 naming the parameter.
    for (path, param) in [
        ("/v1/reports/daily?to=2026-11-20".to_string(), "from"),
        (format!("/v1/reports/daily?from=2026-11-31&to={to}"), "from"),
        (
            format!("/v1/reports/daily?from={from}&to={to}&by=planet"),
            "by",
        ),
        (format!("/v1/reports/daily?from={to}&to={from}"), "to"),
        ("/v1/reports/monthly?month=2026-13".to_string(), "month"),
        ("/v1/reports/monthly".to_string(), "month"),
        (
            "/v1/reports/monthly?month=2026-11&from=2026-11-01".to_string(),
            "month",
        ),
        ("/v1/accounts/acme/ledger?limit=0".to_string(), "limit"),
        ("/v1/accounts/acme/ledger?cursor=zz".to_string(), "cursor"),
        (
            "/v1/accounts/acme/ledger?from=yesterday".to_string(),
            "from",
        ),
        ("/v1/accounts/acme/balance?at=now".to_string(), "at"),
        ("/v1/accounts/acme/balance?colour=red".to_string(), "colour"),
        (
            "/v1/accounts/acme/history?purchases=maybe".to_string(),
            "purchases",
        ),
    ] {
        let answer = server.get(&path, Some(ADMIN_KEY));
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.json()["parameter"], param, "{path}: {}", answer.body);
    }

    // 401 without a valid key, on every API path.
    for path in [
        "/v1/accounts/acme/balance",
        "/v1/reports/daily?from=2026-11-01&to=2026-11-02",
        "/v1/matrix",
        "/v1/accounts",
    ] {
        for key in [None, Some("wrong-key-0123456789abcdef"), Some("")] {
            let answer = server.get(path, key);
            assert_eq!(answer.status, 401, "{path} with {key:?}: {}", answer.body);
            assert_eq!(answer.header("www-authenticate").as_deref(), Some("Bearer"));
        }
    }
    let answer = server.get_with(
        "/v1/matrix",
        None,
        &["-H", &format!("Authorization: Basic {ADMIN_KEY}")],
    );
    assert_eq!(answer.status, 401);

    // An account key reads its own account ...
    let own = server.get(
        &format!("/v1/accounts/acme/balance?at={at}"),
        Some(ACME_KEY),
    );
    assert_eq!(own.status, 200);
    assert_eq!(own.body, cli(&d, &["balance", "acme", "--at", &at]));
    assert_eq!(
        server.get("/v1/accounts", Some(ACME_KEY)).json(),
        json!(["acme"])
    );
    assert_eq!(
        server.get("/v1/accounts", Some(ADMIN_KEY)).json(),
        json!(["acme", "globex"])
    );
    // ... and reports default to it ...
    let daily = server.get(
        &format!("/v1/reports/daily?from={from}&to={to}"),
        Some(ACME_KEY),
    );
    assert_eq!(daily.status, 200);
    assert_eq!(
        daily.body,
        cli(
            &d,
            &[
                "report",
                "daily",
                "--from",
                &from,
                "--to",
                &to,
                "--account",
                "acme"
            ]
        )
    );
    // ... but never another account's, however asked.
    for (key, other) in [(ACME_KEY, "globex"), (GLOBEX_KEY, "acme")] {
        for path in [
            format!("/v1/accounts/{other}/balance"),
            format!("/v1/accounts/{other}/ledger"),
            format!("/v1/accounts/{other}/ledger?limit=1"),
            format!("/v1/accounts/{other}/history"),
            format!("/v1/accounts/{other}/history?purchases=true"),
            format!("/v1/accounts/{other}/alerts"),
            format!("/v1/accounts/{}/balance", other.to_uppercase()),
            format!("/v1/accounts/x%2F..%2F{other}/balance"),
            format!("/v1/reports/daily?from={from}&to={to}&account={other}"),
            format!("/v1/reports/monthly?month={month}&account={other}"),
        ] {
            let answer = server.get(&path, Some(key));
            assert_eq!(answer.status, 403, "{path}: {}", answer.body);
            assert!(
                !answer.body.contains("image_generation"),
                "{path} leaked: {}",
                answer.body
            );
        }
    }
    let ingest = server.post("/v1/events", ACME_KEY, "application/cloudevents+json", "{}");
    assert_eq!(ingest.status, 403, "account keys do not ingest");

    // Metrics count requests by route and status.
    let metrics = server.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(r#"tally_http_requests_total{method="GET",route="/v1/accounts/{account}/balance",status="403"}"#),
        "{}",
        metrics.body
    );
    assert_eq!(server.get("/readyz", None).status, 200);
    let log = server.stop();
    for key in [ADMIN_KEY, ACME_KEY, GLOBEX_KEY] {
        assert!(!log.contains(key), "a key was logged: {log}");
    }
}

#[test]
fn ingest_produces_valid_events_and_answers_invalid_ones_with_their_reason() {
    let d = Deployment::new(2);
    let server = Server::start(
        &d,
        &[
            ("TALLY_SERVE__MAX_BATCH", "5"),
            ("TALLY_SERVE__MAX_BODY_BYTES", "4096"),
        ],
    );
    let at = hours_ago(1);
    let pack = grant(
        "h-pack",
        "acme",
        at,
        json!({"kind": "purchased", "credits": 100}),
    );
    let call = |id: &str, feature: &str| {
        usage(
            id,
            "acme",
            at + TimeDelta::minutes(1),
            json!({"user": "kim@acme.kr", "feature": feature}),
        )
    };
    let no_subject = json!({"specversion": "1.0", "type": "ai.usage", "id": "h-nosub",
                            "source": "s", "data": {"user": "u", "feature": "erase"}});
    let future = usage(
        "h-future",
        "acme",
        hours_ago(-2),
        json!({"user": "u", "feature": "erase"}),
    );
    let batch = json!([
        pack,
        call("h-1", "erase"),
        call("h-2", "teleport"),
        no_subject,
        future
    ]);
    let answer = server.post(
        "/v1/events",
        ADMIN_KEY,
        "application/cloudevents-batch+json",
        &batch.to_string(),
    );
    assert_eq!(answer.status, 207, "{}", answer.body);
    let body = answer.json();
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(2), json!(3)),
        "{body}"
    );
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[0]["topic"], d.commands_topic.as_str());
    assert_eq!(results[1]["topic"], d.usage_topic.as_str());
    assert_eq!(results[2]["code"], "unknown_feature", "{body}");
    assert!(results[2]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("teleport"));
    assert_eq!(results[3]["code"], "no_subject");
    assert_eq!(results[4]["code"], "time_in_future");

    // One event, as application/cloudevents+json.
    let one = server.post(
        "/v1/events",
        ADMIN_KEY,
        "application/cloudevents+json",
        &call("h-3", "text_to_image").to_string(),
    );
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.json()["results"][0]["status"], "accepted");
    let bad = server.post(
        "/v1/events",
        ADMIN_KEY,
        "application/cloudevents+json",
        "{\"specversion\": \"1.0\"",
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["results"][0]["code"], "not_json");
    let tick = json!({"specversion": "1.0", "type": "tally.tick", "id": "t", "source": "s"});
    assert_eq!(
        server
            .post(
                "/v1/events",
                ADMIN_KEY,
                "application/cloudevents+json",
                &tick.to_string()
            )
            .status,
        400
    );

    // Limits and content types.
    let six = Value::Array((0..6).map(|i| call(&format!("h-x{i}"), "erase")).collect());
    assert_eq!(
        server
            .post(
                "/v1/events",
                ADMIN_KEY,
                "application/cloudevents-batch+json",
                &six.to_string()
            )
            .status,
        413
    );
    let big = format!("[{}]", " ".repeat(5000));
    assert_eq!(
        server
            .post(
                "/v1/events",
                ADMIN_KEY,
                "application/cloudevents-batch+json",
                &big
            )
            .status,
        413
    );
    assert_eq!(
        server
            .post("/v1/events", ADMIN_KEY, "text/plain", "{}")
            .status,
        415
    );
    assert_eq!(
        server
            .post(
                "/v1/events",
                ADMIN_KEY,
                "application/cloudevents-batch+json",
                "{}"
            )
            .status,
        400
    );
    let metrics = server.get("/metrics", None).body;
    assert!(
        metrics.contains(r#"tally_ingest_rejected_total{reason="unknown_feature"} 1"#),
        "{metrics}"
    );

    // What was accepted is applied; nothing rejected was produced.
    let summary = d.drain();
    assert_eq!(summary["applied"], 3, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
    let ledger = d.ledger("acme");
    let ids: Vec<&str> = ledger
        .iter()
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    assert_eq!(ids, ["h-pack", "h-1", "h-3"], "{ledger:?}");
    let balance = d.balance("acme");
    assert_eq!(
        balance["pools"]["ai"]["available"], 85,
        "100 - erase 7 - text_to_image 8"
    );
}
