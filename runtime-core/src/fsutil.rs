//! Small filesystem helpers shared by the stores: atomic replacement of files (durable at
//! once, or made durable shortly after by a background queue) and removal that tolerates
//! absence.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Error, Result};

/// Writes `data` to `path` so that a crash at any instant leaves either the old or the new
/// content: write a temporary sibling, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_replacing(path, data, true)
}

/// Writes `data` to `path` through a temporary sibling renamed over it, without waiting
/// for the disk: a crash of the process leaves the old or the new content (the page cache
/// keeps both), a crash of the machine may lose the change. [`SyncQueue::write`] adds the
/// fsync later.
pub fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    write_replacing(path, data, false)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_replacing(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Internal(format!("{} has no file name", path.display())))?;
    // Unique per write: two writers of one file must not share a temporary file.
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path, e));
    }
    Ok(())
}

enum SyncMsg {
    File(PathBuf),
    /// Answered with whether every fsync since the previous barrier succeeded.
    Barrier(mpsc::Sender<bool>),
}

/// Makes files durable shortly after they were written, on a thread of its own, so that a
/// call whose answer does not depend on the disk does not wait for it (an fsync costs
/// about half a millisecond on a virtual disk, several of them per pod start). Files are
/// fsynced, then their directories (the renames); a file removed meanwhile is skipped.
/// Paths queued together are synced once.
#[derive(Clone)]
pub struct SyncQueue {
    tx: mpsc::Sender<SyncMsg>,
}

impl std::fmt::Debug for SyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncQueue")
    }
}

impl SyncQueue {
    /// Starts the queue's thread. Without a thread (it could not be spawned) every file is
    /// synced by the caller instead.
    pub fn start() -> SyncQueue {
        let (tx, rx) = mpsc::channel::<SyncMsg>();
        let spawned = std::thread::Builder::new()
            .name("berthd-fsync".into())
            .spawn(move || {
                // Whether every fsync since the last barrier succeeded.
                let mut all_synced = true;
                while let Ok(first) = rx.recv() {
                    let mut files = BTreeSet::new();
                    let mut barriers = Vec::new();
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        match msg {
                            SyncMsg::File(p) => {
                                files.insert(p);
                            }
                            SyncMsg::Barrier(done) => barriers.push(done),
                        }
                    }
                    all_synced &= sync_files(&files);
                    if !barriers.is_empty() {
                        for done in barriers {
                            let _ = done.send(all_synced);
                        }
                        all_synced = true;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the fsync thread; files are synced inline");
        }
        SyncQueue { tx }
    }

    /// Queues `path` for an fsync of itself and of its directory.
    pub fn schedule(&self, path: &Path) {
        if self.tx.send(SyncMsg::File(path.to_path_buf())).is_err() {
            let _ = sync_files(&BTreeSet::from([path.to_path_buf()]));
        }
    }

    /// [`write_replace`], then [`SyncQueue::schedule`].
    pub fn write(&self, path: &Path, data: &[u8]) -> Result<()> {
        write_replace(path, data)?;
        self.schedule(path);
        Ok(())
    }

    /// Waits until everything queued before the call is on disk, or `timeout`; false when
    /// it timed out or an fsync failed (logged) since the previous flush.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        let sent = self.tx.send(SyncMsg::Barrier(done_tx)).is_ok();
        // Without a thread nothing is ever queued: everything was synced inline.
        !sent || done_rx.recv_timeout(timeout) == Ok(true)
    }
}

/// Fsyncs `files`, then their directories; false when an fsync failed (a file or directory
/// removed meanwhile is not a failure).
fn sync_files(files: &BTreeSet<PathBuf>) -> bool {
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let mut ok = true;
    for path in files.iter().chain(dirs.iter()) {
        match fs::File::open(path).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                ok = false;
                tracing::warn!(path = %path.display(), error = %e, "fsync failed");
            }
        }
    }
    ok
}

/// Removes the temporary files [`write_atomic`] and [`write_replace`] leave in `dir` when
/// a crash interrupts them (`.tmp-*`); for start-up, before anything writes there.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-")
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            tracing::info!(path = %e.path().display(), "removing a temporary file left by a crash");
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes a file or a directory tree; absence is not an error.
pub fn remove_all(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Creates `path` and its parents with mode 0700 for the last component (state that holds
/// credentials-free but private runtime data).
pub fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))
}

/// Lets anyone traverse (not list) the directory `path` by adding the group and other
/// execute bits: the OCI runtime mounts a user-namespaced container's rootfs and volumes as
/// the container's root, which owns nothing of the path to the bundle (containerd keeps
/// such directories at 0711 for the same reason).
pub fn allow_traversal(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|e| Error::io("stat", path, e))?
        .permissions()
        .mode();
    if mode & 0o011 == 0o011 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode((mode | 0o011) & 0o7777))
        .map_err(|e| Error::io("chmod", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn write_replace_and_queue() {
        let dir = tempfile::tempdir().unwrap();
        let q = SyncQueue::start();
        let p = dir.path().join("r.json");
        q.write(&p, b"one").unwrap();
        // Visible at once, before any fsync.
        assert_eq!(fs::read(&p).unwrap(), b"one");
        q.write(&p, b"two").unwrap();
        // A file removed before its turn is skipped, and so is a vanished directory.
        let gone = dir.path().join("sub/gone.json");
        fs::create_dir(dir.path().join("sub")).unwrap();
        q.write(&gone, b"x").unwrap();
        fs::remove_dir_all(dir.path().join("sub")).unwrap();
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
        // Clones share the thread; the queue keeps working after a flush.
        let q2 = q.clone();
        q2.write(&p, b"three").unwrap();
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(fs::read(&p).unwrap(), b"three");
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-a.json-1-2"), b"cut").unwrap();
        fs::write(dir.path().join("a.json"), b"{}").unwrap();
        fs::create_dir(dir.path().join(".tmp-dir")).unwrap();
        remove_stale_temps(dir.path());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![".tmp-dir".to_string(), "a.json".to_string()]);
        remove_stale_temps(&dir.path().join("missing"));
    }

    #[test]
    fn write_failure_names_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/r.json");
        let err = write_replace(&p, b"x").unwrap_err().to_string();
        assert!(err.contains("missing/r.json"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_all_tolerates_absence() {
        let dir = tempfile::tempdir().unwrap();
        remove_all(&dir.path().join("nope")).unwrap();
        let d = dir.path().join("d/e");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("x"), b"x").unwrap();
        remove_all(&dir.path().join("d")).unwrap();
        assert!(!dir.path().join("d").exists());
    }
}
