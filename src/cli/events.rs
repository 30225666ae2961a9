//! Commands that send events: `grant`, `send` and `tick`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_core::{Credits, LotKind};

use crate::config::Config;
use crate::kafka;
use crate::progress::Progress;

/// The arguments of `tally grant`.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    #[arg(value_parser = super::parse_id)]
    pub account: String,
    /// Credits, a decimal with at most 3 places.
    #[arg(long)]
    pub credits: Credits,
    /// included, promotional or purchased.
    #[arg(long, value_parser = parse_kind)]
    pub kind: LotKind,
    #[arg(long, default_value = "ai", value_parser = super::parse_id)]
    pub pool: String,
    /// Lot id (default: the event id).
    #[arg(long, value_parser = super::parse_id)]
    pub lot: Option<String>,
    /// RFC 3339 expiry; without it and --valid-days the lot never expires.
    #[arg(long, conflicts_with = "valid_days")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Days of validity from now.
    #[arg(long)]
    pub valid_days: Option<u32>,
    /// Lower pays first.
    #[arg(long)]
    pub priority: Option<i32>,
    /// card or cash.
    #[arg(long, value_parser = ["card", "cash"])]
    pub payment_method: Option<String>,
    #[arg(long, requires = "payment_method", value_parser = super::parse_text)]
    pub payment_reference: Option<String>,
    #[arg(long, value_parser = super::parse_text)]
    pub comment: Option<String>,
    /// The CloudEvent source recorded with the grant.
    #[arg(long, default_value = "tally-cli", value_parser = super::parse_id)]
    pub source: String,
}

fn parse_kind(text: &str) -> Result<LotKind, String> {
    serde_json::from_value(Value::String(text.to_string()))
        .map_err(|_| format!("`{text}` is not one of included, promotional, purchased"))
}

pub async fn grant(config: &Config, args: GrantArgs, json: bool) -> anyhow::Result<()> {
    let id = format!("grant-{}", uuid::Uuid::new_v4());
    let mut data = json!({"pool": args.pool, "kind": args.kind, "credits": args.credits});
    let fields = [
        ("lot", args.lot.map(Value::from)),
        (
            "expires_at",
            args.expires_at.map(|t| Value::from(t.to_rfc3339())),
        ),
        ("valid_days", args.valid_days.map(Value::from)),
        ("priority", args.priority.map(Value::from)),
        ("comment", args.comment.map(Value::from)),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            data[key] = value;
        }
    }
    if let Some(method) = args.payment_method {
        data["payment"] = json!({"method": method, "reference": args.payment_reference});
    }
    let event = json!({
        "specversion": "1.0", "type": "credit.grant", "id": id, "source": args.source,
        "subject": args.account, "time": Utc::now().to_rfc3339(), "data": data,
    });
    kafka::check_access_async(&config.kafka).await?;
    let producer = kafka::producer(&config.kafka)?;
    let payload = serde_json::to_vec(&event)?;
    let (partition, offset) = kafka::send(
        &producer,
        &config.kafka.commands_topic,
        Some(&args.account),
        &payload,
        None,
    )
    .await
    .context("cannot send the grant")?;
    if json {
        println!(
            "{}",
            json!({"event": event, "partition": partition, "offset": offset})
        );
    } else {
        println!(
            "grant {id} of {} {} credits to `{}` sent ({}/{partition}@{offset}); it applies when `tally run` reads it",
            args.credits, args.kind.as_str(), args.account, config.kafka.commands_topic
        );
    }
    Ok(())
}

/// Sends CloudEvents from a JSON-lines file (`-` for stdin), each to its topic by type,
/// keyed by its subject.
pub async fn send(
    config: &Config,
    file: &Path,
    stamp_event_time: bool,
    json: bool,
) -> anyhow::Result<()> {
    // The file's size tells what is left to send; stdin's is unknown.
    let (reader, size): (Box<dyn BufRead>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let size = opened.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::new(opened)), size)
    };
    let mut progress = Progress::new("send", "bytes", config.pipeline.progress_interval);
    let mut read_bytes: u64 = 0;
    let mut queued: u64 = 0;
    let left = |read: u64| size.map(|s| s.saturating_sub(read));
    kafka::check_access_async(&config.kafka).await?;
    let producer = kafka::producer(&config.kafka)?;
    let mut chunk: Vec<Outgoing> = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (number, line) in reader.lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", file.display(), number + 1))?;
        // The newline the reader took off counts as read too.
        read_bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        // Lines that are not events are sent as they are, to usage: tally's consumer is
        // the one that judges them (and dead-letters them with the reason).
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        let ty = parsed
            .as_ref()
            .and_then(|v| v["type"].as_str())
            .unwrap_or("ai.usage");
        let topic = if ty == "ai.usage" {
            &config.kafka.usage_topic
        } else {
            &config.kafka.commands_topic
        };
        let key = parsed
            .as_ref()
            .and_then(|v| v["subject"].as_str())
            .map(str::to_string);
        let timestamp = if stamp_event_time {
            let time = parsed.as_ref().and_then(|v| v["time"].as_str());
            let at = time.and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            match at {
                Some(at) => Some(at.with_timezone(&Utc)),
                None => bail!(
                    "{}: line {} has no RFC 3339 `time` to stamp it with",
                    file.display(),
                    number + 1
                ),
            }
        } else {
            None
        };
        *counts.entry(topic.clone()).or_default() += 1;
        chunk.push((topic.clone(), key, line, timestamp));
        queued += 1;
        if chunk.len() >= 10_000 {
            send_chunk(&producer, &std::mem::take(&mut chunk)).await?;
        }
        if queued.is_multiple_of(1024) {
            progress.update(queued, left(read_bytes), size);
        }
    }
    send_chunk(&producer, &chunk).await?;
    progress.finish(queued, left(read_bytes), size);
    if json {
        println!("{}", json!({"sent": counts}));
    } else {
        for (topic, n) in counts {
            println!("sent {n} events to {topic}");
        }
    }
    Ok(())
}

/// Topic, key, payload and broker timestamp of one line to send.
type Outgoing = (String, Option<String>, String, Option<DateTime<Utc>>);

async fn send_chunk(
    producer: &rdkafka::producer::FutureProducer,
    chunk: &[Outgoing],
) -> anyhow::Result<()> {
    let deliveries = chunk.iter().map(|(topic, key, line, at)| {
        kafka::send(producer, topic, key.as_deref(), line.as_bytes(), *at)
    });
    for delivery in futures::future::join_all(deliveries).await {
        delivery?;
    }
    Ok(())
}

/// Sends a clock tick to every partition of the commands topic, stamped `at`, so lots
/// expire and cycles turn over up to then.
pub async fn tick(config: &Config, at: DateTime<Utc>, json: bool) -> anyhow::Result<()> {
    kafka::check_access_async(&config.kafka).await?;
    // `tally run` refuses a broker timestamp this far ahead (it would move every
    // account's clock): say so here rather than send ticks that only reach the DLQ.
    let skew = chrono::TimeDelta::from_std(config.rules.max_future_skew)
        .context("rules.max_future_skew")?;
    if at - Utc::now() > skew {
        bail!(
            "--at {} is more than rules.max_future_skew ({}) ahead of now: tally run would \
             refuse the ticks (future_timestamp)",
            at.to_rfc3339(),
            humantime::format_duration(config.rules.max_future_skew)
        );
    }
    let producer = kafka::producer(&config.kafka)?;
    let sent = kafka::send_ticks(&producer, &config.kafka, None, at)
        .await
        .context("cannot send ticks")?;
    if json {
        println!("{}", json!({"at": at.to_rfc3339(), "partitions": sent}));
    } else {
        println!(
            "tick at {} sent to {} partitions of {}",
            at.to_rfc3339(),
            sent,
            config.kafka.commands_topic
        );
    }
    Ok(())
}
