//! berth-churn: N pod lifecycles (RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox) on several workers at
//! once while berthd is killed with SIGKILL at random moments and restarted, now and then
//! a pod's monitor is killed too, and a puller pulls and removes images of its own (so
//! kills land in pulls and image removals as well). A worker whose call fails does what
//! kubelet does: it tears the pod down (retrying until berthd answers) and goes on. At the
//! end berthd is restarted, every pod it lists and the puller's images are removed, and the
//! host is searched for anything berth left: mounts, pinned namespaces, veths, IPAM
//! reservations, cgroups, processes, bundles, pod and container directories and records,
//! and layers or blobs of the removed images. Any leak, or a pod that cannot be removed,
//! fails the run.
//!
//! Everything runs on the e2e harness: its own registry on 127.0.0.1, its own berthd with
//! temporary root and state directories, socket, CNI network and cgroup parent.

mod chaos;
mod huge;
mod leaks;
mod pulls;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::pods::{PodEnv, unique};
use tokio::sync::RwLock;

/// berth-churn: pod lifecycles under SIGKILLs of berthd and its monitors, then a search of
/// the host for leaks.
#[derive(Debug, Parser)]
struct Args {
    /// Pod lifecycles to run in all.
    #[arg(long, default_value_t = 100)]
    lifecycles: usize,
    /// Workers running lifecycles at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Mean time between two SIGKILLs of berthd, in milliseconds (0: never).
    #[arg(long, default_value_t = 3000)]
    kill_every_ms: u64,
    /// One berthd kill in this many also kills a random pod monitor (0: never).
    #[arg(long, default_value_t = 3)]
    monitor_kill_ratio: u64,
    /// Instead of the churn: a node with this many exited containers (start-up time,
    /// memory per record, list sizes and latencies; see huge.rs).
    #[arg(long, default_value_t = 0)]
    exited_containers: usize,
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    completed: AtomicUsize,
    aborted: AtomicUsize,
    failed_calls: AtomicUsize,
    slowest_stop_ms: AtomicUsize,
}

type Env = Arc<RwLock<PodEnv>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = if args.exited_containers > 0 {
        huge::run(args.exited_containers).await
    } else {
        run(args).await
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-churn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (pods, mounts, cgroups, network namespaces)");
    }
    let cgroup_parent = format!("/{}", unique("berth-churn"));
    let extra = format!("[runtime]\ndefault_cgroup_parent = \"{cgroup_parent}\"\n");
    let env = PodEnv::with_busybox_options(|mut o| {
        o.extra_config = extra;
        o
    })
    .await
    .context("starting the registry and berthd")?;
    let scan = leaks::Scope::of(&env, &cgroup_parent);
    let pull_refs = pulls::prepare(&env)
        .await
        .context("pushing the puller's images")?;
    let store_before = pulls::StoreSnapshot::take(&env.berthd.root());
    let env: Env = Arc::new(RwLock::new(env));
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));

    let stop_chaos = Arc::new(tokio::sync::Notify::new());
    let chaos = (args.kill_every_ms > 0).then(|| {
        tokio::spawn(chaos::run(
            Arc::clone(&env),
            Duration::from_millis(args.kill_every_ms),
            args.monitor_kill_ratio,
            Arc::clone(&stop_chaos),
        ))
    });
    let pull_tally = Arc::new(pulls::PullTally::default());
    let stop_puller = Arc::new(tokio::sync::Notify::new());
    let puller = tokio::spawn(pulls::run(
        Arc::clone(&env),
        pull_refs.clone(),
        Arc::clone(&pull_tally),
        Arc::clone(&stop_puller),
    ));
    let workers: Vec<_> = (0..args.workers.max(1))
        .map(|w| {
            let (env, tally, next) = (Arc::clone(&env), Arc::clone(&tally), Arc::clone(&next));
            let total = args.lifecycles;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    lifecycle(&env, &tally, w, i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.context("a worker panicked")?;
    }
    stop_puller.notify_one();
    puller.await.context("the puller panicked")?;
    stop_chaos.notify_one();
    // A failed chaos task (berthd would not start again) still gets the clean-up below.
    let (kills, chaos_error) = match chaos {
        Some(c) => match c.await {
            Ok(Ok(k)) => (k, None),
            Ok(Err(e)) => (chaos::Kills::default(), Some(format!("{e:#}"))),
            Err(e) => (
                chaos::Kills::default(),
                Some(format!("the chaos task panicked: {e}")),
            ),
        },
        None => (chaos::Kills::default(), None),
    };
    let churn_time = started.elapsed();

    // As kubelet after a restart: relist and remove everything.
    let mut env = Arc::try_unwrap(env)
        .map_err(|_| anyhow::anyhow!("the environment is still shared"))?
        .into_inner();
    chaos::restart(&mut env)
        .await
        .context("the final restart")?;
    let mut unremovable = remove_everything(&env).await;
    unremovable.extend(pulls::remove_all(&env, &pull_refs).await);
    chaos::restart(&mut env)
        .await
        .context("the restart after removal")?;
    let left = env
        .list_pods(None)
        .await
        .map(|p| p.len())
        .unwrap_or(usize::MAX);
    let mut found = scan.search(&env).await;
    found.extend(pulls::StoreSnapshot::take(&env.berthd.root()).beyond(&store_before));
    // berthd's cgroup warm-up thread sits in the cgroup parent while berthd runs.
    drop(env);
    leaks::cleanup_cgroup_parent(&cgroup_parent);

    println!(
        "berth-churn: {} lifecycles on {} workers in {:.1} s",
        args.lifecycles,
        args.workers,
        churn_time.as_secs_f64()
    );
    println!(
        "  completed {} / aborted (torn down after a failed call) {} / failed calls {}",
        tally.completed.load(Ordering::SeqCst),
        tally.aborted.load(Ordering::SeqCst),
        tally.failed_calls.load(Ordering::SeqCst)
    );
    println!(
        "  berthd SIGKILLed {} times, monitors SIGKILLed {}; slowest StopPodSandbox {} ms",
        kills.berthd,
        kills.monitors,
        tally.slowest_stop_ms.load(Ordering::SeqCst)
    );
    println!(
        "  pulls during the churn: {} completed, {} failed, {} images removed",
        pull_tally.pulled.load(Ordering::SeqCst),
        pull_tally.failed.load(Ordering::SeqCst),
        pull_tally.removed.load(Ordering::SeqCst)
    );
    println!("  pods listed after the clean-up and a restart: {left}");
    for u in &unremovable {
        println!("  UNREMOVABLE: {u}");
    }
    for l in &found {
        println!("  LEAK: {l}");
    }
    if let Some(e) = &chaos_error {
        println!("  CHAOS FAILED: {e}");
    }
    if !unremovable.is_empty() || !found.is_empty() || left != 0 || chaos_error.is_some() {
        bail!(
            "{} pod(s) could not be removed, {} leak(s) found, {left} pod(s) listed at the end",
            unremovable.len(),
            found.len()
        );
    }
    println!("berth-churn: nothing left behind");
    Ok(())
}

/// One pod lifecycle; on a failed call the pod is torn down as kubelet would.
async fn lifecycle(env: &Env, tally: &Tally, worker: usize, i: usize) {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        tally.failed_calls.fetch_add(1, Ordering::SeqCst);
        eprintln!("berth-churn: worker {worker} lifecycle {i}: {what}: {e}");
    };
    let (pod, ctr) = {
        let g = env.read().await;
        (
            g.pod_config(&format!("churn-{i}")),
            g.container_config(&format!("c-{i}"), &["sleep", "86399"]),
        )
    };
    let pod_id = match env.read().await.run_pod(&pod).await {
        Ok(id) => id,
        Err(e) => {
            // kubelet never learns the ID: the final relist finds the pod if it exists.
            fail("RunPodSandbox", &e.message());
            tally.aborted.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let steps = async {
        let g = env.read().await;
        let cid = g
            .create_container(&pod_id, &ctr, &pod)
            .await
            .map_err(|e| ("CreateContainer", e))?;
        g.start_container(&cid)
            .await
            .map_err(|e| ("StartContainer", e))?;
        let r = g
            .exec_sync(&cid, &["true"], 10)
            .await
            .map_err(|e| ("ExecSync", e))?;
        if r.exit_code != 0 {
            return Err((
                "ExecSync",
                tonic::Status::unknown(format!("exit code {}", r.exit_code)),
            ));
        }
        g.stop_container(&cid, 1)
            .await
            .map_err(|e| ("StopContainer", e))?;
        g.remove_container(&cid)
            .await
            .map_err(|e| ("RemoveContainer", e))?;
        Ok::<_, (&str, tonic::Status)>(())
    };
    let ok = match steps.await {
        Ok(()) => true,
        Err((what, e)) => {
            fail(what, &e.message());
            false
        }
    };
    if teardown(env, tally, &pod_id).await && ok {
        tally.completed.fetch_add(1, Ordering::SeqCst);
    } else {
        tally.aborted.fetch_add(1, Ordering::SeqCst);
    }
}

/// StopPodSandbox + RemovePodSandbox, retried while berthd is down or restarting (as
/// kubelet keeps retrying a pod it is terminating), for up to two minutes.
async fn teardown(env: &Env, tally: &Tally, pod_id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = Instant::now();
        let r = {
            let g = env.read().await;
            match g.stop_pod(pod_id).await {
                Ok(()) => {
                    let ms = usize::try_from(t.elapsed().as_millis()).unwrap_or(usize::MAX);
                    tally.slowest_stop_ms.fetch_max(ms, Ordering::SeqCst);
                    g.remove_pod(pod_id).await
                }
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => return true,
            Err(e) if Instant::now() > deadline => {
                eprintln!(
                    "berth-churn: pod {pod_id} could not be torn down: {}",
                    e.message()
                );
                return false;
            }
            Err(_) => {
                tally.failed_calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Removes every pod berthd lists; returns those that cannot be removed, with why.
async fn remove_everything(env: &PodEnv) -> Vec<String> {
    let pods = match env.list_pods(None).await {
        Ok(p) => p,
        Err(e) => return vec![format!("ListPodSandbox failed: {}", e.message())],
    };
    let mut out = Vec::new();
    for p in pods {
        let t = Instant::now();
        let r = match env.stop_pod(&p.id).await {
            Ok(()) => env.remove_pod(&p.id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            out.push(format!("{} after {:?}: {}", p.id, t.elapsed(), e.message()));
        }
    }
    out
}
