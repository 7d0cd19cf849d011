//! The connection's writer task: sends queued control frames, then DATA
//! round-robin within the peer's windows, compressing header blocks in wire
//! order (see `conn.rs`).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tracing::debug;

use crate::conn::{BATCH_BYTES, Control, DATA_CHUNK, Shared, State};
use crate::frame::{self, Frame};
use crate::headers::HeaderEncoder;
use crate::stream::FinState;

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

pub(crate) async fn writer_task<T: AsyncWrite>(shared: Arc<Shared>, mut io: WriteHalf<T>) {
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
