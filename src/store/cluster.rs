//! Where a partition's rows go: the one server, or its shard of a ClickHouse cluster, and
//! the clients that write to a shard's replicas (docs/cluster.md).
//!
//! On a cluster every table is a Replicated table in the database `<database>_local` on
//! each shard, with a Distributed table of the same name over them in `<database>`. tally
//! writes a partition's rows straight into its shard's Replicated tables (one INSERT per
//! table per shard, so a block stays atomic as on one server) and reads through the
//! Distributed tables, which route by the same function of the partition.

use std::sync::Arc;

use clickhouse::Client;

use crate::config::{ClickHouseConfig, ClusterConfig};

/// The database that holds a cluster's Replicated tables, beside `database` (which holds
/// the Distributed tables over them).
pub fn local_database(database: &str) -> String {
    format!("{database}_local")
}

/// The shard (0-based, in `clickhouse.cluster.shards` order) that holds `partition`'s rows:
/// the Distributed tables' sharding key `partition` modulo the number of shards, each of
/// weight 1, which is how ClickHouse picks the shard of a Distributed INSERT.
pub fn shard_of(partition: u32, shards: usize) -> usize {
    partition as usize % shards.max(1)
}

/// Where one process writes: the one server, or the shards of a cluster.
#[derive(Clone)]
pub enum Target {
    Single(Box<Client>),
    Cluster(Arc<Shards>),
}

impl Target {
    /// The target `config` names, with a client for every replica of a cluster.
    pub fn new(config: &ClickHouseConfig) -> Target {
        match &config.cluster {
            None => Target::Single(Box::new(super::client(config))),
            Some(cluster) => Target::Cluster(Arc::new(Shards::new(config, cluster))),
        }
    }

    /// The client for `partition`'s checkpoint and rows: the server, or a replica of its
    /// shard, the `attempt`th in turn, so retries after a failure try the others.
    pub fn for_partition(&self, partition: u32, attempt: usize) -> &Client {
        match self {
            Target::Single(client) => client,
            Target::Cluster(shards) => shards.replica(shard_of(partition, shards.len()), attempt),
        }
    }
}

/// The replicas of every shard, each as a client of its `<database>_local`.
pub struct Shards {
    shards: Vec<Vec<Client>>,
}

impl Shards {
    /// Clients for every replica. On a shard of several replicas each INSERT waits until
    /// all of them have its part (`insert_quorum`), and each read sees every part so
    /// acknowledged (`select_sequential_consistency`): an acknowledged checkpoint, and the
    /// outputs written before it, survive the loss of any replica but the last, and a new
    /// owner reading on any replica starts from the latest checkpoint.
    pub fn new(config: &ClickHouseConfig, cluster: &ClusterConfig) -> Shards {
        let database = local_database(&config.database);
        // Below the client's own timeout, so a quorum that cannot be reached comes back as
        // the server's error (and the INSERT is retried) rather than as a cut connection.
        let quorum_timeout = (config.timeout.as_millis() / 2).max(1).to_string();
        let shards = cluster
            .shards
            .iter()
            .map(|urls| {
                urls.iter()
                    .map(|url| {
                        let mut replica = config.clone();
                        replica.url = url.clone();
                        let client = super::server_client(&replica).with_database(&database);
                        if urls.len() < 2 {
                            return client;
                        }
                        client
                            .with_setting("insert_quorum", urls.len().to_string())
                            .with_setting("insert_quorum_timeout", quorum_timeout.clone())
                            .with_setting("select_sequential_consistency", "1")
                    })
                    .collect()
            })
            .collect();
        Shards { shards }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The `attempt`th replica of `shard`, in turn.
    pub fn replica(&self, shard: usize, attempt: usize) -> &Client {
        let replicas = &self.shards[shard % self.shards.len()];
        &replicas[attempt % replicas.len()]
    }

    /// How many replicas `shard` has.
    pub fn replicas(&self, shard: usize) -> usize {
        self.shards[shard % self.shards.len()].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_go_round_the_shards_in_order() {
        let shards: Vec<usize> = (0..6).map(|p| shard_of(p, 2)).collect();
        assert_eq!(shards, [0, 1, 0, 1, 0, 1]);
        assert!((0..10).all(|p| shard_of(p, 1) == 0));
        assert_eq!(shard_of(7, 3), 1);
    }
}
