//! Low-credit alert decisions: which thresholds an account's pools crossed downward, fired
//! once per threshold per cycle and re-armed when the pool is back above it.

use chrono::{DateTime, Utc};

use crate::account::AccountState;
use crate::alerts::{Alert, AlertKind, AlertRules, Calm, Mark, Marks};
use crate::credits::Credits;
use crate::lots::Lot;
use crate::plans;
use crate::plans::Month;
use crate::rules::{Rules, EXPIRING_WITHIN};

/// [`evaluate`] after a call that settles no hold: skipped when the account's last
/// evaluation proved that this one changes nothing (see [`crate::alerts::Quiet`]).
// Inline: every call comes here, and most return at the proof (a call of its own cost a
// fifth of the check).
#[inline(always)]
pub fn evaluate_call(
    state: &mut AccountState,
    rules: &Rules,
    account: &str,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    let limits = state.alerts.effective(&rules.alerts);
    // The proof first, as it holds for most calls: where it holds nothing fires, and
    // where nobody listens nothing fires either, so the order changes no result.
    let quiet = state.alert_quiet.covers(
        &limits,
        state.timezone(rules),
        at,
        &state.lots,
        state.next_seq,
        state.shortfall.len(),
    );
    if quiet {
        return Vec::new();
    }
    match listened(state, limits) {
        Some(limits) => evaluate_all(state, rules, limits, account, at),
        None => Vec::new(),
    }
}

/// Checks every threshold of every pool of the account at `at` and returns the alerts that
/// fire now, updating the account's marks. Accounts with no admins and no webhook (of
/// their own or in config) are not checked: there is nobody to tell.
pub fn evaluate(
    state: &mut AccountState,
    rules: &Rules,
    account: &str,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    match checked_limits(state, rules) {
        Some(limits) => evaluate_all(state, rules, limits, account, at),
        None => Vec::new(),
    }
}

/// The account's thresholds, if it has them on and someone to tell.
fn checked_limits(state: &AccountState, rules: &Rules) -> Option<AlertRules> {
    listened(state, state.alerts.effective(&rules.alerts))
}

/// `limits`, if they are on and the account has someone to tell.
fn listened(state: &AccountState, limits: AlertRules) -> Option<AlertRules> {
    let listened =
        !state.admins.is_empty() || !state.hooks.endpoints.is_empty() || limits.global_webhooks;
    (limits.enabled && listened).then_some(limits)
}

/// [`evaluate`] with the account's thresholds, leaving in the state what it proved about
/// the next calls.
fn evaluate_all(
    state: &mut AccountState,
    rules: &Rules,
    limits: AlertRules,
    account: &str,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    let zone = state.timezone(rules);
    let (cycle_start, cycle_end, month) = cycle(state, zone, at);
    // Every call of an account with admins comes here, so nothing is allocated unless an
    // alert fires or a mark is new: the pools' names are sorted in a buffer on the stack
    // (an account has a few), their credits summed in place, and each check applied to
    // its mark as it is made, in the order pools then kinds.
    let mut inline = [""; INLINE_POOLS];
    let mut spilled = Vec::new();
    let names = state
        .lots
        .iter()
        .map(|lot| lot.pool.as_str())
        .chain(state.shortfall.keys().map(String::as_str));
    let count = state.lots.len() + state.shortfall.len();
    let pools: &mut [&str] = if count <= INLINE_POOLS {
        for (slot, name) in inline.iter_mut().zip(names) {
            *slot = name;
        }
        &mut inline[..count]
    } else {
        spilled.extend(names);
        &mut spilled
    };
    // Most accounts have one pool: then there is nothing to sort.
    let pools = match pools.split_first() {
        Some((first, rest)) if rest.iter().all(|pool| pool == first) => &mut pools[..1],
        _ => {
            pools.sort_unstable();
            pools
        }
    };
    let mut fired = Vec::new();
    let mut slack = Credits::from_milli(i64::MAX);
    let marks = &mut state.alert_marks;
    let context = Context {
        account,
        at,
        cycle_start,
        locale: state.locale.as_deref(),
        admins: &state.admins,
    };
    for (i, &pool) in pools.iter().enumerate() {
        if i > 0 && pools[i - 1] == pool {
            continue;
        }
        let available = crate::account::available(&state.lots, pool, at);
        let mut check = |kind, below, threshold, balance| {
            let crossing = Check {
                pool,
                kind,
                below,
                threshold,
                balance,
            };
            if let Some(alert) = crossing.apply(marks, &context) {
                fired.push(alert);
            }
        };
        if limits.low_balance.is_positive() {
            let below = available < limits.low_balance;
            if !below {
                slack = slack.min(available - limits.low_balance + Credits::from_milli(1));
            }
            check(AlertKind::LowBalance, below, limits.low_balance, available);
        }
        if limits.shortfall {
            let owed = state.shortfall.get(pool).copied().unwrap_or_default();
            if !owed.is_positive() && state.shortfall.contains_key(pool) {
                // Unpaid calls add to a pool's entry, made when the first goes unpaid (a
                // new entry changes their count): only an entry owing nothing can grow
                // unseen.
                slack = Credits::ZERO;
            }
            check(
                AlertKind::Shortfall,
                owed.is_positive(),
                Credits::ZERO,
                available,
            );
        }
        if limits.expiring_min.is_positive() {
            // Bought and free grants only: a cycle's allowance always ends with its cycle,
            // and the included-use alert covers it.
            let soon = at.checked_add_signed(EXPIRING_WITHIN).unwrap_or(at);
            let expiring: Credits = state
                .lots
                .iter()
                .filter(|lot| !lot.from_plan && lot.usable(pool, at))
                .filter(|lot| lot.expires_at.is_some_and(|end| end <= soon))
                .map(|lot| lot.free())
                .sum();
            if expiring > limits.expiring_min {
                slack = slack.min(expiring - limits.expiring_min);
            }
            check(
                AlertKind::Expiring,
                expiring > limits.expiring_min,
                limits.expiring_min,
                expiring,
            );
        }
        if limits.included_used_percent > 0 {
            // The allowance of the current cycle.
            let allowance = state.lots.iter().rev().find(|lot| {
                lot.from_plan
                    && lot.pool == *pool
                    && lot.effective_at >= cycle_start
                    && !lot.expired
                    && !lot.voided
            });
            if let Some(lot) = allowance {
                let used = lot.granted - lot.remaining;
                let share = i128::from(lot.granted.milli())
                    * i128::from(limits.included_used_percent.min(100))
                    / 100;
                let line = Credits::from_milli(i64::try_from(share).unwrap_or(i64::MAX));
                if used < line {
                    slack = slack.min(line - used);
                }
                check(AlertKind::IncludedUsed, used >= line, line, available);
            }
        }
    }
    let calm = Calm {
        limits,
        zone,
        from: at,
        until: quiet_until(state, at, cycle_end),
        lots: state.lots.len(),
        next_seq: state.next_seq,
        shortfall_pools: state.shortfall.len(),
        free: state.lots.iter().map(Lot::free).sum(),
        slack,
        month,
    };
    state.alert_quiet.set(calm);
    fired
}

/// The cycle `at` falls in: the plan's, or without one the calendar month, taken from the
/// last evaluation's when `at` falls in that (the zone's rules cost more than the rest of
/// an evaluation), with the month to remember.
fn cycle(
    state: &AccountState,
    zone: chrono_tz::Tz,
    at: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>, Option<Month>) {
    if let Some(s) = &state.subscription {
        return (s.cycle_start, s.cycle_end, None);
    }
    let month = match state.alert_quiet.month(zone, at) {
        Some(month) => month,
        None => plans::month(zone, at),
    };
    debug_assert_eq!(month.start, plans::month_start(zone, at));
    (month.start, month.end, Some(month))
}

/// The first instant after `at` at which time alone may move a check: a lot starting,
/// expiring or coming within [`EXPIRING_WITHIN`] of its expiry, or the next cycle (at
/// `next_cycle`). Only the expiring check looks at that last window, and it leaves out a
/// plan's allowance (which ends with its cycle), so an allowance's window is no such
/// instant: counting it made every account with a plan evaluate in full once more in
/// each cycle's last days.
fn quiet_until(
    state: &AccountState,
    at: DateTime<Utc>,
    next_cycle: DateTime<Utc>,
) -> DateTime<Utc> {
    let lot_times = state
        .lots
        .iter()
        .filter(|lot| !lot.voided && !lot.expired)
        .flat_map(|lot| {
            let nearing = lot
                .expires_at
                .filter(|_| !lot.from_plan)
                .and_then(|end| end.checked_sub_signed(EXPIRING_WITHIN));
            [Some(lot.effective_at), lot.expires_at, nearing]
        })
        .flatten();
    std::iter::once(next_cycle)
        .chain(lot_times)
        .filter(|&time| time > at)
        .min()
        .unwrap_or(at)
}

/// Pools whose names [`evaluate`] sorts on the stack; an account with more lots and
/// shortfall pools than this sorts them in a `Vec`.
const INLINE_POOLS: usize = 16;

/// What every alert of one evaluation shares.
struct Context<'a> {
    account: &'a str,
    at: DateTime<Utc>,
    cycle_start: DateTime<Utc>,
    locale: Option<&'a str>,
    admins: &'a [String],
}

/// One threshold of one pool as it stands now.
struct Check<'a> {
    pool: &'a str,
    kind: AlertKind,
    below: bool,
    threshold: Credits,
    balance: Credits,
}

impl Check<'_> {
    /// Moves the threshold's mark (key `POOL/KIND`) and returns the alert if it fires: on
    /// a downward crossing, once per cycle.
    fn apply(&self, marks: &mut Marks, context: &Context<'_>) -> Option<Alert> {
        // An account has a few marks: compared in place, they cost less than building a
        // key and searching the tree.
        let scanned = if marks.len() <= SCANNED_MARKS {
            marks
                .iter_mut()
                .find(|(key, _)| is_mark_key(key, self.pool, self.kind))
                .map(|(_, mark)| mark)
        } else {
            None
        };
        let mark = match scanned {
            Some(mark) => mark,
            None => self.mark(marks)?,
        };
        if !self.below {
            mark.tripped = false;
            return None;
        }
        if mark.tripped {
            return None;
        }
        mark.tripped = true;
        if mark.fired_in == Some(context.cycle_start) {
            return None;
        }
        mark.fired_in = Some(context.cycle_start);
        Some(Alert {
            id: format!(
                "{}/{}/{}/{}",
                context.account,
                self.pool,
                self.kind.as_str(),
                context.cycle_start.timestamp()
            ),
            account: context.account.to_string(),
            pool: self.pool.to_string(),
            kind: self.kind,
            threshold: self.threshold,
            balance: self.balance,
            time: context.at,
            cycle_start: context.cycle_start,
            locale: context.locale.unwrap_or("en").to_string(),
            recipients: context.admins.to_vec(),
        })
    }

    /// The threshold's mark, found by its key `POOL/KIND` built on the stack, or made.
    fn mark<'m>(&self, marks: &'m mut Marks) -> Option<&'m mut Mark> {
        let mut buffer = [0u8; 64];
        let owned;
        let key = match mark_key(&mut buffer, self.pool, self.kind) {
            Some(key) => key,
            None => {
                owned = format!("{}/{}", self.pool, self.kind.as_str());
                owned.as_str()
            }
        };
        if !marks.contains_key(key) {
            // A balance limit fires on a crossing: a pool that has never been above it (a
            // small pack of another pool, say) has nothing to cross yet.
            let mark = Mark {
                tripped: self.kind == AlertKind::LowBalance,
                fired_in: None,
            };
            marks.insert(key.to_string(), mark);
        }
        marks.get_mut(key)
    }
}

/// Marks an account may have for [`Check::apply`] to compare them in place.
const SCANNED_MARKS: usize = 8;

/// Whether `key` is `POOL/KIND`.
fn is_mark_key(key: &str, pool: &str, kind: AlertKind) -> bool {
    let kind = kind.as_str();
    key.len() == pool.len() + 1 + kind.len()
        && key.as_bytes()[pool.len()] == b'/'
        && key.starts_with(pool)
        && key.ends_with(kind)
}

/// `POOL/KIND` written into `buffer`, or `None` when it does not fit.
fn mark_key<'b>(buffer: &'b mut [u8; 64], pool: &str, kind: AlertKind) -> Option<&'b str> {
    let kind = kind.as_str();
    let len = pool.len() + 1 + kind.len();
    let key = buffer.get_mut(..len)?;
    key[..pool.len()].copy_from_slice(pool.as_bytes());
    key[pool.len()] = b'/';
    key[pool.len() + 1..].copy_from_slice(kind.as_bytes());
    std::str::from_utf8(key).ok()
}
