//! The WebSocket transports: remotecommand's channel protocols (`v5.channel.k8s.io` and
//! earlier, binary or base64), where every message starts with its channel number, and
//! port-forward's `SPDY/3.1+portforward.k8s.io`, where binary messages carry the bytes of
//! a SPDY connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::backend::Session;
use super::remotecommand::{self, Failure, Input, Kind, Outcome, ResizeDecoder, Version};
use super::server::Shared;
use super::tokens::Pending;

/// The channels of remotecommand.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` says the client closed that channel.
const CLOSE: u8 = 255;
/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the client gets to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Client input queued before reading the client stops.
const INPUT_QUEUE: usize = 16;

/// A negotiated channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelProtocol {
    /// The remotecommand version.
    pub version: Version,
    /// Text messages with base64 payloads and an ASCII channel digit.
    pub base64: bool,
}

/// The subprotocols served, and what they mean.
const PROTOCOLS: [(&str, Version, bool); 9] = [
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v3.channel.k8s.io", Version::V3, false),
    ("v2.channel.k8s.io", Version::V2, false),
    ("channel.k8s.io", Version::V1, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("v3.base64.channel.k8s.io", Version::V3, true),
    ("v2.base64.channel.k8s.io", Version::V2, true),
    ("base64.channel.k8s.io", Version::V1, true),
];

/// The first of the client's subprotocols that is served; a client that offers none
/// gets `channel.k8s.io` (as kubelet).
pub fn negotiate(offered: &[String]) -> Option<(String, Option<ChannelProtocol>)> {
    if offered.is_empty() {
        let p = ChannelProtocol {
            version: Version::V1,
            base64: false,
        };
        return Some((String::new(), Some(p)));
    }
    offered.iter().find_map(|o| {
        PROTOCOLS
            .iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(o))
            .map(|&(name, version, base64)| {
                (name.to_string(), Some(ChannelProtocol { version, base64 }))
            })
    })
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Serves an exec or attach over an upgraded WebSocket connection.
pub async fn serve_remotecommand<T>(
    io: T,
    protocol: ChannelProtocol,
    pending: Pending,
    shared: &Shared,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
    let (tx, rx) = ws.split();
    let (stdin, stdout, stderr, tty, kind) = match &pending {
        Pending::Exec(t) => (
            t.stdin,
            t.stdout,
            t.stderr,
            t.tty,
            Kind::Exec(t.cmd.clone()),
        ),
        Pending::Attach(t) => (t.stdin, t.stdout, t.stderr, t.tty, Kind::Attach),
        Pending::PortForward(_) => return,
    };
    let mut sink = ChannelSink {
        tx,
        base64: protocol.base64,
        stdout,
        stderr: stderr && !tty,
    };
    // Tells the client the streams are ready (kubelet does the same).
    let first = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    if sink.send(first, &[]).await.is_err() {
        return;
    }
    let session: Result<Session, String> = match &pending {
        Pending::Exec(t) => shared.backend.exec(t).await,
        Pending::Attach(t) => shared.backend.attach(t).await,
        Pending::PortForward(_) => return,
    };
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let reader = tokio::spawn(read_channels(rx, protocol, stdin, input_tx));
    let outcome = match session {
        Ok(session) => remotecommand::run(session, &kind, input_rx, &mut sink).await,
        Err(e) => Outcome::Done(Err(Failure::Internal(e))),
    };
    if let Outcome::Done(result) = outcome {
        let status = remotecommand::status_bytes(protocol.version, &result);
        if !status.is_empty() {
            let _ = sink.send(ERROR, &status).await;
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.tx.send(Message::Close(Some(close))).await;
        // The reader sees the client's close answer and ends.
        let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
    } else {
        reader.abort();
    }
}

/// Reads client messages into `tx` until the connection ends.
async fn read_channels<S>(
    mut rx: S,
    protocol: ChannelProtocol,
    stdin: bool,
    tx: mpsc::Sender<Input>,
) where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut resize = ResizeDecoder::default();
    let mut stdin_open = stdin;
    while let Some(next) = rx.next().await {
        let payload = match next {
            Ok(Message::Binary(b)) if !protocol.base64 => b.to_vec(),
            Ok(Message::Text(t)) if protocol.base64 => {
                let raw = t.as_bytes();
                let Some((&digit, rest)) = raw.split_first() else {
                    continue;
                };
                let Some(channel) = digit.checked_sub(b'0') else {
                    continue;
                };
                let Ok(mut decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                    tracing::debug!("bad base64 in a websocket message; closing");
                    break;
                };
                decoded.insert(0, channel);
                decoded
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&channel, data)) = payload.split_first() else {
            continue;
        };
        let input = match channel {
            STDIN if stdin_open && !data.is_empty() => Input::Stdin(data.to_vec()),
            RESIZE if protocol.version.has_resize() => match resize.push(data) {
                Ok(sizes) => {
                    for (width, height) in sizes {
                        if tx.send(Input::Resize { width, height }).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "resize ignored");
                    continue;
                }
            },
            CLOSE
                if protocol.version >= Version::V5
                    && data.first() == Some(&STDIN)
                    && stdin_open =>
            {
                stdin_open = false;
                Input::StdinEof
            }
            _ => continue,
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::Gone).await;
}

struct ChannelSink<S> {
    tx: S,
    base64: bool,
    stdout: bool,
    stderr: bool,
}

impl<S> ChannelSink<S>
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin + Send,
{
    async fn send(&mut self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        let msg = if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::Binary(bytes.into())
        };
        self.tx.send(msg).await.map_err(std::io::Error::other)
    }
}

#[tonic::async_trait]
impl<S> remotecommand::Sink for ChannelSink<S>
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin + Send,
{
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !self.stdout {
            return Ok(());
        }
        self.send(STDOUT, data).await
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !self.stderr {
            return Ok(());
        }
        self.send(STDERR, data).await
    }
}

/// Serves port-forward over WebSocket: the messages carry a SPDY connection.
pub async fn serve_port_forward<T>(io: T, pod: &str, shared: &Shared)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
    let (conn, incoming) = spdy::server(WsBytes::new(ws), spdy::Config::default());
    super::portforward::serve(conn, incoming, pod, shared).await;
}

/// A WebSocket connection as a byte stream: binary messages in, binary messages out.
pub struct WsBytes<T> {
    ws: WebSocketStream<T>,
    pending: Bytes,
}

impl<T> WsBytes<T> {
    /// Wraps an open WebSocket.
    pub fn new(ws: WebSocketStream<T>) -> Self {
        WsBytes {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Binary(b)))) => self.pending = b,
                Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let ws = &mut self.ws;
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            Poll::Pending => return Poll::Pending,
        }
        let n = data.len().min(MAX_MESSAGE);
        match Pin::new(ws).start_send(Message::Binary(Bytes::copy_from_slice(&data[..n]))) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(std::io::Error::other(e))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_served_protocol() {
        let offered = vec![
            "v9.channel.k8s.io".to_string(),
            "v4.channel.k8s.io".into(),
            "v5.channel.k8s.io".into(),
        ];
        let (name, p) = negotiate(&offered).unwrap();
        assert_eq!(name, "v4.channel.k8s.io");
        assert_eq!(p.unwrap().version, Version::V4);
        let (name, p) = negotiate(&["base64.channel.k8s.io".to_string()]).unwrap();
        assert_eq!(name, "base64.channel.k8s.io");
        assert!(p.unwrap().base64);
        assert_eq!(negotiate(&["x".to_string()]), None);
        let (name, p) = negotiate(&[]).unwrap();
        assert!(name.is_empty());
        assert_eq!(p.unwrap().version, Version::V1);
    }
}
