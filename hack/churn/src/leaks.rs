//! The search of the host after the churn: everything berth could have left, each found
//! thing named.

use std::path::{Path, PathBuf};

use e2e::pods::{PodEnv, cgroup_dirs_existing, mounts, processes};

/// Where this run's berth keeps things.
pub struct Scope {
    root: PathBuf,
    state: PathBuf,
    cgroup_parent: String,
    bridge: String,
    ipam: PathBuf,
}

impl Scope {
    /// The scope of `env`'s berthd, whose pods' cgroups go below `cgroup_parent`.
    pub fn of(env: &PodEnv, cgroup_parent: &str) -> Scope {
        Scope {
            root: env.berthd.root(),
            state: env.berthd.state(),
            cgroup_parent: cgroup_parent.to_string(),
            bridge: env.berthd.cni.bridge.clone(),
            ipam: env.berthd.dir().join("cni/ipam"),
        }
    }

    /// Everything left, one line each (empty: clean).
    pub async fn search(&self, env: &PodEnv) -> Vec<String> {
        let mut out = Vec::new();
        for m in mounts() {
            if m.mount_point.starts_with(&self.root) || m.mount_point.starts_with(&self.state) {
                out.push(format!("mount {} ({})", m.mount_point.display(), m.fstype));
            }
        }
        for (pid, cmd) in processes() {
            if cmd.contains("sleep 86399")
                || (cmd.contains("berth-monitor") && cmd.contains(&*self.state.to_string_lossy()))
            {
                out.push(format!("process {pid}: {cmd}"));
            }
        }
        out.extend(veths_on(&self.bridge));
        out.extend(ipam_reservations(&self.ipam));
        for dir in cgroup_dirs_existing(&self.cgroup_parent) {
            for child in subdirs(&dir) {
                out.push(format!("cgroup {}", child.display()));
            }
        }
        for dir in [
            self.state.join("pods"),
            self.state.join("containers"),
            self.root.join("sandboxes"),
            self.root.join("containers"),
            self.root.join("containers/records"),
        ] {
            for e in entries(&dir) {
                if e.file_name().is_some_and(|n| n == "records") {
                    continue;
                }
                out.push(format!("left in {}: {}", dir.display(), e.display()));
            }
        }
        if let Ok(c) = env.list_containers(None).await
            && !c.is_empty()
        {
            out.push(format!("{} containers still listed", c.len()));
        }
        out
    }
}

/// Interfaces enslaved to `bridge` (the pods' veths' host ends).
fn veths_on(bridge: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/net").join(bridge).join("brif");
    entries(&dir)
        .into_iter()
        .map(|p| format!("veth {} on bridge {bridge}", p.display()))
        .collect()
}

/// host-local's reservations: one file per reserved IP in each network's directory
/// (besides its lock and last-reserved files).
fn ipam_reservations(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for net in subdirs(dir) {
        for f in entries(&net) {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == "lock" || name.starts_with("last_reserved_ip") {
                continue;
            }
            let owner = std::fs::read_to_string(&f).unwrap_or_default();
            out.push(format!(
                "IPAM reservation {name} ({})",
                owner.lines().next().unwrap_or("")
            ));
        }
    }
    out
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    entries(dir).into_iter().filter(|p| p.is_dir()).collect()
}

/// Removes the run's (by then empty) cgroup parent from every hierarchy.
pub fn cleanup_cgroup_parent(parent: &str) {
    for dir in cgroup_dirs_existing(parent) {
        let _ = std::fs::remove_dir(&dir);
    }
}
