//! The stored form of an account's state in the checkpoint: a versioned binary encoding
//! (postcard, varints, times as seconds and nanoseconds, enums as indexes), about a
//! quarter of the JSON it replaced; JSON states written by earlier versions still load.
//!
//! postcard is not self-describing: the byte layout is the order of the fields below. A
//! change of any field or enum order must come with a new format byte and a decoder for
//! the old one; `golden_bytes_do_not_change` fails first when the layout moves.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tally_core::alerts::{AlertSettings, Mark};
use tally_core::holds::{Hold, HoldStatus};
use tally_core::hooks::{Endpoint, HookState, TopUp, TopUpMark};
use tally_core::lots::{Lot, LotKind, Payment, PaymentMethod, Policy};
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
    bytes
}

/// Decodes a stored state: the binary format, or the JSON of earlier versions.
pub fn decode(bytes: &[u8]) -> Result<AccountState, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&FORMAT_V1) => postcard::from_bytes::<StoredState>(&bytes[1..])?.try_into(),
        Some(&FORMAT_V2) => {
            let (stored, rest) = postcard::take_from_bytes::<StoredState>(&bytes[1..])?;
            let mut state: AccountState = stored.try_into()?;
            state.hooks = postcard::from_bytes::<StoredHooks>(rest)?.into();
            Ok(state)
        }
        Some(&other) => Err(CodecError::UnknownFormat(other)),
    }
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
}
