//! The workloads of issue 5, run on both runtimes alternately (the runtime that goes first
//! swaps every iteration, so neither profits from a warm-up or suffers a drift alone):
//!
//! 1. cold pull of the multi-layer image (the image and its layers removed before each);
//! 2. sequential pod starts (RunPodSandbox + CreateContainer + StartContainer);
//! 4. sequential teardowns of those pods (StopPodSandbox + RemovePodSandbox);
//! 3. pod starts in parallel batches, up to the plan's running pods;
//! 5. with those pods running: ListContainers, ListPodSandbox, ContainerStatus,
//!    ListContainerStats, and Version after a pause (the floor of a call);
//! 6. memory of each runtime and its helpers at 0 pods, one batch and all pods;
//! 7. ExecSync probes, streaming exec (first byte, 100 MiB) and a monitor or shim with an
//!    attach session (see `streams`);
//!
//! and finally the parallel pods are torn down in parallel batches.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::join_all;
use tonic::Code;

use crate::floor::RuncFloor;
use crate::images::{BUSYBOX_REF, BenchImages, PAUSE_REF, PULL_REF};
use crate::memory::{self, Mem, ProcTable};
use crate::pods::{self, Pod};
use crate::results::{BERTH, CONTAINERD, MemLevel, Results};
use crate::runtime::{Kind, Runtime};

/// The runtimes in the order of an iteration: berth first on even ones.
pub fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) {
        [BERTH, CONTAINERD]
    } else {
        [CONTAINERD, BERTH]
    }
}

/// Runs every workload on `rts` (`[berth, containerd]`), recording into `results`; `floor`
/// samples runc alone alongside the sequential pods.
pub async fn run_all(
    rts: &[Runtime; 2],
    images: &BenchImages,
    floor: &mut RuncFloor,
    results: &mut Results,
) -> Result<()> {
    let plan = results.plan.clone();
    eprintln!(
        "berth-bench: (1) cold pulls: {} per runtime",
        plan.pull_runs
    );
    pull_cold(rts, images, plan.pull_runs, results).await?;

    for (r, rt) in rts.iter().enumerate() {
        let id = rt
            .client
            .pull(BUSYBOX_REF)
            .await
            .with_context(|| format!("{}: pulling busybox", rt.name()))?;
        check_image_id(rt, BUSYBOX_REF, &id, &images.busybox.config_digest)?;
        if rts[r].kind == Kind::Containerd {
            // kubelet keeps the sandbox image pulled; so does the bench, before timing.
            let id = rt
                .client
                .pull(PAUSE_REF)
                .await
                .context("containerd: pulling the pause image")?;
            check_image_id(rt, PAUSE_REF, &id, &images.pause.config_digest)?;
        }
    }

    let none: [Vec<Pod>; 2] = [Vec::new(), Vec::new()];
    results.memory.push(sample_memory(rts, &none).await?);

    eprintln!(
        "berth-bench: (2) sequential pod starts and (4) teardowns: {} per runtime",
        plan.sequential_pods
    );
    sequential(rts, plan.sequential_pods, floor, results).await?;

    eprintln!(
        "berth-bench: (3) pod starts, {} at once, up to {} pods per runtime",
        plan.parallelism, plan.running_pods
    );
    let running = parallel_starts(rts, plan.parallelism, plan.batches(), results).await?;

    eprintln!(
        "berth-bench: (5) list and status calls with {} pods: {} rounds",
        plan.running_pods, plan.list_rounds
    );
    list_calls(rts, &running, plan.list_rounds, results).await?;
    eprintln!("berth-bench: (7) exec probes and streaming exec / attach");
    let (rounds, throughput) = match plan.mode {
        crate::plan::Mode::Smoke => (2, 1),
        crate::plan::Mode::Quick => (plan.list_rounds, 2),
        crate::plan::Mode::Full => (plan.list_rounds, 5),
    };
    // Run against containerd end to end in full runs (docs/benchmarks.md): a failure now
    // is a failure of the run, like every other step's.
    crate::streams::run(rts, &running, rounds, throughput, results)
        .await
        .context("the streaming workloads (7)")?;
    eprintln!("berth-bench: (6) memory with {} pods", plan.running_pods);
    let top = sample_memory(rts, &running).await?;
    if top.pods != plan.parallelism {
        results.memory.push(top);
    }

    let idle = match plan.mode {
        crate::plan::Mode::Smoke => Duration::from_secs(1),
        crate::plan::Mode::Quick => Duration::from_secs(5),
        crate::plan::Mode::Full => Duration::from_secs(20),
    };
    eprintln!(
        "berth-bench: (8) idle CPU with {} pods over {idle:?}",
        plan.running_pods
    );
    crate::idle::measure(rts, &running, idle, results).await?;
    let polled = match plan.mode {
        crate::plan::Mode::Smoke => Duration::from_secs(2),
        crate::plan::Mode::Quick => Duration::from_secs(10),
        crate::plan::Mode::Full => Duration::from_secs(60),
    };
    eprintln!(
        "berth-bench: (8) CPU with {} pods over {polled:?} of kubelet's polling",
        plan.running_pods
    );
    crate::idle::measure_polled(rts, &running, polled, results).await?;

    eprintln!(
        "berth-bench: tearing down {} pods per runtime",
        plan.running_pods
    );
    parallel_teardowns(rts, running, plan.parallelism, results).await?;

    let mib = match plan.mode {
        crate::plan::Mode::Smoke => 2,
        crate::plan::Mode::Quick => 20,
        crate::plan::Mode::Full => 200,
    };
    eprintln!("berth-bench: (9) container logs: {mib} MiB of short and of long lines");
    crate::logs::run(rts, mib, results)
        .await
        .context("the log workloads (9)")?;

    if let Some(n) = plan.scale_pods {
        eprintln!("berth-bench: (10) scale: up to {n} pods per runtime");
        crate::scale::run(rts, n, plan.parallelism, results)
            .await
            .context("the scale workload (10)")?;
    }
    Ok(())
}

/// Fails unless a pull returned the image ID (config digest) that was pushed.
fn check_image_id(rt: &Runtime, image: &str, got: &str, want: &str) -> Result<()> {
    if got != want {
        bail!(
            "{}: PullImage {image} returned {got}, the pushed image is {want}",
            rt.name()
        );
    }
    Ok(())
}

/// (1) `runs` cold pulls of the cold-pull image per runtime.
async fn pull_cold(
    rts: &[Runtime; 2],
    images: &BenchImages,
    runs: usize,
    results: &mut Results,
) -> Result<()> {
    // What an empty image store takes on disk, plus a tenth of the image: below that, the
    // image's content and unpacked layers are gone.
    let baseline = [
        e2e::util::tree_size(&rts[0].root),
        e2e::util::tree_size(&rts[1].root),
    ];
    let slack = images.pull_compressed / 10 + (1 << 20);
    let mut warm = [false, false];
    for i in 0..runs {
        for r in order(i) {
            let rt = &rts[r];
            if !make_cold(rt, baseline[r] + slack).await? {
                warm[r] = true;
            }
            let t = Instant::now();
            let id = rt
                .client
                .pull(PULL_REF)
                .await
                .with_context(|| format!("{}: cold pull of {PULL_REF}", rt.name()))?;
            results.record("pull", r, t.elapsed());
            check_image_id(rt, PULL_REF, &id, &images.pull.config_digest)?;
        }
    }
    for (r, rt) in rts.iter().enumerate() {
        if !make_cold(rt, baseline[r] + slack).await? {
            warm[r] = true;
        }
        if warm[r] {
            results.note(format!(
                "{}: after RemoveImage its root did not shrink back within 60 s: some pulls \
                 may have found layers left from the previous one",
                rt.name()
            ));
        }
    }
    Ok(())
}

/// Removes the cold-pull image (if present) and waits until `rt`'s root is at most
/// `max_bytes`. Returns whether it got there.
async fn make_cold(rt: &Runtime, max_bytes: u64) -> Result<bool> {
    let present = rt
        .client
        .has_image(PULL_REF)
        .await
        .with_context(|| format!("{}: ImageStatus", rt.name()))?;
    if present {
        rt.client
            .remove_image(PULL_REF)
            .await
            .with_context(|| format!("{}: RemoveImage {PULL_REF}", rt.name()))?;
    }
    let root = rt.root.clone();
    let shrunk = e2e::poll_until(Duration::from_secs(60), "the image store to shrink", || {
        let size = e2e::util::tree_size(&root);
        async move { Ok((size <= max_bytes).then_some(())) }
    })
    .await;
    Ok(shrunk.is_ok())
}

/// (2) and (4): `n` pods started one after the other on each runtime, then torn down one
/// after the other; and after each pair of pods, one runc container alone (the floor).
async fn sequential(
    rts: &[Runtime; 2],
    n: usize,
    floor: &mut RuncFloor,
    results: &mut Results,
) -> Result<()> {
    let mut pods: [Vec<Pod>; 2] = [Vec::new(), Vec::new()];
    for i in 0..n {
        let (start, delete) =
            tokio::task::block_in_place(|| floor.sample(false)).context("runc floor")?;
        results.record_floor("runc.start", start);
        results.record_floor("runc.delete", delete);
        let (warm, _) =
            tokio::task::block_in_place(|| floor.sample(true)).context("runc floor, warmed")?;
        results.record_floor("runc.start.warm", warm);
        for r in order(i) {
            let (pod, t) = pods::start(&rts[r], &format!("seq-{i}")).await?;
            results.record("start", r, t.total());
            results.record("start.run", r, t.run);
            results.record("start.create", r, t.create);
            results.record("start.start", r, t.start);
            if i == 0 {
                note_network(&rts[r], &pod, results).await;
            }
            pods[r].push(pod);
        }
    }
    for i in 0..n {
        for r in order(i) {
            let pod = pods[r].get(i).context("a started pod")?;
            let t = pods::teardown(&rts[r], pod).await?;
            results.record("teardown", r, t.total());
            results.record("teardown.stop", r, t.stop);
            results.record("teardown.remove", r, t.remove);
        }
    }
    Ok(())
}

/// Notes the first pod's IP per runtime: the figures compare networked pods only if both
/// ran the CNI plugins.
async fn note_network(rt: &Runtime, pod: &Pod, results: &mut Results) {
    match rt.client.pod_status(&pod.id, false).await {
        Ok((st, _)) => {
            let ip = st.network.map(|n| n.ip).unwrap_or_default();
            if ip.is_empty() {
                results.note(format!(
                    "{}: pods get no IP (CNI not run): its pod start and teardown figures \
                     leave out the CNI plugins' work",
                    rt.name()
                ));
            } else {
                results.note(format!(
                    "{}: pods get an IP from the bench network ({ip})",
                    rt.name()
                ));
            }
        }
        Err(s) => results.note(format!(
            "{}: PodSandboxStatus failed: {}",
            rt.name(),
            s.message()
        )),
    }
}

/// (3) `batches` batches of `par` pods started at once per runtime; memory is sampled after
/// the first batch. Returns the running pods.
async fn parallel_starts(
    rts: &[Runtime; 2],
    par: usize,
    batches: usize,
    results: &mut Results,
) -> Result<[Vec<Pod>; 2]> {
    let mut running: [Vec<Pod>; 2] = [Vec::new(), Vec::new()];
    for b in 0..batches {
        for r in order(b) {
            let rt = &rts[r];
            let names: Vec<String> = (0..par).map(|k| format!("par-{}", b * par + k)).collect();
            let t = Instant::now();
            let outcomes = join_all(names.iter().map(|n| pods::start(rt, n))).await;
            let wall = t.elapsed();
            let mut first_error = None;
            for o in outcomes {
                match o {
                    Ok((pod, times)) => {
                        results.record("par", r, times.total());
                        running[r].push(pod);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            results.record("par.batch", r, wall);
        }
        if b == 0 {
            results.memory.push(sample_memory(rts, &running).await?);
        }
    }
    Ok(running)
}

/// What the list phase saw, applied to the results afterwards (the calls run on a thread
/// of their own, which cannot borrow the results).
enum Seen {
    Sample(&'static str, usize, Duration),
    Unavailable(&'static str, usize),
    Note(String),
}

/// (5) `rounds` rounds of kubelet's per-second calls with the pods of `running` up, and
/// the same number of Version calls after a short pause, per runtime.
///
/// They are timed from a current-thread runtime on a thread of its own, with clients of
/// their own: the bench's multi-thread runtime hands every call between its threads (the
/// caller, tonic's buffer task, the connection task), which costs about as much as a whole
/// list call of either runtime on this machine and would hide the difference measured.
/// The Version row shows what remains: a call that does no work, after the same idle pause.
async fn list_calls(
    rts: &[Runtime; 2],
    running: &[Vec<Pod>; 2],
    rounds: usize,
    results: &mut Results,
) -> Result<()> {
    let sockets = [rts[0].socket.clone(), rts[1].socket.clone()];
    let names = [rts[0].name(), rts[1].name()];
    let containers: [Vec<String>; 2] = [0, 1].map(|r| {
        running[r]
            .iter()
            .map(|p| p.container.clone())
            .collect::<Vec<_>>()
    });
    let seen = tokio::task::spawn_blocking(move || -> Result<Vec<Seen>> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("list phase runtime")?
            .block_on(timed_list_rounds(sockets, names, containers, rounds))
    })
    .await
    .context("list phase thread")??;
    for s in seen {
        match s {
            Seen::Sample(key, r, d) => results.record(key, r, d),
            Seen::Unavailable(key, r) => results.unavailable(key, r, "Unimplemented"),
            Seen::Note(n) => results.note(n),
        }
    }
    Ok(())
}

/// The body of [`list_calls`], on its current-thread runtime.
async fn timed_list_rounds(
    sockets: [std::path::PathBuf; 2],
    names: [&'static str; 2],
    containers: [Vec<String>; 2],
    rounds: usize,
) -> Result<Vec<Seen>> {
    let mut clients = Vec::new();
    for (socket, name) in sockets.iter().zip(names) {
        clients.push(
            crate::client::Client::connect(socket)
                .await
                .with_context(|| format!("{name}: connecting the list-phase client"))?,
        );
    }
    let mut seen = Vec::new();
    let mut stats_off = [false, false];
    for round in 0..rounds {
        for r in order(round) {
            let c = &clients[r];
            let name = names[r];
            let t = Instant::now();
            let listed = c
                .list_containers()
                .await
                .with_context(|| format!("{name}: ListContainers"))?;
            seen.push(Seen::Sample("list.containers", r, t.elapsed()));
            let t = Instant::now();
            let sandboxes = c
                .list_pods()
                .await
                .with_context(|| format!("{name}: ListPodSandbox"))?;
            seen.push(Seen::Sample("list.pods", r, t.elapsed()));
            if round == 0
                && (listed.len() != containers[r].len() || sandboxes.len() != containers[r].len())
            {
                seen.push(Seen::Note(format!(
                    "{name}: listed {} containers and {} pods with {} running",
                    listed.len(),
                    sandboxes.len(),
                    containers[r].len()
                )));
            }
            if let Some(id) = containers[r].get(round % containers[r].len().max(1)) {
                let t = Instant::now();
                c.container_status(id)
                    .await
                    .with_context(|| format!("{name}: ContainerStatus"))?;
                seen.push(Seen::Sample("status.container", r, t.elapsed()));
            }
            if !stats_off[r] {
                let t = Instant::now();
                match c.list_container_stats().await {
                    Ok(_) => seen.push(Seen::Sample("list.stats", r, t.elapsed())),
                    Err(s) if s.code() == Code::Unimplemented => {
                        stats_off[r] = true;
                        seen.push(Seen::Unavailable("list.stats", r));
                    }
                    Err(s) => bail!("{name}: ListContainerStats: {s}"),
                }
            }
        }
    }
    for round in 0..rounds {
        for r in order(round) {
            // As idle as the first list call of a round.
            tokio::time::sleep(VERSION_PAUSE).await;
            let t = Instant::now();
            clients[r]
                .version()
                .await
                .with_context(|| format!("{}: Version", names[r]))?;
            seen.push(Seen::Sample("call.version", r, t.elapsed()));
        }
    }
    Ok(seen)
}

/// Idle time before each timed Version call.
const VERSION_PAUSE: Duration = Duration::from_millis(20);

/// Tears `running` down in parallel batches of `par` per runtime.
async fn parallel_teardowns(
    rts: &[Runtime; 2],
    running: [Vec<Pod>; 2],
    par: usize,
    results: &mut Results,
) -> Result<()> {
    let chunks: [Vec<&[Pod]>; 2] = [
        running[0].chunks(par.max(1)).collect(),
        running[1].chunks(par.max(1)).collect(),
    ];
    let batches = chunks[0].len().max(chunks[1].len());
    for b in 0..batches {
        for r in order(b) {
            let Some(batch) = chunks[r].get(b) else {
                continue;
            };
            let outcomes = join_all(batch.iter().map(|p| pods::teardown(&rts[r], p))).await;
            for o in outcomes {
                results.record("teardown.par", r, o?.total());
            }
        }
    }
    Ok(())
}

/// How many samples a memory figure is the median of, and how far apart.
const MEM_SAMPLES: usize = 3;
const MEM_INTERVAL: Duration = Duration::from_millis(300);

/// Memory of both runtimes with `pods` running: the daemon; the monitors / shims; the
/// pause processes (with their children). Each figure is the median of a few samples.
pub(crate) async fn sample_memory(rts: &[Runtime; 2], pods: &[Vec<Pod>; 2]) -> Result<MemLevel> {
    let mut level = MemLevel {
        pods: pods[0].len(),
        ..Default::default()
    };
    if pods[0].len() != pods[1].len() {
        bail!(
            "memory sample with {} berth pods and {} containerd pods",
            pods[0].len(),
            pods[1].len()
        );
    }
    for (r, rt) in rts.iter().enumerate() {
        let mut pause_roots = Vec::new();
        let mut monitors = HashSet::new();
        for pod in &pods[r] {
            let (_, info) = rt
                .client
                .pod_status(&pod.id, true)
                .await
                .with_context(|| format!("{}: PodSandboxStatus (verbose)", rt.name()))?;
            if let Some(p) = rt.pause_pid(&info) {
                pause_roots.push(p);
            }
            if let Some(p) = monitor_pid(&info) {
                monitors.insert(p);
            }
        }
        let daemon_pid = rt
            .daemon
            .pid()
            .with_context(|| format!("{} is not running", rt.name()))?;
        let mut daemon = Vec::new();
        let mut helpers = Vec::new();
        let mut pause = Vec::new();
        for s in 0..MEM_SAMPLES {
            if s > 0 {
                tokio::time::sleep(MEM_INTERVAL).await;
            }
            let table = ProcTable::read();
            let mut helper_pids: HashSet<i32> = rt.helper_pids(&table).into_iter().collect();
            helper_pids.extend(
                monitors
                    .iter()
                    .copied()
                    .filter(|p| table.procs.contains_key(p)),
            );
            let helper_pids: Vec<i32> = helper_pids.into_iter().collect();
            daemon.push(memory::of_pid(daemon_pid).unwrap_or_default());
            helpers.push(memory::of_pids(&helper_pids));
            pause.push(memory::of_pids(&table.subtrees(&pause_roots)));
        }
        level.daemon[r] = median_mem(&daemon);
        let (h, hn): (Vec<Mem>, Vec<usize>) = helpers.into_iter().unzip();
        level.helpers[r] = median_mem(&h);
        level.helper_count[r] = hn.into_iter().max().unwrap_or(0);
        let (p, pn): (Vec<Mem>, Vec<usize>) = pause.into_iter().unzip();
        level.pause[r] = median_mem(&p);
        level.pause_count[r] = pn.into_iter().max().unwrap_or(0);
    }
    Ok(level)
}

/// berth's `monitorPid` from a verbose PodSandboxStatus (absent for containerd).
pub(crate) fn monitor_pid(info: &std::collections::HashMap<String, String>) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("monitorPid")?
        .as_i64()
        .filter(|p| *p > 0)
        .and_then(|p| i32::try_from(p).ok())
}

/// Per-field median of memory samples.
fn median_mem(samples: &[Mem]) -> Mem {
    let field = |f: fn(&Mem) -> u64| -> u64 {
        let v: Vec<f64> = samples.iter().map(|m| f(m) as f64).collect();
        crate::stats::median(&v).unwrap_or(0.0) as u64
    };
    Mem {
        rss_kib: field(|m| m.rss_kib),
        pss_kib: field(|m| m.pss_kib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternates() {
        assert_eq!(order(0), [BERTH, CONTAINERD]);
        assert_eq!(order(1), [CONTAINERD, BERTH]);
        assert_eq!(order(2), [BERTH, CONTAINERD]);
    }

    #[test]
    fn medians_of_memory() {
        let m = |r, p| Mem {
            rss_kib: r,
            pss_kib: p,
        };
        assert_eq!(median_mem(&[m(1, 9), m(5, 1), m(3, 4)]), m(3, 4));
        assert_eq!(median_mem(&[]), Mem::default());
    }
}
