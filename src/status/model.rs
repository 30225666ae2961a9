//! What a running `tally run` says about itself: the status it keeps up to date, which
//! `GET /status` serves and `tally status` prints, and the readiness `/readyz` derives from
//! it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The longest reason `/readyz` gives; the full error is in `/status` and the log.
const READY_REASON_MAX: usize = 200;

/// One process's view, refreshed by the run loop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// `starting`, `running`, `paused` or `stopping`.
    pub state: String,
    /// Why it is paused: the last write error.
    pub reason: Option<String>,
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
    match status.state.as_str() {
        "running" if status.partitions.is_empty() => Err("no partitions assigned".into()),
        "running" => Ok(()),
        "paused" => {
            let reason = status.reason.as_deref().unwrap_or("writes failing");
            // The first line, cut at a character boundary: a probe wants a hint, not a
            // ClickHouse stack trace.
            let first = reason.lines().next().unwrap_or_default();
            let short: String = first.chars().take(READY_REASON_MAX).collect();
            Err(format!("paused: {short}"))
        }
        "" => Err("starting".into()),
        other => Err(other.to_string()),
    }
}

/// A status in `state` with `partitions` partitions, for the tests of what reads it.
#[cfg(test)]
pub(crate) fn status(state: &str, partitions: usize, reason: Option<&str>) -> ProcessStatus {
    ProcessStatus {
        state: state.into(),
        reason: reason.map(str::to_string),
        partitions: vec![PartitionStatus::default(); partitions],
        ..ProcessStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_running_with_partitions() {
        assert_eq!(readiness(&status("running", 2, None)), Ok(()));
        assert_eq!(
            readiness(&status("running", 0, None)),
            Err("no partitions assigned".into())
        );
        assert_eq!(
            readiness(&status("starting", 0, None)),
            Err("starting".into())
        );
        assert_eq!(
            readiness(&status("stopping", 2, None)),
            Err("stopping".into())
        );
        let long = format!("ClickHouse: {}\nsecond line", "x".repeat(500));
        let paused = readiness(&status("paused", 2, Some(&long))).unwrap_err();
        assert!(paused.starts_with("paused: ClickHouse: xxx"), "{paused}");
        assert_eq!(paused.chars().count(), "paused: ".len() + READY_REASON_MAX);
        assert!(!paused.contains("second line"));
    }
}
