//! The result cache, like libcni's: one file per attachment,
//! `<cache_dir>/<network>-<container id>-<ifname>`, holding the ADD result together with the
//! exact config list and arguments used, so CHECK and DEL get them after a restart even if
//! the conf dir changed. Files are written atomically (temp file, fsync, rename), or with
//! the fsync left to the owner's sync hook.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::conf::NetworkConfigList;
use crate::error::CniError;
use crate::network::SyncHook;

/// The `kind` of entries this crate writes.
const KIND: &str = "cniCacheV1";

/// Cache files larger than this are not read.
const MAX_ENTRY_SIZE: u64 = 16 << 20;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    /// The config list object used for ADD.
    pub config: Value,
    pub cni_args: Vec<(String, String)>,
    /// The capability arguments used for ADD, in wire form.
    pub capability_args: Map<String, Value>,
    /// The final ADD result as the last plugin printed it.
    pub result: Value,
}

impl CacheEntry {
    pub(crate) fn new(
        list: &NetworkConfigList,
        container_id: &str,
        if_name: &str,
        cni_args: &[(String, String)],
        capability_args: &Map<String, Value>,
        result: Value,
    ) -> CacheEntry {
        CacheEntry {
            kind: KIND.to_string(),
            container_id: container_id.to_string(),
            if_name: if_name.to_string(),
            network_name: list.name.clone(),
            config: list.to_value(),
            cni_args: cni_args.to_vec(),
            capability_args: capability_args.clone(),
            result,
        }
    }

    /// The cached config list, validated again.
    pub(crate) fn network(&self) -> Result<NetworkConfigList, String> {
        NetworkConfigList::from_list_value(self.config.clone()).map_err(|e| e.to_string())
    }
}

/// A usable cache entry found for a container interface.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cached {
    /// Its file.
    pub path: PathBuf,
    /// Its content.
    pub entry: CacheEntry,
    /// Its config list, validated.
    pub network: NetworkConfigList,
}

/// The cache directory.
#[derive(Clone)]
pub(crate) struct ResultCache {
    dir: PathBuf,
    sync: Option<SyncHook>,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("dir", &self.dir)
            .field("deferred_sync", &self.sync.is_some())
            .finish()
    }
}

impl ResultCache {
    pub(crate) fn new(dir: PathBuf, sync: Option<SyncHook>) -> ResultCache {
        ResultCache { dir, sync }
    }

    /// The file of one attachment. Network names, container IDs and interface names are
    /// validated before they get here, so the name stays inside the directory.
    pub(crate) fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes an entry atomically, replacing an older one.
    pub(crate) fn write(&self, entry: &CacheEntry) -> Result<PathBuf, CniError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| CniError::io(format!("create CNI cache dir {}", self.dir.display()), e))?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = serde_json::to_vec(entry)
            .map_err(|e| CniError::io("encode CNI cache entry", std::io::Error::other(e)))?;
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            if let Some(sync) = &self.sync {
                fs::rename(&tmp, &path)?;
                sync(&path);
                return Ok(());
            }
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(CniError::io(
                format!("write CNI cache entry {}", path.display()),
                e,
            ));
        }
        Ok(path)
    }

    /// Reads one entry; `Ok(None)` when there is none.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<CacheEntry>, String> {
        use std::io::Read;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let mut bytes = Vec::new();
        file.take(MAX_ENTRY_SIZE)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        let entry: CacheEntry = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a CNI cache entry: {e}", path.display()))?;
        if entry.kind != KIND {
            return Err(format!(
                "{} has unknown kind {:?}",
                path.display(),
                entry.kind
            ));
        }
        Ok(Some(entry))
    }

    /// Every cached entry of one container interface, whatever the network: files named
    /// `*-<container id>-<ifname>` whose content matches. Unreadable files that carry the
    /// name are returned separately so the caller can drop them once the interface is gone.
    pub(crate) fn find(&self, container_id: &str, ifname: &str) -> (Vec<Cached>, Vec<PathBuf>) {
        let mut found = Vec::new();
        let mut broken = Vec::new();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return (found, broken);
        };
        let suffix = format!("-{container_id}-{ifname}");
        let mut paths: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(&suffix) && name.len() > suffix.len()
            })
            .map(|e| e.path())
            .collect();
        paths.sort();
        for path in paths {
            match self.read(&path) {
                Ok(Some(entry))
                    if entry.container_id == container_id && entry.if_name == ifname =>
                {
                    match entry.network() {
                        Ok(network) => found.push(Cached {
                            path,
                            entry,
                            network,
                        }),
                        Err(e) => {
                            tracing::warn!(
                                "ignoring CNI cache entry {}: its config is unusable: {e}",
                                path.display()
                            );
                            broken.push(path);
                        }
                    }
                }
                // Another container whose ID ends like this one's suffix: not ours.
                Ok(Some(_)) | Ok(None) => {}
                Err(e) => {
                    tracing::warn!("ignoring CNI cache entry: {e}");
                    broken.push(path);
                }
            }
        }
        (found, broken)
    }

    /// Removes an entry; a missing one is fine.
    pub(crate) fn remove(&self, path: &Path) -> Result<(), CniError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(
                format!("remove CNI cache entry {}", path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(name: &str) -> NetworkConfigList {
        NetworkConfigList::from_list_value(json!({
            "cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge"}]
        }))
        .expect("valid")
    }

    #[test]
    fn write_find_read_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ResultCache::new(dir.path().join("results"), None);
        assert_eq!(cache.find("c1", "eth0"), (vec![], vec![]), "missing dir");
        let args = vec![("K8S_POD_NAME".to_string(), "p".to_string())];
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 1}]));
        let entry = CacheEntry::new(
            &list("net1"),
            "c1",
            "eth0",
            &args,
            &caps,
            json!({"cniVersion": "1.0.0"}),
        );
        let path = cache.write(&entry).expect("write");
        assert_eq!(path, dir.path().join("results/net1-c1-eth0"));
        // Same ID under another network, another container whose ID ends in "-c1", and
        // another interface.
        cache
            .write(&CacheEntry::new(
                &list("net2"),
                "c1",
                "eth0",
                &[],
                &Map::new(),
                json!({}),
            ))
            .expect("write");
        cache
            .write(&CacheEntry::new(
                &list("net1"),
                "x-c1",
                "eth0",
                &[],
                &Map::new(),
                json!({}),
            ))
            .expect("write");
        cache
            .write(&CacheEntry::new(
                &list("net1"),
                "c1",
                "eth1",
                &[],
                &Map::new(),
                json!({}),
            ))
            .expect("write");
        fs::write(dir.path().join("results/net3-c1-eth0"), "garbage").expect("write");

        let (found, broken) = cache.find("c1", "eth0");
        let names: Vec<&str> = found
            .iter()
            .map(|c| c.entry.network_name.as_str())
            .collect();
        assert_eq!(names, vec!["net1", "net2"]);
        assert_eq!(found[0].entry, entry);
        assert_eq!(found[0].network, list("net1"));
        assert_eq!(found[0].path, path);
        assert_eq!(broken, vec![dir.path().join("results/net3-c1-eth0")]);

        // No temp files left behind; entries are private.
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(dir.path().join("results")).expect("readdir") {
            let e = e.expect("entry");
            assert!(!e.file_name().to_string_lossy().starts_with('.'));
        }
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        cache.remove(&path).expect("remove");
        cache.remove(&path).expect("remove twice");
        assert_eq!(cache.read(&path), Ok(None));
        let (found, _) = cache.find("c1", "eth0");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn sync_hook_gets_the_written_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
        let hook: SyncHook = std::sync::Arc::new({
            let seen = seen.clone();
            move |p: &Path| {
                // Called once the entry is in place under its final name.
                assert!(p.is_file(), "{} not in place", p.display());
                seen.lock().expect("lock").push(p.to_path_buf());
            }
        });
        let cache = ResultCache::new(dir.path().join("results"), Some(hook));
        let entry = CacheEntry::new(&list("n"), "c", "eth0", &[], &Map::new(), json!({}));
        let path = cache.write(&entry).expect("write");
        assert_eq!(*seen.lock().expect("lock"), vec![path.clone()]);
        assert_eq!(cache.read(&path).expect("read"), Some(entry));
        let names: Vec<_> = fs::read_dir(dir.path().join("results"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("n-c-eth0")]);
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ResultCache::new(dir.path().to_path_buf(), None);
        let mut entry = CacheEntry::new(&list("n"), "c", "eth0", &[], &Map::new(), json!({}));
        entry.kind = "cniCacheV9".into();
        let path = cache.write(&entry).expect("write");
        assert!(
            cache
                .read(&path)
                .expect_err("kind")
                .contains("unknown kind")
        );
    }
}
