//! Error types: one for the multiplexer API, one for frame parsing and one for
//! header blocks, so callers can tell a broken peer from a closed connection.

use crate::RstStatus;

/// Errors returned by [`Connection`](crate::Connection) and [`Stream`](crate::Stream) methods.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended (I/O EOF or error, a protocol error, or a graceful GOAWAY).
    #[error("spdy connection is closed")]
    ConnectionClosed,
    /// A GOAWAY was sent or received, so no new streams may be opened.
    #[error("spdy connection is going away (GOAWAY): no new streams can be opened")]
    GoingAway,
    /// All stream ids of our parity are used up (2^31 / 2 streams on one connection).
    #[error("spdy stream ids are exhausted on this connection")]
    StreamIdsExhausted,
    /// The stream was reset, by the peer (`by_peer`) or locally.
    #[error("spdy stream {id} was reset {}: {}", if *by_peer { "by the peer" } else { "locally" }, RstStatus::describe(*code))]
    StreamReset {
        /// Stream id.
        id: u32,
        /// RST_STREAM status code as on the wire.
        code: u32,
        /// True when the peer sent the RST_STREAM.
        by_peer: bool,
    },
    /// The call does not fit the stream's state (e.g. a second reply).
    #[error("spdy stream {id}: {what}")]
    InvalidState {
        /// Stream id.
        id: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// Headers we were asked to send cannot be encoded.
    #[error("spdy headers cannot be sent: {0}")]
    Headers(#[from] HeaderError),
}

/// Errors from [`frame::parse`](crate::frame::parse). Any of them leaves the byte
/// stream unframeable, so the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's length field exceeds the configured maximum.
    #[error("spdy frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A control frame's payload does not have the size its type requires.
    #[error("spdy {kind} frame has a bad length of {len} bytes")]
    BadLength {
        /// Frame type name.
        kind: &'static str,
        /// Declared payload length.
        len: usize,
    },
    /// A DATA frame carries stream id 0.
    #[error("spdy DATA frame on stream 0")]
    DataOnStreamZero,
}

/// Errors from decoding or encoding a name/value header block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The inflated block is larger than the limit. The zlib state is still
    /// consistent (the whole block was inflated and discarded), so only the
    /// stream is affected.
    #[error("spdy header block inflates to more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The block has too many name/value pairs.
    #[error("spdy header block has more than {max} headers")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The block inflated but its name/value structure is wrong. The zlib state
    /// is still consistent.
    #[error("spdy header block is malformed: {0}")]
    Malformed(&'static str),
    /// zlib rejected the data, or the block was so large we gave up inflating
    /// it: the shared zlib stream can no longer be trusted, so the connection
    /// must be closed.
    #[error("spdy header compression failed: {0}")]
    Compression(String),
}

impl HeaderError {
    /// True when the shared zlib stream is no longer usable and the connection
    /// must be closed; false when only the one stream is affected.
    pub fn is_fatal(&self) -> bool {
        matches!(self, HeaderError::Compression(_))
    }
}
