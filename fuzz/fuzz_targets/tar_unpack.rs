//! The layer unpacker under hostile archives: arbitrary bytes (gunzipped first when they
//! start with the gzip magic, as a pull sniffs it) are unpacked into a fresh directory.
//! Errors are fine; a panic is not, and nothing may appear or change outside the
//! destination: its parent holds only the destination afterwards, with the same mode,
//! owner and link count, and /etc/passwd is untouched.
#![no_main]

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use runtime_core::image::unpack::unpack_layer;

/// Caps what one input may inflate to, so a gzip bomb is not mistaken for a hang.
const MAX_INFLATED: u64 = 8 << 20;

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("BERTH_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let n = N.fetch_add(1, Ordering::Relaxed);
    base.join(format!("berth-fuzz-unpack-{}-{n}", std::process::id()))
}

fn snapshot(p: &Path) -> (u32, u32, u64, Vec<std::ffi::OsString>) {
    let m = fs::symlink_metadata(p).expect("stat");
    let mut names: Vec<_> = fs::read_dir(p)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    (m.mode(), m.uid(), m.nlink(), names)
}

fn file_state(p: &str) -> Option<(u64, u32, u32, i64, i64)> {
    let m = fs::symlink_metadata(p).ok()?;
    Some((m.size(), m.mode(), m.uid(), m.mtime(), m.mtime_nsec()))
}

fuzz_target!(|data: &[u8]| {
    let parent = scratch_dir();
    fs::create_dir(&parent).expect("create scratch dir");
    let dest = parent.join("rootfs");
    fs::create_dir(&dest).expect("create dest");
    // A sibling the archive might try to reach with ../
    fs::write(parent.join("sibling"), b"keep").expect("sibling");
    let before = snapshot(&parent);
    let passwd = file_state("/etc/passwd");

    let result = if data.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::read::MultiGzDecoder::new(data).take(MAX_INFLATED);
        unpack_layer(gz, &dest)
    } else {
        unpack_layer(data, &dest)
    };
    let _ = result;

    assert_eq!(
        snapshot(&parent),
        before,
        "something changed next to the destination"
    );
    assert_eq!(
        fs::read(parent.join("sibling")).ok().as_deref(),
        Some(&b"keep"[..])
    );
    assert_eq!(file_state("/etc/passwd"), passwd, "/etc/passwd changed");
    // The unpacker may leave read-only dirs and immutable-looking modes; chmod back first.
    make_removable(&dest);
    fs::remove_dir_all(&parent).expect("remove scratch dir");
});

fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&e.path());
            }
        }
    }
}
