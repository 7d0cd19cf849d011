//! (7) Exec probes and streaming, with the parallel pods running, on both runtimes
//! alternately: ExecSync of `true` (the probe kubelet runs every few seconds per pod), an
//! exec's time to first byte over SPDY (Exec + upgrade + first stdout byte), 100 MiB of
//! exec stdout over SPDY, and the memory of the pod's helper (berth's monitor, containerd's
//! shim) with one attach session open.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::streaming::{Session, StdioOpts, Transport, attach_url, exec_url};

use crate::memory;
use crate::pods::Pod;
use crate::results::Results;
use crate::runtime::{Kind, Runtime};
use crate::workload::order;

/// Bytes the throughput exec writes.
pub const THROUGHPUT_BYTES: usize = 100 << 20;
const T: Duration = Duration::from_secs(120);
const OUT: StdioOpts = StdioOpts {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

/// Runs the streaming workloads on the first running pod of each runtime.
pub async fn run(
    rts: &[Runtime; 2],
    running: &[Vec<Pod>; 2],
    rounds: usize,
    throughput_rounds: usize,
    results: &mut Results,
) -> Result<()> {
    let mut cris = Vec::new();
    let mut targets = Vec::new();
    for (r, rt) in rts.iter().enumerate() {
        cris.push(
            e2e::Cri::connect(&rt.socket)
                .await
                .with_context(|| format!("{}: connecting the streaming client", rt.name()))?,
        );
        let pod = running[r]
            .first()
            .with_context(|| format!("{}: no running pod to exec in", rt.name()))?;
        targets.push(pod.clone());
    }
    for i in 0..rounds {
        for r in order(i) {
            let (cri, c) = (&cris[r], &targets[r].container);
            let t = Instant::now();
            let resp = rts[r]
                .client
                .exec_sync(c, &["true"], 10)
                .await
                .with_context(|| format!("{}: ExecSync true", rts[r].name()))?;
            results.record("exec.sync", r, t.elapsed());
            if resp.exit_code != 0 {
                bail!("{}: ExecSync true exited {}", rts[r].name(), resp.exit_code);
            }

            let t = Instant::now();
            let url = exec_url(cri, c, &["echo", "first"], OUT).await?;
            let mut s = Session::open(&url, Transport::Spdy, OUT).await?;
            s.read_until("first", T).await?;
            results.record("exec.ttfb", r, t.elapsed());
            s.finish(T).await?;
        }
    }
    for i in 0..throughput_rounds {
        for r in order(i) {
            let (cri, c) = (&cris[r], &targets[r].container);
            let cmd = format!("head -c {THROUGHPUT_BYTES} /dev/zero");
            let t = Instant::now();
            let url = exec_url(cri, c, &["sh", "-c", &cmd], OUT).await?;
            let out = e2e::streaming::run(&url, Transport::Spdy, OUT, None).await?;
            results.record("exec.throughput", r, t.elapsed());
            if out.stdout.len() != THROUGHPUT_BYTES {
                bail!(
                    "{}: the exec delivered {} of {THROUGHPUT_BYTES} bytes",
                    rts[r].name(),
                    out.stdout.len()
                );
            }
        }
    }
    // Helper memory with one attach session (stdout only, reading all the while).
    let mut mem = Vec::new();
    for (r, rt) in rts.iter().enumerate() {
        let pod = &targets[r];
        let o = StdioOpts {
            stdout: true,
            ..Default::default()
        };
        let url = attach_url(&cris[r], &pod.container, o).await?;
        let session = Session::open(&url, Transport::Spdy, o).await?;
        let (_, info) = rt.client.pod_status(&pod.id, true).await?;
        let helper = match rt.kind {
            Kind::Berth => {
                let v: serde_json::Value =
                    serde_json::from_str(info.get("info").map_or("{}", String::as_str))?;
                v["monitorPid"].as_i64().and_then(|p| i32::try_from(p).ok())
            }
            // The shim is the parent of the pod's pause process.
            Kind::Containerd => rt.pause_pid(&info).and_then(parent_pid),
        };
        let m = helper.and_then(memory::of_pid);
        drop(session);
        mem.push((rt.name(), helper, m));
    }
    let shown: Vec<String> = mem
        .iter()
        .map(|(name, pid, m)| match m {
            Some(m) => format!(
                "{name} {} KiB RSS / {} KiB PSS (pid {pid:?})",
                m.rss_kib, m.pss_kib
            ),
            None => format!("{name}: helper not found"),
        })
        .collect();
    results.note(format!(
        "Pod helper with one attach session open (berth's monitor, containerd's shim): {}.",
        shown.join("; ")
    ));
    Ok(())
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
