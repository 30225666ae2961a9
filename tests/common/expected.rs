//! What tally must write for a workload, computed by the reference model of the credit
//! rules (`core/tests/reference`, written apart from the engine), so the integration tests
//! check tally against the rules and not against another run of tally.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::{Credits, LotKind, Rules};

use super::reference::{Data, GrantData, Input, Model, Outcome, UsageData};

/// The rules `tally run` uses in a test deployment: the shipped config with `env` on top.
pub fn rules(env: &[(String, String)]) -> Rules {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/tally.toml");
    let (_, rules) =
        tally::config::Config::load(&path, env.iter().cloned()).expect("the shipped config loads");
    rules
}

/// One ledger entry as the tests compare it: credits, who paid how much (lot id, in
/// thousandths) and shortfall.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Paid {
    pub credits: i64,
    pub paid: Vec<(String, i64)>,
    pub shortfall: i64,
}

/// The outcome the rules prescribe.
#[derive(Debug, Default)]
pub struct Expected {
    /// (account, event id, entry type) -> what the entry says.
    pub ledger: BTreeMap<(String, String, String), Paid>,
    /// (account, lot) -> remaining, in thousandths.
    pub lots: BTreeMap<(String, String), i64>,
    /// account -> flex used in the current period, in thousandths.
    pub flex: BTreeMap<String, i64>,
    /// account -> outstanding shortfall over all pools, in thousandths.
    pub shortfall: BTreeMap<String, i64>,
}

/// Runs `events` through the reference model in the order the rules give a backlog: by
/// event time, commands before usage at the same instant, and otherwise in the order they
/// were sent. Each account gets a model of its own (accounts share nothing but the clock,
/// which here is `arrival` for every event), which keeps the model's scans short.
pub fn expect(rules: &Rules, events: &[Value], arrival: DateTime<Utc>) -> Expected {
    let mut order: Vec<(DateTime<Utc>, bool, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (time(e), e["type"] == "ai.usage", i))
        .collect();
    order.sort();
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let mut out = Expected::default();
    for (_, _, i) in order {
        let input = input(&events[i]);
        let account = input
            .subject
            .clone()
            .expect("workload events have a subject");
        let model = models.entry(account).or_default();
        let step = model.process(rules, &input, arrival);
        assert!(step.due.is_empty(), "the workloads expire nothing");
        if let Outcome::Applied { entries, .. } = step.outcome {
            for entry in entries {
                let key = (
                    entry.account.to_string(),
                    entry.event_id.to_string(),
                    entry.entry_type.as_str().to_string(),
                );
                let paid = Paid {
                    credits: entry.credits.milli(),
                    paid: entry
                        .paid
                        .iter()
                        .map(|p| (p.lot.to_string(), p.credits.milli()))
                        .collect(),
                    shortfall: entry.shortfall.milli(),
                };
                out.ledger.insert(key, paid);
            }
        }
    }
    for (name, model) in &models {
        model
            .check_conservation()
            .expect("the reference model conserves credits");
        let account = &model.accounts[name];
        for lot in &account.lots {
            out.lots
                .insert((name.clone(), lot.id.clone()), lot.remaining.milli());
        }
        out.flex.insert(name.clone(), account.flex_used.milli());
        out.shortfall.insert(
            name.clone(),
            account.shortfall.values().map(|c| c.milli()).sum(),
        );
    }
    out
}

fn time(event: &Value) -> DateTime<Utc> {
    event["time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .expect("workload events have a time")
        .with_timezone(&Utc)
}

fn credits(value: &Value) -> Credits {
    match value {
        Value::Number(n) => n.to_string().parse().expect("credits"),
        Value::String(s) => s.parse().expect("credits"),
        other => panic!("not credits: {other}"),
    }
}

fn optional_time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().map(|t| {
        DateTime::parse_from_rfc3339(t)
            .expect("a time")
            .with_timezone(&Utc)
    })
}

/// The typed input of a workload event (grants and usage; the workloads send nothing
/// else).
fn input(event: &Value) -> Input {
    let data = &event["data"];
    let text = |key: &str| data[key].as_str().map(str::to_string);
    let body = match event["type"].as_str() {
        Some("ai.usage") => Data::Usage(UsageData {
            user: text("user").unwrap_or_default(),
            feature: text("feature").expect("a feature"),
            variant: text("variant"),
            quantity: data.get("quantity").map(credits),
            status: match data["status"].as_str() {
                None => None,
                Some("succeeded") => Some(tally_core::event::Status::Succeeded),
                Some("failed") => Some(tally_core::event::Status::Failed),
                Some(other) => panic!("status {other}"),
            },
            // The workloads place no holds.
            hold: None,
        }),
        Some("credit.grant") => Data::Grant(GrantData {
            lot: text("lot"),
            pool: text("pool"),
            kind: match data["kind"].as_str() {
                Some("included") => LotKind::Included,
                Some("purchased") => LotKind::Purchased,
                Some("promotional") => LotKind::Promotional,
                other => panic!("kind {other:?}"),
            },
            credits: credits(&data["credits"]),
            effective_at: optional_time(&data["effective_at"]),
            expires_at: data.get("expires_at").map(optional_time),
            valid_days: data["valid_days"].as_u64().map(|d| d as u32),
            priority: data["priority"].as_i64().map(|p| p as i32),
            payment: None,
            comment: text("comment"),
        }),
        other => panic!("the workloads send no {other:?}"),
    };
    Input {
        ty: event["type"].as_str().expect("a type").to_string(),
        id: event["id"].as_str().expect("an id").to_string(),
        source: event["source"].as_str().expect("a source").to_string(),
        subject: event["subject"].as_str().map(str::to_string),
        time: Some(time(event)),
        data: body,
    }
}

/// Asserts that the deployment's ledger and lots are what the rules prescribe: every
/// ledger entry with its credits, payers and shortfall, and every lot's remaining credits.
pub fn assert_matches(d: &super::Deployment, expected: &Expected, what: &str) {
    let ledger = d.sql(
        "SELECT account, event_id, entry_type, credits, paid_lots, paid_credits, shortfall \
         FROM ledger FINAL FORMAT JSONEachRow",
    );
    let mut got = BTreeMap::new();
    for line in ledger.lines() {
        let row: Value = serde_json::from_str(line).expect("a JSON row");
        let number = |v: &Value| -> i64 {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .expect("an integer")
        };
        let lots: Vec<String> = row["paid_lots"]
            .as_array()
            .expect("paid_lots")
            .iter()
            .map(|l| l.as_str().expect("a lot").to_string())
            .collect();
        let amounts: Vec<i64> = row["paid_credits"]
            .as_array()
            .expect("paid_credits")
            .iter()
            .map(number)
            .collect();
        got.insert(
            (
                row["account"].as_str().expect("account").to_string(),
                row["event_id"].as_str().expect("event_id").to_string(),
                row["entry_type"].as_str().expect("entry_type").to_string(),
            ),
            Paid {
                credits: number(&row["credits"]),
                paid: lots.into_iter().zip(amounts).collect(),
                shortfall: number(&row["shortfall"]),
            },
        );
    }
    let mut wrong = 0;
    for (key, want) in &expected.ledger {
        match got.get(key) {
            Some(have) if have == want => {}
            have => {
                if wrong < 5 {
                    eprintln!(
                        "{what}: ledger {key:?}: tally wrote {have:?}, the rules say {want:?}"
                    );
                }
                wrong += 1;
            }
        }
    }
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.ledger.contains_key(*k))
        .collect();
    assert!(
        wrong == 0 && extra.is_empty(),
        "{what}: {wrong} of {} ledger entries differ from the reference model; {} entries it \
         does not have (first: {:?})",
        expected.ledger.len(),
        extra.len(),
        extra.first()
    );
    let lots = d.sql("SELECT account, lot, remaining FROM lots FINAL FORMAT TSV");
    let got: BTreeMap<(String, String), i64> = lots
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (
                (f[0].to_string(), f[1].to_string()),
                f[2].parse().expect("remaining"),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.lots.len(), "{what}: number of lots");
    for (key, want) in &expected.lots {
        assert_eq!(
            got.get(key),
            Some(want),
            "{what}: remaining credits of lot {key:?}"
        );
    }
    // The daily rollups add up to the usage entries the rules prescribe, per account.
    let daily = d.sql(
        "SELECT account, sum(calls), sum(credits), sum(shortfall) FROM daily_rollups FINAL \
         GROUP BY account FORMAT TSV",
    );
    let got: BTreeMap<String, (i64, i64, i64)> = daily
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f[i].parse::<i64>().expect("a number");
            (f[0].to_string(), (n(1), n(2), n(3)))
        })
        .collect();
    let mut want: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for ((account, _, entry_type), paid) in &expected.ledger {
        if entry_type == "usage" {
            let totals = want.entry(account.clone()).or_default();
            totals.0 += 1;
            totals.1 += paid.credits;
            totals.2 += paid.shortfall;
        }
    }
    assert_eq!(
        got, want,
        "{what}: daily rollups (calls, credits, shortfall) per account"
    );
}
