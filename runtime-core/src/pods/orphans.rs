//! What a crash in the middle of a create leaves without a record, found and removed at
//! recovery: container bundles (with their rootfs and image volume mounts), pod
//! directories (with pinned namespaces, shm and processes) and the pods' cgroups below
//! berth's default cgroup parent.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{PodService, is_monitor, sandbox};

/// How long a leftover cgroup may take to empty after its processes were killed.
const CGROUP_EMPTY_DEADLINE: Duration = Duration::from_secs(2);

fn is_id(n: &str) -> bool {
    n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_short_id(n: &str) -> bool {
    n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The names in `dir` that `keep` accepts.
fn names(dir: &Path, keep: fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

impl PodService {
    /// Removes the leftovers of interrupted creates. Only names that look like berth's IDs
    /// are touched, and only in berth's own directories and cgroup parent.
    pub(super) fn remove_orphans(&self, pods: &HashSet<String>, ctrs: &HashSet<String>) {
        let opts = &self.inner.opts;
        for id in names(&opts.state.join("containers"), is_id) {
            if !ctrs.contains(&id) {
                let bundle = opts.state.join("containers").join(&id);
                tracing::warn!(container = %id, "removing bundle left by an interrupted create");
                if super::usermounts::unmount_bundle(&bundle) {
                    let _ = crate::fsutil::remove_all(&bundle);
                }
            }
        }
        for id in names(&opts.root.join("containers"), is_id) {
            if !ctrs.contains(&id) {
                let _ = crate::fsutil::remove_all(&opts.root.join("containers").join(&id));
            }
        }
        let pod_dirs: HashSet<&str> = pods.iter().map(|p| &p[..12.min(p.len())]).collect();
        for short in names(&opts.state.join("pods"), is_short_id) {
            if pod_dirs.contains(short.as_str()) {
                continue;
            }
            let dir = opts.state.join("pods").join(&short);
            tracing::warn!(pod = %short, "removing pod directory left by an interrupted RunPodSandbox");
            for ns in crate::sandbox::ns::PINNED_FILES {
                crate::sandbox::ns::unpin_path(&dir.join("ns").join(ns));
            }
            crate::sandbox::files::unmount(&dir.join("shm"));
            for pidfile in ["monitor.pid", "pause.pid"] {
                let pid = std::fs::read_to_string(dir.join(pidfile))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                if let Some(pid) = pid
                    && pid > 1
                    && sandbox::process_alive(pid)
                    && is_monitor(pid)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            self.remove_orphan_pod_cgroups(&short);
            let _ = crate::fsutil::remove_all(&dir);
        }
    }

    /// A pod without a cgroup parent of kubelet's gets `default_cgroup_parent/ID`, made
    /// before its record is saved (the record names what berth made, so it is written
    /// after). A pod directory without a record (which is made first and named by the ID's
    /// first 12 characters) marks such a cgroup as berth's leftover. Cgroups under a parent
    /// kubelet chose are kubelet's and left alone.
    fn remove_orphan_pod_cgroups(&self, short: &str) {
        let layout = &self.inner.cgroups;
        let parent = self.inner.opts.default_cgroup_parent.trim_end_matches('/');
        for id in layout.children(parent) {
            if !(is_id(&id) && id.starts_with(short)) {
                continue;
            }
            let path = format!("{parent}/{id}");
            tracing::warn!(pod = %id, cgroup = %path, "removing cgroup left by an interrupted RunPodSandbox");
            // Parent first: `cgroups::remove` and the loop below go from the end.
            let mut dirs = layout.dirs(&path).unwrap_or_default();
            for child in layout.children(&path) {
                let child = format!("{path}/{child}");
                let _ = layout.kill_all(&child);
                dirs.extend(layout.dirs(&child).unwrap_or_default());
            }
            let _ = layout.kill_all(&path);
            // A killed process leaves its cgroup a moment after the signal: rmdir answers
            // EBUSY until then.
            let deadline = Instant::now() + CGROUP_EMPTY_DEADLINE;
            while dirs.iter().any(|d| d.exists()) && Instant::now() < deadline {
                for d in dirs.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                if dirs.iter().any(|d| d.exists()) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            crate::cgroups::remove(&dirs);
        }
    }
}
