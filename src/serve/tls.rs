//! HTTPS for `tally serve` without a proxy in front (`serve.tls_cert`, `serve.tls_key`): a
//! listener that hands axum connections whose TLS handshake is done.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::settings::ServeConfig;

/// Longest a client may take over its TLS handshake: a client that stalls in it holds a
/// task and a socket, never the listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; connections over it wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

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

/// A listener whose connections are TLS streams. Handshakes run in tasks of their own,
/// each bounded by `HANDSHAKE_TIMEOUT`, so one slow or hostile client never holds up the
/// others; a failed handshake is logged at debug level and dropped.
pub struct TlsListener<L: axum::serve::Listener> {
    ready: mpsc::Receiver<(TlsStream<L::Io>, L::Addr)>,
    local: io::Result<L::Addr>,
}

impl<L> TlsListener<L>
where
    L: axum::serve::Listener,
    L::Addr: Clone + std::fmt::Debug,
{
    /// Starts accepting on `inner` (on the current Tokio runtime).
    pub fn new(mut inner: L, config: Arc<rustls::ServerConfig>) -> TlsListener<L> {
        let local = inner.local_addr();
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (io, addr) = tokio::select! {
                    accepted = inner.accept() => accepted,
                    // The server is gone: stop accepting (and free the port).
                    _ = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = ?addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = ?addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener,
    L::Addr: Clone + Sync,
{
    type Io = TlsStream<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended (the runtime is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(addr.clone()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}
