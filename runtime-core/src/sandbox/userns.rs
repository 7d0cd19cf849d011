//! Pod user namespaces (`hostUsers: false`): kubelet's mappings, checked, and the helper
//! process that creates the namespace and the pod's other namespaces inside it.
//!
//! A process can only enter a new user namespace while it has one thread, which berthd
//! never has: a forked child does it (as CRI-O's pinns does), in one `unshare` with the
//! network, IPC and UTS namespaces, so that the kernel creates the user namespace first and
//! makes it the owner of the others (a container's root can then configure its network
//! namespace and mount sysfs and mqueue in it). berthd writes the child's `uid_map` and
//! `gid_map` and bind-mounts its namespace files like the other pinned namespaces; the child
//! exits once they are pinned. It only makes raw system calls between fork and exit.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use berth_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use super::ns::{NamespaceRequest, PinnedNamespaces};
use crate::{Error, Result};

/// One range of IDs: `length` IDs from `container_id` inside are `host_id..` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First ID inside the namespace.
    pub container_id: u32,
    /// The host ID it maps to.
    pub host_id: u32,
    /// How many IDs.
    pub length: u32,
}

impl IdRange {
    /// The line of a `uid_map` / `gid_map` file.
    fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The host ID of `id` inside, when it is in the range.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }
}

/// The ID mappings of a pod's user namespace: one range of user and one of group IDs, each
/// starting at the container's root (kubelet's allocator gives exactly that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mappings {
    /// User IDs.
    pub uids: IdRange,
    /// Group IDs.
    pub gids: IdRange,
}

impl Mappings {
    /// The host user and group of the container's root.
    pub fn root(&self) -> (u32, u32) {
        (self.uids.host_id, self.gids.host_id)
    }
}

/// The pod's user namespace mappings from its namespace options: `None` for the host's
/// (no options, or mode NODE). Every malformed request is InvalidArgument naming what is
/// wrong; nothing is created for it.
pub fn from_pod_options(nso: &cri::NamespaceOption) -> Result<Option<Mappings>> {
    let Some(u) = nso.userns_options.as_ref() else {
        return Ok(None);
    };
    let invalid = |m: String| Err(Error::InvalidArgument(m));
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return invalid(
                    "user namespace mode NODE (the host's) takes no uid or gid mappings".into(),
                );
            }
            return Ok(None);
        }
        Ok(cri::NamespaceMode::Pod) => {}
        Ok(other) => {
            return invalid(format!(
                "user namespace mode {} is not supported: a pod's user namespace is POD \
                 (its own) or NODE (the host's)",
                other.as_str_name()
            ));
        }
        Err(_) => return invalid(format!("unknown user namespace mode {}", u.mode)),
    }
    for (name, mode) in [("network", nso.network), ("PID", nso.pid), ("IPC", nso.ipc)] {
        if mode == cri::NamespaceMode::Node as i32 {
            return invalid(format!(
                "a pod with its own user namespace cannot use the host's {name} namespace"
            ));
        }
    }
    Ok(Some(Mappings {
        uids: one_range("uid", &u.uids)?,
        gids: one_range("gid", &u.gids)?,
    }))
}

fn one_range(kind: &str, ranges: &[cri::IdMapping]) -> Result<IdRange> {
    let invalid = |m: String| Err(Error::InvalidArgument(m));
    let [m] = ranges else {
        return invalid(format!(
            "a pod user namespace takes exactly one {kind} mapping, got {}",
            ranges.len()
        ));
    };
    if m.container_id != 0 {
        return invalid(format!(
            "the {kind} mapping must start at container ID 0 (the container's root), not {}",
            m.container_id
        ));
    }
    if m.length == 0 {
        return invalid(format!("the {kind} mapping has length 0"));
    }
    if u64::from(m.host_id) + u64::from(m.length) > 1 << 32 {
        return invalid(format!(
            "the {kind} mapping {}+{} overflows the 32-bit ID space",
            m.host_id, m.length
        ));
    }
    Ok(IdRange {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// What the child reports on its status pipe: 0 for success, else the failed stage and
/// errno.
const STAGES: [&str; 4] = ["", "unshare", "sethostname", "bring lo up"];

/// Creates the user namespace of `req.user` with the namespaces `req` asks for inside it
/// and pins them all under `dir` (`user`, `net`, `ipc`, `uts`). Blocking. On error nothing
/// stays pinned and the helper is gone.
pub(super) fn pin(
    dir: &Path,
    req: NamespaceRequest,
    mappings: Mappings,
    hostname: &str,
) -> Result<PinnedNamespaces> {
    let flags = libc::CLONE_NEWUSER | req.clone_flags().bits();
    let host = if req.uts {
        Some(CString::new(hostname).map_err(|_| {
            Error::InvalidArgument(format!("hostname {hostname:?} contains a NUL byte"))
        })?)
    } else {
        None
    };
    let (status_rd, status_wr) = pipe()?;
    let (hold_rd, hold_wr) = pipe()?;
    // SAFETY: the child only makes async-signal-safe system calls on data prepared above
    // and ends in _exit (see `child`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Internal(format!(
            "fork the user namespace helper: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        // SAFETY: in the forked child; never returns.
        unsafe {
            child(
                flags,
                host.as_ref(),
                req.network,
                status_wr.as_raw_fd(),
                hold_rd.as_raw_fd(),
                hold_wr.as_raw_fd(),
            )
        }
    }
    drop(status_wr);
    drop(hold_rd);
    let result = pin_from_helper(dir, req, mappings, pid, status_rd);
    // EOF on the hold pipe ends the helper, whatever happened; the pinned files keep the
    // namespaces.
    drop(hold_wr);
    reap(pid);
    result
}

fn pin_from_helper(
    dir: &Path,
    req: NamespaceRequest,
    mappings: Mappings,
    pid: i32,
    status: OwnedFd,
) -> Result<PinnedNamespaces> {
    let mut report = [0u8; 5];
    let mut file = std::fs::File::from(status);
    file.read_exact(&mut report).map_err(|e| {
        Error::Internal(format!("user namespace helper died before reporting: {e}"))
    })?;
    if report[0] != 0 {
        let stage = STAGES.get(usize::from(report[0])).copied().unwrap_or("?");
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        let err = std::io::Error::from_raw_os_error(errno);
        return Err(match (report[0], errno) {
            (1, libc::ENOSPC) | (1, libc::EUSERS) => Error::ResourceExhausted(format!(
                "create the pod's user namespace: {err} (see /proc/sys/user/max_user_namespaces)"
            )),
            _ => Error::Internal(format!("pod user namespace helper: {stage}: {err}")),
        });
    }
    for (file, range) in [("uid_map", mappings.uids), ("gid_map", mappings.gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, range.map_line()).map_err(|e| {
            Error::InvalidArgument(format!(
                "write {} to {path}: {e}",
                range.map_line().trim_end()
            ))
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let proc_ns = format!("/proc/{pid}/ns");
    let mut pinned = PinnedNamespaces::default();
    let result = (|| {
        pinned.user = Some(super::ns::bind_ns_from(&proc_ns, dir, "user")?);
        if req.network {
            pinned.network = Some(super::ns::bind_ns_from(&proc_ns, dir, "net")?);
        }
        if req.ipc {
            pinned.ipc = Some(super::ns::bind_ns_from(&proc_ns, dir, "ipc")?);
        }
        if req.uts {
            pinned.uts = Some(super::ns::bind_ns_from(&proc_ns, dir, "uts")?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            super::ns::unpin(&pinned);
            Err(e)
        }
    }
}

/// Whether this node can run pods with user namespaces: creates a throwaway one and mounts
/// an overlay of an idmapped layer with it, in `scratch` (removed afterwards). Blocking.
pub fn probe(scratch: &Path) -> Result<()> {
    let _ = crate::fsutil::remove_all(scratch);
    crate::fsutil::create_private_dir(scratch)?;
    // Any range works: the probe creates no file.
    let range = IdRange {
        container_id: 0,
        host_id: 1 << 30,
        length: 65536,
    };
    let req = NamespaceRequest {
        network: false,
        ipc: false,
        uts: false,
        user: Some(Mappings {
            uids: range,
            gids: range,
        }),
    };
    let result = pin(
        &scratch.join("ns"),
        req,
        Mappings {
            uids: range,
            gids: range,
        },
        "",
    )
    .and_then(|pinned| {
        let mounted = pinned
            .user
            .as_deref()
            .ok_or_else(|| Error::Internal("no user namespace pinned".into()))
            .and_then(super::idmap::open_userns)
            .and_then(|fd| super::idmap::probe(&scratch.join("mnt"), &fd));
        super::ns::unpin(&pinned);
        mounted
    });
    let _ = crate::fsutil::remove_all(scratch);
    result
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Internal(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn reap(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The helper's side: unshare, set the hostname, bring `lo` up, report, then wait for EOF
/// on the hold pipe (berthd closes it once the namespaces are pinned, or dies).
unsafe fn child(
    flags: libc::c_int,
    hostname: Option<&CString>,
    loopback: bool,
    status: RawFd,
    hold: RawFd,
    hold_wr: RawFd,
) -> ! {
    unsafe {
        let report = |stage: u8, errno: i32| {
            let e = errno.to_ne_bytes();
            let msg = [stage, e[0], e[1], e[2], e[3]];
            libc::write(status, msg.as_ptr().cast(), msg.len());
        };
        let fail = |stage: u8| -> ! {
            report(stage, *libc::__errno_location());
            libc::_exit(1)
        };
        // Its own copy of the write end would keep the hold pipe open forever.
        libc::close(hold_wr);
        if libc::unshare(flags) != 0 {
            fail(1);
        }
        if let Some(h) = hostname
            && libc::sethostname(h.as_ptr(), h.as_bytes().len()) != 0
        {
            fail(2);
        }
        if loopback && let Err(e) = super::ns::loopback_up_raw() {
            report(3, e as i32);
            libc::_exit(1);
        }
        report(0, 0);
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(hold, b.as_mut_ptr().cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: cri::NamespaceMode, uids: &[(u32, u32, u32)]) -> cri::NamespaceOption {
        let m = |v: &[(u32, u32, u32)]| {
            v.iter()
                .map(|&(c, h, l)| cri::IdMapping {
                    container_id: c,
                    host_id: h,
                    length: l,
                })
                .collect::<Vec<_>>()
        };
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: mode as i32,
                uids: m(uids),
                gids: m(uids),
            }),
            ..Default::default()
        }
    }

    fn refused(o: &cri::NamespaceOption) -> String {
        match from_pod_options(o) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_pod_mapping_is_accepted() {
        let m = from_pod_options(&opts(cri::NamespaceMode::Pod, &[(0, 65536, 65536)]))
            .unwrap()
            .unwrap();
        assert_eq!(m.root(), (65536, 65536));
        assert_eq!(m.uids.to_host(0), Some(65536));
        assert_eq!(m.uids.to_host(65535), Some(131071));
        assert_eq!(m.uids.to_host(65536), None);
    }

    #[test]
    fn no_options_and_node_mean_the_host() {
        assert_eq!(
            from_pod_options(&cri::NamespaceOption::default()).unwrap(),
            None
        );
        assert_eq!(
            from_pod_options(&opts(cri::NamespaceMode::Node, &[])).unwrap(),
            None
        );
        assert!(refused(&opts(cri::NamespaceMode::Node, &[(0, 1000, 10)])).contains("NODE"));
    }

    #[test]
    fn malformed_mappings_are_refused_with_what_is_wrong() {
        use cri::NamespaceMode::*;
        assert!(refused(&opts(Container, &[])).contains("CONTAINER"));
        assert!(refused(&opts(Target, &[])).contains("TARGET"));
        assert!(
            refused(&opts(Pod, &[(0, 1000, 100000), (0, 2000, 100000)]))
                .contains("exactly one uid mapping, got 2")
        );
        assert!(refused(&opts(Pod, &[])).contains("got 0"));
        assert!(refused(&opts(Pod, &[(1, 1000, 100000)])).contains("container ID 0"));
        assert!(refused(&opts(Pod, &[(0, 1000, 0)])).contains("length 0"));
        assert!(refused(&opts(Pod, &[(0, u32::MAX, 2)])).contains("overflows"));
        let mut o = opts(Pod, &[(0, 1000, 100000)]);
        o.userns_options.as_mut().unwrap().mode = 42;
        assert!(refused(&o).contains("unknown user namespace mode 42"));
    }

    /// The inode of the user namespace that owns the namespace file at `path`.
    fn owner_ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: the ioctl returns a new fd or -1.
        let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
        assert!(fd >= 0, "NS_GET_USERNS on {}", path.display());
        // SAFETY: a new fd owned here.
        let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        owner.metadata().unwrap().ino()
    }

    #[test]
    fn pins_a_user_namespace_that_owns_the_pod_namespaces() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let range = |host_id| IdRange {
            container_id: 0,
            host_id,
            length: 100000,
        };
        let mappings = Mappings {
            uids: range(1000),
            gids: range(2000),
        };
        let req = NamespaceRequest {
            network: true,
            ipc: true,
            uts: true,
            user: Some(mappings),
        };
        let pinned = super::super::ns::pin(dir.path(), req, "userns-pod").unwrap();
        let user = pinned.user.clone().unwrap();
        let user_ino = std::fs::metadata(&user).unwrap().ino();
        assert_ne!(
            user_ino,
            std::fs::metadata("/proc/self/ns/user").unwrap().ino()
        );
        for p in [&pinned.network, &pinned.ipc, &pinned.uts] {
            assert_eq!(owner_ino(p.as_ref().unwrap()), user_ino);
        }
        let inside = |args: &[&str]| {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--user={}", user.display()))
                .arg(format!("--uts={}", pinned.uts.as_ref().unwrap().display()))
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let words = |s: String| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            words(inside(&["cat", "/proc/self/uid_map"])),
            ["0", "1000", "100000"]
        );
        assert_eq!(
            words(inside(&["cat", "/proc/self/gid_map"])),
            ["0", "2000", "100000"]
        );
        assert_eq!(inside(&["hostname"]).trim(), "userns-pod");
        super::super::ns::unpin(&pinned);
        for p in pinned.paths() {
            assert!(!p.exists(), "{} left", p.display());
        }
    }

    #[test]
    fn this_node_can_idmap_overlay_layers() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("probe");
        match probe(&scratch) {
            Ok(()) => {}
            // Linux before 6.13 has no `lowerdir+` by file descriptor.
            Err(e) => eprintln!("skipped: this kernel cannot idmap overlay layers: {e}"),
        }
        assert!(!scratch.exists(), "the probe leaves nothing");
    }

    #[test]
    fn host_namespaces_do_not_go_with_a_pod_user_namespace() {
        for set in [
            |o: &mut cri::NamespaceOption| o.network = cri::NamespaceMode::Node as i32,
            |o: &mut cri::NamespaceOption| o.pid = cri::NamespaceMode::Node as i32,
            |o: &mut cri::NamespaceOption| o.ipc = cri::NamespaceMode::Node as i32,
        ] {
            let mut o = opts(cri::NamespaceMode::Pod, &[(0, 1000, 100000)]);
            set(&mut o);
            assert!(refused(&o).contains("host's"));
        }
    }
}
