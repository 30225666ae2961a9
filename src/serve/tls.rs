//! HTTPS for `tally serve` without a proxy in front (`serve.tls_cert`, `serve.tls_key`):
//! the server's TLS settings; `conn` does the handshakes, each in its connection's task.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::serve::ServeConfig;

/// Longest a client may take over its TLS handshake: a client that stalls in it holds a
/// task, a socket and a connection slot, never the listener.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS settings from `serve.tls_cert` and `serve.tls_key`; errors name them.
pub fn server_config(config: &ServeConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = crate::tls::load_certs(&config.tls_cert)
        .map_err(anyhow::Error::msg)
        .context("serve.tls_cert")?;
    let key = crate::tls::load_key(&config.tls_key)
        .map_err(anyhow::Error::msg)
        .context("serve.tls_key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("serve.tls_cert and serve.tls_key do not make a certificate and its key")?;
    // The server speaks HTTP/1.1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}
