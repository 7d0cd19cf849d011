//! Pod cgroups made the way kubelet's cgroupfs driver makes them: kubelet creates a pod's
//! cgroup (`…/pod<uid>`) in every hierarchy before RunPodSandbox and removes it after
//! RemovePodSandbox, so a runtime only creates and removes its containers' cgroups below
//! it. The bench does the same for both runtimes, outside the timed calls, under the run's
//! own cgroup subtree (`/berth-bench-<run>`).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The cgroup hierarchies mounted under /sys/fs/cgroup: `/sys/fs/cgroup` itself on a pure
/// cgroup v2 host, else every v1 hierarchy plus the v2 one of a hybrid layout.
pub fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut v: Vec<PathBuf> = fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                // Controller symlinks (cpu -> cpu,cpuacct) would name a hierarchy twice.
                .filter(|p| p.is_dir() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Creates cgroup `path` (`/a/b/c`) in every hierarchy, parents first: a new v1 cpuset
/// gets its parent's CPUs and memory nodes, a v2 parent delegates its controllers.
pub fn create(path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    for h in hierarchies() {
        let is_cpuset = h
            .file_name()
            .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == "cpuset"));
        let is_v2 = h.join("cgroup.controllers").exists();
        let mut cur = h.clone();
        for part in Path::new(rel).components() {
            let parent = cur.clone();
            cur.push(part);
            if cur.is_dir() {
                continue;
            }
            if is_v2 {
                let controllers =
                    fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let enable: Vec<String> = controllers
                    .split_whitespace()
                    .map(|c| format!("+{c}"))
                    .collect();
                if !enable.is_empty() {
                    // Best effort: a controller the parent cannot delegate stays off.
                    let _ = fs::write(parent.join("cgroup.subtree_control"), enable.join(" "));
                }
            }
            match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("mkdir {}", cur.display())),
            }
            if is_cpuset {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
                    if !v.trim().is_empty() {
                        fs::write(cur.join(f), v.trim())
                            .with_context(|| format!("writing {}", cur.join(f).display()))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Removes cgroup `path` (not its parents) from every hierarchy, best effort: what cannot
/// be removed yet is removed with the run's subtree at clean-up.
pub fn remove(path: &str) {
    let rel = path.trim_start_matches('/');
    for h in hierarchies() {
        let _ = fs::remove_dir(h.join(rel));
    }
}
