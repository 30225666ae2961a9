//! An account's webhook settings (`account.settings` `webhooks`, `top_up`, `reset_email`),
//! their checks, and where its auto top-up stands, kept in the account's state. The
//! decisions over them are in `hooks`.

use serde::{Deserialize, Serialize};

use crate::alerts::AlertKind;
use crate::credits::Credits;
use crate::rules::MAX_GRANT;

/// Most endpoints one account may register: each notice is sent to each of them.
pub const MAX_ENDPOINTS: usize = 8;
/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest endpoint id.
pub const MAX_ENDPOINT_ID_LEN: usize = 64;

/// What a notice is about; its `event_type` is the `type` of the webhook's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeKind {
    /// A low-credit alert the core decided (`alerting::evaluate`).
    Alert(AlertKind),
    /// A cycle's allowance arrived (the plan's new cycle, or a plan change) [003].
    Reset,
    /// A lot expired with credits left.
    LotExpired,
    /// A hold expired unsettled; its credits are free again.
    HoldExpired,
    /// A call was recorded that no lot or flex could pay.
    ShortfallRecorded,
    /// The pool crossed below the account's auto top-up line: the billing system is asked
    /// to grant credits (tally never charges anyone).
    TopUpRequested,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 9] = [
        NoticeKind::Alert(AlertKind::LowBalance),
        NoticeKind::Alert(AlertKind::IncludedUsed),
        NoticeKind::Alert(AlertKind::Shortfall),
        NoticeKind::Alert(AlertKind::Expiring),
        NoticeKind::Reset,
        NoticeKind::LotExpired,
        NoticeKind::HoldExpired,
        NoticeKind::ShortfallRecorded,
        NoticeKind::TopUpRequested,
    ];

    /// The webhook's event type.
    pub fn event_type(self) -> &'static str {
        match self {
            NoticeKind::Alert(AlertKind::LowBalance) => "credit.low_balance",
            NoticeKind::Alert(AlertKind::IncludedUsed) => "credit.included_used",
            NoticeKind::Alert(AlertKind::Shortfall) => "credit.shortfall",
            NoticeKind::Alert(AlertKind::Expiring) => "credit.expiring",
            NoticeKind::Reset | NoticeKind::Alert(AlertKind::Reset) => "credit.reset",
            NoticeKind::LotExpired => "credit.lot_expired",
            NoticeKind::HoldExpired => "credit.hold_expired",
            NoticeKind::ShortfallRecorded => "credit.shortfall_recorded",
            NoticeKind::TopUpRequested => "credit.top_up_requested",
        }
    }

    pub fn from_event_type(name: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|k| k.event_type() == name)
    }

    /// Whether an endpoint that lists no event types gets this one: every type but the
    /// cycle reset, which is opt-in [003].
    pub fn by_default(self) -> bool {
        self != NoticeKind::Reset
    }
}

/// One webhook endpoint of an account, from `account.settings` `webhooks`. Its signing
/// secret is not here: the shell derives it from its own key, the account, `id` and
/// `rotation`, so no secret travels through Kafka or lands in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Names the endpoint within the account (letters, digits, `-`, `_`).
    pub id: String,
    /// `http://` or `https://` URL the notices are POSTed to.
    pub url: String,
    /// Event types it gets (`credit.low_balance`, ...); empty: every type but
    /// `credit.reset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Raised to rotate the endpoint's signing secret.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub rotation: u32,
}

impl Endpoint {
    /// Whether this endpoint gets notices of `kind`.
    pub fn wants(&self, kind: NoticeKind) -> bool {
        wants(&self.events, kind)
    }
}

/// Whether a subscription list (empty: the defaults) takes `kind`.
pub fn wants(events: &[String], kind: NoticeKind) -> bool {
    if events.is_empty() {
        kind.by_default()
    } else {
        events.iter().any(|e| e == kind.event_type())
    }
}

/// The auto top-up of one pool: when its available balance crosses below `below`, one
/// `credit.top_up_requested` asking for `credits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(default = "default_pool")]
    pub pool: String,
    pub below: Credits,
    /// What to ask for; 0 switches auto top-up off.
    pub credits: Credits,
}

fn default_pool() -> String {
    "ai".into()
}

/// Where the auto top-up stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopUpMark {
    /// The pool is at or above the line (or has not been looked at): a crossing requests.
    #[default]
    Armed,
    /// Requested since the last crossing; re-armed once the pool is back at or above it.
    Requested,
}

/// The webhook part of an account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUp>,
    #[serde(default, skip_serializing_if = "is_armed")]
    pub top_up_mark: TopUpMark,
    /// Top-ups requested so far: numbers each request, so its id is stable across replays
    /// whatever the interleaving of the two topics.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub top_up_requests: u64,
    /// Whether the admins get an email when a cycle's allowance arrives [003].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_email: bool,
}

impl HookState {
    pub fn is_empty(&self) -> bool {
        *self == HookState::default()
    }
}

fn is_armed(mark: &TopUpMark) -> bool {
    *mark == TopUpMark::Armed
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The webhook fields of `account.settings`; each replaces what the account had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSettings<'a> {
    pub webhooks: Option<&'a [Endpoint]>,
    pub top_up: Option<&'a TopUp>,
    pub reset_email: Option<bool>,
}

/// Checks the webhook settings without changing anything: the reason on failure.
pub fn check(settings: &HookSettings<'_>) -> Result<(), String> {
    if let Some(endpoints) = settings.webhooks {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("at most {MAX_ENDPOINTS} webhook endpoints"));
        }
        for (i, e) in endpoints.iter().enumerate() {
            if e.id.is_empty()
                || e.id.len() > MAX_ENDPOINT_ID_LEN
                || !e
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "webhook id `{}` must be 1 to {MAX_ENDPOINT_ID_LEN} letters, digits, `-` or `_`",
                    e.id
                ));
            }
            if endpoints[..i].iter().any(|other| other.id == e.id) {
                return Err(format!("webhook id `{}` is given twice", e.id));
            }
            check_url(&e.url)?;
            if let Some(bad) = e
                .events
                .iter()
                .find(|t| NoticeKind::from_event_type(t).is_none())
            {
                return Err(format!("unknown webhook event type `{bad}`"));
            }
        }
    }
    if let Some(t) = settings.top_up {
        let out_of_range = |c: Credits| c.is_negative() || c > MAX_GRANT;
        if out_of_range(t.below) || out_of_range(t.credits) {
            return Err(format!(
                "top_up.below and top_up.credits must be between 0 and {MAX_GRANT}"
            ));
        }
        if t.pool.is_empty() || t.pool.len() > 64 {
            return Err("top_up.pool must be 1 to 64 characters".into());
        }
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host, no user name or password, no whitespace or
/// control characters. Whether its host may be reached (no private addresses, by default)
/// is decided by the shell where it resolves the name, as only there is it known.
pub fn check_url(url: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("webhook url `{url}` {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(format!("webhook url longer than {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("has whitespace or control characters");
    }
    let lower = url.to_ascii_lowercase();
    let rest = match (
        lower.strip_prefix("https://"),
        lower.strip_prefix("http://"),
    ) {
        (Some(rest), _) | (None, Some(rest)) => rest,
        (None, None) => return refuse("is not an http:// or https:// URL"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return refuse("must not carry a user name or password");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return refuse("has no host");
    }
    Ok(())
}

impl HookState {
    /// Lays checked settings over the state.
    pub fn apply(&mut self, settings: &HookSettings<'_>) {
        if let Some(endpoints) = settings.webhooks {
            self.endpoints = endpoints.to_vec();
        }
        if let Some(top_up) = settings.top_up {
            // A new line or pool starts afresh: the next look decides from the balance.
            self.top_up = top_up.credits.is_positive().then(|| top_up.clone());
            self.top_up_mark = TopUpMark::Armed;
        }
        if let Some(reset) = settings.reset_email {
            self.reset_email = reset;
        }
    }
}
