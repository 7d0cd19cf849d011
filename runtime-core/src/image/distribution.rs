//! A client for the OCI distribution API (the registry HTTP API), limited to what pulling
//! needs: manifests and blobs, with the Docker auth flows: HTTP Basic, the bearer-token
//! flow (token from the realm with Basic credentials), identity tokens (OAuth2 refresh
//! token exchange) and pre-issued registry tokens.
//!
//! berth speaks the API itself instead of going through `oci-client` (a departure from
//! DESIGN.md): oci-client has no identity-token exchange, folds every HTTP failure into a
//! few error variants (a missing tag and a refused credential are hard to tell apart, and
//! the CRI needs NotFound vs Unauthenticated vs Unavailable), and its streaming API hides the
//! response we need to verify while unpacking.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::Mutex;

use super::digest;
use super::registries::Endpoint;
use super::spec::Descriptor;
use crate::{Error, Result};

/// Largest manifest or index accepted (containerd uses the same bound).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
const MAX_CONFIG_BYTES: usize = 16 << 20;

/// Credentials for one pull, from the CRI AuthConfig.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// User name for Basic auth or the token realm.
    pub username: Option<String>,
    /// Password for Basic auth or the token realm.
    pub password: Option<String>,
    /// OAuth2 refresh token exchanged at the token realm for an access token.
    pub identity_token: Option<String>,
    /// Bearer token sent to the registry as is.
    pub registry_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "registry_token",
                &self.registry_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Builds credentials from the fields of a CRI AuthConfig. `auth` is base64 of
    /// `user:password` and fills username / password when they are empty.
    pub fn from_auth_config(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Credentials> {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mut c = Credentials {
            username: non_empty(username),
            password: non_empty(password),
            identity_token: non_empty(identity_token),
            registry_token: non_empty(registry_token),
        };
        if !auth.is_empty() && c.username.is_none() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| {
                    Error::InvalidArgument(format!("auth config: invalid base64 in auth: {e}"))
                })?;
            let text = String::from_utf8(decoded).map_err(|_| {
                Error::InvalidArgument("auth config: auth is not UTF-8".to_string())
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                Error::InvalidArgument("auth config: auth must encode user:password".to_string())
            })?;
            c.username = non_empty(user);
            c.password = Some(pass.to_string());
        }
        Ok(c)
    }

    /// True when no credential at all is set.
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.identity_token.is_none() && self.registry_token.is_none()
    }
}

/// Shared HTTP machinery; cheap to clone, one per daemon.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
}

impl RegistryClient {
    /// A client with the given connect and per-read timeouts. TLS uses the system's roots.
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<RegistryClient> {
        // The ring provider keeps the build free of aws-lc's C toolchain; installing it twice
        // (tests) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| Error::Internal(format!("create HTTP client: {}", error_chain(&e))))?;
        Ok(RegistryClient { http })
    }

    /// A session against one endpoint for one repository, holding its auth state.
    pub fn session(&self, endpoint: Endpoint, credentials: Credentials) -> Session {
        let scheme = if endpoint.insecure { "http" } else { "https" };
        Session {
            http: self.http.clone(),
            base: format!("{scheme}://{}/v2/{}", endpoint.host, endpoint.repository),
            endpoint,
            credentials,
            auth: Mutex::new(None),
        }
    }
}

/// Talks to one repository on one registry host.
pub struct Session {
    http: reqwest::Client,
    base: String,
    endpoint: Endpoint,
    credentials: Credentials,
    /// The Authorization header value that worked last, reused for later requests.
    auth: Mutex<Option<HeaderValue>>,
}

/// A fetched manifest or index.
pub struct FetchedManifest {
    /// The raw bytes (what the digest covers).
    pub bytes: Vec<u8>,
    /// `sha256:` digest of the bytes.
    pub digest: String,
    /// Media type from the response's Content-Type.
    pub content_type: String,
}

impl Session {
    /// The endpoint this session talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fetches the manifest named by a tag or digest. A digest is verified.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/manifests/{reference}", self.base);
        let resp = self.get(&url, Some(super::spec::MANIFEST_ACCEPT)).await?;
        let resp = self.check(resp, &format!("manifest {reference}")).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let bytes = self.read_limited(resp, MAX_MANIFEST_BYTES, &url).await?;
        let digest = digest::sha256_of(&bytes);
        if reference.contains(':') && reference != digest {
            return Err(Error::DataLoss(format!(
                "manifest {reference} from {}: content has digest {digest}",
                self.endpoint.host
            )));
        }
        Ok(FetchedManifest {
            bytes,
            digest,
            content_type,
        })
    }

    /// Fetches a small blob (an image config) whole and verifies its digest and size.
    pub async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        digest::sha256_hex(&desc.digest)?;
        if desc.size < 0 || desc.size as usize > MAX_CONFIG_BYTES {
            return Err(Error::InvalidArgument(format!(
                "blob {} has unsupported size {}",
                desc.digest, desc.size
            )));
        }
        let resp = self.blob(&desc.digest).await?;
        let bytes = self
            .read_limited(resp, MAX_CONFIG_BYTES, &desc.digest)
            .await?;
        let got = digest::sha256_of(&bytes);
        if got != desc.digest || bytes.len() as i64 != desc.size {
            return Err(Error::DataLoss(format!(
                "blob {} from {}: got {} bytes with digest {got}, want {} bytes",
                desc.digest,
                self.endpoint.host,
                bytes.len(),
                desc.size
            )));
        }
        Ok(bytes)
    }

    /// Starts fetching a blob; the caller streams and verifies the body.
    pub async fn blob(&self, digest: &str) -> Result<Response> {
        let url = format!("{}/blobs/{digest}", self.base);
        let resp = self.get(&url, None).await?;
        self.check(resp, &format!("blob {digest}")).await
    }

    /// Maps a transport error while reading a body.
    pub fn body_error(&self, what: &str, e: reqwest::Error) -> Error {
        Error::Unavailable(format!(
            "registry {}: reading {what}: {}",
            self.endpoint.host,
            error_chain(&e)
        ))
    }

    async fn read_limited(&self, mut resp: Response, limit: usize, what: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.body_error(what, e))? {
            if out.len() + chunk.len() > limit {
                return Err(Error::InvalidArgument(format!(
                    "{what} from {} is larger than {limit} bytes",
                    self.endpoint.host
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Sends a GET, answering one auth challenge when the registry asks for one.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<Response> {
        let cached = self.auth.lock().await.clone();
        let resp = self.send(url, accept, cached.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse);
        let header = match challenge {
            Some(Some(c)) => self.authorize(&c).await?,
            _ => {
                return Err(Error::Unauthenticated(format!(
                    "registry {} refused access to {} and sent no usable auth challenge",
                    self.endpoint.host, self.endpoint.repository
                )));
            }
        };
        let resp = self.send(url, accept, Some(&header)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthenticated(format!(
                "registry {} rejected the credentials for {}",
                self.endpoint.host, self.endpoint.repository
            )));
        }
        *self.auth.lock().await = Some(header);
        Ok(resp)
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<Response> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(h) = auth {
            req = req.header(AUTHORIZATION, h.clone());
        }
        req.send().await.map_err(|e| {
            Error::Unavailable(format!(
                "registry {} unreachable: {}",
                self.endpoint.host,
                error_chain(&e)
            ))
        })
    }

    /// Turns a non-success status into an error of the right kind.
    async fn check(&self, resp: Response, what: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail = registry_error_text(&body);
        let host = &self.endpoint.host;
        let repo = &self.endpoint.repository;
        Err(match status {
            StatusCode::NOT_FOUND => {
                Error::NotFound(format!("{what} of {repo} not found on {host}{detail}"))
            }
            StatusCode::UNAUTHORIZED => Error::Unauthenticated(format!(
                "registry {host} requires authentication for {repo}{detail}"
            )),
            StatusCode::FORBIDDEN => {
                Error::PermissionDenied(format!("registry {host} denied access to {repo}{detail}"))
            }
            StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(format!(
                "registry {host} is rate limiting requests for {repo}{detail}"
            )),
            s if s.is_server_error() => Error::Unavailable(format!(
                "registry {host} failed fetching {what} of {repo}: HTTP {s}{detail}"
            )),
            s => Error::Internal(format!(
                "registry {host} answered HTTP {s} for {what} of {repo}{detail}"
            )),
        })
    }

    /// Obtains an Authorization header value for a challenge.
    async fn authorize(&self, c: &Challenge) -> Result<HeaderValue> {
        let host = &self.endpoint.host;
        let creds = &self.credentials;
        match c.scheme.as_str() {
            "basic" => {
                let (Some(user), pass) = (&creds.username, &creds.password) else {
                    return Err(Error::Unauthenticated(format!(
                        "registry {host} requires credentials for {}",
                        self.endpoint.repository
                    )));
                };
                let raw = format!("{user}:{}", pass.as_deref().unwrap_or(""));
                header_value(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            "bearer" => {
                if let Some(token) = &creds.registry_token {
                    return header_value(&format!("Bearer {token}"));
                }
                let token = self.fetch_token(c).await?;
                header_value(&format!("Bearer {token}"))
            }
            other => Err(Error::Unauthenticated(format!(
                "registry {host} asks for unsupported auth scheme {other:?}"
            ))),
        }
    }

    /// Runs the token flow of the Docker registry auth spec against the challenge's realm.
    async fn fetch_token(&self, c: &Challenge) -> Result<String> {
        let host = &self.endpoint.host;
        let realm = c.param("realm").ok_or_else(|| {
            Error::Unauthenticated(format!(
                "registry {host} sent a bearer challenge without realm"
            ))
        })?;
        let scope = format!("repository:{}:pull", self.endpoint.repository);
        let service = c.param("service").unwrap_or_default();
        let creds = &self.credentials;
        let req = if let Some(refresh) = &creds.identity_token {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("service", service),
                ("scope", scope.as_str()),
                ("client_id", "berth"),
            ];
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", form_escape(v)))
                .collect::<Vec<_>>()
                .join("&");
            self.http
                .post(realm)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
        } else {
            let mut req = self
                .http
                .get(realm)
                .query(&[("scope", scope.as_str()), ("service", service)]);
            if let Some(user) = &creds.username {
                req = req.basic_auth(user, creds.password.as_deref());
            }
            req
        };
        let resp = req.send().await.map_err(|e| {
            Error::Unavailable(format!(
                "token service {realm} of registry {host} unreachable: {}",
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthenticated(format!(
                "token service of registry {host} rejected the credentials (HTTP {status})"
            )));
        }
        if !status.is_success() {
            return Err(Error::Unavailable(format!(
                "token service of registry {host} answered HTTP {status}"
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.body_error("token response", e))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::Unauthenticated(format!(
                "token service of registry {host} sent an invalid response: {e}"
            ))
        })?;
        parsed
            .access_token
            .filter(|t| !t.is_empty())
            .or(parsed.token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "token service of registry {host} returned no token"
                ))
            })
    }
}

fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(|_| {
        Error::InvalidArgument(
            "credentials contain characters not allowed in an HTTP header".to_string(),
        )
    })
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `errors[].message` of a distribution error body, prefixed for appending.
fn registry_error_text(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(env) if !env.errors.is_empty() => {
            let parts: Vec<String> = env
                .errors
                .iter()
                .map(|e| format!("{} ({})", e.message, e.code))
                .collect();
            format!(": {}", parts.join("; "))
        }
        _ => String::new(),
    }
}

/// The full cause chain of an error, since reqwest's own message names only the URL.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    /// Lowercased scheme.
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2`. Returns None for an empty header.
    fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(' ') {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c == ',' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'=') {
                chars.next();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    value.push(n);
                                }
                            }
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c == ',' {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
            params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull"));
    }

    #[test]
    fn parses_basic_and_odd_challenges() {
        let c = Challenge::parse(r#"Basic realm="x, y""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("x, y"));
        assert!(Challenge::parse("").is_none());
        let c = Challenge::parse("Bearer realm=unquoted, =junk,,\"").unwrap();
        assert_eq!(c.param("realm"), Some("unquoted"));
    }

    #[test]
    fn credentials_from_auth_field() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:se:cret");
        let c = Credentials::from_auth_config("", "", &auth, "", "").unwrap();
        assert_eq!(c.username.as_deref(), Some("me"));
        assert_eq!(c.password.as_deref(), Some("se:cret"));
        assert!(Credentials::from_auth_config("", "", "!!!", "", "").is_err());
        assert!(
            Credentials::from_auth_config("", "", "", "", "")
                .unwrap()
                .is_empty()
        );
        let dbg = format!(
            "{:?}",
            Credentials::from_auth_config("u", "pw", "", "", "").unwrap()
        );
        assert!(!dbg.contains("pw"));
    }

    #[test]
    fn error_text_from_envelope() {
        let t = registry_error_text(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        );
        assert_eq!(t, ": manifest unknown (MANIFEST_UNKNOWN)");
        assert_eq!(registry_error_text("<html>"), "");
    }

    #[test]
    fn form_escaping() {
        assert_eq!(form_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
