//! [`Cni`]: the network in use (re-read from the conf dir when it changes) and the ADD,
//! CHECK and DEL operations over its plugin chain, with the result cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::attachment::{Attachment, format_cni_args};
use crate::cache::{CacheEntry, Cached, ResultCache};
use crate::conf::{self, FileStamp, NetworkConfigList, PluginConfig};
use crate::error::CniError;
use crate::exec::{self, Command, Invocation};
use crate::result::{self, CniResult};
use crate::version;

/// Where configs, plugins and cached results live, and how long a plugin may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniOptions {
    /// Directory of network configs (default `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order (default `/opt/cni/bin`, then
    /// Debian's `/usr/lib/cni`).
    pub bin_dirs: Vec<PathBuf>,
    /// Directory of the result cache, e.g. `<root>/cni/results`.
    pub cache_dir: PathBuf,
    /// How long one plugin invocation may take before it is killed (default 60 s).
    pub plugin_timeout: Duration,
}

impl Default for CniOptions {
    fn default() -> Self {
        CniOptions {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: PathBuf::from("/var/lib/berth/cni/results"),
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

/// Called with a result cache file just written and renamed into place, instead of an
/// fsync before ADD returns: the caller makes it durable later (see [`Cni::with_sync_hook`]).
pub type SyncHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// The CNI front end of the runtime. Cheap to clone; all clones share the loaded config.
#[derive(Debug, Clone)]
pub struct Cni {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: CniOptions,
    /// CNI_PATH: the bin dirs joined by ':'.
    cni_path: OsString,
    cache: ResultCache,
    conf: Mutex<ConfState>,
}

#[derive(Debug, Default)]
struct ConfState {
    /// The listing the network was loaded from; `None` before the first load.
    stamps: Option<Vec<(PathBuf, FileStamp)>>,
    network: Option<Arc<NetworkConfigList>>,
    skipped: Vec<(PathBuf, String)>,
}

/// What CHECK and DEL run with: the cached ADD inputs and result, or the current network.
struct Target {
    network: NetworkConfigList,
    cni_args: String,
    capability_args: Map<String, Value>,
    prev_result: Option<Value>,
    cache_path: Option<PathBuf>,
}

impl Cni {
    /// A CNI front end; nothing is read until [`Cni::network`] or an operation.
    pub fn new(opts: CniOptions) -> Cni {
        Cni::with_sync_hook(opts, None)
    }

    /// Like [`Cni::new`]; with a hook, result cache files are handed to it once written
    /// instead of being fsynced before ADD returns (libcni does not fsync them at all).
    pub fn with_sync_hook(opts: CniOptions, sync: Option<SyncHook>) -> Cni {
        let usable: Vec<&PathBuf> = opts
            .bin_dirs
            .iter()
            .filter(|d| !d.as_os_str().as_encoded_bytes().contains(&b':'))
            .collect();
        let cni_path = std::env::join_paths(usable).unwrap_or_default();
        let cache = ResultCache::new(opts.cache_dir.clone(), sync);
        Cni {
            inner: Arc::new(Inner {
                opts,
                cni_path,
                cache,
                conf: Mutex::new(ConfState::default()),
            }),
        }
    }

    /// The options this was built with.
    pub fn options(&self) -> &CniOptions {
        &self.inner.opts
    }

    fn state(&self) -> MutexGuard<'_, ConfState> {
        self.inner.conf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network in use, re-reading the conf dir when its listing (names, sizes, inodes,
    /// mtimes) changed since the last call. libcni's rules: files `*.conf`, `*.conflist`,
    /// `*.json` in lexical order, the first valid one wins, a single-plugin config is
    /// wrapped into a list, malformed files are skipped with a warning naming the file. A
    /// list whose plugin binaries are missing is still selected (as containerd); ADD then
    /// fails naming the plugin.
    pub fn network(&self) -> Option<Arc<NetworkConfigList>> {
        let dir = &self.inner.opts.conf_dir;
        let files = conf::conf_files(dir);
        let mut state = self.state();
        if state.stamps.as_ref() != Some(&files) {
            let load = conf::load_files(files.iter().map(|(p, _)| p.clone()));
            let network = load.network.map(Arc::new);
            let before = state
                .network
                .as_ref()
                .map(|n| (n.name.clone(), n.source.clone()));
            let after = network.as_ref().map(|n| (n.name.clone(), n.source.clone()));
            if before != after {
                match &network {
                    Some(n) => tracing::info!(
                        network = %n.name,
                        file = %n.source.as_deref().unwrap_or(Path::new("")).display(),
                        "CNI network config in use"
                    ),
                    None => tracing::warn!(
                        conf_dir = %dir.display(),
                        "no valid CNI network config"
                    ),
                }
            }
            state.network = network;
            state.skipped = load.skipped;
            state.stamps = Some(files);
        }
        state.network.clone()
    }

    /// NetworkReady for CRI Status: `Ok` when a network is loaded, else `(reason, message)`.
    pub fn status(&self) -> Result<(), (String, String)> {
        if self.network().is_some() {
            return Ok(());
        }
        let mut message = format!(
            "no valid CNI network config in {}",
            self.inner.opts.conf_dir.display()
        );
        for (file, reason) in &self.state().skipped {
            message.push_str(&format!("; skipped {}: {reason}", file.display()));
        }
        Err(("NetworkPluginNotReady".to_string(), message))
    }

    /// The cached ADD result of a container interface, if any (e.g. the pod IPs after a
    /// restart).
    pub fn cached_result(&self, container_id: &str, ifname: &str) -> Option<CniResult> {
        let probe = Attachment {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            ..Attachment::default()
        };
        probe.validate().ok()?;
        let (found, _) = self.inner.cache.find(container_id, ifname);
        let cached = found.into_iter().next()?;
        CniResult::parse(
            cached.entry.result.to_string().as_bytes(),
            &cached.network.cni_version,
        )
        .ok()
    }

    /// ADD: runs every plugin of the network in order, each getting the previous one's
    /// result as `prevResult`, and caches the final result with the config list used. On
    /// failure the plugins that ran get a best-effort DEL, so nothing stays allocated; the
    /// caller may still call [`Cni::del`] (it is idempotent).
    pub async fn add(&self, a: &Attachment) -> Result<CniResult, CniError> {
        a.validate()?;
        let net = self.network().ok_or_else(|| self.no_network())?;
        // All binaries first: a missing one fails before anything is set up.
        let binaries = self.resolve(&net)?;
        let caps = a.capabilities.capability_args();
        let cni_args = a.cni_args();
        let mut prev: Option<Value> = None;
        let mut last: Option<CniResult> = None;
        for (ran, (plugin, binary)) in net.plugins.iter().zip(&binaries).enumerate() {
            let stdin = plugin.stdin(&net, &caps, prev.as_ref());
            let outcome = self
                .run(plugin, binary, Command::Add, a, &cni_args, stdin)
                .await
                .and_then(|out| {
                    result::parse_value(&out, &net.cni_version).map_err(|reason| {
                        CniError::InvalidResult {
                            plugin: plugin.plugin_type.clone(),
                            reason,
                        }
                    })
                });
            match outcome {
                Ok((raw, typed)) => {
                    prev = Some(raw);
                    last = Some(typed);
                }
                Err(e) => {
                    tracing::warn!(container_id = %a.container_id, network = %net.name, "CNI ADD failed: {e}");
                    self.rollback(&net, &binaries, ran + 1, a, &cni_args, &caps, prev.as_ref())
                        .await;
                    return Err(e);
                }
            }
        }
        let (Some(raw), Some(result)) = (prev, last) else {
            // A list always has plugins; kept total rather than asserted.
            return Err(self.no_network());
        };
        let entry = CacheEntry::new(
            &net,
            &a.container_id,
            &a.ifname,
            &a.args,
            &caps,
            raw.clone(),
        );
        if let Err(e) = self.inner.cache.write(&entry) {
            tracing::warn!(container_id = %a.container_id, "CNI ADD: {e}; undoing it");
            self.rollback(
                &net,
                &binaries,
                binaries.len(),
                a,
                &cni_args,
                &caps,
                Some(&raw),
            )
            .await;
            return Err(e);
        }
        tracing::info!(
            container_id = %a.container_id,
            network = %net.name,
            ips = ?result.pod_ips(),
            "CNI ADD done"
        );
        Ok(result)
    }

    /// CHECK (spec 0.4.0 and later): runs every plugin in order with the cached result as
    /// `prevResult`, using the cached config list and arguments when present (else the
    /// current network). `Ok` without running anything when the network's version predates
    /// CHECK or it sets `disableCheck`.
    pub async fn check(&self, a: &Attachment) -> Result<(), CniError> {
        a.validate()?;
        for target in self.targets(a, true)?.0 {
            let net = &target.network;
            if !version::at_least(&net.cni_version, (0, 4, 0)) {
                tracing::debug!(network = %net.name, version = %net.cni_version, "CNI CHECK needs spec 0.4.0; skipped");
                continue;
            }
            if net.disable_check {
                continue;
            }
            let binaries = self.resolve(net)?;
            for (plugin, binary) in net.plugins.iter().zip(&binaries) {
                let stdin = plugin.stdin(net, &target.capability_args, target.prev_result.as_ref());
                self.run(plugin, binary, Command::Check, a, &target.cni_args, stdin)
                    .await?;
            }
        }
        Ok(())
    }

    /// DEL: runs the plugins in reverse order with the cached result as `prevResult` (spec
    /// 0.4.0 and later), using the cached config list, CNI_ARGS and capability arguments of
    /// every cached ADD of this container interface, whatever the conf dir holds now; each
    /// cache entry is removed once its DEL succeeded. With nothing cached the current
    /// network is used without `prevResult`; with no network either there is nothing to do.
    pub async fn del(&self, a: &Attachment) -> Result<(), CniError> {
        a.validate()?;
        let (targets, broken) = self.targets(a, false)?;
        for target in targets {
            let binaries = self.resolve(&target.network)?;
            for (plugin, binary) in target.network.plugins.iter().zip(&binaries).rev() {
                let stdin = plugin.stdin(
                    &target.network,
                    &target.capability_args,
                    target.prev_result.as_ref(),
                );
                self.run(plugin, binary, Command::Del, a, &target.cni_args, stdin)
                    .await?;
            }
            if let Some(path) = &target.cache_path {
                self.inner.cache.remove(path)?;
            }
        }
        // Unreadable entries of this interface can never be used; the interface is gone.
        for path in broken {
            self.inner.cache.remove(&path)?;
        }
        tracing::info!(container_id = %a.container_id, "CNI DEL done");
        Ok(())
    }

    /// The networks CHECK or DEL apply to: every cached ADD of the interface, else the
    /// current network (none for DEL without a network; an error for CHECK). Also the
    /// unreadable cache entries of the interface.
    fn targets(
        &self,
        a: &Attachment,
        check: bool,
    ) -> Result<(Vec<Target>, Vec<PathBuf>), CniError> {
        let (found, broken) = self.inner.cache.find(&a.container_id, &a.ifname);
        if found.is_empty() {
            let targets = match self.network() {
                Some(net) => vec![Target {
                    network: (*net).clone(),
                    cni_args: a.cni_args(),
                    capability_args: a.capabilities.capability_args(),
                    prev_result: None,
                    cache_path: None,
                }],
                None if check => return Err(self.no_network()),
                None => Vec::new(),
            };
            return Ok((targets, broken));
        }
        let targets = found
            .into_iter()
            .map(|cached: Cached| {
                let mut with_cached_args = a.clone();
                with_cached_args.args = cached.entry.cni_args.clone();
                let cni_args = if with_cached_args.validate().is_ok() {
                    format_cni_args(&cached.entry.cni_args)
                } else {
                    a.cni_args()
                };
                // prevResult on DEL and CHECK came with spec 0.4.0, as libcni.
                let prev_result = version::at_least(&cached.network.cni_version, (0, 4, 0))
                    .then(|| cached.entry.result.clone());
                Target {
                    network: cached.network,
                    cni_args,
                    capability_args: cached.entry.capability_args,
                    prev_result,
                    cache_path: Some(cached.path),
                }
            })
            .collect();
        Ok((targets, broken))
    }

    /// Best-effort DEL, in reverse order, of the first `ran` plugins of a failed ADD.
    #[allow(clippy::too_many_arguments)]
    async fn rollback(
        &self,
        net: &NetworkConfigList,
        binaries: &[PathBuf],
        ran: usize,
        a: &Attachment,
        cni_args: &str,
        caps: &Map<String, Value>,
        prev: Option<&Value>,
    ) {
        let prev = prev.filter(|_| version::at_least(&net.cni_version, (0, 4, 0)));
        let pairs: Vec<(&PluginConfig, &PathBuf)> =
            net.plugins.iter().zip(binaries).take(ran).collect();
        for (plugin, binary) in pairs.into_iter().rev() {
            let stdin = plugin.stdin(net, caps, prev);
            if let Err(e) = self
                .run(plugin, binary, Command::Del, a, cni_args, stdin)
                .await
            {
                tracing::warn!(container_id = %a.container_id, "cleanup after failed CNI ADD: {e}");
            }
        }
    }

    fn resolve(&self, net: &NetworkConfigList) -> Result<Vec<PathBuf>, CniError> {
        net.plugins
            .iter()
            .map(|p| exec::find_plugin(&p.plugin_type, &self.inner.opts.bin_dirs))
            .collect()
    }

    async fn run(
        &self,
        plugin: &PluginConfig,
        binary: &Path,
        command: Command,
        a: &Attachment,
        cni_args: &str,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        exec::invoke(Invocation {
            plugin: &plugin.plugin_type,
            binary,
            command,
            container_id: &a.container_id,
            netns: &a.netns,
            ifname: &a.ifname,
            cni_args,
            cni_path: &self.inner.cni_path,
            stdin,
            timeout: self.inner.opts.plugin_timeout,
        })
        .await
    }

    fn no_network(&self) -> CniError {
        CniError::NoNetwork {
            conf_dir: self.inner.opts.conf_dir.clone(),
        }
    }
}
