//! Pulling one image: resolve the reference through the registries config, fetch the
//! manifest (choosing the node's platform from an index), the config, and every layer
//! not yet unpacked — in parallel, each verified against its digest while it streams and
//! unpacked while it downloads — then record the image.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::digest;
use super::distribution::{Credentials, Session};
use super::reference::Reference;
use super::service::Inner;
use super::spec::{self, AnyManifest, Descriptor, ImageConfig};
use super::store::{ImageRecord, LayerRecord};
use super::unpack;
use crate::{Error, Result};

/// The outcome of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    /// The image ID (`sha256:` of the config).
    pub image_id: String,
    /// Compressed bytes downloaded by this pull (layers already present cost nothing).
    pub bytes_downloaded: u64,
}

/// Pulls `reference`, trying mirrors first and the primary location last.
pub(crate) async fn pull(
    inner: Arc<Inner>,
    reference: Reference,
    credentials: Credentials,
) -> Result<PullOutcome> {
    let endpoints = inner.registries.endpoints(&reference)?;
    let mut last_error = None;
    for endpoint in endpoints {
        let mirror = endpoint.mirror;
        let host = endpoint.host.clone();
        let session = Arc::new(inner.client.session(endpoint, credentials.clone()));
        match pull_from(&inner, &reference, &session).await {
            Ok(out) => return Ok(out),
            Err(e) if mirror => {
                tracing::warn!(image = %reference, mirror = %host, error = %e, "mirror failed; trying next endpoint");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| Error::Internal(format!("no registry endpoint for {reference}"))))
}

async fn pull_from(
    inner: &Arc<Inner>,
    reference: &Reference,
    session: &Arc<Session>,
) -> Result<PullOutcome> {
    let target = reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_string();
    let top = session
        .manifest(&target)
        .await
        .map_err(|e| e.context(format!("pull {reference}")))?;
    let parsed = parse_manifest(&top.bytes, reference)?;
    let (manifest_bytes, manifest_digest, manifest, index) = if is_index(&parsed, &top.content_type)
    {
        let entries = parsed.manifests.as_deref().unwrap_or(&[]);
        let want = spec::node_platform();
        let entry = spec::select_platform(entries, &want).ok_or_else(|| {
            Error::NotFound(format!(
                "image {reference} has no manifest for platform {}/{}",
                want.os, want.architecture
            ))
        })?;
        digest::sha256_hex(&entry.digest)?;
        let m = session
            .manifest(&entry.digest)
            .await
            .map_err(|e| e.context(format!("pull {reference}")))?;
        let pm = parse_manifest(&m.bytes, reference)?;
        if is_index(&pm, &m.content_type) {
            return Err(Error::InvalidArgument(format!(
                "image {reference}: nested image indexes are not supported"
            )));
        }
        (m.bytes, m.digest, pm, Some((top.digest.clone(), top.bytes)))
    } else {
        (top.bytes, top.digest.clone(), parsed, None)
    };
    let index_digest = index.as_ref().map(|(d, _)| d.clone());
    let config_desc = manifest.config.clone().ok_or_else(|| {
        Error::InvalidArgument(format!("image {reference}: manifest has no config"))
    })?;
    let layers = manifest.layers.clone().unwrap_or_default();
    for l in &layers {
        check_layer_media_type(reference, l)?;
        digest::sha256_hex(&l.digest)?;
    }
    let config_bytes = session
        .blob_bytes(&config_desc)
        .await
        .map_err(|e| e.context(format!("pull {reference}: config")))?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::InvalidArgument(format!("image {reference}: invalid image config: {e}"))
    })?;
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(Error::InvalidArgument(format!(
            "image {reference}: manifest lists {} layers but the config {} diff IDs",
            layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    for d in &config.rootfs.diff_ids {
        digest::sha256_hex(d)?;
    }
    let chain_ids = digest::chain_ids(&config.rootfs.diff_ids);
    // The blobs this pull writes: kept from garbage collection while it runs (with the
    // layers), and removed again if it fails and no image uses them.
    let mut blobs = vec![manifest_digest.clone(), config_desc.digest.clone()];
    blobs.extend(index_digest.clone());
    let lease = inner
        .store
        .lease(&chain_ids.iter().chain(&blobs).cloned().collect::<Vec<_>>());
    let outcome = async {
        let downloaded = Arc::new(AtomicU64::new(0));
        let jobs = layers
            .iter()
            .zip(config.rootfs.diff_ids.iter())
            .zip(chain_ids.iter())
            .filter(|((_, _), chain)| !inner.store.has_layer(chain))
            .map(|((desc, diff_id), chain)| {
                let inner = Arc::clone(inner);
                let desc = desc.clone();
                let diff_id = diff_id.clone();
                let chain = chain.clone();
                let downloaded = Arc::clone(&downloaded);
                let reference = reference.to_string();
                let session = Arc::clone(session);
                async move {
                    let key = chain.clone();
                    // Another pull already fetching the same chain ID does the work for both.
                    let owner = Arc::clone(&inner);
                    let fetched = owner
                        .layers
                        .run(key, move || {
                            let inner = Arc::clone(&inner);
                            async move {
                                let resp = session.blob(&desc.digest).await?;
                                fetch_layer(&inner, resp, &desc, &diff_id, &chain)
                                    .await
                                    .map_err(|e| {
                                        e.context(format!(
                                            "pull {reference}: layer {}",
                                            desc.digest
                                        ))
                                    })
                            }
                        })
                        .await?;
                    downloaded.fetch_add(fetched, Ordering::Relaxed);
                    Ok::<(), Error>(())
                }
            })
            .collect::<Vec<_>>();
        // Every layer job runs to its end, even after one failed: the error is answered only
        // when no other layer of this pull is still being written (and its staging
        // directory removed, if it failed too), so nothing partial is left when the caller
        // looks.
        let results = futures_util::stream::iter(jobs)
            .buffer_unordered(inner.max_downloads)
            .collect::<Vec<Result<()>>>()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;

        // Blobs are written only once every layer is in place: a pull that fails on the way
        // (a full disk) leaves nothing behind but complete, verified layers.
        if let Some((digest, bytes)) = &index {
            inner.store.put_blob(digest, bytes)?;
        }
        inner.store.put_blob(&manifest_digest, &manifest_bytes)?;
        inner.store.put_blob(&config_desc.digest, &config_bytes)?;
        let size = config_desc.size.max(0) as u64
            + layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
        let record = ImageRecord {
            id: config_desc.digest.clone(),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest,
            index_digest,
            chain_ids,
            size,
            config,
            pulled_at_ns: now_ns(),
        };
        let tag = match reference.digest() {
            Some(_) => None,
            None => reference.tagged_string(),
        };
        let repo_digest = format!("{}@{}", reference.name(), top.digest);
        let store = Arc::clone(inner);
        let rec =
            tokio::task::spawn_blocking(move || store.store.commit_image(record, tag, repo_digest))
                .await
                .map_err(|e| Error::Internal(format!("commit image: {e}")))??;
        Ok(PullOutcome {
            image_id: rec.id,
            bytes_downloaded: downloaded.load(Ordering::Relaxed),
        })
    }
    .await;
    drop(lease);
    if outcome.is_err() {
        inner.store.discard_blobs(&blobs);
    }
    outcome
}

fn parse_manifest(bytes: &[u8], reference: &Reference) -> Result<AnyManifest> {
    let m: AnyManifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("image {reference}: invalid manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(Error::InvalidArgument(format!(
            "image {reference}: manifest schema version {} is not supported (only 2)",
            m.schema_version
        )));
    }
    Ok(m)
}

fn is_index(m: &AnyManifest, content_type: &str) -> bool {
    let mt = m.media_type.as_deref().unwrap_or(content_type);
    mt == spec::OCI_INDEX
        || mt == spec::DOCKER_MANIFEST_LIST
        || (m.manifests.is_some() && m.config.is_none())
}

fn check_layer_media_type(reference: &Reference, l: &Descriptor) -> Result<()> {
    const OK: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "",
    ];
    if OK.contains(&l.media_type.as_str()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "image {reference}: layer {} has unsupported media type {:?}",
            l.digest, l.media_type
        )))
    }
}

/// Streams one layer blob into a staging directory, verifying the compressed digest and
/// size and the uncompressed diff ID, and moves it into place. Returns bytes downloaded.
async fn fetch_layer(
    inner: &Arc<Inner>,
    resp: reqwest::Response,
    desc: &Descriptor,
    diff_id: &str,
    chain_id: &str,
) -> Result<u64> {
    if inner.store.has_layer(chain_id) {
        return Ok(0);
    }
    let staging = inner.store.stage_layer(chain_id)?;
    let result = stream_and_unpack(resp, desc, diff_id, &staging).await;
    match result {
        Ok((stats, size)) => {
            let rec = LayerRecord {
                chain_id: chain_id.to_string(),
                diff_id: diff_id.to_string(),
                blob_digest: desc.digest.clone(),
                disk_bytes: stats.bytes,
                inodes: stats.inodes,
            };
            let store = Arc::clone(inner);
            let staging2 = staging.clone();
            let committed =
                tokio::task::spawn_blocking(move || store.store.commit_layer(&staging2, rec))
                    .await
                    .map_err(|e| Error::Internal(format!("commit layer: {e}")))
                    .and_then(|r| r);
            if let Err(e) = committed {
                remove_staging(staging).await;
                return Err(e);
            }
            Ok(size)
        }
        Err(e) => {
            remove_staging(staging).await;
            Err(e)
        }
    }
}

async fn remove_staging(staging: std::path::PathBuf) {
    let _ = tokio::task::spawn_blocking(move || crate::fsutil::remove_all(&staging)).await;
}

async fn stream_and_unpack(
    resp: reqwest::Response,
    desc: &Descriptor,
    diff_id: &str,
    staging: &Path,
) -> Result<(unpack::UnpackStats, u64)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let dest = staging.join("diff");
    let unpacker = tokio::task::spawn_blocking(move || -> Result<(unpack::UnpackStats, String)> {
        let reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        let mut buffered = BufReader::with_capacity(256 << 10, reader);
        let head = buffered
            .fill_buf()
            .map_err(|e| Error::Internal(format!("read layer: {e}")))?
            .to_vec();
        let mut hashed = HashingReader {
            inner: decoder_for(&head, buffered)?,
            hasher: Sha256::new(),
        };
        let stats = unpack::unpack_layer(&mut hashed, &dest).map_err(|e| {
            if e.io_source().is_some_and(crate::error::is_no_space) {
                Error::ResourceExhausted(format!(
                    "no space left on device: writing layer into {}: {e}",
                    dest.display()
                ))
            } else {
                Error::from(e)
            }
        })?;
        // The tar may end before the compressed stream does (trailing padding, frames):
        // drain it so the diff ID and the blob digest both cover every byte.
        std::io::copy(&mut hashed, &mut std::io::sink())
            .map_err(|e| Error::DataLoss(format!("decompress layer: {e}")))?;
        let HashingReader { mut inner, hasher } = hashed;
        std::io::copy(inner.get_mut(), &mut std::io::sink())
            .map_err(|e| Error::Internal(format!("read layer: {e}")))?;
        Ok((stats, digest::finish(hasher)))
    });

    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = resp.bytes_stream();
    let mut feed_error = None;
    let mut unpacker_stopped = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                feed_error = Some(Error::Unavailable(format!(
                    "download of {} failed: {}",
                    desc.digest,
                    super::distribution::error_chain(&e)
                )));
                break;
            }
        };
        size += chunk.len() as u64;
        if size > desc.size.max(0) as u64 {
            feed_error = Some(Error::DataLoss(format!(
                "blob {} is larger than its descriptor's {} bytes",
                desc.digest, desc.size
            )));
            break;
        }
        hasher.update(&chunk);
        if tx.send(chunk).await.is_err() {
            // The unpacker stopped early; its error explains why.
            unpacker_stopped = true;
            break;
        }
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| Error::Internal(format!("unpack task: {e}")))?;
    if let Some(e) = feed_error {
        return Err(e);
    }
    if unpacker_stopped && let Err(e @ Error::ResourceExhausted(_)) = &unpacked {
        // Not all of the blob was read, so its digest cannot match: the full disk that
        // stopped the unpacker is the cause to report, not the digest.
        return Err(e.clone());
    }
    let got = digest::finish(hasher);
    if got != desc.digest || size != desc.size.max(0) as u64 {
        return Err(Error::DataLoss(format!(
            "blob {}: downloaded {size} bytes with digest {got}, expected {} bytes",
            desc.digest, desc.size
        )));
    }
    let (stats, got_diff) = unpacked.map_err(|e| match e {
        Error::Internal(m) if m.starts_with("unpack layer") => Error::DataLoss(m),
        other => other,
    })?;
    if got_diff != diff_id {
        return Err(Error::DataLoss(format!(
            "uncompressed layer has digest {got_diff}, the image config says {diff_id}"
        )));
    }
    Ok((stats, size))
}

/// A decompressor chosen by the stream's magic bytes rather than the media type, since
/// registries and build tools mislabel layers often enough (as containerd also sniffs).
enum Decoder<R: BufRead> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Plain(R),
}

impl<R: BufRead> Decoder<R> {
    fn get_mut(&mut self) -> &mut R {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
            Decoder::Plain(r) => r,
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(r) => r.read(buf),
        }
    }
}

fn decoder_for<R: BufRead>(head: &[u8], reader: R) -> Result<Decoder<R>> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Decoder::Gzip(Box::new(
            flate2::bufread::MultiGzDecoder::new(reader),
        )))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::with_buffer(reader)
            .map(Decoder::Zstd)
            .map_err(|e| Error::Internal(format!("zstd decoder: {e}")))
    } else {
        Ok(Decoder::Plain(reader))
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Blocking `Read` over the chunks the download task sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// Now as Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
