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
        probable: &'a [Probable],
    ) -> BoxFuture<'a, Result<Answers, StoreError>> {
        Box::pin(checkpoint::confirm(
            &self.client,
            &self.stream,
            partition,
            probable,
        ))
    }
}
