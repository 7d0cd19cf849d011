//! The monitor process itself: `berth-monitor serve <pod_dir>` and `berth-monitor pause`.
//!
//! Single-threaded and without an async runtime, to stay far below its memory budget: one
//! `poll(2)` loop over a signalfd (SIGCHLD, SIGTERM, SIGINT), the listening socket, the
//! client connections (requests, then attach / exec sessions), the containers' and exec'd
//! processes' stdout / stderr pipes and terminals, their stdin, and the console sockets on
//! which runc hands over terminals. Nothing in here panics on input; a client that
//! misbehaves gets an error reply or is dropped.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::MonitorError;
use crate::process::{self, PID_FILE, SOCKET_NAME};
use crate::protocol::{ExitInfo, Reply};

mod child;
mod clients;
mod console;
mod exec;
mod requests;
mod sessions;
mod streams;

use child::pause;
use clients::{Client, ClientState};
use console::{ConsoleSocket, Input};
use exec::Exec;
use streams::Pipe;

/// Bytes read from a pipe or a client per `read(2)`.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Largest request line accepted.
pub(super) const MAX_REQUEST: usize = 1 << 20;
/// Connections served at once; more are closed at once.
pub(super) const MAX_CLIENTS: usize = 64;
/// A client must send its request, and take its reply, within this.
pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the output of an exited init is drained when something else (a grandchild of
/// the init) keeps the pipes open.
pub(super) const DRAIN_CAP: Duration = Duration::from_secs(2);
/// How long the status of a reaped pid nobody claimed is kept, for an init whose pid is
/// learned only after it exited.
pub(super) const ORPHAN_TTL: Duration = Duration::from_secs(10);
/// At most this many unclaimed statuses are kept.
pub(super) const MAX_ORPHANS: usize = 256;
/// The create command's output returned in `RuntimeFailed`.
pub(super) const CREATE_OUTPUT_CAP: usize = 4096;
/// Output held back while the create command runs; beyond it, lines go to the log.
pub(super) const CREATE_HOLD_CAP: usize = 64 * 1024;
/// Create timeout when the request says 0.
pub(super) const DEFAULT_CREATE_TIMEOUT: u64 = 60;
/// Reads per pipe when draining at exit (bounded: a producer may still be writing).
pub(super) const FINAL_DRAIN_READS: usize = 128;
/// Attach and exec sessions served at once; more are refused with `too_many_sessions`.
pub(super) const MAX_SESSIONS: usize = 256;
/// Output queued for an attach client beyond which it is dropped (it never slows the
/// container or its log).
pub(super) const ATTACH_QUEUE_CAP: usize = 256 * 1024;
/// Output queued for an exec client beyond which the monitor stops reading the process's
/// output (the process blocks: backpressure).
pub(super) const EXEC_QUEUE_CAP: usize = 256 * 1024;
/// Index of the terminal in a container's or exec's `pipes` (0 stdout, 1 stderr).
pub(super) const TERMINAL: usize = 2;

/// Entry point of the `berth-monitor` binary. Returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).map(|a| a.as_bytes()) {
        Some(b"serve") if args.len() == 3 => serve(Path::new(&args[2])),
        Some(b"pause") if args.len() == 2 => pause(),
        _ => {
            eprintln!("usage: berth-monitor serve <pod-dir> | berth-monitor pause");
            2
        }
    }
}

/// Closes every fd above 2: nothing the monitor inherited (from berthd or whoever started
/// it) stays open in it or reaches a child.
fn close_inherited_fds() {
    // SAFETY: nothing in this process owns an fd above 2 yet (called first thing).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r != 0
        && let Ok(dir) = std::fs::read_dir("/proc/self/fd")
    {
        let fds: Vec<i32> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        // The directory's own fd is closed by now (the iterator is dropped).
        for fd in fds.into_iter().filter(|&fd| fd > 2) {
            // SAFETY: as above; EBADF for the directory fd that was listed is harmless.
            unsafe { libc::close(fd) };
        }
    }
}

/// Raises the soft limit of open files to the hard limit: every session holds a few fds.
fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit / setrlimit only read and write the struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max.min(1 << 16).max(rl.rlim_cur);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// `berth-monitor serve <pod_dir>`.
fn serve(pod_dir: &Path) -> i32 {
    match Server::start(pod_dir) {
        Ok(mut server) => {
            eprintln!(
                "berth-monitor {}: serving {}",
                std::process::id(),
                server.socket_path.display()
            );
            server.run();
            server.cleanup();
            eprintln!("berth-monitor {}: exiting", std::process::id());
            0
        }
        Err(e) => {
            eprintln!("berth-monitor {}: {e}", std::process::id());
            1
        }
    }
}

pub(super) enum Phase {
    /// The create command runs.
    Creating {
        create_pid: i32,
        client: u64,
        deadline: Instant,
        pid_file: PathBuf,
    },
    /// The init runs.
    Running { pid: i32 },
    /// The init exited; its output is drained until EOF or `deadline`.
    Draining {
        pid: i32,
        exit: ExitInfo,
        deadline: Instant,
    },
    /// Done; the exit file is written.
    Exited { pid: i32, exit: ExitInfo },
}

pub(super) struct Container {
    id: String,
    log_path: PathBuf,
    exit_file: PathBuf,
    oom_control: Option<PathBuf>,
    log: Option<File>,
    /// Writes entries to `log`, counting what a full disk loses.
    sink: crate::logsink::LogSink,
    /// stdout, stderr (of the runtime, and of the init without a terminal), terminal.
    pipes: [Option<Pipe>; 3],
    /// Where the terminal comes from, until it has.
    console: Option<ConsoleSocket>,
    /// Created with a terminal.
    tty: bool,
    /// Created with `stdin`.
    stdin_enabled: bool,
    /// Close stdin when the first attach session with stdin ends.
    stdin_once: bool,
    input: Input,
    phase: Phase,
}

/// A reaped child nobody claimed (yet).
pub(super) struct Orphan {
    pid: i32,
    status: i32,
    at_ns: i64,
    when: Instant,
}

#[derive(Clone, Copy)]
pub(super) enum Slot {
    Signal,
    Listener,
    Client(u64),
    Pipe(usize, usize),
    Console(usize),
    Input(usize),
    ExecPipe(usize, usize),
    ExecConsole(usize),
    ExecInput(usize),
}

pub(super) struct Server {
    pod_dir: PathBuf,
    socket_path: PathBuf,
    pid_path: PathBuf,
    signals: SignalFd,
    listener: UnixListener,
    clients: Vec<Client>,
    containers: Vec<Container>,
    execs: Vec<Exec>,
    orphans: Vec<Orphan>,
    next_token: u64,
    scratch: Vec<u8>,
    readbuf: Vec<u8>,
    stop: bool,
}

impl Server {
    fn start(pod_dir: &Path) -> Result<Server, MonitorError> {
        close_inherited_fds();
        // Fixed malloc thresholds: a large request or a burst of output must not leave the
        // heap grown (glibc's dynamic mmap threshold would keep such blocks on the heap).
        #[cfg(target_env = "gnu")]
        // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        }
        let pod_dir =
            std::path::absolute(pod_dir).map_err(|e| MonitorError::io("bad pod directory", e))?;
        // SAFETY: umask and signal only change process attributes.
        unsafe {
            libc::umask(0o022);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        raise_fd_limit();
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| MonitorError::io("PR_SET_CHILD_SUBREAPER", e))?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| MonitorError::io("blocking signals", e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| MonitorError::io("signalfd", e))?;

        let socket_path = pod_dir.join(SOCKET_NAME);
        process::check_socket_path(&socket_path)?;
        if let Ok(meta) = std::fs::symlink_metadata(&socket_path) {
            if let Ok(pid) = process::ping_sync(&socket_path) {
                return Err(MonitorError::Spawn {
                    message: format!(
                        "another monitor (pid {pid}) already serves {}",
                        socket_path.display()
                    ),
                });
            }
            if !meta.file_type().is_socket() {
                return Err(MonitorError::Spawn {
                    message: format!("{} exists and is not a socket", socket_path.display()),
                });
            }
            std::fs::remove_file(&socket_path).map_err(|e| {
                MonitorError::io(format!("cannot remove stale {}", socket_path.display()), e)
            })?;
        }
        let pid_path = pod_dir.join(PID_FILE);
        process::write_pid_file(&pid_path, std::process::id() as i32)?;
        let listener = UnixListener::bind(&socket_path).map_err(|e| {
            let _ = std::fs::remove_file(&pid_path);
            MonitorError::io(format!("cannot listen on {}", socket_path.display()), e)
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MonitorError::io("socket", e))?;
        let _ = std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600));
        Ok(Server {
            pod_dir,
            socket_path,
            pid_path,
            signals,
            listener,
            clients: Vec::new(),
            containers: Vec::new(),
            execs: Vec::new(),
            orphans: Vec::new(),
            next_token: 1,
            scratch: Vec::new(),
            readbuf: vec![0; READ_CHUNK],
            stop: false,
        })
    }

    /// Removes the socket and the pid file (if it is still ours), and writes the exit file
    /// of every container whose init exited but whose output was still draining.
    fn cleanup(&mut self) {
        for ci in 0..self.containers.len() {
            self.check_drained(ci, true);
        }
        let _ = std::fs::remove_file(&self.socket_path);
        let ours = std::fs::read_to_string(&self.pid_path)
            .map(|s| s.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.pid_path);
        }
    }

    fn run(&mut self) {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        while !self.stop {
            pfds.clear();
            slots.clear();
            let mut add = |fd: i32, events: i16, slot: Slot| {
                pfds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            add(self.signals.as_fd().as_raw_fd(), libc::POLLIN, Slot::Signal);
            add(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
            for c in &self.clients {
                let events = match c.state {
                    ClientState::Reading => libc::POLLIN,
                    ClientState::Writing => libc::POLLOUT,
                    ClientState::Session => self.session_events(c),
                    ClientState::Waiting | ClientState::Done => 0,
                };
                add(c.stream.as_raw_fd(), events, Slot::Client(c.token));
            }
            for (ci, c) in self.containers.iter().enumerate() {
                for (which, p) in c.pipes.iter().enumerate() {
                    if let Some(file) = p.as_ref().and_then(|p| p.file.as_ref()) {
                        add(file.as_raw_fd(), libc::POLLIN, Slot::Pipe(ci, which));
                    }
                }
                if let Some(fd) = c.console.as_ref().and_then(|s| s.poll_fd()) {
                    add(fd, libc::POLLIN, Slot::Console(ci));
                }
                if let Some(fd) = c.input.poll_fd() {
                    add(fd, libc::POLLOUT, Slot::Input(ci));
                }
            }
            for (ei, x) in self.execs.iter().enumerate() {
                if self.exec_reads(x) {
                    for (which, p) in x.pipes.iter().enumerate() {
                        if let Some(file) = p.as_ref().and_then(|p| p.file.as_ref()) {
                            add(file.as_raw_fd(), libc::POLLIN, Slot::ExecPipe(ei, which));
                        }
                    }
                }
                if let Some(fd) = x.console.as_ref().and_then(|s| s.poll_fd()) {
                    add(fd, libc::POLLIN, Slot::ExecConsole(ei));
                }
                if let Some(fd) = x.input.poll_fd() {
                    add(fd, libc::POLLOUT, Slot::ExecInput(ei));
                }
            }
            let timeout = self.next_timeout_ms();
            // SAFETY: pfds is a live array of pfds.len() pollfd structs.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != ErrorKind::Interrupted {
                    eprintln!("berth-monitor: poll: {err}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let ready: Vec<(Slot, i16)> = pfds
                .iter()
                .zip(slots.iter())
                .filter(|(p, _)| p.revents != 0)
                .map(|(p, s)| (*s, p.revents))
                .collect();

            // Pipes, terminals and stdin first, while container and exec indices are
            // valid; then everything that may remove containers or execs.
            for &(slot, _) in &ready {
                match slot {
                    Slot::Pipe(ci, which) => self.pump(ci, which, 1),
                    Slot::Console(ci) => self.container_console(ci),
                    Slot::Input(ci) => self.containers[ci].input.flush(),
                    Slot::ExecPipe(ei, which) => self.exec_pump(ei, which, 1),
                    Slot::ExecConsole(ei) => self.exec_console(ei),
                    Slot::ExecInput(ei) => self.execs[ei].input.flush(),
                    _ => {}
                }
            }
            for &(slot, _) in &ready {
                if let Slot::Signal = slot {
                    self.read_signals();
                }
            }
            self.reap();
            for &(slot, revents) in &ready {
                match slot {
                    Slot::Listener => self.accept(),
                    Slot::Client(token) => self.client_io(token, revents),
                    _ => {}
                }
            }
            self.tick();
            self.end_sessions();
            self.clients.retain(|c| c.state != ClientState::Done);
            self.abandon_execs();
        }
    }

    fn next_timeout_ms(&self) -> i32 {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for c in &self.containers {
            match c.phase {
                Phase::Creating { deadline, .. } | Phase::Draining { deadline, .. } => {
                    consider(deadline)
                }
                _ => {}
            }
        }
        for c in &self.clients {
            if matches!(c.state, ClientState::Reading | ClientState::Writing)
                || Server::closing_session(c)
            {
                consider(c.deadline);
            }
        }
        for x in &self.execs {
            if let Some(d) = x.deadline() {
                consider(d);
            }
        }
        if let Some(o) = self.orphans.first() {
            consider(o.when + ORPHAN_TTL);
        }
        match next {
            None => -1,
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                // Round up so the deadline has passed when poll returns.
                (d.as_millis() as i64 + 1).min(i32::MAX as i64) as i32
            }
        }
    }

    fn read_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let sig = info.ssi_signo as i32;
                    if sig == libc::SIGTERM || sig == libc::SIGINT {
                        self.stop = true;
                    }
                    // SIGCHLD: reaping happens every iteration anyway. SIGHUP: ignored.
                }
                Ok(None) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    // ---- timers ----

    fn tick(&mut self) {
        let now = Instant::now();
        let mut ci = 0;
        while ci < self.containers.len() {
            match self.containers[ci].phase {
                Phase::Creating {
                    create_pid,
                    client,
                    deadline,
                    ..
                } if now >= deadline => {
                    // SAFETY: kills our own, not yet reaped, child.
                    unsafe { libc::kill(create_pid, libc::SIGKILL) };
                    let c = self.containers.remove(ci);
                    let error = MonitorError::Timeout {
                        message: format!(
                            "OCI runtime create of {} did not finish in time: {}",
                            c.id,
                            c.create_output()
                        ),
                    };
                    self.reply(client, Reply::Error { error });
                    continue;
                }
                Phase::Draining { .. } => self.check_drained(ci, false),
                _ => {}
            }
            ci += 1;
        }
        self.exec_tick(now);
        for c in &mut self.clients {
            let timed = matches!(c.state, ClientState::Reading | ClientState::Writing)
                || Server::closing_session(c);
            if timed && now >= c.deadline {
                c.state = ClientState::Done;
            }
        }
        self.orphans
            .retain(|o| now.duration_since(o.when) < ORPHAN_TTL);
    }
}
