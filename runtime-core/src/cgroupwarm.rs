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
//! separate `pids` hierarchy the warm-up is off). On cgroup v2 it is off: a thread cannot
//! leave its process's cgroup there, and the only no-op move left, berthd's process into
//! the cgroup it is in, writes into a cgroup berth does not own (on a systemd node, the
//! service's). If a write fails (read-only cgroupfs, no permission) the warmer turns itself
//! off and says so once; `runtime.cgroup_warmup = false` turns it off.

use std::path::PathBuf;
use std::sync::mpsc;

use crate::cgroups::{Layout, dir_under};

/// Where the warmer writes on `layout`: on v1, the `tasks` file of berth's cgroup `parent`
/// in the `pids` hierarchy (none without one); on v2, nowhere (see the module comment).
pub fn warm_target(layout: &Layout, parent: &str) -> Option<PathBuf> {
    match layout {
        Layout::V1 { hierarchies } => {
            let mount = hierarchies
                .iter()
                .find(|h| h.file_name().is_some_and(|n| n == "pids"))?;
            Some(dir_under(mount, parent).ok()?.join("tasks"))
        }
        Layout::V2 { .. } => None,
    }
}

/// Writes the calling thread's move to `tasks` (a no-op once it is there).
pub fn move_thread(tasks: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(tasks, nix::unistd::gettid().as_raw().to_string())
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
        let Some(tasks) = warm_target(layout, parent) else {
            tracing::info!("cgroup warm-up off: no cgroup of berth's own to write to");
            return JoinWarmer::off();
        };
        // One pending request is enough: a move made after it was queued serves it.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("berthd-cgwarm".into())
            .spawn(move || {
                // The first write is the real move, made before any container needs it; the
                // thread stays there, so every later write is a no-op move.
                if let Err(e) = move_thread(&tasks) {
                    tracing::info!(file = %tasks.display(), error = %e, "cgroup warm-up off: cannot write there");
                    return;
                }
                while rx.recv().is_ok() {
                    if let Err(e) = move_thread(&tasks) {
                        tracing::info!(file = %tasks.display(), error = %e, "cgroup warm-up off: the no-op move failed");
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
            warm_target(&all, "/berth"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/berth/tasks"))
        );
        assert_eq!(
            warm_target(&all, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/a/b/tasks"))
        );
        // Without a pids hierarchy of its own nothing is written (a thread would take on
        // another hierarchy's limits).
        let no_pids = v1(&["memory", "unified", "cpu,cpuacct", "pids,devices"]);
        assert_eq!(warm_target(&no_pids, "/berth"), None);
        assert_eq!(warm_target(&all, "/../x"), None);
    }

    #[test]
    fn v2_never_writes() {
        let layout = Layout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(warm_target(&layout, "/berth"), None);
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
        let target = warm_target(&layout, &parent).expect("a target on this host");
        let (dir, file) = (target.parent().expect("dir").to_path_buf(), target.clone());
        let seen = std::thread::spawn(move || {
            move_thread(&target).expect("move");
            move_thread(&target).expect("no-op move");
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
