//! Container output: the stdout / stderr pipes, logged in the CRI format.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::MonitorError;
use crate::logfmt::{self, Stream};
use crate::logsink::Transition;
use crate::protocol::{LogGapReport, log_gap_file, write_log_gap_file};

use super::*;

/// One end of a container's stdout or stderr.
pub(super) struct Pipe {
    /// The read end; `None` after EOF (the pending bytes may still wait for emission).
    pub(super) file: Option<File>,
    pub(super) stream: Stream,
    /// Bytes read but not yet written as entries: an unterminated line, or everything
    /// while the create command runs.
    pub(super) pending: Vec<u8>,
}

impl Server {
    /// Reads a pipe up to `reads` times (until it would block or hits EOF) and logs the
    /// complete entries (held back while the create command runs).
    pub(super) fn pump(&mut self, ci: usize, which: usize, reads: usize) {
        for _ in 0..reads {
            let Some(c) = self.containers.get_mut(ci) else {
                return;
            };
            let Some(pipe) = c.pipes[which].as_mut() else {
                return;
            };
            let Some(file) = pipe.file.as_mut() else {
                return;
            };
            match file.read(&mut self.readbuf) {
                Ok(0) => {
                    pipe.file = None;
                    if !matches!(c.phase, Phase::Creating { .. }) {
                        self.close_pipe(ci, which);
                    }
                    return;
                }
                Ok(n) => {
                    pipe.pending.extend_from_slice(&self.readbuf[..n]);
                    let creating = matches!(c.phase, Phase::Creating { .. });
                    if !creating {
                        super::sessions::fan_out(
                            &mut self.clients,
                            &c.id,
                            pipe.stream,
                            &self.readbuf[..n],
                        );
                    }
                    let hold = creating && pipe.pending.len() <= CREATE_HOLD_CAP;
                    if !hold {
                        self.emit(ci, which);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    pipe.file = None;
                    if !matches!(c.phase, Phase::Creating { .. }) {
                        self.close_pipe(ci, which);
                    }
                    return;
                }
            }
        }
    }

    /// Writes the complete entries pending on a pipe (all of it when the pipe is at EOF).
    /// Entries the log file cannot take (a full disk) are dropped and counted, never kept:
    /// the pipes are always drained, so the container never blocks on its output.
    pub(super) fn emit(&mut self, ci: usize, which: usize) {
        let Some(c) = self.containers.get_mut(ci) else {
            return;
        };
        let Some(pipe) = c.pipes[which].as_mut() else {
            return;
        };
        let eof = pipe.file.is_none();
        let stream = pipe.stream;
        let ts = logfmt::now_ns();
        let scratch = &mut self.scratch;
        let log = c.log.as_ref();
        let sink = &mut c.sink;
        let mut transitions = Vec::new();
        let consumed = match log {
            Some(mut log) => {
                sink.write_batch(&mut log, scratch, ts, stream, &pipe.pending, eof, |t| {
                    transitions.push(t)
                })
            }
            // No log file: the output is dropped, entry boundaries as usual.
            None => logfmt::split_entries(&pipe.pending, eof, |_, _| {}),
        };
        pipe.pending.drain(..consumed);
        if pipe.pending.capacity() > 2 * READ_CHUNK && pipe.pending.len() < READ_CHUNK {
            pipe.pending.shrink_to(READ_CHUNK);
        }
        // A batch of short lines formats to a few times the read; only what a read of
        // one-byte lines takes (about 20 times) is given back.
        if scratch.capacity() > 4 * READ_CHUNK {
            scratch.shrink_to(2 * READ_CHUNK);
        }
        for t in transitions {
            report_log_gap(c, Some(t));
        }
    }

    /// Logs what is left on a pipe and closes it.
    pub(super) fn close_pipe(&mut self, ci: usize, which: usize) {
        let Some(c) = self.containers.get_mut(ci) else {
            return;
        };
        if let Some(pipe) = c.pipes[which].as_mut() {
            pipe.file = None;
        } else {
            return;
        }
        self.emit(ci, which);
        self.containers[ci].pipes[which] = None;
    }
}

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), MonitorError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::io("pipe2", e))?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| MonitorError::io("fcntl", e))?;
    Ok((r, w))
}

/// A pipe for a child's stdin: the read end (blocking) for the child, the write end
/// (non-blocking) for the monitor.
pub(super) fn stdin_pipe() -> Result<(OwnedFd, OwnedFd), MonitorError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::io("pipe2", e))?;
    nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| MonitorError::io("fcntl", e))?;
    Ok((r, w))
}

pub(super) fn open_log(path: &Path) -> Result<File, MonitorError> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| MonitorError::io(format!("cannot open log file {}", path.display()), e))
}

/// A runtime command started with its stdio held by the monitor.
pub(super) struct Spawned {
    /// Its pid (reaped by the SIGCHLD loop, not by `Child`).
    pub pid: i32,
    /// Read end of its stdout.
    pub out: OwnedFd,
    /// Read end of its stderr.
    pub err: OwnedFd,
    /// The writer of its stdin: a pipe with `stdin`, else nothing (stdin is /dev/null).
    pub input: Input,
}

/// Runs `argv` (program first) in `/` with stdout and stderr on fresh pipes and stdin on a
/// pipe the monitor keeps when `stdin` (a terminal's stdin is the terminal instead). The
/// write ends go into the command and are closed here, so EOF on a read end means every
/// holder (the command, the container after it) is gone.
pub(super) fn spawn_with_stdio(argv: &[String], stdin: bool) -> Result<Spawned, MonitorError> {
    let program = argv
        .first()
        .ok_or_else(|| MonitorError::io("empty command line", std::io::Error::other("empty")))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin, input) = if stdin {
        let (r, w) = stdin_pipe()?;
        (Stdio::from(r), Input::new(File::from(w)))
    } else {
        (Stdio::null(), Input::default())
    };
    let child = Command::new(program)
        .args(&argv[1..])
        .stdin(stdin)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .current_dir("/")
        .spawn()
        .map_err(|e| MonitorError::io(format!("cannot run {program}"), e))?;
    Ok(Spawned {
        pid: child.id() as i32,
        out: out_r,
        err: err_r,
        input,
    })
}

/// Tells about a gap in a container's log: on the monitor's stderr (`<pod_dir>/monitor.log`)
/// and in the log-gap file beside the exit file, which berthd watches and logs. `None`:
/// the container is done while its log still fails (the final count).
pub(super) fn report_log_gap(c: &Container, t: Option<Transition>) {
    let (total_bytes, total_entries) = c.sink.total_lost();
    let report = match t {
        Some(Transition::GapStarted { error }) => {
            eprintln!(
                "berth-monitor: container {}: cannot write {}: {error}; dropping its output until writes succeed",
                c.id,
                c.log_path.display()
            );
            LogGapReport {
                log_path: c.log_path.clone(),
                writing: false,
                lost_bytes: 0,
                lost_entries: 0,
                total_lost_bytes: total_bytes,
                total_lost_entries: total_entries,
                error,
            }
        }
        Some(Transition::GapEnded {
            lost_bytes,
            lost_entries,
            error,
        }) => {
            eprintln!(
                "berth-monitor: container {}: {} written again; {lost_bytes} bytes of output ({lost_entries} log entries) were lost ({error})",
                c.id,
                c.log_path.display()
            );
            LogGapReport {
                log_path: c.log_path.clone(),
                writing: true,
                lost_bytes,
                lost_entries,
                total_lost_bytes: total_bytes,
                total_lost_entries: total_entries,
                error,
            }
        }
        None => {
            let Some(gap) = c.sink.gap() else {
                return;
            };
            eprintln!(
                "berth-monitor: container {}: done while {} could not be written; {} bytes of output ({} log entries) were lost ({})",
                c.id,
                c.log_path.display(),
                gap.lost_bytes,
                gap.lost_entries,
                gap.error
            );
            LogGapReport {
                log_path: c.log_path.clone(),
                writing: false,
                lost_bytes: gap.lost_bytes,
                lost_entries: gap.lost_entries,
                total_lost_bytes: total_bytes,
                total_lost_entries: total_entries,
                error: gap.error.clone(),
            }
        }
    };
    if let Err(e) = write_log_gap_file(&log_gap_file(&c.exit_file), &report) {
        eprintln!("berth-monitor: container {}: {e}", c.id);
    }
}
