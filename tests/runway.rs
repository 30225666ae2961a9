//! Runway through the real stack: calls in the last 30 days, drained by `tally run`, give
//! `tally balance` the burn of each window and the day the balance runs out. Figures by
//! hand.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{grant, rfc3339, usage, Deployment};
use serde_json::{json, Value};

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

#[test]
fn balance_shows_the_burn_of_7_and_30_days_and_when_credits_run_out() {
    let d = Deployment::new(1);
    // The balance is read at `at`, a whole second, so every figure is exact.
    let at = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let days_ago = |days: i64, minute: i64| at - TimeDelta::days(days) + TimeDelta::minutes(minute);
    let mut events = vec![grant(
        "g1",
        "acme",
        days_ago(20, 0),
        json!({"kind": "purchased", "credits": 1000, "expires_at": null}),
    )];
    // Ten days ago: 2 x 100; two days ago: 7 x 10.
    for i in 0..2 {
        events.push(usage(
            &format!("old{i}"),
            "acme",
            days_ago(10, i),
            json!({"user": "kim", "feature": "video_generation", "variant": "long"}),
        ));
    }
    for i in 0..7 {
        events.push(usage(
            &format!("new{i}"),
            "acme",
            days_ago(2, i),
            json!({"user": "kim", "feature": "image_generation", "variant": "mid"}),
        ));
    }
    d.send(&events);
    d.drain();
    let b = d.json(&["balance", "acme", "--at", &rfc3339(at)]);
    let ai = &b["pools"]["ai"];
    assert_eq!(ai["available"], 730, "{b}");
    let r7 = &ai["runway"]["last_7_days"];
    let r30 = &ai["runway"]["last_30_days"];
    // 70 in 7 days: 10 a day, 730 last 73 days.
    assert_eq!(
        (
            r7["days"].clone(),
            r7["used"].clone(),
            r7["per_day"].clone()
        ),
        (json!(7), json!(70), json!(10))
    );
    assert_eq!(time(&r7["runs_out_at"]), at + TimeDelta::days(73));
    // 270 in 30 days: 9 a day; 730 / 9 days = 7,008,000 s (81 days 2 h 40 min).
    assert_eq!(
        (r30["used"].clone(), r30["per_day"].clone()),
        (json!(270), json!(9))
    );
    assert_eq!(
        time(&r30["runs_out_at"]),
        at + TimeDelta::seconds(7_008_000)
    );
    // No plan: no reset to compare with.
    assert_eq!(r7["before_reset"], Value::Null);
    // A balance of before the calls burned nothing: it never runs out.
    let then = d.json(&["balance", "acme", "--at", &rfc3339(days_ago(15, 0))]);
    assert_eq!(
        then["pools"]["ai"]["runway"]["last_30_days"]["runs_out_at"],
        Value::Null,
        "{then}"
    );
    // 10 a day is 300 a month, and no plan: the shipped offers' cheapest cover is one pack
    // of 2,500 for $25 (enterprise, 500 a month, would be $45).
    let rec = &ai["recommendation"];
    assert_eq!(
        (
            rec["action"].clone(),
            rec["need"].clone(),
            rec["missing"].clone()
        ),
        (json!("buy_pack"), json!(300), json!(300)),
        "{b}"
    );
    assert_eq!(
        (
            rec["credits"].clone(),
            rec["count"].clone(),
            rec["price"].clone()
        ),
        (json!(2500), json!(1), json!(2500))
    );
    assert!(
        rec["text_en"]
            .as_str()
            .unwrap_or_default()
            .contains("1 pack(s) of 2500 credits for $25.00"),
        "{rec}"
    );
    assert!(
        rec["text_ko"]
            .as_str()
            .unwrap_or_default()
            .contains("2500 크레딧 충전 팩 1개"),
        "{rec}"
    );
    // The table says it too.
    let table = d.tally_ok(&["balance", "acme", "--at", &rfc3339(at)]);
    assert!(table.contains("10 / 9"), "{table}");
}
