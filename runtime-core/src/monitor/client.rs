//! berthd's side of the monitor protocol: an async client over tokio's `UnixStream`, one
//! connection per request; attach and exec keep theirs as a [`StdioSession`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::error::MonitorError;
use super::protocol::{ContainerState, CreateRequest, CreateResponse, ExecRequest, Reply, Request};
use super::session::StdioSession;

/// Deadline of every request but `create`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a create's own timeout for the client's deadline.
const CREATE_SLACK: Duration = Duration::from_secs(5);
/// Largest reply accepted.
const MAX_REPLY: u64 = 16 << 20;

/// Talks to one pod's monitor.
#[derive(Debug, Clone)]
pub struct MonitorClient {
    socket: PathBuf,
}

impl MonitorClient {
    /// A client for the monitor listening on `socket` (`<pod_dir>/monitor.sock`).
    pub fn new(socket: PathBuf) -> Self {
        MonitorClient { socket }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs the OCI runtime's create command in the monitor; returns the init's pid.
    pub async fn create(&self, req: CreateRequest) -> Result<CreateResponse, MonitorError> {
        let secs = if req.timeout_secs == 0 {
            60
        } else {
            req.timeout_secs
        };
        let timeout = Duration::from_secs(secs) + CREATE_SLACK;
        match self.call(&Request::Create(req), timeout).await? {
            Reply::Created { pid } => Ok(CreateResponse { pid }),
            other => Err(unexpected(other)),
        }
    }

    /// Closes and reopens a container's log file (after kubelet renamed it).
    pub async fn reopen_log(&self, container_id: &str) -> Result<(), MonitorError> {
        let req = Request::ReopenLog {
            container_id: container_id.to_string(),
        };
        self.expect_ok(&req).await
    }

    /// Every container the monitor knows.
    pub async fn list(&self) -> Result<Vec<ContainerState>, MonitorError> {
        match self.call(&Request::List, REQUEST_TIMEOUT).await? {
            Reply::Containers { containers } => Ok(containers),
            other => Err(unexpected(other)),
        }
    }

    /// Stops tracking a container (idempotent; `Busy` while it is being created).
    pub async fn forget(&self, container_id: &str) -> Result<(), MonitorError> {
        let req = Request::Forget {
            container_id: container_id.to_string(),
        };
        self.expect_ok(&req).await
    }

    /// Asks the monitor to exit; it does once the reply is sent.
    pub async fn shutdown(&self) -> Result<(), MonitorError> {
        self.expect_ok(&Request::Shutdown).await
    }

    /// Checks the monitor is alive; returns its pid.
    pub async fn ping(&self) -> Result<i32, MonitorError> {
        match self.call(&Request::Ping, REQUEST_TIMEOUT).await? {
            Reply::Pong { pid, .. } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Starts the pod's pause process (PID 1 of a new PID namespace) as a child of the
    /// monitor; returns its host pid. The monitor also writes `<pod_dir>/pause.pid`. With
    /// `userns` (the pod's pinned user namespace) the PID namespace belongs to it.
    pub async fn spawn_pause(&self, userns: Option<&Path>) -> Result<i32, MonitorError> {
        let req = Request::SpawnPause {
            userns: userns.map(Path::to_path_buf),
        };
        match self.call(&req, REQUEST_TIMEOUT).await? {
            Reply::Pause { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Attaches to a running container's stdio.
    pub async fn attach(
        &self,
        container_id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<StdioSession, MonitorError> {
        let req = Request::Attach {
            container_id: container_id.to_string(),
            stdin,
            stdout,
            stderr,
        };
        match self.open(&req, REQUEST_TIMEOUT).await? {
            (Reply::Attached { tty }, r, w) => Ok(StdioSession::new(tty, r, w)),
            (other, _, _) => Err(unexpected(other)),
        }
    }

    /// Runs a process in a running container (the monitor runs `req.argv`, the runtime's
    /// detached exec) and serves its stdio.
    pub async fn exec(&self, req: ExecRequest) -> Result<StdioSession, MonitorError> {
        let secs = if req.timeout_secs == 0 {
            60
        } else {
            req.timeout_secs
        };
        let timeout = Duration::from_secs(secs) + CREATE_SLACK;
        let tty = req.tty;
        match self.open(&Request::Exec(req), timeout).await? {
            (Reply::ExecStarted { .. }, r, w) => Ok(StdioSession::new(tty, r, w)),
            (other, _, _) => Err(unexpected(other)),
        }
    }

    async fn expect_ok(&self, req: &Request) -> Result<(), MonitorError> {
        match self.call(req, REQUEST_TIMEOUT).await? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// One request, one reply, on a fresh connection. Error replies become `Err`.
    async fn call(&self, req: &Request, timeout: Duration) -> Result<Reply, MonitorError> {
        self.open(req, timeout).await.map(|(reply, _, _)| reply)
    }

    /// Sends a request on a fresh connection and reads the reply line; the connection is
    /// returned for a session, with the reader keeping what it buffered past the line.
    /// Error replies become `Err`.
    async fn open(
        &self,
        req: &Request,
        timeout: Duration,
    ) -> Result<(Reply, BufReader<OwnedReadHalf>, OwnedWriteHalf), MonitorError> {
        let unreachable = |e: std::io::Error| MonitorError::Unreachable {
            socket: self.socket.display().to_string(),
            message: e.to_string(),
        };
        let exchange = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(unreachable)?;
            let (rd, mut wr) = stream.into_split();
            let mut line = serde_json::to_vec(req).map_err(|e| MonitorError::Protocol {
                message: format!("cannot encode request: {e}"),
            })?;
            line.push(b'\n');
            wr.write_all(&line).await.map_err(unreachable)?;
            let mut reader = BufReader::new(rd);
            let mut buf = Vec::new();
            (&mut reader)
                .take(MAX_REPLY)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(unreachable)?;
            if buf.is_empty() {
                return Err(MonitorError::Unreachable {
                    socket: self.socket.display().to_string(),
                    message: "the monitor closed the connection without a reply".into(),
                });
            }
            let reply = serde_json::from_slice::<Reply>(buf.trim_ascii_end()).map_err(|e| {
                MonitorError::Protocol {
                    message: format!("bad reply: {e}"),
                }
            })?;
            Ok((reply, reader, wr))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((Reply::Error { error }, _, _))) => Err(error),
            Ok(result) => result,
            Err(_) => Err(MonitorError::Timeout {
                message: format!(
                    "no reply from the monitor at {} within {timeout:?}",
                    self.socket.display()
                ),
            }),
        }
    }
}

fn unexpected(reply: Reply) -> MonitorError {
    MonitorError::Protocol {
        message: format!("unexpected reply {reply:?}"),
    }
}
