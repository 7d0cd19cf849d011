//! Long-running processes the bench starts (the registry, berthd, containerd): spawned in
//! a process group of their own (so a Ctrl-C at the terminal reaches only the bench, which
//! then cleans up in order), logging to a file, stopped by PID.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child process of the bench.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args` with stdin `/dev/null` and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The process ID while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        e2e::util::tail_file(&self.log, lines)
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; reaps it. `None` if it
    /// was not running.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(child.id() as i32);
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(pid, Signal::SIGTERM);
        let exited = e2e::poll_until(grace, &format!("{} to exit", self.name), || {
            let r = child.try_wait();
            async move { Ok(r?) }
        })
        .await;
        match exited {
            Ok(status) => Some(status),
            Err(_) => {
                eprintln!(
                    "berth-bench: {} did not exit within {grace:?} of SIGTERM; sending SIGKILL",
                    self.name
                );
                let _ = child.kill();
                child.wait().ok()
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Last resort (the orderly path is `stop`): never leave our child running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
