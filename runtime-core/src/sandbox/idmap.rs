//! Idmapped mounts for pods with a user namespace (`hostUsers: false`): the files of the
//! image and of the volumes keep the owners they have on the host *as seen from inside* the
//! pod (host root is the container's root), without copying or chowning anything.
//!
//! The kernel refuses to idmap an overlayfs mount itself (`mount_setattr` answers EINVAL
//! on Linux 6.18), so a container's rootfs is an overlay whose lower layers are detached
//! idmapped clones of the image's layer directories, handed to overlayfs by file
//! descriptor (`lowerdir+`, Linux 6.13) and never attached anywhere: the rootfs is still
//! one mount to unmount. Its upper and work directories belong to the host IDs of the
//! container's root, so what the container creates is owned as it sees it. A bind volume is
//! an idmapped clone of its source attached under the bundle, which runc binds as it would
//! the source.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} contains a NUL byte", p.display())))
}

fn fd_or(ret: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    ok_or(ret, what)?;
    // SAFETY: the system call just returned this new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn ok_or(ret: libc::c_long, what: impl FnOnce() -> String) -> Result<()> {
    if ret < 0 {
        return Err(Error::Internal(format!(
            "{}: {}",
            what(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Opens a pinned user namespace file for [`MOUNT_ATTR_IDMAP`].
pub fn open_userns(path: &Path) -> Result<OwnedFd> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open", path, e))
}

/// A detached clone of the mount tree at `path` (with its submounts when `recursive`),
/// idmapped through `userns`.
fn idmapped_tree(path: &Path, userns: &OwnedFd, recursive: bool) -> Result<OwnedFd> {
    clone_tree(path, Some(userns), recursive, false)
}

/// A detached clone of the mount tree at `path` (with its submounts when `recursive`),
/// idmapped through `userns` when given, and read-only in every mount when `read_only`.
fn clone_tree(
    path: &Path,
    userns: Option<&OwnedFd>,
    recursive: bool,
    read_only: bool,
) -> Result<OwnedFd> {
    let c = c_path(path)?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: plain system call on a NUL-terminated path.
    let tree = fd_or(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
            )
        },
        || format!("clone the mount at {}", path.display()),
    )?;
    let attr = MountAttr {
        attr_set: if userns.is_some() {
            MOUNT_ATTR_IDMAP
        } else {
            0
        } | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    if attr.attr_set == 0 {
        return Ok(tree);
    }
    // SAFETY: the struct lives across the call and its size is passed.
    ok_or(
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | rec,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        || format!("set the attributes of a clone of {}", path.display()),
    )?;
    Ok(tree)
}

/// Attaches the detached mount `tree` at `target`.
fn attach(tree: &OwnedFd, target: &Path) -> Result<()> {
    let t = c_path(target)?;
    // SAFETY: plain system call on a NUL-terminated path and an fd we own.
    ok_or(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        || format!("attach a mount at {}", target.display()),
    )
}

/// The upper layer of an overlay: its upper and work directories.
#[derive(Debug, Clone, Copy)]
pub struct Upper<'a> {
    /// `upperdir`.
    pub upper: &'a Path,
    /// `workdir`.
    pub work: &'a Path,
}

/// Mounts at `target` an overlay of `lowers` (top first, as `lowerdir=` lists them), each
/// idmapped through `userns`, with `upper` on top (`volatile`, see
/// `pods::usermounts::mount_rootfs`) or read-only without one.
pub fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<Upper>,
    userns: &OwnedFd,
) -> Result<()> {
    // SAFETY: plain system call on a static NUL-terminated name.
    let fs = fd_or(
        unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) },
        || "open an overlay file system context".to_string(),
    )?;
    let config =
        |cmd: libc::c_uint, key: Option<&CString>, value: *const libc::c_char, aux: libc::c_int| {
            let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
            // SAFETY: key and value are NUL-terminated or null as the command requires.
            unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, aux) }
        };
    let lower_key = CString::from(c"lowerdir+");
    // The clones only have to live until the superblock holds them.
    let mut trees = Vec::with_capacity(lowers.len());
    for l in lowers {
        let tree = idmapped_tree(l, userns, false)?;
        ok_or(
            config(
                FSCONFIG_SET_FD,
                Some(&lower_key),
                std::ptr::null(),
                tree.as_raw_fd(),
            ),
            || format!("add the idmapped layer {} to an overlay", l.display()),
        )?;
        trees.push(tree);
    }
    if let Some(u) = upper {
        for (key, dir) in [("upperdir", u.upper), ("workdir", u.work)] {
            let k = CString::new(key).map_err(|e| Error::Internal(e.to_string()))?;
            let v = c_path(dir)?;
            ok_or(config(FSCONFIG_SET_STRING, Some(&k), v.as_ptr(), 0), || {
                format!("set the overlay's {key} {}", dir.display())
            })?;
        }
        let volatile = CString::from(c"volatile");
        ok_or(
            config(FSCONFIG_SET_FLAG, Some(&volatile), std::ptr::null(), 0),
            || "make the overlay volatile".to_string(),
        )?;
    }
    ok_or(
        config(FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0),
        || format!("create the idmapped overlay for {}", target.display()),
    )?;
    let attrs = if upper.is_some() {
        0
    } else {
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID
    };
    // SAFETY: plain system call on an fd we own.
    let mnt = fd_or(
        unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) },
        || format!("mount the idmapped overlay for {}", target.display()),
    )?;
    drop(trees);
    attach(&mnt, target)
}

/// Mounts at `target` (an existing file or directory) an idmapped clone of `source` (with
/// its submounts when `recursive`, as an rbind).
pub fn bind(source: &Path, target: &Path, userns: &OwnedFd, recursive: bool) -> Result<()> {
    let tree = idmapped_tree(source, userns, recursive)?;
    attach(&tree, target)
}

/// Mounts at `target` (an existing file or directory) a clone of `source` with its
/// submounts (an rbind), idmapped through `userns` when given, every mount of it read-only
/// when `read_only` (a recursive read-only mount, which `MS_RDONLY` on a bind cannot give).
pub fn rbind_with(
    source: &Path,
    target: &Path,
    userns: Option<&OwnedFd>,
    read_only: bool,
) -> Result<()> {
    let tree = clone_tree(source, userns, true, read_only)?;
    attach(&tree, target)
}

/// Whether this kernel makes recursive read-only mounts (`mount_setattr`, Linux 5.12): a
/// detached read-only clone of `dir` is made and dropped, never attached.
pub fn recursive_read_only_works(dir: &Path) -> Result<()> {
    clone_tree(dir, None, false, true).map(drop)
}

/// Whether this kernel gives berth what a pod with a user namespace needs: an overlay of an
/// idmapped layer, with an upper directory, mounted in `scratch` (an empty directory, left
/// empty) with the user namespace `userns`.
pub fn probe(scratch: &Path, userns: &OwnedFd) -> Result<()> {
    let dirs = ["lower", "upper", "work", "merged"].map(|d| scratch.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    let [lower, upper, work, merged] = &dirs;
    let mounted = mount_overlay(
        merged,
        std::slice::from_ref(lower),
        Some(Upper { upper, work }),
        userns,
    );
    if mounted.is_ok() {
        crate::sandbox::files::unmount(merged);
    }
    for d in &dirs {
        let _ = crate::fsutil::remove_all(d);
    }
    mounted
}
