//! The handlers behind each `tally` command: read config, talk to the edges, print.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::{json, Value};
use tally_core::plans;
use tally_core::{Credits, EntryType, LotKind, Rules};

use super::table;
use crate::config::Config;
use crate::kafka;
use crate::store::reads::{self, By};
use crate::store::rows::{from_day_number, from_seconds};
use crate::store::{self, schema};

fn credits(milli: i64) -> Credits {
    Credits::from_milli(milli)
}

pub async fn migrate(config: &Config, json: bool) -> anyhow::Result<()> {
    let server = store::server_client(&config.clickhouse);
    schema::migrate(&server, &config.clickhouse.database)
        .await
        .with_context(|| format!("cannot create the schema at {}", config.clickhouse.url))?;
    kafka::create_topics(&config.kafka)
        .await
        .with_context(|| format!("cannot create topics at {}", config.kafka.brokers))?;
    let k = &config.kafka;
    if json {
        println!(
            "{}",
            json!({"database": config.clickhouse.database,
                   "topics": [k.usage_topic, k.commands_topic, k.dlq_topic],
                   "partitions": k.partitions})
        );
    } else {
        println!(
            "schema ready in database `{}`; topics `{}`, `{}` ({} partitions each) and `{}` ready",
            config.clickhouse.database, k.usage_topic, k.commands_topic, k.partitions, k.dlq_topic
        );
    }
    Ok(())
}

pub fn run(
    config: Config,
    rules: tally_core::Rules,
    drain: bool,
    json: bool,
    shutdown: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let status = crate::status::Shared::default();
    {
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = "starting".into();
        s.group = config.kafka.group_id.clone();
        s.pid = std::process::id();
    }
    if !config.status.listen.is_empty() {
        let listen = config.status.listen.clone();
        let shared = status.clone();
        rt.spawn(async move {
            if let Err(e) = crate::status::serve(listen.clone(), shared).await {
                tracing::warn!(listen = %listen, error = %e, "no status endpoint");
            }
        });
    }
    let summary = crate::run::run(config, rules, drain, shutdown, rt, status)?;
    let c = summary.counts;
    if json {
        println!(
            "{}",
            json!({"applied": c.applied, "duplicates": c.duplicates,
                   "rejected": c.rejected, "flushes": summary.flushes})
        );
    } else {
        println!(
            "applied {} events, {} duplicates skipped, {} rejected to the dead-letter topic, {} flushes",
            c.applied, c.duplicates, c.rejected, summary.flushes
        );
    }
    Ok(())
}

/// The arguments of `tally grant`.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    pub account: String,
    /// Credits, a decimal with at most 3 places.
    #[arg(long)]
    pub credits: Credits,
    /// included, promotional or purchased.
    #[arg(long, value_parser = parse_kind)]
    pub kind: LotKind,
    #[arg(long, default_value = "ai")]
    pub pool: String,
    /// Lot id (default: the event id).
    #[arg(long)]
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
    #[arg(long, requires = "payment_method")]
    pub payment_reference: Option<String>,
    #[arg(long)]
    pub comment: Option<String>,
    /// The CloudEvent source recorded with the grant.
    #[arg(long, default_value = "tally-cli")]
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
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let producer = kafka::producer(&config.kafka)?;
    let mut chunk: Vec<Outgoing> = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (number, line) in reader.lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", file.display(), number + 1))?;
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
        if chunk.len() >= 10_000 {
            send_chunk(&producer, &std::mem::take(&mut chunk)).await?;
        }
    }
    send_chunk(&producer, &chunk).await?;
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

pub async fn balance(
    config: &Config,
    rules: &Rules,
    account: &str,
    at: DateTime<Utc>,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let state = reads::account_state(&client, account)
        .await
        .context("cannot read the account's state")?
        .unwrap_or_default();
    let pools = state.balance(at);
    let flex = state.flex(rules, at);
    let cycle_start = match &state.subscription {
        Some(s) => s.cycle_start,
        None => plans::month_start(state.timezone(rules), at),
    };
    let used: BTreeMap<String, i64> = reads::used_since(&client, account, cycle_start)
        .await
        .context("cannot read usage of this cycle")?
        .into_iter()
        .map(|row| (row.pool, row.credits))
        .collect();
    let mut names: Vec<&String> = pools.keys().chain(used.keys()).collect();
    names.extend(state.shortfall.keys());
    names.sort();
    names.dedup();
    let pool_json: serde_json::Map<String, Value> = names
        .iter()
        .map(|pool| {
            let b = pools.get(*pool).cloned().unwrap_or_default();
            let mut by_kind = serde_json::Map::new();
            for kind in LotKind::ALL {
                let c = b.by_kind.get(kind.as_str()).copied().unwrap_or_default();
                by_kind.insert(kind.as_str().into(), json!(c));
            }
            (
                pool.to_string(),
                json!({
                    "available": b.available,
                    "by_kind": by_kind,
                    "used_this_cycle": credits(used.get(*pool).copied().unwrap_or(0)),
                    "expiring_within_14_days": b.expiring_soon,
                    "shortfall": state.shortfall.get(*pool).copied().unwrap_or_default(),
                }),
            )
        })
        .collect();
    let plan = state.subscription.as_ref().map(|s| {
        json!({"name": s.name, "cycle": s.cycle, "cycle_start": s.cycle_start.to_rfc3339(),
               "cycle_end": s.cycle_end.to_rfc3339()})
    });
    if json {
        let out = json!({
            "account": account, "at": at.to_rfc3339(), "plan": plan,
            "cycle_start": cycle_start.to_rfc3339(),
            "flex": {"enabled": flex.enabled, "threshold": flex.threshold, "used": flex.used},
            "pools": pool_json,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if names.is_empty() {
        println!("account `{account}` has no credits");
        return Ok(());
    }
    println!(
        "balance of `{account}` at {}",
        at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    match &state.subscription {
        Some(s) => println!(
            "plan {}: cycle {} from {} to {}",
            s.name,
            s.cycle,
            s.cycle_start.format("%Y-%m-%d %H:%M UTC"),
            s.cycle_end.format("%Y-%m-%d %H:%M UTC")
        ),
        None => println!(
            "no plan; this cycle is the calendar month from {}",
            cycle_start.format("%Y-%m-%d %H:%M UTC")
        ),
    }
    let rows: Vec<Vec<String>> = pool_json
        .iter()
        .map(|(pool, p)| {
            let mut row = vec![pool.clone(), text(&p["available"])];
            row.extend(LotKind::ALL.iter().map(|k| text(&p["by_kind"][k.as_str()])));
            row.push(text(&p["used_this_cycle"]));
            row.push(text(&p["expiring_within_14_days"]));
            row.push(text(&p["shortfall"]));
            row
        })
        .collect();
    table::print(
        &[
            "pool",
            "available",
            "included",
            "promotional",
            "purchased",
            "used this cycle",
            "expiring in 14 days",
            "shortfall",
        ],
        &rows,
    );
    println!(
        "flex: {}, {} of {} used this cycle",
        if flex.enabled { "on" } else { "off" },
        flex.used,
        flex.threshold
    );
    Ok(())
}

/// A credits value from JSON as people read it.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Allocated, consumed, expired, carried forward and remaining credits per account and
/// pool for local days `from..to` (exclusive), free (included and promotional) and
/// purchased apart.
pub async fn monthly(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    if to <= from {
        bail!("--to must be after --from");
    }
    let client = store::client(&config.clickhouse);
    let flows = reads::flows(&client, from, to, account)
        .await
        .context("cannot read the ledger")?;
    let summary = summarize(&flows).context("cannot read the ledger")?;
    if json {
        let rows: Vec<Value> = summary
            .iter()
            .map(|((account, pool), s)| {
                json!({"account": account, "pool": pool, "from": from.to_string(),
                       "to": to.to_string(), "free": s.free, "purchased": s.purchased,
                       "flex": credits(s.flex), "shortfall": credits(s.shortfall),
                       "consumed": credits(s.free.consumed.milli() + s.purchased.consumed.milli() + s.flex)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("credits from {from} to {to} (exclusive), in each account's time zone");
    let mut rows = Vec::new();
    for ((account, pool), s) in &summary {
        for (name, part) in [("free", &s.free), ("purchased", &s.purchased)] {
            rows.push(vec![
                account.clone(),
                pool.clone(),
                name.to_string(),
                part.carried_forward.to_string(),
                part.allocated.to_string(),
                part.consumed.to_string(),
                part.expired.to_string(),
                part.voided.to_string(),
                part.remaining.to_string(),
            ]);
        }
        rows.push(vec![
            account.clone(),
            pool.clone(),
            "flex".into(),
            String::new(),
            String::new(),
            credits(s.flex).to_string(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    table::print(
        &[
            "account",
            "pool",
            "credits",
            "carried forward",
            "allocated",
            "consumed",
            "expired",
            "voided",
            "remaining",
        ],
        &rows,
    );
    Ok(())
}

/// One side (free or purchased) of the monthly summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Movement {
    pub carried_forward: Credits,
    pub allocated: Credits,
    pub consumed: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub remaining: Credits,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub free: Movement,
    pub purchased: Movement,
    /// Thousandths.
    pub flex: i64,
    pub shortfall: i64,
}

/// Folds the ledger's flows into opening balance, movements and closing balance.
/// A stored entry type or lot kind that is unknown is an error, never counted as some
/// default movement.
pub fn summarize(
    flows: &[reads::Flow],
) -> Result<BTreeMap<(String, String), Summary>, store::StoreError> {
    let mut out: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for flow in flows {
        let summary = out
            .entry((flow.account.clone(), flow.pool.clone()))
            .or_default();
        let amount = credits(flow.credits);
        let entry_type = store::stored(
            &store::ENTRY_TYPES,
            EntryType::as_str,
            "ledger",
            "entry_type",
            &flow.entry_type,
        )?;
        if flow.kind == "shortfall" {
            summary.shortfall += flow.credits;
            continue;
        }
        let kind = store::stored(
            &store::LOT_KINDS,
            LotKind::as_str,
            "ledger",
            "kind",
            &flow.kind,
        )?;
        if kind == LotKind::Flex {
            if flow.in_range == 1 {
                summary.flex += flow.credits;
            }
            continue;
        }
        let part = if kind == LotKind::Purchased {
            &mut summary.purchased
        } else {
            &mut summary.free
        };
        // Grants add; calls and settlements take what lots paid; expiries and voids are
        // stored as negative amounts.
        let change = match entry_type {
            EntryType::Usage | EntryType::Settlement => -amount,
            EntryType::Grant | EntryType::Expiry | EntryType::Void => amount,
        };
        if flow.in_range == 0 {
            part.carried_forward += change;
            continue;
        }
        match entry_type {
            EntryType::Grant => part.allocated += amount,
            EntryType::Usage | EntryType::Settlement => part.consumed += amount,
            EntryType::Expiry => part.expired -= amount,
            EntryType::Void => part.voided -= amount,
        }
    }
    for summary in out.values_mut() {
        for part in [&mut summary.free, &mut summary.purchased] {
            part.remaining =
                part.carried_forward + part.allocated - part.consumed - part.expired - part.voided;
        }
    }
    Ok(out)
}

/// How credits arrived or left, as the history names it [000].
/// Unknown stored names are an error naming table, column and value.
pub fn history_type(
    row: &crate::store::rows::LedgerRow,
) -> Result<&'static str, store::StoreError> {
    let entry_type = store::stored(
        &store::ENTRY_TYPES,
        EntryType::as_str,
        "ledger",
        "entry_type",
        &row.entry_type,
    )?;
    match entry_type {
        EntryType::Expiry => return Ok("expired"),
        EntryType::Void => return Ok("voided"),
        EntryType::Settlement => return Ok("shortfall settled"),
        EntryType::Grant | EntryType::Usage => {}
    }
    match row.payment_method.as_str() {
        "cash" => return Ok("top-up (cash)"),
        "card" => return Ok("top-up (card)"),
        "" => {}
        other => {
            return Err(store::StoreError::UnknownValue {
                table: "ledger",
                column: "payment_method",
                value: other.to_string(),
            })
        }
    }
    let kind = store::stored(
        &store::LOT_KINDS,
        LotKind::as_str,
        "ledger",
        "lot_kind",
        &row.lot_kind,
    )?;
    Ok(match kind {
        LotKind::Included => "plan subscription",
        LotKind::Purchased => "top-up",
        LotKind::Promotional | LotKind::Flex => "promotional",
    })
}

/// Grants, expiries, voids and settlements of an account; `purchases` keeps only bought
/// packs, with their validity and payment.
pub async fn history(
    config: &Config,
    account: &str,
    purchases: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let mut rows = reads::history(&client, account)
        .await
        .context("cannot read the ledger")?;
    if purchases {
        rows.retain(|r| r.entry_type == "grant" && r.lot_kind == "purchased");
    }
    let lots: BTreeMap<String, tally_core::Lot> = reads::lots(&client, account)
        .await
        .context("cannot read lots")?
        .into_iter()
        .map(|lot| (lot.id.clone(), lot))
        .collect();
    let expires = |lot: &str| {
        lots.get(lot)
            .map(|l| {
                l.expires_at
                    .map(|e| e.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            })
            .unwrap_or_default()
    };
    let types = rows
        .iter()
        .map(history_type)
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the ledger")?;
    if json {
        let out: Vec<Value> = rows
            .iter()
            .zip(&types)
            .map(|(r, ty)| {
                json!({"time": from_seconds(r.time).to_rfc3339(), "type": ty,
                       "entry_type": r.entry_type, "pool": r.pool, "credits": credits(r.credits),
                       "lot": r.lot, "kind": r.lot_kind, "expires_at": expires(&r.lot),
                       "payment_method": r.payment_method, "payment_reference": r.payment_reference,
                       "comment": r.comment})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no {} for `{account}`",
            if purchases { "purchases" } else { "history" }
        );
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .zip(&types)
        .map(|(r, ty)| {
            vec![
                from_seconds(r.time).format("%Y-%m-%d %H:%M:%S").to_string(),
                ty.to_string(),
                r.pool.clone(),
                credits(r.credits).to_string(),
                r.lot.clone(),
                expires(&r.lot),
                r.payment_reference.clone(),
                r.comment.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "time (UTC)",
            "type",
            "pool",
            "credits",
            "lot",
            "expires",
            "reference",
            "comment",
        ],
        &table_rows,
    );
    Ok(())
}

/// Sends a clock tick to every partition of the commands topic, stamped `at`, so lots
/// expire and cycles turn over up to then.
pub async fn tick(config: &Config, at: DateTime<Utc>, json: bool) -> anyhow::Result<()> {
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

/// The plans in config.
pub fn plans(rules: &Rules, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&rules.plans)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rules
        .plans
        .iter()
        .map(|(name, plan)| {
            vec![
                name.clone(),
                plan.credits.to_string(),
                plan.pool.clone(),
                format!("{:?}", plan.period).to_lowercase(),
                plan.flex_threshold
                    .unwrap_or(rules.flex_threshold)
                    .to_string(),
            ]
        })
        .collect();
    table::print(
        &[
            "plan",
            "credits per cycle",
            "pool",
            "cycle",
            "flex threshold",
        ],
        &rows,
    );
    Ok(())
}

pub async fn daily(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    by: &[By],
    json: bool,
) -> anyhow::Result<()> {
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let client = store::client(&config.clickhouse);
    let rows = reads::daily(&client, from, to, account, by)
        .await
        .context("cannot read daily usage")?;
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut row = json!({
                    "day": from_day_number(r.day).to_string(), "account": r.account,
                    "calls": r.calls, "failed_calls": r.failed_calls, "credits": credits(r.credits),
                    "by_kind": {"included": credits(r.included), "promotional": credits(r.promotional),
                                "purchased": credits(r.purchased), "flex": credits(r.flex)},
                    "shortfall": credits(r.shortfall),
                });
                for b in by {
                    let value = match b {
                        By::Service => &r.service,
                        By::User => &r.user,
                        By::Feature => &r.feature,
                    };
                    row[b.column()] = json!(value);
                }
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut header = vec!["day", "account"];
    header.extend(by.iter().map(|b| b.column()));
    header.extend(["calls", "failed", "credits", "flex", "shortfall"]);
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![from_day_number(r.day).to_string(), r.account.clone()];
            for b in by {
                row.push(match b {
                    By::Service => r.service.clone(),
                    By::User => r.user.clone(),
                    By::Feature => r.feature.clone(),
                });
            }
            row.extend([
                r.calls.to_string(),
                r.failed_calls.to_string(),
                credits(r.credits).to_string(),
                credits(r.flex).to_string(),
                credits(r.shortfall).to_string(),
            ]);
            row
        })
        .collect();
    table::print(&header, &table_rows);
    Ok(())
}

pub async fn ledger(
    config: &Config,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let rows = reads::ledger(&client, account, from, to)
        .await
        .context("cannot read the ledger")?;
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let paid: Vec<Value> = r
                    .paid_lots
                    .iter()
                    .zip(&r.paid_kinds)
                    .zip(&r.paid_credits)
                    .map(|((lot, kind), c)| json!({"lot": lot, "kind": kind, "credits": credits(*c)}))
                    .collect();
                json!({
                    "entry_id": r.entry_id, "type": r.entry_type,
                    "time": from_seconds(r.time).to_rfc3339(), "day": from_day_number(r.day).to_string(),
                    "account": r.account, "service": r.service, "user": r.user, "feature": r.feature,
                    "variant": r.variant, "quantity": credits(r.quantity), "status": r.status,
                    "pool": r.pool, "credits": credits(r.credits), "paid": paid,
                    "shortfall": credits(r.shortfall), "matrix_version": r.matrix_version,
                    "event_id": r.event_id, "lot": r.lot, "lot_kind": r.lot_kind,
                    "payment_method": r.payment_method, "payment_reference": r.payment_reference,
                    "comment": r.comment,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let paid = r
                .paid_lots
                .iter()
                .zip(&r.paid_credits)
                .map(|(lot, c)| format!("{lot}:{}", credits(*c)))
                .collect::<Vec<_>>()
                .join(" ");
            let what = match r.entry_type.as_str() {
                "usage" if r.variant.is_empty() => r.feature.clone(),
                "usage" => format!("{}/{}", r.feature, r.variant),
                _ => format!("{} {}", r.lot_kind, r.lot),
            };
            vec![
                from_seconds(r.time).format("%Y-%m-%d %H:%M:%S").to_string(),
                r.entry_type.clone(),
                r.service.clone(),
                r.user.clone(),
                what,
                r.status.clone(),
                credits(r.credits).to_string(),
                paid,
                credits(r.shortfall).to_string(),
            ]
        })
        .collect();
    table::print(
        &[
            "time (UTC)",
            "type",
            "service",
            "user",
            "feature / lot",
            "status",
            "credits",
            "paid by",
            "shortfall",
        ],
        &table_rows,
    );
    Ok(())
}

/// `tally alerts ACCOUNT`: every alert of the account, oldest first, with its email's
/// status, attempts, recipients, times and error.
pub async fn alerts(config: &Config, account: &str, json: bool) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let rows = store::alerts::of_account(&client, account)
        .await
        .context("cannot read the alerts")?;
    let when = |secs: u32| (secs > 0).then(|| from_seconds(secs).to_rfc3339());
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "alert_id": r.alert_id, "account": r.account, "pool": r.pool, "kind": r.kind,
                    "threshold": credits(r.threshold), "balance": credits(r.balance),
                    "time": from_seconds(r.time).to_rfc3339(), "locale": r.locale,
                    "recipients": r.recipients, "status": r.status, "attempts": r.attempts,
                    "error": r.error, "digest_of": r.digest_of, "sent_in": r.sent_in,
                    "created_at": from_seconds(r.created_at).to_rfc3339(),
                    "sent_at": when(r.sent_at), "updated_at": from_seconds(r.updated_at).to_rfc3339(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let short = |secs: u32| from_seconds(secs).format("%Y-%m-%d %H:%M:%S").to_string();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let status = if r.sent_in.is_empty() {
                r.status.clone()
            } else {
                format!("{} (sent in {})", r.status, r.sent_in)
            };
            vec![
                short(r.time),
                r.kind.clone(),
                r.pool.clone(),
                credits(r.threshold).to_string(),
                credits(r.balance).to_string(),
                status,
                r.attempts.to_string(),
                r.recipients.join(" "),
                when(r.sent_at).map_or("-".into(), |_| short(r.sent_at)),
                r.error.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "time (UTC)",
            "kind",
            "pool",
            "threshold",
            "balance",
            "status",
            "attempts",
            "recipients",
            "sent (UTC)",
            "error",
        ],
        &table_rows,
    );
    Ok(())
}

/// The arguments of `tally test-email`.
#[derive(Debug, clap::Args)]
pub struct TestEmailArgs {
    pub account: String,
    /// Recipient; repeat for several.
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// `en` or `ko`.
    #[arg(long, default_value = "en")]
    pub locale: String,
    #[arg(long, default_value = "ai")]
    pub pool: String,
    /// The threshold the sample alert says was crossed.
    #[arg(long, default_value = "500")]
    pub threshold: Credits,
    /// How long to wait for delivery before giving up (the alert stays pending and
    /// `tally run` sends it when it starts).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
}

/// `tally test-email`: one low-balance alert for `account`, with its current balance and
/// its top features and users this month, through the real notifier.
pub async fn test_email(config: &Config, args: TestEmailArgs, json: bool) -> anyhow::Result<()> {
    use crate::notify::{Alert, AlertKind, Notifier};
    let client = store::client(&config.clickhouse);
    let now = Utc::now();
    let lots = reads::lots(&client, &args.account)
        .await
        .context("cannot read lots")?;
    let balance = tally_core::account::balance(&lots, now)
        .get(&args.pool)
        .map(|b| b.available)
        .unwrap_or_default();
    let month = now.date_naive().with_day(1).unwrap_or(now.date_naive());
    let top = |by: By| {
        let client = client.clone();
        let account = args.account.clone();
        async move {
            let rows = reads::daily(&client, month, now.date_naive(), Some(&account), &[by])
                .await
                .context("cannot read daily usage")?;
            let mut sums: BTreeMap<String, i64> = BTreeMap::new();
            for r in rows {
                let name = match by {
                    By::Feature => r.feature,
                    By::User => r.user,
                    By::Service => r.service,
                };
                *sums.entry(name).or_default() += r.credits;
            }
            let mut top: Vec<(String, Credits)> = sums
                .into_iter()
                .filter(|(_, c)| *c > 0)
                .map(|(n, c)| (n, credits(c)))
                .collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(5);
            anyhow::Ok(top)
        }
    };
    let alert = Alert {
        id: format!("test-{}", uuid::Uuid::new_v4()),
        account: args.account.clone(),
        pool: args.pool.clone(),
        kind: AlertKind::LowBalance,
        threshold: args.threshold,
        balance,
        time: now,
        locale: args.locale.clone(),
        recipients: args.to.clone(),
        top_features: top(By::Feature).await?,
        top_users: top(By::User).await?,
    };
    let id = alert.id.clone();
    let notifier = Notifier::spawn(&config.smtp, &config.notify, client)
        .context("cannot set up the mailer")?;
    notifier
        .submit(vec![alert])
        .context("the notifier stopped")?;
    let report = notifier.shutdown(args.wait).await;
    let server = format!("{}:{}", config.smtp.host, config.smtp.port);
    if json {
        println!(
            "{}",
            json!({"alert_id": id, "server": server, "sent": report.sent,
                   "failed": report.failed, "pending": report.left_pending + report.left_held})
        );
    } else if report.sent > 0 {
        println!(
            "test email {id} sent through {server}; `tally alerts {}` shows it",
            args.account
        );
    }
    if report.sent == 0 {
        bail!(
            "test email {id} not delivered through {server} ({} failed, {} still pending); `tally alerts {}` has the error",
            report.failed,
            report.left_pending + report.left_held,
            args.account
        );
    }
    Ok(())
}

/// `tally status`: the running process, and per partition the checkpointed offset, the
/// end offset, the lag and the last checkpoint time.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let k = &config.kafka;
    let process = if config.status.listen.is_empty() {
        Err("no status endpoint configured".to_string())
    } else {
        crate::status::fetch(&config.status.listen)
            .await
            .map_err(|e| format!("no `tally run` answers at {}: {e}", config.status.listen))
    };
    let stream = crate::run::stream_name(k);
    let checkpoints = reads::checkpoints(&store::client(&config.clickhouse), &stream)
        .await
        .map_err(|e| format!("{e}"));
    let (topics, k2) = ([k.usage_topic.clone(), k.commands_topic.clone()], k.clone());
    let kafka_view = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let ends = kafka::end_offsets(&k2, &names)?;
        let keys: Vec<(String, i32)> = ends.keys().cloned().collect();
        let group = kafka::group_offsets(&k2, &keys)?;
        Ok::<_, kafka::KafkaError>((ends, group))
    })
    .await?
    .map_err(|e| e.to_string());

    let mut partitions = Vec::new();
    if let Ok((ends, group)) = &kafka_view {
        for ((topic, partition), end) in ends {
            let checkpoint = checkpoints
                .as_ref()
                .ok()
                .and_then(|all| all.iter().find(|c| c.partition as i32 == *partition));
            let committed = checkpoint.map(|c| {
                if *topic == k.usage_topic {
                    c.usage_offset
                } else {
                    c.commands_offset
                }
            });
            partitions.push(json!({
                "topic": topic, "partition": partition,
                "committed": committed.unwrap_or(0),
                "group_committed": group.get(&(topic.clone(), *partition)),
                "end": end,
                "lag": end.map(|e| (e - committed.unwrap_or(0)).max(0)),
                "last_checkpoint": checkpoint.map(|c| from_seconds(c.written_at).to_rfc3339()),
            }));
        }
    }
    let report = json!({
        "process": match &process { Ok(p) => serde_json::to_value(p)?, Err(e) => json!({"state": "unreachable", "reason": e}) },
        "clickhouse": match &checkpoints { Ok(_) => json!("ok"), Err(e) => json!(e) },
        "kafka": match &kafka_view { Ok(_) => json!("ok"), Err(e) => json!(e) },
        "partitions": partitions,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    match &process {
        Ok(p) => println!(
            "tally run (pid {}, group {}): {}{}",
            p.pid,
            p.group,
            p.state,
            p.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        Err(e) => println!("tally run: {e}"),
    }
    if let Err(e) = &checkpoints {
        println!("ClickHouse: {e}");
    }
    if let Err(e) = &kafka_view {
        println!("Kafka: {e}");
    }
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            let text = |v: &Value| match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            [
                "topic",
                "partition",
                "committed",
                "end",
                "lag",
                "last_checkpoint",
            ]
            .iter()
            .map(|k| text(&p[*k]))
            .collect()
        })
        .collect();
    table::print(
        &[
            "topic",
            "partition",
            "committed",
            "end",
            "lag",
            "last checkpoint",
        ],
        &rows,
    );
    if let Ok(p) = &process {
        for part in &p.partitions {
            if let (Some(waiting), Some(waiting_for), Some(reason)) =
                (&part.waiting, &part.waiting_for, &part.wait_reason)
            {
                println!(
                    "partition {}: {waiting} waits for {waiting_for}: {reason}",
                    part.partition
                );
            }
        }
    }
    Ok(())
}
