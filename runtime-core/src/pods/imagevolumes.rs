//! Image volumes (KEP-4639, GA in Kubernetes 1.36): a CRI Mount whose `image` names a
//! pulled image is that image's file system, read-only, at `container_path`.
//!
//! At CreateContainer each one becomes a mount in the container's bundle
//! (`<bundle>/imagevols/<n>`): an overlay of the image's layers with no upper directory
//! (read-only by construction), or a read-only bind of its single layer; `image_sub_path`
//! picks a directory (or file) inside it. The OCI spec then bind-mounts that path read-only
//! like any host path. The mounts go with the bundle. The image cannot be removed while a
//! container uses it this way, and ContainerStatus reports its ID in the mount's
//! `image.image_ref`.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use berth_cri::v1 as cri;
use nix::mount::MsFlags;

use crate::{Error, Result};

/// Where an image volume is mounted in a container's bundle.
const DIR: &str = "imagevols";

/// The image IDs of a container's image volumes, by index of their mount.
pub(crate) type VolumeIds = Vec<(usize, String)>;

/// One image volume of a container, resolved at CreateContainer.
#[derive(Debug, Clone)]
pub(crate) struct ImageVolume {
    /// Index of the mount in the container config.
    pub index: usize,
    /// The image's layer directories, top first (as overlayfs wants them).
    pub lowers: Vec<PathBuf>,
    /// What to mount of it (relative; empty for the whole image).
    pub sub_path: PathBuf,
    /// The image, as the mount named it (for messages).
    pub image: String,
}

/// Checks an `image_sub_path`: relative, without `..` (it may not climb out of the image).
pub(crate) fn check_sub_path(sub: &str) -> Result<PathBuf> {
    let p = Path::new(sub);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "image_sub_path {sub:?} must be a relative path inside the image, without `..`"
                )));
            }
        }
    }
    if sub.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "image_sub_path {sub:?} contains a NUL byte"
        )));
    }
    Ok(out)
}

/// The path of `sub` under the mounted image `root`, every component a real file or
/// directory (a symlink could point anywhere on the host once the bind is made), or a
/// clear error naming what is wrong.
fn resolve_sub_path(root: &Path, sub: &Path, image: &str) -> Result<PathBuf> {
    let mut at = root.to_path_buf();
    for c in sub.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::InvalidArgument(format!(
                    "image_sub_path {:?} of image {image}: {} is a symlink",
                    sub.display(),
                    at.strip_prefix(root).unwrap_or(&at).display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::InvalidArgument(format!(
                    "image_sub_path {:?} does not exist in image {image}",
                    sub.display()
                )));
            }
            Err(e) => return Err(Error::io("stat", &at, e)),
        }
    }
    Ok(at)
}

/// Mounts `vol` in `bundle` and returns the host path the container's mount binds. In a
/// pod with a user namespace of its own (`userns`) the image's layers are idmapped.
pub(crate) fn mount(bundle: &Path, vol: &ImageVolume, userns: Option<&OwnedFd>) -> Result<PathBuf> {
    let target = bundle.join(DIR).join(vol.index.to_string());
    std::fs::create_dir_all(&target).map_err(|e| Error::io("create", &target, e))?;
    let failed = |e: String| {
        Error::Internal(format!(
            "mount image volume {} at {}: {e}",
            vol.image,
            target.display()
        ))
    };
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    match (vol.lowers.as_slice(), userns) {
        // An image without layers is an empty directory.
        ([], _) => {}
        // overlayfs needs two lower layers when it has no upper one.
        ([only], userns) => {
            match userns {
                Some(fd) => crate::sandbox::idmap::bind(only, &target, fd, false)?,
                None => nix::mount::mount(
                    Some(only.as_path()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| failed(e.to_string()))?,
            }
            nix::mount::mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
                None::<&str>,
            )
            .map_err(|e| failed(e.to_string()))?;
        }
        (lowers, Some(fd)) => crate::sandbox::idmap::mount_overlay(&target, lowers, None, fd)?,
        (lowers, None) => {
            let lowerdir = lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            nix::mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                ro,
                Some(format!("lowerdir={lowerdir}").as_str()),
            )
            .map_err(|e| failed(e.to_string()))?;
        }
    }
    finish(target, vol)
}

/// The path to bind of the image volume mounted at `target`.
fn finish(target: PathBuf, vol: &ImageVolume) -> Result<PathBuf> {
    if vol.sub_path.as_os_str().is_empty() {
        return Ok(target);
    }
    resolve_sub_path(&target, &vol.sub_path, &vol.image)
}

/// Unmounts every image volume of the bundle (before it is removed).
pub(crate) fn unmount_all(bundle: &Path) {
    let Ok(rd) = std::fs::read_dir(bundle.join(DIR)) else {
        return;
    };
    for e in rd.flatten() {
        crate::sandbox::files::unmount(&e.path());
    }
}

/// The CRI mounts with each image volume's `host_path` set to where it is mounted, for
/// the OCI spec.
pub(crate) fn with_host_paths(
    mounts: &[cri::Mount],
    mounted: &[(usize, PathBuf)],
) -> Vec<cri::Mount> {
    let mut out = mounts.to_vec();
    for (i, path) in mounted {
        if let Some(m) = out.get_mut(*i) {
            m.host_path = path.display().to_string();
            m.image = None;
            m.image_sub_path.clear();
        }
    }
    out
}

/// The mounts ContainerStatus reports: as requested, with each image volume's image ID in
/// `image.image_ref`.
pub(crate) fn reported(mounts: &[cri::Mount], ids: &[(usize, String)]) -> Vec<cri::Mount> {
    let mut out = mounts.to_vec();
    for (i, id) in ids {
        if let Some(img) = out.get_mut(*i).and_then(|m| m.image.as_mut()) {
            img.image_ref = id.clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_inside_the_image() {
        assert_eq!(check_sub_path("etc").unwrap(), PathBuf::from("etc"));
        assert_eq!(
            check_sub_path("./usr/lib/").unwrap(),
            PathBuf::from("usr/lib")
        );
        assert_eq!(check_sub_path("").unwrap(), PathBuf::new());
        for bad in ["/etc", "../x", "a/../../b", "a/.."] {
            assert!(
                matches!(check_sub_path(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sub_paths_resolve_to_real_directories_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink("/", root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("etc", root.path().join("link")).unwrap();
        assert_eq!(
            resolve_sub_path(root.path(), Path::new("etc/ssl"), "img").unwrap(),
            root.path().join("etc/ssl")
        );
        for (bad, says) in [
            ("escape", "is a symlink"),
            ("link/ssl", "is a symlink"),
            ("nope", "does not exist"),
        ] {
            match resolve_sub_path(root.path(), Path::new(bad), "img") {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn specs_and_statuses_see_the_volume_as_they_must() {
        let mounts = vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                ..Default::default()
            },
            cri::Mount {
                container_path: "/img".into(),
                readonly: true,
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                image_sub_path: "etc".into(),
                ..Default::default()
            },
        ];
        let spec = with_host_paths(&mounts, &[(1, PathBuf::from("/b/imagevols/1/etc"))]);
        assert_eq!(spec[0], mounts[0]);
        assert_eq!(spec[1].host_path, "/b/imagevols/1/etc");
        assert!(spec[1].image.is_none() && spec[1].image_sub_path.is_empty());
        let status = reported(&mounts, &[(1, "sha256:abc".into())]);
        assert_eq!(status[1].image.as_ref().unwrap().image_ref, "sha256:abc");
        assert_eq!(status[1].image_sub_path, "etc");
        assert_eq!(status[0], mounts[0]);
    }
}
