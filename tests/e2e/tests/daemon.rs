//! berthd as a process: RuntimeService basics, the socket (mode, owner, stale file,
//! removal on SIGTERM), flags, and Prometheus metrics.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::berthd::run_berthd_once;
use e2e::cri_api::{CgroupDriver, CheckpointContainerRequest, RuntimeConfigRequest};
use e2e::metrics;
use e2e::{Berthd, BerthdOptions, Code, Format, Registry, fixtures};

const GRPC_CODE_NAMES: &[&str] = &[
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[tokio::test(flavor = "multi_thread")]
async fn version_status_and_runtime_config() -> Result<()> {
    let berthd = Berthd::start(BerthdOptions::default()).await?;
    let cri = berthd.cri().await?;

    let v = cri.version().await?;
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty(), "runtime_version is set");
    assert!(!v.version.is_empty(), "version is set");

    let s = cri.status(false).await?;
    let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert!(
        handlers.contains(&"") && handlers.contains(&"runc") && handlers.contains(&"crun"),
        "the default and the configured runtime handlers are reported: {handlers:?}"
    );
    let conditions = s.status.expect("status").conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady condition");
    assert!(runtime.status, "RuntimeReady is true: {runtime:?}");
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition");
    // The harness gives every berthd a CNI network of its own, so the network is ready.
    assert!(
        network.status,
        "NetworkReady with a CNI config: {network:?}"
    );

    let mut rt = cri.runtime.clone();
    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(
        rc.linux.expect("linux runtime config").cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );

    // An RPC of a later issue: an error status (Unimplemented for now; a later
    // implementation will reject the empty ID), never OK, never a crash.
    let err = rt
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .expect_err("CheckpointContainer with an empty request must fail");
    assert!(
        matches!(
            err.code(),
            Code::Unimplemented | Code::InvalidArgument | Code::NotFound
        ),
        "{err:?}"
    );
    cri.version().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_is_0660_root_owned() -> Result<()> {
    let berthd = Berthd::start(BerthdOptions::default()).await?;
    let meta = std::fs::symlink_metadata(berthd.socket())?;
    assert!(
        meta.file_type().is_socket(),
        "{:?} is a socket",
        berthd.socket()
    );
    assert_eq!(
        meta.mode() & 0o777,
        0o660,
        "socket mode {:o}",
        meta.mode() & 0o7777
    );
    assert_eq!(meta.uid(), 0, "socket owner");
    assert_eq!(meta.gid(), 0, "socket group");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_socket_from_a_crash_is_replaced() -> Result<()> {
    // A socket file nobody listens on, as a crash leaves it.
    let mut berthd = Berthd::prepare(BerthdOptions::default())?;
    {
        let l = std::os::unix::net::UnixListener::bind(berthd.socket())?;
        drop(l);
    }
    assert!(berthd.socket().exists());
    berthd.launch().await?;
    berthd.cri().await?.version().await?;

    // And after a real crash (kill -9), a restart on the same dirs works too.
    berthd.kill9()?;
    berthd.restart().await?;
    let cri = berthd.cri().await?;
    assert_eq!(cri.version().await?.runtime_name, "berth");
    let meta = std::fs::symlink_metadata(berthd.socket())?;
    assert_eq!(meta.mode() & 0o777, 0o660);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_removes_the_socket() -> Result<()> {
    let mut berthd = Berthd::start(BerthdOptions::default()).await?;
    // An open client connection must not keep berthd from stopping.
    let cri = berthd.cri().await?;
    cri.version().await?;
    let start = Instant::now();
    berthd.sigterm()?;
    let status = berthd.wait_exit(Duration::from_secs(15)).await?;
    assert!(
        status.success(),
        "berthd exit status after SIGTERM: {status}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert!(!berthd.socket().exists(), "socket removed on shutdown");
    drop(cri);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_also_shuts_down_cleanly() -> Result<()> {
    let mut berthd = Berthd::start(BerthdOptions::default()).await?;
    berthd.signal(nix::sys::signal::Signal::SIGINT)?;
    let status = berthd.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status after SIGINT: {status}");
    assert!(!berthd.socket().exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn print_default_config_is_usable() -> Result<()> {
    let out = run_berthd_once(&["--print-default-config"], Duration::from_secs(15)).await?;
    assert!(out.status.success(), "exit status {}", out.status);
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("[image]"), "default config:\n{text}");
    assert!(text.contains('#'), "the default config is commented");

    // berthd itself accepts what it printed (flags override root/state/socket).
    let mut berthd = Berthd::prepare(BerthdOptions::default())?;
    std::fs::write(berthd.config_path(), &text)?;
    berthd.launch().await?;
    berthd.cri().await?.version().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_explicit_config_is_an_error_naming_the_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("does-not-exist/berth.toml");
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    let out = run_berthd_once(
        &[
            "--config",
            missing.to_str().expect("utf-8"),
            "--root",
            root.to_str().expect("utf-8"),
            "--state",
            state.to_str().expect("utf-8"),
        ],
        Duration::from_secs(15),
    )
    .await?;
    assert!(
        !out.status.success(),
        "berthd must fail with a missing --config"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(missing.to_str().expect("utf-8")),
        "stderr must name the missing file: {stderr}"
    );
    assert!(!state.join("berth.sock").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_config_is_an_error() -> Result<()> {
    let mut berthd = Berthd::prepare(BerthdOptions::default())?;
    std::fs::write(berthd.config_path(), "[image\nthis is = not toml ]]\n")?;
    berthd.spawn()?;
    let status = berthd.wait_exit(Duration::from_secs(15)).await?;
    assert!(!status.success(), "berthd must refuse a broken config");
    let log = std::fs::read_to_string(berthd.log_path())?;
    assert!(
        log.contains(berthd.config_path().to_str().expect("utf-8")),
        "the error names the config file:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_errors_and_pulls() -> Result<()> {
    let reg = Registry::start().await?;
    let img = fixtures::busybox(
        &reg.pusher(),
        "library/busybox",
        &["latest"],
        Format::Oci,
        "metrics",
    )
    .await?;
    let berthd = Berthd::start(BerthdOptions::with_registry(&reg.addr()).metrics()).await?;
    let cri = berthd.cri().await?;

    let id = cri.pull("busybox").await?;
    assert_eq!(id, img.id());
    cri.version().await?;
    // A failing call: ImageStatus with no image spec at all.
    let err = cri
        .image_status_request(e2e::cri_api::ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .expect_err("ImageStatus without an image spec must fail");
    let failed_code = format!("{:?}", err.code());

    let text = berthd.metrics().await?;
    let samples = metrics::parse(&text);
    let ctx = || format!("metrics:\n{text}");

    assert!(
        metrics::sum(
            &samples,
            "berth_cri_requests_total",
            &[("method", "PullImage")]
        ) >= 1.0,
        "PullImage request counted; {}",
        ctx()
    );
    assert!(
        metrics::sum(
            &samples,
            "berth_cri_requests_total",
            &[("method", "Version")]
        ) >= 1.0,
        "Version request counted; {}",
        ctx()
    );
    let buckets = metrics::find(
        &samples,
        "berth_cri_request_duration_seconds_bucket",
        &[("method", "PullImage")],
    );
    assert!(!buckets.is_empty(), "latency histogram buckets; {}", ctx());
    assert!(
        buckets
            .iter()
            .any(|b| b.label("le") == Some("+Inf") && b.value >= 1.0),
        "+Inf bucket counts the pull; {}",
        ctx()
    );
    assert!(
        metrics::sum(&samples, "berth_image_pull_bytes_total", &[]) > 0.0,
        "pull bytes counted; {}",
        ctx()
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name.starts_with("berth_image_pull_duration_seconds")),
        "pull duration recorded; {}",
        ctx()
    );
    let errors = metrics::find(
        &samples,
        "berth_cri_errors_total",
        &[("method", "ImageStatus")],
    );
    assert!(!errors.is_empty(), "ImageStatus error counted; {}", ctx());
    for e in &errors {
        let code = e.label("code").expect("code label");
        assert!(
            GRPC_CODE_NAMES.contains(&code),
            "code label {code:?} is a gRPC code name"
        );
    }
    assert!(
        errors
            .iter()
            .any(|e| e.label("code") == Some(failed_code.as_str()) && e.value >= 1.0),
        "error series with code={failed_code}; {}",
        ctx()
    );
    // Successful calls add no error series.
    assert_eq!(
        metrics::sum(&samples, "berth_cri_errors_total", &[("method", "Version")]),
        0.0,
        "{}",
        ctx()
    );
    Ok(())
}

/// kubelet and crictl up to 1.26 send the socket path as `:authority`, which the HTTP/2
/// server under berth refuses on its own: berth rewrites it, on a connection whose later
/// requests name their headers by dynamic-table index.
#[tokio::test(flavor = "multi_thread")]
async fn socket_path_authority_of_old_clients_is_served() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    fn literal(block: &mut Vec<u8>, s: &[u8]) {
        block.push(u8::try_from(s.len()).unwrap());
        block.extend_from_slice(s);
    }

    let berthd = Berthd::start(BerthdOptions::default()).await?;
    let socket = berthd.socket();
    // A first block that indexes every field, as grpc-go does, then one that refers to them.
    let mut first = vec![0x83, 0x86, 0x44];
    literal(&mut first, b"/runtime.v1.RuntimeService/Version");
    first.push(0x41);
    literal(&mut first, socket.as_os_str().as_encoded_bytes());
    first.push(0x5f);
    literal(&mut first, b"application/grpc");
    first.push(0x40);
    literal(&mut first, b"te");
    literal(&mut first, b"trailers");
    let second = [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe];
    let request = [0, 0, 0, 0, 4, 0x0a, 0x02, b'v', b'1'];
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    for (stream, block) in [(1u32, &first[..]), (3, &second[..])] {
        frame(&mut out, 1, 0x4, stream, block);
        frame(&mut out, 0, 0x1, stream, &request);
    }
    let mut conn = tokio::net::UnixStream::connect(&socket).await?;
    conn.write_all(&out).await?;

    let mut data: [Vec<u8>; 2] = [vec![], vec![]];
    let mut ended = [false, false];
    let read = async {
        while !ended.iter().all(|e| *e) {
            let mut head = [0u8; 9];
            conn.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await?;
            anyhow::ensure!(
                kind != 3 && kind != 7,
                "berthd reset the stream or the connection (frame type {kind}, payload {payload:?})"
            );
            let slot = match stream {
                1 => 0,
                3 => 1,
                _ => continue,
            };
            if kind == 0 {
                data[slot].extend_from_slice(&payload);
            }
            if flags & 0x1 != 0 {
                ended[slot] = true;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer to both requests within 10 s"))??;
    for (i, d) in data.iter().enumerate() {
        assert!(
            d.windows(5).any(|w| w == b"berth"),
            "request {i}: the answer names the runtime: {d:?}"
        );
    }
    Ok(())
}
