//! The edge between the streaming server and the runtime: what a stream needs from
//! berth (an exec or attach session, a connection into a pod) as a trait, so that the
//! protocol code is tested without containers.

use std::fmt;

use tokio::net::TcpStream;

/// What a session produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes the process wrote to stdout (with a TTY: to the terminal).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr (never with a TTY).
    Stderr(Vec<u8>),
    /// The process (exec) or the container (attach) ended.
    Exit {
        /// Exit status; 128 + signal when killed by a signal.
        exit_code: i32,
    },
    /// The session failed; the message says why.
    Error(String),
}

/// The output side of a session. `recv` need not be cancel-safe: the server reads it
/// from a task of its own.
#[tonic::async_trait]
pub trait SessionOutput: Send + 'static {
    /// The next output; `None` when the session ended without saying how.
    async fn recv(&mut self) -> Result<Option<Output>, String>;
}

/// The input side of a session.
#[tonic::async_trait]
pub trait SessionInput: Send + 'static {
    /// Bytes for the process's stdin (or terminal).
    async fn stdin(&mut self, data: &[u8]) -> Result<(), String>;
    /// The client's stdin ended.
    async fn close_stdin(&mut self) -> Result<(), String>;
    /// The client's terminal changed size.
    async fn resize(&mut self, width: u16, height: u16) -> Result<(), String>;
}

/// An exec process or an attachment to a container, as the runtime hands it over.
/// Dropping it ends the session (an exec process is killed).
pub struct Session {
    /// The process has a terminal: output is one stream, resize applies.
    pub tty: bool,
    /// The container closes its stdin when the first attach session that had stdin
    /// ends (attach only).
    pub stdin_once: bool,
    /// Output, read by the server.
    pub output: Box<dyn SessionOutput>,
    /// Input, written by the server.
    pub input: Box<dyn SessionInput>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("tty", &self.tty)
            .field("stdin_once", &self.stdin_once)
            .finish_non_exhaustive()
    }
}

/// An exec the client asked for (from the CRI ExecRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The container.
    pub container_id: String,
    /// The command, program first.
    pub cmd: Vec<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// An attach the client asked for (from the CRI AttachRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachTarget {
    /// The container.
    pub container_id: String,
    /// The container has a terminal (as the client said; the runtime's word wins).
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// What the streaming server asks of the runtime.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Starts an exec process with its stdio held for this session.
    async fn exec(&self, target: &ExecTarget) -> Result<Session, String>;
    /// Attaches to a running container's stdio.
    async fn attach(&self, target: &AttachTarget) -> Result<Session, String>;
    /// A TCP connection to `127.0.0.1:port` in the pod's network namespace (the host's for
    /// a host-network pod).
    async fn dial(&self, pod_sandbox_id: &str, port: u16) -> Result<TcpStream, String>;
}
