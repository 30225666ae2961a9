//! Checks and holds between `tally serve` and the owner of an account's partition: the
//! partition of an account (the producers' partitioner), the owner's decisions as they are
//! kept until their flush commits, and one typed answer per outcome, serialized by the
//! owner and passed through by `tally serve` unchanged. No HTTP here: the endpoints map
//! each [`AnswerKind`] and error to their status.

pub mod owner;

use serde::{Deserialize, Serialize};
use tally_core::holds::{Check, Hold};
use tally_core::{Answer, Credits};

use crate::partitioner::Partitioner;

/// The partition of `account` among `partitions` by the deployment's partitioner
/// (`kafka.partitioner`): every producer of tally (`tally send`, ingest, holds) keys by
/// account with it, and `tally run` applies an account's records only there.
pub fn partition_of(account: &str, partitions: i32, partitioner: Partitioner) -> i32 {
    partitioner.partition(account.as_bytes(), partitions)
}

/// `POST /v1/check` and the owner's `POST /internal/check`: a call about to be made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub account: String,
    pub feature: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub quantity: Option<Credits>,
}

/// How fresh a check is: what the owner had applied of the partition when it answered, and
/// what it knew was on the broker and not applied yet (absent until a fetch told it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Freshness {
    pub partition: i32,
    /// Next offsets to apply: every record before them counts in the answer.
    pub usage_applied: i64,
    pub commands_applied: i64,
    /// Records on the broker, as the last fetch response gave its end, not applied yet.
    pub usage_lag: Option<i64>,
    pub commands_lag: Option<i64>,
}

/// The answer to a check: the core's [`Check`] for the account, with its freshness.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResponse {
    pub account: String,
    #[serde(flatten)]
    pub check: Check,
    pub freshness: Freshness,
}

/// [`AnswerKind::Held`]: the hold as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct HoldResponse {
    pub account: String,
    pub repeated: bool,
    pub hold: Hold,
}

/// [`AnswerKind::Refused`]: nothing is reserved and a retry decides again.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedResponse {
    pub error: &'static str,
    pub account: String,
    pub hold: String,
    pub check: Check,
}

/// [`AnswerKind::Released`]: the hold after the release (`was_open` false: it had already been
/// settled, released or expired, and is shown as it is).
#[derive(Debug, Clone, Serialize)]
pub struct ReleasedResponse {
    pub account: String,
    pub was_open: bool,
    pub hold: Hold,
}

/// [`AnswerKind::Rejected`]: the owner rejected the command (a hold id reused with other terms,
/// a release of an unknown hold, a ttl out of range, an unknown feature...), with the
/// core's reason.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedResponse {
    pub error: String,
    pub code: &'static str,
}

/// Which answer a decision is, each with its own body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Granted, or the same hold again (`repeated`): [`HoldResponse`].
    Held,
    /// Refused for want of credits: [`RefusedResponse`].
    Refused,
    /// A release, of an open hold or one already closed: [`ReleasedResponse`].
    Released,
    /// The command was rejected: [`RejectedResponse`].
    Rejected,
}

/// What the owner decided for one `credit.hold` or `credit.release` record, kept until the
/// flush that contains it has committed, then answered.
#[derive(Debug, Clone)]
pub enum Decided {
    Answer {
        account: String,
        answer: Box<Answer>,
    },
    Rejected {
        code: &'static str,
        reason: String,
    },
}

impl Decided {
    /// Which answer it is, and the JSON body of the public answer.
    pub fn render(&self) -> (AnswerKind, Vec<u8>) {
        let (kind, body) = match self {
            Decided::Answer { account, answer } => match answer.as_ref() {
                Answer::Held { hold, repeated } => (
                    AnswerKind::Held,
                    serde_json::to_vec(&HoldResponse {
                        account: account.clone(),
                        repeated: *repeated,
                        hold: hold.clone(),
                    }),
                ),
                Answer::Refused { hold, check } => (
                    AnswerKind::Refused,
                    serde_json::to_vec(&RefusedResponse {
                        error: "insufficient credits: nothing was reserved",
                        account: account.clone(),
                        hold: hold.clone(),
                        check: check.clone(),
                    }),
                ),
                Answer::Released { hold, was_open } => (
                    AnswerKind::Released,
                    serde_json::to_vec(&ReleasedResponse {
                        account: account.clone(),
                        was_open: *was_open,
                        hold: hold.clone(),
                    }),
                ),
            },
            Decided::Rejected { code, reason } => (
                AnswerKind::Rejected,
                serde_json::to_vec(&RejectedResponse {
                    error: reason.clone(),
                    code,
                }),
            ),
        };
        // These types always serialize; an empty body would still carry the kind.
        (kind, body.unwrap_or_default())
    }
}

/// The claim row's `state`: where the partition's owner answers checks and holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// `host:port` of the owner's status endpoint; empty when it serves none.
    #[serde(default)]
    pub advertise: String,
    #[serde(default)]
    pub pid: u32,
}
