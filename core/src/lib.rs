//! tally's pure core: pricing, lots, debits and decisions as functions of state and input,
//! with no I/O and no clock, so they can be tested, property-tested and replayed.

pub mod account;
pub mod advice;
pub mod alerting;
pub mod alerts;
pub mod book;
pub mod credits;
pub mod day_cache;
pub mod dedup;
pub mod event;
pub mod hints;
pub mod hold_state;
pub mod holds;
pub mod hook_state;
pub mod hooks;
pub mod key_table;
pub mod ledger;
pub mod lots;
pub mod names;
pub mod plans;
pub mod prefetch;
pub mod pricing;
pub mod rules;
pub mod runway;
pub mod short_text;

pub use account::{AccountState, Applied, PoolBalance, Rules};
pub use book::{Ahead, Book, Entries, Outcome, Step};
pub use credits::Credits;
pub use event::Rejection;
pub use holds::{Answer, Check, Hold, HoldStatus};
pub use ledger::{EntryType, LedgerEntry};
pub use lots::{Lot, LotKind, Policy};
pub use names::{Name, Names};
pub use pricing::CostMatrix;
