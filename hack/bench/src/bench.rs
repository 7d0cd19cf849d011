//! One run: the set-up (registry, images, network, both runtimes), the workloads, and the
//! clean-up that leaves the host as it was found whatever happened before it.
//!
//! Everything the run creates is named by its run ID or lives in its temporary directory
//! (`/tmp/berth-bench-<id>`): the cgroup subtree `/berth-bench-<id>`, the CNI network
//! `berth-bench-<id>` and its bridge. Clean-up only ever touches those, and processes it can
//! prove are its own (its children, helpers whose command line names its directories, and
//! processes inside its cgroup subtree), by PID.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::berth::{self, BerthOptions};
use crate::cni::CniNet;
use crate::containerd::{self, ContainerdOptions, SHIM_SOCKET_DIR};
use crate::floor::RuncFloor;
use crate::images::{self, BUSYBOX_REF, PAUSE_REF};
use crate::memory::ProcTable;
use crate::plan::Plan;
use crate::registry::Registry;
use crate::results::Results;
use crate::runtime::{Kind, Runtime};
use crate::{versions, workload};

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The berthd binary.
    pub berthd: PathBuf,
    /// The containerd binary.
    pub containerd: PathBuf,
    /// Leave the `[cni]` table out of berth.toml (for a berthd that rejects it).
    pub berth_without_cni: bool,
}

/// The state of one run.
pub struct Bench {
    /// Run ID (8 hex digits).
    pub run_id: String,
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    cgroup_root: String,
    registry: Option<Registry>,
    cni: Option<CniNet>,
    runtimes: Vec<Runtime>,
    floor: Option<RuncFloor>,
    shim_dir_existed: bool,
    run_containerd_existed: bool,
}

impl Bench {
    /// Creates the run's directory.
    pub fn new() -> Result<Bench> {
        let run_id = e2e::pods::unique("r").trim_start_matches("r-").to_string();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("berth-bench-{run_id}-"))
            .tempdir()
            .context("creating the bench's temporary directory")?;
        let dir = tmp.path().to_path_buf();
        Ok(Bench {
            cgroup_root: format!("/berth-bench-{run_id}"),
            run_id,
            tmp: Some(tmp),
            dir,
            registry: None,
            cni: None,
            runtimes: Vec::new(),
            floor: None,
            shim_dir_existed: Path::new(SHIM_SOCKET_DIR).exists(),
            run_containerd_existed: Path::new("/run/containerd").exists(),
        })
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets everything up and runs every workload.
    pub async fn execute(&mut self, opts: &Options, plan: &Plan) -> Result<Results> {
        preflight(opts)?;
        let started = Instant::now();
        let date = versions::now_utc();
        let machine = versions::machine();
        eprintln!(
            "berth-bench: {} run {} in {}",
            plan.mode.name(),
            self.run_id,
            self.dir.display()
        );

        let registry = Registry::start(&self.dir.join("registry")).await?;
        let addr = registry.addr();
        let pusher = registry.pusher();
        self.registry = Some(registry);
        eprintln!("berth-bench: building and pushing the images to {addr}");
        let images = images::build_and_push(&pusher, plan).await?;
        let pull_desc = format!(
            "{} layers, {:.1} MB compressed, {:.1} MB unpacked",
            images.pull.layer_digests.len(),
            images.pull_compressed as f64 / 1e6,
            images.pull_uncompressed as f64 / 1e6
        );
        let mut results = Results::new(plan, &pull_desc);
        results.date = date;
        results.machine = machine;

        let cni = CniNet::write(&self.dir.join("cni"), &self.run_id)?;
        self.cni = Some(cni.clone());

        eprintln!("berth-bench: checking containerd's registry mapping (debug-level probe)");
        let probe_dir = self.dir.join("containerd-probe");
        let probe_opts = ContainerdOptions {
            containerd: &opts.containerd,
            registry: &addr,
            cni: &cni,
            log_level: "debug",
        };
        let probe =
            containerd::probe_registry_hosts(&probe_dir, &probe_opts, &[BUSYBOX_REF, PAUSE_REF])
                .await
                .context("probing containerd's registry mapping")?;
        if !probe.foreign.is_empty() {
            bail!(
                "containerd contacted hosts other than the local registry {addr}: {:?} \
                 (log: {})",
                probe.foreign,
                probe_dir.join("containerd.log").display()
            );
        }
        if probe.local == 0 {
            bail!(
                "containerd's debug log names no registry host: the mapping to {addr} cannot \
                 be verified (log: {})",
                probe_dir.join("containerd.log").display()
            );
        }
        results.note(format!(
            "registry mapping: a debug-level containerd with the same hosts.toml files named \
             only the local registry {addr} ({} mentions) while pulling; the measured \
             containerd's log names no other host either",
            probe.local
        ));
        let _ = std::fs::copy(
            probe_dir.join("containerd.log"),
            self.dir.join("containerd-probe.log"),
        );
        if unmount_under(&probe_dir).is_empty() {
            let _ = std::fs::remove_dir_all(&probe_dir);
        }

        eprintln!("berth-bench: starting berthd and containerd");
        // As kubelet's /kubepods/besteffort: the parent of the pod cgroups exists.
        for rt in ["berth", "containerd", "floor"] {
            crate::cgroups::create(&format!("{}/{rt}", self.cgroup_root))?;
        }
        let berth = self.start_berth(opts, &addr, &cni, &mut results).await?;
        self.runtimes.push(berth);
        let ctd_opts = ContainerdOptions {
            containerd: &opts.containerd,
            registry: &addr,
            cni: &cni,
            log_level: "info",
        };
        let ctd =
            containerd::start(&self.dir.join("containerd"), &ctd_opts, &self.cgroup_root).await?;
        self.runtimes.push(ctd);
        for rt in &self.runtimes {
            let need_network = rt.kind == Kind::Containerd;
            let not_ready = rt
                .wait_conditions(Duration::from_secs(30), need_network)
                .await?;
            if !not_ready.is_empty() {
                results.note(format!(
                    "{} reports {} false at start",
                    rt.name(),
                    not_ready.join(", ")
                ));
            }
        }
        let rts: &[Runtime; 2] = self
            .runtimes
            .as_slice()
            .try_into()
            .context("two runtimes")?;
        results.versions = versions::collect(rts, &opts.berthd, &opts.containerd).await;

        let floor = self.floor.insert(RuncFloor::prepare(
            &self.dir.join("floor"),
            &format!("{}/floor", self.cgroup_root),
        )?);
        workload::run_all(rts, &images, floor, &mut results).await?;

        let log = std::fs::read_to_string(rts[1].daemon.log()).unwrap_or_default();
        let check = containerd::check_hosts(&log, &addr);
        if !check.foreign.is_empty() {
            bail!(
                "the measured containerd's log names hosts other than {addr}: {:?}",
                check.foreign
            );
        }
        results.elapsed = started.elapsed();
        results
            .machine
            .push(("load average at end".into(), versions::load_average()));
        Ok(results)
    }

    /// Starts berthd with the bench's CNI network in berth.toml, or without it when asked or
    /// when this berthd rejects the `[cni]` table (noted in the results).
    async fn start_berth(
        &mut self,
        opts: &Options,
        registry: &str,
        cni: &CniNet,
        results: &mut Results,
    ) -> Result<Runtime> {
        let mut bo = BerthOptions {
            berthd: &opts.berthd,
            registry,
            cni: (!opts.berth_without_cni).then_some(cni),
            cgroup_root: &self.cgroup_root,
        };
        if bo.cni.is_none() {
            results.note("berth.toml has no [cni] table (--berth-without-cni)");
        }
        match berth::start(&self.dir.join("berth"), &bo).await {
            Ok(rt) => Ok(rt),
            Err(e) if bo.cni.is_some() && format!("{e:#}").contains("unknown field `cni`") => {
                results.note(
                    "this berthd rejects the [cni] table of berth.toml: it ran without the \
                     bench's CNI network",
                );
                bo.cni = None;
                berth::start(&self.dir.join("berth-without-cni"), &bo).await
            }
            Err(e) => Err(e),
        }
    }

    /// The log files worth keeping: (name, path).
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        let mut v = Vec::new();
        for rt in &self.runtimes {
            v.push((format!("{}.log", rt.name()), rt.daemon.log().to_path_buf()));
        }
        v.push((
            "containerd-probe.log".into(),
            self.dir.join("containerd-probe.log"),
        ));
        if let Some(r) = &self.registry {
            v.push(("registry.log".into(), r.log().to_path_buf()));
        }
        v
    }

    /// Prints the tail of each runtime's log (after a failure).
    pub fn print_log_tails(&self, lines: usize) {
        for rt in &self.runtimes {
            eprintln!(
                "---- {} log tail ({}) ----\n{}",
                rt.name(),
                rt.daemon.log().display(),
                rt.daemon.log_tail(lines)
            );
        }
    }

    /// Copies the logs into `dir`.
    pub fn keep_logs(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, path) in self.logs() {
            if path.exists() {
                std::fs::copy(&path, dir.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Removes every pod, stops both runtimes and the registry, kills what they left
    /// behind, unmounts what is left under the run's directory, deletes the bridge, the
    /// CNI cache entries, shim sockets and cgroups of the run, and the directory. Returns
    /// what went wrong (empty when the host is clean).
    pub async fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for rt in &mut self.runtimes {
            if rt.daemon.ensure_running().is_ok() {
                let (removed, failed) = remove_all_pods(rt).await;
                problems.extend(failed);
                if removed > 0 {
                    // An interrupted run may leave a RunPodSandbox finishing server-side,
                    // not listed yet on the first pass.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    problems.extend(remove_all_pods(rt).await.1);
                }
            } else {
                problems.push(format!("{} was not running at clean-up", rt.name()));
            }
        }
        for rt in &mut self.runtimes {
            rt.daemon.stop(Duration::from_secs(20)).await;
        }
        if let Some(mut floor) = self.floor.take() {
            floor.cleanup();
        }
        problems.extend(self.kill_leftovers().await);
        problems.extend(unmount_under(&self.dir));
        let sandboxes: Vec<String> = self
            .runtimes
            .iter()
            .filter(|r| r.kind == Kind::Containerd)
            .flat_map(|r| r.created_ids())
            .collect();
        if let Some(cni) = &self.cni {
            problems.extend(cni.cleanup(&sandboxes));
        }
        if let Some(ctd) = self.runtimes.iter().find(|r| r.kind == Kind::Containerd) {
            for id in &sandboxes {
                let p = containerd::shim_socket_path(&ctd.socket, id);
                if p.exists()
                    && let Err(e) = std::fs::remove_file(&p)
                {
                    problems.push(format!("removing {}: {e}", p.display()));
                }
            }
        }
        if !self.shim_dir_existed {
            let _ = std::fs::remove_dir(SHIM_SOCKET_DIR);
        }
        if !self.run_containerd_existed {
            let _ = std::fs::remove_dir("/run/containerd");
        }
        problems.extend(remove_cgroups(&self.cgroup_root));
        if let Some(mut r) = self.registry.take() {
            r.stop().await;
        }
        self.runtimes.clear();
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.path().to_path_buf();
            if let Err(e) = tmp.close() {
                problems.push(format!("removing {}: {e}", path.display()));
            }
        }
        problems
    }

    /// SIGKILLs (by PID) the helpers of our runtimes and every process in our cgroup
    /// subtree that survived the runtimes' shutdown, and waits for them to go.
    async fn kill_leftovers(&self) -> Vec<String> {
        let table = ProcTable::read();
        let mut pids: HashSet<i32> = HashSet::new();
        for rt in &self.runtimes {
            pids.extend(rt.helper_pids(&table));
        }
        pids.extend(processes_in_cgroup(&self.cgroup_root));
        pids.remove(&(std::process::id() as i32));
        let mut problems = Vec::new();
        for &pid in &pids {
            let argv = table
                .procs
                .get(&pid)
                .map(|(_, a)| a.join(" "))
                .unwrap_or_default();
            problems.push(format!("killed leftover process {pid} ({argv})"));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !pids.is_empty() {
            let pids: Vec<i32> = pids.into_iter().collect();
            let _ = e2e::poll_until(Duration::from_secs(10), "leftovers to exit", || {
                let alive = pids.iter().any(|p| e2e::pods::pid_alive(*p));
                async move { Ok((!alive).then_some(())) }
            })
            .await;
        }
        problems
    }
}

/// Fails early, before anything is started, when a binary the run needs is missing.
fn preflight(opts: &Options) -> Result<()> {
    let monitor = opts.berthd.with_file_name("berth-monitor");
    let needed = [
        (
            opts.berthd.clone(),
            "build it: cargo build --release -p cri-server",
        ),
        (monitor, "it is built with berthd and must be next to it"),
        (opts.containerd.clone(), "Debian package containerd"),
        (
            PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
            "Debian package containerd",
        ),
        (PathBuf::from("/usr/sbin/runc"), "Debian package runc"),
        (
            PathBuf::from(crate::registry::REGISTRY_BIN),
            "Debian package docker-registry",
        ),
        (
            Path::new(crate::cni::CNI_BIN_DIR).join("bridge"),
            "Debian package containernetworking-plugins",
        ),
        (
            PathBuf::from("/bin/busybox"),
            "Debian package busybox-static",
        ),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|(p, _)| !p.is_file())
        .map(|(p, why)| format!("{} ({why})", p.display()))
        .collect();
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

/// Stops and removes every pod `rt` lists; returns how many it found, and the failures.
async fn remove_all_pods(rt: &Runtime) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut found = 0;
    match rt.client.list_pods().await {
        Ok(pods) => {
            found = pods.len();
            for p in pods {
                if let Err(s) = rt.client.stop_pod(&p.id).await {
                    problems.push(format!("{}: StopPodSandbox {}: {s}", rt.name(), p.id));
                }
                if let Err(s) = rt.client.remove_pod(&p.id).await {
                    problems.push(format!("{}: RemovePodSandbox {}: {s}", rt.name(), p.id));
                }
            }
        }
        Err(s) => problems.push(format!("{}: ListPodSandbox: {s}", rt.name())),
    }
    (found, problems)
}

/// PIDs of processes in cgroup `root` or below, in any hierarchy.
fn processes_in_cgroup(root: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    let prefix = format!("{root}/");
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let inside = text.lines().any(|l| {
            l.splitn(3, ':')
                .nth(2)
                .is_some_and(|p| p == root || p.starts_with(&prefix))
        });
        if inside {
            out.push(pid);
        }
    }
    out
}

/// Unmounts (lazily, deepest first) everything mounted under `dir`; returns the failures
/// and what was left mounted.
fn unmount_under(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for _ in 0..5 {
        let mut mounts = e2e::pods::mounts_under(dir);
        if mounts.is_empty() {
            return problems;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for m in mounts {
            if let Err(e) = umount2(&m.mount_point, MntFlags::MNT_DETACH) {
                problems.push(format!("unmounting {}: {e}", m.mount_point.display()));
            } else {
                problems.push(format!("unmounted leftover {}", m.mount_point.display()));
            }
        }
    }
    problems.push(format!("mounts remain under {}", dir.display()));
    problems
}

/// Removes the cgroup subtree `root` in every hierarchy (deepest first; only empty cgroups
/// can be removed). Returns what remains.
fn remove_cgroups(root: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for top in e2e::pods::cgroup_dirs_existing(root) {
        let mut dirs: Vec<PathBuf> = e2e::util::walk(&top)
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        dirs.push(top.clone());
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                problems.push(format!("removing cgroup {}: {e}", d.display()));
            }
        }
    }
    problems
}
