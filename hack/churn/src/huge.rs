//! A huge node (`berth-churn --exited-containers N`): N exited containers in berth's store,
//! as a node with heavy CronJob churn and no container GC holds them. One pod and one real
//! exited container are made through the CRI, with the labels and annotations kubelet
//! puts on containers; berthd is stopped and that container's record and exit file are
//! cloned N times (new IDs, attempts counting up); berthd is started on them. Measured:
//! the start (recovery) time, berthd's RSS per record, ListContainers' answer size and
//! latency against gRPC's 16 MiB limit, StreamContainers' latency and batches, and the
//! cost of RemoveContainer and RemovePodSandbox on such a node; then the host is searched
//! for leaks as after the churn. The clones have no OCI runtime state (as after a reboot,
//! /run being a tmpfs), so their removal costs what berth itself does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::cri_api as api;
use e2e::pods::PodEnv;
use futures_util::StreamExt;
use prost::Message;
use serde_json::Value;

use crate::leaks;

/// How many of the clones are removed through the CRI, for the per-removal cost.
const REMOVED_THROUGH_CRI: usize = 200;

/// kubelet's labels and annotations on a container (pkg/kubelet/kuberuntime/labels.go).
fn kubelet_like(env: &PodEnv, pod: &api::PodSandboxConfig) -> api::ContainerConfig {
    let mut c = env.container_config("job", &["true"]);
    let meta = pod.metadata.clone().unwrap_or_default();
    c.labels = [
        ("io.kubernetes.container.name", "job".to_string()),
        ("io.kubernetes.pod.name", meta.name.clone()),
        ("io.kubernetes.pod.namespace", meta.namespace.clone()),
        ("io.kubernetes.pod.uid", meta.uid.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    c.annotations = [
        ("io.kubernetes.container.hash", "9f2a7c41"),
        ("io.kubernetes.container.restartCount", "0"),
        (
            "io.kubernetes.container.terminationMessagePath",
            "/dev/termination-log",
        ),
        ("io.kubernetes.container.terminationMessagePolicy", "File"),
        ("io.kubernetes.pod.terminationGracePeriod", "30"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Writes `n` clones of the container record at `template` (and of its exit file) into
/// berth's directories; returns their IDs.
fn clone_records(root: &Path, template_id: &str, n: usize) -> Result<Vec<String>> {
    let records = root.join("containers/records");
    let path = records.join(format!("{template_id}.json"));
    let template: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let dir = PathBuf::from(template["dir"].as_str().context("record has no dir")?);
    let exit = std::fs::read(dir.join("exit.json")).context("the template's exit file")?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{:064x}", 0xb0b0_0000_0000_0000u64 + i as u64);
        let mut rec = template.clone();
        let cdir = root.join("containers").join(&id);
        std::fs::create_dir_all(&cdir)?;
        std::fs::write(cdir.join("exit.json"), &exit)?;
        rec["id"] = Value::from(id.clone());
        rec["dir"] = Value::from(cdir.to_string_lossy().into_owned());
        let bundle = PathBuf::from(template["bundle"].as_str().unwrap_or_default());
        if let Some(parent) = bundle.parent() {
            rec["bundle"] = Value::from(parent.join(&id).to_string_lossy().into_owned());
        }
        rec["config"]["metadata"]["attempt"] = Value::from(i + 1);
        std::fs::write(
            records.join(format!("{id}.json")),
            serde_json::to_vec(&rec)?,
        )?;
        ids.push(id);
    }
    Ok(ids)
}

/// Runs the huge-node measurement with `n` exited containers.
pub async fn run(n: usize) -> Result<()> {
    let cgroup_parent = format!("/{}", e2e::pods::unique("berth-huge"));
    let extra = format!("[runtime]\ndefault_cgroup_parent = \"{cgroup_parent}\"\n");
    let mut env = PodEnv::with_busybox_options(|mut o| {
        o.extra_config = extra;
        o
    })
    .await
    .context("starting the registry and berthd")?;
    let scan = leaks::Scope::of(&env, &cgroup_parent);
    let pod = env.pod_config("huge");
    let pod_id = env.run_pod(&pod).await?;
    let cfg = kubelet_like(&env, &pod);
    let template = env.run_container(&pod_id, &cfg, &pod).await?;
    env.wait_container_state(
        &template,
        api::ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await?;
    let rss_before = rss_kib(env.berthd.pid());
    env.berthd.kill9()?;
    let root = env.berthd.root();
    let t = Instant::now();
    let ids = clone_records(&root, &template, n)?;
    let cloning = t.elapsed();

    let t = Instant::now();
    env.berthd.launch().await?;
    let start = t.elapsed();
    env.reconnect().await?;
    let rss_after = rss_kib(env.berthd.pid());

    // With kubelet's 16 MiB receive limit (the harness's client has it).
    let mut list_times = Vec::new();
    let mut list_answer = Ok(0);
    for _ in 0..5 {
        let t = Instant::now();
        let r = env
            .cri
            .runtime
            .clone()
            .list_containers(api::ListContainersRequest { filter: None })
            .await;
        list_times.push(t.elapsed());
        list_answer = match r {
            Ok(r) => Ok(r.into_inner().encoded_len()),
            Err(e) => Err(e.message().to_string()),
        };
    }
    let mut stream_times = Vec::new();
    let (mut batches, mut streamed) = (0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = env
            .cri
            .runtime
            .clone()
            .stream_containers(api::StreamContainersRequest { filter: None })
            .await?
            .into_inner();
        (batches, streamed) = (0, 0);
        while let Some(b) = s.next().await {
            batches += 1;
            streamed += b?.containers.len();
        }
        stream_times.push(t.elapsed());
    }
    if streamed != n + 1 {
        bail!(
            "StreamContainers carried {streamed} containers, not {}",
            n + 1
        );
    }

    let t = Instant::now();
    let removed = REMOVED_THROUGH_CRI.min(n);
    for id in &ids[..removed] {
        env.remove_container(id).await?;
    }
    let per_removal = t.elapsed() / u32::try_from(removed.max(1)).unwrap_or(1);

    // The rest with the pod, as kubelet's pod GC removes it.
    env.stop_pod(&pod_id).await?;
    let t = Instant::now();
    env.remove_pod(&pod_id).await?;
    let pod_removal = t.elapsed();
    crate::chaos::restart(&mut env).await?;
    let found = scan.search(&env).await;
    drop(env);
    leaks::cleanup_cgroup_parent(&cgroup_parent);

    let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
    println!("berth-churn: a node with {n} exited containers (kubelet's labels and annotations)");
    println!("  records cloned in {:.1} s", cloning.as_secs_f64());
    println!(
        "  berthd start on them (recovery, until the socket answers): {:.2} s",
        start.as_secs_f64()
    );
    println!(
        "  berthd RSS: {:.1} MiB with 1 container, {:.1} MiB with {}: {:.0} bytes per record",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        n + 1,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / n.max(1) as f64
    );
    match &list_answer {
        Ok(bytes) => println!(
            "  ListContainers: {:.1} MiB ({} bytes per container), under kubelet's 16 MiB limit, median {:.0} ms",
            mib(*bytes),
            bytes / (n + 1),
            median(list_times).as_secs_f64() * 1e3
        ),
        Err(e) => {
            println!("  ListContainers: refused by a client with kubelet's 16 MiB limit: {e}")
        }
    }
    println!(
        "  StreamContainers: {batches} responses, median {:.0} ms",
        median(stream_times).as_secs_f64() * 1e3
    );
    println!(
        "  RemoveContainer of an exited container without runtime state (as after a reboot): {:.1} ms each ({removed} removed)",
        per_removal.as_secs_f64() * 1e3
    );
    println!(
        "  RemovePodSandbox with the other {} containers: {:.1} s",
        n + 1 - removed,
        pod_removal.as_secs_f64()
    );
    for l in &found {
        println!("  LEAK: {l}");
    }
    if !found.is_empty() {
        bail!("{} leak(s) found", found.len());
    }
    if start > Duration::from_secs(5) {
        bail!(
            "berthd took {:.1} s to start on {n} records (goal: under 5 s)",
            start.as_secs_f64()
        );
    }
    println!("berth-churn: nothing left behind");
    Ok(())
}
