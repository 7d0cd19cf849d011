//! A runtime under test (berth or containerd): its daemon process, its directories, the
//! CRI client on its socket, and how to find its helper processes for the memory figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::client::Client;
use crate::daemon::Daemon;
use crate::memory::ProcTable;

/// Which runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// berthd with its per-pod monitors.
    Berth,
    /// containerd's CRI plugin with one runc shim per pod.
    Containerd,
}

impl Kind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::Containerd => "containerd",
        }
    }
}

/// A started runtime.
pub struct Runtime {
    /// Which one.
    pub kind: Kind,
    /// The CRI client on its socket.
    pub client: Client,
    /// The daemon process.
    pub daemon: Daemon,
    /// Persistent root directory (images, layers).
    pub root: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// Cgroup under which this runtime's pods are placed (`/berth-bench-<run>/<name>`).
    pub cgroup_parent: String,
    /// Where pod log directories are created.
    pub logs: PathBuf,
    /// Every sandbox ID this run created on the runtime (for cleanup of host caches).
    pub created: Mutex<Vec<String>>,
}

impl Runtime {
    /// Lower-case name.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Records a sandbox ID created on this runtime.
    pub fn remember(&self, id: &str) {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_string());
    }

    /// Sandbox IDs created on this runtime.
    pub fn created_ids(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The per-pod helper processes of this runtime, by command line: berth monitors
    /// (`berth-monitor serve <state>/pods/...`) or containerd shims
    /// (`containerd-shim-runc-v2 ... -address <socket>`).
    pub fn helper_pids(&self, table: &ProcTable) -> Vec<i32> {
        match self.kind {
            Kind::Berth => {
                let state = self.state.clone();
                table.matching(move |argv| is_monitor_of(argv, &state))
            }
            Kind::Containerd => {
                let socket = self.socket.display().to_string();
                table.matching(move |argv| is_shim_of(argv, &socket))
            }
        }
    }

    /// The pause (infra) process of a pod from PodSandboxStatus's verbose info: berth's
    /// `pausePid` (only pods sharing a PID namespace have one), containerd's `pid`.
    pub fn pause_pid(&self, info: &HashMap<String, String>) -> Option<i32> {
        let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
        let key = match self.kind {
            Kind::Berth => "pausePid",
            Kind::Containerd => "pid",
        };
        v.get(key)?
            .as_i64()
            .filter(|p| *p > 0)
            .and_then(|p| i32::try_from(p).ok())
    }

    /// Waits until Status reports RuntimeReady (and NetworkReady when `need_network`).
    /// Returns the names of the conditions still false (only NetworkReady can be, when
    /// not needed).
    pub async fn wait_conditions(
        &self,
        timeout: Duration,
        need_network: bool,
    ) -> Result<Vec<String>> {
        let client = self.client.clone();
        let r = e2e::poll_until(
            timeout,
            &format!("{} Status conditions", self.name()),
            || {
                let client = client.clone();
                async move {
                    let Ok(st) = client.status().await else {
                        return Ok(None);
                    };
                    let false_ones: Vec<String> = st
                        .status
                        .map(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| !c.status)
                        .map(|c| c.r#type)
                        .collect();
                    let blocking = false_ones
                        .iter()
                        .any(|t| t != "NetworkReady" || need_network);
                    Ok((!blocking).then_some(false_ones))
                }
            },
        )
        .await;
        r.with_context(|| format!("{} log tail:\n{}", self.name(), self.daemon.log_tail(30)))
    }
}

/// Waits until the daemon answers Version on `socket` (failing early if it exits) and
/// returns a client on it.
pub async fn connect_when_ready(
    name: &str,
    daemon: &mut Daemon,
    socket: &Path,
    timeout: Duration,
) -> Result<Client> {
    let r = e2e::poll_until(
        timeout,
        &format!("{name} to answer Version on its socket"),
        || {
            let alive = daemon.ensure_running();
            let socket = socket.to_path_buf();
            async move {
                alive?;
                if !socket.exists() {
                    return Ok(None);
                }
                let Ok(c) = Client::connect(&socket).await else {
                    return Ok(None);
                };
                Ok(c.version().await.ok().map(|_| c))
            }
        },
    )
    .await;
    r.with_context(|| format!("{name} log tail:\n{}", daemon.log_tail(30)))
}

/// Whether `argv` is `…/berth-monitor serve <dir under state>`.
fn is_monitor_of(argv: &[String], state: &Path) -> bool {
    argv.len() >= 3
        && argv[0].ends_with("berth-monitor")
        && argv[1] == "serve"
        && Path::new(&argv[2]).starts_with(state)
}

/// Whether `argv` is `…/containerd-shim-runc-v2 … -address <socket> …`.
fn is_shim_of(argv: &[String], socket: &str) -> bool {
    argv.first()
        .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
        && argv
            .windows(2)
            .any(|w| w[0] == "-address" && w[1] == socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognizes_helpers() {
        let state = Path::new("/tmp/bb-1/berth/state");
        assert!(is_monitor_of(
            &v(&[
                "/w/target/release/berth-monitor",
                "serve",
                "/tmp/bb-1/berth/state/pods/0123456789ab"
            ]),
            state
        ));
        assert!(!is_monitor_of(
            &v(&["/x/berth-monitor", "serve", "/run/berth/pods/0123"]),
            state
        ));
        assert!(!is_monitor_of(&v(&["/x/berth-monitor", "pause"]), state));
        let sock = "/tmp/bb-1/containerd/containerd.sock";
        assert!(is_shim_of(
            &v(&[
                "/usr/bin/containerd-shim-runc-v2",
                "-namespace",
                "k8s.io",
                "-id",
                "abc",
                "-address",
                sock
            ]),
            sock
        ));
        assert!(!is_shim_of(
            &v(&[
                "/usr/bin/containerd-shim-runc-v2",
                "-address",
                "/run/containerd/containerd.sock"
            ]),
            sock
        ));
    }
}
