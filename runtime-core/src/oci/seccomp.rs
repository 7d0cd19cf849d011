//! Seccomp for containers: which profile a CRI security context asks for, berth's own
//! `RuntimeDefault` profile, and Localhost profiles read from the node.
//!
//! berth's default profile is a *denylist*: everything is allowed except syscalls a
//! container has no business making without privileges (kernel modules, reboot, clock
//! changes, mounts and namespace creation, the kernel keyring, tracing other processes,
//! ...), which fail with `EPERM`. A syscall whose use the container's capabilities grant
//! (e.g. `mount` with `CAP_SYS_ADMIN`, `ptrace` with `CAP_SYS_PTRACE`) is left allowed, so
//! adding a capability in the pod spec works as users expect. `clone3` fails with `ENOSYS`
//! so that libc falls back to `clone`, whose flags a filter can inspect: `clone` with any
//! `CLONE_NEW*` flag fails with `EPERM`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use berth_cri::v1::LinuxContainerSecurityContext;
use berth_cri::v1::security_profile::ProfileType;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::spec::SpecError;

/// Largest Localhost profile read.
const MAX_PROFILE_BYTES: u64 = 10 << 20;

/// `EPERM`, the answer to denied syscalls.
const EPERM: u32 = 1;
/// `ENOSYS`, the answer to `clone3`, so that callers fall back to `clone`.
const ENOSYS: u32 = 38;

/// The `CLONE_NEW*` flags `clone(2)` takes (`CLONE_NEWTIME` only exists for `clone3` and
/// `unshare`; in `clone` its bit is part of the exit signal).
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Groups of denied syscalls and the capabilities any one of which lifts the denial.
/// An empty capability list means the syscalls are always denied (outside privileged
/// containers, which get no seccomp filter at all).
const DENY_GROUPS: &[(&[Capability], &[&str])] = &[
    (
        &[Capability::SysAdmin],
        &[
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setns",
            "swapoff",
            "swapon",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (&[Capability::SysAdmin, Capability::Bpf], &["bpf"]),
    (
        &[Capability::SysAdmin, Capability::Perfmon],
        &["perf_event_open"],
    ),
    (
        &[Capability::SysPtrace],
        &[
            "kcmp",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
            "userfaultfd",
        ],
    ),
    (
        &[Capability::SysTime],
        &["clock_adjtime", "clock_settime", "settimeofday", "stime"],
    ),
    (
        &[Capability::SysModule],
        &[
            "create_module",
            "delete_module",
            "finit_module",
            "get_kernel_syms",
            "init_module",
            "query_module",
        ],
    ),
    (
        &[Capability::SysBoot],
        &["kexec_file_load", "kexec_load", "reboot"],
    ),
    (&[Capability::Syslog], &["syslog"]),
    (&[Capability::SysRawio], &["ioperm", "iopl"]),
    (&[Capability::SysPacct], &["acct"]),
    (&[Capability::DacReadSearch], &["open_by_handle_at"]),
    (
        &[],
        &[
            "_sysctl",
            "add_key",
            "keyctl",
            "nfsservctl",
            "request_key",
            "sysfs",
            "uselib",
            "ustat",
            "vm86",
            "vm86old",
        ],
    ),
];

/// The architectures the filter covers: the native one and the compat ABIs a process can
/// switch to, so that a denied syscall cannot be reached through another ABI.
fn architectures() -> Option<Vec<Arch>> {
    if cfg!(target_arch = "x86_64") {
        Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
    } else if cfg!(target_arch = "aarch64") {
        Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
    } else {
        None
    }
}

/// Index of the flags argument of `clone(2)` (s390 swaps the first two arguments).
const CLONE_FLAGS_ARG: usize = if cfg!(target_arch = "s390x") { 1 } else { 0 };

fn deny(names: &[&str], errno: u32) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(LinuxSeccompAction::ScmpActErrno);
    s.set_errno_ret(Some(errno));
    s
}

/// berth's `RuntimeDefault` profile for a container whose effective capabilities are
/// `caps` (see the module documentation). It cannot fail in practice; the `Result` carries
/// `oci-spec`'s builder error.
pub fn default_profile(caps: &Capabilities) -> Result<LinuxSeccomp, SpecError> {
    let mut syscalls = Vec::new();
    for (lifting, names) in DENY_GROUPS {
        if lifting.iter().any(|c| caps.contains(c)) {
            continue;
        }
        syscalls.push(deny(names, EPERM));
    }
    if !caps.contains(&Capability::SysAdmin) {
        syscalls.push(deny(&["clone3"], ENOSYS));
        // One rule per flag: conditions inside a rule are ANDed, separate rules are ORed.
        for flag in CLONE_NAMESPACE_FLAGS {
            let arg = LinuxSeccompArgBuilder::default()
                .index(CLONE_FLAGS_ARG)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(|e| SpecError::InvalidArgument(format!("seccomp clone rule: {e}")))?;
            let mut rule = deny(&["clone"], EPERM);
            rule.set_args(Some(vec![arg]));
            syscalls.push(rule);
        }
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
    profile.set_architectures(architectures());
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// Reads a Localhost profile: the OCI `LinuxSeccomp` JSON (`defaultAction`,
/// `architectures`, `syscalls[{names, action, errnoRet, args}]`), as containerd does.
/// Fields of the Docker format that OCI lacks (`archMap`, `includes`, ...) are ignored.
pub fn load_profile(path: &Path) -> Result<LinuxSeccomp, SpecError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpecError::NotFound(format!(
                "seccomp profile {} not found",
                path.display()
            )));
        }
        Err(e) => {
            return Err(SpecError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut buf = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SpecError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    if buf.len() as u64 > MAX_PROFILE_BYTES {
        return Err(SpecError::InvalidArgument(format!(
            "seccomp profile {} is larger than {MAX_PROFILE_BYTES} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&buf).map_err(|e| {
        SpecError::InvalidArgument(format!(
            "seccomp profile {} is not a valid profile: {e}",
            path.display()
        ))
    })
}

/// The profile a container asked for, before it is turned into a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// No filter.
    Unconfined,
    /// berth's [`default_profile`].
    RuntimeDefault,
    /// A profile file on the node.
    Localhost(PathBuf),
}

/// Which profile `sc` asks for: the `seccomp` field, else the deprecated
/// `seccomp_profile_path` (`runtime/default`, `docker/default`, `unconfined`,
/// `localhost/<path>`); neither set means unconfined, as in containerd. Relative Localhost
/// paths are taken relative to `localhost_root` and may not contain `..`.
pub fn requested(
    sc: &LinuxContainerSecurityContext,
    localhost_root: &Path,
) -> Result<Requested, SpecError> {
    let (kind, reference) = if let Some(p) = &sc.seccomp {
        let kind = ProfileType::try_from(p.profile_type).map_err(|_| {
            SpecError::InvalidArgument(format!(
                "seccomp profile_type {} is unknown",
                p.profile_type
            ))
        })?;
        if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
            return Err(SpecError::InvalidArgument(
                "seccomp localhost_ref must only be set when profile_type is Localhost".into(),
            ));
        }
        (kind, p.localhost_ref.clone())
    } else {
        #[allow(deprecated)]
        let path = sc.seccomp_profile_path.as_str();
        match path {
            "" | "unconfined" => (ProfileType::Unconfined, String::new()),
            "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
            other => match other.strip_prefix("localhost/") {
                Some(r) => (ProfileType::Localhost, r.to_string()),
                None => {
                    return Err(SpecError::InvalidArgument(format!(
                        "seccomp_profile_path {other:?} is not runtime/default, docker/default, unconfined or localhost/<path>"
                    )));
                }
            },
        }
    };
    match kind {
        ProfileType::Unconfined => Ok(Requested::Unconfined),
        ProfileType::RuntimeDefault => Ok(Requested::RuntimeDefault),
        ProfileType::Localhost => {
            let reference = reference
                .strip_prefix("localhost/")
                .unwrap_or(&reference)
                .to_string();
            if reference.is_empty() {
                return Err(SpecError::InvalidArgument(
                    "seccomp profile Localhost needs a localhost_ref".into(),
                ));
            }
            let path = Path::new(&reference);
            if path.components().any(|c| c == Component::ParentDir) {
                return Err(SpecError::InvalidArgument(format!(
                    "seccomp localhost_ref {reference:?} must not contain \"..\""
                )));
            }
            if path.is_absolute() {
                Ok(Requested::Localhost(path.to_path_buf()))
            } else {
                Ok(Requested::Localhost(localhost_root.join(path)))
            }
        }
    }
}

/// The filter for a container: `None` when privileged or unconfined.
pub fn for_container(
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
    caps: &Capabilities,
    localhost_root: &Path,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let req = requested(sc, localhost_root)?;
    if privileged {
        return Ok(None);
    }
    match req {
        Requested::Unconfined => Ok(None),
        Requested::RuntimeDefault => default_profile(caps).map(Some),
        Requested::Localhost(p) => load_profile(&p).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri::v1::SecurityProfile;

    fn denied(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    fn sc_with(profile_type: ProfileType, r: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn default_profile_denies_dangerous_syscalls() {
        let p = default_profile(&Capabilities::new()).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let d = denied(&p);
        for name in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "reboot",
            "init_module",
            "bpf",
            "keyctl",
            "syslog",
            "settimeofday",
            "kexec_load",
            "userfaultfd",
            "open_by_handle_at",
        ] {
            assert!(d.iter().any(|n| n == name), "{name} not denied");
        }
        for s in p.syscalls().iter().flatten() {
            assert_eq!(s.action(), LinuxSeccompAction::ScmpActErrno);
            let want = if s.names() == &["clone3".to_string()] {
                ENOSYS
            } else {
                EPERM
            };
            assert_eq!(s.errno_ret(), Some(want));
        }
        let clone_rules: Vec<_> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names() == &["clone".to_string()])
            .collect();
        assert_eq!(clone_rules.len(), CLONE_NAMESPACE_FLAGS.len());
        for r in clone_rules {
            let args = r.args().as_ref().unwrap();
            assert_eq!(args.len(), 1);
            assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
            assert_eq!(Some(args[0].value()), args[0].value_two());
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                p.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
        }
    }

    #[test]
    fn capabilities_lift_their_syscalls() {
        let caps: Capabilities = [
            Capability::SysAdmin,
            Capability::SysPtrace,
            Capability::SysTime,
            Capability::SysModule,
            Capability::SysBoot,
            Capability::Syslog,
        ]
        .into_iter()
        .collect();
        let p = default_profile(&caps).unwrap();
        let all: Vec<String> = p
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect();
        for name in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "ptrace",
            "process_vm_readv",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "init_module",
            "reboot",
            "syslog",
            "bpf",
            "perf_event_open",
        ] {
            assert!(!all.iter().any(|n| n == name), "{name} still denied");
        }
        // The keyring stays off limits.
        assert!(all.iter().any(|n| n == "keyctl"));
        // Only CAP_SYS_PTRACE: mount stays denied.
        let only_ptrace: Capabilities = [Capability::SysPtrace].into_iter().collect();
        let d = denied(&default_profile(&only_ptrace).unwrap());
        assert!(d.iter().any(|n| n == "mount"));
        assert!(!d.iter().any(|n| n == "ptrace"));
    }

    #[test]
    fn requested_from_security_profile() {
        let root = Path::new("/var/lib/kubelet/seccomp");
        assert_eq!(
            requested(&sc_with(ProfileType::RuntimeDefault, ""), root).unwrap(),
            Requested::RuntimeDefault
        );
        assert_eq!(
            requested(&sc_with(ProfileType::Unconfined, ""), root).unwrap(),
            Requested::Unconfined
        );
        assert_eq!(
            requested(&sc_with(ProfileType::Localhost, "/etc/p.json"), root).unwrap(),
            Requested::Localhost("/etc/p.json".into())
        );
        assert_eq!(
            requested(&sc_with(ProfileType::Localhost, "profiles/a.json"), root).unwrap(),
            Requested::Localhost(root.join("profiles/a.json"))
        );
        for bad in [
            sc_with(ProfileType::Localhost, ""),
            sc_with(ProfileType::Localhost, "../../etc/x.json"),
            sc_with(ProfileType::RuntimeDefault, "x.json"),
            LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: 42,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                requested(&bad, root),
                Err(SpecError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    #[allow(deprecated)]
    fn requested_from_deprecated_path() {
        let root = Path::new("/r");
        let with = |p: &str| LinuxContainerSecurityContext {
            seccomp_profile_path: p.into(),
            ..Default::default()
        };
        assert_eq!(requested(&with(""), root).unwrap(), Requested::Unconfined);
        assert_eq!(
            requested(&with("unconfined"), root).unwrap(),
            Requested::Unconfined
        );
        assert_eq!(
            requested(&with("runtime/default"), root).unwrap(),
            Requested::RuntimeDefault
        );
        assert_eq!(
            requested(&with("docker/default"), root).unwrap(),
            Requested::RuntimeDefault
        );
        assert_eq!(
            requested(&with("localhost/abs/p.json"), root).unwrap(),
            Requested::Localhost("/r/abs/p.json".into())
        );
        assert_eq!(
            requested(&with("localhost//etc/p.json"), root).unwrap(),
            Requested::Localhost("/etc/p.json".into())
        );
        assert!(matches!(
            requested(&with("bogus"), root),
            Err(SpecError::InvalidArgument(_))
        ));
    }

    #[test]
    fn localhost_profiles_load() {
        let d = tempfile::tempdir().unwrap();
        let good = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "architectures":["SCMP_ARCH_X86_64"],"archMap":[],
            "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                        {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                         "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#;
        std::fs::write(d.path().join("good.json"), good).unwrap();
        std::fs::write(d.path().join("bad.json"), "{not json").unwrap();
        std::fs::write(
            d.path().join("badaction.json"),
            r#"{"defaultAction":"NOPE"}"#,
        )
        .unwrap();

        let rel = for_container(
            &sc_with(ProfileType::Localhost, "good.json"),
            false,
            &Capabilities::new(),
            d.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(rel.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rel.syscalls().as_ref().unwrap().len(), 2);

        let abs = d.path().join("good.json");
        let p = for_container(
            &sc_with(ProfileType::Localhost, abs.to_str().unwrap()),
            false,
            &Capabilities::new(),
            Path::new("/elsewhere"),
        )
        .unwrap();
        assert_eq!(p, Some(rel));

        let missing = for_container(
            &sc_with(ProfileType::Localhost, "missing.json"),
            false,
            &Capabilities::new(),
            d.path(),
        );
        assert!(matches!(missing, Err(SpecError::NotFound(m)) if m.contains("missing.json")));
        for bad in ["bad.json", "badaction.json"] {
            assert!(matches!(
                for_container(
                    &sc_with(ProfileType::Localhost, bad),
                    false,
                    &Capabilities::new(),
                    d.path()
                ),
                Err(SpecError::InvalidArgument(m)) if m.contains(bad)
            ));
        }
    }

    #[test]
    fn privileged_and_unconfined_get_no_filter() {
        let caps = Capabilities::new();
        let root = Path::new("/r");
        assert_eq!(
            for_container(&sc_with(ProfileType::RuntimeDefault, ""), true, &caps, root).unwrap(),
            None
        );
        assert_eq!(
            for_container(&sc_with(ProfileType::Unconfined, ""), false, &caps, root).unwrap(),
            None
        );
        assert!(
            for_container(
                &sc_with(ProfileType::RuntimeDefault, ""),
                false,
                &caps,
                root
            )
            .unwrap()
            .is_some()
        );
        // No profile at all: unconfined, as in containerd.
        assert_eq!(
            for_container(&Default::default(), false, &caps, root).unwrap(),
            None
        );
    }
}
