//! SPDY/3 frame layout: parsing from and encoding to bytes.
//!
//! Header blocks stay compressed here: their zlib context is shared by every
//! frame of one direction of a connection, so only the connection can inflate
//! them, in wire order (see [`crate::headers`]).
//!
//! Wire layout (all integers big-endian):
//! ```text
//! control: |1| version:15 | type:16 | flags:8 | length:24 | payload
//! data:    |0| stream-id:31         | flags:8 | length:24 | payload
//! ```

use bytes::Bytes;

pub use crate::error::FrameError;

/// The protocol version this crate speaks in control frames.
pub const VERSION: u16 = 3;
/// Size of the common frame header.
pub const HEADER_LEN: usize = 8;
/// Largest value of the 24-bit length field.
pub const MAX_LENGTH: usize = 0x00ff_ffff;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// SETTINGS id of MAX_CONCURRENT_STREAMS.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;
/// SETTINGS id of INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// GOAWAY status: normal shutdown.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status: the peer broke the protocol.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
/// GOAWAY status: we failed internally.
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const ID_MASK: u32 = 0x7fff_ffff;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (PERSIST_VALUE = 1, PERSISTED = 2).
    pub flags: u8,
    /// 24-bit setting id.
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A SPDY/3 frame. Stream ids are 31-bit; the reserved top bit is dropped on
/// parse and never set on encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data {
        /// Stream id (never 0).
        stream_id: u32,
        /// FLAG_FIN: last frame from the sender on this stream.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// SYN_STREAM: opens a stream.
    SynStream {
        /// New stream id.
        stream_id: u32,
        /// Associated-To-Stream-ID (server push); 0 if none.
        associated_to: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// Credential slot.
        slot: u8,
        /// FLAG_FIN.
        fin: bool,
        /// FLAG_UNIDIRECTIONAL.
        unidirectional: bool,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// SYN_REPLY: accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// RST_STREAM: aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Status code (see [`crate::RstStatus`]).
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// Entries in wire order.
        entries: Vec<Setting>,
    },
    /// PING; the receiver echoes the id.
    Ping {
        /// Ping id: odd from clients, even from servers.
        id: u32,
    },
    /// GOAWAY: the sender accepts no new streams.
    GoAway {
        /// Highest stream id from the receiver that the sender processed.
        last_good_stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// HEADERS: extra headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// WINDOW_UPDATE: grants the sender more flow-control window; stream 0
    /// is the connection-level window (SPDY/3.1).
    WindowUpdate {
        /// Stream id, 0 for the connection.
        stream_id: u32,
        /// Window increment (31 bits).
        delta: u32,
    },
    /// A control frame of an unknown type or of a version other than 3,
    /// kept whole so the caller can decide (the spec says ignore unknown
    /// types; a foreign version is an error).
    Unknown {
        /// Version field.
        version: u16,
        /// Type field.
        kind: u16,
        /// Flags.
        flags: u8,
        /// Raw payload.
        payload: Bytes,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    // Callers check lengths first; a short slice reads as zeros rather than panicking.
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Parses one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more and
/// call again), or the frame and the number of bytes it took. Errors are
/// returned as soon as the 8-byte header shows the frame cannot be accepted,
/// so an oversized frame is never buffered.
pub fn parse(buf: &[u8], max_frame_len: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let first = be32(buf, 0);
    let flags = buf[4];
    let len = (be32(buf, 4) & 0x00ff_ffff) as usize;
    if len > max_frame_len {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_len,
        });
    }
    let control = first & 0x8000_0000 != 0;
    if !control && first & ID_MASK == 0 {
        return Err(FrameError::DataOnStreamZero);
    }
    if control {
        let version = ((first >> 16) & 0x7fff) as u16;
        let kind = (first & 0xffff) as u16;
        if version == VERSION {
            check_control_len(kind, len)?;
        }
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let p = &buf[HEADER_LEN..total];
    let frame = if control {
        parse_control(first, flags, p)?
    } else {
        Frame::Data {
            stream_id: first & ID_MASK,
            fin: flags & FLAG_FIN != 0,
            data: Bytes::copy_from_slice(p),
        }
    };
    Ok(Some((frame, total)))
}

/// Rejects impossible control frame lengths from the header alone.
fn check_control_len(kind: u16, len: usize) -> Result<(), FrameError> {
    let (name, ok) = match kind {
        TYPE_SYN_STREAM => ("SYN_STREAM", len >= 10),
        TYPE_SYN_REPLY => ("SYN_REPLY", len >= 4),
        TYPE_HEADERS => ("HEADERS", len >= 4),
        TYPE_RST_STREAM => ("RST_STREAM", len == 8),
        TYPE_SETTINGS => ("SETTINGS", len >= 4 && (len - 4).is_multiple_of(8)),
        TYPE_PING => ("PING", len == 4),
        TYPE_GOAWAY => ("GOAWAY", len == 8),
        TYPE_WINDOW_UPDATE => ("WINDOW_UPDATE", len == 8),
        _ => ("unknown", true),
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadLength { kind: name, len })
    }
}

fn parse_control(first: u32, flags: u8, p: &[u8]) -> Result<Frame, FrameError> {
    let version = ((first >> 16) & 0x7fff) as u16;
    let kind = (first & 0xffff) as u16;
    if version != VERSION {
        return Ok(Frame::Unknown {
            version,
            kind,
            flags,
            payload: Bytes::copy_from_slice(p),
        });
    }
    let fin = flags & FLAG_FIN != 0;
    Ok(match kind {
        TYPE_SYN_STREAM => Frame::SynStream {
            stream_id: be32(p, 0) & ID_MASK,
            associated_to: be32(p, 4) & ID_MASK,
            priority: p[8] >> 5,
            slot: p[9],
            fin,
            unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
            header_block: Bytes::copy_from_slice(&p[10..]),
        },
        TYPE_SYN_REPLY => Frame::SynReply {
            stream_id: be32(p, 0) & ID_MASK,
            fin,
            header_block: Bytes::copy_from_slice(&p[4..]),
        },
        TYPE_HEADERS => Frame::Headers {
            stream_id: be32(p, 0) & ID_MASK,
            fin,
            header_block: Bytes::copy_from_slice(&p[4..]),
        },
        TYPE_RST_STREAM => Frame::RstStream {
            stream_id: be32(p, 0) & ID_MASK,
            status: be32(p, 4),
        },
        TYPE_SETTINGS => {
            let n = be32(p, 0) as usize;
            // The count must agree with the length, or entries would be misread.
            if n != (p.len() - 4) / 8 {
                return Err(FrameError::BadLength {
                    kind: "SETTINGS",
                    len: p.len(),
                });
            }
            let entries = p[4..]
                .chunks_exact(8)
                .map(|e| {
                    let w = be32(e, 0);
                    Setting {
                        flags: (w >> 24) as u8,
                        id: w & 0x00ff_ffff,
                        value: be32(e, 4),
                    }
                })
                .collect();
            Frame::Settings {
                clear: flags & FLAG_CLEAR_SETTINGS != 0,
                entries,
            }
        }
        TYPE_PING => Frame::Ping { id: be32(p, 0) },
        TYPE_GOAWAY => Frame::GoAway {
            last_good_stream_id: be32(p, 0) & ID_MASK,
            status: be32(p, 4),
        },
        TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
            stream_id: be32(p, 0) & ID_MASK,
            delta: be32(p, 4) & ID_MASK,
        },
        _ => Frame::Unknown {
            version,
            kind,
            flags,
            payload: Bytes::copy_from_slice(p),
        },
    })
}

fn put_control(out: &mut Vec<u8>, version: u16, kind: u16, flags: u8, len: usize) {
    let first = 0x8000_0000 | (u32::from(version & 0x7fff) << 16) | u32::from(kind);
    out.extend_from_slice(&first.to_be_bytes());
    put_flags_len(out, flags, len);
}

fn put_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    // Payloads beyond 24 bits cannot be framed; callers keep within MAX_LENGTH.
    let len = len.min(MAX_LENGTH) as u32;
    out.extend_from_slice(&((u32::from(flags) << 24) | len).to_be_bytes());
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

/// Appends the wire form of `frame` to `out`.
///
/// Payloads longer than [`MAX_LENGTH`] cannot be represented; the connection
/// never builds such frames (data is chunked, header blocks are bounded).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            put_flags_len(out, fin_flag(*fin), data.len());
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            slot,
            fin,
            unidirectional,
            header_block,
        } => {
            let mut flags = fin_flag(*fin);
            if *unidirectional {
                flags |= FLAG_UNIDIRECTIONAL;
            }
            put_control(
                out,
                VERSION,
                TYPE_SYN_STREAM,
                flags,
                10 + header_block.len(),
            );
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&(associated_to & ID_MASK).to_be_bytes());
            out.push((priority & 0x07) << 5);
            out.push(*slot);
            out.extend_from_slice(header_block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            header_block,
        } => {
            put_control(
                out,
                VERSION,
                TYPE_SYN_REPLY,
                fin_flag(*fin),
                4 + header_block.len(),
            );
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(header_block);
        }
        Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            put_control(
                out,
                VERSION,
                TYPE_HEADERS,
                fin_flag(*fin),
                4 + header_block.len(),
            );
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            put_control(out, VERSION, TYPE_RST_STREAM, 0, 8);
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::Settings { clear, entries } => {
            let flags = if *clear { FLAG_CLEAR_SETTINGS } else { 0 };
            put_control(out, VERSION, TYPE_SETTINGS, flags, 4 + 8 * entries.len());
            out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for e in entries {
                let w = (u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff);
                out.extend_from_slice(&w.to_be_bytes());
                out.extend_from_slice(&e.value.to_be_bytes());
            }
        }
        Frame::Ping { id } => {
            put_control(out, VERSION, TYPE_PING, 0, 4);
            out.extend_from_slice(&id.to_be_bytes());
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            put_control(out, VERSION, TYPE_GOAWAY, 0, 8);
            out.extend_from_slice(&(last_good_stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::WindowUpdate { stream_id, delta } => {
            put_control(out, VERSION, TYPE_WINDOW_UPDATE, 0, 8);
            out.extend_from_slice(&(stream_id & ID_MASK).to_be_bytes());
            out.extend_from_slice(&(delta & ID_MASK).to_be_bytes());
        }
        Frame::Unknown {
            version,
            kind,
            flags,
            payload,
        } => {
            put_control(out, *version, *kind, *flags, payload.len());
            out.extend_from_slice(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn round_trip(f: Frame) {
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        let (g, n) = parse(&buf, MAX).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(g, f);
        // Every strict prefix is incomplete, never an error or a frame.
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], MAX).unwrap(), None, "prefix {cut}");
        }
    }

    #[test]
    fn round_trips_every_type() {
        round_trip(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"hello"),
        });
        round_trip(Frame::Data {
            stream_id: 0x7fff_ffff,
            fin: true,
            data: Bytes::new(),
        });
        round_trip(Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 9,
            fin: true,
            unidirectional: true,
            header_block: Bytes::from_static(b"\x78\xbb"),
        });
        round_trip(Frame::SynReply {
            stream_id: 3,
            fin: true,
            header_block: Bytes::from_static(b"abc"),
        });
        round_trip(Frame::Headers {
            stream_id: 5,
            fin: false,
            header_block: Bytes::new(),
        });
        round_trip(Frame::RstStream {
            stream_id: 5,
            status: 5,
        });
        round_trip(Frame::Settings {
            clear: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 65536,
                },
                Setting {
                    flags: 0,
                    id: SETTINGS_MAX_CONCURRENT_STREAMS,
                    value: 100,
                },
            ],
        });
        round_trip(Frame::Settings {
            clear: false,
            entries: vec![],
        });
        round_trip(Frame::Ping { id: 0xffff_ffff });
        round_trip(Frame::GoAway {
            last_good_stream_id: 7,
            status: GOAWAY_PROTOCOL_ERROR,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7fff_ffff,
        });
        round_trip(Frame::Unknown {
            version: 3,
            kind: 10,
            flags: 0,
            payload: Bytes::from_static(b"cred"),
        });
        round_trip(Frame::Unknown {
            version: 2,
            kind: 1,
            flags: 1,
            payload: Bytes::from_static(b"0123456789"),
        });
    }

    #[test]
    fn known_wire_bytes() {
        // PING id 1 and RST_STREAM, laid out by hand from the spec.
        let mut buf = Vec::new();
        encode(&Frame::Ping { id: 1 }, &mut buf);
        assert_eq!(buf, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        buf.clear();
        encode(
            &Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"x"),
            },
            &mut buf,
        );
        assert_eq!(buf, [0, 0, 0, 3, 1, 0, 0, 1, b'x']);
    }

    #[test]
    fn reserved_bits_are_masked() {
        let buf = [
            0x80, 3, 0, 9, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 1,
        ];
        let (f, _) = parse(&buf, MAX).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::WindowUpdate {
                stream_id: 0x7fff_ffff,
                delta: 1
            }
        );
    }

    #[test]
    fn oversized_is_rejected_from_the_header() {
        let buf = [0, 0, 0, 1, 0, 0x10, 0, 1];
        assert_eq!(
            parse(&buf, MAX),
            Err(FrameError::TooLarge {
                len: 0x100001,
                max: MAX
            })
        );
    }

    #[test]
    fn bad_control_lengths() {
        for (kind, len) in [(3u8, 4u8), (6, 8), (7, 4), (9, 0), (1, 9), (2, 3), (4, 5)] {
            let buf = [0x80, 3, 0, kind, 0, 0, 0, len];
            assert!(
                matches!(parse(&buf, MAX), Err(FrameError::BadLength { .. })),
                "type {kind} len {len}"
            );
        }
        // SETTINGS whose count disagrees with its length.
        let buf = [
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1,
        ];
        assert!(matches!(
            parse(&buf, MAX),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn data_on_stream_zero() {
        assert_eq!(
            parse(&[0, 0, 0, 0, 0, 0, 0, 0], MAX),
            Err(FrameError::DataOnStreamZero)
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target does this properly.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            let n = (x % 40) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            if x.is_multiple_of(3) && !buf.is_empty() {
                buf[0] |= 0x80;
                if buf.len() > 1 {
                    buf[1] = 3;
                }
            }
            if let Ok(Some((_, used))) = parse(&buf, 64) {
                assert!(used <= buf.len());
            }
        }
    }
}
