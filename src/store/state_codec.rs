//! The stored form of an account's state in the checkpoint: a versioned binary encoding
//! (postcard, varints, times as seconds and nanoseconds, enums as indexes), about a
//! quarter of the JSON it replaced; JSON states written by earlier versions still load.
//!
//! postcard is not self-describing: the byte layout is the order of the fields below. A
//! change of any field or enum order must come with a new format byte and a decoder for
//! the old one; `golden_bytes_do_not_change` fails first when the layout moves.
//!
//! Either format may end with the account's alert proof (`StoredCalm`), so that the first
//! call after a restart skips the full alert check as the calls before it did. A state
//! without one (written before it existed) loads without one; a decoder older than it
//! reads what it knows and leaves the rest, so a state with one loads there too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tally_core::alerts::{AlertRules, AlertSettings, Calm, Mark, Quiet};
use tally_core::holds::{Hold, HoldStatus};
use tally_core::hooks::{Endpoint, HookState, TopUp, TopUpMark};
use tally_core::lots::{Lot, LotKind, Payment, PaymentMethod, Policy};
use tally_core::plans::Month;
use tally_core::plans::{Period, Plan, Subscription};
use tally_core::{AccountState, Credits};

/// The first byte of a binary state. A JSON state starts with `{`.
const FORMAT_V1: u8 = 1;
/// A version 1 state followed by the account's webhook state (`StoredHooks`); written only
/// for accounts that have one, so every other state keeps its version 1 bytes.
const FORMAT_V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty state")]
    Empty,
    #[error("unknown state format byte {0}")]
    UnknownFormat(u8),
    #[error("binary state: {0}")]
    Binary(#[from] postcard::Error),
    #[error("JSON state: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{0}` is not an IANA time zone")]
    TimeZone(String),
    #[error("time {0}.{1} is out of range")]
    Time(i64, u32),
}

/// Encodes `state` for the checkpoint.
pub fn encode(state: &AccountState) -> Vec<u8> {
    let stored = StoredState::from(state);
    let hooks = !state.hooks.is_empty();
    let mut bytes = vec![if hooks { FORMAT_V2 } else { FORMAT_V1 }];
    // Serializing plain data into a growing buffer cannot fail.
    bytes.extend(postcard::to_allocvec(&stored).unwrap_or_default());
    if hooks {
        bytes.extend(postcard::to_allocvec(&StoredHooks::from(&state.hooks)).unwrap_or_default());
    }
    if let Some(calm) = state.alert_quiet.calm() {
        // Written in place: this runs for every changed account at every flush.
        bytes = postcard::to_extend(&StoredCalm::from(calm), bytes).unwrap_or_default();
    }
    bytes
}

/// Decodes a stored state: the binary format, or the JSON of earlier versions.
pub fn decode(bytes: &[u8]) -> Result<AccountState, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&FORMAT_V1) => {
            let (stored, rest) = postcard::take_from_bytes::<StoredState>(&bytes[1..])?;
            with_proof(stored.try_into()?, rest)
        }
        Some(&FORMAT_V2) => {
            let (stored, rest) = postcard::take_from_bytes::<StoredState>(&bytes[1..])?;
            let mut state: AccountState = stored.try_into()?;
            let (hooks, rest) = postcard::take_from_bytes::<StoredHooks>(rest)?;
            state.hooks = hooks.into();
            with_proof(state, rest)
        }
        Some(&other) => Err(CodecError::UnknownFormat(other)),
    }
}

/// `state` with the alert proof that `rest` holds, if any.
fn with_proof(mut state: AccountState, rest: &[u8]) -> Result<AccountState, CodecError> {
    if !rest.is_empty() {
        let calm = postcard::from_bytes::<StoredCalm<'_>>(rest)?.try_into()?;
        state.alert_quiet = Quiet::restored(calm);
    }
    Ok(state)
}

/// Seconds and nanoseconds: 5 to 7 bytes where RFC 3339 text takes 22 to 32.
type Time = (i64, u32);

fn time(at: DateTime<Utc>) -> Time {
    (at.timestamp(), at.timestamp_subsec_nanos())
}

fn from_time((secs, nanos): Time) -> Result<DateTime<Utc>, CodecError> {
    DateTime::from_timestamp(secs, nanos).ok_or(CodecError::Time(secs, nanos))
}

fn opt_time(at: Option<DateTime<Utc>>) -> Option<Time> {
    at.map(time)
}

fn from_opt_time(at: Option<Time>) -> Result<Option<DateTime<Utc>>, CodecError> {
    at.map(from_time).transpose()
}

fn tz(name: &str) -> Result<Tz, CodecError> {
    name.parse()
        .map_err(|_| CodecError::TimeZone(name.to_string()))
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    lots: Vec<StoredLot>,
    next_seq: u64,
    timezone: Option<String>,
    policy: Option<Policy>,
    locale: Option<String>,
    admins: Vec<String>,
    subscription: Option<StoredSubscription>,
    flex_enabled: Option<bool>,
    flex_threshold: Option<i64>,
    settle_shortfall: Option<bool>,
    flex_used: i64,
    flex_period: Option<Time>,
    shortfall: Vec<(String, i64)>,
    alerts: StoredAlerts,
    alert_marks: Vec<(String, bool, Option<Time>)>,
    holds: Vec<StoredHold>,
}

#[derive(Serialize, Deserialize)]
struct StoredLot {
    id: String,
    pool: String,
    kind: LotKind,
    granted: i64,
    remaining: i64,
    effective_at: Time,
    expires_at: Option<Time>,
    priority: Option<i32>,
    seq: u64,
    /// voided, expired, from_plan as bits 0, 1, 2.
    flags: u8,
    held: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    name: String,
    credits: i64,
    pool: String,
    period: Period,
    flex_threshold: Option<i64>,
    anchor: Time,
    timezone: String,
    payment: Option<PaymentMethod>,
    cycle: u32,
    cycle_start: Time,
    cycle_end: Time,
}

#[derive(Serialize, Deserialize)]
struct StoredAlerts {
    enabled: Option<bool>,
    low_balance: Option<i64>,
    included_used_percent: Option<u32>,
    shortfall: Option<bool>,
    expiring_min: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StoredHold {
    id: String,
    source: String,
    event_id: String,
    feature: String,
    variant: Option<String>,
    quantity: i64,
    ttl: u32,
    pool: String,
    credits: i64,
    reserved: Vec<(String, LotKind, i64)>,
    placed_at: Time,
    expires_at: Time,
    status: HoldStatus,
    closed_at: Option<Time>,
}

fn milli(credits: Option<Credits>) -> Option<i64> {
    credits.map(Credits::milli)
}

fn credits(milli: Option<i64>) -> Option<Credits> {
    milli.map(Credits::from_milli)
}

impl From<&AccountState> for StoredState {
    fn from(s: &AccountState) -> Self {
        StoredState {
            lots: s
                .lots
                .iter()
                .map(|lot| StoredLot {
                    id: lot.id.to_string(),
                    pool: lot.pool.to_string(),
                    kind: lot.kind,
                    granted: lot.granted.milli(),
                    remaining: lot.remaining.milli(),
                    effective_at: time(lot.effective_at),
                    expires_at: opt_time(lot.expires_at),
                    priority: lot.priority,
                    seq: lot.seq,
                    flags: u8::from(lot.voided)
                        | u8::from(lot.expired) << 1
                        | u8::from(lot.from_plan) << 2,
                    held: lot.held.milli(),
                })
                .collect(),
            next_seq: s.next_seq,
            timezone: s.timezone.map(|tz| tz.name().to_string()),
            policy: s.policy,
            locale: s.locale.clone(),
            admins: s.admins.clone(),
            subscription: s.subscription.as_ref().map(|sub| StoredSubscription {
                name: sub.name.clone(),
                credits: sub.plan.credits.milli(),
                pool: sub.plan.pool.clone(),
                period: sub.plan.period,
                flex_threshold: milli(sub.plan.flex_threshold),
                anchor: time(sub.anchor),
                timezone: sub.timezone.name().to_string(),
                payment: sub.payment,
                cycle: sub.cycle,
                cycle_start: time(sub.cycle_start),
                cycle_end: time(sub.cycle_end),
            }),
            flex_enabled: s.flex_enabled,
            flex_threshold: milli(s.flex_threshold),
            settle_shortfall: s.settle_shortfall,
            flex_used: s.flex_used.milli(),
            flex_period: opt_time(s.flex_period),
            shortfall: s
                .shortfall
                .iter()
                .map(|(pool, c)| (pool.clone(), c.milli()))
                .collect(),
            alerts: StoredAlerts {
                enabled: s.alerts.enabled,
                low_balance: milli(s.alerts.low_balance),
                included_used_percent: s.alerts.included_used_percent,
                shortfall: s.alerts.shortfall,
                expiring_min: milli(s.alerts.expiring_min),
            },
            alert_marks: s
                .alert_marks
                .iter()
                .map(|(key, mark)| (key.clone(), mark.tripped, opt_time(mark.fired_in)))
                .collect(),
            holds: s
                .holds
                .values()
                .map(|h| StoredHold {
                    id: h.id.clone(),
                    source: h.source.clone(),
                    event_id: h.event_id.clone(),
                    feature: h.feature.clone(),
                    variant: h.variant.clone(),
                    quantity: h.quantity.milli(),
                    ttl: h.ttl,
                    pool: h.pool.clone(),
                    credits: h.credits.milli(),
                    reserved: h
                        .reserved
                        .iter()
                        .map(|p| (p.lot.to_string(), p.kind, p.credits.milli()))
                        .collect(),
                    placed_at: time(h.placed_at),
                    expires_at: time(h.expires_at),
                    status: h.status,
                    closed_at: opt_time(h.closed_at),
                })
                .collect(),
        }
    }
}

impl TryFrom<StoredState> for AccountState {
    type Error = CodecError;

    fn try_from(s: StoredState) -> Result<Self, CodecError> {
        let lots = s
            .lots
            .into_iter()
            .map(|lot| {
                Ok(Lot {
                    id: lot.id.into(),
                    pool: lot.pool.into(),
                    kind: lot.kind,
                    granted: Credits::from_milli(lot.granted),
                    remaining: Credits::from_milli(lot.remaining),
                    effective_at: from_time(lot.effective_at)?,
                    expires_at: from_opt_time(lot.expires_at)?,
                    priority: lot.priority,
                    seq: lot.seq,
                    voided: lot.flags & 1 != 0,
                    expired: lot.flags & 2 != 0,
                    from_plan: lot.flags & 4 != 0,
                    held: Credits::from_milli(lot.held),
                })
            })
            .collect::<Result<_, CodecError>>()?;
        let subscription = s
            .subscription
            .map(|sub| {
                Ok::<_, CodecError>(Subscription {
                    name: sub.name,
                    plan: Plan {
                        credits: Credits::from_milli(sub.credits),
                        pool: sub.pool,
                        period: sub.period,
                        flex_threshold: credits(sub.flex_threshold),
                    },
                    anchor: from_time(sub.anchor)?,
                    timezone: tz(&sub.timezone)?,
                    payment: sub.payment,
                    cycle: sub.cycle,
                    cycle_start: from_time(sub.cycle_start)?,
                    cycle_end: from_time(sub.cycle_end)?,
                })
            })
            .transpose()?;
        let alert_marks = s
            .alert_marks
            .into_iter()
            .map(|(key, tripped, fired_in)| {
                Ok((
                    key,
                    Mark {
                        tripped,
                        fired_in: from_opt_time(fired_in)?,
                    },
                ))
            })
            .collect::<Result<_, CodecError>>()?;
        let holds = s
            .holds
            .into_iter()
            .map(|h| {
                let hold = Hold {
                    id: h.id,
                    source: h.source,
                    event_id: h.event_id,
                    feature: h.feature,
                    variant: h.variant,
                    quantity: Credits::from_milli(h.quantity),
                    ttl: h.ttl,
                    pool: h.pool,
                    credits: Credits::from_milli(h.credits),
                    reserved: h
                        .reserved
                        .into_iter()
                        .map(|(lot, kind, c)| Payment {
                            lot: lot.into(),
                            kind,
                            credits: Credits::from_milli(c),
                        })
                        .collect(),
                    placed_at: from_time(h.placed_at)?,
                    expires_at: from_time(h.expires_at)?,
                    status: h.status,
                    closed_at: from_opt_time(h.closed_at)?,
                };
                Ok((hold.id.clone(), hold))
            })
            .collect::<Result<_, CodecError>>()?;
        Ok(AccountState {
            lots,
            day_cache: Default::default(),
            own_name: Default::default(),
            alert_quiet: Default::default(),
            next_seq: s.next_seq,
            timezone: s.timezone.as_deref().map(tz).transpose()?,
            policy: s.policy,
            locale: s.locale,
            admins: s.admins,
            subscription,
            flex_enabled: s.flex_enabled,
            flex_threshold: credits(s.flex_threshold),
            settle_shortfall: s.settle_shortfall,
            flex_used: Credits::from_milli(s.flex_used),
            flex_period: from_opt_time(s.flex_period)?,
            shortfall: s
                .shortfall
                .into_iter()
                .map(|(pool, c)| (pool, Credits::from_milli(c)))
                .collect::<BTreeMap<_, _>>(),
            alerts: AlertSettings {
                enabled: s.alerts.enabled,
                low_balance: credits(s.alerts.low_balance),
                included_used_percent: s.alerts.included_used_percent,
                shortfall: s.alerts.shortfall,
                expiring_min: credits(s.alerts.expiring_min),
            },
            alert_marks,
            holds,
            hooks: HookState::default(),
        })
    }
}

/// The alert proof (`tally_core::alerts::Calm`): the thresholds (enabled, low balance,
/// included-use percent, shortfall, expiring minimum, global webhooks; credits in
/// thousandths), the zone's name, from, until, the counts of lots, grants and shortfall
/// pools, free credits and slack, and the month (start, end, known from, known until).
#[derive(Serialize, Deserialize)]
struct StoredCalm<'a> {
    limits: (bool, i64, u32, bool, i64, bool),
    zone: &'a str,
    from: Time,
    until: Time,
    lots: u64,
    next_seq: u64,
    shortfall_pools: u64,
    free: i64,
    slack: i64,
    month: Option<(Time, Time, Time, Time)>,
}

impl From<&Calm> for StoredCalm<'static> {
    fn from(c: &Calm) -> Self {
        let l = &c.limits;
        StoredCalm {
            limits: (
                l.enabled,
                l.low_balance.milli(),
                l.included_used_percent,
                l.shortfall,
                l.expiring_min.milli(),
                l.global_webhooks,
            ),
            zone: c.zone.name(),
            from: time(c.from),
            until: time(c.until),
            lots: c.lots as u64,
            next_seq: c.next_seq,
            shortfall_pools: c.shortfall_pools as u64,
            free: c.free.milli(),
            slack: c.slack.milli(),
            month: c.month.map(|m| {
                (
                    time(m.start),
                    time(m.end),
                    time(m.known_from),
                    time(m.known_until),
                )
            }),
        }
    }
}

impl TryFrom<StoredCalm<'_>> for Calm {
    type Error = CodecError;

    fn try_from(s: StoredCalm<'_>) -> Result<Self, CodecError> {
        let (enabled, low_balance, included_used_percent, shortfall, expiring_min, global_webhooks) =
            s.limits;
        let month = match s.month {
            Some((start, end, known_from, known_until)) => Some(Month {
                start: from_time(start)?,
                end: from_time(end)?,
                known_from: from_time(known_from)?,
                known_until: from_time(known_until)?,
            }),
            None => None,
        };
        Ok(Calm {
            limits: AlertRules {
                enabled,
                low_balance: Credits::from_milli(low_balance),
                included_used_percent,
                shortfall,
                expiring_min: Credits::from_milli(expiring_min),
                global_webhooks,
            },
            zone: tz(s.zone)?,
            from: from_time(s.from)?,
            until: from_time(s.until)?,
            // A count that does not fit proves nothing: it matches no state.
            lots: usize::try_from(s.lots).unwrap_or(usize::MAX),
            next_seq: s.next_seq,
            shortfall_pools: usize::try_from(s.shortfall_pools).unwrap_or(usize::MAX),
            free: Credits::from_milli(s.free),
            slack: Credits::from_milli(s.slack),
            month,
        })
    }
}

/// The webhook state: endpoints (id, url, events, rotation), the top-up (pool, below,
/// credits in thousandths), whether a top-up is requested, how many were, reset emails.
#[derive(Serialize, Deserialize)]
struct StoredHooks {
    endpoints: Vec<(String, String, Vec<String>, u32)>,
    top_up: Option<(String, i64, i64)>,
    top_up_requested: bool,
    top_up_requests: u64,
    reset_email: bool,
}

impl From<&HookState> for StoredHooks {
    fn from(h: &HookState) -> Self {
        StoredHooks {
            endpoints: h
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.url.clone(), e.events.clone(), e.rotation))
                .collect(),
            top_up: h
                .top_up
                .as_ref()
                .map(|t| (t.pool.clone(), t.below.milli(), t.credits.milli())),
            top_up_requested: h.top_up_mark == TopUpMark::Requested,
            top_up_requests: h.top_up_requests,
            reset_email: h.reset_email,
        }
    }
}

impl From<StoredHooks> for HookState {
    fn from(s: StoredHooks) -> Self {
        HookState {
            endpoints: s
                .endpoints
                .into_iter()
                .map(|(id, url, events, rotation)| Endpoint {
                    id,
                    url,
                    events,
                    rotation,
                })
                .collect(),
            top_up: s.top_up.map(|(pool, below, credits)| TopUp {
                pool,
                below: Credits::from_milli(below),
                credits: Credits::from_milli(credits),
            }),
            top_up_mark: if s.top_up_requested {
                TopUpMark::Requested
            } else {
                TopUpMark::Armed
            },
            top_up_requests: s.top_up_requests,
            reset_email: s.reset_email,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::Book;

    /// An account as the benchmark's: admins, a locale, an alert threshold, a plan and
    /// three lots, one of them partly spent and holding a reservation.
    fn sample() -> AccountState {
        let rules = crate::config::Config::default()
            .validate("(defaults)", None)
            .expect("the defaults are valid");
        let at: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().expect("time");
        let mut book = Book::default();
        let events = [
            r#"{"specversion":"1.0","type":"account.settings","id":"s","source":"billing","subject":"acme","time":"2026-11-19T00:00:00Z","data":{"admins":["ops@acme.kr"],"locale":"ko","timezone":"Asia/Seoul","alerts":{"low_balance":100}}}"#,
            r#"{"specversion":"1.0","type":"account.plan","id":"p","source":"billing","subject":"acme","time":"2026-11-19T00:00:00Z","data":{"plan":"pro"}}"#,
            r#"{"specversion":"1.0","type":"credit.grant","id":"g1","source":"billing","subject":"acme","time":"2026-11-19T00:00:00.25Z","data":{"kind":"purchased","credits":"2500.5","valid_days":360,"priority":2}}"#,
            r#"{"specversion":"1.0","type":"credit.grant","id":"g2","source":"billing","subject":"acme","time":"2026-11-19T00:00:00Z","data":{"kind":"promotional","credits":50}}"#,
            r#"{"specversion":"1.0","type":"ai.usage","id":"u1","source":"studio","subject":"acme","time":"2026-11-19T12:00:00Z","data":{"user":"kim","feature":"image_generation","variant":"long","quantity":9}}"#,
            r#"{"specversion":"1.0","type":"credit.hold","id":"h","source":"studio","subject":"acme","time":"2026-11-19T13:00:00Z","data":{"hold":"h-1","feature":"text_to_image","ttl":300}}"#,
        ];
        for event in events {
            let step = book.process(&rules, event.as_bytes(), at);
            assert!(
                matches!(step.outcome, tally_core::Outcome::Applied { .. }),
                "{event}: {:?}",
                step.outcome
            );
        }
        book.accounts.remove("acme").expect("acme")
    }

    #[test]
    fn round_trips_every_field() {
        let state = sample();
        assert_eq!(state.lots.len(), 3, "the plan's allowance and two grants");
        assert!(state.subscription.is_some() && !state.holds.is_empty());
        let bytes = encode(&state);
        assert_eq!(decode(&bytes).expect("decodes"), state);
    }

    #[test]
    fn round_trips_the_webhook_state_as_version_2() {
        let mut state = sample();
        state.hooks = HookState {
            endpoints: vec![Endpoint {
                id: "billing".into(),
                url: "https://billing.example/hooks".into(),
                events: vec!["credit.top_up_requested".into()],
                rotation: 3,
            }],
            top_up: Some(TopUp {
                pool: "ai".into(),
                below: Credits::from_milli(100_500),
                credits: Credits::from_whole(500),
            }),
            top_up_mark: TopUpMark::Requested,
            top_up_requests: 7,
            reset_email: true,
        };
        let bytes = encode(&state);
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(decode(&bytes).expect("decodes"), state);
        // Without a webhook state, the version 1 bytes, unchanged.
        state.hooks = HookState::default();
        assert_eq!(encode(&state)[0], FORMAT_V1);
    }

    #[test]
    fn reads_the_json_states_of_earlier_versions() {
        let state = sample();
        let json = serde_json::to_vec(&state).expect("json");
        assert_eq!(decode(&json).expect("decodes"), state);
    }

    #[test]
    fn is_much_smaller_than_json() {
        let state = sample();
        let (binary, json) = (
            encode(&state).len(),
            serde_json::to_vec(&state).unwrap().len(),
        );
        eprintln!("sample state: binary {binary} bytes, JSON {json}");
        assert!(binary * 3 < json, "binary {binary} bytes, JSON {json}");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode(&[9, 0]), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(
            decode(&[FORMAT_V1, 0xff]),
            Err(CodecError::Binary(_))
        ));
        let mut bytes = encode(&sample());
        bytes.truncate(bytes.len() / 2);
        assert!(decode(&bytes).is_err(), "a truncated state is an error");
    }

    /// The layout of format 1, pinned: a change here needs a new format byte.
    #[test]
    fn golden_bytes_do_not_change() {
        let mut state = AccountState::default();
        state.lots.push(Lot {
            id: "L".into(),
            pool: "ai".into(),
            kind: LotKind::Purchased,
            granted: Credits::from_whole(2),
            remaining: Credits::from_milli(1500),
            effective_at: DateTime::from_timestamp(1, 0).expect("time"),
            expires_at: None,
            priority: Some(-1),
            seq: 3,
            voided: false,
            expired: true,
            from_plan: false,
            held: Credits::ZERO,
        });
        state.next_seq = 4;
        state.policy = Some(Policy::KindOrder);
        let bytes = encode(&state);
        assert_eq!(
            bytes,
            [
                1, // format
                // one lot: id, pool, kind 2, granted and remaining zigzag varints (4000, 3000),
                // effective (2, 0), no expiry, priority -1 (zigzag 1), seq 3, flags 2, held 0;
                // next_seq 4, no time zone, policy 1, then empty or absent fields
                1, 1, b'L', 2, b'a', b'i', 2, 0xa0, 0x1f, 0xb8, 0x17, 2, 0, 0, 1, 1, 3, 2, 0, 4, 0,
                1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(decode(&bytes).expect("decodes"), state);
    }

    /// The config's rules with these alert thresholds.
    fn rules_with(low_balance: i64, expiring_min: i64) -> tally_core::Rules {
        let mut rules = crate::config::Config::default()
            .validate("(defaults)", None)
            .expect("the defaults are valid");
        rules.alerts = AlertRules {
            enabled: true,
            low_balance: Credits::from_whole(low_balance),
            expiring_min: Credits::from_whole(expiring_min),
            included_used_percent: 80,
            shortfall: true,
            global_webhooks: false,
        };
        rules
    }

    fn payload(ty: &str, id: &str, time: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","type":"{ty}","id":"{id}","source":"billing","subject":"acme","time":"{time}","data":{data}}}"#
        )
    }

    const CALL: &str = r#"{"user":"kim","feature":"text_to_image"}"#;

    /// Applies `payload` at its own time; returns the alerts as (kind, threshold, balance)
    /// in whole credits.
    fn send(
        book: &mut Book,
        rules: &tally_core::Rules,
        payload: &str,
        time: &str,
    ) -> Vec<(tally_core::alerts::AlertKind, i64, i64)> {
        let step = book.process(rules, payload.as_bytes(), time.parse().expect("time"));
        assert!(
            matches!(step.outcome, tally_core::Outcome::Applied { .. }),
            "{payload}: {:?}",
            step.outcome
        );
        step.alerts
            .iter()
            .map(|a| (a.kind, a.threshold.milli() / 1000, a.balance.milli() / 1000))
            .collect()
    }

    /// The account as a restart finds it: through the codec.
    fn restart(book: &mut Book) {
        let state = book.accounts.remove("acme").expect("acme");
        let restored = decode(&encode(&state)).expect("decodes");
        assert_eq!(
            restored.alert_quiet.calm(),
            state.alert_quiet.calm(),
            "the proof survives"
        );
        book.accounts.insert("acme".to_string(), restored);
    }

    /// An account with admins, 100 and 30 credits, and one call of 8 (122 left, far above
    /// a low-balance limit of 20: the proof lets calls through until 102 more are spent).
    fn quiet_account(rules: &tally_core::Rules) -> Book {
        let mut book = Book::default();
        let t = "2026-11-02T00:00:00Z";
        let settings = r#"{"admins":["ops@acme.kr"],"timezone":"UTC"}"#;
        send(
            &mut book,
            rules,
            &payload("account.settings", "s", t, settings),
            t,
        );
        let grant = r#"{"kind":"purchased","credits":100}"#;
        send(
            &mut book,
            rules,
            &payload("credit.grant", "g1", t, grant),
            t,
        );
        let grant = r#"{"kind":"purchased","credits":30}"#;
        send(
            &mut book,
            rules,
            &payload("credit.grant", "g2", t, grant),
            t,
        );
        let t = "2026-11-02T01:00:00Z";
        assert_eq!(
            send(&mut book, rules, &payload("ai.usage", "u1", t, CALL), t),
            []
        );
        assert!(book.accounts["acme"].alert_quiet.calm().is_some());
        book
    }

    #[test]
    fn a_restored_proof_fires_on_the_call_that_crosses_a_threshold_changed_meanwhile() {
        let mut book = quiet_account(&rules_with(20, 0));
        restart(&mut book);
        // Restarted with a limit of 120: the next call (122 to 114) crosses it and fires,
        // although it is far within what the stored proof allowed under the old limit.
        let rules = rules_with(120, 0);
        let t = "2026-11-02T02:00:00Z";
        assert_eq!(
            send(&mut book, &rules, &payload("ai.usage", "u2", t, CALL), t),
            [(tally_core::alerts::AlertKind::LowBalance, 120, 114)]
        );
        // Restarted with the old limit: the next calls are quiet until one crosses 20.
        let mut book = quiet_account(&rules_with(20, 0));
        restart(&mut book);
        let rules = rules_with(20, 0);
        let mut fired = Vec::new();
        for (n, hour) in (2..=14).enumerate() {
            let t = format!("2026-11-02T{hour:02}:00:00Z");
            let alerts = send(
                &mut book,
                &rules,
                &payload("ai.usage", &format!("c{n}"), &t, CALL),
                &t,
            );
            fired.extend(alerts.into_iter().map(|alert| (n, alert)));
        }
        // 122 - 8 * 13 = 18 after the 13th call (n = 12); 26 after the 12th.
        assert_eq!(
            fired,
            [(12, (tally_core::alerts::AlertKind::LowBalance, 20, 18))]
        );
    }

    #[test]
    fn a_restored_proof_fires_on_the_call_that_crosses_after_a_command_changed_the_lots() {
        let rules = rules_with(20, 0);
        let mut book = quiet_account(&rules);
        restart(&mut book);
        // The call paid from the first lot (the older of two alike): voiding it leaves 30,
        // above 20, so the void fires nothing.
        let t = "2026-11-02T02:00:00Z";
        let void = r#"{"lot":"g1","reason":"refund"}"#;
        assert_eq!(
            send(&mut book, &rules, &payload("credit.void", "v1", t, void), t),
            []
        );
        restart(&mut book);
        // 30 to 22, quiet; 22 to 14 crosses 20.
        let t = "2026-11-02T03:00:00Z";
        assert_eq!(
            send(&mut book, &rules, &payload("ai.usage", "u2", t, CALL), t),
            []
        );
        restart(&mut book);
        let t = "2026-11-02T04:00:00Z";
        assert_eq!(
            send(&mut book, &rules, &payload("ai.usage", "u3", t, CALL), t),
            [(tally_core::alerts::AlertKind::LowBalance, 20, 14)]
        );
    }

    #[test]
    fn a_restored_proof_of_another_time_zone_proves_nothing() {
        let rules = rules_with(20, 0);
        let mut book = quiet_account(&rules);
        let settings = r#"{"timezone":"Asia/Seoul"}"#;
        let t = "2026-11-02T01:30:00Z";
        send(
            &mut book,
            &rules,
            &payload("account.settings", "s2", t, settings),
            t,
        );
        // The stored proof was made in Seoul, with Seoul's month. Had it been made in
        // another zone than the account's (the config's default zone changed between two
        // runs, say), the next call evaluates in full, in the account's zone.
        restart(&mut book);
        let calm = book.accounts["acme"]
            .alert_quiet
            .calm()
            .cloned()
            .expect("a proof");
        assert_eq!(calm.zone, chrono_tz::Asia::Seoul);
        let month = calm.month.expect("no plan: the calendar month");
        assert_eq!(
            month.start,
            "2026-10-31T15:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let mut other = calm.clone();
        other.zone = chrono_tz::UTC;
        book.accounts.get_mut("acme").expect("acme").alert_quiet = Quiet::restored(other);
        let t = "2026-11-02T02:00:00Z";
        assert_eq!(
            send(&mut book, &rules, &payload("ai.usage", "u2", t, CALL), t),
            []
        );
        let now = book.accounts["acme"]
            .alert_quiet
            .calm()
            .cloned()
            .expect("a proof");
        assert_eq!(
            (now.zone, now.from),
            (chrono_tz::Asia::Seoul, t.parse().unwrap()),
            "evaluated in full again, in the account's zone"
        );
    }

    /// A state stored before the proof was (no trailer) loads with none; with a proof, the
    /// bytes before the trailer are the old format's, so an older decoder loads them too.
    #[test]
    fn states_without_a_proof_load_and_the_proof_is_a_trailer() {
        let rules = rules_with(20, 0);
        let book = quiet_account(&rules);
        let state = &book.accounts["acme"];
        let with = encode(state);
        let mut without_proof = state.clone();
        without_proof.alert_quiet = Quiet::default();
        let old = encode(&without_proof);
        assert!(with.len() > old.len() && with.starts_with(&old));
        let loaded = decode(&old).expect("an old state loads");
        assert!(loaded.alert_quiet.calm().is_none());
        assert_eq!(loaded, *state);
        // What a decoder without the trailer reads: the state alone.
        let older: StoredState = postcard::from_bytes(&with[1..]).expect("older decoder");
        assert_eq!(AccountState::try_from(older).expect("state"), *state);
        let mut truncated = with.clone();
        truncated.pop();
        assert!(decode(&truncated).is_err(), "a torn trailer is an error");
    }

    /// Seeded histories over three months (calls, grants that expire or not, voids, a plan,
    /// the account's own thresholds, days without calls), with the config's thresholds
    /// changing between runs: an account restored through the codec before every event
    /// fires the same alerts and keeps the same marks as the same account whose proof is
    /// dropped before every event, so that every call is evaluated in full.
    #[test]
    fn restored_proofs_fire_what_full_evaluations_fire() {
        let configs = [rules_with(20, 0), rules_with(40, 15), rules_with(5, 30)];
        // Alerts fired, and calls the restored proof let through without a full check.
        let (mut fired, mut quiet) = (0, 0);
        for seed in 1..=40u64 {
            let mut random = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move |n: u64| {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                random % n
            };
            let (mut restored, mut full) = (Book::default(), Book::default());
            let mut time: DateTime<Utc> = "2026-10-28T00:00:00Z".parse().unwrap();
            let mut rules = &configs[0];
            let settings = r#"{"admins":["ops@acme.kr"],"timezone":"Asia/Seoul"}"#;
            let settings = payload("account.settings", "s", &time.to_rfc3339(), settings);
            restored.process(rules, settings.as_bytes(), time);
            full.process(rules, settings.as_bytes(), time);
            for n in 0..300 {
                time += chrono::TimeDelta::minutes(if next(20) == 0 {
                    60 * 24 * (1 + next(6) as i64)
                } else {
                    1 + next(600) as i64
                });
                let t = time.to_rfc3339();
                let id = format!("e{n}");
                let event = match next(100) {
                    0..=64 => payload("ai.usage", &id, &t, CALL),
                    65..=76 => {
                        let expiry = match next(3) {
                            0 => String::new(),
                            _ => format!(r#","valid_days":{}"#, 5 + next(30)),
                        };
                        let data = format!(
                            r#"{{"kind":"purchased","credits":{}{expiry}}}"#,
                            1 + next(60)
                        );
                        payload("credit.grant", &id, &t, &data)
                    }
                    77..=80 => {
                        let lot = format!(r#"{{"lot":"e{}"}}"#, next(n + 1));
                        payload("credit.void", &id, &t, &lot)
                    }
                    81..=84 => {
                        let data = format!(r#"{{"alerts":{{"low_balance":{}}}}}"#, next(50));
                        payload("account.settings", &id, &t, &data)
                    }
                    85 if seed % 2 == 0 => payload("account.plan", &id, &t, r#"{"plan":"pro"}"#),
                    86..=90 => {
                        rules = &configs[next(3) as usize];
                        continue;
                    }
                    _ => payload("ai.usage", &id, &t, CALL),
                };
                if let Some(state) = restored.accounts.remove("acme") {
                    let state = decode(&encode(&state)).expect("decodes");
                    restored.accounts.insert("acme".to_string(), state);
                }
                if let Some(state) = full.accounts.get_mut("acme") {
                    state.alert_quiet = Quiet::default();
                }
                // `tally run` parses first and applies the parsed event; tests and the
                // fast way read a call in place: both ways, by turns.
                let a = if n % 2 == 0 {
                    let parsed = tally_core::event::parse(event.as_bytes(), time);
                    restored.apply(rules, parsed, time)
                } else {
                    restored.process(rules, event.as_bytes(), time)
                };
                let b = full.process(rules, event.as_bytes(), time);
                assert_eq!(a.alerts, b.alerts, "seed {seed}, event {n}: {event}");
                fired += a.alerts.len();
                let proved_at = restored
                    .accounts
                    .get("acme")
                    .and_then(|s| s.alert_quiet.calm());
                quiet += usize::from(proved_at.is_some_and(|calm| calm.from < time));
                assert_eq!(
                    restored.accounts.get("acme").map(|s| &s.alert_marks),
                    full.accounts.get("acme").map(|s| &s.alert_marks),
                    "seed {seed}, event {n}"
                );
            }
        }
        eprintln!("{fired} alerts, {quiet} calls let through by a restored proof");
        assert!(
            fired > 100 && quiet > 2000,
            "{fired} alerts, {quiet} quiet calls"
        );
    }
}
