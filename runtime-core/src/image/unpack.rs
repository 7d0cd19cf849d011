//! Unpacking OCI / Docker image layer tars into overlayfs-ready directories.
//!
//! A layer tar is untrusted input. Its entries may carry `..` components or absolute paths,
//! and may create symlinks or hard links that point out of the layer directory and then
//! write through them. Nothing here ever uses a host path built from entry names. All work
//! is relative to a file descriptor of the layer directory:
//!
//! * an entry's parent directory is resolved with `openat2(RESOLVE_IN_ROOT)`, so `..` and
//!   symlinks (absolute or relative) resolve as if the layer directory were `/`, which is
//!   how they will resolve inside the container. Where the kernel lacks openat2, a user-space
//!   walk with the same semantics is used;
//! * the final component is only touched by `*at` calls that do not follow it
//!   (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `mkdirat`, `mknodat`, `symlinkat`, `unlinkat`,
//!   and `linkat` without `AT_SYMLINK_FOLLOW`).
//!
//! Whiteouts are converted to the form overlayfs reads in a lower directory, as containerd's
//! overlay snapshotter does. `.wh.NAME` becomes a 0:0 character device `NAME`, and
//! `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    Mode, SFlag, UtimensatFlags, fstat, fstatat, futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, linkat, symlinkat};
use tar::EntryType;
use tracing::{debug, warn};

use super::beneath::{
    InodeKey, XattrTarget, apply_meta, apply_meta_at, inode_key, is_type, list_dir, make_room,
    open_in_root, openat2_available, resolve_in_root_user, set_xattr, stat_at,
};

/// Prefix of a whiteout entry's name: `.wh.NAME` deletes `NAME` from lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Prefix of names that whiteout tooling (aufs) reserves for its own metadata.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Name of the entry that makes its directory opaque.
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to treat a lower directory as opaque.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
/// PAX record prefix under which tar stores extended attributes.
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// xattrs overlayfs interprets (redirects, metacopy, origin file handles). A layer expresses
/// deletions as whiteouts only; letting the tar set these would let it steer overlayfs, so
/// they are dropped.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Layers are mostly large files: copy in big chunks rather than io::copy's 8 KiB.
const COPY_BUF_SIZE: usize = 256 * 1024;

/// Disk usage of what [`unpack_layer`] created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes allocated on disk (`st_blocks * 512`), each hard-linked inode counted once.
    pub bytes: u64,
    /// Number of inodes created; hard links add none.
    pub inodes: u64,
}

/// Why a layer could not be unpacked. The destination then holds a partial layer and must
/// be discarded by the caller.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The destination directory could not be opened, or the final walk over it failed.
    #[error("layer directory {path:?}: {source}")]
    Destination {
        /// The destination directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tar stream is unreadable: a read error, a truncated stream, a bad header.
    #[error("reading layer tar: {source}")]
    Archive {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation for an entry failed, or the entry's data was truncated.
    #[error("tar entry {path:?}: {source}")]
    Io {
        /// The entry's path as written in the tar.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A hard link's target does not exist in the layer or cannot be reached.
    #[error("tar entry {path:?}: hard link target {target:?}: {source}")]
    HardLinkTarget {
        /// The entry's path as written in the tar.
        path: PathBuf,
        /// The link target as written in the tar.
        target: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A hard link points at a directory, which no filesystem allows.
    #[error("tar entry {path:?}: hard link target {target:?} is a directory")]
    HardLinkToDirectory {
        /// The entry's path as written in the tar.
        path: PathBuf,
        /// The link target as written in the tar.
        target: PathBuf,
    },
    /// The entry has a type flag that has no meaning in an image layer.
    #[error("tar entry {path:?}: unsupported entry type {entry_type:?}")]
    UnsupportedEntryType {
        /// The entry's path as written in the tar.
        path: PathBuf,
        /// The raw type flag.
        entry_type: char,
    },
    /// The entry is malformed: a link without a target, an empty whiteout name.
    #[error("tar entry {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's path as written in the tar.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl UnpackError {
    /// The I/O error underneath, if the failure was one (to tell a full disk apart).
    pub fn io_source(&self) -> Option<&io::Error> {
        match self {
            UnpackError::Destination { source, .. }
            | UnpackError::Archive { source }
            | UnpackError::Io { source, .. }
            | UnpackError::HardLinkTarget { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Unpacks an uncompressed layer tar stream into `dest` (an existing, empty directory),
/// converting whiteouts to overlayfs form.
///
/// Owners, modes (setuid/setgid/sticky included), mtimes and `SCHILY.xattr.*` extended
/// attributes are kept; xattrs the filesystem refuses (ENOTSUP, EPERM) are skipped with a
/// warning. Absolute entry names are taken relative to `dest`, `..` cannot climb above it,
/// and symlinks are resolved as if `dest` were the root, so nothing outside `dest` is ever
/// created or modified. On success the reader has been read to its end, so a digest
/// computed over it covers every byte. Nothing is synced to disk; that is the caller's job.
/// The returned usage covers everything under `dest`, `dest` itself excluded.
pub fn unpack_layer<R: Read>(reader: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack(reader, dest, Resolution::Auto)
}

/// How parent directories are resolved inside the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// openat2 where the kernel has it, the user-space walk otherwise.
    Auto,
    /// Always the user-space walk: what kernels without openat2 (before 5.6, or behind a
    /// seccomp filter that refuses it) get, selectable so tests cover it on any kernel.
    #[cfg_attr(not(test), allow(dead_code))]
    UserSpace,
}

fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    resolution: Resolution,
) -> Result<UnpackStats, UnpackError> {
    let dest_err = |source: io::Error| UnpackError::Destination {
        path: dest.to_path_buf(),
        source,
    };
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dest_err(e.into()))?;
    let kernel_resolve = resolution == Resolution::Auto && openat2_available(root.as_fd());
    let mut unpacker = Unpacker {
        root,
        kernel_resolve,
        dir_times: HashMap::new(),
        aufs_meta: BTreeSet::new(),
        buf: vec![0; COPY_BUF_SIZE],
    };

    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        unpacker.entry(&mut entry)?;
    }
    // tar stops at the first zero block, but the caller digests the whole stream: the second
    // end-of-archive block and any record padding must be read too.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(archive_err)?;

    unpacker.finish().map_err(dest_err)
}

fn archive_err(source: io::Error) -> UnpackError {
    UnpackError::Archive { source }
}

/// Attaches the tar entry's path to low-level errors.
trait AtEntry<T> {
    fn at(self, path: &Path) -> Result<T, UnpackError>;
}

impl<T, E: Into<io::Error>> AtEntry<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, UnpackError> {
        self.map_err(|e| UnpackError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })
    }
}

/// State of one unpack run.
struct Unpacker {
    /// The layer directory; every path is resolved beneath it.
    root: OwnedFd,
    /// Whether openat2 with RESOLVE_IN_ROOT works here.
    kernel_resolve: bool,
    /// mtimes of directories written by entries. They are applied after the last entry
    /// because creating entries in a directory changes its mtime. Keyed by inode rather than
    /// path so that a directory later replaced, or reached through a different path, cannot
    /// receive a stale time.
    dir_times: HashMap<InodeKey, TimeSpec>,
    /// Top-level aufs metadata directories (`.wh..wh.plnk`) created only so that hard links
    /// to the files in them resolve; removed at the end, as docker does.
    aufs_meta: BTreeSet<OsString>,
    /// Copy buffer, reused for every file.
    buf: Vec<u8>,
}

/// Metadata of one entry, from its header and PAX records.
pub(super) struct Meta {
    /// Entry path, for log messages.
    pub(super) path: PathBuf,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mode: Mode,
    pub(super) mtime: TimeSpec,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let path = entry.path().map_err(archive_err)?.into_owned();
        let raw_type = entry.header().as_old().linkflag[0];
        let mut kind = entry.header().entry_type();
        // Pre-POSIX tars mark directories only by a trailing slash; Go's archive/tar (and so
        // docker and containerd) reads them the same way.
        if raw_type == 0 && entry.path_bytes().ends_with(b"/") {
            kind = EntryType::Directory;
        }
        if kind == EntryType::XGlobalHeader {
            debug!(path = ?path, "PAX global header ignored");
            return Ok(());
        }

        let comps = clean_path(&path);
        let Some((&name, parent)) = comps.split_last() else {
            // containerd ignores entries for the root too: the layer root's own metadata
            // is not part of what overlayfs shows.
            debug!(path = ?path, "tar entry resolves to the layer root; ignored");
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if name_bytes == WHITEOUT_OPAQUE {
            return self.opaque(parent).at(&path);
        }
        if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
            debug!(path = ?path, "aufs metadata entry skipped");
            return Ok(());
        }

        let meta = Meta::read(entry, &path).at(&path)?;
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(parent, hidden, &meta);
        }
        if let Some(&first) = parent.first()
            && first.as_bytes().starts_with(WHITEOUT_META_PREFIX)
        {
            self.aufs_meta.insert(first.to_os_string());
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                self.file(entry, size, parent, name, &meta).at(&path)
            }
            EntryType::Directory => self.dir(parent, name, &meta).at(&path),
            EntryType::Symlink => {
                let target = link_target(entry, &path)?;
                self.symlink(parent, name, &target, &meta).at(&path)
            }
            EntryType::Link => {
                let target = link_target(entry, &path)?;
                self.hardlink(parent, name, &target, &meta)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let dev = match kind {
                    EntryType::Fifo => 0,
                    _ => {
                        let raw = header.as_bytes();
                        let major = numeric(header.device_major(), &raw[329..337])
                            .at(&path)?
                            .unwrap_or(0);
                        let minor = numeric(header.device_minor(), &raw[337..345])
                            .at(&path)?
                            .unwrap_or(0);
                        libc::makedev(major, minor)
                    }
                };
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                self.node(parent, name, sflag, dev, &meta).at(&path)
            }
            _ => Err(UnpackError::UnsupportedEntryType {
                path,
                entry_type: char::from(raw_type),
            }),
        }
    }

    /// Resolves the directory `comps` names inside the layer, following symlinks as if the
    /// layer were the root. With `create`, missing directories are made (mode 0755, owned
    /// by the caller), also where a symlink points at something missing, as docker's
    /// MkdirAll on the resolved path does.
    fn resolve_dir(&mut self, comps: &[&OsStr], create: bool) -> io::Result<OwnedFd> {
        if self.kernel_resolve {
            let path: PathBuf = if comps.is_empty() {
                PathBuf::from(".")
            } else {
                comps.iter().collect()
            };
            match open_in_root(self.root.as_fd(), &path) {
                Ok(fd) => return Ok(fd),
                // The user-space walk creates what is missing, with the same semantics.
                Err(Errno::ENOENT) if create => {}
                Err(e) => return Err(e.into()),
            }
        }
        let dir_times = &mut self.dir_times;
        resolve_in_root_user(self.root.as_fd(), comps, create, &mut |st| {
            // A new inode may reuse the number of a directory removed earlier.
            dir_times.remove(&inode_key(st));
        })
    }

    fn file<R: Read>(
        &mut self,
        data: &mut R,
        size: u64,
        parent: &[&OsStr],
        name: &OsStr,
        meta: &Meta,
    ) -> io::Result<()> {
        let parent = self.resolve_dir(parent, true)?;
        make_room(parent.as_fd(), name, false)?;
        let fd = openat(
            &parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let mut file = File::from(fd);
        copy_exact(data, &mut file, &mut self.buf, size)?;
        apply_meta(file.as_fd(), meta)?;
        // Last, because writing the data and setting xattrs would change the times.
        futimens(&file, &meta.mtime, &meta.mtime)?;
        Ok(())
    }

    fn dir(&mut self, parent: &[&OsStr], name: &OsStr, meta: &Meta) -> io::Result<()> {
        let parent = self.resolve_dir(parent, true)?;
        if !make_room(parent.as_fd(), name, true)? {
            mkdirat(&parent, name, Mode::S_IRWXU)?;
        }
        let fd = openat(
            &parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        apply_meta(fd.as_fd(), meta)?;
        self.dir_times.insert(inode_key(&fstat(&fd)?), meta.mtime);
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &[&OsStr],
        name: &OsStr,
        target: &Path,
        meta: &Meta,
    ) -> io::Result<()> {
        let parent = self.resolve_dir(parent, true)?;
        make_room(parent.as_fd(), name, false)?;
        // Stored verbatim: the target is only ever interpreted inside the container, or
        // in-root by this module.
        symlinkat(target, &parent, name)?;
        apply_meta_at(parent.as_fd(), name, meta, true)
    }

    fn hardlink(
        &mut self,
        parent: &[&OsStr],
        name: &OsStr,
        target: &Path,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let path = meta.path.as_path();
        let target_err = |source: io::Error| UnpackError::HardLinkTarget {
            path: path.to_path_buf(),
            target: target.to_path_buf(),
            source,
        };
        let to_dir = || UnpackError::HardLinkToDirectory {
            path: path.to_path_buf(),
            target: target.to_path_buf(),
        };
        // Link targets are layer paths too: `/etc/passwd` and `../../etc/passwd` both mean
        // the layer's own etc/passwd.
        let target_comps = clean_path(target);
        let Some((&target_name, target_parent)) = target_comps.split_last() else {
            return Err(to_dir());
        };
        let target_parent = self.resolve_dir(target_parent, false).map_err(target_err)?;
        let target_st = fstatat(&target_parent, target_name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| target_err(e.into()))?;
        if is_type(&target_st, libc::S_IFDIR) {
            return Err(to_dir());
        }

        let parent = self.resolve_dir(parent, true).at(path)?;
        let existing = stat_at(parent.as_fd(), name).at(path)?;
        // A link to itself must not unlink its own target first.
        if existing.is_none_or(|st| inode_key(&st) != inode_key(&target_st)) {
            make_room(parent.as_fd(), name, false).at(path)?;
            // No AT_SYMLINK_FOLLOW: a hard link to a symlink links the symlink itself.
            linkat(&target_parent, target_name, &parent, name, AtFlags::empty()).at(path)?;
        }
        // Like containerd and docker, the link's header metadata is applied to the inode.
        let is_symlink = is_type(&target_st, libc::S_IFLNK);
        apply_meta_at(parent.as_fd(), name, meta, is_symlink).at(path)
    }

    fn node(
        &mut self,
        parent: &[&OsStr],
        name: &OsStr,
        kind: SFlag,
        dev: libc::dev_t,
        meta: &Meta,
    ) -> io::Result<()> {
        let parent = self.resolve_dir(parent, true)?;
        make_room(parent.as_fd(), name, false)?;
        mknodat(&parent, name, kind, Mode::S_IRUSR | Mode::S_IWUSR, dev)?;
        apply_meta_at(parent.as_fd(), name, meta, false)
    }

    /// `.wh.NAME`: NAME becomes the 0:0 character device overlayfs reads as "deleted".
    fn whiteout(
        &mut self,
        parent: &[&OsStr],
        hidden: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let path = meta.path.as_path();
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::InvalidEntry {
                path: path.to_path_buf(),
                reason: "whiteout does not name a file".to_string(),
            });
        }
        let hidden = OsStr::from_bytes(hidden);
        let parent = self.resolve_dir(parent, true).at(path)?;
        make_room(parent.as_fd(), hidden, false).at(path)?;
        mknodat(&parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0).at(path)?;
        // containerd chowns the device to the whiteout's owner; mode stays 0.
        fchownat(
            &parent,
            hidden,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .at(path)
    }

    /// `.wh..wh..opq`: the directory hides everything lower layers have in it.
    fn opaque(&mut self, dir: &[&OsStr]) -> io::Result<()> {
        let dir = self.resolve_dir(dir, true)?;
        // fsetxattr needs a real descriptor; the resolved one is O_PATH.
        let dir = openat(
            &dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // Without it overlayfs would merge lower layers' contents back in, so failure is
        // an error rather than a skipped xattr.
        set_xattr(XattrTarget::Fd(dir.as_fd()), OPAQUE_XATTR, b"y")
    }

    /// Removes aufs metadata, applies directory mtimes and measures the layer.
    fn finish(self) -> io::Result<UnpackStats> {
        let root = self.root.as_fd();
        for name in &self.aufs_meta {
            make_room(root, name, false)?;
        }

        let mut walk = UsageWalk {
            stats: UnpackStats::default(),
            seen: HashSet::new(),
            dir_times: &self.dir_times,
        };
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // One descriptor at a time, climbing back with `..`, so that a deep tree cannot
        // exhaust descriptors or stack. Every directory was opened O_NOFOLLOW beneath the
        // root and the pending stack says how deep we are, so `..` never leaves the layer.
        let mut cur = Dir::openat(root, ".", dir_flags, Mode::empty())?;
        let mut pending = vec![walk.scan(&mut cur)?];
        while let Some(top) = pending.last_mut() {
            if let Some(sub) = top.pop() {
                cur = Dir::openat(
                    &cur,
                    sub.as_os_str(),
                    dir_flags | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )?;
                let subdirs = walk.scan(&mut cur)?;
                pending.push(subdirs);
            } else {
                pending.pop();
                if !pending.is_empty() {
                    cur = Dir::openat(&cur, "..", dir_flags, Mode::empty())?;
                }
            }
        }
        Ok(walk.stats)
    }
}

/// Accumulates disk usage over the finished layer.
struct UsageWalk<'a> {
    stats: UnpackStats,
    /// Hard-linked inodes already counted.
    seen: HashSet<InodeKey>,
    dir_times: &'a HashMap<InodeKey, TimeSpec>,
}

impl UsageWalk<'_> {
    /// Counts the entries of `dir`, sets the recorded mtimes of its subdirectories and
    /// returns their names.
    fn scan(&mut self, dir: &mut Dir) -> io::Result<Vec<OsString>> {
        let mut subdirs = Vec::new();
        for (name, _) in list_dir(dir)? {
            let st = fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if is_type(&st, libc::S_IFDIR) {
                if let Some(t) = self.dir_times.get(&inode_key(&st)) {
                    utimensat(
                        &*dir,
                        name.as_os_str(),
                        t,
                        t,
                        UtimensatFlags::NoFollowSymlink,
                    )?;
                }
                subdirs.push(name);
            } else if st.st_nlink > 1 && !self.seen.insert(inode_key(&st)) {
                continue;
            }
            self.stats.inodes += 1;
            let bytes = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
            self.stats.bytes = self.stats.bytes.saturating_add(bytes);
        }
        Ok(subdirs)
    }
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> io::Result<Self> {
        let header = entry.header();
        let raw = header.as_old();
        let uid = Uid::from_raw(id_from(numeric(header.uid(), &raw.uid)?, "uid")?);
        let gid = Gid::from_raw(id_from(numeric(header.gid(), &raw.gid)?, "gid")?);
        let mode = Mode::from_bits_truncate(numeric(header.mode(), &raw.mode)? & 0o7777);
        let mtime = numeric(header.mtime(), &raw.mtime)?;
        let secs = libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX);
        let mut mtime = TimeSpec::new(secs, 0);

        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions()? {
            for record in records {
                let record = record?;
                let (key, value) = (record.key_bytes(), record.value_bytes());
                if key == b"mtime" {
                    // The tar crate applies PAX uid, gid and size itself, but not mtime,
                    // which PAX writers use for sub-second or out-of-range times.
                    match parse_pax_time(value) {
                        Some(t) => mtime = t,
                        None => warn!(path = ?path, "malformed PAX mtime ignored"),
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    if OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
                        warn!(path = ?path, xattr = %String::from_utf8_lossy(name),
                            "overlayfs xattr in layer tar skipped");
                        continue;
                    }
                    let name = CString::new(name).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "xattr name contains NUL")
                    })?;
                    xattrs.push((name, value.to_vec()));
                }
            }
        }
        Ok(Meta {
            path: path.to_path_buf(),
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }
}

/// Reads a numeric header field, taking a blank one as 0 as Go's archive/tar (and so docker
/// and containerd) does, where the tar crate refuses it.
fn numeric<T: Default>(value: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match value {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

fn id_from(id: u64, what: &str) -> io::Result<u32> {
    u32::try_from(id).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {id} out of range"),
        )
    })
}

/// Parses a PAX time such as `1700000000.123456789` or `-1.5`.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: libc::time_t = secs.parse().ok()?;
    let mut nanos: libc::c_long = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| d - b'0');
        nanos = nanos * 10 + libc::c_long::from(digit);
    }
    Some(match (negative, nanos) {
        (false, _) => TimeSpec::new(secs, nanos),
        (true, 0) => TimeSpec::new(-secs, 0),
        (true, _) => TimeSpec::new(-secs - 1, 1_000_000_000 - nanos),
    })
}

/// The link target of a symlink or hard link entry.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, path: &Path) -> Result<PathBuf, UnpackError> {
    match entry.link_name() {
        Ok(Some(target)) if !target.as_os_str().is_empty() => Ok(target.into_owned()),
        Ok(_) => Err(UnpackError::InvalidEntry {
            path: path.to_path_buf(),
            reason: "link without a target".to_string(),
        }),
        Err(e) => Err(archive_err(e)),
    }
}

/// Lexically cleans an entry path into layer-relative components: the root and `.` are
/// dropped and `..` removes the previous component but never climbs above the layer, as
/// Go's filepath.Clean on a rooted path does for docker and containerd.
fn clean_path(path: &Path) -> Vec<&OsStr> {
    let mut comps = Vec::new();
    for comp in path.components() {
        match comp {
            Component::Normal(name) => comps.push(name),
            Component::ParentDir => {
                comps.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    comps
}

/// Copies exactly `size` bytes of entry data; the tar crate reports a stream that ends
/// early as a short read, not as an error.
fn copy_exact<R: Read>(src: &mut R, dst: &mut File, buf: &mut [u8], size: u64) -> io::Result<()> {
    let mut copied: u64 = 0;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        copied = copied.saturating_add(n as u64);
    }
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("tar stream ends inside the entry's data ({copied} of {size} bytes)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use tar::{Builder, Header};

    const MTIME: u64 = 1_600_000_000;

    // ---- building tars ----

    /// Builds tars with raw header bytes, so names may hold `..` or start with `/`.
    struct Tar(Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Tar(Builder::new(Vec::new()))
        }

        /// Appends an entry; `name` and `link` are written raw (up to 100 bytes each).
        fn raw(
            &mut self,
            kind: EntryType,
            name: &[u8],
            link: Option<&[u8]>,
            data: &[u8],
            edit: impl FnOnce(&mut Header),
        ) -> &mut Self {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(match kind {
                EntryType::Directory => 0o755,
                EntryType::Symlink => 0o777,
                _ => 0o644,
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            if matches!(kind, EntryType::Char | EntryType::Block) {
                h.set_device_major(0).unwrap();
                h.set_device_minor(0).unwrap();
            }
            edit(&mut h);
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                old.linkname = [0; 100];
                old.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.raw(EntryType::Regular, name.as_bytes(), None, data, |_| {})
        }

        fn dir(&mut self, name: &str) -> &mut Self {
            self.raw(EntryType::Directory, name.as_bytes(), None, b"", |_| {})
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            let (name, target) = (name.as_bytes(), target.as_bytes());
            self.raw(EntryType::Symlink, name, Some(target), b"", |_| {})
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            let (name, target) = (name.as_bytes(), target.as_bytes());
            self.raw(EntryType::Link, name, Some(target), b"", |_| {})
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.0
                .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
            self
        }

        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    // ---- the fixture: dest/ plus an outside/ that must never change ----

    struct Fixture {
        tmp: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
        sentinel: PathBuf,
        before: Vec<String>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o751)).unwrap();
        let sentinel = outside.join("sentinel");
        fs::write(&sentinel, b"sentinel").unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o640)).unwrap();
        let mut fx = Fixture {
            tmp,
            dest,
            outside,
            sentinel,
            before: Vec::new(),
        };
        fx.before = fx.snapshot();
        fx
    }

    impl Fixture {
        /// Everything about the host side that an escape could change, ctimes included
        /// (chmod, chown, link and setxattr all bump them).
        fn snapshot(&self) -> Vec<String> {
            let mut out = Vec::new();
            for p in [self.tmp.path(), &self.outside, &self.sentinel] {
                let m = fs::symlink_metadata(p).unwrap();
                out.push(format!(
                    "{} mode={:o} uid={} gid={} nlink={} ino={} mtime={}.{} ctime={}.{} xattrs={:?}",
                    p.display(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    list_xattrs(p)
                ));
            }
            for dir in [self.tmp.path(), &self.outside] {
                let mut names: Vec<_> = fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                out.push(format!("{} lists {names:?}", dir.display()));
            }
            out.push(format!(
                "sentinel = {:?}",
                fs::read(&self.sentinel).unwrap()
            ));
            out
        }

        fn assert_outside_untouched(&self) {
            assert_eq!(self.snapshot(), self.before, "host outside dest changed");
        }

        /// `dest` joined with a host absolute path, where in-root resolution puts it.
        fn in_dest(&self, host_path: &Path) -> PathBuf {
            self.dest.join(host_path.strip_prefix("/").unwrap())
        }

        fn unpack(&self, tar: &[u8], res: Resolution) -> Result<UnpackStats, UnpackError> {
            unpack(tar, &self.dest, res)
        }
    }

    const RESOLUTIONS: [Resolution; 2] = [Resolution::Auto, Resolution::UserSpace];

    fn unique(tag: &str) -> String {
        format!("berth-unpack-test-{}-{tag}", std::process::id())
    }

    fn assert_absent(p: &Path) {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "{} was created",
            p.display()
        );
    }

    fn meta(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let name = CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn list_xattrs(p: &Path) -> Vec<u8> {
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: NUL-terminated path and a buffer of the given length.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        buf
    }

    /// Disk usage as std sees it, to check the unpacker's own accounting.
    fn du(root: &Path) -> UnpackStats {
        fn walk(dir: &Path, seen: &mut HashSet<u64>, stats: &mut UnpackStats) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    walk(&p, seen, stats);
                } else if m.nlink() > 1 && !seen.insert(m.ino()) {
                    continue;
                }
                stats.inodes += 1;
                stats.bytes += m.blocks() * 512;
            }
        }
        let mut stats = UnpackStats::default();
        walk(root, &mut HashSet::new(), &mut stats);
        stats
    }

    struct Counting<'a, R> {
        inner: R,
        count: &'a mut u64,
    }

    impl<R: Read> Read for Counting<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            *self.count += n as u64;
            Ok(n)
        }
    }

    // ---- plain unpacking ----

    #[test]
    fn unpacks_every_entry_type_with_metadata() {
        let fx = fixture();
        let big: Vec<u8> = (0..COPY_BUF_SIZE * 2 + 1234)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut t = Tar::new();
        t.raw(EntryType::Directory, b"d/", None, b"", |h| {
            h.set_mode(0o750);
            h.set_uid(1234);
            h.set_gid(5678);
        })
        .raw(EntryType::Regular, b"d/suid", None, b"hello", |h| {
            h.set_mode(0o4755);
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_mtime(MTIME + 1);
        })
        .raw(EntryType::Regular, b"d/sgid", None, b"", |h| {
            h.set_mode(0o2710);
            h.set_gid(5678);
        })
        .raw(EntryType::Directory, b"tmp/", None, b"", |h| {
            h.set_mode(0o1777)
        })
        .raw(EntryType::Symlink, b"d/link", Some(b"suid"), b"", |h| {
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_mtime(MTIME + 2);
        })
        // Real tars give a hard link its inode's metadata, which is applied again.
        .raw(EntryType::Link, b"d/hard", Some(b"d/suid"), b"", |h| {
            h.set_mode(0o4755);
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_mtime(MTIME + 1);
        })
        .raw(EntryType::Fifo, b"d/fifo", None, b"", |h| h.set_mode(0o600))
        .raw(EntryType::Char, b"d/null", None, b"", |h| {
            h.set_mode(0o666);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .raw(EntryType::Block, b"d/loop0", None, b"", |h| {
            h.set_mode(0o660);
            h.set_device_major(7).unwrap();
            h.set_device_minor(0).unwrap();
        })
        .file("./x/y/big", &big);
        let mut tar = t.finish();
        // Record padding after the end-of-archive blocks, as GNU tar writes it.
        tar.resize(tar.len().next_multiple_of(10240) + 10240, 0);

        let mut count = 0u64;
        let stats = unpack_layer(
            Counting {
                inner: tar.as_slice(),
                count: &mut count,
            },
            &fx.dest,
        )
        .unwrap();
        assert_eq!(count, tar.len() as u64, "reader not consumed to its end");

        let d = fx.dest.join("d");
        let m = meta(&d);
        assert!(m.is_dir());
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 1234, 5678));
        // Set after d's children were created.
        assert_eq!(m.mtime(), MTIME as i64);

        let m = meta(&d.join("suid"));
        assert!(m.is_file());
        assert_eq!(
            m.mode() & 0o7777,
            0o4755,
            "setuid lost (chmod must follow chown)"
        );
        assert_eq!(
            (m.uid(), m.gid(), m.mtime()),
            (1234, 5678, MTIME as i64 + 1)
        );
        assert_eq!(fs::read(d.join("suid")).unwrap(), b"hello");
        assert_eq!(m.nlink(), 2);
        assert_eq!(meta(&d.join("hard")).ino(), m.ino());

        assert_eq!(meta(&d.join("sgid")).mode() & 0o7777, 0o2710);
        assert_eq!(meta(&fx.dest.join("tmp")).mode() & 0o7777, 0o1777);

        let m = meta(&d.join("link"));
        assert!(m.file_type().is_symlink());
        assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("suid"));
        assert_eq!(
            (m.uid(), m.gid(), m.mtime()),
            (1234, 5678, MTIME as i64 + 2)
        );

        let m = meta(&d.join("fifo"));
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o600);
        let m = meta(&d.join("null"));
        assert!(m.file_type().is_char_device());
        assert_eq!((m.rdev(), m.mode() & 0o7777), (libc::makedev(1, 3), 0o666));
        let m = meta(&d.join("loop0"));
        assert!(m.file_type().is_block_device());
        assert_eq!(m.rdev(), libc::makedev(7, 0));

        // Implicit parents: 0755 whatever the umask, owned by root.
        for p in ["x", "x/y"] {
            let m = meta(&fx.dest.join(p));
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0), "{p}");
        }
        assert_eq!(fs::read(fx.dest.join("x/y/big")).unwrap(), big);

        // d, suid, sgid, tmp, link, fifo, null, loop0, x, x/y, big; the hard link adds none.
        assert_eq!(stats.inodes, 11);
        assert_eq!(stats, du(&fx.dest));
        assert!(stats.bytes >= big.len() as u64, "{stats:?}");
        fx.assert_outside_untouched();
    }

    #[test]
    fn pax_records_long_names_and_ids() {
        let fx = fixture();
        let long_dir = "a".repeat(120);
        let long_file = format!("{long_dir}/{}", "b".repeat(150));
        let long_target = format!("../{}", "t".repeat(200));
        let mut t = Tar::new();
        // GNU long name and long link records, written by the tar crate itself.
        let header = |kind: EntryType, size: u64| {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            h
        };
        let mut h = header(EntryType::Regular, 4);
        t.0.append_data(&mut h, &long_file, &b"long"[..]).unwrap();
        let mut h = header(EntryType::Symlink, 0);
        t.0.append_link(&mut h, format!("{long_dir}/sym"), &long_target)
            .unwrap();
        let mut h = header(EntryType::Link, 0);
        t.0.append_link(&mut h, "hard", &long_file).unwrap();
        // PAX path, linkpath, uid/gid beyond the octal fields, sub-second mtime.
        let pax_name = format!("p/{}", "c".repeat(200));
        t.pax(&[
            ("path", pax_name.as_bytes()),
            ("uid", b"3000000"),
            ("gid", b"3000001"),
            ("mtime", b"1600000000.5"),
        ])
        .file("placeholder", b"pax");
        t.pax(&[("linkpath", long_target.as_bytes())])
            .symlink("p/sym2", "placeholder");
        let tar = t.finish();

        for res in RESOLUTIONS {
            let fx = fixture();
            fx.unpack(&tar, res).unwrap();
            assert_eq!(fs::read(fx.dest.join(&long_file)).unwrap(), b"long");
            assert_eq!(
                fs::read_link(fx.dest.join(&long_dir).join("sym")).unwrap(),
                Path::new(&long_target)
            );
            assert_eq!(
                meta(&fx.dest.join("hard")).ino(),
                meta(&fx.dest.join(&long_file)).ino()
            );
            let m = meta(&fx.dest.join(&pax_name));
            assert_eq!(fs::read(fx.dest.join(&pax_name)).unwrap(), b"pax");
            assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
            assert_eq!((m.mtime(), m.mtime_nsec()), (MTIME as i64, 500_000_000));
            assert_absent(&fx.dest.join("placeholder"));
            assert_eq!(
                fs::read_link(fx.dest.join("p/sym2")).unwrap(),
                Path::new(&long_target)
            );
            fx.assert_outside_untouched();
        }
        fx.assert_outside_untouched();
    }

    #[test]
    fn parses_pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1600000000"), Some((1_600_000_000, 0)));
        assert_eq!(
            t("1600000000.123456789123"),
            Some((1_600_000_000, 123_456_789))
        );
        assert_eq!(t("1.5"), Some((1, 500_000_000)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t(".5"), None);
        assert_eq!(t("1e9"), None);
        assert_eq!(t("99999999999999999999999"), None);
    }

    #[test]
    fn xattrs_are_kept() {
        let fx = fixture();
        let mut t = Tar::new();
        t.pax(&[
            ("SCHILY.xattr.user.foo", b"bar"),
            ("SCHILY.xattr.trusted.berth", b"\x00\x01bin"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .file("f", b"data")
        .pax(&[("SCHILY.xattr.trusted.dir", b"d")])
        .dir("d/")
        // user.* is not allowed on symlinks (EPERM): skipped, not fatal.
        .pax(&[
            ("SCHILY.xattr.user.nope", b"x"),
            ("SCHILY.xattr.trusted.sym", b"s"),
        ])
        .symlink("s", "f")
        .pax(&[("SCHILY.xattr.trusted.fifo", b"p")])
        .raw(EntryType::Fifo, b"p", None, b"", |_| {});
        let tar = t.finish();
        fx.unpack(&tar, Resolution::Auto).unwrap();

        let f = fx.dest.join("f");
        match get_xattr(&f, "user.foo") {
            Ok(v) => assert_eq!(v, b"bar"),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                println!("skipping user xattr check: filesystem refuses user xattrs");
            }
            Err(e) => panic!("user.foo: {e}"),
        }
        assert_eq!(get_xattr(&f, "trusted.berth").unwrap(), b"\x00\x01bin");
        assert!(get_xattr(&f, "trusted.overlay.redirect").is_err());
        assert_eq!(get_xattr(&fx.dest.join("d"), "trusted.dir").unwrap(), b"d");
        let s = fx.dest.join("s");
        assert_eq!(get_xattr(&s, "trusted.sym").unwrap(), b"s");
        assert!(get_xattr(&s, "user.nope").is_err());
        assert!(
            get_xattr(&f, "trusted.sym").is_err(),
            "followed the symlink"
        );
        assert_eq!(get_xattr(&fx.dest.join("p"), "trusted.fifo").unwrap(), b"p");
        fx.assert_outside_untouched();
    }

    // ---- whiteouts ----

    fn assert_whiteout(p: &Path) {
        let m = meta(p);
        assert!(
            m.file_type().is_char_device(),
            "{} is not a whiteout",
            p.display()
        );
        assert_eq!((m.rdev(), m.mode() & 0o7777), (0, 0));
    }

    #[test]
    fn whiteouts_become_char_devices() {
        let fx = fixture();
        let mut t = Tar::new();
        t.file("a/old", b"x")
            .file("a/olddir/deep/file", b"x")
            .symlink("a/oldlink", &fx.sentinel.to_string_lossy())
            .file("a/.wh.old", b"")
            .file("a/.wh.olddir", b"")
            .file("a/.wh.oldlink", b"")
            .raw(EntryType::Regular, b".wh.gone", None, b"", |h| {
                h.set_uid(1234);
                h.set_gid(5678);
            })
            .file("new/sub/.wh.x", b"");
        let tar = t.finish();
        let stats = fx.unpack(&tar, Resolution::Auto).unwrap();
        for p in ["a/old", "a/olddir", "a/oldlink", "gone", "new/sub/x"] {
            assert_whiteout(&fx.dest.join(p));
        }
        let m = meta(&fx.dest.join("gone"));
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        for p in ["a/.wh.old", "a/.wh.olddir", ".wh.gone", "new/sub/.wh.x"] {
            assert_absent(&fx.dest.join(p));
        }
        assert_eq!(stats, du(&fx.dest));
        fx.assert_outside_untouched();
    }

    #[test]
    fn opaque_dirs_get_the_overlay_xattr() {
        let fx = fixture();
        let mut t = Tar::new();
        t.dir("o/")
            .file("o/kept", b"same layer")
            .file("o/.wh..wh..opq", b"")
            .file("p/q/.wh..wh..opq", b"")
            // aufs hard-link metadata: the files resolve links, the directory goes.
            .dir(".wh..wh.plnk/")
            .file(".wh..wh.plnk/123.456", b"linked")
            .hardlink("h", "/.wh..wh.plnk/123.456")
            .file("z/.wh..wh.aufs", b"");
        let tar = t.finish();
        for res in RESOLUTIONS {
            let fx = fixture();
            fx.unpack(&tar, res).unwrap();
            for d in ["o", "p/q"] {
                assert_eq!(
                    get_xattr(&fx.dest.join(d), "trusted.overlay.opaque").unwrap(),
                    b"y"
                );
            }
            assert!(get_xattr(&fx.dest.join("p"), "trusted.overlay.opaque").is_err());
            assert_eq!(fs::read(fx.dest.join("o/kept")).unwrap(), b"same layer");
            assert_absent(&fx.dest.join("o/.wh..wh..opq"));
            assert_absent(&fx.dest.join(".wh..wh.plnk"));
            assert_absent(&fx.dest.join("z/.wh..wh.aufs"));
            assert_eq!(fs::read(fx.dest.join("h")).unwrap(), b"linked");
            fx.assert_outside_untouched();
        }
        fx.assert_outside_untouched();
    }

    // ---- repeated entries ----

    #[test]
    fn later_entries_replace_earlier_ones() {
        let fx = fixture();
        let deep: String = (0..60).map(|i| format!("l{i}/")).collect();
        let mut t = Tar::new();
        t.file("r", b"one").file("r", b"two");
        t.raw(EntryType::Directory, b"keep/", None, b"", |h| {
            h.set_mode(0o700)
        })
        .file("keep/child", b"c")
        .raw(EntryType::Directory, b"keep/", None, b"", |h| {
            h.set_mode(0o755);
            h.set_uid(42);
        });
        t.dir("gone/")
            .file("gone/f", b"x")
            .symlink("gone/esc", &fx.outside.to_string_lossy())
            .hardlink("gone/hl", "r");
        t.pax(&[("path", format!("gone/{deep}file").as_bytes())])
            .file("placeholder", b"deep");
        t.file("gone", b"now a file");
        t.file("f2", b"x").dir("f2/");
        t.symlink("s", "keep").dir("s/");
        let tar = t.finish();
        let stats = fx.unpack(&tar, Resolution::Auto).unwrap();

        assert_eq!(fs::read(fx.dest.join("r")).unwrap(), b"two");
        let m = meta(&fx.dest.join("keep"));
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 42));
        assert_eq!(fs::read(fx.dest.join("keep/child")).unwrap(), b"c");
        assert_eq!(fs::read(fx.dest.join("gone")).unwrap(), b"now a file");
        assert!(meta(&fx.dest.join("f2")).is_dir());
        assert!(meta(&fx.dest.join("s")).is_dir());
        assert!(fs::read_dir(fx.dest.join("s")).unwrap().next().is_none());
        assert_eq!(meta(&fx.dest.join("r")).nlink(), 1);
        assert_eq!(stats, du(&fx.dest));
        fx.assert_outside_untouched();
    }

    #[test]
    fn root_entries_are_ignored() {
        let fx = fixture();
        let before = meta(&fx.dest);
        let mut t = Tar::new();
        t.raw(EntryType::Directory, b"./", None, b"", |h| {
            h.set_mode(0o700)
        })
        .raw(EntryType::Directory, b"/", None, b"", |h| h.set_uid(99))
        .raw(EntryType::Regular, b"..", None, b"", |_| {})
        .file("ok", b"ok");
        fx.unpack(&t.finish(), Resolution::Auto).unwrap();
        let after = meta(&fx.dest);
        assert_eq!((before.mode(), before.uid()), (after.mode(), after.uid()));
        assert_eq!(fs::read(fx.dest.join("ok")).unwrap(), b"ok");
        fx.assert_outside_untouched();
    }

    // ---- escapes ----

    #[test]
    fn dotdot_entries_stay_inside() {
        let name = unique("dotdot");
        let mut t = Tar::new();
        t.file(&format!("../../../../../../{name}"), b"pwned")
            .file(&format!("a/../../../{name}-2"), b"pwned")
            .file("../outside/sentinel", b"pwned")
            .dir(&format!("../../{name}-dir/"))
            .hardlink(&format!("../{name}-link"), "../../outside/sentinel");
        let tar = t.finish();
        for res in RESOLUTIONS {
            let fx = fixture();
            fx.unpack(&tar, res).unwrap();
            assert_eq!(fs::read(fx.dest.join(&name)).unwrap(), b"pwned");
            assert_eq!(
                fs::read(fx.dest.join(format!("{name}-2"))).unwrap(),
                b"pwned"
            );
            assert_eq!(
                fs::read(fx.dest.join("outside/sentinel")).unwrap(),
                b"pwned"
            );
            assert!(meta(&fx.dest.join(format!("{name}-dir"))).is_dir());
            // The link resolved to the layer's own outside/sentinel.
            assert_eq!(
                meta(&fx.dest.join(format!("{name}-link"))).ino(),
                meta(&fx.dest.join("outside/sentinel")).ino()
            );
            fx.assert_outside_untouched();
            for p in [
                format!("/{name}"),
                format!("/tmp/{name}"),
                format!("/tmp/{name}-2"),
            ] {
                assert_absent(Path::new(&p));
            }
        }
    }

    #[test]
    fn absolute_entries_stay_inside() {
        let name = unique("abs");
        let fx0 = fixture();
        let sentinel = fx0.sentinel.to_string_lossy().into_owned();
        let mut t = Tar::new();
        t.file(&format!("/etc/{name}"), b"pwned")
            .raw(
                EntryType::Regular,
                sentinel.as_bytes(),
                None,
                b"pwned",
                |h| {
                    h.set_mode(0o4777);
                    h.set_uid(1234);
                },
            )
            .raw(
                EntryType::Directory,
                format!("{}/", fx0.outside.display()).as_bytes(),
                None,
                b"",
                |h| {
                    h.set_mode(0o777);
                },
            )
            .hardlink(&format!("/{name}-link"), &sentinel);
        let tar = t.finish();
        for res in RESOLUTIONS {
            let fx = fixture();
            fx.unpack(&tar, res).unwrap();
            assert_eq!(fs::read(fx.dest.join("etc").join(&name)).unwrap(), b"pwned");
            let inside = fx.in_dest(&fx0.sentinel);
            assert_eq!(fs::read(&inside).unwrap(), b"pwned");
            assert_eq!(
                meta(&fx.dest.join(format!("{name}-link"))).ino(),
                meta(&inside).ino()
            );
            fx.assert_outside_untouched();
            assert_absent(&Path::new("/etc").join(&name));
            assert_absent(&Path::new("/").join(format!("{name}-link")));
        }
        fx0.assert_outside_untouched();
    }

    #[test]
    fn writes_through_escaping_symlinks_stay_inside() {
        for res in RESOLUTIONS {
            let fx = fixture();
            let outside = fx.outside.to_string_lossy().into_owned();
            let rel = format!("{}{}", "../".repeat(12), outside.trim_start_matches('/'));
            let (up, chain) = (unique("up"), unique("chain"));
            let mut t = Tar::new();
            t.symlink("abs", &outside)
                .file("abs/pwned", b"pwned")
                .file("abs/sentinel", b"pwned")
                .raw(EntryType::Directory, b"abs/sub/", None, b"", |h| {
                    h.set_mode(0o777)
                })
                .file("abs/sub/deeper", b"pwned")
                .symlink("rel", &rel)
                .file("rel/pwned-rel", b"pwned")
                .symlink("up", "..")
                .file(&format!("up/up/up/{up}"), b"pwned")
                .symlink("hostetc", "/etc")
                .file(&format!("hostetc/{}", unique("etc")), b"pwned")
                .symlink("chain1", "chain2")
                .symlink("chain2", "../../..")
                .file(&format!("chain1/{chain}"), b"pwned")
                // An opaque marker and a whiteout through the symlink land inside too.
                .file("abs/.wh..wh..opq", b"")
                .file("abs/.wh.sentinel", b"");
            fx.unpack(&t.finish(), res).unwrap();

            let inside = fx.in_dest(&fx.outside);
            assert_eq!(fs::read(inside.join("pwned")).unwrap(), b"pwned");
            assert_eq!(fs::read(inside.join("sub/deeper")).unwrap(), b"pwned");
            assert_eq!(fs::read(inside.join("pwned-rel")).unwrap(), b"pwned");
            assert_whiteout(&inside.join("sentinel"));
            assert_eq!(get_xattr(&inside, "trusted.overlay.opaque").unwrap(), b"y");
            assert_eq!(fs::read(fx.dest.join(&up)).unwrap(), b"pwned");
            assert_eq!(fs::read(fx.dest.join(&chain)).unwrap(), b"pwned");
            assert_eq!(
                fs::read(fx.dest.join("etc").join(unique("etc"))).unwrap(),
                b"pwned"
            );
            for l in ["abs", "rel", "up", "hostetc", "chain1", "chain2"] {
                assert!(meta(&fx.dest.join(l)).file_type().is_symlink(), "{l}");
            }
            fx.assert_outside_untouched();
            assert_absent(&Path::new("/etc").join(unique("etc")));
            for name in [&up, &chain] {
                assert_absent(&Path::new("/").join(name));
                assert_absent(&Path::new("/tmp").join(name));
            }
        }
    }

    #[test]
    fn final_symlinks_are_replaced_not_followed() {
        for res in RESOLUTIONS {
            let fx = fixture();
            let sentinel = fx.sentinel.to_string_lossy().into_owned();
            let outside = fx.outside.to_string_lossy().into_owned();
            let mut t = Tar::new();
            t.symlink("f", &sentinel)
                .raw(EntryType::Regular, b"f", None, b"pwned", |h| {
                    h.set_mode(0o4777);
                    h.set_uid(1234);
                })
                .symlink("g", "../../outside/sentinel")
                .file("g", b"pwned")
                .symlink("d", &outside)
                .raw(EntryType::Directory, b"d/", None, b"", |h| {
                    h.set_mode(0o777);
                    h.set_uid(1234);
                })
                .symlink("p", &sentinel)
                .raw(EntryType::Fifo, b"p", None, b"", |h| h.set_mode(0o777))
                .symlink("c", &sentinel)
                .raw(EntryType::Char, b"c", None, b"", |_| {})
                .symlink("s", &sentinel)
                .symlink("s", "elsewhere")
                .file("target", b"t")
                .symlink("h", &sentinel)
                .hardlink("h", "target")
                .symlink("w", &sentinel)
                .file(".wh.w", b"");
            fx.unpack(&t.finish(), res).unwrap();
            let m = meta(&fx.dest.join("f"));
            assert!(m.is_file());
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o4777, 1234));
            assert_eq!(fs::read(fx.dest.join("f")).unwrap(), b"pwned");
            assert_eq!(fs::read(fx.dest.join("g")).unwrap(), b"pwned");
            assert!(meta(&fx.dest.join("d")).is_dir());
            assert!(meta(&fx.dest.join("p")).file_type().is_fifo());
            assert!(meta(&fx.dest.join("c")).file_type().is_char_device());
            assert_eq!(
                fs::read_link(fx.dest.join("s")).unwrap(),
                Path::new("elsewhere")
            );
            assert_eq!(
                meta(&fx.dest.join("h")).ino(),
                meta(&fx.dest.join("target")).ino()
            );
            assert_whiteout(&fx.dest.join("w"));
            fx.assert_outside_untouched();
        }
    }

    #[test]
    fn hard_links_cannot_reach_outside() {
        let fx0 = fixture();
        let sentinel = fx0.sentinel.to_string_lossy().into_owned();
        let outside = fx0.outside.to_string_lossy().into_owned();
        let passwd_links = meta(Path::new("/etc/passwd")).nlink();
        let cases: Vec<Vec<u8>> = vec![
            {
                let mut t = Tar::new();
                t.hardlink("l", "../../outside/sentinel");
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.hardlink("l", "../../../../../../etc/passwd");
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.hardlink("l", "/etc/passwd");
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.hardlink("l", &sentinel);
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.symlink("evil", &outside).hardlink("l", "evil/sentinel");
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.symlink("evil", "../../../../outside")
                    .hardlink("l", "evil/sentinel");
                t.finish()
            },
            {
                let mut t = Tar::new();
                t.dir("sub/")
                    .symlink("sub/up", "../..")
                    .hardlink("l", "sub/up/outside/sentinel");
                t.finish()
            },
        ];
        for (i, tar) in cases.iter().enumerate() {
            for res in RESOLUTIONS {
                let fx = fixture();
                let err = fx.unpack(tar, res).unwrap_err();
                assert!(
                    matches!(err, UnpackError::HardLinkTarget { ref path, .. } if path == Path::new("l")),
                    "case {i}: {err}"
                );
                assert!(err.to_string().contains("\"l\""), "{err}");
                assert_absent(&fx.dest.join("l"));
                fx.assert_outside_untouched();
                assert_eq!(meta(Path::new("/etc/passwd")).nlink(), passwd_links);
            }
        }

        // A hard link to a symlink that points outside links the symlink itself.
        for res in RESOLUTIONS {
            let fx = fixture();
            let mut t = Tar::new();
            t.symlink("s", &fx.sentinel.to_string_lossy()).raw(
                EntryType::Link,
                b"l",
                Some(b"s"),
                b"",
                |h| {
                    h.set_mode(0o777);
                    h.set_uid(1234);
                },
            );
            fx.unpack(&t.finish(), res).unwrap();
            let m = meta(&fx.dest.join("l"));
            assert!(m.file_type().is_symlink());
            assert_eq!((m.ino(), m.uid()), (meta(&fx.dest.join("s")).ino(), 1234));
            fx.assert_outside_untouched();
        }
        fx0.assert_outside_untouched();
    }

    #[test]
    fn hard_links_to_directories_are_refused() {
        for (target, name) in [("d", "l"), ("/", "l"), ("..", "l"), ("d/", "l")] {
            let fx = fixture();
            let mut t = Tar::new();
            t.dir("d/").hardlink(name, target);
            let err = fx.unpack(&t.finish(), Resolution::Auto).unwrap_err();
            assert!(
                matches!(err, UnpackError::HardLinkToDirectory { .. }),
                "{target}: {err}"
            );
            fx.assert_outside_untouched();
        }
    }

    #[test]
    fn symlink_loops_are_errors() {
        let fx = fixture();
        let mut t = Tar::new();
        t.symlink("loop1", "loop2")
            .symlink("loop2", "loop1")
            .file("loop1/x", b"x");
        let tar = t.finish();
        for res in RESOLUTIONS {
            let fx = fixture();
            let err = fx.unpack(&tar, res).unwrap_err();
            assert!(
                matches!(&err, UnpackError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
                "{err}"
            );
            fx.assert_outside_untouched();
        }
        fx.assert_outside_untouched();
    }

    // ---- malformed input ----

    #[test]
    fn missing_destination_is_an_error() {
        let fx = fixture();
        let missing = fx.tmp.path().join("missing");
        let err = unpack_layer(&Tar::new().finish()[..], &missing).unwrap_err();
        assert!(matches!(err, UnpackError::Destination { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        assert_absent(&missing);
    }

    #[test]
    fn malformed_entries_are_errors() {
        let fx = fixture();
        let mut t = Tar::new();
        t.raw(EntryType::new(b'V'), b"label", None, b"", |_| {});
        let err = fx.unpack(&t.finish(), Resolution::Auto).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::UnsupportedEntryType {
                    entry_type: 'V',
                    ..
                }
            ),
            "{err}"
        );

        let fx = fixture();
        let mut t = Tar::new();
        t.raw(EntryType::Symlink, b"nolink", None, b"", |_| {});
        let err = fx.unpack(&t.finish(), Resolution::Auto).unwrap_err();
        assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");

        let fx = fixture();
        let mut t = Tar::new();
        t.file("dir/.wh...", b"");
        let err = fx.unpack(&t.finish(), Resolution::Auto).unwrap_err();
        assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");

        let fx = fixture();
        let mut t = Tar::new();
        t.file("file", b"x").file("file/child", b"x");
        let err = fx.unpack(&t.finish(), Resolution::Auto).unwrap_err();
        assert!(err.to_string().contains("file/child"), "{err}");
        fx.assert_outside_untouched();
    }

    #[test]
    fn truncated_tars_are_errors() {
        let mut t = Tar::new();
        t.file("a", &[7u8; 2000])
            .pax(&[("SCHILY.xattr.user.x", b"y")])
            .file("b", &[9u8; 100]);
        let tar = t.finish();
        // Inside a header, inside data, inside the padding, inside the PAX record, inside
        // the last file: every cut short of an entry boundary is an error.
        for cut in [1, 100, 511, 700, 2047, 2500, 2600, 3100, 3600] {
            let fx = fixture();
            let res = fx.unpack(&tar[..cut], Resolution::Auto);
            assert!(res.is_err(), "cut at {cut} accepted");
            fx.assert_outside_untouched();
        }
    }

    /// xorshift64*: deterministic, dependency-free noise.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = Rng(0x1234_5678_9abc_def0);
        for len in [1usize, 100, 511, 512, 513, 1024, 4096, 10_000] {
            let fx = fixture();
            let junk: Vec<u8> = (0..len).map(|_| (rng.next() as u8) | 1).collect();
            assert!(
                fx.unpack(&junk, Resolution::Auto).is_err(),
                "{len} junk bytes accepted"
            );
            fx.assert_outside_untouched();
        }

        // Mutations of a valid layer, with header checksums repaired half of the time so
        // that the mutation reaches the unpacker. Anything may happen except a panic or
        // a write outside dest.
        let outside_fx = fixture();
        let outside = outside_fx.outside.to_string_lossy().into_owned();
        let mut t = Tar::new();
        t.dir("d/")
            .file("d/f", &[1u8; 700])
            .symlink("d/s", &outside)
            .hardlink("d/h", "d/f")
            .pax(&[("SCHILY.xattr.user.a", b"b"), ("path", b"d/pax")])
            .file("x", b"x")
            .file("d/s/x", b"x")
            .file("d/.wh.f", b"")
            .raw(EntryType::Fifo, b"fifo", None, b"", |_| {});
        let tar = t.finish();
        for _ in 0..300 {
            let mut bad = tar.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % bad.len() as u64) as usize;
                bad[at] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(2) {
                for block in bad.chunks_mut(512) {
                    if block.len() == 512 && block.iter().any(|&b| b != 0) {
                        let h = Header::from_byte_slice(block);
                        let mut h = h.clone();
                        h.set_cksum();
                        block.copy_from_slice(h.as_bytes());
                    }
                }
            }
            let fx = fixture();
            let _ = unpack(bad.as_slice(), &fx.dest, Resolution::Auto);
            fx.assert_outside_untouched();
        }
        outside_fx.assert_outside_untouched();
    }
}
