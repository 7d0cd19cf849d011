//! The container process's user and groups, resolved from the image's `/etc/passwd` and
//! `/etc/group` the way containerd does it (`oci.WithUser`, `WithAdditionalGIDs`).
//!
//! The files are read *inside* the container's rootfs: the rootfs directory is opened once
//! and each file is opened with `openat2(RESOLVE_IN_ROOT)` relative to it, so a symlink in the
//! image (`/etc/passwd -> /etc/shadow`, `-> ../../../../etc/passwd`) resolves against the
//! rootfs and can never reach a file of the host. Only regular files up to
//! [`MAX_USER_FILE_BYTES`] are read; FIFOs and devices are refused without blocking.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::spec::SpecError;

/// Largest `/etc/passwd` or `/etc/group` read from an image (containerd uses the same cap).
pub const MAX_USER_FILE_BYTES: u64 = 10 << 20;

/// The highest uid / gid accepted: runc requires ids to fit in an `int32`.
pub const MAX_ID: u32 = i32::MAX as u32;

/// The user the container's first process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary group IDs, sorted and without duplicates; they always include `gid`.
    pub additional_gids: Vec<u32>,
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (`""`, `name`, `uid`, `name:group`, `uid:gid`, or mixes of both) against
/// the image's `/etc/passwd` and `/etc/group` under `rootfs`.
///
/// - A numeric uid needs no passwd entry: without one the primary gid is 0, as in containerd.
/// - A user or group *name* must exist in the image, else [`SpecError::NotFound`].
/// - With `merge_etc_group` (CRI's `SupplementalGroupsPolicy` `Merge`, the default) the
///   groups of `/etc/group` that list the user are added to the supplementary groups; with
///   `Strict` only `supplemental` and the primary gid are.
///
/// An empty `user` means root (`0`).
pub fn resolve_user(
    rootfs: &Path,
    user: &str,
    supplemental: &[u32],
    merge_etc_group: bool,
) -> Result<ResolvedUser, SpecError> {
    let user = if user.is_empty() { "0" } else { user };
    let (user_part, group_part) = match user.split_once(':') {
        Some((_, g)) if g.contains(':') => {
            return Err(SpecError::InvalidArgument(format!(
                "user {user:?} must be one of name, uid, name:group or uid:gid"
            )));
        }
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(SpecError::InvalidArgument(format!(
            "user {user:?} has an empty user or group part"
        )));
    }
    let mut files = RootfsFiles::new(rootfs);

    // The user: by number (passwd optional) or by name (passwd required).
    let (uid, mut gid, username) = match parse_id(user_part, "uid", user)? {
        Some(uid) => match files
            .passwd()?
            .and_then(|p| find_user(&p, |e| e.uid == uid))
        {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        },
        None => {
            let Some(passwd) = files.passwd()? else {
                return Err(SpecError::NotFound(format!(
                    "user {user_part:?} not found: the image has no /etc/passwd"
                )));
            };
            match find_user(&passwd, |e| e.name == user_part) {
                Some(e) => (e.uid, e.gid, Some(e.name)),
                None => {
                    return Err(SpecError::NotFound(format!(
                        "user {user_part:?} not in image /etc/passwd"
                    )));
                }
            }
        }
    };

    // The group, when given, replaces the passwd entry's primary group.
    if let Some(group) = group_part {
        gid = match parse_id(group, "gid", user)? {
            Some(g) => g,
            None => {
                let Some(groups) = files.group()? else {
                    return Err(SpecError::NotFound(format!(
                        "group {group:?} not found: the image has no /etc/group"
                    )));
                };
                match parse_group(&groups).into_iter().find(|g| g.name == group) {
                    Some(g) => g.gid,
                    None => {
                        return Err(SpecError::NotFound(format!(
                            "group {group:?} not in image /etc/group"
                        )));
                    }
                }
            }
        };
    }

    let mut additional = vec![gid];
    if merge_etc_group
        && let Some(name) = &username
        && let Some(groups) = files.group()?
    {
        additional.extend(
            parse_group(&groups)
                .into_iter()
                .filter(|g| g.members.iter().any(|m| m == name))
                .map(|g| g.gid),
        );
    }
    additional.extend_from_slice(supplemental);
    additional.sort_unstable();
    additional.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// `Some(id)` for an all-digit string within runc's range, `None` for a name.
fn parse_id(s: &str, what: &str, user: &str) -> Result<Option<u32>, SpecError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_ID) => Ok(u32::try_from(n).ok()),
        _ => Err(SpecError::InvalidArgument(format!(
            "user {user:?}: {what} {s} is out of range (0..={MAX_ID})"
        ))),
    }
}

fn find_user(passwd: &str, pred: impl Fn(&PasswdEntry) -> bool) -> Option<PasswdEntry> {
    parse_passwd(passwd).into_iter().find(|e| pred(e))
}

/// The colon-separated fields of each non-empty, non-comment line.
fn records(text: &str) -> impl Iterator<Item = std::str::Split<'_, char>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':'))
}

/// Parses `/etc/passwd` (`name:password:uid:gid:gecos:home:shell`), skipping comments and
/// malformed lines, as libcontainer's parser does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|mut f| {
            let name = f.next()?.to_string();
            let _password = f.next()?;
            let uid = f.next()?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

/// Parses `/etc/group` (`name:password:gid:member,member`), skipping comments and malformed
/// lines.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|mut f| {
            let name = f.next()?.to_string();
            let _password = f.next()?;
            let gid = f.next()?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

/// Lazily opened rootfs and the user database files read from it, each at most once.
struct RootfsFiles<'a> {
    rootfs: &'a Path,
    dir: Option<OwnedFd>,
    passwd: Option<Option<String>>,
    group: Option<Option<String>>,
}

impl<'a> RootfsFiles<'a> {
    fn new(rootfs: &'a Path) -> Self {
        Self {
            rootfs,
            dir: None,
            passwd: None,
            group: None,
        }
    }

    fn passwd(&mut self) -> Result<Option<String>, SpecError> {
        if self.passwd.is_none() {
            self.passwd = Some(self.read("etc/passwd")?);
        }
        Ok(self.passwd.clone().flatten())
    }

    fn group(&mut self) -> Result<Option<String>, SpecError> {
        if self.group.is_none() {
            self.group = Some(self.read("etc/group")?);
        }
        Ok(self.group.clone().flatten())
    }

    /// Reads `rel` inside the rootfs; `None` when it (or a directory on the way) is missing.
    fn read(&mut self, rel: &str) -> Result<Option<String>, SpecError> {
        let shown = self.rootfs.join(rel);
        let io_err = |path: PathBuf, e: std::io::Error| SpecError::Io { path, source: e };
        if self.dir.is_none() {
            let fd = nix::fcntl::open(
                self.rootfs,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(self.rootfs.to_path_buf(), e.into()))?;
            self.dir = Some(fd);
        }
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match nix::fcntl::openat2(dir, rel, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(io_err(shown, e.into())),
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| io_err(shown.clone(), e))?;
        if !meta.file_type().is_file() {
            return Err(io_err(
                shown,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
            ));
        }
        let mut buf = Vec::new();
        file.take(MAX_USER_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(shown.clone(), e))?;
        if buf.len() as u64 > MAX_USER_FILE_BYTES {
            return Err(io_err(
                shown,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("larger than {MAX_USER_FILE_BYTES} bytes"),
                ),
            ));
        }
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bob:x:1000:1000:Bob:/home/bob:/bin/sh
broken line
alice:x:1001:100::/home/alice:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
users:x:100:
bob:x:1000:
wheel:x:10:bob,alice
audio:x:29:alice
video:x:44: bob
";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            fs::write(d.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            fs::write(d.path().join("etc/group"), g).unwrap();
        }
        d
    }

    fn resolve(root: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
        resolve_user(root, user, &[], true)
    }

    #[test]
    fn name_resolves_uid_gid_and_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(r.path(), "bob").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 44, 1000]);
        let a = resolve(r.path(), "alice").unwrap();
        assert_eq!((a.uid, a.gid), (1001, 100));
        assert_eq!(a.additional_gids, vec![10, 29, 100]);
    }

    #[test]
    fn uid_resolves_primary_group_and_membership() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(r.path(), "1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 44, 1000]);
        // Unknown uid: gid 0, no groups from /etc/group.
        let n = resolve(r.path(), "4242").unwrap();
        assert_eq!((n.uid, n.gid, n.additional_gids), (4242, 0, vec![0]));
        // Empty means root.
        let root = resolve(r.path(), "").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
    }

    #[test]
    fn user_and_group_pairs() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(r.path(), "1000:2000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        assert!(u.additional_gids.contains(&2000));
        let u = resolve(r.path(), "bob:audio").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        let u = resolve(r.path(), "1001:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1001, 10));
        let u = resolve(r.path(), "alice:7").unwrap();
        assert_eq!((u.uid, u.gid), (1001, 7));
    }

    #[test]
    fn supplemental_groups_and_strict_policy() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve_user(r.path(), "bob", &[5000, 10, 5000], true).unwrap();
        assert_eq!(u.additional_gids, vec![10, 44, 1000, 5000]);
        let s = resolve_user(r.path(), "bob", &[5000], false).unwrap();
        assert_eq!(s.additional_gids, vec![1000, 5000]);
    }

    #[test]
    fn unknown_names_are_not_found() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        assert!(
            matches!(resolve(r.path(), "mallory"), Err(SpecError::NotFound(m)) if m.contains("mallory"))
        );
        assert!(
            matches!(resolve(r.path(), "bob:nogroup"), Err(SpecError::NotFound(m)) if m.contains("nogroup"))
        );
    }

    #[test]
    fn missing_files() {
        let r = rootfs(None, None);
        let u = resolve(r.path(), "123").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (123, 0, vec![0]));
        let u = resolve(r.path(), "123:456").unwrap();
        assert_eq!((u.uid, u.gid), (123, 456));
        assert!(matches!(
            resolve(r.path(), "bob"),
            Err(SpecError::NotFound(_))
        ));
        assert!(matches!(
            resolve(r.path(), "1:staff"),
            Err(SpecError::NotFound(_))
        ));
        // No /etc at all.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve(empty.path(), "7").unwrap().uid, 7);
    }

    #[test]
    fn malformed_user_strings() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        for bad in ["a:b:c", ":10", "10:", "99999999999", "0:4294967296"] {
            assert!(
                matches!(resolve(r.path(), bad), Err(SpecError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn absolute_symlink_resolves_inside_rootfs() {
        // /etc/passwd -> /lib/passwd.real: must be the rootfs's /lib/passwd.real.
        let r = rootfs(None, None);
        fs::create_dir_all(r.path().join("lib")).unwrap();
        fs::write(
            r.path().join("lib/passwd.real"),
            "carol:x:4321:4321::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/lib/passwd.real", r.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(r.path(), "carol").unwrap().uid, 4321);
        // The host's /etc/passwd has root; the rootfs's does not.
        assert!(matches!(
            resolve(r.path(), "root"),
            Err(SpecError::NotFound(_))
        ));
    }

    #[test]
    fn relative_escape_symlink_stays_in_rootfs() {
        let r = rootfs(None, None);
        fs::write(r.path().join("etc/passwd.img"), "dave:x:77:78::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../../../etc/passwd.img",
            r.path().join("etc/passwd"),
        )
        .unwrap();
        let u = resolve(r.path(), "dave").unwrap();
        assert_eq!((u.uid, u.gid), (77, 78));
    }

    #[test]
    fn symlink_to_host_passwd_never_reads_the_host_file() {
        // In the rootfs this link points at itself: it must fail, not read the host's file
        // (which does list "root").
        let r = rootfs(None, None);
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        match resolve(r.path(), "root") {
            Err(SpecError::Io { .. }) | Err(SpecError::NotFound(_)) => {}
            other => panic!("read something: {other:?}"),
        }
        let r2 = rootfs(None, None);
        std::os::unix::fs::symlink(
            "../../../../../../../../etc/passwd",
            r2.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve(r2.path(), "root").is_err());
    }

    #[test]
    fn non_regular_file_is_refused_without_blocking() {
        let r = rootfs(None, None);
        nix::unistd::mkfifo(
            &r.path().join("etc/passwd"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(matches!(
            resolve(r.path(), "bob"),
            Err(SpecError::Io { .. })
        ));
    }

    #[test]
    fn missing_rootfs_is_io_error() {
        let err = resolve(Path::new("/nonexistent/rootfs"), "bob").unwrap_err();
        assert!(matches!(err, SpecError::Io { .. }));
    }
}
