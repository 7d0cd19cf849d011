//! Port-forward over SPDY/3.1 (`portforward.k8s.io`): per forwarded connection the client
//! opens a data and an error stream with the same `requestID` header and the port in the
//! `port` header; the server connects to that port in the pod and copies both ways.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::Backend;
use super::server::Shared;

/// Pairs waiting for their second stream at once; beyond it new streams are refused.
const MAX_PENDING_PAIRS: usize = 256;
/// Forwarded connections at once on one stream connection.
const MAX_FORWARDS: usize = 512;
/// How long a refused connection's data stream is drained before it is reset.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes copied at once.
const COPY_CHUNK: usize = 32 * 1024;

#[derive(Default)]
struct Pair {
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
    since: Option<Instant>,
}

/// Serves the port-forward streams of one connection until it ends.
pub async fn serve(
    conn: spdy::Connection,
    mut incoming: spdy::Incoming,
    pod: &str,
    shared: &Shared,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        let oldest = pairs.values().filter_map(|p| p.since).min();
        let expiry = async {
            match oldest {
                Some(t) => {
                    tokio::time::sleep_until((t + shared.stream_creation_timeout).into()).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = incoming.accept() => {
                let Some(mut stream) = next else { break };
                if stream.reply(Vec::new(), false).await.is_err() {
                    break;
                }
                let Some(kind) = stream.header("streamtype").map(str::to_ascii_lowercase) else {
                    stream.reset(spdy::RstStatus::ProtocolError);
                    continue;
                };
                let id = request_id(&stream, &kind);
                let Some(id) = id else {
                    stream.reset(spdy::RstStatus::ProtocolError);
                    continue;
                };
                if !pairs.contains_key(&id) && pairs.len() >= MAX_PENDING_PAIRS {
                    stream.reset(spdy::RstStatus::RefusedStream);
                    continue;
                }
                let pair = pairs.entry(id.clone()).or_default();
                let slot = match kind.as_str() {
                    "data" => &mut pair.data,
                    "error" => &mut pair.error,
                    _ => {
                        stream.reset(spdy::RstStatus::ProtocolError);
                        continue;
                    }
                };
                if slot.is_some() {
                    stream.reset(spdy::RstStatus::ProtocolError);
                    continue;
                }
                *slot = Some(stream);
                pair.since.get_or_insert_with(Instant::now);
                if pair.data.is_some() && pair.error.is_some()
                    && let Some(Pair { data: Some(data), error: Some(error), .. }) = pairs.remove(&id)
                {
                    while forwards.len() >= MAX_FORWARDS {
                        forwards.join_next().await;
                    }
                    let backend = Arc::clone(&shared.backend);
                    let pod = pod.to_string();
                    forwards.spawn(async move { forward(backend, &pod, data, error).await });
                }
            }
            () = expiry => {
                let now = Instant::now();
                pairs.retain(|id, p| {
                    let keep = p.since.is_some_and(|t| now < t + shared.stream_creation_timeout);
                    if !keep {
                        tracing::debug!(request = %id, "port-forward stream pair not completed in time");
                        for s in [p.data.as_mut(), p.error.as_mut()].into_iter().flatten() {
                            s.reset(spdy::RstStatus::Cancel);
                        }
                    }
                    keep
                });
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    forwards.abort_all();
    conn.goaway().await;
}

/// The pair key: the `requestID` header, or for clients that send none, the error
/// stream's ID with the data stream two after it (as kubelet pairs them).
fn request_id(stream: &spdy::Stream, kind: &str) -> Option<String> {
    if let Some(id) = stream.header("requestid") {
        return Some(id.to_string());
    }
    match kind {
        "error" => Some(stream.id().to_string()),
        "data" => stream.id().checked_sub(2).map(|i| i.to_string()),
        _ => None,
    }
}

/// Closes a data stream that will carry nothing: our side ends at once, and what the
/// client still sends is read and dropped until it ends too, so that the stream closes
/// cleanly instead of being reset under the client's feet.
async fn finish_unused(data: spdy::Stream) {
    let (mut r, mut w) = tokio::io::split(data);
    let _ = w.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; COPY_CHUNK];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

async fn forward(
    backend: Arc<dyn Backend>,
    pod: &str,
    data: spdy::Stream,
    mut error: spdy::Stream,
) {
    let port = match data.header("port").map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        other => {
            let shown = data.header("port").unwrap_or("");
            let msg = match other {
                None => "port forward request without a port header".to_string(),
                _ => format!("invalid port {shown:?} in port forward request"),
            };
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            finish_unused(data).await;
            return;
        }
    };
    let target = match backend.dial(pod, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}, uid : {e}");
            tracing::debug!("{msg}");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            finish_unused(data).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(data);
    let (mut from_pod, mut to_pod) = target.into_split();
    // Each direction half-closes on its own end; a failure either way ends both.
    let upstream = async {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) => {
                    let _ = to_pod.shutdown().await;
                    return Ok(());
                }
                Ok(n) => to_pod.write_all(&buf[..n]).await?,
                Err(e) => return Err(e),
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) => {
                    let _ = to_client.shutdown().await;
                    return Ok(());
                }
                Ok(n) => to_client.write_all(&buf[..n]).await?,
                Err(e) => return Err::<(), std::io::Error>(e),
            }
        }
    };
    if let Err(e) = tokio::try_join!(upstream, downstream) {
        tracing::debug!(pod, port, error = %e, "port-forward connection ended");
    }
    let _ = error.shutdown().await;
}
