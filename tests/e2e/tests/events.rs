//! GetContainerEvents and the state store behind it: the events of a full lifecycle in
//! order for every subscriber, a container that exits by itself, an OOM kill (event,
//! reason, exit code, counter), a subscriber that stops reading, and exits across a berthd
//! restart.

use std::time::Duration;

use anyhow::Result;
use e2e::cri_api::{self as api, ContainerEventType as T, ContainerState, LinuxContainerResources};
use e2e::events::{Events, summary};
use e2e::metrics;
use e2e::pods::{PodEnv, oom_kills_reported, vm_rss_kib};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn a_full_lifecycle_in_order_for_two_subscribers() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let mut a = Events::open(&env.cri).await?;
    let mut b = Events::open(&env.cri).await?;
    let pod = env.pod_config("events");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.container_config("sleeper", &["sleep", "3600"]);
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    env.stop_container(&cid, 0).await?;
    env.remove_container(&cid).await?;
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    let want = vec![
        (pod_id.clone(), T::ContainerCreatedEvent),
        (pod_id.clone(), T::ContainerStartedEvent),
        (cid.clone(), T::ContainerCreatedEvent),
        (cid.clone(), T::ContainerStartedEvent),
        (cid.clone(), T::ContainerStoppedEvent),
        (cid.clone(), T::ContainerDeletedEvent),
        (pod_id.clone(), T::ContainerStoppedEvent),
        (pod_id.clone(), T::ContainerDeletedEvent),
    ];
    for sub in [&mut a, &mut b] {
        let got = sub.until(&pod_id, T::ContainerDeletedEvent, WAIT).await?;
        assert_eq!(summary(&got), want);
        // Each carries the pod and its containers as they were right after the change.
        let started = &got[3];
        let pod_status = started.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(pod_status.id, pod_id);
        assert_eq!(pod_status.state, api::PodSandboxState::SandboxReady as i32);
        assert_eq!(started.containers_statuses.len(), 1);
        assert_eq!(
            started.containers_statuses[0].state,
            ContainerState::ContainerRunning as i32
        );
        let stopped = &got[4];
        assert_eq!(
            stopped.containers_statuses[0].state,
            ContainerState::ContainerExited as i32
        );
        assert!(got.windows(2).all(|w| w[0].created_at <= w[1].created_at));
        assert_eq!(
            got[6].pod_sandbox_status.as_ref().map(|p| p.state),
            Some(api::PodSandboxState::SandboxNotready as i32)
        );
    }
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_exits_by_itself_is_stopped_within_100ms() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("exits");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container("quitter", "sleep 1; exit 3");
    let cid = env.create_container(&pod_id, &c, &pod).await?;
    let mut events = Events::open(&env.cri).await?;
    env.start_container(&cid).await?;
    // No CRI call from here on: the exit must reach the stream by itself.
    let got = events.until(&cid, T::ContainerStoppedEvent, WAIT).await?;
    let stopped = got.last().expect("the stopped event");
    let st = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == cid)
        .expect("the container's status in its event");
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    let late_ms = (stopped.created_at - st.finished_at) as f64 / 1e6;
    println!("STOPPED event {late_ms:.1} ms after the exit");
    assert!(
        late_ms < 100.0,
        "the STOPPED event came {late_ms:.1} ms after the exit"
    );
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_has_its_event_reason_exit_code_and_count() -> Result<()> {
    if !oom_kills_reported() {
        return Ok(());
    }
    let env = PodEnv::with_busybox_options(|o| o.metrics()).await?;
    let count = |text: &str| {
        metrics::parse(text)
            .iter()
            .find(|s| s.name == "berth_oom_kills_total")
            .map(|s| s.value)
    };
    assert_eq!(count(&env.berthd.metrics().await?), Some(0.0));
    let pod = env.pod_config("oom-events");
    let pod_id = env.run_pod(&pod).await?;
    let mut c = env.sh_container("hog", "x=a; while true; do x=$x$x; done");
    c.linux = Some(api::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        security_context: None,
    });
    let cid = env.create_container(&pod_id, &c, &pod).await?;
    let mut events = Events::open(&env.cri).await?;
    env.start_container(&cid).await?;
    let got = events.until(&cid, T::ContainerStoppedEvent, WAIT).await?;
    let st = got
        .last()
        .and_then(|e| e.containers_statuses.iter().find(|s| s.id == cid))
        .expect("the container's status in its event")
        .clone();
    assert_eq!((st.reason.as_str(), st.exit_code), ("OOMKilled", 137));
    let text = env.berthd.metrics().await?;
    assert_eq!(count(&text), Some(1.0), "berth_oom_kills_total:\n{text}");
    let samples = metrics::parse(&text);
    let gauge = |name: &str, state: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("state") == Some(state))
            .map(|s| s.value)
    };
    assert_eq!(gauge("berth_containers", "exited"), Some(1.0));
    assert_eq!(gauge("berth_containers", "running"), Some(0.0));
    assert_eq!(gauge("berth_pod_sandboxes", "ready"), Some(1.0));
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_is_cut_off_and_others_keep_theirs() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("flood");
    let pod_id = env.run_pod(&pod).await?;
    // Events carry every status of their pod: a pod with many containers makes them big,
    // so the transport's buffers fill after few of them and the queue does the rest.
    for i in 0..40 {
        let c = env.container_config(&format!("idle-{i}"), &["sleep", "3600"]);
        env.create_container(&pod_id, &c, &pod).await?;
    }
    let mut stalled = Events::open(&env.cri).await?;
    let mut reader = Events::open(&env.cri).await?;
    let berthd_pid = env.berthd.pid().map(|p| p as i32).unwrap_or(0);
    let rss_before = vm_rss_kib(berthd_pid).unwrap_or(0);
    let rounds = 700;
    for i in 0..rounds {
        let c = env.container_config(&format!("churn-{i}"), &["true"]);
        let id = env.create_container(&pod_id, &c, &pod).await?;
        env.remove_container(&id).await?;
        for kind in [T::ContainerCreatedEvent, T::ContainerDeletedEvent] {
            let e = reader.next(WAIT).await?;
            assert_eq!(
                (e.container_id.as_str(), e.container_event_type),
                (id.as_str(), kind as i32),
                "the reading subscriber gets every event in order"
            );
        }
    }
    let rss_after = vm_rss_kib(berthd_pid).unwrap_or(0);
    println!("berthd VmRSS {rss_before} KiB before, {rss_after} KiB after {rounds} rounds");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "berthd grew from {rss_before} to {rss_after} KiB with a subscriber that does not read"
    );
    // The stalled one, read at last: what the transport held, then the cut-off.
    let mut delivered = 0;
    let status = loop {
        match stalled.next_raw(WAIT).await? {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("the stalled stream ended without an error after {delivered}"),
            Err(status) => break status,
        }
    };
    println!("stalled subscriber: {delivered} events, then {status:?}");
    assert_eq!(status.code(), e2e::Code::ResourceExhausted);
    assert!(delivered < 2 * rounds, "it was cut off before the end");
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_while_berthd_is_down_are_found_and_later_exits_are_seen() -> Result<()> {
    let mut env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("restart-events");
    let pod_id = env.run_pod(&pod).await?;
    let quick = env.sh_container("quick", "sleep 2; exit 4");
    let slow = env.sh_container("slow", "sleep 6; exit 5");
    let quick_id = env.run_container(&pod_id, &quick, &pod).await?;
    let slow_id = env.run_container(&pod_id, &slow, &pod).await?;
    env.berthd.kill9()?;
    // The quick one exits while berthd is down.
    let quick_pid_gone = e2e::poll_until(WAIT, "the quick container to exit", || async {
        Ok(e2e::pods::processes_mentioning("sleep 2; exit 4")
            .is_empty()
            .then_some(()))
    })
    .await;
    assert!(quick_pid_gone.is_ok());
    env.berthd.launch().await?;
    env.reconnect().await?;
    let mut events = Events::open(&env.cri).await?;
    let st = env.container_status(&quick_id).await?;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 4),
        "the sweep at start found the exit"
    );
    let got = events
        .until(&slow_id, T::ContainerStoppedEvent, WAIT)
        .await?;
    let st = got
        .last()
        .and_then(|e| e.containers_statuses.iter().find(|s| s.id == slow_id))
        .expect("status of the slow container");
    assert_eq!(
        st.exit_code, 5,
        "an exit after the restart is seen as it happens"
    );
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_monitor_that_dies_stops_its_containers_with_a_reason() -> Result<()> {
    let env = PodEnv::with_busybox_options(|o| o.metrics()).await?;
    let pod = env.pod_config("orphaned");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container("lonely", "echo before; exec sleep 3600");
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let ctr_pid = env.container_pid(&cid).await?;
    let monitor_pid = e2e::pods::json_pid(&env.pod_info(&pod_id).await?, "monitorPid")
        .expect("the pod's monitor pid");
    let mut events = Events::open(&env.cri).await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // No CRI call until the events say what happened.
    let got = events
        .until(&pod_id, T::ContainerStoppedEvent, WAIT)
        .await?;
    let kinds = summary(&got);
    assert!(
        kinds.contains(&(cid.clone(), T::ContainerStoppedEvent)),
        "the container is stopped before its pod: {kinds:?}"
    );
    let pod_event = got.last().expect("the pod's event");
    assert_eq!(
        pod_event.pod_sandbox_status.as_ref().map(|p| p.state),
        Some(api::PodSandboxState::SandboxNotready as i32)
    );
    let st = pod_event
        .containers_statuses
        .iter()
        .find(|s| s.id == cid)
        .expect("the container's status");
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137);
    assert!(
        st.message.contains("monitor") && st.message.contains(&monitor_pid.to_string()),
        "the message says the monitor died: {:?}",
        st.message
    );
    assert!(
        !e2e::pods::pid_alive(ctr_pid),
        "nothing runs unsupervised: pid {ctr_pid} is gone"
    );
    let text = env.berthd.metrics().await?;
    assert_eq!(
        metrics::sum(&metrics::parse(&text), "berth_monitor_deaths_total", &[]),
        1.0,
        "the death is counted:\n{text}"
    );
    let log = e2e::pods::read_cri_log(&PodEnv::log_file(&pod, &c))?;
    assert!(
        log.iter().any(|l| l.content == "before"),
        "the log so far stays: {log:?}"
    );
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}
