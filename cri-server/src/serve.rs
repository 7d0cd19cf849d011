//! The CRI socket's HTTP/2 server: connections served by hyper, calls dispatched by gRPC
//! service name.
//!
//! tonic's own server puts a stack of general-purpose layers between hyper and the
//! generated services (HTTP/1 detection, connection info, error recovery, a grpc-timeout
//! timer, an axum router) that a unix socket speaking only gRPC to two services does not
//! need, and on a call after an idle second, whose time is mostly cache misses, every
//! layer's code is paid for in misses. berthd serves each connection with hyper's HTTP/2
//! server and routes on the path's service name.
//!
//! Left out, on purpose: the grpc-timeout timer (kubelet's deadline ends the call on its
//! side; the work itself is detached and finishes either way, see `work`) and HTTP/1.

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;

/// A gRPC response as the generated services build it.
pub type Response = http::Response<tonic::body::Body>;

const RUNTIME_PREFIX: &str = "/runtime.v1.RuntimeService/";
const IMAGE_PREFIX: &str = "/runtime.v1.ImageService/";

/// Routes each call to the RuntimeService or the ImageService by its path.
#[derive(Clone)]
pub struct Dispatch<R, I> {
    runtime: R,
    image: I,
}

impl<R, I> Dispatch<R, I> {
    /// Calls to `runtime.v1.RuntimeService` go to `runtime`, to `runtime.v1.ImageService`
    /// to `image`; any other path is answered UNIMPLEMENTED.
    pub fn new(runtime: R, image: I) -> Dispatch<R, I> {
        Dispatch { runtime, image }
    }
}

impl<R, I, B> tower::Service<http::Request<B>> for Dispatch<R, I>
where
    R: tower::Service<http::Request<B>, Response = Response, Error = Infallible>,
    R::Future: Send + 'static,
    I: tower::Service<http::Request<B>, Response = Response, Error = Infallible>,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both services are always ready (they take no back-pressure).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with(RUNTIME_PREFIX) {
            Box::pin(self.runtime.call(req))
        } else if path.starts_with(IMAGE_PREFIX) {
            Box::pin(self.image.call(req))
        } else {
            let status = tonic::Status::unimplemented(format!("no gRPC service serves {path}"));
            Box::pin(std::future::ready(Ok(status.into_http())))
        }
    }
}

/// Serves HTTP/2 on `listener` with `service` until `shutdown` completes, then lets the
/// open connections finish their calls (GOAWAY) and returns when they have closed.
pub async fn serve<S>(
    listener: UnixListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // As tonic's server: no limit of concurrent calls per connection.
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays usable.
                    tracing::warn!(error = %e, "accepting a CRI connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let io = TokioIo::new(crate::authority::AuthorityFix::new(stream));
        let conn = builder.serve_connection(io, TowerToHyperService::new(service.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "CRI connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn answering(
        name: &'static str,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = Response,
        Error = Infallible,
        Future = std::future::Ready<Result<Response, Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: http::Request<()>| {
            let mut resp = http::Response::new(tonic::body::Body::empty());
            resp.headers_mut()
                .insert("x-served-by", http::HeaderValue::from_static(name));
            std::future::ready(Ok(resp))
        })
    }

    async fn call(path: &str) -> Response {
        let dispatch = Dispatch::new(answering("runtime"), answering("image"));
        let req = http::Request::builder().uri(path).body(()).unwrap();
        dispatch.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn routes_by_service_name() {
        let r = call("/runtime.v1.RuntimeService/Version").await;
        assert_eq!(r.headers()["x-served-by"], "runtime");
        let r = call("/runtime.v1.ImageService/ListImages").await;
        assert_eq!(r.headers()["x-served-by"], "image");
    }

    #[tokio::test]
    async fn other_services_are_unimplemented() {
        for path in [
            "/runtime.v1alpha2.RuntimeService/Version",
            "/grpc.health.v1.Health/Check",
            "/",
        ] {
            let r = call(path).await;
            assert!(r.headers().get("x-served-by").is_none());
            assert_eq!(r.headers()["grpc-status"], "12", "{path}");
        }
    }
}
