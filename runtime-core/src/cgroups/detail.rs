//! The fuller cgroup reading behind ListPodSandboxMetrics (cAdvisor's metric families):
//! [`Layout::stats`] (the very reading the stats RPCs use) plus CPU user/system time and
//! CFS throttling, the memory breakdown, swap, failcnt, OOM kills, the container's
//! processes, block I/O per device and the limits the cgroup enforces, from the v1 or v2
//! interface files. Missing files leave fields unset.

use std::fs;
use std::path::{Path, PathBuf};

use super::{CgroupStats, Layout, V1_NO_LIMIT, read_u64, relative, stat_field};
use crate::Result;

/// cpuacct.stat counts in USER_HZ, which the kernel fixes at 100 on every architecture
/// berth runs on (x86, arm, arm64, ppc64, s390x, riscv).
const USER_HZ: u64 = 100;

/// Block I/O of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoDevice {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub reads: u64,
    /// Write operations.
    pub writes: u64,
}

/// Everything ListPodSandboxMetrics reports of one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDetail {
    /// The reading of [`Layout::stats`]: the values ContainerStats reports.
    pub base: CgroupStats,
    /// CPU time in user mode, ns.
    pub cpu_user_ns: Option<u64>,
    /// CPU time in kernel mode, ns.
    pub cpu_system_ns: Option<u64>,
    /// Elapsed CFS enforcement periods.
    pub cfs_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub cfs_throttled_periods: Option<u64>,
    /// Total time throttled, ns.
    pub cfs_throttled_ns: Option<u64>,
    /// Page cache (v1 total_cache, v2 file).
    pub memory_cache: Option<u64>,
    /// Memory-mapped files (v1 total_mapped_file, v2 file_mapped).
    pub memory_mapped_file: Option<u64>,
    /// Kernel memory (v1 memory.kmem.usage_in_bytes, v2 `kernel`, else kernel_stack + slab).
    pub memory_kernel: Option<u64>,
    /// Peak usage (v1 memory.max_usage_in_bytes, v2 memory.peak on kernels that have it).
    pub memory_max_usage: Option<u64>,
    /// Swap in use (v1 total_swap with swap accounting, v2 memory.swap.current).
    pub memory_swap: Option<u64>,
    /// Times usage hit the limit (v1 memory.failcnt, v2 the `max` count of memory.events).
    pub memory_failcnt: Option<u64>,
    /// Active page cache (v1 total_active_file, v2 active_file).
    pub memory_active_file: Option<u64>,
    /// Inactive page cache (v1 total_inactive_file, v2 inactive_file).
    pub memory_inactive_file: Option<u64>,
    /// OOM kills (the `oom_kill` line of v1 memory.oom_control, v2 memory.events).
    pub oom_kills: Option<u64>,
    /// Tasks (threads) in the cgroup: pids.current.
    pub threads: Option<u64>,
    /// pids.max; 0 for no limit.
    pub threads_max: Option<u64>,
    /// The processes of the cgroup (cgroup.procs).
    pub procs: Vec<i32>,
    /// Block I/O per device (v1 blkio.throttle.*_recursive, v2 io.stat).
    pub io: Vec<IoDevice>,
    /// CFS period, µs (v1 cpu.cfs_period_us, v2 the period of cpu.max).
    pub cpu_period: Option<u64>,
    /// CPU shares (v1 cpu.shares, v2 cpu.weight converted back to shares).
    pub cpu_shares: Option<u64>,
    /// Memory limit, bytes; 0 for no limit.
    pub memory_limit: Option<u64>,
    /// Memory + swap limit, bytes (v1 memory.memsw.limit_in_bytes, v2 memory.max +
    /// memory.swap.max); 0 for no limit.
    pub memory_swap_limit: Option<u64>,
}

/// A limit file: a number, or `max` / the v1 "unlimited" value, which read as 0.
fn read_limit(p: &Path) -> Option<u64> {
    let text = fs::read_to_string(p).ok()?;
    limit_value(text.trim())
}

fn limit_value(v: &str) -> Option<u64> {
    if v == "max" {
        return Some(0);
    }
    let n: u64 = v.parse().ok()?;
    Some(if n >= V1_NO_LIMIT { 0 } else { n })
}

/// The pids of a cgroup.procs file.
fn read_procs(p: &Path) -> Vec<i32> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `MAJ:MIN` as numbers.
fn dev_numbers(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The device entry of `list` for `major:minor`, appended when new.
fn device(list: &mut Vec<IoDevice>, major: u64, minor: u64) -> &mut IoDevice {
    let i = match list
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(i) => i,
        None => {
            list.push(IoDevice {
                major,
                minor,
                ..Default::default()
            });
            list.len() - 1
        }
    };
    &mut list[i]
}

/// v2 io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
pub(crate) fn parse_io_stat(text: &str) -> Vec<IoDevice> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some((major, minor)) = parts.next().and_then(dev_numbers) else {
            continue;
        };
        let d = device(&mut out, major, minor);
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
    }
    out
}

/// v1 blkio.throttle.io_service_bytes_recursive (`bytes`) or io_serviced_recursive
/// (operations): `MAJ:MIN Read N` lines (and `Write`, `Sync`, ..., `Total`).
pub(crate) fn parse_blkio(text: &str, bytes: bool, out: &mut Vec<IoDevice>) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, op, value] = f[..] else { continue };
        let (Some((major, minor)), Ok(value)) = (dev_numbers(dev), value.parse::<u64>()) else {
            continue;
        };
        let d = device(out, major, minor);
        match (op, bytes) {
            ("Read", true) => d.read_bytes = value,
            ("Write", true) => d.write_bytes = value,
            ("Read", false) => d.reads = value,
            ("Write", false) => d.writes = value,
            _ => {}
        }
    }
}

/// cpu.weight (1..10000) back to cpu.shares (2..262144), inverting runc's conversion.
fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + (weight - 1) * 262142 / 9999
}

impl Layout {
    /// Reads [`CgroupDetail`] of cgroup `path`.
    pub fn detail(&self, path: &str) -> Result<CgroupDetail> {
        let rel = relative(path)?;
        let mut d = CgroupDetail {
            base: self.stats(path)?,
            ..Default::default()
        };
        match self {
            Layout::V1 { hierarchies } => read_v1(hierarchies, &rel, &mut d),
            Layout::V2 { root } => read_v2(&root.join(&rel), &mut d),
        }
        Ok(d)
    }
}

fn read_v1(hierarchies: &[PathBuf], rel: &Path, d: &mut CgroupDetail) {
    let dir = |ctrl: &str| super::v1_hierarchy(hierarchies, ctrl).map(|h| h.join(rel));
    if let Some(cpuacct) = dir("cpuacct")
        && let Ok(stat) = fs::read_to_string(cpuacct.join("cpuacct.stat"))
    {
        let ns = |k| stat_field(&stat, k).map(|t| t * (1_000_000_000 / USER_HZ));
        d.cpu_user_ns = ns("user");
        d.cpu_system_ns = ns("system");
    }
    if let Some(cpu) = dir("cpu") {
        if let Ok(stat) = fs::read_to_string(cpu.join("cpu.stat")) {
            d.cfs_periods = stat_field(&stat, "nr_periods");
            d.cfs_throttled_periods = stat_field(&stat, "nr_throttled");
            d.cfs_throttled_ns = stat_field(&stat, "throttled_time");
        }
        d.cpu_period = read_u64(&cpu.join("cpu.cfs_period_us"));
        d.cpu_shares = read_u64(&cpu.join("cpu.shares"));
    }
    if let Some(mem) = dir("memory") {
        if let Ok(stat) = fs::read_to_string(mem.join("memory.stat")) {
            d.memory_cache = stat_field(&stat, "total_cache");
            d.memory_mapped_file = stat_field(&stat, "total_mapped_file");
            d.memory_active_file = stat_field(&stat, "total_active_file");
            d.memory_inactive_file = stat_field(&stat, "total_inactive_file");
            // Present only with swap accounting; without it no swap is charged.
            d.memory_swap = Some(stat_field(&stat, "total_swap").unwrap_or(0));
        }
        d.memory_kernel = read_u64(&mem.join("memory.kmem.usage_in_bytes"));
        d.memory_max_usage = read_u64(&mem.join("memory.max_usage_in_bytes"));
        d.memory_failcnt = read_u64(&mem.join("memory.failcnt"));
        let oom = mem.join("memory.oom_control");
        d.oom_kills = oom.exists().then(|| super::oom_kills(&oom));
        d.memory_limit = read_limit(&mem.join("memory.limit_in_bytes"));
        d.memory_swap_limit = read_limit(&mem.join("memory.memsw.limit_in_bytes"));
    }
    if let Some(pids) = dir("pids") {
        d.threads = read_u64(&pids.join("pids.current"));
        d.threads_max = read_limit(&pids.join("pids.max"));
    }
    if let Some(blkio) = dir("blkio") {
        for (file, bytes) in [
            ("blkio.throttle.io_service_bytes_recursive", true),
            ("blkio.throttle.io_serviced_recursive", false),
        ] {
            if let Ok(text) = fs::read_to_string(blkio.join(file)) {
                parse_blkio(&text, bytes, &mut d.io);
            }
        }
    }
    d.procs = hierarchies
        .iter()
        .map(|h| h.join(rel).join("cgroup.procs"))
        .find(|p| p.exists())
        .map(|p| read_procs(&p))
        .unwrap_or_default();
}

fn read_v2(dir: &Path, d: &mut CgroupDetail) {
    if let Ok(stat) = fs::read_to_string(dir.join("cpu.stat")) {
        let ns = |k| stat_field(&stat, k).map(|u| u * 1000);
        d.cpu_user_ns = ns("user_usec");
        d.cpu_system_ns = ns("system_usec");
        d.cfs_periods = stat_field(&stat, "nr_periods");
        d.cfs_throttled_periods = stat_field(&stat, "nr_throttled");
        d.cfs_throttled_ns = ns("throttled_usec");
    }
    if let Ok(max) = fs::read_to_string(dir.join("cpu.max")) {
        d.cpu_period = max.split_whitespace().nth(1).and_then(|p| p.parse().ok());
    }
    d.cpu_shares = read_u64(&dir.join("cpu.weight")).map(weight_to_shares);
    if let Ok(stat) = fs::read_to_string(dir.join("memory.stat")) {
        d.memory_cache = stat_field(&stat, "file");
        d.memory_mapped_file = stat_field(&stat, "file_mapped");
        d.memory_active_file = stat_field(&stat, "active_file");
        d.memory_inactive_file = stat_field(&stat, "inactive_file");
        d.memory_kernel = stat_field(&stat, "kernel").or_else(|| {
            let stack = stat_field(&stat, "kernel_stack")?;
            Some(stack + stat_field(&stat, "slab").unwrap_or(0))
        });
    }
    d.memory_max_usage = read_u64(&dir.join("memory.peak"));
    d.memory_swap = read_u64(&dir.join("memory.swap.current"));
    if let Ok(events) = fs::read_to_string(dir.join("memory.events")) {
        d.memory_failcnt = stat_field(&events, "max");
        d.oom_kills = stat_field(&events, "oom_kill");
    }
    d.memory_limit = read_limit(&dir.join("memory.max"));
    d.memory_swap_limit = match (d.memory_limit, read_limit(&dir.join("memory.swap.max"))) {
        (Some(0), _) | (_, Some(0)) => Some(0),
        (Some(m), Some(s)) => Some(m + s),
        (m, None) => m,
        (None, Some(_)) => None,
    };
    d.threads = d.base.pids;
    d.threads_max = read_limit(&dir.join("pids.max"));
    if let Ok(text) = fs::read_to_string(dir.join("io.stat")) {
        d.io = parse_io_stat(&text);
    }
    d.procs = read_procs(&dir.join("cgroup.procs"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (f, text) in files {
            fs::write(dir.join(f), text).unwrap();
        }
    }

    #[test]
    fn v2_detail_from_fixture_files() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("kubepods/pod1/c1");
        write(
            &d,
            &[
                (
                    "cpu.stat",
                    "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 1500000\n",
                ),
                ("cpu.max", "20000 100000\n"),
                ("cpu.weight", "39\n"),
                ("memory.current", "10485760\n"),
                ("memory.max", "67108864\n"),
                ("memory.swap.max", "max\n"),
                ("memory.swap.current", "4096\n"),
                ("memory.peak", "20000000\n"),
                (
                    "memory.stat",
                    "anon 4096\nfile 8192\nkernel 12288\nfile_mapped 2048\nactive_file 1024\ninactive_file 1048576\npgfault 42\npgmajfault 3\n",
                ),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n",
                ),
                ("pids.current", "3\n"),
                ("pids.max", "max\n"),
                ("cgroup.procs", "10\n11\n"),
                (
                    "io.stat",
                    "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
                ),
            ],
        );
        let l = Layout::V2 {
            root: root.path().to_path_buf(),
        };
        let x = l.detail("/kubepods/pod1/c1").unwrap();
        assert_eq!(x.base, l.stats("/kubepods/pod1/c1").unwrap());
        assert_eq!(x.base.cpu_usage_ns, Some(2_500_000_000));
        assert_eq!(
            (x.cpu_user_ns, x.cpu_system_ns),
            (Some(2_000_000_000), Some(500_000_000))
        );
        assert_eq!(
            (x.cfs_periods, x.cfs_throttled_periods, x.cfs_throttled_ns),
            (Some(10), Some(3), Some(1_500_000_000))
        );
        assert_eq!((x.cpu_period, x.cpu_shares), (Some(100_000), Some(998)));
        assert_eq!(x.memory_cache, Some(8192));
        assert_eq!(x.memory_mapped_file, Some(2048));
        assert_eq!(x.memory_kernel, Some(12288));
        assert_eq!(x.memory_max_usage, Some(20_000_000));
        assert_eq!(x.memory_swap, Some(4096));
        assert_eq!((x.memory_failcnt, x.oom_kills), (Some(7), Some(1)));
        assert_eq!(x.memory_limit, Some(64 << 20));
        assert_eq!(x.memory_swap_limit, Some(0), "swap.max max: no limit");
        assert_eq!((x.threads, x.threads_max), (Some(3), Some(0)));
        assert_eq!(x.procs, vec![10, 11]);
        assert_eq!(x.io.len(), 2);
        assert_eq!(
            x.io[0],
            IoDevice {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            }
        );
        // An older kernel: no `kernel` line, no memory.peak.
        fs::write(d.join("memory.stat"), "kernel_stack 100\nslab 900\n").unwrap();
        fs::remove_file(d.join("memory.peak")).unwrap();
        let x = l.detail("/kubepods/pod1/c1").unwrap();
        assert_eq!((x.memory_kernel, x.memory_max_usage), (Some(1000), None));
        // A cgroup that does not exist reads as empty.
        assert_eq!(l.detail("/kubepods/none").unwrap(), CgroupDetail::default());
    }

    #[test]
    fn v1_detail_from_fixture_files() {
        let root = tempfile::tempdir().unwrap();
        let h = |c: &str| root.path().join(c);
        write(
            &h("cpu,cpuacct").join("pod/c"),
            &[
                ("cpuacct.usage", "3000000000\n"),
                ("cpuacct.stat", "user 250\nsystem 50\n"),
                (
                    "cpu.stat",
                    "nr_periods 5\nnr_throttled 1\nthrottled_time 2000\n",
                ),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.shares", "1024\n"),
                ("cgroup.procs", "7\n"),
            ],
        );
        write(
            &h("memory").join("pod/c"),
            &[
                ("memory.usage_in_bytes", "2000000\n"),
                ("memory.max_usage_in_bytes", "3000000\n"),
                ("memory.limit_in_bytes", "67108864\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.failcnt", "4\n"),
                ("memory.kmem.usage_in_bytes", "65536\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
                (
                    "memory.stat",
                    "cache 1\ntotal_cache 600000\ntotal_rss 100\ntotal_mapped_file 300\ntotal_active_file 5\ntotal_inactive_file 500000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
                ),
            ],
        );
        write(
            &h("pids").join("pod/c"),
            &[("pids.current", "2\n"), ("pids.max", "1024\n")],
        );
        write(
            &h("blkio").join("pod/c"),
            &[
                (
                    "blkio.throttle.io_service_bytes_recursive",
                    "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Total 12288\nTotal 12288\n",
                ),
                (
                    "blkio.throttle.io_serviced_recursive",
                    "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
                ),
            ],
        );
        let l = Layout::V1 {
            hierarchies: vec![h("cpu,cpuacct"), h("memory"), h("pids"), h("blkio")],
        };
        let x = l.detail("/pod/c").unwrap();
        assert_eq!(x.base, l.stats("/pod/c").unwrap());
        assert_eq!(x.base.cpu_usage_ns, Some(3_000_000_000));
        assert_eq!(
            (x.cpu_user_ns, x.cpu_system_ns),
            (Some(2_500_000_000), Some(500_000_000))
        );
        assert_eq!(
            (x.cfs_periods, x.cfs_throttled_periods, x.cfs_throttled_ns),
            (Some(5), Some(1), Some(2000))
        );
        assert_eq!((x.cpu_period, x.cpu_shares), (Some(100_000), Some(1024)));
        assert_eq!(x.memory_cache, Some(600_000));
        assert_eq!(x.memory_mapped_file, Some(300));
        assert_eq!(x.memory_kernel, Some(65536));
        assert_eq!(x.memory_max_usage, Some(3_000_000));
        assert_eq!(
            x.memory_swap,
            Some(0),
            "no swap accounting: nothing charged"
        );
        assert_eq!((x.memory_failcnt, x.oom_kills), (Some(4), Some(2)));
        assert_eq!(x.memory_limit, Some(64 << 20));
        assert_eq!(x.memory_swap_limit, Some(0), "the v1 unlimited value is 0");
        assert_eq!((x.threads, x.threads_max), (Some(2), Some(1024)));
        assert_eq!(x.procs, vec![7]);
        assert_eq!(
            x.io,
            vec![IoDevice {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            }]
        );
    }

    #[test]
    fn limits_and_weights() {
        assert_eq!(limit_value("max"), Some(0));
        assert_eq!(limit_value("9223372036854771712"), Some(0));
        assert_eq!(limit_value("1048576"), Some(1 << 20));
        assert_eq!(limit_value("junk"), None);
        // runc: shares 1024 -> weight 39 (1 + 1022 * 9999 / 262142); the way back is lossy.
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10000), 262144);
        assert_eq!(weight_to_shares(39), 998);
    }
}
