//! berth-bench: berth against containerd, side by side, through one CRI client.
//!
//! Sets up on 127.0.0.1 only a registry with images built here, a CNI network of its own,
//! a containerd (Debian's package, CRI plugin, runc, cgroupfs) and a berthd (runc), each
//! from an empty root; runs the workloads of issue 5 on both alternately (cold pulls, pod
//! starts sequential and in parallel, teardowns, kubelet's list / status calls with many
//! pods, memory of the runtimes and their helpers); prints per operation the median, p95
//! and the ratio berth / containerd next to the targets, and the versions of
//! everything; and removes all it created. Targets never fail the run: the exit code says
//! whether the tool worked.
//!
//! Run it through `hack/bench.sh` (builds the release binaries first), as root.

mod bench;
mod berth;
mod cgroups;
mod charts;
mod client;
mod cni;
mod containerd;
mod daemon;
mod floor;
mod idle;
mod images;
mod logs;
mod memory;
mod plan;
mod pods;
mod registry;
mod report;
mod results;
mod runtime;
mod scale;
mod stats;
mod streams;
mod versions;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::bench::{Bench, Options};
use crate::plan::{Mode, Plan};

/// berth against containerd, side by side: pulls, pod starts and teardowns, list calls,
/// memory. Needs root; uses only 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "berth-bench", version, about, long_about = None)]
struct Args {
    /// Smaller workloads: finishes in under 3 minutes on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// With --quick: the least that proves the tool works (for CI); its figures mean
    /// nothing.
    #[arg(long, requires = "quick")]
    smoke: bool,
    /// The berthd binary; berth-monitor must be next to it.
    #[arg(long, value_name = "PATH", default_value_os_t = default_berthd())]
    berthd: PathBuf,
    /// The containerd binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// Leave the [cni] table out of berth.toml (for a berthd that does not know it yet).
    #[arg(long)]
    berth_without_cni: bool,
    /// Write the results as Markdown to this file (docs/benchmarks.md; not with --smoke).
    #[arg(long, value_name = "FILE", conflicts_with = "smoke")]
    write_docs: Option<PathBuf>,
    /// Also start this many pods per runtime (after the other workloads) and report pod
    /// start p95, list latencies and memory per pod at each decade (10, 100, ..., N).
    #[arg(long, value_name = "N")]
    scale: Option<usize>,
    /// Copy the runtimes' and the registry's logs into this directory at the end.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<PathBuf>,
}

/// `<workspace>/target/release/berthd`.
fn default_berthd() -> PathBuf {
    e2e::util::workspace_root().join("target/release/berthd")
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn interrupted() -> Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}

async fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (runtimes, mounts, cgroups, network namespaces)");
    }
    let mode = match (args.quick, args.smoke) {
        (_, true) => Mode::Smoke,
        (true, false) => Mode::Quick,
        (false, false) => Mode::Full,
    };
    let mut plan = Plan::for_mode(mode);
    plan.scale_pods = args.scale.filter(|n| *n > 0);
    let opts = Options {
        berthd: std::path::absolute(&args.berthd)?,
        containerd: args.containerd.clone(),
        berth_without_cni: args.berth_without_cni,
    };
    let mut bench = Bench::new()?;
    let outcome = tokio::select! {
        r = bench.execute(&opts, &plan) => {
            if r.is_err() {
                bench.print_log_tails(25);
            }
            r
        }
        sig = interrupted() => Err(anyhow::anyhow!("interrupted by {}", sig.unwrap_or("a signal"))),
    };
    if let Some(dir) = &args.keep_logs {
        match bench.keep_logs(dir) {
            Ok(()) => eprintln!("berth-bench: logs kept in {}", dir.display()),
            Err(e) => eprintln!("berth-bench: keeping the logs: {e:#}"),
        }
    }
    eprintln!("berth-bench: cleaning up {}", bench.dir().display());
    let problems = bench.cleanup().await;
    for p in &problems {
        eprintln!("berth-bench: clean-up: {p}");
    }
    let results = outcome?;
    print!("{}", report::stdout_report(&results));
    if let Some(path) = &args.write_docs {
        let charts = charts::write(&results, path)?;
        std::fs::write(path, report::docs(&results, &charts))?;
        eprintln!("berth-bench: wrote {}", path.display());
    }
    if !problems.is_empty() {
        bail!(
            "the clean-up found {} problem(s) (above): the runtimes left state behind",
            problems.len()
        );
    }
    Ok(())
}
