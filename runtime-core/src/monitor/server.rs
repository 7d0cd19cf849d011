//! The monitor process itself: `berth-monitor serve <pod_dir>` and `berth-monitor pause`.
//!
//! Single-threaded and without an async runtime, to stay far below its memory budget: one
//! `poll(2)` loop over a signalfd (SIGCHLD, SIGTERM, SIGINT), the listening socket, the
//! client connections and the containers' stdout / stderr pipes. Nothing in here panics on
//! input; a client that misbehaves gets an error reply or is dropped.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::error::MonitorError;
use super::logfmt::{self, Stream};
use super::protocol::{
    ContainerState, CreateRequest, ExitInfo, PROTOCOL_VERSION, Reply, Request, write_exit_file,
};
use super::spawn::{self, PID_FILE, SOCKET_NAME};

/// Bytes read from a pipe or a client per `read(2)`.
const READ_CHUNK: usize = 16 * 1024;
/// Largest request line accepted.
const MAX_REQUEST: usize = 1 << 20;
/// Connections served at once; more are closed at once.
const MAX_CLIENTS: usize = 64;
/// A client must send its request, and take its reply, within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the output of an exited init is drained when something else (a grandchild of
/// the init) keeps the pipes open.
const DRAIN_CAP: Duration = Duration::from_secs(2);
/// How long the status of a reaped pid nobody claimed is kept, for an init whose pid is
/// learned only after it exited.
const ORPHAN_TTL: Duration = Duration::from_secs(10);
/// At most this many unclaimed statuses are kept.
const MAX_ORPHANS: usize = 256;
/// The create command's output returned in `RuntimeFailed`.
const CREATE_OUTPUT_CAP: usize = 4096;
/// Output held back while the create command runs; beyond it, lines go to the log.
const CREATE_HOLD_CAP: usize = 64 * 1024;
/// Create timeout when the request says 0.
const DEFAULT_CREATE_TIMEOUT: u64 = 60;
/// Reads per pipe when draining at exit (bounded: a producer may still be writing).
const FINAL_DRAIN_READS: usize = 128;

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

/// `berth-monitor pause`: PID 1 of a pod's shared PID namespace. Reaps whatever is
/// reparented to it; exits 0 on SIGTERM or SIGINT.
fn pause() -> i32 {
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
fn reap_all(mut f: impl FnMut(i32, i32)) {
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
fn decode_status(status: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
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

/// One end of a container's stdout or stderr.
struct Pipe {
    /// The read end; `None` after EOF (the pending bytes may still wait for emission).
    file: Option<File>,
    stream: Stream,
    /// Bytes read but not yet written as entries: an unterminated line, or everything
    /// while the create command runs.
    pending: Vec<u8>,
}

enum Phase {
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

struct Container {
    id: String,
    log_path: PathBuf,
    exit_file: PathBuf,
    oom_control: Option<PathBuf>,
    log: Option<File>,
    log_failed: bool,
    pipes: [Option<Pipe>; 2],
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Reading,
    /// Waiting for a create to finish.
    Waiting,
    Writing,
    Done,
}

struct Client {
    token: u64,
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    state: ClientState,
    deadline: Instant,
    exit_after: bool,
}

/// A reaped child nobody claimed (yet).
struct Orphan {
    pid: i32,
    status: i32,
    at_ns: i64,
    when: Instant,
}

#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Listener,
    Client(u64),
    Pipe(usize, usize),
}

struct Server {
    pod_dir: PathBuf,
    socket_path: PathBuf,
    pid_path: PathBuf,
    signals: SignalFd,
    listener: UnixListener,
    clients: Vec<Client>,
    containers: Vec<Container>,
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
        spawn::check_socket_path(&socket_path)?;
        if let Ok(meta) = std::fs::symlink_metadata(&socket_path) {
            if let Ok(pid) = spawn::ping_sync(&socket_path) {
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
        spawn::write_pid_file(&pid_path, std::process::id() as i32)?;
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

            // Pipes first, while container indices are valid; then everything that may
            // remove containers.
            for &(slot, _) in &ready {
                if let Slot::Pipe(ci, which) = slot {
                    self.pump(ci, which, 1);
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
            self.clients.retain(|c| c.state != ClientState::Done);
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
            if matches!(c.state, ClientState::Reading | ClientState::Writing) {
                consider(c.deadline);
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

    // ---- children ----

    fn reap(&mut self) {
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

    fn create_finished(&mut self, ci: usize, status: i32) {
        for which in 0..2 {
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
        let result = if exit_code == 0 {
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
                for which in 0..2 {
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
                    if !spawn::process_alive(pid) {
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

    fn init_exited(&mut self, ci: usize, status: i32, at_ns: i64) {
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
    fn check_drained(&mut self, ci: usize, force: bool) {
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
        for which in 0..2 {
            self.pump(ci, which, FINAL_DRAIN_READS);
            self.close_pipe(ci, which);
        }
        let c = &mut self.containers[ci];
        c.log = None;
        if let Err(e) = write_exit_file(&c.exit_file, &exit) {
            eprintln!("berth-monitor: container {}: {e}", c.id);
        }
        c.phase = Phase::Exited { pid, exit };
    }

    // ---- container output ----

    /// Reads a pipe up to `reads` times (until it would block or hits EOF) and logs the
    /// complete entries (held back while the create command runs).
    fn pump(&mut self, ci: usize, which: usize, reads: usize) {
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
                    let hold = matches!(c.phase, Phase::Creating { .. })
                        && pipe.pending.len() <= CREATE_HOLD_CAP;
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
    fn emit(&mut self, ci: usize, which: usize) {
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
        let mut failed = None;
        let consumed = logfmt::split_entries(&pipe.pending, eof, |full, content| {
            if let Some(log) = log
                && let Err(e) = logfmt::write_entry(log.as_fd(), scratch, ts, stream, full, content)
            {
                failed = Some(e);
            }
        });
        pipe.pending.drain(..consumed);
        if pipe.pending.capacity() > 2 * READ_CHUNK && pipe.pending.len() < READ_CHUNK {
            pipe.pending.shrink_to(READ_CHUNK);
        }
        if scratch.capacity() > 2 * logfmt::MAX_LINE {
            scratch.shrink_to(logfmt::MAX_LINE + 128);
        }
        if let Some(e) = failed
            && !c.log_failed
        {
            eprintln!(
                "berth-monitor: container {}: cannot write {}: {e}",
                c.id,
                c.log_path.display()
            );
            c.log_failed = true;
        }
    }

    /// Logs what is left on a pipe and closes it.
    fn close_pipe(&mut self, ci: usize, which: usize) {
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

    // ---- clients ----

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    self.clients.push(Client {
                        token,
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        written: 0,
                        state: ClientState::Reading,
                        deadline: Instant::now() + CLIENT_TIMEOUT,
                        exit_after: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or a transient error (EMFILE, ...)
            }
        }
    }

    fn client_io(&mut self, token: u64, revents: i16) {
        let Some(idx) = self.clients.iter().position(|c| c.token == token) else {
            return;
        };
        match self.clients[idx].state {
            ClientState::Reading => self.client_read(idx),
            ClientState::Waiting => {
                if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    // The client left; the create goes on and its result is dropped.
                    self.clients[idx].state = ClientState::Done;
                }
            }
            ClientState::Writing => self.client_flush(idx),
            ClientState::Done => {}
        }
    }

    fn client_read(&mut self, idx: usize) {
        let mut eof = false;
        {
            let c = &mut self.clients[idx];
            loop {
                match c.stream.read(&mut self.readbuf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&self.readbuf[..n]);
                        if c.inbuf.len() > MAX_REQUEST || self.readbuf[..n].contains(&b'\n') {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.state = ClientState::Done;
                        return;
                    }
                }
            }
        }
        let token = self.clients[idx].token;
        let c = &mut self.clients[idx];
        let line = match c.inbuf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let mut line = std::mem::take(&mut c.inbuf);
                line.truncate(pos);
                line
            }
            None if c.inbuf.len() > MAX_REQUEST => {
                c.inbuf = Vec::new();
                let error = MonitorError::BadRequest {
                    message: format!("request longer than {MAX_REQUEST} bytes"),
                };
                self.reply(token, Reply::Error { error });
                return;
            }
            None if eof => {
                let line = std::mem::take(&mut c.inbuf);
                if line.trim_ascii().is_empty() {
                    c.state = ClientState::Done;
                    return;
                }
                line
            }
            None => return,
        };
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => self.handle(token, req),
            Err(e) => {
                let error = MonitorError::BadRequest {
                    message: format!("not a monitor request: {e}"),
                };
                self.reply(token, Reply::Error { error });
            }
        }
    }

    fn client_flush(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => break,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        c.state = ClientState::Done;
        if c.exit_after {
            self.stop = true;
        }
    }

    /// Sends `reply` to the client `token`, if it is still connected.
    fn reply(&mut self, token: u64, reply: Reply) {
        let Some(idx) = self.clients.iter().position(|c| c.token == token) else {
            return;
        };
        let c = &mut self.clients[idx];
        let mut out = match serde_json::to_vec(&reply) {
            Ok(v) => v,
            Err(e) => {
                let error = MonitorError::Protocol {
                    message: format!("cannot encode reply: {e}"),
                };
                serde_json::to_vec(&Reply::Error { error }).unwrap_or_default()
            }
        };
        out.push(b'\n');
        c.out = out;
        c.written = 0;
        c.state = ClientState::Writing;
        c.deadline = Instant::now() + CLIENT_TIMEOUT;
        self.client_flush(idx);
    }

    fn handle(&mut self, token: u64, req: Request) {
        let reply = match req {
            Request::Create(req) => match self.create(token, req) {
                Ok(()) => return, // answered when the command exits
                Err(error) => Reply::Error { error },
            },
            Request::ReopenLog { container_id } => match self.reopen_log(&container_id) {
                Ok(()) => Reply::Ok,
                Err(error) => Reply::Error { error },
            },
            Request::List => Reply::Containers {
                containers: self.list(),
            },
            Request::Forget { container_id } => match self.forget(&container_id) {
                Ok(()) => Reply::Ok,
                Err(error) => Reply::Error { error },
            },
            Request::Shutdown => {
                if let Some(c) = self.clients.iter_mut().find(|c| c.token == token) {
                    c.exit_after = true;
                }
                Reply::Ok
            }
            Request::Ping => Reply::Pong {
                pid: std::process::id() as i32,
                protocol: PROTOCOL_VERSION,
            },
            Request::SpawnPause => match self.spawn_pause() {
                Ok(pid) => Reply::Pause { pid },
                Err(error) => Reply::Error { error },
            },
        };
        self.reply(token, reply);
    }

    // ---- requests ----

    fn create(&mut self, token: u64, req: CreateRequest) -> Result<(), MonitorError> {
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
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let child = Command::new(&req.argv[0])
            .args(&req.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .current_dir("/")
            .spawn()
            .map_err(|e| MonitorError::io(format!("cannot run {}", req.argv[0]), e))?;
        // The write ends went into the Command and are closed now: only the command (and
        // the container after it) holds them, so EOF means they are all gone.
        let create_pid = child.id() as i32;
        drop(child); // reaped by the SIGCHLD loop, not by Child
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
            log_failed: false,
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
            ],
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

    fn reopen_log(&mut self, id: &str) -> Result<(), MonitorError> {
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
        c.log_failed = false;
        Ok(())
    }

    fn list(&self) -> Vec<ContainerState> {
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

    fn forget(&mut self, id: &str) -> Result<(), MonitorError> {
        let Some(ci) = self.containers.iter().position(|c| c.id == id) else {
            return Ok(());
        };
        if matches!(self.containers[ci].phase, Phase::Creating { .. }) {
            return Err(MonitorError::Busy { id: id.to_string() });
        }
        self.containers.remove(ci);
        Ok(())
    }

    fn spawn_pause(&mut self) -> Result<i32, MonitorError> {
        // The pause process is double-forked; being a subreaper, the monitor becomes its
        // parent when the intermediate child exits.
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        spawn::spawn_pause_in_new_pidns(&exe, &self.pod_dir)
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
        for c in &mut self.clients {
            if matches!(c.state, ClientState::Reading | ClientState::Writing) && now >= c.deadline {
                c.state = ClientState::Done;
            }
        }
        self.orphans
            .retain(|o| now.duration_since(o.when) < ORPHAN_TTL);
    }
}

impl Container {
    /// What the create command wrote, stderr first, for an error message.
    fn create_output(&self) -> String {
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

fn pipe() -> Result<(OwnedFd, OwnedFd), MonitorError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::io("pipe2", e))?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| MonitorError::io("fcntl", e))?;
    Ok((r, w))
}

fn open_log(path: &Path) -> Result<File, MonitorError> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| MonitorError::io(format!("cannot open log file {}", path.display()), e))
}

fn read_pid_file(path: &Path) -> Result<i32, MonitorError> {
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
pub(crate) fn oom_killed(path: &Path) -> bool {
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
