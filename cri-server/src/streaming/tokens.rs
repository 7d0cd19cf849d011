//! Single-use tokens: the Exec, Attach and PortForward RPCs park the request here and
//! hand out a URL that names it; the first connection to that URL takes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use super::backend::{AttachTarget, ExecTarget};

/// How long a token stays valid unused (kubelet's and containerd's value).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens outstanding at once (kubelet's value): beyond it new requests are refused, so
/// that RPCs nobody follows up cannot grow memory.
pub const MAX_OUTSTANDING: usize = 1000;
/// Random bytes per token: 192 bits.
const TOKEN_BYTES: usize = 24;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// An Exec RPC.
    Exec(ExecTarget),
    /// An Attach RPC.
    Attach(AttachTarget),
    /// A PortForward RPC: the pod sandbox.
    PortForward(String),
}

impl Pending {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many streaming requests waiting for their client ({MAX_OUTSTANDING}); retry later")]
pub struct TooMany;

/// The outstanding tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Tokens {
    /// Parks `request`; returns its token (URL-safe).
    pub fn issue(&self, request: Pending) -> Result<String, TooMany> {
        self.issue_at(request, Instant::now())
    }

    fn issue_at(&self, request: Pending, now: Instant) -> Result<String, TooMany> {
        let mut entries = self.lock();
        if entries.len() >= MAX_OUTSTANDING {
            entries.retain(|_, (issued, _)| now.duration_since(*issued) < TOKEN_TTL);
            if entries.len() >= MAX_OUTSTANDING {
                return Err(TooMany);
            }
        }
        let mut raw = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        entries.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request of `token` if it was issued for `kind` and has not expired; a
    /// token is gone after its first use, whatever the outcome.
    pub fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        self.take_at(kind, token, Instant::now())
    }

    fn take_at(&self, kind: &str, token: &str, now: Instant) -> Option<Pending> {
        let (issued, request) = self.lock().remove(token)?;
        (now.duration_since(issued) < TOKEN_TTL && request.kind() == kind).then_some(request)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        // The map stays consistent across a panic elsewhere: every change is one call.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward("pod".into())
    }

    #[test]
    fn token_is_single_use_and_long() {
        let t = Tokens::default();
        let token = t.issue(pf()).unwrap();
        assert!(token.len() >= 22, "{token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(t.take("portforward", &token), Some(pf()));
        assert_eq!(t.take("portforward", &token), None);
        assert_eq!(t.take("portforward", "nonsense"), None);
    }

    #[test]
    fn token_for_another_kind_is_spent_and_refused() {
        let t = Tokens::default();
        let token = t.issue(pf()).unwrap();
        assert_eq!(t.take("exec", &token), None);
        assert_eq!(t.take("portforward", &token), None);
    }

    #[test]
    fn token_expires_after_a_minute() {
        let t = Tokens::default();
        let now = Instant::now();
        let token = t.issue_at(pf(), now).unwrap();
        assert_eq!(t.take_at("portforward", &token, now + TOKEN_TTL), None);
        let token = t.issue_at(pf(), now).unwrap();
        assert!(
            t.take_at("portforward", &token, now + TOKEN_TTL / 2)
                .is_some()
        );
    }

    #[test]
    fn outstanding_tokens_are_bounded_but_expired_ones_make_room() {
        let t = Tokens::default();
        let now = Instant::now();
        for _ in 0..MAX_OUTSTANDING {
            t.issue_at(pf(), now).unwrap();
        }
        assert_eq!(t.issue_at(pf(), now), Err(TooMany));
        assert!(t.issue_at(pf(), now + TOKEN_TTL).is_ok());
        assert_eq!(t.lock().len(), 1);
    }

    #[test]
    fn tokens_differ() {
        let t = Tokens::default();
        let a = t.issue(pf()).unwrap();
        let b = t.issue(pf()).unwrap();
        assert_ne!(a, b);
    }
}
