//! `tally`: meters AI usage in credits. Parses the command line, loads config, sets up
//! logging and signals, and hands over to the command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use tally::cli::events::{self, GrantArgs};
use tally::cli::ops::{self, TestEmailArgs};
use tally::cli::reports;
use tally::config::Config;
use tally::store::reads::By;

/// The run thread allocates and frees small strings per call (events, ledger rows, day
/// keys); glibc's malloc spent about 30% of its samples on them (`scripts/profile-drain.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on the memory it maps; the kernel then zeroes,
/// and with `defrag=madvise` compacts for, a 2 MiB page at the first touch of each. A drain
/// of 200,000 calls spent 1.3-2.0 s in the kernel that way, against 0.5-0.8 s without
/// (docs/benchmarks.md, session 17); checks and holds measured the same either way.
/// Only this process is affected: the machine's setting stays as it is.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status != 0 {
        // Kernels before 3.15 lack the option; tally runs as before, only slower.
        eprintln!("note: cannot disable transparent huge pages for this process");
    }
}

/// Transparent huge pages are Linux's.
#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Meters AI usage in credits: Kafka in, priced lot debits out to ClickHouse"
)]
struct Cli {
    /// Config file; every key can be overridden by TALLY_<SECTION>__<KEY>. Default:
    /// config/tally.toml if it exists, else every key's default (a file given here must
    /// exist).
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the ClickHouse schema and the Kafka topics; safe to run again.
    Migrate,
    /// Serve the HTTP API, event ingest and the dashboard on `serve.listen` until Ctrl-C or
    /// SIGTERM.
    Serve,
    /// Consume usage and commands until stopped (Ctrl-C or SIGTERM drain, flush and commit).
    Run {
        /// Exit once everything up to the end offsets seen at start is applied and committed.
        #[arg(long)]
        drain: bool,
    },
    /// Grant credits to an account (sends a credit.grant command).
    Grant(GrantArgs),
    /// Send CloudEvents from a JSON-lines file (`-` for stdin) to their topics.
    Send {
        file: PathBuf,
        /// Stamp each record with its event's `time` as the broker timestamp, to replay
        /// history: lateness, dedup windows, expiry and cycles then follow that time.
        #[arg(long)]
        stamp_event_time: bool,
    },
    /// Available credits of an account per pool and kind, used this cycle, expiring
    /// within 14 days, shortfall, flex and plan.
    Balance {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
        /// Balance at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// The running process, and per partition: committed offset, end offset, lag and last
    /// checkpoint.
    Status,
    /// Usage reports.
    Report {
        #[command(subcommand)]
        report: Report,
    },
    /// Credits granted and expired, voids and settlements, with their type (plan
    /// subscription, top-up by card or cash, promotional).
    History {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
        /// Only purchased packs, with validity and payment.
        #[arg(long)]
        purchases: bool,
    },
    /// Send a clock tick to every partition, so lots expire and cycles turn over on
    /// accounts that send nothing (`tally run` also sends them every
    /// `pipeline.tick_interval`).
    Tick {
        /// The tick's time (RFC 3339); default now.
        #[arg(long, value_parser = parse_time)]
        at: Option<DateTime<Utc>>,
    },
    /// The plans in config.
    Plans,
    /// The credit cost matrix in config, every version.
    Matrix,
    /// The ledger of an account: calls, grants and voids with the lots that paid.
    Ledger {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
        /// From this time (RFC 3339 or YYYY-MM-DD, UTC), inclusive.
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// Until this time (RFC 3339 or YYYY-MM-DD, UTC), exclusive.
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
    },
    /// Low-credit alerts of an account and what became of their emails.
    Alerts {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
    },
    /// Send a sample low-balance email for an account (its balance and top usage this
    /// month) through the configured SMTP server, recorded and rate-limited like any alert.
    TestEmail(TestEmailArgs),
    /// The signing secret (`whsec_...`) of an account's webhook endpoint, derived from
    /// `webhooks.signing_key`: give it to whoever runs the endpoint.
    WebhookSecret {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
        /// The endpoint's id in the account's `webhooks` setting.
        endpoint: String,
        /// The endpoint's `rotation` (raise it in the setting to rotate the secret).
        #[arg(long, default_value_t = 0)]
        rotation: u32,
    },
    /// Webhook deliveries of an account and their status.
    Webhooks {
        #[arg(value_parser = tally::cli::parse_id)]
        account: String,
    },
}

#[derive(Subcommand)]
enum Report {
    /// Calls and credits per day, by account and the chosen dimensions.
    Daily {
        /// First day (YYYY-MM-DD), in the accounts' time zones.
        #[arg(long)]
        from: NaiveDate,
        /// Last day, inclusive.
        #[arg(long)]
        to: NaiveDate,
        #[arg(long, value_parser = tally::cli::parse_id)]
        account: Option<String>,
        /// Group by service, user or feature; repeat for several.
        #[arg(long, value_enum)]
        by: Vec<By>,
    },
    /// Allocated, consumed, expired, carried forward and remaining credits, free and
    /// purchased apart, for a month or a custom range of days.
    Monthly {
        /// The month (YYYY-MM); or give --from and --to.
        #[arg(long, value_parser = parse_month, conflicts_with_all = ["from", "to"])]
        month: Option<NaiveDate>,
        /// First day (YYYY-MM-DD), in the accounts' time zones.
        #[arg(long, requires = "to")]
        from: Option<NaiveDate>,
        /// Last day, inclusive.
        #[arg(long, requires = "from")]
        to: Option<NaiveDate>,
        #[arg(long, value_parser = tally::cli::parse_id)]
        account: Option<String>,
    },
}

fn parse_month(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a month like 2026-11"))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("`{text}` is neither RFC 3339 nor YYYY-MM-DD"))
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // An explicit file must exist; the default one is optional, so tally also starts
    // with only TALLY_... variables (e.g. in a container without a config file).
    let path = cli.config.clone().or_else(|| {
        let default = PathBuf::from(tally::config::DEFAULT_PATH);
        default.exists().then_some(default)
    });
    let (config, rules) =
        Config::load_from(path.as_deref(), std::env::vars()).context("invalid configuration")?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let json = cli.json;
    match cli.command {
        Command::Migrate => rt.block_on(ops::migrate(&config, json)),
        Command::Run { drain } => {
            let shutdown = Arc::new(AtomicBool::new(false));
            rt.spawn(watch_signals(
                shutdown.clone(),
                config.pipeline.shutdown_timeout,
                Arc::new(tokio::sync::Notify::new()),
            ));
            let handle = rt.handle().clone();
            // The consumer loop blocks; it runs on its own thread and reaches async
            // clients through the runtime handle.
            std::thread::Builder::new()
                .name("tally-run".into())
                .spawn(move || ops::run(config, rules, drain, json, shutdown, handle))
                .context("cannot start the run thread")?
                .join()
                .map_err(|_| anyhow::anyhow!("the run thread panicked"))?
        }
        Command::Serve => {
            let shutdown = Arc::new(AtomicBool::new(false));
            let stopping = Arc::new(tokio::sync::Notify::new());
            rt.spawn(watch_signals(
                shutdown,
                config.pipeline.shutdown_timeout,
                stopping.clone(),
            ));
            rt.block_on(tally::serve::run(config, rules, async move {
                stopping.notified().await;
            }))
        }
        Command::Grant(args) => rt.block_on(events::grant(&config, args, json)),
        Command::Status => rt.block_on(ops::status(&config, json)),
        Command::Send {
            file,
            stamp_event_time,
        } => rt.block_on(events::send(&config, &file, stamp_event_time, json)),
        Command::Balance { account, at } => rt.block_on(reports::balance(
            &config,
            &rules,
            &account,
            at.unwrap_or_else(Utc::now),
            json,
        )),
        Command::Report {
            report:
                Report::Daily {
                    from,
                    to,
                    account,
                    by,
                },
        } => rt.block_on(reports::daily(
            &config,
            from,
            to,
            account.as_deref(),
            &by,
            json,
        )),
        Command::Report {
            report:
                Report::Monthly {
                    month,
                    from,
                    to,
                    account,
                },
        } => {
            let (from, to) = match (month, from, to) {
                (Some(first), _, _) => {
                    let next = first
                        .checked_add_months(chrono::Months::new(1))
                        .context("month out of range")?;
                    (first, next)
                }
                (None, Some(from), Some(to)) => (from, to + chrono::TimeDelta::days(1)),
                _ => anyhow::bail!("give --month YYYY-MM, or --from and --to"),
            };
            rt.block_on(reports::monthly(
                &config,
                from,
                to,
                account.as_deref(),
                json,
            ))
        }
        Command::History { account, purchases } => {
            rt.block_on(reports::history(&config, &rules, &account, purchases, json))
        }
        Command::Tick { at } => {
            rt.block_on(events::tick(&config, at.unwrap_or_else(Utc::now), json))
        }
        Command::Plans => reports::plans(&rules, json),
        Command::Matrix => reports::matrix(&rules, json),
        Command::Ledger { account, from, to } => rt.block_on(reports::ledger(
            &config,
            &rules,
            &account,
            from.unwrap_or(DateTime::UNIX_EPOCH),
            to.unwrap_or_else(|| Utc::now() + chrono::TimeDelta::days(1)),
            json,
        )),
        Command::Alerts { account } => {
            rt.block_on(reports::alerts(&config, &rules, &account, json))
        }
        Command::TestEmail(args) => rt.block_on(ops::test_email(&config, args, json)),
        Command::WebhookSecret {
            account,
            endpoint,
            rotation,
        } => {
            let key = config.webhooks.signing_key.expose();
            if key.is_empty() {
                anyhow::bail!(
                    "webhooks.signing_key is not set (TALLY_WEBHOOKS__SIGNING_KEY or \
                     webhooks.signing_key_file)"
                );
            }
            let secret =
                tally::notify::webhooks::account_secret(key, &account, &endpoint, rotation);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"account": account, "endpoint": endpoint,
                                       "rotation": rotation, "secret": secret})
                );
            } else {
                println!("{secret}");
            }
            Ok(())
        }
        Command::Webhooks { account } => {
            let store = tally::store::client(&config.clickhouse);
            let rows = rt
                .block_on(tally::store::webhooks::of_account(&store, &account))
                .context("ClickHouse: webhooks")?;
            if json {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|row| {
                        serde_json::json!({"webhook_id": row.webhook_id, "endpoint": row.endpoint,
                            "url": row.url, "event_type": row.event_type,
                            "notice_id": row.notice_id, "status": row.status,
                            "attempts": row.attempts, "response_status": row.response_status,
                            "error": row.error})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if rows.is_empty() {
                println!("no webhooks for `{account}`");
            } else {
                for row in rows {
                    println!(
                        "{}  {:<24} {:<28} {:<8} attempts {}  {}",
                        row.webhook_id,
                        row.endpoint,
                        row.event_type,
                        row.status,
                        row.attempts,
                        row.error
                    );
                }
            }
            Ok(())
        }
    }
}

/// Exit code after a second Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_SECOND_SIGNAL: i32 = 130;
/// Exit code when draining took longer than `pipeline.shutdown_timeout`.
const EXIT_SHUTDOWN_DEADLINE: i32 = 124;

/// Sets `shutdown` on the first Ctrl-C or SIGTERM: the run loop then drains, flushes and
/// commits. A second signal exits at once, and so does the end of `deadline`: whatever was
/// not committed is replayed at the next start, exactly as after a crash (the commit
/// point is the checkpoint INSERT, so stopping anywhere else loses nothing). `stopping` is
/// woken on the first signal, for servers that stop on a future.
async fn watch_signals(
    shutdown: Arc<AtomicBool>,
    deadline: std::time::Duration,
    stopping: Arc<tokio::sync::Notify>,
) {
    let mut signals = Signals::new();
    tracing::debug!("watching for Ctrl-C and SIGTERM");
    signals.next().await;
    tracing::info!(
        deadline = %humantime::format_duration(deadline),
        "shutting down: draining, flushing and committing (a second Ctrl-C or SIGTERM exits at once)"
    );
    shutdown.store(true, Ordering::Relaxed);
    stopping.notify_one();
    tokio::select! {
        _ = signals.next() => {
            tracing::warn!("second signal: exiting now; what was not committed is replayed at the next start");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
        _ = tokio::time::sleep(deadline) => {
            tracing::error!(
                deadline = %humantime::format_duration(deadline),
                "shutdown took longer than pipeline.shutdown_timeout: exiting; what was not committed is replayed at the next start"
            );
            std::process::exit(EXIT_SHUTDOWN_DEADLINE);
        }
    }
}

/// Ctrl-C and, on Unix, SIGTERM, as one stream of stop requests.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| tracing::error!(error = %e, "cannot watch SIGTERM"))
                .ok();
            Signals { term }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        if tokio::signal::ctrl_c().await.is_err() {
            // Signals cannot be watched: never report one.
            std::future::pending::<()>().await;
        }
    }
}
