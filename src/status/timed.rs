//! Connections that time out: a listener for axum whose connections fail once they have
//! moved no byte for a while or lived too long, so an idle or dribbling client cannot hold
//! a connection (and its task) forever. The status endpoint and `tally serve` both use it.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// A TCP listener whose connections time out (see [`TimedIo`]); axum serves on it.
pub struct TimedListener {
    inner: TcpListener,
    idle: Duration,
    lifetime: Duration,
}

impl TimedListener {
    /// Binds `listen` (host:port); its connections idle at most `idle` and live at most
    /// `lifetime`.
    pub async fn bind(listen: &str, idle: Duration, lifetime: Duration) -> io::Result<Self> {
        let inner = TcpListener::bind(listen).await?;
        Ok(TimedListener {
            inner,
            idle,
            lifetime,
        })
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop for TCP: logs and backs off on errors (e.g. too many
        // open files) instead of giving up.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Answers are small and each waits for the one before on the same connection
        // (`tally serve`'s checks): no Nagle delay.
        let _ = stream.set_nodelay(true);
        (TimedIo::new(stream, self.idle, self.lifetime), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once it has moved no byte for `idle`, or has
/// lived for `lifetime`; hyper then closes it. The timers are polled whenever the
/// connection waits, so they wake the task that owns it.
pub struct TimedIo<S> {
    inner: S,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    end: Pin<Box<Sleep>>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, idle: Duration, lifetime: Duration) -> TimedIo<S> {
        let now = Instant::now();
        TimedIo {
            inner,
            idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            end: Box::pin(tokio::time::sleep_until(now + lifetime)),
        }
    }

    /// Called when the connection waits: an error once a timer has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let idle = self.idle_timer.as_mut().poll(cx).is_ready();
        let over = self.end.as_mut().poll(cx).is_ready();
        (idle || over).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                if idle {
                    "connection idle too long"
                } else {
                    "connection open too long"
                },
            )
        })
    }

    fn progressed(&mut self) {
        let at = Instant::now() + self.idle;
        self.idle_timer.as_mut().reset(at);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Duration::from_secs(30), Duration::from_secs(300));
        let mut client = client;
        // Bytes keep the connection alive past the idle timeout ...
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let mut got = 0;
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Ok(got),
                    Ok(n) => got += n,
                    Err(e) => return Err((got, e.kind())),
                }
            }
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"x").await.expect("writes");
        }
        // ... and silence ends it (the outer bound turns a missing timeout into a
        // failure instead of a hang).
        let result = tokio::time::timeout(Duration::from_secs(3600), reader)
            .await
            .expect("the idle timeout fired")
            .expect("reader finishes");
        assert_eq!(result, Err((3, io::ErrorKind::TimedOut)));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_end_at_their_lifetime() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Duration::from_secs(30), Duration::from_secs(100));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let started = Instant::now();
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err((started.elapsed().as_secs(), e.kind())),
                }
            }
        });
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let result = tokio::time::timeout(Duration::from_secs(3600), reader)
            .await
            .expect("the lifetime ran out")
            .expect("reader finishes");
        writer.abort();
        assert_eq!(result, Err((100, io::ErrorKind::TimedOut)));
    }
}
