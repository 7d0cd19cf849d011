//! A berthd process with its own temporary root, state dir, socket, config and
//! registries.conf. It can be killed with SIGKILL or SIGTERM and restarted on the same dirs;
//! on drop it is stopped (by PID) and waited for, and if the test is panicking the tail of its
//! log is printed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cri::Cri;
use crate::util::{free_port, http_client, poll_until, poll_until_blocking, tail_file};

/// Registry names every test's registries.conf maps to the test registry, so that no
/// reference a test uses ever leaves 127.0.0.1.
pub const MAPPED_REGISTRIES: &[&str] = &[
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "registry.k8s.io",
    "gcr.io",
    "k8s.gcr.io",
    "quay.io",
    "ghcr.io",
    "example.com",
];

/// How long berthd gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `[[registry]]` entry of registries.conf (containers-registries.conf v2).
#[derive(Debug, Clone, Default)]
pub struct RegistryEntry {
    /// `prefix`.
    pub prefix: String,
    /// `location` (omitted when `None`).
    pub location: Option<String>,
    /// `insecure`: plain HTTP.
    pub insecure: bool,
    /// `blocked`.
    pub blocked: bool,
    /// `[[registry.mirror]]` locations (all insecure).
    pub mirrors: Vec<String>,
}

impl RegistryEntry {
    /// `prefix` served over plain HTTP from `location`.
    pub fn mapped(prefix: &str, location: &str) -> Self {
        RegistryEntry {
            prefix: prefix.into(),
            location: Some(location.into()),
            insecure: true,
            ..Default::default()
        }
    }

    /// A blocked `prefix` (its location is the test registry, so ignoring `blocked` would
    /// still only reach 127.0.0.1).
    pub fn blocked(prefix: &str, location: &str) -> Self {
        RegistryEntry {
            blocked: true,
            ..Self::mapped(prefix, location)
        }
    }

    fn to_toml(&self) -> String {
        let mut s = format!("[[registry]]\nprefix = {}\n", toml_str(&self.prefix));
        if let Some(l) = &self.location {
            s.push_str(&format!("location = {}\n", toml_str(l)));
        }
        s.push_str(&format!(
            "insecure = {}\nblocked = {}\n",
            self.insecure, self.blocked
        ));
        for m in &self.mirrors {
            s.push_str(&format!(
                "\n[[registry.mirror]]\nlocation = {}\ninsecure = true\n",
                toml_str(m)
            ));
        }
        s
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// How to start berthd.
#[derive(Debug, Clone, Default)]
pub struct BerthdOptions {
    /// `host:port` every name of [`MAPPED_REGISTRIES`] is mapped to (insecure). `None`: no
    /// well-known name is mapped (then the test must not use them).
    pub registry: Option<String>,
    /// More registries.conf entries (after the mapped ones).
    pub extra_registries: Vec<RegistryEntry>,
    /// Serve metrics on a free port of 127.0.0.1.
    pub metrics: bool,
    /// Extra text appended to berth.toml.
    pub extra_config: String,
    /// Extra command-line arguments.
    pub extra_args: Vec<String>,
    /// The CNI network config list written to the test's conf dir; `None` writes the
    /// harness default (a bridge of its own plus host-local IPAM, see [`Berthd::cni`]).
    /// `Some("")` leaves the conf dir empty.
    pub cni_conflist: Option<String>,
    /// Extra CNI plugin directories, searched before the harness's `/usr/lib/cni` and
    /// `/opt/cni/bin` (e.g. a test's fake plugins).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// `[cni] plugin_timeout_secs`; `None` keeps berthd's default.
    pub cni_plugin_timeout_secs: Option<u64>,
}

impl BerthdOptions {
    /// Maps every well-known registry name to `registry` (`127.0.0.1:PORT`).
    pub fn with_registry(registry: &str) -> Self {
        BerthdOptions {
            registry: Some(registry.into()),
            ..Default::default()
        }
    }

    /// Adds a registries.conf entry.
    pub fn entry(mut self, e: RegistryEntry) -> Self {
        self.extra_registries.push(e);
        self
    }

    /// Enables metrics.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }
}

/// The berthd binary: `$BERTHD`, else `berthd` next to the test binary's target dir
/// (`<target>/debug/berthd`), else `<workspace>/target/debug/berthd`.
pub fn berthd_binary() -> Result<PathBuf> {
    berthd_binary_from(std::env::var_os("BERTHD").map(PathBuf::from))
}

/// [`berthd_binary`] with an explicit override instead of `$BERTHD`.
pub fn berthd_binary_from(override_path: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = override_path {
        if p.is_file() {
            return Ok(p);
        }
        bail!("BERTHD={} does not name a file", p.display());
    }
    let mut candidates = Vec::new();
    // Test binaries live in <target>/debug/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join("berthd"));
    }
    candidates.push(crate::util::workspace_root().join("target/debug/berthd"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "berthd binary not found (looked at {}); build it with `cargo build -p cri-server` \
         or set BERTHD=/path/to/berthd",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Runs berthd with `args` to completion (for flag tests), with a deadline. Returns its
/// output.
pub async fn run_berthd_once(args: &[&str], timeout: Duration) -> Result<Output> {
    let bin = berthd_binary()?;
    let child = tokio::process::Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // On timeout the future is dropped, which kills (SIGKILL) and reaps our child.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("berthd {args:?} did not exit within {timeout:?}"),
    }
}

/// A berthd process and its directory:
/// `<dir>/root`, `<dir>/state`, `<dir>/state/berth.sock`, `<dir>/berth.toml`,
/// `<dir>/registries.conf`, `<dir>/berthd.log`.
pub struct Berthd {
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
    metrics_addr: Option<String>,
    opts: BerthdOptions,
    starts: u32,
    /// The test's own CNI network (bridge deleted on drop).
    pub cni: crate::network::TestNetwork,
}

impl Berthd {
    /// Writes the config files and starts berthd, waiting until it answers Version.
    pub async fn start(opts: BerthdOptions) -> Result<Berthd> {
        let mut b = Berthd::prepare(opts)?;
        b.launch().await?;
        Ok(b)
    }

    /// Creates the directory and config files without starting the process (so a test can
    /// set things up first, e.g. a stale socket). Start it with [`Berthd::launch`].
    pub fn prepare(opts: BerthdOptions) -> Result<Berthd> {
        let binary = berthd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-berthd-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("root"))?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        // As /run is: the OCI runtime reaches a user-namespaced container's rootfs under
        // the state dir as the container's root, which owns none of the path.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        }
        let metrics_addr = if opts.metrics {
            Some(format!("127.0.0.1:{}", free_port()?))
        } else {
            None
        };
        let b = Berthd {
            dir,
            binary,
            child: None,
            metrics_addr,
            opts,
            starts: 0,
            cni: crate::network::TestNetwork::new(),
        };
        b.write_configs()?;
        Ok(b)
    }

    fn write_configs(&self) -> Result<()> {
        let mut conf = String::from(
            "# registries.conf written by the berth e2e harness\n\
             unqualified-search-registries = [\"docker.io\"]\n\n",
        );
        if let Some(loc) = &self.opts.registry {
            for name in MAPPED_REGISTRIES {
                conf.push_str(&RegistryEntry::mapped(name, loc).to_toml());
                conf.push('\n');
            }
        }
        for e in &self.opts.extra_registries {
            conf.push_str(&e.to_toml());
            conf.push('\n');
        }
        std::fs::write(self.registries_conf_path(), conf)?;
        let cni_dir = self.cni_conf_dir();
        std::fs::create_dir_all(&cni_dir)?;
        let conflist = match &self.opts.cni_conflist {
            Some(c) => c.clone(),
            None => self.cni.default_conflist(&self.dir.path().join("cni/ipam")),
        };
        if !conflist.is_empty() {
            std::fs::write(cni_dir.join("10-e2e.conflist"), conflist)?;
        }
        let bin_dirs: Vec<String> = self
            .opts
            .cni_bin_dirs
            .iter()
            .map(|d| toml_str(&d.display().to_string()))
            .chain([
                "\"/usr/lib/cni\"".to_string(),
                "\"/opt/cni/bin\"".to_string(),
            ])
            .collect();
        let timeout = self
            .opts
            .cni_plugin_timeout_secs
            .map(|t| format!("plugin_timeout_secs = {t}\n"))
            .unwrap_or_default();
        let toml = format!(
            "{}\n[image]\nregistries_config = {}\n[cni]\nconf_dir = {}\nbin_dirs = [{}]\n{timeout}",
            self.opts.extra_config,
            toml_str(&self.registries_conf_path().display().to_string()),
            toml_str(&cni_dir.display().to_string()),
            bin_dirs.join(", "),
        );
        std::fs::write(self.config_path(), toml)?;
        Ok(())
    }

    /// Replaces the extra registries.conf entries and rewrites the file (takes effect when
    /// berthd reads it: at the next start at the latest).
    pub fn set_extra_registries(&mut self, entries: Vec<RegistryEntry>) -> Result<()> {
        self.opts.extra_registries = entries;
        self.write_configs()
    }

    /// The command-line arguments berthd is started with.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--config".to_string(),
            self.config_path().display().to_string(),
            "--root".to_string(),
            self.root().display().to_string(),
            "--state".to_string(),
            self.state().display().to_string(),
            "--socket".to_string(),
            self.socket().display().to_string(),
            "--log-level".to_string(),
            "debug".to_string(),
        ];
        if let Some(m) = &self.metrics_addr {
            a.push("--metrics-address".into());
            a.push(m.clone());
        }
        a.extend(self.opts.extra_args.iter().cloned());
        a
    }

    /// Spawns the process (without waiting for readiness).
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("berthd is already running");
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(
            log,
            "===== e2e harness: berthd start #{} =====",
            self.starts
        )?;
        let err: File = log.try_clone()?;
        let child = Command::new(&self.binary)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Spawns berthd and waits (up to 30 s) until its socket accepts and Version answers.
    pub async fn launch(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Waits until Version answers on the socket; fails early if the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket();
        let log = self.log_path();
        let child = self.child.as_mut().context("berthd is not running")?;
        let r = poll_until(
            READY_TIMEOUT,
            "berthd to answer Version on its socket",
            || {
                let exited = child.try_wait();
                let socket = socket.clone();
                let log = log.clone();
                async move {
                    if let Ok(Some(status)) = exited {
                        bail!(
                            "berthd exited during start-up ({status}); log tail:\n{}",
                            tail_file(&log, 40)
                        );
                    }
                    if !socket.exists() {
                        return Ok(None);
                    }
                    let Ok(cri) = Cri::connect(&socket).await else {
                        return Ok(None);
                    };
                    match cri.version().await {
                        Ok(_) => Ok(Some(())),
                        Err(s) => Err(anyhow::anyhow!("Version failed: {s:?}")),
                    }
                }
            },
        )
        .await;
        r.with_context(|| format!("berthd log tail:\n{}", self.log_tail_filtered(40)))
    }

    /// Stops and restarts berthd on the same dirs (SIGKILL if it is still running).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        self.launch().await
    }

    /// A CRI client on the socket.
    pub async fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.socket()).await
    }

    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGKILL (to our child, by PID) and waits for it.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("berthd is not running")?;
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// Sends a signal to the running process (by its PID).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().context("berthd is not running")?;
        kill(Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Waits (polling) until the process exits; returns its status. Fails after `timeout`
    /// (the process keeps running then).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("berthd is not running")?;
        let status = poll_until(timeout, "berthd to exit", || {
            let r = child.try_wait();
            async move { Ok(r?) }
        })
        .await?;
        self.child = None;
        Ok(status)
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--root`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `--state`.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `--socket`.
    pub fn socket(&self) -> PathBuf {
        self.state().join("berth.sock")
    }

    /// `--config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("berth.toml")
    }

    /// The CNI conf dir berthd reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/net.d")
    }

    /// The registries.conf the config points at.
    pub fn registries_conf_path(&self) -> PathBuf {
        self.dir.path().join("registries.conf")
    }

    /// berthd's stdout+stderr (all starts, separated by marker lines).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path(), lines)
    }

    /// The last `lines` lines of the log without the HTTP/2 and transport frame chatter
    /// that `--log-level debug` produces.
    pub fn log_tail_filtered(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                ![
                    "h2::",
                    "hyper::",
                    "hyper_util::",
                    "tonic::transport",
                    "tower::buffer",
                ]
                .iter()
                .any(|noise| l.contains(noise))
            })
            .collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    /// `host:port` of the metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<&str> {
        self.metrics_addr.as_deref()
    }

    /// `GET http://<metrics-address>/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let addr = self
            .metrics_addr
            .as_deref()
            .context("metrics not enabled")?;
        let resp = http_client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET /metrics: {}", resp.status());
        }
        Ok(resp.text().await?)
    }

    /// Unpacked layer directories: every `<root>/layers/<name>/diff`, as (name, path).
    pub fn layer_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root().join("layers")) {
            for e in rd.flatten() {
                let diff = e.path().join("diff");
                if diff.is_dir() {
                    out.push((e.file_name().to_string_lossy().into_owned(), diff));
                }
            }
        }
        out.sort();
        out
    }

    /// The `diff` directory of the layer with chain ID `chain_id` (`sha256:<hex>` or hex).
    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.root()
            .join("layers")
            .join(crate::util::digest_hex(chain_id))
            .join("diff")
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        // Printed on every drop: the test harness captures it and shows it only for failing
        // tests (whether they panicked or returned an error).
        let lines = if std::thread::panicking() { 80 } else { 40 };
        eprintln!(
            "---- berthd log tail ({}, transport chatter filtered) ----\n{}\n---- end of berthd log ----",
            self.log_path().display(),
            self.log_tail_filtered(lines)
        );
        self.terminate();
        self.cni.delete_bridge();
    }
}

impl Berthd {
    /// Stops berthd (SIGTERM, SIGKILL after 5 s) and waits for it; nothing when it is not
    /// running. Its threads leave berth's cgroups with it (one sits in the default pod
    /// parent: the cgroup warm-up), so test cgroups are removed after this.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            // Graceful first (lets berthd clean up), then SIGKILL.
            let _ = kill(pid, Signal::SIGTERM);
            let exited =
                poll_until_blocking(Duration::from_secs(5), || child.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
