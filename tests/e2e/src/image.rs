//! Builds OCI and Docker v2 schema 2 images without any external tool: layer tars with the
//! `tar` crate (compressed gzip, zstd or not at all), image config JSON, manifests, and OCI
//! image indexes / Docker manifest lists.

use std::io::Write;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use crate::util::sha256_digest;

/// Fixed mtime for every tar entry, so that the same fixture always has the same digests.
pub const MTIME: u64 = 1_700_000_000;

/// Busybox applets the harness links into `/bin` of the busybox layer.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "mkdir", "rm",
    "touch", "ps", "sed", "grep", "head", "tail", "wc", "date", "hostname", "stat", "test",
    "printf", "pwd", "kill", "mount", "whoami", "uname", "sync",
];

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/vnd.oci.image.*`.
    Oci,
    /// Docker image manifest v2 schema 2 (`application/vnd.docker.*`).
    Docker,
}

impl Format {
    /// Media type of a single-platform manifest.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    /// Media type of an index / manifest list.
    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.index.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    /// Media type of the image config.
    pub fn config_media_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    /// Media type of a layer with the given compression.
    pub fn layer_media_type(self, c: Compression) -> &'static str {
        match (self, c) {
            (Format::Oci, Compression::Gzip(_)) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Docker, Compression::Gzip(_)) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            // Docker has no zstd media type; zstd layers in Docker manifests use the OCI one.
            (Format::Docker, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip at the given level (0-9).
    Gzip(u32),
    /// zstd at level 3.
    Zstd,
    /// A plain tar.
    None,
}

impl Compression {
    /// gzip at the default level 6.
    pub const GZIP: Compression = Compression::Gzip(6);
}

/// A finished layer blob.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob as pushed (compressed or not).
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// The compression of `blob`.
    pub compression: Compression,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
}

impl Layer {
    /// Compresses a finished tar stream into a layer blob.
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Result<Layer> {
        let diff_id = sha256_digest(&tar);
        let tar_size = tar.len() as u64;
        let blob = compress(&tar, compression)?;
        Ok(Layer {
            digest: sha256_digest(&blob),
            diff_id,
            blob,
            compression,
            tar_size,
        })
    }

    /// Size of the blob in bytes.
    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

/// Compresses `data` as asked.
pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::Gzip(level) => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::new(level),
            );
            enc.write_all(data)?;
            enc.finish()?
        }
        Compression::Zstd => zstd::encode_all(data, 3)?,
        Compression::None => data.to_vec(),
    })
}

/// Decompresses a layer blob (for the harness's own checks).
pub fn decompress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    use std::io::Read;
    Ok(match c {
        Compression::Gzip(_) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
            out
        }
        Compression::Zstd => zstd::decode_all(data)?,
        Compression::None => data.to_vec(),
    })
}

/// Builds one layer's tar stream entry by entry. Paths are relative to the image root and
/// written as given (no leading `/`, no normalization) unless a `raw_*` method is used.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

/// Writes `name` byte for byte into the header's name field (no validation: `..` and
/// absolute paths allowed). Names up to 100 bytes only.
fn set_raw_name(h: &mut tar::Header, name: &[u8]) -> Result<()> {
    let field = &mut h.as_old_mut().name;
    anyhow::ensure!(
        name.len() <= field.len(),
        "raw tar name longer than 100 bytes"
    );
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
    Ok(())
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        LayerBuilder { tar }
    }

    /// Adds a directory (mode e.g. 0o755).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    /// Adds a regular file owned by root.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<&mut Self> {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// Adds a regular file with an owner.
    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.tar.append_data(&mut h, path, data)?;
        Ok(self)
    }

    /// Adds a symlink `path -> target` (target written as given).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// Adds a hard link `path` to the earlier entry `target` (target written as given),
    /// with root owner and mode 0644 in its header.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.hardlink_owned(path, target, 0o644, 0, 0)
    }

    /// Adds a hard link whose header carries the given mode and owner. Real image builders
    /// repeat the target's metadata in a link's header, and extractors (docker, containerd)
    /// apply the link header's owner and mode to the inode, so fixtures should match them.
    pub fn hardlink_owned(
        &mut self,
        path: &str,
        target: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Link, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.tar.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// Adds the whiteout `<dir>/.wh.<name>` that deletes `<dir>/<name>` of lower layers
    /// (`dir` may be empty for the root).
    pub fn whiteout(&mut self, dir: &str, name: &str) -> Result<&mut Self> {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"", 0o644)
    }

    /// Adds `<dir>/.wh..wh..opq`, making `dir` opaque (hides its lower-layer content).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// Adds a regular file whose name is written verbatim (may contain `..` or start
    /// with `/`).
    pub fn raw_file(&mut self, name: &str, data: &[u8]) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        set_raw_name(&mut h, name.as_bytes())?;
        h.set_cksum();
        self.tar.append(&h, data)?;
        Ok(self)
    }

    /// Adds a link entry (`kind` symlink or hard link) with verbatim name and target.
    pub fn raw_link(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        target: &str,
    ) -> Result<&mut Self> {
        let mut h = header(kind, 0o777, 0);
        set_raw_name(&mut h, name.as_bytes())?;
        h.set_link_name_literal(target.as_bytes())?;
        h.set_cksum();
        self.tar.append(&h, std::io::empty())?;
        Ok(self)
    }

    /// Adds a directory with a verbatim name.
    pub fn raw_dir(&mut self, name: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        set_raw_name(&mut h, name.as_bytes())?;
        h.set_cksum();
        self.tar.append(&h, std::io::empty())?;
        Ok(self)
    }

    /// Adds `/bin/busybox` (from the host's static busybox), `/bin/<applet>` symlinks,
    /// `/etc/passwd` (root, nobody 65534, e2e 1234), `/etc/group`, `/tmp` and `/root`.
    pub fn busybox(&mut self) -> Result<&mut Self> {
        let bb = busybox_bytes()?;
        self.dir("bin", 0o755)?;
        self.file("bin/busybox", bb, 0o755)?;
        for applet in APPLETS {
            self.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        self.dir("etc", 0o755)?;
        self.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n\
              e2e:x:1234:1234:e2e:/home/e2e:/bin/sh\n\
              nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )?;
        self.file(
            "etc/group",
            b"root:x:0:\ne2e:x:1234:\nnogroup:x:65534:\n",
            0o644,
        )?;
        self.dir("tmp", 0o1777)?;
        self.dir("root", 0o700)?;
        Ok(self)
    }

    /// Finishes the tar stream and compresses it.
    pub fn finish(self, compression: Compression) -> Result<Layer> {
        let tar = self.tar.into_inner()?;
        Layer::from_tar(tar, compression)
    }
}

/// The host's static busybox (read once).
pub fn busybox_bytes() -> Result<&'static [u8]> {
    static BB: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(b) = BB.get() {
        return Ok(b);
    }
    let data = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    Ok(BB.get_or_init(|| data))
}

/// A layer with only busybox (see [`LayerBuilder::busybox`]).
pub fn busybox_layer(c: Compression) -> Result<Layer> {
    let mut b = LayerBuilder::new();
    b.busybox()?;
    b.finish(c)
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough for big layers.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The platform of an image (for configs and index entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOARCH-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// CPU variant (`v8` for arm64), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64.
    pub fn amd64() -> Self {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }

    /// linux/arm64/v8.
    pub fn arm64() -> Self {
        Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        Value::Object(m)
    }
}

/// Builds one single-platform image: layers, config, manifest.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    format: Format,
    platform: Platform,
    layers: Vec<Layer>,
    config: Map<String, Value>,
    annotations: Option<Map<String, Value>>,
}

impl ImageBuilder {
    /// An image of `format` for linux/amd64 with `Cmd ["sh"]` and a default PATH.
    pub fn new(format: Format) -> Self {
        let mut config = Map::new();
        config.insert(
            "Env".into(),
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        );
        config.insert("Cmd".into(), json!(["sh"]));
        ImageBuilder {
            format,
            platform: Platform::amd64(),
            layers: Vec::new(),
            config,
            annotations: None,
        }
    }

    /// Sets the platform written into the config (architecture, os, variant).
    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    /// Appends a layer (bottom first).
    pub fn layer(mut self, l: Layer) -> Self {
        self.layers.push(l);
        self
    }

    /// Sets `config.User`.
    pub fn user(self, user: &str) -> Self {
        self.set("User", json!(user))
    }

    /// Sets `config.Cmd`.
    pub fn cmd(self, cmd: &[&str]) -> Self {
        self.set("Cmd", json!(cmd))
    }

    /// Sets `config.Entrypoint`.
    pub fn entrypoint(self, ep: &[&str]) -> Self {
        self.set("Entrypoint", json!(ep))
    }

    /// Replaces `config.Env`.
    pub fn env(self, env: &[&str]) -> Self {
        self.set("Env", json!(env))
    }

    /// Sets `config.WorkingDir`.
    pub fn working_dir(self, dir: &str) -> Self {
        self.set("WorkingDir", json!(dir))
    }

    /// Sets `config.StopSignal`.
    pub fn stop_signal(self, sig: &str) -> Self {
        self.set("StopSignal", json!(sig))
    }

    /// Adds a `config.Labels` entry.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        let labels = self
            .config
            .entry("Labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = labels {
            m.insert(key.into(), json!(value));
        }
        self
    }

    /// Sets any `config.<key>`.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }

    /// Adds a manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations
            .get_or_insert_with(Map::new)
            .insert(key.into(), json!(value));
        self
    }

    /// Serializes config and manifest.
    pub fn build(self) -> Result<Image> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("berth-e2e layer {i}")}))
            .collect();
        let mut cfg = Map::new();
        cfg.insert("architecture".into(), json!(self.platform.architecture));
        cfg.insert("os".into(), json!(self.platform.os));
        if let Some(v) = &self.platform.variant {
            cfg.insert("variant".into(), json!(v));
        }
        cfg.insert("created".into(), json!("2023-11-14T22:13:20Z"));
        cfg.insert("author".into(), json!("berth e2e harness"));
        cfg.insert("config".into(), Value::Object(self.config.clone()));
        cfg.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": diff_ids}),
        );
        cfg.insert("history".into(), Value::Array(history));
        let config = serde_json::to_vec(&Value::Object(cfg))?;
        let config_digest = sha256_digest(&config);

        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "mediaType": self.format.layer_media_type(l.compression),
                    "digest": l.digest,
                    "size": l.size(),
                })
            })
            .collect();
        let mut m = Map::new();
        m.insert("schemaVersion".into(), json!(2));
        m.insert("mediaType".into(), json!(self.format.manifest_media_type()));
        m.insert(
            "config".into(),
            json!({
                "mediaType": self.format.config_media_type(),
                "digest": config_digest,
                "size": config.len(),
            }),
        );
        m.insert("layers".into(), Value::Array(layers));
        if let Some(a) = &self.annotations {
            m.insert("annotations".into(), Value::Object(a.clone()));
        }
        let manifest = serde_json::to_vec_pretty(&Value::Object(m))?;
        Ok(Image {
            format: self.format,
            platform: self.platform,
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers: self.layers,
        })
    }
}

/// A built single-platform image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Media type family.
    pub format: Format,
    /// Platform recorded in the config.
    pub platform: Platform,
    /// Config JSON bytes.
    pub config: Vec<u8>,
    /// Digest of `config`: the image ID.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Manifest JSON bytes.
    pub manifest: Vec<u8>,
    /// Digest of `manifest`.
    pub manifest_digest: String,
}

impl Image {
    /// Media type of the manifest.
    pub fn manifest_media_type(&self) -> &'static str {
        self.format.manifest_media_type()
    }

    /// The layers' uncompressed digests.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// Chain IDs of the layers (bottom first): the names of berth's layer directories.
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids())
    }

    /// Total size of config and layer blobs.
    pub fn blobs_size(&self) -> u64 {
        self.config.len() as u64 + self.layers.iter().map(Layer::size).sum::<u64>()
    }
}

/// Chain IDs per the OCI image spec: `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A multi-platform image: an OCI index or Docker manifest list over several images.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    /// Media type family.
    pub format: Format,
    /// The platform images, in index order.
    pub images: Vec<Image>,
    /// Index JSON bytes.
    pub manifest: Vec<u8>,
    /// Digest of `manifest`.
    pub digest: String,
}

impl ImageIndex {
    /// Builds the index over `images` (each entry's platform is taken from its image).
    pub fn build(format: Format, images: Vec<Image>) -> Result<ImageIndex> {
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                json!({
                    "mediaType": img.manifest_media_type(),
                    "digest": img.manifest_digest,
                    "size": img.manifest.len(),
                    "platform": img.platform.to_json(),
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": format.index_media_type(),
            "manifests": manifests,
        });
        let manifest = serde_json::to_vec_pretty(&index)?;
        Ok(ImageIndex {
            format,
            digest: sha256_digest(&manifest),
            manifest,
            images,
        })
    }

    /// Media type of the index.
    pub fn media_type(&self) -> &'static str {
        self.format.index_media_type()
    }

    /// The image for `architecture`, if the index has one.
    pub fn image_for(&self, architecture: &str) -> Option<&Image> {
        self.images
            .iter()
            .find(|i| i.platform.architecture == architecture)
    }
}
