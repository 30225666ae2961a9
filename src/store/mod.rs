//! ClickHouse: the schema, the rows tally writes, the checkpoint that commits them, the
//! reads behind the reports, and the record of low-credit alerts.

pub mod alerts;
pub mod checkpoint;
pub mod reads;
pub mod rows;
pub mod schema;
pub mod writes;

use clickhouse::{Client, Compression};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("stored state of account `{account}` is unreadable: {problem}")]
    State { account: String, problem: String },
}

/// A client for the configured database. RowBinary without validation and without
/// compression, so it also works against ClickHouse 18.16.
pub fn client(config: &ClickHouseConfig) -> Client {
    server_client(config).with_database(&config.database)
}

/// A client not bound to a database, for creating it.
pub fn server_client(config: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(&config.password)
        .with_validation(false)
        .with_compression(Compression::None)
}

/// Checks that the server answers and the schema exists.
pub async fn check(client: &Client) -> Result<(), StoreError> {
    client
        .query("SELECT count() FROM checkpoints")
        .fetch_one::<u64>()
        .await?;
    Ok(())
}
