//! Settings: a TOML file, overridden key by key by `TALLY_...` environment variables,
//! checked without touching the network.

pub mod keys;
pub mod offers;
pub mod serve;
pub mod webhooks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeDelta;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tally_core::account::MAX_GRANT;
use tally_core::alerts::AlertRules;
use tally_core::plans::Plan;
use tally_core::{CostMatrix, Credits, Policy, Rules};

/// Everything tally reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events come from and rejected events go.
    pub kafka: KafkaConfig,
    /// Where the ledger, rollups, lots, balances and checkpoints live.
    pub clickhouse: ClickHouseConfig,
    /// Batching of writes and commits.
    pub pipeline: PipelineConfig,
    /// The credit rules every account is held to.
    pub rules: RulesConfig,
    /// Where `tally run` reports its own status.
    pub status: StatusConfig,
    /// Plans by name, assigned to accounts by `account.plan` commands. A file's `[plans]`
    /// replaces the default plans as a whole.
    pub plans: BTreeMap<String, Plan>,
    /// The mail server that low-credit emails go through.
    pub smtp: SmtpConfig,
    /// How low-credit emails are rate-limited, retried and worded.
    pub notify: NotifyConfig,
    /// `tally serve`: the HTTP API, ingest and dashboard.
    pub serve: serve::ServeConfig,
    /// Signed webhooks of alerts and lifecycle events: global endpoints, secrets, limits.
    pub webhooks: webhooks::WebhooksConfig,
    /// Packs and plan prices that recommendations are made from.
    pub offers: offers::OffersConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// SMTP server port: 25 or 1025 for plain, 587 for STARTTLS, 465 for TLS.
    pub port: u16,
    /// `none` (plain text, local capture servers only), `starttls` (upgrade required) or
    /// `tls` (TLS from the first byte).
    pub security: SmtpSecurity,
    /// User for SMTP AUTH; empty to send without logging in.
    pub username: String,
    /// Password for SMTP AUTH. Only from the environment (TALLY_SMTP__PASSWORD), never
    /// written in the file; never logged.
    pub password: Secret,
    /// Absolute path of a file holding the SMTP password (e.g. a mounted secret), read at
    /// start-up; instead of TALLY_SMTP__PASSWORD. Empty: none.
    pub password_file: PathBuf,
    /// Sender of the emails, e.g. `tally <alerts@example.com>`.
    pub from: String,
    /// Longest wait for the server on each SMTP command.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    None,
    Starttls,
    Tls,
}

/// A credential: readable by the code that needs it, printed as `***` everywhere else.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    /// Always empty: a secret is never written out, whatever serializes the config.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("")
    }
}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Emails to one account at most, per `per_account_period`; alerts over it are held
    /// and folded into the account's next email (a digest).
    pub per_account: u32,
    /// The period of `per_account`.
    #[serde(with = "humantime_serde")]
    pub per_account_period: Duration,
    /// Emails a second at most, over all accounts (the SMTP provider's quota); emails over
    /// it wait, none is held back.
    pub global_per_second: u32,
    /// Attempts to send one email before it is recorded as failed.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles after each failure.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// At start, alerts recorded but not yet sent (a crashed process's) are sent if they
    /// were created within this window; older ones are left as they are. 0 to send none.
    #[serde(with = "humantime_serde")]
    pub resend_within: Duration,
    /// Prefix of every subject, e.g. the product's name.
    pub product_name: String,
    /// Where admins buy more credits; linked from every email.
    pub purchase_url: String,
    /// How to buy more credits, in English.
    pub purchase_text_en: String,
    /// How to buy more credits, in Korean.
    pub purchase_text_ko: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Address of `tally run`'s status endpoint (`host:port`), read by `tally status`;
    /// empty to serve none.
    pub listen: String,
    /// Address (`host:port`) other processes reach this endpoint at, written in this
    /// process's claim rows so `tally serve` routes checks and holds of the partitions it
    /// owns to it; empty: `listen`.
    pub advertise: String,
    /// The shared token of the `/internal` routes (checks and hold answers for `tally
    /// serve`), which `tally serve` sends as a bearer token. Only from the environment
    /// (TALLY_STATUS__TOKEN), never written in the file; never logged. Required when
    /// `listen` is not a loopback address.
    pub token: Secret,
    /// Or: absolute path of a file holding the token (e.g. a mounted secret).
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,...`).
    pub brokers: String,
    /// Consumer group of `tally run`; every process of one deployment shares it.
    pub group_id: String,
    /// Static group membership: a stable name per process (e.g. a StatefulSet pod name),
    /// so a restarted process takes its partitions back at once. Empty: dynamic members.
    pub instance_id: String,
    /// Topic of `ai.usage` events, keyed by account.
    pub usage_topic: String,
    /// Topic of credit and account commands, keyed by account, co-partitioned with usage.
    pub commands_topic: String,
    /// Dead-letter topic: rejected events with their reason in headers.
    pub dlq_topic: String,
    /// Partitions for the topics `tally migrate` creates.
    pub partitions: i32,
    /// Which partitions this process owns: `group` (the consumer group decides and
    /// rebalances), `all`, or a list such as `0,1,2`.
    pub assignment: Assignment,
    /// How long an event waits for the other topic of its partition before it is applied.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// How every Kafka client of tally reaches the brokers: `plaintext`, `ssl`,
    /// `sasl_plaintext` or `sasl_ssl` (librdkafka's `security.protocol`).
    pub security_protocol: SecurityProtocol,
    /// With `sasl_*`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: SaslMechanism,
    /// With `sasl_*`: the SASL user name (Confluent Cloud: the API key).
    pub sasl_username: String,
    /// With `sasl_*`: the SASL password. Only from the environment
    /// (TALLY_KAFKA__SASL_PASSWORD), refused in the file; never logged.
    pub sasl_password: Secret,
    /// Absolute path of a file holding the SASL password (e.g. a mounted secret), read at
    /// start-up; instead of TALLY_KAFKA__SASL_PASSWORD. Empty: none.
    pub sasl_password_file: PathBuf,
    /// With `ssl` or `sasl_ssl`: absolute path of the CA certificates (PEM) that sign the
    /// brokers' certificates, for a private CA. Empty: the system's CA certificates.
    pub ssl_ca_file: PathBuf,
    /// With `ssl` or `sasl_ssl`, for mutual TLS: absolute path of this client's
    /// certificate (PEM). Empty: none.
    pub ssl_cert_file: PathBuf,
    /// The private key (PEM) of `ssl_cert_file`; absolute path. Empty: none.
    pub ssl_key_file: PathBuf,
    /// The key hash that places an account in a partition (`crc32`, librdkafka's
    /// default, or `murmur2`, the Java clients'): every producer of tally uses it, and
    /// `tally run` forwards a record found elsewhere to its account's partition.
    pub partitioner: crate::partitioner::Partitioner,
}

/// How Kafka clients connect (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms librdkafka has once it is built with OpenSSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How a `tally run` process gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// The consumer group assigns and rebalances (several processes share the topics).
    Group,
    /// This process owns every partition.
    All,
    /// This process owns exactly these partitions.
    Listed(Vec<i32>),
}

impl Assignment {
    /// `None` for group assignment; otherwise the partitions to own (`None` inside: all).
    pub fn partitions(&self) -> Option<Option<Vec<i32>>> {
        match self {
            Assignment::Group => None,
            Assignment::All => Some(None),
            Assignment::Listed(list) => Some(Some(list.clone())),
        }
    }
}

impl Serialize for Assignment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Assignment::Group => serializer.serialize_str("group"),
            Assignment::All => serializer.serialize_str("all"),
            Assignment::Listed(list) => {
                let text: Vec<String> = list.iter().map(i32::to_string).collect();
                serializer.serialize_str(&text.join(","))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Assignment {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim() {
            "group" => Ok(Assignment::Group),
            "all" => Ok(Assignment::All),
            list => list
                .split(',')
                .map(|p| p.trim().parse::<i32>().ok().filter(|p| *p >= 0))
                .collect::<Option<Vec<i32>>>()
                .filter(|l| !l.is_empty())
                .map(Assignment::Listed)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not `group`, `all` or a list of partitions like `0,1,2`"
                    ))
                }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP or HTTPS endpoint, e.g. `http://127.0.0.1:8123` or
    /// `https://abc.clickhouse.cloud:8443`.
    pub url: String,
    /// Database holding tally's tables; `tally migrate` creates it.
    pub database: String,
    /// User name.
    pub user: String,
    /// Password. Only from the environment (TALLY_CLICKHOUSE__PASSWORD), never written in
    /// the file; never logged.
    pub password: Secret,
    /// Absolute path of a file holding the password (e.g. a mounted secret), read at
    /// start-up; instead of TALLY_CLICKHOUSE__PASSWORD. Empty: none.
    pub password_file: PathBuf,
    /// Longest wait on each ClickHouse call (connecting, sending, and each wait for the
    /// answer), so a hung server fails the call instead of blocking tally.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// With an `https://` url: absolute path of the CA certificates (PEM) that sign the
    /// server's certificate, for a private CA; only these are then trusted. Empty: the
    /// public CAs built into tally (Mozilla's list).
    pub ca_file: PathBuf,
    /// A ClickHouse cluster (replicated and sharded) instead of the one server at `url`;
    /// absent (the default): the one server. `url` then names any server of the cluster,
    /// for `tally migrate` (DDL `ON CLUSTER`) and the reads (Distributed tables). See
    /// docs/cluster.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `clickhouse.cluster`: the cluster tally's tables live on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name in the servers' `remote_servers`, for `ON CLUSTER` and the
    /// Distributed tables.
    pub name: String,
    /// The HTTP(S) URLs of every shard's replicas, shards in the order of `remote_servers`
    /// (the Distributed tables send partition p to shard p mod the number of shards, in
    /// that order): a list of lists, or as text (e.g. in TALLY_CLICKHOUSE__CLUSTER__SHARDS)
    /// replicas separated by `,` and shards by `;`.
    #[serde(deserialize_with = "shard_urls")]
    pub shards: Vec<Vec<String>>,
}

/// Shards as a TOML list of lists of URLs, or as the text `a,b;c` (an environment value).
fn shard_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        Lists(Vec<Vec<String>>),
        Text(String),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::Lists(lists) => lists,
        Urls::Text(text) => text
            .split(';')
            .map(|shard| shard.split(',').map(|u| u.trim().to_string()).collect())
            .collect(),
    })
}

impl ClusterConfig {
    /// The key and the problem of the first thing wrong, without touching the network.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let name = &self.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            let problem = format!("`{name}` must be letters, digits and underscores");
            return Err(("clickhouse.cluster.name", problem));
        }
        if self.shards.is_empty() {
            return Err((
                "clickhouse.cluster.shards",
                "needs at least one shard".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.is_empty() || shard.iter().all(|u| u.is_empty()) {
                let problem = format!("shard {} has no replica", i + 1);
                return Err(("clickhouse.cluster.shards", problem));
            }
            for url in shard {
                let scheme = ["http://", "https://"]
                    .iter()
                    .find(|s| url.starts_with(**s));
                if scheme.is_none_or(|s| url.len() == s.len()) {
                    let problem = format!("`{url}` is not an http:// or https:// URL");
                    return Err(("clickhouse.cluster.shards", problem));
                }
                if !seen.insert(url.trim_end_matches('/')) {
                    let problem = format!("`{url}` is named twice");
                    return Err(("clickhouse.cluster.shards", problem));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Longest time between two flushes of outputs and offsets.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Most events applied between two flushes.
    pub max_batch_events: usize,
    /// How often `tally run` sends a clock tick to each partition it owns, so lots expire
    /// and cycles turn over on accounts that send nothing; `0s` sends none.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// A partition's whole state is written as a snapshot, and the checkpoint rows it
    /// supersedes deleted, once the account states and daily totals written since the last
    /// snapshot exceed twice the live ones, and at least this many.
    pub snapshot_min_rows: usize,
    /// Usage records of a partition per rollup segment: open daily totals are kept (and
    /// reloaded at start) only for the segment being read, so this bounds them. Part of
    /// the identity of the rows written: tally refuses to start with another value on a
    /// database whose checkpoints were written with one.
    pub rollup_segment_records: u32,
    /// Longest time `tally run` takes to drain, flush and commit after Ctrl-C or SIGTERM;
    /// then it exits anyway, and what was not committed is replayed at the next start.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often `tally run --drain` and `tally send` log their progress (counts, rate,
    /// what is left) when stderr is not a terminal; on a terminal they draw a bar instead.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Most records one side (usage or commands) of a partition holds received and not yet
    /// applied, e.g. while the other side lags: at this many its fetch pauses, and it
    /// resumes once the merge has applied half of them.
    pub max_queued_records: usize,
    /// The same bound in bytes (received key and payload, plus each entry's fixed size).
    pub max_queued_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Path of the cost matrix, relative to the config file's folder.
    pub matrix: PathBuf,
    /// Default time zone of accounts (IANA name).
    pub timezone: String,
    /// Default consumption policy: `earliest_expiry` or `kind_order`.
    pub policy: Policy,
    /// Oldest accepted event, relative to its arrival.
    #[serde(with = "humantime_serde")]
    pub max_lateness: Duration,
    /// Furthest accepted event in the future, relative to its arrival.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Window after an event's first arrival in which the same source and id is a duplicate.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How long after its end a lot still pays for calls that arrive late, before its
    /// expiry is written.
    #[serde(with = "humantime_serde")]
    pub expiry_grace: Duration,
    /// Whether a grant first pays the account's outstanding shortfall.
    pub settle_shortfall: bool,
    /// Postpaid overage once every lot is empty.
    pub flex: FlexConfig,
    /// Default low-credit alert thresholds, applied to every pool; accounts override them
    /// with `account.settings {"alerts": {...}}`.
    pub alerts: AlertThresholds,
    /// Most holds one account may have open at once; a hold over it is rejected.
    pub max_open_holds: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// Whether accounts that do not say get alerts at all.
    pub enabled: bool,
    /// Alert when a pool's available balance falls below this; 0: never.
    pub low_balance: Credits,
    /// Alert when this percentage of the cycle's included credits is used; 0: never.
    pub included_used_percent: u32,
    /// Alert when the pool is empty and calls start going unpaid.
    pub shortfall: bool,
    /// Alert when more than this expires within 14 days; 0: never.
    pub expiring_min: Credits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlexConfig {
    /// Whether flex is on for accounts that do not say.
    pub enabled: bool,
    /// Flex credits allowed per cycle when neither the account nor its plan says.
    pub threshold: Credits,
}

// ---------------------------------------------------------------- defaults
//
// The values of the shipped config/tally.toml, in code, so a file may give only what
// differs and tally starts with none. README.md's table of settings is checked against
// these by tests/config_defaults.rs.

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            pipeline: PipelineConfig::default(),
            rules: RulesConfig::default(),
            status: StatusConfig::default(),
            plans: default_plans(),
            smtp: SmtpConfig::default(),
            notify: NotifyConfig::default(),
            serve: serve::ServeConfig::default(),
            webhooks: webhooks::WebhooksConfig::default(),
            offers: offers::OffersConfig::default(),
        }
    }
}

/// The shipped plans: free 0 (no flex), pro 100, enterprise 500 and standard 1,500 a
/// month, pro_yearly 1,200 a year, and a contract of 200,000 a year with flex up to
/// 1,000,000 a cycle.
fn default_plans() -> BTreeMap<String, Plan> {
    use tally_core::plans::Period;
    let plan = |credits: i64, period: Period, flex: Option<i64>| Plan {
        credits: Credits::from_whole(credits),
        pool: "ai".into(),
        period,
        flex_threshold: flex.map(Credits::from_whole),
    };
    BTreeMap::from([
        ("free".to_string(), plan(0, Period::Month, Some(0))),
        ("pro".to_string(), plan(100, Period::Month, None)),
        ("pro_yearly".to_string(), plan(1200, Period::Year, None)),
        ("enterprise".to_string(), plan(500, Period::Month, None)),
        ("standard".to_string(), plan(1500, Period::Month, None)),
        (
            "contract".to_string(),
            plan(200_000, Period::Year, Some(1_000_000)),
        ),
    ])
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "tally".into(),
            instance_id: String::new(),
            usage_topic: "ai.usage".into(),
            commands_topic: "credit.commands".into(),
            dlq_topic: "tally.dlq".into(),
            partitions: 6,
            assignment: Assignment::All,
            max_idle: Duration::from_millis(200),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: PathBuf::new(),
            ssl_ca_file: PathBuf::new(),
            ssl_cert_file: PathBuf::new(),
            ssl_key_file: PathBuf::new(),
            partitioner: crate::partitioner::Partitioner::Crc32,
        }
    }
}

impl KafkaConfig {
    /// The name checkpoints are stored under: the pair of topics they cover.
    pub fn stream_name(&self) -> String {
        format!("{}+{}", self.usage_topic, self.commands_topic)
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "tally".into(),
            user: "default".into(),
            password: Secret::default(),
            password_file: PathBuf::new(),
            timeout: Duration::from_secs(30),
            ca_file: PathBuf::new(),
            cluster: None,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            flush_interval: Duration::from_secs(1),
            max_batch_events: 50_000,
            tick_interval: Duration::from_secs(60),
            snapshot_min_rows: 20_000,
            rollup_segment_records: 50_000,
            shutdown_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_secs(5),
            max_queued_records: 20_000,
            max_queued_bytes: 16 << 20,
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            matrix: PathBuf::from(DEFAULT_MATRIX),
            timezone: "Asia/Seoul".into(),
            policy: Policy::EarliestExpiry,
            max_lateness: Duration::from_secs(35 * 86_400),
            max_future_skew: Duration::from_secs(5 * 60),
            dedup_window: Duration::from_secs(24 * 3_600),
            expiry_grace: Duration::from_secs(5 * 60),
            settle_shortfall: true,
            flex: FlexConfig::default(),
            alerts: AlertThresholds::default(),
            max_open_holds: tally_core::account::DEFAULT_MAX_OPEN_HOLDS,
        }
    }
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            enabled: true,
            low_balance: Credits::from_whole(100),
            included_used_percent: 80,
            shortfall: true,
            expiring_min: Credits::from_whole(100),
        }
    }
}

impl Default for FlexConfig {
    fn default() -> Self {
        FlexConfig {
            enabled: true,
            threshold: Credits::from_whole(1000),
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: "127.0.0.1:9464".into(),
            advertise: String::new(),
            token: Secret::default(),
            token_file: PathBuf::new(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 1025,
            security: SmtpSecurity::None,
            username: String::new(),
            password: Secret::default(),
            password_file: PathBuf::new(),
            from: "tally <alerts@tally.local>".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            per_account: 3,
            per_account_period: Duration::from_secs(3_600),
            global_per_second: 10,
            max_attempts: 8,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5 * 60),
            resend_within: Duration::from_secs(86_400),
            product_name: "tally".into(),
            purchase_url: "https://billing.example.com/credits".into(),
            purchase_text_en: "Top up credits in Billing > Credits. Purchased credits stay \
                               valid for 360 days from purchase."
                .into(),
            purchase_text_ko: "결제 > 크레딧에서 [크레딧 충전하기]를 눌러 추가로 구매할 수 \
                               있습니다. 충전한 크레딧은 구매일로부터 360일 동안 사용할 수 \
                               있습니다."
                .into(),
        }
    }
}

/// The default `rules.matrix`.
const DEFAULT_MATRIX: &str = "matrix.toml";

/// The shipped cost matrix, built in: used when tally runs without a config file and no
/// `matrix.toml` is found next to where it runs.
const BUILTIN_MATRIX: &str = include_str!("../config/matrix.toml");

/// The default config file, used only when it exists.
pub const DEFAULT_PATH: &str = "config/tally.toml";

impl Config {
    /// Every key with its default, as TOML: what a file's keys and `TALLY_...` variables
    /// are typed and checked against.
    pub fn default_table() -> toml::Table {
        // Serializing plain structs of strings, numbers, booleans and maps cannot fail.
        toml::Table::try_from(Config::default()).unwrap_or_default()
    }
}

/// A config that cannot be used, named by file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {problem}")]
    Key {
        file: String,
        key: String,
        problem: String,
    },
}

/// Environment variables that are not config keys.
const NOT_KEYS: [&str; 2] = ["TALLY_CONFIG", "TALLY_LOG"];

impl Config {
    /// Reads `path`, applies `TALLY_...` overrides from `env`, and validates. The file must
    /// exist; keys it leaves out take their defaults.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Rules), ConfigError> {
        Config::load_from(Some(path), env)
    }

    /// Like `load`, without a file (`None`): every key from its default or `env`.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Rules), ConfigError> {
        let file = match path {
            Some(path) => path.display().to_string(),
            None => "(no config file)".to_string(),
        };
        let mut value = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                    file: file.clone(),
                    message: e.message().to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        refuse_secrets_in_file(&value, &file)?;
        let matrix_in_file = file_table_has(&value, "rules.matrix");
        let defaults = Config::default_table();
        let mut overridden = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("TALLY_") else {
                continue;
            };
            if NOT_KEYS.contains(&name.as_str()) {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            apply_override(&mut value, &defaults, &keys, &raw).map_err(|problem| {
                ConfigError::Key {
                    file: format!("{file} (environment {name})"),
                    key: keys.join("."),
                    problem,
                }
            })?;
            overridden.push((keys.join("."), name));
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                let key = e.path().to_string();
                let origin = overridden
                    .iter()
                    .find(|(k, _)| key.starts_with(k.as_str()))
                    .map(|(_, env)| format!("{file} (environment {env})"))
                    .unwrap_or_else(|| file.clone());
                ConfigError::Key {
                    file: origin,
                    key,
                    problem: e.into_inner().message().to_string(),
                }
            })?;
        let base = path.map(|p| p.parent().unwrap_or(Path::new(".")));
        // Whether `rules.matrix` was given (in the file or the environment): only then must
        // that file exist; left out, the shipped matrix built into the binary stands in for a
        // `matrix.toml` that is not next to the config file.
        let matrix_given = overridden.iter().any(|(k, _)| k == "rules.matrix") || matrix_in_file;
        let rules = config.validate_matrix_given(&file, base, matrix_given)?;
        config.read_secrets(&file)?;
        config.webhooks.load_secrets(&file)?;
        Ok((config, rules))
    }

    /// Reads `clickhouse.password_file` and `kafka.sasl_password_file` into their
    /// passwords, so the clients never touch the files and the passwords are held only as
    /// `Secret`s.
    fn read_secrets(&mut self, file: &str) -> Result<(), ConfigError> {
        for (key, path, secret) in [
            (
                "clickhouse.password_file",
                &self.clickhouse.password_file,
                &mut self.clickhouse.password,
            ),
            (
                "kafka.sasl_password_file",
                &self.kafka.sasl_password_file,
                &mut self.kafka.sasl_password,
            ),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
                file: file.to_string(),
                key: key.into(),
                problem: format!("cannot read `{}`: {e}", path.display()),
            })?;
            // Files written by editors and `echo` end with a newline that is not part of it.
            *secret = Secret::new(text.trim_end_matches(['\r', '\n']).to_string());
        }
        let s = &mut self.status;
        if !s.token_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(&s.token_file).map_err(|e| ConfigError::Key {
                file: file.to_string(),
                key: "status.token_file".into(),
                problem: format!("cannot read `{}`: {e}", s.token_file.display()),
            })?;
            let token = text.trim_end_matches(['\r', '\n']);
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Key {
                    file: file.to_string(),
                    key: "status.token_file".into(),
                    problem: "the token must be at least 16 visible ASCII characters".into(),
                });
            }
            s.token = Secret::new(token.to_string());
        }
        Ok(())
    }

    /// Checks every value without the network and builds the core's rules. `base` is the
    /// config file's folder (relative paths start there); `None` without a file: then they
    /// start in the working directory, and a default `rules.matrix` that is not there is
    /// the built-in copy of the shipped matrix.
    pub fn validate(&self, file: &str, base: Option<&Path>) -> Result<Rules, ConfigError> {
        self.validate_matrix_given(file, base, false)
    }

    /// `validate`, where `matrix_given` says whether `rules.matrix` was set (then its file
    /// must exist) or left at its default (then a missing `matrix.toml` is the built-in
    /// copy of the shipped matrix, wherever the config file lives).
    fn validate_matrix_given(
        &self,
        file: &str,
        base: Option<&Path>,
        matrix_given: bool,
    ) -> Result<Rules, ConfigError> {
        let key_err = |key: &str, problem: String| ConfigError::Key {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        self.webhooks.validate(file)?;
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.usage_topic", &k.usage_topic),
            ("kafka.commands_topic", &k.commands_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("clickhouse.user", &self.clickhouse.user),
        ] {
            if value.trim().is_empty() {
                return Err(key_err(key, "must not be empty".into()));
            }
        }
        if k.usage_topic == k.commands_topic
            || k.dlq_topic == k.usage_topic
            || k.dlq_topic == k.commands_topic
        {
            return Err(key_err(
                "kafka.dlq_topic",
                "usage, commands and dead-letter topics must be three different topics".into(),
            ));
        }
        if k.partitions < 1 {
            return Err(key_err("kafka.partitions", "must be at least 1".into()));
        }
        let url = &self.clickhouse.url;
        let https = url.starts_with("https://") && url.len() > "https://".len();
        if !https && (!url.starts_with("http://") || url.len() == "http://".len()) {
            return Err(key_err(
                "clickhouse.url",
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
        let ca_file = &self.clickhouse.ca_file;
        if !ca_file.as_os_str().is_empty() {
            if !https {
                // A CA that is never used would hide a url that should have been https://.
                return Err(key_err(
                    "clickhouse.ca_file",
                    format!("is only used with an https:// url, and clickhouse.url is `{url}`"),
                ));
            }
            readable_file(&key_err, "clickhouse.ca_file", ca_file)?;
            crate::tls::load_certs(ca_file).map_err(|p| key_err("clickhouse.ca_file", p))?;
        }
        self.validate_kafka_security(&key_err)?;
        if let Some(cluster) = &self.clickhouse.cluster {
            cluster
                .validate()
                .map_err(|(key, problem)| key_err(key, problem))?;
        }
        if self.clickhouse.timeout.is_zero() {
            return Err(key_err(
                "clickhouse.timeout",
                "must be more than zero".into(),
            ));
        }
        if !(1..=100_000).contains(&self.rules.max_open_holds) {
            return Err(key_err(
                "rules.max_open_holds",
                "must be between 1 and 100000".into(),
            ));
        }
        if self.pipeline.shutdown_timeout.is_zero() {
            return Err(key_err(
                "pipeline.shutdown_timeout",
                "must be more than zero".into(),
            ));
        }
        validate_password_file(
            &key_err,
            "clickhouse.password_file",
            "TALLY_CLICKHOUSE__PASSWORD",
            &self.clickhouse.password_file,
            &self.clickhouse.password,
        )?;
        let db = &self.clickhouse.database;
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(key_err(
                "clickhouse.database",
                format!("`{db}` must be letters, digits and underscores"),
            ));
        }
        if self.pipeline.flush_interval.is_zero() {
            return Err(key_err(
                "pipeline.flush_interval",
                "must be more than zero".into(),
            ));
        }
        if self.pipeline.max_batch_events == 0 || self.pipeline.max_batch_events > 500_000 {
            // Bounds the memory a flush holds and the size of one checkpoint INSERT.
            return Err(key_err(
                "pipeline.max_batch_events",
                "must be between 1 and 500000".into(),
            ));
        }
        if self.pipeline.max_queued_records == 0 || self.pipeline.max_queued_records > 1_000_000 {
            // The queues of every partition's two sides are held in memory at once.
            return Err(key_err(
                "pipeline.max_queued_records",
                "must be between 1 and 1000000".into(),
            ));
        }
        if self.pipeline.max_queued_bytes < 1 << 10 || self.pipeline.max_queued_bytes > 1 << 30 {
            return Err(key_err(
                "pipeline.max_queued_bytes",
                "must be between 1024 and 1073741824".into(),
            ));
        }
        if self.pipeline.rollup_segment_records == 0
            || self.pipeline.rollup_segment_records > 10_000_000
        {
            return Err(key_err(
                "pipeline.rollup_segment_records",
                "must be between 1 and 10000000".into(),
            ));
        }
        if !self.status.listen.is_empty()
            && self.status.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(key_err(
                "status.listen",
                format!("`{}` is not host:port", self.status.listen),
            ));
        }
        validate_password_file(
            &key_err,
            "status.token_file",
            "TALLY_STATUS__TOKEN",
            &self.status.token_file,
            &self.status.token,
        )?;
        let token = self.status.token.expose();
        if !token.is_empty() && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic())) {
            return Err(key_err(
                "status.token",
                "must be at least 16 visible ASCII characters".into(),
            ));
        }
        let beyond_loopback = self
            .status
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if beyond_loopback && token.is_empty() && self.status.token_file.as_os_str().is_empty() {
            // The internal routes answer any account's balance and hold decisions.
            return Err(key_err(
                "status.listen",
                format!(
                    "`{}` is not a loopback address: the /internal routes then need a shared \
                     token in TALLY_STATUS__TOKEN or status.token_file",
                    self.status.listen
                ),
            ));
        }
        if !self.status.advertise.is_empty()
            && !self
                .status
                .advertise
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(key_err(
                "status.advertise",
                format!("`{}` is not host:port", self.status.advertise),
            ));
        }
        if self.pipeline.tick_interval > Duration::ZERO
            && self.pipeline.tick_interval < Duration::from_secs(1)
        {
            return Err(key_err(
                "pipeline.tick_interval",
                "must be 0s (no ticks) or at least 1s".into(),
            ));
        }
        let credits_in_range = |c: Credits| !c.is_negative() && c <= MAX_GRANT;
        for (key, value) in [
            ("rules.alerts.low_balance", self.rules.alerts.low_balance),
            ("rules.alerts.expiring_min", self.rules.alerts.expiring_min),
        ] {
            if !credits_in_range(value) {
                return Err(key_err(key, format!("must be between 0 and {MAX_GRANT}")));
            }
        }
        if self.rules.alerts.included_used_percent > 100 {
            return Err(key_err(
                "rules.alerts.included_used_percent",
                "must be at most 100".into(),
            ));
        }
        if !credits_in_range(self.rules.flex.threshold) {
            return Err(key_err(
                "rules.flex.threshold",
                format!("must be between 0 and {MAX_GRANT}"),
            ));
        }
        for (name, plan) in &self.plans {
            if name.trim().is_empty() || name.contains(char::is_whitespace) {
                return Err(key_err(
                    &format!("plans.{name}"),
                    "a plan name must be one word".into(),
                ));
            }
            if !credits_in_range(plan.credits) {
                return Err(key_err(
                    &format!("plans.{name}.credits"),
                    format!("must be between 0 and {MAX_GRANT}"),
                ));
            }
            if plan.flex_threshold.is_some_and(|t| !credits_in_range(t)) {
                return Err(key_err(
                    &format!("plans.{name}.flex_threshold"),
                    format!("must be between 0 and {MAX_GRANT}"),
                ));
            }
            if plan.pool.trim().is_empty() {
                return Err(key_err(
                    &format!("plans.{name}.pool"),
                    "must not be empty".into(),
                ));
            }
        }
        self.validate_smtp(&key_err)?;
        self.validate_notify(&key_err)?;
        self.serve
            .validate()
            .map_err(|(key, problem)| key_err(key, problem))?;
        let timezone: Tz = self.rules.timezone.parse().map_err(|_| {
            key_err(
                "rules.timezone",
                format!("`{}` is not an IANA time zone", self.rules.timezone),
            )
        })?;
        let delta = |key: &str, d: Duration| {
            TimeDelta::from_std(d).map_err(|_| key_err(key, "is too long".into()))
        };
        let matrix_path = base.unwrap_or(Path::new(".")).join(&self.rules.matrix);
        let builtin = !matrix_given
            && self.rules.matrix == Path::new(DEFAULT_MATRIX)
            && !matrix_path.exists();
        let (matrix_file, text) = if builtin {
            (
                "(built-in matrix.toml)".to_string(),
                BUILTIN_MATRIX.to_string(),
            )
        } else {
            let matrix_file = matrix_path.display().to_string();
            let text = std::fs::read_to_string(&matrix_path).map_err(|e| ConfigError::Key {
                file: file.to_string(),
                key: "rules.matrix".into(),
                problem: format!("cannot read {matrix_file}: {e}"),
            })?;
            (matrix_file, text)
        };
        let matrix: CostMatrix = serde_path_to_error::deserialize(toml::Deserializer::new(&text))
            .map_err(|e| ConfigError::Key {
            file: matrix_file.clone(),
            key: e.path().to_string(),
            problem: e.into_inner().message().to_string(),
        })?;
        matrix.validate().map_err(|e| ConfigError::Key {
            file: matrix_file.clone(),
            key: e.key,
            problem: e.problem,
        })?;
        Ok(Rules {
            matrix,
            default_timezone: timezone,
            default_policy: self.rules.policy,
            max_lateness: delta("rules.max_lateness", self.rules.max_lateness)?,
            max_future_skew: delta("rules.max_future_skew", self.rules.max_future_skew)?,
            dedup_window: delta("rules.dedup_window", self.rules.dedup_window)?,
            plans: self.plans.clone(),
            expiry_grace: delta("rules.expiry_grace", self.rules.expiry_grace)?,
            flex_enabled: self.rules.flex.enabled,
            flex_threshold: self.rules.flex.threshold,
            settle_shortfall: self.rules.settle_shortfall,
            alerts: AlertRules {
                enabled: self.rules.alerts.enabled,
                low_balance: self.rules.alerts.low_balance,
                included_used_percent: self.rules.alerts.included_used_percent,
                shortfall: self.rules.alerts.shortfall,
                expiring_min: self.rules.alerts.expiring_min,
                global_webhooks: !self.webhooks.endpoints.is_empty(),
            },
            max_open_holds: self.rules.max_open_holds,
        })
    }
}

impl Config {
    /// `kafka.security_protocol` and what goes with it: SASL needs a user and a password
    /// (never PLAIN over plain text), TLS files only with TLS, a client certificate with
    /// its key; every file absolute and readable.
    fn validate_kafka_security(
        &self,
        key_err: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let k = &self.kafka;
        let protocol = k.security_protocol;
        let has_file = !k.sasl_password_file.as_os_str().is_empty();
        validate_password_file(
            key_err,
            "kafka.sasl_password_file",
            "TALLY_KAFKA__SASL_PASSWORD",
            &k.sasl_password_file,
            &k.sasl_password,
        )?;
        if protocol.sasl() {
            if k.sasl_username.trim().is_empty() {
                return Err(key_err(
                    "kafka.sasl_username",
                    format!("must be set with security_protocol `{}`", protocol.as_str()),
                ));
            }
            if !has_file && k.sasl_password.is_empty() {
                return Err(key_err(
                    "kafka.sasl_password_file",
                    "SASL needs a password in TALLY_KAFKA__SASL_PASSWORD or \
                     kafka.sasl_password_file"
                        .into(),
                ));
            }
            if protocol == SecurityProtocol::SaslPlaintext
                && k.sasl_mechanism == SaslMechanism::Plain
            {
                // PLAIN sends the password as it is: over plain text, to anyone on the path.
                return Err(key_err(
                    "kafka.sasl_mechanism",
                    "PLAIN sends the password in clear: use it with security_protocol \
                     `sasl_ssl`, or use SCRAM-SHA-256 or SCRAM-SHA-512"
                        .into(),
                ));
            }
        } else if !k.sasl_username.is_empty() || has_file || !k.sasl_password.is_empty() {
            // Credentials that would be silently ignored mean the protocol is wrong.
            return Err(key_err(
                "kafka.security_protocol",
                format!(
                    "is `{}`, which does not log in: use sasl_ssl or sasl_plaintext with \
                     kafka.sasl_username and a password",
                    protocol.as_str()
                ),
            ));
        }
        for (key, path) in [
            ("kafka.ssl_ca_file", &k.ssl_ca_file),
            ("kafka.ssl_cert_file", &k.ssl_cert_file),
            ("kafka.ssl_key_file", &k.ssl_key_file),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            if !protocol.tls() {
                return Err(key_err(
                    key,
                    format!(
                        "is only used with security_protocol `ssl` or `sasl_ssl`, not `{}`",
                        protocol.as_str()
                    ),
                ));
            }
            readable_file(key_err, key, path)?;
            // librdkafka reads PEM too: a file that is not one fails here, named, rather
            // than as a client that cannot be created.
            if key == "kafka.ssl_key_file" {
                crate::tls::load_key(path).map(drop)
            } else {
                crate::tls::load_certs(path).map(drop)
            }
            .map_err(|p| key_err(key, p))?;
        }
        if k.ssl_cert_file.as_os_str().is_empty() != k.ssl_key_file.as_os_str().is_empty() {
            return Err(key_err(
                "kafka.ssl_key_file",
                "kafka.ssl_cert_file and kafka.ssl_key_file go together (mutual TLS)".into(),
            ));
        }
        Ok(())
    }

    fn validate_smtp(
        &self,
        key_err: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let s = &self.smtp;
        if s.host.trim().is_empty() || s.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(key_err("smtp.host", "must be a host name".into()));
        }
        if s.port == 0 {
            return Err(key_err("smtp.port", "must be between 1 and 65535".into()));
        }
        s.from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| key_err("smtp.from", format!("`{}` is not an address: {e}", s.from)))?;
        if s.timeout.is_zero() {
            return Err(key_err("smtp.timeout", "must be more than zero".into()));
        }
        let has_file = !s.password_file.as_os_str().is_empty();
        validate_password_file(
            key_err,
            "smtp.password_file",
            "TALLY_SMTP__PASSWORD",
            &s.password_file,
            &s.password,
        )?;
        if s.username.is_empty() && (has_file || !s.password.is_empty()) {
            return Err(key_err(
                "smtp.username",
                "a password is set but no user name".into(),
            ));
        }
        if !s.username.is_empty() && !has_file && s.password.is_empty() {
            return Err(key_err(
                "smtp.username",
                "needs a password in TALLY_SMTP__PASSWORD or smtp.password_file".into(),
            ));
        }
        if !s.username.is_empty() && s.security == SmtpSecurity::None {
            // AUTH over plain text would hand the password to anyone on the path.
            return Err(key_err(
                "smtp.security",
                "must be `starttls` or `tls` when a user name is set".into(),
            ));
        }
        Ok(())
    }

    fn validate_notify(
        &self,
        key_err: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let n = &self.notify;
        for (key, value) in [
            ("notify.per_account", n.per_account),
            ("notify.global_per_second", n.global_per_second),
            ("notify.max_attempts", n.max_attempts),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be at least 1".into()));
            }
        }
        if n.per_account_period.is_zero() || (n.per_account_period / n.per_account).is_zero() {
            return Err(key_err(
                "notify.per_account_period",
                "must be more than zero".into(),
            ));
        }
        if n.initial_backoff.is_zero() {
            return Err(key_err(
                "notify.initial_backoff",
                "must be more than zero".into(),
            ));
        }
        if n.max_backoff < n.initial_backoff {
            return Err(key_err(
                "notify.max_backoff",
                "must be at least notify.initial_backoff".into(),
            ));
        }
        let url_ok =
            (n.purchase_url.starts_with("https://") || n.purchase_url.starts_with("http://"))
                && !n.purchase_url.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>'
                });
        if !url_ok {
            return Err(key_err(
                "notify.purchase_url",
                format!("`{}` is not an http:// or https:// URL", n.purchase_url),
            ));
        }
        for (key, value) in [
            ("notify.product_name", &n.product_name),
            ("notify.purchase_text_en", &n.purchase_text_en),
            ("notify.purchase_text_ko", &n.purchase_text_ko),
        ] {
            if value.trim().is_empty() {
                return Err(key_err(key, "must not be empty".into()));
            }
            if value.chars().any(char::is_control) {
                return Err(key_err(
                    key,
                    "must be one line without control characters".into(),
                ));
            }
        }
        Ok(())
    }
}

/// `path` is absolute and names a file that can be opened for reading.
pub(crate) fn readable_file(
    key_err: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    path: &Path,
) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(key_err(
            key,
            format!("`{}` must be an absolute path", path.display()),
        ));
    }
    if !path.is_file() {
        return Err(key_err(key, format!("`{}` is not a file", path.display())));
    }
    std::fs::File::open(path)
        .map_err(|e| key_err(key, format!("cannot read `{}`: {e}", path.display())))?;
    Ok(())
}

/// Keys whose values are credentials: they come from the environment or a `*_file`, and a
/// config file that writes one is refused (files get committed, copied and printed).
const SECRET_KEYS: [&str; 7] = [
    "kafka.sasl_password",
    "clickhouse.password",
    "smtp.password",
    "serve.keys",
    "status.token",
    "webhooks.secrets",
    "webhooks.signing_key",
];

/// Whether the file's own table sets `key` (a dotted path).
fn file_table_has(table: &toml::Table, key: &str) -> bool {
    let mut parts = key.split('.');
    let Some(first) = parts.next() else {
        return false;
    };
    let mut value = table.get(first);
    for part in parts {
        value = value.and_then(|v| v.as_table()).and_then(|t| t.get(part));
    }
    value.is_some()
}

/// Refuses a config file that writes a credential (see `SECRET_KEYS`), naming the key and
/// where it belongs, never the value.
fn refuse_secrets_in_file(table: &toml::Table, file: &str) -> Result<(), ConfigError> {
    match SECRET_KEYS.iter().find(|key| file_table_has(table, key)) {
        Some(key) => {
            let variable = format!("TALLY_{}", key.replace('.', "__").to_uppercase());
            let instead = if *key == "serve.keys" {
                "serve.keys_file".to_string()
            } else {
                format!("{key}_file")
            };
            Err(ConfigError::Key {
                file: file.to_string(),
                key: key.to_string(),
                problem: format!(
                    "a credential is never written in the config file: set {variable} in the \
                     environment or {instead} (a file of its own)"
                ),
            })
        }
        None => Ok(()),
    }
}

/// A password given in a file (absolute path, readable) or the environment, not both.
fn validate_password_file(
    key_err: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    variable: &str,
    file: &Path,
    password: &Secret,
) -> Result<(), ConfigError> {
    if file.as_os_str().is_empty() {
        return Ok(());
    }
    if !password.is_empty() {
        return Err(key_err(
            key,
            format!("give the password either in {variable} or in a file, not both"),
        ));
    }
    if !file.is_absolute() {
        return Err(key_err(
            key,
            format!("`{}` must be an absolute path", file.display()),
        ));
    }
    if !file.is_file() {
        return Err(key_err(
            key,
            format!("`{}` is not a readable file", file.display()),
        ));
    }
    Ok(())
}

/// Sets `keys` in `table` to `raw`, typed like the value it replaces, or like the key's
/// default in `defaults` when the file does not set it (so `TALLY_KAFKA__PARTITIONS=3`
/// is an integer with no file at all). A section the file lacks starts as its default
/// (so one plan's key can be overridden without writing the plan's other keys).
fn apply_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    keys: &[String],
    raw: &str,
) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut current = table;
    let mut default = Some(defaults);
    for key in parents {
        let section_default = default.and_then(|d| d.get(key)).and_then(|v| v.as_table());
        current = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(section_default.cloned().unwrap_or_default()))
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a section"))?;
        default = section_default;
    }
    let like = current
        .get(last)
        .or_else(|| default.and_then(|d| d.get(last)));
    let value = match like {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.parse()
                .map_err(|_| format!("`{raw}` is not an integer"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.parse()
                .map_err(|_| format!("`{raw}` is not true or false"))?,
        ),
        Some(toml::Value::Float(_)) => {
            return Err("float settings cannot be overridden".into());
        }
        _ => toml::Value::String(raw.to_string()),
    };
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tally.toml")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_config_loads() {
        let (config, rules) = Config::load(&shipped(), env(&[])).unwrap();
        assert_eq!(config.kafka.usage_topic, "ai.usage");
        assert_eq!(rules.default_timezone, chrono_tz::Asia::Seoul);
        assert_eq!(rules.max_lateness, TimeDelta::days(35));
        let monthly: Vec<(&str, i64)> = ["free", "pro", "enterprise", "standard"]
            .iter()
            .map(|name| (*name, rules.plans[*name].credits.milli() / 1000))
            .collect();
        assert_eq!(
            monthly,
            [
                ("free", 0),
                ("pro", 100),
                ("enterprise", 500),
                ("standard", 1500)
            ]
        );
        assert_eq!(
            rules.plans["contract"].credits,
            Credits::from_whole(200_000)
        );
    }

    #[test]
    fn environment_overrides_keys() {
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_KAFKA__BROKERS", "10.0.0.1:9092"),
                ("TALLY_KAFKA__PARTITIONS", "12"),
                ("TALLY_CLICKHOUSE__DATABASE", "tally_test"),
                ("TALLY_LOG", "debug"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(config.kafka.partitions, 12);
        assert_eq!(config.clickhouse.database, "tally_test");
    }

    #[test]
    fn bad_values_name_file_key_and_problem() {
        let cases = [
            (
                "TALLY_KAFKA__PARTITIONS",
                "many",
                "kafka.partitions",
                "not an integer",
            ),
            ("TALLY_KAFKA__BROKER", "x", "kafka.broker", "unknown field"),
            (
                "TALLY_RULES__TIMEZONE",
                "Mars/Olympus",
                "rules.timezone",
                "IANA",
            ),
            (
                "TALLY_RULES__MAX_LATENESS",
                "soon",
                "rules.max_lateness",
                "",
            ),
            ("TALLY_CLICKHOUSE__URL", "ftp://x", "clickhouse.url", "http"),
            (
                "TALLY_CLICKHOUSE__DATABASE",
                "a-b",
                "clickhouse.database",
                "letters",
            ),
            (
                "TALLY_KAFKA__DLQ_TOPIC",
                "ai.usage",
                "kafka.dlq_topic",
                "different",
            ),
            (
                "TALLY_PLANS__PRO__CREDITS",
                "-5",
                "plans.pro.credits",
                "between 0",
            ),
            (
                "TALLY_PLANS__PRO__PERIOD",
                "fortnight",
                "plans.pro.period",
                "unknown variant",
            ),
            (
                "TALLY_RULES__FLEX__THRESHOLD",
                "-1",
                "rules.flex.threshold",
                "between 0",
            ),
            (
                "TALLY_PIPELINE__MAX_QUEUED_RECORDS",
                "0",
                "pipeline.max_queued_records",
                "between 1",
            ),
            (
                "TALLY_PIPELINE__MAX_QUEUED_BYTES",
                "100",
                "pipeline.max_queued_bytes",
                "between 1024",
            ),
        ];
        for (name, value, key, problem) in cases {
            let err = Config::load(&shipped(), env(&[(name, value)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("tally.toml"), "{text}");
            assert!(text.contains(key), "{name}: {text}");
            assert!(text.contains(problem), "{name}: {text}");
        }
    }

    #[test]
    fn smtp_and_notify_settings_are_checked() {
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Vars, &str, &str); 11] = [
            (
                &[("TALLY_SMTP__SECURITY", "ssl")],
                "smtp.security",
                "unknown variant",
            ),
            (
                &[("TALLY_SMTP__PORT", "0")],
                "smtp.port",
                "between 1 and 65535",
            ),
            (&[("TALLY_SMTP__PORT", "70000")], "smtp.port", ""),
            (
                &[("TALLY_SMTP__FROM", "nobody")],
                "smtp.from",
                "not an address",
            ),
            (
                &[("TALLY_SMTP__USERNAME", "mailer")],
                "smtp.username",
                "needs a password",
            ),
            (
                &[
                    ("TALLY_SMTP__USERNAME", "mailer"),
                    ("TALLY_SMTP__PASSWORD", "hunter2"),
                ],
                "smtp.security",
                "starttls",
            ),
            (
                &[("TALLY_SMTP__PASSWORD_FILE", "secrets/smtp")],
                "smtp.password_file",
                "absolute",
            ),
            (
                &[("TALLY_NOTIFY__PER_ACCOUNT", "0")],
                "notify.per_account",
                "at least 1",
            ),
            (
                &[("TALLY_NOTIFY__PER_ACCOUNT_PERIOD", "soon")],
                "notify.per_account_period",
                "",
            ),
            (
                &[("TALLY_NOTIFY__MAX_BACKOFF", "1ms")],
                "notify.max_backoff",
                "at least",
            ),
            (
                &[("TALLY_NOTIFY__PURCHASE_URL", "javascript:alert(1)")],
                "notify.purchase_url",
                "URL",
            ),
        ];
        for (vars, key, problem) in cases {
            let text = Config::load(&shipped(), env(vars)).unwrap_err().to_string();
            assert!(text.contains(key), "{vars:?}: {text}");
            assert!(text.contains(problem), "{vars:?}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn smtp_password_comes_from_the_environment_and_is_never_printed() {
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_SMTP__USERNAME", "mailer"),
                ("TALLY_SMTP__PASSWORD", "hunter2"),
                ("TALLY_SMTP__SECURITY", "starttls"),
                ("TALLY_SMTP__PORT", "587"),
            ]),
        )
        .unwrap();
        assert_eq!(config.smtp.password.expose(), "hunter2");
        assert_eq!(config.smtp.security, SmtpSecurity::Starttls);
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/tally.toml"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tally.toml"));
    }

    #[test]
    fn clickhouse_password_is_a_secret_from_the_environment_or_a_file() {
        let (config, _) =
            Config::load(&shipped(), env(&[("TALLY_CLICKHOUSE__PASSWORD", "s3cret")])).unwrap();
        assert_eq!(config.clickhouse.password.expose(), "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
        let table = toml::Table::try_from(&config).unwrap();
        assert!(!table.to_string().contains("s3cret"));

        let dir = std::env::temp_dir().join(format!("tally-ch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = file.display().to_string();
        let (config, _) = Config::load(
            &shipped(),
            env(&[("TALLY_CLICKHOUSE__PASSWORD_FILE", path.as_str())]),
        )
        .unwrap();
        assert_eq!(config.clickhouse.password.expose(), "from-file");
        assert!(!format!("{config:?}").contains("from-file"));
        let both = Config::load(
            &shipped(),
            env(&[
                ("TALLY_CLICKHOUSE__PASSWORD_FILE", path.as_str()),
                ("TALLY_CLICKHOUSE__PASSWORD", "s3cret"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("clickhouse.password_file") && both.contains("not both"),
            "{both}"
        );
        assert!(!both.contains("s3cret"), "{both}");
        let relative = Config::load(
            &shipped(),
            env(&[("TALLY_CLICKHOUSE__PASSWORD_FILE", "secrets/ch")]),
        )
        .unwrap_err()
        .to_string();
        assert!(relative.contains("absolute"), "{relative}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cluster_is_read_from_the_file_or_the_environment_and_checked() {
        let (config, _) = Config::load(&shipped(), env(&[])).unwrap();
        assert!(config.clickhouse.cluster.is_none(), "one server by default");
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_CLICKHOUSE__CLUSTER__NAME", "tally"),
                (
                    "TALLY_CLICKHOUSE__CLUSTER__SHARDS",
                    "http://a:8123, http://b:8123;https://c:8443",
                ),
            ]),
        )
        .unwrap();
        let cluster = config.clickhouse.cluster.unwrap();
        assert_eq!(cluster.name, "tally");
        assert_eq!(
            cluster.shards,
            [
                vec!["http://a:8123", "http://b:8123"],
                vec!["https://c:8443"]
            ]
        );
        let dir = std::env::temp_dir().join(format!("tally-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tally.toml");
        std::fs::write(
            &file,
            "[clickhouse.cluster]\nname = \"c1\"\nshards = [[\"http://a:8123\"], [\"http://b:8123\"]]\n",
        )
        .unwrap();
        let (config, _) = Config::load(&file, env(&[])).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(config.clickhouse.cluster.unwrap().shards.len(), 2);
        for (name, shards, problem) in [
            (
                "bad-name",
                "http://a:8123",
                "letters, digits and underscores",
            ),
            ("c", "", "shard 1 has no replica"),
            ("c", "http://a:8123;", "shard 2 has no replica"),
            ("c", "http://a:8123,", "not an http:// or https:// URL"),
            ("c", "ftp://a", "not an http:// or https:// URL"),
            ("c", "http://a:8123,http://a:8123/", "named twice"),
        ] {
            let text = Config::load(
                &shipped(),
                env(&[
                    ("TALLY_CLICKHOUSE__CLUSTER__NAME", name),
                    ("TALLY_CLICKHOUSE__CLUSTER__SHARDS", shards),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                text.contains("clickhouse.cluster.") && text.contains(problem),
                "{name} {shards}: {text}"
            );
        }
    }

    #[test]
    fn clickhouse_zero_timeouts_are_refused_at_start() {
        for (name, value, key, problem) in [
            (
                "TALLY_CLICKHOUSE__TIMEOUT",
                "0s",
                "clickhouse.timeout",
                "more than zero",
            ),
            (
                "TALLY_CLICKHOUSE__TIMEOUT",
                "soon",
                "clickhouse.timeout",
                "",
            ),
            (
                "TALLY_PIPELINE__SHUTDOWN_TIMEOUT",
                "0s",
                "pipeline.shutdown_timeout",
                "more than zero",
            ),
        ] {
            let text = Config::load(&shipped(), env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(text.contains(key), "{name}: {text}");
            assert!(text.contains(problem), "{name}: {text}");
        }
        let (config, _) =
            Config::load(&shipped(), env(&[("TALLY_CLICKHOUSE__TIMEOUT", "5s")])).unwrap();
        assert_eq!(config.clickhouse.timeout, Duration::from_secs(5));
    }

    /// A file of its own under the temp dir, written with `text`; the dir is removed by
    /// the caller.
    fn temp_file(dir: &Path, name: &str, text: &str) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file.display().to_string()
    }

    /// A PEM certificate that parses (the shape is what is checked here, not trust).
    const TEST_CERT: &str =
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\n-----END CERTIFICATE-----\n";

    #[test]
    fn clickhouse_https_is_accepted_and_its_ca_file_checked() {
        let (config, _) = Config::load(
            &shipped(),
            env(&[("TALLY_CLICKHOUSE__URL", "https://ch.example.com:8443")]),
        )
        .unwrap();
        assert_eq!(config.clickhouse.url, "https://ch.example.com:8443");
        let dir = std::env::temp_dir().join(format!("tally-ca-{}", std::process::id()));
        let ca = temp_file(&dir, "ca.pem", TEST_CERT);
        let not_pem = temp_file(&dir, "notes.txt", "hello\n");
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_CLICKHOUSE__URL", "https://127.0.0.1:18443"),
                ("TALLY_CLICKHOUSE__CA_FILE", ca.as_str()),
            ]),
        )
        .unwrap();
        assert_eq!(config.clickhouse.ca_file, Path::new(&ca));
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Vars, &str); 5] = [
            (
                &[("TALLY_CLICKHOUSE__CA_FILE", ca.as_str())],
                "only used with an https://",
            ),
            (
                &[
                    ("TALLY_CLICKHOUSE__URL", "https://h:8443"),
                    ("TALLY_CLICKHOUSE__CA_FILE", "ca.pem"),
                ],
                "absolute",
            ),
            (
                &[
                    ("TALLY_CLICKHOUSE__URL", "https://h:8443"),
                    ("TALLY_CLICKHOUSE__CA_FILE", "/nonexistent/ca.pem"),
                ],
                "not a file",
            ),
            (
                &[
                    ("TALLY_CLICKHOUSE__URL", "https://h:8443"),
                    ("TALLY_CLICKHOUSE__CA_FILE", not_pem.as_str()),
                ],
                "no certificate",
            ),
            (
                &[("TALLY_CLICKHOUSE__URL", "https://")],
                "not an http:// or https:// URL",
            ),
        ];
        for (vars, problem) in cases {
            let text = Config::load(&shipped(), env(vars)).unwrap_err().to_string();
            assert!(text.contains("clickhouse."), "{vars:?}: {text}");
            assert!(text.contains(problem), "{vars:?}: {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kafka_security_settings_are_checked_together() {
        let dir = std::env::temp_dir().join(format!("tally-kafka-sec-{}", std::process::id()));
        let ca = temp_file(&dir, "ca.pem", TEST_CERT);
        let password = temp_file(&dir, "password", "from-file\n");
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("TALLY_KAFKA__SASL_MECHANISM", "PLAIN"),
                ("TALLY_KAFKA__SASL_USERNAME", "api-key"),
                ("TALLY_KAFKA__SASL_PASSWORD_FILE", password.as_str()),
                ("TALLY_KAFKA__SSL_CA_FILE", ca.as_str()),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(config.kafka.sasl_mechanism, SaslMechanism::Plain);
        assert_eq!(config.kafka.sasl_password.expose(), "from-file");
        assert!(!format!("{config:?}").contains("from-file"));
        assert!(!toml::Table::try_from(&config)
            .unwrap()
            .to_string()
            .contains("from-file"));

        let sasl = [
            ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("TALLY_KAFKA__SASL_USERNAME", "tally"),
        ];
        type Vars<'a> = Vec<(&'a str, &'a str)>;
        let with = |extra: &[(&'static str, &'static str)]| -> Vars {
            sasl.iter().chain(extra).copied().collect()
        };
        let ca_var = ("TALLY_KAFKA__SSL_CA_FILE", ca.as_str());
        let cases: Vec<(Vars, &str, &str)> = vec![
            (
                vec![("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl")],
                "kafka.security_protocol",
                "unknown variant",
            ),
            (
                with(&[("TALLY_KAFKA__SASL_MECHANISM", "GSSAPI")]),
                "kafka.sasl_mechanism",
                "unknown variant",
            ),
            (with(&[]), "kafka.sasl_password_file", "needs a password"),
            (
                vec![
                    ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                    ("TALLY_KAFKA__SASL_PASSWORD", "hunter2"),
                ],
                "kafka.sasl_username",
                "must be set",
            ),
            (
                vec![
                    ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
                    ("TALLY_KAFKA__SASL_MECHANISM", "PLAIN"),
                    ("TALLY_KAFKA__SASL_USERNAME", "tally"),
                    ("TALLY_KAFKA__SASL_PASSWORD", "hunter2"),
                ],
                "kafka.sasl_mechanism",
                "in clear",
            ),
            (
                vec![
                    ("TALLY_KAFKA__SASL_USERNAME", "tally"),
                    ("TALLY_KAFKA__SASL_PASSWORD", "hunter2"),
                ],
                "kafka.security_protocol",
                "does not log in",
            ),
            (
                vec![ca_var],
                "kafka.ssl_ca_file",
                "only used with security_protocol",
            ),
            (
                vec![
                    ("TALLY_KAFKA__SECURITY_PROTOCOL", "ssl"),
                    ("TALLY_KAFKA__SSL_CA_FILE", "certs/ca.pem"),
                ],
                "kafka.ssl_ca_file",
                "absolute",
            ),
            (
                vec![
                    ("TALLY_KAFKA__SECURITY_PROTOCOL", "ssl"),
                    ("TALLY_KAFKA__SSL_CERT_FILE", ca.as_str()),
                ],
                "kafka.ssl_key_file",
                "go together",
            ),
            (
                with(&[
                    ("TALLY_KAFKA__SASL_PASSWORD", "hunter2"),
                    ("TALLY_KAFKA__SASL_PASSWORD_FILE", "/etc/hostname"),
                ]),
                "kafka.sasl_password_file",
                "not both",
            ),
        ];
        for (vars, key, problem) in cases {
            let text = Config::load(&shipped(), env(&vars))
                .unwrap_err()
                .to_string();
            assert!(text.contains(key), "{vars:?}: {text}");
            assert!(text.contains(problem), "{vars:?}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        // mutual TLS: a certificate with its key; SCRAM over sasl_plaintext is allowed.
        let (config, _) = Config::load(
            &shipped(),
            env(&[
                ("TALLY_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
                ("TALLY_KAFKA__SASL_USERNAME", "tally"),
                ("TALLY_KAFKA__SASL_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.sasl_mechanism, SaslMechanism::ScramSha512);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn credentials_written_in_the_file_are_refused_naming_where_they_go() {
        let dir = std::env::temp_dir().join(format!("tally-secret-{}", std::process::id()));
        for (text, key, variable) in [
            (
                "[kafka]\nsasl_password = \"hunter2\"\n",
                "kafka.sasl_password",
                "TALLY_KAFKA__SASL_PASSWORD",
            ),
            (
                "[clickhouse]\npassword = \"hunter2\"\n",
                "clickhouse.password",
                "TALLY_CLICKHOUSE__PASSWORD",
            ),
            (
                "[smtp]\npassword = \"hunter2\"\n",
                "smtp.password",
                "TALLY_SMTP__PASSWORD",
            ),
            (
                "[serve]\nkeys = \"admin=hunter2\"\n",
                "serve.keys",
                "TALLY_SERVE__KEYS",
            ),
        ] {
            let file = temp_file(&dir, "tally.toml", text);
            let err = Config::load(Path::new(&file), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&file) && err.contains(key) && err.contains(variable),
                "{err}"
            );
            assert!(err.contains("never written in the config file"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_without_rules_matrix_uses_the_built_in_matrix_wherever_it_lives() {
        let dir = std::env::temp_dir().join(format!("tally-empty-{}", std::process::id()));
        let file = temp_file(&dir, "tally.toml", "");
        let (_, rules) = Config::load(Path::new(&file), env(&[])).unwrap();
        assert!(rules
            .matrix
            .price(
                "erase",
                None,
                Credits::from_whole(1),
                "2026-11-20T00:00:00Z".parse().unwrap()
            )
            .is_ok());
        // Given, in the file or the environment, the matrix file must exist.
        let given = temp_file(&dir, "tally.toml", "[rules]\nmatrix = \"matrix.toml\"\n");
        let err = Config::load(Path::new(&given), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules.matrix") && err.contains("cannot read"),
            "{err}"
        );
        let err = Config::load(
            Path::new(&file),
            env(&[("TALLY_RULES__MATRIX", "prices.toml")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rules.matrix") && err.contains("prices.toml"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_file_means_every_default_and_typed_environment_overrides() {
        let (config, rules) = Config::load_from(
            None,
            env(&[
                ("TALLY_KAFKA__PARTITIONS", "3"),
                ("TALLY_KAFKA__BROKERS", "kafka:9092"),
                ("TALLY_RULES__FLEX__ENABLED", "false"),
                ("TALLY_PLANS__PRO__CREDITS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.partitions, 3);
        assert_eq!(config.kafka.brokers, "kafka:9092");
        assert!(!config.rules.flex.enabled);
        // One key of a default plan overridden, its other keys kept.
        assert_eq!(rules.plans["pro"].credits, Credits::from_whole(250));
        assert_eq!(rules.plans.len(), 6);
        // Without a file the shipped matrix is built in.
        assert!(rules
            .matrix
            .price(
                "erase",
                None,
                Credits::from_whole(1),
                "2026-11-20T00:00:00Z".parse().unwrap()
            )
            .is_ok());
        let err = Config::load_from(None, env(&[("TALLY_KAFKA__PARTITIONS", "three")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(no config file)") && err.contains("kafka.partitions"),
            "{err}"
        );
    }

    #[test]
    fn defaults_in_code_are_the_shipped_file() {
        // The shipped file only writes out the defaults: loading it or nothing is the same.
        let (from_file, _) = Config::load(&shipped(), env(&[])).unwrap();
        let (from_code, _) = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(
            toml::Table::try_from(&from_file).unwrap(),
            toml::Table::try_from(&from_code).unwrap()
        );
    }

    #[test]
    fn a_partial_file_takes_defaults_for_the_rest() {
        let dir = std::env::temp_dir().join(format!("tally-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/matrix.toml"),
            dir.join("matrix.toml"),
        )
        .unwrap();
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[kafka]\npartitions = 12\n").unwrap();
        let (config, _) = Config::load(&file, env(&[])).unwrap();
        assert_eq!(config.kafka.partitions, 12);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.clickhouse.timeout, Duration::from_secs(30));
        std::fs::write(&file, "[kafka]\npartitons = 12\n").unwrap();
        let err = Config::load(&file, env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("kafka.partitons") && err.contains("unknown field"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_in_the_file_and_open_internal_routes_are_refused() {
        let dir = std::env::temp_dir().join(format!("tally-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (section, key) in [
            ("clickhouse", "password"),
            ("smtp", "password"),
            ("serve", "keys"),
            ("status", "token"),
        ] {
            let file = dir.join(format!("{section}.toml"));
            std::fs::write(
                &file,
                format!("[{section}]\n{key} = \"hunter2-in-the-file\"\n"),
            )
            .unwrap();
            let err = Config::load(&file, env(&[])).unwrap_err().to_string();
            assert!(err.contains(&format!("{section}.{key}")), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        // Beyond loopback, the internal routes need a token.
        let wide = [("TALLY_STATUS__LISTEN", "0.0.0.0:9464")];
        let err = Config::load(&shipped(), env(&wide))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TALLY_STATUS__TOKEN"), "{err}");
        let with_token = [
            ("TALLY_STATUS__LISTEN", "0.0.0.0:9464"),
            ("TALLY_STATUS__TOKEN", "a-shared-token-0123456789"),
        ];
        assert!(Config::load(&shipped(), env(&with_token)).is_ok());
        let short = [("TALLY_STATUS__TOKEN", "short")];
        assert!(Config::load(&shipped(), env(&short)).is_err());
    }
}
