//! The messages of the monitor protocol (see the module documentation of
//! [`crate`]) and the exit file, the one on-disk contract between the monitor and
//! berthd.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::MonitorError;

/// Version of the wire protocol, reported by `ping`.
pub const PROTOCOL_VERSION: u32 = 2;

/// Asks the monitor to run the OCI runtime's create command for a container and to take
/// charge of its process, output and exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The container ID (the monitor's key).
    pub container_id: String,
    /// The full create command line, program first (an absolute path). It runs with stdin
    /// `/dev/null`, stdout and stderr on pipes the monitor owns (the OCI runtime hands them
    /// on to the container's init), cwd `/`.
    pub argv: Vec<String>,
    /// Where the runtime writes the init pid (`--pid-file`).
    pub pid_file: PathBuf,
    /// The CRI log file (absolute, parent directory existing).
    pub log_path: PathBuf,
    /// Where the monitor writes [`ExitInfo`] when the init exits.
    pub exit_file: PathBuf,
    /// cgroup v1 `memory.oom_control` or v2 `memory.events` of the container's cgroup,
    /// read when the init exits (`oom_kill N`, N > 0 → `oom_killed`).
    #[serde(default)]
    pub oom_control: Option<PathBuf>,
    /// Deadline of the create command in seconds (0: 60 s).
    #[serde(default)]
    pub timeout_secs: u64,
    /// A terminal container: the monitor listens on this socket (absolute, at most 107
    /// bytes) before it runs `argv`, which must pass it as `--console-socket`, and takes
    /// the terminal's master from the runtime over it. The terminal's output is logged as
    /// `stdout`, and is the container's stdin.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
    /// Keep the container's stdin open: a pipe whose write end the monitor holds (the
    /// terminal itself with `console_socket`), written by attach sessions. Without it the
    /// container's stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// With `stdin`: the container's stdin is closed when the first attach session that
    /// had stdin ends.
    #[serde(default)]
    pub stdin_once: bool,
}

/// Asks the monitor to run the OCI runtime's exec command (detached) for a process in a
/// running container and to serve the process's stdio on the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container (known to the monitor and running).
    pub container_id: String,
    /// The full exec command line, program first (absolute), detached, writing the
    /// process's pid to `pid_file` (`runc ... exec --detach --pid-file P [--tty
    /// --console-socket S] ID cmd...`). It runs with stdin a pipe (with `stdin`, else
    /// `/dev/null`), stdout and stderr on pipes, cwd `/`; without a terminal the runtime
    /// hands them on to the process.
    pub argv: Vec<String>,
    /// Where the runtime writes the process's host pid; removed once read.
    pub pid_file: PathBuf,
    /// The process has a terminal: `console_socket` is then required.
    #[serde(default)]
    pub tty: bool,
    /// The process's stdin is written by the session (else it is `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// Deadline of the exec command (not of the process) in seconds (0: 60 s).
    #[serde(default)]
    pub timeout_secs: u64,
    /// With `tty`: the socket the monitor listens on for the terminal's master (absolute,
    /// at most 107 bytes), passed in `argv` as `--console-socket`.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
}

/// The answer to a successful create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    /// Host pid of the container's init.
    pub pid: i32,
}

/// How a container's init ended. Also the content of the exit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit status; 128 + signal when killed by a signal (as containerd reports).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When the monitor reaped it, ns since the Unix epoch.
    pub finished_at_ns: i64,
    /// The container's cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

/// One container as the monitor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container ID.
    pub id: String,
    /// Host pid of its init; 0 while the create command still runs.
    pub pid: i32,
    /// Set once the init has exited and its output is drained (the exit file is written
    /// then too).
    pub exit: Option<ExitInfo>,
}

/// A request: one JSON object on one line, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run the create command of a container; answered when it has exited.
    Create(CreateRequest),
    /// Close and reopen a container's log file.
    ReopenLog {
        /// The container ID.
        container_id: String,
    },
    /// Every container the monitor knows.
    List,
    /// Stop tracking a container (idempotent; not while it is being created).
    Forget {
        /// The container ID.
        container_id: String,
    },
    /// Exit once this is answered.
    Shutdown,
    /// Is the monitor alive? Answers its pid.
    Ping,
    /// Start `berth-monitor pause` as PID 1 of a new PID namespace, as a child of the
    /// monitor; answers its host pid and writes `<pod_dir>/pause.pid`.
    SpawnPause {
        /// The pod's pinned user namespace, entered first so that it owns the PID
        /// namespace (pods with `hostUsers: false`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        userns: Option<std::path::PathBuf>,
    },
    /// Attach to a running container's stdio; answered by `attached`, then frames.
    Attach {
        /// The container ID.
        container_id: String,
        /// Write to the container's stdin (it must have been created with `stdin`).
        #[serde(default)]
        stdin: bool,
        /// Receive its stdout (a terminal's output too).
        #[serde(default)]
        stdout: bool,
        /// Receive its stderr (nothing for a terminal).
        #[serde(default)]
        stderr: bool,
    },
    /// Run a process in a running container; answered by `exec_started`, then frames.
    Exec(ExecRequest),
}

/// A reply: one JSON object on one line, tagged by `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The create command succeeded.
    Created {
        /// Host pid of the container's init.
        pid: i32,
    },
    /// Done (reopen_log, forget, shutdown).
    Ok,
    /// The answer to `list`.
    Containers {
        /// Every container, in creation order.
        containers: Vec<ContainerState>,
    },
    /// The answer to `ping`.
    Pong {
        /// The monitor's pid.
        pid: i32,
        /// [`PROTOCOL_VERSION`] of the monitor.
        protocol: u32,
    },
    /// The answer to `spawn_pause`.
    Pause {
        /// Host pid of the pause process.
        pid: i32,
    },
    /// The attach session begins; frames follow.
    Attached {
        /// The container has a terminal (its output is all `stdout`).
        tty: bool,
    },
    /// The exec'd process runs; frames follow.
    ExecStarted {
        /// Its host pid.
        pid: i32,
    },
    /// The request failed.
    Error {
        /// Why.
        error: MonitorError,
    },
}

/// The name of the log-gap file, beside the exit file.
pub const LOG_GAP_FILE: &str = "log-gap.json";

/// What the log-gap file says: the monitor could not write a container's log (a full
/// disk) and dropped its output, or writes succeed again. Replaced (by rename) at each
/// change; berthd watches for it and logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogGapReport {
    /// The container's log file.
    pub log_path: PathBuf,
    /// Writes succeed again (the gap has ended); `false`: output is being dropped.
    pub writing: bool,
    /// Bytes of output lost in the gap this report is about (0 when it has just begun).
    pub lost_bytes: u64,
    /// Log entries lost in that gap.
    pub lost_entries: u64,
    /// Bytes lost over the container's life.
    pub total_lost_bytes: u64,
    /// Entries lost over the container's life.
    pub total_lost_entries: u64,
    /// The write error that began the gap.
    pub error: String,
}

/// The log-gap file of the container whose exit file is `exit_file`.
pub fn log_gap_file(exit_file: &Path) -> PathBuf {
    exit_file.with_file_name(LOG_GAP_FILE)
}

/// Replaces a log-gap file: a temporary file beside it renamed over it (not synced: the
/// report is for the log, nothing depends on it after a crash).
pub fn write_log_gap_file(path: &Path, report: &LogGapReport) -> Result<(), MonitorError> {
    let fail = |e: std::io::Error| {
        MonitorError::io(format!("cannot write log-gap file {}", path.display()), e)
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let data = serde_json::to_vec(report)
        .map_err(|e| MonitorError::io("cannot encode log-gap report", e))?;
    std::fs::write(&tmp, data).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Reads a log-gap file (`Ok(None)` when there is none).
pub fn read_log_gap_file(path: &Path) -> Result<Option<LogGapReport>, MonitorError> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| MonitorError::Io {
                message: format!("log-gap file {} is corrupt: {e}", path.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MonitorError::io(
            format!("cannot read log-gap file {}", path.display()),
            e,
        )),
    }
}

/// Reads an exit file: `Ok(None)` when it does not exist (the container has not exited,
/// or the monitor died before it could write it).
pub fn read_exit_file(path: &Path) -> Result<Option<ExitInfo>, MonitorError> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| MonitorError::Io {
                message: format!("exit file {} is corrupt: {e}", path.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MonitorError::io(
            format!("cannot read exit file {}", path.display()),
            e,
        )),
    }
}

/// Writes an exit file atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory.
pub fn write_exit_file(path: &Path, info: &ExitInfo) -> Result<(), MonitorError> {
    let fail = |e: std::io::Error| {
        MonitorError::io(format!("cannot write exit file {}", path.display()), e)
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let data =
        serde_json::to_vec(info).map_err(|e| MonitorError::io("cannot encode exit info", e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(&data).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        // Durability of the rename; a failure here loses nothing that is not also lost on a
        // crash, so it is not an error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
