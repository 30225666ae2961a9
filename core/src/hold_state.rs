//! What a hold is, as an account's state keeps it, and what the core answers about one:
//! the types that the account state and the hold decisions (`holds`) share.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::event::HoldRequest;
use crate::lots::Payment;
use crate::rules::FLEX_LOT;

/// The longest a hold may last. A hold guards one call about to be made: a day is far
/// more than any call takes, and bounding it keeps forgotten holds from locking credits
/// for long.
pub const MAX_HOLD_TTL_SECS: u32 = 86_400;

/// The name flex reservations carry in place of a lot id (with kind `flex`).
pub const FLEX_RESERVATION: &str = FLEX_LOT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Its credits are reserved.
    Open,
    /// A usage event naming it closed it (and paid, unless the call failed).
    Settled,
    /// `credit.release` gave its credits back.
    Released,
    /// The clock gave its credits back at `expires_at`.
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Open => "open",
            HoldStatus::Settled => "settled",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

/// One hold, open or closed. Closed holds are kept for the dedup window after they
/// close, so a retry of the same hold id gets the same answer, then forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    /// The service that placed it and the command's event id, named on its expiry entry.
    pub source: String,
    pub event_id: String,
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub quantity: Credits,
    /// Seconds, as requested: part of the terms a retry must repeat.
    pub ttl: u32,
    pub pool: String,
    /// What the call costs, priced at the hold's time: the credits reserved.
    pub credits: Credits,
    /// Which lots (and flex, as `flex` of kind flex) hold how much, in the order they
    /// would pay. While the hold is open the lots' `held` add up to these; a lot that
    /// expires or is voided takes its reservation with it.
    pub reserved: Vec<Payment>,
    /// The command's event time: lots and price are chosen by it, as for a call.
    pub placed_at: DateTime<Utc>,
    /// The command's arrival plus the ttl: the caller's wait starts when the log has it.
    pub expires_at: DateTime<Utc>,
    pub status: HoldStatus,
    /// When it stopped being open: the arrival of the closing event, or `expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
}

impl Hold {
    pub(crate) fn same_terms(&self, request: &HoldRequest) -> bool {
        self.feature == request.feature
            && self.variant == request.variant
            && self.quantity == request.quantity
            && self.ttl == request.ttl
    }
}

/// Whether a call could be held now, and from what. No I/O, no change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `cost <= available`: a hold for it would be granted.
    pub allowed: bool,
    pub cost: Credits,
    pub pool: String,
    /// What a hold could reserve: the pool's free lot credits plus the flex room.
    pub available: Credits,
    /// Of `available`, the flex room (postpaid overage still allowed this cycle).
    pub flex: Credits,
    /// Credits of this pool reserved by open holds, flex reservations included.
    pub held: Credits,
    /// The time the answer is for (lots in force, flex period).
    pub as_of: DateTime<Utc>,
}

/// The core's answer to a hold or release command, for the shell to send back to the
/// caller once the event is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Granted now, or (`repeated`) the hold already placed under this id, as it stands.
    Held { hold: Hold, repeated: bool },
    /// Not granted: nothing was reserved, and a retry decides again.
    Refused { hold: String, check: Check },
    /// The hold after `credit.release`: released now, or (`was_open` false) already closed.
    Released { hold: Hold, was_open: bool },
}

/// Holds of one account by id.
pub type Holds = BTreeMap<String, Hold>;
