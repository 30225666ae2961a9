//! The webhook worker: takes deliveries the flush recorded as pending once their checkpoint
//! has landed, signs and POSTs each, retries with backoff, holds to the per-endpoint and
//! global rates, records every outcome, and at start resends what a crashed process left
//! pending.
//!
//! Never twice: a delivery is recorded pending (by the flush) before it can be sent, and a
//! delivery whose row says `sent` or `failed` is never sent again, by this process or a
//! later one. What no process can know is whether a POST that was under way when it was
//! killed arrived: such a delivery is sent again with the same `webhook-id`, which is what
//! the specification gives receivers to drop it (the test receiver does, and counts it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Client;
use tokio::time::{timeout_at, Instant};

use super::client::{SendError, WebhookClient};
use super::{account_secret, sign, Delivery, Target};
use crate::config::webhooks::{decode_secret, WebhooksConfig};
use crate::config::Secret;
use crate::notify::limits::{AccountLimiter, GlobalLimiter, LimitsError};
use crate::notify::queue;
use crate::notify::worker::backoff;
use crate::store::rows::{from_seconds, seconds};
use crate::store::webhooks::{self as table, status, WebhookRow};

/// Backoff of writes to the webhooks table after a failure.
const STORE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// (account, webhook id, endpoint).
type Key = (String, String, String);

/// What the worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookReport {
    pub sent: u64,
    pub failed: u64,
    /// Deliveries still pending (recorded so; sent at the next start).
    pub left_pending: usize,
}

/// Starts the webhook worker.
pub struct WebhookWorker;

impl WebhookWorker {
    /// Starts the worker on `runtime`. Nothing connects before the first delivery.
    pub fn spawn_on(
        runtime: &tokio::runtime::Handle,
        config: &WebhooksConfig,
        store: Client,
    ) -> Result<WebhookWorkerHandle, LimitsError> {
        let worker = Worker {
            store,
            // Checked by `load_secrets` at start-up: an error here is a config built in
            // code, which then sends to no global endpoint.
            secrets: config.global_secrets().unwrap_or_default(),
            signing_key: config.signing_key.clone(),
            client: WebhookClient::new(config.timeout, config.allow_private_addresses),
            per_endpoint: AccountLimiter::new(
                config.per_endpoint_per_second,
                Duration::from_secs(1),
            )?,
            global: GlobalLimiter::new(config.global_per_second)?,
            max_attempts: config.max_attempts,
            backoff: (config.initial_backoff, config.max_backoff),
            resend_within: config.resend_within,
            queue: Vec::new(),
            known: HashSet::new(),
            unwritten: BTreeMap::new(),
            store_failures: 0,
            store_retry_at: None,
            unchecked: Vec::new(),
            lookup_failures: 0,
            lookup_retry_at: None,
            report: HookReport::default(),
        };
        Ok(queue::spawn(
            runtime,
            "webhook worker",
            worker,
            config.timeout.saturating_mul(3),
        ))
    }
}

/// Submits deliveries to the running worker, and stops it.
pub type WebhookWorkerHandle = queue::Handle<Delivery, HookReport>;

/// A clonable way to submit deliveries.
pub type HookSender = queue::Sender<Delivery>;

/// The row recording `d` as pending, for the flush to write before its checkpoint. Its
/// times come from the notice, so a replay writes the very same row.
pub fn pending_row(d: &Delivery) -> WebhookRow {
    let mut t = Tracked::new(d.clone());
    t.created_at = d.time;
    let mut row = t.row(status::PENDING);
    row.updated_at = row.created_at;
    row.version = 1;
    row
}

/// One delivery on its way.
struct Tracked {
    d: Delivery,
    attempts: u32,
    last_error: String,
    response_status: u16,
    created_at: DateTime<Utc>,
    version: u64,
    due: Instant,
}

impl Tracked {
    fn new(d: Delivery) -> Tracked {
        Tracked {
            d,
            attempts: 0,
            last_error: String::new(),
            response_status: 0,
            created_at: Utc::now(),
            version: 0,
            due: Instant::now(),
        }
    }

    fn key(&self) -> Key {
        (
            self.d.account.clone(),
            self.d.webhook_id.clone(),
            self.d.target.name(),
        )
    }

    fn row(&mut self, status: &str) -> WebhookRow {
        self.version = next_version(self.version);
        let now = Utc::now();
        WebhookRow {
            webhook_id: self.d.webhook_id.clone(),
            account: self.d.account.clone(),
            endpoint: self.d.target.name(),
            rotation: self.d.target.rotation(),
            url: self.d.url.clone(),
            event_type: self.d.event_type.clone(),
            notice_id: self.d.notice_id.clone(),
            payload: self.d.payload.clone(),
            time: seconds(self.d.time),
            status: status.to_string(),
            attempts: self.attempts,
            error: self.last_error.clone(),
            response_status: self.response_status,
            created_at: seconds(self.created_at),
            sent_at: if status == status::SENT {
                seconds(now)
            } else {
                0
            },
            updated_at: seconds(now),
            version: self.version,
        }
    }

    fn from_row(row: WebhookRow) -> Option<Tracked> {
        let target = Target::parse(&row.endpoint, row.rotation)?;
        let mut t = Tracked::new(Delivery {
            webhook_id: row.webhook_id,
            notice_id: row.notice_id,
            account: row.account,
            target,
            url: row.url,
            event_type: row.event_type,
            payload: row.payload,
            time: from_seconds(row.time),
        });
        t.attempts = row.attempts;
        t.created_at = from_seconds(row.created_at);
        t.version = row.version;
        t.last_error = row.error;
        Some(t)
    }
}

/// A version above `previous` that also grows across restarts.
fn next_version(previous: u64) -> u64 {
    let now = Utc::now()
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_default();
    now.max(previous.saturating_add(1))
}

struct Worker {
    store: Client,
    client: WebhookClient,
    secrets: BTreeMap<String, Vec<u8>>,
    signing_key: Secret,
    per_endpoint: AccountLimiter,
    global: GlobalLimiter,
    max_attempts: u32,
    backoff: (Duration, Duration),
    resend_within: Duration,
    queue: Vec<Tracked>,
    /// Keys of every delivery in `queue`.
    known: HashSet<Key>,
    /// Rows the table has not taken yet, newest version per delivery.
    unwritten: BTreeMap<Key, WebhookRow>,
    store_failures: u32,
    store_retry_at: Option<Instant>,
    /// Deliveries whose earlier rows could not be looked up yet, and when to try again.
    unchecked: Vec<Delivery>,
    lookup_failures: u32,
    lookup_retry_at: Option<Instant>,
    report: HookReport,
}

impl queue::Worker for Worker {
    type Item = Delivery;
    type Report = HookReport;

    async fn recover(&mut self) {
        Worker::recover(self).await
    }

    async fn accept(&mut self, deliveries: Vec<Delivery>) {
        Worker::accept(self, deliveries).await
    }

    async fn step(&mut self, deadline: Option<Instant>) {
        Worker::step(self, deadline).await
    }

    fn next_wake(&self) -> Option<Instant> {
        Worker::next_wake(self)
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.unwritten.is_empty() && self.unchecked.is_empty()
    }

    async fn stop(self) -> HookReport {
        self.finish().await
    }
}

impl Worker {
    /// Takes new deliveries over: those whose row is finished are dropped, pending ones
    /// continue where their row says.
    async fn accept(&mut self, deliveries: Vec<Delivery>) {
        let mut fresh: Vec<Tracked> = Vec::with_capacity(deliveries.len());
        let mut seen: HashSet<Key> = HashSet::new();
        for d in deliveries {
            let t = Tracked::new(d);
            let key = t.key();
            let finished = self
                .unwritten
                .get(&key)
                .is_some_and(|r| r.status != status::PENDING);
            if self.known.contains(&key) || finished || !seen.insert(key) {
                continue;
            }
            fresh.push(t);
        }
        if fresh.is_empty() {
            return;
        }
        let keys: Vec<(&str, &str)> = fresh
            .iter()
            .map(|t| (t.d.account.as_str(), t.d.webhook_id.as_str()))
            .collect();
        match table::find(&self.store, &keys).await {
            Ok(rows) => {
                self.lookup_failures = 0;
                let stored: HashMap<Key, WebhookRow> =
                    rows.into_iter().map(|r| (r.key(), r)).collect();
                fresh.retain_mut(|t| match stored.get(&t.key()) {
                    None => true,
                    Some(row) if row.status == status::PENDING => {
                        t.attempts = row.attempts;
                        t.created_at = from_seconds(row.created_at);
                        t.version = row.version;
                        true
                    }
                    Some(row) => {
                        tracing::debug!(account = %t.d.account, webhook = %t.d.webhook_id,
                            endpoint = %row.endpoint, status = %row.status,
                            "webhook already handled; not sent again");
                        false
                    }
                });
            }
            Err(e) => {
                // Nothing is sent that the table has not been asked about: the look-up is
                // tried again with backoff (the rows stay pending meanwhile, so a stop
                // leaves them for the next start).
                self.lookup_failures += 1;
                let wait = backoff(self.lookup_failures, STORE_BACKOFF.0, STORE_BACKOFF.1);
                tracing::warn!(error = %e, deliveries = fresh.len(), retry_in = ?wait,
                    "cannot look up earlier webhooks; will try again");
                self.unchecked.extend(fresh.into_iter().map(|t| t.d));
                self.lookup_retry_at = Some(Instant::now() + wait);
                return;
            }
        }
        for t in fresh {
            self.known.insert(t.key());
            self.queue.push(t);
        }
    }

    /// Sends what is due, within the rates; with a deadline, stops at it.
    async fn step(&mut self, deadline: Option<Instant>) {
        if self.lookup_retry_at.is_some_and(|at| at <= Instant::now()) {
            self.lookup_retry_at = None;
            let again = std::mem::take(&mut self.unchecked);
            self.accept(again).await;
        }
        let now = Instant::now();
        let (due, later): (Vec<Tracked>, Vec<Tracked>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|t| t.due <= now);
        self.queue = later;
        for mut t in due {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.queue.push(t);
                continue;
            }
            if let Err(wait) = self.per_endpoint.check(&t.d.url) {
                t.due = Instant::now() + wait;
                self.queue.push(t);
                continue;
            }
            match deadline {
                Some(d) if timeout_at(d, self.global.ready()).await.is_err() => {
                    self.queue.push(t);
                    continue;
                }
                Some(_) => {}
                None => self.global.ready().await,
            }
            self.deliver(t).await;
            self.flush_rows().await;
        }
        if self.store_retry_at.is_some_and(|at| at <= Instant::now()) {
            self.flush_rows().await;
        }
    }

    /// The signing key of a delivery's endpoint.
    fn key_of(&self, d: &Delivery) -> Result<Vec<u8>, SendError> {
        match &d.target {
            Target::Global { id } => {
                self.secrets.get(id).cloned().ok_or_else(|| {
                    SendError::Refused(format!("global endpoint `{id}` has no secret"))
                })
            }
            Target::Account { id, rotation } => {
                if self.signing_key.is_empty() {
                    return Err(SendError::Refused(
                        "webhooks.signing_key is not set: accounts' endpoints get nothing".into(),
                    ));
                }
                let secret = account_secret(self.signing_key.expose(), &d.account, id, *rotation);
                decode_secret(&secret).map_err(SendError::Refused)
            }
        }
    }

    /// One attempt at one delivery.
    async fn deliver(&mut self, mut t: Tracked) {
        t.attempts += 1;
        let result = match self.key_of(&t.d) {
            Ok(key) => {
                // The attempt's time: receivers refuse old timestamps (replay protection),
                // so a retry carries its own, and its own signature.
                let timestamp = Utc::now().timestamp();
                let signature = sign(&key, &t.d.webhook_id, timestamp, t.d.payload.as_bytes());
                let headers = [
                    ("webhook-id", t.d.webhook_id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ];
                let account_set = matches!(t.d.target, Target::Account { .. });
                self.client
                    .post(&t.d.url, account_set, &headers, t.d.payload.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let key = t.key();
        match result {
            Ok(code) => {
                tracing::info!(account = %t.d.account, webhook = %t.d.webhook_id,
                    endpoint = %key.2, event = %t.d.event_type, attempts = t.attempts, "webhook sent");
                t.response_status = code;
                t.last_error.clear();
                let row = t.row(status::SENT);
                self.stage(row);
                self.known.remove(&key);
                self.report.sent += 1;
            }
            Err(e) => {
                t.response_status = e.status();
                t.last_error = e.to_string();
                if e.is_permanent() || t.attempts >= self.max_attempts {
                    tracing::warn!(account = %t.d.account, webhook = %t.d.webhook_id,
                        endpoint = %key.2, attempts = t.attempts, error = %e, "webhook failed for good");
                    let row = t.row(status::FAILED);
                    self.stage(row);
                    self.known.remove(&key);
                    self.report.failed += 1;
                } else {
                    let wait = backoff(t.attempts, self.backoff.0, self.backoff.1);
                    tracing::info!(account = %t.d.account, webhook = %t.d.webhook_id,
                        endpoint = %key.2, attempts = t.attempts, retry_in = ?wait, error = %e,
                        "webhook not delivered; will retry");
                    let row = t.row(status::PENDING);
                    self.stage(row);
                    t.due = Instant::now() + wait;
                    self.queue.push(t);
                }
            }
        }
    }

    /// Deliveries a crashed process left pending.
    async fn recover(&mut self) {
        let Some(since) = queue::resend_since(self.resend_within) else {
            return;
        };
        let rows = match table::unfinished(&self.store, since).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read webhooks left pending; they wait for the next start");
                return;
            }
        };
        let mut taken = 0usize;
        for row in rows {
            let (account, id, endpoint) = row.key();
            match Tracked::from_row(row) {
                Some(t) => {
                    if self.known.insert(t.key()) {
                        self.queue.push(t);
                        taken += 1;
                    }
                }
                None => tracing::error!(account = %account, webhook = %id, endpoint = %endpoint,
                    "stored webhook names an unknown endpoint kind; not resent"),
            }
        }
        if taken > 0 {
            tracing::info!(
                deliveries = taken,
                "resending webhooks a previous process left pending"
            );
        }
    }

    /// Records what it can of what is left, and reports it (pending for the next start).
    async fn finish(mut self) -> HookReport {
        self.flush_rows().await;
        let mut report = self.report;
        report.left_pending = self.queue.len() + self.unchecked.len();
        if !self.unwritten.is_empty() {
            tracing::error!(
                rows = self.unwritten.len(),
                "webhook statuses not recorded in ClickHouse before shutdown"
            );
        }
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            left_pending = report.left_pending,
            "webhook worker stopped"
        );
        report
    }

    fn next_wake(&self) -> Option<Instant> {
        self.queue
            .iter()
            .map(|t| t.due)
            .chain(self.store_retry_at)
            .chain(self.lookup_retry_at)
            .min()
    }

    fn stage(&mut self, row: WebhookRow) {
        self.unwritten.insert(row.key(), row);
    }

    async fn flush_rows(&mut self) {
        if self.unwritten.is_empty() {
            self.store_retry_at = None;
            return;
        }
        let rows: Vec<WebhookRow> = self.unwritten.values().cloned().collect();
        match table::write(&self.store, &rows).await {
            Ok(()) => {
                for row in rows {
                    let key = row.key();
                    if self
                        .unwritten
                        .get(&key)
                        .is_some_and(|r| r.version == row.version)
                    {
                        self.unwritten.remove(&key);
                    }
                }
                self.store_failures = 0;
                self.store_retry_at = None;
            }
            Err(e) => {
                self.store_failures += 1;
                let wait = backoff(self.store_failures, STORE_BACKOFF.0, STORE_BACKOFF.1);
                tracing::warn!(error = %e, rows = rows.len(), retry_in = ?wait,
                    "cannot record webhook statuses in ClickHouse; will retry");
                self.store_retry_at = Some(Instant::now() + wait);
            }
        }
    }
}
