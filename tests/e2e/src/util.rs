//! Small helpers shared by the harness and the tests: polling with a deadline, free ports,
//! an HTTP client for 127.0.0.1, file-tree scans and log tails.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Polls `f` until it returns `Ok(Some(v))`, and returns `v`.
///
/// `f` returning `Ok(None)` means "not yet"; an `Err` ends the wait at once with that error
/// (for conditions that can no longer come true, e.g. the process died). Between attempts
/// the poll waits a short, growing interval (starting at 10 ms, capped at 200 ms), so the
/// wait ends at most `timeout` (plus one attempt) after the start.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// Blocking variant of [`poll_until`] for code that is not async (e.g. `Drop`).
pub fn poll_until_blocking<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
/// Whoever uses it must cope with the small chance that someone else took it meanwhile.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A port on 127.0.0.1 where nothing listens (for "unreachable registry" tests).
pub fn closed_port() -> Result<u16> {
    free_port()
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// An HTTP client for plain HTTP to 127.0.0.1: no proxies from the environment, no redirects
/// followed, a generous overall timeout.
///
/// reqwest is built with `rustls-no-provider`, so building any client needs a process-wide
/// rustls crypto provider even though the tests never speak TLS; this installs ring's once.
pub fn http_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            install_crypto_provider();
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(300))
                .pool_max_idle_per_host(0)
                .build()
                .expect("building the reqwest client")
        })
        .clone()
}

/// Installs ring as the process-wide rustls provider (needed to build any reqwest client).
pub fn install_crypto_provider() {
    // An error only means another thread installed one first.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The last `lines` lines of a text file (lossy UTF-8), or a note if it cannot be read.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Every path under `root` (recursively, not following symlinks), `root` excluded.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            out.push(path.clone());
            if is_dir {
                stack.push(path);
            }
        }
    }
    out
}

/// Paths under `root` whose file name contains `needle` (case-insensitive).
pub fn find_named(root: &Path, needle: &str) -> Vec<PathBuf> {
    let needle = needle.to_ascii_lowercase();
    walk(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase().contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Total size in bytes of the regular files under `root`.
pub fn tree_size(root: &Path) -> u64 {
    walk(root)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Reads an extended attribute of `path` itself (not following a final symlink).
pub fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and live for the call; the buffer is valid for
    // `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest (the input unchanged if it has no algorithm).
pub fn digest_hex(digest: &str) -> &str {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest)
}
