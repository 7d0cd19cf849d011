//! The crate's error type. Every variant about a plugin names the plugin, so a failed pod
//! start tells the user which plugin to look at.

use std::path::PathBuf;

/// Longest plugin output quoted in an error message.
const MAX_QUOTED: usize = 4096;

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No valid network configuration is loaded from the conf dir.
    #[error("no valid CNI network config in {}", conf_dir.display())]
    NoNetwork {
        /// The directory that was searched.
        conf_dir: PathBuf,
    },
    /// A plugin named by the network configuration has no executable in the bin dirs.
    #[error("CNI plugin {plugin:?} not found in {}", join_dirs(dirs))]
    PluginNotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The directories that were searched.
        dirs: Vec<PathBuf>,
    },
    /// The plugin reported an error with the spec's error JSON on stdout.
    #[error("CNI plugin {plugin} failed (code {code}): {msg}{}", suffix(details))]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// The spec's error code (1-99 are reserved by the spec).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, possibly empty.
        details: String,
    },
    /// The plugin failed without the spec's error JSON: a non-zero exit, a signal.
    #[error("CNI plugin {plugin} {status}{}", suffix(stderr))]
    Crashed {
        /// The plugin's `type`.
        plugin: String,
        /// How it ended, e.g. "exited with code 2" or "was killed by signal 9".
        status: String,
        /// The end of its stderr (or of its stdout when stderr was empty).
        stderr: String,
    },
    /// The plugin ran longer than the configured timeout and was killed with its process
    /// group.
    #[error("CNI plugin {plugin} timed out after {secs} s and was killed")]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// The timeout in seconds.
        secs: f64,
    },
    /// The plugin exited successfully but its result is unusable.
    #[error("CNI plugin {plugin} returned an invalid result: {reason}")]
    InvalidResult {
        /// The plugin's `type`.
        plugin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The attachment given by the caller is unusable (bad container ID, interface name,
    /// CNI_ARGS pair).
    #[error("invalid CNI attachment: {0}")]
    InvalidArgument(String),
    /// A filesystem or process error; `context` says what was being done (and names the
    /// plugin when one was being executed).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl CniError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> CniError {
        CniError::Io {
            context: context.into(),
            source,
        }
    }
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no bin dirs configured)".to_string();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn suffix(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The last `MAX_QUOTED` bytes of a plugin's output, lossily decoded and trimmed.
pub(crate) fn quote_output(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_QUOTED);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if start > 0 {
        format!("...{text}")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_plugin() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            code: 11,
            msg: "failed to allocate".into(),
            details: "range full".into(),
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge failed (code 11): failed to allocate: range full"
        );
        let e = CniError::PluginNotFound {
            plugin: "nope".into(),
            dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin \"nope\" not found in /opt/cni/bin, /usr/lib/cni"
        );
        let e = CniError::Crashed {
            plugin: "x".into(),
            status: "exited with code 3".into(),
            stderr: String::new(),
        };
        assert_eq!(e.to_string(), "CNI plugin x exited with code 3");
        let e = CniError::Timeout {
            plugin: "slow".into(),
            secs: 1.5,
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin slow timed out after 1.5 s and was killed"
        );
    }

    #[test]
    fn quoted_output_is_bounded() {
        let long = vec![b'a'; MAX_QUOTED * 3];
        let q = quote_output(&long);
        assert!(q.len() <= MAX_QUOTED + 3);
        assert!(q.starts_with("..."));
        assert_eq!(quote_output(b"  oops\n"), "oops");
        // Invalid UTF-8, even cut in the middle of a character, never panics.
        let mut bytes = [0xe2, 0x82, 0xac].repeat(MAX_QUOTED);
        bytes.push(0xff);
        let _ = quote_output(&bytes);
    }
}
