//! ClickHouse: the schema, the rows tally writes, the checkpoint that commits them, the
//! reads behind the reports, and the record of low-credit alerts.

pub mod alerts;
pub mod checkpoint;
pub mod cluster;
mod keyed;
pub mod ledger_block;
pub mod reads;
pub mod rollup;
mod row_binary;
pub mod rows;
pub mod schema;
pub mod state_codec;
pub mod webhooks;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use clickhouse::{Client, Compression};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[source] clickhouse::error::Error),
    /// TLS with the server failed: a setting is wrong, and no retry cures it.
    #[error("ClickHouse: TLS failed: {problem}; {hint}")]
    Tls { problem: String, hint: &'static str },
    #[error("stored state of account `{account}` is unreadable: {problem}")]
    State { account: String, problem: String },
    /// The daily rollups' segment size is part of their rows' identity.
    #[error(
        "pipeline.rollup_segment_records is {configured}, but partition {partition}'s \
         checkpoints were written with {stored}: it cannot change on a database with rows \
         (set it back to {stored})"
    )]
    SegmentSize {
        partition: u32,
        stored: u32,
        configured: u32,
    },
    /// A database created by an earlier `tally migrate` that lacks a column added since:
    /// writes and reads would fail on every call, so this stops start-up and readiness.
    #[error("table `{table}` has no column `{column}`: run `tally migrate` to add it")]
    Outdated {
        table: &'static str,
        column: &'static str,
    },
    /// A stored name that no variant of its enum has: never guessed, always an error.
    #[error("table `{table}`, column `{column}`: unknown value `{value}`")]
    UnknownValue {
        table: &'static str,
        column: &'static str,
        value: String,
    },
}

impl From<clickhouse::error::Error> for StoreError {
    /// A TLS failure is told apart (with the setting to look at) from the outages that
    /// retries ride out.
    fn from(e: clickhouse::error::Error) -> Self {
        match tls_failure(&e) {
            Some(rustls::Error::InvalidCertificate(cause)) => StoreError::Tls {
                problem: format!("the server's certificate is not trusted ({cause:?})"),
                hint: "if it comes from a private CA, set clickhouse.ca_file to that CA (PEM)",
            },
            Some(other) => StoreError::Tls {
                problem: other.to_string(),
                hint: "check that clickhouse.url names the server's HTTPS port",
            },
            None => StoreError::ClickHouse(e),
        }
    }
}

impl StoreError {
    /// Whether this is a TLS failure, which a retry does not cure.
    pub fn is_tls(&self) -> bool {
        matches!(self, StoreError::Tls { .. })
    }
}

/// The rustls error somewhere in `e`'s chain of causes. rustls errors travel inside
/// `io::Error`s, whose `source()` skips the error they wrap, so each is opened by hand.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => std::error::Error::source(io),
            },
            None => error.source(),
        };
    }
    None
}

/// The variant of `variants` whose stored name (`name`) is `value`, or an error naming the
/// table, the column and the value: an unknown stored value is never read as a default.
pub fn stored<T: Copy>(
    variants: &[T],
    name: impl Fn(T) -> &'static str,
    table: &'static str,
    column: &'static str,
    value: &str,
) -> Result<T, StoreError> {
    variants
        .iter()
        .copied()
        .find(|v| name(*v) == value)
        .ok_or_else(|| StoreError::UnknownValue {
            table,
            column,
            value: value.to_string(),
        })
}

/// Every lot kind as stored, flex (payments only) included.
pub const LOT_KINDS: [tally_core::LotKind; 4] = [
    tally_core::LotKind::Included,
    tally_core::LotKind::Promotional,
    tally_core::LotKind::Purchased,
    tally_core::LotKind::Flex,
];

/// Every ledger entry type as stored.
pub const ENTRY_TYPES: [tally_core::EntryType; 6] = [
    tally_core::EntryType::Usage,
    tally_core::EntryType::Grant,
    tally_core::EntryType::Void,
    tally_core::EntryType::Expiry,
    tally_core::EntryType::Settlement,
    tally_core::EntryType::HoldExpired,
];

/// A client for the configured database. RowBinary without validation and without
/// compression, so it also works against ClickHouse 18.16. On a cluster, the database of
/// the Distributed tables: what it inserts (alerts) reaches their shard before the INSERT
/// is acknowledged (`insert_distributed_sync`), not in the background; and a subquery on
/// a Distributed table inside a read of one (`version IN (SELECT ... FROM checkpoints)`)
/// runs on each shard over that shard's own rows (`distributed_product_mode=local`),
/// which is exact because a partition's rows, and so an account's, live on one shard.
pub fn client(config: &ClickHouseConfig) -> Client {
    let client = server_client(config).with_database(&config.database);
    match config.cluster {
        Some(_) => client
            .with_setting("insert_distributed_sync", "1")
            .with_setting("distributed_product_mode", "local"),
        None => client,
    }
}

/// How long a pooled connection may sit idle; ClickHouse closes them after 3 s itself.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client not bound to a database, for creating it. Every call it makes is bounded by
/// `clickhouse.timeout`: connecting, each write of the request and each wait for bytes of
/// the answer, so a hung or blackholed server fails the call (with a timeout error) instead
/// of blocking the run loop and its shutdown.
pub fn server_client(config: &ClickHouseConfig) -> Client {
    writes::REPLICATED.get_or_init(|| config.cluster.is_some());
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    // https:// URLs go through rustls, http:// ones as before; the timeouts below bound
    // the TLS handshake too, as part of connecting.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_read_timeout(Some(config.timeout));
    connector.set_write_timeout(Some(config.timeout));
    let http_client = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Client::with_http_client(http_client)
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(config.password.expose())
        .with_validation(false)
        .with_compression(Compression::None)
}

/// The client TLS settings: the roots are `clickhouse.ca_file`'s certificates when it is
/// set (only they are trusted: a private CA), else the public CAs of webpki-roots, built
/// in, so no system CA bundle is needed.
fn tls_config(config: &ClickHouseConfig) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if config.ca_file.as_os_str().is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        // `Config::validate` has parsed the file already; if it went away since, no root
        // is trusted and every https:// call fails with an error naming clickhouse.ca_file.
        match crate::tls::load_certs(&config.ca_file) {
            Ok(certs) => {
                let (_added, ignored) = roots.add_parsable_certificates(certs);
                if ignored > 0 {
                    tracing::warn!(ignored, file = %config.ca_file.display(), "clickhouse.ca_file: certificates rustls cannot use were ignored");
                }
            }
            Err(problem) => tracing::error!(%problem, "clickhouse.ca_file"),
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider supports the default versions; kept as a fallback, not a panic.
        Err(e) => {
            tracing::error!(error = %e, "rustls: default protocol versions unavailable");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// Checks that the server answers and the schema exists.
pub async fn check(client: &Client) -> Result<(), StoreError> {
    client
        .query("SELECT count() FROM checkpoints")
        .fetch_one::<u64>()
        .await?;
    schema::check_columns(client).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::alerts::AlertKind;

    #[test]
    fn unknown_stored_values_are_errors_naming_table_column_and_value() {
        let lot = stored(&LOT_KINDS, |k| k.as_str(), "lots", "kind", "purchased");
        assert_eq!(lot.unwrap(), tally_core::LotKind::Purchased);
        let err = stored(&LOT_KINDS, |k| k.as_str(), "lots", "kind", "gift").unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `lots`, column `kind`: unknown value `gift`"
        );
        let err = stored(
            &AlertKind::ALL,
            AlertKind::as_str,
            "alerts",
            "kind",
            "lowbalance",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `alerts`, column `kind`: unknown value `lowbalance`"
        );
        for kind in AlertKind::ALL {
            let back = stored(
                &AlertKind::ALL,
                AlertKind::as_str,
                "alerts",
                "kind",
                kind.as_str(),
            );
            assert_eq!(back.unwrap(), kind);
        }
        for entry in ENTRY_TYPES {
            let back = stored(
                &ENTRY_TYPES,
                |e| e.as_str(),
                "ledger",
                "entry_type",
                entry.as_str(),
            );
            assert_eq!(back.unwrap(), entry);
        }
    }
}
