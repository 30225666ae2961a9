//! Low-credit emails: the delivery half of alerts. The core decides that an alert fires;
//! this module records it, rate-limits it, renders it, sends it over SMTP and retries it.
//!
//! ```no_run
//! # async fn example(config: tally::config::Config, alert: tally::notify::Alert) {
//! use tally::notify::Notifier;
//! let store = tally::store::client(&config.clickhouse);
//! let notifier = Notifier::spawn(&config.smtp, &config.notify, store).expect("valid settings");
//! notifier.submit(vec![alert]).ok(); // never waits for ClickHouse or SMTP
//! let report = notifier.shutdown(std::time::Duration::from_secs(5)).await;
//! # }
//! ```

pub mod limits;
pub mod mailer;
pub mod queue;
pub mod templates;
pub mod webhooks;
pub mod worker;

use chrono::{DateTime, Utc};
use tally_core::Credits;

pub use queue::Closed;
pub use worker::{
    pending_row, AlertCounters, AlertSender, Notifier, NotifierHandle, NotifyError, ShutdownReport,
};

/// An alert the core has decided to send, in the shell's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Deterministic id given by the caller (e.g. account, pool, kind, threshold and
    /// cycle), so an alert decided again by a replay is recognised and not sent twice.
    pub id: String,
    pub account: String,
    pub pool: String,
    pub kind: AlertKind,
    /// The threshold that was crossed: a balance for `LowBalance`, the 80% mark for
    /// `IncludedUsed`, zero for `Shortfall`, the minimum for `Expiring`.
    pub threshold: Credits,
    /// The balance when the alert fired; for `Expiring`, the credits expiring within 14 days.
    pub balance: Credits,
    /// When the threshold was crossed (the event's time).
    pub time: DateTime<Utc>,
    /// The account's locale: `ko` (or `ko-KR`, ...) for Korean, anything else English.
    pub locale: String,
    /// The account's admins; invalid addresses are skipped and noted on the alert.
    pub recipients: Vec<String>,
    /// Features with the most credits this cycle, largest first.
    pub top_features: Vec<(String, Credits)>,
    /// Users with the most credits this cycle, largest first.
    pub top_users: Vec<(String, Credits)>,
    /// The pool's burn over the last 7 days and when it runs out at that rate, when known
    /// (not kept in the alerts table: an email resent after a crash goes without it).
    pub runway: Option<tally_core::runway::Burn>,
    /// The recommendation [002] in the alert's language, when there is one (not kept
    /// either).
    pub advice: Option<String>,
}

/// Which threshold an alert is about: the core's, the one kind of alert there is.
pub use tally_core::alerts::AlertKind;

/// The languages emails are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    En,
    Ko,
}

impl Locale {
    /// Korean for `ko` and its regional forms (`ko-KR`, `ko_KR`), English for anything else.
    pub fn from_tag(tag: &str) -> Locale {
        let language = tag.trim().split(['-', '_']).next().unwrap_or_default();
        if language.eq_ignore_ascii_case("ko") {
            Locale::Ko
        } else {
            Locale::En
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_only_for_ko_tags() {
        for tag in ["ko", "KO", "ko-KR", "ko_KR", " ko "] {
            assert_eq!(Locale::from_tag(tag), Locale::Ko, "{tag}");
        }
        for tag in ["en", "", "kor", "ja", "en-US", "k"] {
            assert_eq!(Locale::from_tag(tag), Locale::En, "{tag}");
        }
    }
}
