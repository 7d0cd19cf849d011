//! The test images of the e2e suite, built from the host's static busybox and pushed to a
//! registry. Every fixture carries a distinct `e2e.fixture` label, so no two fixtures share
//! an image ID by accident.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::image::{
    Compression, Format, ImageBuilder, ImageIndex, Layer, LayerBuilder, Platform, busybox_layer,
    pseudo_random_bytes,
};
use crate::push::{PushedImage, Pusher};

/// Where the multi-layer fixture's second layer (index 1) deletes a lower file with a
/// `.wh.` entry: berth must leave a 0:0 character device here in that layer's directory.
pub const MULTI_LAYER_WHITEOUT: &str = "data/gone";
/// The directory the multi-layer fixture's second layer (index 1) makes opaque: berth must
/// set `trusted.overlay.opaque=y` on it in that layer's directory.
pub const MULTI_LAYER_OPAQUE: &str = "opq";
/// A file of the opaque directory that only the second layer adds.
pub const MULTI_LAYER_OPAQUE_NEW: &str = "opq/new";
/// Files of the bottom layer that stay visible.
pub const MULTI_LAYER_KEPT: &str = "data/keep";
/// A file of the top layer (index 2) owned by 1234:1234 with mode 0640.
pub const MULTI_LAYER_OWNED: &str = "home/e2e/owned";
/// A hard link to [`MULTI_LAYER_OWNED`] in the same (top) layer.
pub const MULTI_LAYER_HARDLINK: &str = "home/e2e/owned-link";

fn base(format: Format, fixture: &str) -> ImageBuilder {
    ImageBuilder::new(format).label("e2e.fixture", fixture)
}

/// A one-layer busybox image (gzip) with a fixture label.
pub async fn busybox(
    p: &Pusher,
    repo: &str,
    tags: &[&str],
    format: Format,
    fixture: &str,
) -> Result<PushedImage> {
    let img = base(format, fixture)
        .layer(busybox_layer(Compression::GZIP)?)
        .build()?;
    p.push_image(repo, tags, &img).await
}

/// Docker v2 schema 2 media types, one busybox layer.
pub async fn docker_schema2(p: &Pusher, repo: &str, tag: &str) -> Result<PushedImage> {
    busybox(p, repo, &[tag], Format::Docker, "docker-schema2").await
}

/// OCI media types, one busybox layer.
pub async fn oci(p: &Pusher, repo: &str, tag: &str) -> Result<PushedImage> {
    busybox(p, repo, &[tag], Format::Oci, "oci").await
}

/// The same image under two tags.
pub async fn two_tags(p: &Pusher, repo: &str, tags: [&str; 2]) -> Result<PushedImage> {
    busybox(p, repo, &tags, Format::Oci, "two-tags").await
}

/// Three layers: busybox + files; then a whiteout of [`MULTI_LAYER_WHITEOUT`] and an opaque
/// [`MULTI_LAYER_OPAQUE`]; then an owned file with a hard link. All gzip, OCI.
pub async fn multi_layer(p: &Pusher, repo: &str, tag: &str) -> Result<PushedImage> {
    let mut l0 = LayerBuilder::new();
    l0.busybox()?
        .dir("data", 0o755)?
        .file("data/keep", b"keep\n", 0o644)?
        .file("data/gone", b"gone\n", 0o644)?
        .dir("opq", 0o755)?
        .file("opq/old", b"old\n", 0o644)?
        .dir("opq/sub", 0o755)?
        .file("opq/sub/deep", b"deep\n", 0o644)?;
    let mut l1 = LayerBuilder::new();
    l1.dir("data", 0o755)?
        .whiteout("data", "gone")?
        .dir("opq", 0o755)?
        .opaque("opq")?
        .file("opq/new", b"new\n", 0o644)?;
    let mut l2 = LayerBuilder::new();
    l2.dir("etc", 0o755)?
        .file("etc/motd", b"berth e2e multi-layer\n", 0o644)?
        .dir("home", 0o755)?
        .dir("home/e2e", 0o755)?
        .file_owned("home/e2e/owned", b"owned by 1234\n", 0o640, 1234, 1234)?
        .hardlink_owned("home/e2e/owned-link", "home/e2e/owned", 0o640, 1234, 1234)?;
    let img = base(Format::Oci, "multi-layer")
        .layer(l0.finish(Compression::GZIP)?)
        .layer(l1.finish(Compression::GZIP)?)
        .layer(l2.finish(Compression::GZIP)?)
        .working_dir("/data")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["cat /etc/motd"])
        .stop_signal("SIGINT")
        .build()?;
    p.push_image(repo, &[tag], &img).await
}

/// A busybox image whose config has `User` = `user` (e.g. `1234`, `nobody`, `1234:5678`).
pub async fn with_user(p: &Pusher, repo: &str, tag: &str, user: &str) -> Result<PushedImage> {
    let img = base(Format::Oci, &format!("user-{user}"))
        .layer(busybox_layer(Compression::GZIP)?)
        .user(user)
        .build()?;
    p.push_image(repo, &[tag], &img).await
}

/// A multi-arch image (OCI index or Docker manifest list) with linux/amd64 and
/// linux/arm64/v8 entries whose configs and top layers differ. The result describes the amd64
/// image; `digest` is the index digest, `other_config_digests` holds the arm64 config.
pub async fn multi_arch(p: &Pusher, repo: &str, tag: &str, format: Format) -> Result<PushedImage> {
    let bb = busybox_layer(Compression::GZIP)?;
    let mut images = Vec::new();
    for platform in [Platform::amd64(), Platform::arm64()] {
        let mut marker = LayerBuilder::new();
        marker.file(
            "arch",
            format!("{}\n", platform.architecture).as_bytes(),
            0o644,
        )?;
        images.push(
            base(format, &format!("multi-arch-{format:?}"))
                .platform(platform.clone())
                .label("e2e.arch", &platform.architecture)
                .layer(bb.clone())
                .layer(marker.finish(Compression::GZIP)?)
                .build()?,
        );
    }
    let index = ImageIndex::build(format, images)?;
    p.push_index(repo, &[tag], &index).await
}

/// A busybox image whose layer is zstd-compressed
/// (`application/vnd.oci.image.layer.v1.tar+zstd`).
pub async fn zstd(p: &Pusher, repo: &str, tag: &str) -> Result<PushedImage> {
    let img = base(Format::Oci, "zstd")
        .layer(busybox_layer(Compression::Zstd)?)
        .build()?;
    p.push_image(repo, &[tag], &img).await
}

/// An image with one uncompressed layer holding a single file (`payload`, 8 KiB of `A`),
/// on top of busybox. Corrupting the payload layer at [`CORRUPTIBLE_OFFSET`] keeps the tar
/// valid, so only digest verification can catch it. Returns the image and the payload
/// layer's digest.
pub async fn corruptible(p: &Pusher, repo: &str, tag: &str) -> Result<(PushedImage, String)> {
    let mut l = LayerBuilder::new();
    l.file("payload", &[b'A'; 8192], 0o644)?;
    let payload = l.finish(Compression::None)?;
    let digest = payload.digest.clone();
    let img = base(Format::Oci, "corruptible")
        .layer(busybox_layer(Compression::GZIP)?)
        .layer(payload)
        .build()?;
    Ok((p.push_image(repo, &[tag], &img).await?, digest))
}

/// Offset inside the corruptible payload layer that falls in the file data (after the
/// 512-byte tar header).
pub const CORRUPTIBLE_OFFSET: usize = 512 + 100;

/// A big image of `layers` layers, each one file `payload-<i>` of `mb_each` MiB of
/// pseudo-random bytes (gzip level 1, so compressed ≈ uncompressed).
pub async fn large(
    p: &Pusher,
    repo: &str,
    tag: &str,
    layers: usize,
    mb_each: usize,
    seed: u64,
) -> Result<PushedImage> {
    let layers = build_random_layers(layers, mb_each << 20, seed)?;
    let mut b = base(Format::Oci, &format!("large-{seed}"));
    for l in layers {
        b = b.layer(l);
    }
    p.push_image(repo, &[tag], &b.build()?).await
}

/// Builds `n` random layers in parallel threads (each a file `payload-<i>` of `bytes`).
pub fn build_random_layers(n: usize, bytes: usize, seed: u64) -> Result<Vec<Layer>> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || -> Result<Layer> {
                let data = pseudo_random_bytes(seed.wrapping_add(i as u64 * 7919), bytes);
                let mut l = LayerBuilder::new();
                l.file(&format!("payload-{i}"), &data, 0o644)?;
                l.finish(Compression::Gzip(1))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("layer thread panicked"))?
        })
        .collect()
}

/// Two images sharing their two bottom layers: A = [busybox, mid], B = [busybox, mid, top].
pub async fn shared_base(
    p: &Pusher,
    repo_a: &str,
    repo_b: &str,
    tag: &str,
) -> Result<(PushedImage, PushedImage)> {
    let bb = busybox_layer(Compression::GZIP)?;
    let mut mid = LayerBuilder::new();
    mid.file("mid", &pseudo_random_bytes(11, 1 << 20), 0o644)?;
    let mid = mid.finish(Compression::GZIP)?;
    let mut top = LayerBuilder::new();
    top.file("top", &pseudo_random_bytes(12, 1 << 20), 0o644)?;
    let top = top.finish(Compression::GZIP)?;
    let a = base(Format::Oci, "shared-a")
        .layer(bb.clone())
        .layer(mid.clone())
        .build()?;
    let b = base(Format::Oci, "shared-b")
        .layer(bb)
        .layer(mid)
        .layer(top)
        .build()?;
    Ok((
        p.push_image(repo_a, &[tag], &a).await?,
        p.push_image(repo_b, &[tag], &b).await?,
    ))
}

/// A directory outside berth's dirs that malicious layers try to write into. It holds one
/// file, `sentinel`, whose content, inode and link count must never change.
pub struct HostSentinel {
    dir: tempfile::TempDir,
    ino: u64,
}

/// Content of the sentinel file.
pub const SENTINEL_CONTENT: &[u8] = b"original sentinel content\n";

impl HostSentinel {
    /// Creates the directory (under /tmp, the same filesystem as the tests' berth root, so
    /// a hard link to the sentinel would be possible and would show in its link count).
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-host-")
            .tempdir()?;
        let sentinel = dir.path().join("sentinel");
        std::fs::write(&sentinel, SENTINEL_CONTENT)?;
        let ino = std::fs::metadata(&sentinel)?.ino();
        Ok(HostSentinel { dir, ino })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sentinel file.
    pub fn sentinel(&self) -> PathBuf {
        self.dir.path().join("sentinel")
    }

    /// Checks that the directory still holds exactly the untouched sentinel; lists every
    /// violation otherwise.
    pub fn check(&self) -> Result<()> {
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(self.dir())? {
            let entry = entry?;
            if entry.file_name() != "sentinel" {
                problems.push(format!("unexpected host file {}", entry.path().display()));
            }
        }
        let s = self.sentinel();
        match std::fs::symlink_metadata(&s) {
            Err(e) => problems.push(format!("sentinel gone: {e}")),
            Ok(m) => {
                if !m.is_file() {
                    problems.push("sentinel is no longer a regular file".into());
                }
                if m.ino() != self.ino {
                    problems.push("sentinel was replaced (inode changed)".into());
                }
                if m.nlink() != 1 {
                    problems.push(format!(
                        "sentinel has {} links: something hard-linked it",
                        m.nlink()
                    ));
                }
                match std::fs::read(&s) {
                    Ok(c) if c == SENTINEL_CONTENT => {}
                    Ok(c) => problems.push(format!(
                        "sentinel content changed to {:?}",
                        String::from_utf8_lossy(&c)
                    )),
                    Err(e) => problems.push(format!("cannot read sentinel: {e}")),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("host filesystem changed:\n  {}", problems.join("\n  "))
        }
    }
}

/// One malicious-layer image.
#[derive(Debug, Clone)]
pub struct MaliciousCase {
    /// Short name of the attack (also the repository suffix).
    pub name: &'static str,
    /// What was pushed.
    pub image: PushedImage,
}

/// File names malicious layers try to create outside the layer directory; a test can
/// search berth's own dirs for them (they must only appear inside a layer's `diff`).
pub const ESCAPE_NAMES: &[&str] = &["escape-dotdot", "abs-escape", "pwned"];

fn up(n: usize) -> String {
    "../".repeat(n)
}

/// Pushes one image per attack to `<repo_prefix>-<name>:latest`, each on top of a busybox
/// layer. Attacks target `host.dir()`; every one of them must leave it unchanged.
pub async fn malicious(
    p: &Pusher,
    repo_prefix: &str,
    host: &HostSentinel,
) -> Result<Vec<MaliciousCase>> {
    let h = host.dir().to_str().expect("utf-8 temp path").to_string();
    let h_rel = h.trim_start_matches('/').to_string();
    let bb = busybox_layer(Compression::GZIP)?;
    let mut cases: Vec<(&'static str, Vec<Layer>)> = Vec::new();

    // `..` entries: a short one (lands in berth's own dirs if followed) and one that climbs
    // to / and then down into the host dir.
    let mut l = LayerBuilder::new();
    l.raw_file("../../escape-dotdot", b"pwned\n")?
        .raw_file(&format!("{}{h_rel}/dotdot-pwned", up(12)), b"pwned\n")?
        .raw_file("ok/../../escape-dotdot-mid", b"pwned\n")?;
    cases.push(("dotdot", vec![l.finish(Compression::GZIP)?]));

    // Absolute paths.
    let mut l = LayerBuilder::new();
    l.raw_file(&format!("{h}/abs-pwned"), b"pwned\n")?
        .raw_file("/abs-escape", b"pwned\n")?;
    cases.push(("absolute", vec![l.finish(Compression::GZIP)?]));

    // Absolute symlink to the host dir, then a file written through it.
    let mut l = LayerBuilder::new();
    l.symlink("evil", &h)?
        .file("evil/pwned", b"pwned\n", 0o644)?;
    cases.push(("symlink-abs", vec![l.finish(Compression::GZIP)?]));

    // Relative symlink climbing out, then a file and a directory written through it.
    let mut l = LayerBuilder::new();
    l.symlink("rel", &format!("{}{h_rel}", up(12)))?
        .file("rel/rel-pwned", b"pwned\n", 0o644)?
        .raw_dir("rel/rel-pwned-dir")?;
    cases.push(("symlink-rel", vec![l.finish(Compression::GZIP)?]));

    // A chain of symlinks (a -> b -> host dir), then a write through the first.
    let mut l = LayerBuilder::new();
    l.symlink("b", &h)?
        .symlink("a", "b")?
        .file("a/chained-pwned", b"pwned\n", 0o644)?;
    cases.push(("symlink-chain", vec![l.finish(Compression::GZIP)?]));

    // A symlink to the sentinel, then a regular file at the symlink's path: the file must
    // replace the link, not write through it.
    let mut l = LayerBuilder::new();
    l.symlink("to-sentinel", &format!("{h}/sentinel"))?
        .file("to-sentinel", b"pwned\n", 0o644)?;
    cases.push(("symlink-overwrite", vec![l.finish(Compression::GZIP)?]));

    // Hard links to the host sentinel (relative-escaping and absolute), then regular files
    // at the links' paths.
    let mut l = LayerBuilder::new();
    l.raw_link(
        tar::EntryType::Link,
        "hl",
        &format!("{}{h_rel}/sentinel", up(12)),
    )?
    .file("hl", b"pwned\n", 0o644)?
    .raw_link(tar::EntryType::Link, "hl-abs", &format!("{h}/sentinel"))?
    .file("hl-abs", b"pwned\n", 0o644)?;
    cases.push(("hardlink", vec![l.finish(Compression::GZIP)?]));

    // A symlink in one layer and a write through it in the next.
    let mut lower = LayerBuilder::new();
    lower.symlink("lower-evil", &h)?;
    let mut upper = LayerBuilder::new();
    upper.file("lower-evil/cross-pwned", b"pwned\n", 0o644)?;
    cases.push((
        "cross-layer-symlink",
        vec![
            lower.finish(Compression::GZIP)?,
            upper.finish(Compression::GZIP)?,
        ],
    ));

    let mut out = Vec::new();
    for (name, layers) in cases {
        let mut b = base(Format::Oci, &format!("malicious-{name}")).layer(bb.clone());
        for l in layers {
            b = b.layer(l);
        }
        let repo = format!("{repo_prefix}-{name}");
        let image = p.push_image(&repo, &["latest"], &b.build()?).await?;
        out.push(MaliciousCase { name, image });
    }
    Ok(out)
}
