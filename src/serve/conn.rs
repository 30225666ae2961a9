//! The connection loop of `tally serve`: hyper's HTTP/1 server with a header-read timeout,
//! an idle timeout and a lifetime per connection, and a cap on open connections, so slow
//! or idle clients (slowloris) cannot hold the server. axum's own `serve` sets none of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::tls::HANDSHAKE_TIMEOUT;
use crate::status::timed::TimedIo;

/// No connection lives longer than this however busy, so one dribbling a byte at a time
/// into a body or out of a response ends; clients and load balancers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// What a connection over the cap gets before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 45\r\n\r\n{\"error\":\"too many connections; retry soon\"}\n";

/// The bounds of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

/// One accepted connection's server, over plain TCP or TLS.
struct Connection {
    service: TowerToHyperService<Router>,
    builder: http1::Builder,
    close: watch::Receiver<bool>,
    idle_timeout: Duration,
}

impl Connection {
    async fn serve<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(TimedIo::new(stream, self.idle_timeout, CONNECTION_LIFETIME));
        let conn = self.builder.serve_connection(io, self.service);
        tokio::pin!(conn);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended");
                }
            }
            _ = self.close.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then lets requests in flight
/// finish (up to `drain_timeout`). `refused` is called for each connection over the cap.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    bounds: Bounds,
    refused: impl Fn() + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let (close_tx, close_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused();
            // Answered and closed: one short task, bounded in time. What the client sent is
            // drained before the close, else the kernel resets the connection and the
            // client may lose the answer.
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(BUSY).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 1024];
                    while stream.read(&mut sink).await? > 0 {}
                    Ok::<(), std::io::Error>(())
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let one = Connection {
            service: TowerToHyperService::new(app.clone()),
            builder: builder.clone(),
            close: close_rx.clone(),
            idle_timeout: bounds.idle_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            // The slot is held from the handshake on: a client stalling in TLS counts too.
            let _permit = permit;
            match tls {
                None => one.serve(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => one.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    // Every slot back means every connection ended.
    let all = u32::try_from(bounds.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(bounds.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still running at shutdown were cut off");
    }
}
