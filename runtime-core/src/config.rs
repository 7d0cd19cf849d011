//! berth's configuration file (`berth.toml`). Every key has a default, so an empty file
//! (or none at the default path) is a valid configuration; unknown keys are rejected so a
//! typo does not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";
/// Default persistent root directory.
pub const DEFAULT_ROOT: &str = "/var/lib/berth";
/// Default runtime state directory.
pub const DEFAULT_STATE: &str = "/run/berth";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: images, layers, metadata, container state.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: socket, namespaces, bundles.
    pub state: PathBuf,
    /// The CRI socket; `<state>/berth.sock` when unset.
    pub socket: Option<PathBuf>,
    /// Log filter: `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// `HOST:PORT` to serve Prometheus metrics on (`/metrics`); off when unset.
    pub metrics_address: Option<String>,
    /// Image settings.
    pub image: ImageConfig,
    /// Container runtime settings.
    pub runtime: RuntimeConfig,
    /// Pod networking (CNI) settings.
    pub cni: CniConfig,
    /// The streaming server (Exec, Attach, PortForward).
    pub streaming: StreamingConfig,
}

/// The `[streaming]` table: the HTTP server that Exec, Attach and PortForward URLs point at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `HOST:PORT` to listen on; port 0 picks a free port at start (as containerd does).
    pub address: String,
    /// PEM certificate chain; with `tls_key_file`, the server speaks HTTPS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// How long a stream connection may stay without traffic before it is closed: a
    /// duration such as `4h`, `30m`, `1h30m` or `90s`.
    pub idle_timeout: String,
}

impl StreamingConfig {
    /// `idle_timeout` as a duration (validated at load).
    pub fn idle_timeout(&self) -> Result<std::time::Duration> {
        parse_duration(&self.idle_timeout).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "streaming.idle_timeout {:?} is not a duration such as 4h, 30m or 90s",
                self.idle_timeout
            ))
        })
    }
}

/// Parses `1h30m`, `4h`, `90s`, `250ms`: one or more number-unit pairs, units h, m, s, ms;
/// `None` when malformed or zero.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
    }
    (!total.is_zero()).then_some(total)
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".to_string(),
            tls_cert_file: None,
            tls_key_file: None,
            idle_timeout: "4h".to_string(),
        }
    }
}

/// The `[cni]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory of CNI network configs; the lexically first valid one is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds a plugin may run before it is killed.
    pub plugin_timeout_secs: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout_secs: 60,
        }
    }
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Handler used when a pod names none.
    pub default_handler: String,
    /// The per-pod monitor binary; empty means `berth-monitor` next to berthd.
    pub monitor_path: Option<PathBuf>,
    /// Cgroup parent for pods whose config sets none.
    pub default_cgroup_parent: String,
    /// Whether a cgroup move by berthd precedes the OCI runtime's on container create, start
    /// and exec, so that the runtime's does not wait for an RCU grace period (see
    /// `cgroupwarm`).
    pub cgroup_warmup: bool,
    /// Seconds an OCI runtime call (kill, delete, state, update) may take before it is
    /// killed and the CRI call fails with DeadlineExceeded.
    pub call_timeout_secs: u64,
    /// Runtime handlers (RuntimeClass handler name → OCI runtime).
    pub handlers: std::collections::BTreeMap<String, HandlerConfig>,
}

/// One `[runtime.handlers.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The OCI runtime binary: an absolute path, or a name looked up in PATH.
    pub path: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let mut handlers = std::collections::BTreeMap::new();
        handlers.insert(
            "runc".to_string(),
            HandlerConfig {
                path: PathBuf::from("runc"),
            },
        );
        handlers.insert(
            "crun".to_string(),
            HandlerConfig {
                path: PathBuf::from("crun"),
            },
        );
        RuntimeConfig {
            default_handler: "runc".to_string(),
            monitor_path: None,
            default_cgroup_parent: "/berth".to_string(),
            cgroup_warmup: true,
            call_timeout_secs: 60,
            handlers,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[image]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// A containers-registries.conf(5) v2 file with registry rewrites, mirrors, insecure
    /// and blocked registries. Unset: every registry is contacted directly over HTTPS.
    pub registries_config: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Seconds to wait for a registry connection before the pull fails.
    pub connect_timeout_secs: u64,
    /// Seconds without receiving a byte before a registry read fails.
    pub read_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            socket: None,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            metrics_address: None,
            image: ImageConfig::default(),
            runtime: RuntimeConfig::default(),
            cni: CniConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            registries_config: None,
            max_concurrent_downloads: 3,
            connect_timeout_secs: 30,
            read_timeout_secs: 120,
        }
    }
}

impl Config {
    /// Parses configuration text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("config {origin}: {e}")))?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Loads the file at `path`. When `explicit` is false a missing file means the
    /// built-in defaults (the default path is optional); an explicitly named file must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(e) => Err(Error::InvalidArgument(format!(
                "config file {}: {e}",
                path.display()
            ))),
        }
    }

    /// The socket path in effect.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.state.join("berth.sock"))
    }

    /// Checks values serde cannot.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("config {origin}: {m}")));
        if !self.root.is_absolute() {
            return bad(format!("root {:?} must be an absolute path", self.root));
        }
        if !self.state.is_absolute() {
            return bad(format!("state {:?} must be an absolute path", self.state));
        }
        if let Some(s) = &self.socket
            && !s.is_absolute()
        {
            return bad(format!("socket {s:?} must be an absolute path"));
        }
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            return bad(format!(
                "runtime.default_handler {:?} is not a configured handler",
                self.runtime.default_handler
            ));
        }
        if self.runtime.call_timeout_secs == 0 {
            return bad("runtime.call_timeout_secs must be at least 1".to_string());
        }
        if self.image.max_concurrent_downloads == 0 {
            return bad("image.max_concurrent_downloads must be at least 1".to_string());
        }
        let streaming = &self.streaming;
        if streaming.address.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "streaming.address {:?} is not an IP:PORT (such as 127.0.0.1:0)",
                streaming.address
            ));
        }
        match (&streaming.tls_cert_file, &streaming.tls_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return bad(
                    "streaming.tls_cert_file and streaming.tls_key_file must be set together"
                        .to_string(),
                );
            }
            _ => {}
        }
        if let Err(e) = streaming.idle_timeout() {
            return bad(e.to_string());
        }
        Ok(())
    }

    /// The default configuration as a commented berth.toml.
    pub fn default_toml() -> String {
        let d = Config::default();
        format!(
            r#"# berth.toml: configuration of berthd. Every key is optional; shown are the defaults.
# Command-line flags override these values.

# Persistent data: images, layers, metadata, container state.
root = "{root}"

# Runtime state that does not survive a reboot: socket, pinned namespaces, bundles.
state = "{state}"

# The CRI socket kubelet and crictl connect to (0660, root). Default: <state>/berth.sock
# socket = "{state}/berth.sock"

# error, warn, info, debug, trace, or a tracing filter directive such as "berth=debug".
log_level = "{level}"

# "text" or "json".
log_format = "text"

# HOST:PORT serving Prometheus metrics at /metrics. Off when unset.
# metrics_address = "127.0.0.1:9090"

[image]
# containers-registries.conf(5) version 2 file: [[registry]] prefix / location / insecure /
# blocked and [[registry.mirror]]. Unset: every registry is contacted directly over HTTPS.
# registries_config = "/etc/berth/registries.conf"

# Layers downloaded in parallel per pull.
max_concurrent_downloads = {mcd}

# Seconds to wait for a registry connection.
connect_timeout_secs = {ct}

# Seconds without a byte from a registry before the pull fails.
read_timeout_secs = {rt}

[runtime]
# Runtime handler for pods that name none (RuntimeClass handler "").
default_handler = "runc"

# The per-pod monitor binary. Default: berth-monitor next to berthd.
# monitor_path = "/usr/local/bin/berth-monitor"

# Cgroup parent (cgroupfs) for pods whose config sets none.
default_cgroup_parent = "/berth"

# Before the OCI runtime moves a container's process into its cgroup (create, start,
# exec), a berthd thread makes a move of its own that changes nothing (cgroup v1 only,
# within the cgroup above), so that the kernel's RCU grace period for the move (5-8 ms) has begun
# before the runtime needs it. false: the runtime waits for it.
cgroup_warmup = true

# Seconds an OCI runtime call (kill, delete, state, update) may take: a runtime that hangs
# is killed and that one CRI call fails with DeadlineExceeded. Starts and execs run in the
# pod monitor, which has limits of its own.
call_timeout_secs = 60

# RuntimeClass handlers: name -> OCI runtime binary (absolute, or looked up in PATH).
[runtime.handlers.runc]
path = "runc"

[runtime.handlers.crun]
path = "crun"

[cni]
# CNI network configs: the lexically first valid *.conflist / *.conf / *.json is used.
conf_dir = "/etc/cni/net.d"

# Where CNI plugin binaries are looked for, in order (/usr/lib/cni is Debian's place).
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]

# Seconds a CNI plugin may run before it is killed and the pod fails.
plugin_timeout_secs = 60

[streaming]
# Where the Exec / Attach / PortForward URLs handed to kubelet and crictl point: IP:PORT.
# Port 0 picks a free port at start. Keep it on loopback unless TLS is set: a URL's
# single-use token is the only credential.
address = "{saddr}"

# PEM certificate chain and key: set both to serve the streams over HTTPS.
# tls_cert_file = "/etc/berth/streaming.crt"
# tls_key_file = "/etc/berth/streaming.key"

# How long a stream connection may stay without traffic before it is closed:
# a duration such as 4h, 30m, 1h30m or 90s.
idle_timeout = "{idle}"
"#,
            root = d.root.display(),
            state = d.state.display(),
            level = d.log_level,
            mcd = d.image.max_concurrent_downloads,
            ct = d.image.connect_timeout_secs,
            rt = d.image.read_timeout_secs,
            saddr = d.streaming.address,
            idle = d.streaming.idle_timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_to_default() {
        let c = Config::parse(&Config::default_toml(), "default").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn streaming_table_is_validated() {
        let c = Config::parse(
            "[streaming]\naddress = \"0.0.0.0:10010\"\nidle_timeout = \"1h30m\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.streaming.idle_timeout().unwrap(),
            std::time::Duration::from_secs(5400)
        );
        for bad in [
            "address = \"localhost\"",
            "idle_timeout = \"4 hours\"",
            "idle_timeout = \"0s\"",
            "tls_cert_file = \"/c.pem\"",
        ] {
            let e = Config::parse(&format!("[streaming]\n{bad}\n"), "t.toml").unwrap_err();
            assert!(e.to_string().contains("streaming."), "{bad}: {e}");
        }
        assert_eq!(
            parse_duration("250ms"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn unknown_key_is_rejected_naming_it() {
        let e = Config::parse("roots = \"/x\"", "t.toml").unwrap_err();
        assert!(e.to_string().contains("roots"), "{e}");
        assert!(e.to_string().contains("t.toml"), "{e}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_explicit_is_error() {
        let p = Path::new("/nonexistent/berth.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        let e = Config::load(p, true).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/berth.toml"));
    }

    #[test]
    fn relative_paths_rejected() {
        assert!(Config::parse("root = \"rel\"", "t").is_err());
        assert!(Config::parse("[image]\nmax_concurrent_downloads = 0", "t").is_err());
        let c = Config::parse("state = \"/s\"", "t").unwrap();
        assert_eq!(c.socket_path(), PathBuf::from("/s/berth.sock"));
    }
}
