//! The mounts of a container's bundle: its rootfs and the clones of bind volumes that berth
//! makes itself: recursive read-only ones (every submount read-only too, which a bind with
//! `MS_RDONLY` cannot give and runc 1.1 cannot make) and, in a pod with a user namespace
//! of its own (`hostUsers: false`), idmapped ones, so that what is root's on the host is
//! root's inside and no file is chowned (see `sandbox::idmap`).
//!
//! Such a volume is mounted at `<bundle>/volumes/<n>` (`n` the index of the CRI mount) and
//! the OCI spec binds that instead of the host path, until the container has started.
//! Every mount goes with the bundle; the bundle is only removed once none of them is left
//! mounted, since removing a directory tree would otherwise delete a volume's files on the
//! host.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use crate::sandbox::idmap;
use crate::{Error, Result};

/// Where the clones of volumes are mounted in a bundle.
const DIR: &str = "volumes";

/// Mounts the container's rootfs at `rootfs`: an overlay of `lowers` (top first) with
/// `upper` and `work`, its layers idmapped through `userns` when the pod has one (whose
/// root, `root` on the host, then owns the upper and work directories).
///
/// The overlay is `volatile`: without it, its unmount at RemoveContainer syncs the whole
/// file system of the upper directory (25-100 ms measured here with other writes going on,
/// against 0.1 ms), and the container's own fsyncs of its writable layer are worth nothing
/// anyway: Kubernetes never starts a container again on its old writable layer, and after a
/// crash of the node the container is gone. What must survive goes to volumes.
pub(crate) fn mount_rootfs(
    rootfs: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    userns: Option<(&OwnedFd, (u32, u32))>,
) -> Result<()> {
    if let Some((fd, (uid, gid))) = userns {
        for d in [upper, work] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown", d, e))?;
        }
        return idmap::mount_overlay(rootfs, lowers, Some(idmap::Upper { upper, work }), fd);
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let mount = |data: &str| {
        nix::mount::mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data),
        )
    };
    match mount(&format!("{data},volatile")) {
        // Linux before 5.10 has no `volatile`.
        Err(nix::errno::Errno::EINVAL) => mount(&data),
        r => r,
    }
    .map_err(|e| Error::Internal(format!("mount overlay rootfs at {}: {e}", rootfs.display())))
}

/// Replaces the source of the bind mounts in `spec` that come from CRI mounts with a host
/// path (`cri_mounts`, except the image volumes `skip`, mounted already) by a clone of it
/// under `bundle`: every one in a pod with a user namespace (`userns`), idmapped; the
/// recursive read-only ones in any pod. Blocking.
pub(crate) fn stage_volumes(
    spec: &mut Spec,
    cri_mounts: &[berth_cri::v1::Mount],
    skip: &[usize],
    bundle: &Path,
    userns: Option<&OwnedFd>,
) -> Result<()> {
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return Ok(());
    };
    for (i, cm) in cri_mounts.iter().enumerate() {
        if cm.host_path.is_empty()
            || skip.contains(&i)
            || (userns.is_none() && !cm.recursive_read_only)
        {
            continue;
        }
        let Some(m) = mounts.iter_mut().find(|m| {
            m.destination() == Path::new(&cm.container_path) && m.typ().as_deref() == Some("bind")
        }) else {
            continue;
        };
        let Some(source) = m.source().clone() else {
            continue;
        };
        let target = bundle.join(DIR).join(i.to_string());
        std::fs::create_dir_all(bundle.join(DIR))
            .map_err(|e| Error::io("create", &bundle.join(DIR), e))?;
        // The clone's mount point has the source's kind.
        let made = if source.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| Error::io("create", &target, e))?;
        let what = match (userns.is_some(), cm.recursive_read_only) {
            (true, true) => "an idmapped, recursively read-only",
            (true, false) => "an idmapped",
            _ => "a recursively read-only",
        };
        idmap::rbind_with(&source, &target, userns, cm.recursive_read_only).map_err(
            |e| match e {
                Error::Internal(m) => Error::InvalidArgument(format!(
                    "mount {:?} needs {what} mount of {}, which this host refuses: {m}",
                    cm.container_path,
                    source.display()
                )),
                e => e,
            },
        )?;
        m.set_source(Some(target));
        // Done here; runc would otherwise try (or ignore) its own.
        m.set_uid_mappings(None);
        m.set_gid_mappings(None);
    }
    Ok(())
}

/// Unmounts the clones of volumes once the container has started (or failed to): its
/// mount namespace holds copies of its own, and one left in the host's would make its
/// mount points busy there (a host directory on which a volume's submount sat could not be
/// removed, as it can with containerd).
pub(crate) fn release_volumes(bundle: &Path) {
    let Ok(rd) = std::fs::read_dir(bundle.join(DIR)) else {
        return;
    };
    for e in rd.flatten() {
        crate::sandbox::files::unmount(&e.path());
    }
}

/// Unmounts everything `bundle` holds: rootfs, image volumes, idmapped volumes. True when
/// nothing of it is left mounted, so that the bundle may be removed.
pub(crate) fn unmount_bundle(bundle: &Path) -> bool {
    crate::sandbox::files::unmount(&bundle.join("rootfs"));
    super::imagevolumes::unmount_all(bundle);
    let Ok(rd) = std::fs::read_dir(bundle.join(DIR)) else {
        return true;
    };
    // Unmounted now, or not a mount point (EINVAL: released at start, or never made):
    // gone. Any other answer leaves it mounted, as far as we know. mountinfo is not read:
    // it is long on a busy node, and each clone is mounted once.
    let left: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !matches!(
                nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH),
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT)
            )
        })
        .collect();
    if !left.is_empty() {
        tracing::warn!(bundle = %bundle.display(), left = ?left, "volumes still mounted; the bundle is kept so that nothing of them is deleted");
    }
    left.is_empty()
}
