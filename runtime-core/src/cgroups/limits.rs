//! Writing a pod cgroup's limits (UpdatePodSandboxResources on a pod cgroup berth made):
//! CPU shares / weight, the CFS quota and period, the memory limit and the cpuset, on
//! cgroup v1 and v2. Container cgroups are the OCI runtime's (`runc update`).

use std::fs;
use std::path::{Path, PathBuf};

use super::{Layout, relative};
use crate::{Error, Result};

/// Limits for one cgroup; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU shares (v1 cpu.shares; v2 cpu.weight converted as runc does).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period; `Some(None)`: no quota.
    pub cpu_quota: Option<Option<u64>>,
    /// CFS period, µs (100000 when a quota is set without one).
    pub cpu_period: Option<u64>,
    /// Memory limit, bytes; `Some(None)`: no limit.
    pub memory: Option<Option<u64>>,
    /// cpuset.cpus.
    pub cpuset_cpus: Option<String>,
    /// cpuset.mems.
    pub cpuset_mems: Option<String>,
}

/// Default CFS period, µs.
const DEFAULT_PERIOD: u64 = 100_000;

/// runc's conversion of cgroup v1 shares (2..262144) to v2 weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(|e| Error::io("write", &p, e))
}

impl Layout {
    /// Writes `limits` into cgroup `path` (which must exist).
    pub fn set_limits(&self, path: &str, limits: &Limits) -> Result<()> {
        let rel = relative(path)?;
        match self {
            Layout::V1 { hierarchies } => set_v1(hierarchies, &rel, limits),
            Layout::V2 { root } => set_v2(&root.join(rel), limits),
        }
    }
}

fn set_v1(hierarchies: &[PathBuf], rel: &Path, l: &Limits) -> Result<()> {
    let dir = |ctrl: &str| {
        super::v1_hierarchy(hierarchies, ctrl)
            .map(|h| h.join(rel))
            .ok_or_else(|| Error::Internal(format!("no cgroup v1 {ctrl} hierarchy mounted")))
    };
    if l.cpu_shares.is_some() || l.cpu_quota.is_some() || l.cpu_period.is_some() {
        let cpu = dir("cpu")?;
        if let Some(s) = l.cpu_shares {
            write(&cpu, "cpu.shares", &s.to_string())?;
        }
        if let Some(p) = l.cpu_period {
            write(&cpu, "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = l.cpu_quota {
            let q = q.map_or("-1".to_string(), |q| q.to_string());
            write(&cpu, "cpu.cfs_quota_us", &q)?;
        }
    }
    if let Some(m) = l.memory {
        let m = m.map_or("-1".to_string(), |m| m.to_string());
        write(&dir("memory")?, "memory.limit_in_bytes", &m)?;
    }
    if l.cpuset_cpus.is_some() || l.cpuset_mems.is_some() {
        let cs = dir("cpuset")?;
        if let Some(c) = &l.cpuset_cpus {
            write(&cs, "cpuset.cpus", c)?;
        }
        if let Some(m) = &l.cpuset_mems {
            write(&cs, "cpuset.mems", m)?;
        }
    }
    Ok(())
}

fn set_v2(dir: &Path, l: &Limits) -> Result<()> {
    if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
        write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    if l.cpu_quota.is_some() || l.cpu_period.is_some() {
        // cpu.max holds both: an unchanged half is read back.
        let current = fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
        let mut parts = current.split_whitespace();
        let (cur_quota, cur_period) = (
            parts.next().unwrap_or("max").to_string(),
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(DEFAULT_PERIOD),
        );
        let quota = match l.cpu_quota {
            Some(Some(q)) => q.to_string(),
            Some(None) => "max".to_string(),
            None => cur_quota,
        };
        let period = l.cpu_period.unwrap_or(cur_period);
        write(dir, "cpu.max", &format!("{quota} {period}"))?;
    }
    if let Some(m) = l.memory {
        let m = m.map_or("max".to_string(), |m| m.to_string());
        write(dir, "memory.max", &m)?;
    }
    if let Some(c) = &l.cpuset_cpus {
        write(dir, "cpuset.cpus", c)?;
    }
    if let Some(m) = &l.cpuset_mems {
        write(dir, "cpuset.mems", m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v1_writes_each_controller() {
        let d = tempfile::tempdir().unwrap();
        let hs: Vec<PathBuf> = ["cpu,cpuacct", "memory", "cpuset"]
            .iter()
            .map(|h| d.path().join(h))
            .collect();
        for h in &hs {
            fs::create_dir_all(h.join("pod")).unwrap();
        }
        let layout = Layout::V1 {
            hierarchies: hs.clone(),
        };
        let l = Limits {
            cpu_shares: Some(512),
            cpu_quota: Some(Some(50_000)),
            cpu_period: Some(100_000),
            memory: Some(Some(256 << 20)),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: None,
        };
        layout.set_limits("/pod", &l).unwrap();
        assert_eq!(read(&hs[0].join("pod/cpu.shares")), "512");
        assert_eq!(read(&hs[0].join("pod/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&hs[0].join("pod/cpu.cfs_period_us")), "100000");
        assert_eq!(read(&hs[1].join("pod/memory.limit_in_bytes")), "268435456");
        assert_eq!(read(&hs[2].join("pod/cpuset.cpus")), "0-1");
        assert!(!hs[2].join("pod/cpuset.mems").exists());
        let unlimited = Limits {
            cpu_quota: Some(None),
            memory: Some(None),
            ..Default::default()
        };
        layout.set_limits("/pod", &unlimited).unwrap();
        assert_eq!(read(&hs[0].join("pod/cpu.cfs_quota_us")), "-1");
        assert_eq!(read(&hs[1].join("pod/memory.limit_in_bytes")), "-1");
        assert!(layout.set_limits("/../x", &l).is_err());
    }

    #[test]
    fn v2_writes_weight_cpu_max_and_memory_max() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod");
        fs::create_dir_all(&pod).unwrap();
        fs::write(pod.join("cpu.max"), "max 100000\n").unwrap();
        let layout = Layout::V2 {
            root: d.path().to_path_buf(),
        };
        layout
            .set_limits(
                "/pod",
                &Limits {
                    cpu_shares: Some(1024),
                    cpu_quota: Some(Some(25_000)),
                    memory: Some(Some(1 << 30)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(read(&pod.join("cpu.weight")), "39");
        assert_eq!(read(&pod.join("cpu.max")), "25000 100000");
        assert_eq!(read(&pod.join("memory.max")), "1073741824");
        layout
            .set_limits(
                "/pod",
                &Limits {
                    cpu_period: Some(50_000),
                    memory: Some(None),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            read(&pod.join("cpu.max")),
            "25000 50000",
            "the quota is kept"
        );
        assert_eq!(read(&pod.join("memory.max")), "max");
    }

    #[test]
    fn weights_as_runc_converts_them() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert_eq!(shares_to_weight(0), 0);
    }
}
