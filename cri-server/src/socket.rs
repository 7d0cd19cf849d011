//! The CRI unix socket: created 0660 and owned by root so that only root (and members of
//! root's group) can drive the runtime; a stale socket left by a crash is replaced, but a
//! socket some live process still serves is never stolen.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::UnixListener;

/// Binds the CRI socket at `path`.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if serves_http2(path) {
                bail!(
                    "socket {} is in use by another process (is another berthd running?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "replaced stale socket");
        }
        Ok(_) => bail!(
            "socket path {} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    }
    // Bind under a restrictive umask so the socket is never reachable with wider
    // permissions, not even between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .with_context(|| format!("chown {}", path.display()))?;
    Ok(listener)
}

/// How long a process listening on the socket gets to answer like an HTTP/2 server.
const LIVE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether something serves HTTP/2 on `path`: a connection is accepted and the server's
/// SETTINGS frame comes back. A socket that only accepts into its backlog (a process
/// forked by a berthd that was killed, which holds the listening descriptor until it
/// execs) is not served, and is replaced rather than blocking the restart.
fn serves_http2(path: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(path) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(LIVE_CHECK_TIMEOUT));
    let _ = conn.set_write_timeout(Some(LIVE_CHECK_TIMEOUT));
    // The client preface and an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    if conn.write_all(&hello).is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    // A frame header of type SETTINGS (0x4): an HTTP/2 server is there.
    conn.read_exact(&mut header).is_ok() && header[3] == 0x4
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn creates_0660_and_replaces_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/berth.sock");
        let l = bind(&p).unwrap().into_std().unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        // A live socket (one that answers like an HTTP/2 server) is not stolen.
        l.set_nonblocking(false).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut c, _) = l.accept().unwrap();
            c.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
            l
        });
        assert!(bind(&p).is_err());
        let l = server.join().unwrap();
        drop(l);
        // The file stays behind after drop, as after a crash: it is replaced.
        assert!(p.exists());
        let _l2 = bind(&p).unwrap();
        // A socket whose holder never accepts (a listener in a process that is not
        // serving) is replaced after the check's timeout.
        drop(_l2);
        let dead = std::os::unix::net::UnixListener::bind(dir.path().join("held.sock")).unwrap();
        let held = dir.path().join("held.sock");
        assert!(!serves_http2(&held));
        let _l3 = bind(&held).unwrap();
        drop(dead);
        // A regular file is never replaced.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(bind(&f).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
    }
}
