//! Pods and containers for the e2e tests: a [`PodEnv`] (berthd, optionally a registry with
//! busybox pulled, a temporary log directory) whose drop removes every pod berthd knows
//! before berthd is stopped; request builders with kubelet-like defaults; CRI shortcuts
//! with a harness timeout; the fixture images of the pod tests; and host inspection
//! (mountinfo, /proc, cgroup v1 directories, CRI log files).
//!
//! Nothing here touches a process, mount or cgroup the test did not create: processes are
//! only looked at, and the only cgroup directories ever removed (best effort, on drop) are
//! below the unique `cgroup_parent`s a test registered with [`PodEnv::track_cgroup_parent`].

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use berth_cri::v1 as api;
use tonic::{Code, Status};

use crate::berthd::{Berthd, BerthdOptions};
use crate::cri::{Cri, spec};
use crate::fixtures;
use crate::image::{Compression, Format, ImageBuilder, busybox_layer};
use crate::push::{PushedImage, Pusher};
use crate::registry::Registry;
use crate::util::poll_until;

/// How long a CRI shortcut of this module waits before failing with [`Code::Unknown`].
pub const POD_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository the harness pushes busybox to (`docker.io/library/busybox:latest` once
/// mapped), pulled as `busybox`.
pub const BUSYBOX_REPO: &str = "library/busybox";

/// A shell loop that exits 0 on SIGTERM, printing `ready` once its trap is set. Use it
/// where a container must stop quickly and gracefully (pid 1 ignores signals it has no
/// handler for, so `sleep 3600` would only die at the stop timeout).
pub const TERM_TRAP_LOOP: &str = "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done";

/// A shell loop that ignores SIGTERM, printing `ready` once its trap is set.
pub const TERM_IGNORE_LOOP: &str = "trap '' TERM; echo ready; while true; do sleep 0.1; done";

/// The stop signal of the [`push_stopsignal_image`] fixture.
pub const STOPSIGNAL_IMAGE_SIGNAL: &str = "SIGUSR1";
/// The exit code the [`push_stopsignal_image`] fixture exits with on its stop signal.
pub const STOPSIGNAL_IMAGE_EXIT: i32 = 5;
/// The exit code the [`push_stopsignal_image`] fixture exits with on SIGTERM (which it
/// must not get when the image's stop signal is honoured).
pub const STOPSIGNAL_IMAGE_TERM_EXIT: i32 = 9;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// busybox as `library/busybox:latest` (Docker schema 2), the image the pod tests pull as
/// `busybox`. Config: `Cmd ["sh"]`, a default PATH.
pub async fn push_busybox(p: &Pusher) -> Result<PushedImage> {
    fixtures::busybox(p, BUSYBOX_REPO, &["latest"], Format::Docker, "pods-busybox").await
}

/// An image for kubelet's command / args semantics and env merging:
/// `Entrypoint ["/bin/echo", "ep"]`, `Cmd ["cmd"]`,
/// `Env [PATH=…, FROM_IMAGE=img, OVERRIDE=img]`, `WorkingDir /tmp`.
pub async fn push_entrypoint_image(p: &Pusher, repo: &str) -> Result<PushedImage> {
    let img = ImageBuilder::new(Format::Oci)
        .label("e2e.fixture", "pods-entrypoint")
        .layer(busybox_layer(Compression::GZIP)?)
        .entrypoint(&["/bin/echo", "ep"])
        .cmd(&["cmd"])
        .env(&[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FROM_IMAGE=img",
            "OVERRIDE=img",
        ])
        .working_dir("/tmp")
        .build()?;
    p.push_image(repo, &["latest"], &img).await
}

/// An image with `StopSignal SIGUSR1` whose Cmd traps USR1 (exit
/// [`STOPSIGNAL_IMAGE_EXIT`]) and TERM (exit [`STOPSIGNAL_IMAGE_TERM_EXIT`]), prints `ready`
/// and loops.
pub async fn push_stopsignal_image(p: &Pusher, repo: &str) -> Result<PushedImage> {
    let script = format!(
        "trap 'exit {STOPSIGNAL_IMAGE_EXIT}' USR1; trap 'exit {STOPSIGNAL_IMAGE_TERM_EXIT}' TERM; \
         echo ready; while true; do sleep 0.1; done"
    );
    let img = ImageBuilder::new(Format::Oci)
        .label("e2e.fixture", "pods-stopsignal")
        .layer(busybox_layer(Compression::GZIP)?)
        .cmd(&["sh", "-c", &script])
        .stop_signal(STOPSIGNAL_IMAGE_SIGNAL)
        .build()?;
    p.push_image(repo, &["latest"], &img).await
}

/// A busybox image whose config has `User` = `user`.
pub async fn push_user_image(p: &Pusher, repo: &str, user: &str) -> Result<PushedImage> {
    fixtures::with_user(p, repo, "latest", user).await
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A name unique to this process and call: `<prefix>-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = crate::util::sha256_digest(format!("{}-{t}-{n}", std::process::id()).as_bytes());
    format!("{prefix}-{}", &crate::util::digest_hex(&d)[..8])
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Asserts that `r` failed with `code`; returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: expected {code:?}, got {s:?}");
            s
        }
    }
}

/// The `info` entry of a verbose status, parsed as JSON (`Value::Null` if absent or not
/// JSON).
pub fn info_json(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A positive integer at `key` of a JSON object, if any.
pub fn json_pid(v: &serde_json::Value, key: &str) -> Option<i32> {
    v.get(key)
        .and_then(serde_json::Value::as_i64)
        .filter(|p| *p > 0)
        .map(|p| p as i32)
}

/// A [`api::KeyValue`].
pub fn kv(key: &str, value: &str) -> api::KeyValue {
    api::KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// A map from pairs.
pub fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Namespace options.
pub fn ns_options(
    network: api::NamespaceMode,
    pid: api::NamespaceMode,
    ipc: api::NamespaceMode,
) -> api::NamespaceOption {
    api::NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Host inspection
// ---------------------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Mount point (unescaped).
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// The file system's own options (`rw,lowerdir=…,volatile`).
    pub super_options: String,
}

impl MountEntry {
    /// Whether the file system's options include `opt` exactly.
    pub fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.split(',').any(|o| o == opt)
    }

    /// An overlay mounted `volatile` (shown as `fsync=volatile` since Linux 6.6).
    pub fn is_volatile_overlay(&self) -> bool {
        self.fstype == "overlay"
            && (self.has_super_option("volatile") || self.has_super_option("fsync=volatile"))
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount of this process's mount namespace.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = r.next().unwrap_or("").to_string();
            let super_options = r.next().unwrap_or("").to_string();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(mp)),
                fstype,
                source,
                super_options,
            })
        })
        .collect()
}

/// Mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// The mount exactly at `path` (the last one if stacked), if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Whether something is mounted exactly at `path`.
pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

/// `/proc/<pid>/stat` state letter, if the process exists.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the last ')' (the command may contain parentheses).
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    pid > 0 && matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// `/proc/<pid>/cmdline` with NULs as spaces (trimmed).
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string(),
    )
}

/// Every live (non-zombie) process, as (pid, cmdline).
pub fn processes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if !pid_alive(pid) {
                continue;
            }
            if let Some(c) = cmdline(pid) {
                out.push((pid, c));
            }
        }
    }
    out
}

/// Live processes whose command line contains `needle` (this test process excluded).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|(pid, c)| *pid != me && c.contains(needle))
        .collect()
}

/// The `NSpid` line of `/proc/<pid>/status` (outermost first).
pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    Some(
        line["NSpid:".len()..]
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect(),
    )
}

/// `VmRSS` of a process in KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The target of `/proc/<pid>/ns/<kind>` (e.g. `net:[4026531992]`).
pub fn ns_link(pid: i32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Inode number of `path` (for a pinned namespace file: the namespace's inode).
pub fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// `/sys/fs/cgroup/<controller>` when the host has that cgroup v1 hierarchy.
pub fn cgroup_v1_root(controller: &str) -> Option<PathBuf> {
    let p = Path::new("/sys/fs/cgroup").join(controller);
    // A v1 hierarchy has no cgroup.controllers (that file marks cgroup v2).
    (p.is_dir() && !p.join("cgroup.controllers").exists()).then_some(p)
}

/// `/sys/fs/cgroup/<controller>/<cgroup path>` when the host has that v1 hierarchy.
pub fn cgroup_v1_dir(controller: &str, cgroup_path: &str) -> Option<PathBuf> {
    cgroup_v1_root(controller).map(|r| r.join(cgroup_path.trim_start_matches('/')))
}

/// Every directory `<hierarchy>/<cgroup path>` that exists, over all mounted cgroup
/// hierarchies under /sys/fs/cgroup.
pub fn cgroup_dirs_existing(cgroup_path: &str) -> Vec<PathBuf> {
    let rel = cgroup_path.trim_start_matches('/');
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join(rel);
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    // cgroup v2 only: /sys/fs/cgroup itself is the hierarchy.
    let direct = Path::new("/sys/fs/cgroup").join(rel);
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && direct.is_dir() {
        out.push(direct);
    }
    out
}

/// Whether the host's memory cgroup v1 hierarchy is there (the cgroup assertions of the
/// tests need it; they print why and skip that check otherwise).
/// Whether this machine reports OOM kills of a memory cgroup (the v1 `oom_kill` counter,
/// kernel >= 4.13, or v2's `memory.events`), which is what a runtime reads to say
/// OOMKilled; prints why not.
pub fn oom_kills_reported() -> bool {
    if has_memory_cgroup_v1() {
        let oc =
            std::fs::read_to_string("/sys/fs/cgroup/memory/memory.oom_control").unwrap_or_default();
        if !oc.contains("oom_kill ") {
            println!("SKIP: memory.oom_control has no oom_kill counter here: {oc:?}");
            return false;
        }
        true
    } else if !Path::new("/sys/fs/cgroup/memory.events").exists() {
        println!("SKIP: no memory cgroup controller here");
        false
    } else {
        true
    }
}

pub fn has_memory_cgroup_v1() -> bool {
    cgroup_v1_root("memory").is_some()
}

// ---------------------------------------------------------------------------------------
// CRI log files
// ---------------------------------------------------------------------------------------

/// One entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The RFC 3339 timestamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P` (partial) or `F` (full).
    pub tag: char,
    /// The text after the tag and its space.
    pub content: String,
}

fn digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// Whether `ts` matches
/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)$`.
pub fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 22 {
        return false;
    }
    let fixed = digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..10])
        && b[10] == b'T'
        && digits(&b[11..13])
        && b[13] == b':'
        && digits(&b[14..16])
        && b[16] == b':'
        && digits(&b[17..19])
        && b[19] == b'.';
    if !fixed {
        return false;
    }
    let rest = &b[20..];
    let nd = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if nd == 0 {
        return false;
    }
    let zone = &rest[nd..];
    zone == b"Z"
        || (zone.len() == 6
            && (zone[0] == b'+' || zone[0] == b'-')
            && digits(&zone[1..3])
            && zone[3] == b':'
            && digits(&zone[4..6]))
}

/// Parses CRI log text. Every complete line must match
/// `^<RFC3339Nano> (stdout|stderr) (P|F) `; a last line without its newline (being written)
/// is ignored.
pub fn parse_cri_log(text: &str) -> Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return Ok(out),
    };
    for (n, line) in complete.split('\n').enumerate() {
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag), Some(content)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "log line {} is not `<time> <stream> <tag> <text>`: {line:?}",
                n + 1
            );
        };
        if !is_rfc3339_nano(time) {
            bail!(
                "log line {}: timestamp {time:?} is not RFC3339Nano: {line:?}",
                n + 1
            );
        }
        if stream != "stdout" && stream != "stderr" {
            bail!(
                "log line {}: stream {stream:?} is not stdout/stderr: {line:?}",
                n + 1
            );
        }
        if tag != "P" && tag != "F" {
            bail!("log line {}: tag {tag:?} is not P/F: {line:?}", n + 1);
        }
        out.push(LogEntry {
            time: time.into(),
            stream: stream.into(),
            tag: tag.chars().next().unwrap_or('F'),
            content: content.into(),
        });
    }
    Ok(out)
}

/// Reads and parses a CRI log file (an absent file is empty).
pub fn read_cri_log(path: &Path) -> Result<Vec<LogEntry>> {
    match std::fs::read(path) {
        Ok(b) => parse_cri_log(&String::from_utf8_lossy(&b))
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Joins P entries with the following F entry of the same stream: the logical lines, as
/// (stream, text), in order of their final entry.
pub fn log_lines(entries: &[LogEntry]) -> Vec<(String, String)> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for e in entries {
        let buf = pending.entry(e.stream.clone()).or_default();
        buf.push_str(&e.content);
        if e.tag == 'F' {
            out.push((e.stream.clone(), std::mem::take(buf)));
        }
    }
    out
}

/// Logical stdout+stderr lines of a log file, text only.
pub fn log_texts(path: &Path) -> Result<Vec<String>> {
    Ok(log_lines(&read_cri_log(path)?)
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

// ---------------------------------------------------------------------------------------
// The environment
// ---------------------------------------------------------------------------------------

async fn timed<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(POD_CALL_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::new(
            Code::Unknown,
            format!("e2e harness: {what} got no answer within {POD_CALL_TIMEOUT:?}"),
        )),
    }
}

/// berthd (plus, optionally, a registry with busybox pushed and pulled) and a log directory.
/// On drop: every pod berthd lists is stopped and removed (berthd is restarted first if a
/// test left it killed), cgroup dirs below registered unique parents are removed (best
/// effort), then berthd is stopped and the directories are removed.
pub struct PodEnv {
    /// The CRI client (reconnect with [`PodEnv::reconnect`] after a restart).
    pub cri: Cri,
    /// The daemon.
    pub berthd: Berthd,
    /// The registry, when the env has images.
    pub registry: Option<Registry>,
    /// busybox as pushed (pulled as `busybox`), when the env has images.
    pub busybox: Option<PushedImage>,
    logs: tempfile::TempDir,
    cgroup_parents: Mutex<Vec<String>>,
}

impl PodEnv {
    /// berthd alone (no registry): for pod-only tests.
    pub async fn start() -> Result<PodEnv> {
        let berthd = Berthd::start(BerthdOptions::default()).await?;
        Self::assemble(berthd, None, None).await
    }

    /// A registry with busybox pushed, berthd, and busybox pulled as `busybox`.
    pub async fn with_busybox() -> Result<PodEnv> {
        Self::with_busybox_options(|o| o).await
    }

    /// [`PodEnv::with_busybox`] with berthd's options changed by `options` (metrics, say).
    pub async fn with_busybox_options(
        options: impl FnOnce(BerthdOptions) -> BerthdOptions,
    ) -> Result<PodEnv> {
        let reg = Registry::start().await?;
        let bb = push_busybox(&reg.pusher()).await?;
        let berthd = Berthd::start(options(BerthdOptions::with_registry(&reg.addr()))).await?;
        let env = Self::assemble(berthd, Some(reg), Some(bb.clone())).await?;
        let id = env.cri.pull("busybox").await?;
        assert_eq!(id, bb.id(), "PullImage busybox returns the image ID");
        Ok(env)
    }

    async fn assemble(
        berthd: Berthd,
        registry: Option<Registry>,
        busybox: Option<PushedImage>,
    ) -> Result<PodEnv> {
        let cri = berthd.cri().await?;
        let logs = tempfile::Builder::new()
            .prefix("berth-e2e-podlogs-")
            .tempdir()?;
        Ok(PodEnv {
            cri,
            berthd,
            registry,
            busybox,
            logs,
            cgroup_parents: Mutex::new(Vec::new()),
        })
    }

    /// A pusher to the env's registry.
    /// The features berthd's Status reports for the default runtime handler.
    pub async fn default_handler_features(&self) -> Result<api::RuntimeHandlerFeatures> {
        let st = self.cri.status(false).await?;
        Ok(st
            .runtime_handlers
            .iter()
            .find(|h| h.name.is_empty())
            .and_then(|h| h.features)
            .unwrap_or_default())
    }

    pub fn pusher(&self) -> Pusher {
        self.registry
            .as_ref()
            .expect("this PodEnv has no registry (use PodEnv::with_busybox)")
            .pusher()
    }

    /// The busybox image ID.
    pub fn busybox_id(&self) -> String {
        self.busybox
            .as_ref()
            .expect("this PodEnv has no busybox")
            .id()
            .to_string()
    }

    /// Reconnects the CRI client (after berthd was restarted).
    pub async fn reconnect(&mut self) -> Result<()> {
        self.cri = self.berthd.cri().await?;
        Ok(())
    }

    /// The root of the env's log directories.
    pub fn logs_root(&self) -> &Path {
        self.logs.path()
    }

    /// `<state>/pods`.
    pub fn pods_dir(&self) -> PathBuf {
        self.berthd.state().join("pods")
    }

    /// `<state>/pods/<first 12 characters of id>` (short, because the monitor's unix
    /// socket lives in it and socket paths are limited to 107 bytes).
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.pods_dir().join(&id[..12.min(id.len())])
    }

    /// `<state>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.berthd.state().join("containers").join(id)
    }

    /// Names of the entries of a directory (empty if it does not exist), sorted.
    pub fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Registers a unique cgroup parent (e.g. `/berth-e2e-1a2b3c4d/pod`) whose top directory
    /// the drop may remove (best effort, empty dirs only) if berth left it behind.
    pub fn track_cgroup_parent(&self, parent: &str) {
        self.cgroup_parents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(parent.to_string());
    }

    // ----- request builders -----

    /// A pod config as kubelet would send it: metadata (`name`, namespace `e2e`, a unique
    /// uid, attempt 0), hostname `name`, a fresh absolute log directory, a DNS config,
    /// labels `app=<name>`, an annotation, and namespace options network=POD, pid=CONTAINER,
    /// ipc=POD (kubelet's default), no cgroup parent.
    pub fn pod_config(&self, name: &str) -> api::PodSandboxConfig {
        let uid = unique("uid");
        let log_dir = self.logs.path().join(format!("e2e_{name}_{uid}"));
        std::fs::create_dir_all(&log_dir).expect("creating the pod log directory");
        let hostname: String = name.chars().take(63).collect::<String>().to_lowercase();
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "e2e".into(),
                attempt: 0,
            }),
            hostname,
            log_directory: log_dir.display().to_string(),
            dns_config: Some(api::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["e2e.svc.cluster.local".into(), "svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            labels: map(&[("app", name), ("e2e", "pods")]),
            annotations: map(&[("e2e.berth/annotation", "yes")]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_options(
                        api::NamespaceMode::Pod,
                        api::NamespaceMode::Container,
                        api::NamespaceMode::Pod,
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container config: metadata (`name`, attempt 0), image `busybox`, `command`
    /// (empty: the image's), log path `<name>.log`, a label.
    pub fn container_config(&self, name: &str, command: &[&str]) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(spec("busybox")),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: map(&[("container", name)]),
            ..Default::default()
        }
    }

    /// A container config running `sh -c <script>`.
    pub fn sh_container(&self, name: &str, script: &str) -> api::ContainerConfig {
        self.container_config(name, &["sh", "-c", script])
    }

    /// `log_directory/log_path` of a container.
    pub fn log_file(pod: &api::PodSandboxConfig, c: &api::ContainerConfig) -> PathBuf {
        Path::new(&pod.log_directory).join(&c.log_path)
    }

    // ----- pod sandbox calls -----

    /// RunPodSandbox with the default handler.
    pub async fn run_pod(&self, config: &api::PodSandboxConfig) -> Result<String, Status> {
        self.run_pod_handler(config, "").await
    }

    /// RunPodSandbox with a runtime handler.
    pub async fn run_pod_handler(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "RunPodSandbox",
            c.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }),
        )
        .await
        .map(|r| r.pod_sandbox_id)
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "StopPodSandbox",
            c.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "RemovePodSandbox",
            c.remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// PodSandboxStatus (whole response).
    pub async fn pod_status_full(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::PodSandboxStatusResponse, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "PodSandboxStatus",
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose,
            }),
        )
        .await
    }

    /// PodSandboxStatus's `status`.
    pub async fn pod_status(&self, id: &str) -> Result<api::PodSandboxStatus, Status> {
        self.pod_status_full(id, false)
            .await?
            .status
            .ok_or_else(|| Status::internal("e2e: PodSandboxStatus without status"))
    }

    /// The parsed verbose `info` of a pod.
    pub async fn pod_info(&self, id: &str) -> Result<serde_json::Value> {
        let r = self.pod_status_full(id, true).await?;
        Ok(info_json(&r.info))
    }

    /// The pod's monitor PID from its verbose info (`monitorPid`).
    pub async fn monitor_pid(&self, id: &str) -> Result<i32> {
        let info = self.pod_info(id).await?;
        json_pid(&info, "monitorPid")
            .with_context(|| format!("no monitorPid in the verbose info of pod {id}: {info}"))
    }

    /// ListPodSandbox with a filter.
    pub async fn list_pods(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<api::PodSandbox>, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "ListPodSandbox",
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter }),
        )
        .await
        .map(|r| r.items)
    }

    /// IDs of ListPodSandbox with a filter, sorted.
    pub async fn list_pod_ids(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<String>, Status> {
        let mut ids: Vec<String> = self
            .list_pods(filter)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    // ----- container calls -----

    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "CreateContainer",
            c.create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config.clone()),
                sandbox_config: Some(sandbox.clone()),
            }),
        )
        .await
        .map(|r| r.container_id)
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "StartContainer",
            c.start_container(api::StartContainerRequest {
                container_id: id.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// CreateContainer + StartContainer.
    pub async fn run_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String> {
        let id = self
            .create_container(pod_id, config, sandbox)
            .await
            .with_context(|| format!("CreateContainer {:?}", config.metadata))?;
        self.start_container(&id)
            .await
            .with_context(|| format!("StartContainer {id} ({:?})", config.metadata))?;
        Ok(id)
    }

    /// StopContainer.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "StopContainer",
            c.stop_container(api::StopContainerRequest {
                container_id: id.into(),
                timeout,
            }),
        )
        .await
        .map(|_| ())
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "RemoveContainer",
            c.remove_container(api::RemoveContainerRequest {
                container_id: id.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// ContainerStatus (whole response).
    pub async fn container_status_full(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::ContainerStatusResponse, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "ContainerStatus",
            c.container_status(api::ContainerStatusRequest {
                container_id: id.into(),
                verbose,
            }),
        )
        .await
    }

    /// ContainerStatus's `status`.
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        self.container_status_full(id, false)
            .await?
            .status
            .ok_or_else(|| Status::internal("e2e: ContainerStatus without status"))
    }

    /// The container's init PID from its verbose info (`pid`).
    pub async fn container_pid(&self, id: &str) -> Result<i32> {
        let r = self.container_status_full(id, true).await?;
        let info = info_json(&r.info);
        json_pid(&info, "pid")
            .with_context(|| format!("no pid in the verbose info of container {id}: {info}"))
    }

    /// Polls ContainerStatus until the container is in `state`; returns that status.
    pub async fn wait_container_state(
        &self,
        id: &str,
        state: api::ContainerState,
        timeout: Duration,
    ) -> Result<api::ContainerStatus> {
        let last: Mutex<Option<api::ContainerStatus>> = Mutex::new(None);
        let last_ref = &last;
        let r = poll_until(timeout, &format!("container {id} to be {state:?}"), || {
            let fut = self.container_status(id);
            async move {
                let s = fut.await?;
                let hit = s.state == state as i32;
                *last_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                Ok(hit.then_some(s))
            }
        })
        .await;
        r.with_context(|| format!("last status: {:?}", last.lock().map(|l| l.clone())))
    }

    /// ListContainers with a filter.
    pub async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<api::Container>, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "ListContainers",
            c.list_containers(api::ListContainersRequest { filter }),
        )
        .await
        .map(|r| r.containers)
    }

    /// IDs of ListContainers with a filter, sorted.
    pub async fn list_container_ids(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<String>, Status> {
        let mut ids: Vec<String> = self
            .list_containers(filter)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// ExecSync.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "ExecSync",
            c.exec_sync(api::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            }),
        )
        .await
    }

    /// ExecSync that must succeed with exit code 0; returns stdout as text.
    pub async fn exec_ok(&self, id: &str, cmd: &[&str]) -> Result<String> {
        let r = self
            .exec_sync(id, cmd, 10)
            .await
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?;
        if r.exit_code != 0 {
            bail!(
                "ExecSync {cmd:?} in {id} exited {}: stdout {:?} stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// UpdateContainerResources.
    pub async fn update_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "UpdateContainerResources",
            c.update_container_resources(api::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                ..Default::default()
            }),
        )
        .await
        .map(|_| ())
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let mut c = self.cri.runtime.clone();
        timed(
            "ReopenContainerLog",
            c.reopen_container_log(api::ReopenContainerLogRequest {
                container_id: id.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// Polls a CRI log file until one of its logical lines satisfies `pred`.
    pub async fn wait_log_line(
        &self,
        path: &Path,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let pred = &pred;
        let r = poll_until(timeout, what, || async move {
            let lines = log_texts(path)?;
            Ok(lines.iter().any(|l| pred(l)).then_some(()))
        })
        .await;
        r.with_context(|| {
            format!(
                "log {}:\n{}",
                path.display(),
                crate::util::tail_file(path, 20)
            )
        })
    }

    // ----- whole-pod assertions -----

    /// Asserts that nothing of pod `id` is left on the host: no mount under its dir, no dir,
    /// no process mentioning its ID, not listed, PodSandboxStatus NotFound; and no memory
    /// cgroup `/berth/<id>` (when `cgroup_parent` is empty) or `<cgroup_parent>` dirs in any
    /// hierarchy.
    pub async fn assert_pod_gone(&self, id: &str, cgroup_parent: &str) {
        let dir = self.pod_dir(id);
        let left = mounts_under(&dir);
        assert!(
            left.is_empty(),
            "mounts left under {} after RemovePodSandbox: {left:?}",
            dir.display()
        );
        assert!(
            !dir.exists(),
            "{} still exists after RemovePodSandbox: {:?}",
            dir.display(),
            Self::dir_entries(&dir)
        );
        // The monitor may take a moment to be reaped.
        let dir_str = dir.display().to_string();
        let pod_procs = || {
            let mut p = processes_mentioning(id);
            p.extend(processes_mentioning(&dir_str));
            p
        };
        let procs = poll_until(Duration::from_secs(5), "pod processes to be gone", || {
            let p = pod_procs();
            async move { Ok(p.is_empty().then_some(())) }
        })
        .await;
        assert!(
            procs.is_ok(),
            "processes mentioning pod {id} or its dir remain after RemovePodSandbox: {:?}",
            pod_procs()
        );
        let cg = if cgroup_parent.is_empty() {
            format!("/berth/{id}")
        } else {
            cgroup_parent.to_string()
        };
        let cg_left = cgroup_dirs_existing(&cg);
        assert!(
            cg_left.is_empty(),
            "cgroup dirs of pod {id} remain after RemovePodSandbox: {cg_left:?}"
        );
        let listed = self.list_pod_ids(None).await.expect("ListPodSandbox");
        assert!(
            !listed.contains(&id.to_string()),
            "ListPodSandbox still shows removed pod {id}"
        );
        let st = self.pod_status(id).await;
        expect_code(st, Code::NotFound, "PodSandboxStatus of a removed pod");
    }

    /// Stops and removes every pod berthd lists (for the end of a test; the drop does it too).
    pub async fn remove_all_pods(&self) -> Result<()> {
        for p in self.list_pods(None).await? {
            self.stop_pod(&p.id).await?;
            self.remove_pod(&p.id).await?;
        }
        Ok(())
    }
}

impl Drop for PodEnv {
    fn drop(&mut self) {
        let berthd = &mut self.berthd;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("e2e PodEnv cleanup: no runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    if !berthd.is_running() {
                        eprintln!("e2e PodEnv cleanup: berthd is not running; restarting it to remove pods");
                        if let Err(e) = berthd.launch().await {
                            eprintln!("e2e PodEnv cleanup: restarting berthd failed: {e:#}");
                            return;
                        }
                    }
                    let cri = match berthd.cri().await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("e2e PodEnv cleanup: cannot connect: {e:#}");
                            return;
                        }
                    };
                    let mut rt = cri.runtime.clone();
                    let list = tokio::time::timeout(
                        Duration::from_secs(30),
                        rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
                    )
                    .await;
                    let pods = match list {
                        Ok(Ok(r)) => r.into_inner().items,
                        other => {
                            eprintln!("e2e PodEnv cleanup: ListPodSandbox failed: {other:?}");
                            return;
                        }
                    };
                    for p in pods {
                        let stop = tokio::time::timeout(
                            Duration::from_secs(60),
                            rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                                pod_sandbox_id: p.id.clone(),
                            }),
                        )
                        .await;
                        if !matches!(stop, Ok(Ok(_))) {
                            eprintln!("e2e PodEnv cleanup: StopPodSandbox {}: {stop:?}", p.id);
                        }
                        let rm = tokio::time::timeout(
                            Duration::from_secs(60),
                            rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                                pod_sandbox_id: p.id.clone(),
                            }),
                        )
                        .await;
                        if !matches!(rm, Ok(Ok(_))) {
                            eprintln!("e2e PodEnv cleanup: RemovePodSandbox {}: {rm:?}", p.id);
                        }
                    }
                });
            });
            let _ = h.join();
        });
        // Cgroups below the unique parents this test registered, deepest first (rmdir only
        // removes empty cgroups; anything berth left is reported by the tests' asserts),
        // once berthd is gone (its warm-up thread lives in its default pod parent).
        self.berthd.terminate();
        let parents = std::mem::take(
            &mut *self
                .cgroup_parents
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for parent in parents {
            let top = parent
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            if !top.starts_with("berth-e2e-") {
                continue;
            }
            for dir in cgroup_dirs_existing(&top) {
                let mut all: Vec<PathBuf> = crate::util::walk(&dir)
                    .into_iter()
                    .filter(|p| p.is_dir())
                    .collect();
                all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
                all.push(dir.clone());
                for d in all {
                    if std::fs::remove_dir(&d).is_ok() {
                        eprintln!(
                            "e2e PodEnv cleanup: removed leftover cgroup {}",
                            d.display()
                        );
                    }
                }
            }
        }
    }
}
