//! Pushes built images to a registry over the distribution HTTP API (monolithic blob
//! uploads, manifests by tag or digest) and describes what was pushed.

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::image::{Image, ImageIndex};
use crate::util::{digest_hex, http_client};

/// Basic-auth credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: &str, password: &str) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `base64(user:pass)`, as in docker's config.json `auth` field.
    pub fn auth_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    /// The `Authorization: Basic ...` header value.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", self.auth_b64())
    }
}

/// What a push left in the registry, everything a test needs to assert on berth's answers.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Repository path in the registry, e.g. `library/busybox`.
    pub repository: String,
    /// Tags pointing at it (may be empty if pushed by digest only).
    pub tags: Vec<String>,
    /// Digest of what the tags point to: the manifest, or the index for a multi-arch image.
    /// This is the digest berth must report in `repo_digests`.
    pub digest: String,
    /// Digest of the linux/amd64 manifest (equal to `digest` for single-platform images).
    pub manifest_digest: String,
    /// Config digest of the linux/amd64 image: the image ID berth must return.
    pub config_digest: String,
    /// Layer blob digests of the linux/amd64 image, bottom first.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
    /// Chain IDs, bottom first (berth's layer directory names, without `sha256:`).
    pub chain_ids: Vec<String>,
    /// Config digests of the other platforms of an index (none for single images).
    pub other_config_digests: Vec<String>,
    /// Sum of the amd64 image's layer sizes plus its config size.
    pub blobs_size: u64,
}

impl PushedImage {
    fn from_image(repository: &str, tags: &[&str], img: &Image) -> Self {
        PushedImage {
            repository: repository.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            digest: img.manifest_digest.clone(),
            manifest_digest: img.manifest_digest.clone(),
            config_digest: img.config_digest.clone(),
            layer_digests: img.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: img.diff_ids(),
            chain_ids: img.chain_ids(),
            other_config_digests: Vec::new(),
            blobs_size: img.blobs_size(),
        }
    }

    /// The image ID berth must return from PullImage (`sha256:<config hex>`).
    pub fn id(&self) -> &str {
        &self.config_digest
    }

    /// `<host>/<repository>:<first tag>`, e.g. `docker.io/library/busybox:latest`.
    pub fn tag_ref(&self, host: &str) -> String {
        let tag = self.tags.first().map(String::as_str).unwrap_or("latest");
        format!("{host}/{}:{tag}", self.repository)
    }

    /// `<host>/<repository>:<tag>`.
    pub fn tag_ref_of(&self, host: &str, tag: &str) -> String {
        format!("{host}/{}:{tag}", self.repository)
    }

    /// `<host>/<repository>@<digest>` (what berth reports in `repo_digests`).
    pub fn digest_ref(&self, host: &str) -> String {
        format!("{host}/{}@{}", self.repository, self.digest)
    }

    /// `<host>/<repository>` without tag or digest.
    pub fn name(&self, host: &str) -> String {
        format!("{host}/{}", self.repository)
    }

    /// Hex of the chain IDs (the expected `<root>/layers/<hex>` names).
    pub fn chain_id_hexes(&self) -> Vec<String> {
        self.chain_ids
            .iter()
            .map(|c| digest_hex(c).to_string())
            .collect()
    }
}

/// Pushes blobs and manifests to one registry.
#[derive(Debug, Clone)]
pub struct Pusher {
    base: String,
    credentials: Option<Credentials>,
    client: reqwest::Client,
}

impl Pusher {
    /// A pusher for the registry at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str, credentials: Option<Credentials>) -> Self {
        Pusher {
            base: base.trim_end_matches('/').into(),
            credentials,
            client: http_client(),
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some(c) => rb.basic_auth(&c.username, Some(&c.password)),
            None => rb,
        }
    }

    /// Uploads one blob (skipped if the registry has it already) with a monolithic
    /// `POST /v2/<name>/blobs/uploads/` + `PUT <location>&digest=...`.
    pub async fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        let head = self
            .auth(
                self.client
                    .head(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()
            .await?;
        if head.status() == 200 {
            return Ok(());
        }
        let resp = self
            .auth(
                self.client
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .header("Content-Length", "0")
            .send()
            .await
            .context("starting blob upload")?;
        if resp.status() != 202 {
            bail!(
                "POST blob upload for {repo}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let location = resp
            .headers()
            .get("Location")
            .context("upload response without Location")?
            .to_str()?
            .to_string();
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(digest);
        let resp = self
            .auth(self.client.put(url))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", data.len().to_string())
            .body(data.to_vec())
            .send()
            .await
            .context("uploading blob")?;
        if resp.status() != 201 {
            bail!(
                "PUT blob {digest} to {repo}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let got = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if got != digest {
            bail!("registry stored blob as {got:?}, expected {digest}");
        }
        Ok(())
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the given media type; checks the digest
    /// the registry computed.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
        digest: &str,
    ) -> Result<()> {
        let resp = self
            .auth(
                self.client
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .context("pushing manifest")?;
        if resp.status() != 201 {
            bail!(
                "PUT manifest {repo}:{reference}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let got = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if got != digest {
            bail!("registry computed manifest digest {got:?}, expected {digest}");
        }
        Ok(())
    }

    /// Pushes an image's blobs and its manifest under each tag (or only by digest when
    /// `tags` is empty).
    pub async fn push_image(&self, repo: &str, tags: &[&str], img: &Image) -> Result<PushedImage> {
        self.push_image_blobs(repo, img).await?;
        if tags.is_empty() {
            self.push_manifest(
                repo,
                &img.manifest_digest,
                img.manifest_media_type(),
                &img.manifest,
                &img.manifest_digest,
            )
            .await?;
        }
        for tag in tags {
            self.push_manifest(
                repo,
                tag,
                img.manifest_media_type(),
                &img.manifest,
                &img.manifest_digest,
            )
            .await?;
        }
        Ok(PushedImage::from_image(repo, tags, img))
    }

    async fn push_image_blobs(&self, repo: &str, img: &Image) -> Result<()> {
        for l in &img.layers {
            self.push_blob(repo, &l.digest, &l.blob).await?;
        }
        self.push_blob(repo, &img.config_digest, &img.config).await
    }

    /// Pushes every platform image (by digest) and the index under each tag. The result
    /// describes the linux/amd64 image, with `digest` = the index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tags: &[&str],
        index: &ImageIndex,
    ) -> Result<PushedImage> {
        for img in &index.images {
            self.push_image_blobs(repo, img).await?;
            self.push_manifest(
                repo,
                &img.manifest_digest,
                img.manifest_media_type(),
                &img.manifest,
                &img.manifest_digest,
            )
            .await?;
        }
        let refs: Vec<&str> = if tags.is_empty() {
            vec![index.digest.as_str()]
        } else {
            tags.to_vec()
        };
        for r in refs {
            self.push_manifest(repo, r, index.media_type(), &index.manifest, &index.digest)
                .await?;
        }
        let amd64 = index
            .image_for("amd64")
            .context("index has no amd64 image")?;
        let mut p = PushedImage::from_image(repo, tags, amd64);
        p.digest = index.digest.clone();
        p.other_config_digests = index
            .images
            .iter()
            .filter(|i| i.platform.architecture != "amd64")
            .map(|i| i.config_digest.clone())
            .collect();
        Ok(p)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type; returns
    /// (Content-Type, Docker-Content-Digest, body).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, String, Vec<u8>)> {
        let resp = self
            .auth(
                self.client
                    .get(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Accept", ACCEPT_ALL_MANIFESTS)
            .send()
            .await?;
        if resp.status() != 200 {
            bail!("GET manifest {repo}:{reference}: {}", resp.status());
        }
        let ct = header_str(&resp, "Content-Type");
        let dcd = header_str(&resp, "Docker-Content-Digest");
        Ok((ct, dcd, resp.bytes().await?.to_vec()))
    }

    /// `GET /v2/<repo>/blobs/<digest>`; returns the body.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let resp = self
            .auth(
                self.client
                    .get(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()
            .await?;
        if resp.status() != 200 {
            bail!("GET blob {repo}@{digest}: {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }
}

/// An `Accept` header listing every manifest media type.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

fn header_str(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
