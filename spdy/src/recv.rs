//! The connection's reader task: parses frames from the peer and applies
//! them to the shared state. It never waits on the socket's write side;
//! answers go to the control queue (see `conn.rs`).

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadHalf};
use tokio::sync::watch;
use tracing::debug;

use crate::conn::{Control, DEFAULT_WINDOW, MAX_CONTROL_QUEUE, MAX_WINDOW, Shared, State};
use crate::frame::{self, Frame};
use crate::headers::HeaderDecoder;
use crate::stream::{FinState, StreamState, rst};
use crate::{HeaderError, Headers, RstStatus};

/// What the reader must wait for after handling a frame.
enum After {
    Continue,
    /// Stop reading until stream `id`'s buffer (or the connection's) drains.
    Drain(u32),
    Stop,
}

pub(crate) async fn reader_task<T: AsyncRead>(shared: Arc<Shared>, mut io: ReadHalf<T>) {
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
