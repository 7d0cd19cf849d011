//! The OCI runtime spec of a container, built from its CRI `ContainerConfig`, its pod's
//! `PodSandboxConfig` and its image config with the semantics kubelet expects from
//! containerd: command / args against entrypoint / cmd, env merge, user and groups from the
//! image's own `/etc/passwd` and `/etc/group`, mounts with propagation, devices, resources,
//! capabilities, masked and read-only paths, seccomp, sysctls and the pod's namespaces.
//!
//! [`build_spec`] validates everything it can before touching the filesystem; its only side
//! effect, the creation of a missing bind-mount source directory (as containerd and CRI-O
//! do for `hostPath` volumes without a type), happens last, so a request it rejects writes
//! nothing.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Once, OnceLock};

use berth_cri::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode,
    PodSandboxConfig,
};
use oci_spec::runtime::{
    Linux, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, Process, Root, Spec, User,
};
use tracing::warn;

pub use super::caps::{DEFAULT_CAPABILITIES, host_capabilities};
use super::caps::{capabilities, capability_sets};
use super::devices::{default_device_rules, device_rule, devices};
use super::mounts::{mounts, plan_cri_mounts};
use super::{seccomp, user};
use crate::image::spec::{ExecConfig, ImageConfig};

/// `PATH` a container gets when its image sets none (containerd's and runc's default).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotation: `container` for application containers (`sandbox` is for pause containers).
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation: the pod sandbox ID.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation: the pod's namespace.
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotation: the pod's UID.
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// Annotation: the pod's name.
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Annotation: the container's name in the pod.
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Annotation: the image the container was created from, as the user named it.
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Paths masked in a container unless the request says otherwise.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in a container unless the request says otherwise.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How the container's PID namespace is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidMode {
    /// The host's PID namespace (`hostPID: true`).
    Host,
    /// A new PID namespace of its own (the Kubernetes default).
    Container,
    /// The pod's shared PID namespace, e.g. `/proc/<infra pid>/ns/pid`.
    Pod(PathBuf),
    /// Another container's PID namespace (ephemeral debug containers), by path.
    Target(PathBuf),
}

/// A pod's own user namespace, as the container joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNs {
    /// The pinned namespace file.
    pub path: PathBuf,
    /// Its mappings (the OCI runtime works out the host IDs of root from them).
    pub mappings: crate::sandbox::userns::Mappings,
}

/// Everything [`build_spec`] needs to know about one container.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    /// The container's ID.
    pub container_id: &'a str,
    /// The pod sandbox's ID (for the `io.kubernetes.cri.sandbox-id` annotation).
    pub sandbox_id: &'a str,
    /// The CRI container config.
    pub config: &'a ContainerConfig,
    /// The CRI config of the container's pod.
    pub sandbox: &'a PodSandboxConfig,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The container's rootfs, already mounted; `/etc/passwd` and `/etc/group` are read
    /// from it.
    pub rootfs: &'a Path,
    /// The pod's network namespace; `None` is the host's.
    pub network_ns: Option<PathBuf>,
    /// The pod's IPC namespace; `None` is the host's.
    pub ipc_ns: Option<PathBuf>,
    /// The pod's UTS namespace; `None` is the host's.
    pub uts_ns: Option<PathBuf>,
    /// The PID namespace.
    pub pid: PidMode,
    /// The pod's own user namespace (`hostUsers: false`); `None` is the host's.
    pub user_ns: Option<UserNs>,
    /// The pod's hostname file, bound on `/etc/hostname`.
    pub hostname_file: Option<PathBuf>,
    /// The pod's hosts file, bound on `/etc/hosts`.
    pub hosts_file: Option<PathBuf>,
    /// The pod's resolver config, bound on `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's `/dev/shm` directory; `None` gives the container its own 64 MiB tmpfs.
    pub shm: Option<PathBuf>,
    /// The container's cgroup, cgroupfs style (`/kubepods/besteffort/pod<uid>/<id>`).
    pub cgroups_path: String,
    /// Base directory of relative `Localhost` seccomp profiles.
    pub seccomp_localhost_root: &'a Path,
    /// The lowest `oom_score_adj` berthd may give a process (its own, without
    /// `CAP_SYS_RESOURCE`); lower requests are raised to it.
    pub min_oom_score_adj: i64,
}

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the request names does not exist (a user in the image, a device, a
    /// seccomp profile).
    #[error("{0}")]
    NotFound(String),
    /// An I/O failure on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl From<SpecError> for crate::Error {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::InvalidArgument(m) => crate::Error::InvalidArgument(m),
            SpecError::NotFound(m) => crate::Error::NotFound(m),
            e @ SpecError::Io { .. } => crate::Error::Internal(e.to_string()),
        }
    }
}

pub(super) fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument(msg.into())
}

pub(super) fn io_error(path: &Path, source: std::io::Error) -> SpecError {
    SpecError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the host's cgroups can enforce among the limits runc fails on when they cannot be
/// applied. containerd checks the same two (`SwapControllerAvailable`,
/// `isHugetlbControllerPresent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupFeatures {
    /// The hugetlb controller is there (v1: mounted; v2: in `cgroup.controllers`).
    pub hugetlb: bool,
    /// Swap accounting is there (v1: `memory.memsw.limit_in_bytes`; v2: `memory.swap.max`
    /// in berthd's own cgroup, as the root cgroup has none).
    pub swap: bool,
}

impl CgroupFeatures {
    /// The features of this host, detected once.
    pub fn host() -> Self {
        static HOST: OnceLock<CgroupFeatures> = OnceLock::new();
        *HOST.get_or_init(|| {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            Self::detect(Path::new("/sys/fs/cgroup"), &own)
        })
    }

    /// Detects the features of the cgroup tree at `root` (normally `/sys/fs/cgroup`), given
    /// the contents of `/proc/self/cgroup`. A root with `cgroup.controllers` is cgroup v2
    /// (unified); otherwise v1 (or hybrid, where runc uses the v1 controllers).
    pub fn detect(root: &Path, proc_self_cgroup: &str) -> Self {
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(controllers) => {
                let own = proc_self_cgroup
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/")
                    .trim()
                    .trim_start_matches('/');
                Self {
                    hugetlb: controllers.split_whitespace().any(|c| c == "hugetlb"),
                    swap: root.join(own).join("memory.swap.max").exists(),
                }
            }
            Err(_) => Self {
                hugetlb: root.join("hugetlb").is_dir(),
                swap: root.join("memory/memory.memsw.limit_in_bytes").exists(),
            },
        }
    }
}

/// Builds the OCI runtime spec of a container for this host's cgroups. See the module
/// documentation.
pub fn build_spec(inputs: &SpecInputs) -> Result<Spec, SpecError> {
    build_spec_for(inputs, CgroupFeatures::host())
}

/// [`build_spec`] for cgroups with the given features.
pub fn build_spec_for(inputs: &SpecInputs, cgroups: CgroupFeatures) -> Result<Spec, SpecError> {
    let _span = tracing::debug_span!("build_spec", container = inputs.container_id).entered();
    let config = inputs.config;
    let default_sc = LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let default_exec = ExecConfig::default();
    let exec = inputs.image.config.as_ref().unwrap_or(&default_exec);
    let privileged = sc.privileged;
    let sandbox_privileged = inputs
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !sandbox_privileged {
        return Err(invalid(
            "privileged container requested in a pod whose security context is not privileged",
        ));
    }

    // Pure validation and computation first.
    let args = process_args(config, exec)?;
    let cwd = working_dir(config, exec)?;
    let env = environment(config, exec, inputs.sandbox);
    let caps = capabilities(sc, privileged)?;
    let oom_score_adj = oom_score_adj(resources, inputs.min_oom_score_adj)?;
    let linux_resources = linux_resources(resources, cgroups)?;
    let sysctls = sysctls(inputs)?;
    let planned_mounts = plan_cri_mounts(config)?;
    let (masked, readonly) = masked_and_readonly_paths(sc, privileged);
    warn_ignored_security_options(sc);

    // Then what reads the filesystem: the image's user database, the seccomp profile,
    // devices.
    let user = process_user(inputs, sc, exec)?;
    let seccomp = seccomp::for_container(sc, privileged, &caps, inputs.seccomp_localhost_root)?;
    let (devices, mut device_rules) = devices(config, privileged)?;

    // Last, the only step that may write: creating missing bind-mount sources.
    let (mounts, rootfs_propagation) = mounts(inputs, sc, privileged, planned_mounts)?;

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(capability_sets(caps)));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(sc.no_new_privs));
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(oom_score_adj);
    process.set_selinux_label(None);

    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut linux_resources = linux_resources;
    let rules = if privileged {
        vec![device_rule(true, None, None, None, "rwm")]
    } else {
        let mut r = default_device_rules();
        r.append(&mut device_rules);
        r
    };
    linux_resources.set_devices(Some(rules));

    let mut linux = Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(if sysctls.is_empty() {
        None
    } else {
        Some(sysctls)
    });
    linux.set_resources(Some(linux_resources));
    linux.set_cgroups_path(if inputs.cgroups_path.is_empty() {
        None
    } else {
        Some(PathBuf::from(&inputs.cgroups_path))
    });
    linux.set_namespaces(Some(namespaces(inputs, privileged)));
    if let Some(u) = &inputs.user_ns {
        let map = |r: crate::sandbox::userns::IdRange| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(r.container_id)
                .host_id(r.host_id)
                .size(r.length)
                .build()
                .map(|m| vec![m])
                .map_err(|e| invalid(format!("user namespace mapping: {e}")))
        };
        linux.set_uid_mappings(Some(map(u.mappings.uids)?));
        linux.set_gid_mappings(Some(map(u.mappings.gids)?));
    }
    linux.set_devices(if devices.is_empty() {
        None
    } else {
        Some(devices)
    });
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_mount_label(None);

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    // The UTS namespace is the pod's (or the host's): runc refuses a hostname without a
    // UTS namespace of the container's own, and the pod's is set up already.
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations(inputs)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// `command` + `args`, else the image's Entrypoint + (`args`, else the image's Cmd), as
/// containerd's `WithProcessArgs` (an Entrypoint of `[""]` counts as none).
fn process_args(config: &ContainerConfig, exec: &ExecConfig) -> Result<Vec<String>, SpecError> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = exec.cmd.clone().unwrap_or_default();
        }
        let entrypoint = exec.entrypoint.clone().unwrap_or_default();
        if !(entrypoint.len() == 1 && entrypoint.first().is_some_and(String::is_empty)) {
            command = entrypoint;
        }
    }
    command.append(&mut args);
    if command.is_empty() {
        return Err(invalid(
            "no command specified: the container config has no command or args and the image no Entrypoint or Cmd",
        ));
    }
    Ok(command)
}

/// Lexically checks an absolute in-container path: absolute, no NUL, no `..` component.
pub(super) fn check_container_path(field: &str, p: &str) -> Result<PathBuf, SpecError> {
    if !p.starts_with('/') {
        return Err(invalid(format!("{field} {p:?} must be absolute")));
    }
    if p.contains('\0') {
        return Err(invalid(format!("{field} {p:?} contains a NUL byte")));
    }
    let mut clean = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => clean.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!("{field} {p:?} must not contain \"..\"")));
            }
        }
    }
    Ok(clean)
}

/// CRI `working_dir`, else the image's WorkingDir, else `/`.
fn working_dir(config: &ContainerConfig, exec: &ExecConfig) -> Result<PathBuf, SpecError> {
    if !config.working_dir.is_empty() {
        check_container_path("working_dir", &config.working_dir)?;
        return Ok(PathBuf::from(&config.working_dir));
    }
    match exec.working_dir.as_deref() {
        Some(w) if !w.is_empty() => {
            check_container_path("image WorkingDir", w)?;
            Ok(PathBuf::from(w))
        }
        _ => Ok(PathBuf::from("/")),
    }
}

/// Replaces entries of `base` by key and appends new ones; an override without `=` unsets
/// the key (containerd's `replaceOrAppendEnvValues`).
fn merge_env(base: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for value in overrides {
        let (key, set) = match value.split_once('=') {
            Some((k, _)) => (k.to_string(), true),
            None => (value.clone(), false),
        };
        let pos = base
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (pos, set) {
            (Some(i), true) => {
                if let Some(slot) = base.get_mut(i) {
                    *slot = value;
                }
            }
            (Some(i), false) => {
                base.remove(i);
            }
            (None, true) => base.push(value),
            (None, false) => {}
        }
    }
}

/// Default `PATH`, `HOSTNAME`, then the image's env, then the CRI envs, each overriding
/// earlier entries by key in place (containerd's order).
fn environment(
    config: &ContainerConfig,
    exec: &ExecConfig,
    sandbox: &PodSandboxConfig,
) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    let hostname = if sandbox.hostname.is_empty() {
        match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(h) => Some(h.trim().to_string()),
            Err(e) => {
                warn!(error = %e, "cannot read the host's hostname; HOSTNAME is not set");
                None
            }
        }
    } else {
        Some(sandbox.hostname.clone())
    };
    if let Some(h) = hostname {
        env.push(format!("HOSTNAME={h}"));
    }
    merge_env(&mut env, exec.env.clone().unwrap_or_default());
    merge_env(
        &mut env,
        config
            .envs
            .iter()
            // KeyValue.value is bytes since 1.36.3; config.json is JSON, so bytes that are
            // not UTF-8 become U+FFFD (as containerd's Go JSON encoding does).
            .map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))),
    );
    env
}

/// `oom_score_adj` from the resources, raised to what berthd may set.
fn oom_score_adj(
    resources: Option<&LinuxContainerResources>,
    min: i64,
) -> Result<Option<i32>, SpecError> {
    let Some(r) = resources else {
        return Ok(None);
    };
    let want = r.oom_score_adj;
    if !(-1000..=1000).contains(&want) {
        return Err(invalid(format!(
            "oom_score_adj {want} is outside -1000..=1000"
        )));
    }
    let floor = min.clamp(-1000, 1000);
    let adj = if want < floor {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            warn!(
                requested = want,
                allowed = floor,
                "containers ask for an oom_score_adj below berthd's own, which it lacks CAP_SYS_RESOURCE to set; raising such values to berthd's (logged once)"
            );
        });
        floor
    } else {
        want
    };
    Ok(i32::try_from(adj).ok())
}

/// Whether `s` is a hugepage size as CRI writes it (`2MB`, `1GB`, `64KB`).
fn valid_page_size(s: &str) -> bool {
    let Some(num) = ["KB", "MB", "GB", "TB", "PB"]
        .iter()
        .find_map(|unit| s.strip_suffix(unit))
    else {
        return false;
    };
    !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit())
}

/// The OCI resources for UpdateContainerResources, with the host's cgroup features.
pub fn update_resources(r: &LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    linux_resources(Some(r), CgroupFeatures::host())
}

/// CPU, memory, hugepage and unified limits. As containerd: without swap accounting no swap
/// limit is set; with it, an unset swap limit equals the memory limit (no swapping); without
/// a hugetlb controller hugepage limits are dropped with a warning.
fn linux_resources(
    r: Option<&LinuxContainerResources>,
    cgroups: CgroupFeatures,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let Some(r) = r else {
        return Ok(out);
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_period != 0 {
        let p = u64::try_from(r.cpu_period)
            .map_err(|_| invalid(format!("cpu_period {} must not be negative", r.cpu_period)))?;
        cpu.set_period(Some(p));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        let s = u64::try_from(r.cpu_shares)
            .map_err(|_| invalid(format!("cpu_shares {} must not be negative", r.cpu_shares)))?;
        cpu.set_shares(Some(s));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }

    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        if r.memory_swap_limit_in_bytes == 0 && cgroups.swap {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        if cgroups.swap {
            memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        } else {
            warn!("the host has no swap accounting; memory_swap_limit_in_bytes ignored");
        }
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::with_capacity(r.hugepage_limits.len());
        for h in &r.hugepage_limits {
            if !valid_page_size(&h.page_size) {
                return Err(invalid(format!(
                    "hugepage_limits page_size {:?} is not like 2MB or 1GB",
                    h.page_size
                )));
            }
            let limit = i64::try_from(h.limit)
                .map_err(|_| invalid(format!("hugepage_limits limit {} is too large", h.limit)))?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(limit);
            limits.push(l);
        }
        if cgroups.hugetlb {
            out.set_hugepage_limits(Some(limits));
        } else {
            warn!("the host has no hugetlb cgroup controller; hugepage_limits ignored");
        }
    }

    if !r.unified.is_empty() {
        for key in r.unified.keys() {
            if key.is_empty() || key.contains('/') || key == "." || key == ".." {
                return Err(invalid(format!(
                    "unified key {key:?} is not a cgroup file name"
                )));
            }
        }
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

/// Pod sysctls, each checked to live in a namespace the container does not share with the
/// host.
fn sysctls(inputs: &SpecInputs) -> Result<HashMap<String, String>, SpecError> {
    let Some(all) = inputs.sandbox.linux.as_ref().map(|l| &l.sysctls) else {
        return Ok(HashMap::new());
    };
    for key in all.keys() {
        let malformed = key.is_empty()
            || key.starts_with(['.', '/'])
            || key.contains(['\0', ' ', '\n', '\t'])
            || key.split(['.', '/']).any(|s| s.is_empty() || s == "..");
        if malformed {
            return Err(invalid(format!("sysctl {key:?} is not a sysctl name")));
        }
        let dotted = key.replace('/', ".");
        let (needs, host) = if dotted.starts_with("net.") {
            ("a network namespace", inputs.network_ns.is_none())
        } else if dotted.starts_with("kernel.shm")
            || dotted.starts_with("kernel.msg")
            || dotted == "kernel.sem"
            || dotted.starts_with("fs.mqueue.")
        {
            ("an IPC namespace", inputs.ipc_ns.is_none())
        } else if dotted == "kernel.hostname" || dotted == "kernel.domainname" {
            ("a UTS namespace", inputs.uts_ns.is_none())
        } else {
            return Err(invalid(format!(
                "sysctl {key:?} is not namespaced and cannot be set for a pod"
            )));
        };
        if host {
            return Err(invalid(format!(
                "sysctl {key:?} needs {needs} of the pod's own, but the pod uses the host's"
            )));
        }
    }
    Ok(all.clone())
}

/// Masked and read-only paths: none when privileged; the request's lists when it sets
/// either (kubelet sends both for `procMount: Default`); berth's defaults when it sets
/// neither, except in a pod with a user namespace, where kubelet's `procMount: Unmasked`
/// (only allowed with `hostUsers: false`) sends both empty and means none.
fn masked_and_readonly_paths(
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    if !sc.masked_paths.is_empty() || !sc.readonly_paths.is_empty() {
        return (sc.masked_paths.clone(), sc.readonly_paths.clone());
    }
    let userns = sc
        .namespace_options
        .as_ref()
        .and_then(|n| n.userns_options.as_ref())
        .is_some_and(|u| u.mode == NamespaceMode::Pod as i32);
    if userns {
        return (Vec::new(), Vec::new());
    }
    (
        DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
        DEFAULT_READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
}

/// AppArmor and SELinux are not enforced by berth (the host has neither); a request for a
/// specific profile is logged and otherwise ignored.
fn warn_ignored_security_options(sc: &LinuxContainerSecurityContext) {
    use berth_cri::v1::security_profile::ProfileType;
    if let Some(a) = &sc.apparmor
        && a.profile_type == ProfileType::Localhost as i32
    {
        warn!(profile = %a.localhost_ref, "AppArmor is not supported by berth; profile ignored");
    }
    #[allow(deprecated)]
    let legacy = sc.apparmor_profile.as_str();
    if legacy.starts_with("localhost/") {
        warn!(profile = %legacy, "AppArmor is not supported by berth; profile ignored");
    }
    if sc.selinux_options.as_ref().is_some_and(|s| {
        !s.user.is_empty() || !s.role.is_empty() || !s.r#type.is_empty() || !s.level.is_empty()
    }) {
        warn!("SELinux is not supported by berth; selinux_options ignored");
    }
    if sc
        .capabilities
        .as_ref()
        .is_some_and(|c| !c.add_ambient_capabilities.is_empty())
    {
        warn!(
            "ambient capabilities are not supported (as in containerd); add_ambient_capabilities ignored"
        );
    }
}

/// The user the process runs as: `run_as_username`, else `run_as_user`, else the image's
/// `User`; `run_as_group` replaces the group. Supplementary groups per
/// `supplemental_groups_policy`.
fn process_user(
    inputs: &SpecInputs,
    sc: &LinuxContainerSecurityContext,
    exec: &ExecConfig,
) -> Result<User, SpecError> {
    let cri_user = if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else if let Some(u) = &sc.run_as_user {
        if !(0..=i64::from(user::MAX_ID)).contains(&u.value) {
            return Err(invalid(format!(
                "run_as_user {} is outside 0..={}",
                u.value,
                user::MAX_ID
            )));
        }
        Some(u.value.to_string())
    } else {
        None
    };
    let group = match &sc.run_as_group {
        Some(g) => {
            if !(0..=i64::from(user::MAX_ID)).contains(&g.value) {
                return Err(invalid(format!(
                    "run_as_group {} is outside 0..={}",
                    g.value,
                    user::MAX_ID
                )));
            }
            Some(g.value.to_string())
        }
        None => None,
    };
    let user_string = match (cri_user, group) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => u,
        (None, Some(_)) => {
            return Err(invalid(
                "run_as_group is set without run_as_user or run_as_username",
            ));
        }
        (None, None) => exec.user.clone().unwrap_or_default(),
    };
    let mut supplemental = Vec::with_capacity(sc.supplemental_groups.len());
    for g in &sc.supplemental_groups {
        let gid = u32::try_from(*g)
            .ok()
            .filter(|g| *g <= user::MAX_ID)
            .ok_or_else(|| invalid(format!("supplemental_groups entry {g} is out of range")))?;
        supplemental.push(gid);
    }
    let merge =
        match berth_cri::v1::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(berth_cri::v1::SupplementalGroupsPolicy::Merge) => true,
            Ok(berth_cri::v1::SupplementalGroupsPolicy::Strict) => false,
            Err(_) => {
                return Err(invalid(format!(
                    "supplemental_groups_policy {} is unknown",
                    sc.supplemental_groups_policy
                )));
            }
        };
    let resolved = user::resolve_user(inputs.rootfs, &user_string, &supplemental, merge)?;
    let mut u = User::default();
    u.set_uid(resolved.uid);
    u.set_gid(resolved.gid);
    u.set_additional_gids(Some(resolved.additional_gids));
    Ok(u)
}

/// Namespaces: a new mount namespace and (unless privileged, as containerd) cgroup
/// namespace; the pod's network, IPC and UTS namespaces by path, or the host's when
/// absent; the PID namespace per [`PidMode`].
fn namespaces(inputs: &SpecInputs, privileged: bool) -> Vec<LinuxNamespace> {
    let ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path);
        n
    };
    let mut out = Vec::new();
    // First, so that the OCI runtime joins it before the namespaces it owns.
    if let Some(u) = &inputs.user_ns {
        out.push(ns(LinuxNamespaceType::User, Some(u.path.clone())));
    }
    match &inputs.pid {
        PidMode::Host => {}
        PidMode::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        PidMode::Pod(p) | PidMode::Target(p) => {
            out.push(ns(LinuxNamespaceType::Pid, Some(p.clone())));
        }
    }
    if let Some(p) = &inputs.network_ns {
        out.push(ns(LinuxNamespaceType::Network, Some(p.clone())));
    }
    if let Some(p) = &inputs.ipc_ns {
        out.push(ns(LinuxNamespaceType::Ipc, Some(p.clone())));
    }
    if let Some(p) = &inputs.uts_ns {
        out.push(ns(LinuxNamespaceType::Uts, Some(p.clone())));
    }
    out.push(ns(LinuxNamespaceType::Mount, None));
    if !privileged {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    out
}

/// The request's annotations plus containerd's CRI annotations.
fn annotations(inputs: &SpecInputs) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = inputs.config.annotations.clone();
    let meta = inputs.sandbox.metadata.clone().unwrap_or_default();
    let image = inputs
        .config
        .image
        .as_ref()
        .map(|i| {
            if i.user_specified_image.is_empty() {
                i.image.clone()
            } else {
                i.user_specified_image.clone()
            }
        })
        .unwrap_or_default();
    let name = inputs
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    for (k, v) in [
        (ANNOTATION_CONTAINER_TYPE, "container".to_string()),
        (ANNOTATION_SANDBOX_ID, inputs.sandbox_id.to_string()),
        (ANNOTATION_SANDBOX_NAMESPACE, meta.namespace),
        (ANNOTATION_SANDBOX_UID, meta.uid),
        (ANNOTATION_SANDBOX_NAME, meta.name),
        (ANNOTATION_CONTAINER_NAME, name),
        (ANNOTATION_IMAGE_NAME, image),
    ] {
        a.insert(k.to_string(), v);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::mounts::depth;
    use berth_cri::v1::MountPropagation;
    use berth_cri::v1::{
        Capability as CriCapability, ContainerMetadata, Device, HugepageLimit, ImageSpec,
        Int64Value, KeyValue, LinuxContainerConfig, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, Mount as CriMount, NamespaceOption, PodSandboxMetadata,
        SecurityProfile, UserNamespace, security_profile::ProfileType,
    };
    use oci_spec::runtime::LinuxSeccompAction;
    use oci_spec::runtime::{Capabilities, Capability};
    use oci_spec::runtime::{LinuxDeviceType, Mount};
    use std::fs;

    /// Owns everything a [`SpecInputs`] borrows.
    struct Fixture {
        dir: tempfile::TempDir,
        rootfs: PathBuf,
        config: ContainerConfig,
        sandbox: PodSandboxConfig,
        image: ImageConfig,
        network_ns: Option<PathBuf>,
        ipc_ns: Option<PathBuf>,
        uts_ns: Option<PathBuf>,
        pid: PidMode,
        user_ns: Option<UserNs>,
        hostname_file: Option<PathBuf>,
        hosts_file: Option<PathBuf>,
        resolv_conf: Option<PathBuf>,
        shm: Option<PathBuf>,
        seccomp_root: PathBuf,
        min_oom: i64,
        /// `None`: the host's.
        cgroups: Option<CgroupFeatures>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs");
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(
                rootfs.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n",
            )
            .unwrap();
            fs::write(
                rootfs.join("etc/group"),
                "root:x:0:\nbob:x:1000:\nwheel:x:10:bob\nstaff:x:50:\nnogroup:x:65534:\n",
            )
            .unwrap();
            let pod = dir.path().join("pod");
            fs::create_dir_all(pod.join("shm")).unwrap();
            for f in ["hostname", "hosts", "resolv.conf"] {
                fs::write(pod.join(f), "x\n").unwrap();
            }
            let seccomp_root = dir.path().join("seccomp");
            fs::create_dir_all(&seccomp_root).unwrap();
            let image: ImageConfig = serde_json::from_str(
                r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","FOO=image","KEEP=1"],"Cmd":["sh","-c","echo hi"],"WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
            )
            .unwrap();
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "sha256:abc".into(),
                    user_specified_image: "docker.io/library/busybox:latest".into(),
                    ..Default::default()
                }),
                linux: Some(LinuxContainerConfig {
                    resources: Some(LinuxContainerResources::default()),
                    security_context: Some(LinuxContainerSecurityContext::default()),
                }),
                ..Default::default()
            };
            let sandbox = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "web-host".into(),
                linux: Some(LinuxPodSandboxConfig::default()),
                ..Default::default()
            };
            Fixture {
                rootfs,
                config,
                sandbox,
                image,
                network_ns: Some("/var/run/netns/pod".into()),
                ipc_ns: Some("/proc/4242/ns/ipc".into()),
                uts_ns: Some("/proc/4242/ns/uts".into()),
                pid: PidMode::Container,
                user_ns: None,
                hostname_file: Some(pod.join("hostname")),
                hosts_file: Some(pod.join("hosts")),
                resolv_conf: Some(pod.join("resolv.conf")),
                shm: Some(pod.join("shm")),
                seccomp_root,
                min_oom: -1000,
                cgroups: Some(CgroupFeatures {
                    hugetlb: true,
                    swap: false,
                }),
                dir,
            }
        }

        fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn resources(&mut self) -> &mut LinuxContainerResources {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        fn exec(&mut self) -> &mut ExecConfig {
            self.image.config.get_or_insert_with(Default::default)
        }

        fn privileged_pod(&mut self) {
            self.sandbox
                .linux
                .get_or_insert_with(Default::default)
                .security_context = Some(LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            });
            self.sc().privileged = true;
        }

        fn build(&self) -> Result<Spec, SpecError> {
            let inputs = SpecInputs {
                container_id: "c1",
                sandbox_id: "s1",
                config: &self.config,
                sandbox: &self.sandbox,
                image: &self.image,
                rootfs: &self.rootfs,
                network_ns: self.network_ns.clone(),
                ipc_ns: self.ipc_ns.clone(),
                uts_ns: self.uts_ns.clone(),
                pid: self.pid.clone(),
                user_ns: self.user_ns.clone(),
                hostname_file: self.hostname_file.clone(),
                hosts_file: self.hosts_file.clone(),
                resolv_conf: self.resolv_conf.clone(),
                shm: self.shm.clone(),
                cgroups_path: "/kubepods/besteffort/poduid-1/c1".into(),
                seccomp_localhost_root: &self.seccomp_root,
                min_oom_score_adj: self.min_oom,
            };
            match self.cgroups {
                Some(c) => build_spec_for(&inputs, c),
                None => build_spec(&inputs),
            }
        }
    }

    fn process(s: &Spec) -> &Process {
        s.process().as_ref().unwrap()
    }

    fn linux(s: &Spec) -> &Linux {
        s.linux().as_ref().unwrap()
    }

    fn find_mount<'a>(s: &'a Spec, dest: &str) -> Option<&'a Mount> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn caps(s: &Spec) -> Capabilities {
        process(s)
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap()
    }

    fn invalid_naming(r: Result<Spec, SpecError>, needle: &str) {
        match r {
            Err(SpecError::InvalidArgument(m)) => {
                assert!(m.contains(needle), "{m:?} does not name {needle:?}")
            }
            other => panic!("expected InvalidArgument naming {needle:?}, got {other:?}"),
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // --- command, env, working dir -------------------------------------------------

    /// command, args, image Entrypoint, image Cmd => process.args
    type ArgsCase<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
        &'a [&'a str],
    );

    #[test]
    fn args_matrix() {
        let cases: &[ArgsCase] = &[
            // command, args, image entrypoint, image cmd => process.args
            (
                &["run"],
                &["-x"],
                Some(&["/ep"]),
                Some(&["cmd"]),
                &["run", "-x"],
            ),
            (&["run"], &[], Some(&["/ep"]), Some(&["cmd"]), &["run"]),
            (&[], &["-x"], Some(&["/ep"]), Some(&["cmd"]), &["/ep", "-x"]),
            (
                &[],
                &[],
                Some(&["/ep", "a"]),
                Some(&["cmd"]),
                &["/ep", "a", "cmd"],
            ),
            (&[], &[], None, Some(&["cmd", "b"]), &["cmd", "b"]),
            (&[], &["only"], None, Some(&["cmd"]), &["only"]),
            (&[], &[], Some(&[""]), Some(&["cmd"]), &["cmd"]),
            (&[], &[], Some(&["/ep"]), None, &["/ep"]),
        ];
        for (command, args, ep, cmd, want) in cases {
            let mut f = Fixture::new();
            f.config.command = strs(command);
            f.config.args = strs(args);
            f.exec().entrypoint = ep.map(strs);
            f.exec().cmd = cmd.map(strs);
            let s = f.build().unwrap();
            assert_eq!(
                process(&s).args().as_ref().unwrap(),
                &strs(want),
                "{command:?} {args:?} {ep:?} {cmd:?}"
            );
        }
        let mut f = Fixture::new();
        f.exec().cmd = None;
        f.exec().entrypoint = None;
        invalid_naming(f.build(), "no command specified");
        f.exec().entrypoint = Some(strs(&[""]));
        invalid_naming(f.build(), "no command specified");
    }

    #[test]
    fn env_merge() {
        let mut f = Fixture::new();
        f.config.envs = vec![
            KeyValue {
                key: "FOO".into(),
                value: "cri".into(),
            },
            KeyValue {
                key: "NEW".into(),
                value: "a=b".into(),
            },
        ];
        let s = f.build().unwrap();
        assert_eq!(
            process(&s).env().as_ref().unwrap(),
            &strs(&[
                "PATH=/usr/bin:/bin",
                "HOSTNAME=web-host",
                "FOO=cri",
                "KEEP=1",
                "NEW=a=b"
            ])
        );

        // No PATH in the image: the default; HOSTNAME from CRI env wins.
        let mut f = Fixture::new();
        f.exec().env = Some(strs(&["A=1"]));
        f.config.envs = vec![KeyValue {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        }];
        let s = f.build().unwrap();
        assert_eq!(
            process(&s).env().as_ref().unwrap(),
            &strs(&[DEFAULT_PATH_ENV, "HOSTNAME=mine", "A=1"])
        );

        // No pod hostname (host network): the host's.
        let mut f = Fixture::new();
        f.sandbox.hostname.clear();
        let s = f.build().unwrap();
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert!(
            process(&s)
                .env()
                .as_ref()
                .unwrap()
                .contains(&format!("HOSTNAME={}", host.trim()))
        );
    }

    #[test]
    fn merge_env_unsets_keys_without_equals() {
        let mut env = strs(&["A=1", "B=2"]);
        merge_env(&mut env, strs(&["A", "C=3", "B=x"]));
        assert_eq!(env, strs(&["B=x", "C=3"]));
    }

    #[test]
    fn working_dir_choice_and_validation() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.build().unwrap()).cwd(), Path::new("/srv"));
        f.config.working_dir = "/work".into();
        assert_eq!(process(&f.build().unwrap()).cwd(), Path::new("/work"));
        f.config.working_dir = "work".into();
        invalid_naming(f.build(), "working_dir \"work\" must be absolute");
        f.config.working_dir = "/a/../../etc".into();
        invalid_naming(f.build(), "working_dir");
        f.config.working_dir.clear();
        f.exec().working_dir = None;
        assert_eq!(process(&f.build().unwrap()).cwd(), Path::new("/"));
        f.exec().working_dir = Some("rel".into());
        invalid_naming(f.build(), "image WorkingDir");
    }

    // --- user -------------------------------------------------------------------------

    #[test]
    fn user_sources_and_groups() {
        let mut f = Fixture::new();
        let u = |s: &Spec| {
            let u = process(s).user();
            (
                u.uid(),
                u.gid(),
                u.additional_gids().clone().unwrap_or_default(),
            )
        };
        // Default: root.
        assert_eq!(u(&f.build().unwrap()), (0, 0, vec![0]));
        // Image USER name:group.
        f.exec().user = Some("bob:staff".into());
        assert_eq!(u(&f.build().unwrap()), (1000, 50, vec![10, 50]));
        // Image USER uid:gid without lookups.
        f.exec().user = Some("4000:4001".into());
        assert_eq!(u(&f.build().unwrap()), (4000, 4001, vec![4001]));
        // run_as_user beats the image.
        f.sc().run_as_user = Some(Int64Value { value: 1000 });
        assert_eq!(u(&f.build().unwrap()), (1000, 1000, vec![10, 1000]));
        // run_as_group replaces the primary group; supplemental groups are added.
        f.sc().run_as_group = Some(Int64Value { value: 3000 });
        f.sc().supplemental_groups = vec![7000, 50, 7000];
        assert_eq!(
            u(&f.build().unwrap()),
            (1000, 3000, vec![10, 50, 3000, 7000])
        );
        // Strict: no /etc/group membership.
        f.sc().supplemental_groups_policy = berth_cri::v1::SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(u(&f.build().unwrap()), (1000, 3000, vec![50, 3000, 7000]));
        // run_as_username beats run_as_user.
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(Int64Value { value: 5 });
        f.sc().run_as_username = "nobody".into();
        assert_eq!(u(&f.build().unwrap()), (65534, 65534, vec![65534]));
    }

    #[test]
    fn user_errors() {
        let mut f = Fixture::new();
        f.sc().run_as_username = "mallory".into();
        assert!(matches!(f.build(), Err(SpecError::NotFound(m)) if m.contains("mallory")));
        let mut f = Fixture::new();
        f.exec().user = Some("ghost".into());
        assert!(matches!(f.build(), Err(SpecError::NotFound(m)) if m.contains("ghost")));
        let mut f = Fixture::new();
        f.sc().run_as_group = Some(Int64Value { value: 5 });
        invalid_naming(f.build(), "run_as_group");
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(Int64Value { value: -1 });
        invalid_naming(f.build(), "run_as_user");
        let mut f = Fixture::new();
        f.sc().supplemental_groups = vec![-3];
        invalid_naming(f.build(), "supplemental_groups");
        // Numeric uid without /etc/passwd: gid 0.
        let mut f = Fixture::new();
        fs::remove_file(f.rootfs.join("etc/passwd")).unwrap();
        f.sc().run_as_user = Some(Int64Value { value: 1234 });
        let s = f.build().unwrap();
        assert_eq!(
            (process(&s).user().uid(), process(&s).user().gid()),
            (1234, 0)
        );
    }

    #[test]
    fn user_symlinked_passwd_reads_the_rootfs_copy() {
        let mut f = Fixture::new();
        fs::remove_file(f.rootfs.join("etc/passwd")).unwrap();
        fs::create_dir_all(f.rootfs.join("usr/lib")).unwrap();
        fs::write(
            f.rootfs.join("usr/lib/passwd"),
            "zed:x:2222:2223::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/lib/passwd", f.rootfs.join("etc/passwd")).unwrap();
        f.sc().run_as_username = "zed".into();
        let s = f.build().unwrap();
        assert_eq!(process(&s).user().uid(), 2222);
        // "root" is in the host's /etc/passwd but not in the image's.
        f.sc().run_as_username = "root".into();
        assert!(matches!(f.build(), Err(SpecError::NotFound(_))));
        // A link to the host's /etc/passwd path resolves to itself inside the rootfs.
        fs::remove_file(f.rootfs.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", f.rootfs.join("etc/passwd")).unwrap();
        assert!(f.build().is_err());
    }

    // --- mounts -----------------------------------------------------------------------

    fn cri_mount(container: &str, host: &Path) -> CriMount {
        CriMount {
            container_path: container.into(),
            host_path: host.to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn default_and_pod_mounts() {
        let f = Fixture::new();
        let s = f.build().unwrap();
        let dests: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert_eq!(
                dests.iter().filter(|x| *x == d).count(),
                1,
                "{d} in {dests:?}"
            );
        }
        assert!(!dests.iter().any(|d| d == "/run"));
        let dev = find_mount(&s, "/dev").unwrap();
        assert_eq!(dev.typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            opts(dev),
            strs(&["nosuid", "strictatime", "mode=755", "size=65536k"])
        );
        assert!(opts(find_mount(&s, "/sys").unwrap()).contains(&"ro".to_string()));
        let cg = find_mount(&s, "/sys/fs/cgroup").unwrap();
        assert_eq!(cg.typ().as_deref(), Some("cgroup"));
        assert!(opts(cg).contains(&"ro".to_string()));
        let shm = find_mount(&s, "/dev/shm").unwrap();
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(shm.source().as_deref(), f.shm.as_deref());
        assert_eq!(opts(shm), strs(&["rbind", "rprivate", "rw"]));
        let hosts = find_mount(&s, "/etc/hosts").unwrap();
        assert_eq!(hosts.source().as_deref(), f.hosts_file.as_deref());
        assert_eq!(opts(hosts), strs(&["rbind", "rprivate", "rw"]));
    }

    #[test]
    fn own_shm_and_readonly_pod_files() {
        let mut f = Fixture::new();
        f.shm = None;
        f.sc().readonly_rootfs = true;
        let s = f.build().unwrap();
        let shm = find_mount(&s, "/dev/shm").unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(opts(shm).contains(&"size=65536k".to_string()));
        for d in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
            assert!(
                opts(find_mount(&s, d).unwrap()).contains(&"ro".to_string()),
                "{d}"
            );
        }
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        // A pod file that is missing is skipped.
        let mut f = Fixture::new();
        f.hosts_file = Some(f.dir.path().join("nope"));
        assert!(find_mount(&f.build().unwrap(), "/etc/hosts").is_none());
    }

    #[test]
    fn cri_mount_paths_are_validated_before_anything_is_created() {
        let mut f = Fixture::new();
        let created = f.dir.path().join("should-not-exist");
        f.config.mounts = vec![
            cri_mount("/ok", &created),
            cri_mount("rel/path", &f.dir.path().join("x")),
        ];
        invalid_naming(
            f.build(),
            "mount container_path \"rel/path\" must be absolute",
        );
        assert!(!created.exists());
        f.config.mounts = vec![
            cri_mount("/ok", &created),
            CriMount {
                container_path: "/data".into(),
                host_path: "relative/host".into(),
                ..Default::default()
            },
        ];
        invalid_naming(f.build(), "mount host_path \"relative/host\"");
        assert!(!created.exists());
        f.config.mounts = vec![cri_mount("/../escape", &created)];
        invalid_naming(f.build(), "..");
        // A later failure (unknown user) also leaves the host untouched.
        f.config.mounts = vec![cri_mount("/ok", &created)];
        f.sc().run_as_username = "ghost".into();
        assert!(f.build().is_err());
        assert!(!created.exists());
    }

    #[test]
    fn missing_host_path_is_created_as_directory() {
        use std::os::unix::fs::PermissionsExt;
        let mut f = Fixture::new();
        let host = f.dir.path().join("vol/a/b");
        f.config.mounts = vec![cri_mount("/data", &host)];
        let s = f.build().unwrap();
        let meta = fs::metadata(&host).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o755 & !current_umask());
        let m = find_mount(&s, "/data").unwrap();
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(
            m.source().as_deref(),
            Some(fs::canonicalize(&host).unwrap().as_path())
        );
        assert_eq!(opts(m), strs(&["rbind", "rprivate", "rw"]));
    }

    fn current_umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap_or(0o022)
    }

    #[test]
    fn symlinked_host_path_is_resolved() {
        let mut f = Fixture::new();
        let target = f.dir.path().join("real");
        fs::create_dir(&target).unwrap();
        let link = f.dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        f.config.mounts = vec![cri_mount("/data", &link)];
        let s = f.build().unwrap();
        assert_eq!(
            find_mount(&s, "/data").unwrap().source().as_deref(),
            Some(fs::canonicalize(&target).unwrap().as_path())
        );
    }

    #[test]
    fn propagation_and_readonly_options() {
        let mut f = Fixture::new();
        let d = f.dir.path().to_path_buf();
        f.config.mounts = vec![
            CriMount {
                propagation: MountPropagation::PropagationHostToContainer as i32,
                readonly: true,
                ..cri_mount("/slave", &d.join("a"))
            },
            CriMount {
                propagation: MountPropagation::PropagationPrivate as i32,
                readonly: true,
                recursive_read_only: true,
                ..cri_mount("/rro", &d.join("b"))
            },
        ];
        let s = f.build().unwrap();
        assert_eq!(
            opts(find_mount(&s, "/slave").unwrap()),
            strs(&["rbind", "rslave", "ro"])
        );
        assert_eq!(
            opts(find_mount(&s, "/rro").unwrap()),
            strs(&["rbind", "rprivate", "ro"])
        );
        assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rslave"));

        f.config.mounts.push(CriMount {
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..cri_mount("/shared", &d.join("c"))
        });
        let s = f.build().unwrap();
        assert_eq!(
            opts(find_mount(&s, "/shared").unwrap()),
            strs(&["rbind", "rshared", "rw"])
        );
        assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rshared"));

        // Only private mounts: runc's default root propagation.
        let mut f = Fixture::new();
        f.config.mounts = vec![cri_mount("/p", &d.join("a"))];
        assert_eq!(linux(&f.build().unwrap()).rootfs_propagation(), &None);

        // rro needs readonly and private propagation.
        let mut f = Fixture::new();
        f.config.mounts = vec![CriMount {
            recursive_read_only: true,
            ..cri_mount("/x", &d.join("a"))
        }];
        invalid_naming(f.build(), "recursive_read_only");
        f.config.mounts = vec![CriMount {
            recursive_read_only: true,
            readonly: true,
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..cri_mount("/x", &d.join("a"))
        }];
        invalid_naming(f.build(), "recursive_read_only");
    }

    #[test]
    fn cri_mounts_override_defaults() {
        let mut f = Fixture::new();
        let d = f.dir.path().to_path_buf();
        fs::write(d.join("kubelet-hosts"), "127.0.0.1 localhost\n").unwrap();
        f.config.mounts = vec![
            cri_mount("/etc/hosts", &d.join("kubelet-hosts")),
            cri_mount("/dev/shm/", &d.join("kshm")),
            cri_mount("/sys", &d.join("sys")),
        ];
        let s = f.build().unwrap();
        let all = s.mounts().as_ref().unwrap();
        for dest in ["/etc/hosts", "/dev/shm", "/sys"] {
            let ms: Vec<_> = all
                .iter()
                .filter(|m| m.destination() == Path::new(dest))
                .collect();
            assert_eq!(ms.len(), 1, "{dest}");
            assert_eq!(ms[0].typ().as_deref(), Some("bind"), "{dest}");
        }
        assert_eq!(
            find_mount(&s, "/etc/hosts").unwrap().source().as_deref(),
            Some(fs::canonicalize(d.join("kubelet-hosts")).unwrap().as_path())
        );
        // A CRI /dev replaces every default under /dev.
        let mut f = Fixture::new();
        f.shm = None;
        f.config.mounts = vec![cri_mount("/dev", &d.join("dev"))];
        let s = f.build().unwrap();
        assert!(
            !s.mounts().as_ref().unwrap().iter().any(
                |m| m.destination().starts_with("/dev") && m.destination() != Path::new("/dev")
            )
        );
        assert_eq!(
            find_mount(&s, "/dev").unwrap().typ().as_deref(),
            Some("bind")
        );
    }

    #[test]
    fn mounts_are_ordered_parents_first() {
        let mut f = Fixture::new();
        let d = f.dir.path().to_path_buf();
        f.config.mounts = vec![
            cri_mount("/a/b/c", &d.join("1")),
            cri_mount("/a", &d.join("2")),
            cri_mount("/a/b", &d.join("3")),
            cri_mount("/sys/fs/cgroup/x", &d.join("4")),
        ];
        let s = f.build().unwrap();
        let all = s.mounts().as_ref().unwrap();
        let pos = |p: &str| {
            all.iter()
                .position(|m| m.destination() == Path::new(p))
                .unwrap()
        };
        assert!(pos("/a") < pos("/a/b") && pos("/a/b") < pos("/a/b/c"));
        assert!(
            pos("/sys") < pos("/sys/fs/cgroup") && pos("/sys/fs/cgroup") < pos("/sys/fs/cgroup/x")
        );
        assert!(pos("/dev") < pos("/dev/pts"));
        let depths: Vec<_> = all.iter().map(|m| depth(m.destination())).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");
    }

    // --- devices ----------------------------------------------------------------------

    #[test]
    fn cri_device_from_dev_null() {
        let mut f = Fixture::new();
        f.config.devices = vec![Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let s = f.build().unwrap();
        let devs = linux(&s).devices().as_ref().unwrap();
        assert_eq!(devs.len(), 1);
        let d = &devs[0];
        assert_eq!(d.path(), Path::new("/dev/mynull"));
        assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!(d.file_mode().map(|m| m & 0o777), Some(0o666));
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        // Deny all first, then the defaults, then ours.
        assert!(
            !rules[0].allow()
                && rules[0].typ().is_none()
                && rules[0].access().as_deref() == Some("rwm")
        );
        let last = rules.last().unwrap();
        assert!(last.allow());
        assert_eq!(
            (last.typ(), last.major(), last.minor()),
            (Some(LinuxDeviceType::C), Some(1), Some(3))
        );
        assert_eq!(last.access().as_deref(), Some("rw"));
        for (maj, min) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            assert!(
                rules
                    .iter()
                    .any(|r| r.allow() && r.major() == Some(maj) && r.minor() == Some(min)),
                "{maj}:{min}"
            );
        }
        assert!(
            rules
                .iter()
                .any(|r| r.allow() && r.major() == Some(136) && r.minor().is_none())
        );
    }

    #[test]
    fn device_errors_and_symlinks() {
        let mut f = Fixture::new();
        let link = f.dir.path().join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        f.config.devices = vec![Device {
            container_path: "/dev/n".into(),
            host_path: link.to_string_lossy().into_owned(),
            permissions: String::new(),
        }];
        let s = f.build().unwrap();
        assert_eq!(linux(&s).devices().as_ref().unwrap()[0].major(), 1);
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.last().unwrap().access().as_deref(), Some("rwm"));

        let dev = |host: &str, cont: &str, perm: &str| Device {
            container_path: cont.into(),
            host_path: host.into(),
            permissions: perm.into(),
        };
        f.config.devices = vec![dev("/dev/null", "/dev/n", "rwx")];
        invalid_naming(f.build(), "permissions");
        f.config.devices = vec![dev("/dev/does-not-exist", "/dev/n", "rwm")];
        assert!(
            matches!(f.build(), Err(SpecError::NotFound(m)) if m.contains("/dev/does-not-exist"))
        );
        f.config.devices = vec![dev("/etc/hostname", "/dev/n", "rwm")];
        invalid_naming(f.build(), "not a character or block device");
        f.config.devices = vec![dev("dev/null", "/dev/n", "rwm")];
        invalid_naming(f.build(), "device host_path");
        f.config.devices = vec![dev("/dev/null", "dev/n", "rwm")];
        invalid_naming(f.build(), "device container_path");
    }

    #[test]
    fn privileged_container() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        invalid_naming(f.build(), "privileged");

        f.privileged_pod();
        f.sc().seccomp = Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        f.sc().capabilities = Some(CriCapability {
            drop_capabilities: strs(&["ALL"]),
            ..Default::default()
        });
        let s = f.build().unwrap();
        assert_eq!(&caps(&s), host_capabilities());
        let l = linux(&s);
        assert_eq!(l.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(l.readonly_paths().as_deref(), Some(&[][..]));
        assert!(l.seccomp().is_none());
        assert!(opts(find_mount(&s, "/sys").unwrap()).contains(&"rw".to_string()));
        assert!(opts(find_mount(&s, "/sys/fs/cgroup").unwrap()).contains(&"rw".to_string()));
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0].allow()
                && rules[0].typ().is_none()
                && rules[0].access().as_deref() == Some("rwm")
        );
        let devs = l.devices().clone().unwrap_or_default();
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devs.iter().any(|d| d.path() == Path::new("/dev/console")));
        assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
        assert!(
            !l.namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
        );
    }

    // --- resources ----------------------------------------------------------------

    #[test]
    fn resources_mapping() {
        let mut f = Fixture::new();
        *f.resources() = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            oom_score_adj: 900,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            memory_swap_limit_in_bytes: 0,
        };
        let s = f.build().unwrap();
        let r = linux(&s).resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.period(), cpu.quota(), cpu.shares()),
            (Some(100_000), Some(50_000), Some(512))
        );
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some("0-1"), Some("0"))
        );
        let mem = r.memory().as_ref().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(256 << 20), None));
        let h = &r.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!((h.page_size().as_str(), h.limit()), ("2MB", 4 << 20));
        assert_eq!(
            r.unified()
                .as_ref()
                .unwrap()
                .get("memory.high")
                .map(String::as_str),
            Some("1000000")
        );
        assert_eq!(process(&s).oom_score_adj(), Some(900));

        let mem = |f: &Fixture| {
            let s = f.build().unwrap();
            let m = linux(&s).resources().as_ref().unwrap().memory().unwrap();
            (m.limit(), m.swap())
        };
        // Without swap accounting an explicit swap limit is dropped.
        f.resources().memory_swap_limit_in_bytes = 512 << 20;
        assert_eq!(mem(&f), (Some(256 << 20), None));
        // With it: as given, or equal to the limit (no swapping) when unset.
        f.cgroups = Some(CgroupFeatures {
            hugetlb: true,
            swap: true,
        });
        assert_eq!(mem(&f), (Some(256 << 20), Some(512 << 20)));
        f.resources().memory_swap_limit_in_bytes = 0;
        assert_eq!(mem(&f), (Some(256 << 20), Some(256 << 20)));
        // Without a hugetlb controller hugepage limits are dropped.
        f.cgroups = Some(CgroupFeatures {
            hugetlb: false,
            swap: true,
        });
        let s = f.build().unwrap();
        assert!(
            linux(&s)
                .resources()
                .as_ref()
                .unwrap()
                .hugepage_limits()
                .is_none()
        );
        // The host's features: whatever they are, the spec builds.
        f.cgroups = None;
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s)
                .resources()
                .as_ref()
                .unwrap()
                .hugepage_limits()
                .is_some(),
            CgroupFeatures::host().hugetlb
        );

        // Nothing set: no cpu or memory section.
        let f = Fixture::new();
        let s = f.build().unwrap();
        let r = linux(&s).resources().as_ref().unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none() && r.hugepage_limits().is_none());

        for (mutate, field) in [
            (
                Box::new(|r: &mut LinuxContainerResources| r.cpu_shares = -2)
                    as Box<dyn Fn(&mut LinuxContainerResources)>,
                "cpu_shares",
            ),
            (
                Box::new(|r: &mut LinuxContainerResources| r.cpu_period = -1),
                "cpu_period",
            ),
            (
                Box::new(|r: &mut LinuxContainerResources| {
                    r.hugepage_limits = vec![HugepageLimit {
                        page_size: "2XB".into(),
                        limit: 1,
                    }]
                }),
                "page_size",
            ),
            (
                Box::new(|r: &mut LinuxContainerResources| {
                    r.unified = [("../x".to_string(), "1".to_string())].into()
                }),
                "unified",
            ),
        ] {
            let mut f = Fixture::new();
            mutate(f.resources());
            invalid_naming(f.build(), field);
        }
    }

    #[test]
    fn cgroup_features_from_fixtures() {
        // cgroup v1 (or hybrid): controllers are directories of the root.
        let v1 = tempfile::tempdir().unwrap();
        assert_eq!(
            CgroupFeatures::detect(v1.path(), "4:memory:/\n"),
            CgroupFeatures {
                hugetlb: false,
                swap: false
            }
        );
        fs::create_dir_all(v1.path().join("hugetlb")).unwrap();
        fs::create_dir_all(v1.path().join("memory")).unwrap();
        fs::write(v1.path().join("memory/memory.memsw.limit_in_bytes"), "0").unwrap();
        assert_eq!(
            CgroupFeatures::detect(v1.path(), ""),
            CgroupFeatures {
                hugetlb: true,
                swap: true
            }
        );
        // cgroup v2: cgroup.controllers at the root, memory.swap.max in our own cgroup.
        let v2 = tempfile::tempdir().unwrap();
        fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let own = "0::/system.slice/berth.service\n";
        assert_eq!(
            CgroupFeatures::detect(v2.path(), own),
            CgroupFeatures {
                hugetlb: false,
                swap: false
            }
        );
        fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        fs::create_dir_all(v2.path().join("system.slice/berth.service")).unwrap();
        fs::write(
            v2.path().join("system.slice/berth.service/memory.swap.max"),
            "max\n",
        )
        .unwrap();
        assert_eq!(
            CgroupFeatures::detect(v2.path(), own),
            CgroupFeatures {
                hugetlb: true,
                swap: true
            }
        );
        // The root cgroup has no memory.swap.max.
        assert!(!CgroupFeatures::detect(v2.path(), "0::/\n").swap);
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        let mut f = Fixture::new();
        f.min_oom = -500;
        f.resources().oom_score_adj = -998;
        assert_eq!(process(&f.build().unwrap()).oom_score_adj(), Some(-500));
        f.resources().oom_score_adj = 0;
        assert_eq!(process(&f.build().unwrap()).oom_score_adj(), Some(0));
        f.min_oom = 0;
        f.resources().oom_score_adj = -1;
        assert_eq!(process(&f.build().unwrap()).oom_score_adj(), Some(0));
        f.resources().oom_score_adj = 1000;
        assert_eq!(process(&f.build().unwrap()).oom_score_adj(), Some(1000));
        f.resources().oom_score_adj = 1001;
        invalid_naming(f.build(), "oom_score_adj");
        // No resources at all: not set.
        f.config.linux.as_mut().unwrap().resources = None;
        assert_eq!(process(&f.build().unwrap()).oom_score_adj(), None);
    }

    // --- capabilities and security ---------------------------------------------------

    fn with_caps(add: &[&str], drop: &[&str]) -> Result<Spec, SpecError> {
        let mut f = Fixture::new();
        f.sc().capabilities = Some(CriCapability {
            add_capabilities: strs(add),
            drop_capabilities: strs(drop),
            add_ambient_capabilities: vec![],
        });
        f.build()
    }

    #[test]
    fn capabilities_default_add_drop() {
        let s = Fixture::new().build().unwrap();
        let c = process(&s).capabilities().clone().unwrap();
        let default: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
        assert_eq!(c.bounding().as_ref(), Some(&default));
        assert_eq!(c.permitted().as_ref(), Some(&default));
        assert_eq!(c.effective().as_ref(), Some(&default));
        assert!(c.inheritable().is_none() && c.ambient().is_none());

        let s = with_caps(
            &["NET_ADMIN", "cap_sys_time", "Sys_Ptrace"],
            &["chown", "CAP_KILL"],
        )
        .unwrap();
        let c = caps(&s);
        assert!(
            c.contains(&Capability::NetAdmin)
                && c.contains(&Capability::SysTime)
                && c.contains(&Capability::SysPtrace)
        );
        assert!(!c.contains(&Capability::Chown) && !c.contains(&Capability::Kill));
        assert!(c.contains(&Capability::Setuid));

        // ALL in add, minus one.
        let s = with_caps(&["ALL"], &["CHOWN"]).unwrap();
        let mut want = host_capabilities().clone();
        want.remove(&Capability::Chown);
        assert_eq!(caps(&s), want);
        // ALL in drop, plus one.
        let s = with_caps(&["NET_BIND_SERVICE"], &["all"]).unwrap();
        assert_eq!(caps(&s), [Capability::NetBindService].into_iter().collect());
        // Both ALL: nothing.
        assert!(caps(&with_caps(&["ALL"], &["ALL"]).unwrap()).is_empty());

        invalid_naming(
            with_caps(&["NOT_A_CAP"], &[]),
            "add_capabilities: unknown capability \"NOT_A_CAP\"",
        );
        invalid_naming(with_caps(&[], &["CAP_BOGUS"]), "drop_capabilities");
    }

    #[test]
    fn host_capabilities_match_proc_status() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let bits = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(
            host_capabilities().len() as u32,
            (bits & ((1 << 41) - 1)).count_ones()
        );
    }

    #[test]
    fn readonly_rootfs_and_no_new_privs() {
        let mut f = Fixture::new();
        let s = f.build().unwrap();
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
        assert_eq!(s.root().as_ref().unwrap().path(), &f.rootfs);
        assert_eq!(process(&s).no_new_privileges(), Some(false));
        f.sc().readonly_rootfs = true;
        f.sc().no_new_privs = true;
        let s = f.build().unwrap();
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(process(&s).no_new_privileges(), Some(true));
    }

    #[test]
    fn masked_and_readonly_paths() {
        let mut f = Fixture::new();
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s).masked_paths().clone().unwrap(),
            strs(&DEFAULT_MASKED_PATHS)
        );
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            strs(&DEFAULT_READONLY_PATHS)
        );
        f.sc().masked_paths = strs(&["/proc/kcore"]);
        f.sc().readonly_paths = strs(&["/proc/sys", "/proc/bus"]);
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s).masked_paths().clone().unwrap(),
            strs(&["/proc/kcore"])
        );
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            strs(&["/proc/sys", "/proc/bus"])
        );
        // Only one list set: taken as given, the other is empty.
        f.sc().readonly_paths.clear();
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            Vec::<String>::new()
        );
        // procMount Unmasked (empty lists in a user-namespaced pod): nothing masked.
        let mut f = Fixture::new();
        f.sc().namespace_options = Some(NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s).masked_paths().clone().unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn seccomp_profiles() {
        let mut f = Fixture::new();
        assert!(linux(&f.build().unwrap()).seccomp().is_none());
        f.sc().seccomp = Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let s = f.build().unwrap();
        let p = linux(&s).seccomp().clone().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let denied = |p: &oci_spec::runtime::LinuxSeccomp, n: &str| {
            p.syscalls()
                .iter()
                .flatten()
                .any(|s| s.names().iter().any(|x| x == n))
        };
        assert!(denied(&p, "mount") && denied(&p, "ptrace"));
        f.sc().capabilities = Some(CriCapability {
            add_capabilities: strs(&["SYS_ADMIN"]),
            ..Default::default()
        });
        let p = linux(&f.build().unwrap()).seccomp().clone().unwrap();
        assert!(!denied(&p, "mount") && !denied(&p, "clone") && denied(&p, "ptrace"));

        // Localhost, relative to the profile root; missing; bad JSON.
        fs::write(
            f.seccomp_root.join("p.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[]}"#,
        )
        .unwrap();
        fs::write(f.seccomp_root.join("bad.json"), "[").unwrap();
        let local = |r: &str| {
            Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: r.into(),
            })
        };
        f.sc().seccomp = local("p.json");
        let p = linux(&f.build().unwrap()).seccomp().clone().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActLog);
        f.sc().seccomp = local(f.seccomp_root.join("p.json").to_str().unwrap());
        assert!(linux(&f.build().unwrap()).seccomp().is_some());
        f.sc().seccomp = local("nope.json");
        assert!(matches!(f.build(), Err(SpecError::NotFound(m)) if m.contains("nope.json")));
        f.sc().seccomp = local("bad.json");
        invalid_naming(f.build(), "bad.json");
        f.sc().seccomp = Some(SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        });
        assert!(linux(&f.build().unwrap()).seccomp().is_none());
    }

    // --- sysctls, namespaces, annotations ----------------------------------------

    #[test]
    fn sysctls_need_their_namespace() {
        let set = |f: &mut Fixture, k: &str| {
            f.sandbox.linux.get_or_insert_with(Default::default).sysctls =
                [(k.to_string(), "1".to_string())].into();
        };
        let mut f = Fixture::new();
        set(&mut f, "net.ipv4.ip_unprivileged_port_start");
        let s = f.build().unwrap();
        assert_eq!(
            linux(&s)
                .sysctl()
                .as_ref()
                .unwrap()
                .get("net.ipv4.ip_unprivileged_port_start")
                .map(String::as_str),
            Some("1")
        );
        f.network_ns = None;
        invalid_naming(f.build(), "net.ipv4.ip_unprivileged_port_start");

        for k in [
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            let mut f = Fixture::new();
            set(&mut f, k);
            assert!(f.build().is_ok(), "{k}");
            f.ipc_ns = None;
            invalid_naming(f.build(), k);
        }
        let mut f = Fixture::new();
        set(&mut f, "net/ipv4/ping_group_range");
        assert!(f.build().is_ok());
        for bad in [
            "vm.swappiness",
            "kernel.pid_max",
            "net..x",
            "",
            "../../x",
            "net.ipv4/../../x",
        ] {
            let mut f = Fixture::new();
            set(&mut f, bad);
            assert!(
                matches!(f.build(), Err(SpecError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        // None: no sysctl section.
        assert!(linux(&Fixture::new().build().unwrap()).sysctl().is_none());
    }

    fn ns_of(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        linux(s)
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn namespaces_per_mode() {
        use LinuxNamespaceType::*;
        let mut f = Fixture::new();
        let s = f.build().unwrap();
        assert_eq!(
            ns_of(&s),
            vec![
                (Pid, None),
                (Network, Some("/var/run/netns/pod".into())),
                (Ipc, Some("/proc/4242/ns/ipc".into())),
                (Uts, Some("/proc/4242/ns/uts".into())),
                (Mount, None),
                (Cgroup, None),
            ]
        );
        f.pid = PidMode::Pod("/proc/4242/ns/pid".into());
        assert!(ns_of(&f.build().unwrap()).contains(&(Pid, Some("/proc/4242/ns/pid".into()))));
        f.pid = PidMode::Target("/proc/777/ns/pid".into());
        assert!(ns_of(&f.build().unwrap()).contains(&(Pid, Some("/proc/777/ns/pid".into()))));
        f.pid = PidMode::Host;
        f.network_ns = None;
        f.ipc_ns = None;
        f.uts_ns = None;
        let s = f.build().unwrap();
        assert_eq!(ns_of(&s), vec![(Mount, None), (Cgroup, None)]);
        // Never a hostname: the UTS namespace is not the container's own.
        assert!(s.hostname().is_none());
    }

    #[test]
    fn a_pod_user_namespace_is_joined_first_with_its_mappings() {
        use crate::sandbox::userns::{IdRange, Mappings};
        let mut f = Fixture::new();
        let range = |host_id| IdRange {
            container_id: 0,
            host_id,
            length: 65536,
        };
        f.user_ns = Some(UserNs {
            path: "/run/berth/pods/p/ns/user".into(),
            mappings: Mappings {
                uids: range(65536),
                gids: range(131072),
            },
        });
        let s = f.build().unwrap();
        let ns = ns_of(&s);
        assert_eq!(
            ns[0],
            (
                LinuxNamespaceType::User,
                Some("/run/berth/pods/p/ns/user".into())
            )
        );
        let l = linux(&s);
        let m = l.uid_mappings().clone().unwrap();
        assert_eq!(
            (m.len(), m[0].container_id(), m[0].host_id(), m[0].size()),
            (1, 0, 65536, 65536)
        );
        let g = l.gid_mappings().clone().unwrap();
        assert_eq!((g[0].host_id(), g[0].size()), (131072, 65536));
        // Without one: no user namespace and no mappings.
        f.user_ns = None;
        let s = f.build().unwrap();
        assert!(
            ns_of(&s)
                .iter()
                .all(|(t, _)| *t != LinuxNamespaceType::User)
        );
        assert!(linux(&s).uid_mappings().is_none());
    }

    #[test]
    fn annotations_terminal_cgroups() {
        let mut f = Fixture::new();
        f.config.annotations = [
            ("user.anno".to_string(), "v".to_string()),
            (ANNOTATION_SANDBOX_ID.to_string(), "spoofed".to_string()),
        ]
        .into();
        f.config.tty = true;
        let s = f.build().unwrap();
        let a = s.annotations().as_ref().unwrap();
        let get = |k: &str| a.get(k).map(String::as_str);
        assert_eq!(get("user.anno"), Some("v"));
        assert_eq!(get(ANNOTATION_CONTAINER_TYPE), Some("container"));
        assert_eq!(get(ANNOTATION_SANDBOX_ID), Some("s1"));
        assert_eq!(get(ANNOTATION_SANDBOX_NAME), Some("web"));
        assert_eq!(get(ANNOTATION_SANDBOX_NAMESPACE), Some("default"));
        assert_eq!(get(ANNOTATION_SANDBOX_UID), Some("uid-1"));
        assert_eq!(get(ANNOTATION_CONTAINER_NAME), Some("app"));
        assert_eq!(
            get(ANNOTATION_IMAGE_NAME),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(process(&s).terminal(), Some(true));
        assert!(process(&s).rlimits().is_none());
        assert!(process(&s).apparmor_profile().is_none());
        assert_eq!(
            linux(&s).cgroups_path().as_deref(),
            Some(Path::new("/kubepods/besteffort/poduid-1/c1"))
        );
    }

    #[test]
    fn json_round_trip() {
        let mut f = Fixture::new();
        f.sc().seccomp = Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        f.config.devices = vec![Device {
            container_path: "/dev/n".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }];
        let spec = f.build().unwrap();
        let text = serde_json::to_string_pretty(&spec).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ociVersion"], oci_spec::runtime::VERSION);
        assert_eq!(v["process"]["args"][0], "sh");
        assert!(v["process"]["env"].is_array());
        assert!(v["process"]["user"]["additionalGids"].is_array());
        assert!(v["process"]["capabilities"]["bounding"].is_array());
        assert!(v["process"].get("rlimits").is_none());
        assert!(v.get("hostname").is_none());
        assert_eq!(v["root"]["path"], f.rootfs.to_str().unwrap());
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "mount")
        );
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/pod")
        );
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(
            v["linux"]["seccomp"]["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["args"][0]["op"] == "SCMP_CMP_MASKED_EQ")
        );
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(v["linux"]["devices"][0]["type"], "c");
        assert!(
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/proc" && m["type"] == "proc")
        );
        assert_eq!(
            v["linux"]["cgroupsPath"],
            "/kubepods/besteffort/poduid-1/c1"
        );
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "/proc/kcore")
        );
        // And back.
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn error_kinds_map_to_crate_errors() {
        assert_eq!(
            crate::Error::from(SpecError::InvalidArgument("x".into())).kind(),
            crate::ErrorKind::InvalidArgument
        );
        assert_eq!(
            crate::Error::from(SpecError::NotFound("x".into())).kind(),
            crate::ErrorKind::NotFound
        );
        let io = SpecError::Io {
            path: "/p".into(),
            source: std::io::Error::other("boom"),
        };
        let e = crate::Error::from(io);
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert_eq!(e.to_string(), "/p: boom");
    }
}
