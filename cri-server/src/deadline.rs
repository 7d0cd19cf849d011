//! Client deadlines answered as DEADLINE_EXCEEDED.
//!
//! tonic's server enforces a call's `grpc-timeout` itself but answers CANCELLED ("Timeout
//! expired"), outside any layer of ours. gRPC says a call past its deadline ends with
//! DEADLINE_EXCEEDED, and critest ("public image should timeout if requested", a PullImage
//! with a 1 ms deadline) wants that code: whether a client sees it or CANCELLED depends on
//! whose timer fires first. This layer ends the call with DEADLINE_EXCEEDED a moment before
//! tonic's timer does (tonic polls the call before its own timer), so the answer is always
//! the one gRPC specifies.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How much earlier than tonic's timer ours fires: one tick of tokio's 1 ms timer wheel,
/// so that both never land on the same tick in the wrong order.
const MARGIN: Duration = Duration::from_millis(1);

/// Most a `grpc-timeout` may say (the format allows up to 8 digits of hours; a longer
/// wait than this is no deadline at all).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a `grpc-timeout` value: up to 8 ASCII digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        'H' => Duration::from_secs(n.checked_mul(3600)?),
        'M' => Duration::from_secs(n.checked_mul(60)?),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_TIMEOUT))
}

/// The layer (see the module).
#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// The service [`DeadlineLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for DeadlineService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Fixed now, as tonic fixes its own when the call comes in: an async block's first
        // poll can come later than that on a busy node.
        let deadline = timeout.map(|t| (t, tokio::time::Instant::now() + t.saturating_sub(MARGIN)));
        let fut = self.inner.call(req);
        match deadline {
            None => Box::pin(fut),
            Some((t, at)) => Box::pin(async move {
                let passed = || {
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "the call's deadline ({t:?}, grpc-timeout) passed"
                    ))
                    .into_http())
                };
                // A deadline already past answers at once: a timer would wait for the next
                // tick of the timer wheel, which tonic's may share.
                if tokio::time::Instant::now() >= at {
                    return passed();
                }
                match tokio::time::timeout_at(at, fut).await {
                    Ok(res) => res,
                    Err(_) => passed(),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    #[test]
    fn parses_every_unit_and_rejects_bad_values() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("99999999H"), Some(MAX_TIMEOUT));
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S", "1é", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    fn slow() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = impl Future<
            Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
        > + Send
                 + 'static,
    > {
        tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::default()))
        })
    }

    fn status(res: &http::Response<tonic::body::Body>) -> Option<String> {
        res.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded_and_no_deadline_waits() {
        let mut svc = DeadlineLayer.layer(slow());
        let req = http::Request::builder()
            .header("grpc-timeout", "20m")
            .body(())
            .unwrap();
        let res = svc.call(req).await.unwrap();
        assert_eq!(
            status(&res).as_deref(),
            Some((tonic::Code::DeadlineExceeded as i32).to_string().as_str())
        );
        let res = svc.call(http::Request::new(())).await.unwrap();
        assert_eq!(status(&res), None, "no deadline: the call's own answer");
    }
}
