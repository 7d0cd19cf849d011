//! A real OCI registry (Debian's `docker-registry`, distribution v2.8) on a free port of
//! 127.0.0.1 with temporary filesystem storage, optionally behind htpasswd basic auth.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::push::{Credentials, Pusher};
use crate::util::{digest_hex, free_port, http_client, poll_until, poll_until_blocking, tail_file};

/// The registry binary the harness runs.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Options for [`Registry::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require these basic-auth credentials (htpasswd, bcrypt) on every request.
    pub htpasswd: Option<Credentials>,
}

/// A running registry process, killed (by PID) and waited for on drop. Its storage, config
/// and log live in a temporary directory removed on drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    credentials: Option<Credentials>,
}

impl Registry {
    /// Starts an open (no auth) registry and waits until `GET /v2/` answers.
    pub async fn start() -> Result<Self> {
        Self::start_with(RegistryOptions::default()).await
    }

    /// Starts a registry that requires the given basic-auth credentials.
    pub async fn start_with_htpasswd(username: &str, password: &str) -> Result<Self> {
        Self::start_with(RegistryOptions {
            htpasswd: Some(Credentials::new(username, password)),
        })
        .await
    }

    /// Starts a registry with `opts`, retrying on another port if the chosen one was taken.
    pub async fn start_with(opts: RegistryOptions) -> Result<Self> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing (Debian package docker-registry)");
        }
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start(&opts).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .expect("at least one attempt")
            .context("starting docker-registry"))
    }

    async fn try_start(opts: &RegistryOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-registry-")
            .tempdir()?;
        let port = free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut auth = String::new();
        if let Some(c) = &opts.htpasswd {
            let hash = bcrypt::hash(&c.password, 5).context("bcrypt hash")?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{hash}\n", c.username))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-e2e\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-e2e-secret\n\
             {auth}",
            storage = storage.display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        let mut reg = Registry {
            child: Some(child),
            port,
            dir,
            credentials: opts.htpasswd.clone(),
        };
        reg.wait_ready().await?;
        Ok(reg)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/v2/", self.url());
        let client = http_client();
        let log = self.log_path();
        let child = self.child.as_mut().expect("child present while starting");
        let ok = poll_until(
            Duration::from_secs(20),
            "docker-registry to answer GET /v2/",
            || {
                let exited = child.try_wait();
                let client = client.clone();
                let url = url.clone();
                let log = log.clone();
                async move {
                    if let Ok(Some(status)) = exited {
                        bail!(
                            "docker-registry exited early ({status}); log:\n{}",
                            tail_file(&log, 20)
                        );
                    }
                    match client.get(&url).send().await {
                        // 401 is "up" for a registry with auth.
                        Ok(r) if r.status() == 200 || r.status() == 401 => Ok(Some(())),
                        Ok(r) => bail!("GET /v2/ answered {}", r.status()),
                        Err(_) => Ok(None),
                    }
                }
            },
        )
        .await;
        if let Err(e) = ok {
            self.stop();
            return Err(e);
        }
        // The port could have been taken by another process that answers HTTP; make sure the
        // answer came from our registry.
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "docker-registry exited ({status}): {}",
                tail_file(&self.log_path(), 20)
            );
        }
        Ok(())
    }

    /// Kills the registry (SIGKILL by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port the registry listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry's host for references and registries.conf.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The credentials the registry requires, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// A pusher for this registry (with its credentials, if it has any).
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url(), self.credentials.clone())
    }

    /// The filesystem storage root (`rootdirectory` of the registry's config).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry stores the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest_hex(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Overwrites one byte of a stored blob in place (same length), so the registry serves
    /// content that no longer matches its digest. `offset` is clamped to the blob size.
    /// Returns the original bytes so the test can restore them with [`Registry::write_blob`].
    pub fn corrupt_blob(&self, digest: &str, offset: usize) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let original =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if original.is_empty() {
            bail!("blob {digest} is empty");
        }
        let mut data = original.clone();
        let at = offset.min(data.len() - 1);
        data[at] ^= 0x5a;
        std::fs::write(&path, data)?;
        Ok(original)
    }

    /// Replaces a stored blob's bytes (e.g. to undo [`Registry::corrupt_blob`]).
    pub fn write_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        Ok(std::fs::write(self.blob_path(digest), data)?)
    }

    /// The registry's log file (its stdout and stderr: logrus lines and the access log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The last `lines` lines of the registry log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path(), lines)
    }

    /// Every request in the access log (combined log format), as (method, path, status).
    /// A request appears once its response has been written.
    pub fn access_log(&self) -> Vec<(String, String, u16)> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// How many successful (200/206) `GET /v2/<repo>/blobs/<digest>` requests the registry
    /// served for `digest`, whatever the repository.
    pub fn blob_get_count(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|(m, p, s)| m == "GET" && p.ends_with(&suffix) && (*s == 200 || *s == 206))
            .count()
    }

    /// Number of GET requests for manifests or blobs (anything but the `/v2/` ping): what a
    /// pull makes. Pushes (HEAD, POST, PUT) are not counted.
    pub fn content_gets(&self) -> usize {
        self.access_log()
            .iter()
            .filter(|(m, p, _)| m == "GET" && (p.contains("/manifests/") || p.contains("/blobs/")))
            .count()
    }

    /// Pushes are made through [`Registry::pusher`]; this is a shortcut for tests.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Parses `127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 2 "" "ua"`.
fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    if line.starts_with("time=") {
        return None;
    }
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let request = &rest[..end];
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let after = rest[end + 1..].trim_start();
    let status: u16 = after.split(' ').next()?.parse().ok()?;
    Some((method, path, status))
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Captured by the test harness; shown for failing tests only.
        eprintln!(
            "---- docker-registry log tail ({}) ----\n{}",
            self.log_path().display(),
            self.log_tail(if std::thread::panicking() { 30 } else { 15 })
        );
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // kill() sent SIGKILL to our own child; reap it (bounded, in case of a zombie
            // reaper elsewhere).
            let _ =
                poll_until_blocking(Duration::from_secs(10), || child.try_wait().ok().flatten());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_access_line;

    #[test]
    fn parses_access_lines() {
        let l = r#"127.0.0.1 - - [22/Nov/2026:16:57:20 +0000] "GET /v2/x/blobs/sha256:00 HTTP/1.1" 404 157 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(l),
            Some(("GET".into(), "/v2/x/blobs/sha256:00".into(), 404))
        );
        assert_eq!(parse_access_line(r#"time="x" level=info msg="y""#), None);
    }
}
