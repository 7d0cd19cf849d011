//! Pinned pod namespaces, as CRI-O's pinns does, without a pause container: a short-lived
//! thread unshares the network, IPC and UTS namespaces, sets the hostname, brings `lo` up,
//! and bind-mounts its `/proc/thread-self/ns/*` files onto files under the pod's state
//! directory. The mounts keep the namespaces alive after the thread exits; containers join
//! them by path.
//!
//! Unsharing network, IPC and UTS affects only the calling thread, so this is safe in a
//! multi-threaded daemon; the thread never returns to the async runtime's pool.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::{Error, Result};

/// Which namespaces to create; `false` means the pod uses the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceRequest {
    /// A new network namespace.
    pub network: bool,
    /// A new IPC namespace.
    pub ipc: bool,
    /// A new UTS namespace.
    pub uts: bool,
    /// A user namespace of the pod's own with these mappings (`hostUsers: false`), owning
    /// the namespaces above.
    pub user: Option<super::userns::Mappings>,
}

impl NamespaceRequest {
    /// The `CLONE_NEW*` flags of the network, IPC and UTS namespaces asked for.
    pub(super) fn clone_flags(&self) -> CloneFlags {
        let mut flags = CloneFlags::empty();
        if self.network {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if self.ipc {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        if self.uts {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        flags
    }
}

/// Paths of pinned namespace files; `None` for a host namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedNamespaces {
    /// Network namespace file.
    pub network: Option<PathBuf>,
    /// IPC namespace file.
    pub ipc: Option<PathBuf>,
    /// UTS namespace file.
    pub uts: Option<PathBuf>,
    /// User namespace file (pods with `hostUsers: false`).
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl PinnedNamespaces {
    /// Every pinned file.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.network, &self.ipc, &self.uts, &self.user]
            .into_iter()
            .flatten()
    }
}

/// The file names `pin` may create in its directory.
pub const PINNED_FILES: [&str; 4] = ["net", "ipc", "uts", "user"];

/// Creates and pins the requested namespaces under `dir` (`net`, `ipc`, `uts`, `user`).
/// `hostname` is set in a new UTS namespace. On error nothing stays pinned. Blocking.
pub fn pin(dir: &Path, req: NamespaceRequest, hostname: &str) -> Result<PinnedNamespaces> {
    if let Some(mappings) = req.user {
        return super::userns::pin(dir, req, mappings, hostname);
    }
    if !req.network && !req.ipc && !req.uts {
        return Ok(PinnedNamespaces::default());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    let handle = std::thread::Builder::new()
        .name("berth-pinns".to_string())
        .spawn(move || pin_on_this_thread(&dir, req, &hostname))
        .map_err(|e| Error::Internal(format!("spawn namespace thread: {e}")))?;
    handle
        .join()
        .map_err(|_| Error::Internal("namespace thread panicked".to_string()))?
}

fn pin_on_this_thread(
    dir: &Path,
    req: NamespaceRequest,
    hostname: &str,
) -> Result<PinnedNamespaces> {
    nix::sched::unshare(req.clone_flags())
        .map_err(|e| Error::Internal(format!("unshare pod namespaces: {e}")))?;
    if req.uts {
        nix::unistd::sethostname(hostname)
            .map_err(|e| Error::InvalidArgument(format!("set hostname {hostname:?}: {e}")))?;
    }
    if req.network {
        loopback_up_raw().map_err(|e| Error::Internal(format!("bring lo up: {e}")))?;
    }
    let mut pinned = PinnedNamespaces::default();
    let result = (|| {
        if req.network {
            pinned.network = Some(bind_ns(dir, "net")?);
        }
        if req.ipc {
            pinned.ipc = Some(bind_ns(dir, "ipc")?);
        }
        if req.uts {
            pinned.uts = Some(bind_ns(dir, "uts")?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

fn bind_ns(dir: &Path, kind: &str) -> Result<PathBuf> {
    bind_ns_from("/proc/thread-self/ns", dir, kind)
}

/// Bind-mounts `<proc_ns>/<kind>` (a process's or thread's namespace directory) onto
/// `<dir>/<kind>`.
pub(super) fn bind_ns_from(proc_ns: &str, dir: &Path, kind: &str) -> Result<PathBuf> {
    let target = dir.join(kind);
    fs::File::create(&target).map_err(|e| Error::io("create", &target, e))?;
    let source = format!("{proc_ns}/{kind}");
    nix::mount::mount(
        Some(source.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = fs::remove_file(&target);
        Error::Internal(format!("bind {source} to {}: {e}", target.display()))
    })?;
    Ok(target)
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace. Only system calls, no
/// allocation: the user namespace helper calls it between fork and exit.
pub(super) fn loopback_up_raw() -> std::result::Result<(), nix::errno::Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; the name is NUL-terminated within IFNAMSIZ and the
    // ioctls only read / write that struct.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(nix::errno::Errno::last());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

/// Unmounts and removes pinned namespace files; missing ones are fine.
pub fn unpin(pinned: &PinnedNamespaces) {
    for p in pinned.paths() {
        unpin_path(p);
    }
}

/// Unmounts and removes one pinned namespace file.
pub fn unpin_path(p: &Path) {
    match nix::mount::umount2(p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %p.display(), error = %e, "unmount namespace"),
    }
    if let Err(e) = fs::remove_file(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %p.display(), error = %e, "remove namespace file");
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace at `netns`, so that
/// sockets it opens live there. The thread exits afterwards.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = fs::File::open(netns).map_err(|e| Error::io("open", netns, e))?;
    std::thread::Builder::new()
        .name("berth-netns".to_string())
        .spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Internal(format!("join network namespace: {e}")))?;
            f()
        })
        .map_err(|e| Error::Internal(format!("spawn netns thread: {e}")))?
        .join()
        .map_err(|_| Error::Internal("netns thread panicked".to_string()))?
}

/// True when `path` is a mount point listed in /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Decodes the octal escapes (`\040` for space) mountinfo uses in paths.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn pins_and_unpins_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = pin(
            dir.path(),
            NamespaceRequest {
                network: true,
                ipc: true,
                uts: true,
                user: None,
            },
            "pod-host",
        )
        .unwrap();
        let net = pinned.network.clone().unwrap();
        assert!(is_mounted(&net));
        // A different namespace than ours.
        let host_ino = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(fs::metadata(&net).unwrap().ino(), host_ino);
        // lo is up inside: binding 127.0.0.1 works only then.
        let flags = in_netns(&net, || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")
                .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(s.local_addr().is_ok())
        })
        .unwrap();
        assert!(flags, "binding 127.0.0.1 needs lo up");
        unpin(&pinned);
        assert!(!is_mounted(&net));
        assert!(!net.exists());
    }

    #[test]
    fn host_namespaces_pin_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = pin(
            &dir.path().join("ns"),
            NamespaceRequest {
                network: false,
                ipc: false,
                uts: false,
                user: None,
            },
            "h",
        )
        .unwrap();
        assert_eq!(p, PinnedNamespaces::default());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    }
}
