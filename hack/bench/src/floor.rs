//! The floor under every pod start and teardown: runc alone, driven by the bench on a prepared
//! bundle (busybox `sleep`, `runc spec`'s default namespaces, a cgroup under the run's
//! subtree), with no CRI, no image handling, no CNI. A runtime's pod start cannot beat one
//! `runc create` + `runc start`, whatever it does; the gap between the two is what the
//! runtime adds. Samples are taken inside the sequential workload, so they share its
//! conditions. Each start is also timed a second time with berth's cgroup warm-up
//! (`runtime_core::cgroupwarm`, as berthd runs it: a no-op cgroup move asked for just
//! before the runtime starts), which shows what that warm-up saves a container start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::image::{Compression, busybox_layer};

/// A prepared bundle and runc state directory.
pub struct RuncFloor {
    bundle: PathBuf,
    root: PathBuf,
    log: PathBuf,
    cgroup_parent: String,
    next: usize,
    /// berth's warm-up, writing to the floor's own cgroup parent (off on cgroup v2).
    warmer: runtime_core::cgroupwarm::JoinWarmer,
}

/// Runs `runc args` with stdin `/dev/null` and stdout and stderr appended to `log`
/// (never a pipe: `runc create` hands its stdio to the container, which would hold a pipe
/// open forever). Fails with the log's tail.
fn runc(args: &[&str], log: &Path) -> Result<()> {
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = Command::new("runc")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running runc")?;
    if !status.success() {
        bail!(
            "runc {}: {status}: {}",
            args.join(" "),
            e2e::util::tail_file(log, 5)
        );
    }
    Ok(())
}

impl RuncFloor {
    /// Prepares `dir/bundle` (busybox root file system, config.json from `runc spec` with
    /// `sleep 86400`, no terminal) and `dir/state`; containers go below cgroup
    /// `cgroup_parent`.
    pub fn prepare(dir: &Path, cgroup_parent: &str) -> Result<RuncFloor> {
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        let root = dir.join("state");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::create_dir_all(&root)?;
        let layer = busybox_layer(Compression::None)?;
        tar::Archive::new(&layer.blob[..])
            .unpack(&rootfs)
            .context("unpacking busybox into the floor bundle")?;
        let log = dir.join("runc.log");
        let bundle_s = bundle.display().to_string();
        runc(&["spec", "--bundle", &bundle_s], &log)?;
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
        config["process"]["terminal"] = serde_json::json!(false);
        config["process"]["args"] = serde_json::json!(["sleep", "86400"]);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let warmer = match runtime_core::cgroups::Layout::detect() {
            Ok(layout) => runtime_core::cgroupwarm::JoinWarmer::start(&layout, cgroup_parent),
            Err(_) => runtime_core::cgroupwarm::JoinWarmer::off(),
        };
        Ok(RuncFloor {
            bundle,
            root,
            log,
            cgroup_parent: cgroup_parent.to_string(),
            next: 0,
            warmer,
        })
    }

    /// Times `runc create` + `runc start` of a new container, then its teardown as a
    /// runtime does it: `runc kill KILL`, wait until the init is dead, `runc delete`; with
    /// `warm`, berth's cgroup warm-up is asked for just before `runc create`, as berthd
    /// does before a start. Returns (start, teardown).
    pub fn sample(&mut self, warm: bool) -> Result<(Duration, Duration)> {
        let id = format!("floor-{}", self.next);
        self.next += 1;
        // Each container gets its own cgroup, as a runtime gives each container one.
        let config_path = self.bundle.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
        config["linux"]["cgroupsPath"] = serde_json::json!(format!("{}/{id}", self.cgroup_parent));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let root = self.root.display().to_string();
        let bundle = self.bundle.display().to_string();
        let pid_file = self.root.join(format!("{id}.pid"));
        let pid_file_s = pid_file.display().to_string();
        let t0 = Instant::now();
        if warm {
            self.warmer.warm();
        }
        runc(
            &[
                "--root",
                &root,
                "create",
                "--bundle",
                &bundle,
                "--pid-file",
                &pid_file_s,
                &id,
            ],
            &self.log,
        )?;
        runc(&["--root", &root, "start", &id], &self.log)?;
        let t1 = Instant::now();
        let pid: i32 = std::fs::read_to_string(&pid_file)?
            .trim()
            .parse()
            .context("runc's pid file")?;
        runc(&["--root", &root, "kill", &id, "KILL"], &self.log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while e2e::pods::pid_alive(pid) {
            if Instant::now() > deadline {
                bail!("container {id} (pid {pid}) still alive 10 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        runc(&["--root", &root, "delete", &id], &self.log)?;
        let t2 = Instant::now();
        let _ = std::fs::remove_file(&pid_file);
        Ok((t1 - t0, t2 - t1))
    }

    /// Deletes (forcibly) every container left in the state directory, and ends the
    /// warm-up thread, which leaves the floor's cgroup.
    pub fn cleanup(&mut self) {
        self.warmer = runtime_core::cgroupwarm::JoinWarmer::off();
        let root = self.root.display().to_string();
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = runc(&["--root", &root, "delete", "--force", &id], &self.log);
            }
        }
    }
}
