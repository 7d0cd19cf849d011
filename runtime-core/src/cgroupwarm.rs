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
//! berth) in one hierarchy other than `memory`, `pids` if mounted, and then writes its thread
//! ID to that cgroup's `tasks`: nothing outside berth's own cgroups is written. On v2 a
//! single thread cannot leave its process's cgroup, so it writes berthd's process ID to the
//! `cgroup.procs` of the cgroup berthd runs in. If a write fails (read-only cgroupfs, no
//! permission) the warmer turns itself off and says so once; `runtime.cgroup_warmup =
//! false` turns it off.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::cgroups::Layout;

/// The file a no-op move of the calling thread is written to, and what is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmTarget {
    /// `tasks` (v1) or `cgroup.procs` (v2).
    pub file: PathBuf,
    /// Whether the thread ID (v1 `tasks`) rather than the process ID (v2) is written.
    pub thread: bool,
}

/// Where the warmer writes on `layout`: v1, the `tasks` of berth's cgroup `parent` in the
/// `pids` hierarchy, else in the first other hierarchy that is neither `memory` nor the
/// hybrid layout's unified one; v2, the `cgroup.procs` of the cgroup berthd is in (`own`,
/// as `/proc/self/cgroup` reads).
pub fn warm_target(layout: &Layout, parent: &str, own: &str) -> Option<WarmTarget> {
    match layout {
        Layout::V1 { hierarchies } => {
            let names = |h: &PathBuf| -> Vec<String> {
                h.file_name()
                    .map(|n| n.to_string_lossy().split(',').map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let usable = |h: &&PathBuf| {
                let n = names(h);
                !n.is_empty() && !n.iter().any(|c| c == "memory" || c == "unified")
            };
            let mount = hierarchies
                .iter()
                .find(|h| names(h) == ["pids"])
                .or_else(|| hierarchies.iter().find(usable))?;
            Some(WarmTarget {
                file: inside(mount, parent)?.join("tasks"),
                thread: true,
            })
        }
        Layout::V2 { root } => own.lines().find_map(|line| {
            let path = line.strip_prefix("0::")?;
            Some(WarmTarget {
                file: inside(root, path)?.join("cgroup.procs"),
                thread: false,
            })
        }),
    }
}

/// `mount` joined with the cgroup path `path`, refusing `..`.
fn inside(mount: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim().trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

/// Writes the calling thread's move to `target` (a no-op once it is there).
pub fn move_to_own_cgroup(target: &WarmTarget) -> std::io::Result<()> {
    let id = if target.thread {
        nix::unistd::gettid().as_raw()
    } else {
        std::process::id() as i32
    };
    std::fs::write(&target.file, id.to_string())
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
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(target) = warm_target(layout, parent, &own) else {
            tracing::info!("cgroup warm-up off: no cgroup to write to");
            return JoinWarmer::off();
        };
        // One pending request is enough: a move made after it was queued serves it.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("berthd-cgwarm".into())
            .spawn(move || {
                // The first write is the real move (v1), made before any container needs it.
                if let Err(e) = move_to_own_cgroup(&target) {
                    tracing::info!(file = %target.file.display(), error = %e, "cgroup warm-up off: cannot write there");
                    return;
                }
                while rx.recv().is_ok() {
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
        let no_pids = v1(&["memory", "unified", "cpu,cpuacct"]);
        assert_eq!(
            warm_target(&no_pids, "/a/b", "").map(|t| t.file),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/b/tasks"))
        );
        assert_eq!(warm_target(&v1(&["memory", "unified"]), "/berth", ""), None);
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
