//! Child processes: reaping (the monitor is a subreaper), exit statuses, the pause process.

use std::path::Path;
use std::time::Instant;

use crate::error::MonitorError;
use crate::logfmt::{self};
use crate::process;
use crate::protocol::{ExitInfo, Reply, write_exit_file};

use super::*;

/// `berth-monitor pause`: PID 1 of a pod's shared PID namespace. Reaps whatever is
/// reparented to it; exits 0 on SIGTERM or SIGINT.
pub(super) fn pause() -> i32 {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    if let Err(e) = mask.thread_block() {
        eprintln!("berth-monitor pause: cannot block signals: {e}");
        return 1;
    }
    loop {
        reap_all(|_, _| {});
        match mask.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return 0,
            _ => {}
        }
    }
}

/// Reaps every exited child without blocking, calling `f(pid, status)` for each.
pub(super) fn reap_all(mut f: impl FnMut(i32, i32)) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only the status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            f(pid, status);
        } else if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// Exit code (128 + signal when signalled) and signal of a wait status.
pub(super) fn decode_status(status: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}

impl Server {
    pub(super) fn reap(&mut self) {
        let mut reaped = Vec::new();
        reap_all(|pid, status| reaped.push((pid, status, logfmt::now_ns())));
        for (pid, status, at_ns) in reaped {
            let creating = self.containers.iter().position(
                |c| matches!(c.phase, Phase::Creating { create_pid, .. } if create_pid == pid),
            );
            if let Some(ci) = creating {
                self.create_finished(ci, status);
                continue;
            }
            let running = self
                .containers
                .iter()
                .position(|c| matches!(c.phase, Phase::Running { pid: p } if p == pid));
            if let Some(ci) = running {
                self.init_exited(ci, status, at_ns);
                continue;
            }
            let exec = self.execs.iter().position(|x| match x.phase {
                exec::ExecPhase::Starting { runtime_pid, .. } => runtime_pid == pid,
                exec::ExecPhase::Running { pid: p } => p == pid,
                exec::ExecPhase::Draining { .. } => false,
            });
            if let Some(ei) = exec {
                if self.execs[ei].is_starting() {
                    self.exec_started(ei, status);
                } else {
                    self.exec_exited(ei, status);
                }
                continue;
            }
            if self.orphans.len() >= MAX_ORPHANS {
                self.orphans.remove(0);
            }
            self.orphans.push(Orphan {
                pid,
                status,
                at_ns,
                when: Instant::now(),
            });
        }
    }

    pub(super) fn create_finished(&mut self, ci: usize, status: i32) {
        if self.containers[ci].tty && self.containers[ci].pipes[TERMINAL].is_none() {
            self.container_console(ci);
        }
        for which in 0..3 {
            self.pump(ci, which, FINAL_DRAIN_READS);
        }
        let (exit_code, _) = decode_status(status);
        let Phase::Creating {
            client, pid_file, ..
        } = &self.containers[ci].phase
        else {
            return;
        };
        let (client, pid_file) = (*client, pid_file.clone());
        let no_terminal = self.containers[ci].tty && self.containers[ci].pipes[TERMINAL].is_none();
        let result = if exit_code == 0 && no_terminal {
            Err(MonitorError::Protocol {
                message: "the OCI runtime sent no terminal on the console socket".into(),
            })
        } else if exit_code == 0 {
            read_pid_file(&pid_file)
        } else {
            Err(MonitorError::RuntimeFailed {
                exit_code,
                output: self.containers[ci].create_output(),
            })
        };
        match result {
            Ok(pid) => {
                self.containers[ci].phase = Phase::Running { pid };
                self.containers[ci].console = None;
                for which in 0..3 {
                    let at_eof = self.containers[ci].pipes[which]
                        .as_ref()
                        .is_some_and(|p| p.file.is_none());
                    if at_eof {
                        self.close_pipe(ci, which);
                    } else {
                        self.emit(ci, which);
                    }
                }
                self.reply(client, Reply::Created { pid });
                if let Some(i) = self.orphans.iter().position(|o| o.pid == pid) {
                    let o = self.orphans.remove(i);
                    // A live process of that pid is a newer one: the recorded status
                    // belongs to an earlier holder of the pid.
                    if !process::process_alive(pid) {
                        self.init_exited(ci, o.status, o.at_ns);
                    }
                }
            }
            Err(e) => {
                self.containers.remove(ci);
                self.reply(client, Reply::Error { error: e });
            }
        }
    }

    pub(super) fn init_exited(&mut self, ci: usize, status: i32, at_ns: i64) {
        let c = &mut self.containers[ci];
        let Phase::Running { pid } = c.phase else {
            return;
        };
        let (exit_code, signal) = decode_status(status);
        let oom_killed = c.oom_control.as_deref().is_some_and(oom_killed);
        let exit = ExitInfo {
            exit_code,
            signal,
            finished_at_ns: at_ns,
            oom_killed,
        };
        c.phase = Phase::Draining {
            pid,
            exit,
            deadline: Instant::now() + DRAIN_CAP,
        };
        self.check_drained(ci, false);
    }

    /// Finishes a draining container once its pipes are at EOF, its drain deadline has
    /// passed, or `force`: the last output is logged, the exit file written.
    pub(super) fn check_drained(&mut self, ci: usize, force: bool) {
        let Phase::Draining {
            pid,
            exit,
            deadline,
        } = self.containers[ci].phase
        else {
            return;
        };
        let open = self.containers[ci].pipes.iter().any(|p| p.is_some());
        if open && !force && Instant::now() < deadline {
            return;
        }
        for which in 0..3 {
            self.pump(ci, which, FINAL_DRAIN_READS);
            self.close_pipe(ci, which);
        }
        let c = &mut self.containers[ci];
        super::streams::report_log_gap(c, None);
        c.log = None;
        c.input = Input::default();
        if let Err(e) = write_exit_file(&c.exit_file, &exit) {
            eprintln!("berth-monitor: container {}: {e}", c.id);
        }
        c.phase = Phase::Exited { pid, exit };
        let id = c.id.clone();
        let frame = crate::frame::ExitFrame {
            exit_code: exit.exit_code,
            signal: exit.signal,
        };
        self.end_attach_sessions(&id, Some(frame));
    }
}

pub(super) fn read_pid_file(path: &Path) -> Result<i32, MonitorError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MonitorError::io(format!("cannot read pid file {}", path.display()), e))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(MonitorError::Io {
            message: format!("pid file {} holds no pid: {text:?}", path.display()),
        }),
    }
}

/// Whether a cgroup v1 `memory.oom_control` or v2 `memory.events` file records an OOM kill.
pub(super) fn oom_killed(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines().any(|line| {
        let mut it = line.split_ascii_whitespace();
        it.next() == Some("oom_kill")
            && it
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_files() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert!(!oom_killed(&v1));
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert!(oom_killed(&v1));
        let v2 = dir.path().join("memory.events");
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert!(oom_killed(&v2));
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        assert!(!oom_killed(&v2));
        assert!(!oom_killed(&dir.path().join("missing")));
    }

    #[test]
    fn statuses() {
        assert_eq!(decode_status(3 << 8), (3, None));
        assert_eq!(decode_status(9), (137, Some(9)));
    }
}
