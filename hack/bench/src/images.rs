//! The images of the bench, built here (with the e2e harness's image builder) and pushed
//! once to the local registry:
//!
//! - the cold-pull image: at least 5 gzip layers of mixed content (pseudo-random blocks
//!   interleaved with repeated text, so gzip does real work and compresses about 2:1), each
//!   layer a few big files plus many small text files, so unpacking has metadata work too;
//! - busybox (`docker.io/library/busybox:latest`), whose `sleep` the pods run;
//! - a pause image for containerd's `sandbox_image` (`registry.k8s.io/pause:3.9`): busybox
//!   with an entrypoint that waits forever and exits 0 on SIGTERM / SIGINT. berth needs no
//!   pause image (it pins namespaces instead).

use anyhow::{Context, Result};
use e2e::image::{Compression, Format, ImageBuilder, Layer, LayerBuilder, busybox_layer};
use e2e::push::{PushedImage, Pusher};

use crate::plan::Plan;

/// The image the pods run.
pub const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";
/// containerd's sandbox image.
pub const PAUSE_REF: &str = "registry.k8s.io/pause:3.9";
/// The cold-pull image.
pub const PULL_REF: &str = "docker.io/berth-bench/pull:latest";

/// The pause process: a shell that waits for a sleeping child and exits 0 on TERM or INT
/// (pid 1 of a PID namespace gets no signal it has no handler for).
pub const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; sleep 2147483647 & wait";

/// What was pushed.
#[derive(Debug, Clone)]
pub struct BenchImages {
    /// The cold-pull image.
    pub pull: PushedImage,
    /// Its compressed size (layers and config), bytes.
    pub pull_compressed: u64,
    /// Its uncompressed layer size (tar streams), bytes.
    pub pull_uncompressed: u64,
    /// busybox.
    pub busybox: PushedImage,
    /// The pause image.
    pub pause: PushedImage,
}

/// Builds the images (layers in parallel threads) and pushes them.
pub async fn build_and_push(pusher: &Pusher, plan: &Plan) -> Result<BenchImages> {
    let busybox = ImageBuilder::new(Format::Docker)
        .label("berth-bench.image", "busybox")
        .layer(busybox_layer(Compression::GZIP)?)
        .build()?;
    let busybox = pusher
        .push_image("library/busybox", &["latest"], &busybox)
        .await
        .context("pushing busybox")?;

    let pause = ImageBuilder::new(Format::Docker)
        .label("berth-bench.image", "pause")
        .layer(busybox_layer(Compression::GZIP)?)
        .entrypoint(&["/bin/sh", "-c", PAUSE_SCRIPT])
        .cmd(&[])
        .build()?;
    let pause = pusher
        .push_image("pause", &["3.9"], &pause)
        .await
        .context("pushing the pause image")?;

    let (layers, bytes) = (plan.pull_layers, plan.pull_layer_bytes);
    let layers = tokio::task::spawn_blocking(move || build_pull_layers(layers, bytes))
        .await
        .context("layer builder task")??;
    let pull_uncompressed = layers.iter().map(|l| l.tar_size).sum();
    let mut builder = ImageBuilder::new(Format::Oci).label("berth-bench.image", "pull");
    for l in layers {
        builder = builder.layer(l);
    }
    let image = builder.build()?;
    let pull_compressed = image.blobs_size();
    let pull = pusher
        .push_image("berth-bench/pull", &["latest"], &image)
        .await
        .context("pushing the cold-pull image")?;
    Ok(BenchImages {
        pull,
        pull_compressed,
        pull_uncompressed,
        busybox,
        pause,
    })
}

/// Builds `n` layers of about `bytes` uncompressed bytes each, one thread per layer.
fn build_pull_layers(n: usize, bytes: usize) -> Result<Vec<Layer>> {
    let handles: Vec<_> = (0..n)
        .map(|i| std::thread::spawn(move || pull_layer(i, bytes)))
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("layer builder thread panicked"))?
        })
        .collect()
}

/// Size of each big file of a layer.
const BIG_FILE: usize = 4 << 20;
/// Size of each small text file.
const SMALL_FILE: usize = 2 << 10;

/// Layer `index`: `bench/layer<index>/etc/` holds small text files (1/16 of `bytes`, at
/// most 400 of them), `bench/layer<index>/data/` big files of mixed content for the rest.
fn pull_layer(index: usize, bytes: usize) -> Result<Layer> {
    let mut l = LayerBuilder::new();
    let top = format!("bench/layer{index}");
    l.dir("bench", 0o755)?
        .dir(&top, 0o755)?
        .dir(&format!("{top}/etc"), 0o755)?
        .dir(&format!("{top}/data"), 0o755)?;
    let small = (bytes / 16 / SMALL_FILE).clamp(8, 400);
    for f in 0..small {
        let text = text_block(index, f, SMALL_FILE);
        l.file(&format!("{top}/etc/conf-{f:04}.txt"), &text, 0o644)?;
    }
    let mut left = bytes.saturating_sub(small * SMALL_FILE);
    let mut f = 0;
    while left > 0 {
        let len = left.min(BIG_FILE);
        let seed = (index as u64) << 32 | f as u64;
        l.file(
            &format!("{top}/data/blob-{f:03}.bin"),
            &mixed_bytes(seed, len),
            0o644,
        )?;
        left -= len;
        f += 1;
    }
    l.finish(Compression::GZIP)
}

/// `len` bytes of text lines that differ only in their numbers (gzip shrinks them ~10x).
fn text_block(layer: usize, file: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 80);
    let mut line = 0usize;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "berth-bench layer {layer} file {file} line {line}: key_{line} = value {}\n",
                line * 7919 % 1000
            )
            .as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

/// `len` bytes alternating 8 KiB of pseudo-random bytes and 8 KiB of text: about half of
/// it compresses well, the other half not at all.
fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    const CHUNK: usize = 8 << 10;
    let random = e2e::image::pseudo_random_bytes(seed.wrapping_add(1), len / 2 + CHUNK);
    let mut out = Vec::with_capacity(len + CHUNK);
    let mut r = 0;
    let mut chunk = 0usize;
    while out.len() < len {
        if chunk.is_multiple_of(2) {
            out.extend_from_slice(&random[r..r + CHUNK]);
            r += CHUNK;
        } else {
            out.extend_from_slice(&text_block(seed as usize, chunk, CHUNK));
        }
        chunk += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_content_compresses_about_half() {
        let data = mixed_bytes(3, 1 << 20);
        assert_eq!(data.len(), 1 << 20);
        let gz = e2e::image::compress(&data, Compression::GZIP).expect("gzip");
        let ratio = gz.len() as f64 / data.len() as f64;
        assert!(
            (0.4..0.7).contains(&ratio),
            "compressed to {ratio:.2} of the input"
        );
    }

    #[test]
    fn layer_has_the_requested_size() {
        let l = pull_layer(1, 1 << 20).expect("layer");
        assert!(l.tar_size >= 1 << 20, "tar of {} bytes", l.tar_size);
        assert!(
            l.tar_size < (1 << 20) + (1 << 18),
            "tar of {} bytes",
            l.tar_size
        );
        assert!(l.size() < l.tar_size, "gzip shrinks it");
    }
}
