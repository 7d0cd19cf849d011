//! Plugin execution against fake plugins: small `#!/bin/sh` scripts written into a temporary
//! bin dir that record their stdin, environment and call order, then print a canned result
//! or error, exit non-zero, hang or kill themselves.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cni::{Attachment, Cni, CniError, CniOptions, PortMapping, RuntimeConfig};
use serde_json::{Value, json};

const NETNS: &str = "/run/berth-test/none/net";

struct Fixture {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    bin2: PathBuf,
    conf: PathBuf,
    cache: PathBuf,
    rec: PathBuf,
}

fn result_json(ip: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "veth0", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": NETNS}],
        "ips": [{"address": format!("{ip}/24"), "gateway": "10.99.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
    .to_string()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let f = Fixture {
            bin: root.join("bin"),
            bin2: root.join("bin2"),
            conf: root.join("net.d"),
            cache: root.join("cache/results"),
            rec: root.join("rec"),
            _dir: dir,
        };
        for d in [&f.bin, &f.bin2, &f.conf, &f.rec] {
            fs::create_dir_all(d).expect("mkdir");
        }
        f
    }

    fn opts(&self, timeout: Duration) -> CniOptions {
        CniOptions {
            conf_dir: self.conf.clone(),
            bin_dirs: vec![self.bin.clone(), self.bin2.clone()],
            cache_dir: self.cache.clone(),
            plugin_timeout: timeout,
        }
    }

    fn cni(&self) -> Cni {
        Cni::new(self.opts(Duration::from_secs(20)))
    }

    /// A plugin that records stdin, env and the call, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        self.plugin_in(&self.bin, name, body);
    }

    fn plugin_in(&self, dir: &Path, name: &str, body: &str) {
        let script = format!(
            "#!/bin/sh\nrec='{rec}'\ncat > \"$rec/{name}.$CNI_COMMAND.stdin\"\nenv > \"$rec/{name}.$CNI_COMMAND.env\"\necho \"{name} $CNI_COMMAND\" >> \"$rec/log\"\n{body}\n",
            rec = self.rec.display()
        );
        let path = dir.join(name);
        fs::write(&path, script).expect("write plugin");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// A plugin that prints `result` on ADD and nothing otherwise.
    fn ok_plugin(&self, name: &str, result: &str) {
        self.plugin(
            name,
            &format!("if [ \"$CNI_COMMAND\" = ADD ]; then printf '%s' '{result}'; fi"),
        );
    }

    /// Writes a config file. Each write gets a distinct mtime, as edits more than a clock
    /// tick apart do (two same-size writes within one tick would look unchanged).
    fn conf(&self, file: &str, text: &str) {
        static TICK: AtomicU64 = AtomicU64::new(0);
        let path = self.conf.join(file);
        fs::write(&path, text).expect("write conf");
        let when = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000 + TICK.fetch_add(1, Ordering::Relaxed));
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
    }

    fn list(&self, file: &str, name: &str, version: &str, plugins: Value) {
        self.conf(
            file,
            &json!({"cniVersion": version, "name": name, "plugins": plugins}).to_string(),
        );
    }

    fn log(&self) -> Vec<String> {
        fs::read_to_string(self.rec.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_log(&self) {
        let _ = fs::remove_file(self.rec.join("log"));
    }

    fn stdin(&self, name: &str, cmd: &str) -> Value {
        let text = fs::read_to_string(self.rec.join(format!("{name}.{cmd}.stdin")))
            .unwrap_or_else(|e| panic!("{name} got no {cmd}: {e}"));
        serde_json::from_str(&text).expect("stdin is JSON")
    }

    fn env(&self, name: &str, cmd: &str) -> HashMap<String, String> {
        fs::read_to_string(self.rec.join(format!("{name}.{cmd}.env")))
            .expect("env recorded")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cache_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.cache)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn attachment(id: &str) -> Attachment {
    let mut a = Attachment::new(id, NETNS);
    a.args = Attachment::pod_args("default", "web-0", id, "uid-1");
    a
}

#[tokio::test]
async fn no_network() {
    let f = Fixture::new();
    let missing = CniOptions {
        conf_dir: f.conf.join("does-not-exist"),
        ..f.opts(Duration::from_secs(5))
    };
    let cni = Cni::new(missing);
    assert!(cni.network().is_none());
    let (reason, message) = cni.status().expect_err("not ready");
    assert_eq!(reason, "NetworkPluginNotReady");
    assert!(message.contains("does-not-exist"), "{message}");
    let err = cni.add(&attachment("c1")).await.expect_err("no network");
    assert!(matches!(err, CniError::NoNetwork { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    assert!(matches!(
        cni.check(&attachment("c1")).await,
        Err(CniError::NoNetwork { .. })
    ));
    // Nothing cached, nothing loaded: nothing to do.
    cni.del(&attachment("c1")).await.expect("del is a no-op");
}

#[tokio::test]
async fn conf_dir_is_reread_when_it_changes() {
    let f = Fixture::new();
    let cni = f.cni();
    assert!(cni.network().is_none());
    assert!(cni.status().is_err());

    f.list("20-b.conflist", "net-b", "1.0.0", json!([{"type": "p"}]));
    assert_eq!(cni.network().expect("loaded").name, "net-b");
    assert_eq!(cni.status(), Ok(()));

    // A lexically earlier file wins.
    f.conf(
        "10-a.conf",
        r#"{"cniVersion":"0.4.0","name":"net-a","type":"p"}"#,
    );
    let net = cni.network().expect("loaded");
    assert_eq!(net.name, "net-a");
    assert_eq!(net.plugins.len(), 1, "a .conf is wrapped into a list");

    // Rewritten in place.
    f.conf(
        "10-a.conf",
        r#"{"cniVersion":"0.4.0","name":"net-a2","type":"p"}"#,
    );
    assert_eq!(cni.network().expect("loaded").name, "net-a2");

    // Broken: the next valid file is used.
    f.conf("10-a.conf", "{broken");
    assert_eq!(cni.network().expect("loaded").name, "net-b");

    fs::remove_file(f.conf.join("10-a.conf")).expect("rm");
    fs::remove_file(f.conf.join("20-b.conflist")).expect("rm");
    assert!(cni.network().is_none());

    // Only junk: not ready, and the message names the file.
    f.conf("99-junk.conflist", "\u{0}garbage");
    let (_, message) = cni.status().expect_err("not ready");
    assert!(message.contains("99-junk.conflist"), "{message}");

    // Clones share the loaded state.
    let clone = cni.clone();
    f.list("30-c.conflist", "net-c", "1.1.0", json!([{"type": "p"}]));
    assert_eq!(clone.network().expect("loaded").name, "net-c");
    assert_eq!(cni.status(), Ok(()));
}

#[tokio::test]
async fn add_check_del_contract() {
    let f = Fixture::new();
    let first = result_json("10.99.0.5");
    let second = result_json("10.99.0.6");
    f.ok_plugin("first", &first);
    f.ok_plugin("second", &second);
    f.list(
        "10-net.conflist",
        "testnet",
        "1.0.0",
        json!([
            {"type": "first", "bridge": "x", "capabilities": {"bandwidth": false}},
            {"type": "second", "capabilities": {"portMappings": true, "dns": true}, "extra": {"k": 1}}
        ]),
    );
    let cni = f.cni();
    let mut a = attachment("c0ffee");
    a.capabilities = RuntimeConfig {
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: "127.0.0.1".into(),
        }],
        bandwidth: Some(cni::Bandwidth {
            ingress_rate: 1,
            ingress_burst: 2,
            egress_rate: 3,
            egress_burst: 4,
        }),
        ..RuntimeConfig::default()
    };

    let result = cni.add(&a).await.expect("add");
    assert_eq!(
        result.pod_ips(),
        vec!["10.99.0.6".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(f.log(), vec!["first ADD", "second ADD"]);

    // stdin: the plugin's own config with name and cniVersion injected...
    let s1 = f.stdin("first", "ADD");
    assert_eq!(s1["name"], "testnet");
    assert_eq!(s1["cniVersion"], "1.0.0");
    assert_eq!(s1["type"], "first");
    assert_eq!(s1["bridge"], "x");
    assert!(s1.get("prevResult").is_none());
    assert!(s1.get("runtimeConfig").is_none(), "bandwidth not declared");
    // ...the previous plugin's result, and only the declared capabilities that are set.
    let s2 = f.stdin("second", "ADD");
    assert_eq!(
        s2["prevResult"],
        serde_json::from_str::<Value>(&first).expect("json")
    );
    assert_eq!(
        s2["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]})
    );
    assert_eq!(s2["extra"], json!({"k": 1}));

    // env: the CNI variables and PATH, nothing inherited from this process.
    let env = f.env("first", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "c0ffee");
    assert_eq!(env["CNI_NETNS"], NETNS);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=uid-1"
    );
    assert_eq!(
        env["CNI_PATH"],
        format!("{}:{}", f.bin.display(), f.bin2.display())
    );
    assert!(env.contains_key("PATH"));
    assert!(
        !env.keys().any(|k| k.starts_with("CARGO") || k == "HOME"),
        "inherited environment: {env:?}"
    );

    // The final result is cached with the config.
    assert_eq!(f.cache_files(), vec!["testnet-c0ffee-eth0"]);
    assert_eq!(cni.cached_result("c0ffee", "eth0"), Some(result.clone()));
    assert_eq!(cni.cached_result("other", "eth0"), None);

    // CHECK: in order, the cached result as prevResult.
    f.clear_log();
    cni.check(&a).await.expect("check");
    assert_eq!(f.log(), vec!["first CHECK", "second CHECK"]);
    let final_result = serde_json::from_str::<Value>(&second).expect("json");
    assert_eq!(f.stdin("first", "CHECK")["prevResult"], final_result);
    assert_eq!(f.stdin("second", "CHECK")["prevResult"], final_result);
    assert_eq!(f.env("second", "CHECK")["CNI_COMMAND"], "CHECK");

    // DEL: reverse order, the cached result as prevResult, the cache entry removed.
    f.clear_log();
    cni.del(&a).await.expect("del");
    assert_eq!(f.log(), vec!["second DEL", "first DEL"]);
    assert_eq!(f.stdin("first", "DEL")["prevResult"], final_result);
    assert!(f.stdin("second", "DEL")["runtimeConfig"]["portMappings"].is_array());
    assert_eq!(f.env("first", "DEL")["CNI_COMMAND"], "DEL");
    assert!(f.cache_files().is_empty());
    assert_eq!(cni.cached_result("c0ffee", "eth0"), None);

    // A second DEL still runs (nothing cached: current network, no prevResult) and succeeds.
    f.clear_log();
    cni.del(&a).await.expect("second del");
    assert_eq!(f.log(), vec!["second DEL", "first DEL"]);
    assert!(f.stdin("first", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn del_uses_the_cached_config_after_the_conf_dir_changed() {
    let f = Fixture::new();
    f.ok_plugin("old", &result_json("10.99.0.7"));
    f.ok_plugin("new", &result_json("10.99.0.8"));
    f.list(
        "10-old.conflist",
        "oldnet",
        "0.4.0",
        json!([{"type": "old", "mark": "v1"}]),
    );
    let a = attachment("abc123");
    {
        let cni = f.cni();
        cni.add(&a).await.expect("add");
    }
    assert_eq!(f.cache_files(), vec!["oldnet-abc123-eth0"]);

    // The conf dir now holds another network; a new instance stands for a restart.
    fs::remove_file(f.conf.join("10-old.conflist")).expect("rm");
    f.list(
        "10-new.conflist",
        "newnet",
        "1.0.0",
        json!([{"type": "new"}]),
    );
    let cni = f.cni();
    cni.check(&a).await.expect("check with the cached config");
    f.clear_log();
    let mut restarted = a.clone();
    restarted.args.clear(); // the cached CNI_ARGS are used
    cni.del(&restarted).await.expect("del");
    assert_eq!(f.log(), vec!["old DEL"]);
    let del_in = f.stdin("old", "DEL");
    assert_eq!(del_in["name"], "oldnet");
    assert_eq!(del_in["cniVersion"], "0.4.0");
    assert_eq!(del_in["mark"], "v1");
    assert_eq!(del_in["prevResult"]["ips"][0]["address"], "10.99.0.7/24");
    assert!(f.env("old", "DEL")["CNI_ARGS"].contains("K8S_POD_NAME=web-0"));
    assert!(f.cache_files().is_empty());

    // And with no config at all, the cache alone is enough.
    f.clear_log();
    cni.add(&a).await.expect("add on newnet");
    fs::remove_file(f.conf.join("10-new.conflist")).expect("rm");
    let cni = f.cni();
    assert!(cni.network().is_none());
    cni.del(&a).await.expect("del from the cache");
    assert_eq!(f.log(), vec!["new ADD", "new DEL"]);
    assert!(f.cache_files().is_empty());
}

#[tokio::test]
async fn corrupt_cache_entry_falls_back_and_is_removed() {
    let f = Fixture::new();
    f.ok_plugin("p", &result_json("10.99.0.9"));
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "p"}]));
    fs::create_dir_all(&f.cache).expect("mkdir");
    fs::write(f.cache.join("net-dead01-eth0"), "{not json").expect("write");
    let cni = f.cni();
    assert_eq!(cni.cached_result("dead01", "eth0"), None);
    cni.del(&attachment("dead01")).await.expect("del");
    assert_eq!(f.log(), vec!["p DEL"]);
    assert!(f.stdin("p", "DEL").get("prevResult").is_none());
    assert!(f.cache_files().is_empty());
}

#[tokio::test]
async fn plugin_error_is_reported_with_the_plugin_name_and_rolled_back() {
    let f = Fixture::new();
    f.ok_plugin("good", &result_json("10.99.0.10"));
    f.plugin(
        "bad",
        r#"if [ "$CNI_COMMAND" = ADD ]; then printf '%s' '{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range 10.99.0.0/24 full"}'; exit 1; fi"#,
    );
    f.list(
        "10.conflist",
        "net",
        "1.0.0",
        json!([{"type": "good"}, {"type": "bad"}, {"type": "never"}]),
    );
    f.ok_plugin("never", &result_json("10.99.0.11"));
    let cni = f.cni();
    let err = cni.add(&attachment("c1")).await.expect_err("bad fails");
    match &err {
        CniError::Plugin {
            plugin,
            code,
            msg,
            details,
        } => {
            assert_eq!(plugin, "bad");
            assert_eq!(*code, 11);
            assert_eq!(msg, "no IP addresses available");
            assert_eq!(details, "range 10.99.0.0/24 full");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "CNI plugin bad failed (code 11): no IP addresses available: range 10.99.0.0/24 full"
    );
    // The plugins that ran got a DEL, in reverse; the rest never ran; nothing cached.
    assert_eq!(f.log(), vec!["good ADD", "bad ADD", "bad DEL", "good DEL"]);
    assert!(f.cache_files().is_empty());
}

#[tokio::test]
async fn error_object_with_exit_zero_is_an_error() {
    let f = Fixture::new();
    f.plugin(
        "liar",
        r#"printf '%s' '{"cniVersion":"1.0.0","code":7,"msg":"invalid network config"}'"#,
    );
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "liar"}]));
    let err = f.cni().add(&attachment("c1")).await.expect_err("error");
    assert!(
        matches!(&err, CniError::Plugin { plugin, code: 7, .. } if plugin == "liar"),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_plugin_fails_before_anything_runs() {
    let f = Fixture::new();
    f.ok_plugin("good", &result_json("10.99.0.12"));
    f.list(
        "10.conflist",
        "net",
        "1.0.0",
        json!([{"type": "good"}, {"type": "nosuchplugin"}]),
    );
    // Not executable: not a plugin.
    fs::write(f.bin.join("noexec"), "#!/bin/sh\n").expect("write");
    let cni = f.cni();
    assert_eq!(cni.status(), Ok(()), "still selected, as containerd");
    let err = cni.add(&attachment("c1")).await.expect_err("missing");
    match &err {
        CniError::PluginNotFound { plugin, dirs } => {
            assert_eq!(plugin, "nosuchplugin");
            assert_eq!(dirs, &vec![f.bin.clone(), f.bin2.clone()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nosuchplugin"));
    assert!(f.log().is_empty());

    f.list("10.conflist", "net", "1.0.0", json!([{"type": "noexec"}]));
    let err = cni
        .add(&attachment("c1"))
        .await
        .expect_err("not executable");
    assert!(matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "noexec"));

    // Found in the second bin dir.
    f.plugin_in(
        &f.bin2,
        "second-dir",
        &format!("printf '%s' '{}'", result_json("10.99.0.13")),
    );
    f.list(
        "10.conflist",
        "net",
        "1.0.0",
        json!([{"type": "second-dir"}]),
    );
    cni.add(&attachment("c1")).await.expect("found in bin2");
}

#[tokio::test]
async fn crashing_plugins() {
    let f = Fixture::new();
    f.plugin("crash", "echo 'panic: something broke' >&2; exit 3");
    f.plugin("suicide", "kill -9 $$");
    f.plugin("textout", "echo 'plain text failure'; exit 1");
    let cni = f.cni();

    f.list("10.conflist", "net", "1.0.0", json!([{"type": "crash"}]));
    let err = cni.add(&attachment("c1")).await.expect_err("crash");
    match &err {
        CniError::Crashed {
            plugin,
            status,
            stderr,
        } => {
            assert_eq!(plugin, "crash");
            assert_eq!(status, "exited with code 3");
            assert_eq!(stderr, "panic: something broke");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "CNI plugin crash exited with code 3: panic: something broke"
    );

    f.list("10.conflist", "net", "1.0.0", json!([{"type": "suicide"}]));
    let err = cni.add(&attachment("c1")).await.expect_err("killed");
    assert!(
        matches!(&err, CniError::Crashed { plugin, status, .. } if plugin == "suicide" && status == "was killed by signal 9"),
        "{err:?}"
    );

    f.list("10.conflist", "net", "1.0.0", json!([{"type": "textout"}]));
    let err = cni.add(&attachment("c1")).await.expect_err("text");
    assert!(
        matches!(&err, CniError::Crashed { plugin, stderr, .. } if plugin == "textout" && stderr == "plain text failure"),
        "{err:?}"
    );
    assert!(f.cache_files().is_empty());
}

fn gone_or_zombie(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn timeout_kills_the_plugin_and_its_group() {
    let f = Fixture::new();
    f.plugin(
        "slow",
        r#"if [ "$CNI_COMMAND" = ADD ]; then sleep 30 & echo $! > "$rec/sleep.pid"; echo $$ > "$rec/sh.pid"; wait; fi"#,
    );
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "slow"}]));
    let cni = Cni::new(f.opts(Duration::from_secs(1)));
    let started = Instant::now();
    let err = cni.add(&attachment("c1")).await.expect_err("timeout");
    let took = started.elapsed();
    assert!(
        matches!(&err, CniError::Timeout { plugin, secs } if plugin == "slow" && *secs == 1.0),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "CNI plugin slow timed out after 1 s and was killed"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The rollback DEL ran (and returned at once).
    assert_eq!(f.log(), vec!["slow ADD", "slow DEL"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    for file in ["sh.pid", "sleep.pid"] {
        let pid = fs::read_to_string(f.rec.join(file)).expect("pid recorded");
        let pid = pid.trim();
        while !gone_or_zombie(pid) {
            assert!(Instant::now() < deadline, "{file} {pid} still running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn invalid_results_name_the_plugin() {
    let f = Fixture::new();
    let cases = [
        ("garbage", "printf 'this is not json'", "not JSON"),
        ("empty", "true", "empty output"),
        (
            "ancient",
            r#"printf '%s' '{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}'"#,
            "not supported",
        ),
        (
            "badaddr",
            r#"printf '%s' '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}'"#,
            "CIDR",
        ),
    ];
    let cni = f.cni();
    for (name, body, want) in cases {
        f.plugin(name, body);
        f.list("10.conflist", "net", "1.0.0", json!([{"type": name}]));
        let err = cni.add(&attachment("c1")).await.expect_err(name);
        match &err {
            CniError::InvalidResult { plugin, reason } => {
                assert_eq!(plugin, name);
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(err.to_string().contains(name));
    }
}

#[tokio::test]
async fn legacy_0_4_0_single_plugin_conf() {
    let f = Fixture::new();
    f.ok_plugin(
        "legacy",
        r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"6","interface":0,"address":"fd00::5/64"},{"version":"4","interface":0,"address":"10.99.1.5/24","gateway":"10.99.1.1"}],"dns":{}}"#,
    );
    f.conf(
        "10-legacy.conf",
        r#"{"cniVersion":"0.4.0","name":"legacy","type":"legacy"}"#,
    );
    let cni = f.cni();
    let result = cni.add(&attachment("c1")).await.expect("add");
    assert_eq!(result.cni_version, "0.4.0");
    let ips: Vec<String> = result.pod_ips().iter().map(ToString::to_string).collect();
    assert_eq!(ips, vec!["10.99.1.5", "fd00::5"]);
    assert_eq!(f.stdin("legacy", "ADD")["name"], "legacy");
    cni.del(&attachment("c1")).await.expect("del");
}

#[tokio::test]
async fn check_is_skipped_before_0_4_0_and_with_disable_check() {
    let f = Fixture::new();
    f.ok_plugin("p", &result_json("10.99.0.20"));
    let cni = f.cni();

    f.list("10.conflist", "net", "0.3.1", json!([{"type": "p"}]));
    cni.add(&attachment("c1")).await.expect("add");
    f.clear_log();
    cni.check(&attachment("c1")).await.expect("check");
    assert!(f.log().is_empty(), "{:?}", f.log());
    // 0.3.x: no prevResult on DEL.
    cni.del(&attachment("c1")).await.expect("del");
    assert!(f.stdin("p", "DEL").get("prevResult").is_none());

    f.conf(
        "10.conflist",
        &json!({"cniVersion": "1.0.0", "name": "net", "disableCheck": true, "plugins": [{"type": "p"}]})
            .to_string(),
    );
    cni.add(&attachment("c2")).await.expect("add");
    f.clear_log();
    cni.check(&attachment("c2")).await.expect("check");
    assert!(f.log().is_empty(), "{:?}", f.log());
    cni.del(&attachment("c2")).await.expect("del");
}

#[tokio::test]
async fn check_failure_names_the_plugin() {
    let f = Fixture::new();
    f.plugin(
        "picky",
        &format!(
            r#"case "$CNI_COMMAND" in ADD) printf '%s' '{}';; CHECK) printf '%s' '{{"code":99,"msg":"eth0 has the wrong address"}}'; exit 1;; esac"#,
            result_json("10.99.0.30")
        ),
    );
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "picky"}]));
    let cni = f.cni();
    cni.add(&attachment("c1")).await.expect("add");
    let err = cni.check(&attachment("c1")).await.expect_err("check");
    assert!(
        matches!(&err, CniError::Plugin { plugin, code: 99, .. } if plugin == "picky"),
        "{err:?}"
    );
    cni.del(&attachment("c1")).await.expect("del");
}

#[tokio::test]
async fn failed_del_keeps_the_cache_for_a_retry() {
    let f = Fixture::new();
    let flag = f.rec.join("fail-del");
    f.plugin(
        "flaky",
        &format!(
            r#"case "$CNI_COMMAND" in ADD) printf '%s' '{}';; DEL) if [ -e '{}' ]; then echo 'iptables locked' >&2; exit 2; fi;; esac"#,
            result_json("10.99.0.40"),
            flag.display()
        ),
    );
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "flaky"}]));
    let cni = f.cni();
    cni.add(&attachment("c1")).await.expect("add");
    fs::write(&flag, "").expect("flag");
    let err = cni.del(&attachment("c1")).await.expect_err("del fails");
    assert!(matches!(&err, CniError::Crashed { plugin, .. } if plugin == "flaky"));
    assert_eq!(f.cache_files(), vec!["net-c1-eth0"]);
    fs::remove_file(&flag).expect("rm");
    cni.del(&attachment("c1")).await.expect("retry");
    assert!(f.stdin("flaky", "DEL")["prevResult"].is_object());
    assert!(f.cache_files().is_empty());
}

#[tokio::test]
async fn bad_attachments_are_rejected_before_running_anything() {
    let f = Fixture::new();
    f.ok_plugin("p", &result_json("10.99.0.50"));
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "p"}]));
    let cni = f.cni();
    let mut a = attachment("../../etc/passwd");
    assert!(matches!(
        cni.add(&a).await,
        Err(CniError::InvalidArgument(_))
    ));
    assert!(matches!(
        cni.del(&a).await,
        Err(CniError::InvalidArgument(_))
    ));
    a = attachment("ok");
    a.args.push(("K8S_POD_NAME".into(), "x;CNI_EVIL=1".into()));
    assert!(matches!(
        cni.add(&a).await,
        Err(CniError::InvalidArgument(_))
    ));
    a = attachment("ok");
    a.ifname = "eth0/../../x".into();
    assert!(matches!(
        cni.check(&a).await,
        Err(CniError::InvalidArgument(_))
    ));
    assert!(f.log().is_empty());
    assert!(f.cache_files().is_empty());
}

#[tokio::test]
async fn concurrent_adds_on_clones() {
    let f = Fixture::new();
    f.ok_plugin("p", &result_json("10.99.0.60"));
    f.list("10.conflist", "net", "1.0.0", json!([{"type": "p"}]));
    let cni = f.cni();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let cni = cni.clone();
        tasks.push(tokio::spawn(async move {
            cni.add(&attachment(&format!("c{i}"))).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("add");
    }
    assert_eq!(f.cache_files().len(), 8);
    for i in 0..8 {
        cni.del(&attachment(&format!("c{i}"))).await.expect("del");
    }
    assert!(f.cache_files().is_empty());
}
