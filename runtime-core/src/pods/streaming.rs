//! The runtime side of streaming Exec and Attach: sessions on the pod monitor, which owns
//! the processes' stdio (pipes, or the terminal runc hands it on a console socket). The
//! streaming server (cri-server) validates with [`PodService::check_running`] when it
//! hands out a URL, and opens a session with [`PodService::exec_session`] or
//! [`PodService::attach_session`] when the client connects.

use std::path::{Path, PathBuf};

use super::container::Lifecycle;
use super::{PodService, new_id};
use crate::monitor::{self, ExecRequest, MonitorError, StdioSession};
use crate::{Error, Result};

/// Deadline of the runtime's exec command (not of the process).
const EXEC_START_TIMEOUT_SECS: u64 = 60;

/// A console socket for the monitor in the pod directory (beside `monitor.sock`):
/// `<prefix><7 chars of tag>.tty`, as long as `monitor.sock` with a one-letter prefix, so it
/// fits wherever the monitor's socket does.
pub(crate) fn console_socket_path(monitor_socket: &Path, prefix: &str, tag: &str) -> PathBuf {
    let dir = monitor_socket.parent().unwrap_or(Path::new("/"));
    let short: String = tag.chars().take(7).collect();
    dir.join(format!("{prefix}{short}.tty"))
}

/// A monitor error of a session request as a runtime error.
fn session_error(id: &str, e: MonitorError) -> Error {
    match e {
        MonitorError::NotFound { .. }
        | MonitorError::NotRunning { .. }
        | MonitorError::Busy { .. } => {
            Error::FailedPrecondition(format!("container {id} is not running"))
        }
        MonitorError::BadRequest { message } => Error::InvalidArgument(message),
        e @ MonitorError::TooManySessions { .. } => Error::Unavailable(e.to_string()),
        MonitorError::Timeout { message } => Error::DeadlineExceeded(message),
        other => Error::Internal(format!("container {id}: {other}")),
    }
}

impl PodService {
    /// Checks that a container exists (NotFound) and is running (FailedPrecondition): the
    /// validation of the Exec and Attach RPCs before they hand out a streaming URL.
    pub async fn check_running(&self, container_id: &str) -> Result<()> {
        let rec = self.container(container_id)?.get();
        if self.lifecycle(&rec) != Lifecycle::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(())
    }

    /// Runs `cmd` in a running container with its stdio on a monitor session: a terminal
    /// with `tty` (stdout then carries all output), stdin written through the session with
    /// `stdin` (else `/dev/null`). NotFound for an unknown container, FailedPrecondition
    /// when it is not running, InvalidArgument for an empty command; a command the runtime
    /// cannot start (e.g. missing from the image) is Internal with the runtime's message.
    /// Dropping the session kills the process if it still runs.
    pub async fn exec_session(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<StdioSession> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        let rec = self.container(container_id)?.get();
        // runc exec moves the new process into the container's cgroup (see `cgroupwarm`).
        self.inner.warmer.warm();
        self.check_running(&rec.id).await?;
        let pod = self.sandbox(&rec.pod_id)?.get();
        let runtime = self.runtime(&pod.runtime_handler)?;
        let tag = new_id();
        let pid_file = rec.bundle.join(format!("exec-{}.pid", &tag[..12]));
        let log = rec.bundle.join(format!("exec-{}.log", &tag[..12]));
        let console_socket = tty.then(|| console_socket_path(&pod.monitor_socket, "x", &tag));
        let req = ExecRequest {
            container_id: rec.id.clone(),
            argv: runtime.exec_argv(&rec.id, &log, &pid_file, &cmd, console_socket.as_deref()),
            pid_file,
            tty,
            stdin,
            timeout_secs: EXEC_START_TIMEOUT_SECS,
            console_socket,
        };
        let client = monitor::MonitorClient::new(pod.monitor_socket.clone());
        let result = client.exec(req).await;
        let out = match result {
            Ok(session) => Ok(session),
            Err(MonitorError::RuntimeFailed { exit_code, output }) => {
                let msg =
                    crate::ociruntime::failure_message(&log, output.as_bytes(), Some(exit_code));
                Err(Error::Internal(format!(
                    "exec {cmd:?} in container {}: {msg}",
                    rec.id
                )))
            }
            Err(e) => Err(session_error(&rec.id, e)),
        };
        // The runtime has exited either way; its log mattered only for a failure.
        let _ = std::fs::remove_file(&log);
        out
    }

    /// Attaches to a running container's stdio through its monitor. Same errors as
    /// [`Self::exec_session`]; FailedPrecondition too when `stdin` is asked of a container
    /// not created with `stdin: true`.
    pub async fn attach_session(
        &self,
        container_id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<StdioSession> {
        let rec = self.container(container_id)?.get();
        self.check_running(&rec.id).await?;
        if stdin && !rec.config.stdin {
            return Err(Error::FailedPrecondition(format!(
                "container {} was not created with stdin: cannot attach to its stdin",
                rec.id
            )));
        }
        let pod = self.sandbox(&rec.pod_id)?.get();
        monitor::MonitorClient::new(pod.monitor_socket.clone())
            .attach(&rec.id, stdin, stdout, stderr)
            .await
            .map(|mut s| {
                s.stdin_once = rec.config.stdin_once;
                s
            })
            .map_err(|e| session_error(&rec.id, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_sockets_are_as_long_as_the_monitor_socket() {
        let m = Path::new("/run/berth/pods/abc/monitor.sock");
        let p = console_socket_path(m, "x", "0123456789abcdef");
        assert_eq!(p, Path::new("/run/berth/pods/abc/x0123456.tty"));
        assert_eq!(p.as_os_str().len(), m.as_os_str().len());
    }

    #[test]
    fn monitor_errors_map() {
        let e = session_error("c", MonitorError::NotRunning { id: "c".into() });
        assert!(matches!(e, Error::FailedPrecondition(_)));
        let e = session_error("c", MonitorError::TooManySessions { limit: 256 });
        assert!(matches!(e, Error::Unavailable(_)));
        let e = session_error(
            "c",
            MonitorError::BadRequest {
                message: "x".into(),
            },
        );
        assert!(matches!(e, Error::InvalidArgument(_)));
    }
}
