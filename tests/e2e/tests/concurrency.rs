//! Fifty at once: RunPodSandbox, then CreateContainer, StartContainer and ExecSync, each
//! fifty calls in flight together; every call succeeds, nothing deadlocks, and the lists
//! afterwards agree with what the calls answered.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use e2e::cri_api::{ContainerState, PodSandboxState};
use e2e::pods::PodEnv;
use futures_util::future::join_all;

const N: usize = 50;

/// Every result, or a panic listing the failures.
fn all_ok<T, E: std::fmt::Debug>(what: &str, results: Vec<Result<T, E>>) -> Vec<T> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failed.push(format!("{what} {i}: {e:?}")),
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_runs_creates_and_execs_at_once() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let within = Duration::from_secs(240);
    let pods: Vec<_> = (0..N)
        .map(|i| env.pod_config(&format!("at-once-{i}")))
        .collect();
    let pod_ids = all_ok(
        "RunPodSandbox",
        tokio::time::timeout(within, join_all(pods.iter().map(|p| env.run_pod(p)))).await?,
    );
    let ctrs: Vec<_> = (0..N)
        .map(|i| env.container_config(&format!("c-{i}"), &["sleep", "3600"]))
        .collect();
    let cids = all_ok(
        "CreateContainer",
        tokio::time::timeout(
            within,
            join_all((0..N).map(|i| env.create_container(&pod_ids[i], &ctrs[i], &pods[i]))),
        )
        .await?,
    );
    all_ok(
        "StartContainer",
        tokio::time::timeout(
            within,
            join_all(cids.iter().map(|c| env.start_container(c))),
        )
        .await?,
    );
    let outs = all_ok(
        "ExecSync",
        tokio::time::timeout(
            within,
            join_all(
                cids.iter()
                    .map(|c| env.exec_sync(c, &["sh", "-c", "echo $HOSTNAME"], 60)),
            ),
        )
        .await?,
    );
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.exit_code, 0, "exec {i}: {o:?}");
    }

    // The lists agree with the answers.
    let listed_pods: HashSet<String> = env
        .list_pods(None)
        .await?
        .into_iter()
        .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
        .map(|p| p.id)
        .collect();
    assert_eq!(listed_pods, pod_ids.iter().cloned().collect::<HashSet<_>>());
    let listed = env.list_containers(None).await?;
    assert_eq!(listed.len(), N);
    for c in &listed {
        let i = cids
            .iter()
            .position(|id| *id == c.id)
            .expect("a created container");
        assert_eq!(c.pod_sandbox_id, pod_ids[i], "container {i} is in its pod");
        assert_eq!(c.state, ContainerState::ContainerRunning as i32);
    }

    all_ok(
        "StopPodSandbox",
        tokio::time::timeout(within, join_all(pod_ids.iter().map(|p| env.stop_pod(p)))).await?,
    );
    all_ok(
        "RemovePodSandbox",
        tokio::time::timeout(within, join_all(pod_ids.iter().map(|p| env.remove_pod(p)))).await?,
    );
    for id in &pod_ids {
        env.assert_pod_gone(id, "").await;
    }
    assert!(env.list_containers(None).await?.is_empty());
    Ok(())
}
