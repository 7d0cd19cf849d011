//! The multiplexer: connection state, its reader and writer tasks, and the
//! [`Connection`] / [`Incoming`] handles.
//!
//! Two tasks per connection. The reader owns the read half and the header
//! decoder: it parses frames and updates state, and never waits on the
//! socket's write side (so two peers both blocked writing cannot deadlock
//! each other); the frames it must send (PING echoes, RSTs, WINDOW_UPDATEs)
//! go to a queue. The writer owns the write half and the header encoder:
//! header blocks are compressed in the order frames hit the wire, which the
//! shared zlib stream requires. It sends queued control frames first, then
//! DATA round-robin over streams, within the peer's windows.
//!
//! Flow control and spdystream: moby/spdystream (kubectl, crictl, client-go)
//! never sends SETTINGS or WINDOW_UPDATE and ignores ours. We send SETTINGS
//! as our first frame; a peer that sent SETTINGS or WINDOW_UPDATE
//! (`peer_flow_control`) gets strict SPDY/3.1 treatment: we wait for its
//! credit and reset streams that overrun ours. A peer that never did is not
//! waited for (it would never credit us), and when it overruns a stream's
//! window or the connection window we stop reading the socket until the
//! application drains the buffer: TCP backpressure, as spdystream itself
//! does. Streams we open still respect the default window until their
//! SYN_REPLY, by which time a flow-controlling peer's SETTINGS has arrived.
//!
//! Bounded memory: frames ≤ `max_frame_len`; header blocks ≤
//! `max_header_block`; peer-opened streams ≤ `max_streams`; receive buffers ≤
//! the windows (plus one frame); per-stream send buffers ≤ `OUT_BUF_CAP`; the
//! control queue ≤ `MAX_CONTROL_QUEUE` (the reader pauses when the peer makes
//! us queue more than it reads).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, oneshot, watch};
use tracing::debug;

use crate::frame::{self, Frame, Setting};
use crate::headers::HeaderEncoder;
use crate::stream::{FinState, Stream, StreamState, rst};
use crate::{Config, Error, HeaderError, Headers, RstStatus};

/// The window both sides assume before any SETTINGS (SPDY/3.1 default).
pub(crate) const DEFAULT_WINDOW: i64 = 64 * 1024;
pub(crate) const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest DATA payload we send in one frame.
pub(crate) const DATA_CHUNK: usize = 16 * 1024;
/// Bytes of DATA the writer takes per batch before looking at control frames again.
pub(crate) const BATCH_BYTES: usize = 256 * 1024;
/// Control frames queued before the reader stops reading the peer.
pub(crate) const MAX_CONTROL_QUEUE: usize = 1024;
/// The connection-level receive window, as a multiple of the stream window.
const CONN_WINDOW_FACTOR: i64 = 16;

/// Something for the writer to send. Header blocks are kept raw so the
/// writer compresses them in wire order.
pub(crate) enum Control {
    Frame(Frame),
    SynStream { id: u32, raw: Vec<u8>, fin: bool },
    SynReply { id: u32, raw: Vec<u8>, fin: bool },
}

/// Everything the tasks and the handles share, under one mutex (never held
/// across an await).
pub(crate) struct State {
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) control: VecDeque<Control>,
    /// Streams with data or a FIN to send, in round-robin order.
    pub(crate) send_queue: VecDeque<u32>,
    pub(crate) accept: VecDeque<(u32, Headers)>,
    pub(crate) accept_waker: Option<Waker>,
    pub(crate) next_id: u32,
    pub(crate) last_peer_id: u32,
    pub(crate) next_ping: u32,
    pub(crate) pings: HashMap<u32, oneshot::Sender<()>>,
    pub(crate) goaway_sent: bool,
    pub(crate) goaway_received: bool,
    pub(crate) incoming_dropped: bool,
    pub(crate) handles_dropped: bool,
    pub(crate) closed: bool,
    pub(crate) peer_flow_control: bool,
    pub(crate) peer_initial_window: i64,
    pub(crate) conn_send_window: i64,
    pub(crate) conn_recv_credit: i64,
    pub(crate) conn_recv_unacked: u32,
    /// Bytes sitting in receive buffers across all streams.
    pub(crate) buffered: usize,
    /// Peer-opened streams not yet done (bounded by `max_streams`).
    pub(crate) peer_open: usize,
}

impl State {
    /// Puts a stream in the writer's round-robin queue (once).
    pub(crate) fn schedule(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.in_send_queue
        {
            s.in_send_queue = true;
            self.send_queue.push_back(id);
        }
    }

    pub(crate) fn schedule_all(&mut self) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.out.is_empty() || s.fin == FinState::Queued)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.schedule(id);
        }
    }

    /// Whether DATA on `s` must wait for the peer's window.
    pub(crate) fn enforce_window(&self, s: &StreamState) -> bool {
        self.peer_flow_control || (s.local && !s.replied)
    }
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) writer_wake: Notify,
    /// The application consumed received data (wakes a paused reader task).
    pub(crate) drained: Notify,
    /// The writer sent a batch (wakes a reader task paused on the control queue).
    pub(crate) written: Notify,
    pub(crate) closed_tx: watch::Sender<bool>,
    pub(crate) cfg: Config,
    pub(crate) is_client: bool,
    pub(crate) stream_window: i64,
    pub(crate) conn_window: i64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-updated in a way that
        // matters more than refusing all further service would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_header_size(&self, raw: &[u8]) -> Result<(), Error> {
        if raw.len() > self.cfg.max_header_block.max(frame::MAX_LENGTH / 2) {
            return Err(Error::Headers(HeaderError::TooLarge {
                limit: self.cfg.max_header_block.max(frame::MAX_LENGTH / 2),
            }));
        }
        Ok(())
    }

    pub(crate) fn peer_parity(&self, id: u32) -> bool {
        // Clients open odd ids, servers even ones.
        (id % 2 == 1) != self.is_client
    }

    /// Returns `n` consumed bytes as credit: to the stream (if still
    /// receiving) and to the connection, in WINDOW_UPDATEs once half a window
    /// has accumulated, so the peer sees a steady flow of credit.
    pub(crate) fn consumed(&self, st: &mut State, id: Option<u32>, n: usize) {
        if n == 0 {
            return;
        }
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        st.conn_recv_unacked = st.conn_recv_unacked.saturating_add(n32);
        if i64::from(st.conn_recv_unacked) >= self.conn_window / 2 {
            let delta = st.conn_recv_unacked;
            st.conn_recv_unacked = 0;
            st.conn_recv_credit += i64::from(delta);
            st.control.push_back(Control::Frame(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            }));
            self.writer_wake.notify_one();
        }
        if let Some(id) = id
            && let Some(s) = st.streams.get_mut(&id)
            && !s.remote_fin
            && s.reset.is_none()
        {
            s.recv_unacked = s.recv_unacked.saturating_add(n32);
            if i64::from(s.recv_unacked) >= self.stream_window / 2 {
                let delta = s.recv_unacked;
                s.recv_unacked = 0;
                s.recv_credit += i64::from(delta);
                st.control.push_back(Control::Frame(Frame::WindowUpdate {
                    stream_id: id,
                    delta,
                }));
                self.writer_wake.notify_one();
            }
        }
    }

    /// Resets a stream: queues RST_STREAM when `send` and the stream is not
    /// already finished, drops its buffers and wakes its handles.
    pub(crate) fn reset_stream(&self, st: &mut State, id: u32, code: u32, send: bool) {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        let was_done = s.done();
        s.reset = Some((code, !send));
        s.out.clear();
        // A peer that finished sending (FIN) and then reset only aborts our
        // direction: what it sent stays readable. Otherwise drop it.
        if send || !s.remote_fin || !s.reader_alive {
            let n = s.recv_len;
            s.recv_buf.clear();
            s.recv_len = 0;
            st.buffered -= n;
            self.consumed(st, None, n);
            self.drained.notify_one();
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.wake_all();
        }
        if send && !was_done && !st.closed {
            st.control.push_back(rst(id, code));
            self.writer_wake.notify_one();
        }
    }

    /// Updates bookkeeping after a change to stream `id`: uncounts it when
    /// done, forgets it when no handle is left, resets it (CANCEL) when the
    /// handles went away before it finished.
    pub(crate) fn settle(&self, st: &mut State, id: u32) {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        let abandoned = !s.reader_alive && !s.writer_alive;
        if abandoned && !s.done() {
            self.reset_stream(st, id, RstStatus::Cancel.code(), true);
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        if s.done() && s.counted {
            s.counted = false;
            st.peer_open -= 1;
        }
        if abandoned {
            st.streams.remove(&id);
        }
    }

    /// Ends the connection gracefully once nothing is left to do: after a
    /// GOAWAY (either way) or once every handle is gone, when no stream is
    /// still open.
    pub(crate) fn check_finished(&self, st: &mut State) {
        if st.closed {
            return;
        }
        let winding_down =
            st.goaway_sent || st.goaway_received || (st.handles_dropped && st.incoming_dropped);
        if winding_down && st.accept.is_empty() && st.streams.values().all(|s| s.done()) {
            debug!("spdy connection finished");
            self.close(st);
        }
    }

    /// Marks the connection closed and wakes everyone. The writer still sends
    /// the control frames already queued (e.g. GOAWAY) before shutting down.
    pub(crate) fn close(&self, st: &mut State) {
        if st.closed {
            return;
        }
        st.closed = true;
        for s in st.streams.values_mut() {
            s.wake_all();
        }
        if let Some(w) = st.accept_waker.take() {
            w.wake();
        }
        // Dropping the senders fails the pending pings.
        st.pings.clear();
        self.closed_tx.send_replace(true);
        self.writer_wake.notify_one();
        self.drained.notify_one();
        self.written.notify_one();
    }

    /// Sends GOAWAY with `status` and closes: the peer broke the protocol.
    pub(crate) fn fatal(&self, st: &mut State, status: u32, why: &str) {
        debug!("spdy connection error: {why}");
        if !st.goaway_sent && !st.closed {
            st.goaway_sent = true;
            st.control.push_back(Control::Frame(Frame::GoAway {
                last_good_stream_id: st.last_peer_id,
                status,
            }));
        }
        self.close(st);
    }
}

pub(crate) fn start<T>(io: T, cfg: Config, is_client: bool) -> (Connection, Incoming)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream_window = i64::from(cfg.recv_window).clamp(1, MAX_WINDOW);
    let conn_window = (stream_window * CONN_WINDOW_FACTOR).clamp(DEFAULT_WINDOW, MAX_WINDOW);
    let mut control = VecDeque::new();
    // SETTINGS first: it tells a flow-controlling peer our window, and that
    // we do flow control at all (see the module docs).
    control.push_back(Control::Frame(Frame::Settings {
        clear: false,
        entries: vec![Setting {
            flags: 0,
            id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
            value: stream_window as u32,
        }],
    }));
    if conn_window > DEFAULT_WINDOW {
        control.push_back(Control::Frame(Frame::WindowUpdate {
            stream_id: 0,
            delta: (conn_window - DEFAULT_WINDOW) as u32,
        }));
    }
    let state = State {
        streams: HashMap::new(),
        control,
        send_queue: VecDeque::new(),
        accept: VecDeque::new(),
        accept_waker: None,
        next_id: if is_client { 1 } else { 2 },
        last_peer_id: 0,
        next_ping: if is_client { 1 } else { 2 },
        pings: HashMap::new(),
        goaway_sent: false,
        goaway_received: false,
        incoming_dropped: false,
        handles_dropped: false,
        closed: false,
        peer_flow_control: false,
        peer_initial_window: DEFAULT_WINDOW,
        conn_send_window: DEFAULT_WINDOW,
        // Lenient by the default window: the peer may send before it sees
        // our WINDOW_UPDATE, but never more than the default beyond it.
        conn_recv_credit: conn_window,
        conn_recv_unacked: 0,
        buffered: 0,
        peer_open: 0,
    };
    let (closed_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        writer_wake: Notify::new(),
        drained: Notify::new(),
        written: Notify::new(),
        closed_tx,
        cfg,
        is_client,
        stream_window,
        conn_window,
    });
    let (rd, wr) = tokio::io::split(io);
    tokio::spawn(crate::recv::reader_task(shared.clone(), rd));
    tokio::spawn(crate::send::writer_task(shared.clone(), wr));
    let conn = Connection {
        shared: shared.clone(),
        _guard: Arc::new(HandleGuard(shared.clone())),
    };
    (conn, Incoming { shared })
}

/// Drop guard shared by all clones of a [`Connection`].
struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.handles_dropped = true;
        self.0.check_finished(&mut st);
    }
}

/// Handle to a SPDY connection; clones share it. The connection lives on (in
/// its tasks) while streams are open or the peer keeps it; it ends on I/O
/// EOF or error, a protocol error, or after GOAWAY once all streams are done.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    _guard: Arc<HandleGuard>,
}

impl Connection {
    /// Opens a stream (SYN_STREAM). With `fin` our side is closed at once.
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, Error> {
        let raw = HeaderEncoder::raw_block(&headers)?;
        self.shared.check_header_size(&raw)?;
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::ConnectionClosed);
        }
        if st.goaway_sent || st.goaway_received {
            return Err(Error::GoingAway);
        }
        let id = st.next_id;
        if id > 0x7fff_ffff {
            return Err(Error::StreamIdsExhausted);
        }
        st.next_id += 2;
        let mut s = StreamState::new(
            true,
            st.peer_initial_window,
            self.shared.stream_window.max(DEFAULT_WINDOW),
        );
        if fin {
            s.fin = FinState::Sent;
        }
        st.streams.insert(id, s);
        // Queued under the same lock that picked the id, so ids hit the wire
        // in increasing order as the spec requires.
        st.control.push_back(Control::SynStream { id, raw, fin });
        self.shared.writer_wake.notify_one();
        drop(st);
        Ok(Stream::new(id, headers, self.shared.clone()))
    }

    /// Sends a PING and waits for the echo; returns the round trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let rx = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::ConnectionClosed);
            }
            let id = st.next_ping;
            // Keep our parity and stay within 31 bits.
            st.next_ping = if id >= 0x7fff_fffd {
                id % 2 + 2
            } else {
                id + 2
            };
            let (tx, rx) = oneshot::channel();
            st.pings.insert(id, tx);
            st.control.push_back(Control::Frame(Frame::Ping { id }));
            self.shared.writer_wake.notify_one();
            rx
        };
        let start = Instant::now();
        rx.await.map_err(|_| Error::ConnectionClosed)?;
        Ok(start.elapsed())
    }

    /// Sends GOAWAY: no new streams are accepted from the peer (and none may
    /// be opened); the connection closes once the open streams are done.
    pub async fn goaway(&self) {
        let mut st = self.shared.lock();
        if !st.goaway_sent && !st.closed {
            st.goaway_sent = true;
            let last = st.last_peer_id;
            st.control.push_back(Control::Frame(Frame::GoAway {
                last_good_stream_id: last,
                status: frame::GOAWAY_OK,
            }));
            self.shared.writer_wake.notify_one();
            if let Some(w) = st.accept_waker.take() {
                w.wake();
            }
        }
        self.shared.check_finished(&mut st);
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed_tx.borrow()
    }
}

/// Streams the peer opens, in order of arrival.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next peer-opened stream; `None` once the connection ended or we
    /// sent GOAWAY and the queue is empty.
    pub async fn accept(&mut self) -> Option<Stream> {
        let shared = self.shared.clone();
        poll_fn(|cx| {
            let mut st = shared.lock();
            if let Some((id, headers)) = st.accept.pop_front() {
                return Poll::Ready(Some(Stream::new(id, headers, shared.clone())));
            }
            if st.closed || st.goaway_sent {
                return Poll::Ready(None);
            }
            match &st.accept_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.accept_waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.incoming_dropped = true;
        // Streams nobody will accept: reset them.
        let pending: Vec<u32> = st.accept.drain(..).map(|(id, _)| id).collect();
        for id in pending {
            if let Some(s) = st.streams.get_mut(&id) {
                s.reader_alive = false;
                s.writer_alive = false;
            }
            self.shared.settle(&mut st, id);
        }
        self.shared.check_finished(&mut st);
    }
}
