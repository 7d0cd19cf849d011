//! berthd's side of the monitor protocol: an async client over tokio's `UnixStream`, one
//! connection per request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::error::MonitorError;
use super::protocol::{ContainerState, CreateRequest, CreateResponse, Reply, Request};

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
    /// monitor; returns its host pid. The monitor also writes `<pod_dir>/pause.pid`.
    pub async fn spawn_pause(&self) -> Result<i32, MonitorError> {
        match self.call(&Request::SpawnPause, REQUEST_TIMEOUT).await? {
            Reply::Pause { pid } => Ok(pid),
            other => Err(unexpected(other)),
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
        let unreachable = |e: std::io::Error| MonitorError::Unreachable {
            socket: self.socket.display().to_string(),
            message: e.to_string(),
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(unreachable)?;
            let mut line = serde_json::to_vec(req).map_err(|e| MonitorError::Protocol {
                message: format!("cannot encode request: {e}"),
            })?;
            line.push(b'\n');
            stream.write_all(&line).await.map_err(unreachable)?;
            let mut reader = BufReader::new(stream).take(MAX_REPLY);
            let mut buf = Vec::new();
            reader
                .read_until(b'\n', &mut buf)
                .await
                .map_err(unreachable)?;
            if buf.is_empty() {
                return Err(MonitorError::Unreachable {
                    socket: self.socket.display().to_string(),
                    message: "the monitor closed the connection without a reply".into(),
                });
            }
            serde_json::from_slice::<Reply>(buf.trim_ascii_end()).map_err(|e| {
                MonitorError::Protocol {
                    message: format!("bad reply: {e}"),
                }
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Reply::Error { error })) => Err(error),
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
