//! What bad input gets: malformed references, unknown images, unreachable and blocked
//! registries, blobs that do not match their digest, malicious layers, and empty or absurd
//! request fields. Every case answers a gRPC status, and berthd keeps running.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use anyhow::Result;
use e2e::cri_api::{
    AuthConfig, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use e2e::fixtures::{self, ESCAPE_NAMES, HostSentinel};
use e2e::util::{closed_port, digest_hex, find_named, walk};
use e2e::{Berthd, BerthdOptions, Code, Cri, Format, RegistryEntry, registry_and_berthd};
use e2e::{Registry, Status};

async fn assert_alive(cri: &Cri) {
    let v = cri
        .version()
        .await
        .expect("berthd still answers Version after bad input");
    assert_eq!(v.runtime_name, "berth");
}

fn assert_code(r: Result<String, Status>, codes: &[Code], what: &str) -> Status {
    match r {
        Ok(id) => panic!("{what}: expected {codes:?}, got OK ({id})"),
        Err(s) => {
            assert!(
                codes.contains(&s.code()),
                "{what}: expected {codes:?}, got {s:?}"
            );
            s
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_references_are_invalid_argument() -> Result<()> {
    let (_reg, berthd) = registry_and_berthd().await?;
    let cri = berthd.cri().await?;
    for bad in [
        "Busybox:latest",
        "busybox:bad tag",
        "busybox:tag!",
        "busybox@sha256:1234",
        "docker.io/library/busybox:",
        "a//b",
        "busybox::latest",
        "-leading-dash",
        "trailing-slash/",
        "white space",
        "busybox:latest@",
    ] {
        let s = assert_code(cri.pull(bad).await, &[Code::InvalidArgument], bad);
        assert!(
            s.message().contains(bad),
            "the message names the reference {bad:?}: {:?}",
            s.message()
        );
    }
    assert_alive(&cri).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tag_or_repository_is_not_found() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::oci(&reg.pusher(), "library/busybox", "latest").await?;
    let cri = berthd.cri().await?;
    assert_code(
        cri.pull("busybox:no-such-tag").await,
        &[Code::NotFound],
        "unknown tag",
    );
    assert_code(
        cri.pull("no/such-repo:v1").await,
        &[Code::NotFound],
        "unknown repository",
    );
    let missing = format!("busybox@sha256:{}", "ab".repeat(32));
    assert_code(
        cri.pull(&missing).await,
        &[Code::NotFound],
        "unknown digest",
    );
    assert!(cri.list_images().await?.is_empty());
    // The registry works for a known image.
    assert_eq!(cri.pull("busybox").await?, img.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_registry_is_unavailable_naming_the_host() -> Result<()> {
    let reg = Registry::start().await?;
    let port = closed_port()?;
    let dead = format!("127.0.0.1:{port}");
    let berthd = Berthd::start(
        BerthdOptions::with_registry(&reg.addr()).entry(RegistryEntry::mapped(&dead, &dead)),
    )
    .await?;
    let cri = berthd.cri().await?;
    let r = format!("{dead}/library/busybox:latest");
    let s = assert_code(
        cri.pull(&r).await,
        &[Code::Unavailable],
        "unreachable registry",
    );
    assert!(
        s.message().contains(&dead),
        "the message names {dead}: {:?}",
        s.message()
    );
    assert!(cri.list_images().await?.is_empty());
    assert_alive(&cri).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_registry_is_permission_denied() -> Result<()> {
    let reg = Registry::start().await?;
    // A second registry that has the image: ignoring `blocked` would pull from it
    // successfully (from 127.0.0.1 only).
    let blocked = Registry::start().await?;
    fixtures::oci(&reg.pusher(), "library/busybox", "latest").await?;
    fixtures::oci(&blocked.pusher(), "library/busybox", "latest").await?;
    let berthd = Berthd::start(
        BerthdOptions::with_registry(&reg.addr())
            .entry(RegistryEntry::blocked(&blocked.addr(), &blocked.addr())),
    )
    .await?;
    let cri = berthd.cri().await?;
    let r = format!("{}/library/busybox:latest", blocked.addr());
    assert_code(
        cri.pull(&r).await,
        &[Code::PermissionDenied],
        "blocked registry",
    );
    assert!(cri.list_images().await?.is_empty());
    assert_eq!(
        blocked.content_gets(),
        0,
        "nothing fetched from a blocked registry"
    );
    // The same image through an allowed name works.
    cri.pull("busybox").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_digest_mismatch_fails_and_stores_nothing() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let (img, payload) = fixtures::corruptible(&reg.pusher(), "e2e/corrupt", "v1").await?;
    let original = reg.corrupt_blob(&payload, fixtures::CORRUPTIBLE_OFFSET)?;
    let cri = berthd.cri().await?;

    let err = cri
        .pull("e2e/corrupt:v1")
        .await
        .expect_err("a corrupted blob must fail the pull");
    assert_ne!(err.code(), Code::Ok);
    assert!(cri.list_images().await?.is_empty(), "no image record");
    assert!(cri.image_status("e2e/corrupt:v1").await?.is_none());
    assert!(cri.image_status(img.id()).await?.is_none());
    // Nothing of the corrupted layer is kept: no layer dir, no file named by its digest or
    // chain ID anywhere under root.
    let payload_chain = &img.chain_ids[1];
    assert!(
        !berthd.layer_dir(payload_chain).exists(),
        "no layer dir for the bad layer"
    );
    for needle in [digest_hex(&payload), digest_hex(payload_chain)] {
        let found = find_named(&berthd.root(), needle);
        assert!(
            found.is_empty(),
            "files named after the bad layer remain: {found:?}"
        );
    }
    // And no unpacked file of it either.
    let payload_files: Vec<_> = berthd
        .layer_dirs()
        .into_iter()
        .filter(|(_, d)| d.join("payload").exists())
        .collect();
    assert!(payload_files.is_empty(), "{payload_files:?}");

    // Repaired in the registry, the same pull now works: no poisoned cache.
    reg.write_blob(&payload, &original)?;
    assert_eq!(cri.pull("e2e/corrupt:v1").await?, img.id());
    assert_eq!(
        std::fs::read(berthd.layer_dir(payload_chain).join("payload"))?,
        vec![b'A'; 8192]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_config_fails_the_pull() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let img = fixtures::oci(&reg.pusher(), "e2e/badconfig", "v1").await?;
    // Flip a byte inside a JSON string so the config stays parseable.
    let original = std::fs::read(reg.blob_path(&img.config_digest))?;
    let at = original
        .windows(6)
        .position(|w| w == b"berth ")
        .expect("author string in config");
    reg.corrupt_blob(&img.config_digest, at)?;
    let cri = berthd.cri().await?;
    cri.pull("e2e/badconfig:v1")
        .await
        .expect_err("a config that does not match its digest must fail the pull");
    assert!(cri.list_images().await?.is_empty());
    assert_alive(&cri).await;
    Ok(())
}

/// `path` lies inside some `<root>/layers/<id>/diff/`.
fn inside_a_layer_diff(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let c: Vec<Component> = rel.components().collect();
    c.len() > 3 && c[0].as_os_str() == "layers" && c[2].as_os_str() == "diff"
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_layers_never_write_outside_the_layer_dir() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    let host = HostSentinel::new()?;
    let cases = fixtures::malicious(&reg.pusher(), "e2e/evil", &host).await?;
    let cri = berthd.cri().await?;
    let mut outcomes = Vec::new();
    for case in &cases {
        // Rejecting the layer or sanitizing the entries are both fine; escaping is not.
        let r = cri.pull(&format!("{}:latest", case.image.repository)).await;
        if let Ok(id) = &r {
            assert_eq!(id, case.image.id(), "{}", case.name);
        }
        outcomes.push(format!(
            "{}: {:?}",
            case.name,
            r.as_ref().map_err(|s| s.code())
        ));
        host.check()
            .map_err(|e| anyhow::anyhow!("attack {} escaped: {e}", case.name))?;
        assert_alive(&cri).await;
    }
    // Files the attacks try to create may only exist inside a layer's diff dir.
    for name in ESCAPE_NAMES {
        for p in find_named(berthd.dir(), name) {
            assert!(
                inside_a_layer_diff(&berthd.root(), &p),
                "{} escaped its layer dir",
                p.display()
            );
        }
    }
    for p in [
        "/escape-dotdot",
        "/abs-escape",
        "/tmp/escape-dotdot",
        "/tmp/abs-escape",
    ] {
        assert!(!Path::new(p).exists(), "{p} was created");
    }
    // No symlink inside the layers resolves to a changed host: checked above; also nothing
    // in berth's dirs is a hard link to the sentinel.
    let sm = std::fs::metadata(host.sentinel())?;
    for p in walk(berthd.dir()) {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            assert!(
                !(m.is_file() && m.ino() == sm.ino() && m.dev() == sm.dev()),
                "{} is a hard link to the host sentinel",
                p.display()
            );
        }
    }
    eprintln!("malicious layer outcomes: {outcomes:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_and_absurd_fields_get_an_error_not_a_crash() -> Result<()> {
    let (reg, mut berthd) = registry_and_berthd().await?;
    fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "absurd",
    )
    .await?;
    let cri = berthd.cri().await?;
    let huge = format!("busybox:{}", "a".repeat(100 * 1024));
    let huge_name = format!("{}/busybox", "x".repeat(100 * 1024));

    let pulls: Vec<(&str, PullImageRequest)> = vec![
        ("PullImage image=None", PullImageRequest::default()),
        (
            "PullImage image=\"\"",
            PullImageRequest {
                image: Some(ImageSpec::default()),
                ..Default::default()
            },
        ),
        (
            "PullImage 100 KB tag",
            PullImageRequest {
                image: Some(e2e::spec(&huge)),
                ..Default::default()
            },
        ),
        (
            "PullImage 100 KB name",
            PullImageRequest {
                image: Some(e2e::spec(&huge_name)),
                ..Default::default()
            },
        ),
        (
            "PullImage NUL byte",
            PullImageRequest {
                image: Some(e2e::spec("busy\0box")),
                ..Default::default()
            },
        ),
        (
            "PullImage only spaces",
            PullImageRequest {
                image: Some(e2e::spec("   ")),
                ..Default::default()
            },
        ),
        (
            "PullImage only @",
            PullImageRequest {
                image: Some(e2e::spec("@")),
                ..Default::default()
            },
        ),
        (
            "PullImage only :",
            PullImageRequest {
                image: Some(e2e::spec(":")),
                ..Default::default()
            },
        ),
    ];
    for (what, req) in pulls {
        let r = cri.pull_request(req).await;
        assert!(r.is_err(), "{what}: expected an error, got {r:?}");
        assert_alive(&cri).await;
    }

    let statuses: Vec<(&str, ImageStatusRequest)> = vec![
        (
            "ImageStatus image=None",
            ImageStatusRequest {
                image: None,
                verbose: true,
            },
        ),
        (
            "ImageStatus image=\"\"",
            ImageStatusRequest {
                image: Some(ImageSpec::default()),
                verbose: false,
            },
        ),
    ];
    for (what, req) in statuses {
        let r = cri.image_status_request(req).await;
        assert!(r.is_err(), "{what}: expected an error, got {r:?}");
        assert_alive(&cri).await;
    }
    // Absurd but well-formed names are simply unknown (or rejected): never a crash.
    let _ = cri.image_status(&huge).await;
    let _ = cri.image_status("busy\0box").await;
    assert_alive(&cri).await;

    let removes: Vec<(&str, RemoveImageRequest)> = vec![
        ("RemoveImage image=None", RemoveImageRequest { image: None }),
        (
            "RemoveImage image=\"\"",
            RemoveImageRequest {
                image: Some(ImageSpec::default()),
            },
        ),
    ];
    for (what, req) in removes {
        let r = cri.remove_image_request(req).await;
        assert!(r.is_err(), "{what}: expected an error, got {r:?}");
        assert_alive(&cri).await;
    }
    let _ = cri.remove_image(&huge).await;
    assert_alive(&cri).await;

    // ListImages with an empty filter spec: whatever it answers, berthd survives.
    let _ = cri
        .list_images_request(ListImagesRequest {
            filter: Some(e2e::cri_api::ImageFilter {
                image: Some(ImageSpec::default()),
            }),
        })
        .await;
    let _ = cri.list_images_filtered(&huge).await;
    assert_alive(&cri).await;

    // Junk auth against an open registry: a status either way, no crash.
    let junk = AuthConfig {
        auth: "!!!not base64!!!".into(),
        ..Default::default()
    };
    let _ = cri.pull_with("busybox", Some(junk)).await;
    let no_colon = AuthConfig {
        auth: base64_encode("no-colon-here"),
        ..Default::default()
    };
    let _ = cri.pull_with("busybox", Some(no_colon)).await;
    assert_alive(&cri).await;

    // A message above the gRPC limit is refused by the transport, and berthd lives on.
    let giant = format!("busybox:{}", "b".repeat(20 << 20));
    assert!(cri.pull(&giant).await.is_err());
    let cri = berthd.cri().await?;
    assert_alive(&cri).await;
    assert!(berthd.is_running(), "berthd did not crash");

    // After all that, a normal pull still works.
    cri.pull("busybox").await?;
    Ok(())
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A pull whose deadline (`grpc-timeout`) passes ends DEADLINE_EXCEEDED, gRPC's code for it
/// and what critest's "public image should timeout if requested" wants, never the CANCELLED
/// tonic's server answers by itself; it leaves no image, and the same pull without a
/// deadline then succeeds. The call is made by hand (`rawgrpc`) so that no client timer
/// races the server's answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_past_its_deadline_is_deadline_exceeded() -> Result<()> {
    let (reg, berthd) = registry_and_berthd().await?;
    fixtures::large(&reg.pusher(), "e2e/slow", "v1", 4, 16, 77).await?;
    let cri = berthd.cri().await?;
    let req = PullImageRequest {
        image: Some(e2e::cri::spec("e2e/slow:v1")),
        ..Default::default()
    };
    for timeout in ["1m", "2m", "30m", "100m"] {
        let a = e2e::rawgrpc::call(
            &berthd.socket(),
            "/runtime.v1.ImageService/PullImage",
            &req,
            timeout,
        )
        .await?;
        assert_eq!(
            a.code,
            Code::DeadlineExceeded as i32,
            "grpc-timeout {timeout}: {a:?}"
        );
    }
    assert!(cri.image_status("e2e/slow:v1").await?.is_none());
    cri.pull("e2e/slow:v1").await?;
    assert!(cri.image_status("e2e/slow:v1").await?.is_some());
    assert_alive(&cri).await;
    Ok(())
}
