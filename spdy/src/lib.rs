//! SPDY/3.1 as Kubernetes streaming (remotecommand and port-forward) speaks it.
//!
//! kubectl, crictl and client-go talk to a CRI streaming server over SPDY/3.1
//! through moby/spdystream after an HTTP `Upgrade: SPDY/3.1`. This crate is the
//! framing ([`frame`]), the header compression ([`headers`]) and a stream
//! multiplexer: [`server`] / [`client`] turn an upgraded byte stream into a
//! [`Connection`] handle, an [`Incoming`] queue of peer-opened streams, and
//! [`Stream`]s that are tokio `AsyncRead + AsyncWrite`.
//!
//! Flow control follows SPDY/3.1 (per-stream and connection windows, credit
//! returned as the application reads) with one concession: spdystream neither
//! sends WINDOW_UPDATE nor honours ours. A peer that has never sent SETTINGS
//! or WINDOW_UPDATE is treated as such a peer: we do not wait for window
//! credit it will never send, and instead of resetting streams it overruns we
//! stop reading the socket until the application catches up, so memory stays
//! bounded either way. See `conn.rs` for details.

#![warn(missing_docs)]

mod conn;
mod error;
pub mod frame;
pub mod headers;
mod recv;
mod send;
mod stream;

pub use conn::{Connection, Incoming};
pub use error::{Error, FrameError, HeaderError};
pub use stream::{Stream, StreamReader, StreamWriter};

use tokio::io::{AsyncRead, AsyncWrite};

/// Header list as it travels in SYN_STREAM / SYN_REPLY: lowercase names on the
/// wire, one entry per value.
pub type Headers = Vec<(String, String)>;

/// Limits and windows of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest decoded (inflated) header block accepted, in bytes.
    pub max_header_block: usize,
    /// Most peer-opened streams open at once; more SYN_STREAMs are refused.
    pub max_streams: usize,
    /// Largest frame payload accepted; a larger frame closes the connection.
    pub max_frame_len: usize,
    /// Initial per-stream receive window we advertise, in bytes.
    pub recv_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_header_block: 256 * 1024,
            max_streams: 1000,
            max_frame_len: 1024 * 1024,
            recv_window: 64 * 1024,
        }
    }
}

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RstStatus {
    /// Generic error.
    ProtocolError = 1,
    /// A frame for a stream that is not active.
    InvalidStream = 2,
    /// The stream was refused before any processing.
    RefusedStream = 3,
    /// The stream's protocol version is not supported.
    UnsupportedVersion = 4,
    /// The stream is no longer needed.
    Cancel = 5,
    /// Internal error of the sender.
    InternalError = 6,
    /// The peer broke flow control.
    FlowControlError = 7,
    /// A SYN_REPLY for an already replied stream.
    StreamInUse = 8,
    /// Data or SYN_REPLY for a half-closed stream.
    StreamAlreadyClosed = 9,
    /// A frame too large for the receiver.
    FrameTooLarge = 11,
}

impl RstStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The status for a wire code, if known.
    pub fn from_code(code: u32) -> Option<RstStatus> {
        Some(match code {
            1 => RstStatus::ProtocolError,
            2 => RstStatus::InvalidStream,
            3 => RstStatus::RefusedStream,
            4 => RstStatus::UnsupportedVersion,
            5 => RstStatus::Cancel,
            6 => RstStatus::InternalError,
            7 => RstStatus::FlowControlError,
            8 => RstStatus::StreamInUse,
            9 => RstStatus::StreamAlreadyClosed,
            11 => RstStatus::FrameTooLarge,
            _ => return None,
        })
    }

    /// Human-readable name of a wire code (used in error messages).
    pub fn describe(code: u32) -> String {
        match RstStatus::from_code(code) {
            Some(s) => format!("{s:?}"),
            None if code == 10 => "InvalidCredentials".to_string(),
            None => format!("unknown status {code}"),
        }
    }
}

/// Starts the server side of a connection on an upgraded byte stream
/// (the side that accepts the HTTP upgrade; it opens even-numbered streams).
/// Spawns the connection's reader and writer tasks on the current tokio runtime.
pub fn server<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
    cfg: Config,
) -> (Connection, Incoming) {
    conn::start(io, cfg, false)
}

/// Starts the client side of a connection (opens odd-numbered streams).
pub fn client<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
    cfg: Config,
) -> (Connection, Incoming) {
    conn::start(io, cfg, true)
}
