//! The on-disk image store under the root directory:
//!
//! ```text
//! <root>/images.json              every image record; replaced atomically on each change
//! <root>/blobs/sha256/<hex>       manifests, indexes and configs as pulled
//! <root>/layers/<chain hex>/diff  an unpacked layer (an overlayfs lower dir)
//! <root>/layers/<chain hex>/layer.json
//! <root>/layers/.tmp-*            layers being unpacked; removed on start
//! ```
//!
//! Crash safety comes from ordering: a layer directory appears by rename only when it is
//! complete, blobs are written atomically, and an image becomes visible only when
//! images.json is replaced after all of its layers and blobs exist. Layers and blobs that
//! no image references (left by a crash mid-pull or mid-remove) are collected on open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::digest;
use super::reference::{self, Reference};
use super::spec::ImageConfig;
use crate::fsutil;
use crate::{Error, Result};

/// What berth knows about one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest hex>`.
    pub id: String,
    /// Normalized `name:tag` references pointing at the image.
    pub repo_tags: Vec<String>,
    /// Normalized `name@digest` references of the pulled manifest or index.
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(default)]
    pub index_digest: Option<String>,
    /// Chain IDs of the layers, bottom first.
    pub chain_ids: Vec<String>,
    /// Size as the registry stores it: config plus compressed layers.
    pub size: u64,
    /// The image config.
    pub config: ImageConfig,
    /// When the image was last pulled, Unix nanoseconds.
    pub pulled_at_ns: i64,
}

/// What berth records about one unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Chain ID (the directory name).
    pub chain_id: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Digest of the blob it was pulled as.
    pub blob_digest: String,
    /// Disk bytes used by the unpacked files.
    pub disk_bytes: u64,
    /// Inodes used by the unpacked files.
    pub inodes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: BTreeMap<String, ImageRecord>,
}

struct State {
    images: BTreeMap<String, ImageRecord>,
    layers: HashMap<String, LayerRecord>,
    /// Chain IDs in use by pulls in progress; never collected.
    leases: HashMap<String, usize>,
}

/// How a lookup string matched an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// By image ID or an unambiguous ID prefix.
    Id,
    /// By a `name:tag` reference (the normalized string).
    Tag(String),
    /// By a `name@digest` reference.
    Digest(String),
}

/// Disk usage of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes used.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// The image store.
pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
}

const INDEX_FILE: &str = "images.json";
const LAYER_META: &str = "layer.json";

impl Store {
    /// Opens (creating if needed) the store under `root`, removing leftovers of crashes.
    pub fn open(root: &Path) -> Result<Store> {
        for d in [
            root.to_path_buf(),
            root.join("blobs/sha256"),
            root.join("layers"),
        ] {
            fsutil::create_private_dir(&d)?;
        }
        let images = load_index(&root.join(INDEX_FILE))?;
        let store = Store {
            root: root.to_path_buf(),
            state: Mutex::new(State {
                images,
                layers: HashMap::new(),
                leases: HashMap::new(),
            }),
        };
        store.clean_staging()?;
        let layers = store.scan_layers()?;
        {
            let mut st = store.lock();
            st.layers = layers;
        }
        store.collect_garbage()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing all further work, so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the layer with this chain ID (`<root>/layers/<hex>`).
    pub fn layer_dir(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers").join(digest::sha256_hex(chain_id)?))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(digest::sha256_hex(digest)?))
    }

    fn clean_staging(&self) -> Result<()> {
        for dir in [
            self.root.join("layers"),
            self.root.join("blobs/sha256"),
            self.root.clone(),
        ] {
            let entries = fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    fsutil::remove_all(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    fn scan_layers(&self) -> Result<HashMap<String, LayerRecord>> {
        let dir = self.root.join("layers");
        let mut out = HashMap::new();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = fs::read(path.join(LAYER_META))
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok());
            match meta {
                Some(rec)
                    if digest::sha256_hex(&rec.chain_id).ok()
                        == Some(&*entry.file_name().to_string_lossy()) =>
                {
                    out.insert(rec.chain_id.clone(), rec);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing layer directory without valid metadata");
                    fsutil::remove_all(&path)?;
                }
            }
        }
        Ok(out)
    }

    /// Marks chain IDs as in use by a pull so garbage collection keeps them; the lease
    /// ends when the returned guard drops.
    pub fn lease(&self, chain_ids: &[String]) -> Lease<'_> {
        let mut st = self.lock();
        for c in chain_ids {
            *st.leases.entry(c.clone()).or_default() += 1;
        }
        Lease {
            store: self,
            chain_ids: chain_ids.to_vec(),
        }
    }

    /// True when the layer is unpacked.
    pub fn has_layer(&self, chain_id: &str) -> bool {
        self.lock().layers.contains_key(chain_id)
    }

    /// Creates a fresh staging directory for unpacking a layer; its `diff` subdirectory is
    /// where the tar goes.
    pub fn stage_layer(&self, chain_id: &str) -> Result<PathBuf> {
        let hex = digest::sha256_hex(chain_id)?;
        let dir = self
            .root
            .join("layers")
            .join(format!(".tmp-{}-{}", &hex[..12], unique_suffix()));
        fs::create_dir(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let diff = dir.join("diff");
        fs::create_dir(&diff).map_err(|e| Error::io("create", &diff, e))?;
        Ok(dir)
    }

    /// Moves a fully unpacked staging directory into place.
    pub fn commit_layer(&self, staging: &Path, rec: LayerRecord) -> Result<()> {
        let meta = serde_json::to_vec(&rec).map_err(|e| Error::Internal(e.to_string()))?;
        fsutil::write_atomic(&staging.join(LAYER_META), &meta)?;
        let target = self.layer_dir(&rec.chain_id)?;
        let mut st = self.lock();
        if st.layers.contains_key(&rec.chain_id) {
            drop(st);
            return fsutil::remove_all(staging);
        }
        fs::rename(staging, &target).map_err(|e| Error::io("rename into", &target, e))?;
        st.layers.insert(rec.chain_id.clone(), rec);
        Ok(())
    }

    /// Stores a blob under its digest, verifying it.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let path = self.blob_path(digest)?;
        if digest::sha256_of(data) != digest {
            return Err(Error::DataLoss(format!(
                "blob {digest}: content does not match"
            )));
        }
        if path.exists() {
            return Ok(());
        }
        fsutil::write_atomic(&path, data)
    }

    /// Removes those of `digests` that no image references and no pull leases: the blobs
    /// a failed pull wrote. Failures are logged, not returned (collection on the next
    /// open removes what is left).
    pub fn discard_blobs(&self, digests: &[String]) {
        // The lock is held while removing so that no pull can lease and write a blob
        // between the check and the removal.
        let st = self.lock();
        for d in digests {
            let used = st.leases.contains_key(d)
                || st.images.values().any(|i| {
                    &i.id == d || &i.manifest_digest == d || i.index_digest.as_ref() == Some(d)
                });
            if used {
                continue;
            }
            let Ok(path) = self.blob_path(d) else {
                continue;
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the blob of a failed pull")
                }
            }
        }
    }

    /// Reads a stored blob.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(|e| Error::io("read", &path, e))
    }

    /// Records a pulled image: inserts it or merges names into the existing record. `tag`
    /// (a normalized `name:tag`) moves to this image from any other image that had it.
    pub fn commit_image(
        &self,
        mut record: ImageRecord,
        tag: Option<String>,
        repo_digest: String,
    ) -> Result<ImageRecord> {
        for c in &record.chain_ids {
            if !self.has_layer(c) {
                return Err(Error::Internal(format!(
                    "image {}: layer {c} missing at commit",
                    record.id
                )));
            }
        }
        let mut st = self.lock();
        let mut images = st.images.clone();
        if let Some(t) = &tag {
            for img in images.values_mut() {
                img.repo_tags.retain(|x| x != t);
            }
        }
        let merged = match images.get(&record.id) {
            Some(old) => {
                let mut m = old.clone();
                m.pulled_at_ns = record.pulled_at_ns;
                m
            }
            None => {
                record.repo_tags.clear();
                record.repo_digests.clear();
                record
            }
        };
        let mut merged = merged;
        if let Some(t) = tag
            && !merged.repo_tags.contains(&t)
        {
            merged.repo_tags.push(t);
        }
        if !merged.repo_digests.contains(&repo_digest) {
            merged.repo_digests.push(repo_digest);
        }
        images.insert(merged.id.clone(), merged.clone());
        self.persist(&images)?;
        st.images = images;
        Ok(merged)
    }

    fn persist(&self, images: &BTreeMap<String, ImageRecord>) -> Result<()> {
        let file = IndexFile {
            version: 1,
            images: images.clone(),
        };
        let data = serde_json::to_vec(&file).map_err(|e| Error::Internal(e.to_string()))?;
        fsutil::write_atomic(&self.root.join(INDEX_FILE), &data)
    }

    /// All images.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.lock().images.values().cloned().collect()
    }

    /// The layer records of an image, bottom first.
    pub fn layers_of(&self, image: &ImageRecord) -> Vec<LayerRecord> {
        let st = self.lock();
        image
            .chain_ids
            .iter()
            .filter_map(|c| st.layers.get(c).cloned())
            .collect()
    }

    /// Finds the image a CRI image spec names: an image ID (`sha256:<hex>` or `<hex>`), a
    /// reference by tag or digest (normalized), or an unambiguous ID prefix.
    pub fn resolve(&self, spec: &str) -> Result<Option<(ImageRecord, Match)>> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::InvalidArgument(
                "image reference is empty".to_string(),
            ));
        }
        let st = self.lock();
        if reference::is_image_id(spec) {
            let id = if spec.starts_with("sha256:") {
                spec.to_string()
            } else {
                format!("sha256:{spec}")
            };
            return Ok(st.images.get(&id).cloned().map(|r| (r, Match::Id)));
        }
        let parsed = Reference::parse_normalized(spec);
        if let Ok(r) = &parsed {
            if let Some(d) = r.digest() {
                let want = format!("{}@{d}", r.name());
                if let Some(img) = st.images.values().find(|i| i.repo_digests.contains(&want)) {
                    return Ok(Some((img.clone(), Match::Digest(want))));
                }
            } else if let Some(t) = r.tagged_string()
                && let Some(img) = st.images.values().find(|i| i.repo_tags.contains(&t))
            {
                return Ok(Some((img.clone(), Match::Tag(t))));
            }
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hex.len() >= 3 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let mut hits = st
                .images
                .values()
                .filter(|i| i.id["sha256:".len()..].starts_with(hex));
            if let (Some(one), None) = (hits.next(), hits.next()) {
                return Ok(Some((one.clone(), Match::Id)));
            }
        }
        match parsed {
            Ok(_) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes what `spec` names: one tag when the image has others, else the whole image
    /// and every layer and blob no other image uses. Absent images are not an error.
    pub fn remove(&self, spec: &str, in_use: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        let Some((img, how)) = self.resolve(spec)? else {
            return Ok(());
        };
        let untag_only = matches!(&how, Match::Tag(_) if img.repo_tags.len() > 1);
        if !untag_only && let Some(c) = in_use(&img.id) {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use by container {c}",
                img.id
            )));
        }
        {
            let mut st = self.lock();
            let mut images = st.images.clone();
            match &how {
                Match::Tag(t) if img.repo_tags.len() > 1 => {
                    if let Some(rec) = images.get_mut(&img.id) {
                        rec.repo_tags.retain(|x| x != t);
                    }
                }
                _ => {
                    images.remove(&img.id);
                }
            }
            self.persist(&images)?;
            st.images = images;
        }
        self.collect_garbage()
    }

    /// Removes layers and blobs no image references and no pull holds.
    pub fn collect_garbage(&self) -> Result<()> {
        let (dead_layers, live_blobs) = {
            let mut st = self.lock();
            let mut live: HashSet<&String> = st.leases.keys().collect();
            // Leases hold the blobs of pulls in progress too.
            let mut blobs: HashSet<String> = st.leases.keys().cloned().collect();
            for img in st.images.values() {
                live.extend(img.chain_ids.iter());
                blobs.insert(img.id.clone());
                blobs.insert(img.manifest_digest.clone());
                if let Some(i) = &img.index_digest {
                    blobs.insert(i.clone());
                }
            }
            let dead: Vec<String> = st
                .layers
                .keys()
                .filter(|c| !live.contains(c))
                .cloned()
                .collect();
            for c in &dead {
                st.layers.remove(c);
            }
            (dead, blobs)
        };
        for chain in dead_layers {
            let dir = self.layer_dir(&chain)?;
            // Rename first so a crash mid-delete leaves a staging name, cleaned on open,
            // never a layer directory with missing files.
            let doomed = self
                .root
                .join("layers")
                .join(format!(".tmp-del-{}", unique_suffix()));
            match fs::rename(&dir, &doomed) {
                Ok(()) => fsutil::remove_all(&doomed)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("rename", &dir, e)),
            }
        }
        let blob_dir = self.root.join("blobs/sha256");
        let entries = fs::read_dir(&blob_dir).map_err(|e| Error::io("read", &blob_dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !live_blobs.contains(&format!("sha256:{name}")) {
                fsutil::remove_all(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Bytes and inodes used by stored layers, blobs and metadata.
    pub fn usage(&self) -> Usage {
        use std::os::unix::fs::MetadataExt;
        let mut u = Usage::default();
        for l in self.lock().layers.values() {
            u.bytes += l.disk_bytes;
            u.inodes += l.inodes;
        }
        let mut add = |p: &Path| {
            if let Ok(m) = fs::symlink_metadata(p) {
                u.bytes += m.blocks() * 512;
                u.inodes += 1;
            }
        };
        add(&self.root.join(INDEX_FILE));
        if let Ok(entries) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in entries.flatten() {
                add(&e.path());
            }
        }
        u
    }
}

/// Keeps chain IDs from garbage collection while a pull uses them.
pub struct Lease<'a> {
    store: &'a Store,
    chain_ids: Vec<String>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        for c in &self.chain_ids {
            if let Some(n) = st.leases.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    st.leases.remove(c);
                }
            }
        }
    }
}

fn load_index(path: &Path) -> Result<BTreeMap<String, ImageRecord>> {
    match fs::read(path) {
        Ok(data) => match serde_json::from_slice::<IndexFile>(&data) {
            Ok(f) => Ok(f.images),
            Err(e) => {
                // The file is only ever replaced by rename, so this is outside damage; keep
                // it for inspection and start empty rather than refuse to run.
                let aside = path.with_extension(format!("corrupt-{}", unique_suffix()));
                tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "image index unreadable; moved aside");
                fs::rename(path, &aside).map_err(|e| Error::io("rename", path, e))?;
                Ok(BTreeMap::new())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// A suffix unique within this host for temporary names.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id_seed: &[u8], chains: Vec<String>) -> ImageRecord {
        ImageRecord {
            id: digest::sha256_of(id_seed),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: digest::sha256_of(b"m"),
            index_digest: None,
            chain_ids: chains,
            size: 10,
            config: ImageConfig::default(),
            pulled_at_ns: 0,
        }
    }

    fn add_layer(store: &Store, seed: &[u8]) -> String {
        let chain = digest::sha256_of(seed);
        let staging = store.stage_layer(&chain).unwrap();
        fs::write(staging.join("diff/file"), seed).unwrap();
        store
            .commit_layer(
                &staging,
                LayerRecord {
                    chain_id: chain.clone(),
                    diff_id: chain.clone(),
                    blob_digest: chain.clone(),
                    disk_bytes: 4096,
                    inodes: 1,
                },
            )
            .unwrap();
        chain
    }

    #[test]
    fn tags_move_untag_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l1 = add_layer(&store, b"l1");
        let l2 = add_layer(&store, b"l2");
        let a = record(b"a", vec![l1.clone()]);
        let b = record(b"b", vec![l1.clone(), l2.clone()]);
        let tag1 = "docker.io/library/x:1".to_string();
        let tag2 = "docker.io/library/x:2".to_string();
        store
            .commit_image(
                a.clone(),
                Some(tag1.clone()),
                "docker.io/library/x@sha256:aa".into(),
            )
            .unwrap();
        store
            .commit_image(
                a.clone(),
                Some(tag2.clone()),
                "docker.io/library/x@sha256:aa".into(),
            )
            .unwrap();
        let (img, _) = store.resolve("x:1").unwrap().unwrap();
        assert_eq!(img.repo_tags, vec![tag1.clone(), tag2.clone()]);
        // Moving tag 2 to image b leaves a with tag 1 only.
        store
            .commit_image(
                b.clone(),
                Some(tag2.clone()),
                "docker.io/library/x@sha256:bb".into(),
            )
            .unwrap();
        assert_eq!(store.resolve("x:1").unwrap().unwrap().0.id, a.id);
        assert_eq!(store.resolve("x:2").unwrap().unwrap().0.id, b.id);
        // Removing b by id collects l2 but keeps l1 (a uses it).
        store.remove(&b.id, &|_| None).unwrap();
        assert!(store.resolve("x:2").unwrap().is_none());
        assert!(store.has_layer(&l1));
        assert!(!store.has_layer(&l2));
        assert!(!store.layer_dir(&l2).unwrap().exists());
        // Reopen sees the same.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list().len(), 1);
        assert!(store.has_layer(&l1));
        // ID prefix and bare hex lookups.
        let hex = &a.id[7..];
        assert!(store.resolve(&hex[..8]).unwrap().is_some());
        assert!(store.resolve(hex).unwrap().is_some());
        store.remove("x:1", &|_| Some("c1".into())).unwrap_err();
        store.remove("x:1", &|_| None).unwrap();
        assert!(store.list().is_empty());
        assert!(!store.has_layer(&l1));
    }

    #[test]
    fn open_cleans_staging_and_unreferenced_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let chain = digest::sha256_of(b"x");
        let _staged = store.stage_layer(&chain).unwrap();
        let orphan = add_layer(&store, b"orphan");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.has_layer(&orphan));
        let left: Vec<_> = fs::read_dir(dir.path().join("layers")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn leased_layers_survive_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = add_layer(&store, b"l");
        let lease = store.lease(std::slice::from_ref(&l));
        store.collect_garbage().unwrap();
        assert!(store.has_layer(&l));
        drop(lease);
        store.collect_garbage().unwrap();
        assert!(!store.has_layer(&l));
    }

    #[test]
    fn bad_specs_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.resolve("").is_err());
        assert!(store.resolve("foo/UPPER").is_err());
        assert!(
            store.resolve(&"a".repeat(100_000)).is_err()
                || store.resolve(&"a".repeat(100_000)).unwrap().is_none()
        );
        assert!(store.resolve("busybox").unwrap().is_none());
        store.remove("busybox", &|_| None).unwrap();
        assert!(store.put_blob("sha256:../../x", b"").is_err());
    }
}
