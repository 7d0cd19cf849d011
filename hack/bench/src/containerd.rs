//! Starting containerd (Debian's 1.6 package) for the bench: its own root, state, socket
//! and config; the CRI plugin with runc (`io.containerd.runc.v2`, cgroupfs), the bench's
//! CNI network, the bench's pause image as `sandbox_image`, `restrict_oom_score_adj` (this
//! machine needs it), netns pins under its state dir and runc's state in its own dir; every
//! registry name (and `_default`) mapped to the local registry with a `hosts.toml` that has
//! a `[host."http://127.0.0.1:PORT"]` table (containerd 1.6 silently ignores a hosts.toml
//! without one and falls back to the public registry).
//!
//! containerd cannot move one thing: the shims' sockets in /run/containerd/s (a compile-time
//! constant); their names are sha256(<socket>/<namespace>/<id>), so the bench can tell its
//! own (see [`shim_socket_path`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::berth::toml_str;
use crate::client::Client;
use crate::cni::{CNI_BIN_DIR, CniNet};
use crate::daemon::Daemon;
use crate::images::PAUSE_REF;
use crate::runtime::{Kind, Runtime, connect_when_ready};

/// How long containerd gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The CRI plugin's containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where containerd 1.6 puts shim sockets, whatever its state dir.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// How to start containerd.
pub struct ContainerdOptions<'a> {
    /// The containerd binary.
    pub containerd: &'a Path,
    /// `127.0.0.1:PORT` of the registry.
    pub registry: &'a str,
    /// The network.
    pub cni: &'a CniNet,
    /// `info` for the measured daemon, `debug` for the registry-host probe.
    pub log_level: &'a str,
}

/// Registry host directories written under `certs.d`: every name the bench may use, and
/// `_default` for any other.
pub fn mapped_hosts() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = e2e::MAPPED_REGISTRIES.to_vec();
    v.push("_default");
    v
}

/// A hosts.toml sending pulls and resolves to `http://<registry>`.
pub fn hosts_toml(registry: &str) -> String {
    format!(
        "# written by berth-bench: everything comes from the local registry\n\
         server = \"http://{registry}\"\n\n\
         [host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
    )
}

/// containerd's config.toml (version 2).
pub fn config_toml(dir: &Path, opts: &ContainerdOptions<'_>) -> String {
    let p = |name: &str| toml_str(&dir.join(name).display().to_string());
    format!(
        r#"# written by berth-bench
version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {socket}

[debug]
  level = {level}

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {opt}

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = {pause}
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    max_concurrent_downloads = 3

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = {cni_bin}
      conf_dir = {cni_conf}
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "runc"
          Root = {runc_root}
          SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = {certs}
"#,
        root = p("root"),
        state = p("state"),
        socket = p("containerd.sock"),
        level = toml_str(opts.log_level),
        opt = p("opt"),
        pause = toml_str(PAUSE_REF),
        cni_bin = toml_str(CNI_BIN_DIR),
        cni_conf = toml_str(&opts.cni.conf_dir.display().to_string()),
        runc_root = p("runc"),
        certs = p("certs.d"),
    )
}

/// Starts containerd in `dir` (`root/`, `state/`, `containerd.sock`, `config.toml`,
/// `certs.d/`, `runc/`, `opt/`, `containerd.log`, `logs/`) and waits until its CRI plugin
/// answers.
pub async fn start(dir: &Path, opts: &ContainerdOptions<'_>, cgroup_root: &str) -> Result<Runtime> {
    if !opts.containerd.is_file() {
        bail!(
            "{} not found (Debian package containerd; hack/install-deps.sh installs it)",
            opts.containerd.display()
        );
    }
    let root = dir.join("root");
    let state = dir.join("state");
    let logs = dir.join("logs");
    for d in [&root, &state, &logs, &dir.join("runc"), &dir.join("opt")] {
        std::fs::create_dir_all(d)?;
    }
    for host in mapped_hosts() {
        let hd = dir.join("certs.d").join(host);
        std::fs::create_dir_all(&hd)?;
        std::fs::write(hd.join("hosts.toml"), hosts_toml(opts.registry))?;
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, config_toml(dir, opts))?;
    let socket = dir.join("containerd.sock");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut daemon = Daemon::spawn(
        "containerd",
        opts.containerd,
        &args,
        &dir.join("containerd.log"),
    )?;
    let client = connect_when_ready("containerd", &mut daemon, &socket, START_TIMEOUT)
        .await
        .context("starting containerd")?;
    Ok(Runtime {
        kind: Kind::Containerd,
        client,
        daemon,
        root,
        state,
        socket,
        cgroup_parent: format!("{cgroup_root}/containerd"),
        logs,
        created: Mutex::new(Vec::new()),
    })
}

/// What containerd's log says about the hosts it contacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCheck {
    /// `host=` / `url=` values naming the local registry.
    pub local: usize,
    /// Everything else: other hosts, and DNS lookups (which only happen for names).
    pub foreign: Vec<String>,
}

/// Scans a containerd log (logfmt) for the hosts it talked to: every `host=` and `url=`
/// value must name `registry` (`127.0.0.1:PORT`), and no line may show a DNS `lookup`.
pub fn check_hosts(log: &str, registry: &str) -> HostCheck {
    let mut check = HostCheck::default();
    for line in log.lines() {
        for key in [" host=", " url="] {
            let mut rest = line;
            while let Some(at) = rest.find(key) {
                let value = logfmt_value(&rest[at + key.len()..]);
                if value.contains(registry) {
                    check.local += 1;
                } else if !value.is_empty() {
                    check.foreign.push(value.to_string());
                }
                rest = &rest[at + key.len()..];
            }
        }
        if let Some(at) = line.find("lookup ") {
            let host = line[at + 7..].split_whitespace().next().unwrap_or("");
            check.foreign.push(format!("DNS lookup of {host}"));
        }
    }
    check.foreign.sort();
    check.foreign.dedup();
    check
}

/// The value at the start of `s`: up to the closing quote if quoted, else to whitespace.
fn logfmt_value(s: &str) -> &str {
    if let Some(q) = s.strip_prefix('"') {
        let end = q.find('"').unwrap_or(q.len());
        &q[..end]
    } else {
        s.split_whitespace().next().unwrap_or("")
    }
}

/// Proves the registry mapping before the measured run: a throwaway containerd at debug
/// level (the only level at which 1.6 logs the hosts it resolves and requests) in
/// `dir`, with the same hosts config, pulls `images` and is stopped; its log must name
/// the local registry and nothing else.
pub async fn probe_registry_hosts(
    dir: &Path,
    opts: &ContainerdOptions<'_>,
    images: &[&str],
) -> Result<HostCheck> {
    let mut rt = start(dir, opts, "/unused").await?;
    let client: Client = rt.client.clone();
    let mut pull_error = None;
    for image in images {
        if let Err(s) = client.pull(image).await {
            pull_error = Some(format!("probe pull of {image}: {}", s.message()));
            break;
        }
    }
    rt.daemon.stop(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(rt.daemon.log()).unwrap_or_default();
    let check = check_hosts(&log, opts.registry);
    if let Some(e) = pull_error {
        bail!(
            "{e}; hosts in containerd's log: {} local, others: {:?}",
            check.local,
            check.foreign
        );
    }
    Ok(check)
}

/// The socket path containerd 1.6 gives the shim of sandbox `id` (that of its grpc
/// `socket`): `/run/containerd/s/<hex sha256(<socket>/k8s.io/<id>)>`.
pub fn shim_socket_path(socket: &Path, id: &str) -> PathBuf {
    let key = socket.join(CRI_NAMESPACE).join(id);
    let digest = sha2::Sha256::digest(key.as_os_str().as_encoded_bytes());
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_check() {
        let log = "time=\"t\" level=debug msg=\"resolving\" host=\"127.0.0.1:5000\"\n\
                   time=\"t\" level=debug msg=\"do request\" host=\"127.0.0.1:5000\" url=\"http://127.0.0.1:5000/v2/library/busybox/manifests/latest\"\n\
                   time=\"t\" level=info msg=\"PullImage\"\n";
        let c = check_hosts(log, "127.0.0.1:5000");
        assert_eq!(c.local, 3);
        assert!(c.foreign.is_empty());
        let bad = "level=debug msg=\"resolving\" host=registry-1.docker.io\n\
                   level=error msg=\"x\" error=\"dial tcp: lookup registry-1.docker.io on 1.1.1.1:53: no such host\"\n";
        let c = check_hosts(bad, "127.0.0.1:5000");
        assert_eq!(c.local, 0);
        assert_eq!(
            c.foreign,
            vec![
                "DNS lookup of registry-1.docker.io".to_string(),
                "registry-1.docker.io".to_string()
            ]
        );
    }

    #[test]
    fn hosts_files() {
        let h = hosts_toml("127.0.0.1:5000");
        assert!(h.contains("[host.\"http://127.0.0.1:5000\"]"));
        assert!(mapped_hosts().contains(&"_default"));
        assert!(mapped_hosts().contains(&"registry.k8s.io"));
    }

    #[test]
    fn shim_socket_names() {
        let p = shim_socket_path(Path::new("/run/containerd/containerd.sock"), "abc");
        assert!(p.starts_with(SHIM_SOCKET_DIR));
        assert_eq!(p.file_name().map(|n| n.len()), Some(64));
    }
}
