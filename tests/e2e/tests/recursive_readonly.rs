//! Recursive read-only mounts (`recursive_read_only`, Kubernetes 1.33 GA): a read-only bind
//! whose submounts are read-only too; a plain read-only bind leaves them writable; with
//! other propagation than private or without `readonly` it is InvalidArgument and nothing is
//! mounted; the host's submount is untouched afterwards.

use std::process::Command;

use anyhow::{Result, bail};
use e2e::Code;
use e2e::cri_api::{Mount, MountPropagation};
use e2e::pods::{PodEnv, expect_code, is_mounted, mounts_under};

/// A host directory with a tmpfs mounted on `sub`; unmounted on drop.
struct HostTree {
    dir: tempfile::TempDir,
}

impl HostTree {
    fn new() -> Result<HostTree> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-rro-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("sub"))?;
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "e2e-rro",
                &dir.path().join("sub").display().to_string(),
            ])
            .status()?;
        if !st.success() {
            bail!("mount tmpfs: {st}");
        }
        Ok(HostTree { dir })
    }

    fn mount(&self, recursive: bool, readonly: bool) -> Mount {
        Mount {
            container_path: "/mnt".into(),
            host_path: self.dir.path().display().to_string(),
            readonly,
            recursive_read_only: recursive,
            ..Default::default()
        }
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(
            &self.dir.path().join("sub"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_mounts_make_every_submount_read_only() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    if !env
        .default_handler_features()
        .await?
        .recursive_read_only_mounts
    {
        eprintln!(
            "skipped: this kernel has no mount_setattr; berthd does not offer recursive read-only mounts"
        );
        return Ok(());
    }
    let tree = HostTree::new()?;
    let pod = env.pod_config("rro");
    let pod_id = env.run_pod(&pod).await?;

    let mut c = env.container_config("rro", &["sleep", "3600"]);
    c.mounts = vec![tree.mount(true, true)];
    let rro_id = env.run_container(&pod_id, &c, &pod).await?;
    let mut c = env.container_config("ro", &["sleep", "3600"]);
    c.mounts = vec![tree.mount(false, true)];
    let ro_id = env.run_container(&pod_id, &c, &pod).await?;

    for (cid, path) in [
        (&rro_id, "/mnt/top"),
        (&rro_id, "/mnt/sub/below"),
        (&ro_id, "/mnt/top"),
    ] {
        let r = env.exec_sync(cid, &["touch", path], 10).await?;
        assert_ne!(r.exit_code, 0, "{path} is writable");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("Read-only file system"),
            "{path}: {:?}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    // Only the top of a plain read-only bind is read-only.
    env.exec_ok(&ro_id, &["touch", "/mnt/sub/below"]).await?;

    // The staged clone was for the OCI runtime only: nothing of it stays in the host's mount
    // namespace, where it would keep the host's submount busy.
    let bundle = env.container_dir(&rro_id);
    assert!(mounts_under(&bundle.join("volumes")).is_empty());
    assert!(
        is_mounted(&tree.dir.path().join("sub")),
        "the host's submount is kept"
    );
    assert!(tree.dir.path().join("sub/below").exists());
    // As critest does: the host may take its submount away and remove its mount point
    // while the containers run.
    nix::mount::umount2(
        &tree.dir.path().join("sub"),
        nix::mount::MntFlags::MNT_DETACH,
    )?;
    std::fs::remove_dir(tree.dir.path().join("sub"))?;
    for cid in [&rro_id, &ro_id] {
        env.stop_container(cid, 0).await?;
        env.remove_container(cid).await?;
    }
    assert!(
        mounts_under(&bundle).is_empty(),
        "nothing of the bundle stays mounted"
    );

    // Refused, with nothing mounted: without readonly, and with propagation.
    let tree = HostTree::new()?;
    // Refused, with nothing mounted: without readonly, and with propagation.
    let mut bad = vec![tree.mount(true, false)];
    for p in [
        MountPropagation::PropagationHostToContainer,
        MountPropagation::PropagationBidirectional,
    ] {
        let mut m = tree.mount(true, true);
        m.propagation = p as i32;
        bad.push(m);
    }
    for m in bad {
        let what = format!("{m:?}");
        let mut c = env.container_config("bad", &["sleep", "3600"]);
        c.mounts = vec![m];
        let st = expect_code(
            env.create_container(&pod_id, &c, &pod).await,
            Code::InvalidArgument,
            &what,
        );
        assert!(
            st.message().contains("recursive_read_only"),
            "{}",
            st.message()
        );
    }
    assert!(env.list_container_ids(None).await?.is_empty());
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}
