//! Pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;

use super::records::{self, SandboxRecord, SandboxState};
use super::{Entry, PodService, lock, new_id, now_ns, release_name};
use crate::monitor;
use crate::sandbox::{files, ns};
use crate::{Error, Result};

/// The key that makes a pod unique: kubelet never runs two sandboxes with the same name,
/// namespace, uid and attempt.
pub fn name_key(m: &cri::PodSandboxMetadata) -> String {
    format!("pod\0{}\0{}\0{}\0{}", m.namespace, m.name, m.uid, m.attempt)
}

fn is_node(mode: i32) -> bool {
    mode == cri::NamespaceMode::Node as i32
}

impl PodService {
    /// RunPodSandbox: pins namespaces, prepares the pod files, /dev/shm and cgroup, starts
    /// the infra process for a shared PID namespace and the pod monitor. On failure
    /// everything done so far is undone.
    pub async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("pod sandbox config has no metadata".into()))?;
        for (field, v) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if v.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "pod sandbox metadata.{field} is empty"
                )));
            }
        }
        if !config.log_directory.is_empty()
            && !std::path::Path::new(&config.log_directory).is_absolute()
        {
            return Err(Error::InvalidArgument(format!(
                "log_directory {:?} must be an absolute path",
                config.log_directory
            )));
        }
        let runtime = self.runtime(runtime_handler)?;
        let guard = self.reserve(
            name_key(&meta),
            &format!(
                "pod sandbox name {}/{} (uid {}, attempt {})",
                meta.namespace, meta.name, meta.uid, meta.attempt
            ),
        )?;
        // The pod directory is named by a 12-character ID prefix: the monitor's socket lives
        // in it and unix socket paths are limited to 107 bytes.
        let (id, dir) = loop {
            let id = new_id();
            let dir = self.inner.opts.state.join("pods").join(&id[..12]);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &dir, e)),
            }
        };
        let mut rec = SandboxRecord {
            id: id.clone(),
            config: config.clone(),
            created_at_ns: now_ns(),
            state: SandboxState::Ready,
            runtime_handler: runtime.name.clone(),
            dir: dir.clone(),
            namespaces: Default::default(),
            pause_pid: None,
            cgroup_parent: String::new(),
            cgroups_created: vec![],
            hostname_file: dir.join("hostname"),
            hosts_file: dir.join("hosts"),
            resolv_file: dir.join("resolv.conf"),
            shm: None,
            monitor_pid: None,
            monitor_socket: dir.join("monitor.sock"),
            network_attached: false,
            ips: vec![],
        };
        let dir2 = dir.clone();
        let setup = tokio::task::spawn_blocking({
            let svc = self.clone();
            let mut rec = rec.clone();
            move || svc.setup_sandbox(&mut rec).map(|()| rec)
        })
        .await
        .map_err(|e| Error::Internal(format!("sandbox setup task: {e}")))?;
        match setup {
            Ok(r) => rec = r,
            Err(e) => {
                tracing::warn!(pod = %id, error = %e, "RunPodSandbox failed; cleaning up");
                let _ = crate::fsutil::remove_all(&dir2);
                return Err(e);
            }
        }
        let path = self.sandbox_record_path(&id);
        if let Some(netns) = rec.namespaces.network.clone() {
            // Recorded before ADD, so that after a crash at any point a DEL still runs when
            // kubelet stops the pod.
            rec.network_attached = true;
            let attached = match records::save(&path, &rec) {
                Ok(()) => self
                    .inner
                    .cni
                    .add(&self.attachment(&rec, &netns))
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            match attached {
                Ok(result) => {
                    rec.ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
                    if let Some(ip) = rec.ips.first() {
                        let hostname =
                            std::fs::read_to_string(&rec.hostname_file).unwrap_or_default();
                        let hosts = files::hosts_content(hostname.trim(), Some(ip));
                        if let Err(e) = std::fs::write(&rec.hosts_file, hosts) {
                            tracing::warn!(pod = %id, error = %e, "write /etc/hosts with the pod IP");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "pod network setup failed; cleaning up");
                    if let Err(d) = self.inner.cni.del(&self.attachment(&rec, &netns)).await {
                        tracing::warn!(pod = %id, error = %d, "CNI DEL after a failed ADD");
                    }
                    self.teardown(&mut rec).await;
                    crate::cgroups::remove(&rec.cgroups_created);
                    let _ = crate::fsutil::remove_all(&dir);
                    let _ = crate::fsutil::remove_all(&path);
                    return Err(e);
                }
            }
        } else {
            rec.ips = host_ips();
        }
        if let Err(e) = records::save(&path, &rec) {
            if let Some(netns) = rec.namespaces.network.clone() {
                let _ = self.inner.cni.del(&self.attachment(&rec, &netns)).await;
            }
            self.teardown(&mut rec).await;
            crate::cgroups::remove(&rec.cgroups_created);
            let _ = crate::fsutil::remove_all(&dir);
            let _ = crate::fsutil::remove_all(&path);
            return Err(e);
        }
        lock(&self.inner.sandboxes).insert(id.clone(), Entry::new(rec));
        guard.keep();
        tracing::info!(pod = %id, name = %meta.name, namespace = %meta.namespace, "pod sandbox ready");
        Ok(id)
    }

    fn sandbox_record_path(&self, id: &str) -> PathBuf {
        self.inner
            .opts
            .root
            .join("sandboxes")
            .join(format!("{id}.json"))
    }

    /// The blocking part of RunPodSandbox; on error it undoes its own steps.
    fn setup_sandbox(&self, rec: &mut SandboxRecord) -> Result<()> {
        std::fs::create_dir_all(&rec.dir).map_err(|e| Error::io("create", &rec.dir, e))?;
        let nso = rec.ns_options();
        let host_net = is_node(nso.network);
        let host_ipc = is_node(nso.ipc);
        let hostname = if host_net {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else if rec.config.hostname.is_empty() {
            rec.metadata().name.chars().take(63).collect()
        } else {
            rec.config.hostname.clone()
        };
        let result = (|| -> Result<()> {
            rec.namespaces = ns::pin(
                &rec.dir.join("ns"),
                ns::NamespaceRequest {
                    network: !host_net,
                    ipc: !host_ipc,
                    // The UTS namespace goes with the network one: a hostNetwork pod sees
                    // the node's hostname, as with containerd.
                    uts: !host_net,
                },
                &hostname,
            )?;
            files::write_pod_files(
                &rec.dir,
                &hostname,
                host_net,
                rec.config.dns_config.as_ref(),
            )?;
            if !host_ipc {
                let shm = rec.dir.join("shm");
                files::mount_shm(&shm)?;
                rec.shm = Some(shm);
            }
            let parent = rec
                .config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| {
                    format!(
                        "{}/{}",
                        self.inner.opts.default_cgroup_parent.trim_end_matches('/'),
                        rec.id
                    )
                });
            rec.cgroups_created = self.inner.cgroups.create(&parent)?;
            rec.cgroup_parent = parent;
            let bin = &self.inner.opts.monitor_binary;
            if !bin.is_file() {
                return Err(Error::Internal(format!(
                    "monitor binary {} does not exist",
                    bin.display()
                )));
            }
            let info = monitor::spawn(bin, &rec.dir)
                .map_err(|e| Error::Internal(format!("start pod monitor: {e}")))?;
            rec.monitor_pid = Some(info.pid);
            rec.monitor_socket = info.socket;
            if nso.pid == cri::NamespaceMode::Pod as i32 {
                // The infra process is the monitor's child, so the monitor reaps it.
                let client = monitor::MonitorClient::new(rec.monitor_socket.clone());
                let pid = tokio::runtime::Handle::current()
                    .block_on(client.spawn_pause())
                    .map_err(|e| Error::Internal(format!("start pod infra process: {e}")))?;
                rec.pause_pid = Some(pid);
            }
            Ok(())
        })();
        if result.is_err() {
            self.teardown_blocking(rec);
            crate::cgroups::remove(&rec.cgroups_created);
        }
        result
    }

    /// Releases what a ready sandbox holds, except its cgroup and record.
    fn teardown_blocking(&self, rec: &mut SandboxRecord) {
        if let Some(pid) = rec.pause_pid.take() {
            kill_and_wait(pid);
        }
        if let Some(pid) = rec.monitor_pid.take() {
            kill_and_wait(pid);
        }
        if let Some(shm) = &rec.shm {
            files::unmount(shm);
        }
        ns::unpin(&rec.namespaces);
    }

    async fn teardown(&self, rec: &mut SandboxRecord) {
        if let Some(pid) = rec.pause_pid.filter(|p| *p > 1) {
            // Killed while its parent, the monitor, is still there to reap it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if rec.monitor_pid.is_some() {
            // A monitor that acknowledged the shutdown exits by itself; only one that did not
            // answer is killed below.
            let client = monitor::MonitorClient::new(rec.monitor_socket.clone());
            if client.shutdown().await.is_ok() {
                rec.monitor_pid = None;
            }
        }
        let svc = self.clone();
        let mut r = rec.clone();
        let r = tokio::task::spawn_blocking(move || {
            svc.teardown_blocking(&mut r);
            r
        })
        .await;
        if let Ok(r) = r {
            *rec = r;
        }
    }

    /// The CNI attachment of a pod: CNI_ARGS and the capability arguments kubelet's runtimes
    /// pass (port mappings, DNS, bandwidth, the pod CIDR as ipRanges, the cgroup path).
    fn attachment(&self, rec: &SandboxRecord, netns: &std::path::Path) -> cni::Attachment {
        let meta = rec.metadata();
        let mut a = cni::Attachment::new(rec.id.clone(), netns);
        a.args = cni::Attachment::pod_args(&meta.namespace, &meta.name, &rec.id, &meta.uid);
        a.capabilities.port_mappings = rec
            .config
            .port_mappings
            .iter()
            .map(|p| cni::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                host_ip: p.host_ip.clone(),
            })
            .collect();
        a.capabilities.dns = rec.config.dns_config.as_ref().map(|d| cni::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
        if let Some(cidr) = lock(&self.inner.pod_cidr).clone() {
            a.capabilities.ip_ranges = vec![vec![cni::IpRange {
                subnet: cidr,
                range_start: None,
                range_end: None,
                gateway: None,
            }]];
        }
        a.capabilities.bandwidth = bandwidth(&rec.config.annotations);
        a.capabilities.cgroup_path = Some(rec.cgroup_parent.clone());
        a
    }

    /// CNI DEL for a pod that may hold network resources; clears the flag on success.
    async fn release_network(&self, rec: &mut SandboxRecord) -> Result<()> {
        if !rec.network_attached {
            return Ok(());
        }
        // Plugins accept a DEL without a netns once it is gone (CNI spec); pass the file
        // while it still exists so they can clean up inside it.
        let netns = rec
            .namespaces
            .network
            .clone()
            .filter(|p| p.exists())
            .unwrap_or_default();
        self.inner
            .cni
            .del(&self.attachment(rec, &netns))
            .await
            .map_err(Error::from)?;
        rec.network_attached = false;
        Ok(())
    }

    /// StopPodSandbox: kills every container of the pod and releases namespaces, shm, the
    /// infra process and the monitor; the record stays. Idempotent; unknown IDs are fine.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let entry = match self.sandbox(id) {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        let mut rec = entry.get();
        // The containers are killed at once, and the network is released meanwhile.
        let stops = self.containers_of(&rec.id).into_iter().map(|c| {
            let cid = c.get().id;
            async move {
                if let Err(e) = self.stop_container(&cid, 0).await {
                    tracing::warn!(container = %cid, error = %e, "stopping container of stopped pod");
                }
            }
        });
        let ready = rec.state == SandboxState::Ready;
        let network = async {
            // DEL exactly once: a failure is logged and retried by RemovePodSandbox.
            if ready && let Err(e) = self.release_network(&mut rec).await {
                tracing::warn!(pod = %rec.id, error = %e, "CNI DEL failed; will retry on remove");
            }
        };
        tokio::join!(futures_util::future::join_all(stops), network);
        if !ready {
            return Ok(());
        }
        self.teardown(&mut rec).await;
        rec.state = SandboxState::NotReady;
        records::save(&self.sandbox_record_path(&rec.id), &rec)?;
        entry.update(|r| *r = rec);
        tracing::info!(pod = %id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed, removes its containers, cgroup, state
    /// directory and record. Idempotent; unknown IDs are fine.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let entry = match self.sandbox(id) {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_pod_sandbox(&entry.get().id).await?;
        let _op = entry.op.lock().await;
        let mut rec = entry.get();
        if rec.network_attached {
            self.release_network(&mut rec).await?;
            records::save(&self.sandbox_record_path(&rec.id), &rec)?;
            entry.update(|r| r.network_attached = false);
        }
        for c in self.containers_of(&rec.id) {
            let cid = c.get().id;
            self.remove_container(&cid).await?;
        }
        crate::cgroups::remove(&rec.cgroups_created);
        // Stop released these; a record from before a crash may still name them.
        ns::unpin(&rec.namespaces);
        if let Some(shm) = &rec.shm {
            files::unmount(shm);
        }
        crate::fsutil::remove_all(&rec.dir)?;
        crate::fsutil::remove_all(&self.sandbox_record_path(&rec.id))?;
        lock(&self.inner.sandboxes).remove(&rec.id);
        release_name(&self.inner, &name_key(&rec.metadata()));
        tracing::info!(pod = %rec.id, "pod sandbox removed");
        Ok(())
    }

    /// PodSandboxStatus.
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let rec = self.sandbox(id)?.get();
        let status = cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: Some(rec.metadata()),
            state: sandbox_state(&rec) as i32,
            created_at: rec.created_at_ns,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: rec.ips.first().cloned().unwrap_or_default(),
                additional_ips: rec
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(rec.ns_options()),
                }),
            }),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "id": rec.id,
                "state": rec.state,
                "dir": rec.dir,
                "namespaces": rec.namespaces,
                "pausePid": rec.pause_pid,
                "monitorPid": rec.monitor_pid,
                "cgroupParent": rec.cgroup_parent,
                "ips": rec.ips,
                "networkAttached": rec.network_attached,
                "runtimeHandler": rec.runtime_handler,
                "config": rec.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }
}

pub(crate) fn sandbox_state(r: &SandboxRecord) -> cri::PodSandboxState {
    match r.state {
        // A crash during CNI ADD leaves a ready record whose RunPodSandbox never answered
        // and that has no IP: report it not ready (as containerd does) so kubelet replaces
        // it; Stop and Remove still release it, DEL coming from the cache.
        SandboxState::Ready if r.network_attached && r.ips.is_empty() => {
            cri::PodSandboxState::SandboxNotready
        }
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

/// SIGKILLs a process berth started and waits (bounded) until it is gone.
fn kill_and_wait(pid: i32) {
    if pid <= 1 {
        return;
    }
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && process_alive(pid) {
        // Reap it if it is our child (the infra process may be); ignore otherwise.
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// True while `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    crate::ociruntime::pid_alive(pid)
}

/// The host's addresses for hostNetwork pods: non-loopback addresses of interfaces that
/// are up, IPv4 first (as kubelet expects the primary family first).
fn host_ips() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return vec![];
    };
    let mut v4 = vec![];
    let mut v6 = vec![];
    for a in addrs {
        if !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            v4.push(std::net::IpAddr::V4(sin.ip()).to_string());
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip = sin6.ip();
            // Link-local addresses are not pod addresses.
            if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                v6.push(std::net::IpAddr::V6(ip).to_string());
            }
        }
    }
    v4.dedup();
    v6.dedup();
    v4.into_iter().chain(v6).collect()
}

/// Traffic shaping from the `kubernetes.io/ingress-bandwidth` / `egress-bandwidth`
/// annotations (Kubernetes quantities, bits per second), as containerd passes them.
fn bandwidth(annotations: &HashMap<String, String>) -> Option<cni::Bandwidth> {
    let rate = |k: &str| annotations.get(k).and_then(|v| parse_quantity(v));
    let ingress = rate("kubernetes.io/ingress-bandwidth");
    let egress = rate("kubernetes.io/egress-bandwidth");
    if ingress.is_none() && egress.is_none() {
        return None;
    }
    // containerd passes the largest burst the plugin accepts.
    let burst = u64::from(u32::MAX);
    Some(cni::Bandwidth {
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: if ingress.is_some() { burst } else { 0 },
        egress_rate: egress.unwrap_or(0),
        egress_burst: if egress.is_some() { burst } else { 0 },
    })
}

/// A Kubernetes quantity like `10M`, `1Gi`, `500k` as a number.
fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    let v = num * mult;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(parse_quantity("10Q"), None);
        let mut a = HashMap::new();
        assert!(bandwidth(&a).is_none());
        a.insert(
            "kubernetes.io/ingress-bandwidth".to_string(),
            "1M".to_string(),
        );
        let b = bandwidth(&a).unwrap();
        assert_eq!((b.ingress_rate, b.egress_rate), (1_000_000, 0));
    }

    #[test]
    fn host_ips_exclude_loopback() {
        for ip in host_ips() {
            assert!(ip != "127.0.0.1" && ip != "::1", "{ip}");
        }
    }
}
