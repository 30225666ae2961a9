//! The run's [`Store`] on ClickHouse: each method is the store module's function for the
//! stream, on the partition's server (or shard of the cluster).

use clickhouse::Client;

use super::alerting;
use super::edges::{Answers, BoxFuture, Claim, Store};
use crate::store::checkpoint::{self, Probable, Restored};
use crate::store::cluster::Target;
use crate::store::webhooks::WebhookRow;
use crate::store::writes::{self, Batch};
use crate::store::StoreError;

pub struct ClickHouseStore {
    /// Alerts, webhooks and confirmations go here.
    pub client: Client,
    /// Where each partition's rows and checkpoint go: `client`'s server, or the
    /// partition's shard of the cluster.
    pub target: Target,
    pub stream: String,
}

impl Store for ClickHouseStore {
    fn claim_and_load<'a>(
        &'a self,
        partition: u32,
        attempt: u32,
        claim: &'a Claim<'a>,
    ) -> BoxFuture<'a, Result<Restored, StoreError>> {
        Box::pin(checkpoint::claim_and_load(
            self.target.for_partition(partition, attempt as usize),
            &self.stream,
            partition,
            claim.now_micros,
            claim.dedup_window_millis,
            claim.claim_info,
            claim.segment_records,
        ))
    }

    fn write_outputs<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(writes::write_outputs(&self.target, batch))
    }

    fn record_alerts<'a>(
        &'a self,
        context: &'a alerting::Context,
        decisions: &'a [tally_core::alerts::Alert],
    ) -> BoxFuture<'a, Result<Vec<crate::notify::Alert>, StoreError>> {
        Box::pin(alerting::record(&self.client, context, decisions))
    }

    fn record_webhooks<'a>(
        &'a self,
        rows: &'a [WebhookRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(crate::store::webhooks::write(&self.client, rows))
    }

    fn commit<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), StoreError>> {
        #[cfg(debug_assertions)]
        freeze::before_commit();
        Box::pin(writes::commit(&self.target, batch))
    }

    fn delete_before(
        &self,
        partition: u32,
        version: u64,
        claim: u64,
        horizon_millis: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(checkpoint::delete_before(
            self.target.for_partition(partition, 0),
            (&self.stream, partition),
            version,
            claim,
            horizon_millis,
        ))
    }

    fn confirm<'a>(
        &'a self,
        partition: u32,
        claim: u64,
        probable: &'a [Probable],
    ) -> BoxFuture<'a, Result<Answers, StoreError>> {
        Box::pin(checkpoint::confirm(
            &self.client,
            (&self.stream, partition),
            claim,
            probable,
        ))
    }
}

/// A test's hook (debug builds only): `DEBUG_TALLY_FREEZE_AT_COMMIT=n` stops the process
/// (SIGSTOP to itself) just before its n-th checkpoint INSERT, so a real-stack test can
/// make a zombie owner at a point it decides (tests/zombie.rs): frozen with its flush built
/// and not committed, resumed with SIGCONT after the group moved on.
#[cfg(debug_assertions)]
mod freeze {
    use std::sync::atomic::{AtomicU64, Ordering};

    static COMMITS: AtomicU64 = AtomicU64::new(0);

    pub fn before_commit() {
        let Some(at) = std::env::var("DEBUG_TALLY_FREEZE_AT_COMMIT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 != at {
            return;
        }
        tracing::warn!(
            commit = at,
            "frozen before this checkpoint INSERT (test hook)"
        );
        // A SIGSTOP sent to the process (`kill`) wakes one thread of it to begin the
        // group stop, not necessarily this one: under load this thread ran on into its
        // INSERT before the stop reached it. Raised on this thread, the signal is taken
        // before `raise` returns, so nothing below runs until SIGCONT.
        // SAFETY: `raise` has no memory-safety preconditions; SIGSTOP cannot be caught,
        // so no handler runs on this thread.
        let stopped = unsafe { libc::raise(libc::SIGSTOP) };
        if stopped != 0 {
            tracing::error!(
                error = %std::io::Error::last_os_error(),
                "the freeze hook cannot stop this process"
            );
        }
    }
}
