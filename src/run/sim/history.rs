//! The simulation's input and what it must come to: a seeded history of CloudEvents over
//! both topics (grants, holds and releases, usage calls, some settling a hold, copies of
//! earlier events, unreadable payloads), and
//! the reference model's ledger and lots for it, per partition, in the order the merge of
//! the two topics applies them (event time; every event of a partition is later than the
//! one before, so that order is the generation order).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};
use tally_core::{Credits, LedgerEntry, LotKind, Rules};

use super::super::merge::Which;
use super::reference::{self, Data, GrantData, HoldData, Input, Model, UsageData};
use super::Rng;
use crate::partitioner::Partitioner;

pub struct Event {
    pub which: Which,
    pub partition: i32,
    pub account: String,
    /// `None`: an unreadable payload (dead-lettered, never applied).
    pub input: Option<Input>,
    pub payload: Vec<u8>,
    /// The broker timestamp: the arrival the core decides with.
    pub arrival: DateTime<Utc>,
}

const FEATURES: [(&str, Option<&str>); 5] = [
    ("text_to_image", None),
    ("erase", None),
    ("upscale", None),
    ("image_generation", Some("mid")),
    ("video_generation", Some("short")),
];

/// Events per partition in the order each topic receives them.
pub fn generate(rng: &mut Rng, partitions: i32, partitioner: Partitioner) -> Vec<Event> {
    let start: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().expect("a valid time");
    let accounts: Vec<String> = (0..2 + rng.below(6)).map(|i| format!("acct-{i}")).collect();
    let mut cursor: BTreeMap<i32, DateTime<Utc>> = BTreeMap::new();
    let mut events: Vec<Event> = Vec::new();
    for n in 0..10 + rng.below(50) {
        let account = accounts[rng.below(accounts.len() as u64) as usize].clone();
        let partition = crate::holds::partition_of(&account, partitions, partitioner);
        let at = cursor.entry(partition).or_insert(start);
        *at += TimeDelta::seconds(1 + rng.below(900) as i64);
        let time = *at;
        let arrival = time + TimeDelta::milliseconds(rng.below(1_000) as i64);
        let roll = rng.below(100);
        let earlier: Vec<&Event> = events
            .iter()
            .filter(|e| e.partition == partition && e.input.is_some())
            .collect();
        // Holds of this account placed before: a release or a call may name one (it may
        // have expired or been settled since; the model says what that does).
        let holds: Vec<String> = earlier
            .iter()
            .filter(|e| e.account == account)
            .filter_map(|e| match &e.input.as_ref()?.data {
                Data::Hold(h) => h.hold.clone(),
                _ => None,
            })
            .collect();
        let (feature, variant) = FEATURES[rng.below(FEATURES.len() as u64) as usize];
        let (which, input) = if roll < 8 && !earlier.is_empty() {
            // Delivered again (a producer's retry): the same source and id, so the same
            // event for the dedup window, at a later time.
            let copy = earlier[rng.below(earlier.len() as u64) as usize];
            let mut input = copy.input.clone().expect("filtered above");
            input.time = Some(time);
            (copy.which, Some(input))
        } else if roll < 13 {
            let which = if rng.chance(500) {
                Which::Usage
            } else {
                Which::Commands
            };
            (which, None)
        } else if roll < 40 {
            let expires = match rng.below(3) {
                0 => Some(None),
                _ => Some(Some(time + TimeDelta::minutes(10 + rng.below(240) as i64))),
            };
            let grant = GrantData {
                lot: None,
                pool: Some("ai".into()),
                kind: if rng.chance(500) {
                    LotKind::Purchased
                } else {
                    LotKind::Promotional
                },
                credits: Credits::from_milli(1_000 * (1 + rng.below(60) as i64)),
                effective_at: None,
                expires_at: expires,
                valid_days: None,
                priority: None,
                payment: None,
                comment: None,
            };
            (
                Which::Commands,
                Some(input(n, "credit.grant", &account, time, Data::Grant(grant))),
            )
        } else if roll < 48 {
            // A hold: the run answers it only once its flush commits, so it is the one
            // that starts a flush beside the one in flight. Most expire within the history.
            let hold = HoldData {
                hold: Some(format!("hold-{n}")),
                feature: feature.into(),
                variant: variant.map(str::to_string),
                quantity: None,
                ttl: 60 + rng.below(3_600) as u32,
            };
            (
                Which::Commands,
                Some(input(n, "credit.hold", &account, time, Data::Hold(hold))),
            )
        } else if roll < 51 && !holds.is_empty() {
            let hold = holds[rng.below(holds.len() as u64) as usize].clone();
            (
                Which::Commands,
                Some(input(
                    n,
                    "credit.release",
                    &account,
                    time,
                    Data::Release { hold },
                )),
            )
        } else {
            let settles = (!holds.is_empty() && rng.chance(300))
                .then(|| (holds[rng.below(holds.len() as u64) as usize].clone(), None));
            let usage = UsageData {
                user: format!("user-{}", rng.below(3)),
                feature: feature.into(),
                variant: variant.map(str::to_string),
                quantity: None,
                status: None,
                hold: settles,
            };
            (
                Which::Usage,
                Some(input(n, "ai.usage", &account, time, Data::Usage(usage))),
            )
        };
        let (payload, arrival) = match &input {
            Some(input) => (to_json(input).into_bytes(), arrival),
            // No time to order by: it goes whenever it is at the head of its side, so it
            // arrives at the start, where it cannot move a clock.
            None => (b"{\"specversion\": \"1.0\", \"type\":".to_vec(), start),
        };
        events.push(Event {
            which,
            partition,
            account,
            input,
            payload,
            arrival,
        });
    }
    events
}

pub fn input(n: u64, ty: &str, account: &str, time: DateTime<Utc>, data: Data) -> Input {
    Input {
        ty: ty.into(),
        id: format!("evt-{n}"),
        source: "sim".into(),
        subject: Some(account.into()),
        time: Some(time),
        data,
    }
}

fn time_json(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The CloudEvent for the kinds of input the simulation sends.
pub fn to_json(input: &Input) -> String {
    let data = match &input.data {
        Data::Usage(u) => {
            let mut data = json!({"user": u.user, "feature": u.feature});
            if let Some(v) = &u.variant {
                data["variant"] = json!(v);
            }
            if let Some((hold, _)) = &u.hold {
                data["hold"] = json!(hold);
            }
            data
        }
        Data::Hold(h) => {
            let mut data = json!({"hold": h.hold, "feature": h.feature, "ttl": h.ttl});
            if let Some(v) = &h.variant {
                data["variant"] = json!(v);
            }
            data
        }
        Data::Release { hold } => json!({ "hold": hold }),
        Data::Grant(g) => {
            let mut data = json!({
                "pool": g.pool,
                "kind": g.kind.as_str(),
                "credits": g.credits.milli() / 1_000,
            });
            match g.expires_at {
                Some(Some(t)) => data["expires_at"] = time_json(t),
                _ => data["expires_at"] = Value::Null,
            }
            data
        }
        _ => Value::Null,
    };
    json!({
        "specversion": "1.0",
        "type": input.ty,
        "id": input.id,
        "source": input.source,
        "subject": input.subject,
        "time": input.time.map(time_json),
        "data": data,
    })
    .to_string()
}

/// What the reference model makes of each partition's events: the ledger entries by
/// (account, entry id) and the model itself (its lots).
pub struct Expected {
    pub ledger: BTreeMap<(String, String), LedgerEntry>,
    pub models: BTreeMap<i32, Model>,
}

/// Runs the model over `events` (with their offsets) in each partition's order.
pub fn expect(rules: &Rules, events: &[(Event, i64)], topics: (&str, &str)) -> Expected {
    let mut expected = Expected {
        ledger: BTreeMap::new(),
        models: BTreeMap::new(),
    };
    for (event, offset) in events {
        let Some(input) = &event.input else {
            continue;
        };
        let model = expected.models.entry(event.partition).or_default();
        let step = model.process(rules, input, event.arrival);
        for entry in step.due {
            let id = entry.id.clone().unwrap_or_default();
            expected
                .ledger
                .insert((entry.account.to_string(), id), entry);
        }
        if let reference::Outcome::Applied { account, entries } = step.outcome {
            let topic = match event.which {
                Which::Usage => topics.0,
                Which::Commands => topics.1,
            };
            for (i, entry) in entries.into_iter().enumerate() {
                let id = match &entry.id {
                    Some(id) => id.clone(),
                    None if i == 0 => format!("{topic}/{}/{offset}", event.partition),
                    None => format!("{topic}/{}/{offset}#{i}", event.partition),
                };
                expected.ledger.insert((account.clone(), id), entry);
            }
        }
    }
    expected
}
