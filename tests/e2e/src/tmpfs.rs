//! A small tmpfs a test mounts for itself (a full disk on demand), unmounted on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// A tmpfs mounted by the test at `path`, of a size it can change. Dropping it unmounts it
/// (lazily, so a process still holding a file in it cannot keep it mounted).
pub struct Tmpfs {
    path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB at `path` (an existing directory).
    pub fn mount(path: &Path, size_kib: u64) -> Result<Tmpfs> {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size_kib}k,mode=0755").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs of {size_kib} KiB at {}", path.display()))?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// Changes the size (`mount -o remount,size=...`).
    pub fn resize(&self, size_kib: u64) -> Result<()> {
        mount(
            None::<&str>,
            &self.path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size_kib}k").as_str()),
        )
        .with_context(|| {
            format!(
                "resizing the tmpfs at {} to {size_kib} KiB",
                self.path.display()
            )
        })
    }

    /// Bytes free, from statvfs.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.path)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts it now (lazily).
    pub fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            umount2(&self.path, MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", self.path.display()))?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("{e:#}");
        }
    }
}
