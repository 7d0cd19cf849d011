//! The pod network both runtimes get: one CNI conflist (bridge + host-local) in a
//! directory of the bench, with a bridge and network name unique to the run. The bridge
//! has no address (`isGateway: false`) and no masquerading, so the plugins change no host
//! sysctl (forwarding) and no iptables rule; host-local keeps its leases in the bench's
//! directory. What is left on the host afterwards (the bridge, libcni's result cache in
//! /var/lib/cni) is removed by [`CniNet::cleanup`], and only what this run created.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet: private, and never routed on the host (the bridge has no address).
pub const SUBNET: &str = "10.89.0.0/16";
/// libcni's result cache (containerd's go-cni cannot move it).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni";

/// The network of one run.
#[derive(Debug, Clone)]
pub struct CniNet {
    /// The conf dir holding the one conflist.
    pub conf_dir: PathBuf,
    /// Network name, `berth-bench-<run id>`.
    pub network: String,
    /// Bridge name, `berthbench<4 hex>` (at most 15 bytes).
    pub bridge: String,
    /// Whether /var/lib/cni existed before the run.
    cache_existed: bool,
}

impl CniNet {
    /// Writes `<dir>/net.d/10-berth-bench.conflist` for run `run_id` (hex).
    pub fn write(dir: &Path, run_id: &str) -> Result<CniNet> {
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        let ipam_dir = dir.join("ipam");
        std::fs::create_dir_all(&ipam_dir)?;
        let net = CniNet {
            conf_dir,
            network: format!("berth-bench-{run_id}"),
            bridge: format!("berthbench{}", &run_id[..4.min(run_id.len())]),
            cache_existed: Path::new(CNI_CACHE_DIR).exists(),
        };
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.network,
            "plugins": [{
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": SUBNET }]],
                    "dataDir": ipam_dir,
                },
            }],
        });
        std::fs::write(
            net.conf_dir.join("10-berth-bench.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(net)
    }

    /// Whether the bridge exists.
    pub fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Deletes the bridge and this run's entries of libcni's cache (`<network>-*` and the
    /// loopback results of `sandbox_ids`), and /var/lib/cni itself if the run created it
    /// and it is empty. Returns what could not be done.
    pub fn cleanup(&self, sandbox_ids: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bridge_exists() {
            match Command::new("ip")
                .args(["link", "delete", &self.bridge, "type", "bridge"])
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "ip link delete {}: {}",
                    self.bridge,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => problems.push(format!("running ip: {e}")),
            }
        }
        let results = Path::new(CNI_CACHE_DIR).join("results");
        if let Ok(rd) = std::fs::read_dir(&results) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with(&format!("{}-", self.network))
                    || sandbox_ids
                        .iter()
                        .any(|id| name == format!("cni-loopback-{id}-lo"));
                if ours && let Err(err) = std::fs::remove_file(e.path()) {
                    problems.push(format!("removing {}: {err}", e.path().display()));
                }
            }
        }
        if !self.cache_existed {
            // remove_dir only removes empty directories: never anything of someone else.
            let _ = std::fs::remove_dir(&results);
            let _ = std::fs::remove_dir(CNI_CACHE_DIR);
        }
        problems
    }
}
