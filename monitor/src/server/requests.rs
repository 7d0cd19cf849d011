//! The requests of the protocol (all but the ones answered by the connection code).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::MonitorError;
use crate::logfmt::Stream;
use crate::process;
use crate::protocol::{ContainerState, CreateRequest};

use super::console::{setup_master, terminal_pipe};
use super::streams::open_log;
use super::*;

impl Server {
    pub(super) fn create(&mut self, token: u64, req: CreateRequest) -> Result<(), MonitorError> {
        let bad = |message: String| Err(MonitorError::BadRequest { message });
        if req.container_id.is_empty() {
            return bad("container_id is empty".into());
        }
        if self.containers.iter().any(|c| c.id == req.container_id) {
            return Err(MonitorError::AlreadyExists {
                id: req.container_id,
            });
        }
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return bad("argv is empty".into());
        }
        for (name, p) in [
            ("pid_file", &req.pid_file),
            ("log_path", &req.log_path),
            ("exit_file", &req.exit_file),
        ] {
            if !p.is_absolute() {
                return bad(format!("{name} {} is not absolute", p.display()));
            }
        }
        let log = open_log(&req.log_path)?;
        let console = match &req.console_socket {
            Some(path) => Some(ConsoleSocket::bind(path)?),
            None => None,
        };
        let tty = console.is_some();
        // With a terminal, stdin is the terminal (its master arrives on the console
        // socket); otherwise a pipe with `stdin`, else /dev/null.
        let super::streams::Spawned {
            pid: create_pid,
            out: out_r,
            err: err_r,
            input,
        } = super::streams::spawn_with_stdio(&req.argv, req.stdin && !tty)?;
        let timeout = if req.timeout_secs == 0 {
            DEFAULT_CREATE_TIMEOUT
        } else {
            req.timeout_secs
        };
        self.containers.push(Container {
            id: req.container_id,
            log_path: req.log_path,
            exit_file: req.exit_file,
            oom_control: req.oom_control,
            log: Some(log),
            sink: Default::default(),
            pipes: [
                Some(Pipe {
                    file: Some(File::from(out_r)),
                    stream: Stream::Stdout,
                    pending: Vec::new(),
                }),
                Some(Pipe {
                    file: Some(File::from(err_r)),
                    stream: Stream::Stderr,
                    pending: Vec::new(),
                }),
                None,
            ],
            console,
            tty,
            stdin_enabled: req.stdin,
            stdin_once: req.stdin_once,
            input,
            phase: Phase::Creating {
                create_pid,
                client: token,
                deadline: Instant::now() + Duration::from_secs(timeout),
                pid_file: req.pid_file,
            },
        });
        if let Some(c) = self.clients.iter_mut().find(|c| c.token == token) {
            c.state = ClientState::Waiting;
        }
        Ok(())
    }

    pub(super) fn reopen_log(&mut self, id: &str) -> Result<(), MonitorError> {
        let c = self
            .containers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| MonitorError::NotFound { id: id.to_string() })?;
        if c.log.is_none() {
            return Err(MonitorError::NotRunning { id: id.to_string() });
        }
        // Open the new file before closing the old one: on failure the old one stays.
        // Pending partial lines are in memory and go to the new file.
        c.log = Some(open_log(&c.log_path)?);
        c.sink.reopened();
        Ok(())
    }

    pub(super) fn list(&self) -> Vec<ContainerState> {
        self.containers
            .iter()
            .map(|c| {
                let (pid, exit) = match c.phase {
                    Phase::Creating { .. } => (0, None),
                    Phase::Running { pid } | Phase::Draining { pid, .. } => (pid, None),
                    Phase::Exited { pid, exit } => (pid, Some(exit)),
                };
                ContainerState {
                    id: c.id.clone(),
                    pid,
                    exit,
                }
            })
            .collect()
    }

    pub(super) fn forget(&mut self, id: &str) -> Result<(), MonitorError> {
        let Some(ci) = self.containers.iter().position(|c| c.id == id) else {
            return Ok(());
        };
        if matches!(self.containers[ci].phase, Phase::Creating { .. }) {
            return Err(MonitorError::Busy { id: id.to_string() });
        }
        self.containers.remove(ci);
        self.end_attach_sessions(id, None);
        Ok(())
    }

    /// Takes a container's terminal from its console socket, if it has arrived.
    pub(super) fn container_console(&mut self, ci: usize) {
        let c = &mut self.containers[ci];
        let Some(sock) = c.console.as_mut() else {
            return;
        };
        match sock.try_receive() {
            Ok(None) => {}
            Ok(Some(fd)) => {
                c.console = None;
                match setup_master(&fd).and_then(|()| terminal_pipe(fd, c.stdin_enabled)) {
                    Ok((pipe, input)) => {
                        c.pipes[TERMINAL] = Some(pipe);
                        c.input = input;
                    }
                    Err(e) => eprintln!("berth-monitor: container {}: terminal: {e}", c.id),
                }
            }
            Err(e) => {
                eprintln!("berth-monitor: container {}: console socket: {e}", c.id);
                c.console = None;
            }
        }
    }

    pub(super) fn spawn_pause(&mut self, userns: Option<&Path>) -> Result<i32, MonitorError> {
        // The pause process is double-forked; being a subreaper, the monitor becomes its
        // parent when the intermediate child exits.
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        process::spawn_pause_in_new_pidns(&exe, &self.pod_dir, userns)
    }
}

impl Container {
    /// What the create command wrote, stderr first, for an error message.
    pub(super) fn create_output(&self) -> String {
        let mut all = Vec::new();
        for which in [1, 0] {
            if let Some(p) = &self.pipes[which] {
                all.extend_from_slice(p.pending.trim_ascii());
                all.push(b'\n');
            }
        }
        let text = String::from_utf8_lossy(all.trim_ascii());
        let mut end = text.len().min(CREATE_OUTPUT_CAP);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }
}
