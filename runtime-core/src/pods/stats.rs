//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats from the
//! cgroups (v1 or v2), the writable layer and the pod's network namespace. Cheap enough for
//! kubelet's polling: a few small file reads per container; the writable layer's disk use
//! is measured at most every few seconds per container.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_cri::v1 as cri;

use super::records::{ContainerRecord, SandboxRecord};
use super::{PodService, labels_match, now_ns};
use crate::Result;
use crate::cgroups::CgroupStats;
use crate::cgroups::psi::Pressure;

/// How long a writable-layer measurement is reused.
const LAYER_USAGE_TTL: Duration = Duration::from_secs(5);

/// Per-object samples for rates and cached disk usage.
#[derive(Default)]
pub(crate) struct StatsCache {
    /// Last (timestamp ns, cumulative cpu ns) per cgroup path, for usage_nano_cores.
    cpu: Mutex<HashMap<String, (i64, u64)>>,
    /// Last writable-layer usage per container.
    layer: Mutex<HashMap<String, (Instant, u64, u64)>>,
}

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn psi_stats(p: Option<crate::cgroups::psi::Psi>) -> Option<cri::PsiStats> {
    let line = |l: crate::cgroups::psi::PsiLine| cri::PsiData {
        total: l.total_ns,
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.map(|p| cri::PsiStats {
        full: p.full.map(line),
        some: p.some.map(line),
    })
}

/// IoUsage (1.33): only its pressure, on cgroup v2.
fn io_usage(ts: i64, p: &Pressure) -> Option<cri::IoUsage> {
    p.io.map(|io| cri::IoUsage {
        timestamp: ts,
        psi: psi_stats(Some(io)),
    })
}

impl PodService {
    fn cpu_usage(
        &self,
        key: &str,
        ts: i64,
        s: &CgroupStats,
        p: &Pressure,
    ) -> Option<cri::CpuUsage> {
        let total = s.cpu_usage_ns?;
        let mut last = self
            .inner
            .stats
            .cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let nano_cores = match last.get(key) {
            Some((t0, u0)) if ts > *t0 && total >= *u0 => {
                Some(((total - u0) as u128 * 1_000_000_000 / (ts - t0) as u128) as u64)
            }
            _ => None,
        };
        last.insert(key.to_string(), (ts, total));
        Some(cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(Some(total)),
            usage_nano_cores: u64v(nano_cores),
            psi: psi_stats(p.cpu),
        })
    }

    fn memory_usage(ts: i64, s: &CgroupStats, p: &Pressure) -> Option<cri::MemoryUsage> {
        let usage = s.memory_usage?;
        Some(cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: u64v(s.memory_working_set),
            available_bytes: u64v(
                s.memory_limit
                    .map(|l| l.saturating_sub(s.memory_working_set.unwrap_or(usage))),
            ),
            usage_bytes: u64v(Some(usage)),
            rss_bytes: u64v(s.memory_rss),
            page_faults: u64v(s.page_faults),
            major_page_faults: u64v(s.major_page_faults),
            psi: psi_stats(p.memory),
        })
    }

    /// Disk bytes and inodes of the container's writable layer, measured at most every
    /// [`LAYER_USAGE_TTL`].
    pub(super) fn layer_usage(&self, rec: &ContainerRecord) -> (u64, u64) {
        let mut cache = self
            .inner
            .stats
            .layer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, b, i)) = cache.get(&rec.id)
            && at.elapsed() < LAYER_USAGE_TTL
        {
            return (*b, *i);
        }
        let (b, i) = disk_usage(&rec.dir.join("upper"));
        cache.insert(rec.id.clone(), (Instant::now(), b, i));
        (b, i)
    }

    fn container_stats_of(&self, rec: &ContainerRecord) -> cri::ContainerStats {
        let ts = now_ns();
        let cg = self
            .inner
            .cgroups
            .stats(&rec.cgroup_path)
            .unwrap_or_default();
        let psi = self
            .inner
            .cgroups
            .pressure(&rec.cgroup_path)
            .unwrap_or_default();
        let (bytes, inodes) = self.layer_usage(rec);
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: rec.id.clone(),
                metadata: Some(rec.metadata()),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            cpu: self
                .cpu_usage(&rec.cgroup_path, ts, &cg, &psi)
                .or(Some(cri::CpuUsage {
                    timestamp: ts,
                    ..Default::default()
                })),
            memory: Self::memory_usage(ts, &cg, &psi).or(Some(cri::MemoryUsage {
                timestamp: ts,
                ..Default::default()
            })),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: rec.dir.join("upper").display().to_string(),
                }),
                used_bytes: u64v(Some(bytes)),
                inodes_used: u64v(Some(inodes)),
            }),
            swap: None,
            io: io_usage(ts, &psi),
        }
    }

    /// ContainerStats.
    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let rec = self.container(id)?.get();
        Ok(self.container_stats_of(&rec))
    }

    /// ListContainerStats with CRI's filter.
    pub fn list_container_stats(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        self.all_containers()
            .into_iter()
            .filter(|r| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || r.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || r.pod_id.starts_with(&f.pod_sandbox_id))
                        && labels_match(&r.config.labels, &f.label_selector)
                }
            })
            .map(|r| self.container_stats_of(&r))
            .collect()
    }

    /// PodSandboxStats.
    pub fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let rec = self.sandbox(id)?.get();
        let ts = now_ns();
        let cg = self
            .inner
            .cgroups
            .stats(&rec.cgroup_parent)
            .unwrap_or_default();
        let psi = self
            .inner
            .cgroups
            .pressure(&rec.cgroup_parent)
            .unwrap_or_default();
        let containers: Vec<ContainerRecord> = self
            .containers_of(&rec.id)
            .iter()
            .map(|e| e.get())
            .collect();
        let network =
            netns_pid(&rec, &containers).and_then(|pid| network_usage(&net_dev_path(pid), ts));
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: rec.id.clone(),
                metadata: Some(rec.metadata()),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: self.cpu_usage(&rec.cgroup_parent, ts, &cg, &psi),
                memory: Self::memory_usage(ts, &cg, &psi),
                network,
                process: cg.pids.map(|n| cri::ProcessUsage {
                    timestamp: ts,
                    process_count: u64v(Some(n)),
                }),
                containers: containers
                    .iter()
                    .map(|c| self.container_stats_of(c))
                    .collect(),
                io: io_usage(ts, &psi),
            }),
            windows: None,
        })
    }

    /// ListPodSandboxStats with CRI's filter.
    pub fn list_pod_sandbox_stats(
        &self,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let ids: Vec<String> = self
            .all_sandboxes()
            .into_iter()
            .filter(|r| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || r.id.starts_with(&f.id))
                        && labels_match(&r.config.labels, &f.label_selector)
                }
            })
            .map(|r| r.id)
            .collect();
        ids.iter()
            .filter_map(|id| self.pod_sandbox_stats(id).ok())
            .collect()
    }
}

/// A process of the pod whose /proc/PID/net/dev shows the pod's network namespace (no
/// need to enter it): a live container process, else the infra process. None for pods on
/// the host's network.
pub(super) fn netns_pid(rec: &SandboxRecord, containers: &[ContainerRecord]) -> Option<i32> {
    rec.namespaces.network.as_ref()?;
    containers
        .iter()
        .filter(|c| c.pid > 0 && super::sandbox::process_alive(c.pid))
        .map(|c| c.pid)
        .next()
        .or(rec.pause_pid)
}

/// The /proc/net/dev file of process `pid`.
pub(super) fn net_dev_path(pid: i32) -> String {
    format!("/proc/{pid}/net/dev")
}

/// The counters of one interface in /proc/net/dev.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NetDev {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped while sending.
    pub tx_dropped: u64,
}

/// The interfaces of a /proc/net/dev file but `lo`.
pub(super) fn read_net_dev(path: &str) -> Option<Vec<NetDev>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut ifaces = vec![];
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() < 16 {
            continue;
        }
        ifaces.push(NetDev {
            name: name.to_string(),
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_errors: f[2],
            rx_dropped: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_dropped: f[11],
        });
    }
    Some(ifaces)
}

/// Interface counters from a /proc/net/dev file; `eth0` is the default interface.
fn network_usage(path: &str, ts: i64) -> Option<cri::NetworkUsage> {
    let ifaces: Vec<cri::NetworkInterfaceUsage> = read_net_dev(path)?
        .into_iter()
        .map(|d| cri::NetworkInterfaceUsage {
            name: d.name,
            rx_bytes: u64v(Some(d.rx_bytes)),
            rx_errors: u64v(Some(d.rx_errors)),
            tx_bytes: u64v(Some(d.tx_bytes)),
            tx_errors: u64v(Some(d.tx_errors)),
        })
        .collect();
    let default = ifaces.iter().find(|i| i.name == "eth0").cloned();
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: default,
        interfaces: ifaces,
    })
}

/// Disk bytes (st_blocks) and inodes under `dir`, not following symlinks or crossing
/// into other filesystems.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = root.dev();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !seen.insert(m.ino()) {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_becomes_cri_psi_and_io_usage() {
        let psi = crate::cgroups::psi::parse(
            "some avg10=3.00 avg60=2.00 avg300=1.00 total=10\nfull avg10=0.50 avg60=0.25 avg300=0.10 total=4\n",
        );
        let p = Pressure {
            cpu: psi,
            memory: None,
            io: psi,
        };
        let cpu = psi_stats(p.cpu).unwrap();
        assert_eq!(cpu.some.unwrap().total, 10_000);
        assert_eq!(cpu.full.unwrap().avg10, 0.5);
        assert!(psi_stats(p.memory).is_none());
        let io = io_usage(7, &p).unwrap();
        assert_eq!(io.timestamp, 7);
        assert_eq!(io.psi.unwrap().some.unwrap().avg300, 1.0);
        assert!(
            io_usage(7, &Pressure::default()).is_none(),
            "cgroup v1: no IoUsage"
        );
    }

    #[test]
    fn parses_proc_net_dev() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dev");
        std::fs::write(
            &p,
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      20    1    0    0     0          0         0     3000      30    2    0    0     0       0          0\n",
        )
        .unwrap();
        let n = network_usage(p.to_str().unwrap(), 1).unwrap();
        assert_eq!(n.interfaces.len(), 1);
        let e = n.default_interface.unwrap();
        assert_eq!(e.rx_bytes.unwrap().value, 2000);
        assert_eq!(e.tx_errors.unwrap().value, 2);
        let d = read_net_dev(p.to_str().unwrap()).unwrap();
        assert_eq!(
            (d[0].rx_packets, d[0].tx_packets, d[0].rx_dropped),
            (20, 30, 0)
        );
    }

    #[test]
    fn disk_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), b"x").unwrap();
        let (b, i) = disk_usage(d.path());
        assert_eq!(i, 3);
        assert!(b >= 12288, "{b}");
        assert_eq!(disk_usage(&d.path().join("missing")), (0, 0));
    }
}
