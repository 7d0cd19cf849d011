//! Exec sessions: the monitor runs the OCI runtime's detached exec command, learns the
//! process's pid from the pid file once the command exited 0 (the process, reparented to
//! the monitor as subreaper, is then its child), serves the process's stdio on the
//! client's connection and reports its exit in an `Exit` frame.
//!
//! The process's output is read only while the client's queue is under
//! [`EXEC_QUEUE_CAP`]: a slow client slows the process (backpressure), never the monitor.
//! A client that disconnects before the exit gets its process SIGKILLed.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::MonitorError;
use crate::frame::{self, ExitFrame, FrameType};
use crate::logfmt::Stream;
use crate::process;
use crate::protocol::{ExecRequest, Reply};

use super::child::{decode_status, read_pid_file};
use super::console::{setup_master, terminal_pipe};
use super::sessions::SessionKind;
use super::*;

/// Reads per pipe when an exec's output is drained at its end.
const EXEC_FINAL_READS: usize = 16;

pub(super) enum ExecPhase {
    /// The runtime's exec command runs.
    Starting {
        runtime_pid: i32,
        deadline: Instant,
        pid_file: PathBuf,
    },
    /// The process runs.
    Running { pid: i32 },
    /// The process exited; its output is drained until EOF or `deadline`.
    Draining { exit: ExitFrame, deadline: Instant },
}

/// A process exec'd in a container, served on the connection of the same token.
pub(super) struct Exec {
    pub(super) token: u64,
    pub(super) phase: ExecPhase,
    /// stdout, stderr, terminal.
    pub(super) pipes: [Option<Pipe>; 3],
    pub(super) input: Input,
    pub(super) console: Option<ConsoleSocket>,
    tty: bool,
    stdin: bool,
    /// The client is gone: the process is (or will be) killed, its output discarded.
    abandoned: bool,
}

impl Exec {
    pub(super) fn is_starting(&self) -> bool {
        matches!(self.phase, ExecPhase::Starting { .. })
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            ExecPhase::Starting { deadline, .. } | ExecPhase::Draining { deadline, .. } => {
                Some(deadline)
            }
            ExecPhase::Running { .. } => None,
        }
    }
}

impl Server {
    /// `exec`: validates, runs the exec command; answered when it exits.
    pub(super) fn exec(&mut self, token: u64, req: ExecRequest) -> Result<(), MonitorError> {
        let bad = |message: String| Err(MonitorError::BadRequest { message });
        let id = req.container_id;
        let c = self
            .containers
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| MonitorError::NotFound { id: id.clone() })?;
        match c.phase {
            Phase::Running { .. } => {}
            Phase::Creating { .. } => return Err(MonitorError::Busy { id }),
            Phase::Draining { .. } | Phase::Exited { .. } => {
                return Err(MonitorError::NotRunning { id });
            }
        }
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return bad("argv is empty".into());
        }
        if !req.pid_file.is_absolute() {
            return bad(format!(
                "pid_file {} is not absolute",
                req.pid_file.display()
            ));
        }
        self.check_session_limit()?;
        let console = match (&req.console_socket, req.tty) {
            (Some(path), true) => Some(ConsoleSocket::bind(path)?),
            (None, true) => return bad("a tty exec needs console_socket".into()),
            (_, false) => None,
        };
        let super::streams::Spawned {
            pid: runtime_pid,
            out: out_r,
            err: err_r,
            input,
        } = super::streams::spawn_with_stdio(&req.argv, req.stdin && !req.tty)?;
        let timeout = match req.timeout_secs {
            0 => DEFAULT_CREATE_TIMEOUT,
            t => t,
        };
        let output = |file, stream| Pipe {
            file: Some(File::from(file)),
            stream,
            pending: Vec::new(),
        };
        self.execs.push(Exec {
            token,
            phase: ExecPhase::Starting {
                runtime_pid,
                deadline: Instant::now() + Duration::from_secs(timeout),
                pid_file: req.pid_file,
            },
            pipes: [
                Some(output(out_r, Stream::Stdout)),
                Some(output(err_r, Stream::Stderr)),
                None,
            ],
            input,
            console,
            tty: req.tty,
            stdin: req.stdin,
            abandoned: false,
        });
        if let Some(c) = self.clients.iter_mut().find(|c| c.token == token) {
            c.state = ClientState::Waiting;
        }
        Ok(())
    }

    /// Whether an exec's output is read now: once it runs, while its client's queue has
    /// room (always when the client is gone: the output is discarded).
    pub(super) fn exec_reads(&self, x: &Exec) -> bool {
        if x.is_starting() {
            return false;
        }
        match self.clients.iter().find(|c| c.token == x.token) {
            Some(c) => c.state != ClientState::Session || c.queued() < EXEC_QUEUE_CAP,
            None => true,
        }
    }

    /// Reads an exec's pipe up to `reads` times and queues the bytes as frames.
    pub(super) fn exec_pump(&mut self, ei: usize, which: usize, reads: usize) {
        let Some(x) = self.execs.get_mut(ei) else {
            return;
        };
        for _ in 0..reads {
            let Some(pipe) = x.pipes[which].as_mut() else {
                return;
            };
            let Some(file) = pipe.file.as_mut() else {
                return;
            };
            match file.read(&mut self.readbuf) {
                Ok(0) => {
                    x.pipes[which] = None;
                    return;
                }
                Ok(n) => {
                    let kind = match pipe.stream {
                        Stream::Stdout => FrameType::Stdout,
                        Stream::Stderr => FrameType::Stderr,
                    };
                    if let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.token == x.token && c.state == ClientState::Session)
                    {
                        frame::encode(&mut c.out, kind, &self.readbuf[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    // EIO: every holder of the terminal's slave side is gone.
                    x.pipes[which] = None;
                    return;
                }
            }
        }
    }

    /// Takes an exec's terminal from its console socket, if it has arrived.
    pub(super) fn exec_console(&mut self, ei: usize) {
        let x = &mut self.execs[ei];
        let Some(sock) = x.console.as_mut() else {
            return;
        };
        match sock.try_receive() {
            Ok(None) => {}
            Ok(Some(fd)) => {
                x.console = None;
                match setup_master(&fd).and_then(|()| terminal_pipe(fd, x.stdin)) {
                    Ok((pipe, input)) => {
                        x.pipes[TERMINAL] = Some(pipe);
                        x.input = input;
                    }
                    Err(e) => eprintln!("berth-monitor: exec terminal: {e}"),
                }
            }
            Err(e) => {
                eprintln!("berth-monitor: exec console socket: {e}");
                x.console = None;
            }
        }
    }

    /// The exec command exited: the session begins, or the client gets the error.
    pub(super) fn exec_started(&mut self, ei: usize, status: i32) {
        let (exit_code, _) = decode_status(status);
        let ExecPhase::Starting { pid_file, .. } = &self.execs[ei].phase else {
            return;
        };
        let pid_file = pid_file.clone();
        let token = self.execs[ei].token;
        let mut result = if exit_code == 0 {
            read_pid_file(&pid_file)
        } else {
            Err(MonitorError::RuntimeFailed {
                exit_code,
                output: self.exec_runtime_output(ei),
            })
        };
        let _ = std::fs::remove_file(&pid_file);
        if let Ok(pid) = result
            && self.execs[ei].tty
            && self.execs[ei].pipes[TERMINAL].is_none()
        {
            self.exec_console(ei);
            if self.execs[ei].pipes[TERMINAL].is_none() {
                process::kill_pid(pid);
                result = Err(MonitorError::Protocol {
                    message: "the runtime sent no terminal on the console socket".into(),
                });
            }
        }
        let pid = match result {
            Ok(pid) => pid,
            Err(error) => {
                self.execs.remove(ei);
                self.reply(token, Reply::Error { error });
                return;
            }
        };
        let x = &mut self.execs[ei];
        x.phase = ExecPhase::Running { pid };
        x.console = None;
        if x.abandoned {
            process::kill_pid(pid);
        } else {
            self.start_session(token, &Reply::ExecStarted { pid }, SessionKind::Exec);
        }
        if let Some(i) = self.orphans.iter().position(|o| o.pid == pid) {
            let o = self.orphans.remove(i);
            if !process::process_alive(pid) {
                self.exec_exited(ei, o.status);
            }
        }
    }

    /// What the exec command wrote before it failed, for the error.
    fn exec_runtime_output(&mut self, ei: usize) -> String {
        let mut all = Vec::new();
        for which in [1, 0] {
            if let Some(file) = self.execs[ei].pipes[which]
                .as_mut()
                .and_then(|p| p.file.as_mut())
            {
                while all.len() < CREATE_OUTPUT_CAP {
                    match file.read(&mut self.readbuf) {
                        Ok(n) if n > 0 => all.extend_from_slice(&self.readbuf[..n]),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        _ => break,
                    }
                }
            }
        }
        all.truncate(CREATE_OUTPUT_CAP);
        String::from_utf8_lossy(all.trim_ascii()).into_owned()
    }

    /// The exec'd process was reaped.
    pub(super) fn exec_exited(&mut self, ei: usize, status: i32) {
        let x = &mut self.execs[ei];
        if !matches!(x.phase, ExecPhase::Running { .. }) {
            return;
        }
        let (exit_code, signal) = decode_status(status);
        x.phase = ExecPhase::Draining {
            exit: ExitFrame { exit_code, signal },
            deadline: Instant::now() + DRAIN_CAP,
        };
        // Nobody writes its stdin any more.
        x.input = Input::default();
    }

    /// Exec deadlines: a runtime command that takes too long is killed; a drained (or
    /// drain-timed-out) exit is reported.
    pub(super) fn exec_tick(&mut self, now: Instant) {
        let mut ei = 0;
        while ei < self.execs.len() {
            match self.execs[ei].phase {
                ExecPhase::Starting {
                    runtime_pid,
                    deadline,
                    ..
                } if now >= deadline => {
                    process::kill_pid(runtime_pid);
                    let x = self.execs.remove(ei);
                    let error = MonitorError::Timeout {
                        message: "the OCI runtime's exec command did not finish in time".into(),
                    };
                    self.reply(x.token, Reply::Error { error });
                    continue;
                }
                ExecPhase::Draining { exit, deadline } => {
                    let open = self.execs[ei].pipes.iter().any(|p| p.is_some());
                    if !open {
                        self.finish_exec(ei, exit);
                        continue;
                    }
                    if now >= deadline {
                        if !self.exec_reads(&self.execs[ei]) {
                            // The client is slow, not the pipes: wait for it.
                            if let ExecPhase::Draining { deadline, .. } = &mut self.execs[ei].phase
                            {
                                *deadline = now + DRAIN_CAP;
                            }
                        } else {
                            self.finish_exec(ei, exit);
                            continue;
                        }
                    }
                }
                _ => {}
            }
            ei += 1;
        }
    }

    /// Drains what is left, sends the exit frame, forgets the exec.
    fn finish_exec(&mut self, ei: usize, exit: ExitFrame) {
        for which in 0..3 {
            self.exec_pump(ei, which, EXEC_FINAL_READS);
        }
        let x = self.execs.remove(ei);
        let payload = serde_json::to_vec(&exit).unwrap_or_default();
        self.session_end(x.token, FrameType::Exit, &payload);
    }

    /// Execs whose client is gone: the process is killed (once its pid is known).
    pub(super) fn abandon_execs(&mut self) {
        for x in &mut self.execs {
            if x.abandoned || self.clients.iter().any(|c| c.token == x.token) {
                continue;
            }
            x.abandoned = true;
            x.input = Input::default();
            if let ExecPhase::Running { pid } = x.phase {
                process::kill_pid(pid);
            }
        }
    }
}
