//! Container lifecycle: create (rootfs + OCI bundle), start (the pod monitor runs the OCI
//! runtime's `run --detach`), stop, remove, status, list, exec-sync, resource updates and
//! log reopening.
//!
//! As containerd does, the OCI runtime is first called at StartContainer, so a command
//! missing from the image fails StartContainer with the runtime's message and the container
//! then reports exit code 128 with reason `Error`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use berth_cri::v1 as cri;

use super::records::{self, ContainerRecord, SandboxState};
use super::{PodService, new_id, now_ns, release_name};
use crate::monitor::{self, ExitInfo};
use crate::ociruntime::ExecOutput;
use crate::{Error, Result};

/// Exit code reported for a container whose start failed (containerd's value).
pub const START_FAILURE_EXIT_CODE: i32 = 128;

/// The key that makes a container name unique within its pod.
pub fn name_key(pod_id: &str, m: &cri::ContainerMetadata) -> String {
    format!("ctr\0{pod_id}\0{}\0{}", m.name, m.attempt)
}

pub use super::store::Lifecycle;

/// The state a container's record and exit file say it is in (at recovery).
pub(crate) fn state_on_disk(rec: &ContainerRecord) -> Lifecycle {
    if rec.start_error.is_some() {
        return Lifecycle::Exited(start_failure(rec));
    }
    if let Ok(Some(exit)) = monitor::read_exit_file(&rec.exit_file()) {
        return Lifecycle::Exited(exit);
    }
    if rec.started_at_ns > 0 {
        Lifecycle::Running
    } else {
        Lifecycle::Created
    }
}

/// The exit reported for a container whose start failed.
fn start_failure(rec: &ContainerRecord) -> ExitInfo {
    ExitInfo {
        exit_code: START_FAILURE_EXIT_CODE,
        signal: None,
        finished_at_ns: rec.started_at_ns.max(rec.created_at_ns),
        oom_killed: false,
    }
}

impl PodService {
    /// The container's state, looking at its exit file unless the exit is already known:
    /// for decisions that act on its process, which must not wait for the exit watcher.
    /// An exit found here is recorded in the store like one the watcher sees.
    pub(crate) fn lifecycle(&self, rec: &ContainerRecord) -> Lifecycle {
        if rec.state.is_exited() || rec.start_error.is_some() {
            return rec.state;
        }
        match monitor::read_exit_file(&rec.exit_file()) {
            Ok(Some(exit)) => {
                self.record_exit(&rec.id, exit);
                Lifecycle::Exited(exit)
            }
            _ => rec.state,
        }
    }

    /// Records that container `id` exited and stops watching for it.
    pub(crate) fn record_exit(&self, id: &str, exit: ExitInfo) {
        let counted = || {
            if exit.oom_killed {
                self.inner
                    .oom_kills
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        if self.inner.store.set_exited(id, exit, counted) {
            if exit.oom_killed {
                tracing::warn!(
                    container = id,
                    exit_code = exit.exit_code,
                    "container killed by the OOM killer"
                );
            } else {
                tracing::debug!(
                    container = id,
                    exit_code = exit.exit_code,
                    "container exited"
                );
            }
        }
        self.inner.exit_watch.forget(id);
    }

    /// Container `id` has an exit file now (the exit watcher saw it appear).
    pub(crate) fn exit_seen(&self, id: &str) {
        if let Ok(e) = self.container(id) {
            let rec = e.get();
            let _ = self.lifecycle(&rec);
        }
    }

    /// Logs what the monitor says in a container's log-gap file: its CRI log could not be
    /// written (a full log volume) and output was dropped, or it is written again and how
    /// much was lost. The monitor has no other channel to berthd's log.
    pub(crate) fn log_gap_seen(&self, id: &str) {
        let Ok(e) = self.container(id) else {
            return;
        };
        let path = berth_monitor::protocol::log_gap_file(&e.get().exit_file());
        match berth_monitor::protocol::read_log_gap_file(&path) {
            Ok(Some(r)) => {
                let what = if r.writing {
                    format!(
                        "container log written again after a gap: {} bytes of output ({} log entries) were lost",
                        r.lost_bytes, r.lost_entries
                    )
                } else {
                    format!(
                        "container log cannot be written; the monitor drops its output until it can ({} bytes lost so far)",
                        r.lost_bytes
                    )
                };
                tracing::warn!(
                    container = id,
                    log_path = %r.log_path.display(),
                    lost_bytes = r.lost_bytes,
                    lost_entries = r.lost_entries,
                    total_lost_bytes = r.total_lost_bytes,
                    error = %r.error,
                    "{what}"
                )
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(container = id, error = %err, "cannot read the log-gap file")
            }
        }
    }

    /// Reads the exit file of every container not known to have exited: at start, and
    /// when the exit watcher lost events or stopped.
    pub(crate) fn sweep_exits(&self) {
        for e in self.container_entries() {
            let _ = self.lifecycle(&e.get());
        }
    }

    pub(crate) fn container_record_path(&self, id: &str) -> PathBuf {
        self.inner
            .opts
            .root
            .join("containers")
            .join("records")
            .join(format!("{id}.json"))
    }

    /// CreateContainer: mounts the rootfs (an overlay of the image's layers and the
    /// container's own upper directory) and writes the OCI bundle.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String> {
        let pod_entry = self.sandbox(pod_id)?;
        // kubelet starts a container right after creating it: the grace period of the OCI
        // runtime's cgroup move can pass meanwhile (see `cgroupwarm`).
        self.inner.warmer.warm();
        let pod = pod_entry.get();
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata.name is empty".into(),
            ));
        }
        super::signals::check_cri(config.stop_signal)?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::InvalidArgument("container config has no image".into()))?;
        let image = self
            .inner
            .images
            .status(&image_name)?
            .ok_or_else(|| Error::NotFound(format!("image {image_name:?} not found")))?;
        // The pod's own config is authoritative; kubelet sends the same one in the request.
        let _ = sandbox_config;
        let sandbox_config = pod.config.clone();
        let log_path = resolve_log_path(&sandbox_config.log_directory, &config.log_path)?;
        let guard = self.reserve(
            name_key(&pod.id, &meta),
            &format!(
                "container name {:?} (attempt {}) in pod {}",
                meta.name, meta.attempt, pod.id
            ),
        )?;
        let (volumes, volume_ids) = self.image_volumes(&config)?;
        let id = new_id();
        let bundle = self.inner.opts.state.join("containers").join(&id);
        let dir = self.inner.opts.root.join("containers").join(&id);
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.id.clone(),
            image_ref: image_name.clone(),
            image_digest_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            created_at_ns: now_ns(),
            started_at_ns: 0,
            log_path,
            bundle: bundle.clone(),
            dir: dir.clone(),
            pid: 0,
            start_error: None,
            // The pod's own (1.33) over the image's STOPSIGNAL.
            stop_signal: super::signals::from_cri(config.stop_signal)
                .and_then(super::signals::signal_name)
                .or_else(|| {
                    image
                        .config
                        .config
                        .as_ref()
                        .and_then(|c| c.stop_signal.clone())
                }),
            cgroup_path: format!("{}/{}", pod.cgroup_parent.trim_end_matches('/'), id),
            exit_message: None,
            image_volumes: volume_ids,
            user: None,
            state: Lifecycle::Created,
        };
        let lowers = self.inner.images.lower_dirs(&image)?;
        let svc = self.clone();
        let rec2 = rec.clone();
        let image_config = image.config.clone();
        let mut rec = rec;
        let built = tokio::task::spawn_blocking(move || {
            svc.prepare_bundle(
                &rec2,
                &pod,
                &sandbox_config,
                &image_config,
                &lowers,
                &volumes,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("create container task: {e}")))?;
        match built {
            Ok(user) => rec.user = user,
            Err(e) => {
                cleanup_bundle(&bundle, &dir);
                return Err(e);
            }
        }
        // Fsynced after the reply: lost in a crash of the machine, the container's
        // directories are orphans that recovery removes, and kubelet, told it does not
        // exist, creates another.
        if let Err(e) = records::save_soon(&self.container_record_path(&id), &rec, &self.inner.sync)
        {
            cleanup_bundle(&bundle, &dir);
            return Err(e);
        }
        self.inner.store.add_container(rec);
        guard.keep();
        tracing::info!(container = %id, pod = %pod_id, name = %meta.name, "container created");
        Ok(id)
    }

    fn prepare_bundle(
        &self,
        rec: &ContainerRecord,
        pod: &records::SandboxRecord,
        sandbox_config: &cri::PodSandboxConfig,
        image: &crate::image::spec::ImageConfig,
        lowers: &[PathBuf],
        volumes: &[super::imagevolumes::ImageVolume],
    ) -> Result<Option<(u32, u32, Vec<u32>)>> {
        let rootfs = rec.bundle.join("rootfs");
        let upper = rec.dir.join("upper");
        let work = rec.dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
        }
        let empty;
        let lowers: Vec<PathBuf> = if lowers.is_empty() {
            // overlayfs needs a lower layer; an image without layers gets an empty one.
            empty = rec.dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(|e| Error::io("create", &empty, e))?;
            vec![empty.clone()]
        } else {
            lowers.to_vec()
        };
        let user_ns = container_user_ns(pod, &rec.config)?;
        let userns_fd = user_ns
            .as_ref()
            .map(|u| crate::sandbox::idmap::open_userns(&u.path))
            .transpose()?;
        let idmap = userns_fd
            .as_ref()
            .zip(user_ns.as_ref().map(|u| u.mappings.root()));
        super::usermounts::mount_rootfs(&rootfs, &lowers, &upper, &work, idmap)?;
        let mut mounted = Vec::with_capacity(volumes.len());
        for v in volumes {
            mounted.push((
                v.index,
                super::imagevolumes::mount(&rec.bundle, v, userns_fd.as_ref())?,
            ));
        }
        let mut spec_config = rec.config.clone();
        spec_config.mounts = super::imagevolumes::with_host_paths(&rec.config.mounts, &mounted);
        let nso = pod.ns_options();
        let node = cri::NamespaceMode::Node as i32;
        let cnso = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_else(|| nso.clone());
        let pid = if cnso.pid == node {
            crate::oci::spec::PidMode::Host
        } else if cnso.pid == cri::NamespaceMode::Target as i32 && !cnso.target_id.is_empty() {
            let target = self.container(&cnso.target_id)?.get();
            crate::oci::spec::PidMode::Target(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
        } else if cnso.pid == cri::NamespaceMode::Pod as i32 {
            match pod.pause_pid {
                Some(p) => {
                    crate::oci::spec::PidMode::Pod(PathBuf::from(format!("/proc/{p}/ns/pid")))
                }
                None => crate::oci::spec::PidMode::Container,
            }
        } else {
            crate::oci::spec::PidMode::Container
        };
        let inputs = crate::oci::spec::SpecInputs {
            container_id: &rec.id,
            config: &spec_config,
            sandbox: sandbox_config,
            image,
            rootfs: &rootfs,
            network_ns: pod.namespaces.network.clone(),
            ipc_ns: pod.namespaces.ipc.clone(),
            uts_ns: pod.namespaces.uts.clone(),
            pid,
            user_ns,
            hostname_file: Some(pod.hostname_file.clone()),
            hosts_file: Some(pod.hosts_file.clone()),
            resolv_conf: Some(pod.resolv_file.clone()),
            shm: pod.shm.clone(),
            cgroups_path: rec.cgroup_path.clone(),
            seccomp_localhost_root: &self.inner.opts.root.join("seccomp"),
            min_oom_score_adj: self.inner.min_oom_score_adj,
            sandbox_id: &pod.id,
        };
        let mut spec = crate::oci::spec::build_spec(&inputs)?;
        let skip: Vec<usize> = mounted.iter().map(|(i, _)| *i).collect();
        super::usermounts::stage_volumes(
            &mut spec,
            &spec_config.mounts,
            &skip,
            &rec.bundle,
            userns_fd.as_ref(),
        )?;
        let user = spec.process().as_ref().map(|p| {
            let u = p.user();
            (
                u.uid(),
                u.gid(),
                u.additional_gids().clone().unwrap_or_default(),
            )
        });
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::Internal(format!("encode OCI spec: {e}")))?;
        // Read by the OCI runtime at start only, never after a crash (a bundle without a
        // record is removed, and a container is not started twice): no fsync, no rename.
        // Root's only: it holds the environment (secrets), and the path to it is open to
        // traversal for user-namespaced containers.
        let path = rec.bundle.join("config.json");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(&json))
                .map_err(|e| Error::io("write", &path, e))?;
        }
        Ok(user)
    }

    /// The image volumes `config` asks for, resolved against the pulled images, and the
    /// IDs of their images by mount index.
    fn image_volumes(
        &self,
        config: &cri::ContainerConfig,
    ) -> Result<(
        Vec<super::imagevolumes::ImageVolume>,
        super::imagevolumes::VolumeIds,
    )> {
        let mut volumes = Vec::new();
        let mut ids = Vec::new();
        for (index, m) in config.mounts.iter().enumerate() {
            let Some(spec) = m.image.as_ref().filter(|_| m.host_path.is_empty()) else {
                continue;
            };
            let name = spec.image.trim();
            if name.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: an image volume needs an image",
                    m.container_path
                )));
            }
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: an image volume is read-only; set readonly",
                    m.container_path
                )));
            }
            let image = self.inner.images.status(name)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "image {name:?} of the image volume at {:?} is not pulled",
                    m.container_path
                ))
            })?;
            volumes.push(super::imagevolumes::ImageVolume {
                index,
                lowers: self.inner.images.lower_dirs(&image)?,
                sub_path: super::imagevolumes::check_sub_path(&m.image_sub_path)?,
                image: name.to_string(),
            });
            ids.push((index, image.id));
        }
        Ok((volumes, ids))
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let entry = self.container(id)?;
        // runc moves the container's init into its cgroup (see `cgroupwarm`).
        self.inner.warmer.warm();
        let _op = entry.op.lock().await;
        let rec = entry.get();
        match self.lifecycle(&rec) {
            Lifecycle::Created => {}
            Lifecycle::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is already running",
                    rec.id
                )));
            }
            Lifecycle::Exited(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} has exited and cannot be started again",
                    rec.id
                )));
            }
        }
        let pod = self.sandbox(&rec.pod_id)?.get();
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let runtime = self.runtime(&pod.runtime_handler)?;
        let runtime_log = rec.bundle.join("runtime.log");
        let log_path = match &rec.log_path {
            Some(p) => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io("create log directory", parent, e))?;
                }
                p.clone()
            }
            None => PathBuf::from("/dev/null"),
        };
        // Before the process exists, so that its exit cannot be missed.
        self.inner.exit_watch.watch(&rec.id, &rec.dir);
        let client = monitor::MonitorClient::new(pod.monitor_socket.clone());
        // A terminal container: runc sends the pty master to the monitor on this socket.
        let console_socket = rec
            .config
            .tty
            .then(|| super::streaming::console_socket_path(&pod.monitor_socket, "c", &rec.id));
        let req = monitor::CreateRequest {
            container_id: rec.id.clone(),
            argv: runtime.run_argv(
                &rec.id,
                &rec.bundle,
                &rec.bundle.join("init.pid"),
                &runtime_log,
                console_socket.as_deref(),
            ),
            pid_file: rec.bundle.join("init.pid"),
            log_path,
            exit_file: rec.exit_file(),
            oom_control: self.inner.cgroups.oom_file(&rec.cgroup_path).ok().flatten(),
            timeout_secs: 120,
            console_socket,
            stdin: rec.config.stdin,
            stdin_once: rec.config.stdin_once,
        };
        let fail = |svc: &PodService, message: String| {
            let mut r = entry.get();
            r.start_error = Some(message.clone());
            r.started_at_ns = now_ns();
            r.state = Lifecycle::Exited(start_failure(&r));
            let _ = records::save(&svc.container_record_path(&r.id), &r);
            svc.inner.store.update_container(&entry, |x| *x = r);
            Error::Internal(message)
        };
        let outcome = client.create(req).await;
        // The container's mount namespace has its own copies now.
        super::usermounts::release_volumes(&rec.bundle);
        let created = match outcome {
            Ok(c) => c,
            Err(e) => {
                let msg = match e {
                    monitor::MonitorError::RuntimeFailed { .. } => {
                        crate::ociruntime::failure_message(&runtime_log, b"", None)
                    }
                    other => other.to_string(),
                };
                let _ = runtime.delete(&rec.id, &runtime_log).await;
                return Err(fail(self, format!("start container {}: {msg}", rec.id)));
            }
        };
        let started_at = now_ns();
        let mut r = entry.get();
        r.pid = created.pid;
        r.started_at_ns = started_at;
        // Fsynced after the reply: lost in a crash of the machine, the container is
        // recovered as created instead of exited (or, its record left unreadable, removed
        // as an orphan), and its pod is not ready either way.
        r.state = Lifecycle::Running;
        records::save_soon(&self.container_record_path(&r.id), &r, &self.inner.sync)?;
        self.inner.store.update_container(&entry, |x| *x = r);
        tracing::info!(container = %rec.id, pid = created.pid, "container started");
        Ok(())
    }

    /// StopContainer: the image's stop signal (default SIGTERM), SIGKILL after `timeout`
    /// seconds. Idempotent for containers that are not running and for unknown IDs.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        // Idempotent like RemoveContainer: an unknown ID is already stopped (critest's
        // Idempotence spec, CRI-O's answer).
        let entry = match self.container(id) {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        let rec = entry.get();
        if self.lifecycle(&rec) != Lifecycle::Running {
            return Ok(());
        }
        let pod = self.sandbox(&rec.pod_id)?.get();
        let runtime = self.runtime(&pod.runtime_handler)?;
        let log = rec.bundle.join("runtime.log");
        if timeout > 0 {
            let sig = stop_signal_of(&rec);
            // The init is the monitor's child and is not reaped before its exit is recorded,
            // so while the container is running its pid cannot have been reused: signal it
            // directly instead of paying for a runtime invocation.
            let sent = rec.pid > 0
                && self.lifecycle(&rec) == Lifecycle::Running
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(rec.pid),
                    nix::sys::signal::Signal::try_from(sig).ok(),
                )
                .is_ok();
            if !sent && let Err(e) = runtime.kill(&rec.id, &log, sig, false).await {
                tracing::debug!(container = %rec.id, error = %e, "stop signal");
            }
            if self
                .wait_exit(&rec, Duration::from_secs(timeout as u64))
                .await
            {
                let _ = runtime.delete(&rec.id, &log).await;
                return Ok(());
            }
        }
        // Every process of the container, through its cgroup (what `runc kill --all` does),
        // falling back to the runtime when the cgroup cannot be read.
        let killed = self
            .inner
            .cgroups
            .kill_all(&rec.cgroup_path)
            .unwrap_or(false);
        if !killed && let Err(e) = runtime.kill(&rec.id, &log, libc::SIGKILL, true).await {
            tracing::debug!(container = %rec.id, error = %e, "SIGKILL");
            // The runtime may have lost the container (e.g. it exited meanwhile); make sure
            // the init is gone by pid.
            if rec.pid > 0 && super::sandbox::process_alive(rec.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(rec.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !self.wait_exit(&rec, Duration::from_secs(30)).await {
            return Err(Error::DeadlineExceeded(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )));
        }
        let _ = runtime.delete(&rec.id, &log).await;
        tracing::info!(container = %rec.id, "container stopped");
        Ok(())
    }

    async fn wait_exit(&self, rec: &ContainerRecord, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if matches!(self.lifecycle(rec), Lifecycle::Exited(_)) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// RemoveContainer: kills a running container, deletes it from the runtime, unmounts
    /// and removes its rootfs and directories. Idempotent; unknown IDs are fine.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let entry = match self.container(id) {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let cid = entry.get().id;
        self.stop_container(&cid, 0).await?;
        let _op = entry.op.lock().await;
        let rec = entry.get();
        if let Ok(pod) = self.sandbox(&rec.pod_id).map(|e| e.get()) {
            if let Ok(runtime) = self.runtime(&pod.runtime_handler) {
                let _ = runtime
                    .delete(&rec.id, &rec.bundle.join("runtime.log"))
                    .await;
            }
            if pod.monitor_pid.is_some() {
                let _ = monitor::MonitorClient::new(pod.monitor_socket.clone())
                    .forget(&rec.id)
                    .await;
            }
        }
        let (bundle, dir) = (rec.bundle.clone(), rec.dir.clone());
        tokio::task::spawn_blocking(move || cleanup_bundle(&bundle, &dir))
            .await
            .map_err(|e| Error::Internal(format!("remove container task: {e}")))?;
        crate::fsutil::remove_all(&self.container_record_path(&rec.id))?;
        self.inner.exit_watch.forget(&rec.id);
        self.inner.store.remove_container(&rec.id);
        release_name(&self.inner, &name_key(&rec.pod_id, &rec.metadata()));
        tracing::info!(container = %rec.id, "container removed");
        Ok(())
    }

    pub(crate) fn cri_state(l: &Lifecycle) -> cri::ContainerState {
        match l {
            Lifecycle::Created => cri::ContainerState::ContainerCreated,
            Lifecycle::Running => cri::ContainerState::ContainerRunning,
            Lifecycle::Exited(_) => cri::ContainerState::ContainerExited,
        }
    }

    /// ContainerStatus.
    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse> {
        let rec = self.container(id)?.get();
        let status = status_of(&rec);
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "id": rec.id,
                "sandboxID": rec.pod_id,
                "pid": rec.pid,
                "bundle": rec.bundle,
                "cgroupPath": rec.cgroup_path,
                "config": rec.config,
                "runtimeSpec": std::fs::read_to_string(rec.bundle.join("config.json")).ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    /// ExecSync: runs `cmd` in a running container; `timeout_secs` 0 means no limit.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        let rec = self.container(id)?.get();
        // runc exec moves the new process into the container's cgroup (see `cgroupwarm`).
        self.inner.warmer.warm();
        if self.lifecycle(&rec) != Lifecycle::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.sandbox(&rec.pod_id)?.get();
        let runtime = self.runtime(&pod.runtime_handler)?;
        let tag = new_id();
        let pid_file = rec.bundle.join(format!("exec-{}.pid", &tag[..12]));
        let log = rec.bundle.join(format!("exec-{}.log", &tag[..12]));
        let timeout = (timeout_secs > 0).then(|| Duration::from_secs(timeout_secs as u64));
        let out = runtime
            .exec_sync(&rec.id, &log, &pid_file, cmd, timeout)
            .await;
        let _ = std::fs::remove_file(&log);
        out
    }

    /// UpdateContainerResources: applies new limits to a running container and records
    /// them for ContainerStatus.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let Some(resources) = resources else {
            return Ok(());
        };
        let entry = self.container(id)?;
        let _op = entry.op.lock().await;
        let rec = entry.get();
        if matches!(self.lifecycle(&rec), Lifecycle::Exited(_)) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let oci = crate::oci::spec::update_resources(&resources)?;
        if self.lifecycle(&rec) == Lifecycle::Running {
            let pod = self.sandbox(&rec.pod_id)?.get();
            let runtime = self.runtime(&pod.runtime_handler)?;
            let file = rec.bundle.join("resources.json");
            let json = serde_json::to_vec(&oci)
                .map_err(|e| Error::Internal(format!("encode resources: {e}")))?;
            crate::fsutil::write_atomic(&file, &json)?;
            runtime
                .update(&rec.id, &rec.bundle.join("runtime.log"), &file)
                .await?;
        }
        let mut r = rec;
        r.config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(resources);
        records::save(&self.container_record_path(&r.id), &r)?;
        self.inner.store.update_container(&entry, |x| *x = r);
        Ok(())
    }

    /// ReopenContainerLog: the monitor reopens the log file kubelet just rotated.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?.get();
        if self.lifecycle(&rec) != Lifecycle::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.sandbox(&rec.pod_id)?.get();
        monitor::MonitorClient::new(pod.monitor_socket.clone())
            .reopen_log(&rec.id)
            .await
            .map_err(|e| Error::Internal(format!("reopen log of container {}: {e}", rec.id)))
    }
}

fn cleanup_bundle(bundle: &Path, dir: &Path) {
    if super::usermounts::unmount_bundle(bundle) {
        let _ = crate::fsutil::remove_all(bundle);
    }
    let _ = crate::fsutil::remove_all(dir);
}

/// The pod's user namespace as a container joins it, or `None` for the host's. A container
/// that asks for other user namespace options than its pod's is refused (kubelet sends the
/// pod's).
fn container_user_ns(
    pod: &records::SandboxRecord,
    config: &cri::ContainerConfig,
) -> Result<Option<crate::oci::spec::UserNs>> {
    let pod_mappings = crate::sandbox::userns::from_pod_options(&pod.ns_options())?;
    let asked = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .filter(|n| n.userns_options.is_some());
    if let Some(nso) = asked
        && crate::sandbox::userns::from_pod_options(nso)? != pod_mappings
    {
        return Err(Error::InvalidArgument(
            "the container's user namespace options differ from its pod's".into(),
        ));
    }
    match (pod_mappings, &pod.namespaces.user) {
        (Some(mappings), Some(path)) => Ok(Some(crate::oci::spec::UserNs {
            path: path.clone(),
            mappings,
        })),
        (Some(_), None) => Err(Error::FailedPrecondition(format!(
            "pod sandbox {} has no pinned user namespace",
            pod.id
        ))),
        (None, _) => Ok(None),
    }
}

/// The absolute log path of a container: `log_directory` joined with the relative
/// `log_path`, which must not climb out of it lexically or through a symlink.
pub fn resolve_log_path(log_directory: &str, log_path: &str) -> Result<Option<PathBuf>> {
    if log_path.is_empty() {
        return Ok(None);
    }
    if log_directory.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} given but the pod has no log_directory"
        )));
    }
    let base = Path::new(log_directory);
    if !base.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "log_directory {log_directory:?} must be an absolute path"
        )));
    }
    let rel = Path::new(log_path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} must be relative to the log directory without '..'"
        )));
    }
    let full = base.join(rel);
    // Create the directories and check that, with symlinks resolved, the file's parent is
    // still inside the log directory.
    let parent = full.parent().unwrap_or(base);
    std::fs::create_dir_all(parent).map_err(|e| Error::io("create log directory", parent, e))?;
    let real_base = base
        .canonicalize()
        .map_err(|e| Error::io("resolve", base, e))?;
    let real_parent = parent
        .canonicalize()
        .map_err(|e| Error::io("resolve", parent, e))?;
    if !real_parent.starts_with(&real_base) {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} escapes log_directory {log_directory:?} through a symlink"
        )));
    }
    if let Ok(m) = std::fs::symlink_metadata(&full)
        && m.file_type().is_symlink()
    {
        return Err(Error::InvalidArgument(format!(
            "log_path {log_path:?} is a symlink"
        )));
    }
    Ok(Some(real_parent.join(full.file_name().unwrap_or_default())))
}

/// The signal StopContainer sends first: the container's stop signal (its config's, else
/// its image's), SIGTERM when it has none or one this host does not know.
fn stop_signal_of(rec: &ContainerRecord) -> i32 {
    rec.stop_signal
        .as_deref()
        .and_then(super::signals::signal_number)
        .unwrap_or(libc::SIGTERM)
}

/// A container's ContainerStatus (the one its ContainerStatus call, the list of its pod
/// in an event, and a verbose answer share).
pub(crate) fn status_of(rec: &ContainerRecord) -> cri::ContainerStatus {
    let life = &rec.state;
    let (finished_at, exit_code, reason, message) = match life {
        Lifecycle::Exited(x) => {
            let reason = if rec.start_error.is_some() {
                "Error"
            } else if x.oom_killed {
                "OOMKilled"
            } else if x.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            (
                x.finished_at_ns,
                x.exit_code,
                reason.to_string(),
                rec.start_error
                    .clone()
                    .or_else(|| rec.exit_message.clone())
                    .unwrap_or_default(),
            )
        }
        _ => (0, 0, String::new(), String::new()),
    };
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(rec.metadata()),
        state: PodService::cri_state(life) as i32,
        created_at: rec.created_at_ns,
        // A process that exits before the runtime call that started it returns has a
        // recorded start after its exit; the start cannot be later than the exit.
        started_at: match (&rec.start_error, life) {
            (Some(_), _) => 0,
            (None, Lifecycle::Exited(x)) => rec.started_at_ns.min(x.finished_at_ns),
            (None, _) => rec.started_at_ns,
        },
        finished_at,
        exit_code,
        image: Some(cri::ImageSpec {
            image: rec.image_ref.clone(),
            ..Default::default()
        }),
        image_ref: rec.image_digest_ref.clone(),
        reason,
        message,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: super::imagevolumes::reported(&rec.config.mounts, &rec.image_volumes),
        log_path: rec
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                ..Default::default()
            }),
        image_id: rec.image_id.clone(),
        stop_signal: super::signals::cri_signal(stop_signal_of(rec)) as i32,
        user: rec
            .user
            .as_ref()
            .map(|(uid, gid, groups)| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: i64::from(*uid),
                    gid: i64::from(*gid),
                    supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
                }),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::store::tests::container;

    #[test]
    fn recovered_states_come_from_the_record_and_the_exit_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = container("c", "p", 10);
        c.dir = dir.path().to_path_buf();
        assert_eq!(state_on_disk(&c), Lifecycle::Created);
        c.started_at_ns = 20;
        assert_eq!(state_on_disk(&c), Lifecycle::Running);
        let exit = ExitInfo {
            exit_code: 2,
            signal: None,
            finished_at_ns: 30,
            oom_killed: false,
        };
        monitor::write_exit_file(&c.exit_file(), &exit).unwrap();
        assert_eq!(state_on_disk(&c), Lifecycle::Exited(exit));
        // Recorded as created but exited: a crash between the runtime's start and the
        // start record.
        c.started_at_ns = 0;
        assert_eq!(state_on_disk(&c), Lifecycle::Exited(exit));
        c.start_error = Some("runc: boom".into());
        c.started_at_ns = 40;
        assert_eq!(
            state_on_disk(&c),
            Lifecycle::Exited(ExitInfo {
                exit_code: START_FAILURE_EXIT_CODE,
                signal: None,
                finished_at_ns: 40,
                oom_killed: false,
            })
        );
    }

    #[test]
    fn statuses_say_why_a_container_exited() {
        let mut c = container("c", "p", 10);
        c.started_at_ns = 50;
        let exit = |code, oom| {
            Lifecycle::Exited(ExitInfo {
                exit_code: code,
                signal: None,
                finished_at_ns: 40,
                oom_killed: oom,
            })
        };
        c.state = exit(0, false);
        let st = status_of(&c);
        assert_eq!((st.reason.as_str(), st.exit_code), ("Completed", 0));
        assert_eq!(st.started_at, 40, "a start is never after the exit");
        c.state = exit(137, true);
        assert_eq!(status_of(&c).reason, "OOMKilled");
        c.state = exit(137, false);
        c.exit_message = Some("the pod's monitor (pid 7) died".into());
        let st = status_of(&c);
        assert_eq!(
            (st.reason.as_str(), st.message.as_str()),
            ("Error", "the pod's monitor (pid 7) died")
        );
        c.state = Lifecycle::Running;
        let st = status_of(&c);
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        assert_eq!((st.finished_at, st.reason.as_str()), (0, ""));
    }

    #[test]
    fn log_paths_are_contained() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("logs");
        std::fs::create_dir_all(&base).unwrap();
        let b = base.to_str().unwrap();
        let p = resolve_log_path(b, "c/0.log").unwrap().unwrap();
        assert!(p.starts_with(base.canonicalize().unwrap()));
        assert!(resolve_log_path(b, "../x.log").is_err());
        assert!(resolve_log_path(b, "/etc/x.log").is_err());
        assert!(resolve_log_path("rel", "x.log").is_err());
        assert!(resolve_log_path("", "x.log").is_err());
        assert_eq!(resolve_log_path(b, "").unwrap(), None);
        std::os::unix::fs::symlink(d.path(), base.join("up")).unwrap();
        assert!(resolve_log_path(b, "up/x.log").is_err());
        assert!(!d.path().join("x.log").exists());
    }
}
