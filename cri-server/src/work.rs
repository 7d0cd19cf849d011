//! Where RPCs do their work. tonic serves each connection on a task of berthd's
//! multi-thread runtime, and the handlers answer lookups held in memory (lists, status
//! calls) on that task. Operations that change state (lifecycle operations, pulls) run on
//! a task of their own, so that a client giving up cannot cut them short, and blocking work
//! (stats read from cgroup files, the image store's lock) runs on the runtime's blocking
//! threads, so that it never holds up the async worker threads.

use std::future::Future;

use tonic::Status;

use crate::status::IntoStatus;

/// A handle on the runtime the work runs on.
#[derive(Clone)]
pub struct Work {
    handle: tokio::runtime::Handle,
}

impl Work {
    /// Work runs on the runtime of `handle`.
    pub fn new(handle: tokio::runtime::Handle) -> Work {
        Work { handle }
    }

    /// Runs an operation on its own task of the work runtime. Detached, so that a client
    /// giving up (its deadline, a cancelled crictl) never drops the operation halfway and
    /// leaves mounts, namespaces or processes behind: the operation completes and the next
    /// call sees its result.
    pub async fn detached<T: Send + 'static>(
        &self,
        f: impl Future<Output = runtime_core::Result<T>> + Send + 'static,
    ) -> Result<T, Status> {
        joined(self.handle.spawn(f).await)
    }

    /// Runs blocking `f` on the work runtime's blocking threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> runtime_core::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        joined(self.handle.spawn_blocking(f).await)
    }
}

/// The outcome of a finished work task as a gRPC result.
fn joined<T>(r: Result<runtime_core::Result<T>, tokio::task::JoinError>) -> Result<T, Status> {
    r.map_err(|e| Status::internal(format!("operation task failed: {e}")))?
        .status()
}
