//! The streaming server: Exec, Attach and PortForward answer a URL on it, and kubelet or
//! crictl upgrade a connection there to SPDY/3.1 or WebSocket (see docs/streaming.md).

pub mod backend;
#[cfg(test)]
pub mod fake;
mod pods;
mod portforward;
pub mod remotecommand;
mod server;
mod spdyexec;
pub mod tokens;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use runtime_core::config::StreamingConfig;
use tokio::net::TcpListener;

pub use backend::{AttachTarget, Backend, ExecTarget};
pub use pods::PodBackend;
pub use tokens::Pending;

/// How long a client has after the upgrade to open the streams it asked for (kubelet's
/// value).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The running streaming server, as the RPCs see it: where to point clients.
#[derive(Clone)]
pub struct Streaming {
    tokens: Arc<tokens::Tokens>,
    base_url: String,
}

impl Streaming {
    /// Parks `request` and returns the absolute URL its client connects to.
    pub fn url(&self, request: Pending) -> Result<String, tokens::TooMany> {
        let kind = request.kind();
        let token = self.tokens.issue(request)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    #[cfg(test)]
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// Binds the listener and starts serving; returns the handle the RPCs use. Serving stops
/// when `stop` resolves; open streams are cut then.
pub async fn start(
    config: &StreamingConfig,
    backend: Arc<dyn Backend>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Streaming> {
    let addr: SocketAddr = config
        .address
        .parse()
        .with_context(|| format!("streaming.address {:?}", config.address))?;
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the streaming server to {addr}"))?;
    let local = listener
        .local_addr()
        .context("streaming listener address")?;
    let host = match local.ip() {
        // A URL needs a host to connect to; kubelet runs on this node.
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://{host}:{}", local.port());
    let tokens = Arc::new(tokens::Tokens::default());
    let shared = Arc::new(server::Shared {
        tokens: Arc::clone(&tokens),
        backend,
        idle_timeout: config.idle_timeout()?,
        stream_creation_timeout: STREAM_CREATION_TIMEOUT,
    });
    tracing::info!(url = %base_url, "streaming server listening");
    tokio::spawn(async move {
        let accept = async {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: keep serving the rest.
                        tracing::warn!(error = %e, "streaming accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => server::serve_connection(tcp, shared).await,
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => server::serve_connection(stream, shared).await,
                            Err(e) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            }
                        },
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = stop => {}
        }
    });
    Ok(Streaming { tokens, base_url })
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("streaming.tls_cert_file {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "streaming.tls_cert_file {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("streaming.tls_key_file {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("streaming TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
#[cfg(test)]
mod tests;
