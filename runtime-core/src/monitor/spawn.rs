//! Starting the detached processes of a pod: the monitor and the pause process. Both are
//! double-forked (the intermediate child calls `setsid` and exits at once), so they are in
//! a session and process group of their own, have cwd `/`, stdin `/dev/null`, no fd of the
//! caller, and are reparented away from the caller: berthd never has to reap them and
//! they outlive it.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::MonitorError;
pub use berth_monitor::process::{
    LOG_FILE, PAUSE_PID_FILE, PID_FILE, SOCKET_NAME, check_socket_path, ping_sync, process_alive,
    spawn_pause_in_new_pidns, write_pid_file,
};
use berth_monitor::process::{
    Namespaces, absolute, detached_exec, kill_pid, open_devnull, open_log,
};

/// How long [`spawn`] waits for the monitor's socket to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorInfo {
    /// Its host pid.
    pub pid: i32,
    /// Its socket, `<pod_dir>/monitor.sock`.
    pub socket: PathBuf,
}

/// Starts a monitor for a pod, fully detached, and waits (at most [`READY_TIMEOUT`]) until
/// its socket answers a ping. The monitor writes `<pod_dir>/monitor.pid` before it listens
/// and logs its own diagnostics to `<pod_dir>/monitor.log`. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn spawn(binary: &Path, pod_dir: &Path) -> Result<MonitorInfo, MonitorError> {
    let pod_dir = absolute(pod_dir)?;
    let socket = pod_dir.join(SOCKET_NAME);
    check_socket_path(&socket)?;
    let log_path = pod_dir.join(LOG_FILE);
    let log = open_log(&log_path)?;
    let devnull = open_devnull()?;
    let argv = [binary.as_os_str(), OsStr::new("serve"), pod_dir.as_os_str()];
    let pid = detached_exec(
        binary,
        &argv,
        [devnull.as_raw_fd(), log.as_raw_fd(), log.as_raw_fd()],
        Namespaces::Inherited,
    )?;
    drop((log, devnull));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match ping_sync(&socket) {
            Ok(p) if p == pid => return Ok(MonitorInfo { pid, socket }),
            Ok(other) => {
                kill_pid(pid);
                return Err(MonitorError::Spawn {
                    message: format!(
                        "another monitor (pid {other}) already serves {}",
                        socket.display()
                    ),
                });
            }
            Err(_) => {}
        }
        if !process_alive(pid) {
            return Err(MonitorError::Spawn {
                message: format!("monitor exited during startup: {}", log_tail(&log_path)),
            });
        }
        if Instant::now() >= deadline {
            kill_pid(pid);
            return Err(MonitorError::Timeout {
                message: format!(
                    "monitor {pid} did not answer on {} within {READY_TIMEOUT:?}",
                    socket.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn log_tail(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let tail = &data[data.len().saturating_sub(1024)..];
    let text = String::from_utf8_lossy(tail).trim().to_string();
    if text.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        text
    }
}
