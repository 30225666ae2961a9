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
