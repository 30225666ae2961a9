//! Holds: credits reserved before a call (`credit.hold`), settled by the call's usage event
//! (`data.hold`), released by `credit.release` or by the partition clock at their expiry;
//! and the check, a pure answer to "may this call go ahead, and what would it cost".
//!
//! A hold moves no money: its credits stay in their lots, marked `held`, where no other
//! call or hold can take them. Only the settling call debits, so the ledger keeps one row
//! per call whatever happened to its hold.

use chrono::{DateTime, TimeDelta, Utc};

use crate::account::{blank_entry, AccountState};
use crate::credits::Credits;
use crate::event::{Event, HoldRef, HoldRequest, Rejection, Release};
use crate::ledger::{EntryType, LedgerEntry};
pub use crate::ledger::{HoldUse, SettleOutcome};
use crate::lots::{self, LotKind, Payment};
use crate::names::Name;
use crate::rules::{Rules, MAX_GRANT};

pub use crate::hold_state::{
    Answer, Check, Hold, HoldStatus, Holds, FLEX_RESERVATION, MAX_HOLD_TTL_SECS,
};

impl AccountState {
    fn open_holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds
            .values()
            .filter(|hold| hold.status == HoldStatus::Open)
    }

    /// Flex reserved by open holds. Each reservation was at most the room left, so the sum
    /// never exceeds a flex threshold (at most `MAX_GRANT`): plain sums cannot overflow.
    pub fn flex_held(&self) -> Credits {
        self.open_holds()
            .flat_map(|hold| &hold.reserved)
            .filter(|p| p.kind == LotKind::Flex)
            .map(|p| p.credits)
            .sum()
    }

    /// Credits of `pool` reserved by open holds, flex reservations included.
    pub fn held(&self, pool: &str) -> Credits {
        self.open_holds()
            .filter(|hold| hold.pool == pool)
            .flat_map(|hold| &hold.reserved)
            .map(|p| p.credits)
            .sum()
    }

    /// Flex a call or a hold at `at` may still use: the threshold less what this period
    /// used and what open holds reserved.
    pub fn flex_room(&self, rules: &Rules, at: DateTime<Utc>) -> Credits {
        if !self.flex_enabled(rules) {
            return Credits::ZERO;
        }
        let flex = self.flex(rules, at);
        (flex.threshold - flex.used - self.flex_held()).max(Credits::ZERO)
    }

    /// The check: whether a call of `feature` at `at` could be held now, its cost and
    /// pool, what is available and what is held. Pure: the shell answers it from the
    /// partition owner's state without writing anything. Rejected as a usage event would
    /// be (unknown feature or variant, negative quantity, a cost beyond any grant).
    pub fn check(
        &self,
        rules: &Rules,
        feature: &str,
        variant: Option<&str>,
        quantity: Credits,
        at: DateTime<Utc>,
    ) -> Result<Check, Rejection> {
        if quantity.is_negative() {
            return Err(Rejection::NegativeQuantity(quantity));
        }
        let price = rules.matrix.price(feature, variant, quantity, at)?;
        if price.credits > MAX_GRANT {
            return Err(too_costly(price.credits));
        }
        Ok(self.check_price(rules, price.pool, price.credits, at))
    }

    fn check_price(&self, rules: &Rules, pool: &str, cost: Credits, at: DateTime<Utc>) -> Check {
        // Lots of a pool never sum past what a grant checked, so these sums are exact.
        let free: Credits = self
            .lots
            .iter()
            .filter(|lot| lot.usable(pool, at))
            .map(|lot| lot.free())
            .sum();
        let flex = self.flex_room(rules, at);
        let available = free + flex;
        Check {
            allowed: cost <= available,
            cost,
            pool: pool.to_string(),
            available,
            flex,
            held: self.held(pool),
            as_of: at,
        }
    }

    /// `credit.hold`: reserves the call's cost from the lots in debit order, then from the
    /// flex room, or refuses when they cannot cover it all (a hold never runs into
    /// shortfall). The same id again answers the hold as it stands.
    pub(crate) fn hold(
        &mut self,
        rules: &Rules,
        event: &Event,
        request: &HoldRequest,
        arrival: DateTime<Utc>,
    ) -> Result<Answer, Rejection> {
        if request.ttl == 0 || request.ttl > MAX_HOLD_TTL_SECS {
            return Err(Rejection::Command(format!(
                "ttl must be between 1 and {MAX_HOLD_TTL_SECS} seconds, got {}",
                request.ttl
            )));
        }
        let id = request.hold.clone().unwrap_or_else(|| event.id.clone());
        if let Some(existing) = self.holds.get(&id) {
            // Idempotent on the id, but only for the same request: a different call under
            // a reused id would otherwise silently get the first call's hold.
            if !existing.same_terms(request) {
                return Err(Rejection::Command(format!(
                    "hold `{id}` already exists with other terms (feature, variant, quantity \
                     or ttl); use a new id"
                )));
            }
            return Ok(Answer::Held {
                hold: existing.clone(),
                repeated: true,
            });
        }
        let open = self.open_holds().count();
        if open >= rules.max_open_holds {
            return Err(Rejection::Command(format!(
                "the account has {open} open holds, the most allowed; settle or release one first"
            )));
        }
        let price = rules.matrix.price(
            &request.feature,
            request.variant.as_deref(),
            request.quantity,
            event.time,
        )?;
        if price.credits > MAX_GRANT {
            return Err(too_costly(price.credits));
        }
        let Some(expires_at) =
            arrival.checked_add_signed(TimeDelta::seconds(i64::from(request.ttl)))
        else {
            return Err(Rejection::Command(format!(
                "ttl {} is out of range",
                request.ttl
            )));
        };
        let check = self.check_price(rules, price.pool, price.credits, event.time);
        if !check.allowed {
            return Ok(Answer::Refused { hold: id, check });
        }
        let policy = self.policy(rules);
        let from_lots = lots::reserve(
            &mut self.lots,
            price.pool,
            price.credits,
            event.time,
            policy,
        );
        let mut reserved = from_lots.paid;
        // The check counted the flex room in, so what the lots left fits in it.
        if from_lots.shortfall.is_positive() {
            reserved.push(Payment {
                lot: Name::from(FLEX_RESERVATION),
                kind: LotKind::Flex,
                credits: from_lots.shortfall,
            });
        }
        let hold = Hold {
            id: id.clone(),
            source: event.source.clone(),
            event_id: event.id.clone(),
            feature: request.feature.clone(),
            variant: request.variant.clone(),
            quantity: request.quantity,
            ttl: request.ttl,
            pool: price.pool.to_string(),
            credits: price.credits,
            reserved: reserved.into_vec(),
            placed_at: event.time,
            expires_at,
            status: HoldStatus::Open,
            closed_at: None,
        };
        self.holds.insert(id, hold.clone());
        Ok(Answer::Held {
            hold,
            repeated: false,
        })
    }

    /// `credit.release`: gives an open hold's credits back. Releasing a closed hold
    /// changes nothing and answers it as it stands, so a retried release is harmless.
    pub(crate) fn release(
        &mut self,
        release: &Release,
        arrival: DateTime<Utc>,
    ) -> Result<Answer, Rejection> {
        let Some(hold) = self.holds.get(&release.hold) else {
            return Err(Rejection::Command(format!("no hold `{}`", release.hold)));
        };
        if hold.status != HoldStatus::Open {
            return Ok(Answer::Released {
                hold: hold.clone(),
                was_open: false,
            });
        }
        self.close_hold(&release.hold, HoldStatus::Released, arrival);
        let hold = self.holds[&release.hold].clone();
        Ok(Answer::Released {
            hold,
            was_open: true,
        })
    }

    /// Closes an open hold: its lots' `held` go down by its reservations. Returns those
    /// reservations (flex included).
    fn close_hold(&mut self, id: &str, status: HoldStatus, at: DateTime<Utc>) -> Vec<Payment> {
        let AccountState { holds, lots, .. } = self;
        let Some(hold) = holds.get_mut(id) else {
            return Vec::new();
        };
        hold.status = status;
        hold.closed_at = Some(at);
        for p in hold.reserved.iter().filter(|p| p.kind != LotKind::Flex) {
            if let Some(lot) = lots.iter_mut().find(|lot| lot.id == p.lot) {
                lot.held -= p.credits;
            }
        }
        hold.reserved.clone()
    }

    /// The hold a call names, closed because the call happened: returns the reservations
    /// that pay first (empty unless it was open) and the note for the call's entry.
    pub(crate) fn settle_hold(
        &mut self,
        reference: &HoldRef,
        arrival: DateTime<Utc>,
    ) -> (Vec<Payment>, HoldUse) {
        let id = reference.id();
        let outcome = match self.holds.get(id).map(|hold| hold.status) {
            None => SettleOutcome::Unknown,
            Some(HoldStatus::Open) => SettleOutcome::Settled,
            Some(HoldStatus::Settled) => SettleOutcome::AlreadySettled,
            Some(HoldStatus::Released) => SettleOutcome::Released,
            Some(HoldStatus::Expired) => SettleOutcome::Expired,
        };
        let reserved = if outcome == SettleOutcome::Settled {
            self.close_hold(id, HoldStatus::Settled, arrival)
        } else {
            Vec::new()
        };
        let note = HoldUse {
            id: id.to_string(),
            outcome,
            held: reserved.iter().map(|p| p.credits).sum(),
        };
        (reserved, note)
    }

    /// A lot that expires or is voided takes its reserved credits with it: open holds
    /// lose their reservation on it, and a call settling them pays that part elsewhere.
    pub(crate) fn drop_reservations(&mut self, lot_id: &str) {
        for hold in self.holds.values_mut() {
            if hold.status == HoldStatus::Open {
                hold.reserved
                    .retain(|p| p.kind == LotKind::Flex || p.lot != lot_id);
            }
        }
    }

    /// When the next hold falls due: an open hold's expiry, or the end of a closed hold's
    /// memory (the dedup window after it closed).
    pub(crate) fn next_hold_deadline(&self, rules: &Rules) -> Option<DateTime<Utc>> {
        self.holds
            .values()
            .filter_map(|hold| match hold.status {
                HoldStatus::Open => Some(hold.expires_at),
                _ => hold.closed_at?.checked_add_signed(rules.dedup_window),
            })
            .min()
    }

    /// Releases the open holds whose expiry `clock` reached, oldest first, with a
    /// `hold_expired` entry each, and forgets closed holds whose dedup window ended.
    pub(crate) fn advance_holds(
        &mut self,
        rules: &Rules,
        account: &str,
        clock: DateTime<Utc>,
    ) -> Vec<LedgerEntry> {
        let mut due: Vec<(DateTime<Utc>, String)> = self
            .open_holds()
            .filter(|hold| hold.expires_at <= clock)
            .map(|hold| (hold.expires_at, hold.id.clone()))
            .collect();
        due.sort();
        let tz = self.timezone(rules);
        let mut entries = Vec::with_capacity(due.len());
        for (at, id) in due {
            let released = self.close_hold(&id, HoldStatus::Expired, at);
            let hold = &self.holds[&id];
            let mut entry = blank_entry(account, at, tz, &hold.source, &hold.event_id);
            // Hold ids may be reused once forgotten; the expiry time tells two apart.
            entry.id = Some(format!("hold-expiry/{id}/{}", at.timestamp_millis()));
            entry.entry_type = EntryType::HoldExpired;
            entry.pool = crate::names::Name::from(hold.pool.as_str());
            entry.feature = crate::names::Name::from(hold.feature.as_str());
            entry.variant = hold
                .variant
                .as_deref()
                .map(crate::names::Name::from)
                .unwrap_or_default();
            entry.quantity = hold.quantity;
            // The row says which hold and what it had reserved, as a usage row that
            // settles one does, so readers find both outcomes in the same columns.
            entry.hold = Some(HoldUse {
                id: id.clone(),
                outcome: SettleOutcome::Expired,
                held: released.iter().map(|p| p.credits).sum(),
            });
            entry.paid = released.into();
            entry.comment = format!("hold {id} expired unsettled; its credits are free again");
            entries.push(entry);
        }
        self.holds.retain(|_, hold| {
            hold.status == HoldStatus::Open
                || hold
                    .closed_at
                    .and_then(|at| at.checked_add_signed(rules.dedup_window))
                    .is_none_or(|end| end > clock)
        });
        entries
    }
}

fn too_costly(cost: Credits) -> Rejection {
    Rejection::OutOfRange(format!(
        "the call costs {cost}, more than the most a call may cost ({MAX_GRANT})"
    ))
}
