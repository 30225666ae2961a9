//! The HTTP client of webhooks: POSTs one signed delivery, bounded by timeouts. Accounts'
//! endpoints go through a resolver that only hands out public addresses (unless config
//! allows private ones), so an account cannot point tally at loopback, its own network or
//! a cloud metadata service, whatever its DNS answers at the moment of sending.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// Why a delivery did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Never to be tried again: the URL or its address is not allowed, or no secret.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Refused(_))
    }

    pub fn status(&self) -> u16 {
        match self {
            SendError::Status(s) => *s,
            _ => 0,
        }
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared,
/// documentation, benchmarking, multicast, unspecified or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// A resolver that keeps only public addresses; none left is an error.
#[derive(Clone)]
struct PublicOnly;

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move { public_addresses(name.as_str()).await.map(Vec::into_iter) })
    }
}

async fn public_addresses(host: &str) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
    if public.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("`{host}` resolves to no public address"),
        ));
    }
    Ok(public)
}

type Connector<R> = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector<R>>>;

/// Two clients: `open` for the operator's global endpoints (and for accounts' endpoints
/// when private addresses are allowed), `guarded` for accounts' endpoints.
pub struct WebhookClient {
    open:
        HyperClient<Connector<hyper_util::client::legacy::connect::dns::GaiResolver>, Full<Bytes>>,
    guarded: HyperClient<Connector<PublicOnly>, Full<Bytes>>,
    allow_private: bool,
    timeout: Duration,
}

/// The TLS settings: the public CAs of webpki-roots, built in.
fn tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The ring provider supports the default protocol versions: this cannot fail.
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client over `http` with TLS and every timeout (a macro: the two resolvers are two
/// types, and the connector's bounds on a generic one are hyper-util's private trait).
macro_rules! client_over {
    ($http:expr, $timeout:expr) => {{
        let mut http = $http;
        http.set_connect_timeout(Some($timeout));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let mut c = hyper_timeout::TimeoutConnector::new(https);
        c.set_connect_timeout(Some($timeout));
        c.set_read_timeout(Some($timeout));
        c.set_write_timeout(Some($timeout));
        HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(c)
    }};
}

impl WebhookClient {
    pub fn new(timeout: Duration, allow_private: bool) -> WebhookClient {
        let open = client_over!(HttpConnector::new(), timeout);
        let guarded = client_over!(HttpConnector::new_with_resolver(PublicOnly), timeout);
        WebhookClient {
            open,
            guarded,
            allow_private,
            timeout,
        }
    }

    /// POSTs `body` with `headers` to `url`; `account_set`: the account chose the URL,
    /// so its address must be public unless config allows otherwise. Ok: the HTTP status
    /// (2xx); anything else is an error.
    pub async fn post(
        &self,
        url: &str,
        account_set: bool,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<u16, SendError> {
        let parsed = url::Url::parse(url).map_err(|e| SendError::Refused(format!("{url}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SendError::Refused(format!("{url}: not http or https")));
        }
        let guard = account_set && !self.allow_private;
        if guard {
            // Addresses written as such never reach the resolver.
            let literal = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                Some(url::Host::Domain(_)) => None,
                None => return Err(SendError::Refused(format!("{url}: no host"))),
            };
            match literal {
                Some(ip) if !is_public(ip) => {
                    return Err(SendError::Refused(format!(
                        "{ip} is not a public address (webhooks.allow_private_addresses is off)"
                    )))
                }
                Some(_) => {}
                None => {
                    let host = parsed.host_str().unwrap_or_default().to_string();
                    if let Err(e) = public_addresses(&host).await {
                        return Err(if e.kind() == std::io::ErrorKind::PermissionDenied {
                            SendError::Refused(format!(
                                "{e} (webhooks.allow_private_addresses is off)"
                            ))
                        } else {
                            SendError::Transport(format!("cannot resolve `{host}`: {e}"))
                        });
                    }
                }
            }
        }
        let mut request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("tally/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Refused(format!("{url}: {e}")))?;
        // The connector bounds connecting and each read and write; this bounds the whole.
        let whole = self.timeout.saturating_mul(3);
        let answer = if guard {
            tokio::time::timeout(whole, self.guarded.request(request)).await
        } else {
            tokio::time::timeout(whole, self.open.request(request)).await
        };
        let response = match answer {
            Err(_) => return Err(SendError::Timeout(whole)),
            Ok(Err(e)) => return Err(SendError::Transport(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        // Read (and drop) a bounded answer so the connection can be reused.
        let _ = tokio::time::timeout(self.timeout, async {
            use http_body_util::BodyExt as _;
            let mut body = response.into_body();
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > 64 * 1024 {
                    break;
                }
            }
        })
        .await;
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(SendError::Status(status))
        }
    }
}

/// An error with its sources, which is where hyper says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = private.parse().expect("an address");
            assert!(!is_public(ip), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let ip: IpAddr = public.parse().expect("an address");
            assert!(is_public(ip), "{public}");
        }
    }

    #[tokio::test]
    async fn accounts_cannot_reach_loopback_by_default() {
        let client = WebhookClient::new(Duration::from_secs(1), false);
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]:9/hook",
            "http://localhost:9/hook",
        ] {
            let e = client
                .post(url, true, &[], "{}".into())
                .await
                .expect_err(url);
            assert!(e.is_permanent(), "{url}: {e}");
        }
    }
}
