//! Capabilities of a container: the default set, the request's adds and drops (`ALL`
//! included), the host's own as the upper bound for privileged containers, and the OCI sets.

use std::sync::OnceLock;

use berth_cri::v1::LinuxContainerSecurityContext;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use tracing::warn;

use super::spec::{SpecError, invalid};

/// The capabilities a container gets by default (Docker's and containerd 1.x's set).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel defines, indexed by its number (`CAP_CHOWN` is 0).
const CAPABILITIES_BY_NUMBER: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities of the host process (berthd): the upper bound of what a container can
/// be given. Read once from `/proc/self/status` (`CapEff`), as containerd's `cap.Current`.
pub fn host_capabilities() -> &'static Capabilities {
    static HOST: OnceLock<Capabilities> = OnceLock::new();
    HOST.get_or_init(|| {
        let parsed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            });
        match parsed {
            Some(bits) => CAPABILITIES_BY_NUMBER
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1u64 << i) != 0)
                .map(|(_, c)| *c)
                .collect(),
            None => {
                warn!("cannot read CapEff from /proc/self/status; assuming every capability");
                CAPABILITIES_BY_NUMBER.iter().copied().collect()
            }
        }
    })
}

/// A capability name from CRI: with or without `CAP_`, any case; `None` for `ALL`.
pub(super) fn parse_capability(field: &str, name: &str) -> Result<Option<Capability>, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" || upper == "CAP_ALL" {
        return Ok(None);
    }
    serde_json::from_value::<Capability>(serde_json::Value::String(upper))
        .map(Some)
        .map_err(|_| invalid(format!("{field}: unknown capability {name:?}")))
}

/// The container's capabilities: the default set; `ALL` in add gives every capability the
/// host has, `ALL` in drop removes every capability; then named adds, then named drops.
/// Privileged containers get every capability of the host.
pub(super) fn capabilities(
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
) -> Result<Capabilities, SpecError> {
    let mut caps: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    if let Some(c) = &sc.capabilities {
        let adds = c
            .add_capabilities
            .iter()
            .map(|n| parse_capability("add_capabilities", n))
            .collect::<Result<Vec<_>, _>>()?;
        let drops = c
            .drop_capabilities
            .iter()
            .map(|n| parse_capability("drop_capabilities", n))
            .collect::<Result<Vec<_>, _>>()?;
        if adds.iter().any(Option::is_none) {
            caps = host_capabilities().clone();
        }
        if drops.iter().any(Option::is_none) {
            caps.clear();
        }
        caps.extend(adds.into_iter().flatten());
        for d in drops.into_iter().flatten() {
            caps.remove(&d);
        }
    }
    if privileged {
        caps = host_capabilities().clone();
    }
    Ok(caps)
}

/// Bounding, effective and permitted sets; no inheritable or ambient capabilities (as
/// containerd: non-root plus capabilities is left to file capabilities).
pub(super) fn capability_sets(caps: Capabilities) -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    c.set_inheritable(None);
    c.set_ambient(None);
    c
}
