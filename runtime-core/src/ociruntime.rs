//! Driving an OCI runtime (runc, crun) through its command line: create (run by the pod
//! monitor, see `monitor`), start, state, kill, delete, exec, update. Every call gets a
//! JSON `--log` file so a failure's message is the runtime's own words.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::{Error, Result};

/// One configured OCI runtime (a runtime handler).
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// Handler name (`runc`).
    pub name: String,
    /// Binary.
    pub path: PathBuf,
    /// The runtime's state root (`--root`).
    pub root: PathBuf,
    /// How long one call (kill, delete, state, update) may take before it is killed.
    pub call_timeout: std::time::Duration,
}

/// What `state` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RuntimeState {
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
    /// Init pid (0 when stopped).
    #[serde(default)]
    pub pid: i32,
}

/// Output of a finished exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
}

/// Most output ExecSync keeps per stream, as kubelet's limit for exec probes is 16 MiB.
const MAX_EXEC_OUTPUT: usize = 16 << 20;

impl OciRuntime {
    /// The runtime binary and its global options (state root, JSON log to `log`): the
    /// start of every runtime command line berth runs or has the monitor run.
    fn global_argv(&self, log: &Path) -> Vec<String> {
        vec![
            self.path.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "--log".into(),
            log.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ]
    }

    fn base(&self, log: &Path) -> Command {
        let mut c = Command::new(&self.path);
        c.args(&self.global_argv(log)[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// The argv that creates and starts the container in one runtime call (`run
    /// --detach`), which the pod monitor runs so that it becomes the parent of the
    /// container's init. One invocation instead of `create` + `start` saves a whole runtime
    /// start-up per container; CRI's create / start split is kept by berth doing this at
    /// StartContainer (CreateContainer only prepares the bundle). A terminal container
    /// names the monitor's `console_socket`, on which the runtime sends the pty master.
    pub fn run_argv(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        console_socket: Option<&Path>,
    ) -> Vec<String> {
        let mut argv = self.global_argv(log);
        argv.extend([
            "run".into(),
            "--detach".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
        ]);
        if let Some(sock) = console_socket {
            argv.push("--console-socket".into());
            argv.push(sock.display().to_string());
        }
        argv.push(id.into());
        argv
    }

    /// The argv of a detached exec that the pod monitor runs for a streaming exec session:
    /// the process's pid goes to `pid_file`, and it is reparented to the monitor when the
    /// runtime exits. With `console_socket` the process gets a terminal whose master the
    /// runtime sends there. The process's cwd, user and environment are the container's.
    pub fn exec_argv(
        &self,
        id: &str,
        log: &Path,
        pid_file: &Path,
        cmd: &[String],
        console_socket: Option<&Path>,
    ) -> Vec<String> {
        let mut argv = self.global_argv(log);
        argv.extend([
            "exec".into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.display().to_string(),
        ]);
        if let Some(sock) = console_socket {
            argv.push("--tty".into());
            argv.push("--console-socket".into());
            argv.push(sock.display().to_string());
        }
        argv.push(id.into());
        argv.extend(cmd.iter().cloned());
        argv
    }

    async fn run(&self, what: &str, id: &str, log: &Path, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = self.base(log);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A runtime that hangs is killed when its output future is dropped (kill_on_drop).
        let out = tokio::time::timeout(self.call_timeout, cmd.output())
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "{} {what} {id} did not finish within {:?}; it was killed",
                    self.name, self.call_timeout
                ))
            })?
            .map_err(|e| Error::Internal(format!("run {} {what}: {e}", self.path.display())))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(Error::Internal(format!(
            "{} {what} {id}: {}",
            self.name,
            failure_message(log, &out.stderr, out.status.code())
        )))
    }

    /// `kill`: sends `signal` to the init (or every process with `all`).
    pub async fn kill(&self, id: &str, log: &Path, signal: i32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.run("kill", id, log, &args).await.map(drop)
    }

    /// `delete --force`; a container the runtime does not know is not an error.
    pub async fn delete(&self, id: &str, log: &Path) -> Result<()> {
        if !self.knows(id) {
            return Ok(());
        }
        match self
            .run("delete", id, log, &["delete", "--force", id])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if unknown_container(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// False when the runtime certainly has no state of container `id`: runc, crun and
    /// youki keep it in `<root>/<id>`, and after a reboot (the root is on /run) or once
    /// deleted it is gone. Saves a runtime start (about 8 ms of runc) per RemoveContainer
    /// of such containers, thousands of them on a node that rebooted with many exited.
    /// Other runtimes are always asked.
    fn knows(&self, id: &str) -> bool {
        let keeps_state_dir = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| ["runc", "crun", "youki"].contains(&n));
        !keeps_state_dir || id.is_empty() || id.contains('/') || self.root.join(id).exists()
    }

    /// `state`; `None` when the runtime does not know the container.
    pub async fn state(&self, id: &str, log: &Path) -> Result<Option<RuntimeState>> {
        match self.run("state", id, log, &["state", id]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| Error::Internal(format!("{} state {id}: {e}", self.name))),
            Err(e) if unknown_container(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `update --resources FILE`: applies new resource limits to a running container.
    pub async fn update(&self, id: &str, log: &Path, resources_file: &Path) -> Result<()> {
        let file = resources_file.display().to_string();
        self.run("update", id, log, &["update", "--resources", &file, id])
            .await
            .map(drop)
    }

    /// Runs `cmd` in the container and collects its output; after `timeout` the process is
    /// killed and DeadlineExceeded returned.
    pub async fn exec_sync(
        &self,
        id: &str,
        log: &Path,
        pid_file: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        // Run on a task of its own: when the client gives up first (its deadline often
        // equals the exec timeout) the RPC future is dropped, and the timeout handling
        // below must still kill the process.
        let this = self.clone();
        let (id, log, pid_file, cmd) = (
            id.to_string(),
            log.to_path_buf(),
            pid_file.to_path_buf(),
            cmd.to_vec(),
        );
        tokio::spawn(async move {
            this.exec_sync_inner(&id, &log, &pid_file, &cmd, timeout)
                .await
        })
        .await
        .map_err(|e| Error::Internal(format!("exec task: {e}")))?
    }

    async fn exec_sync_inner(
        &self,
        id: &str,
        log: &Path,
        pid_file: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let mut c = self.base(log);
        c.arg("exec").arg("--pid-file").arg(pid_file).arg(id);
        c.args(cmd);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| Error::Internal(format!("run {} exec: {e}", self.path.display())))?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read_all = async {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let ro = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.take(MAX_EXEC_OUTPUT as u64).read_to_end(&mut o).await;
                }
            };
            let re = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(MAX_EXEC_OUTPUT as u64).read_to_end(&mut e).await;
                }
            };
            tokio::join!(ro, re);
            let status = child.wait().await;
            (o, e, status)
        };
        let finished = match timeout {
            Some(t) => tokio::time::timeout(t, read_all).await.ok(),
            None => Some(read_all.await),
        };
        let Some((stdout, stderr, status)) = finished else {
            // The exec'd process is not our child (runc forks it into the container), so
            // kill it by the pid runc recorded; runc exec then exits too.
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 0)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                // Answer only once it is gone, so a caller checking right after the timeout
                // (as critest does) finds no trace of it.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while tokio::time::Instant::now() < deadline && pid_alive(pid) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let _ = std::fs::remove_file(pid_file);
            return Err(Error::DeadlineExceeded(format!(
                "command {cmd:?} in container {id} timed out after {}s",
                timeout.map(|t| t.as_secs()).unwrap_or(0)
            )));
        };
        let _ = std::fs::remove_file(pid_file);
        let status = status.map_err(|e| Error::Internal(format!("wait for exec: {e}")))?;
        let exit_code = match status.code() {
            Some(c) => c,
            None => {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            }
        };
        // runc exits 255 with its own message in the log when it could not start the
        // process (e.g. the command does not exist); that is the exec's failure, reported
        // like containerd does: as the output of a failed command.
        if exit_code == 255 && stdout.is_empty() {
            let msg = failure_message(log, &stderr, Some(255));
            return Ok(ExecOutput {
                stdout,
                stderr: msg.into_bytes(),
                exit_code: 126,
            });
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}

/// True when a runtime error says the container is unknown to the runtime (runc and crun
/// word it differently).
fn unknown_container(e: &Error) -> bool {
    let m = e.to_string();
    m.contains("does not exist") || m.contains("not found")
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The runtime's error: the last `error`-level message of its JSON log, else its stderr.
pub fn failure_message(log: &Path, stderr: &[u8], code: Option<i32>) -> String {
    if let Ok(text) = std::fs::read_to_string(log) {
        let msg = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
            .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string));
        if let Some(m) = msg {
            return m;
        }
    }
    let s = String::from_utf8_lossy(stderr).trim().to_string();
    if s.is_empty() {
        format!("exited with code {}", code.unwrap_or(-1))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_prefers_log_error() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\n",
        )
        .unwrap();
        assert!(failure_message(&log, b"x", Some(1)).contains("executable file not found"));
        assert_eq!(
            failure_message(&d.path().join("none"), b" boom \n", Some(1)),
            "boom"
        );
        assert_eq!(
            failure_message(&d.path().join("none"), b"", Some(3)),
            "exited with code 3"
        );
    }

    #[tokio::test]
    async fn delete_of_a_container_without_runtime_state_runs_nothing() {
        let d = tempfile::tempdir().unwrap();
        let runtime = |bin: &str| OciRuntime {
            name: "h".into(),
            path: PathBuf::from(bin),
            root: d.path().to_path_buf(),
            call_timeout: Duration::from_secs(5),
        };
        // The binary does not exist: any call would fail, so Ok means nothing ran.
        let runc = runtime("/nonexistent/bin/runc");
        let log = d.path().join("log.json");
        assert!(!runc.knows("abc"));
        runc.delete("abc", &log).await.unwrap();
        std::fs::create_dir(d.path().join("abc")).unwrap();
        assert!(runc.knows("abc"));
        assert!(
            runc.delete("abc", &log).await.is_err(),
            "a known container is deleted by the runtime"
        );
        let other = runtime("/nonexistent/bin/kata-runtime");
        assert!(
            other.knows("xyz"),
            "runtimes of other layouts are always asked"
        );
        assert!(runc.knows("../x"));
    }

    #[test]
    fn create_argv_shape() {
        let r = OciRuntime {
            name: "runc".into(),
            path: "/usr/sbin/runc".into(),
            root: "/run/berth/runc".into(),
            call_timeout: std::time::Duration::from_secs(60),
        };
        let argv = r.run_argv(
            "c1",
            Path::new("/b"),
            Path::new("/b/pid"),
            Path::new("/b/log"),
            None,
        );
        assert_eq!(argv[0], "/usr/sbin/runc");
        assert_eq!(argv.last().unwrap(), "c1");
        assert!(argv.windows(2).any(|w| w[0] == "--bundle" && w[1] == "/b"));
        assert!(!argv.iter().any(|a| a == "--console-socket"));
        let argv = r.run_argv(
            "c1",
            Path::new("/b"),
            Path::new("/b/pid"),
            Path::new("/b/log"),
            Some(Path::new("/p/c.tty")),
        );
        assert_eq!(argv.last().unwrap(), "c1");
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--console-socket" && w[1] == "/p/c.tty")
        );
        let cmd = vec!["sh".to_string(), "-c".to_string(), "echo".to_string()];
        let argv = r.exec_argv(
            "c1",
            Path::new("/b/log"),
            Path::new("/b/x.pid"),
            &cmd,
            Some(Path::new("/p/x.tty")),
        );
        let exec = argv.iter().position(|a| a == "exec").unwrap();
        assert_eq!(
            &argv[exec..],
            [
                "exec",
                "--detach",
                "--pid-file",
                "/b/x.pid",
                "--tty",
                "--console-socket",
                "/p/x.tty",
                "c1",
                "sh",
                "-c",
                "echo"
            ]
        );
    }
}
