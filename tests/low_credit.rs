//! Low-credit emails end to end: calls through Kafka take a balance below the account's
//! limit, `tally run` decides the alert in the core, records it and mails the admins
//! through a real SMTP server; running again sends nothing twice.

mod common;

use common::maildev::MailDev;
use common::{grant, hours_ago, usage, Deployment};
use serde_json::{json, Value};

fn text(mail: &Value, key: &str) -> String {
    mail[key].as_str().unwrap_or_default().to_string()
}

#[test]
fn crossing_the_limit_mails_the_admins_once() {
    let d = Deployment::new(2);
    let mail = MailDev::start();
    let port = mail.smtp.to_string();
    let smtp = [
        ("TALLY_SMTP__PORT", port.as_str()),
        ("TALLY_SMTP__HOST", "127.0.0.1"),
    ];
    let at = hours_ago(3);
    d.send(&[
        json!({"specversion": "1.0", "type": "account.settings", "id": "s1", "source": "billing",
               "subject": "acme", "time": common::rfc3339(at),
               "data": {"admins": ["ops@acme.example"], "locale": "ko",
                        "alerts": {"low_balance": 50}}}),
        grant(
            "g1",
            "acme",
            at,
            json!({"kind": "purchased", "credits": 60}),
        ),
        usage(
            "u1",
            "acme",
            hours_ago(2),
            json!({"user": "kim@acme.kr", "feature": "text_to_image"}),
        ),
        usage(
            "u2",
            "acme",
            hours_ago(1),
            json!({"user": "lee@acme.kr", "feature": "erase"}),
        ),
    ]);
    d.drain_with(&smtp);
    // 60 - 8 = 52 is above the limit; 52 - 7 = 45 is below: one alert.
    let mails = mail.wait_for(1);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    let to: Vec<&str> = m["to"]
        .as_array()
        .map(|list| list.iter().filter_map(|a| a["address"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(to, ["ops@acme.example"]);
    let subject = text(m, "subject");
    assert!(subject.contains("acme"), "{subject}");
    let body = text(m, "text");
    for needle in ["acme", "ai", "45", "50", "text_to_image", "kim@acme.kr"] {
        assert!(body.contains(needle), "`{needle}` missing from: {body}");
    }
    // The runway by hand: 15 used in the last 7 days is 2.142 a day (thousandths, rounded
    // down); 45 last 45 x 7 / 15 = 21 days from the call. A month at that rate is 64.26
    // credits: the pro plan (100 a month, $10) beats a $25 pack.
    // From the alert's time as the email states it (the partition's clock: the call's
    // arrival).
    let stated = body
        .lines()
        .find_map(|l| l.strip_prefix("시각: "))
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S UTC").ok())
        .unwrap_or_else(|| panic!("no time in: {body}"))
        .and_utc();
    let out = (stated + chrono::TimeDelta::days(21))
        .format("%Y-%m-%d")
        .to_string();
    for needle in [
        format!("소진 예상: {out} (최근 7일 기준 하루 2.142 크레딧)"),
        "추천: 최근 사용 속도라면 한 달에 약 64.26 크레딧이 필요합니다".to_string(),
        "pro 요금제(월 100 크레딧)로 변경, 월 $10.00 추가".to_string(),
    ] {
        assert!(body.contains(&needle), "`{needle}` missing from: {body}");
    }
    let alerts = d.json(&["alerts", "acme"]);
    let rows = alerts.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{alerts}");
    assert_eq!(rows[0]["kind"], "low_balance", "{alerts}");
    assert_eq!(rows[0]["status"], "sent", "{alerts}");

    // More calls below the limit, and a second run over the same history: nothing new.
    d.send(&[usage(
        "u3",
        "acme",
        hours_ago(1),
        json!({"user": "lee@acme.kr", "feature": "erase"}),
    )]);
    d.drain_with(&smtp);
    let again = d.json(&["alerts", "acme"]);
    assert_eq!(again.as_array().map(Vec::len), Some(1), "{again}");
    assert_eq!(mail.raw_emails().map(|m| m.len()), Some(1));
}

/// Issue 26, point 4: a cycle's allowance emails the admins of an account that opted in
/// (`reset_email`), and nobody else.
#[test]
fn a_reset_email_goes_only_to_accounts_that_asked() {
    let d = Deployment::new(2);
    let mail = MailDev::start();
    let port = mail.smtp.to_string();
    let smtp = [
        ("TALLY_SMTP__PORT", port.as_str()),
        ("TALLY_SMTP__HOST", "127.0.0.1"),
    ];
    let at = hours_ago(3);
    let settings = |account: &str, data: Value| {
        json!({"specversion": "1.0", "type": "account.settings", "id": format!("s-{account}"),
               "source": "billing", "subject": account, "time": common::rfc3339(at), "data": data})
    };
    let plan = |account: &str| {
        json!({"specversion": "1.0", "type": "account.plan", "id": format!("p-{account}"),
               "source": "billing", "subject": account, "time": common::rfc3339(hours_ago(2)),
               "data": {"plan": "pro"}})
    };
    d.send(&[
        settings(
            "acme",
            json!({"admins": ["ops@acme.example"], "reset_email": true}),
        ),
        settings("beta", json!({"admins": ["ops@beta.example"]})),
        plan("acme"),
        plan("beta"),
    ]);
    d.drain_with(&smtp);
    let mails = mail.wait_for(1);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let subject = text(&mails[0], "subject");
    assert!(
        subject.contains("acme: the new cycle's 100 ai credits have arrived"),
        "{subject}"
    );
    let alerts = d.json(&["alerts", "acme"]);
    assert_eq!(alerts[0]["kind"], "reset", "{alerts}");
    assert_eq!(d.json(&["alerts", "beta"]), json!([]));
}
