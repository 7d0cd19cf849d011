//! Paying the kernel's price for a cgroup move before the OCI runtime asks for it.
//!
//! Moving a task into a cgroup (a write to `cgroup.procs` or `tasks`) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing. It is a per-CPU rw-semaphore: its writer
//! first waits for an RCU grace period, unless another writer went through within the last
//! grace period or two, in which case it is nearly free. Every container start pays that wait
//! (runc moves its init process into the container's cgroup) and so does every exec (the
//! exec'd process joins the container's cgroup): measured on a HZ=250 virtual machine, a
//! lone move takes 5-8 ms, a move within ~12 ms of another 0.1 ms, and `runc run` of a busybox
//! container 30 ms without, 20 ms with a move started at the same time as runc.
//!
//! So when a container is about to be created, started or exec'd into, a thread of berthd
//! moves itself to the cgroup it is already in, which changes nothing but takes the
//! semaphore: the grace period runs while the runtime starts up, and the runtime's own move
//! a few milliseconds later takes the fast path. (Writing `0`, "the writer", skips the
//! semaphore; a pid that does not exist fails before it.)
//!
//! On cgroup v1 the thread first moves into berth's default pod parent (created and kept by
//! berth) in the `pids` hierarchy, which sets no limit there, and then writes its thread ID
//! to that cgroup's `tasks`: nothing outside berth's own cgroups is written (without a
//! separate `pids` hierarchy the warm-up is off). On v2 a single thread cannot leave its
//! process's cgroup, so before each write it looks up the cgroup berthd is in
//! (`/proc/self/cgroup`) and writes berthd's process ID to that cgroup's `cgroup.procs` only
//! if berthd is listed there, so the move is never a real one. If a write fails (read-only
//! cgroupfs, no permission) or berthd is not where it should be, the warmer turns itself off
//! and says so once; `runtime.cgroup_warmup = false` turns it off.

use std::path::PathBuf;
use std::sync::mpsc;

use crate::cgroups::{Layout, dir_under};

/// The file a no-op move of the calling thread is written to, and what is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmTarget {
    /// `tasks` (v1) or `cgroup.procs` (v2).
    pub file: PathBuf,
    /// Whether the thread ID (v1 `tasks`) rather than the process ID (v2) is written.
    pub thread: bool,
}

/// Where the warmer writes on `layout`: v1, the `tasks` of berth's cgroup `parent` in the
/// `pids` hierarchy (none without one); v2, the `cgroup.procs` of the cgroup berthd is in
/// (`own`, as `/proc/self/cgroup` reads).
pub fn warm_target(layout: &Layout, parent: &str, own: &str) -> Option<WarmTarget> {
    match layout {
        Layout::V1 { hierarchies } => {
            let mount = hierarchies
                .iter()
                .find(|h| h.file_name().is_some_and(|n| n == "pids"))?;
            Some(WarmTarget {
                file: dir_under(mount, parent).ok()?.join("tasks"),
                thread: true,
            })
        }
        Layout::V2 { root } => own.lines().find_map(|line| {
            let path = line.strip_prefix("0::")?;
            Some(WarmTarget {
                file: dir_under(root, path.trim()).ok()?.join("cgroup.procs"),
                thread: false,
            })
        }),
    }
}

/// Writes the calling thread's move to `target` (a no-op once it is there). For a process
/// target (v2) the process must already be listed there: a real move is refused.
pub fn move_to_own_cgroup(target: &WarmTarget) -> std::io::Result<()> {
    let id = if target.thread {
        nix::unistd::gettid().as_raw().to_string()
    } else {
        let pid = std::process::id().to_string();
        let listed = std::fs::read_to_string(&target.file)?;
        if !listed.lines().any(|l| l.trim() == pid) {
            return Err(std::io::Error::other(format!(
                "berthd (pid {pid}) is not in {}",
                target.file.display()
            )));
        }
        pid
    };
    std::fs::write(&target.file, id)
}

/// Starts the grace period of a cgroup move ahead of the OCI runtime's (see the module
/// comment). Cheap to clone; `warm` never blocks.
#[derive(Clone, Debug)]
pub struct JoinWarmer {
    tx: Option<mpsc::SyncSender<()>>,
}

impl JoinWarmer {
    /// A warmer that does nothing.
    pub fn off() -> JoinWarmer {
        JoinWarmer { tx: None }
    }

    /// Starts the warmer's thread (which, on v1, moves into berth's cgroup `parent`, which
    /// must exist), or returns one that does nothing when there is nowhere to write or the
    /// thread cannot be spawned.
    pub fn start(layout: &Layout, parent: &str) -> JoinWarmer {
        let own = || std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(first) = warm_target(layout, parent, &own()) else {
            tracing::info!("cgroup warm-up off: no cgroup to write to");
            return JoinWarmer::off();
        };
        let (layout, parent) = (layout.clone(), parent.to_string());
        // One pending request is enough: a move made after it was queued serves it.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("berthd-cgwarm".into())
            .spawn(move || {
                // The first write is the real move (v1), made before any container needs it.
                if let Err(e) = move_to_own_cgroup(&first) {
                    tracing::info!(file = %first.file.display(), error = %e, "cgroup warm-up off: cannot write there");
                    return;
                }
                while rx.recv().is_ok() {
                    // v2: berthd may have been moved since (v1: the thread stays put).
                    let target = if first.thread {
                        first.clone()
                    } else {
                        match warm_target(&layout, &parent, &own()) {
                            Some(t) => t,
                            None => {
                                tracing::info!("cgroup warm-up off: berthd's cgroup is gone");
                                return;
                            }
                        }
                    };
                    if let Err(e) = move_to_own_cgroup(&target) {
                        tracing::info!(file = %target.file.display(), error = %e, "cgroup warm-up off: the no-op move failed");
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => JoinWarmer { tx: Some(tx) },
            Err(e) => {
                tracing::info!(error = %e, "cgroup warm-up off: cannot start its thread");
                JoinWarmer::off()
            }
        }
    }

    /// Asks for a move soon; returns at once.
    pub fn warm(&self) {
        if let Some(tx) = &self.tx {
            // Full: a move is already due. Disconnected: the warmer turned itself off.
            let _ = tx.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn v1(names: &[&str]) -> Layout {
        Layout::V1 {
            hierarchies: names
                .iter()
                .map(|h| Path::new("/sys/fs/cgroup").join(h))
                .collect(),
        }
    }

    #[test]
    fn v1_writes_to_berths_cgroup_in_pids_and_never_memory() {
        let all = v1(&["cpu,cpuacct", "memory", "pids", "systemd", "unified"]);
        assert_eq!(
            warm_target(&all, "/berth", "ignored"),
            Some(WarmTarget {
                file: PathBuf::from("/sys/fs/cgroup/pids/berth/tasks"),
                thread: true
            })
        );
        assert_eq!(
            warm_target(&all, "/a/b", "").map(|t| t.file),
            Some(PathBuf::from("/sys/fs/cgroup/pids/a/b/tasks"))
        );
        // Without a pids hierarchy of its own nothing is written (a thread would take on
        // another hierarchy's limits).
        let no_pids = v1(&["memory", "unified", "cpu,cpuacct", "pids,devices"]);
        assert_eq!(warm_target(&no_pids, "/berth", ""), None);
        assert_eq!(warm_target(&all, "/../x", ""), None);
    }

    #[test]
    fn v2_writes_the_process_to_its_own_cgroup() {
        let layout = Layout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(
            warm_target(&layout, "/berth", "0::/system.slice/berthd.service\n"),
            Some(WarmTarget {
                file: PathBuf::from("/sys/fs/cgroup/system.slice/berthd.service/cgroup.procs"),
                thread: false
            })
        );
        assert_eq!(
            warm_target(&layout, "/berth", "0::/\n").map(|t| t.file),
            Some(PathBuf::from("/sys/fs/cgroup/cgroup.procs"))
        );
        assert_eq!(warm_target(&layout, "/berth", "garbage\n"), None);
    }

    /// A process target where the process is not listed is refused, never written.
    #[test]
    fn a_real_move_of_the_process_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, "1\n2\n").expect("write");
        let target = WarmTarget {
            file: procs.clone(),
            thread: false,
        };
        let err = move_to_own_cgroup(&target).expect_err("refused");
        assert!(err.to_string().contains("is not in"), "{err}");
        assert_eq!(std::fs::read_to_string(&procs).expect("read"), "1\n2\n");
        // Listed: the write goes through (here a plain file takes it).
        std::fs::write(&procs, format!("1\n{}\n", std::process::id())).expect("write");
        move_to_own_cgroup(&target).expect("no-op move");
        assert_eq!(
            std::fs::read_to_string(&procs).expect("read"),
            std::process::id().to_string()
        );
    }

    /// On this host (root, cgroup v1): a thread moves into a cgroup the test creates, a
    /// second write leaves it there, and the cgroup is removed once the thread is gone.
    #[test]
    fn a_thread_moves_into_the_cgroup_and_stays() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to write to cgroupfs");
            return;
        }
        let layout = match Layout::detect() {
            Ok(l @ Layout::V1 { .. }) => l,
            Ok(_) => {
                eprintln!("skipped: the host is cgroup v2 (the v1 move is what runs here)");
                return;
            }
            Err(e) => {
                eprintln!("skipped: no cgroup filesystem ({e})");
                return;
            }
        };
        let parent = format!("/berth-test-cgwarm-{}", std::process::id());
        let created = layout.create(&parent).expect("create test cgroup");
        let target = warm_target(&layout, &parent, "").expect("a target on this host");
        let (dir, file) = (
            target.file.parent().expect("dir").to_path_buf(),
            target.file.clone(),
        );
        let seen = std::thread::spawn(move || {
            move_to_own_cgroup(&target).expect("move");
            move_to_own_cgroup(&target).expect("no-op move");
            let tid = nix::unistd::gettid().as_raw().to_string();
            let listed = std::fs::read_to_string(&file).expect("tasks");
            let own = std::fs::read_to_string("/proc/thread-self/cgroup").expect("own");
            (listed.lines().any(|l| l.trim() == tid), own)
        })
        .join()
        .expect("thread");
        assert!(seen.0, "the thread is in {}", dir.display());
        assert!(seen.1.contains(&parent), "{}", seen.1);
        // The other threads stayed where they were.
        let own = std::fs::read_to_string("/proc/thread-self/cgroup").expect("own");
        assert!(!own.contains(&parent), "{own}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(dir.join("tasks"))
            .map(|t| !t.trim().is_empty())
            .unwrap_or(false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "exited thread still listed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        crate::cgroups::remove(&created);
        assert!(!dir.exists());
        // A warmer on a cgroup that does not exist turns itself off; warm() never blocks.
        let w = JoinWarmer::start(&layout, "/berth-test-cgwarm-missing");
        for _ in 0..3 {
            w.warm();
        }
        JoinWarmer::off().warm();
    }
}
