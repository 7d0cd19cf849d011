//! Pod networking checks for the e2e tests: a [`NetEnv`] (a [`PodEnv`] whose berthd runs
//! with the test's own CNI network config, bin dirs and plugin timeout, and a unique
//! default cgroup parent), fake CNI plugins that record their calls ([`FakePlugins`]),
//! and host inspection (bridge ports, host-local allocations, the CNI result cache,
//! iptables rules, pod addresses).
//!
//! Everything here only touches what the test created: its bridge (deleted by the
//! harness), its temporary dirs, the portmap plugin's shared nat chains only when they did
//! not exist before the test and hold no pod's rules any more ([`PortmapChainsGuard`]), and
//! `net.ipv4.ip_forward` only to restore the value it had ([`IpForwardGuard`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::berthd::{Berthd, BerthdOptions};
use crate::network::TestNetwork;
use crate::pods::{PodEnv, mounts_under, push_busybox, unique};
use crate::registry::Registry;

/// Where Debian's containernetworking-plugins live.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// A [`PodEnv`] with the test's own network config. Derefs to the [`PodEnv`].
pub struct NetEnv {
    /// The pod environment (its drop removes every pod, then stops berthd and deletes the
    /// test bridge).
    pub env: PodEnv,
    /// The unique default cgroup parent berthd runs with (`/berth-e2e-<hex>`); a pod's
    /// cgroup is `<parent>/<pod id>`.
    pub cgroup_parent: String,
}

impl std::ops::Deref for NetEnv {
    type Target = PodEnv;
    fn deref(&self) -> &PodEnv {
        &self.env
    }
}

impl std::ops::DerefMut for NetEnv {
    fn deref_mut(&mut self) -> &mut PodEnv {
        &mut self.env
    }
}

impl NetEnv {
    /// Starts berthd with `opts` (plus a unique default cgroup parent) and the conflist
    /// `conflist(network, ipam_dir)` returns as `<conf dir>/10-e2e.conflist` (`None`: an
    /// empty conf dir). With `busybox`, a registry is started, busybox pushed and pulled.
    ///
    /// `PodEnv` has no constructor taking [`BerthdOptions`], so this starts a plain
    /// `PodEnv` and swaps its (idle, pod-less) berthd for the configured one.
    pub async fn start(
        busybox: bool,
        mut opts: BerthdOptions,
        conflist: impl FnOnce(&TestNetwork, &Path) -> Option<String>,
    ) -> Result<NetEnv> {
        let (registry, bb) = if busybox {
            let reg = Registry::start().await?;
            let bb = push_busybox(&reg.pusher()).await?;
            opts.registry = Some(reg.addr());
            (Some(reg), Some(bb))
        } else {
            (None, None)
        };
        let cgroup_parent = format!("/{}", unique("berth-e2e-net"));
        opts.extra_config.push_str(&format!(
            "\n[runtime]\ndefault_cgroup_parent = \"{cgroup_parent}\"\n"
        ));
        // The harness writes nothing; the conflist is written below, once the network
        // (bridge name, subnet) of this berthd is known.
        opts.cni_conflist = Some(String::new());
        let mut berthd = Berthd::prepare(opts)?;
        if let Some(c) = conflist(&berthd.cni, &ipam_dir(&berthd)) {
            std::fs::write(berthd.cni_conf_dir().join("10-e2e.conflist"), c)?;
        }
        berthd.launch().await?;

        let mut env = PodEnv::start().await?;
        let idle = std::mem::replace(&mut env.berthd, berthd);
        drop(idle);
        env.reconnect().await?;
        env.track_cgroup_parent(&cgroup_parent);
        env.registry = registry;
        env.busybox = bb.clone();
        if let Some(bb) = bb {
            let id = env.cri.pull("busybox").await?;
            assert_eq!(id, bb.id(), "PullImage busybox returns the image ID");
        }
        Ok(NetEnv { env, cgroup_parent })
    }

    /// The berthd's test network.
    pub fn net(&self) -> &TestNetwork {
        &self.env.berthd.cni
    }

    /// The host-local `dataDir` of the harness's conflists.
    pub fn ipam_dir(&self) -> PathBuf {
        ipam_dir(&self.env.berthd)
    }

    /// `<root>/cni/results`: the CNI result cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.env.berthd.root().join("cni/results")
    }

    /// Files of the CNI result cache.
    pub fn cache_files(&self) -> Vec<String> {
        PodEnv::dir_entries(&self.cache_dir())
    }

    /// Cache files naming `pod_id`.
    pub fn cache_files_of(&self, pod_id: &str) -> Vec<String> {
        self.cache_files()
            .into_iter()
            .filter(|f| f.contains(pod_id))
            .collect()
    }

    /// host-local's allocations (IP-named files) for the env's network.
    pub fn allocations(&self) -> Vec<String> {
        ipam_allocations(&self.ipam_dir(), &self.net().name)
    }

    /// Ports (veths) on the test bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        bridge_ports(&self.net().bridge)
    }

    /// The pinned network namespace file of a pod.
    pub fn netns_file(&self, pod_id: &str) -> PathBuf {
        self.env.pod_dir(pod_id).join("ns/net")
    }

    /// Asserts nothing of a pod that failed to start (or of any pod) is left: no pod
    /// listed, no pod dir or mount under the state dir, no sandbox record, no cache entry,
    /// no port on the bridge, no IPAM allocation, no pod cgroup, no process mentioning the
    /// state dir.
    pub async fn assert_no_pod_leftovers(&self, what: &str) {
        let listed = self.env.list_pod_ids(None).await.expect("ListPodSandbox");
        assert!(listed.is_empty(), "{what}: pods listed: {listed:?}");
        let pods = PodEnv::dir_entries(&self.env.pods_dir());
        assert!(pods.is_empty(), "{what}: pod dirs left: {pods:?}");
        let m = mounts_under(&self.env.berthd.state());
        assert!(
            m.is_empty(),
            "{what}: mounts left under the state dir: {m:?}"
        );
        let records = PodEnv::dir_entries(&self.env.berthd.root().join("sandboxes"));
        assert!(
            records.is_empty(),
            "{what}: sandbox records left: {records:?}"
        );
        let cache = self.cache_files();
        assert!(
            cache.is_empty(),
            "{what}: CNI cache entries left: {cache:?}"
        );
        let ports = self.bridge_ports();
        assert!(
            ports.is_empty(),
            "{what}: veths left on the bridge: {ports:?}"
        );
        let alloc = self.allocations();
        assert!(alloc.is_empty(), "{what}: IPAM allocations left: {alloc:?}");
        let cgroups: Vec<PathBuf> = crate::pods::cgroup_dirs_existing(&self.cgroup_parent)
            .into_iter()
            .flat_map(|d| {
                std::fs::read_dir(&d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(cgroups.is_empty(), "{what}: pod cgroups left: {cgroups:?}");
        let state = self.env.berthd.state().display().to_string();
        let procs = crate::pods::processes_mentioning(&state);
        let procs: Vec<_> = procs
            .into_iter()
            .filter(|(pid, _)| Some(*pid as u32) != self.env.berthd.pid())
            .collect();
        assert!(
            procs.is_empty(),
            "{what}: processes mentioning the state dir: {procs:?}"
        );
    }
}

fn ipam_dir(b: &Berthd) -> PathBuf {
    b.dir().join("cni/ipam")
}

/// Ports of a Linux bridge (`/sys/class/net/<bridge>/brif`), sorted.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    PodEnv::dir_entries(&Path::new("/sys/class/net").join(bridge).join("brif"))
}

/// Whether a network interface of the host's namespace exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// host-local's allocation files (named by IP) in `<data_dir>/<network>`.
pub fn ipam_allocations(data_dir: &Path, network: &str) -> Vec<String> {
    PodEnv::dir_entries(&data_dir.join(network))
        .into_iter()
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// The first IPv4 address (without prefix length) in `ip -o -4 addr` output.
pub fn parse_inet(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            return words
                .next()
                .map(|a| a.split('/').next().unwrap_or(a).to_string());
        }
    }
    None
}

/// Whether `ip` is an IPv4 address in `10.a.b.0/24` given as its prefix `10.a.b`.
pub fn in_prefix(ip: &str, prefix: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>().is_ok() && ip.starts_with(&format!("{prefix}."))
}

/// The host's addresses (all families, every interface), without prefix lengths.
pub fn host_addresses() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "addr", "show"]).output();
    let Ok(out) = out else { return vec![] };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if (w == "inet" || w == "inet6")
                && let Some(a) = words.next()
            {
                v.push(a.split('/').next().unwrap_or(a).to_string());
            }
        }
    }
    v
}

/// `iptables-save` output (every table of the iptables variant plugins use).
pub fn iptables_save() -> Result<String> {
    let out = Command::new("iptables-save")
        .output()
        .context("running iptables-save")?;
    if !out.status.success() {
        bail!(
            "iptables-save failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-save` lines mentioning `needle`.
pub fn iptables_rules_mentioning(needle: &str) -> Result<Vec<String>> {
    Ok(iptables_save()?
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect())
}

// ---------------------------------------------------------------------------------------
// Fake plugins
// ---------------------------------------------------------------------------------------

/// One recorded plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCall {
    /// The plugin (its file name).
    pub plugin: String,
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_ARGS`.
    pub args: String,
}

/// The recording bridge: logs the call, then runs Debian's bridge plugin with the same
/// environment and stdin. DEL fails (with an error result) while `fail-del` exists.
pub const REC_BRIDGE: &str = "e2e-rec-bridge";
/// ADD prints garbage and exits 3 (DEL and CHECK succeed).
pub const FAIL_CRASH: &str = "e2e-fail-crash";
/// ADD prints an error result `{"code":7,"msg":"boom"}` and exits 1.
pub const FAIL_ERROR: &str = "e2e-fail-error";
/// ADD sleeps (in a child `sleep` too) far longer than any test's plugin timeout.
pub const FAIL_SLEEP: &str = "e2e-fail-sleep";
/// ADD exits 0 but prints something that is not a result.
pub const FAIL_GARBAGE: &str = "e2e-fail-garbage";

/// A temporary bin dir of fake CNI plugins (`/bin/sh` scripts) that append one line per
/// call to a log. Declare it before the [`NetEnv`] using it, so it outlives berthd.
pub struct FakePlugins {
    dir: tempfile::TempDir,
}

impl FakePlugins {
    /// Writes the plugins.
    pub fn new() -> Result<FakePlugins> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-cnibin-")
            .tempdir()?;
        let fp = FakePlugins { dir };
        let log = fp.log_path();
        let d = fp.dir.path().display().to_string();
        let record = format!(
            "printf '%s\\t%s\\t%s\\t%s\\t%s\\n' \"$(basename \"$0\")\" \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \"$CNI_NETNS\" \"$CNI_ARGS\" >> '{}'\n",
            log.display()
        );
        let rec_bridge = format!(
            "#!/bin/sh\n{record}\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             \x20 cat > '{d}/stdin-ADD-'\"$CNI_CONTAINERID\"'.json'\n\
             \x20 exec {DEBIAN_CNI_DIR}/bridge < '{d}/stdin-ADD-'\"$CNI_CONTAINERID\"'.json'\n\
             fi\n\
             if [ \"$CNI_COMMAND\" = DEL ] && [ -e '{d}/fail-del' ]; then\n\
             \x20 echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"e2e: DEL refused while fail-del exists\"}}'\n\
             \x20 exit 1\n\
             fi\n\
             exec {DEBIAN_CNI_DIR}/bridge\n"
        );
        let crash = format!(
            "#!/bin/sh\n{record}\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             \x20 echo 'garbage{{{{ not json'\n\
             \x20 echo 'e2e-fail-crash: pretending to segfault' >&2\n\
             \x20 exit 3\n\
             fi\n\
             exit 0\n"
        );
        let error = format!(
            "#!/bin/sh\n{record}\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             \x20 echo '{{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\",\"details\":\"e2e error result\"}}'\n\
             \x20 exit 1\n\
             fi\n\
             exit 0\n"
        );
        let sleep = format!(
            "#!/bin/sh\n{record}\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             \x20 echo $$ > '{d}/sleep-plugin.pid'\n\
             \x20 sleep 300 &\n\
             \x20 echo $! > '{d}/sleep-child.pid'\n\
             \x20 wait\n\
             \x20 exit 0\n\
             fi\n\
             exit 0\n"
        );
        let garbage = format!(
            "#!/bin/sh\n{record}\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             \x20 echo 'all is well, no JSON here'\n\
             fi\n\
             exit 0\n"
        );
        for (name, text) in [
            (REC_BRIDGE, rec_bridge),
            (FAIL_CRASH, crash),
            (FAIL_ERROR, error),
            (FAIL_SLEEP, sleep),
            (FAIL_GARBAGE, garbage),
        ] {
            let p = fp.dir.path().join(name);
            std::fs::write(&p, text)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(fp)
    }

    /// The bin dir (for [`BerthdOptions::cni_bin_dirs`]).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The call log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// The stdin the recording bridge got for ADD of `container_id`, parsed.
    pub fn add_stdin(&self, container_id: &str) -> Option<serde_json::Value> {
        let p = self
            .dir
            .path()
            .join(format!("stdin-ADD-{container_id}.json"));
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    /// The plugin file `name` of this bin dir.
    pub fn plugin_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Makes the recording bridge's DEL fail (`true`) or work again.
    pub fn set_fail_del(&self, fail: bool) -> Result<()> {
        let p = self.dir.path().join("fail-del");
        if fail {
            std::fs::write(p, b"")?;
        } else if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    }

    /// The PIDs the sleeping plugin wrote (itself, its `sleep` child).
    pub fn sleep_pids(&self) -> Vec<i32> {
        ["sleep-plugin.pid", "sleep-child.pid"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// Every recorded call, in order.
    pub fn calls(&self) -> Vec<PluginCall> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some(PluginCall {
                    plugin: f.next()?.to_string(),
                    command: f.next()?.to_string(),
                    container_id: f.next()?.to_string(),
                    netns: f.next().unwrap_or("").to_string(),
                    args: f.next().unwrap_or("").to_string(),
                })
            })
            .collect()
    }

    /// How many times `plugin` got `command` for `container_id`.
    pub fn count(&self, plugin: &str, command: &str, container_id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| {
                c.plugin == plugin && c.command == command && c.container_id == container_id
            })
            .count()
    }

    /// The conflist `bridge-like plugin + extra plugins` on the test network: the first
    /// plugin is `first_type` configured like the harness's bridge (no gateway).
    pub fn conflist(
        net: &TestNetwork,
        ipam_dir: &Path,
        first_type: &str,
        extra_plugins: &[&str],
    ) -> String {
        net.conflist(ipam_dir, false, extra_plugins).replacen(
            "\"type\":\"bridge\"",
            &format!("\"type\":\"{first_type}\""),
            1,
        )
    }
}

impl Drop for FakePlugins {
    /// Kills (by PID) what the sleeping plugin started, if it still runs (e.g. when berthd
    /// was killed while the plugin ran); PIDs whose command line is no longer the plugin's
    /// are left alone.
    fn drop(&mut self) {
        let dir = self.dir.path().display().to_string();
        for pid in self.sleep_pids() {
            let ours = crate::pods::cmdline(pid)
                .is_some_and(|c| c.contains(FAIL_SLEEP) && c.contains(&dir) || c == "sleep 300");
            if ours && crate::pods::pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Host state guards
// ---------------------------------------------------------------------------------------

/// Restores `/proc/sys/net/ipv4/ip_forward` to the value it had when created (the bridge
/// plugin turns it on for a network with a gateway).
pub struct IpForwardGuard {
    before: Option<String>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl IpForwardGuard {
    /// Records the current value.
    pub fn new() -> IpForwardGuard {
        IpForwardGuard {
            before: std::fs::read_to_string(IP_FORWARD)
                .ok()
                .map(|s| s.trim().to_string()),
        }
    }

    /// The recorded value.
    pub fn before(&self) -> Option<&str> {
        self.before.as_deref()
    }
}

impl Default for IpForwardGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IpForwardGuard {
    fn drop(&mut self) {
        if let Some(v) = &self.before {
            let now = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
            if now.trim() != v
                && let Err(e) = std::fs::write(IP_FORWARD, v)
            {
                eprintln!("e2e: restoring {IP_FORWARD} to {v}: {e}");
            }
        }
    }
}

/// The shared nat chains the portmap plugin creates (and never deletes).
pub const PORTMAP_CHAINS: &[&str] = &[
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-SETMARK",
    "CNI-HOSTPORT-MASQ",
];

fn nat_rules() -> Vec<String> {
    Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Splits an `iptables -S` line into arguments (double quotes group, `\"` escapes).
fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => {
                in_quotes = !in_quotes;
                has = true;
            }
            ' ' if !in_quotes => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Removes portmap's shared nat chains at drop if they did not exist when the guard was
/// made and no rule of any pod (a `CNI-DN-` jump) is left in them: they were created for
/// this test's pod and nobody else uses them.
pub struct PortmapChainsGuard {
    existed: bool,
}

impl PortmapChainsGuard {
    /// Records whether the chains exist now.
    pub fn new() -> PortmapChainsGuard {
        let rules = nat_rules();
        let existed = rules
            .iter()
            .any(|l| PORTMAP_CHAINS.iter().any(|c| *l == format!("-N {c}")));
        PortmapChainsGuard { existed }
    }
}

impl Default for PortmapChainsGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PortmapChainsGuard {
    fn drop(&mut self) {
        if self.existed {
            return;
        }
        let rules = nat_rules();
        if rules
            .iter()
            .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT ") || l.starts_with("-N CNI-DN-"))
        {
            eprintln!("e2e: portmap chains still hold pod rules; left in place");
            return;
        }
        // Jumps into the chains from the built-in chains, then the chains themselves.
        for l in &rules {
            let args = split_rule(l);
            if args.len() > 2
                && args[0] == "-A"
                && !PORTMAP_CHAINS.contains(&args[1].as_str())
                && args
                    .windows(2)
                    .any(|w| w[0] == "-j" && PORTMAP_CHAINS.contains(&w[1].as_str()))
            {
                let mut del = vec!["-t".to_string(), "nat".to_string(), "-D".to_string()];
                del.extend(args[1..].iter().cloned());
                let _ = Command::new("iptables").args(&del).status();
            }
        }
        for c in PORTMAP_CHAINS {
            if rules.iter().any(|l| *l == format!("-N {c}")) {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", "-F", c])
                    .status();
                let _ = Command::new("iptables")
                    .args(["-t", "nat", "-X", c])
                    .status();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_rules() {
        assert_eq!(
            split_rule(
                r#"-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ"#
            ),
            vec![
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "CNI portfwd requiring masquerade",
                "-j",
                "CNI-HOSTPORT-MASQ"
            ]
        );
        assert_eq!(
            parse_inet("2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0"),
            Some("10.1.2.3".into())
        );
        assert!(in_prefix("10.1.2.3", "10.1.2"));
        assert!(!in_prefix("10.1.20.3", "10.1.2"));
    }
}
