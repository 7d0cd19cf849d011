//! An HTTP proxy in front of a [`crate::registry::Registry`], on its own free port of
//! 127.0.0.1. It counts every request, can throttle response bodies (to make a pull slow
//! enough to interrupt), and can play a token-auth registry: `/v2/...` needs
//! `Authorization: Bearer <token>` with tokens handed out by its own `/token` endpoint
//! (docker's bearer-token flow: GET with basic credentials, POST with a refresh token =
//! identity token, or POST with a password grant), or one pre-shared registry token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use futures_util::StreamExt;
use http::{HeaderMap, Method, StatusCode};

use crate::push::Credentials;
use crate::util::http_client;

/// The `service` the token proxy announces in its challenges.
pub const TOKEN_SERVICE: &str = "berth-test";

/// What the token proxy accepts.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// Basic credentials accepted by `GET /token` and by `POST /token` password grants.
    pub credentials: Credentials,
    /// Refresh token accepted by `POST /token` with `grant_type=refresh_token` (docker's
    /// identity token).
    pub identity_token: String,
    /// Token accepted directly as `Authorization: Bearer` on `/v2/...` (CRI registry_token).
    pub registry_token: String,
}

impl TokenAuth {
    /// Test values: user `tokenuser` / `tokenpass`, identity and registry tokens.
    pub fn test_default() -> Self {
        TokenAuth {
            credentials: Credentials::new("tokenuser", "tokenpass"),
            identity_token: "identity-token-0123456789".into(),
            registry_token: "registry-token-abcdef".into(),
        }
    }
}

/// Options for [`Proxy::start`].
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Require bearer tokens (see the module doc). `None`: a plain counting proxy.
    pub token_auth: Option<TokenAuth>,
    /// Limit each response body to this many bytes per second.
    pub throttle_bytes_per_sec: Option<u64>,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string (may be empty).
    pub query: String,
    /// Status the proxy answered.
    pub status: u16,
    /// The request's Authorization header, if any.
    pub authorization: Option<String>,
    /// Body of a form POST to /token (for inspection), else empty.
    pub form: String,
}

struct Inner {
    backend: String,
    port: u16,
    auth: Option<TokenAuth>,
    throttle: AtomicU64,
    issued: Mutex<HashMap<String, Vec<String>>>,
    next_token: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
    blob_bytes: AtomicU64,
    client: reqwest::Client,
}

/// A running proxy; its server task is aborted on drop.
pub struct Proxy {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy forwarding to `backend` (`http://127.0.0.1:PORT`). Must be called
    /// inside a tokio runtime (the test's).
    pub async fn start(backend: &str, opts: ProxyOptions) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            backend: backend.trim_end_matches('/').into(),
            port,
            auth: opts.token_auth,
            throttle: AtomicU64::new(opts.throttle_bytes_per_sec.unwrap_or(0)),
            issued: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
            blob_bytes: AtomicU64::new(0),
            client: http_client(),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Proxy { inner, task })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.inner.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// The token endpoint (`http://127.0.0.1:PORT/token`).
    pub fn realm(&self) -> String {
        format!("{}/token", self.url())
    }

    /// Changes the per-response throttle (`None`: full speed), also for bodies in flight.
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.inner
            .throttle
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.log.lock().expect("proxy log lock").clone()
    }

    /// Number of requests with `method` and exactly `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Requests counted per "METHOD path".
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.requests() {
            *m.entry(format!("{} {}", r.method, r.path)).or_insert(0) += 1;
        }
        m
    }

    /// Number of successful (200/206) GETs of the blob `digest`, in any repository.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && r.path.ends_with(&suffix)
                    && (r.status == 200 || r.status == 206)
            })
            .count()
    }

    /// Requests to the token endpoint.
    pub fn token_requests(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/token")
            .collect()
    }

    /// Bytes of blob bodies sent to clients so far.
    pub fn blob_bytes_served(&self) -> u64 {
        self.inner.blob_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(
    inner: &Inner,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    status: u16,
    form: String,
) {
    let rec = RequestRecord {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        status,
        authorization: headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        form,
    };
    inner.log.lock().expect("proxy log lock").push(rec);
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let path = uri.path().to_string();
    if path == "/token" {
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let form = String::from_utf8_lossy(&body).to_string();
        let resp = token_endpoint(&inner, &method, &uri, &headers, &form);
        record(
            &inner,
            &method,
            &uri,
            &headers,
            resp.status().as_u16(),
            form,
        );
        return resp;
    }
    if !path.starts_with("/v2") {
        record(&inner, &method, &uri, &headers, 404, String::new());
        return simple(StatusCode::NOT_FOUND, "not found");
    }
    if let Some(auth) = &inner.auth {
        let repo = repository_of(&path);
        if !authorized(&inner, auth, &headers, repo.as_deref()) {
            record(&inner, &method, &uri, &headers, 401, String::new());
            return challenge(&inner, repo.as_deref());
        }
    }
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let resp = forward(&inner, &method, &uri, &headers, body).await;
    record(
        &inner,
        &method,
        &uri,
        &headers,
        resp.status().as_u16(),
        String::new(),
    );
    resp
}

fn simple(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": status.canonical_reason().unwrap_or("error").to_uppercase().replace(' ', "_"), "message": msg}]});
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

fn challenge(inner: &Inner, repo: Option<&str>) -> Response {
    let mut value = format!(
        "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"{TOKEN_SERVICE}\"",
        inner.port
    );
    if let Some(r) = repo {
        value.push_str(&format!(",scope=\"repository:{r}:pull\""));
    }
    let body =
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("Content-Type", "application/json")
        .header("Docker-Distribution-Api-Version", "registry/2.0")
        .header("WWW-Authenticate", value)
        .body(Body::from(body))
        .expect("static response")
}

/// `/v2/<name>/(manifests|blobs|tags)/...` → `<name>`.
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.rfind(marker) {
            return Some(rest[..i].to_string());
        }
    }
    None
}

fn authorized(inner: &Inner, auth: &TokenAuth, headers: &HeaderMap, repo: Option<&str>) -> bool {
    let Some(token) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return false;
    };
    if token == auth.registry_token {
        return true;
    }
    let issued = inner.issued.lock().expect("issued lock");
    let Some(scopes) = issued.get(token) else {
        return false;
    };
    match repo {
        None => true,
        Some(r) => scopes.iter().any(|s| scope_allows_pull(s, r)),
    }
}

/// `repository:<name>:pull[,push]` (or `*` actions) allows pulling `<name>`.
fn scope_allows_pull(scope: &str, repo: &str) -> bool {
    let Some(rest) = scope.strip_prefix("repository:") else {
        return false;
    };
    let Some((name, actions)) = rest.rsplit_once(':') else {
        return false;
    };
    name == repo && actions.split(',').any(|a| a == "pull" || a == "*")
}

fn token_endpoint(
    inner: &Inner,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    form: &str,
) -> Response {
    let Some(auth) = &inner.auth else {
        return simple(StatusCode::NOT_FOUND, "no token service");
    };
    let (params, ok) = if *method == Method::GET {
        let params = parse_form(uri.query().unwrap_or_default());
        let ok = basic_credentials(headers)
            .is_some_and(|(u, p)| u == auth.credentials.username && p == auth.credentials.password);
        (params, ok)
    } else if *method == Method::POST {
        let params = parse_form(form);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let ok = match get("grant_type") {
            "refresh_token" => get("refresh_token") == auth.identity_token,
            "password" => {
                get("username") == auth.credentials.username
                    && get("password") == auth.credentials.password
            }
            _ => false,
        };
        (params, ok)
    } else {
        return simple(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    };
    if !ok {
        return simple(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let n = inner.next_token.fetch_add(1, Ordering::SeqCst);
    let token = format!("e2e-token-{n}-{}", inner.port);
    inner
        .issued
        .lock()
        .expect("issued lock")
        .insert(token.clone(), scopes);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": "2026-01-01T00:00:00Z",
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Parses `a=b&c=d` with `%XX` and `+` decoding.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

async fn forward(
    inner: &Arc<Inner>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{pq}", inner.backend);
    let mut rb = inner.client.request(method.clone(), url);
    for (name, value) in headers {
        let n = name.as_str();
        if n == "host" || n == "authorization" || n == "content-length" || HOP_BY_HOP.contains(&n) {
            continue;
        }
        rb = rb.header(name, value);
    }
    if !body.is_empty() {
        rb = rb.body(body);
    }
    let upstream = match rb.send().await {
        Ok(r) => r,
        Err(e) => return simple(StatusCode::BAD_GATEWAY, &format!("backend: {e}")),
    };
    let status = upstream.status();
    let mut builder = Response::builder().status(status.as_u16());
    for (name, value) in upstream.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        builder = builder.header(name, value);
    }
    if *method == Method::HEAD {
        return builder.body(Body::empty()).expect("response");
    }
    let is_blob = uri.path().contains("/blobs/sha256:") && *method == Method::GET;
    let inner2 = inner.clone();
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let stream = upstream.bytes_stream().then(move |chunk| {
        let inner = inner2.clone();
        let sent = sent.clone();
        async move {
            let chunk = chunk?;
            let total = sent.fetch_add(chunk.len() as u64, Ordering::SeqCst) + chunk.len() as u64;
            let rate = inner.throttle.load(Ordering::SeqCst);
            if rate > 0 {
                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                let elapsed = start.elapsed();
                if due > elapsed {
                    // Bandwidth throttling (the crash tests need a slow pull), not a wait
                    // for a condition: each chunk is held until its time at `rate`.
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            if is_blob {
                inner
                    .blob_bytes
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            Ok::<_, reqwest::Error>(chunk)
        }
    });
    builder.body(Body::from_stream(stream)).expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        assert_eq!(
            repository_of("/v2/library/busybox/manifests/latest").as_deref(),
            Some("library/busybox")
        );
        assert_eq!(
            repository_of("/v2/a/b/c/blobs/sha256:00").as_deref(),
            Some("a/b/c")
        );
        assert_eq!(repository_of("/v2/"), None);
    }

    #[test]
    fn scopes() {
        assert!(scope_allows_pull(
            "repository:library/busybox:pull",
            "library/busybox"
        ));
        assert!(scope_allows_pull(
            "repository:library/busybox:push,pull",
            "library/busybox"
        ));
        assert!(!scope_allows_pull(
            "repository:library/other:pull",
            "library/busybox"
        ));
        assert!(!scope_allows_pull("registry:catalog:*", "library/busybox"));
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse_form("grant_type=refresh_token&scope=repository%3Aa%2Fb%3Apull&x=a+b"),
            vec![
                ("grant_type".to_string(), "refresh_token".to_string()),
                ("scope".to_string(), "repository:a/b:pull".to_string()),
                ("x".to_string(), "a b".to_string()),
            ]
        );
    }
}
