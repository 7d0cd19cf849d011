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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;
use tracing::{debug, warn};

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
/// Linux's MAXSYMLINKS: the user-space resolver gives up with ELOOP after this many.
const MAX_SYMLINKS: usize = 40;
/// openat2 answers EAGAIN when a concurrent rename anywhere on the system keeps it from
/// proving that `..` stayed in the root; the man page says to retry.
const OPENAT2_RETRIES: usize = 64;
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

/// Identifies an inode within the layer.
type InodeKey = (libc::dev_t, libc::ino_t);

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    /// Entry path, for log messages.
    path: PathBuf,
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
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
                        let major = header.device_major().at(&path)?.unwrap_or(0);
                        let minor = header.device_minor().at(&path)?.unwrap_or(0);
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
            linkat(
                &target_parent,
                target_name,
                &parent,
                name,
                AtFlags::empty(),
            )
            .at(path)?;
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
                cur = Dir::openat(&cur, sub.as_os_str(), dir_flags | OFlag::O_NOFOLLOW, Mode::empty())?;
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
                    utimensat(&*dir, name.as_os_str(), t, t, UtimensatFlags::NoFollowSymlink)?;
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
        let uid = Uid::from_raw(id_from(header.uid()?, "uid")?);
        let gid = Gid::from_raw(id_from(header.gid()?, "gid")?);
        let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
        let secs = libc::time_t::try_from(header.mtime()?).unwrap_or(libc::time_t::MAX);
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

/// Whether openat2 can be used. Kernels before 5.6 answer ENOSYS; seccomp profiles that do
/// not know it answer ENOSYS or EPERM.
fn openat2_available(root: BorrowedFd<'_>) -> bool {
    match open_in_root(root, Path::new(".")) {
        Err(e @ (Errno::ENOSYS | Errno::EPERM | Errno::EINVAL)) => {
            debug!(error = %e, "openat2 unavailable; resolving layer paths in user space");
            false
        }
        _ => true,
    }
}

/// Opens directory `path` beneath `root` with the kernel treating `root` as `/`.
fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
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
fn resolve_in_root_user(
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
fn make_room(parent: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
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
fn remove_all(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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
            cur = Dir::openat(&cur, child.as_os_str(), dir_flags | OFlag::O_NOFOLLOW, Mode::empty())?;
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
fn list_dir(dir: &mut Dir) -> io::Result<Vec<(OsString, Option<Type>)>> {
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

fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_type(st: &FileStat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn inode_key(st: &FileStat) -> InodeKey {
    (st.st_dev, st.st_ino)
}

/// Owner, mode and xattrs through an open descriptor (regular files and directories).
/// chown comes first because it clears setuid/setgid and file capabilities.
fn apply_meta(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    fchown(fd, Some(meta.uid), Some(meta.gid))?;
    fchmod(fd, meta.mode)?;
    apply_xattrs(XattrTarget::Fd(fd), meta)
}

/// Owner, mode, xattrs and mtime of `name` in `parent` without following it, for entries
/// that cannot be opened safely: symlinks, devices (opening has side effects) and fifos
/// (opening blocks).
fn apply_meta_at(parent: BorrowedFd<'_>, name: &OsStr, meta: &Meta, is_symlink: bool) -> io::Result<()> {
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
enum XattrTarget<'a> {
    /// An open, non-O_PATH descriptor of the inode.
    Fd(BorrowedFd<'a>),
    /// The entry `name` in directory `parent`, not followed if it is a symlink.
    At(BorrowedFd<'a>, &'a OsStr),
}

fn apply_xattrs(target: XattrTarget<'_>, meta: &Meta) -> io::Result<()> {
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

fn set_xattr(target: XattrTarget<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
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
