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

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot, watch};
use tracing::debug;

use crate::frame::{self, Frame, Setting};
use crate::headers::{HeaderDecoder, HeaderEncoder};
use crate::stream::{FinState, Stream, StreamState, rst};
use crate::{Config, Error, HeaderError, Headers, RstStatus};

/// The window both sides assume before any SETTINGS (SPDY/3.1 default).
const DEFAULT_WINDOW: i64 = 64 * 1024;
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest DATA payload we send in one frame.
const DATA_CHUNK: usize = 16 * 1024;
/// Bytes of DATA the writer takes per batch before looking at control frames again.
const BATCH_BYTES: usize = 256 * 1024;
/// Control frames queued before the reader stops reading the peer.
const MAX_CONTROL_QUEUE: usize = 1024;
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
    pub streams: HashMap<u32, StreamState>,
    pub control: VecDeque<Control>,
    /// Streams with data or a FIN to send, in round-robin order.
    pub send_queue: VecDeque<u32>,
    accept: VecDeque<(u32, Headers)>,
    accept_waker: Option<Waker>,
    next_id: u32,
    last_peer_id: u32,
    next_ping: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    goaway_sent: bool,
    goaway_received: bool,
    incoming_dropped: bool,
    handles_dropped: bool,
    pub closed: bool,
    peer_flow_control: bool,
    peer_initial_window: i64,
    conn_send_window: i64,
    conn_recv_credit: i64,
    conn_recv_unacked: u32,
    /// Bytes sitting in receive buffers across all streams.
    pub buffered: usize,
    /// Peer-opened streams not yet done (bounded by `max_streams`).
    peer_open: usize,
}

impl State {
    /// Puts a stream in the writer's round-robin queue (once).
    pub fn schedule(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.in_send_queue
        {
            s.in_send_queue = true;
            self.send_queue.push_back(id);
        }
    }

    fn schedule_all(&mut self) {
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
    fn enforce_window(&self, s: &StreamState) -> bool {
        self.peer_flow_control || (s.local && !s.replied)
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub writer_wake: Notify,
    /// The application consumed received data (wakes a paused reader task).
    pub drained: Notify,
    /// The writer sent a batch (wakes a reader task paused on the control queue).
    written: Notify,
    closed_tx: watch::Sender<bool>,
    cfg: Config,
    is_client: bool,
    stream_window: i64,
    conn_window: i64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-updated in a way that
        // matters more than refusing all further service would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn check_header_size(&self, raw: &[u8]) -> Result<(), Error> {
        if raw.len() > self.cfg.max_header_block.max(frame::MAX_LENGTH / 2) {
            return Err(Error::Headers(HeaderError::TooLarge {
                limit: self.cfg.max_header_block.max(frame::MAX_LENGTH / 2),
            }));
        }
        Ok(())
    }

    fn peer_parity(&self, id: u32) -> bool {
        // Clients open odd ids, servers even ones.
        (id % 2 == 1) != self.is_client
    }

    /// Returns `n` consumed bytes as credit: to the stream (if still
    /// receiving) and to the connection, in WINDOW_UPDATEs once half a window
    /// has accumulated, so the peer sees a steady flow of credit.
    pub fn consumed(&self, st: &mut State, id: Option<u32>, n: usize) {
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
    pub fn reset_stream(&self, st: &mut State, id: u32, code: u32, send: bool) {
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
    pub fn settle(&self, st: &mut State, id: u32) {
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
    pub fn check_finished(&self, st: &mut State) {
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
    fn close(&self, st: &mut State) {
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
    fn fatal(&self, st: &mut State, status: u32, why: &str) {
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
    tokio::spawn(reader_task(shared.clone(), rd));
    tokio::spawn(writer_task(shared.clone(), wr));
    let conn = Connection {
        shared: shared.clone(),
        _guard: Arc::new(HandleGuard(shared.clone())),
    };
    (conn, Incoming { shared })
}

/// What the reader must wait for after handling a frame.
enum After {
    Continue,
    /// Stop reading until stream `id`'s buffer (or the connection's) drains.
    Drain(u32),
    Stop,
}

async fn reader_task<T: AsyncRead>(shared: Arc<Shared>, mut io: ReadHalf<T>) {
    let mut decoder = HeaderDecoder::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut closed = shared.closed_tx.subscribe();
    let max = shared.cfg.max_frame_len;
    loop {
        let parsed = frame::parse(&buf, max);
        match parsed {
            Ok(Some((f, used))) => {
                buf.advance(used);
                let after = handle_frame(&shared, &mut decoder, f);
                match after {
                    After::Continue => {}
                    After::Stop => return,
                    After::Drain(id) => {
                        if !wait_drained(&shared, id, &mut closed).await {
                            return;
                        }
                    }
                }
                if !wait_control_room(&shared, &mut closed).await {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let mut st = shared.lock();
                shared.fatal(&mut st, frame::GOAWAY_PROTOCOL_ERROR, &e.to_string());
                return;
            }
        }
        // Make room for the rest of the frame being read (its size is known
        // from the header once we have it, and was checked against the limit).
        let want = if buf.len() >= frame::HEADER_LEN {
            let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
            (frame::HEADER_LEN + len)
                .saturating_sub(buf.len())
                .max(4096)
        } else {
            16 * 1024
        };
        buf.reserve(want);
        tokio::select! {
            r = io.read_buf(&mut buf) => {
                let mut st = shared.lock();
                match r {
                    Ok(0) => {
                        debug!("spdy peer closed the connection");
                        shared.close(&mut st);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!("spdy read error: {e}");
                        shared.close(&mut st);
                        return;
                    }
                }
            }
            _ = closed.wait_for(|c| *c) => return,
        }
    }
}

/// Waits while a non-flow-controlling peer has overrun stream `id` or the
/// connection window. False when the connection closed meanwhile.
async fn wait_drained(shared: &Shared, id: u32, closed: &mut watch::Receiver<bool>) -> bool {
    loop {
        {
            let st = shared.lock();
            if st.closed {
                return false;
            }
            let over_stream = st
                .streams
                .get(&id)
                .is_some_and(|s| s.reset.is_none() && s.recv_len as i64 > shared.stream_window);
            let over_conn = st.buffered as i64 > shared.conn_window;
            if !over_stream && !over_conn {
                return true;
            }
        }
        tokio::select! {
            _ = shared.drained.notified() => {}
            _ = closed.wait_for(|c| *c) => return false,
        }
    }
}

/// Waits while the control queue is over its bound (a peer flooding us with
/// frames that need answers while not reading them).
async fn wait_control_room(shared: &Shared, closed: &mut watch::Receiver<bool>) -> bool {
    loop {
        {
            let st = shared.lock();
            if st.closed {
                return false;
            }
            if st.control.len() <= MAX_CONTROL_QUEUE {
                return true;
            }
        }
        tokio::select! {
            _ = shared.written.notified() => {}
            _ = closed.wait_for(|c| *c) => return false,
        }
    }
}

/// Decodes a header block in wire order. Ok(Err) is a stream-level problem
/// (RST the stream, keep the connection); Err means the zlib stream is broken
/// and the connection has been closed.
fn decode_block(
    shared: &Shared,
    st: &mut State,
    decoder: &mut HeaderDecoder,
    block: &[u8],
) -> Result<Result<Headers, HeaderError>, ()> {
    match decoder.decode(block, shared.cfg.max_header_block) {
        Ok(h) => Ok(Ok(h)),
        Err(e) if e.is_fatal() => {
            shared.fatal(st, frame::GOAWAY_PROTOCOL_ERROR, &e.to_string());
            Err(())
        }
        Err(e) => Ok(Err(e)),
    }
}

fn header_rst_code(e: &HeaderError) -> u32 {
    match e {
        HeaderError::TooLarge { .. } => RstStatus::FrameTooLarge.code(),
        _ => RstStatus::ProtocolError.code(),
    }
}

fn handle_frame(shared: &Shared, decoder: &mut HeaderDecoder, f: Frame) -> After {
    let mut st = shared.lock();
    let st = &mut *st;
    if st.closed {
        return After::Stop;
    }
    let after = match f {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => on_data(shared, st, stream_id, fin, data),
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            header_block,
            ..
        } => {
            let Ok(headers) = decode_block(shared, st, decoder, &header_block) else {
                return After::Stop;
            };
            on_syn_stream(shared, st, stream_id, fin, unidirectional, headers);
            After::Continue
        }
        Frame::SynReply {
            stream_id,
            fin,
            header_block,
        } => {
            let Ok(headers) = decode_block(shared, st, decoder, &header_block) else {
                return After::Stop;
            };
            on_syn_reply(shared, st, stream_id, fin, headers);
            After::Continue
        }
        Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            let Ok(headers) = decode_block(shared, st, decoder, &header_block) else {
                return After::Stop;
            };
            // Extra headers carry nothing Kubernetes uses; only FIN matters.
            match headers {
                Err(e) => shared.reset_stream(st, stream_id, header_rst_code(&e), true),
                Ok(_) => {
                    if fin && let Some(s) = st.streams.get_mut(&stream_id) {
                        s.remote_fin = true;
                        s.wake_all();
                    }
                }
            }
            shared.settle(st, stream_id);
            After::Continue
        }
        Frame::RstStream { stream_id, status } => {
            shared.reset_stream(st, stream_id, status, false);
            shared.settle(st, stream_id);
            After::Continue
        }
        Frame::Settings { entries, .. } => {
            st.peer_flow_control = true;
            for e in entries {
                if e.id == frame::SETTINGS_INITIAL_WINDOW_SIZE && i64::from(e.value) <= MAX_WINDOW {
                    // Applies to open streams too: shift every send window.
                    let delta = i64::from(e.value) - st.peer_initial_window;
                    st.peer_initial_window = i64::from(e.value);
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
            }
            st.schedule_all();
            shared.writer_wake.notify_one();
            After::Continue
        }
        Frame::Ping { id } => {
            if id != 0 {
                if shared.peer_parity(id) {
                    st.control.push_back(Control::Frame(Frame::Ping { id }));
                    shared.writer_wake.notify_one();
                } else if let Some(tx) = st.pings.remove(&id) {
                    let _ = tx.send(());
                }
            }
            After::Continue
        }
        Frame::GoAway {
            last_good_stream_id,
            ..
        } => {
            st.goaway_received = true;
            // Our streams above last_good were never seen by the peer.
            let refused: Vec<u32> = st
                .streams
                .iter()
                .filter(|(id, s)| s.local && **id > last_good_stream_id && !s.done())
                .map(|(id, _)| *id)
                .collect();
            for id in refused {
                shared.reset_stream(st, id, RstStatus::RefusedStream.code(), false);
                shared.settle(st, id);
            }
            if let Some(w) = st.accept_waker.take() {
                w.wake();
            }
            After::Continue
        }
        Frame::WindowUpdate { stream_id, delta } => {
            st.peer_flow_control = true;
            if delta != 0 {
                on_window_update(shared, st, stream_id, delta);
            }
            After::Continue
        }
        Frame::Unknown {
            version,
            kind,
            payload,
            ..
        } => {
            if version != frame::VERSION {
                if kind == 1 && payload.len() >= 4 {
                    let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    st.control
                        .push_back(rst(id, RstStatus::UnsupportedVersion.code()));
                }
                // Its header blocks (if any) used a zlib stream we cannot
                // follow, so the connection is unusable.
                shared.fatal(
                    st,
                    frame::GOAWAY_PROTOCOL_ERROR,
                    &format!("unsupported SPDY version {version}"),
                );
                return After::Stop;
            }
            // Unknown control frame types are ignored, per the spec.
            After::Continue
        }
    };
    shared.check_finished(st);
    if st.closed {
        return After::Stop;
    }
    after
}

fn on_data(shared: &Shared, st: &mut State, id: u32, fin: bool, data: bytes::Bytes) -> After {
    let len = data.len();
    st.conn_recv_credit -= len as i64;
    if st.peer_flow_control && st.conn_recv_credit < 0 {
        shared.fatal(
            st,
            frame::GOAWAY_PROTOCOL_ERROR,
            "peer overran the connection flow-control window",
        );
        return After::Stop;
    }
    let peer_fc = st.peer_flow_control;
    let Some(s) = st.streams.get_mut(&id) else {
        // A stream we already forgot (reset or closed): its bytes still
        // count against the connection window, so credit them back.
        shared.consumed(st, None, len);
        return After::Continue;
    };
    if s.reset.is_some() {
        shared.consumed(st, None, len);
        return After::Continue;
    }
    if s.remote_fin {
        shared.reset_stream(st, id, RstStatus::StreamAlreadyClosed.code(), true);
        shared.consumed(st, None, len);
        shared.settle(st, id);
        return After::Continue;
    }
    s.recv_credit -= len as i64;
    if peer_fc && s.recv_credit < 0 {
        shared.reset_stream(st, id, RstStatus::FlowControlError.code(), true);
        shared.consumed(st, None, len);
        shared.settle(st, id);
        return After::Continue;
    }
    let mut credit_now = 0;
    if s.reader_alive {
        if len > 0 {
            s.recv_buf.push_back(data);
            s.recv_len += len;
        }
    } else {
        credit_now = len;
    }
    if fin {
        s.remote_fin = true;
    }
    if let Some(w) = s.read_waker.take() {
        w.wake();
    }
    if fin && let Some(w) = s.reply_waker.take() {
        w.wake();
    }
    let recv_len = s.recv_len;
    if credit_now > 0 {
        shared.consumed(st, None, credit_now);
    } else {
        st.buffered += len;
    }
    shared.settle(st, id);
    if !peer_fc
        && (recv_len as i64 > shared.stream_window || st.buffered as i64 > shared.conn_window)
    {
        return After::Drain(id);
    }
    After::Continue
}

fn on_syn_stream(
    shared: &Shared,
    st: &mut State,
    id: u32,
    fin: bool,
    unidirectional: bool,
    headers: Result<Headers, HeaderError>,
) {
    if id == 0 || !shared.peer_parity(id) || id <= st.last_peer_id {
        // The id is not one the peer may open now; an existing stream with
        // it is broken too.
        if st.streams.contains_key(&id) {
            shared.reset_stream(st, id, RstStatus::ProtocolError.code(), true);
            shared.settle(st, id);
        } else if id != 0 {
            st.control
                .push_back(rst(id, RstStatus::ProtocolError.code()));
            shared.writer_wake.notify_one();
        }
        return;
    }
    st.last_peer_id = id;
    let refuse = |st: &mut State, code: RstStatus| {
        st.control.push_back(rst(id, code.code()));
        shared.writer_wake.notify_one();
    };
    let headers = match headers {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                st,
                RstStatus::from_code(header_rst_code(&e)).unwrap_or(RstStatus::ProtocolError),
            );
        }
    };
    if st.goaway_sent || st.incoming_dropped || st.peer_open >= shared.cfg.max_streams {
        return refuse(st, RstStatus::RefusedStream);
    }
    let mut s = StreamState::new(
        false,
        st.peer_initial_window,
        shared.stream_window.max(DEFAULT_WINDOW),
    );
    s.remote_fin = fin;
    if unidirectional {
        // We may not send on it: our side is closed from the start.
        s.fin = FinState::Sent;
        s.replied = true;
    }
    s.counted = true;
    st.peer_open += 1;
    st.streams.insert(id, s);
    st.accept.push_back((id, headers));
    if let Some(w) = st.accept_waker.take() {
        w.wake();
    }
}

fn on_syn_reply(
    shared: &Shared,
    st: &mut State,
    id: u32,
    fin: bool,
    headers: Result<Headers, HeaderError>,
) {
    let Some(s) = st.streams.get_mut(&id) else {
        // Reply for a stream we already reset or forgot: nothing to do.
        return;
    };
    if s.reset.is_some() {
        return;
    }
    if !s.local {
        shared.reset_stream(st, id, RstStatus::ProtocolError.code(), true);
    } else if s.replied {
        shared.reset_stream(st, id, RstStatus::StreamInUse.code(), true);
    } else {
        match headers {
            Err(e) => shared.reset_stream(st, id, header_rst_code(&e), true),
            Ok(h) => {
                s.replied = true;
                s.reply = Some(h);
                if fin {
                    s.remote_fin = true;
                }
                s.wake_all();
                // Windows may no longer be enforced (see the module docs).
                st.schedule(id);
                shared.writer_wake.notify_one();
            }
        }
    }
    shared.settle(st, id);
}

fn on_window_update(shared: &Shared, st: &mut State, id: u32, delta: u32) {
    let delta = i64::from(delta);
    if id == 0 {
        st.conn_send_window += delta;
        if st.conn_send_window > MAX_WINDOW {
            shared.fatal(
                st,
                frame::GOAWAY_PROTOCOL_ERROR,
                "connection window grew past 2^31-1",
            );
            return;
        }
        st.schedule_all();
    } else {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.send_window += delta;
        if s.send_window > MAX_WINDOW {
            shared.reset_stream(st, id, RstStatus::FlowControlError.code(), true);
            shared.settle(st, id);
            return;
        }
        st.schedule(id);
    }
    shared.writer_wake.notify_one();
}

/// Moves the next batch of frames out of the state: all queued control
/// frames, then DATA round-robin within windows and `BATCH_BYTES`. Returns
/// true when the connection is closed (send the control frames, then stop).
fn take_batch(shared: &Shared, st: &mut State, out: &mut Vec<Control>) -> bool {
    out.extend(st.control.drain(..));
    if st.closed {
        st.send_queue.clear();
        return true;
    }
    let mut budget = BATCH_BYTES;
    while budget > 0 {
        let Some(id) = st.send_queue.pop_front() else {
            break;
        };
        let enforce;
        {
            let Some(s) = st.streams.get(&id) else {
                continue;
            };
            enforce = st.enforce_window(s);
        }
        let conn_window = st.conn_send_window;
        let Some(s) = st.streams.get_mut(&id) else {
            continue;
        };
        s.in_send_queue = false;
        // Peer-opened streams send nothing before our SYN_REPLY.
        if s.reset.is_some() || s.fin == FinState::Sent || !s.replied && !s.local {
            continue;
        }
        let mut frame = None;
        if !s.out.is_empty() {
            let allowed = if enforce {
                s.send_window.min(conn_window).max(0) as usize
            } else {
                usize::MAX
            };
            let n = s.out.len().min(DATA_CHUNK).min(allowed).min(budget);
            if n == 0 {
                // Blocked on the window: a WINDOW_UPDATE reschedules it.
                continue;
            }
            let data = s.out.split_to(n).freeze();
            let fin = s.out.is_empty() && s.fin == FinState::Queued;
            s.send_window -= n as i64;
            budget -= n;
            frame = Some((data, fin, n));
        } else if s.fin == FinState::Queued {
            frame = Some((bytes::Bytes::new(), true, 0));
        }
        let Some((data, fin, n)) = frame else {
            continue;
        };
        if fin {
            s.fin = FinState::Sent;
        }
        s.wake_writer();
        let more = !s.out.is_empty();
        st.conn_send_window -= n as i64;
        out.push(Control::Frame(Frame::Data {
            stream_id: id,
            fin,
            data,
        }));
        if more {
            st.schedule(id);
        }
        if fin {
            shared.settle(st, id);
        }
    }
    shared.check_finished(st);
    false
}

async fn writer_task<T: AsyncWrite>(shared: Arc<Shared>, mut io: WriteHalf<T>) {
    let mut encoder = HeaderEncoder::new();
    let mut batch = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut block = Vec::new();
    loop {
        let closing = {
            let mut st = shared.lock();
            take_batch(&shared, &mut st, &mut batch)
        };
        if batch.is_empty() {
            if closing {
                break;
            }
            shared.writer_wake.notified().await;
            continue;
        }
        buf.clear();
        let mut failed = None;
        for item in batch.drain(..) {
            let (f, raw) = match item {
                Control::Frame(f) => {
                    frame::encode(&f, &mut buf);
                    continue;
                }
                Control::SynStream { id, raw, fin } => (
                    Frame::SynStream {
                        stream_id: id,
                        associated_to: 0,
                        priority: 0,
                        slot: 0,
                        fin,
                        unidirectional: false,
                        header_block: bytes::Bytes::new(),
                    },
                    raw,
                ),
                Control::SynReply { id, raw, fin } => (
                    Frame::SynReply {
                        stream_id: id,
                        fin,
                        header_block: bytes::Bytes::new(),
                    },
                    raw,
                ),
            };
            block.clear();
            if let Err(e) = encoder.compress(&raw, &mut block) {
                failed = Some(e.to_string());
                break;
            }
            let f = match f {
                Frame::SynStream { stream_id, fin, .. } => Frame::SynStream {
                    stream_id,
                    associated_to: 0,
                    priority: 0,
                    slot: 0,
                    fin,
                    unidirectional: false,
                    header_block: bytes::Bytes::copy_from_slice(&block),
                },
                Frame::SynReply { stream_id, fin, .. } => Frame::SynReply {
                    stream_id,
                    fin,
                    header_block: bytes::Bytes::copy_from_slice(&block),
                },
                other => other,
            };
            frame::encode(&f, &mut buf);
        }
        if let Some(why) = failed {
            // The zlib stream is now out of step with the peer's.
            {
                let mut st = shared.lock();
                shared.fatal(&mut st, frame::GOAWAY_INTERNAL_ERROR, &why);
            }
            let _ = io.write_all(&buf).await;
            break;
        }
        let res = async {
            io.write_all(&buf).await?;
            io.flush().await
        }
        .await;
        shared.written.notify_one();
        if let Err(e) = res {
            debug!("spdy write error: {e}");
            let mut st = shared.lock();
            shared.close(&mut st);
            return;
        }
        if closing {
            break;
        }
    }
    let _ = io.shutdown().await;
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
