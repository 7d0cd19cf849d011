//! Network configuration lists: parsing, validation and loading from the conf dir with
//! libcni's rules (files `*.conf`, `*.conflist`, `*.json` in lexical order, the first valid
//! one wins, a single-plugin `.conf` is wrapped into a list).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::version;

/// Config files larger than this are rejected (a CNI config is a few hundred bytes).
pub const MAX_CONF_SIZE: u64 = 1 << 20;

/// File name extensions loaded from the conf dir, as libcni.
pub const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Why a config file or object is not a usable network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not a valid network configuration.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfError {
    ConfError::Invalid(msg.into())
}

/// One plugin of a network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin's `type`: the name of its executable in the bin dirs.
    pub plugin_type: String,
    /// Capabilities the plugin declares with `true` (`"capabilities": {"portMappings": true}`).
    pub capabilities: Vec<String>,
    /// The plugin's whole configuration object, as written.
    pub config: Map<String, Value>,
}

impl PluginConfig {
    /// Validates one plugin object of a list.
    pub fn from_value(value: Value) -> Result<PluginConfig, ConfError> {
        let Value::Object(config) = value else {
            return Err(invalid("plugin config is not a JSON object"));
        };
        let plugin_type = match config.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(invalid("plugin \"type\" is not a string")),
            None => return Err(invalid("plugin has no \"type\"")),
        };
        validate_plugin_type(&plugin_type)?;
        let mut capabilities = Vec::new();
        match config.get("capabilities") {
            None | Some(Value::Null) => {}
            Some(Value::Object(caps)) => {
                for (name, enabled) in caps {
                    match enabled {
                        Value::Bool(true) => capabilities.push(name.clone()),
                        Value::Bool(false) => {}
                        _ => {
                            return Err(invalid(format!(
                                "plugin {plugin_type}: capability {name:?} is not a boolean"
                            )));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(invalid(format!(
                    "plugin {plugin_type}: \"capabilities\" is not an object"
                )));
            }
        }
        Ok(PluginConfig {
            plugin_type,
            capabilities,
            config,
        })
    }

    /// The JSON given to the plugin on stdin: its config with the list's `name` and
    /// `cniVersion` injected, `runtimeConfig` holding the capability arguments it declares
    /// (only those present in `capability_args`), and `prevResult` when given.
    pub(crate) fn stdin(
        &self,
        list: &NetworkConfigList,
        capability_args: &Map<String, Value>,
        prev_result: Option<&Value>,
    ) -> Vec<u8> {
        let mut conf = self.config.clone();
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        conf.insert("name".into(), Value::String(list.name.clone()));
        let mut runtime_config = Map::new();
        for cap in &self.capabilities {
            if let Some(arg) = capability_args.get(cap) {
                runtime_config.insert(cap.clone(), arg.clone());
            }
        }
        // As libcni: the runtime's runtimeConfig replaces one written in the file, and only
        // when there is something to pass.
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf).to_string().into_bytes()
    }
}

/// A network: a named list of plugins run in order (CNI "network configuration list").
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network's name.
    pub name: String,
    /// The spec version used with every plugin (one of [`crate::SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// `disableCheck`: CHECK is skipped for this network.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
    /// The list object (synthesized for a wrapped single-plugin config); what the result
    /// cache stores.
    raw: Map<String, Value>,
}

impl NetworkConfigList {
    /// Parses a configuration list (`{"cniVersion", "name", "plugins": [...]}`).
    pub fn from_list_json(bytes: &[u8]) -> Result<NetworkConfigList, ConfError> {
        Self::from_list_value(serde_json::from_slice(bytes)?)
    }

    /// Parses a single plugin configuration (a `.conf` file) and wraps it into a list of one.
    pub fn from_plugin_json(bytes: &[u8]) -> Result<NetworkConfigList, ConfError> {
        Self::from_plugin_value(serde_json::from_slice(bytes)?)
    }

    /// Validates a configuration list object.
    pub fn from_list_value(value: Value) -> Result<NetworkConfigList, ConfError> {
        let Value::Object(raw) = value else {
            return Err(invalid("not a JSON object"));
        };
        let name = network_name(&raw)?;
        let cni_version = list_version(&raw)?;
        let disable_check = match raw.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(invalid("\"disableCheck\" is not a boolean")),
        };
        let plugins = match raw.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            Some(Value::Array(_)) => return Err(invalid("\"plugins\" is empty")),
            Some(_) => return Err(invalid("\"plugins\" is not an array")),
            None => return Err(invalid("no \"plugins\" key")),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PluginConfig::from_value(p.clone())
                    .map_err(|e| invalid(format!("plugins[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: None,
            raw,
        })
    }

    /// Validates a single plugin configuration object and wraps it into a list, as libcni's
    /// `ConfListFromConf`: the list takes the plugin's `name` and `cniVersion`.
    pub fn from_plugin_value(value: Value) -> Result<NetworkConfigList, ConfError> {
        let Value::Object(conf) = &value else {
            return Err(invalid("not a JSON object"));
        };
        let name = network_name(conf)?;
        let cni_version = list_version(conf)?;
        let plugin = PluginConfig::from_value(value.clone())?;
        let mut raw = Map::new();
        raw.insert("cniVersion".into(), Value::String(cni_version.clone()));
        raw.insert("name".into(), Value::String(name.clone()));
        raw.insert("plugins".into(), Value::Array(vec![value]));
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check: false,
            plugins: vec![plugin],
            source: None,
            raw,
        })
    }

    /// Loads one file: a `.conflist` is a list; a `.conf` or `.json` is a single plugin
    /// wrapped into a list, unless it holds a `plugins` array and no `type` (then it is a
    /// list too).
    pub fn from_file(path: &Path) -> Result<NetworkConfigList, ConfError> {
        let bytes = read_limited(path)?;
        let value: Value = serde_json::from_slice(&bytes)?;
        let is_list = path.extension().is_some_and(|e| e == "conflist")
            || (value.get("plugins").is_some() && value.get("type").is_none());
        let mut list = if is_list {
            Self::from_list_value(value)?
        } else {
            Self::from_plugin_value(value)?
        };
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// The list as a JSON object (what the result cache stores, and what
    /// [`NetworkConfigList::from_list_value`] reads back).
    pub fn to_value(&self) -> Value {
        Value::Object(self.raw.clone())
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ConfError> {
    let read_err = |source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONF_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONF_SIZE {
        return Err(invalid(format!("larger than {MAX_CONF_SIZE} bytes")));
    }
    Ok(bytes)
}

/// `name`: required; the spec's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (it also names the cache
/// files, so nothing else may pass).
fn network_name(obj: &Map<String, Value>) -> Result<String, ConfError> {
    let name = match obj.get("name") {
        Some(Value::String(n)) => n,
        Some(_) => return Err(invalid("\"name\" is not a string")),
        None => return Err(invalid("no \"name\"")),
    };
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if !valid {
        return Err(invalid(format!(
            "network name {name:?} is invalid (letters, digits, '_', '.', '-'; at most 128)"
        )));
    }
    Ok(name.clone())
}

/// The version to use: the highest supported entry of CNI 1.1's `cniVersions` when present,
/// else `cniVersion`, which must be supported.
fn list_version(obj: &Map<String, Value>) -> Result<String, ConfError> {
    if let Some(versions) = obj.get("cniVersions") {
        let Value::Array(versions) = versions else {
            return Err(invalid("\"cniVersions\" is not an array"));
        };
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| version::is_supported(v))
            .max_by_key(|v| version::parse(v));
        if let Some(best) = best {
            return Ok(best.to_string());
        }
        if !obj.contains_key("cniVersion") {
            return Err(invalid(format!(
                "none of \"cniVersions\" is supported (supported: {})",
                version::SUPPORTED_VERSIONS.join(", ")
            )));
        }
    }
    match obj.get("cniVersion") {
        Some(Value::String(v)) if version::is_supported(v) => Ok(v.clone()),
        Some(Value::String(v)) => Err(invalid(format!(
            "cniVersion {v:?} is not supported (supported: {})",
            version::SUPPORTED_VERSIONS.join(", ")
        ))),
        Some(_) => Err(invalid("\"cniVersion\" is not a string")),
        None => Err(invalid("no \"cniVersion\"")),
    }
}

fn validate_plugin_type(t: &str) -> Result<(), ConfError> {
    if t.is_empty() || t == "." || t == ".." || t.contains(['/', '\0']) {
        return Err(invalid(format!(
            "plugin type {t:?} is not a file name in the bin dirs"
        )));
    }
    Ok(())
}

/// What identifies a version of one config file, to notice changes cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    name: OsString,
    len: u64,
    ino: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
}

/// The candidate config files of `dir` in lexical order with their stamps. A missing or
/// unreadable dir has none.
pub(crate) fn conf_files(dir: &Path) -> Vec<(PathBuf, FileStamp)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, FileStamp)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let ext = path.extension()?.to_str()?;
            if !CONF_EXTENSIONS.contains(&ext) {
                return None;
            }
            // Follows symlinks, as libcni; directories are not config files.
            let meta = fs::metadata(&path).ok()?;
            if !meta.is_file() {
                return None;
            }
            let stamp = FileStamp {
                name: entry.file_name(),
                len: meta.len(),
                ino: meta.ino(),
                mtime: meta.modified().ok(),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            };
            Some((path, stamp))
        })
        .collect();
    files.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    files
}

/// The outcome of reading a conf dir.
#[derive(Debug, Default)]
pub struct DirLoad {
    /// The network in use: the first valid file in lexical order.
    pub network: Option<NetworkConfigList>,
    /// Files before it that were skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the conf dir with libcni's rules. Each skipped file is logged with a warning
/// naming it.
pub fn load_dir(dir: &Path) -> DirLoad {
    load_files(conf_files(dir).into_iter().map(|(p, _)| p))
}

pub(crate) fn load_files(files: impl IntoIterator<Item = PathBuf>) -> DirLoad {
    let mut load = DirLoad::default();
    for path in files {
        match NetworkConfigList::from_file(&path) {
            Ok(list) => {
                tracing::debug!(file = %path.display(), network = %list.name, "CNI network config loaded");
                load.network = Some(list);
                break;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "skipping CNI config {}: {e}", path.display());
                load.skipped.push((path, e.to_string()));
            }
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).expect("write conf");
        p
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net-a","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#;

    #[test]
    fn parses_a_list() {
        let l = NetworkConfigList::from_list_json(LIST.as_bytes()).expect("valid");
        assert_eq!(l.name, "net-a");
        assert_eq!(l.cni_version, "1.0.0");
        assert!(!l.disable_check);
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert!(l.plugins[0].capabilities.is_empty());
        assert_eq!(l.plugins[1].capabilities, vec!["portMappings".to_string()]);
        // Round trip through the cache form.
        let again = NetworkConfigList::from_list_value(l.to_value()).expect("round trip");
        assert_eq!(again, l);
    }

    #[test]
    fn rejects_bad_lists() {
        let cases = [
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"../x","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "no \"cniVersion\"",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "not supported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"plugins\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "not a file name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x","capabilities":{"a":1}}]}"#,
                "not a boolean",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"x"}]}"#,
                "disableCheck",
            ),
        ];
        for (text, want) in cases {
            let err = NetworkConfigList::from_list_json(text.as_bytes())
                .expect_err(text)
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let l = NetworkConfigList::from_list_value(json!({
            "cniVersion": "0.4.0", "cniVersions": ["0.4.0", "1.0.0", "9.9.9"],
            "name": "n", "disableCheck": "true", "plugins": [{"type": "x"}]
        }))
        .expect("valid");
        assert_eq!(l.cni_version, "1.0.0");
        assert!(l.disable_check);
    }

    #[test]
    fn wraps_a_single_plugin() {
        let l = NetworkConfigList::from_plugin_json(
            br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"br0"}"#,
        )
        .expect("valid");
        assert_eq!(l.name, "single");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].config["bridge"], "br0");
        let again = NetworkConfigList::from_list_value(l.to_value()).expect("round trip");
        assert_eq!(again.plugins, l.plugins);
    }

    #[test]
    fn stdin_injects_name_version_and_declared_capabilities_only() {
        let l = NetworkConfigList::from_list_json(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
              {"type":"a","name":"ignored","cniVersion":"0.3.0","runtimeConfig":{"old":1}},
              {"type":"b","capabilities":{"portMappings":true,"dns":true,"ipRanges":false}},
              {"type":"c","capabilities":{"bandwidth":true}}]}"#,
        )
        .expect("valid");
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 80}]));
        caps.insert("ipRanges".into(), json!([[{"subnet": "10.0.0.0/24"}]]));
        let prev = json!({"cniVersion": "1.0.0", "ips": []});

        let a: Value = serde_json::from_slice(&l.plugins[0].stdin(&l, &caps, None)).expect("json");
        assert_eq!(a["name"], "net");
        assert_eq!(a["cniVersion"], "1.0.0");
        // Nothing declared: the file's runtimeConfig stays, no prevResult.
        assert_eq!(a["runtimeConfig"], json!({"old": 1}));
        assert!(a.get("prevResult").is_none());

        let b: Value =
            serde_json::from_slice(&l.plugins[1].stdin(&l, &caps, Some(&prev))).expect("json");
        assert_eq!(
            b["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]}),
            "dns declared but absent, ipRanges present but not declared"
        );
        assert_eq!(b["prevResult"], prev);

        let c: Value = serde_json::from_slice(&l.plugins[2].stdin(&l, &caps, None)).expect("json");
        assert!(c.get("runtimeConfig").is_none());
    }

    #[test]
    fn dir_lexical_order_and_first_valid_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "20-b.conflist", &LIST.replace("net-a", "net-b"));
        write(dir.path(), "10-a.conflist", LIST);
        write(
            dir.path(),
            "30-c.conf",
            r#"{"cniVersion":"1.0.0","name":"c","type":"x"}"#,
        );
        let load = load_dir(dir.path());
        assert_eq!(load.network.expect("network").name, "net-a");
        assert!(load.skipped.is_empty());
    }

    #[test]
    fn dir_skips_malformed_and_junk_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = write(
            dir.path(),
            "00-junk.conf",
            "\u{1}\u{2} not json at all \u{ff}",
        );
        let bad = write(
            dir.path(),
            "05-bad.conflist",
            r#"{"cniVersion":"1.0.0","name":"x"}"#,
        );
        let trunc = write(dir.path(), "07-trunc.json", r#"{"cniVersion":"1.0.0","na"#);
        fs::write(dir.path().join("08-binary.conflist"), [0u8, 159, 146, 150]).expect("write");
        write(dir.path(), "01-ignored.txt", "whatever");
        fs::create_dir(dir.path().join("02-dir.conf")).expect("mkdir");
        write(
            dir.path(),
            "50-single.conf",
            r#"{"cniVersion":"0.3.1","name":"single","type":"bridge"}"#,
        );
        let load = load_dir(dir.path());
        let net = load.network.expect("network");
        assert_eq!(net.name, "single");
        assert_eq!(
            net.source.as_deref(),
            Some(dir.path().join("50-single.conf").as_path())
        );
        let skipped: Vec<&PathBuf> = load.skipped.iter().map(|(p, _)| p).collect();
        assert_eq!(
            skipped,
            vec![&junk, &bad, &trunc, &dir.path().join("08-binary.conflist")]
        );
        assert!(
            load.skipped[1].1.contains("plugins"),
            "{:?}",
            load.skipped[1]
        );
    }

    /// Records formatted events (level and message) of the current thread.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct MessageVisitor(String);

    impl tracing::field::Visit for MessageVisitor {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut visitor = MessageVisitor(String::new());
            event.record(&mut visitor);
            let line = format!("{} {}", event.metadata().level(), visitor.0);
            self.0.lock().expect("lock").push(line);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn skipped_files_are_logged_as_warnings_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = write(dir.path(), "10-bad.conflist", "{\"cniVersion\": ");
        write(dir.path(), "20-good.conflist", LIST);
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let load =
            tracing::subscriber::with_default(Capture(lines.clone()), || load_dir(dir.path()));
        assert_eq!(load.network.expect("network").name, "net-a");
        let lines = lines.lock().expect("lock").clone();
        let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{lines:?}");
        assert!(
            warnings[0].contains(&bad.display().to_string()),
            "{lines:?}"
        );
        assert!(warnings[0].contains("not valid JSON"), "{lines:?}");
    }

    #[test]
    fn missing_dir_has_no_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load = load_dir(&dir.path().join("nope"));
        assert!(load.network.is_none());
        assert!(load.skipped.is_empty());
    }

    #[test]
    fn oversized_file_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = format!(
            r#"{{"cniVersion":"1.0.0","name":"big","type":"x","pad":"{}"}}"#,
            "a".repeat(MAX_CONF_SIZE as usize)
        );
        write(dir.path(), "big.conf", &big);
        let load = load_dir(dir.path());
        assert!(load.network.is_none());
        assert!(load.skipped[0].1.contains("larger than"));
    }
}
