//! Ledger entries: what the core decided, one row per call, grant or void, and one per
//! expiry, settlement or hold the clock released.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::credits::Credits;
use crate::event::Status;
use crate::lots::{LotKind, PaymentMethod, Payments};
use crate::names::Name;
use crate::short_text::ShortText;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    Usage,
    Grant,
    Void,
    /// What was left of a lot when it expired, as a negative amount.
    Expiry,
    /// Outstanding shortfall paid by a new grant.
    Settlement,
    /// A hold the clock released at its expiry, unsettled. It moves no credits (they never
    /// left their lots): `credits` is 0 and `paid` lists the reservations given back.
    HoldExpired,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Usage => "usage",
            EntryType::Grant => "grant",
            EntryType::Void => "void",
            EntryType::Expiry => "expiry",
            EntryType::Settlement => "settlement",
            EntryType::HoldExpired => "hold_expired",
        }
    }
}

/// One ledger row. Usage rows carry `credits` = the call's price, `paid` = which lots
/// paid how much, `shortfall` = what no lot could pay. Grants carry the granted credits and
/// voids the removed credits as a negative amount. Its names are interned ([`Name`]): a
/// usage entry copies no string of its event but the event id (and a comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// Set on entries that no single event caused (expiries, cycle allowances): a stable
    /// id, so writing one twice replaces it. Otherwise the shell names the entry after the
    /// event's position.
    pub id: Option<String>,
    pub entry_type: EntryType,
    pub account: Name,
    pub time: DateTime<Utc>,
    /// The calendar day of `time` in the account's time zone.
    pub day: NaiveDate,
    pub service: Name,
    pub user: Name,
    pub feature: Name,
    pub variant: Name,
    pub quantity: Credits,
    pub status: Status,
    pub pool: Name,
    pub credits: Credits,
    pub paid: Payments,
    pub shortfall: Credits,
    pub matrix_version: Name,
    /// Inline for ids of up to 38 bytes: copied from every call without an allocation.
    pub event_id: ShortText,
    pub lot: String,
    pub lot_kind: Option<LotKind>,
    pub payment_method: Option<PaymentMethod>,
    pub payment_reference: String,
    pub comment: String,
    /// On usage rows of calls that named a hold (`data.hold`): which, and what became of
    /// it. A call naming a hold that is not open is billed as any call, and this says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldUse>,
}

/// The entries of one payload: most make one, kept inline.
pub type Entries = smallvec::SmallVec<[LedgerEntry; 1]>;

/// What became of the hold a call named, noted on the call's ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleOutcome {
    /// The call settled it: its lots paid first, the rest was released.
    Settled,
    /// No such hold on this account (never placed, or forgotten after the dedup window).
    Unknown,
    /// Another call settled it before: this one is billed as any call.
    AlreadySettled,
    /// Released by `credit.release` before the call: billed as any call.
    Released,
    /// Expired before the call: billed as any call.
    Expired,
}

impl SettleOutcome {
    pub const ALL: [SettleOutcome; 5] = [
        SettleOutcome::Settled,
        SettleOutcome::Unknown,
        SettleOutcome::AlreadySettled,
        SettleOutcome::Released,
        SettleOutcome::Expired,
    ];

    /// The stored and serialized name, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SettleOutcome::Settled => "settled",
            SettleOutcome::Unknown => "unknown",
            SettleOutcome::AlreadySettled => "already_settled",
            SettleOutcome::Released => "released",
            SettleOutcome::Expired => "expired",
        }
    }
}

/// The `hold` note of a usage entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldUse {
    pub id: String,
    pub outcome: SettleOutcome,
    /// What the hold had reserved when the call came (0 unless `Settled`).
    pub held: Credits,
}
