//! Starting berthd for the bench: its own root, state dir, socket, berth.toml and
//! registries.conf (every registry name the bench uses mapped to the local registry over
//! plain HTTP), runc as the OCI runtime, the bench's CNI network.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cni::{CNI_BIN_DIR, CniNet};
use crate::daemon::Daemon;
use crate::runtime::{Kind, Runtime, connect_when_ready};

/// How long berthd gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start berthd.
pub struct BerthOptions<'a> {
    /// The berthd binary (`berth-monitor` must be next to it).
    pub berthd: &'a Path,
    /// `127.0.0.1:PORT` of the registry.
    pub registry: &'a str,
    /// The network; `None` leaves the `[cni]` table out of berth.toml.
    pub cni: Option<&'a CniNet>,
    /// The run's cgroup root (`/berth-bench-<run>`).
    pub cgroup_root: &'a str,
}

/// Quotes a TOML basic string.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// registries.conf (containers-registries.conf v2) mapping every name of
/// [`e2e::MAPPED_REGISTRIES`] to `registry`, insecure.
pub fn registries_conf(registry: &str) -> String {
    let mut s = String::from(
        "# written by berth-bench: every registry name is the local registry\n\
         unqualified-search-registries = [\"docker.io\"]\n",
    );
    for name in e2e::MAPPED_REGISTRIES {
        s.push_str(&format!(
            "\n[[registry]]\nprefix = {}\nlocation = {}\ninsecure = true\n",
            toml_str(name),
            toml_str(registry)
        ));
    }
    s
}

/// berth.toml for the bench.
pub fn berth_toml(registries: &Path, cgroup_root: &str, cni: Option<&CniNet>) -> String {
    let mut s = format!(
        "# written by berth-bench\n\
         log_level = \"info\"\n\n\
         [image]\n\
         registries_config = {}\n\n\
         [runtime]\n\
         default_handler = \"runc\"\n\
         default_cgroup_parent = {}\n",
        toml_str(&registries.display().to_string()),
        toml_str(&format!("{cgroup_root}/berth-default")),
    );
    if let Some(net) = cni {
        s.push_str(&format!(
            "\n[cni]\nconf_dir = {}\nbin_dirs = [{}]\n",
            toml_str(&net.conf_dir.display().to_string()),
            toml_str(CNI_BIN_DIR)
        ));
    }
    s
}

/// Starts berthd in `dir` (`root/`, `state/`, `state/berth.sock`, `berth.toml`,
/// `registries.conf`, `berthd.log`, `logs/`) and waits until it answers.
pub async fn start(dir: &Path, opts: &BerthOptions<'_>) -> Result<Runtime> {
    let monitor = opts
        .berthd
        .parent()
        .map(|d| d.join("berth-monitor"))
        .unwrap_or_else(|| PathBuf::from("berth-monitor"));
    if !opts.berthd.is_file() {
        bail!(
            "{} not found (build it: cargo build --release -p cri-server)",
            opts.berthd.display()
        );
    }
    if !monitor.is_file() {
        bail!("{} not found next to berthd", monitor.display());
    }
    let root = dir.join("root");
    let state = dir.join("state");
    let logs = dir.join("logs");
    for d in [&root, &state, &logs] {
        std::fs::create_dir_all(d)?;
    }
    let socket = state.join("berth.sock");
    let registries = dir.join("registries.conf");
    std::fs::write(&registries, registries_conf(opts.registry))?;
    let config = dir.join("berth.toml");
    std::fs::write(&config, berth_toml(&registries, opts.cgroup_root, opts.cni))?;
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--root",
        &root.display().to_string(),
        "--state",
        &state.display().to_string(),
        "--socket",
        &socket.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut daemon = Daemon::spawn("berthd", opts.berthd, &args, &dir.join("berthd.log"))?;
    let client = connect_when_ready("berthd", &mut daemon, &socket, START_TIMEOUT)
        .await
        .context("starting berthd")?;
    Ok(Runtime {
        kind: Kind::Berth,
        client,
        daemon,
        root,
        state,
        socket,
        cgroup_parent: format!("{}/berth", opts.cgroup_root),
        logs,
        created: Mutex::new(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files() {
        let conf = registries_conf("127.0.0.1:5000");
        assert!(conf.contains("prefix = \"registry.k8s.io\"\nlocation = \"127.0.0.1:5000\""));
        assert!(conf.contains("prefix = \"docker.io\""));
        let t = berth_toml(Path::new("/x/registries.conf"), "/berth-bench-1", None);
        assert!(t.contains("registries_config = \"/x/registries.conf\""));
        assert!(t.contains("default_cgroup_parent = \"/berth-bench-1/berth-default\""));
        assert!(!t.contains("[cni]"));
    }
}
