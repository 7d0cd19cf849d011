//! (9) Container logs: a container writes MiBs of short (100-byte) and of long (20 KiB,
//! split into partial CRI entries) lines to stdout; timed from StartContainer until its last
//! line is in the CRI log, with the CPU seconds of the daemon and the per-pod helpers
//! (berthd and the monitor; containerd and its shim) over the same time. One runtime at a
//! time, with no other pod running. Target (issue 15): at least 6 times containerd's lines
//! per CPU second.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::cri_api as api;

use crate::memory::ProcTable;
use crate::results::Results;
use crate::runtime::Runtime;

/// The last entry every run ends with.
const END: &[u8] = b" stdout F END\n";

/// One kind of output.
struct Kind {
    name: &'static str,
    /// Bytes per line, newline included.
    line: usize,
}

const KINDS: [Kind; 2] = [
    Kind {
        name: "100-byte lines",
        line: 100,
    },
    Kind {
        name: "20 KiB lines",
        line: 20 << 10,
    },
];

/// The container's script: a 1 MiB block of `line`-byte lines built in /tmp, written
/// `mib` times to stdout, then `END`; then it sleeps (its exit is not part of the figure).
fn script(line: usize, mib: usize) -> String {
    let per_block = (1 << 20) / line;
    format!(
        "L=$(printf '%{w}s' x | sed 's/ /a/g'); i=0; \
         while [ $i -lt {per_block} ]; do echo \"$L\"; i=$((i+1)); done > /tmp/block; \
         i=0; while [ $i -lt {mib} ]; do cat /tmp/block; i=$((i+1)); done; \
         echo END; exec sleep 86400",
        w = line - 1
    )
}

/// CPU seconds (user + system) of the daemon and every helper of `rt` so far.
fn cpu_now(rt: &Runtime) -> Result<f64> {
    let mut pids = rt.helper_pids(&ProcTable::read());
    pids.push(
        rt.daemon
            .pid()
            .with_context(|| format!("{} is not running", rt.name()))?,
    );
    Ok(pids
        .iter()
        .filter_map(|p| crate::idle::cpu_seconds(*p))
        .sum())
}

/// Whether the CRI log at `path` ends with the END entry.
fn ends_with_end(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(len) = f.seek(SeekFrom::End(0)) else {
        return false;
    };
    if len < END.len() as u64 || f.seek(SeekFrom::End(-(END.len() as i64))).is_err() {
        return false;
    }
    let mut tail = vec![0u8; END.len()];
    f.read_exact(&mut tail).is_ok() && tail == END
}

/// One run: (time to the last line, CPU seconds, lines written).
async fn one(rt: &Runtime, kind: &Kind, mib: usize, n: usize) -> Result<(Duration, f64, u64)> {
    let name = format!("logs-{n}");
    let (config, cgroup) = crate::pods::pod_config(rt, &name)?;
    let c = &rt.client;
    let pod = c
        .run_pod(&config)
        .await
        .with_context(|| format!("{}: RunPodSandbox {name}", rt.name()))?;
    rt.remember(&pod);
    let mut container = crate::pods::container_config();
    container.metadata = Some(api::ContainerMetadata {
        name: "writer".into(),
        attempt: 0,
    });
    container.command = vec!["sh".into(), "-c".into(), script(kind.line, mib)];
    container.log_path = "writer.log".into();
    let cid = c
        .create_container(&pod, &container, &config)
        .await
        .with_context(|| format!("{}: CreateContainer {name}", rt.name()))?;
    let log = Path::new(&config.log_directory).join("writer.log");
    let before = cpu_now(rt)?;
    let t = Instant::now();
    c.start_container(&cid)
        .await
        .with_context(|| format!("{}: StartContainer {name}", rt.name()))?;
    let deadline = t + Duration::from_secs(600);
    while !ends_with_end(&log) {
        if Instant::now() > deadline {
            bail!(
                "{}: the last line never reached {}",
                rt.name(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    let cpu = (cpu_now(rt)? - before).max(0.0);
    let lines = (((1 << 20) / kind.line) * mib) as u64;
    crate::pods::teardown(
        rt,
        &crate::pods::Pod {
            id: pod,
            container: cid,
            cgroup,
        },
    )
    .await?;
    Ok((took, cpu, lines))
}

/// Runs both kinds on both runtimes with `mib` MiB each and notes the figures.
pub async fn run(rts: &[Runtime; 2], mib: usize, results: &mut Results) -> Result<()> {
    for (k, kind) in KINDS.iter().enumerate() {
        let mut per = Vec::new();
        for (r, rt) in rts.iter().enumerate() {
            let (took, cpu, lines) = one(rt, kind, mib, k * 2 + r)
                .await
                .with_context(|| format!("{}: logs of {}", rt.name(), kind.name))?;
            per.push((took, cpu, lines));
        }
        let rate = |(_, cpu, lines): (Duration, f64, u64)| {
            if cpu > 0.0 {
                lines as f64 / cpu
            } else {
                f64::INFINITY
            }
        };
        let (b, c) = (per[0], per[1]);
        let ratio = rate(b) / rate(c);
        let verdict = if !ratio.is_finite() {
            "not measurable (no CPU tick)"
        } else if ratio >= 6.0 {
            "met"
        } else {
            "missed"
        };
        results.note(format!(
            "Logs, {mib} MiB of {} to stdout, until the last line is in the CRI log: berth \
             {:.2} s and {:.2} CPU s (berthd + monitor), containerd {:.2} s and {:.2} CPU s \
             (containerd + shim); lines per CPU second berth / containerd {ratio:.1} \
             (target ≥ 6: {verdict}); the container builds its 1 MiB block first, in both",
            kind.name,
            b.0.as_secs_f64(),
            b.1,
            c.0.as_secs_f64(),
            c.1,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_writes_whole_blocks_then_the_end_marker() {
        let s = script(100, 3);
        assert!(s.contains("printf '%99s' x"));
        assert!(s.contains("-lt 10485 ]"));
        assert!(s.contains("-lt 3 ]"));
        assert!(s.contains("echo END"));
    }

    #[test]
    fn the_end_is_found_only_as_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert!(!ends_with_end(&p));
        std::fs::write(&p, b"2026-12-04T00:00:00Z stdout F END\nmore\n").unwrap();
        assert!(!ends_with_end(&p));
        std::fs::write(
            &p,
            b"2026-12-04T00:00:00Z stdout F a\n2026-12-04T00:00:00Z stdout F END\n",
        )
        .unwrap();
        assert!(ends_with_end(&p));
    }
}
