//! Full disks (issue 14), on small tmpfs mounts of the tests' own: a pull into a root dir
//! too small for the image fails with ResourceExhausted naming the path, leaves nothing
//! partial, and succeeds once the filesystem grows; a full log volume does not stop or
//! block the container, the monitor resumes writing once there is space, the log stays
//! well-formed, and berthd's log says what was lost.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::cri_api::ContainerState;
use e2e::fixtures;
use e2e::pods::{PodEnv, parse_cri_log};
use e2e::tmpfs::Tmpfs;
use e2e::util::sha256_digest;
use e2e::{Berthd, BerthdOptions, Code, Registry, poll_until};

const MIB: u64 = 1024;

/// Everything under the image store is whole: no staging or temporary name anywhere, every
/// layer directory has its metadata, every blob matches its digest.
fn assert_nothing_partial(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.ends_with(".tmp") {
                bail!("temporary file left: {}", e.path().display());
            }
            // Layer contents are checked as a whole by their layer.json below.
            if e.file_type()?.is_dir() && !dir.ends_with("layers") {
                stack.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("layers")) {
        for e in rd.flatten() {
            let meta = e.path().join("layer.json");
            if !meta.is_file() {
                bail!("layer directory without metadata: {}", e.path().display());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("blobs/sha256")) {
        for e in rd.flatten() {
            let data = std::fs::read(e.path())?;
            let want = format!("sha256:{}", e.file_name().to_string_lossy());
            if sha256_digest(&data) != want {
                bail!("blob {} does not match its name", e.path().display());
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_into_a_full_root_is_resource_exhausted_and_succeeds_once_space_returns()
-> Result<()> {
    let reg = Registry::start().await?;
    // Two layers of 6 MiB of random data: 12 MiB unpacked, on an 8 MiB root.
    let img = fixtures::large(&reg.pusher(), "e2e/fullroot", "v1", 2, 6, 0xF011).await?;
    let mut berthd = Berthd::prepare(BerthdOptions::with_registry(&reg.addr()))?;
    let mut root = Tmpfs::mount(&berthd.root(), 8 * MIB)?;
    berthd.launch().await?;
    let cri = berthd.cri().await?;

    let err = cri
        .pull("e2e/fullroot:v1")
        .await
        .expect_err("the image does not fit in the root dir");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let root_path = berthd.root().display().to_string();
    assert!(
        err.message().contains(&root_path),
        "the message names the path under the root dir {root_path}: {}",
        err.message()
    );
    assert!(
        err.message().contains("no space left on device"),
        "{}",
        err.message()
    );
    assert!(cri.image_status("e2e/fullroot:v1").await?.is_none());
    assert!(cri.image_status(img.id()).await?.is_none());
    assert!(cri.list_images().await?.is_empty(), "no image listed");
    assert_nothing_partial(&berthd.root())?;
    // A second try on the full disk fails the same way (nothing half-done is reused).
    let again = cri.pull("e2e/fullroot:v1").await.expect_err("still full");
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    assert_nothing_partial(&berthd.root())?;

    root.resize(64 * MIB)?;
    let id = cri
        .pull("e2e/fullroot:v1")
        .await
        .context("the same pull once space returns")?;
    assert_eq!(id, img.id());
    let st = cri
        .image_status("e2e/fullroot:v1")
        .await?
        .context("image listed after the pull")?;
    assert_eq!(st.id, img.config_digest);
    assert!(
        st.repo_digests.iter().any(|d| d.ends_with(&img.digest)),
        "{:?}",
        st.repo_digests
    );
    for (i, chain) in img.chain_ids.iter().enumerate() {
        let f = berthd.layer_dir(chain).join(format!("payload-{i}"));
        let len = std::fs::metadata(&f)
            .with_context(|| f.display().to_string())?
            .len();
        assert_eq!(len, 6 << 20, "{} is whole", f.display());
    }
    assert_nothing_partial(&berthd.root())?;

    berthd.terminate();
    root.unmount()?;
    Ok(())
}

/// The counter the container increments, read with ExecSync (not through the log).
async fn counter(env: &PodEnv, cid: &str) -> Result<u64> {
    let out = env.exec_ok(cid, &["cat", "/counter"]).await?;
    out.trim()
        .parse()
        .with_context(|| format!("counter {out:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_volume_never_stops_the_container_and_logging_resumes() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let log_dir = env.logs_root().join("full-volume");
    std::fs::create_dir_all(&log_dir)?;
    let mut volume = Tmpfs::mount(&log_dir, 2 * MIB)?;
    // Half the volume is a filler file the test deletes to give space back.
    let filler = log_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20])?;

    let mut pod = env.pod_config("fulllog");
    let pod_logs = log_dir.join("pod");
    std::fs::create_dir_all(&pod_logs)?;
    pod.log_directory = pod_logs.display().to_string();
    let pod_id = env.run_pod(&pod).await?;
    // ~4 MB of output at once (more than the volume holds, as log entries even more), a
    // marker, then a tick a few times a second with a counter in the rootfs.
    let c = env.sh_container(
        "noisy",
        "yes burst-line | head -c 4000000; echo after-burst; i=0; \
         while true; do i=$((i+1)); echo $i > /counter; echo tick $i; sleep 0.1; done",
    );
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let log = PodEnv::log_file(&pod, &c);

    // The volume fills up.
    poll_until(Duration::from_secs(30), "the log volume to fill", || {
        let free = volume.free_bytes();
        async move { Ok((free? < 8192).then_some(())) }
    })
    .await?;
    // Full, the container still runs and its loop goes on (the monitor drains its output).
    let first = poll_until(Duration::from_secs(20), "the counter to start", || async {
        Ok(counter(&env, &cid).await.ok())
    })
    .await?;
    poll_until(
        Duration::from_secs(20),
        "the counter to go on while the log is full",
        || async { Ok(counter(&env, &cid).await.ok().filter(|n| *n > first + 5)) },
    )
    .await?;
    let st = env.container_status(&cid).await?;
    assert_eq!(st.state(), ContainerState::ContainerRunning, "{st:?}");
    assert!(volume.free_bytes()? < 8192, "still full");
    let berthd_log = env.berthd.log_path();
    poll_until(
        Duration::from_secs(10),
        "berthd's log to say the container log cannot be written",
        || {
            let text = std::fs::read_to_string(&berthd_log).unwrap_or_default();
            let cid = cid.clone();
            async move {
                Ok(text
                    .lines()
                    .any(|l| l.contains("container log cannot be written") && l.contains(&cid))
                    .then_some(()))
            }
        },
    )
    .await?;

    // Space returns: new lines appear after the gap.
    let during = counter(&env, &cid).await?;
    std::fs::remove_file(&filler)?;
    let resumed = poll_until(Duration::from_secs(20), "tick lines after the gap", || {
        let log = log.clone();
        async move {
            let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
            let entries = parse_cri_log(&text)?;
            Ok(entries
                .iter()
                .filter_map(|e| e.content.strip_prefix("tick ")?.parse::<u64>().ok())
                .find(|n| *n > during))
        }
    })
    .await?;
    assert!(resumed > during);
    // Every line of the log is `<RFC3339Nano> <stdout|stderr> <P|F> <content>`, the last one
    // complete.
    let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
    assert!(text.ends_with('\n'), "the log ends with a whole line");
    let entries = parse_cri_log(&text)?;
    assert!(entries.iter().any(|e| e.content == "burst-line"));
    assert!(entries.iter().all(|e| e.stream == "stdout"));
    // berthd's log says how much was lost.
    let lost_line = poll_until(
        Duration::from_secs(10),
        "berthd's log to report the lost output",
        || {
            let text = std::fs::read_to_string(&berthd_log).unwrap_or_default();
            let cid = cid.clone();
            async move {
                Ok(text
                    .lines()
                    .find(|l| l.contains("bytes of output") && l.contains(&cid))
                    .map(str::to_string))
            }
        },
    )
    .await?;
    let lost: u64 = lost_line
        .split("lost_bytes=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("lost_bytes in {lost_line:?}"))?;
    assert!(lost > 0, "{lost_line}");
    let st = env.container_status(&cid).await?;
    assert_eq!(st.state(), ContainerState::ContainerRunning, "{st:?}");

    env.stop_container(&cid, 0).await?;
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    volume.unmount()?;
    Ok(())
}
