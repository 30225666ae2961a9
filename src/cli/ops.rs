//! Operating commands: `migrate`, `run`, `status` and `test-email`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{Datelike, Utc};
use serde_json::{json, Value};
use tally_core::Credits;

use crate::config::Config;
use crate::kafka;
use crate::report::table;
use crate::store::reads::{self, By};
use crate::store::rows::from_seconds;
use crate::store::{self, schema};

fn credits(milli: i64) -> Credits {
    Credits::from_milli(milli)
}

pub async fn migrate(config: &Config, json: bool) -> anyhow::Result<()> {
    let server = store::server_client(&config.clickhouse);
    let database = &config.clickhouse.database;
    match &config.clickhouse.cluster {
        None => schema::migrate(&server, database).await,
        Some(cluster) => schema::migrate_cluster(&server, database, &cluster.name).await,
    }
    .with_context(|| format!("cannot create the schema at {}", config.clickhouse.url))?;
    kafka::check_access_async(&config.kafka).await?;
    kafka::create_topics(&config.kafka)
        .await
        .with_context(|| format!("cannot create topics at {}", config.kafka.brokers))?;
    kafka::limit_future_timestamps(&config.kafka, config.rules.max_future_skew).await;
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
        s.state = crate::status::ProcessState::Starting;
        s.group = config.kafka.group_id.clone();
        s.pid = std::process::id();
    }
    let metrics = crate::run::metrics::RunMetrics::new().context("cannot register metrics")?;
    let endpoint = crate::status::Endpoint {
        status,
        metrics,
        owner: crate::holds::owner::Owner::new(),
        token: (!config.status.token.is_empty())
            .then(|| std::sync::Arc::from(config.status.token.expose())),
    };
    if !config.status.listen.is_empty() {
        let listen = config.status.listen.clone();
        let endpoint = endpoint.clone();
        // Consumption does not depend on being observed: an address in use only costs
        // the endpoint, and says so.
        rt.spawn(async move {
            let served = match crate::status::bind(&listen).await {
                Ok(listener) => crate::status::serve(listener, endpoint).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::warn!(listen = %listen, error = %e, "no status endpoint");
            }
        });
    }
    let summary = crate::run::run(config, rules, drain, shutdown, rt, endpoint)?;
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
        runway: None,
        advice: None,
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
    let stream = k.stream_name();
    let checkpoints = reads::checkpoints(&store::client(&config.clickhouse), &stream)
        .await
        .map_err(|e| format!("{e}"));
    let (topics, k2) = ([k.usage_topic.clone(), k.commands_topic.clone()], k.clone());
    let kafka_view = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::check_access(&k2)?;
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
        Ok(p) => println!("tally run (pid {}, group {}): {}", p.pid, p.group, p.state),
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
