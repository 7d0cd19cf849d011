//! Image volumes (KEP-4639): a mount whose `image` names a pulled image is its file system,
//! read-only and executable, at the container path; `image_sub_path` mounts a directory of
//! it; ContainerStatus reports the image's ID in the mount; bad sub paths, a writable image
//! volume and an image that is not pulled are errors; an image in use by a volume cannot
//! be removed; nothing stays mounted after the container is removed.

use anyhow::Result;
use e2e::Code;
use e2e::cri_api::{ImageSpec, Mount};
use e2e::image::{Compression, Format, ImageBuilder, LayerBuilder, busybox_layer};
use e2e::pods::{PodEnv, expect_code, mounts_under};

/// An image of two layers (so the volume is an overlay): busybox, and `/data/hello`.
async fn push_two_layer_image(env: &PodEnv) -> Result<String> {
    let mut extra = LayerBuilder::new();
    extra
        .dir("data", 0o755)?
        .file("data/hello", b"from the image\n", 0o644)?;
    let img = ImageBuilder::new(Format::Oci)
        .label("e2e.fixture", "image-volume")
        .layer(busybox_layer(Compression::GZIP)?)
        .layer(extra.finish(Compression::GZIP)?)
        .build()?;
    env.pusher()
        .push_image("library/e2e-imgvol", &["latest"], &img)
        .await?;
    Ok(env.cri.pull("e2e-imgvol").await?)
}

fn volume(container_path: &str, image: &str, sub: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        readonly,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_read_only_with_sub_paths_and_hold_their_image() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let vol_id = push_two_layer_image(&env).await?;
    let pod = env.pod_config("imgvol");
    let pod_id = env.run_pod(&pod).await?;
    let mut c = env.container_config("reader", &["sleep", "3600"]);
    c.mounts = vec![
        volume("/mnt/img", "e2e-imgvol", "", true),
        volume("/mnt/etc", "e2e-imgvol", "etc", true),
        // A single-layer image (busybox) is a read-only bind of its layer.
        volume("/mnt/bb", "busybox", "bin", true),
    ];
    let cid = env.run_container(&pod_id, &c, &pod).await?;

    assert_eq!(
        env.exec_ok(&cid, &["cat", "/mnt/img/data/hello"]).await?,
        "from the image\n"
    );
    env.exec_ok(&cid, &["ls", "/mnt/img/bin/sh"]).await?;
    // Executable, not noexec.
    env.exec_ok(&cid, &["/mnt/img/bin/ls", "/mnt/img"]).await?;
    env.exec_ok(&cid, &["ls", "/mnt/etc/passwd"]).await?;
    env.exec_ok(&cid, &["ls", "/mnt/bb/sh"]).await?;
    for path in ["/mnt/img/written", "/mnt/etc/written", "/mnt/bb/written"] {
        let r = env.exec_sync(&cid, &["touch", path], 10).await?;
        assert_ne!(r.exit_code, 0, "{path} is writable");
    }

    let st = env.container_status(&cid).await?;
    let reported: Vec<(String, String)> = st
        .mounts
        .iter()
        .filter_map(|m| {
            m.image
                .as_ref()
                .map(|i| (m.container_path.clone(), i.image_ref.clone()))
        })
        .collect();
    assert_eq!(
        reported,
        vec![
            ("/mnt/img".to_string(), vol_id.clone()),
            ("/mnt/etc".to_string(), vol_id.clone()),
            ("/mnt/bb".to_string(), env.busybox_id()),
        ]
    );
    let bundle = env.berthd.state().join("containers").join(&cid);
    assert!(!mounts_under(&bundle.join("imagevols")).is_empty());

    // In use by a volume: not removable.
    expect_code(
        env.cri.remove_image("e2e-imgvol").await,
        Code::FailedPrecondition,
        "RemoveImage of an image an image volume uses",
    );
    env.stop_container(&cid, 0).await?;
    env.remove_container(&cid).await?;
    assert!(
        mounts_under(&bundle).is_empty(),
        "the image volumes are unmounted"
    );
    env.cri.remove_image("e2e-imgvol").await?;
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_image_volumes_are_clear_errors() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("imgvol-bad");
    let pod_id = env.run_pod(&pod).await?;
    for (i, (m, code, says)) in [
        (
            volume("/m", "busybox", "nope", true),
            Code::InvalidArgument,
            "does not exist",
        ),
        (
            volume("/m", "busybox", "../etc", true),
            Code::InvalidArgument,
            "without `..`",
        ),
        (
            volume("/m", "busybox", "/etc", true),
            Code::InvalidArgument,
            "relative",
        ),
        (
            volume("/m", "busybox", "", false),
            Code::InvalidArgument,
            "read-only",
        ),
        (
            volume("/m", "never-pulled", "", true),
            Code::NotFound,
            "is not pulled",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = env.container_config(&format!("bad-{i}"), &["true"]);
        c.mounts = vec![m];
        let s = expect_code(
            env.create_container(&pod_id, &c, &pod).await,
            code,
            &format!("image volume case {i}"),
        );
        assert!(s.message().contains(says), "case {i}: {:?}", s.message());
    }
    assert!(env.list_containers(None).await?.is_empty());
    let left = mounts_under(&env.berthd.state().join("containers"));
    assert!(left.is_empty(), "nothing left mounted: {left:?}");
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}
