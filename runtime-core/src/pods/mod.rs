//! Pod sandboxes and their containers: the state berthd keeps, the lifecycle operations
//! the CRI RuntimeService maps onto, and recovery after a restart.
//!
//! Each pod and container is an [`Entry`]: an operation lock serializing the slow
//! lifecycle calls on that object, and a data lock held only for reads and updates, so
//! list and status calls never wait behind a StopContainer's grace period.

pub mod container;
mod exitwatch;
mod lists;
mod portforward;
pub mod records;
pub mod sandbox;
pub mod stats;
mod streaming;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cgroups::Layout;
use crate::config::Config;
use crate::image::ImageService;
use crate::ociruntime::OciRuntime;
use crate::{Error, Result};

use records::{ContainerRecord, SandboxRecord};

/// Counts the changes of anything a list call shows (records added, updated or removed,
/// exits learned), so that a list answer built at one count is known to be still right
/// while the count has not moved. Over-counting only costs a rebuild.
#[derive(Clone, Default)]
pub(crate) struct Changes(Arc<AtomicU64>);

impl Changes {
    /// Records a change; call it after the change is made.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// The count now; read it before reading what it guards.
    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A pod or container: an operation lock and the data.
pub struct Entry<T> {
    op: tokio::sync::Mutex<()>,
    data: Mutex<Slot<T>>,
    changes: Changes,
}

/// An entry's data and its cached encodings.
struct Slot<T> {
    value: T,
    /// The protobuf encodings calls send for this entry (see [`Encoding`]), each built on
    /// first use and all dropped by every update.
    encoded: [Option<Vec<u8>>; 2],
}

/// The encodings an [`Entry`] keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Encoding {
    /// Its item in ListPodSandbox or ListContainers.
    ListItem = 0,
    /// The parts of its ContainerStatus that only a record update changes.
    Status = 1,
}

impl<T: Clone> Entry<T> {
    fn new(v: T, changes: &Changes) -> Arc<Entry<T>> {
        Arc::new(Entry {
            op: tokio::sync::Mutex::new(()),
            data: Mutex::new(Slot {
                value: v,
                encoded: [None, None],
            }),
            changes: changes.clone(),
        })
    }

    /// A copy of the data.
    pub fn get(&self) -> T {
        lock(&self.data).value.clone()
    }

    /// Runs `f` on the data without copying it (the list calls' hot path).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&lock(&self.data).value)
    }

    /// Runs `f` on the data and its encoding `which`, which `encode` builds when the data
    /// changed since the last call.
    pub(crate) fn with_encoded<R>(
        &self,
        which: Encoding,
        encode: impl FnOnce(&T) -> Vec<u8>,
        f: impl FnOnce(&T, &[u8]) -> R,
    ) -> R {
        let mut slot = lock(&self.data);
        let slot = &mut *slot;
        let bytes = slot.encoded[which as usize].get_or_insert_with(|| encode(&slot.value));
        f(&slot.value, bytes)
    }

    fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let out = {
            let mut slot = lock(&self.data);
            slot.encoded = [None, None];
            f(&mut slot.value)
        };
        self.changes.bump();
        out
    }
}

/// Pods or containers by ID. Entries are added and removed only through it, so that every
/// such change is counted in [`Changes`].
pub(crate) struct Table<T> {
    map: Mutex<HashMap<String, Arc<Entry<T>>>>,
    changes: Changes,
}

impl<T: Clone> Table<T> {
    fn new(changes: &Changes) -> Table<T> {
        Table {
            map: Mutex::new(HashMap::new()),
            changes: changes.clone(),
        }
    }

    /// Adds (or replaces) `id`.
    pub(crate) fn insert(&self, id: String, value: T) {
        let entry = Entry::new(value, &self.changes);
        lock(&self.map).insert(id, entry);
        self.changes.bump();
    }

    /// Removes `id`.
    pub(crate) fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
        self.changes.bump();
    }

    /// The entries, read-only, locked while the guard lives.
    pub(crate) fn read(&self) -> TableRead<'_, T> {
        TableRead(lock(&self.map))
    }
}

/// A read-only view of a [`Table`].
pub(crate) struct TableRead<'a, T>(std::sync::MutexGuard<'a, HashMap<String, Arc<Entry<T>>>>);

impl<T> std::ops::Deref for TableRead<'_, T> {
    type Target = HashMap<String, Arc<Entry<T>>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Unfiltered list answers, kept with the change count they were built at (see
/// `lists.rs`).
#[derive(Default)]
pub(crate) struct ListSnapshots {
    pub(crate) sandboxes: Kept,
    pub(crate) containers: Kept,
}

/// A kept answer and the change count it was built at.
pub(crate) type Kept = Option<(u64, Vec<u8>)>;

/// Settings of the pod service.
#[derive(Debug, Clone)]
pub struct PodServiceOptions {
    /// Persistent root.
    pub root: PathBuf,
    /// Runtime state directory.
    pub state: PathBuf,
    /// Runtime handlers by name.
    pub handlers: HashMap<String, OciRuntime>,
    /// Handler used for pods that name none.
    pub default_handler: String,
    /// The monitor binary.
    pub monitor_binary: PathBuf,
    /// Cgroup parent for pods without one.
    pub default_cgroup_parent: String,
    /// Whether the cgroup warm-up runs (see `cgroupwarm`).
    pub cgroup_warmup: bool,
    /// CNI settings.
    pub cni: cni::CniOptions,
}

impl PodServiceOptions {
    /// Options from the daemon configuration; `exe_dir` is where berthd lives (the monitor
    /// binary is looked for next to it).
    pub fn from_config(config: &Config, exe_dir: &Path) -> Result<PodServiceOptions> {
        let mut handlers = HashMap::new();
        for (name, h) in &config.runtime.handlers {
            handlers.insert(
                name.clone(),
                OciRuntime {
                    name: name.clone(),
                    path: resolve_binary(&h.path),
                    root: config.state.join("runtime").join(name),
                },
            );
        }
        Ok(PodServiceOptions {
            root: config.root.clone(),
            state: config.state.clone(),
            handlers,
            default_handler: config.runtime.default_handler.clone(),
            monitor_binary: config
                .runtime
                .monitor_path
                .clone()
                .unwrap_or_else(|| exe_dir.join("berth-monitor")),
            default_cgroup_parent: config.runtime.default_cgroup_parent.clone(),
            cgroup_warmup: config.runtime.cgroup_warmup,
            cni: cni::CniOptions {
                conf_dir: config.cni.conf_dir.clone(),
                bin_dirs: config.cni.bin_dirs.clone(),
                cache_dir: config.root.join("cni").join("results"),
                plugin_timeout: std::time::Duration::from_secs(config.cni.plugin_timeout_secs),
            },
        })
    }
}

/// Looks a bare binary name up in PATH (and the sbin directories runc lives in).
fn resolve_binary(p: &Path) -> PathBuf {
    if p.is_absolute() || p.components().count() > 1 {
        return p.to_path_buf();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/sbin",
            "/sbin",
            "/usr/local/bin",
            "/usr/bin",
            "/bin",
        ])
        .map(|d| Path::new(d).join(p))
        .find(|c| c.is_file())
        .unwrap_or_else(|| p.to_path_buf())
}

pub(crate) struct Inner {
    pub(crate) opts: PodServiceOptions,
    pub(crate) images: ImageService,
    pub(crate) cgroups: Layout,
    pub(crate) sandboxes: Table<SandboxRecord>,
    pub(crate) containers: Table<ContainerRecord>,
    /// Counts what list calls show; shared by the tables, their entries and the exit watch.
    pub(crate) changes: Changes,
    /// The last unfiltered list answers.
    pub(crate) lists: Mutex<ListSnapshots>,
    /// Reserved pod and container names, so concurrent creates cannot both take one.
    pub(crate) names: Mutex<HashSet<String>>,
    /// The lowest oom_score_adj berthd may give (no CAP_SYS_RESOURCE: its own value).
    pub(crate) min_oom_score_adj: i64,
    /// Pod networking.
    pub(crate) cni: cni::Cni,
    /// The node's pod CIDR from UpdateRuntimeConfig, passed as `ipRanges`.
    pub(crate) pod_cidr: Mutex<Option<String>>,
    /// Samples for CPU rates and cached disk usage.
    pub(crate) stats: stats::StatsCache,
    /// Exit statuses already read from the monitors' exit files.
    pub(crate) exits: Mutex<HashMap<String, crate::monitor::ExitInfo>>,
    /// Which running containers have certainly not exited yet.
    pub(crate) exit_watch: exitwatch::ExitWatch,
    /// Deferred fsyncs of records whose loss in a machine crash is harmless.
    pub(crate) sync: crate::fsutil::SyncQueue,
    /// Starts the kernel's grace period of a cgroup move before the OCI runtime's move.
    pub(crate) warmer: crate::cgroupwarm::JoinWarmer,
}

/// Runs pods and containers.
#[derive(Clone)]
pub struct PodService {
    pub(crate) inner: Arc<Inner>,
}

impl PodService {
    /// Opens the service: loads records, reconnects to monitors, and repairs what a crash
    /// left half done.
    pub async fn open(opts: PodServiceOptions, images: ImageService) -> Result<PodService> {
        for d in [
            opts.root.join("sandboxes"),
            opts.root.join("containers").join("records"),
            opts.state.join("pods"),
            opts.state.join("containers"),
        ] {
            crate::fsutil::create_private_dir(&d)?;
        }
        for rt in opts.handlers.values() {
            crate::fsutil::create_private_dir(&rt.root)?;
        }
        let cgroups = Layout::detect()?;
        // The shared default parent is created once and kept, so that removing one pod
        // never races with another pod creating its cgroup below it.
        let _ = cgroups.create(&opts.default_cgroup_parent)?;
        let warmer = if opts.cgroup_warmup {
            crate::cgroupwarm::JoinWarmer::start(&cgroups, &opts.default_cgroup_parent)
        } else {
            crate::cgroupwarm::JoinWarmer::off()
        };
        let min_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if min_oom_score_adj > -1000 && !has_cap_sys_resource() {
            tracing::info!(
                min = min_oom_score_adj,
                "no CAP_SYS_RESOURCE: container oom_score_adj values below {min_oom_score_adj} are clamped to it (like containerd's restrict_oom_score_adj)"
            );
        }
        let sync = crate::fsutil::SyncQueue::start();
        let changes = Changes::default();
        // After a restart of berthd the page cache still has an ADD's cache entry; lost in
        // a crash of the machine, DEL runs with the current network instead (as with no
        // cache at all), which is how IPAM plugins release by container ID anyway.
        let cni = cni::Cni::with_sync_hook(
            opts.cni.clone(),
            Some(Arc::new({
                let sync = sync.clone();
                move |p: &Path| sync.schedule(p)
            })),
        );
        let inner = Arc::new(Inner {
            cni,
            sync,
            warmer,
            pod_cidr: Mutex::new(None),
            stats: stats::StatsCache::default(),
            exits: Mutex::new(HashMap::new()),
            exit_watch: exitwatch::ExitWatch::start(&changes),
            opts,
            images,
            cgroups,
            sandboxes: Table::new(&changes),
            containers: Table::new(&changes),
            changes,
            lists: Mutex::new(ListSnapshots::default()),
            names: Mutex::new(HashSet::new()),
            min_oom_score_adj: if has_cap_sys_resource() {
                -1000
            } else {
                min_oom_score_adj
            },
        });
        let svc = PodService { inner };
        svc.recover().await;
        Ok(svc)
    }

    /// Waits until every record written so far is on disk (or `timeout`; false then).
    pub fn flush_records(&self, timeout: std::time::Duration) -> bool {
        self.inner.sync.flush(timeout)
    }

    async fn recover(&self) {
        let inner = &self.inner;
        for dir in [
            inner.opts.root.join("sandboxes"),
            inner.opts.root.join("containers").join("records"),
        ] {
            crate::fsutil::remove_stale_temps(&dir);
        }
        let sandboxes: Vec<SandboxRecord> =
            records::load_all(&inner.opts.root.join("sandboxes"), false);
        let containers: Vec<ContainerRecord> =
            records::load_all(&inner.opts.root.join("containers").join("records"), true);
        let mut names = inner.names.lock().unwrap_or_else(|p| p.into_inner());
        for s in sandboxes {
            names.insert(sandbox::name_key(&s.metadata()));
            inner.sandboxes.insert(s.id.clone(), s);
        }
        for c in containers {
            if !inner.sandboxes.read().contains_key(&c.pod_id) {
                tracing::warn!(container = %c.id, pod = %c.pod_id, "container of an unknown pod; ignoring it");
                continue;
            }
            names.insert(container::name_key(&c.pod_id, &c.metadata()));
            inner.containers.insert(c.id.clone(), c);
        }
        let sb_map = inner.sandboxes.read();
        let c_map = inner.containers.read();
        tracing::info!(
            pods = sb_map.len(),
            containers = c_map.len(),
            "recovered state"
        );
        let known_pods: HashSet<String> = sb_map.keys().cloned().collect();
        let known_ctrs: HashSet<String> = c_map.keys().cloned().collect();
        // Created ones too: a crash between runc's start and the start record leaves a
        // running container recorded as created, whose exit must still be seen (list
        // answers are kept while nothing is seen to change).
        let running: Vec<Arc<Entry<ContainerRecord>>> = c_map
            .values()
            .filter(|e| e.with(|c| c.start_error.is_none()))
            .cloned()
            .collect();
        drop((names, sb_map, c_map));
        for e in running {
            // Watch first, then look: an exit before the watch began is in the file.
            e.with(|c| {
                if self.inner.exit_watch.watch(&c.id, &c.dir)
                    && matches!(self.lifecycle(c), container::Lifecycle::Exited(_))
                {
                    self.inner.exit_watch.forget(&c.id);
                }
            });
        }
        self.remove_orphans(&known_pods, &known_ctrs);
    }

    /// Removes what a crash in the middle of a create left without a record: container
    /// bundles (with their rootfs mounts) and pod directories (with pinned namespaces and
    /// shm). Only names that look like berth's IDs are touched.
    fn remove_orphans(&self, pods: &HashSet<String>, ctrs: &HashSet<String>) {
        let opts = &self.inner.opts;
        let is_id = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
        let scan = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().to_str().map(str::to_string))
                        .filter(|n| is_id(n))
                        .collect()
                })
                .unwrap_or_default()
        };
        for id in scan(&opts.state.join("containers")) {
            if !ctrs.contains(&id) {
                let bundle = opts.state.join("containers").join(&id);
                tracing::warn!(container = %id, "removing bundle left by an interrupted create");
                crate::sandbox::files::unmount(&bundle.join("rootfs"));
                let _ = crate::fsutil::remove_all(&bundle);
            }
        }
        for id in scan(&opts.root.join("containers")) {
            if !ctrs.contains(&id) {
                let _ = crate::fsutil::remove_all(&opts.root.join("containers").join(&id));
            }
        }
        let pod_dirs: HashSet<String> = pods
            .iter()
            .map(|p| p[..12.min(p.len())].to_string())
            .collect();
        let short_ids: Vec<String> = std::fs::read_dir(opts.state.join("pods"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                    .collect()
            })
            .unwrap_or_default();
        for id in short_ids {
            if pod_dirs.contains(&id) {
                continue;
            }
            let dir = opts.state.join("pods").join(&id);
            tracing::warn!(pod = %id, "removing pod directory left by an interrupted RunPodSandbox");
            for ns in ["net", "ipc", "uts"] {
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
            let _ = crate::fsutil::remove_all(&dir);
        }
    }

    pub(crate) fn sandbox(&self, id: &str) -> Result<Arc<Entry<SandboxRecord>>> {
        lookup(&self.inner.sandboxes.read(), id, "pod sandbox")
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Entry<ContainerRecord>>> {
        lookup(&self.inner.containers.read(), id, "container")
    }

    /// A snapshot of every pod record.
    pub(crate) fn all_sandboxes(&self) -> Vec<SandboxRecord> {
        self.inner
            .sandboxes
            .read()
            .values()
            .map(|e| e.get())
            .collect()
    }

    /// Every container entry (shared, not copied).
    pub(crate) fn container_entries(&self) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.inner.containers.read().values().cloned().collect()
    }

    /// Every pod entry (shared, not copied).
    pub(crate) fn sandbox_entries(&self) -> Vec<Arc<Entry<SandboxRecord>>> {
        self.inner.sandboxes.read().values().cloned().collect()
    }

    /// A snapshot of every container record.
    pub(crate) fn all_containers(&self) -> Vec<ContainerRecord> {
        self.inner
            .containers
            .read()
            .values()
            .map(|e| e.get())
            .collect()
    }

    pub(crate) fn containers_of(&self, pod_id: &str) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.inner
            .containers
            .read()
            .values()
            .filter(|e| e.with(|c| c.pod_id == pod_id))
            .cloned()
            .collect()
    }

    /// The container using image `image_id`, if any (images in use are not removed).
    pub fn image_user(&self, image_id: &str) -> Option<String> {
        let map = self.inner.containers.read();
        map.values()
            .find_map(|e| e.with(|c| (c.image_id == image_id).then(|| c.id.clone())))
    }

    /// The configured runtime handler names, the default one (reported as "") first.
    pub fn handler_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.opts.handlers.keys().cloned().collect();
        names.sort();
        let mut out = vec![String::new()];
        out.extend(names);
        out
    }

    /// NetworkReady for CRI Status: `Err((reason, message))` when no CNI network is loaded.
    pub fn network_status(&self) -> std::result::Result<(), (String, String)> {
        self.inner.cni.status()
    }

    /// UpdateRuntimeConfig: remembers the node's pod CIDR for IPAM plugins that take
    /// `ipRanges`.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        let cidr = cidr.trim();
        let value = if cidr.is_empty() {
            None
        } else {
            let (addr, len) = cidr.split_once('/').ok_or_else(|| {
                Error::InvalidArgument(format!("pod CIDR {cidr:?} is not in CIDR notation"))
            })?;
            let ip: std::net::IpAddr = addr.parse().map_err(|_| {
                Error::InvalidArgument(format!("pod CIDR {cidr:?} has an invalid address"))
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "pod CIDR {cidr:?} has an invalid prefix length"
                    )));
                }
            }
            Some(cidr.to_string())
        };
        *lock(&self.inner.pod_cidr) = value;
        Ok(())
    }

    pub(crate) fn runtime(&self, handler: &str) -> Result<OciRuntime> {
        let name = if handler.is_empty() {
            &self.inner.opts.default_handler
        } else {
            handler
        };
        self.inner.opts.handlers.get(name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "runtime handler {name:?} is not configured (configured: {})",
                {
                    let mut v: Vec<&String> = self.inner.opts.handlers.keys().collect();
                    v.sort();
                    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                }
            ))
        })
    }

    fn reserve(&self, key: String, what: &str) -> Result<NameGuard> {
        let mut names = lock(&self.inner.names);
        if !names.insert(key.clone()) {
            return Err(Error::AlreadyExists(format!("{what} is already in use")));
        }
        Ok(NameGuard {
            inner: Arc::clone(&self.inner),
            key: Some(key),
        })
    }
}

/// A reserved name, released on drop unless kept.
pub(crate) struct NameGuard {
    inner: Arc<Inner>,
    key: Option<String>,
}

impl NameGuard {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            lock(&self.inner.names).remove(&k);
        }
    }
}

pub(crate) fn release_name(inner: &Inner, key: &str) {
    inner
        .names
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
}

/// Locks a mutex, recovering the data if a panic poisoned it (the maps stay consistent:
/// every update is a single insert or remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An object by full ID or unambiguous ID prefix (as crictl lets users type).
fn lookup<T>(map: &HashMap<String, Arc<T>>, id: &str, what: &str) -> Result<Arc<T>> {
    if let Some(e) = map.get(id) {
        return Ok(Arc::clone(e));
    }
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} ID is empty")));
    }
    let mut hits = map.iter().filter(|(k, _)| k.starts_with(id));
    match (hits.next(), hits.next()) {
        (Some((_, e)), None) => Ok(Arc::clone(e)),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "{what} ID prefix {id:?} is ambiguous"
        ))),
        _ => Err(Error::NotFound(format!("{what} {id:?} not found"))),
    }
}

/// True when `pid` runs the berth monitor binary (so a recycled pid is never killed).
fn is_monitor(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split('\0')
                .next()
                .unwrap_or("")
                .ends_with("berth-monitor")
        })
        .unwrap_or(false)
}

fn has_cap_sys_resource() -> bool {
    // CapEff bit 24 is CAP_SYS_RESOURCE.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// A new random 64-hex object ID.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // getrandom cannot fail on Linux >= 3.17 except for EINTR; fall back to time
            // and a counter so an ID is still unique.
            let t = crate::image::pull::now_ns() as u64;
            buf[..8].copy_from_slice(&t.to_le_bytes());
            buf[8..12].copy_from_slice(&std::process::id().to_le_bytes());
            break;
        }
    }
    hex::encode(buf)
}

/// Now as Unix nanoseconds.
pub fn now_ns() -> i64 {
    crate::image::pull::now_ns()
}

/// True when every `selector` label is present with the same value.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
