//! The mounts of a container's OCI spec: the defaults every container gets, the pod's
//! files and `/dev/shm`, and the CRI mounts (validated, propagation, read-only and
//! recursive read-only, id mappings), parents before children.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use berth_cri::v1::{ContainerConfig, LinuxContainerSecurityContext, MountPropagation};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};
use tracing::warn;

use super::spec::{SpecError, SpecInputs, check_container_path, invalid, io_error};

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The mounts every container gets (containerd's defaults without `/run`).
pub(super) fn default_mounts(privileged: bool) -> Vec<Mount> {
    let rw = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", rw]),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", rw],
        ),
    ]
}

/// A CRI mount after validation, before its source is looked at.
#[derive(Debug)]
pub(super) struct PlannedMount {
    destination: PathBuf,
    host_path: PathBuf,
    options: Vec<String>,
    propagation: MountPropagation,
    uid_mappings: Vec<LinuxIdMapping>,
    gid_mappings: Vec<LinuxIdMapping>,
}

fn id_mappings(m: &[berth_cri::v1::IdMapping]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    m.iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .host_id(m.host_id)
                .container_id(m.container_id)
                .size(m.length)
                .build()
                .map_err(|e| invalid(format!("mount id mapping: {e}")))
        })
        .collect()
}

/// Validates the CRI mounts: absolute paths, propagation, read-only flags.
pub(super) fn plan_cri_mounts(config: &ContainerConfig) -> Result<Vec<PlannedMount>, SpecError> {
    let mut out = Vec::with_capacity(config.mounts.len());
    for m in &config.mounts {
        let destination = check_container_path("mount container_path", &m.container_path)?;
        if m.host_path.is_empty() && m.image.is_some() {
            return Err(invalid(format!(
                "mount {:?}: image volume mounts are not supported",
                m.container_path
            )));
        }
        if !m.host_path.starts_with('/') || m.host_path.contains('\0') {
            return Err(invalid(format!(
                "mount host_path {:?} (for {:?}) must be absolute",
                m.host_path, m.container_path
            )));
        }
        let propagation = MountPropagation::try_from(m.propagation).unwrap_or_else(|_| {
            warn!(
                host_path = %m.host_path,
                propagation = m.propagation,
                "unknown mount propagation; using private"
            );
            MountPropagation::PropagationPrivate
        });
        let mut options = vec!["rbind".to_string()];
        options.push(
            match propagation {
                MountPropagation::PropagationPrivate => "rprivate",
                MountPropagation::PropagationHostToContainer => "rslave",
                MountPropagation::PropagationBidirectional => "rshared",
            }
            .to_string(),
        );
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(format!(
                    "mount {:?}: recursive_read_only needs readonly",
                    m.container_path
                )));
            }
            if propagation != MountPropagation::PropagationPrivate {
                return Err(invalid(format!(
                    "mount {:?}: recursive_read_only needs private propagation",
                    m.container_path
                )));
            }
            // The source berth binds is already read-only all the way down (a clone made
            // by `pods::usermounts`, whatever the OCI runtime supports): runc makes the
            // top read-only as for any read-only bind.
            options.push("ro".to_string());
        } else {
            options.push(if m.readonly { "ro" } else { "rw" }.to_string());
        }
        out.push(PlannedMount {
            destination,
            host_path: PathBuf::from(&m.host_path),
            options,
            propagation,
            uid_mappings: id_mappings(&m.uid_mappings)?,
            gid_mappings: id_mappings(&m.gid_mappings)?,
        });
    }
    Ok(out)
}

pub(super) fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// All mounts, parents before children: the defaults, the pod's files and `/dev/shm`, and
/// the CRI mounts, which replace any other at the same destination (a CRI `/dev` replaces
/// every default under `/dev`). Missing CRI mount sources are created as directories and
/// symlinked ones resolved. Also returns the rootfs propagation the mounts need.
pub(super) fn mounts(
    inputs: &SpecInputs,
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
    planned: Vec<PlannedMount>,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let cri_dests: HashSet<PathBuf> = planned.iter().map(|m| m.destination.clone()).collect();

    // The pod's files, unless the request mounts its own at the same place.
    let ro_or_rw = if sc.readonly_rootfs { "ro" } else { "rw" };
    let mut extra = Vec::new();
    for (dest, src, mode) in [
        ("/etc/hostname", &inputs.hostname_file, ro_or_rw),
        ("/etc/hosts", &inputs.hosts_file, ro_or_rw),
        ("/etc/resolv.conf", &inputs.resolv_conf, ro_or_rw),
        ("/dev/shm", &inputs.shm, "rw"),
    ] {
        let Some(src) = src else { continue };
        if cri_dests.contains(Path::new(dest)) {
            continue;
        }
        match std::fs::symlink_metadata(src) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(source = %src.display(), destination = dest, "pod file is missing; not mounted");
                continue;
            }
            Err(e) => return Err(io_error(src, e)),
        }
        let src = src.to_string_lossy();
        extra.push(mount(dest, "bind", &src, &["rbind", "rprivate", mode]));
    }

    let taken: HashSet<PathBuf> = cri_dests
        .iter()
        .cloned()
        .chain(extra.iter().map(|m| m.destination().clone()))
        .collect();
    let dev_replaced = cri_dests.contains(Path::new("/dev"));
    let mut all: Vec<Mount> = default_mounts(privileged)
        .into_iter()
        .filter(|m| {
            let d = m.destination();
            let under_replaced_dev =
                dev_replaced && d.starts_with("/dev") && d != Path::new("/dev");
            !taken.contains(d) && !under_replaced_dev
        })
        .collect();
    all.append(&mut extra);

    // Validation is over: from here on host directories may be created.
    let mut propagation: Option<String> = None;
    for p in planned {
        let source = bind_source(&p.host_path)?;
        match p.propagation {
            MountPropagation::PropagationBidirectional => propagation = Some("rshared".into()),
            MountPropagation::PropagationHostToContainer => {
                if propagation.is_none() {
                    propagation = Some("rslave".into());
                }
            }
            MountPropagation::PropagationPrivate => {}
        }
        let mut m = Mount::default();
        m.set_destination(p.destination);
        m.set_typ(Some("bind".into()));
        m.set_source(Some(source));
        m.set_options(Some(p.options));
        if !p.uid_mappings.is_empty() {
            m.set_uid_mappings(Some(p.uid_mappings));
        }
        if !p.gid_mappings.is_empty() {
            m.set_gid_mappings(Some(p.gid_mappings));
        }
        all.push(m);
    }
    all.sort_by_key(|m| depth(m.destination()));
    Ok((all, propagation))
}

/// A bind-mount source: created as a 0755 directory when missing (containerd, CRI-O), with
/// symlinks resolved (CRI asks for the link's target to be mounted).
fn bind_source(host_path: &Path) -> Result<PathBuf, SpecError> {
    match std::fs::symlink_metadata(host_path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(host_path)
                .map_err(|e| io_error(host_path, e))?;
        }
        Err(e) => return Err(io_error(host_path, e)),
    }
    std::fs::canonicalize(host_path).map_err(|e| io_error(host_path, e))
}
