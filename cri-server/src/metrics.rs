//! Prometheus metrics: per-CRI-method request counts, error counts by gRPC code and
//! latency, recorded once for every method by a tower layer around the gRPC server, image
//! pull bytes and durations, and, read from the pod service at each scrape, containers and
//! pods by state and OOM kills. Served as text at `/metrics`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// All of berthd's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<MethodLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: HistogramFamily,
    pull_bytes: Counter,
    pull_duration: Histogram,
    containers: Family<StateLabels, Gauge>,
    pods: Family<StateLabels, Gauge>,
    oom_kills: Counter,
    monitor_deaths: Counter,
    /// Where the state gauges and the OOM count are read at each scrape.
    source: std::sync::OnceLock<runtime_core::pods::PodService>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~100 s: list calls are sub-millisecond, pulls take seconds.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<MethodLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let pull_bytes = Counter::default();
        let pull_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "berth_cri_requests",
            "CRI requests received, by method",
            requests.clone(),
        );
        registry.register(
            "berth_cri_errors",
            "CRI requests that failed, by method and gRPC code",
            errors.clone(),
        );
        registry.register(
            "berth_cri_request_duration_seconds",
            "CRI request latency in seconds, by method",
            latency.clone(),
        );
        registry.register(
            "berth_image_pull_bytes",
            "Compressed bytes downloaded by image pulls",
            pull_bytes.clone(),
        );
        registry.register(
            "berth_image_pull_duration_seconds",
            "Duration of successful image pulls in seconds",
            pull_duration.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        let pods = Family::<StateLabels, Gauge>::default();
        let oom_kills = Counter::default();
        let monitor_deaths = Counter::default();
        registry.register(
            "berth_containers",
            "Containers by state (created, running, exited)",
            containers.clone(),
        );
        registry.register(
            "berth_pod_sandboxes",
            "Pod sandboxes by state (ready, notready)",
            pods.clone(),
        );
        registry.register(
            "berth_oom_kills",
            "Containers this berthd saw killed by the OOM killer",
            oom_kills.clone(),
        );
        registry.register(
            "berth_monitor_deaths",
            "Pod monitors that died while their pod was ready (berth does not restart them: the pod is reported not ready and kubelet replaces it)",
            monitor_deaths.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            latency,
            pull_bytes,
            pull_duration,
            containers,
            pods,
            oom_kills,
            monitor_deaths,
            source: std::sync::OnceLock::new(),
        }
    }

    /// Reads pod and container states and OOM kills from `pods` at each scrape.
    pub fn watch_pods(&self, pods: runtime_core::pods::PodService) {
        let _ = self.source.set(pods);
    }

    /// Brings the gauges and the OOM counter up to the pod service's figures.
    fn refresh(&self) {
        let Some(pods) = self.source.get() else {
            return;
        };
        let n = pods.state_counts();
        let set = |f: &Family<StateLabels, Gauge>, state: &str, v: u64| {
            f.get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.containers, "created", n.containers_created);
        set(&self.containers, "running", n.containers_running);
        set(&self.containers, "exited", n.containers_exited);
        set(&self.pods, "ready", n.pods_ready);
        set(&self.pods, "notready", n.pods_not_ready);
        for (counter, total) in [
            (&self.oom_kills, pods.oom_kills()),
            (&self.monitor_deaths, pods.monitor_deaths()),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// Records a finished pull.
    pub fn record_pull(&self, bytes: u64, seconds: f64) {
        self.pull_bytes.inc_by(bytes);
        self.pull_duration.observe(seconds);
    }

    fn record_call(&self, method: &str, code: Option<tonic::Code>, seconds: f64) {
        let labels = MethodLabels {
            method: method.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
        if let Some(code) = code.filter(|c| *c != tonic::Code::Ok) {
            self.errors
                .get_or_create(&ErrorLabels {
                    method: method.to_string(),
                    code: format!("{code:?}"),
                })
                .inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The CRI method name of a gRPC path; other paths share one label so a client cannot
/// grow the label set without bound.
fn method_label(path: &str) -> &str {
    for service in ["/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"] {
        if let Some(m) = path.strip_prefix(service)
            && !m.is_empty()
            && m.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return m;
        }
    }
    "unknown"
}

/// A tower layer that records every gRPC call in [`Metrics`] and logs it.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`MetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call {
            method: method_label(req.uri().path()).to_string(),
            metrics: Arc::clone(&self.metrics),
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // Errors travel as trailers-only responses, so a failed unary call carries its
            // grpc-status in the headers; a success carries it in trailers (OK).
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(tonic::Code::from_i32),
                Err(_) => Some(tonic::Code::Unknown),
            };
            call.finish(code);
            res
        })
    }
}

/// One call being answered. A call whose answer is never made (its deadline, set by the
/// client's `grpc-timeout`, passed, or the client reset the stream) is recorded as
/// CANCELLED when its future is dropped.
struct Call {
    method: String,
    metrics: Arc<Metrics>,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Option<tonic::Code>) {
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        let method = self.method.as_str();
        self.metrics.record_call(method, code, elapsed);
        match code.filter(|c| *c != tonic::Code::Ok) {
            Some(c) => tracing::debug!(method, code = ?c, seconds = elapsed, "CRI call failed"),
            None => tracing::trace!(method, seconds = elapsed, "CRI call"),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Some(tonic::Code::Cancelled));
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics listener at start-up so a bad or busy address fails start-up.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind metrics address {addr:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
        assert_eq!(
            method_label("/runtime.v1.RuntimeService/Version"),
            "Version"
        );
        assert_eq!(method_label("/evil/x"), "unknown");
        assert_eq!(method_label("/runtime.v1.ImageService/a{b}"), "unknown");
    }

    #[tokio::test]
    async fn a_call_dropped_unanswered_counts_as_cancelled() {
        use tower::{Layer, Service};
        let metrics = Arc::new(Metrics::new());
        let mut svc = MetricsLayer::new(Arc::clone(&metrics)).layer(tower::service_fn(
            |_req: http::Request<()>| async {
                std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>().await
            },
        ));
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/Version")
            .body(())
            .unwrap();
        let fut = svc.call(req);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), fut)
                .await
                .is_err()
        );
        let text = metrics.encode();
        assert!(
            text.contains("berth_cri_requests_total{method=\"Version\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_cri_errors_total{method=\"Version\",code=\"Cancelled\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn encodes_recorded_calls() {
        let m = Metrics::new();
        m.record_call("PullImage", None, 0.5);
        m.record_call("ImageStatus", Some(tonic::Code::InvalidArgument), 0.001);
        m.record_pull(1234, 2.0);
        let text = m.encode();
        assert!(
            text.contains("berth_cri_requests_total{method=\"PullImage\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_cri_errors_total{method=\"ImageStatus\",code=\"InvalidArgument\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("berth_cri_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("berth_image_pull_bytes_total 1234"), "{text}");
        assert!(
            text.contains("berth_image_pull_duration_seconds_count 1"),
            "{text}"
        );
    }
}
