//! What the monitor's integration tests share: a pod directory with a running monitor and
//! a runc root, busybox bundles, CRI log parsing, polling helpers. Run as root.

#![allow(dead_code)] // each test binary uses its own part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runtime_core::monitor::{self, CreateRequest, ExecRequest, ExitInfo, MonitorClient};
pub const RUNC: &str = "/usr/sbin/runc";
pub const BUSYBOX: &str = "/bin/busybox";

pub fn monitor_bin() -> PathBuf {
    std::env::var_os("BERTH_MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-monitor")))
}

pub fn random_suffix() -> String {
    let mut buf = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `f` every 10 ms until it returns `Some`, failing after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

pub fn stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().map(str::to_string).collect()
}

/// A pod directory with a running monitor, a runc root and the containers created in it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub runc_root: PathBuf,
    pub pod_dir: PathBuf,
    pub monitor_pid: i32,
    pub client: MonitorClient,
    pub containers: Vec<String>,
    pub cgroup: String,
    pub pause_pids: Vec<i32>,
}

pub struct Bundle {
    pub id: String,
    pub dir: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("berth-mon-")
            .tempdir_in("/tmp")
            .unwrap();
        let pod_dir = dir.path().join("pod");
        let runc_root = dir.path().join("runc");
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::create_dir_all(&runc_root).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let info = monitor::spawn(&monitor_bin(), &pod_dir).expect("spawn monitor");
        assert_eq!(info.socket, pod_dir.join("monitor.sock"));
        let pid_file = std::fs::read_to_string(pod_dir.join("monitor.pid")).unwrap();
        assert_eq!(pid_file.trim(), info.pid.to_string());
        Fixture {
            client: MonitorClient::new(info.socket.clone()),
            monitor_pid: info.pid,
            dir,
            runc_root,
            pod_dir,
            containers: Vec::new(),
            cgroup: format!("berth-test-{}", random_suffix()),
            pause_pids: Vec::new(),
        }
    }

    /// A bundle with a busybox rootfs running `args`.
    pub fn bundle(&mut self, id: &str, args: &[&str]) -> Bundle {
        self.bundle_with(id, args, false)
    }

    /// A bundle with a busybox rootfs running `args`, with a terminal if `terminal`.
    pub fn bundle_with(&mut self, id: &str, args: &[&str], terminal: bool) -> Bundle {
        let dir = self.dir.path().join("bundles").join(id);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "sleep", "cat", "head", "seq", "kill", "tr", "stty", "wc", "true",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": terminal,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "berth-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "cgroupsPath": format!("/{}-{id}", self.cgroup),
                "namespaces": [
                    {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}
                ]
            }
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Bundle {
            id: id.to_string(),
            dir,
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    pub fn create_request(&mut self, b: &Bundle) -> CreateRequest {
        self.create_request_with(b, false, false, false)
    }

    /// The console socket of container or exec `id` in the pod directory.
    pub fn console_socket(&self, id: &str) -> PathBuf {
        self.pod_dir.join(format!("{id}.tty"))
    }

    /// A create request with a terminal (`tty`), stdin, stdin_once.
    pub fn create_request_with(
        &mut self,
        b: &Bundle,
        tty: bool,
        stdin: bool,
        stdin_once: bool,
    ) -> CreateRequest {
        self.containers.push(b.id.clone());
        let console = self.console_socket(&b.id);
        let pid_file = b.dir.join("init.pid");
        let argv = [
            RUNC,
            "--root",
            self.runc_root.to_str().unwrap(),
            "--log",
            b.dir.join("runc.log").to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b.dir.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
        let mut argv = argv;
        if tty {
            argv.push("--console-socket".into());
            argv.push(console.display().to_string());
        }
        argv.push(b.id.clone());
        CreateRequest {
            container_id: b.id.clone(),
            argv,
            pid_file,
            log_path: self.log_path(&b.id),
            exit_file: b.dir.join("exit.json"),
            oom_control: Some(
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(format!("{}-{}", self.cgroup, b.id))
                    .join("memory.oom_control"),
            ),
            timeout_secs: 30,
            console_socket: tty.then_some(console),
            stdin,
            stdin_once,
        }
    }

    /// Creates and starts a container with a terminal, stdin, stdin_once as asked.
    pub async fn run_with(
        &mut self,
        id: &str,
        args: &[&str],
        tty: bool,
        stdin: bool,
        stdin_once: bool,
    ) -> (Bundle, i32) {
        let b = self.bundle_with(id, args, tty);
        let req = self.create_request_with(&b, tty, stdin, stdin_once);
        let resp = self.client.create(req).await.expect("create");
        assert!(resp.pid > 0);
        self.runc(&["start", id]);
        (b, resp.pid)
    }

    /// A detached `runc exec` of `cmd` in container `id`; `tag` names its files.
    pub fn exec_request(
        &self,
        id: &str,
        tag: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
    ) -> ExecRequest {
        let dir = self.dir.path().join("execs");
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join(format!("{tag}.pid"));
        let console = self.console_socket(tag);
        let mut argv: Vec<String> = [
            RUNC,
            "--root",
            self.runc_root.to_str().unwrap(),
            "--log",
            dir.join(format!("{tag}.log")).to_str().unwrap(),
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if tty {
            argv.extend(["--tty".into(), "--console-socket".into()]);
            argv.push(console.display().to_string());
        }
        argv.push(id.into());
        argv.extend(cmd.iter().map(|s| s.to_string()));
        ExecRequest {
            container_id: id.into(),
            argv,
            pid_file,
            tty,
            stdin,
            timeout_secs: 30,
            console_socket: tty.then_some(console),
        }
    }

    pub fn runc(&self, args: &[&str]) {
        let out = Command::new(RUNC)
            .arg("--root")
            .arg(&self.runc_root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates and starts a container; returns its init pid.
    pub async fn run(&mut self, id: &str, args: &[&str]) -> (Bundle, i32) {
        let b = self.bundle(id, args);
        let req = self.create_request(&b);
        let resp = self.client.create(req).await.expect("create");
        assert!(resp.pid > 0);
        self.runc(&["start", id]);
        (b, resp.pid)
    }

    pub async fn wait_exit(&self, id: &str) -> ExitInfo {
        wait_for_async(
            &format!("exit of {id}"),
            Duration::from_secs(20),
            || async {
                let list = self.client.list().await.expect("list");
                list.into_iter().find(|c| c.id == id).and_then(|c| c.exit)
            },
        )
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new(RUNC)
                .arg("--root")
                .arg(&self.runc_root)
                .args(["delete", "-f", id])
                .output();
        }
        let mut pids = self.pause_pids.clone();
        pids.push(self.monitor_pid);
        for pid in pids {
            // SAFETY: signals processes this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !process_gone(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !process_gone(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !std::thread::panicking() {
            assert!(
                !self.pod_dir.join("monitor.sock").exists(),
                "the monitor left its socket behind"
            );
        }
    }
}

/// One parsed CRI log entry.
#[derive(Debug)]
pub struct Entry {
    pub ts: String,
    pub stream: String,
    pub tag: String,
    pub content: Vec<u8>,
}

pub fn parse_log(path: &Path) -> Vec<Entry> {
    let data = std::fs::read(path).unwrap_or_default();
    assert!(
        data.is_empty() || data.ends_with(b"\n"),
        "log does not end with a newline"
    );
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(4, |&b| b == b' ');
            let ts = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let stream = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let tag = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let content = parts.next().unwrap_or_default().to_vec();
            check_timestamp(&ts);
            assert!(
                stream == "stdout" || stream == "stderr",
                "bad stream {stream}"
            );
            assert!(tag == "F" || tag == "P", "bad tag {tag}");
            Entry {
                ts,
                stream,
                tag,
                content,
            }
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ`, within a day of now.
pub fn check_timestamp(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 30, "timestamp {ts}");
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            29 => c == b'Z',
            _ => c.is_ascii_digit(),
        };
        assert!(ok, "timestamp {ts}");
    }
    let out = Command::new("date")
        .args(["-u", "-d", &ts[..19].replace('T', " "), "+%s"])
        .output()
        .unwrap();
    let secs: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date parses the timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - secs).abs() < 86_400,
        "timestamp {ts} is not around now"
    );
}
