//! The event contract: CloudEvents 1.0 JSON on `ai.usage` and `credit.commands`, parsed and
//! checked into typed inputs, or rejected with a reason fit for the dead-letter topic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::credits::Credits;
use crate::lots::{LotKind, PaymentMethod, Policy};

pub mod borrowed;

/// A parsed event: the envelope's attributes and its typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// The product service that sent it: the "service" of the reports.
    pub source: String,
    /// The account (`subject`).
    pub account: String,
    /// When it happened; the arrival time when the event does not say.
    pub time: DateTime<Utc>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Usage(Usage),
    Grant(Grant),
    Void(Void),
    Plan(PlanChange),
    Settings(Settings),
    /// `credit.hold`: reserve the cost of a call before it is made.
    Hold(HoldRequest),
    /// `credit.release`: give a hold's reserved credits back without a call.
    Release(Release),
    /// `tally.tick`: only moves the partition's clock, so lots expire and cycles turn over
    /// on accounts that send nothing.
    Tick,
}

impl Body {
    /// The CloudEvent `type` this body was read from.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Usage(_) => "ai.usage",
            Body::Grant(_) => "credit.grant",
            Body::Void(_) => "credit.void",
            Body::Plan(_) => "account.plan",
            Body::Settings(_) => "account.settings",
            Body::Hold(_) => "credit.hold",
            Body::Release(_) => "credit.release",
            Body::Tick => TICK,
        }
    }

    /// Usage belongs on the usage topic; everything else (commands, ticks) on the
    /// commands topic.
    pub fn is_usage(&self) -> bool {
        matches!(self, Body::Usage(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// `ai.usage` data: one AI call. Unknown keys are rejected: a misspelt `"quantiy": 5`
/// must go to the dead-letter topic, not be billed as the default quantity of 1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub user: String,
    pub feature: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default = "one")]
    pub quantity: Credits,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub comment: Option<String>,
    /// The hold this call settles, if one was placed before it.
    #[serde(default)]
    pub hold: Option<HoldRef>,
}

/// `data.hold` of a usage event: a hold's id, as a string (a hold of the event's own
/// account) or as `{"id": ..., "account": ...}`. The second form lets the core refuse a
/// call that names another account's hold: holds live in their account's state, which
/// may be in another partition, so a bare id of another account's hold can only be told
/// apart from an unknown one when the reference says whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a hold id, or {\"id\": ..., \"account\": ...}")]
pub enum HoldRef {
    Id(String),
    Of(QualifiedHold),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualifiedHold {
    pub id: String,
    pub account: String,
}

impl HoldRef {
    pub fn id(&self) -> &str {
        match self {
            HoldRef::Id(id) => id,
            HoldRef::Of(q) => &q.id,
        }
    }

    /// The account the reference names, when it names one.
    pub fn account(&self) -> Option<&str> {
        match self {
            HoldRef::Id(_) => None,
            HoldRef::Of(q) => Some(&q.account),
        }
    }
}

/// `credit.hold` data: reserve what a call of `feature` (`variant`, `quantity`) costs, for
/// `ttl` seconds. Retrying with the same `hold` id never reserves twice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// The hold's id, unique within the account; default the event id.
    #[serde(default)]
    pub hold: Option<String>,
    pub feature: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default = "one")]
    pub quantity: Credits,
    /// Seconds from the command's arrival until the clock releases the hold.
    pub ttl: u32,
}

/// `credit.release` data: the hold to release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub hold: String,
    #[serde(default)]
    pub reason: Option<String>,
}

fn one() -> Credits {
    Credits::from_whole(1)
}

/// `credit.grant` data: a new lot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default)]
    pub lot: Option<String>,
    #[serde(default = "ai_pool")]
    pub pool: String,
    pub kind: LotKind,
    pub credits: Credits,
    #[serde(default)]
    pub effective_at: Option<DateTime<Utc>>,
    /// Absent or null: never expires (unless `valid_days` is set).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub valid_days: Option<u32>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub payment: Option<Payment>,
    #[serde(default)]
    pub comment: Option<String>,
}

fn ai_pool() -> String {
    "ai".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    pub method: PaymentMethod,
    #[serde(default)]
    pub reference: Option<String>,
}

/// `credit.void` data: a refund takes a lot's credits out of the balance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Void {
    pub lot: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `account.plan` data: assigns a plan and starts a new cycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    /// A plan name from config (`[plans.<name>]`).
    pub plan: String,
    /// Where the cycles are counted from; default the event time. Not after the event.
    #[serde(default)]
    pub anchor: Option<DateTime<Utc>>,
    /// How the subscription is paid; a cash-paid plan shows as cash top-ups [000].
    #[serde(default)]
    pub payment: Option<Payment>,
}

/// The `flex` part of `account.settings`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexSettings {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Flex credits allowed per cycle.
    #[serde(default)]
    pub threshold: Option<Credits>,
}

/// `account.settings` data: any subset of the account's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub admins: Option<Vec<String>>,
    #[serde(default)]
    pub policy: Option<Policy>,
    #[serde(default)]
    pub flex: Option<FlexSettings>,
    /// Whether the next grant first pays outstanding shortfall.
    #[serde(default)]
    pub settle_shortfall: Option<bool>,
    /// Low-credit alert thresholds.
    #[serde(default)]
    pub alerts: Option<crate::alerts::AlertSettings>,
    /// The account's webhook endpoints, replacing those it had.
    #[serde(default)]
    pub webhooks: Option<Vec<crate::hook_state::Endpoint>>,
    /// Auto top-up: `{"below": 100, "credits": 500}` (credits 0 switches it off).
    #[serde(default)]
    pub top_up: Option<crate::hook_state::TopUp>,
    /// Whether admins get an email when a cycle's allowance arrives.
    #[serde(default)]
    pub reset_email: Option<bool>,
}

/// Why an event cannot be applied. The text goes into the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a CloudEvent: {0}")]
    NotCloudEvent(String),
    #[error("no subject: the account id goes in `subject`")]
    NoSubject,
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("bad data for {ty}: {problem}")]
    BadData { ty: String, problem: String },
    #[error("quantity must not be negative, got {0}")]
    NegativeQuantity(Credits),
    #[error("event time {time} is more than {skew_secs} s in the future")]
    InFuture { time: DateTime<Utc>, skew_secs: i64 },
    #[error("event time {time} is older than the allowed lateness of {lateness_secs} s")]
    TooLate {
        time: DateTime<Utc>,
        lateness_secs: i64,
    },
    #[error("{0}")]
    Price(#[from] crate::pricing::PriceError),
    #[error("{0}")]
    Command(String),
    /// An amount that cannot be held exactly: refused rather than rounded or wrapped.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A usage event naming a hold of another account: it cannot settle it, and billing
    /// it to its own account as if unheld would hide the mistake.
    #[error("hold `{hold}` belongs to account `{owner}`, not to `{account}`")]
    ForeignHold {
        hold: String,
        owner: String,
        account: String,
    },
    /// The record's broker timestamp (the producer's clock) is further ahead of the
    /// consumer's clock at receipt than the allowed skew. The shell decides this (the
    /// core has no clock); such a record must never move the partition clock.
    #[error(
        "broker timestamp {arrival} is more than {skew_secs} s ahead of the time it was received"
    )]
    FutureTimestamp {
        arrival: DateTime<Utc>,
        skew_secs: i64,
    },
    /// An event read from the topic of the other role: usage is taken only from the usage
    /// topic and commands only from the commands topic, so a service that may send usage
    /// cannot mint credits.
    #[error("`{ty}` does not belong on the {topic} topic")]
    WrongTopic { ty: String, topic: &'static str },
    /// A record in a partition that does not own its account, too large to be forwarded
    /// to the owner: it can only go to the dead-letter topic.
    #[error("account `{account}` belongs to partition {owner}, and the record is too large to forward there")]
    TooLargeToForward { account: String, owner: i32 },
}

impl Rejection {
    /// A short stable code for the dead-letter header `tally.reason.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotJson(_) => "not_json",
            Rejection::NotCloudEvent(_) => "not_cloudevent",
            Rejection::NoSubject => "no_subject",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::BadData { .. } => "bad_data",
            Rejection::NegativeQuantity(_) => "negative_quantity",
            Rejection::InFuture { .. } => "time_in_future",
            Rejection::TooLate { .. } => "too_late",
            Rejection::Price(crate::pricing::PriceError::UnknownFeature { .. }) => {
                "unknown_feature"
            }
            Rejection::Price(_) => "unpriceable",
            Rejection::Command(_) => "bad_command",
            Rejection::OutOfRange(_) => "out_of_range",
            Rejection::ForeignHold { .. } => "foreign_hold",
            Rejection::FutureTimestamp { .. } => "future_timestamp",
            Rejection::WrongTopic { .. } => "wrong_topic",
            Rejection::TooLargeToForward { .. } => "too_large_to_forward",
        }
    }

    /// A rejection of the record's broker timestamp itself: the record must not move the
    /// partition clock, since its time is what cannot be trusted.
    pub fn keeps_clock(&self) -> bool {
        matches!(self, Rejection::FutureTimestamp { .. })
    }
}

/// The type of a clock tick, sent by `tally run` (or `tally tick`) to every partition.
pub const TICK: &str = "tally.tick";

/// Longest id or name (account, user, feature, variant, source, event id, lot, pool,
/// plan, hold, ...), in bytes. Ids end up in log lines, Kafka keys, scoped API keys and
/// ClickHouse queries (the alerts lookup lists accounts): a bound keeps each of them small.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest free text (comments, reasons, payment references), in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;

/// Why an id or a text is refused (without its value: it may be huge or forge a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("contains a control character")]
    Control,
    #[error("is longer than {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
}

/// An id or a name: at most [`MAX_NAME_BYTES`] and no control character (C0, DEL, or the
/// C1 range U+0080..U+009F), so it cannot break or forge a log line. Checks bytes only:
/// this runs on every event.
pub fn check_name(value: &str) -> Result<(), LimitError> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return Err(LimitError::NameTooLong);
    }
    // No early exit: the fold compiles to a vector loop, a few instructions per 16 bytes
    // (an early-exit byte loop cost about 1,100 instructions per call in `bench_core`).
    let c0 = bytes
        .iter()
        .fold(false, |seen, &b| seen | (b < 0x20) | (b == 0x7f));
    // U+0080..U+009F are 0xC2 0x80..=0x9F in UTF-8; 0xC2 itself is rare, so look for it
    // first (memchr) and pair it up only when present.
    let c1 = bytes.contains(&0xc2)
        && bytes
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]));
    if c0 || c1 {
        return Err(LimitError::Control);
    }
    Ok(())
}

/// Free text: at most [`MAX_TEXT_BYTES`] (line breaks are allowed in a comment).
pub fn check_text(value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(LimitError::TextTooLong);
    }
    Ok(())
}

/// Applies [`check_name`] or [`check_text`] to each named field, the first failure as
/// `bad_data` naming the field.
struct Limits<'a> {
    ty: &'a str,
}

impl Limits<'_> {
    fn name(&self, field: &str, value: &str) -> Result<(), Rejection> {
        check_name(value).map_err(|e| self.reject(field, e))
    }

    fn opt_name(&self, field: &str, value: Option<&str>) -> Result<(), Rejection> {
        value.map_or(Ok(()), |v| self.name(field, v))
    }

    fn text(&self, field: &str, value: Option<&str>) -> Result<(), Rejection> {
        value.map_or(Ok(()), |v| check_text(v).map_err(|e| self.reject(field, e)))
    }

    fn reject(&self, field: &str, e: LimitError) -> Rejection {
        Rejection::BadData {
            ty: self.ty.to_string(),
            problem: format!("`{field}` {e}"),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    specversion: Option<&'a str>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    time: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// Parses one Kafka payload. `arrival` stands in for a missing `time`. A plain usage
/// event is read in place ([`crate::event::borrowed::usage`]); everything else, and every
/// rejection, is decided by [`parse_reference`].
pub fn parse(payload: &[u8], arrival: DateTime<Utc>) -> Result<Event, Rejection> {
    match crate::event::borrowed::usage(payload, arrival) {
        Some(usage) => Ok(usage.into_event()),
        None => parse_reference(payload, arrival),
    }
}

/// The full parser of the contract (serde_json): the reference the borrowed reader is
/// tested against, and the one that decides whatever that reader does not take, so every
/// rejection reason comes from here.
pub fn parse_reference(payload: &[u8], arrival: DateTime<Utc>) -> Result<Event, Rejection> {
    let envelope: Envelope = serde_json::from_slice(payload).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Rejection::NotJson(e.to_string())
        } else {
            Rejection::NotCloudEvent(e.to_string())
        }
    })?;
    let missing = |attr: &str| Rejection::NotCloudEvent(format!("missing `{attr}`"));
    match envelope.specversion {
        Some("1.0") => {}
        Some(other) => {
            return Err(Rejection::NotCloudEvent(format!(
                "specversion `{other}`, expected `1.0`"
            )))
        }
        None => return Err(missing("specversion")),
    }
    let id = envelope
        .id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("id"))?;
    let source = envelope
        .source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("source"))?;
    let ty = envelope
        .ty
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("type"))?;
    let limits = Limits { ty: &ty };
    limits.name("id", &id)?;
    limits.name("source", &source)?;
    limits.name("type", &ty)?;
    let subject = envelope.subject.filter(|s| !s.trim().is_empty());
    limits.opt_name("subject", subject.as_deref())?;
    let account = match (subject, ty.as_str()) {
        (Some(account), _) => account,
        // A tick belongs to a partition, not an account.
        (None, TICK) => String::new(),
        (None, _) => return Err(Rejection::NoSubject),
    };
    let time = match envelope.time {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| Rejection::NotCloudEvent(format!("time `{text}`: {e}")))?
            .with_timezone(&Utc),
        None => arrival,
    };
    let data = envelope.data.map(RawValue::get).unwrap_or("null");
    let bad = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let problem = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("`{path}`: {inner}")
        };
        Rejection::BadData {
            ty: ty.clone(),
            problem,
        }
    };
    let body = match ty.as_str() {
        "ai.usage" => {
            let usage: Usage = data_of(data).map_err(bad)?;
            if usage.feature.is_empty() {
                return Err(Rejection::BadData {
                    ty,
                    problem: "`feature` must not be empty".into(),
                });
            }
            if usage.quantity.is_negative() {
                return Err(Rejection::NegativeQuantity(usage.quantity));
            }
            limits.name("data.user", &usage.user)?;
            limits.name("data.feature", &usage.feature)?;
            limits.opt_name("data.variant", usage.variant.as_deref())?;
            limits.text("data.comment", usage.comment.as_deref())?;
            if let Some(hold) = &usage.hold {
                limits.name("data.hold", hold.id())?;
                limits.opt_name("data.hold.account", hold.account())?;
                if hold.id().is_empty() {
                    return Err(Rejection::BadData {
                        ty,
                        problem: "`hold` must not be empty".into(),
                    });
                }
                if let Some(owner) = hold.account().filter(|owner| *owner != account) {
                    return Err(Rejection::ForeignHold {
                        hold: hold.id().to_string(),
                        owner: owner.to_string(),
                        account,
                    });
                }
            }
            Body::Usage(usage)
        }
        "credit.hold" => {
            let hold: HoldRequest = data_of(data).map_err(bad)?;
            let problem = if hold.feature.is_empty() {
                Some("`feature` must not be empty")
            } else if hold.hold.as_deref() == Some("") {
                Some("`hold` must not be empty")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Rejection::BadData {
                    ty,
                    problem: problem.into(),
                });
            }
            if hold.quantity.is_negative() {
                return Err(Rejection::NegativeQuantity(hold.quantity));
            }
            limits.opt_name("data.hold", hold.hold.as_deref())?;
            limits.name("data.feature", &hold.feature)?;
            limits.opt_name("data.variant", hold.variant.as_deref())?;
            Body::Hold(hold)
        }
        "credit.release" => {
            let release: Release = data_of(data).map_err(bad)?;
            limits.name("data.hold", &release.hold)?;
            limits.text("data.reason", release.reason.as_deref())?;
            Body::Release(release)
        }
        "credit.grant" => {
            let grant: Grant = data_of(data).map_err(bad)?;
            limits.opt_name("data.lot", grant.lot.as_deref())?;
            limits.name("data.pool", &grant.pool)?;
            limits.text("data.comment", grant.comment.as_deref())?;
            let reference = grant.payment.as_ref().and_then(|p| p.reference.as_deref());
            limits.text("data.payment.reference", reference)?;
            Body::Grant(grant)
        }
        "credit.void" => {
            let void: Void = data_of(data).map_err(bad)?;
            limits.name("data.lot", &void.lot)?;
            limits.text("data.reason", void.reason.as_deref())?;
            Body::Void(void)
        }
        "account.plan" => {
            let plan: PlanChange = data_of(data).map_err(bad)?;
            limits.name("data.plan", &plan.plan)?;
            let reference = plan.payment.as_ref().and_then(|p| p.reference.as_deref());
            limits.text("data.payment.reference", reference)?;
            Body::Plan(plan)
        }
        "account.settings" => {
            let settings: Settings = data_of(data).map_err(bad)?;
            limits.opt_name("data.timezone", settings.timezone.as_deref())?;
            limits.opt_name("data.locale", settings.locale.as_deref())?;
            for admin in settings.admins.iter().flatten() {
                limits.name("data.admins", admin)?;
            }
            Body::Settings(settings)
        }
        TICK => Body::Tick,
        _ => return Err(Rejection::UnknownType(ty)),
    };
    Ok(Event {
        id,
        source,
        account,
        time,
        body,
    })
}

/// Deserializes `data`, keeping the path of the field that failed.
fn data_of<'de, T: Deserialize<'de>>(
    data: &'de str,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    // The plain parse costs half as much; the tracked one runs only to name what was wrong
    // (the same input fails the same way in both).
    match T::deserialize(&mut serde_json::Deserializer::from_str(data)) {
        Ok(value) => Ok(value),
        Err(_) => serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival() -> DateTime<Utc> {
        "2026-11-20T09:15:05Z".parse().unwrap()
    }

    fn usage(data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"production-room",
               "subject":"acme","time":"2026-11-20T09:15:02Z","data":{data}}}"#
        )
    }

    #[test]
    fn parses_the_contract_example() {
        let e = parse(
            usage(r#"{"user":"kim@acme.kr","feature":"image_generation","variant":"mid","quantity":1,"status":"succeeded"}"#).as_bytes(),
            arrival(),
        )
        .unwrap();
        assert_eq!(e.account, "acme");
        assert_eq!(e.source, "production-room");
        let Body::Usage(u) = e.body else {
            panic!("not usage")
        };
        assert_eq!(u.variant.as_deref(), Some("mid"));
        assert_eq!(u.quantity, Credits::from_whole(1));
    }

    #[test]
    fn quantity_and_status_default() {
        let e = parse(
            usage(r#"{"user":"u","feature":"erase"}"#).as_bytes(),
            arrival(),
        )
        .unwrap();
        let Body::Usage(u) = e.body else {
            panic!("not usage")
        };
        assert_eq!(
            (u.quantity, u.status),
            (Credits::from_whole(1), Status::Succeeded)
        );
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases: Vec<(String, &str)> =
            vec![
            ("{not json".into(), "not_json"),
            (r#"{"hello":"world"}"#.into(), "not_cloudevent"),
            (
                r#"{"specversion":"1.0","type":"ai.usage","id":"1","source":"s","data":{}}"#.into(),
                "no_subject",
            ),
            (usage(r#"{"user":"u"}"#), "bad_data"),
            (usage(r#"{"user":"u","feature":"erase","quantity":-2}"#), "negative_quantity"),
            (usage(r#"{"user":"u","feature":"erase","quantity":"lots"}"#), "bad_data"),
            (
                r#"{"specversion":"1.0","type":"ai.teleport","id":"1","source":"s","subject":"a"}"#
                    .into(),
                "unknown_type",
            ),
            (
                r#"{"specversion":"0.3","type":"ai.usage","id":"1","source":"s","subject":"a"}"#
                    .into(),
                "not_cloudevent",
            ),
        ];
        for (payload, code) in cases {
            let err = parse(payload.as_bytes(), arrival()).unwrap_err();
            assert_eq!(err.code(), code, "{payload}: {err}");
        }
    }

    #[test]
    fn grant_parses_with_payment_and_null_expiry() {
        let payload = r#"{"specversion":"1.0","type":"credit.grant","id":"g-1","source":"billing",
            "subject":"acme","time":"2026-11-01T00:00:00Z",
            "data":{"kind":"purchased","credits":"2500","expires_at":null,
                    "payment":{"method":"card","reference":"inv-123"}}}"#;
        let e = parse(payload.as_bytes(), arrival()).unwrap();
        let Body::Grant(g) = e.body else {
            panic!("not a grant")
        };
        assert_eq!(g.credits, Credits::from_whole(2500));
        assert_eq!(g.pool, "ai");
        assert_eq!(g.expires_at, None);
        assert_eq!(g.payment.unwrap().method, PaymentMethod::Card);
    }

    #[test]
    fn a_misspelt_usage_field_is_rejected_by_name() {
        let err = parse(
            usage(r#"{"user":"u","feature":"erase","quantiy":5}"#).as_bytes(),
            arrival(),
        )
        .unwrap_err();
        assert_eq!(err.code(), "bad_data");
        assert!(err.to_string().contains("unknown field `quantiy`"), "{err}");
    }

    #[test]
    fn quantities_and_credits_are_exact_or_rejected() {
        let quantity = |q: &str| {
            parse(
                usage(&format!(
                    r#"{{"user":"u","feature":"translation","quantity":{q}}}"#
                ))
                .as_bytes(),
                arrival(),
            )
            .map(|e| match e.body {
                Body::Usage(u) => u.quantity,
                _ => panic!("not usage"),
            })
        };
        assert_eq!(
            quantity("12345678901234.567"),
            Ok(Credits::from_milli(12_345_678_901_234_567))
        );
        assert_eq!(quantity("1e3"), Ok(Credits::from_whole(1000)));
        assert_eq!(quantity(r#""1e3""#), Ok(Credits::from_whole(1000)));
        assert_eq!(quantity("1.5e-2"), Ok(Credits::from_milli(15)));
        for (q, reason) in [
            ("0.10000000000000000001", "more than 3 decimals"),
            (r#""0.10000000000000000001""#, "more than 3 decimals"),
            ("1e-4", "more than 3 decimals"),
            ("1e400", "out of range"),
            (r#""1e400""#, "out of range"),
            ("99999999999999999999", "out of range"),
        ] {
            let err = quantity(q).unwrap_err();
            assert_eq!(err.code(), "bad_data", "{q}");
            assert!(err.to_string().contains("`quantity`"), "{q}: {err}");
            assert!(err.to_string().contains(reason), "{q}: {err}");
        }
        let grant = |credits: &str| {
            let payload = format!(
                r#"{{"specversion":"1.0","type":"credit.grant","id":"g","source":"b","subject":"a",
                    "data":{{"kind":"purchased","credits":{credits}}}}}"#
            );
            parse(payload.as_bytes(), arrival())
        };
        assert!(grant("2500.1234").is_err());
        assert!(grant("2.5e3").is_ok());
    }

    #[test]
    fn control_characters_are_found_at_every_boundary() {
        for bad in [
            "a\u{1f}",
            "\u{0}",
            "a\u{7f}b",
            "\u{80}",
            "x\u{9f}",
            "\u{85}\u{85}",
        ] {
            assert_eq!(check_name(bad), Err(LimitError::Control), "{bad:?}");
        }
        // The bytes next to the refused ranges, and 0xC2 leading a printable character.
        for good in [" ~", "\u{a0}", "\u{c2}", "é", "김", "\u{100}"] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
        let long_clean = "ab".repeat(100);
        assert_eq!(check_name(&long_clean), Ok(()));
        assert_eq!(
            check_name(&format!("{long_clean}\u{9f}")),
            Err(LimitError::Control)
        );
    }

    #[test]
    fn ids_and_names_are_bounded_and_free_of_control_characters() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let envelope = |id: &str, subject: &str, data: &str| {
            format!(
                r#"{{"specversion":"1.0","type":"ai.usage","id":{},"source":"s","subject":{},"data":{data}}}"#,
                serde_json::to_string(id).unwrap(),
                serde_json::to_string(subject).unwrap()
            )
        };
        let ok = r#"{"user":"u","feature":"erase"}"#;
        let exact = "y".repeat(MAX_NAME_BYTES);
        assert!(parse(envelope(&exact, &exact, ok).as_bytes(), arrival()).is_ok());
        let user = |u: &str| {
            format!(
                r#"{{"user":{},"feature":"erase"}}"#,
                serde_json::to_string(u).unwrap()
            )
        };
        let comment = |c: &str| {
            format!(
                r#"{{"user":"u","feature":"erase","comment":{}}}"#,
                serde_json::to_string(c).unwrap()
            )
        };
        for (payload, field, problem) in [
            (envelope(&long, "acme", ok), "`id`", "longer than 256 bytes"),
            (
                envelope("e", &long, ok),
                "`subject`",
                "longer than 256 bytes",
            ),
            (
                envelope("e", "ac\nme", ok),
                "`subject`",
                "control character",
            ),
            (envelope("e\u{85}", "acme", ok), "`id`", "control character"),
            (
                envelope("e", "acme", &user("kim\r\nINFO forged")),
                "`data.user`",
                "control character",
            ),
            (
                envelope("e", "acme", &user(&long)),
                "`data.user`",
                "longer than 256 bytes",
            ),
            (
                envelope("e", "acme", &comment(&"c".repeat(MAX_TEXT_BYTES + 1))),
                "`data.comment`",
                "longer than 2048 bytes",
            ),
        ] {
            let err = parse(payload.as_bytes(), arrival()).unwrap_err();
            assert_eq!(err.code(), "bad_data", "{err}");
            let text = err.to_string();
            assert!(text.contains(field) && text.contains(problem), "{text}");
            assert!(
                text.len() < 200,
                "the reason does not echo the value: {text}"
            );
        }
        // Line breaks are fine in a comment, and non-ASCII names are fine.
        assert!(parse(
            envelope("e", "에이씨엠이", &comment("line 1\nline 2")).as_bytes(),
            arrival()
        )
        .is_ok());
        let grant = r#"{"specversion":"1.0","type":"credit.grant","id":"g","source":"b","subject":"a",
            "data":{"kind":"purchased","credits":1,"payment":{"method":"card","reference":"REF"}}}"#;
        let err = parse(
            grant
                .replace("REF", &"r".repeat(MAX_TEXT_BYTES + 1))
                .as_bytes(),
            arrival(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`data.payment.reference`"),
            "{err}"
        );
    }
}
