//! PortForward's side in the runtime: which network namespace a pod's ports live in, and
//! a TCP connection made inside it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::PodService;
use super::records::SandboxState;
use crate::{Error, Result};

/// How long a connection to a pod's port may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl PodService {
    /// The network namespace file of a ready pod, `None` for a host-network pod.
    /// NotFound for an unknown pod, FailedPrecondition for one that is not ready.
    pub fn port_forward_netns(&self, pod_sandbox_id: &str) -> Result<Option<PathBuf>> {
        let rec = self.sandbox(pod_sandbox_id)?.get();
        if rec.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                rec.id
            )));
        }
        Ok(rec.namespaces.network.clone())
    }

    /// A TCP connection to `localhost:port` in the pod's network namespace (the host's for
    /// a host-network pod), as PortForward makes it.
    pub async fn dial_pod_port(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        let netns = self.port_forward_netns(pod_sandbox_id)?;
        let stream = dial_in_netns(netns, port, DIAL_TIMEOUT)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot connect to localhost:{port} in pod sandbox {pod_sandbox_id}: {e}"
                ))
            })?;
        tokio::net::TcpStream::from_std(stream)
            .map_err(|e| Error::Internal(format!("register a port-forward connection: {e}")))
    }
}

/// Connects to 127.0.0.1:port, then [::1]:port, from inside `netns` (the caller's
/// namespace when `None`). A namespace is entered by a thread of its own that ends right
/// after: a socket keeps the namespace it was made in, and no pooled thread is left in a
/// pod's namespace.
pub async fn dial_in_netns(
    netns: Option<PathBuf>,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || {
            let _ = tx.send(dial_here(netns.as_deref(), port, timeout));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the port-forward dial thread died"))?
}

fn dial_here(netns: Option<&Path>, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    if let Some(path) = netns {
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("enter {}: {e}", path.display())))?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => s,
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)?
        }
    };
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_the_callers_namespace_without_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = dial_in_netns(None, port, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
        let (_accepted, _) = listener.accept().unwrap();
    }

    #[tokio::test]
    async fn refused_port_and_missing_namespace_are_errors_naming_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(
            dial_in_netns(None, port, Duration::from_secs(5))
                .await
                .is_err()
        );
        let e = dial_in_netns(
            Some("/nonexistent/netns".into()),
            80,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
