//! Crash safety of the image store: kill -9 of berthd at several points of a pull, then a
//! restart on the same dirs, shows no half image, keeps the images that were complete, and
//! the pull then succeeds with complete layers. SIGTERM during a pull stops berthd cleanly.

use std::time::Duration;

use anyhow::{Result, bail};
use e2e::fixtures;
use e2e::image::pseudo_random_bytes;
use e2e::util::{find_named, sha256_digest};
use e2e::{
    Berthd, BerthdOptions, Cri, Format, Proxy, ProxyOptions, PushedImage, Registry, poll_until,
};

const LAYERS: usize = 3;
const MB_EACH: usize = 20;
const SEED: u64 = 0xC0FFEE;

/// The big image: 3 layers of 20 MiB pseudo-random data (60 MiB).
async fn big_image(reg: &Registry) -> Result<PushedImage> {
    fixtures::large(&reg.pusher(), "e2e/big", "v1", LAYERS, MB_EACH, SEED).await
}

/// Checks the unpacked layers of the big image byte for byte.
fn assert_big_image_complete(berthd: &Berthd, img: &PushedImage) -> Result<()> {
    for (i, chain) in img.chain_ids.iter().enumerate() {
        let f = berthd.layer_dir(chain).join(format!("payload-{i}"));
        let data = std::fs::read(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let want = pseudo_random_bytes(SEED.wrapping_add(i as u64 * 7919), MB_EACH << 20);
        if data.len() != want.len() || sha256_digest(&data) != sha256_digest(&want) {
            bail!(
                "{} is not the layer's content ({} bytes)",
                f.display(),
                data.len()
            );
        }
    }
    Ok(())
}

/// No image record of `img` is visible.
async fn assert_no_half_image(cri: &Cri, img: &PushedImage, others: usize) -> Result<()> {
    assert!(
        cri.image_status("e2e/big:v1").await?.is_none(),
        "half-pulled image visible by tag"
    );
    assert!(
        cri.image_status(img.id()).await?.is_none(),
        "half-pulled image visible by ID"
    );
    let listed = cri.list_images().await?;
    assert_eq!(
        listed.len(),
        others,
        "only the complete images are listed: {listed:?}"
    );
    assert!(listed.iter().all(|i| i.id != img.config_digest));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_pull_leaves_no_half_image() -> Result<()> {
    let reg = Registry::start().await?;
    let small = fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "crash-small",
    )
    .await?;
    let img = big_image(&reg).await?;
    let total: u64 = img.blobs_size;
    // ~3.5 s per 20 MiB layer: slow enough to kill the pull in the middle.
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: None,
            throttle_bytes_per_sec: Some(6 << 20),
        },
    )
    .await?;
    let mut berthd = Berthd::start(BerthdOptions::with_registry(&proxy.addr())).await?;
    let cri = berthd.cri().await?;
    // A complete image before the crashes: it must survive them.
    proxy.set_throttle(None);
    assert_eq!(cri.pull("busybox").await?, small.id());
    proxy.set_throttle(Some(6 << 20));

    // Kill at several depths of the pull: early, mid-way, late.
    for fraction in [0.05, 0.5, 0.85] {
        let cri = berthd.cri().await?;
        let base = proxy.blob_bytes_served();
        let threshold = base + (total as f64 * fraction) as u64;
        let pull = {
            let cri = cri.clone();
            tokio::spawn(async move { cri.pull("e2e/big:v1").await })
        };
        poll_until(Duration::from_secs(60), "the pull to get under way", || {
            let served = proxy.blob_bytes_served();
            let done = pull.is_finished();
            async move { Ok((served >= threshold || done).then_some(())) }
        })
        .await?;
        let finished_before_kill = pull.is_finished();
        let on_disk = e2e::util::tree_size(&berthd.root());
        berthd.kill9()?;
        eprintln!(
            "kill -9 at {fraction}: {} of {total} blob bytes served, {on_disk} bytes under root",
            proxy.blob_bytes_served() - base
        );
        let outcome = pull.await?;
        berthd.launch().await?;
        let cri = berthd.cri().await?;
        if finished_before_kill && outcome.is_ok() {
            // The pull won the race: then it must be complete and durable.
            eprintln!("pull finished before the kill at {fraction}");
            assert!(cri.image_status("e2e/big:v1").await?.is_some());
            assert_big_image_complete(&berthd, &img)?;
            cri.remove_image(img.id()).await?;
        } else {
            assert!(
                outcome.is_err(),
                "a pull whose daemon was killed cannot succeed"
            );
            assert_no_half_image(&cri, &img, 1).await?;
        }
        let kept = cri
            .image_status("busybox")
            .await?
            .expect("complete image survives kill -9");
        assert_eq!(kept.id, small.config_digest);
        assert!(
            berthd
                .layer_dir(&small.chain_ids[0])
                .join("bin/busybox")
                .is_file()
        );
    }

    // After the crashes, the pull succeeds and the image is complete.
    proxy.set_throttle(None);
    let cri = berthd.cri().await?;
    assert_eq!(cri.pull("e2e/big:v1").await?, img.id());
    let rec = cri.image_status("e2e/big:v1").await?.expect("pulled");
    assert_eq!(rec.id, img.config_digest);
    assert!(
        rec.size >= (LAYERS * (MB_EACH << 20)) as u64 / 2,
        "size {}",
        rec.size
    );
    assert_big_image_complete(&berthd, &img)?;
    assert_eq!(cri.list_images().await?.len(), 2);
    let leftovers: Vec<_> = find_named(&berthd.root(), "tmp")
        .into_iter()
        .filter(|p| !berthd.layer_dirs().iter().any(|(_, d)| p.starts_with(d)))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left after a successful pull: {leftovers:?}"
    );

    // And the result survives one more kill -9.
    berthd.kill9()?;
    berthd.launch().await?;
    let cri = berthd.cri().await?;
    assert_eq!(
        cri.image_status("e2e/big:v1").await?.map(|i| i.id),
        Some(img.config_digest.clone())
    );
    assert_big_image_complete(&berthd, &img)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_pull_stops_cleanly() -> Result<()> {
    let reg = Registry::start().await?;
    let img = big_image(&reg).await?;
    // Slow: ~10 s per layer, longer than any reasonable shutdown grace period.
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: None,
            throttle_bytes_per_sec: Some(2 << 20),
        },
    )
    .await?;
    let mut berthd = Berthd::start(BerthdOptions::with_registry(&proxy.addr())).await?;
    let cri = berthd.cri().await?;
    let pull = {
        let cri = cri.clone();
        tokio::spawn(async move { cri.pull("e2e/big:v1").await })
    };
    poll_until(Duration::from_secs(60), "the pull to get under way", || {
        let served = proxy.blob_bytes_served();
        async move { Ok((served >= 2 << 20).then_some(())) }
    })
    .await?;
    berthd.sigterm()?;
    let status = berthd.wait_exit(Duration::from_secs(20)).await?;
    assert!(
        status.success(),
        "exit status after SIGTERM during a pull: {status}"
    );
    assert!(!berthd.socket().exists(), "socket removed");
    let outcome = pull.await?;

    proxy.set_throttle(None);
    berthd.launch().await?;
    let cri = berthd.cri().await?;
    match outcome {
        Ok(id) => {
            assert_eq!(id, img.id());
            assert!(
                cri.image_status("e2e/big:v1").await?.is_some(),
                "a finished pull is kept"
            );
        }
        Err(_) => assert_no_half_image(&cri, &img, 0).await?,
    }
    assert_eq!(cri.pull("e2e/big:v1").await?, img.id());
    assert_big_image_complete(&berthd, &img)?;
    // Nothing of the interrupted pull is left beside the layers.
    assert_eq!(
        berthd.layer_dirs().len(),
        LAYERS,
        "{:?}",
        berthd.layer_dirs()
    );
    Ok(())
}
