//! The notifier task: records each alert before it is sent, applies the rate limits,
//! folds held-back alerts into digests, sends with retries and backoff, and at start
//! resends what a crashed process recorded but never sent.
//!
//! One task owns all delivery state, so no locks: callers only push alerts into an
//! unbounded channel, which never waits (alerts fire on threshold crossings, so they are
//! few; email must never hold up consumption).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Client;
use lettre::message::Mailbox;
use tally_core::Credits;
use tokio::time::{timeout_at, Instant};

use super::limits::{AccountLimiter, GlobalLimiter, LimitsError};
use super::mailer::{self, Mailer, MailerError};
use super::queue;
use super::templates::{self, Wording};
use super::{Alert, AlertKind};
use crate::config::{NotifyConfig, SmtpConfig};
use crate::store::alerts::{self as table, status, AlertRow};
use crate::store::rows::{from_seconds, seconds};

/// How often accounts with a full allowance are forgotten by the per-account limiter.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(600);
/// Backoff of writes to the alerts table after a failure.
const STORE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Mailer(#[from] MailerError),
    #[error("notify limits: {0}")]
    Limits(#[from] LimitsError),
}

/// Counters of alert outcomes, kept by the notifier as they happen (`tally run` exports
/// them as `tally_alerts_total{outcome}`). The default counts into counters no registry
/// reads.
#[derive(Clone)]
pub struct AlertCounters {
    /// Alerts whose email the server took (one per email: the alerts a digest carries
    /// were counted as suppressed when held).
    pub sent: prometheus::IntCounter,
    /// Alerts held back by the per-account limit, for a digest.
    pub suppressed: prometheus::IntCounter,
    /// Alerts recorded as failed.
    pub failed: prometheus::IntCounter,
}

impl Default for AlertCounters {
    fn default() -> Self {
        // Constant, valid names: creating these counters cannot fail.
        let counter = |name: &str| {
            prometheus::IntCounter::new(name, "unregistered").expect("a valid metric name")
        };
        AlertCounters {
            sent: counter("alerts_sent"),
            suppressed: counter("alerts_suppressed"),
            failed: counter("alerts_failed"),
        }
    }
}

/// What the notifier did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Emails delivered.
    pub sent: u64,
    /// Alerts recorded as failed.
    pub failed: u64,
    /// Alerts in emails not delivered yet; recorded `pending`, resent at the next start.
    pub left_pending: usize,
    /// Held-back alerts not carried by any email yet; recorded `suppressed`, sent in a
    /// digest after the next start.
    pub left_held: usize,
}

/// Starts the notifier task.
pub struct Notifier;

impl Notifier {
    /// Starts the notifier on the current tokio runtime (panics outside one; use
    /// `spawn_on` from a plain thread). Nothing connects before the first email.
    pub fn spawn(
        smtp: &SmtpConfig,
        notify: &NotifyConfig,
        store: Client,
    ) -> Result<NotifierHandle, NotifyError> {
        Notifier::spawn_on(&tokio::runtime::Handle::current(), smtp, notify, store)
    }

    /// Starts the notifier on `runtime`.
    pub fn spawn_on(
        runtime: &tokio::runtime::Handle,
        smtp: &SmtpConfig,
        notify: &NotifyConfig,
        store: Client,
    ) -> Result<NotifierHandle, NotifyError> {
        Notifier::spawn_counted(runtime, smtp, notify, store, AlertCounters::default())
    }

    /// Starts the notifier on `runtime`, counting outcomes into `counters`.
    pub fn spawn_counted(
        runtime: &tokio::runtime::Handle,
        smtp: &SmtpConfig,
        notify: &NotifyConfig,
        store: Client,
        counters: AlertCounters,
    ) -> Result<NotifierHandle, NotifyError> {
        let worker = Worker {
            counters,
            store,
            mailer: Mailer::new(smtp)?,
            per_account: AccountLimiter::new(notify.per_account, notify.per_account_period)?,
            global: GlobalLimiter::new(notify.global_per_second)?,
            wording: Wording::from_config(notify),
            max_attempts: notify.max_attempts,
            backoff: (notify.initial_backoff, notify.max_backoff),
            resend_within: notify.resend_within,
            outbox: Vec::new(),
            held: BTreeMap::new(),
            known: HashSet::new(),
            unwritten: BTreeMap::new(),
            store_failures: 0,
            store_retry_at: None,
            report: ShutdownReport::default(),
            forget_at: Instant::now() + FORGET_IDLE_EVERY,
        };
        tracing::info!(server = %worker.mailer.server(), "notifier started");
        Ok(queue::spawn(runtime, "notifier", worker, smtp.timeout))
    }
}

/// Submits alerts to the running notifier, and stops it.
pub type NotifierHandle = queue::Handle<Alert, ShutdownReport>;

/// A clonable way to submit alerts, for more than one producer.
pub type AlertSender = queue::Sender<Alert>;

/// One alert on its way, with what its row says.
struct Tracked {
    alert: Alert,
    recipients: Vec<Mailbox>,
    /// Recipients that were skipped, kept in the row's error.
    notes: Vec<String>,
    attempts: u32,
    last_error: String,
    created_at: DateTime<Utc>,
    version: u64,
}

impl Tracked {
    fn new(alert: Alert) -> Tracked {
        let (recipients, notes) = mailer::recipients(&alert.recipients);
        Tracked {
            alert,
            recipients,
            notes,
            attempts: 0,
            last_error: String::new(),
            created_at: Utc::now(),
            version: 0,
        }
    }

    fn key(&self) -> (String, String) {
        (self.alert.account.clone(), self.alert.id.clone())
    }

    /// The alert's row with `status`, one version above the last one written.
    fn row(&mut self, status: &str, digest_of: Vec<String>, sent_in: &str) -> AlertRow {
        self.version = next_version(self.version);
        let now = Utc::now();
        let mut error = self.notes.clone();
        if !self.last_error.is_empty() {
            error.push(self.last_error.clone());
        }
        let a = &self.alert;
        let (top_features, top_feature_credits) = split(&a.top_features);
        let (top_users, top_user_credits) = split(&a.top_users);
        let delivered = status == status::SENT || !sent_in.is_empty();
        AlertRow {
            alert_id: a.id.clone(),
            account: a.account.clone(),
            pool: a.pool.clone(),
            kind: a.kind.as_str().to_string(),
            threshold: a.threshold.milli(),
            balance: a.balance.milli(),
            time: seconds(a.time),
            locale: a.locale.clone(),
            recipients: a.recipients.clone(),
            top_features,
            top_feature_credits,
            top_users,
            top_user_credits,
            status: status.to_string(),
            attempts: self.attempts,
            error: error.join("; "),
            digest_of,
            sent_in: sent_in.to_string(),
            created_at: seconds(self.created_at),
            sent_at: if delivered { seconds(now) } else { 0 },
            updated_at: seconds(now),
            version: self.version,
        }
    }

    /// An alert as a crashed process recorded it; an unknown kind is an error naming the
    /// table, column and value.
    fn from_row(row: AlertRow) -> Result<Tracked, crate::store::StoreError> {
        let kind = crate::store::stored(
            &AlertKind::ALL,
            AlertKind::as_str,
            "alerts",
            "kind",
            &row.kind,
        )?;
        let join = |names: Vec<String>, credits: Vec<i64>| -> Vec<(String, Credits)> {
            names
                .into_iter()
                .zip(credits)
                .map(|(n, c)| (n, Credits::from_milli(c)))
                .collect()
        };
        let alert = Alert {
            id: row.alert_id,
            account: row.account,
            pool: row.pool,
            kind,
            threshold: Credits::from_milli(row.threshold),
            balance: Credits::from_milli(row.balance),
            time: from_seconds(row.time),
            locale: row.locale,
            recipients: row.recipients,
            top_features: join(row.top_features, row.top_feature_credits),
            top_users: join(row.top_users, row.top_user_credits),
            runway: None,
            advice: None,
        };
        let mut tracked = Tracked::new(alert);
        tracked.attempts = row.attempts;
        tracked.created_at = from_seconds(row.created_at);
        tracked.version = row.version;
        Ok(tracked)
    }
}

/// The row recording `alert` as pending, for a caller that writes it with its own outputs
/// (in the flush, before the checkpoint that commits the decision), so that no crash
/// between that commit and the notifier's own record can lose the alert. Version 1 and
/// times taken from the alert: a replay writes the very same row, and every row the
/// notifier writes later replaces it. Submit the alert as well; the notifier takes the
/// row over.
pub fn pending_row(alert: &Alert) -> AlertRow {
    let mut t = Tracked::new(alert.clone());
    t.created_at = alert.time;
    let mut row = t.row(status::PENDING, Vec::new(), "");
    row.updated_at = row.created_at;
    row.version = 1;
    row
}

fn split(pairs: &[(String, Credits)]) -> (Vec<String>, Vec<i64>) {
    pairs.iter().map(|(n, c)| (n.clone(), c.milli())).unzip()
}

/// A version above `previous` that also grows across restarts (wall-clock nanoseconds),
/// so a row written by this process replaces whatever an earlier one wrote.
fn next_version(previous: u64) -> u64 {
    let now = Utc::now()
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_default();
    now.max(previous.saturating_add(1))
}

/// `initial`, doubled for each failure after the first, at most `max`.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << doublings).min(max)
}

/// One email: its own alert, and the held-back alerts it carries.
struct Outgoing {
    primary: Tracked,
    digest: Vec<Tracked>,
    due: Instant,
}

/// An account's held-back alerts, oldest first, and when its allowance is free again.
struct Held {
    alerts: Vec<Tracked>,
    retry_at: Instant,
}

struct Worker {
    store: Client,
    mailer: Mailer,
    per_account: AccountLimiter,
    global: GlobalLimiter,
    wording: Wording,
    max_attempts: u32,
    backoff: (Duration, Duration),
    resend_within: Duration,
    outbox: Vec<Outgoing>,
    held: BTreeMap<String, Held>,
    /// (account, alert id) of every alert in `outbox` or `held`.
    known: HashSet<(String, String)>,
    /// Rows the alerts table has not taken yet, newest version per alert.
    unwritten: BTreeMap<(String, String), AlertRow>,
    store_failures: u32,
    store_retry_at: Option<Instant>,
    report: ShutdownReport,
    counters: AlertCounters,
    /// When the per-account limiter next forgets accounts with a full allowance.
    forget_at: Instant,
}

impl queue::Worker for Worker {
    type Item = Alert;
    type Report = ShutdownReport;

    async fn recover(&mut self) {
        Worker::recover(self).await
    }

    async fn accept(&mut self, alerts: Vec<Alert>) {
        Worker::accept(self, alerts).await
    }

    async fn step(&mut self, deadline: Option<Instant>) {
        Worker::step(self, deadline).await;
        if Instant::now() >= self.forget_at {
            self.per_account.forget_idle();
            self.forget_at = Instant::now() + FORGET_IDLE_EVERY;
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        Worker::next_wake(self)
    }

    fn idle(&self) -> bool {
        self.outbox.is_empty() && self.held.is_empty() && self.unwritten.is_empty()
    }

    async fn stop(self) -> ShutdownReport {
        self.finish()
    }
}

impl Worker {
    /// Records new alerts as pending, then sends or holds each by its account's limit.
    async fn accept(&mut self, alerts: Vec<Alert>) {
        let mut fresh: Vec<Tracked> = Vec::with_capacity(alerts.len());
        let mut seen: HashSet<(String, String)> = HashSet::new();
        for alert in alerts {
            let key = (alert.account.clone(), alert.id.clone());
            let finished = self
                .unwritten
                .get(&key)
                .is_some_and(|r| r.status != status::PENDING);
            if self.known.contains(&key) || finished || !seen.insert(key) {
                tracing::debug!(account = %alert.account, alert = %alert.id, "alert already taken");
                continue;
            }
            fresh.push(Tracked::new(alert));
        }
        if fresh.is_empty() {
            return;
        }
        // A replay after a crash decides the same alerts again, with the same ids: those
        // already handled are dropped; those left pending are taken over where they were.
        let keys: Vec<(&str, &str)> = fresh
            .iter()
            .map(|t| (t.alert.account.as_str(), t.alert.id.as_str()))
            .collect();
        match table::find(&self.store, &keys).await {
            Ok(rows) => {
                let stored: HashMap<(String, String), AlertRow> = rows
                    .into_iter()
                    .map(|r| ((r.account.clone(), r.alert_id.clone()), r))
                    .collect();
                fresh.retain_mut(|t| match stored.get(&t.key()) {
                    None => true,
                    Some(row) if row.status == status::PENDING => {
                        t.attempts = row.attempts;
                        t.created_at = from_seconds(row.created_at);
                        t.version = row.version;
                        true
                    }
                    Some(row) => {
                        tracing::info!(account = %t.alert.account, alert = %t.alert.id,
                            status = %row.status, "alert already handled; not sent again");
                        false
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e,
                "cannot look up earlier alerts; taking these as new"),
        }
        for t in &mut fresh {
            let row = t.row(status::PENDING, Vec::new(), "");
            self.stage(row);
            self.known.insert(t.key());
        }
        // Recorded before anything is sent, so a crash from here on leaves a trace that
        // the next start resends. Should ClickHouse be down, the email still goes out
        // and the rows follow when it is back.
        self.flush_rows().await;
        for t in fresh {
            self.decide(t);
        }
        self.flush_rows().await;
    }

    /// Sends `t` now, carrying its account's held-back alerts, or holds it back.
    fn decide(&mut self, mut t: Tracked) {
        let account = t.alert.account.clone();
        if t.recipients.is_empty() {
            t.last_error = "no valid recipient".into();
            tracing::warn!(account = %account, alert = %t.alert.id, "alert has no valid recipient");
            let row = t.row(status::FAILED, Vec::new(), "");
            self.stage(row);
            self.known.remove(&t.key());
            self.report.failed += 1;
            self.counters.failed.inc();
            return;
        }
        match self.per_account.check(&account) {
            Ok(()) => {
                let digest = self
                    .held
                    .remove(&account)
                    .map(|h| h.alerts)
                    .unwrap_or_default();
                self.outbox.push(Outgoing {
                    primary: t,
                    digest,
                    due: Instant::now(),
                });
            }
            Err(wait) => {
                tracing::debug!(account = %account, alert = %t.alert.id,
                    retry_in = ?wait, "per-account email limit reached; alert held for a digest");
                if !self.held.contains_key(&account) {
                    tracing::info!(account = %account, retry_in = ?wait,
                        "per-account email limit reached; holding alerts for a digest");
                }
                let row = t.row(status::SUPPRESSED, Vec::new(), "");
                self.stage(row);
                self.counters.suppressed.inc();
                let retry_at = Instant::now() + wait;
                let held = self.held.entry(account).or_insert(Held {
                    alerts: Vec::new(),
                    retry_at,
                });
                held.alerts.push(t);
                held.retry_at = retry_at;
            }
        }
    }

    /// Digests whose account is allowed again become emails; due emails are sent; rows
    /// that failed to write are written again. With a deadline, stops sending at it.
    async fn step(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        let ready: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.retry_at <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for account in ready {
            match self.per_account.check(&account) {
                Ok(()) => {
                    if let Some(mut held) = self.held.remove(&account) {
                        // The newest alert heads the email: it says where the account
                        // stands now, and whom to tell.
                        if let Some(primary) = held.alerts.pop() {
                            self.outbox.push(Outgoing {
                                primary,
                                digest: held.alerts,
                                due: now,
                            });
                        }
                    }
                }
                Err(wait) => {
                    if let Some(held) = self.held.get_mut(&account) {
                        held.retry_at = now + wait;
                    }
                }
            }
        }
        let (due, later): (Vec<Outgoing>, Vec<Outgoing>) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(|o| o.due <= now);
        self.outbox = later;
        for outgoing in due {
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline
                    || timeout_at(deadline, self.global.ready()).await.is_err()
                {
                    self.outbox.push(outgoing);
                    continue;
                }
            } else {
                self.global.ready().await;
            }
            self.deliver(outgoing).await;
            self.flush_rows().await;
        }
        if self.store_retry_at.is_some_and(|at| at <= Instant::now()) {
            self.flush_rows().await;
        }
    }

    /// One attempt at one email; on failure it is queued again or recorded as failed.
    async fn deliver(&mut self, mut o: Outgoing) {
        let alerts: Vec<Alert> = o.digest.iter().map(|t| t.alert.clone()).collect();
        let rendered = templates::render(&o.primary.alert, &alerts, &self.wording);
        o.primary.attempts += 1;
        let account = o.primary.alert.account.clone();
        let id = o.primary.alert.id.clone();
        let result = match self.mailer.message(&o.primary.recipients, &rendered) {
            Ok(message) => self.mailer.send(message).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(account = %account, alert = %id, kind = o.primary.alert.kind.as_str(),
                    attempts = o.primary.attempts, digest = o.digest.len(), "alert email sent");
                o.primary.last_error.clear();
                let digest_of: Vec<String> = o.digest.iter().map(|t| t.alert.id.clone()).collect();
                let row = o.primary.row(status::SENT, digest_of, "");
                self.stage(row);
                self.known.remove(&o.primary.key());
                for mut t in o.digest {
                    let row = t.row(status::SUPPRESSED, Vec::new(), &id);
                    self.stage(row);
                    self.known.remove(&t.key());
                }
                self.report.sent += 1;
                self.counters.sent.inc();
            }
            Err(e) => {
                let error = e.to_string();
                o.primary.last_error = error.clone();
                if e.is_permanent() || o.primary.attempts >= self.max_attempts {
                    tracing::warn!(account = %account, alert = %id, attempts = o.primary.attempts,
                        error = %error, "alert email failed for good");
                    let row = o.primary.row(status::FAILED, Vec::new(), "");
                    self.stage(row);
                    self.known.remove(&o.primary.key());
                    for mut t in o.digest {
                        t.last_error = format!("the email of alert {id} failed: {error}");
                        let row = t.row(status::FAILED, Vec::new(), "");
                        self.stage(row);
                        self.known.remove(&t.key());
                    }
                    self.report.failed += 1 + alerts.len() as u64;
                    self.counters.failed.inc_by(1 + alerts.len() as u64);
                } else {
                    let wait = backoff(o.primary.attempts, self.backoff.0, self.backoff.1);
                    tracing::warn!(account = %account, alert = %id, attempts = o.primary.attempts,
                        retry_in = ?wait, error = %error, "alert email not sent; will retry");
                    let row = o.primary.row(status::PENDING, Vec::new(), "");
                    self.stage(row);
                    o.due = Instant::now() + wait;
                    self.outbox.push(o);
                }
            }
        }
    }

    /// Alerts a crashed process recorded but did not deliver: pending ones go through
    /// the limits again, held-back ones wait for their digest.
    async fn recover(&mut self) {
        let Some(since) = queue::resend_since(self.resend_within) else {
            return;
        };
        let rows = match table::unfinished(&self.store, since).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read alerts left unsent; they wait for the next start");
                return;
            }
        };
        let (mut pending, mut suppressed) = (0usize, 0usize);
        for row in rows {
            let was_pending = row.status == status::PENDING;
            let (account, id) = (row.account.clone(), row.alert_id.clone());
            let t = match Tracked::from_row(row) {
                Ok(t) => t,
                Err(e) => {
                    // Left as it is in the table (and logged with what is wrong), so the
                    // other alerts still go out.
                    tracing::error!(account = %account, alert = %id, error = %e, "stored alert cannot be read; not resent");
                    continue;
                }
            };
            self.known.insert(t.key());
            if was_pending {
                pending += 1;
                self.decide(t);
            } else {
                suppressed += 1;
                self.held
                    .entry(account)
                    .or_insert_with(|| Held {
                        alerts: Vec::new(),
                        retry_at: Instant::now(),
                    })
                    .alerts
                    .push(t);
            }
        }
        if pending + suppressed > 0 {
            tracing::info!(
                pending,
                suppressed,
                "resending alerts a previous process left unsent"
            );
        }
        self.flush_rows().await;
    }

    /// Reports what is left (all of it recorded for the next start).
    fn finish(self) -> ShutdownReport {
        let mut report = self.report;
        report.left_pending = self.outbox.iter().map(|o| 1 + o.digest.len()).sum();
        report.left_held = self.held.values().map(|h| h.alerts.len()).sum();
        if !self.unwritten.is_empty() {
            tracing::error!(
                rows = self.unwritten.len(),
                "alert statuses not recorded in ClickHouse before shutdown"
            );
        }
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            left_pending = report.left_pending,
            left_held = report.left_held,
            "notifier stopped"
        );
        report
    }

    fn next_wake(&self) -> Option<Instant> {
        self.outbox
            .iter()
            .map(|o| o.due)
            .chain(self.held.values().map(|h| h.retry_at))
            .chain(self.store_retry_at)
            .chain(Some(self.forget_at))
            .min()
    }

    fn stage(&mut self, row: AlertRow) {
        self.unwritten
            .insert((row.account.clone(), row.alert_id.clone()), row);
    }

    /// Writes the staged rows; on failure keeps them for a later attempt.
    async fn flush_rows(&mut self) {
        if self.unwritten.is_empty() {
            self.store_retry_at = None;
            return;
        }
        let rows: Vec<AlertRow> = self.unwritten.values().cloned().collect();
        match table::write(&self.store, &rows).await {
            Ok(()) => {
                // Rows staged while the write ran (none: this task is the only writer)
                // would have a newer version; only what was written is dropped.
                for row in rows {
                    let key = (row.account, row.alert_id);
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
                    "cannot record alert statuses in ClickHouse; will retry");
                self.store_retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(2), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, i, m).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, i, m), m);
    }

    #[test]
    fn versions_grow_even_when_the_clock_does_not() {
        let far = u64::MAX - 10;
        assert_eq!(next_version(far), far + 1);
        let a = next_version(0);
        assert!(next_version(a) > a);
    }
}
