//! Runtime handlers (RuntimeClass): the default runc, crun by name — skipped with the
//! reason when crun cannot run a trivial container on this host (it refuses the hybrid
//! cgroup layout) — and unknown names.

use std::time::Duration;

use anyhow::Result;
use e2e::Code;
use e2e::cri_api::ContainerState;
use e2e::pods::{PodEnv, expect_code};

/// Runs `crun --version` and a trivial container through crun on this host; `Err` holds
/// crun's own reason when it cannot.
async fn crun_usable(env: &PodEnv) -> std::result::Result<(), String> {
    if std::process::Command::new("crun")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("crun is not installed".into());
    }
    let pod = env.pod_config("crun-probe");
    let pod_id = env
        .run_pod_handler(&pod, "crun")
        .await
        .map_err(|s| format!("RunPodSandbox with crun: {}", s.message()))?;
    let c = env.container_config("probe", &["true"]);
    let r = env.run_container(&pod_id, &c, &pod).await;
    let _ = env.remove_pod(&pod_id).await;
    r.map(|_| ()).map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn crun_handler_runs_containers_or_skips_with_reason() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    if let Err(reason) = crun_usable(&env).await {
        println!("skipping: crun cannot run a trivial container here: {reason}");
        return Ok(());
    }
    let pod = env.pod_config("crun");
    let pod_id = env.run_pod_handler(&pod, "crun").await?;
    let status = env.pod_status(&pod_id).await?;
    assert_eq!(status.runtime_handler, "crun");
    let c = env.sh_container("exit7", "exit 7");
    let id = env.run_container(&pod_id, &c, &pod).await?;
    let st = env
        .wait_container_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(20),
        )
        .await?;
    assert_eq!(st.exit_code, 7);
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn default_handler_is_runc_and_unknown_is_rejected() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("runc-default");
    let pod_id = env.run_pod(&pod).await?;
    assert_eq!(env.pod_status(&pod_id).await?.runtime_handler, "runc");
    env.remove_pod(&pod_id).await?;
    let s = expect_code(
        env.run_pod_handler(&env.pod_config("nope"), "kata").await,
        Code::InvalidArgument,
        "unknown runtime handler",
    );
    assert!(s.message().contains("kata"), "{}", s.message());
    Ok(())
}
