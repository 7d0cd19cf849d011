//! The HTTP side of streaming: the listener (plain or TLS), token lookup, protocol
//! negotiation of the SPDY and WebSocket upgrades, and the idle timeout.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::backend::Backend;
use super::remotecommand::{SPDY_PROTOCOLS, Version};
use super::tokens::{Pending, Tokens};
use super::{portforward, spdyexec, websocket};

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The SPDY protocol of port-forward.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of port-forward: SPDY/3.1 carried in binary messages.
pub const PORT_FORWARD_WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// What every connection shares.
pub struct Shared {
    /// Outstanding tokens.
    pub tokens: Arc<Tokens>,
    /// The runtime.
    pub backend: Arc<dyn Backend>,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// How long a client has to open the streams it needs after the upgrade.
    pub stream_creation_timeout: Duration,
}

type Body = Full<Bytes>;

/// Serves one accepted connection (already TLS-wrapped when TLS is on) until it ends or
/// stays idle past the timeout.
pub async fn serve_connection<T>(io: T, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = IdleIo {
        inner: io,
        activity: Arc::clone(&activity),
    };
    // Every task an upgraded connection starts watches this, so that the idle timeout
    // ends them too.
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let service = {
        let shared = Arc::clone(&shared);
        hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            let cancel = cancel_rx.clone();
            async move { Ok::<_, Infallible>(route(req, shared, cancel)) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "streaming connection ended with an error");
            }
        }
        () = activity.idle_for(shared.idle_timeout) => {
            tracing::info!("streaming connection closed after {:?} idle", shared.idle_timeout);
            let _ = cancel_tx.send(true);
            return;
        }
    }
    // The upgrade (if any) now runs in its own task over the same transport.
    tokio::select! {
        () = cancel_tx.closed() => {}
        () = activity.idle_for(shared.idle_timeout) => {
            tracing::info!("stream closed after {:?} idle", shared.idle_timeout);
            let _ = cancel_tx.send(true);
        }
    }
}

/// Answers one request: 404 for a bad token, else the upgrade.
fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    cancel: watch::Receiver<bool>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
    }
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let Some(pending) = shared.tokens.take(kind, token.trim_end_matches('/')) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let headers = req.headers();
    if is_websocket(headers) {
        return websocket_upgrade(req, pending, shared, cancel);
    }
    if !header_has(headers, header::UPGRADE, "spdy/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: expected an upgrade to SPDY/3.1 or websocket\n",
        );
    }
    let offered = header_values(headers, "x-stream-protocol-version");
    if offered.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required\n",
        );
    }
    let supported: &[&str] = match pending {
        Pending::PortForward(_) => &[PORT_FORWARD_PROTOCOL],
        _ => &SPDY_PROTOCOLS,
    };
    let Some(chosen) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let mut resp = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}\n"
            ),
        );
        for p in supported {
            resp.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(p),
            );
        }
        return resp;
    };
    let version = Version::from_spdy(&chosen);
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        let work = async {
            match (pending, version) {
                (Pending::PortForward(pod), _) => {
                    let (conn, incoming) = spdy::server(io, spdy::Config::default());
                    portforward::serve(conn, incoming, &pod, &shared).await;
                }
                (Pending::Exec(t), Some(v)) => spdyexec::serve_exec(io, v, t, &shared).await,
                (Pending::Attach(t), Some(v)) => spdyexec::serve_attach(io, v, t, &shared).await,
                _ => {}
            }
        };
        until_cancelled(work, cancel).await;
    });
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&chosen) {
        h.insert("x-stream-protocol-version", v);
    }
    resp
}

fn websocket_upgrade(
    req: Request<Incoming>,
    pending: Pending,
    shared: Arc<Shared>,
    cancel: watch::Receiver<bool>,
) -> Response<Body> {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket upgrade without Sec-WebSocket-Key\n",
        );
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket version 13 is required\n",
        );
    }
    let offered = header_values(headers, "sec-websocket-protocol");
    let chosen = match &pending {
        Pending::PortForward(_) => offered
            .iter()
            .find(|p| p.eq_ignore_ascii_case(PORT_FORWARD_WS_PROTOCOL))
            .map(|p| (p.clone(), None)),
        _ => websocket::negotiate(&offered),
    };
    let Some((protocol, channel_protocol)) = chosen else {
        return plain(
            StatusCode::BAD_REQUEST,
            &format!("unable to upgrade: no supported websocket subprotocol among {offered:?}\n"),
        );
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let work = async {
            match (pending, channel_protocol) {
                (Pending::PortForward(pod), _) => {
                    websocket::serve_port_forward(io, &pod, &shared).await;
                }
                (pending, Some(p)) => websocket::serve_remotecommand(io, p, pending, &shared).await,
                _ => {}
            }
        };
        until_cancelled(work, cancel).await;
    });
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    ) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&protocol)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

/// Runs `work` until it ends or the connection is cancelled (idle timeout).
async fn until_cancelled(work: impl Future<Output = ()>, mut cancel: watch::Receiver<bool>) {
    tokio::select! {
        () = work => {}
        _ = cancel.wait_for(|c| *c) => {}
    }
}

fn is_websocket(headers: &HeaderMap) -> bool {
    header_has(headers, header::UPGRADE, "websocket")
}

/// Whether a comma-separated header holds `token` (ASCII case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Every value of a header that may repeat or be comma-separated, in order.
fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(text.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A transport that records activity for the idle timeout.
struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
