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

/// A runtime whose `update` never returns (every other command is runc's).
const STUCK_RUNTIME: &str = "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = update ] && exec sleep 3601; done\nexec runc \"$@\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_that_hangs_fails_its_call_and_nothing_else_waits() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir()?;
    let stuck = bin.path().join("stuck-runtime");
    std::fs::write(&stuck, STUCK_RUNTIME)?;
    std::fs::set_permissions(&stuck, std::fs::Permissions::from_mode(0o755))?;
    let extra = format!(
        "[runtime]\ncall_timeout_secs = 2\n[runtime.handlers.runc]\npath = \"runc\"\n\
         [runtime.handlers.stuck]\npath = \"{}\"\n",
        stuck.display()
    );
    let env = PodEnv::with_busybox_options(|mut o| {
        o.extra_config = extra;
        o
    })
    .await?;
    let stuck_pod = env.pod_config("stuck");
    let stuck_pod_id = env.run_pod_handler(&stuck_pod, "stuck").await?;
    let c = env.container_config("sleeper", &["sleep", "3600"]);
    let stuck_cid = env.run_container(&stuck_pod_id, &c, &stuck_pod).await?;
    let pod = env.pod_config("fine");
    let pod_id = env.run_pod(&pod).await?;
    let cid = env.run_container(&pod_id, &c, &pod).await?;

    let mut rt = env.cri.runtime.clone();
    let started = std::time::Instant::now();
    let update = tokio::spawn(async move {
        rt.update_container_resources(e2e::cri_api::UpdateContainerResourcesRequest {
            container_id: stuck_cid,
            linux: Some(e2e::cri_api::LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    });
    // While the runtime hangs, the other pod and the lists are served at once.
    while !update.is_finished() && started.elapsed() < Duration::from_secs(1) {
        let t = std::time::Instant::now();
        env.exec_ok(&cid, &["true"]).await?;
        env.list_containers(None).await?;
        env.container_status(&cid).await?;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "calls of another pod waited {:?} behind a hung runtime",
            t.elapsed()
        );
    }
    let status = update.await?.expect_err("the hung update must fail");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("update") && status.message().contains("stuck"),
        "the message names the call and the runtime: {:?}",
        status.message()
    );
    assert!(took < Duration::from_secs(10), "failed after {took:?}");
    let killed = e2e::poll_until(
        Duration::from_secs(5),
        "the hung runtime to be killed",
        || async {
            Ok(e2e::pods::processes_mentioning("sleep 3601")
                .is_empty()
                .then_some(()))
        },
    )
    .await;
    assert!(killed.is_ok(), "the hung runtime is still running");
    env.remove_pod(&stuck_pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}
