//! Low-credit emails against a real SMTP server: each test starts its own maildev (so it
//! can stop and start it) and its own ClickHouse database, and reads the captured mail back
//! through maildev's REST API.

mod common;

use std::process::Command;
use std::time::Duration;

use common::maildev::{curl, eventually, root, MailDev};

use chrono::{TimeZone, Utc};
use serde_json::Value;
use tally::config::Config;
use tally::notify::templates::{amount, escape};
use tally::notify::{Alert, AlertKind, Notifier, NotifierHandle};
use tally_core::Credits;

/// A fresh ClickHouse database with tally's schema, and a runtime for the notifier.
struct Env {
    config: Config,
    database: String,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn new(maildev: &MailDev, overrides: &[(&str, &str)]) -> Env {
        let database = format!("tally_alerts_{:016x}", rand::random::<u64>());
        let mut env: Vec<(String, String)> = vec![
            ("TALLY_CLICKHOUSE__DATABASE".into(), database.clone()),
            ("TALLY_SMTP__HOST".into(), "127.0.0.1".into()),
            ("TALLY_SMTP__PORT".into(), maildev.smtp.to_string()),
        ];
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let (config, _) =
            Config::load(&root().join("config/tally.toml"), env).expect("config loads");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = tally::store::server_client(&config.clickhouse);
        rt.block_on(tally::store::schema::migrate(&server, &database))
            .expect("migrate");
        Env {
            config,
            database,
            rt,
        }
    }

    fn notifier(&self) -> NotifierHandle {
        Notifier::spawn_on(
            self.rt.handle(),
            &self.config.smtp,
            &self.config.notify,
            tally::store::client(&self.config.clickhouse),
        )
        .expect("notifier starts")
    }

    fn stop(&self, notifier: NotifierHandle) -> tally::notify::ShutdownReport {
        self.rt.block_on(notifier.shutdown(Duration::from_secs(10)))
    }

    /// Every alert row (newest version), keyed by nothing: in id order.
    fn rows(&self) -> Vec<Value> {
        let body = curl(&[
            &format!("http://127.0.0.1:8123/?database={}", self.database),
            "--data-binary",
            "SELECT alert_id, account, status, attempts, error, sent_in, digest_of, recipients \
             FROM alerts FINAL ORDER BY alert_id FORMAT JSONEachRow",
        ])
        .expect("ClickHouse answers");
        body.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON row"))
            .collect()
    }

    /// `tally --json alerts ACCOUNT`, through the binary.
    fn cli_alerts(&self, account: &str) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["--json", "alerts", account])
            .env("TALLY_CONFIG", root().join("config/tally.toml"))
            .env("TALLY_CLICKHOUSE__DATABASE", &self.database)
            .output()
            .expect("tally runs");
        assert!(
            out.status.success(),
            "tally alerts failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match serde_json::from_slice(&out.stdout).expect("JSON") {
            Value::Array(rows) => rows,
            other => panic!("not an array: {other}"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = curl(&[
                "http://127.0.0.1:8123/",
                "--data-binary",
                &format!("DROP DATABASE IF EXISTS {}", self.database),
            ]);
        }
    }
}

fn alert(id: &str, account: &str, locale: &str, recipients: &[&str]) -> Alert {
    Alert {
        id: id.into(),
        account: account.into(),
        pool: "ai".into(),
        kind: AlertKind::LowBalance,
        threshold: Credits::from_whole(500),
        balance: Credits::from_milli(120_500),
        time: Utc
            .with_ymd_and_hms(2026, 11, 20, 9, 15, 2)
            .single()
            .unwrap_or_default(),
        locale: locale.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        top_features: vec![
            ("image_generation".into(), Credits::from_whole(2500)),
            ("video_generation".into(), Credits::from_whole(700)),
        ],
        top_users: vec![("kim@acme.kr".into(), Credits::from_whole(900))],
        runway: None,
        advice: None,
    }
}

fn text(mail: &Value, key: &str) -> String {
    mail[key].as_str().unwrap_or_default().to_string()
}

fn addresses(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["address"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn mail_to<'a>(mails: &'a [Value], address: &str) -> &'a Value {
    mails
        .iter()
        .find(|m| addresses(&m["to"]).iter().any(|a| a == address))
        .unwrap_or_else(|| panic!("no mail to {address}: {mails:?}"))
}

fn row<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["alert_id"] == id)
        .unwrap_or_else(|| panic!("no row {id}: {rows:?}"))
}

#[test]
fn english_and_korean_mails_carry_everything_and_no_injected_header() {
    let maildev = MailDev::start();
    let env = Env::new(&maildev, &[]);
    let notifier = env.notifier();
    let mut evil = alert(
        "evil-1",
        "evil\r\nBcc: evil@x.com",
        "en",
        &["victim@acme.kr", "nobody\r\nBcc: evil@x.com"],
    );
    evil.top_features = vec![("img\r\nBcc: evil@x.com".into(), Credits::from_whole(3))];
    notifier
        .submit(vec![
            alert("en-1", "acme", "en", &["ops@acme.kr"]),
            alert("ko-1", "globex-kr", "ko", &["admin@globex.kr"]),
            evil,
            alert("none-1", "nobody-corp", "en", &["not an address"]),
        ])
        .expect("accepted");
    let mails = maildev.wait_for(3);
    let report = env.stop(notifier);
    assert_eq!(report.sent, 3, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");

    let n = &env.config.notify;
    for (to, account, locale, subject, purchase) in [
        (
            "ops@acme.kr",
            "acme",
            "en",
            "[tally] acme: ai credits are low, 120.5 left (threshold 500)",
            &n.purchase_text_en,
        ),
        (
            "admin@globex.kr",
            "globex-kr",
            "ko",
            "[tally] globex-kr: ai 크레딧 잔액 부족, 120.5 남음 (기준 500)",
            &n.purchase_text_ko,
        ),
    ] {
        let mail = mail_to(&mails, to);
        assert_eq!(text(mail, "subject"), subject);
        assert_eq!(text(&mail["headers"], "subject"), subject);
        assert_eq!(addresses(&mail["from"]), ["alerts@tally.local"]);
        assert_eq!(addresses(&mail["to"]), [to]);
        assert_eq!(addresses(&mail["envelope"]["to"]), [to]);
        let (plain, html) = (text(mail, "text"), text(mail, "html"));
        for needle in [
            account,
            "ai",
            "120.5",
            "500",
            "image_generation",
            &amount(Credits::from_whole(2500)),
            "kim@acme.kr",
            "900",
            &n.purchase_url,
        ] {
            assert!(
                plain.contains(needle),
                "{locale} text lacks {needle}: {plain}"
            );
            assert!(
                html.contains(needle),
                "{locale} HTML lacks {needle}: {html}"
            );
        }
        assert!(plain.contains(purchase.as_str()), "{plain}");
        assert!(html.contains(&escape(purchase)), "{html}");
        assert!(html.contains(&format!("<html lang=\"{locale}\">")));
    }

    // The injected CRLF stayed inside the values: no Bcc header, no extra recipient.
    let evil = mail_to(&mails, "victim@acme.kr");
    for mail in &mails {
        assert!(mail["headers"].get("bcc").is_none(), "{mail}");
        assert_eq!(mail["calculatedBcc"].as_array().map(Vec::len), Some(0));
        assert!(!addresses(&mail["envelope"]["to"]).contains(&"evil@x.com".to_string()));
    }
    assert_eq!(addresses(&evil["envelope"]["to"]), ["victim@acme.kr"]);
    let headers = evil["headers"].as_object().expect("headers");
    let names: Vec<&str> = headers.keys().map(String::as_str).collect();
    assert!(
        names.iter().all(|h| [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type"
        ]
        .contains(h)),
        "unexpected headers: {names:?}"
    );
    assert!(text(evil, "subject").starts_with("[tally] evil  Bcc: evil@x.com: ai credits"));
    assert!(text(evil, "text").contains("img  Bcc: evil@x.com: 3"));

    let rows = env.rows();
    for id in ["en-1", "ko-1", "evil-1"] {
        assert_eq!(row(&rows, id)["status"], "sent");
        assert_eq!(row(&rows, id)["attempts"], 1);
    }
    assert!(
        text(row(&rows, "evil-1"), "error").contains("skipped"),
        "the invalid recipient is noted: {rows:?}"
    );
    let none = row(&rows, "none-1");
    assert_eq!(none["status"], "failed");
    assert!(text(none, "error").contains("no valid recipient"), "{none}");
}

#[test]
fn a_burst_of_100_sends_the_limit_plus_one_digest_and_loses_nothing() {
    let maildev = MailDev::start();
    // 3 an account per 15 s: the allowance refills one email every 5 s, so the digest
    // comes soon after the burst.
    let env = Env::new(
        &maildev,
        &[
            ("TALLY_NOTIFY__PER_ACCOUNT", "3"),
            ("TALLY_NOTIFY__PER_ACCOUNT_PERIOD", "15s"),
        ],
    );
    let notifier = env.notifier();
    let account = "acme-burst";
    let alerts: Vec<Alert> = (0..100)
        .map(|i| {
            let mut a = alert(&format!("burst-{i:03}"), account, "en", &["ops@acme.kr"]);
            a.balance = Credits::from_whole(499 - i);
            a
        })
        .collect();
    notifier.submit(alerts).expect("accepted");

    // Every alert is eventually sent, or held back and then carried by a sent email.
    let rows = eventually("all 100 alerts delivered", || {
        let rows = env.rows();
        let done = rows.len() == 100
            && rows.iter().all(|r| {
                r["status"] == "sent" || (r["status"] == "suppressed" && r["sent_in"] != "")
            });
        done.then_some(rows)
    });
    let mails = maildev.wait_for(4);
    let report = env.stop(notifier);
    assert!(mails.len() <= 4, "{} emails for one account", mails.len());
    assert_eq!(report.sent, 4, "{report:?}");

    let sent: Vec<&Value> = rows.iter().filter(|r| r["status"] == "sent").collect();
    assert_eq!(sent.len(), 4, "{rows:?}");
    let mut carried = 0;
    for r in rows.iter().filter(|r| r["status"] == "suppressed") {
        let carrier = row(&rows, r["sent_in"].as_str().unwrap_or_default());
        assert_eq!(carrier["status"], "sent");
        assert!(
            carrier["digest_of"]
                .as_array()
                .is_some_and(|d| d.contains(&r["alert_id"])),
            "{carrier}"
        );
        carried += 1;
    }
    assert_eq!(carried, 96);
    let digest = mails
        .iter()
        .find(|m| text(m, "subject").ends_with("(+96 held-back alerts)"))
        .unwrap_or_else(|| panic!("no digest among {mails:?}"));
    assert!(text(digest, "text").contains("96 earlier alerts held back"));

    // The command line shows the same.
    let listed = env.cli_alerts(account);
    assert_eq!(listed.len(), 100);
    assert_eq!(listed.iter().filter(|a| a["status"] == "sent").count(), 4);
    assert!(listed
        .iter()
        .all(|a| a["kind"] == "low_balance" && a["recipients"][0] == "ops@acme.kr"));
}

#[test]
fn smtp_down_then_up_delivers_exactly_once() {
    let mut maildev = MailDev::start();
    maildev.stop();
    let env = Env::new(
        &maildev,
        &[
            ("TALLY_NOTIFY__INITIAL_BACKOFF", "200ms"),
            ("TALLY_NOTIFY__MAX_BACKOFF", "1s"),
            ("TALLY_NOTIFY__MAX_ATTEMPTS", "1000"),
        ],
    );
    let notifier = env.notifier();
    notifier
        .submit(vec![alert("down-1", "acme-down", "en", &["ops@acme.kr"])])
        .expect("accepted");
    let retrying = eventually("a failed attempt recorded", || {
        env.rows()
            .into_iter()
            .find(|r| r["status"] == "pending" && r["attempts"].as_u64() >= Some(1))
    });
    assert!(!text(&retrying, "error").is_empty(), "{retrying}");

    maildev.resume();
    let sent = eventually("the alert recorded as sent", || {
        env.rows().into_iter().find(|r| r["status"] == "sent")
    });
    let report = env.stop(notifier);
    assert!(sent["attempts"].as_u64() >= Some(2), "{sent}");
    let mails = maildev.wait_for(1);
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(addresses(&mails[0]["to"]), ["ops@acme.kr"]);
    assert_eq!(report.sent, 1);
    assert_eq!(report.left_pending, 0);
}

#[test]
fn alerts_left_pending_by_a_crash_are_sent_once_at_start() {
    let maildev = MailDev::start();
    let env = Env::new(&maildev, &[]);
    // What a process that crashed after recording the alert leaves behind.
    let now = u32::try_from(Utc::now().timestamp()).unwrap_or_default();
    let left = tally::store::alerts::AlertRow {
        alert_id: "crash-1".into(),
        account: "acme-crash".into(),
        pool: "ai".into(),
        kind: "shortfall".into(),
        threshold: 0,
        balance: -3_000,
        time: now,
        locale: "ko".into(),
        recipients: vec!["ops@acme.kr".into()],
        top_features: vec!["erase".into()],
        top_feature_credits: vec![7_000],
        top_users: vec!["kim@acme.kr".into()],
        top_user_credits: vec![7_000],
        status: "pending".into(),
        attempts: 1,
        error: String::new(),
        digest_of: Vec::new(),
        sent_in: String::new(),
        created_at: now,
        sent_at: 0,
        updated_at: now,
        version: 1,
    };
    let client = tally::store::client(&env.config.clickhouse);
    env.rt
        .block_on(tally::store::alerts::write(&client, &[left]))
        .expect("row written");

    let notifier = env.notifier();
    let mails = maildev.wait_for(1);
    assert!(
        text(&mails[0], "subject").contains("크레딧 소진"),
        "{}",
        mails[0]
    );
    assert!(text(&mails[0], "text").contains("erase: 7"));
    // The core deciding the same alert again (a replay) does not send it again.
    let mut again = alert("crash-1", "acme-crash", "ko", &["ops@acme.kr"]);
    again.kind = AlertKind::Shortfall;
    let sent = eventually("the recovered alert recorded as sent", || {
        env.rows().into_iter().find(|r| r["status"] == "sent")
    });
    notifier.submit(vec![again]).expect("accepted");
    let report = env.stop(notifier);
    assert_eq!(sent["attempts"], 2);
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(maildev.raw_emails().map(|m| m.len()), Some(1));
}
