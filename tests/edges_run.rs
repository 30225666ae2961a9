//! The edges of `tally run` against the real stack (issue 19, points 1 to 4): a producer's
//! clock ahead of ours, another partitioner, an event on the other role's topic, and a
//! dead letter at the producer's size limit. Each sends what a careless or hostile
//! producer would, with a plain Kafka client, and checks balances against hand-computed
//! figures.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::{brokers, grant, hours_ago, milli, rfc3339, usage, Deployment};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tally::partitioner::Partitioner;

/// Collects every delivery report by the record's index (reports come in any order
/// across partitions), so a test knows each record is on the broker and where it landed.
#[derive(Default)]
struct Deliveries(Mutex<BTreeMap<usize, Delivery>>);

/// Where a record landed (partition, offset), or why the broker refused it.
type Delivery = Result<(i32, i64), String>;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Ok(mut all) = self.0.lock() {
            all.insert(*index, outcome);
        }
    }
}

/// A record as a plain producer writes it.
struct Raw<'a> {
    topic: &'a str,
    key: &'a str,
    payload: Vec<u8>,
    /// Explicit partition, or `None`: the producer's partitioner decides.
    partition: Option<i32>,
    /// Broker timestamp (CreateTime), milliseconds; `None`: now.
    timestamp: Option<i64>,
    /// Headers (name, value), as a service adds trace ids.
    headers: &'a [(&'a str, &'a str)],
}

/// Produces `records` with librdkafka's `partitioner` (as a Java, Go or Python service
/// would) and waits for every acknowledgement; returns (partition, offset) of each.
fn produce(partitioner: &str, records: &[Raw<'_>]) -> Vec<(i32, i64)> {
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", partitioner)
        // Above tally's producer limit, so a test can send what tally must cut.
        .set("message.max.bytes", "2000000")
        .create_with_context(Deliveries::default())
        .expect("a producer");
    for (i, raw) in records.iter().enumerate() {
        let mut record = BaseRecord::with_opaque_to(raw.topic, Box::new(i))
            .key(raw.key)
            .payload(&raw.payload);
        if let Some(p) = raw.partition {
            record = record.partition(p);
        }
        if let Some(at) = raw.timestamp {
            record = record.timestamp(at);
        }
        if !raw.headers.is_empty() {
            let headers = raw
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |all, (key, value)| {
                    all.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                });
            record = record.headers(headers);
        }
        if let Err((e, _)) = producer.send(record) {
            panic!("cannot queue a record for {}: {e}", raw.topic);
        }
    }
    let flushed = producer.flush(Duration::from_secs(60));
    let reports = producer
        .context()
        .0
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert!(
        flushed.is_ok() && reports.len() == records.len(),
        "waited 60 s for {} acknowledgements, got {}: {flushed:?} {reports:?}",
        records.len(),
        reports.len()
    );
    reports
        .into_values()
        .map(|r| r.unwrap_or_else(|e| panic!("a record was refused: {e}")))
        .collect()
}

/// One dead letter as read back: payload and every header.
struct Letter {
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Headers a service put on a record, which a forward must keep.
const TRACE: &[(&str, &str)] = &[
    ("traceparent", "00-4bf92f3577b34da6-00f067aa0ba902b7-01"),
    ("empty", ""),
];

/// Every record of one partition as it is now (bounded: fails after 60 s).
fn records_at(topic: &str, partition: i32) -> Vec<Letter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}-{partition}-read"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .expect("watermarks");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(low))
        .expect("offset");
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let mut next = low;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < high && Instant::now() < deadline {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                records.push(letter(&m));
            }
            Some(Err(e)) => panic!("reading {topic}/{partition}: {e}"),
            None => {}
        }
    }
    assert!(
        next >= high,
        "read {topic}/{partition} up to {next} of {high} in 60 s"
    );
    records
}

/// A record's payload and headers, as read back.
fn letter(m: &rdkafka::message::BorrowedMessage<'_>) -> Letter {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    let value = x.value.map(String::from_utf8_lossy);
                    (x.key.to_string(), value.unwrap_or_default().into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Letter {
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Reads the first `expected` records of the dead-letter topic (bounded: fails with what
/// it saw).
fn dead_letters(d: &Deployment, expected: usize) -> Vec<Letter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{}-dlq-edges", d.name))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&d.dlq_topic]).expect("subscribe");
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while letters.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => letters.push(letter(&m)),
            Some(Err(e)) => panic!("reading the dead-letter topic: {e}"),
            None => {}
        }
    }
    let codes: Vec<&String> = letters
        .iter()
        .filter_map(|l| l.headers.get("tally.reason.code"))
        .collect();
    assert_eq!(
        letters.len(),
        expected,
        "waited 60 s for {expected} dead letters; got these codes: {codes:?}"
    );
    letters
}

fn available(d: &Deployment, account: &str) -> i64 {
    let balance = d.balance(account);
    milli(&balance["pools"]["ai"]["available"])
}

fn json_bytes(event: &Value) -> Vec<u8> {
    event.to_string().into_bytes()
}

/// `tally run --drain` with a bound far above what it needs here (seconds): a drain that
/// never finishes is the bug of point 4, so it must fail the test, with the log.
fn drain_bounded(d: &Deployment) -> Value {
    d.drain_within(Duration::from_secs(180), &[])
}

/// Point 1: one record stamped two days ahead, any account, must not move the clock of
/// its partition: another account's promotional lot with twelve hours left keeps paying.
#[test]
fn a_record_stamped_in_the_future_expires_no_one_elses_lots() {
    let d = Deployment::new(1);
    let granted = hours_ago(1);
    d.send(&[
        grant(
            "promo-1",
            "victim",
            granted,
            json!({"kind": "promotional", "credits": 50,
                   "expires_at": rfc3339(Utc::now() + TimeDelta::hours(12))}),
        ),
        grant(
            "pack-1",
            "skewed",
            granted,
            json!({"kind": "purchased", "credits": 100}),
        ),
    ]);
    // A product host whose clock is two days ahead: a valid call, stamped 2 days out.
    let ahead = Utc::now() + TimeDelta::days(2);
    let skewed_call = usage(
        "u-skewed",
        "skewed",
        hours_ago(0),
        json!({"user": "lee", "feature": "erase"}),
    );
    produce(
        "consistent_random",
        &[Raw {
            topic: &d.usage_topic,
            key: "skewed",
            payload: json_bytes(&skewed_call),
            partition: Some(0),
            timestamp: Some(ahead.timestamp_millis()),
            headers: &[],
        }],
    );
    // Then a call of the victim's, from a host with a good clock: erase costs 7.
    d.send(&[usage(
        "u-victim",
        "victim",
        Utc::now() - TimeDelta::minutes(1),
        json!({"user": "kim", "feature": "erase"}),
    )]);
    let summary = drain_bounded(&d);

    let victim = d.balance("victim");
    let ai = &victim["pools"]["ai"];
    assert_eq!(milli(&ai["by_kind"]["promotional"]), 43_000, "{victim}");
    assert_eq!(milli(&ai["available"]), 43_000, "{victim}");
    // A grant and a call, and no expiry: the lot has hours left.
    let ledger = d.ledger("victim");
    let mut types: Vec<&str> = ledger.iter().filter_map(|r| r["type"].as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["grant", "usage"], "{ledger:?}");
    // The skewed call is not charged: it is a dead letter, with its reason.
    assert_eq!(available(&d, "skewed"), 100_000);
    let letters = dead_letters(&d, 1);
    assert_eq!(
        letters[0]
            .headers
            .get("tally.reason.code")
            .map(String::as_str),
        Some("future_timestamp"),
        "{:?}",
        letters[0].headers
    );
    assert_eq!(letters[0].payload, json_bytes(&skewed_call));
    assert_eq!(summary["rejected"], 1, "{summary}");
}

/// Accounts whose murmur2 partition is not their CRC-32 one, among `partitions`.
fn split_accounts(partitions: i32, count: usize) -> Vec<String> {
    let accounts: Vec<String> = (0..1000)
        .map(|i| format!("java-acct-{i}"))
        .filter(|a| {
            Partitioner::Murmur2.partition(a.as_bytes(), partitions)
                != Partitioner::Crc32.partition(a.as_bytes(), partitions)
        })
        .take(count)
        .collect();
    assert_eq!(
        accounts.len(),
        count,
        "enough accounts split by the two partitioners"
    );
    accounts
}

/// Point 2: grants through `tally send` (CRC-32), 20 calls from a murmur2 producer and one
/// to an explicit wrong partition: every call is charged once, in its account's partition.
#[test]
fn calls_from_a_murmur2_producer_are_charged_in_their_accounts_partition() {
    let d = Deployment::new(6);
    let accounts = split_accounts(6, 4);
    let granted = hours_ago(2);
    let grants: Vec<Value> = accounts
        .iter()
        .map(|a| {
            grant(
                &format!("pack-{a}"),
                a,
                granted,
                json!({"kind": "purchased", "credits": 100}),
            )
        })
        .collect();
    d.send(&grants);
    // 5 calls per account, erase (7 credits) each: 35 per account.
    let calls: Vec<(String, Value)> = (0..20)
        .map(|i| {
            let account = accounts[i % 4].clone();
            let at = hours_ago(1) + TimeDelta::seconds(i as i64);
            let call = usage(
                &format!("java-{i}"),
                &account,
                at,
                json!({"user": "park", "feature": "erase"}),
            );
            (account, call)
        })
        .collect();
    let records: Vec<Raw<'_>> = calls
        .iter()
        .map(|(account, call)| Raw {
            topic: &d.usage_topic,
            key: account,
            payload: json_bytes(call),
            partition: None,
            timestamp: None,
            headers: &[],
        })
        .collect();
    let landed = produce("murmur2_random", &records);
    for ((account, _), (partition, _)) in calls.iter().zip(&landed) {
        assert_eq!(
            *partition,
            Partitioner::Murmur2.partition(account.as_bytes(), 6),
            "the producer used murmur2 for {account}"
        );
    }
    // The first call again, to a partition that owns no account of these: still once.
    let (first_account, first_call) = &calls[0];
    let stray = (0..6)
        .find(|p| {
            accounts
                .iter()
                .all(|a| Partitioner::Crc32.partition(a.as_bytes(), 6) != *p)
        })
        .unwrap_or(Partitioner::Murmur2.partition(first_account.as_bytes(), 6));
    produce(
        "consistent_random",
        &[Raw {
            topic: &d.usage_topic,
            key: first_account,
            payload: json_bytes(first_call),
            partition: Some(stray),
            timestamp: None,
            headers: TRACE,
        }],
    );
    drain_bounded(&d);

    // The stray record was forwarded to its account's partition with its headers.
    let owner = Partitioner::Crc32.partition(first_account.as_bytes(), 6);
    let copies: Vec<Letter> = records_at(&d.usage_topic, owner)
        .into_iter()
        .filter(|r| r.payload == json_bytes(first_call))
        .collect();
    let traced = |r: &Letter| {
        TRACE
            .iter()
            .all(|(key, value)| r.headers.get(*key).map(String::as_str) == Some(*value))
    };
    assert_eq!(
        copies.iter().filter(|r| traced(r)).count(),
        usize::from(stray != owner),
        "the stray record's copy in partition {owner} keeps its headers: {:?}",
        copies.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );

    for account in &accounts {
        assert_eq!(
            available(&d, account),
            65_000,
            "{account}: 100 granted, 5 calls of 7: {}",
            d.balance(account)
        );
        let usage_rows: Vec<Value> = d
            .ledger(account)
            .into_iter()
            .filter(|row| row["type"] == "usage")
            .collect();
        assert_eq!(usage_rows.len(), 5, "{account}: {usage_rows:?}");
        let charged: i64 = usage_rows.iter().map(|r| milli(&r["credits"])).sum();
        assert_eq!(charged, 35_000, "{account}: {usage_rows:?}");
    }
    // Every account's state lives in one partition only: one row per lot.
    let lot_rows = d.sql("SELECT count() FROM lots FINAL");
    assert_eq!(lot_rows.trim(), "4", "one pack per account, stored once");
}

/// Point 3: a `credit.grant` produced to the usage topic mints nothing; a call produced
/// to the commands topic bills nothing. Both go to the dead-letter topic as `wrong_topic`.
#[test]
fn a_grant_on_the_usage_topic_grants_nothing() {
    let d = Deployment::new(1);
    let at = hours_ago(1);
    d.send(&[grant(
        "pack-1",
        "minted",
        at,
        json!({"kind": "purchased", "credits": 10}),
    )]);
    let forged = grant(
        "forged-1",
        "minted",
        at + TimeDelta::seconds(1),
        json!({"kind": "purchased", "credits": 1_000_000}),
    );
    let misrouted_call = usage(
        "u-1",
        "minted",
        at + TimeDelta::seconds(2),
        json!({"user": "kim", "feature": "erase"}),
    );
    produce(
        "consistent_random",
        &[
            Raw {
                topic: &d.usage_topic,
                key: "minted",
                payload: json_bytes(&forged),
                partition: None,
                timestamp: None,
                headers: &[],
            },
            Raw {
                topic: &d.commands_topic,
                key: "minted",
                payload: json_bytes(&misrouted_call),
                partition: None,
                timestamp: None,
                headers: &[],
            },
        ],
    );
    drain_bounded(&d);

    assert_eq!(available(&d, "minted"), 10_000, "{}", d.balance("minted"));
    let mut codes: Vec<String> = dead_letters(&d, 2)
        .into_iter()
        .map(|l| {
            l.headers
                .get("tally.reason.code")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    codes.sort();
    assert_eq!(codes, ["wrong_topic", "wrong_topic"]);
}

/// Point 4: a record whose payload fits the producer's limit alone but not with the
/// dead-letter headers, whose reason echoes a 999 KB field name, between calls. The drain
/// finishes, the calls after it are billed, and the dead letter goes out cut, saying so,
/// with its source position.
#[test]
fn a_dead_letter_at_the_producers_size_limit_does_not_stop_the_run() {
    let d = Deployment::new(1);
    let at = hours_ago(1);
    d.send(&[grant(
        "pack-1",
        "acme",
        at,
        json!({"kind": "purchased", "credits": 100}),
    )]);
    let call = |i: i64| {
        usage(
            &format!("u-{i}"),
            "acme",
            at + TimeDelta::seconds(i),
            json!({"user": "kim", "feature": "erase"}),
        )
    };
    // An unknown key in `data` is rejected with a reason naming it: the whole name.
    let mut huge = usage(
        "u-huge",
        "acme",
        at + TimeDelta::seconds(4),
        json!({"user": "kim", "feature": "erase"}),
    );
    let skeleton = json_bytes(&huge).len();
    let name = "q".repeat(999_000 - skeleton - 6);
    huge["data"][name.as_str()] = json!(1);
    let huge_bytes = json_bytes(&huge);
    assert!(
        (998_000..=999_000).contains(&huge_bytes.len()),
        "{}",
        huge_bytes.len()
    );
    let mut records = Vec::new();
    for i in 1..=3 {
        records.push(json_bytes(&call(i)));
    }
    records.push(huge_bytes.clone());
    for i in 5..=7 {
        records.push(json_bytes(&call(i)));
    }
    let raws: Vec<Raw<'_>> = records
        .into_iter()
        .map(|payload| Raw {
            topic: &d.usage_topic,
            key: "acme",
            payload,
            partition: Some(0),
            timestamp: None,
            headers: &[],
        })
        .collect();
    let landed = produce("consistent_random", &raws);
    let huge_offset = landed[3].1;
    drain_bounded(&d);

    // 6 calls of 7 from 100: the calls after the dead letter are billed too.
    assert_eq!(available(&d, "acme"), 58_000, "{}", d.balance("acme"));
    let letters = dead_letters(&d, 1);
    let letter = &letters[0];
    let header = |name: &str| letter.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("tally.reason.code"), "bad_data");
    assert!(
        !header("tally.reason").is_empty() && header("tally.reason").len() <= 1024,
        "the reason is cut to 1 KB: {} bytes",
        header("tally.reason").len()
    );
    assert_eq!(
        header("tally.payload.truncated"),
        huge_bytes.len().to_string()
    );
    assert!(
        letter.payload.len() < huge_bytes.len() && huge_bytes.starts_with(&letter.payload),
        "a prefix of the payload, cut: {} of {} bytes",
        letter.payload.len(),
        huge_bytes.len()
    );
    assert_eq!(header("tally.source.topic"), d.usage_topic);
    assert_eq!(header("tally.source.partition"), "0");
    assert_eq!(header("tally.source.offset"), huge_offset.to_string());
}
