//! The error of every monitor operation, on both sides of the socket. It is serialized as
//! is inside an error reply, so a failure inside the monitor reaches berthd with its kind.

use serde::{Deserialize, Serialize};

/// What went wrong talking to, or inside, a pod monitor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitorError {
    /// Nothing answers on the monitor's socket (the monitor is gone, or never started).
    #[error("monitor at {socket} is unreachable: {message}")]
    Unreachable {
        /// The socket path.
        socket: String,
        /// Why the connection failed.
        message: String,
    },
    /// The monitor could not be started.
    #[error("cannot start the monitor: {message}")]
    Spawn {
        /// What failed.
        message: String,
    },
    /// The request is malformed (bad JSON, a relative path, an empty command line).
    #[error("bad monitor request: {message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// The monitor does not know this container.
    #[error("container {id} is not known to the monitor")]
    NotFound {
        /// The container ID.
        id: String,
    },
    /// The monitor already tracks a container of this ID.
    #[error("container {id} is already known to the monitor")]
    AlreadyExists {
        /// The container ID.
        id: String,
    },
    /// The container's process has exited (e.g. a log reopen for a stopped container).
    #[error("container {id} is not running")]
    NotRunning {
        /// The container ID.
        id: String,
    },
    /// The container is still being created.
    #[error("container {id} is still being created")]
    Busy {
        /// The container ID.
        id: String,
    },
    /// The OCI runtime's create command exited non-zero (or was killed: 128 + signal).
    /// `output` is what the command wrote to its stdout / stderr (the container's pipes)
    /// before it exited, at most 4 KiB; the full story is in the runtime's `--log` file.
    #[error("OCI runtime create failed with exit code {exit_code}: {output}")]
    RuntimeFailed {
        /// Exit code of the create command.
        exit_code: i32,
        /// Its captured output, lossily decoded, trimmed.
        output: String,
    },
    /// A deadline passed (the create command's timeout, the client's own deadline).
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// An I/O failure (a file that cannot be opened, written or read).
    #[error("{message}")]
    Io {
        /// The failure, naming the file.
        message: String,
    },
    /// The monitor serves as many attach and exec sessions as it allows.
    #[error("the monitor already serves {limit} attach / exec sessions")]
    TooManySessions {
        /// The limit.
        limit: usize,
    },
    /// The peer spoke something that is not the monitor protocol.
    #[error("monitor protocol error: {message}")]
    Protocol {
        /// What was wrong with the message.
        message: String,
    },
}

impl MonitorError {
    /// An [`MonitorError::Io`] of `what: err`.
    pub fn io(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        MonitorError::Io {
            message: format!("{what}: {err}"),
        }
    }
}
