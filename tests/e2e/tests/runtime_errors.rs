//! What bad container requests get: the gRPC code the contract names for each, a message
//! naming the culprit, and nothing left behind (no container directory, no file written,
//! nothing listed). Also: a command missing from the image, and removing an image in use.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use e2e::cri_api::{ContainerState, Mount};
use e2e::pods::{PodEnv, TERM_TRAP_LOOP, expect_code, mounts_under};
use e2e::{Code, Cri};

async fn assert_alive(cri: &Cri) {
    cri.version()
        .await
        .expect("berthd still answers Version after bad input");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_create_container_requests() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("badreq");
    let pod_id = env.run_pod(&pod).await?;
    let good = env.sh_container("good", TERM_TRAP_LOOP);
    let good_id = env.create_container(&pod_id, &good, &pod).await?;
    let containers_dir = env.berthd.state().join("containers");
    let dirs_before = PodEnv::dir_entries(&containers_dir);
    let logs_before = PodEnv::dir_entries(Path::new(&pod.log_directory));

    // Duplicate name + attempt in the pod.
    let s = expect_code(
        env.create_container(&pod_id, &good, &pod).await,
        Code::AlreadyExists,
        "duplicate container name",
    );
    println!("duplicate container: {s:?}");
    // Another attempt is fine (kubelet restarts a container that way).
    let mut next = good.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    next.log_path = "good-1.log".into();
    let next_id = env.create_container(&pod_id, &next, &pod).await?;
    let dirs_with_next = PodEnv::dir_entries(&containers_dir);
    // Baseline after the good containers (each created container has its rootfs mounted).
    let mounts_before = mounts_under(&env.berthd.state()).len();

    // Unknown pod.
    let s = expect_code(
        env.create_container(&"9".repeat(64), &env.sh_container("x", "true"), &pod)
            .await,
        Code::NotFound,
        "CreateContainer in an unknown pod",
    );
    println!("unknown pod: {s:?}");

    // Image not present: NotFound naming it.
    let mut noimg = env.sh_container("noimg", "true");
    noimg.image = Some(e2e::spec("docker.io/library/not-pulled:v9"));
    let s = expect_code(
        env.create_container(&pod_id, &noimg, &pod).await,
        Code::NotFound,
        "image not pulled",
    );
    assert!(
        s.message().contains("not-pulled"),
        "the message names the image: {:?}",
        s.message()
    );

    // Relative container_path / host_path.
    let host = tempfile::tempdir()?;
    let mut rel_c = env.sh_container("relc", "true");
    rel_c.mounts = vec![Mount {
        container_path: "data".into(),
        host_path: host.path().display().to_string(),
        ..Default::default()
    }];
    let s = expect_code(
        env.create_container(&pod_id, &rel_c, &pod).await,
        Code::InvalidArgument,
        "relative container_path",
    );
    assert!(
        s.message().contains("data"),
        "message names the path: {:?}",
        s.message()
    );
    let mut rel_h = env.sh_container("relh", "true");
    rel_h.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: "relative/host/dir".into(),
        ..Default::default()
    }];
    let s = expect_code(
        env.create_container(&pod_id, &rel_h, &pod).await,
        Code::InvalidArgument,
        "relative host_path",
    );
    assert!(
        s.message().contains("relative/host/dir"),
        "message names the path: {:?}",
        s.message()
    );
    assert!(
        !Path::new("relative").exists() && !env.berthd.dir().join("relative").exists(),
        "no relative host dir was created"
    );

    // log_path escaping the log directory.
    let escape_name = format!("escape-{}.log", e2e::pods::unique("x"));
    let mut esc = env.sh_container("esc", "echo should-not-run");
    esc.log_path = format!("../{escape_name}");
    let s = expect_code(
        env.create_container(&pod_id, &esc, &pod).await,
        Code::InvalidArgument,
        "log_path with ..",
    );
    assert!(
        s.message().contains("log_path") || s.message().contains(&escape_name),
        "the message names the log path: {:?}",
        s.message()
    );
    let escaped = Path::new(&pod.log_directory)
        .parent()
        .unwrap()
        .join(&escape_name);
    assert!(
        !escaped.exists(),
        "nothing written at {}",
        escaped.display()
    );

    // log_path escaping through a symlink in the log directory.
    let outside = tempfile::tempdir()?;
    std::os::unix::fs::symlink(outside.path(), Path::new(&pod.log_directory).join("link"))?;
    let mut sym = env.sh_container("sym", "echo should-not-run");
    sym.log_path = "link/escape.log".into();
    let s = expect_code(
        env.create_container(&pod_id, &sym, &pod).await,
        Code::InvalidArgument,
        "log_path escaping through a symlink",
    );
    println!("symlink log_path: {s:?}");
    assert!(
        PodEnv::dir_entries(outside.path()).is_empty(),
        "nothing written through the symlink: {:?}",
        PodEnv::dir_entries(outside.path())
    );

    // Relative working_dir.
    let mut wd = env.sh_container("relwd", "true");
    wd.working_dir = "relative/wd".into();
    let s = expect_code(
        env.create_container(&pod_id, &wd, &pod).await,
        Code::InvalidArgument,
        "relative working_dir",
    );
    assert!(
        s.message().contains("relative/wd") || s.message().contains("working"),
        "the message names the working dir: {:?}",
        s.message()
    );

    // Nothing leaked by the failed calls.
    assert_eq!(
        PodEnv::dir_entries(&containers_dir),
        dirs_with_next,
        "no container dir left by failed CreateContainer calls (before: {dirs_before:?})"
    );
    assert_eq!(
        mounts_under(&env.berthd.state()).len(),
        mounts_before,
        "no new mount"
    );
    assert_eq!(
        PodEnv::dir_entries(Path::new(&pod.log_directory))
            .into_iter()
            .filter(|n| !logs_before.contains(n) && n != "good-1.log" && n != "link")
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "no log file written by failed calls"
    );
    let mut listed = env.list_container_ids(None).await?;
    listed.sort();
    let mut want = vec![good_id.clone(), next_id.clone()];
    want.sort();
    assert_eq!(listed, want, "only the good containers are listed");

    // Unknown container IDs.
    let unknown = "d".repeat(64);
    expect_code(
        env.start_container(&unknown).await,
        Code::NotFound,
        "StartContainer unknown",
    );
    expect_code(
        env.container_status(&unknown).await,
        Code::NotFound,
        "ContainerStatus unknown",
    );
    expect_code(
        env.exec_sync(&unknown, &["true"], 5).await,
        Code::NotFound,
        "ExecSync unknown",
    );
    // StopContainer of an unknown ID succeeds, like RemoveContainer (critest's Idempotence
    // spec; CRI-O's answer).
    env.stop_container(&unknown, 1).await?;
    env.remove_container(&unknown).await?;

    // A stopped pod takes no new containers.
    env.stop_pod(&pod_id).await?;
    let s = expect_code(
        env.create_container(&pod_id, &env.sh_container("late", "true"), &pod)
            .await,
        Code::FailedPrecondition,
        "CreateContainer in a stopped pod",
    );
    println!("stopped pod: {s:?}");
    assert_alive(&env.cri).await;

    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    let left = PodEnv::dir_entries(&containers_dir);
    assert!(
        left.is_empty(),
        "container dirs left after RemovePodSandbox: {left:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn command_missing_from_the_image() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("nocmd");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.container_config("nosuch", &["/no/such"]);
    let cid = env.create_container(&pod_id, &c, &pod).await?;
    let r = env.start_container(&cid).await;
    let s = r.expect_err("StartContainer of a command missing from the image fails");
    println!("StartContainer /no/such: {s:?}");
    let msg = s.message().to_lowercase();
    assert!(
        msg.contains("/no/such") || msg.contains("no such file") || msg.contains("not found"),
        "the error carries the runtime's message: {:?}",
        s.message()
    );
    let st = env
        .wait_container_state(
            &cid,
            ContainerState::ContainerExited,
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(
        st.exit_code, 128,
        "exit code 128 for a container that could not start"
    );
    assert_eq!(st.reason, "Error");
    println!("status message: {:?}", st.message);
    // It can be removed like any other.
    env.remove_container(&cid).await?;
    assert!(!env.container_dir(&cid).exists(), "container dir removed");
    assert!(
        mounts_under(&env.container_dir(&cid)).is_empty(),
        "no mount left for the failed container"
    );
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_in_use_cannot_be_removed() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("inuse");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.container_config("user", &[]);
    let cid = env.create_container(&pod_id, &c, &pod).await?;

    let s = expect_code(
        env.cri.remove_image("busybox").await,
        Code::FailedPrecondition,
        "RemoveImage of an image a container uses",
    );
    println!("RemoveImage in use: {s:?}");
    let img = env.cri.image_status("busybox").await?;
    assert_eq!(
        img.map(|i| i.id),
        Some(env.busybox_id()),
        "the image is still there"
    );
    assert!(
        env.cri
            .list_images()
            .await?
            .iter()
            .any(|i| i.id == env.busybox_id()),
        "the image is still listed"
    );
    // By ID too.
    expect_code(
        env.cri.remove_image(&env.busybox_id()).await,
        Code::FailedPrecondition,
        "RemoveImage by ID of an image in use",
    );

    // Once the container is gone, the image can go.
    env.remove_container(&cid).await?;
    env.cri.remove_image("busybox").await?;
    assert!(
        env.cri.image_status("busybox").await?.is_none(),
        "image removed"
    );

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}
