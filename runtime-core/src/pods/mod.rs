//! Pod sandboxes and their containers: the lifecycle operations the CRI RuntimeService
//! maps onto, and recovery after a restart. The records and their events live in the
//! store (`store.rs`); exits reach it through the exit watcher (`exitwatch.rs`).

pub mod container;
mod events;
mod exitwatch;
mod imagevolumes;
mod lists;
pub mod metrics;
mod orphans;
mod portforward;
pub mod records;
pub mod sandbox;
pub mod signals;
pub mod stats;
pub mod store;
mod streaming;
mod supervision;
mod usermounts;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::cgroups::Layout;
use crate::config::Config;
use crate::image::ImageService;
use crate::ociruntime::OciRuntime;
use crate::{Error, Result};

pub use events::container_event;
use records::{ContainerRecord, SandboxRecord};
pub use store::{Entry, Event, EventKind, Lifecycle};

/// Pods and containers by state (see [`PodService::state_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Containers created and not started.
    pub containers_created: u64,
    /// Containers running.
    pub containers_running: u64,
    /// Containers exited (or failed to start).
    pub containers_exited: u64,
    /// Pod sandboxes ready.
    pub pods_ready: u64,
    /// Pod sandboxes not ready.
    pub pods_not_ready: u64,
}

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
                    call_timeout: std::time::Duration::from_secs(config.runtime.call_timeout_secs),
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
    /// The pods and containers, their states and events.
    pub(crate) store: store::Store,
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
    /// Sees the monitors' exit files appear and records the exits in the store.
    pub(crate) exit_watch: exitwatch::ExitWatch,
    /// Containers this berthd saw killed by the OOM killer.
    pub(crate) oom_kills: std::sync::atomic::AtomicU64,
    /// Pod monitors this berthd saw die while their pod was ready.
    pub(crate) monitor_deaths: std::sync::atomic::AtomicU64,
    /// Deferred fsyncs of records whose loss in a machine crash is harmless.
    pub(crate) sync: crate::fsutil::SyncQueue,
    /// Starts the kernel's grace period of a cgroup move before the OCI runtime's move.
    pub(crate) warmer: crate::cgroupwarm::JoinWarmer,
    /// Whether pods can have user namespaces of their own (and why not), probed at start.
    pub(crate) userns_support: std::result::Result<(), String>,
    /// Whether the kernel makes recursive read-only mounts, probed at start.
    pub(crate) rro_support: bool,
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
        for d in [
            opts.state.clone(),
            opts.state.join("pods"),
            opts.state.join("containers"),
        ] {
            crate::fsutil::allow_traversal(&d)?;
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
        let userns_support = tokio::task::spawn_blocking({
            let scratch = opts.state.join("userns-probe");
            move || crate::sandbox::userns::probe(&scratch)
        })
        .await
        .map_err(|e| Error::Internal(format!("user namespace probe task: {e}")))
        .and_then(|r| r)
        .map_err(|e| e.to_string());
        if let Err(why) = &userns_support {
            tracing::info!(reason = %why, "pods cannot have user namespaces of their own (hostUsers: false) on this node");
        }
        let rro_support = match crate::sandbox::idmap::recursive_read_only_works(&opts.state) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(reason = %e, "recursive read-only mounts are not offered on this node");
                false
            }
        };
        let sync = crate::fsutil::SyncQueue::start();
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
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            cni,
            sync,
            warmer,
            pod_cidr: Mutex::new(None),
            stats: stats::StatsCache::default(),
            exit_watch: exitwatch::ExitWatch::start(exit_handler(weak.clone())),
            opts,
            images,
            cgroups,
            store: store::Store::default(),
            oom_kills: std::sync::atomic::AtomicU64::new(0),
            monitor_deaths: std::sync::atomic::AtomicU64::new(0),
            names: Mutex::new(HashSet::new()),
            userns_support,
            rro_support,
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

    /// Whether pods can have user namespaces of their own on this node (the kernel creates
    /// them and overlays of idmapped layers).
    pub fn user_namespaces(&self) -> bool {
        self.inner.userns_support.is_ok()
    }

    /// Whether this node makes recursive read-only mounts.
    pub fn recursive_read_only(&self) -> bool {
        self.inner.rro_support
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
        let known_pods: HashSet<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
        let mut known_ctrs = HashSet::new();
        let (pods, mut ctrs) = (sandboxes.len(), 0);
        for s in sandboxes {
            names.insert(sandbox::name_key(&s.metadata()));
            inner.store.add_sandbox(s);
        }
        for mut c in containers {
            if !known_pods.contains(&c.pod_id) {
                tracing::warn!(container = %c.id, pod = %c.pod_id, "container of an unknown pod; ignoring it");
                continue;
            }
            names.insert(container::name_key(&c.pod_id, &c.metadata()));
            // Watch first, then look: an exit before the watch began is in the file. Created
            // ones too: a crash between runc's start and the start record leaves a running
            // container recorded as created, whose exit must still be seen.
            if c.start_error.is_none() {
                inner.exit_watch.watch(&c.id, &c.dir);
            }
            c.state = container::state_on_disk(&c);
            if c.state.is_exited() {
                inner.exit_watch.forget(&c.id);
            }
            known_ctrs.insert(c.id.clone());
            inner.store.add_container(c);
            ctrs += 1;
        }
        drop(names);
        tracing::info!(pods, containers = ctrs, "recovered state");
        for e in self.sandbox_entries() {
            let (id, pid, watch) = e.with(|s| {
                (
                    s.id.clone(),
                    s.monitor_pid,
                    s.state == records::SandboxState::Ready && !s.monitor_lost,
                )
            });
            if let (true, Some(pid)) = (watch, pid) {
                self.supervise_monitor(&id, pid);
            }
        }
        self.remove_orphans(&known_pods, &known_ctrs);
    }

    pub(crate) fn sandbox(&self, id: &str) -> Result<Arc<Entry<SandboxRecord>>> {
        lookup(&self.inner.store.sandbox_map(), id, "pod sandbox")
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Entry<ContainerRecord>>> {
        lookup(&self.inner.store.container_map(), id, "container")
    }

    /// A snapshot of every pod record.
    pub(crate) fn all_sandboxes(&self) -> Vec<SandboxRecord> {
        self.sandbox_entries().iter().map(|e| e.get()).collect()
    }

    /// Every container entry (shared, not copied).
    pub(crate) fn container_entries(&self) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.inner.store.containers()
    }

    /// Every pod entry (shared, not copied).
    pub(crate) fn sandbox_entries(&self) -> Vec<Arc<Entry<SandboxRecord>>> {
        self.inner.store.sandboxes()
    }

    /// A snapshot of every container record.
    pub(crate) fn all_containers(&self) -> Vec<ContainerRecord> {
        self.container_entries().iter().map(|e| e.get()).collect()
    }

    pub(crate) fn containers_of(&self, pod_id: &str) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.inner.store.containers_of(pod_id)
    }

    /// How many pods and containers are in each state now.
    pub fn state_counts(&self) -> StateCounts {
        let mut n = StateCounts::default();
        for e in self.container_entries() {
            match e.with(|c| c.state) {
                Lifecycle::Created => n.containers_created += 1,
                Lifecycle::Running => n.containers_running += 1,
                Lifecycle::Exited(_) => n.containers_exited += 1,
            }
        }
        for e in self.sandbox_entries() {
            if e.with(sandbox::sandbox_state) == berth_cri::v1::PodSandboxState::SandboxReady {
                n.pods_ready += 1;
            } else {
                n.pods_not_ready += 1;
            }
        }
        n
    }

    /// Containers this berthd has seen killed by the OOM killer since it started.
    pub fn oom_kills(&self) -> u64 {
        self.inner
            .oom_kills
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pod monitors this berthd has seen die while their pod was ready (berth does not
    /// restart a monitor: kubelet replaces the pod).
    pub fn monitor_deaths(&self) -> u64 {
        self.inner
            .monitor_deaths
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every change from now on, in order (see `store`). A receiver that falls
    /// [`store::EVENT_QUEUE`] events behind gets `Lagged` and should be dropped.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.inner.store.subscribe()
    }

    /// The container using image `image_id`, if any (images in use are not removed).
    pub fn image_user(&self, image_id: &str) -> Option<String> {
        let map = self.inner.store.container_map();
        map.values().find_map(|e| {
            e.with(|c| {
                (c.image_id == image_id || c.image_volumes.iter().any(|(_, id)| id == image_id))
                    .then(|| c.id.clone())
            })
        })
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

/// What the exit watcher does with what it sees: the service reads the exit file and
/// records the exit (see `exitwatch`).
fn exit_handler(weak: Weak<Inner>) -> exitwatch::Handler {
    Box::new(move |seen| {
        let Some(inner) = weak.upgrade() else {
            return false;
        };
        let svc = PodService { inner };
        match seen {
            exitwatch::Seen::Exit(id) => svc.exit_seen(&id),
            exitwatch::Seen::Lost => svc.sweep_exits(),
            exitwatch::Seen::MonitorDied(pod, pid) => svc.spawn_monitor_died(pod, pid),
            exitwatch::Seen::LogGap(id) => svc.log_gap_seen(&id),
        }
        true
    })
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
pub(crate) fn is_monitor(pid: i32) -> bool {
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
