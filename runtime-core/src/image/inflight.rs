//! Coalescing of identical concurrent work: the first caller for a key starts the work on
//! its own task, later callers for the same key wait for the same outcome. The work keeps
//! running if every caller goes away, so a cancelled RPC never leaves half a pull behind.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

use crate::{Error, Result};

type SharedResult<T> = Shared<BoxFuture<'static, Result<T>>>;

/// A map of work in progress keyed by `String`.
pub struct InFlight<T: Clone + Send + Sync + 'static> {
    running: Arc<Mutex<HashMap<String, SharedResult<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> InFlight<T> {
    /// Runs `work` for `key` unless the same key is already running, then waits for it.
    pub async fn run<F>(&self, key: String, work: impl FnOnce() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = {
            let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(&key) {
                f.clone()
            } else {
                let handle = tokio::spawn(work());
                let running = Arc::clone(&self.running);
                let k = key.clone();
                let f: SharedResult<T> = async move {
                    let out = match handle.await {
                        Ok(r) => r,
                        Err(e) => Err(Error::Internal(format!("task for {k} failed: {e}"))),
                    };
                    running.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                    out
                }
                .boxed()
                .shared();
                map.insert(key, f.clone());
                f
            }
        };
        fut.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let inflight = InFlight::<usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let mk = || {
            let runs = runs.clone();
            let rx = rx.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok(7)
            }
        };
        let a = inflight.run("k".into(), mk());
        let b = inflight.run("k".into(), mk());
        let release = async {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        };
        let (ra, rb, ()) = tokio::join!(a, b, release);
        assert_eq!((ra.unwrap(), rb.unwrap()), (7, 7));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Finished work is forgotten: the next call runs again.
        inflight.run("k".into(), mk()).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
