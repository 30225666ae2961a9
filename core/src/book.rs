//! The state of one partition: its accounts and dedup window, and the decision for one
//! Kafka payload (applied, duplicate or rejected).

use chrono::{DateTime, Utc};

use crate::account::{AccountState, Rules};
use crate::dedup::{self, Seen};
use crate::event::{self, Event, Rejection};
use crate::ledger::LedgerEntry;

/// What became of one payload.
#[derive(Debug)]
pub enum Outcome {
    /// Applied to `account`, producing these entries (none for settings).
    Applied {
        account: String,
        entries: Vec<LedgerEntry>,
    },
    /// Already applied within the dedup window; nothing changes.
    Duplicate { account: String },
    /// Goes to the dead-letter topic with this reason.
    Rejected(Rejection),
}

/// Accounts of one partition, owned by exactly one writer.
#[derive(Debug, Default)]
pub struct Book {
    pub accounts: rustc_hash::FxHashMap<String, AccountState>,
    pub seen: Seen,
}

impl Book {
    /// Parses and applies one payload that arrived at `arrival` (the broker's timestamp,
    /// so a replay decides the same way).
    pub fn process(&mut self, rules: &Rules, payload: &[u8], arrival: DateTime<Utc>) -> Outcome {
        self.apply(rules, event::parse(payload, arrival), arrival)
    }

    /// Applies an event parsed earlier (the shell parses first to order events by time).
    pub fn apply(
        &mut self,
        rules: &Rules,
        parsed: Result<Event, Rejection>,
        arrival: DateTime<Utc>,
    ) -> Outcome {
        let event = match parsed {
            Ok(event) => event,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        let key = dedup::key(&event.account, &event.source, &event.id);
        if self.seen.is_duplicate(key, arrival, rules.dedup_window) {
            return Outcome::Duplicate {
                account: event.account,
            };
        }
        // Apply to a scratch copy only when the account is new, so a rejected first event
        // leaves no empty account behind.
        let result = match self.accounts.get_mut(&event.account) {
            Some(state) => state.apply(rules, &event, arrival),
            None => {
                let mut state = AccountState::default();
                let result = state.apply(rules, &event, arrival);
                if result.is_ok() {
                    self.accounts.insert(event.account.clone(), state);
                }
                result
            }
        };
        match result {
            Ok(entries) => {
                self.seen.record(key, arrival);
                Outcome::Applied {
                    account: event.account,
                    entries,
                }
            }
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }
}
