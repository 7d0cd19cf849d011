//! The local registry both runtimes pull from: Debian's `docker-registry` (distribution v2)
//! on a free port of 127.0.0.1 with filesystem storage in the bench's directory. (The e2e
//! harness has its own, which prints its log on drop; the bench keeps its output clean.)

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::daemon::Daemon;

/// The registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct Registry {
    daemon: Daemon,
    port: u16,
}

impl Registry {
    /// Starts a registry storing under `dir` and waits until `GET /v2/` answers; retries on
    /// another port if the chosen one was taken meanwhile.
    pub async fn start(dir: &Path) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing (Debian package docker-registry)");
        }
        let mut last = None;
        for attempt in 0..5 {
            match Self::try_start(dir, attempt).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context("starting docker-registry")
    }

    async fn try_start(dir: &Path, attempt: u32) -> Result<Registry> {
        let port = e2e::util::free_port()?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join(format!("config-{attempt}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: berth-bench\n",
                storage.display()
            ),
        )?;
        let mut daemon = Daemon::spawn(
            "docker-registry",
            Path::new(REGISTRY_BIN),
            &["serve".to_string(), config.display().to_string()],
            &dir.join("registry.log"),
        )?;
        let url = format!("http://127.0.0.1:{port}/v2/");
        let client = e2e::util::http_client();
        let ready = e2e::poll_until(
            Duration::from_secs(20),
            "docker-registry to answer GET /v2/",
            || {
                let alive = daemon.ensure_running();
                let client = client.clone();
                let url = url.clone();
                async move {
                    alive?;
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Ok(Some(())),
                        Ok(r) => bail!("GET /v2/ answered {}", r.status()),
                        Err(_) => Ok(None),
                    }
                }
            },
        )
        .await;
        if let Err(e) = ready {
            daemon.stop(Duration::from_secs(2)).await;
            return Err(e);
        }
        // Answered: make sure the answer came from our process, not another on that port.
        daemon.ensure_running()?;
        Ok(Registry { daemon, port })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A pusher to this registry.
    pub fn pusher(&self) -> e2e::Pusher {
        e2e::Pusher::new(&self.url(), None)
    }

    /// The registry's log file.
    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// Stops the registry.
    pub async fn stop(&mut self) {
        self.daemon.stop(Duration::from_secs(5)).await;
    }
}
