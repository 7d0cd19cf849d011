//! berthd killed with SIGKILL while pods run, then restarted on the same dirs: pods and
//! containers are listed with their real state, running containers kept running (same
//! process) and their logs keep growing, a container that exited while berthd was down
//! reports its real exit code and time, a created container can still be started, a
//! stopped pod stays stopped, and Stop / Remove clean everything up.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::cri_api::{ContainerState, PodSandboxState};
use e2e::pods::{PodEnv, TERM_TRAP_LOOP, mounts_under, now_ns, pid_alive, processes_mentioning};
use e2e::poll_until;

async fn wait_pid_gone(pid: i32, what: &str, timeout: Duration) -> Result<i64> {
    poll_until(timeout, what, || async move {
        Ok((!pid_alive(pid)).then(now_ns))
    })
    .await
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn running_exited_and_created_containers_survive_a_berthd_kill() -> Result<()> {
    let mut env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("survivor");
    let pod_id = env.run_pod(&pod).await?;
    let a = env.sh_container(
        "a",
        "trap 'exit 0' TERM; i=0; while true; do echo a-$i; i=$((i+1)); sleep 0.1; done",
    );
    let b = env.sh_container("b", "sleep 2; exit 42");
    let c = env.sh_container("c", TERM_TRAP_LOOP);
    let a_id = env.run_container(&pod_id, &a, &pod).await?;
    let b_id = env.run_container(&pod_id, &b, &pod).await?;
    let c_id = env.create_container(&pod_id, &c, &pod).await?;
    let a_pid = env.container_pid(&a_id).await?;
    let b_pid = env.container_pid(&b_id).await?;
    let monitor = env.monitor_pid(&pod_id).await?;
    let b_started = env.container_status(&b_id).await?.started_at;

    env.berthd.kill9()?;
    // B exits while berthd is down; the monitor (its parent) reaps it.
    let b_died = wait_pid_gone(
        b_pid,
        "B to exit while berthd is down",
        Duration::from_secs(10),
    )
    .await?;
    assert!(pid_alive(monitor), "the monitor survives berthd's SIGKILL");
    assert!(pid_alive(a_pid), "A keeps running while berthd is down");
    let a_log = PodEnv::log_file(&pod, &a);
    let len_down = file_len(&a_log);
    poll_until(
        Duration::from_secs(5),
        "A's log to grow while berthd is down",
        || {
            let l = file_len(&a_log);
            async move { Ok((l > len_down).then_some(())) }
        },
    )
    .await?;

    env.berthd.launch().await?;
    env.reconnect().await?;

    // The pod.
    let pods = env.list_pods(None).await?;
    assert_eq!(pods.len(), 1, "one pod listed after restart: {pods:?}");
    assert_eq!(pods[0].id, pod_id);
    assert_eq!(
        pods[0].state,
        PodSandboxState::SandboxReady as i32,
        "pod READY"
    );
    assert_eq!(
        env.monitor_pid(&pod_id).await?,
        monitor,
        "same monitor after restart"
    );

    // A: running, same process, log growing.
    let st = env.container_status(&a_id).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "A RUNNING: {st:?}"
    );
    assert_eq!(
        env.container_pid(&a_id).await?,
        a_pid,
        "A is the same process"
    );
    assert!(pid_alive(a_pid));
    let len_up = file_len(&a_log);
    poll_until(
        Duration::from_secs(5),
        "A's log to keep growing after restart",
        || {
            let l = file_len(&a_log);
            async move { Ok((l > len_up).then_some(())) }
        },
    )
    .await?;

    // B: exited with its real code and time.
    let st = env.container_status(&b_id).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerExited as i32,
        "B EXITED: {st:?}"
    );
    assert_eq!(st.exit_code, 42, "B's real exit code");
    assert_eq!(st.reason, "Error");
    assert_eq!(st.started_at, b_started, "B's started_at unchanged");
    let diff = (st.finished_at - b_died).abs();
    assert!(
        diff < 3_000_000_000,
        "B's finished_at {} is when it died (observed {b_died}, {} ms apart)",
        st.finished_at,
        diff / 1_000_000
    );
    assert!(
        st.finished_at - st.started_at >= 1_500_000_000,
        "B ran ~2 s: started {} finished {}",
        st.started_at,
        st.finished_at
    );

    // C: created, and still startable.
    let st = env.container_status(&c_id).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerCreated as i32,
        "C CREATED: {st:?}"
    );
    env.start_container(&c_id).await?;
    let st = env.container_status(&c_id).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "C RUNNING after start"
    );
    let c_pid = env.container_pid(&c_id).await?;
    env.wait_log_line(
        &PodEnv::log_file(&pod, &c),
        Duration::from_secs(10),
        "C ready",
        |l| l == "ready",
    )
    .await?;

    // ExecSync works in a recovered container.
    assert_eq!(env.exec_ok(&a_id, &["echo", "hi"]).await?, "hi\n");

    // Stop / Remove on all of them.
    env.stop_container(&a_id, 10).await?;
    let st = env.container_status(&a_id).await?;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 0, "A stopped gracefully");
    env.stop_container(&b_id, 10).await?;
    env.remove_container(&b_id).await?;
    assert!(!env.container_dir(&b_id).exists());
    env.stop_pod(&pod_id).await?;
    assert_eq!(
        env.container_status(&c_id).await?.state,
        ContainerState::ContainerExited as i32,
        "C exited with the pod"
    );
    for pid in [a_pid, c_pid, monitor] {
        wait_pid_gone(pid, "pod process after stop", Duration::from_secs(10)).await?;
    }
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    for id in [&a_id, &b_id, &c_id] {
        assert!(
            !env.container_dir(id).exists(),
            "container dir of {id} removed"
        );
    }
    assert!(env.list_container_ids(None).await?.is_empty());
    let left = mounts_under(&env.berthd.state());
    assert!(left.is_empty(), "mounts left under the state dir: {left:?}");
    for id in [&a_id, &c_id] {
        assert!(
            processes_mentioning(id).is_empty(),
            "processes left for {id}: {:?}",
            processes_mentioning(id)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_pod_stays_stopped_after_a_berthd_kill() -> Result<()> {
    let mut env = PodEnv::with_busybox().await?;
    let stopped = env.pod_config("stopped");
    let stopped_id = env.run_pod(&stopped).await?;
    let c = env.sh_container("c", TERM_TRAP_LOOP);
    let c_id = env.run_container(&stopped_id, &c, &stopped).await?;
    env.stop_pod(&stopped_id).await?;
    let exited = env.container_status(&c_id).await?;
    assert_eq!(exited.state, ContainerState::ContainerExited as i32);
    let ready = env.pod_config("ready");
    let ready_id = env.run_pod(&ready).await?;

    env.berthd.restart().await?;
    env.reconnect().await?;

    let st = env.pod_status(&stopped_id).await?;
    assert_eq!(
        st.state,
        PodSandboxState::SandboxNotready as i32,
        "a pod stopped before the kill is NOTREADY after restart"
    );
    for n in ["net", "ipc", "uts"] {
        assert!(
            !e2e::pods::is_mounted(&env.pod_dir(&stopped_id).join("ns").join(n)),
            "the stopped pod's {n} namespace is not re-pinned"
        );
    }
    assert_eq!(
        env.pod_status(&ready_id).await?.state,
        PodSandboxState::SandboxReady as i32,
        "the running pod is READY after restart"
    );
    let st = env.container_status(&c_id).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerExited as i32,
        "its container stays EXITED"
    );
    assert_eq!(st.exit_code, exited.exit_code);
    assert_eq!(st.finished_at, exited.finished_at, "finished_at unchanged");

    for id in [&stopped_id, &ready_id] {
        env.stop_pod(id).await?;
        env.remove_pod(id).await?;
        env.assert_pod_gone(id, "").await;
    }
    Ok(())
}

/// A crash of berthd between making a pod's cgroup (below the default cgroup parent) and
/// saving its record leaves the pod's directory and cgroup without a record: the next
/// start removes both, with what runs in the cgroup, and nothing else under the parent.
#[tokio::test(flavor = "multi_thread")]
async fn cgroups_of_an_interrupted_run_pod_sandbox_are_removed_at_start() -> Result<()> {
    let parent = format!("/{}", e2e::pods::unique("berth-orphans"));
    let extra = format!("[runtime]\ndefault_cgroup_parent = \"{parent}\"\n");
    let mut env = PodEnv::with_busybox_options(|mut o| {
        o.extra_config = extra;
        o
    })
    .await?;
    env.berthd.kill9()?;
    let id = "ab12cd34ef56".repeat(5) + "0123";
    let foreign = format!("{parent}/{}", "f".repeat(64));
    let pod_cg = format!("{parent}/{id}");
    let child_cg = format!("{pod_cg}/{}", "9".repeat(64));
    std::fs::create_dir_all(env.berthd.state().join("pods").join(&id[..12]))?;
    // A process in the leftover cgroup, in every hierarchy, as runc puts one.
    let mut sleeper = std::process::Command::new("sleep").arg("86398").spawn()?;
    let sleeper_pid = i32::try_from(sleeper.id())?;
    let outcome = async {
        for root in e2e::pods::cgroup_dirs_existing("/") {
            for cg in [&foreign, &pod_cg, &child_cg] {
                let dir = root.join(cg.trim_start_matches('/'));
                std::fs::create_dir_all(&dir)?;
                // cpuset takes no process before its cpus and mems are set.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(v) = std::fs::read_to_string(root.join(f)) {
                        std::fs::write(dir.join(f), v.trim())?;
                    }
                }
            }
            let procs = root
                .join(child_cg.trim_start_matches('/'))
                .join("cgroup.procs");
            std::fs::write(&procs, sleeper_pid.to_string())
                .with_context(|| format!("moving the sleeper into {}", procs.display()))?;
        }
        env.berthd.launch().await?;
        env.reconnect().await?;
        poll_until(
            Duration::from_secs(10),
            "the leftover's process to die",
            || {
                let exited = sleeper.try_wait().ok().flatten().is_some();
                async move { Ok(exited.then_some(())) }
            },
        )
        .await
    }
    .await;
    if outcome.is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleeper_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = sleeper.wait();
    }
    let left = e2e::pods::cgroup_dirs_existing(&pod_cg);
    let foreign_kept = e2e::pods::cgroup_dirs_existing(&foreign);
    let pod_dir_left = env.berthd.state().join("pods").join(&id[..12]).exists();
    drop(env);
    for cg in [&child_cg, &pod_cg, &foreign, &parent] {
        for d in e2e::pods::cgroup_dirs_existing(cg) {
            let _ = std::fs::remove_dir(d);
        }
    }
    outcome?;
    assert!(left.is_empty(), "the pod's cgroups are removed: {left:?}");
    assert!(!pod_dir_left, "the pod directory is removed");
    assert!(
        !foreign_kept.is_empty(),
        "a cgroup of no pod directory of berth's is kept"
    );
    Ok(())
}
