//! One unary gRPC call over berthd's socket by hand (HTTP/2 with hyper): unlike tonic's or
//! grpc-go's client, nothing on this side times the call, so a test sees exactly what the
//! server answers to a `grpc-timeout`.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// What the server answered: the `grpc-status` code (from the headers of a trailers-only
/// answer or from the trailers) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `grpc-status`.
    pub code: i32,
    /// `grpc-message`.
    pub message: String,
}

/// Calls `path` (`/runtime.v1.ImageService/PullImage`) with `req` and the header
/// `grpc-timeout: timeout`.
pub async fn call(socket: &Path, path: &str, req: &impl Message, timeout: &str) -> Result<Answer> {
    let io = TokioIo::new(
        tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?,
    );
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    let msg = req.encode_to_vec();
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len())?.to_be_bytes());
    frame.extend_from_slice(&msg);
    let request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::from(frame)))?;
    let resp = send
        .send_request(request)
        .await
        .context("sending the call")?;
    let field =
        |h: &http::HeaderMap, k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(code) = field(resp.headers(), "grpc-status") {
        return Ok(Answer {
            code: code.parse()?,
            message: field(resp.headers(), "grpc-message").unwrap_or_default(),
        });
    }
    let collected = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok(Answer {
        code: field(&trailers, "grpc-status")
            .context("an answer without grpc-status")?
            .parse()?,
        message: field(&trailers, "grpc-message").unwrap_or_default(),
    })
}
