//! (8) Idle CPU: what the daemon and its per-pod helpers (berth's monitors, containerd's
//! shims) burn while the pods just run, measured from their utime + stime in /proc over the
//! same window for both runtimes: first with nobody calling, then while a client makes
//! kubelet's calls (what a node pays all day).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::memory::ProcTable;
use crate::pods::Pod;
use crate::results::Results;
use crate::runtime::Runtime;

/// CPU time (user + system) of `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks() as f64)
}

/// The kernel's clock ticks per second, in which /proc reports CPU time.
fn clock_ticks() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz } else { 100 }
}

/// The daemon and helper pids of runtime `rt` with `pods` running.
async fn pids(rt: &Runtime, pods: &[Pod]) -> Result<Vec<i32>> {
    let mut out: HashSet<i32> = HashSet::new();
    out.insert(
        rt.daemon
            .pid()
            .with_context(|| format!("{} is not running", rt.name()))?,
    );
    for pod in pods {
        let (_, info) = rt
            .client
            .pod_status(&pod.id, true)
            .await
            .with_context(|| format!("{}: PodSandboxStatus (verbose)", rt.name()))?;
        if let Some(p) = crate::workload::monitor_pid(&info) {
            out.insert(p);
        }
    }
    out.extend(rt.helper_pids(&ProcTable::read()));
    Ok(out.into_iter().collect())
}

/// CPU of each runtime's daemon and helpers while `during` runs: (ms per second of berth,
/// of containerd, the window in seconds, the helper counts).
async fn cpu_during(
    rts: &[Runtime; 2],
    pods: &[Vec<Pod>; 2],
    during: impl std::future::Future<Output = Result<()>>,
) -> Result<(f64, f64, f64, [usize; 2])> {
    let sets = [
        pids(&rts[0], &pods[0]).await?,
        pids(&rts[1], &pods[1]).await?,
    ];
    let total = |set: &[i32]| set.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
    let before = [total(&sets[0]), total(&sets[1])];
    let start = Instant::now();
    during.await?;
    let secs = start.elapsed().as_secs_f64();
    let after = [total(&sets[0]), total(&sets[1])];
    let ms_per_s = |r: usize| (after[r] - before[r]).max(0.0) * 1000.0 / secs;
    let helpers = [
        sets[0].len().saturating_sub(1),
        sets[1].len().saturating_sub(1),
    ];
    Ok((ms_per_s(0), ms_per_s(1), secs, helpers))
}

fn ratio(b: f64, c: f64) -> String {
    if c > 0.0 {
        format!("{:.2}", b / c)
    } else {
        "n/a".into()
    }
}

/// Measures both runtimes' idle CPU over `window` with `pods` running and notes it.
pub async fn measure(
    rts: &[Runtime; 2],
    pods: &[Vec<Pod>; 2],
    window: Duration,
    results: &mut Results,
) -> Result<()> {
    let (b, c, secs, helpers) = cpu_during(rts, pods, async {
        tokio::time::sleep(window).await;
        Ok(())
    })
    .await?;
    results.note(format!(
        "Idle CPU with {} pods running and no calls, over {secs:.0} s: berthd + {} monitors \
         {b:.2} ms per second, containerd + its {} shims {c:.2} ms per second (ratio {}; \
         /proc utime + stime, {} Hz ticks, so a figure under a few ms/s is at the resolution)",
        pods[0].len(),
        helpers[0],
        helpers[1],
        ratio(b, c),
        clock_ticks(),
    ));
    Ok(())
}

/// kubelet's polling of one runtime for `window`: every second ListPodSandbox,
/// ListContainers and ContainerStatus of each container (the PLEG relist and the status
/// manager), every tenth second ListContainerStats too (the stats provider).
async fn poll_like_kubelet(rt: &Runtime, pods: &[Pod], window: Duration) -> Result<()> {
    let end = Instant::now() + window;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let c = &rt.client;
        let what = |call: &str| format!("{}: {call} while polling", rt.name());
        c.list_pods()
            .await
            .with_context(|| what("ListPodSandbox"))?;
        c.list_containers()
            .await
            .with_context(|| what("ListContainers"))?;
        for p in pods {
            c.container_status(&p.container)
                .await
                .with_context(|| what("ContainerStatus"))?;
        }
        if n.is_multiple_of(10) {
            c.list_container_stats()
                .await
                .with_context(|| what("ListContainerStats"))?;
        }
        n += 1;
    }
    Ok(())
}

/// Measures both runtimes' CPU over `window` while each is polled as kubelet polls it
/// (both at once, each by its own loop) and notes it. Target (issue 15): at most 0.3 of
/// containerd's.
pub async fn measure_polled(
    rts: &[Runtime; 2],
    pods: &[Vec<Pod>; 2],
    window: Duration,
    results: &mut Results,
) -> Result<()> {
    let (b, c, secs, helpers) = cpu_during(rts, pods, async {
        let (x, y) = tokio::join!(
            poll_like_kubelet(&rts[0], &pods[0], window),
            poll_like_kubelet(&rts[1], &pods[1], window)
        );
        x.and(y)
    })
    .await?;
    let r = ratio(b, c);
    let verdict = match (b, c) {
        (b, c) if c > 0.0 && b / c <= 0.3 => "met",
        (_, c) if c > 0.0 => "missed",
        _ => "not measurable",
    };
    results.note(format!(
        "CPU with {} pods running while a client polls as kubelet does (every second \
         ListPodSandbox, ListContainers and ContainerStatus of each container; \
         ListContainerStats every 10 s), over {secs:.0} s: berthd + {} monitors {b:.2} ms \
         per second, containerd + its {} shims {c:.2} ms per second (ratio {r}; target \
         ≤ 0.30: {verdict})",
        pods[0].len(),
        helpers[0],
        helpers[1],
    ));
    Ok(())
}
