//! What a running `tally run` says about itself: the status it keeps up to date, which
//! `GET /status` serves and `tally status` prints, and the readiness `/readyz` derives from
//! it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The longest reason `/readyz` gives; the full error is in `/status` and the log.
const READY_REASON_MAX: usize = 200;

/// What the process is doing. On the wire it is `state` (`starting`, `running`, `paused`,
/// `stopping`) and, only when paused, `reason`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ProcessState {
    #[default]
    Starting,
    Running,
    /// Consumption waits because writes fail.
    Paused {
        /// The last write error.
        reason: String,
    },
    Stopping,
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessState::Starting => f.write_str("starting"),
            ProcessState::Running => f.write_str("running"),
            ProcessState::Paused { reason } => write!(f, "paused: {reason}"),
            ProcessState::Stopping => f.write_str("stopping"),
        }
    }
}

/// One process's view, refreshed by the run loop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessStatus {
    #[serde(flatten)]
    pub state: ProcessState,
    pub group: String,
    pub pid: u32,
    pub partitions: Vec<PartitionStatus>,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub flushes: u64,
    /// RFC 3339 time of the last checkpoint this process committed.
    pub last_checkpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub usage_applied: i64,
    pub commands_applied: i64,
    pub usage_received: i64,
    pub commands_received: i64,
    /// The end of each side as the last fetch response gave it; absent until one did.
    #[serde(default)]
    pub usage_end: Option<i64>,
    #[serde(default)]
    pub commands_end: Option<i64>,
    /// The side whose next event is held back (`usage` or `commands`), if any ...
    #[serde(default)]
    pub waiting: Option<String>,
    /// ... the side it waits for ...
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// ... and why: that side's end is unknown, it lags, or it idles at its end.
    #[serde(default)]
    pub wait_reason: Option<String>,
}

pub type Shared = Arc<Mutex<ProcessStatus>>;

/// Why the process is not ready, or `Ok` when it is: partitions assigned and the last
/// flush landed (a failing flush pauses consumption and says so in `state`).
pub fn readiness(status: &ProcessStatus) -> Result<(), String> {
    match &status.state {
        ProcessState::Running if status.partitions.is_empty() => {
            Err("no partitions assigned".into())
        }
        ProcessState::Running => Ok(()),
        ProcessState::Paused { reason } => {
            // The first line, cut at a character boundary: a probe wants a hint, not a
            // ClickHouse stack trace.
            let first = reason.lines().next().unwrap_or_default();
            let short: String = first.chars().take(READY_REASON_MAX).collect();
            Err(format!("paused: {short}"))
        }
        other => Err(other.to_string()),
    }
}

/// A status in `state` with `partitions` partitions, for the tests of what reads it.
#[cfg(test)]
pub(crate) fn status(state: ProcessState, partitions: usize) -> ProcessStatus {
    ProcessStatus {
        state,
        partitions: vec![PartitionStatus::default(); partitions],
        ..ProcessStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_running_with_partitions() {
        assert_eq!(readiness(&status(ProcessState::Running, 2)), Ok(()));
        assert_eq!(
            readiness(&status(ProcessState::Running, 0)),
            Err("no partitions assigned".into())
        );
        assert_eq!(
            readiness(&status(ProcessState::Starting, 0)),
            Err("starting".into())
        );
        assert_eq!(
            readiness(&status(ProcessState::Stopping, 2)),
            Err("stopping".into())
        );
        let reason = format!("ClickHouse: {}\nsecond line", "x".repeat(500));
        let paused = readiness(&status(ProcessState::Paused { reason }, 2)).unwrap_err();
        assert!(paused.starts_with("paused: ClickHouse: xxx"), "{paused}");
        assert_eq!(paused.chars().count(), "paused: ".len() + READY_REASON_MAX);
        assert!(!paused.contains("second line"));
    }

    #[test]
    fn the_state_is_named_on_the_wire_and_a_reason_only_when_paused() {
        let mut s = status(ProcessState::Running, 1);
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["state"], "running");
        assert!(json.get("reason").is_none(), "{json}");
        s.state = ProcessState::Paused {
            reason: "ClickHouse down".into(),
        };
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(
            (json["state"].as_str(), json["reason"].as_str()),
            (Some("paused"), Some("ClickHouse down"))
        );
        let back: ProcessStatus = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.state, s.state);
    }
}
