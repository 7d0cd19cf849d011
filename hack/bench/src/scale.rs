//! (10) Scale (`--scale N`): pods are started in batches of the plan's parallelism up to
//! N per runtime, and at each decade (10, 100, ..., and N) the bench reports the p95 of the
//! pod starts since the last decade, the median of ListPodSandbox and ListContainers, and
//! the memory per pod; then every pod is torn down and the clean-up checks that nothing is
//! left. Whether the figures stay flat from decade to decade is what it shows.

use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::future::join_all;

use crate::pods::{self, Pod};
use crate::results::Results;
use crate::runtime::Runtime;
use crate::stats::quantile;

/// The levels to report: 10, 100, 1000, ... below `n`, and `n`.
fn decades(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut d = 10;
    while d < n {
        out.push(d);
        d *= 10;
    }
    out.push(n);
    out
}

/// Median of 20 calls of `call`, in ms.
async fn median_call<F, Fut, T>(mut call: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut v = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        call().await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(quantile(&v, 0.5).unwrap_or(f64::NAN))
}

/// Starts pods on `rt` until it runs `upto`; returns the start times (ms).
async fn start_up_to(
    rt: &Runtime,
    running: &mut Vec<Pod>,
    upto: usize,
    par: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    while running.len() < upto {
        let n = par.min(upto - running.len());
        let names: Vec<String> = (0..n)
            .map(|k| format!("scale-{}", running.len() + k))
            .collect();
        for o in join_all(names.iter().map(|name| pods::start(rt, name))).await {
            let (pod, t) = o?;
            times.push(t.total().as_secs_f64() * 1000.0);
            running.push(pod);
        }
    }
    Ok(times)
}

/// Runs the scale workload up to `n` pods per runtime and notes one line per decade.
pub async fn run(rts: &[Runtime; 2], n: usize, par: usize, results: &mut Results) -> Result<()> {
    let mut running: [Vec<Pod>; 2] = [Vec::new(), Vec::new()];
    for level in decades(n) {
        let mut figures = Vec::new();
        for (r, rt) in rts.iter().enumerate() {
            let starts = start_up_to(rt, &mut running[r], level, par)
                .await
                .with_context(|| format!("{}: starting pods up to {level}", rt.name()))?;
            let c = &rt.client;
            let lps = median_call(|| c.list_pods()).await?;
            let lc = median_call(|| c.list_containers()).await?;
            figures.push((quantile(&starts, 0.95).unwrap_or(f64::NAN), lps, lc));
        }
        let mem = crate::workload::sample_memory(rts, &running).await?;
        let per_pod = |r: usize| {
            (mem.helpers[r].pss_kib + mem.pause[r].pss_kib + mem.daemon[r].pss_kib) as f64
                / 1024.0
                / level as f64
        };
        let (b, c) = (figures[0], figures[1]);
        results.note(format!(
            "Scale, {level} pods running: pod start p95 (of the pods started since the last \
             level) berth {:.0} ms, containerd {:.0} ms; ListPodSandbox berth {:.2} ms, \
             containerd {:.2} ms; ListContainers berth {:.2} ms, containerd {:.2} ms; \
             memory per pod (daemon + helpers + pause PSS / pods) berth {:.2} MiB, \
             containerd {:.2} MiB",
            b.0,
            c.0,
            b.1,
            c.1,
            b.2,
            c.2,
            per_pod(0),
            per_pod(1),
        ));
    }
    for (r, rt) in rts.iter().enumerate() {
        let t = Instant::now();
        for batch in running[r].chunks(par.max(1)) {
            for o in join_all(batch.iter().map(|p| pods::teardown(rt, p))).await {
                o.with_context(|| format!("{}: tearing down the scale pods", rt.name()))?;
            }
        }
        results.note(format!(
            "Scale: {} tore its {n} pods down in {:.1} s ({} at a time)",
            rt.name(),
            t.elapsed().as_secs_f64(),
            par
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decades_end_at_n() {
        assert_eq!(decades(500), vec![10, 100, 500]);
        assert_eq!(decades(100), vec![10, 100]);
        assert_eq!(decades(5), vec![5]);
    }
}
