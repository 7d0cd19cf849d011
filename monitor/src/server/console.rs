//! Terminals: the console socket on which the OCI runtime sends the pty master
//! (`--console-socket`, one `SCM_RIGHTS` message), and the master's settings and size.
//! Also [`Input`], the stdin of a container or exec'd process (a pipe's write end or a
//! terminal master) with what is queued for it.

use std::fs::File;
use std::io::{ErrorKind, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::error::MonitorError;
use crate::process;

/// Stdin bytes queued per container or process before its writers are paused.
pub(super) const INPUT_CAP: usize = 64 * 1024;

/// The socket a runtime connects to, to hand over a terminal's master.
pub(super) struct ConsoleSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    conn: Option<UnixStream>,
}

impl ConsoleSocket {
    /// Listens on `path` (mode 0600). A stale socket file there is replaced.
    pub(super) fn bind(path: &Path) -> Result<ConsoleSocket, MonitorError> {
        if !path.is_absolute() {
            return Err(MonitorError::BadRequest {
                message: format!("console_socket {} is not absolute", path.display()),
            });
        }
        process::check_socket_path(path)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(MonitorError::BadRequest {
                    message: format!("console_socket {} exists", path.display()),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| MonitorError::io(format!("cannot listen on {}", path.display()), e))?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|e| MonitorError::io("console socket", e))?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener: Some(listener),
            conn: None,
        })
    }

    /// The fd to poll for `POLLIN`: the connection once accepted, else the listener.
    pub(super) fn poll_fd(&self) -> Option<RawFd> {
        match (&self.conn, &self.listener) {
            (Some(c), _) => Some(c.as_raw_fd()),
            (None, Some(l)) => Some(l.as_raw_fd()),
            _ => None,
        }
    }

    /// Accepts the runtime's connection and reads the master without blocking: `Ok(None)`
    /// until it has arrived. The socket file is removed once it has.
    pub(super) fn try_receive(&mut self) -> Result<Option<OwnedFd>, MonitorError> {
        if self.conn.is_none() {
            let Some(l) = &self.listener else {
                return Ok(None);
            };
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)
                        .map_err(|e| MonitorError::io("console socket", e))?;
                    self.conn = Some(s);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    return Ok(None);
                }
                Err(e) => return Err(MonitorError::io("console socket accept", e)),
            }
        }
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let mut data = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let msg = match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(MonitorError::io("console socket recvmsg", e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(v) = c {
                    fds.extend(v);
                }
            }
        }
        let bytes = msg.bytes;
        // SAFETY: SCM_RIGHTS installed these fds in this process; nothing else owns them.
        let mut owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if owned.is_empty() {
            if bytes == 0 {
                self.close();
                return Err(MonitorError::Protocol {
                    message: "the runtime closed the console socket without sending a terminal"
                        .into(),
                });
            }
            return Ok(None);
        }
        self.close();
        Ok(Some(owned.swap_remove(0)))
    }

    /// Stops listening and removes the socket file.
    pub(super) fn close(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.conn = None;
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.close();
    }
}

/// Prepares a received master: non-blocking, close-on-exec, `ONLCR` (as conmon does, so
/// that a `\n` reaches the log as `\r\n`, whose `\r` the log writer drops).
pub(super) fn setup_master(fd: &OwnedFd) -> Result<(), MonitorError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| MonitorError::io("terminal", e))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| MonitorError::io("terminal", e))?;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(fd) {
        t.output_flags |= nix::sys::termios::OutputFlags::ONLCR;
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &t);
    }
    Ok(())
}

/// Sets a terminal's size (`TIOCSWINSZ` on its master).
pub(super) fn resize(fd: RawFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct, which lives across the call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A process's stdin as the monitor holds it.
#[derive(Default)]
pub(super) struct Input {
    /// The pipe's write end or a duplicate of the terminal master; `None` once closed.
    pub(super) file: Option<File>,
    /// Bytes accepted from sessions and not yet written.
    pub(super) pending: Vec<u8>,
    /// Close once `pending` is written.
    pub(super) close_after: bool,
}

impl Input {
    /// An open stdin.
    pub(super) fn new(file: File) -> Input {
        Input {
            file: Some(file),
            pending: Vec::new(),
            close_after: false,
        }
    }

    /// Whether more bytes are accepted.
    pub(super) fn accepts(&self) -> bool {
        self.file.is_some() && !self.close_after
    }

    /// Whether writers must wait.
    pub(super) fn full(&self) -> bool {
        self.pending.len() >= INPUT_CAP
    }

    /// The fd to poll for `POLLOUT`, while bytes wait.
    pub(super) fn poll_fd(&self) -> Option<RawFd> {
        self.file
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|f| f.as_raw_fd())
    }

    /// Queues bytes (dropped when stdin is closed) and writes what it can.
    pub(super) fn push(&mut self, data: &[u8]) {
        if self.accepts() {
            self.pending.extend_from_slice(data);
            self.flush();
        }
    }

    /// Closes stdin once what is queued is written.
    pub(super) fn close_soon(&mut self) {
        self.close_after = true;
        self.flush();
    }

    /// Writes what is queued without blocking; closes when asked to and done, or when the
    /// reader is gone.
    pub(super) fn flush(&mut self) {
        let Some(file) = self.file.as_mut() else {
            self.pending = Vec::new();
            return;
        };
        let mut done = 0;
        while done < self.pending.len() {
            match file.write(&self.pending[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    // EPIPE (nobody reads) or EIO (the terminal hung up): stdin is gone.
                    self.file = None;
                    self.pending = Vec::new();
                    return;
                }
            }
        }
        self.pending.drain(..done);
        if self.pending.capacity() > 2 * INPUT_CAP && self.pending.len() < INPUT_CAP {
            self.pending.shrink_to(INPUT_CAP);
        }
        if self.close_after && self.pending.is_empty() {
            self.file = None;
        }
    }
}

/// A prepared terminal master as the output pipe (logged as stdout) and, with `stdin`, as
/// the stdin (a duplicate of the master).
pub(super) fn terminal_pipe(
    fd: OwnedFd,
    stdin: bool,
) -> Result<(super::Pipe, Input), MonitorError> {
    let file = File::from(fd);
    let input = if stdin {
        Input::new(
            file.try_clone()
                .map_err(|e| MonitorError::io("terminal", e))?,
        )
    } else {
        Input::default()
    };
    let pipe = super::Pipe {
        file: Some(file),
        stream: crate::logfmt::Stream::Stdout,
        pending: Vec::new(),
    };
    Ok((pipe, input))
}
