//! The devices of a container's OCI spec: the cgroup device rules every container gets,
//! the CRI devices (a device node, or a directory of them), and a privileged container's
//! every host device.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_cri::v1::ContainerConfig;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::spec::{SpecError, check_container_path, invalid, io_error};

/// Directories under a device directory that hold no devices of their own (containerd's
/// list, for host devices of privileged containers and directory devices).
const SKIPPED_DEVICE_DIRS: [&str; 7] =
    ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

pub(super) fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// Deny every device, then allow what every container needs (runc's defaults): `mknod` of
/// any device, and `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, the pty
/// slaves and `/dev/ptmx`.
pub(super) fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    vec![
        device_rule(false, None, None, None, "rwm"),
        device_rule(true, Some(C), None, None, "m"),
        device_rule(true, Some(B), None, None, "m"),
        device_rule(true, Some(C), Some(1), Some(3), "rwm"),
        device_rule(true, Some(C), Some(1), Some(5), "rwm"),
        device_rule(true, Some(C), Some(1), Some(7), "rwm"),
        device_rule(true, Some(C), Some(1), Some(8), "rwm"),
        device_rule(true, Some(C), Some(1), Some(9), "rwm"),
        device_rule(true, Some(C), Some(5), Some(0), "rwm"),
        device_rule(true, Some(C), Some(136), None, "rwm"),
        device_rule(true, Some(C), Some(5), Some(2), "rwm"),
    ]
}

fn dev_major(rdev: u64) -> i64 {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as i64
}

fn dev_minor(rdev: u64) -> i64 {
    ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as i64
}

/// The device at `path` (not following symlinks), or `None` when it is not a character or
/// block device.
fn device_at(path: &Path, container_path: &Path) -> std::io::Result<Option<LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let mut d = LinuxDevice::default();
    d.set_path(container_path.to_path_buf());
    d.set_typ(typ);
    d.set_major(dev_major(meta.rdev()));
    d.set_minor(dev_minor(meta.rdev()));
    d.set_file_mode(Some(meta.mode() & 0o7777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Ok(Some(d))
}

/// Every device under the directory `dir`, mapped under `container_dir`, skipping the
/// directories of [`SKIPPED_DEVICE_DIRS`], `console`, non-devices and entries that vanish
/// while walking.
fn devices_under(
    dir: &Path,
    container_dir: &Path,
    depth: usize,
    out: &mut Vec<LinuxDevice>,
) -> Result<(), SpecError> {
    if depth > 16 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(dir, e)),
        };
        let name = entry.file_name();
        let path = entry.path();
        let cpath = container_dir.join(&name);
        let ft = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path, e)),
        };
        if ft.is_dir() {
            if SKIPPED_DEVICE_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            devices_under(&path, &cpath, depth + 1, out)?;
            continue;
        }
        if name == "console" {
            continue;
        }
        match device_at(&path, &cpath) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
    }
    Ok(())
}

/// CRI devices (a device node or a directory of them) with their cgroup rules, plus, for
/// privileged containers, every device of the host.
pub(super) fn devices(
    config: &ContainerConfig,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for d in &config.devices {
        if !d.host_path.starts_with('/') {
            return Err(invalid(format!(
                "device host_path {:?} must be absolute",
                d.host_path
            )));
        }
        let container_path = check_container_path("device container_path", &d.container_path)?;
        let permissions = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(format!(
                "device {:?} permissions {:?} must be made of r, w and m",
                d.host_path, d.permissions
            )));
        }
        let host = match std::fs::canonicalize(&d.host_path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::NotFound(format!(
                    "device host_path {:?} not found",
                    d.host_path
                )));
            }
            Err(e) => return Err(io_error(Path::new(&d.host_path), e)),
        };
        let mut found = Vec::new();
        let is_dir = std::fs::metadata(&host)
            .map_err(|e| io_error(&host, e))?
            .is_dir();
        if is_dir {
            devices_under(&host, &container_path, 0, &mut found)?;
        } else {
            match device_at(&host, &container_path).map_err(|e| io_error(&host, e))? {
                Some(dev) => found.push(dev),
                None => {
                    return Err(invalid(format!(
                        "device host_path {:?} is not a character or block device",
                        d.host_path
                    )));
                }
            }
        }
        for dev in found {
            rules.push(device_rule(
                true,
                Some(dev.typ()),
                Some(dev.major()),
                Some(dev.minor()),
                &permissions,
            ));
            devices.push(dev);
        }
    }
    if privileged {
        let mut host = Vec::new();
        devices_under(Path::new("/dev"), Path::new("/dev"), 0, &mut host)?;
        let taken: HashSet<PathBuf> = devices.iter().map(|d| d.path().clone()).collect();
        devices.extend(host.into_iter().filter(|d| !taken.contains(d.path())));
    }
    Ok((devices, rules))
}
