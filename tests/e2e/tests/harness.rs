//! Tests of the harness itself (no berthd needed): the registry starts, every fixture
//! pushes and reads back intact over the distribution API, blob corruption is visible,
//! htpasswd auth works, and the token proxy implements the bearer-token flow.

use std::collections::HashSet;
use std::io::Read;

use anyhow::Result;
use e2e::fixtures::{self, HostSentinel};
use e2e::image::{Compression, busybox_layer, decompress};
use e2e::push::ACCEPT_ALL_MANIFESTS;
use e2e::util::{http_client, sha256_digest};
use e2e::{Credentials, Format, Proxy, ProxyOptions, PushedImage, Pusher, Registry, TokenAuth};
use serde_json::Value;

/// Reads a pushed image back: manifest by tag (content type, digest header), the platform
/// manifest, the config and every layer (digests, diff_ids).
async fn verify_pushed(p: &Pusher, img: &PushedImage) -> Result<()> {
    let tag = img
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| img.digest.clone());
    let (ct, dcd, body) = p.get_manifest(&img.repository, &tag).await?;
    assert_eq!(
        dcd, img.digest,
        "Docker-Content-Digest of {}:{tag}",
        img.repository
    );
    assert_eq!(sha256_digest(&body), img.digest);
    let top: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        top["mediaType"].as_str(),
        Some(ct.as_str()),
        "content type = mediaType"
    );
    let manifest: Value = if ct.contains("index") || ct.contains("list") {
        let entries = top["manifests"].as_array().expect("index manifests");
        let amd64 = entries
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64")
            .expect("amd64 entry");
        assert_eq!(amd64["digest"].as_str(), Some(img.manifest_digest.as_str()));
        let (_, dcd, body) = p
            .get_manifest(&img.repository, &img.manifest_digest)
            .await?;
        assert_eq!(dcd, img.manifest_digest);
        serde_json::from_slice(&body)?
    } else {
        assert_eq!(img.digest, img.manifest_digest);
        top
    };
    assert_eq!(
        manifest["config"]["digest"].as_str(),
        Some(img.config_digest.as_str())
    );
    let config = p.get_blob(&img.repository, &img.config_digest).await?;
    assert_eq!(sha256_digest(&config), img.config_digest);
    let config: Value = serde_json::from_slice(&config)?;
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|v| v.as_str().expect("diff id"))
        .collect();
    assert_eq!(diff_ids, img.diff_ids);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), img.layer_digests.len());
    for (i, l) in layers.iter().enumerate() {
        let digest = l["digest"].as_str().expect("layer digest");
        assert_eq!(digest, img.layer_digests[i]);
        let blob = p.get_blob(&img.repository, digest).await?;
        assert_eq!(sha256_digest(&blob), digest);
        assert_eq!(l["size"].as_u64(), Some(blob.len() as u64));
        let mt = l["mediaType"].as_str().expect("layer media type");
        let c = if mt.ends_with("gzip") {
            Compression::GZIP
        } else if mt.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::None
        };
        let tar = decompress(&blob, c)?;
        assert_eq!(sha256_digest(&tar), img.diff_ids[i], "diff_id of layer {i}");
    }
    Ok(())
}

/// Entry names (raw bytes as text) and link names of a layer tar.
fn tar_entries(tar: &[u8]) -> Result<Vec<(String, tar::EntryType, String)>> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let kind = e.header().entry_type();
        let mut sink = Vec::new();
        e.read_to_end(&mut sink)?;
        out.push((name, kind, link));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_serves_every_fixture() -> Result<()> {
    let reg = Registry::start().await?;
    let p = reg.pusher();

    let bb = fixtures::busybox(&p, "library/busybox", &["latest"], Format::Oci, "busybox").await?;
    let docker = fixtures::docker_schema2(&p, "e2e/docker", "v2").await?;
    let oci = fixtures::oci(&p, "e2e/oci", "v1").await?;
    let two = fixtures::two_tags(&p, "e2e/two", ["one", "two"]).await?;
    let multi = fixtures::multi_layer(&p, "e2e/layers", "v1").await?;
    let user = fixtures::with_user(&p, "e2e/user", "uid", "1234").await?;
    let nobody = fixtures::with_user(&p, "e2e/user", "name", "nobody").await?;
    let arch = fixtures::multi_arch(&p, "e2e/multiarch", "v1", Format::Oci).await?;
    let list = fixtures::multi_arch(&p, "e2e/manifestlist", "v1", Format::Docker).await?;
    let zstd = fixtures::zstd(&p, "e2e/zstd", "v1").await?;
    let (corrupt, _) = fixtures::corruptible(&p, "e2e/corrupt", "v1").await?;
    let (sa, sb) = fixtures::shared_base(&p, "e2e/shared-a", "e2e/shared-b", "v1").await?;
    let large = fixtures::large(&p, "e2e/large", "v1", 2, 2, 7).await?;
    let host = HostSentinel::new()?;
    let evil = fixtures::malicious(&p, "e2e/evil", &host).await?;

    let all: Vec<&PushedImage> = [
        &bb, &docker, &oci, &two, &multi, &user, &nobody, &arch, &list, &zstd, &corrupt, &sa, &sb,
        &large,
    ]
    .into_iter()
    .chain(evil.iter().map(|c| &c.image))
    .collect();
    for img in &all {
        verify_pushed(&p, img).await?;
    }
    // Distinct fixtures have distinct image IDs.
    let ids: HashSet<&str> = all.iter().map(|i| i.config_digest.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "fixture image IDs must be distinct");

    // Media types.
    let (ct, _, _) = p.get_manifest("e2e/docker", "v2").await?;
    assert_eq!(ct, "application/vnd.docker.distribution.manifest.v2+json");
    let (ct, _, _) = p.get_manifest("e2e/oci", "v1").await?;
    assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");
    let (ct, _, _) = p.get_manifest("e2e/multiarch", "v1").await?;
    assert_eq!(ct, "application/vnd.oci.image.index.v1+json");
    let (ct, _, _) = p.get_manifest("e2e/manifestlist", "v1").await?;
    assert_eq!(
        ct,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let (_, _, body) = p.get_manifest("e2e/zstd", "v1").await?;
    let m: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    // Two tags, one manifest.
    let (_, d1, _) = p.get_manifest("e2e/two", "one").await?;
    let (_, d2, _) = p.get_manifest("e2e/two", "two").await?;
    assert_eq!(d1, d2);

    // Multi-arch: the configs differ and the amd64 one is what the fixture reports.
    assert_eq!(arch.other_config_digests.len(), 1);
    assert_ne!(arch.other_config_digests[0], arch.config_digest);
    assert_ne!(arch.digest, arch.manifest_digest);

    // Users.
    let cfg: Value = serde_json::from_slice(&p.get_blob("e2e/user", &user.config_digest).await?)?;
    assert_eq!(cfg["config"]["User"], "1234");
    let cfg: Value = serde_json::from_slice(&p.get_blob("e2e/user", &nobody.config_digest).await?)?;
    assert_eq!(cfg["config"]["User"], "nobody");

    // Multi-layer: 3 layers, the middle one holds the whiteout and the opaque marker.
    assert!(multi.layer_digests.len() >= 3);
    let mid = decompress(
        &p.get_blob("e2e/layers", &multi.layer_digests[1]).await?,
        Compression::GZIP,
    )?;
    let names: Vec<String> = tar_entries(&mid)?.into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&"data/.wh.gone".to_string()), "{names:?}");
    assert!(names.contains(&"opq/.wh..wh..opq".to_string()), "{names:?}");
    let top = decompress(
        &p.get_blob("e2e/layers", &multi.layer_digests[2]).await?,
        Compression::GZIP,
    )?;
    let entries = tar_entries(&top)?;
    assert!(entries.iter().any(|(n, k, l)| n == "home/e2e/owned-link"
        && *k == tar::EntryType::Link
        && l == "home/e2e/owned"));

    // Malicious layers really hold the raw escaping entries.
    let h = host.dir().display().to_string();
    let mut seen = HashSet::new();
    for case in &evil {
        let top = case.image.layer_digests.last().expect("layers");
        let repo = &case.image.repository;
        let tar = decompress(&p.get_blob(repo, top).await?, Compression::GZIP)?;
        for (name, kind, link) in tar_entries(&tar)? {
            if name.starts_with("../") {
                seen.insert("dotdot");
            }
            if name.starts_with('/') {
                seen.insert("absolute");
            }
            if kind == tar::EntryType::Symlink && link == h {
                seen.insert("symlink-abs");
            }
            if kind == tar::EntryType::Link && link.ends_with("/sentinel") {
                seen.insert("hardlink");
            }
        }
    }
    for k in ["dotdot", "absolute", "symlink-abs", "hardlink"] {
        assert!(
            seen.contains(k),
            "malicious fixture {k} missing raw entry ({seen:?})"
        );
    }
    host.check()?;

    // Shared base: A's layers are B's bottom layers.
    assert_eq!(sa.layer_digests[..], sb.layer_digests[..2]);
    assert_eq!(sb.chain_ids[..2], sa.chain_ids[..]);

    // Blob GETs show in the access log.
    let n = reg.blob_get_count(&zstd.layer_digests[0]);
    assert!(n >= 1, "blob GETs counted from the access log: {n}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_no_longer_matches_its_digest() -> Result<()> {
    let reg = Registry::start().await?;
    let p = reg.pusher();
    let (img, payload) = fixtures::corruptible(&p, "e2e/corrupt", "v1").await?;
    assert!(reg.blob_path(&payload).is_file());
    let original = reg.corrupt_blob(&payload, fixtures::CORRUPTIBLE_OFFSET)?;
    let served = p.get_blob(&img.repository, &payload).await?;
    assert_eq!(served.len(), original.len());
    assert_ne!(sha256_digest(&served), payload);
    // Still a valid tar: only digest verification can catch it.
    let entries = tar_entries(&served)?;
    assert_eq!(entries[0].0, "payload");
    reg.write_blob(&payload, &original)?;
    assert_eq!(
        sha256_digest(&p.get_blob(&img.repository, &payload).await?),
        payload
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_requires_credentials() -> Result<()> {
    let reg = Registry::start_with_htpasswd("alice", "s3cret").await?;
    let client = http_client();
    let r = client.get(format!("{}/v2/", reg.url())).send().await?;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()
            .get("WWW-Authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic")),
        "basic challenge"
    );
    let r = client
        .get(format!("{}/v2/", reg.url()))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{}/v2/", reg.url()))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // Pushing with the registry's credentials works; reading back too.
    let p = reg.pusher();
    let img = fixtures::oci(&p, "private/busybox", "v1").await?;
    verify_pushed(&p, &img).await?;
    // And anonymous reads are refused.
    let anon = Pusher::new(&reg.url(), None);
    assert!(anon.get_manifest("private/busybox", "v1").await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_proxy_implements_bearer_flow() -> Result<()> {
    let reg = Registry::start().await?;
    let img = fixtures::oci(&reg.pusher(), "library/busybox", "latest").await?;
    let auth = TokenAuth::test_default();
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: Some(auth.clone()),
            throttle_bytes_per_sec: None,
        },
    )
    .await?;
    let client = http_client();
    let manifest_url = format!("{}/v2/library/busybox/manifests/latest", proxy.url());

    // Anonymous: 401 with a bearer challenge naming realm, service and scope.
    let r = client
        .get(&manifest_url)
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["WWW-Authenticate"].to_str()?.to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}\",service=\"berth-test\",scope=\"repository:library/busybox:pull\"",
            proxy.realm()
        )
    );
    let r = client.get(format!("{}/v2/", proxy.url())).send().await?;
    assert_eq!(r.status(), 401);

    // GET /token with basic credentials.
    let token_url = format!(
        "{}?service=berth-test&scope=repository%3Alibrary%2Fbusybox%3Apull",
        proxy.realm()
    );
    let r = client
        .get(&token_url)
        .basic_auth("tokenuser", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = client.get(&token_url).send().await?;
    assert_eq!(r.status(), 401, "anonymous token requests are refused");
    let r = client
        .get(&token_url)
        .basic_auth(&auth.credentials.username, Some(&auth.credentials.password))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    let token = body["token"].as_str().expect("token").to_string();
    assert_eq!(body["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(body["expires_in"], 300);

    let r = client
        .get(&manifest_url)
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["Docker-Content-Digest"].to_str()?, img.digest);
    assert_eq!(
        r.headers()["Content-Type"].to_str()?,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let len: usize = r.headers()["Content-Length"].to_str()?.parse()?;
    let body = r.bytes().await?;
    assert_eq!(body.len(), len);
    assert_eq!(sha256_digest(&body), img.digest);

    // HEAD keeps Content-Length and the digest header.
    let r = client
        .head(&manifest_url)
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["Docker-Content-Digest"].to_str()?, img.digest);
    assert_eq!(r.headers()["Content-Length"].to_str()?, len.to_string());

    // The token is scoped: another repository is refused.
    let r = client
        .get(format!("{}/v2/other/repo/manifests/latest", proxy.url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // Blob through the proxy, streamed intact.
    let blob_url = format!(
        "{}/v2/library/busybox/blobs/{}",
        proxy.url(),
        img.layer_digests[0]
    );
    let r = client.get(&blob_url).bearer_auth(&token).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_digest(&r.bytes().await?), img.layer_digests[0]);
    assert_eq!(proxy.blob_gets(&img.layer_digests[0]), 1);
    assert!(proxy.blob_bytes_served() > 0);

    // POST /token: refresh token (identity token) grant, password grant, wrong ones.
    let form = |body: String| {
        client
            .post(proxy.realm())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = form(format!(
        "grant_type=refresh_token&refresh_token={}&service=berth-test&scope=repository%3Alibrary%2Fbusybox%3Apull&client_id=e2e",
        auth.identity_token
    ))
    .await?;
    assert_eq!(r.status(), 200);
    let t2: Value = r.json().await?;
    let t2 = t2["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let r = client.get(&blob_url).bearer_auth(&t2).send().await?;
    assert_eq!(r.status(), 200);
    let r = form("grant_type=refresh_token&refresh_token=nope&service=berth-test&scope=repository%3Alibrary%2Fbusybox%3Apull&client_id=e2e".into()).await?;
    assert_eq!(r.status(), 401);
    let r = form("grant_type=password&username=tokenuser&password=tokenpass&service=berth-test&scope=repository%3Alibrary%2Fbusybox%3Apull&client_id=e2e".into()).await?;
    assert_eq!(r.status(), 200);
    let r = form("grant_type=password&username=tokenuser&password=bad&service=berth-test&scope=x&client_id=e2e".into()).await?;
    assert_eq!(r.status(), 401);

    // The pre-shared registry token works directly; a made-up one does not.
    let r = client
        .get(&manifest_url)
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&auth.registry_token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = client
        .get(&manifest_url)
        .bearer_auth("made-up")
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // Counting.
    assert_eq!(
        proxy.count("GET", "/v2/library/busybox/manifests/latest"),
        4
    );
    assert_eq!(proxy.token_requests().len(), 7);
    let counts = proxy.counts();
    assert_eq!(counts.get("POST /token"), Some(&4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_proxy_streams_slowly_and_can_be_sped_up() -> Result<()> {
    let reg = Registry::start().await?;
    let img = fixtures::large(&reg.pusher(), "e2e/large", "v1", 1, 2, 3).await?;
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: None,
            throttle_bytes_per_sec: Some(4 << 20),
        },
    )
    .await?;
    let url = format!(
        "{}/v2/e2e/large/blobs/{}",
        proxy.url(),
        img.layer_digests[0]
    );
    let start = std::time::Instant::now();
    let r = http_client().get(&url).send().await?;
    let body = r.bytes().await?;
    let took = start.elapsed();
    assert_eq!(sha256_digest(&body), img.layer_digests[0]);
    // ~2 MiB at 4 MiB/s: at least a third of a second.
    assert!(took.as_millis() >= 300, "throttle had no effect ({took:?})");
    proxy.set_throttle(None);
    let body = http_client().get(&url).send().await?.bytes().await?;
    assert_eq!(sha256_digest(&body), img.layer_digests[0]);
    assert_eq!(proxy.blob_gets(&img.layer_digests[0]), 2);
    assert_eq!(reg.blob_get_count(&img.layer_digests[0]), 2);
    Ok(())
}

#[test]
fn image_builder_is_deterministic() -> Result<()> {
    let a = busybox_layer(Compression::GZIP)?;
    let b = busybox_layer(Compression::GZIP)?;
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.diff_id, b.diff_id);
    let z = busybox_layer(Compression::Zstd)?;
    assert_eq!(z.diff_id, a.diff_id, "same tar whatever the compression");
    assert_ne!(z.digest, a.digest);
    let ids = e2e::image::chain_ids(&["sha256:a".into(), "sha256:b".into()]);
    assert_eq!(ids[0], "sha256:a");
    assert_eq!(ids[1], sha256_digest(b"sha256:a sha256:b"));
    Ok(())
}

#[test]
fn berthd_binary_override_must_exist() {
    let err = e2e::berthd::berthd_binary_from(Some("/nonexistent/berthd".into()))
        .expect_err("a missing override is an error");
    assert!(err.to_string().contains("/nonexistent/berthd"), "{err}");
}

#[test]
fn credentials_encode_like_docker() {
    let c = Credentials::new("alice", "s3cret");
    assert_eq!(c.auth_b64(), "YWxpY2U6czNjcmV0");
    assert_eq!(c.basic_header(), "Basic YWxpY2U6czNjcmV0");
}

#[test]
fn host_sentinel_detects_every_kind_of_escape() -> Result<()> {
    let h = HostSentinel::new()?;
    h.check()?;
    std::fs::write(h.dir().join("pwned"), b"x")?;
    assert!(h.check().is_err(), "a new file is detected");
    std::fs::remove_file(h.dir().join("pwned"))?;
    h.check()?;

    let other = tempfile::tempdir()?;
    let link = other.path().join("hl");
    std::fs::hard_link(h.sentinel(), &link)?;
    assert!(
        h.check().is_err(),
        "a hard link to the sentinel is detected"
    );
    std::fs::remove_file(&link)?;
    h.check()?;

    std::fs::write(h.sentinel(), b"changed")?;
    let err = h.check().expect_err("changed content is detected");
    assert!(err.to_string().contains("content changed"), "{err}");
    std::fs::write(h.sentinel(), fixtures::SENTINEL_CONTENT)?;
    h.check()?;

    let replacement = other.path().join("replacement");
    std::fs::write(&replacement, fixtures::SENTINEL_CONTENT)?;
    std::fs::copy(&replacement, h.dir().join("new"))?;
    std::fs::rename(h.dir().join("new"), h.sentinel())?;
    assert!(
        h.check().is_err(),
        "a replaced sentinel (new inode) is detected"
    );
    Ok(())
}
