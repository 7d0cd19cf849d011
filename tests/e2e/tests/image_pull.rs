//! The image service against a real registry: pulls of every kind of image, the image
//! records berth reports, the layers it unpacks on disk, removal, listing, ImageFsInfo, and
//! that layers are downloaded once (concurrent pulls, shared base layers).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use e2e::cri_api::Image;
use e2e::fixtures::{
    self, MULTI_LAYER_HARDLINK, MULTI_LAYER_KEPT, MULTI_LAYER_OPAQUE, MULTI_LAYER_OPAQUE_NEW,
    MULTI_LAYER_OWNED, MULTI_LAYER_WHITEOUT,
};
use e2e::util::{find_named, lgetxattr};
use e2e::{
    Berthd, BerthdOptions, Format, Proxy, ProxyOptions, PushedImage, Registry, poll_until,
    registry_and_berthd,
};

/// Checks the fields every image record must have for `img` pulled as `name`
/// (`docker.io/library/busybox`-style, without tag).
fn assert_record(rec: &Image, img: &PushedImage, name: &str, tag: Option<&str>) {
    assert_eq!(rec.id, img.config_digest, "image ID is the config digest");
    if let Some(tag) = tag {
        let want = format!("{name}:{tag}");
        assert!(
            rec.repo_tags.contains(&want),
            "repo_tags {:?} lacks {want}",
            rec.repo_tags
        );
    }
    let digest = format!("{name}@{}", img.digest);
    assert!(
        rec.repo_digests.contains(&digest),
        "repo_digests {:?} lacks {digest}",
        rec.repo_digests
    );
    assert!(rec.size > 0, "size > 0");
    assert!(!rec.pinned, "pinned is false");
}

/// Asserts that nothing named `*tmp*` is left under berth's root (temporary downloads and
/// unpack dirs are renamed or removed once a pull is done).
fn assert_no_tmp_leftovers(berthd: &Berthd) {
    let leftovers: Vec<_> = find_named(&berthd.root(), "tmp")
        .into_iter()
        // The images' own /tmp directories inside unpacked layers are content, not leftovers.
        .filter(|p| {
            !berthd
                .layer_dirs()
                .iter()
                .any(|(_, diff)| p.starts_with(diff))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left under root: {leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_short_name_and_inspect() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "short-name",
    )
    .await?;
    let cri = berthd.cri().await?;

    let image_ref = cri.pull("busybox").await?;
    assert_eq!(image_ref, img.id(), "PullImage returns the image ID");

    // The same record whatever name is used to ask.
    let by_name = cri.image_status("busybox").await?.expect("busybox known");
    assert_record(&by_name, &img, "docker.io/library/busybox", Some("latest"));
    assert_eq!(by_name.uid, None, "no User in the config");
    assert_eq!(by_name.username, "");
    for name in [
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
        img.id(),
        &img.digest_ref("docker.io"),
    ] {
        let rec = cri
            .image_status(name)
            .await?
            .unwrap_or_else(|| panic!("ImageStatus({name}) found nothing"));
        assert_eq!(rec.id, img.config_digest, "ImageStatus({name})");
    }

    // verbose adds info.
    let verbose = cri.image_status_full("busybox", true).await?;
    assert!(verbose.image.is_some());
    assert!(!verbose.info.is_empty(), "verbose ImageStatus returns info");
    let quiet = cri.image_status_full("busybox", false).await?;
    assert!(quiet.info.is_empty(), "info only when verbose");

    // Unknown images: OK with no image.
    assert!(cri.image_status("busybox:nope").await?.is_none());
    assert!(
        cri.image_status("docker.io/library/other:latest")
            .await?
            .is_none()
    );
    assert!(
        cri.image_status(&format!("sha256:{}", "0".repeat(64)))
            .await?
            .is_none()
    );

    // Listing and filtering.
    let all = cri.list_images().await?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_record(&all[0], &img, "docker.io/library/busybox", Some("latest"));
    assert_eq!(cri.list_images_filtered("busybox").await?.len(), 1);
    assert_eq!(
        cri.list_images_filtered("docker.io/library/busybox:latest")
            .await?
            .len(),
        1
    );
    assert!(
        cri.list_images_filtered("nothing-like-it:v9")
            .await?
            .is_empty()
    );

    // The layer is unpacked by chain ID with busybox runnable in it.
    let diff = berthd.layer_dir(&img.chain_ids[0]);
    let bb = diff.join("bin/busybox");
    let meta = std::fs::metadata(&bb).unwrap_or_else(|e| {
        panic!(
            "{} missing ({e}); layer dirs: {:?}",
            bb.display(),
            berthd.layer_dirs()
        )
    });
    assert_eq!(meta.len(), std::fs::metadata("/bin/busybox")?.len());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(diff.join("bin/sh"))?.to_str(),
        Some("busybox")
    );
    assert_eq!(
        std::fs::metadata(diff.join("tmp"))?.permissions().mode() & 0o7777,
        0o1777
    );
    assert_no_tmp_leftovers(&berthd);

    // Pulling again is fine and changes nothing.
    assert_eq!(
        cri.pull("docker.io/library/busybox:latest").await?,
        img.id()
    );
    assert_eq!(cri.list_images().await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_the_store() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "fsinfo",
    )
    .await?;
    let cri = berthd.cri().await?;
    cri.pull("busybox").await?;
    let info = cri.image_fs_info().await?;
    let fs = info
        .image_filesystems
        .first()
        .expect("one image filesystem");
    let mount = &fs.fs_id.as_ref().expect("fs_id").mountpoint;
    let root = berthd.root();
    assert!(
        std::path::Path::new(mount).starts_with(&root),
        "mountpoint {mount} lies under the root {}",
        root.display()
    );
    let used = fs.used_bytes.expect("used_bytes").value;
    assert!(used > 0, "used_bytes > 0 after a pull");
    // At least the busybox binary is stored.
    assert!(
        used >= std::fs::metadata("/bin/busybox")?.len(),
        "used_bytes {used}"
    );
    assert!(fs.inodes_used.expect("inodes_used").value > 0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    let age = now - fs.timestamp;
    assert!(
        (0..60_000_000_000).contains(&age),
        "timestamp {} is within the last minute (now {now})",
        fs.timestamp
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_and_oci_images() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let p = reg.pusher();
    let docker = fixtures::docker_schema2(&p, "e2e/docker", "v2").await?;
    let oci = fixtures::oci(&p, "e2e/oci", "v1").await?;
    let cri = berthd.cri().await?;

    assert_eq!(
        cri.pull("registry.k8s.io/e2e/docker:v2").await?,
        docker.id()
    );
    assert_eq!(cri.pull("quay.io/e2e/oci:v1").await?, oci.id());
    let d = cri
        .image_status("registry.k8s.io/e2e/docker:v2")
        .await?
        .expect("docker image");
    assert_record(&d, &docker, "registry.k8s.io/e2e/docker", Some("v2"));
    let o = cri
        .image_status("quay.io/e2e/oci:v1")
        .await?
        .expect("oci image");
    assert_record(&o, &oci, "quay.io/e2e/oci", Some("v1"));
    assert_eq!(cri.list_images().await?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_well_known_registry_name_is_mapped() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::oci(&reg.pusher(), "e2e/mapped", "v1").await?;
    let cri = berthd.cri().await?;
    for host in [
        "gcr.io",
        "k8s.gcr.io",
        "ghcr.io",
        "example.com",
        "registry.k8s.io",
        "quay.io",
        "docker.io",
    ] {
        let r = img.tag_ref(host);
        assert_eq!(cri.pull(&r).await?, img.id(), "pull {r}");
    }
    let rec = cri.image_status(img.id()).await?.expect("image");
    for host in ["gcr.io", "k8s.gcr.io", "ghcr.io", "example.com"] {
        let t = img.tag_ref(host);
        assert!(rec.repo_tags.contains(&t), "{t} in {:?}", rec.repo_tags);
    }
    assert_eq!(cri.list_images().await?.len(), 1, "one image, many names");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_image_with_whiteouts_and_opaque_dir() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::multi_layer(&reg.pusher(), "e2e/layers", "v1").await?;
    let cri = berthd.cri().await?;
    assert_eq!(cri.pull("ghcr.io/e2e/layers:v1").await?, img.id());

    let dirs = berthd.layer_dirs();
    for chain in img.chain_id_hexes() {
        assert!(
            dirs.iter().any(|(name, _)| *name == chain),
            "layer dir {chain} exists (have {dirs:?})"
        );
    }
    // Find the whiteout by scanning, then check it sits in the second layer's dir.
    let with_whiteout: Vec<_> = dirs
        .iter()
        .filter(|(_, diff)| {
            std::fs::symlink_metadata(diff.join(MULTI_LAYER_WHITEOUT))
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
        })
        .collect();
    assert_eq!(
        with_whiteout.len(),
        1,
        "exactly one layer holds {MULTI_LAYER_WHITEOUT} as a 0:0 char device: {dirs:?}"
    );
    assert_eq!(with_whiteout[0].0, img.chain_id_hexes()[1]);
    let mid = berthd.layer_dir(&img.chain_ids[1]);
    let opaque = lgetxattr(&mid.join(MULTI_LAYER_OPAQUE), "trusted.overlay.opaque");
    assert_eq!(
        opaque.as_deref(),
        Some(&b"y"[..]),
        "opaque xattr on {MULTI_LAYER_OPAQUE}"
    );
    assert_eq!(std::fs::read(mid.join(MULTI_LAYER_OPAQUE_NEW))?, b"new\n");
    // No whiteout files survive in overlay form.
    for (_, diff) in &dirs {
        let wh = find_named(diff, ".wh.");
        assert!(wh.is_empty(), "tar whiteout files left: {wh:?}");
    }
    // The bottom layer is intact: the deleted file and the opaque dir's old content are still
    // there (hidden only by the overlay).
    let bottom = berthd.layer_dir(&img.chain_ids[0]);
    assert_eq!(std::fs::read(bottom.join(MULTI_LAYER_KEPT))?, b"keep\n");
    assert_eq!(std::fs::read(bottom.join(MULTI_LAYER_WHITEOUT))?, b"gone\n");
    assert!(bottom.join("opq/old").is_file());
    assert!(lgetxattr(&bottom.join(MULTI_LAYER_OPAQUE), "trusted.overlay.opaque").is_none());
    // Owners, modes and hard links of the top layer are kept.
    let top = berthd.layer_dir(&img.chain_ids[2]);
    let owned = std::fs::symlink_metadata(top.join(MULTI_LAYER_OWNED))?;
    assert_eq!((owned.uid(), owned.gid()), (1234, 1234), "owner kept");
    assert_eq!(owned.mode() & 0o7777, 0o640, "mode kept");
    let link = std::fs::symlink_metadata(top.join(MULTI_LAYER_HARDLINK))?;
    assert_eq!(link.ino(), owned.ino(), "hard link kept as a hard link");
    assert_eq!(owned.nlink(), 2);
    assert_no_tmp_leftovers(&berthd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn user_from_the_image_config() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let p = reg.pusher();
    let numeric = fixtures::with_user(&p, "e2e/user", "numeric", "1234").await?;
    let named = fixtures::with_user(&p, "e2e/user", "named", "nobody").await?;
    let with_group = fixtures::with_user(&p, "e2e/user", "group", "1234:5678").await?;
    let cri = berthd.cri().await?;

    assert_eq!(cri.pull("e2e/user:numeric").await?, numeric.id());
    assert_eq!(cri.pull("e2e/user:named").await?, named.id());
    assert_eq!(cri.pull("e2e/user:group").await?, with_group.id());

    let r = cri
        .image_status("e2e/user:numeric")
        .await?
        .expect("numeric");
    assert_eq!(r.uid.map(|u| u.value), Some(1234));
    assert_eq!(r.username, "");
    let r = cri.image_status("e2e/user:named").await?.expect("named");
    assert_eq!(r.uid, None, "a user name sets no uid");
    assert_eq!(r.username, "nobody");
    let r = cri.image_status("e2e/user:group").await?.expect("uid:gid");
    assert_eq!(r.uid.map(|u| u.value), Some(1234), "uid of uid:gid");
    // The same in ListImages.
    let listed = cri.list_images_filtered("e2e/user:numeric").await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uid.map(|u| u.value), Some(1234));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_resolves_to_amd64() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let p = reg.pusher();
    let oci = fixtures::multi_arch(&p, "e2e/multiarch", "v1", Format::Oci).await?;
    let docker = fixtures::multi_arch(&p, "e2e/manifestlist", "v1", Format::Docker).await?;
    let cri = berthd.cri().await?;

    for (img, r) in [(&oci, "e2e/multiarch:v1"), (&docker, "e2e/manifestlist:v1")] {
        let id = cri.pull(r).await?;
        assert_eq!(id, img.id(), "{r}: the amd64 config digest is the image ID");
        assert!(
            !img.other_config_digests.contains(&id),
            "{r}: not the arm64 image"
        );
        let rec = cri.image_status(r).await?.expect("pulled");
        let name = format!("docker.io/{}", img.repository);
        // repo_digests carries the index digest (what the tag points to), as containerd does.
        assert_record(&rec, img, &name, Some("v1"));
        // The amd64 marker layer was unpacked, not the arm64 one.
        let top = berthd.layer_dir(img.chain_ids.last().expect("layers"));
        assert_eq!(std::fs::read(top.join("arch"))?, b"amd64\n");
    }
    for other in oci
        .other_config_digests
        .iter()
        .chain(&docker.other_config_digests)
    {
        assert!(
            cri.image_status(other).await?.is_none(),
            "arm64 image not stored"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_layer() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::zstd(&reg.pusher(), "e2e/zstd", "v1").await?;
    let cri = berthd.cri().await?;
    assert_eq!(cri.pull("e2e/zstd:v1").await?, img.id());
    let diff = berthd.layer_dir(&img.chain_ids[0]);
    assert_eq!(
        std::fs::metadata(diff.join("bin/busybox"))?.len(),
        std::fs::metadata("/bin/busybox")?.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_digest() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "by-digest",
    )
    .await?;
    let cri = berthd.cri().await?;
    let r = format!("busybox@{}", img.digest);
    assert_eq!(cri.pull(&r).await?, img.id());
    let rec = cri.image_status(&r).await?.expect("pulled by digest");
    assert_record(&rec, &img, "docker.io/library/busybox", None);
    assert!(
        rec.repo_tags.iter().all(|t| !t.contains('@')),
        "no digest in repo_tags: {:?}",
        rec.repo_tags
    );
    // Same image by a fully-qualified digest reference.
    let full = img.digest_ref("docker.io");
    assert_eq!(cri.pull(&full).await?, img.id());
    assert_eq!(cri.list_images().await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_tag_id_and_digest() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let p = reg.pusher();
    let two = fixtures::two_tags(&p, "e2e/two", ["one", "two"]).await?;
    let other = fixtures::oci(&p, "e2e/other", "v1").await?;
    let cri = berthd.cri().await?;

    assert_eq!(cri.pull("e2e/two:one").await?, two.id());
    assert_eq!(cri.pull("e2e/two:two").await?, two.id());
    assert_eq!(cri.pull("e2e/other:v1").await?, other.id());
    let images = cri.list_images().await?;
    assert_eq!(
        images.len(),
        2,
        "two tags of one image are one record: {images:?}"
    );
    let rec = cri.image_status("e2e/two:one").await?.expect("two");
    for t in ["docker.io/e2e/two:one", "docker.io/e2e/two:two"] {
        assert!(
            rec.repo_tags.contains(&t.to_string()),
            "{t} in {:?}",
            rec.repo_tags
        );
    }

    // Removing one tag only untags.
    cri.remove_image("e2e/two:one").await?;
    assert!(
        cri.image_status("e2e/two:one").await?.is_none(),
        "tag one removed"
    );
    let rec = cri
        .image_status("e2e/two:two")
        .await?
        .expect("still tagged two");
    assert_eq!(rec.id, two.config_digest);
    assert_eq!(rec.repo_tags, vec!["docker.io/e2e/two:two".to_string()]);
    assert!(
        berthd.layer_dir(&two.chain_ids[0]).is_dir(),
        "layers kept while tagged"
    );

    // Removing by ID removes the image.
    cri.remove_image(two.id()).await?;
    assert!(cri.image_status(two.id()).await?.is_none());
    assert!(cri.image_status("e2e/two:two").await?.is_none());
    assert_eq!(cri.list_images().await?.len(), 1);

    // Removing by digest reference removes the image too.
    cri.remove_image(&other.digest_ref("docker.io")).await?;
    assert!(cri.image_status(other.id()).await?.is_none());
    assert!(cri.list_images().await?.is_empty());

    // Removing what is not there is fine (idempotent), by every kind of name.
    cri.remove_image("e2e/two:one").await?;
    cri.remove_image(two.id()).await?;
    cri.remove_image("never/pulled:v1").await?;

    // After every image is gone, its layers go too (possibly a moment later, if berth
    // collects garbage in the background).
    poll_until(Duration::from_secs(10), "layer dirs to be removed", || {
        let left = berthd.layer_dirs();
        async move {
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!(
                    "layer dirs left after removing every image: {left:?}"
                ))
            }
        }
    })
    .await?;

    // And a removed image can be pulled again.
    assert_eq!(cri.pull("e2e/two:two").await?, two.id());
    assert!(
        berthd
            .layer_dir(&two.chain_ids[0])
            .join("bin/busybox")
            .is_file()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_download_once() -> Result<()> {
    let reg = Registry::start().await?;
    let img = fixtures::large(&reg.pusher(), "e2e/big", "v1", 3, 8, 42).await?;
    // Throttled so the two pulls surely overlap (~1.5 s per 8 MiB layer).
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: None,
            throttle_bytes_per_sec: Some(6 << 20),
        },
    )
    .await?;
    let berthd = Berthd::start(BerthdOptions::with_registry(&proxy.addr())).await?;
    let cri = berthd.cri().await?;

    let (a, b) = tokio::join!(cri.pull("e2e/big:v1"), cri.pull("docker.io/e2e/big:v1"));
    assert_eq!(a?, img.id());
    assert_eq!(b?, img.id());
    for d in &img.layer_digests {
        assert_eq!(
            proxy.blob_gets(d),
            1,
            "layer {d} fetched once: {:?}",
            proxy.counts()
        );
    }
    assert_eq!(cri.list_images().await?.len(), 1);
    for (i, chain) in img.chain_ids.iter().enumerate() {
        let f = berthd.layer_dir(chain).join(format!("payload-{i}"));
        assert_eq!(std::fs::metadata(&f)?.len(), 8 << 20, "{}", f.display());
    }
    assert_no_tmp_leftovers(&berthd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_layers_are_downloaded_and_unpacked_once() -> Result<()> {
    let reg = Registry::start().await?;
    let (a, b) = fixtures::shared_base(&reg.pusher(), "e2e/shared-a", "e2e/shared-b", "v1").await?;
    let proxy = Proxy::start(&reg.url(), ProxyOptions::default()).await?;
    let berthd = Berthd::start(BerthdOptions::with_registry(&proxy.addr())).await?;
    let cri = berthd.cri().await?;

    assert_eq!(cri.pull("e2e/shared-a:v1").await?, a.id());
    let dirs_after_a = berthd.layer_dirs().len();
    assert_eq!(dirs_after_a, 2);
    let base_ino = std::fs::metadata(berthd.layer_dir(&a.chain_ids[0]).join("bin/busybox"))?.ino();

    assert_eq!(cri.pull("e2e/shared-b:v1").await?, b.id());
    for d in &b.layer_digests {
        assert_eq!(
            proxy.blob_gets(d),
            1,
            "blob {d} fetched once across both pulls: {:?}",
            proxy.counts()
        );
    }
    let dirs = berthd.layer_dirs();
    assert_eq!(dirs.len(), 3, "shared layers unpacked once: {dirs:?}");
    let ino = std::fs::metadata(berthd.layer_dir(&b.chain_ids[0]).join("bin/busybox"))?.ino();
    assert_eq!(ino, base_ino, "the base layer was not unpacked again");

    // Removing A keeps B's (shared) layers.
    cri.remove_image("e2e/shared-a:v1").await?;
    for chain in &b.chain_ids {
        assert!(
            berthd.layer_dir(chain).is_dir(),
            "B's layer {chain} survives removal of A"
        );
    }
    assert!(cri.image_status("e2e/shared-b:v1").await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_a_restart() -> Result<()> {
    let (reg, mut berthd) = registry_and_berthd().await?;
    let p = reg.pusher();
    let img = fixtures::multi_layer(&p, "e2e/layers", "v1").await?;
    let two = fixtures::two_tags(&p, "e2e/two", ["one", "two"]).await?;
    let cri = berthd.cri().await?;
    cri.pull("e2e/layers:v1").await?;
    cri.pull("e2e/two:one").await?;
    cri.pull("e2e/two:two").await?;
    cri.remove_image("e2e/two:one").await?;
    let before = cri.list_images().await?;

    // Graceful restart.
    berthd.sigterm()?;
    berthd.wait_exit(Duration::from_secs(15)).await?;
    berthd.launch().await?;
    let cri = berthd.cri().await?;
    let mut after = cri.list_images().await?;
    let mut before_sorted = before.clone();
    before_sorted.sort_by(|a, b| a.id.cmp(&b.id));
    after.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(after, before_sorted, "same records after a restart");

    // kill -9 right after a completed pull: the pull is durable.
    cri.remove_image(img.id()).await?;
    assert_eq!(cri.pull("e2e/layers:v1").await?, img.id());
    berthd.kill9()?;
    berthd.launch().await?;
    let cri = berthd.cri().await?;
    let rec = cri
        .image_status("e2e/layers:v1")
        .await?
        .expect("image survives kill -9");
    assert_eq!(rec.id, img.config_digest);
    assert!(
        cri.image_status("e2e/two:one").await?.is_none(),
        "untag survives"
    );
    assert_eq!(
        cri.image_status("e2e/two:two").await?.map(|r| r.id),
        Some(two.config_digest.clone())
    );
    assert!(
        berthd
            .layer_dir(&img.chain_ids[2])
            .join(MULTI_LAYER_OWNED)
            .is_file()
    );
    Ok(())
}
