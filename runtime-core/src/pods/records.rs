//! What berth persists about pods and containers, one JSON file per object under the root
//! directory, replaced atomically. Together with the monitors' exit files these are all
//! berthd needs to rebuild its view after a restart.

use std::path::{Path, PathBuf};

use berth_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::sandbox::ns::PinnedNamespaces;
use crate::{Error, Result};

/// State of a pod sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces and monitor are up.
    Ready,
    /// Stopped: containers killed, resources released.
    NotReady,
}

/// A pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 64 hex characters.
    pub id: String,
    /// The config kubelet sent.
    pub config: cri::PodSandboxConfig,
    /// Creation time, Unix ns.
    pub created_at_ns: i64,
    /// Current state.
    pub state: SandboxState,
    /// RuntimeClass handler.
    pub runtime_handler: String,
    /// The pod's state directory.
    pub dir: PathBuf,
    /// Pinned namespaces (None = host's).
    pub namespaces: PinnedNamespaces,
    /// The infra process of a shared PID namespace.
    pub pause_pid: Option<i32>,
    /// cgroupfs path of the pod cgroup.
    pub cgroup_parent: String,
    /// Cgroup directories berth created for the pod (removed with it).
    pub cgroups_created: Vec<PathBuf>,
    /// /etc/hostname, /etc/hosts, /etc/resolv.conf for containers.
    pub hostname_file: PathBuf,
    /// See `hostname_file`.
    pub hosts_file: PathBuf,
    /// See `hostname_file`.
    pub resolv_file: PathBuf,
    /// The pod's /dev/shm tmpfs, None with the host IPC namespace.
    pub shm: Option<PathBuf>,
    /// Monitor process id.
    pub monitor_pid: Option<i32>,
    /// Monitor socket.
    pub monitor_socket: PathBuf,
    /// Set before CNI ADD and cleared after a successful DEL: the pod may hold network
    /// resources that a DEL must release.
    #[serde(default)]
    pub network_attached: bool,
    /// Pod IPs from the CNI result (IPv4 first), or the host's for hostNetwork pods.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Set when the pod's monitor died while the pod was ready: the pod is reported not
    /// ready and its containers exited (see `supervision.rs`).
    #[serde(default)]
    pub monitor_lost: bool,
    /// The pod's resources as kubelet last told UpdatePodSandboxResources: (overhead, sum
    /// of its containers' resources).
    #[serde(default)]
    pub resources: Option<(
        Option<cri::LinuxContainerResources>,
        Option<cri::LinuxContainerResources>,
    )>,
}

/// A pod config's NamespaceOption (CRI defaults when unset).
pub fn ns_options_of(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

impl SandboxRecord {
    /// The pod's NamespaceOption (CRI defaults when unset).
    pub fn ns_options(&self) -> cri::NamespaceOption {
        ns_options_of(&self.config)
    }

    /// The pod's metadata (empty when kubelet sent none, which RunPodSandbox rejects).
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

/// A container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// The config kubelet sent.
    pub config: cri::ContainerConfig,
    /// Image ID (`sha256:` config digest).
    pub image_id: String,
    /// The image as the request named it.
    pub image_ref: String,
    /// A repo digest of the image, when known (ContainerStatus.image_ref).
    pub image_digest_ref: String,
    /// Creation time, Unix ns.
    pub created_at_ns: i64,
    /// Start time, Unix ns; 0 until started.
    pub started_at_ns: i64,
    /// Absolute log path, if kubelet asked for logs.
    pub log_path: Option<PathBuf>,
    /// Bundle directory (config.json, rootfs).
    pub bundle: PathBuf,
    /// Persistent directory (upper, work, exit file).
    pub dir: PathBuf,
    /// Init pid once created by the runtime.
    pub pid: i32,
    /// Set when StartContainer failed: the runtime's message.
    pub start_error: Option<String>,
    /// Stop signal from the image config.
    pub stop_signal: Option<String>,
    /// Cgroup path of the container (cgroupfs).
    pub cgroup_path: String,
    /// Why the container exited, when berth knows more than its exit code (its monitor
    /// died): ContainerStatus.message.
    #[serde(default)]
    pub exit_message: Option<String>,
    /// The identity its processes run with, as the OCI spec says: (uid, gid, the
    /// supplementary groups). ContainerStatus.user.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// Image volumes: (index of the mount in `config.mounts`, the image's ID).
    #[serde(default)]
    pub image_volumes: Vec<(usize, String)>,
    /// Lifecycle state, kept by the store; not saved: at start it is worked out again from
    /// the record and the monitor's exit file.
    #[serde(skip)]
    pub state: super::store::Lifecycle,
}

impl ContainerRecord {
    /// Where the monitor writes the exit status.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// The container's metadata.
    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

/// Writes a record atomically and durably: on disk when it returns.
pub fn save<T: Serialize>(path: &Path, rec: &T) -> Result<()> {
    fsutil::write_atomic(path, &encode(path, rec)?)
}

/// Writes a record atomically and leaves the fsync to `sync`: for records whose loss in a
/// crash of the machine (not of berthd, the page cache keeps them) is harmless. Such a
/// crash can leave the file empty or cut (rename before fsync): recovery removes container
/// records it cannot read (see `load_all`). See docs/pods.md.
pub fn save_soon<T: Serialize>(path: &Path, rec: &T, sync: &fsutil::SyncQueue) -> Result<()> {
    sync.write(path, &encode(path, rec)?)
}

fn encode<T: Serialize>(path: &Path, rec: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(rec).map_err(|e| Error::Internal(format!("encode {}: {e}", path.display())))
}

/// Reads every `*.json` record in `dir`, skipping unreadable ones with a warning; with
/// `remove_unreadable` they are deleted too (records written with [`save_soon`], which a
/// crash of the machine can leave empty).
pub fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path, remove_unreadable: bool) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push(r),
            Err(err) if remove_unreadable => {
                tracing::warn!(path = %p.display(), error = %err, "removing unreadable record");
                let _ = std::fs::remove_file(&p);
            }
            Err(err) => {
                tracing::warn!(path = %p.display(), error = %err, "skipping unreadable record")
            }
        }
    }
    out
}
