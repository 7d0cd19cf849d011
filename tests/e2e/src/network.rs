//! A CNI network of the test's own: a uniquely named bridge and a private /24 that no
//! other test of this process uses, host-local IPAM state in the test's directory. The
//! bridge is deleted when the owner drops it. No masquerading, no gateway address (so the
//! host's ip_forward setting is never touched) unless a test asks for a gateway.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test network.
#[derive(Debug, Clone)]
pub struct TestNetwork {
    /// CNI network name.
    pub name: String,
    /// Linux bridge name (at most 15 characters).
    pub bridge: String,
    /// `10.x.y.0/24`.
    pub subnet: String,
    /// The third octet's network prefix, `10.x.y`.
    pub prefix: String,
}

impl TestNetwork {
    /// A network no other live network of this process shares.
    pub fn new() -> TestNetwork {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let second = 100 + (pid % 100);
        let third = n % 250;
        TestNetwork {
            name: format!("e2e-{pid}-{n}"),
            bridge: format!("bte{:04x}{:02x}", pid & 0xffff, n & 0xff),
            subnet: format!("10.{second}.{third}.0/24"),
            prefix: format!("10.{second}.{third}"),
        }
    }

    /// The conflist: bridge (+ gateway address when `gateway`) + host-local, plus
    /// `extra_plugins` (JSON objects, e.g. portmap) after them.
    pub fn conflist(&self, ipam_dir: &Path, gateway: bool, extra_plugins: &[&str]) -> String {
        let mut plugins = vec![format!(
            r#"{{"type":"bridge","bridge":"{}","isGateway":{gateway},"ipMasq":false,"hairpinMode":true,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{}","gateway":"{}.1"}}]]}}}}"#,
            self.bridge,
            ipam_dir.display(),
            self.subnet,
            self.prefix
        )];
        plugins.extend(extra_plugins.iter().map(|p| p.to_string()));
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{}]}}"#,
            self.name,
            plugins.join(",")
        )
    }

    /// The harness default: bridge + host-local, no gateway.
    pub fn default_conflist(&self, ipam_dir: &Path) -> String {
        self.conflist(ipam_dir, false, &[])
    }

    /// True while the bridge exists.
    pub fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Deletes the bridge if it exists.
    pub fn delete_bridge(&self) {
        if self.bridge_exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

impl Default for TestNetwork {
    fn default() -> Self {
        TestNetwork::new()
    }
}
