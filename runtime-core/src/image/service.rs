//! The image service: what the CRI ImageService maps onto.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::distribution::{Credentials, RegistryClient};
use super::inflight::InFlight;
use super::pull::{self, PullOutcome};
use super::reference::Reference;
use super::registries::RegistriesConfig;
use super::store::{ImageRecord, Store, Usage};
use crate::{Error, Result};

/// Settings of the image service.
#[derive(Debug, Clone)]
pub struct ImageServiceOptions {
    /// Root directory of the store.
    pub root: PathBuf,
    /// containers-registries.conf(5) file; none means direct HTTPS to every registry.
    pub registries_config: Option<PathBuf>,
    /// Layers fetched at once per pull.
    pub max_concurrent_downloads: usize,
    /// Registry connect timeout.
    pub connect_timeout: Duration,
    /// Registry per-read timeout.
    pub read_timeout: Duration,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) registries: RegistriesConfig,
    pub(crate) client: RegistryClient,
    pub(crate) max_downloads: usize,
    pub(crate) layers: InFlight<u64>,
    pulls: InFlight<PullOutcome>,
}

/// Pulls, lists, inspects and removes images.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

impl ImageService {
    /// Opens the store (cleaning up after a crash) and reads the registries config.
    pub fn open(opts: ImageServiceOptions) -> Result<ImageService> {
        let registries = match &opts.registries_config {
            Some(p) => RegistriesConfig::load(p)?,
            None => RegistriesConfig::empty(),
        };
        let store = Store::open(&opts.root)?;
        let client = RegistryClient::new(opts.connect_timeout, opts.read_timeout)?;
        Ok(ImageService {
            inner: Arc::new(Inner {
                store,
                registries,
                client,
                max_downloads: opts.max_concurrent_downloads.max(1),
                layers: InFlight::default(),
                pulls: InFlight::default(),
            }),
        })
    }

    /// Pulls an image by reference; concurrent pulls of the same reference with the same
    /// credentials share one pull.
    pub async fn pull(&self, image: &str, credentials: Credentials) -> Result<PullOutcome> {
        let image = image.trim();
        if image.is_empty() {
            return Err(Error::InvalidArgument(
                "image reference is empty".to_string(),
            ));
        }
        let reference = Reference::parse_normalized(image)?;
        let key = format!("{reference}\n{}", credentials_key(&credentials));
        let inner = Arc::clone(&self.inner);
        self.inner
            .pulls
            .run(key, move || pull::pull(inner, reference, credentials))
            .await
    }

    /// The image `spec` names (ID, reference or ID prefix), if present.
    pub fn status(&self, spec: &str) -> Result<Option<ImageRecord>> {
        Ok(self.inner.store.resolve(spec)?.map(|(r, _)| r))
    }

    /// All images, or those `filter` names.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>> {
        match filter.map(str::trim).filter(|f| !f.is_empty()) {
            None => Ok(self.inner.store.list()),
            Some(f) => Ok(self.status(f)?.into_iter().collect()),
        }
    }

    /// Removes the tag or image `spec` names; absent images are not an error. `in_use`
    /// names a container using an image ID; such an image is kept (FailedPrecondition)
    /// unless only one of several tags is removed.
    pub async fn remove(
        &self,
        spec: &str,
        in_use: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let spec = spec.to_string();
        tokio::task::spawn_blocking(move || inner.store.remove(&spec, &in_use))
            .await
            .map_err(|e| Error::Internal(format!("remove image: {e}")))?
    }

    /// Disk usage of the image store.
    pub fn usage(&self) -> Usage {
        self.inner.store.usage()
    }

    /// The directory holding the image filesystem (for ImageFsInfo).
    pub fn mountpoint(&self) -> &Path {
        self.inner.store.root()
    }

    /// The overlay lower directories of an image, top layer first (overlayfs order).
    pub fn lower_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        image
            .chain_ids
            .iter()
            .rev()
            .map(|c| Ok(self.inner.store.layer_dir(c)?.join("diff")))
            .collect()
    }

    /// The `info` map of a verbose ImageStatus: one `info` key holding JSON, as containerd
    /// answers (`chainID`, `imageSpec`) plus the manifest and layer details berth has.
    pub fn verbose_info(&self, image: &ImageRecord) -> BTreeMap<String, String> {
        let layers = self.inner.store.layers_of(image);
        let info = serde_json::json!({
            "id": image.id,
            "chainID": image.chain_ids.last(),
            "manifestDigest": image.manifest_digest,
            "indexDigest": image.index_digest,
            "imageSpec": image.config,
            "layers": layers,
            "pulledAt": image.pulled_at_ns,
        });
        let mut out = BTreeMap::new();
        out.insert("info".to_string(), info.to_string());
        out
    }
}

fn credentials_key(c: &Credentials) -> String {
    use sha2::Digest as _;
    if c.is_empty() {
        return String::new();
    }
    let mut h = sha2::Sha256::new();
    for part in [
        &c.username,
        &c.password,
        &c.identity_token,
        &c.registry_token,
    ] {
        h.update(part.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// `uid` and `username` as CRI reports them from an image config's `User`: the part before
/// `:`; numeric means a UID, anything else a user name.
pub fn image_user(image: &ImageRecord) -> (Option<i64>, String) {
    let user = image
        .config
        .config
        .as_ref()
        .and_then(|c| c.user.as_deref())
        .unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}
