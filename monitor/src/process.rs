//! Process helpers shared by berthd and the monitor: detached (double-forked) execution of
//! the monitor and the pause process, pid files, liveness, a synchronous ping.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::MonitorError;
use crate::protocol::{Reply, Request};

/// Name of the monitor's socket in the pod directory.
pub const SOCKET_NAME: &str = "monitor.sock";
/// Name of the file in the pod directory holding the monitor's pid (written by the
/// monitor before it listens).
pub const PID_FILE: &str = "monitor.pid";
/// Name of the monitor's own diagnostics log (its stdout and stderr) in the pod directory.
pub const LOG_FILE: &str = "monitor.log";
/// Name of the file in the pod directory holding the pause process's host pid.
pub const PAUSE_PID_FILE: &str = "pause.pid";

/// The PATH the monitor and the pause process get (their only environment variable).
const MONITOR_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `<binary> pause` as PID 1 of a new PID namespace, detached (see the module
/// doc), and writes its host pid to `<pod_dir>/pause.pid`. With `userns` (a pod's pinned
/// user namespace) it enters that namespace first, so that the PID namespace belongs to
/// it. Called from berthd, the pause process is reparented to the host's init (or the
/// nearest subreaper); prefer `MonitorClient::spawn_pause` (runtime-core), which makes it
/// a child of the pod's monitor. Blocking.
pub fn spawn_pause_in_new_pidns(
    binary: &Path,
    pod_dir: &Path,
    userns: Option<&Path>,
) -> Result<i32, MonitorError> {
    let pod_dir = absolute(pod_dir)?;
    let devnull = open_devnull()?;
    let fd = devnull.as_raw_fd();
    let userns = userns
        .map(|p| {
            std::fs::File::open(p)
                .map(OwnedFd::from)
                .map_err(|e| MonitorError::io(format!("cannot open {}", p.display()), e))
        })
        .transpose()?;
    let argv = [binary.as_os_str(), OsStr::new("pause")];
    let pid = detached_exec(
        binary,
        &argv,
        [fd, fd, fd],
        Namespaces::NewPid {
            userns: userns.as_ref().map(|f| f.as_raw_fd()),
        },
    )?;
    let pid_file = pod_dir.join(PAUSE_PID_FILE);
    if let Err(e) = write_pid_file(&pid_file, pid) {
        kill_pid(pid);
        return Err(e);
    }
    Ok(pid)
}

/// Writes `pid` to `path` atomically (temporary file and rename).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), MonitorError> {
    let fail = |e: std::io::Error| {
        MonitorError::io(format!("cannot write pid file {}", path.display()), e)
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(pid.to_string().as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

pub fn absolute(path: &Path) -> Result<PathBuf, MonitorError> {
    std::path::absolute(path)
        .map_err(|e| MonitorError::io(format!("bad pod directory {}", path.display()), e))
}

pub fn check_socket_path(socket: &Path) -> Result<(), MonitorError> {
    // sun_path holds 108 bytes including the terminating NUL.
    if socket.as_os_str().len() >= 108 {
        return Err(MonitorError::BadRequest {
            message: format!("socket path {} is longer than 107 bytes", socket.display()),
        });
    }
    Ok(())
}

pub fn open_log(path: &Path) -> Result<OwnedFd, MonitorError> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| MonitorError::io(format!("cannot open {}", path.display()), e))
}

pub fn open_devnull() -> Result<OwnedFd, MonitorError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| MonitorError::io("cannot open /dev/null", e))
}

/// Sends SIGKILL to a process this module started.
pub fn kill_pid(pid: i32) {
    if pid > 0 {
        // SAFETY: plain syscall on a pid we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat
                .iter()
                .rposition(|&b| b == b')')
                .and_then(|i| stat.get(i + 2).copied());
            !matches!(state, Some(b'Z') | Some(b'X') | None)
        }
        Err(_) => false,
    }
}

/// Pings a monitor synchronously; returns its pid.
pub fn ping_sync(socket: &Path) -> Result<i32, MonitorError> {
    let unreachable = |e: std::io::Error| MonitorError::Unreachable {
        socket: socket.display().to_string(),
        message: e.to_string(),
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(unreachable)?;
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(&Request::Ping).map_err(|e| MonitorError::io("encode", e))?;
    line.push(b'\n');
    s.write_all(&line).map_err(unreachable)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).map_err(unreachable)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    match serde_json::from_slice::<Reply>(buf.trim_ascii_end()) {
        Ok(Reply::Pong { pid, .. }) => Ok(pid),
        Ok(other) => Err(MonitorError::Protocol {
            message: format!("unexpected reply to ping: {other:?}"),
        }),
        Err(e) => Err(MonitorError::Protocol {
            message: e.to_string(),
        }),
    }
}

/// What the forked children report on the status pipe.
const TAG_PID: u8 = b'P';
const TAG_ERR: u8 = b'E';
const STAGES: [&str; 8] = [
    "",
    "setsid",
    "unshare(CLONE_NEWPID)",
    "fork",
    "chdir /",
    "dup2",
    "exec",
    "setns(CLONE_NEWUSER)",
];

/// The namespaces of a program [`detached_exec`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// berthd's or the monitor's own.
    Inherited,
    /// A new PID namespace, owned by the user namespace of the open file `userns` when set
    /// (entered first).
    NewPid {
        /// An open user namespace file.
        userns: Option<RawFd>,
    },
}

/// Double-forks and execs `program` with `argv` and only [`MONITOR_PATH`] in the
/// environment; `stdio` become fds 0, 1, 2 and every other fd is closed on exec. With
/// [`Namespaces::NewPid`] the intermediate child unshares the PID namespace first (after
/// entering the user namespace, if any), so the program is PID 1 of a new one. Returns the
/// program's host pid once it has exec'd.
pub fn detached_exec(
    program: &Path,
    argv: &[&OsStr],
    stdio: [RawFd; 3],
    namespaces: Namespaces,
) -> Result<i32, MonitorError> {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| MonitorError::BadRequest {
            message: format!("{} contains a NUL byte", s.to_string_lossy()),
        })
    };
    let path = cstr(program.as_os_str())?;
    let args = argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let env = CString::new(MONITOR_PATH).map_err(|e| MonitorError::io("env", e))?;
    let env_ptrs: [*const libc::c_char; 2] = [env.as_ptr(), std::ptr::null()];
    // SAFETY: getrlimit only writes the struct.
    let max_fd = unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur.min(1 << 20) as i32
        } else {
            1024
        }
    };

    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MonitorError::io("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: after fork the children only make async-signal-safe calls (no allocation,
    // no locks) on data prepared above, and end in execve or _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(MonitorError::io("fork", std::io::Error::last_os_error()));
    }
    if child == 0 {
        unsafe {
            child_side(
                wr.as_raw_fd(),
                &path,
                &arg_ptrs,
                &env_ptrs,
                stdio,
                namespaces,
                max_fd,
            )
        }
    }
    drop(wr);
    // Reap the intermediate child; it exits right after its fork.
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // Read the report until EOF: the write end closes when the program has exec'd.
    let mut report = Vec::new();
    let mut file = std::fs::File::from(rd);
    if let Err(e) = file.read_to_end(&mut report) {
        return Err(MonitorError::io("reading the spawn status pipe", e));
    }
    let mut pid = None;
    let mut rest = &report[..];
    while let Some((&tag, tail)) = rest.split_first() {
        match tag {
            TAG_PID if tail.len() >= 4 => {
                pid = Some(i32::from_ne_bytes([tail[0], tail[1], tail[2], tail[3]]));
                rest = &tail[4..];
            }
            TAG_ERR if tail.len() >= 5 => {
                let stage = STAGES.get(tail[0] as usize).copied().unwrap_or("?");
                let errno = i32::from_ne_bytes([tail[1], tail[2], tail[3], tail[4]]);
                let err = std::io::Error::from_raw_os_error(errno);
                return Err(MonitorError::Spawn {
                    message: format!("{stage} for {} failed: {err}", program.display()),
                });
            }
            _ => break,
        }
    }
    pid.ok_or_else(|| MonitorError::Spawn {
        message: format!("no pid reported for {}", program.display()),
    })
}

/// The forked side of [`detached_exec`]. Never returns.
unsafe fn child_side(
    report: RawFd,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char; 2],
    stdio: [RawFd; 3],
    namespaces: Namespaces,
    max_fd: i32,
) -> ! {
    let (new_pidns, userns) = match namespaces {
        Namespaces::Inherited => (false, None),
        Namespaces::NewPid { userns } => (true, userns),
    };
    unsafe {
        let fail = |stage: u8| -> ! {
            let errno = *libc::__errno_location();
            let e = errno.to_ne_bytes();
            let msg = [TAG_ERR, stage, e[0], e[1], e[2], e[3]];
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(1)
        };
        if libc::setsid() < 0 {
            fail(1);
        }
        // The forked child has one thread, as setns into a user namespace requires.
        if let Some(fd) = userns
            && libc::setns(fd, libc::CLONE_NEWUSER) != 0
        {
            fail(7);
        }
        if new_pidns && libc::unshare(libc::CLONE_NEWPID) != 0 {
            fail(2);
        }
        let grandchild = libc::fork();
        if grandchild < 0 {
            fail(3);
        }
        if grandchild > 0 {
            let p = grandchild.to_ne_bytes();
            let msg = [TAG_PID, p[0], p[1], p[2], p[3]];
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
        // The program: default signal dispositions and an empty mask, except for the
        // pause process: PID 1 of a namespace drops signals it has no handler for, so the
        // ones it waits for stay blocked across exec (pending, never lost) until it calls
        // sigwait.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if new_pidns {
            for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(4);
        }
        for (target, &fd) in stdio.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(5);
            }
        }
        // Every fd above 2 is closed on exec, the status pipe included (so EOF tells the
        // parent the exec succeeded).
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            for fd in 3..max_fd {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(6)
    }
}
