//! Pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_cri::v1 as cri;

use super::records::{self, SandboxRecord, SandboxState};
use super::{PodService, lock, new_id, now_ns, release_name};
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
    /// RunPodSandbox: pins namespaces while it creates the pod cgroup and saves the
    /// record, then runs the CNI ADD while it prepares the pod files and /dev/shm and
    /// starts the pod monitor (and the infra process for a shared PID namespace). On
    /// failure everything done so far is undone, once every concurrent step has finished.
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
        // Checked before anything is set up: otherwise a malformed request would only fail
        // while the pod's network is being attached, and cost an ADD and a DEL.
        files::resolv_content(config.dns_config.as_ref())?;
        let userns = crate::sandbox::userns::from_pod_options(&records::ns_options_of(&config))?;
        if userns.is_some()
            && let Err(why) = &self.inner.userns_support
        {
            return Err(Error::FailedPrecondition(format!(
                "this node cannot give pods their own user namespace: {why}"
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
            monitor_lost: false,
            resources: None,
        };
        let hostname = pod_hostname(&rec);
        let nso = rec.ns_options();
        let host_net = is_node(nso.network);
        let request = ns::NamespaceRequest {
            network: !host_net,
            ipc: !is_node(nso.ipc),
            // The UTS namespace goes with the network one: a hostNetwork pod sees the
            // node's hostname, as with containerd.
            uts: !host_net,
            user: userns,
        };
        let planned = planned_namespaces(&dir, request);
        rec.namespaces = planned.clone();
        rec.network_attached = request.network;
        if request.ipc {
            rec.shm = Some(dir.join("shm"));
        }
        rec.cgroup_parent = rec
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    self.inner.opts.default_cgroup_parent.trim_end_matches('/'),
                    id
                )
            });
        let path = self.sandbox_record_path(&id);
        // ADD needs the pinned network namespace and a record on disk that names it (so
        // that after a crash from here on a DEL still runs when kubelet stops the pod):
        // both are made at once. The record names the namespace files and /dev/shm before
        // they exist (undoing what does not exist is harmless, and a crash must not leave
        // anything the record does not name) and the cgroups once they do; the monitor
        // and infra process, started later, are found by `teardown` from their pid files.
        let pin = tokio::task::spawn_blocking({
            let dir = dir.join("ns");
            let hostname = hostname.clone();
            move || ns::pin(&dir, request, &hostname)
        });
        let record = tokio::task::spawn_blocking({
            let layout = self.inner.cgroups.clone();
            let path = path.clone();
            let mut rec = rec.clone();
            move || {
                rec.cgroups_created = layout.create(&rec.cgroup_parent)?;
                let saved = if rec.network_attached {
                    records::save(&path, &rec)
                } else {
                    Ok(())
                };
                Ok((rec.cgroups_created, saved))
            }
        });
        let (pin, record) = tokio::join!(pin, record);
        let pinned = pin
            .map_err(|e| Error::Internal(format!("pin namespaces task: {e}")))
            .and_then(|r| r);
        let recorded = record
            .map_err(|e| Error::Internal(format!("create cgroup task: {e}")))
            .and_then(|r: Result<_>| r)
            .and_then(|(created, saved)| {
                rec.cgroups_created = created;
                saved
            });
        let ready = match (pinned, recorded) {
            (Ok(ns), Ok(())) if ns == planned || !rec.network_attached => {
                rec.namespaces = ns;
                Ok(())
            }
            (Ok(ns), Ok(())) => {
                // Never expected: the record saved before ADD must name the real paths.
                rec.namespaces = ns;
                records::save(&path, &rec)
            }
            // A failed pin undid itself; the planned paths are harmless to unpin.
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        if let Err(e) = ready {
            tracing::warn!(pod = %id, error = %e, "RunPodSandbox failed; cleaning up");
            self.abort_run(&mut rec, false).await;
            return Err(e);
        }

        let netns = rec.namespaces.network.clone();
        // Nothing of it depends on the network, so it runs while ADD does. It reports what
        // it set up even when it fails.
        let setup = tokio::task::spawn_blocking({
            let svc = self.clone();
            let mut rec = rec.clone();
            move || {
                let result = svc.start_pod_processes(&mut rec, &hostname);
                (rec, result)
            }
        });
        let network = async {
            match &netns {
                None => Network::Host,
                Some(netns) => match self.inner.cni.add(&self.attachment(&rec, netns)).await {
                    Ok(result) => Network::Added(result),
                    Err(e) => Network::Failed(Error::from(e)),
                },
            }
        };
        // Both halves always run to the end, so that clean-up never races with a plugin
        // still attaching the pod or a monitor still starting.
        let (setup, network) = tokio::join!(setup, network);
        let (mut done, setup) = match setup {
            Ok(r) => r,
            // Its processes, if any, are found from their pid files by `teardown`.
            Err(e) => (
                rec.clone(),
                Err(Error::Internal(format!("sandbox setup task: {e}"))),
            ),
        };
        let add_ran = !matches!(network, Network::Host);
        let outcome = match (setup, network) {
            (Ok(()), Network::Host) => {
                done.ips = host_ips();
                Ok(())
            }
            (Ok(()), Network::Added(result)) => {
                done.ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
                Ok(())
            }
            (Ok(()), Network::Failed(e)) => {
                tracing::warn!(pod = %id, error = %e, "pod network setup failed; cleaning up");
                Err(e)
            }
            (Err(e), network) => {
                if let Network::Failed(n) = &network {
                    tracing::warn!(pod = %id, error = %n, "pod network setup failed too");
                }
                tracing::warn!(pod = %id, error = %e, "RunPodSandbox failed; cleaning up");
                Err(e)
            }
        };
        let outcome = match outcome {
            Ok(()) => tokio::task::spawn_blocking({
                let path = path.clone();
                let rec = done.clone();
                move || finish_files_and_record(&path, &rec)
            })
            .await
            .map_err(|e| Error::Internal(format!("save sandbox record task: {e}")))
            .and_then(|r| r),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            self.abort_run(&mut done, add_ran).await;
            return Err(e);
        }
        let monitor = done.monitor_pid;
        self.inner.store.add_sandbox(done);
        if let Some(pid) = monitor {
            self.supervise_monitor(&id, pid);
        }
        guard.keep();
        tracing::info!(pod = %id, name = %meta.name, namespace = %meta.namespace, "pod sandbox ready");
        Ok(id)
    }

    /// Undoes a failed RunPodSandbox once none of its steps runs any more: DEL when ADD
    /// ran (a failed ADD may have left allocations behind), the processes, mounts and
    /// namespaces, the cgroups berth created, the pod directory and the record.
    async fn abort_run(&self, rec: &mut SandboxRecord, add_ran: bool) {
        if add_ran
            && let Some(netns) = rec.namespaces.network.clone()
            && let Err(d) = self.inner.cni.del(&self.attachment(rec, &netns)).await
        {
            tracing::warn!(pod = %rec.id, error = %d, "CNI DEL after a failed RunPodSandbox");
        }
        self.teardown(rec).await;
        let (created, dir, path) = (
            rec.cgroups_created.clone(),
            rec.dir.clone(),
            self.sandbox_record_path(&rec.id),
        );
        let removed = tokio::task::spawn_blocking(move || {
            crate::cgroups::remove(&created);
            let _ = crate::fsutil::remove_all(&dir);
            let _ = crate::fsutil::remove_all(&path);
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(pod = %rec.id, error = %e, "removing a failed pod's cgroups and files");
        }
    }

    pub(crate) fn sandbox_record_path(&self, id: &str) -> PathBuf {
        self.inner
            .opts
            .root
            .join("sandboxes")
            .join(format!("{id}.json"))
    }

    /// The set-up nothing of the network depends on, run while ADD runs: the pod files,
    /// /dev/shm (at `rec.shm`), the monitor and the infra process. Blocking. It does not
    /// undo its steps: the caller does, once ADD is over, since the namespaces must
    /// outlive the DEL.
    fn start_pod_processes(&self, rec: &mut SandboxRecord, hostname: &str) -> Result<()> {
        let nso = rec.ns_options();
        files::write_pod_files(
            &rec.dir,
            hostname,
            is_node(nso.network),
            rec.config.dns_config.as_ref(),
        )?;
        if let Some(shm) = &rec.shm {
            files::mount_shm(shm)?;
        }
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
            // In a pod with its own user namespace the PID namespace must be owned by it
            // (so containers can mount /proc): the pause process enters it first.
            let pid = tokio::runtime::Handle::current()
                .block_on(client.spawn_pause(rec.namespaces.user.as_deref()))
                .map_err(|e| Error::Internal(format!("start pod infra process: {e}")))?;
            rec.pause_pid = Some(pid);
        }
        Ok(())
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
        adopt_unrecorded_processes(rec);
        if let Some(pid) = rec.pause_pid.filter(|p| *p > 1) {
            // Killed while its parent, the monitor, is still there to reap it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A monitor shut down on purpose is not a monitor that died.
        self.inner.exit_watch.forget_monitor(&rec.id);
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
        self.inner.store.update_sandbox(&entry, |r| *r = rec);
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
            self.inner
                .store
                .update_sandbox(&entry, |r| r.network_attached = false);
        }
        // A few at a time: each is mostly unmounting and removing directories, which
        // overlap well, and a pod with thousands of exited containers (a CronJob's) is
        // not removed one by one.
        use futures_util::StreamExt;
        let ids: Vec<String> = self
            .containers_of(&rec.id)
            .into_iter()
            .map(|c| c.get().id)
            .collect();
        // Every removal runs to its end (none is dropped half done); the first error is
        // reported and the pod kept, so that kubelet's retry finishes it.
        let results: Vec<Result<()>> = futures_util::stream::iter(ids)
            .map(|cid| async move { self.remove_container(&cid).await })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        crate::cgroups::remove(&rec.cgroups_created);
        // Stop released these; a record from before a crash may still name them.
        ns::unpin(&rec.namespaces);
        if let Some(shm) = &rec.shm {
            files::unmount(shm);
        }
        crate::fsutil::remove_all(&rec.dir)?;
        crate::fsutil::remove_all(&self.sandbox_record_path(&rec.id))?;
        self.inner.store.remove_sandbox(&rec.id);
        release_name(&self.inner, &name_key(&rec.metadata()));
        tracing::info!(pod = %rec.id, "pod sandbox removed");
        Ok(())
    }

    /// UpdatePodSandboxResources (Kubernetes 1.33): kubelet's account of a pod's resources
    /// after an in-place resize. kubelet sets the pod cgroup's limits itself (cgroupfs and
    /// systemd drivers alike); as containerd and CRI-O, which pass it on to NRI plugins,
    /// berth records it (shown by a verbose PodSandboxStatus). Unknown pods are NotFound.
    pub async fn update_pod_sandbox_resources(
        &self,
        id: &str,
        overhead: Option<cri::LinuxContainerResources>,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let entry = self.sandbox(id)?;
        let _op = entry.op.lock().await;
        let mut rec = entry.get();
        // A pod cgroup kubelet made (its cgroup_parent) is kubelet's: kubelet sets its
        // limits itself before this call, and containerd and CRI-O pass the call on to NRI
        // only. One berth made (no cgroup_parent given, as with crictl) has nobody else to
        // follow the pod's resources: berth writes them.
        if !rec.cgroups_created.is_empty() && rec.state == records::SandboxState::Ready {
            let limits = pod_limits(overhead.as_ref(), resources.as_ref());
            let (layout, path) = (self.inner.cgroups.clone(), rec.cgroup_parent.clone());
            tokio::task::spawn_blocking(move || layout.set_limits(&path, &limits))
                .await
                .map_err(|e| Error::Internal(format!("pod cgroup limits task: {e}")))??;
        }
        rec.resources = Some((overhead, resources));
        records::save(&self.sandbox_record_path(&rec.id), &rec)?;
        self.inner
            .store
            .update_sandbox(&entry, |r| r.resources = rec.resources.clone());
        Ok(())
    }

    /// PodSandboxStatus.
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let rec = self.sandbox(id)?.get();
        let status = sandbox_status_of(&rec);
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
                "resources": rec.resources,
                "config": rec.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }
}

/// How the pod network went in RunPodSandbox.
enum Network {
    /// hostNetwork: no CNI.
    Host,
    /// ADD succeeded.
    Added(cni::CniResult),
    /// ADD ran and failed (plugins may still hold something: DEL).
    Failed(Error),
}

/// The files `ns::pin` makes for `request` in `<pod dir>/ns`.
fn planned_namespaces(dir: &Path, request: ns::NamespaceRequest) -> ns::PinnedNamespaces {
    let file = |wanted: bool, kind: &str| wanted.then(|| dir.join("ns").join(kind));
    ns::PinnedNamespaces {
        network: file(request.network, "net"),
        ipc: file(request.ipc, "ipc"),
        uts: file(request.uts, "uts"),
        user: file(request.user.is_some(), "user"),
    }
}

/// The pod's hostname: the node's for hostNetwork pods, else the config's, else the pod
/// name cut to a DNS label's 63 characters.
fn pod_hostname(rec: &SandboxRecord) -> String {
    if is_node(rec.ns_options().network) {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if rec.config.hostname.is_empty() {
        rec.metadata().name.chars().take(63).collect()
    } else {
        rec.config.hostname.clone()
    }
}

/// The last step of a RunPodSandbox that worked: the pod IP into /etc/hosts (a pod with
/// its own network only; a hostNetwork pod keeps the node's file), then the ready record.
/// The record replaces the one saved before ADD, which names what DEL needs: it is
/// durable before the reply (a rename not preceded by an fsync can leave an empty file
/// after a crash of the machine on some filesystems, and the pod would be forgotten).
fn finish_files_and_record(path: &Path, rec: &SandboxRecord) -> Result<()> {
    if rec.namespaces.network.is_some()
        && let Some(ip) = rec.ips.first()
    {
        let hostname = std::fs::read_to_string(&rec.hostname_file).unwrap_or_default();
        let hosts = files::hosts_content(hostname.trim(), Some(ip));
        if let Err(e) = std::fs::write(&rec.hosts_file, hosts) {
            tracing::warn!(pod = %rec.id, error = %e, "write /etc/hosts with the pod IP");
        }
    }
    records::save(path, rec)
}

/// A record saved before ADD names no monitor or infra process: they were starting
/// meanwhile. When RunPodSandbox was interrupted (a crash, a lost set-up task), they may
/// run all the same, so they are found from the pid files the monitor writes in the pod
/// directory. A pid is taken only when it is this pod's monitor (its command line names
/// the pod directory) or that monitor's child, so a recycled pid is never killed.
fn adopt_unrecorded_processes(rec: &mut SandboxRecord) {
    if rec.monitor_pid.is_none() {
        let dir = std::path::absolute(&rec.dir).unwrap_or_else(|_| rec.dir.clone());
        rec.monitor_pid = read_pid(&rec.dir.join(monitor::spawn::PID_FILE)).filter(|&pid| {
            let args = cmdline(pid);
            args.len() == 3 && args[1] == "serve" && Path::new(&args[2]) == dir
        });
    }
    if rec.pause_pid.is_none()
        && let Some(monitor) = rec.monitor_pid
    {
        rec.pause_pid = read_pid(&rec.dir.join(monitor::spawn::PAUSE_PID_FILE))
            .filter(|&pid| process_alive(pid) && parent_pid(pid) == Some(monitor));
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
}

/// The arguments of a running process (none when it is gone).
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn parent_pid(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A pod's PodSandboxStatus (its status call and its events share it).
pub(crate) fn sandbox_status_of(rec: &SandboxRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(rec.metadata()),
        state: sandbox_state(rec) as i32,
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
    }
}

pub(crate) fn sandbox_state(r: &SandboxRecord) -> cri::PodSandboxState {
    match r.state {
        // A crash during RunPodSandbox after the record saved before ADD leaves a ready
        // record whose RunPodSandbox never answered and that has no IP (and maybe no
        // monitor yet): report it not ready (as containerd does) so kubelet replaces it;
        // Stop and Remove still release it, DEL coming from the cache.
        SandboxState::Ready if r.network_attached && r.ips.is_empty() => {
            cri::PodSandboxState::SandboxNotready
        }
        // Its monitor died: nothing supervises its containers any more.
        SandboxState::Ready if r.monitor_lost => cri::PodSandboxState::SandboxNotready,
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

/// The pod cgroup's limits from UpdatePodSandboxResources: the sum of the containers'
/// resources plus the pod overhead, as kubelet computes a pod cgroup's. A zero field is
/// "not set" in the CRI and leaves the cgroup's value; a negative quota is "no quota".
fn pod_limits(
    overhead: Option<&cri::LinuxContainerResources>,
    resources: Option<&cri::LinuxContainerResources>,
) -> crate::cgroups::limits::Limits {
    let Some(r) = resources else {
        return Default::default();
    };
    let zero = cri::LinuxContainerResources::default();
    let o = overhead.unwrap_or(&zero);
    let plus = |a: i64, b: i64| {
        u64::try_from(a)
            .unwrap_or(0)
            .saturating_add(u64::try_from(b).unwrap_or(0))
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    crate::cgroups::limits::Limits {
        cpu_shares: (r.cpu_shares > 0).then(|| plus(r.cpu_shares, o.cpu_shares)),
        cpu_quota: match r.cpu_quota {
            q if q > 0 => Some(Some(plus(q, o.cpu_quota))),
            q if q < 0 => Some(None),
            _ => None,
        },
        cpu_period: u64::try_from(r.cpu_period).ok().filter(|p| *p > 0),
        memory: (r.memory_limit_in_bytes > 0)
            .then(|| Some(plus(r.memory_limit_in_bytes, o.memory_limit_in_bytes))),
        cpuset_cpus: nonempty(&r.cpuset_cpus),
        cpuset_mems: nonempty(&r.cpuset_mems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_limits_sum_resources_and_overhead_and_keep_unset_fields() {
        let r = cri::LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 150_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 512 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let o = cri::LinuxContainerResources {
            cpu_shares: 10,
            cpu_quota: 5_000,
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        };
        let l = pod_limits(Some(&o), Some(&r));
        assert_eq!(l.cpu_shares, Some(1034));
        assert_eq!(l.cpu_quota, Some(Some(155_000)));
        assert_eq!(l.cpu_period, Some(100_000));
        assert_eq!(l.memory, Some(Some(528 << 20)));
        assert_eq!(l.cpuset_cpus.as_deref(), Some("0"));
        assert_eq!(l.cpuset_mems, None);
        let unlimited = cri::LinuxContainerResources {
            cpu_quota: -1,
            ..Default::default()
        };
        let l = pod_limits(None, Some(&unlimited));
        assert_eq!(l.cpu_quota, Some(None), "a negative quota is no quota");
        assert_eq!((l.cpu_shares, l.memory, l.cpu_period), (None, None, None));
        assert_eq!(pod_limits(Some(&o), None), Default::default());
    }

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
