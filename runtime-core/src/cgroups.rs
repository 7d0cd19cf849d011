//! Pod cgroups with the cgroupfs driver, on cgroup v1 (including the hybrid layout) and
//! v2. berth creates only the directories that do not exist yet, remembers exactly those,
//! and removes only those: cgroups that kubelet or anyone else made are never touched.
//! Container cgroups below the pod's are created and removed by the OCI runtime.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

mod detail;
pub mod limits;
pub mod psi;
pub use detail::{CgroupDetail, IoDevice};

/// The cgroup filesystem layout of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: one mount per hierarchy (plus, in the hybrid layout, the controller-less
    /// unified mount, where runc also places containers).
    V1 {
        /// Mount points of the v1 hierarchies.
        hierarchies: Vec<PathBuf>,
    },
    /// cgroup v2 mounted at `root`.
    V2 {
        /// The unified hierarchy's mount point.
        root: PathBuf,
    },
}

/// Controllers berth enables for pods on v2 when the parent offers them.
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

impl Layout {
    /// Detects the host's layout from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", Path::new("/proc/self/mountinfo"), e))?;
        Layout::from_mountinfo(&info)
    }

    /// Parses a mountinfo text. Any v1 hierarchy means v1 (hybrid hosts mount an empty
    /// cgroup2 at /sys/fs/cgroup/unified); otherwise a cgroup2 mount means v2.
    pub fn from_mountinfo(info: &str) -> Result<Layout> {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(crate::sandbox::ns::unescape_mountinfo(m)),
                None => continue,
            };
            match right.split(' ').next() {
                Some("cgroup") if !v1.contains(&mountpoint) => v1.push(mountpoint),
                Some("cgroup2") if v2.is_none() => v2 = Some(mountpoint),
                _ => {}
            }
        }
        if !v1.is_empty() {
            // In the hybrid layout runc also creates container cgroups in the unified
            // hierarchy, so the pod's directory is made (and removed) there as well.
            v1.extend(v2);
            return Ok(Layout::V1 { hierarchies: v1 });
        }
        match v2 {
            Some(root) => Ok(Layout::V2 { root }),
            None => Err(Error::Internal(
                "no cgroup filesystem is mounted".to_string(),
            )),
        }
    }

    /// Creates the cgroup `path` (e.g. `/kubepods/besteffort/pod<uid>`) in every hierarchy
    /// and returns the directories this call created, parents first.
    pub fn create(&self, path: &str) -> Result<Vec<PathBuf>> {
        let rel = relative(path)?;
        let mut created = Vec::new();
        let result = match self {
            Layout::V1 { hierarchies } => hierarchies
                .iter()
                .try_for_each(|h| create_v1(h, &rel, &mut created)),
            Layout::V2 { root } => create_v2(root, &rel, &mut created),
        };
        if let Err(e) = result {
            remove(&created);
            return Err(e);
        }
        Ok(created)
    }

    /// The directories of cgroup `path` in every hierarchy.
    pub fn dirs(&self, path: &str) -> Result<Vec<PathBuf>> {
        let rel = relative(path)?;
        Ok(match self {
            Layout::V1 { hierarchies } => hierarchies.iter().map(|h| h.join(&rel)).collect(),
            Layout::V2 { root } => vec![root.join(&rel)],
        })
    }

    /// The names of the cgroups directly below `path`, in any hierarchy (none when `path`
    /// is invalid or does not exist).
    pub fn children(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs(path)
            .unwrap_or_default()
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The file reporting OOM kills of cgroup `path`: v1 `memory.oom_control`, v2
    /// `memory.events` (both carry an `oom_kill N` line).
    pub fn oom_file(&self, path: &str) -> Result<Option<PathBuf>> {
        let rel = relative(path)?;
        Ok(match self {
            Layout::V1 { hierarchies } => hierarchies
                .iter()
                .find(|h| {
                    h.file_name()
                        .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == "memory"))
                })
                .map(|h| h.join(&rel).join("memory.oom_control")),
            Layout::V2 { root } => Some(root.join(&rel).join("memory.events")),
        })
    }
}

/// A cgroup path as a relative path with no `..`, so it cannot leave the hierarchy.
fn relative(path: &str) -> Result<PathBuf> {
    let out = relative_or_root(path)?;
    if out.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "cgroup path {path:?} names the root cgroup"
        )));
    }
    Ok(out)
}

/// The directory of cgroup `path` below the hierarchy mounted at `mount`; `/` is the root
/// cgroup, `..` is refused.
pub(crate) fn dir_under(mount: &Path, path: &str) -> Result<PathBuf> {
    let rel = relative_or_root(path)?;
    Ok(if rel.as_os_str().is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

/// [`relative`], with the root cgroup as the empty path.
fn relative_or_root(path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "cgroup path {path:?} must not contain '..'"
                )));
            }
        }
    }
    Ok(out)
}

fn mkdir_new(dir: &Path, created: &mut Vec<PathBuf>) -> Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create cgroup", dir, e)),
    }
}

fn create_v1(hierarchy: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let is_cpuset = hierarchy
        .file_name()
        .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == "cpuset"));
    let mut cur = hierarchy.to_path_buf();
    for part in rel.components() {
        let parent = cur.clone();
        cur.push(part);
        if mkdir_new(&cur, created)? && is_cpuset {
            // A new v1 cpuset starts with no CPUs or memory nodes; no task can join it
            // until they are copied from the parent.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
                if !v.trim().is_empty() {
                    fs::write(cur.join(f), v.trim())
                        .map_err(|e| Error::io("write", &cur.join(f), e))?;
                }
            }
        }
    }
    Ok(())
}

fn create_v2(root: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut cur = root.to_path_buf();
    for part in rel.components() {
        enable_controllers(&cur)?;
        cur.push(part);
        mkdir_new(&cur, created)?;
    }
    Ok(())
}

/// Enables in `dir`'s subtree the pod controllers that `dir` itself has.
fn enable_controllers(dir: &Path) -> Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    fs::write(&file, missing.join(" ")).map_err(|e| Error::io("write", &file, e))
}

/// Removes directories `create` made, deepest first; busy or vanished ones are skipped.
pub fn remove(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %dir.display(), error = %e, "remove cgroup"),
        }
    }
}

/// Reads the `oom_kill` counter from a v1 memory.oom_control or v2 memory.events file.
pub fn oom_kills(file: &Path) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn detects_layouts() {
        match Layout::from_mountinfo(HYBRID).unwrap() {
            Layout::V1 { hierarchies } => assert_eq!(hierarchies.len(), 4),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Layout::from_mountinfo(UNIFIED).unwrap(),
            Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );
        assert!(Layout::from_mountinfo("").is_err());
    }

    #[test]
    fn rejects_escaping_paths() {
        let l = Layout::V2 {
            root: PathBuf::from("/nonexistent"),
        };
        assert!(l.create("/a/../../etc").is_err());
        assert!(l.create("/").is_err());
    }

    #[test]
    fn v2_fixture_creates_enables_and_removes_only_new_dirs() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "cpu\n").unwrap();
        // kubelet's parent exists already and must survive removal.
        let kubepods = root.path().join("kubepods");
        fs::create_dir(&kubepods).unwrap();
        fs::write(kubepods.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(kubepods.join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::V2 {
            root: root.path().to_path_buf(),
        };
        let created = layout.create("/kubepods/pod1").unwrap();
        assert_eq!(created, vec![kubepods.join("pod1")]);
        let sc = fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(sc, "+cpuset +io +memory +pids");
        let sc = fs::read_to_string(kubepods.join("cgroup.subtree_control")).unwrap();
        assert_eq!(sc, "+cpu +memory +pids");
        assert_eq!(
            layout.oom_file("/kubepods/pod1").unwrap().unwrap(),
            kubepods.join("pod1/memory.events")
        );
        remove(&created);
        assert!(!kubepods.join("pod1").exists());
        assert!(kubepods.exists());
    }

    #[test]
    fn children_are_the_union_over_hierarchies() {
        let d = tempfile::tempdir().unwrap();
        let (cpu, mem) = (d.path().join("cpu"), d.path().join("memory"));
        fs::create_dir_all(cpu.join("berth/a")).unwrap();
        fs::create_dir_all(cpu.join("berth/b")).unwrap();
        fs::create_dir_all(mem.join("berth/b")).unwrap();
        fs::create_dir_all(mem.join("berth/c")).unwrap();
        fs::write(mem.join("berth/memory.limit_in_bytes"), "1").unwrap();
        let layout = Layout::V1 {
            hierarchies: vec![cpu, mem],
        };
        assert_eq!(layout.children("/berth"), ["a", "b", "c"]);
        assert!(layout.children("/missing").is_empty());
        assert!(layout.children("/../etc").is_empty());
    }

    #[test]
    fn oom_counter_parses_both_formats() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("oom_control");
        fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&v1), 2);
        let v2 = d.path().join("events");
        fs::write(
            &v2,
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v2), 1);
        assert_eq!(oom_kills(&d.path().join("missing")), 0);
    }

    #[test]
    fn v1_host_creates_and_removes_own_cgroup() {
        let layout = Layout::detect().unwrap();
        let Layout::V1 { .. } = layout else {
            println!("skipping: host cgroups are not v1");
            return;
        };
        let name = format!("/berth-test-{}", std::process::id());
        let created = layout.create(&format!("{name}/pod")).unwrap();
        assert!(!created.is_empty());
        for d in layout.dirs(&format!("{name}/pod")).unwrap() {
            assert!(d.is_dir(), "{}", d.display());
        }
        let cpuset = PathBuf::from("/sys/fs/cgroup/cpuset")
            .join(&name[1..])
            .join("pod/cpuset.cpus");
        if cpuset.exists() {
            assert!(!fs::read_to_string(&cpuset).unwrap().trim().is_empty());
        }
        remove(&created);
        for d in layout.dirs(&name).unwrap() {
            assert!(!d.exists(), "{}", d.display());
        }
    }
}

impl Layout {
    /// SIGKILLs every process of cgroup `path`: v2 `cgroup.kill` when the kernel has it,
    /// else each pid of `cgroup.procs` (repeated, for processes forked meanwhile). `Ok(false)`
    /// when the cgroup does not exist.
    pub fn kill_all(&self, path: &str) -> Result<bool> {
        let rel = relative(path)?;
        let dir = match self {
            Layout::V1 { hierarchies } => hierarchies
                .iter()
                .map(|h| h.join(&rel))
                .find(|d| d.join("cgroup.procs").exists()),
            Layout::V2 { root } => Some(root.join(&rel)),
        };
        let Some(dir) = dir.filter(|d| d.join("cgroup.procs").exists()) else {
            return Ok(false);
        };
        if matches!(self, Layout::V2 { .. }) && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            return Ok(true);
        }
        // A second pass catches processes forked while the first one was signalling.
        for _ in 0..2 {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(true)
    }
}

/// Resource usage of one cgroup, read from the v1 or v2 interface files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time, ns.
    pub cpu_usage_ns: Option<u64>,
    /// Memory in use, bytes (v1 usage_in_bytes, v2 memory.current).
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages, as kubelet computes the working set.
    pub memory_working_set: Option<u64>,
    /// Anonymous memory (v1 total_rss, v2 anon).
    pub memory_rss: Option<u64>,
    /// Memory limit, when one is set.
    pub memory_limit: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Processes in the cgroup (pids.current).
    pub pids: Option<u64>,
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line of a stat file.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The v1 hierarchy that has controller `ctrl` (mounted as `cpu,cpuacct` or alone).
fn v1_hierarchy<'a>(hierarchies: &'a [PathBuf], ctrl: &str) -> Option<&'a PathBuf> {
    hierarchies.iter().find(|h| {
        h.file_name()
            .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == ctrl))
    })
}

/// Limits above this are "no limit" on v1 (the kernel reports PAGE_COUNTER_MAX pages).
const V1_NO_LIMIT: u64 = 1 << 62;

impl Layout {
    /// Reads the usage of cgroup `path`; missing files leave fields unset (a container
    /// that is not running has no cgroup yet).
    pub fn stats(&self, path: &str) -> Result<CgroupStats> {
        let rel = relative(path)?;
        let mut s = CgroupStats::default();
        match self {
            Layout::V1 { hierarchies } => {
                let find = |ctrl: &str| v1_hierarchy(hierarchies, ctrl);
                if let Some(h) = find("cpuacct") {
                    s.cpu_usage_ns = read_u64(&h.join(&rel).join("cpuacct.usage"));
                }
                if let Some(h) = find("memory") {
                    let dir = h.join(&rel);
                    s.memory_usage = read_u64(&dir.join("memory.usage_in_bytes"));
                    s.memory_limit =
                        read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < V1_NO_LIMIT);
                    if let Ok(stat) = fs::read_to_string(dir.join("memory.stat")) {
                        let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
                        s.memory_working_set = s.memory_usage.map(|u| u.saturating_sub(inactive));
                        s.memory_rss = stat_field(&stat, "total_rss");
                        s.page_faults = stat_field(&stat, "total_pgfault");
                        s.major_page_faults = stat_field(&stat, "total_pgmajfault");
                    }
                }
                if let Some(h) = find("pids") {
                    s.pids = read_u64(&h.join(&rel).join("pids.current"));
                }
            }
            Layout::V2 { root } => {
                let dir = root.join(&rel);
                if let Ok(cpu) = fs::read_to_string(dir.join("cpu.stat")) {
                    s.cpu_usage_ns = stat_field(&cpu, "usage_usec").map(|u| u * 1000);
                }
                s.memory_usage = read_u64(&dir.join("memory.current"));
                s.memory_limit = read_u64(&dir.join("memory.max"));
                if let Ok(stat) = fs::read_to_string(dir.join("memory.stat")) {
                    let inactive = stat_field(&stat, "inactive_file").unwrap_or(0);
                    s.memory_working_set = s.memory_usage.map(|u| u.saturating_sub(inactive));
                    s.memory_rss = stat_field(&stat, "anon");
                    s.page_faults = stat_field(&stat, "pgfault");
                    s.major_page_faults = stat_field(&stat, "pgmajfault");
                }
                s.pids = read_u64(&dir.join("pids.current"));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn v2_stats_from_fixture_files() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("kubepods/pod1/c1");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "10485760\n").unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(
            d.join("memory.stat"),
            "anon 4096\nfile 8192\ninactive_file 1048576\npgfault 42\npgmajfault 3\n",
        )
        .unwrap();
        fs::write(d.join("pids.current"), "2\n").unwrap();
        let l = Layout::V2 {
            root: root.path().to_path_buf(),
        };
        let s = l.stats("/kubepods/pod1/c1").unwrap();
        assert_eq!(s.cpu_usage_ns, Some(1_500_000));
        assert_eq!(s.memory_usage, Some(10_485_760));
        assert_eq!(s.memory_working_set, Some(10_485_760 - 1_048_576));
        assert_eq!(s.memory_rss, Some(4096));
        assert_eq!(s.memory_limit, None);
        assert_eq!(
            (s.page_faults, s.major_page_faults, s.pids),
            (Some(42), Some(3), Some(2))
        );
        // A cgroup that does not exist yet reads as empty.
        assert_eq!(l.stats("/kubepods/none").unwrap(), CgroupStats::default());
    }

    #[test]
    fn v1_stats_from_fixture_files() {
        let root = tempfile::tempdir().unwrap();
        let mem = root.path().join("memory/pod/c");
        let cpu = root.path().join("cpuacct/pod/c");
        fs::create_dir_all(&mem).unwrap();
        fs::create_dir_all(&cpu).unwrap();
        fs::write(cpu.join("cpuacct.usage"), "123456\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "2000000\n").unwrap();
        fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(mem.join("memory.stat"), "rss 10\ntotal_rss 100\ntotal_inactive_file 500000\ntotal_pgfault 7\ntotal_pgmajfault 1\n").unwrap();
        let l = Layout::V1 {
            hierarchies: vec![root.path().join("memory"), root.path().join("cpuacct")],
        };
        let s = l.stats("/pod/c").unwrap();
        assert_eq!(s.cpu_usage_ns, Some(123_456));
        assert_eq!(s.memory_working_set, Some(1_500_000));
        assert_eq!(s.memory_rss, Some(100));
        assert_eq!(s.memory_limit, None);
    }
}
