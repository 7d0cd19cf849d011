//! Streams: per-stream state kept by the connection, and the application's
//! handles to it ([`Stream`], [`StreamReader`], [`StreamWriter`]).
//!
//! The state lives in the connection's map (under its mutex), not in the
//! handles, because both the connection's reader task and the application
//! change it. Handles hold only the id; dropping the last one lets the
//! connection forget the stream (resetting it if it was still open).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::{Control, Shared, State};
use crate::frame::Frame;
use crate::headers::HeaderEncoder;
use crate::{Error, Headers, RstStatus};

/// Most bytes a stream's writer may hand to the connection before it has to
/// wait for them to go out; with the peer's window this bounds what a fast
/// writer can pile up.
pub(crate) const OUT_BUF_CAP: usize = 32 * 1024;

/// Where our side of the stream is in closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinState {
    /// We may still send.
    Open,
    /// shutdown() was called; FIN goes out after the buffered data.
    Queued,
    /// FIN was handed to the connection writer.
    Sent,
}

/// Connection-side state of one stream.
pub(crate) struct StreamState {
    /// We opened it (SYN_STREAM from us).
    pub local: bool,
    /// Local: SYN_REPLY received. Peer-opened: SYN_REPLY sent (data waits for it,
    /// since spdystream drops DATA that arrives before the reply).
    pub replied: bool,
    /// Reply headers of a stream we opened.
    pub reply: Option<Headers>,
    pub recv_buf: VecDeque<Bytes>,
    pub recv_len: usize,
    /// Credit the peer has left on this stream, by our accounting.
    pub recv_credit: i64,
    /// Bytes the application consumed that we have not yet credited back.
    pub recv_unacked: u32,
    pub remote_fin: bool,
    pub send_window: i64,
    pub out: BytesMut,
    pub fin: FinState,
    /// (status code, by_peer) once reset in either direction.
    pub reset: Option<(u32, bool)>,
    pub in_send_queue: bool,
    pub reader_alive: bool,
    pub writer_alive: bool,
    /// Counted in `State::peer_open` (peer-opened and not done).
    pub counted: bool,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    pub reply_waker: Option<Waker>,
}

impl StreamState {
    pub fn new(local: bool, send_window: i64, recv_credit: i64) -> Self {
        StreamState {
            local,
            replied: false,
            reply: None,
            recv_buf: VecDeque::new(),
            recv_len: 0,
            recv_credit,
            recv_unacked: 0,
            remote_fin: false,
            send_window,
            out: BytesMut::new(),
            fin: FinState::Open,
            reset: None,
            in_send_queue: false,
            reader_alive: true,
            writer_alive: true,
            counted: false,
            read_waker: None,
            write_waker: None,
            reply_waker: None,
        }
    }

    /// Both directions closed, or reset: nothing more will happen on the wire.
    pub fn done(&self) -> bool {
        self.reset.is_some() || (self.remote_fin && self.fin == FinState::Sent)
    }

    pub fn wake_all(&mut self) {
        for w in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.reply_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            w.wake();
        }
    }

    pub fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    pub fn error(&self, id: u32) -> Option<Error> {
        self.reset
            .map(|(code, by_peer)| Error::StreamReset { id, code, by_peer })
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn io_err(kind: io::ErrorKind, e: Error) -> io::Error {
    io::Error::new(kind, e)
}

/// A SPDY stream: tokio `AsyncRead` (DATA from the peer, EOF after its FIN)
/// and `AsyncWrite` (DATA to the peer within its window; `shutdown` sends FIN,
/// half-closing our side). Dropping it before both sides closed resets the
/// stream with CANCEL.
pub struct Stream {
    id: u32,
    headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

/// The reading half of a [`Stream`].
pub struct StreamReader {
    id: u32,
    shared: Arc<Shared>,
}

/// The writing half of a [`Stream`].
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl Stream {
    pub(crate) fn new(id: u32, headers: Headers, shared: Arc<Shared>) -> Stream {
        Stream {
            id,
            headers,
            reader: StreamReader {
                id,
                shared: shared.clone(),
            },
            writer: StreamWriter { id, shared },
        }
    }

    /// The stream id (odd if the client opened it, even if the server did).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Headers of the SYN_STREAM (received for accepted streams, sent for
    /// streams we opened).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Accepts a peer-opened stream with SYN_REPLY. With `fin` our side is
    /// closed at once (data written before stays queued and goes first).
    /// Our DATA on this stream is held back until the reply is sent.
    pub async fn reply(&mut self, headers: Headers, fin: bool) -> Result<(), Error> {
        let raw = HeaderEncoder::raw_block(&headers)?;
        let shared = &self.reader.shared;
        shared.check_header_size(&raw)?;
        let mut st = shared.lock();
        if st.closed {
            return Err(Error::ConnectionClosed);
        }
        let id = self.id;
        let s = st.streams.get_mut(&id).ok_or(Error::ConnectionClosed)?;
        if s.local {
            return Err(Error::InvalidState {
                id,
                what: "reply() on a stream we opened",
            });
        }
        if s.replied {
            return Err(Error::InvalidState {
                id,
                what: "the stream was already replied to",
            });
        }
        if let Some(e) = s.error(id) {
            return Err(e);
        }
        s.replied = true;
        // FIN rides on the reply only if nothing is waiting to go before it.
        let fin_on_reply = fin && s.out.is_empty() && s.fin == FinState::Open;
        if fin_on_reply {
            s.fin = FinState::Sent;
            s.wake_writer();
        } else if fin && s.fin == FinState::Open {
            s.fin = FinState::Queued;
        }
        st.control.push_back(Control::SynReply {
            id,
            raw,
            fin: fin_on_reply,
        });
        st.schedule(id);
        shared.settle(&mut st, id);
        shared.check_finished(&mut st);
        shared.writer_wake.notify_one();
        Ok(())
    }

    /// Waits for the peer's SYN_REPLY on a stream we opened; returns its headers.
    pub async fn wait_reply(&mut self) -> Result<Headers, Error> {
        let id = self.id;
        let shared = self.reader.shared.clone();
        poll_fn(|cx| {
            let mut st = shared.lock();
            let closed = st.closed;
            let Some(s) = st.streams.get_mut(&id) else {
                return Poll::Ready(Err(Error::ConnectionClosed));
            };
            if !s.local {
                return Poll::Ready(Err(Error::InvalidState {
                    id,
                    what: "wait_reply() on a stream the peer opened",
                }));
            }
            if let Some(h) = &s.reply {
                return Poll::Ready(Ok(h.clone()));
            }
            if let Some(e) = s.error(id) {
                return Poll::Ready(Err(e));
            }
            if closed {
                return Poll::Ready(Err(Error::ConnectionClosed));
            }
            set_waker(&mut s.reply_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// Aborts the stream with RST_STREAM; buffered data in both directions is
    /// dropped and later reads and writes fail.
    pub fn reset(&mut self, status: RstStatus) {
        let shared = &self.reader.shared;
        let mut st = shared.lock();
        shared.reset_stream(&mut st, self.id, status.code(), true);
        shared.settle(&mut st, self.id);
        shared.check_finished(&mut st);
    }

    /// Splits into separately owned halves. The stream is dropped (and reset
    /// if still open) when both halves are.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let shared = &self.shared;
        let mut st = shared.lock();
        let closed = st.closed;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::NotConnected,
                Error::ConnectionClosed,
            )));
        };
        if s.recv_len == 0
            && let Some(e) = s.error(id)
        {
            // Reset by the peer after its FIN: a clean end of what it sent.
            if matches!(s.reset, Some((_, true))) && s.remote_fin {
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(io_err(io::ErrorKind::ConnectionReset, e)));
        }
        if s.recv_len > 0 {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = s.recv_buf.front_mut() else {
                    break;
                };
                let take = front.len().min(buf.remaining());
                buf.put_slice(&front[..take]);
                front.advance(take);
                if front.is_empty() {
                    s.recv_buf.pop_front();
                }
                n += take;
            }
            s.recv_len -= n;
            st.buffered -= n;
            shared.consumed(&mut st, Some(id), n);
            shared.drained.notify_one();
            return Poll::Ready(Ok(()));
        }
        if s.remote_fin || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if closed {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::UnexpectedEof,
                Error::ConnectionClosed,
            )));
        }
        set_waker(&mut s.read_waker, cx);
        Poll::Pending
    }
}

impl StreamWriter {
    /// Common checks of the write paths: Err when writing cannot succeed.
    fn check(st: &State, id: u32) -> Result<(), io::Error> {
        let Some(s) = st.streams.get(&id) else {
            return Err(io_err(io::ErrorKind::NotConnected, Error::ConnectionClosed));
        };
        if let Some(e) = s.error(id) {
            return Err(io_err(io::ErrorKind::ConnectionReset, e));
        }
        if st.closed {
            return Err(io_err(io::ErrorKind::BrokenPipe, Error::ConnectionClosed));
        }
        Ok(())
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let shared = &self.shared;
        let mut st = shared.lock();
        Self::check(&st, id)?;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::NotConnected,
                Error::ConnectionClosed,
            )));
        };
        if s.fin != FinState::Open {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::BrokenPipe,
                Error::InvalidState {
                    id,
                    what: "write after shutdown",
                },
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let space = OUT_BUF_CAP.saturating_sub(s.out.len());
        if space == 0 {
            set_waker(&mut s.write_waker, cx);
            return Poll::Pending;
        }
        let n = space.min(buf.len());
        s.out.extend_from_slice(&buf[..n]);
        st.schedule(id);
        shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = self.shared.lock();
        Self::check(&st, id)?;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        if s.out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        set_waker(&mut s.write_waker, cx);
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let shared = &self.shared;
        let mut st = shared.lock();
        if let Some(s) = st.streams.get(&id)
            && s.fin == FinState::Sent
        {
            return Poll::Ready(Ok(()));
        }
        Self::check(&st, id)?;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        if s.fin == FinState::Open {
            s.fin = FinState::Queued;
            st.schedule(id);
            shared.writer_wake.notify_one();
        }
        if let Some(s) = st.streams.get_mut(&id) {
            set_waker(&mut s.write_waker, cx);
        }
        Poll::Pending
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut st = shared.lock();
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.reader_alive = false;
            let n = s.recv_len;
            s.recv_buf.clear();
            s.recv_len = 0;
            st.buffered -= n;
            // Nobody will read this stream again: return its bytes to the
            // connection window so other streams keep flowing.
            shared.consumed(&mut st, None, n);
            shared.drained.notify_one();
        }
        shared.settle(&mut st, self.id);
        shared.check_finished(&mut st);
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut st = shared.lock();
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.writer_alive = false;
        }
        shared.settle(&mut st, self.id);
        shared.check_finished(&mut st);
    }
}

/// Builds the RST_STREAM control entry (kept here next to the stream logic).
pub(crate) fn rst(id: u32, code: u32) -> Control {
    Control::Frame(Frame::RstStream {
        stream_id: id,
        status: code,
    })
}
