//! Running one plugin per the spec's execution protocol: the binary executed directly (no
//! shell) with the CNI_* environment and PATH only, the config on stdin, the result or the
//! error object on stdout; in its own process group, killed with the group on timeout.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::error::{CniError, quote_output};
use crate::result::parse_error;

/// PATH given to plugins when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The spec's commands this crate issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

/// Everything one invocation needs.
pub(crate) struct Invocation<'a> {
    pub plugin: &'a str,
    pub binary: &'a Path,
    pub command: Command,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub cni_path: &'a OsStr,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

/// Finds the plugin's executable in the bin dirs, first match wins.
pub(crate) fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs {
        let candidate = dir.join(plugin);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(CniError::PluginNotFound {
        plugin: plugin.to_string(),
        dirs: dirs.to_vec(),
    })
}

/// Runs the plugin; returns its stdout when it succeeded.
pub(crate) async fn invoke(inv: Invocation<'_>) -> Result<Vec<u8>, CniError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let mut cmd = tokio::process::Command::new(inv.binary);
    cmd.env_clear()
        .env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.cni_args)
        .env("CNI_PATH", inv.cni_path)
        .env("PATH", path)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    tracing::debug!(
        plugin = inv.plugin,
        command = inv.command.as_str(),
        container_id = inv.container_id,
        "running CNI plugin"
    );
    let mut child = spawn(&mut cmd).await.map_err(|e| {
        CniError::io(
            format!(
                "execute CNI plugin {} ({})",
                inv.plugin,
                inv.binary.display()
            ),
            e,
        )
    })?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    let stdin_pipe = child.stdin.take();
    let stdin_bytes = inv.stdin;
    let run = async move {
        let write = async move {
            if let Some(mut pipe) = stdin_pipe {
                // A plugin may exit without reading its config: EPIPE is its business.
                let _ = pipe.write_all(&stdin_bytes).await;
                let _ = pipe.shutdown().await;
            }
        };
        let (_, output) = tokio::join!(write, child.wait_with_output());
        output
    };
    let output = match tokio::time::timeout(inv.timeout, run).await {
        Ok(output) => output,
        Err(_) => {
            // The dropped child got SIGKILL (kill_on_drop); its group too, so helpers the
            // plugin started (IPAM plugins, iptables) do not linger.
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(CniError::Timeout {
                plugin: inv.plugin.to_string(),
                secs: inv.timeout.as_secs_f64(),
            });
        }
    };
    let output =
        output.map_err(|e| CniError::io(format!("wait for CNI plugin {}", inv.plugin), e))?;
    if let Some(err) = parse_error(&output.stdout)
        && (!output.status.success() || looks_like_error_only(&output.stdout))
    {
        return Err(CniError::Plugin {
            plugin: inv.plugin.to_string(),
            code: err.code,
            msg: err.msg,
            details: err.details,
        });
    }
    if !output.status.success() {
        let status = match (output.status.code(), output.status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => format!("ended with {}", output.status),
        };
        let stderr = if output.stderr.iter().all(u8::is_ascii_whitespace) {
            quote_output(&output.stdout)
        } else {
            quote_output(&output.stderr)
        };
        return Err(CniError::Crashed {
            plugin: inv.plugin.to_string(),
            status,
            stderr,
        });
    }
    if !output.stderr.is_empty() {
        tracing::debug!(plugin = inv.plugin, stderr = %quote_output(&output.stderr), "CNI plugin stderr");
    }
    Ok(output.stdout)
}

/// An exit-0 stdout that is an error object rather than a result (no result keys).
fn looks_like_error_only(stdout: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(stdout)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .is_some_and(|o| {
            o.contains_key("msg")
                && !["interfaces", "ips", "routes", "dns"]
                    .iter()
                    .any(|k| o.contains_key(*k))
        })
}

/// Spawns, retrying briefly on ETXTBSY: a binary just written (a plugin being installed, a
/// test's fake plugin) can still be open for writing in a child another thread forked.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0u64;
    loop {
        match cmd.spawn() {
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) && attempt < 10 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            other => return other,
        }
    }
}
