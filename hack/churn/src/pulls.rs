//! Pulls under fault: a puller that pulls and removes images of its own while berthd is
//! being killed (so kills land in the middle of downloads, unpacks and removals), and the
//! image store's check at the end: once those images are removed, the store holds exactly
//! what it held before the churn (no layer, blob or unpack temp of theirs is left).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use e2e::fixtures;
use e2e::pods::PodEnv;

use crate::Env;

/// Images the puller cycles through.
const IMAGES: u64 = 3;
/// Layers per image, and MiB per layer: big enough that a pull takes a while to unpack.
const LAYERS: usize = 2;
const MB_EACH: usize = 2;

/// What the puller saw.
#[derive(Default)]
pub struct PullTally {
    /// Pulls that completed.
    pub pulled: AtomicUsize,
    /// Pulls that failed (mostly: berthd was killed during them).
    pub failed: AtomicUsize,
    /// Image removals that completed.
    pub removed: AtomicUsize,
}

/// The image store's content: names in `layers/` and `blobs/sha256/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSnapshot {
    layers: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

impl StoreSnapshot {
    /// The store under berthd's `root` now.
    pub fn take(root: &Path) -> StoreSnapshot {
        StoreSnapshot {
            layers: names(&root.join("layers")),
            blobs: names(&root.join("blobs/sha256")),
        }
    }

    /// What `self` (after) holds beyond `before`, one line each.
    pub fn beyond(&self, before: &StoreSnapshot) -> Vec<String> {
        let extra = |now: &BTreeSet<String>, then: &BTreeSet<String>, what: &str| {
            now.difference(then)
                .map(|n| format!("{what} {n} of a removed image (or a temp) in the image store"))
                .collect::<Vec<_>>()
        };
        let mut out = extra(&self.layers, &before.layers, "layer");
        out.extend(extra(&self.blobs, &before.blobs, "blob"));
        out
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pushes the puller's images to the env's registry; returns their references.
pub async fn prepare(env: &PodEnv) -> Result<Vec<String>> {
    let pusher = env.pusher();
    let mut refs = Vec::new();
    for k in 0..IMAGES {
        let repo = format!("churn/pull-{k}");
        fixtures::large(&pusher, &repo, "v1", LAYERS, MB_EACH, 0xC4u64 + k).await?;
        refs.push(format!("{repo}:v1"));
    }
    Ok(refs)
}

/// Pulls and removes `refs` in turn until `stop` is notified.
pub async fn run(
    env: Env,
    refs: Vec<String>,
    tally: Arc<PullTally>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut i = 0usize;
    let work = async {
        loop {
            let image = &refs[i % refs.len()];
            i += 1;
            let pulled = env.read().await.cri.pull(image).await;
            match pulled {
                Ok(_) => {
                    tally.pulled.fetch_add(1, Ordering::SeqCst);
                    if env.read().await.cri.remove_image(image).await.is_ok() {
                        tally.removed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    // berthd is down or restarting: as kubelet, retry a moment later.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = stop.notified() => {}
    }
}

/// Removes the puller's images (as kubelet's image GC would); returns what could not be.
pub async fn remove_all(env: &PodEnv, refs: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for image in refs {
        if let Err(e) = env.cri.remove_image(image).await {
            out.push(format!("RemoveImage {image}: {}", e.message()));
        }
    }
    out
}
