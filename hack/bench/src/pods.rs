//! One pod as kubelet would run it: a sandbox (network POD, PID per container, IPC POD, a
//! log directory, and a pod cgroup under the runtime's bench cgroup that the bench creates
//! before and removes after, as kubelet does) and one busybox container running `sleep`;
//! started with RunPodSandbox + CreateContainer + StartContainer and torn down with
//! StopPodSandbox + RemovePodSandbox. Only the CRI calls are timed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::cri_api as api;

use crate::images::BUSYBOX_REF;
use crate::runtime::Runtime;

/// A running pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Sandbox ID.
    pub id: String,
    /// The container's ID.
    pub container: String,
    /// The pod's cgroup (the sandbox's `cgroup_parent`).
    pub cgroup: String,
}

/// How long each step of a pod start took.
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    /// RunPodSandbox.
    pub run: Duration,
    /// CreateContainer.
    pub create: Duration,
    /// StartContainer.
    pub start: Duration,
}

impl StartTimes {
    /// The whole start.
    pub fn total(&self) -> Duration {
        self.run + self.create + self.start
    }
}

/// How long each step of a teardown took.
#[derive(Debug, Clone, Copy)]
pub struct TeardownTimes {
    /// StopPodSandbox.
    pub stop: Duration,
    /// RemovePodSandbox.
    pub remove: Duration,
}

impl TeardownTimes {
    /// The whole teardown.
    pub fn total(&self) -> Duration {
        self.stop + self.remove
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The sandbox config of pod `name` on `rt`, and its pod cgroup. Creates the pod's log
/// directory and cgroup, as kubelet does before RunPodSandbox.
pub fn pod_config(rt: &Runtime, name: &str) -> Result<(api::PodSandboxConfig, String)> {
    let uid = e2e::pods::unique("uid");
    let cgroup = format!("{}/pod{uid}", rt.cgroup_parent);
    crate::cgroups::create(&cgroup)?;
    let log_dir = rt.logs.join(format!("berth-bench_{name}_{uid}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "berth-bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(api::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["berth-bench.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: labels(&[("app", "berth-bench"), ("pod", name)]),
        annotations: labels(&[("berth-bench/run", "1")]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup.clone(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((config, cgroup))
}

/// The container: busybox `sleep 86400`.
pub fn container_config() -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "sleep".into(),
            attempt: 0,
        }),
        image: Some(e2e::spec(BUSYBOX_REF)),
        command: vec!["sleep".into(), "86400".into()],
        log_path: "sleep.log".into(),
        labels: labels(&[("container", "sleep")]),
        ..Default::default()
    }
}

/// Starts pod `name` on `rt` and times each step; the container is checked to be running
/// afterwards (not timed).
pub async fn start(rt: &Runtime, name: &str) -> Result<(Pod, StartTimes)> {
    let (config, cgroup) = pod_config(rt, name)?;
    let container = container_config();
    let c = &rt.client;
    let t0 = Instant::now();
    let id = c
        .run_pod(&config)
        .await
        .with_context(|| format!("{}: RunPodSandbox {name}", rt.name()))?;
    let t1 = Instant::now();
    rt.remember(&id);
    let cid = c
        .create_container(&id, &container, &config)
        .await
        .with_context(|| format!("{}: CreateContainer in {name}", rt.name()))?;
    let t2 = Instant::now();
    c.start_container(&cid)
        .await
        .with_context(|| format!("{}: StartContainer in {name}", rt.name()))?;
    let t3 = Instant::now();
    let status = c
        .container_status(&cid)
        .await
        .with_context(|| format!("{}: ContainerStatus in {name}", rt.name()))?;
    if status.state != api::ContainerState::ContainerRunning as i32 {
        bail!(
            "{}: container of {name} is not running after StartContainer: {status:?}",
            rt.name()
        );
    }
    Ok((
        Pod {
            id,
            container: cid,
            cgroup,
        },
        StartTimes {
            run: t1 - t0,
            create: t2 - t1,
            start: t3 - t2,
        },
    ))
}

/// Stops and removes `pod`, timing each step; then removes its pod cgroup (untimed, as
/// kubelet does after RemovePodSandbox).
pub async fn teardown(rt: &Runtime, pod: &Pod) -> Result<TeardownTimes> {
    let c = &rt.client;
    let t0 = Instant::now();
    c.stop_pod(&pod.id)
        .await
        .with_context(|| format!("{}: StopPodSandbox {}", rt.name(), pod.id))?;
    let t1 = Instant::now();
    c.remove_pod(&pod.id)
        .await
        .with_context(|| format!("{}: RemovePodSandbox {}", rt.name(), pod.id))?;
    let t2 = Instant::now();
    crate::cgroups::remove(&pod.cgroup);
    Ok(TeardownTimes {
        stop: t1 - t0,
        remove: t2 - t1,
    })
}
