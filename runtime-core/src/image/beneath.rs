//! File operations beneath a layer's root directory fd, for the unpacker: opening and
//! resolving paths that never leave the root (openat2 `RESOLVE_IN_ROOT`, or a resolver in
//! user space where the kernel lacks it), making room for an entry, removing trees, and
//! applying owners, modes, times and xattrs without following symlinks.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, UtimensatFlags, fchmod, fchmodat, fstat, fstatat, mkdirat,
    utimensat,
};
use nix::unistd::{UnlinkatFlags, fchown, fchownat, unlinkat};
use tracing::{debug, warn};

use super::unpack::Meta;

/// Linux's MAXSYMLINKS: the user-space resolver gives up with ELOOP after this many.
const MAX_SYMLINKS: usize = 40;
/// openat2 answers EAGAIN when a concurrent rename anywhere on the system keeps it from
/// proving that `..` stayed in the root; the man page says to retry.
const OPENAT2_RETRIES: usize = 64;

/// Identifies an inode within the layer.
pub(super) type InodeKey = (libc::dev_t, libc::ino_t);

/// Whether openat2 can be used. Kernels before 5.6 answer ENOSYS; seccomp profiles that do
/// not know it answer ENOSYS or EPERM.
pub(super) fn openat2_available(root: BorrowedFd<'_>) -> bool {
    match open_in_root(root, Path::new(".")) {
        Err(e @ (Errno::ENOSYS | Errno::EPERM | Errno::EINVAL)) => {
            debug!(error = %e, "openat2 unavailable; resolving layer paths in user space");
            false
        }
        _ => true,
    }
}

/// Opens directory `path` beneath `root` with the kernel treating `root` as `/`.
pub(super) fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            res => return res,
        }
    }
}

/// User-space equivalent of `openat2(RESOLVE_IN_ROOT)` for directory `comps`: every
/// component is opened O_NOFOLLOW relative to a directory already known to be inside the
/// root, symlinks are expanded by hand (absolute ones restart at the root), and `..` pops
/// the walked path but never above the root. With `create`, missing directories are made
/// with mode 0755 and reported to `created`.
pub(super) fn resolve_in_root_user(
    root: BorrowedFd<'_>,
    comps: &[&OsStr],
    create: bool,
    created: &mut dyn FnMut(&FileStat),
) -> io::Result<OwnedFd> {
    let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = comps.iter().rev().map(|c| c.to_os_string()).collect();
    // Real directories walked from the root; none is a symlink.
    let mut walked: Vec<OsString> = Vec::new();
    let mut cur = openat(root, ".", path_flags, Mode::empty())?;
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if comp == ".." {
            if walked.pop().is_some() {
                cur = openat(root, ".", path_flags, Mode::empty())?;
                for name in &walked {
                    cur = openat(&cur, name.as_os_str(), path_flags, Mode::empty())?;
                }
            }
            continue;
        }
        match fstatat(&cur, comp.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_type(&st, libc::S_IFLNK) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::ELOOP.into());
                }
                let target = readlinkat(&cur, comp.as_os_str())?;
                if target.is_empty() {
                    return Err(Errno::ENOENT.into());
                }
                let target = Path::new(&target);
                if target.has_root() {
                    walked.clear();
                    cur = openat(root, ".", path_flags, Mode::empty())?;
                }
                let expanded: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(name) => Some(name.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                todo.extend(expanded.into_iter().rev());
            }
            Ok(st) if is_type(&st, libc::S_IFDIR) => {
                cur = openat(&cur, comp.as_os_str(), path_flags, Mode::empty())?;
                walked.push(comp);
            }
            Ok(_) => return Err(Errno::ENOTDIR.into()),
            Err(Errno::ENOENT) if create => {
                mkdirat(&cur, comp.as_os_str(), Mode::from_bits_truncate(0o755))?;
                let fd = openat(
                    &cur,
                    comp.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                // mkdirat's mode went through the umask; docker's implicit parents are 0755.
                fchmod(&fd, Mode::from_bits_truncate(0o755))?;
                created(&fstat(&fd)?);
                cur = fd;
                walked.push(comp);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cur)
}

/// Clears `name` in `parent` for a new entry: tar's later entry wins. A directory is kept
/// when `keep_dir` (a directory entry over a directory merges) and removed with everything
/// in it otherwise. Returns whether a directory was kept.
pub(super) fn make_room(parent: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
    let Some(st) = stat_at(parent, name)? else {
        return Ok(false);
    };
    if !is_type(&st, libc::S_IFDIR) {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
    } else if keep_dir {
        return Ok(true);
    } else {
        remove_all(parent, name)?;
    }
    Ok(false)
}

/// Removes directory `name` in `parent` and everything beneath it. Like the usage walk it
/// holds one descriptor at a time and climbs back with `..`, and it never follows a
/// symlink: each is unlinked as the entry it is.
pub(super) fn remove_all(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut cur = Dir::openat(parent, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty())?;
    // Names from `name` down to `cur`.
    let mut down: Vec<OsString> = Vec::new();
    loop {
        let mut descend = None;
        for (child, kind) in list_dir(&mut cur)? {
            let is_dir = match kind {
                Some(kind) => kind == Type::Directory,
                None => is_type(
                    &fstatat(&cur, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?,
                    libc::S_IFDIR,
                ),
            };
            if !is_dir {
                unlinkat(&cur, child.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
                continue;
            }
            match unlinkat(&cur, child.as_os_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    descend = Some(child);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(child) = descend {
            cur = Dir::openat(
                &cur,
                child.as_os_str(),
                dir_flags | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )?;
            down.push(child);
            continue;
        }
        // `cur` is empty now.
        let Some(emptied) = down.pop() else { break };
        cur = Dir::openat(&cur, "..", dir_flags, Mode::empty())?;
        unlinkat(&cur, emptied.as_os_str(), UnlinkatFlags::RemoveDir)?;
    }
    drop(cur);
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

/// Names (without `.` and `..`) and types, where the filesystem reports them, of the
/// entries of `dir`.
pub(super) fn list_dir(dir: &mut Dir) -> io::Result<Vec<(OsString, Option<Type>)>> {
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
    }
    Ok(out)
}

pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn is_type(st: &FileStat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

pub(super) fn inode_key(st: &FileStat) -> InodeKey {
    (st.st_dev, st.st_ino)
}

/// Owner, mode and xattrs through an open descriptor (regular files and directories).
/// chown comes first because it clears setuid/setgid and file capabilities.
pub(super) fn apply_meta(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    fchown(fd, Some(meta.uid), Some(meta.gid))?;
    fchmod(fd, meta.mode)?;
    apply_xattrs(XattrTarget::Fd(fd), meta)
}

/// Owner, mode, xattrs and mtime of `name` in `parent` without following it, for entries
/// that cannot be opened safely: symlinks, devices (opening has side effects) and fifos
/// (opening blocks).
pub(super) fn apply_meta_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Meta,
    is_symlink: bool,
) -> io::Result<()> {
    fchownat(
        parent,
        name,
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    // Linux symlinks have no mode of their own.
    if !is_symlink {
        fchmodat(parent, name, meta.mode, FchmodatFlags::NoFollowSymlink)?;
    }
    apply_xattrs(XattrTarget::At(parent, name), meta)?;
    utimensat(
        parent,
        name,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// What an xattr is set on.
#[derive(Clone, Copy)]
pub(super) enum XattrTarget<'a> {
    /// An open, non-O_PATH descriptor of the inode.
    Fd(BorrowedFd<'a>),
    /// The entry `name` in directory `parent`, not followed if it is a symlink.
    At(BorrowedFd<'a>, &'a OsStr),
}

pub(super) fn apply_xattrs(target: XattrTarget<'_>, meta: &Meta) -> io::Result<()> {
    for (name, value) in &meta.xattrs {
        match set_xattr(target, name, value) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {
                warn!(path = ?meta.path, xattr = ?name, error = %e,
                    "xattr refused by the filesystem; skipped");
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("setting xattr {name:?}: {e}"),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn set_xattr(target: XattrTarget<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let rc = match target {
        // SAFETY: `name` is NUL-terminated and `value` is valid for `value.len()` bytes for
        // the duration of the call; the descriptor is borrowed and so open.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        XattrTarget::At(parent, file) => {
            // There is no lsetxattrat before Linux 6.13. The magic link names only the
            // directory we hold; lsetxattr then looks `file` up in it without following it.
            let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
            path.extend_from_slice(file.as_bytes());
            let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
            // SAFETY: as above, with `path` NUL-terminated.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
