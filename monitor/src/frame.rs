//! The binary frames of an attach or exec session (see the crate documentation): after the
//! `attached` / `exec_started` reply line, both directions carry
//! `[type u8][len u32 big-endian][payload, at most MAX_PAYLOAD bytes]`.
//!
//! Both sides use this module: the monitor parses incrementally from its non-blocking
//! socket buffers ([`parse`]), berthd's async client reads the 5-byte header and then
//! the payload ([`Header::decode`]).

use serde::{Deserialize, Serialize};

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Size of the frame header: type and length.
pub const HEADER_LEN: usize = 5;

/// The kind of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client → monitor: bytes for the process's stdin.
    Stdin = 0,
    /// Monitor → client: the process's stdout (a terminal's output too).
    Stdout = 1,
    /// Monitor → client: the process's stderr.
    Stderr = 2,
    /// Monitor → client: the process exited; payload JSON [`ExitFrame`]. Last frame.
    Exit = 3,
    /// Monitor → client: the session failed; payload a UTF-8 message. Last frame.
    Error = 4,
    /// Client → monitor: no more stdin from this client.
    StdinClose = 5,
    /// Client → monitor: terminal size, payload width u16 BE then height u16 BE.
    Resize = 6,
}

impl FrameType {
    /// The type of a header's first byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0 => FrameType::Stdin,
            1 => FrameType::Stdout,
            2 => FrameType::Stderr,
            3 => FrameType::Exit,
            4 => FrameType::Error,
            5 => FrameType::StdinClose,
            6 => FrameType::Resize,
            _ => return None,
        })
    }
}

/// Payload of an [`FrameType::Exit`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitFrame {
    /// Exit status; 128 + signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The type byte is not a [`FrameType`].
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The length is above [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes is above the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type.
    pub kind: FrameType,
    /// Its payload length (≤ [`MAX_PAYLOAD`]).
    pub len: usize,
}

impl Header {
    /// Decodes and checks a header.
    pub fn decode(h: [u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let kind = FrameType::from_u8(h[0]).ok_or(FrameError::UnknownType(h[0]))?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        Ok(Header {
            kind,
            len: len as usize,
        })
    }
}

/// Appends one frame to `out`. A payload above [`MAX_PAYLOAD`] is cut into several frames
/// of the same type.
pub fn encode(out: &mut Vec<u8>, kind: FrameType, payload: &[u8]) {
    let mut chunks = payload.chunks(MAX_PAYLOAD);
    let first = chunks.next().unwrap_or(&[]);
    for chunk in std::iter::once(first).chain(chunks) {
        out.push(kind as u8);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Appends a resize frame.
pub fn encode_resize(out: &mut Vec<u8>, width: u16, height: u16) {
    let mut p = [0u8; 4];
    p[..2].copy_from_slice(&width.to_be_bytes());
    p[2..].copy_from_slice(&height.to_be_bytes());
    encode(out, FrameType::Resize, &p);
}

/// The (width, height) of a resize payload, `None` unless it is 4 bytes.
pub fn decode_resize(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

/// A parsed frame: its type, its payload, and its total length (header included).
pub type Parsed<'a> = (FrameType, &'a [u8], usize);

/// Parses the first complete frame of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Parsed<'_>>, FrameError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = Header::decode(*h)?;
    let end = HEADER_LEN + h.len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((h.kind, &buf[HEADER_LEN..end], end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut out = Vec::new();
        encode(&mut out, FrameType::Stdout, b"hello");
        encode(&mut out, FrameType::StdinClose, b"");
        encode_resize(&mut out, 80, 24);
        assert_eq!(&out[..5], &[1, 0, 0, 0, 5]);
        let (k, p, n) = parse(&out).unwrap().unwrap();
        assert_eq!((k, p, n), (FrameType::Stdout, &b"hello"[..], 10));
        let (k, p, n2) = parse(&out[n..]).unwrap().unwrap();
        assert_eq!((k, p.len(), n2), (FrameType::StdinClose, 0, 5));
        let (k, p, _) = parse(&out[n + n2..]).unwrap().unwrap();
        assert_eq!(k, FrameType::Resize);
        assert_eq!(decode_resize(p), Some((80, 24)));
        assert_eq!(decode_resize(b"abc"), None);
        // Incomplete header, incomplete payload.
        assert_eq!(parse(&out[..3]).unwrap(), None);
        assert_eq!(parse(&out[..7]).unwrap(), None);
        // Unknown type, oversized length.
        assert_eq!(parse(&[9, 0, 0, 0, 0]), Err(FrameError::UnknownType(9)));
        assert_eq!(
            parse(&[0, 0, 1, 0, 1]),
            Err(FrameError::TooLong(65537)),
            "a 64 KiB + 1 payload is refused"
        );
        // Big payloads are split.
        let mut big = Vec::new();
        encode(&mut big, FrameType::Stderr, &vec![7u8; MAX_PAYLOAD + 10]);
        let (_, p, n) = parse(&big).unwrap().unwrap();
        assert_eq!(p.len(), MAX_PAYLOAD);
        let (_, p, _) = parse(&big[n..]).unwrap().unwrap();
        assert_eq!(p.len(), 10);
    }
}
