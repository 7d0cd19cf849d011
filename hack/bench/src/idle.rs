//! (8) Idle CPU: what the daemon and its per-pod helpers (berth's monitors, containerd's
//! shims) burn while the pods just run and nobody calls, measured from their utime + stime
//! in /proc over the same window for both runtimes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::memory::ProcTable;
use crate::pods::Pod;
use crate::results::Results;
use crate::runtime::Runtime;

/// CPU time (user + system) of `pid` so far, in seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
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

/// Measures both runtimes' idle CPU over `window` with `pods` running and notes it.
pub async fn measure(
    rts: &[Runtime; 2],
    pods: &[Vec<Pod>; 2],
    window: Duration,
    results: &mut Results,
) -> Result<()> {
    let sets = [
        pids(&rts[0], &pods[0]).await?,
        pids(&rts[1], &pods[1]).await?,
    ];
    let total = |set: &[i32]| set.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
    let before = [total(&sets[0]), total(&sets[1])];
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let secs = start.elapsed().as_secs_f64();
    let after = [total(&sets[0]), total(&sets[1])];
    let ms_per_s = |r: usize| (after[r] - before[r]).max(0.0) * 1000.0 / secs;
    let (b, c) = (ms_per_s(0), ms_per_s(1));
    let ratio = if c > 0.0 {
        format!("{:.2}", b / c)
    } else {
        "n/a".into()
    };
    results.note(format!(
        "Idle CPU with {} pods running and no calls, over {secs:.0} s: berthd + {} monitors \
         {b:.2} ms per second, containerd + its {} shims {c:.2} ms per second (ratio {ratio}; \
         /proc utime + stime, {} Hz ticks, so a figure under a few ms/s is at the resolution)",
        pods[0].len(),
        sets[0].len().saturating_sub(1),
        sets[1].len().saturating_sub(1),
        clock_ticks(),
    ));
    Ok(())
}
