//! Docker image references: parsing and normalization as github.com/distribution/reference
//! does them (grammar from `regexp.go`, defaults from `normalize.go`), so that a name kubelet
//! or crictl hands us means exactly what it means to containerd and CRI-O.
//!
//! The grammar is matched by hand rather than with a regex engine. Every production of
//! upstream's regexp is written out below; where the regexp is ambiguous, the code picks the
//! split Go's leftmost-first matcher picks (noted at each place).
//!
//! One deliberate difference from upstream: a first component that `ParseNormalizedNamed`
//! treats as a domain (it holds a `.`) but that is not a valid domain, such as
//! `my_reg.local/app`, makes upstream return a reference with an *empty* domain, which no
//! registry can serve. We reject it as an invalid format instead.

use std::fmt;

/// Docker Hub's canonical domain in normalized names.
const DEFAULT_DOMAIN: &str = "docker.io";
/// The Docker Index's old name, folded into [`DEFAULT_DOMAIN`] when normalizing.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Docker Hub's namespace for official images: `busybox` is `library/busybox`.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference with neither tag nor digest gets.
const DEFAULT_TAG: &str = "latest";
/// A first component that is always a domain even without `.` or `:`.
const LOCALHOST: &str = "localhost";

/// The longest repository path (the name without its domain) upstream accepts
/// (`RepositoryNameTotalLengthMax`). Upstream measures the path only, not domain + path:
/// `example.com/` followed by 255 characters is valid there, so it is here.
pub const REPOSITORY_PATH_MAX: usize = 255;

/// The longest tag: `[\w][\w.-]{0,127}`.
const TAG_MAX: usize = 128;

/// A normalized docker image reference: `domain/path[:tag][@digest]`.
///
/// Built only by [`Reference::parse_normalized`] and [`Reference::with_digest`], so it
/// always has a domain, and a tag or a digest (or both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a digest in a reference was refused (go-digest's validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestProblem {
    /// The algorithm is well formed but not one of sha256, sha384, sha512.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length for its algorithm.
    #[error("invalid digest length: {algorithm} needs {expected} hex characters, got {actual}")]
    InvalidLength {
        /// The digest algorithm, e.g. `sha256`.
        algorithm: String,
        /// The hex length the algorithm requires.
        expected: usize,
        /// The hex length given.
        actual: usize,
    },
    /// The hex part has characters other than lowercase hex digits.
    #[error("invalid digest format: the encoded part must be lowercase hex")]
    InvalidEncoding,
}

/// Why a string is not a valid image reference. Every message quotes the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is the empty string.
    #[error("invalid reference \"\": reference is empty")]
    Empty,
    /// The reference is a bare 64-hex-digit string. Docker refuses such names so that they
    /// cannot be confused with image IDs; callers should look the string up as an image ID.
    #[error(
        "invalid reference {reference:?}: cannot specify 64-byte hexadecimal strings as a repository name"
    )]
    ImageId {
        /// The text given.
        reference: String,
    },
    /// The reference does not match the grammar.
    #[error("invalid reference {reference:?}: invalid reference format")]
    InvalidFormat {
        /// The text given.
        reference: String,
    },
    /// The repository path has uppercase letters (valid only in a domain).
    #[error("invalid reference {reference:?}: repository name must be lowercase")]
    Uppercase {
        /// The text given.
        reference: String,
    },
    /// The repository path is longer than [`REPOSITORY_PATH_MAX`].
    #[error(
        "invalid reference {reference:?}: repository name must not be more than {REPOSITORY_PATH_MAX} characters"
    )]
    NameTooLong {
        /// The text given.
        reference: String,
    },
    /// The digest is well formed by the reference grammar but not a valid digest.
    #[error("invalid reference {reference:?}: {problem}")]
    InvalidDigest {
        /// The text given.
        reference: String,
        /// What is wrong with the digest.
        problem: DigestProblem,
    },
}

impl Reference {
    /// Parses `s` the way docker, containerd and CRI-O do (`ParseNormalizedNamed`), then
    /// applies `ParseDockerRef`'s default: `:latest` when there is neither tag nor digest.
    /// Unlike `ParseDockerRef`, a tag given together with a digest is kept;
    /// [`Reference::normalized`] drops it where pulling needs that.
    ///
    /// `busybox` becomes `docker.io/library/busybox:latest`; `localhost:5000/x` stays on
    /// `localhost:5000`. A bare 64-hex-digit string gives [`ReferenceError::ImageId`].
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_identifier(s) {
            return Err(ReferenceError::ImageId {
                reference: s.to_string(),
            });
        }
        let (domain, remainder) = split_docker_domain(s);
        // Upstream checks case on the part before the first ':' before parsing, so that
        // "Foo/Bar" reports the uppercase path rather than a generic format error.
        let remote = remainder
            .split_once(':')
            .map_or(remainder.as_str(), |(remote, _)| remote);
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::Uppercase {
                reference: s.to_string(),
            });
        }
        let full = format!("{domain}/{remainder}");
        let parts = parse_parts(&full).map_err(|kind| kind.into_error(s))?;
        if parts.domain.is_empty() {
            return Err(ReferenceError::InvalidFormat {
                reference: s.to_string(),
            });
        }
        let tag = match (parts.tag, parts.digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference {
            domain: parts.domain.to_string(),
            path: parts.path.to_string(),
            tag,
            digest: parts.digest.map(str::to_string),
        })
    }

    /// The registry domain with optional port: `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if the reference has one (always, unless it was given by digest only).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`algorithm:hex`), if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The full repository name without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `name:tag` (a CRI RepoTag), when the reference has a tag.
    pub fn tagged_string(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` (a CRI RepoDigest), when the reference has a digest.
    pub fn digested_string(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }

    /// What to pull, as `ParseDockerRef` gives it: `name@digest` when there is a digest
    /// (a tag beside it is ignored, since the digest pins the content), else `name:tag`.
    pub fn normalized(&self) -> String {
        self.digested_string()
            .or_else(|| self.tagged_string())
            .unwrap_or_else(|| self.name())
    }

    /// The same repository with only `digest`, for building RepoDigests after a pull.
    /// `digest` is not validated: pass one computed or checked by the caller.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The short form docker shows (`FamiliarString`): Docker Hub's domain and the
    /// `library/` namespace of official images are dropped, so
    /// `docker.io/library/busybox:latest` is `busybox:latest`, while
    /// `localhost:5000/x:1` is unchanged.
    pub fn familiar(&self) -> String {
        let mut out = if self.domain == DEFAULT_DOMAIN {
            // Upstream only strips "library/" when nothing nested follows it.
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        };
        self.push_suffix(&mut out);
        out
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

impl fmt::Display for Reference {
    /// The full normalized form: `name[:tag][@digest]`, both when both are present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

/// Whether `s` names an image by ID: 64 lowercase hex digits, optionally prefixed with
/// `sha256:`. Check this before [`Reference::parse_normalized`]: `sha256:<hex>` is also a
/// syntactically valid reference (repository `library/sha256`, tag `<hex>`).
pub fn is_image_id(s: &str) -> bool {
    is_identifier(s.strip_prefix("sha256:").unwrap_or(s))
}

/// Whether `s` is a registry `host[:port]` as the reference grammar defines it
/// (upstream's `DomainRegexp`, anchored), for validating configured registry names.
pub(crate) fn is_domain_and_port(s: &str) -> bool {
    let (host_ok, port) = if let Some(inner_and_rest) = s.strip_prefix('[') {
        // IPv6 literal: `\[[a-fA-F0-9:]+\]`; zones and embedded IPv4 are excluded upstream.
        let Some((inner, rest)) = inner_and_rest.split_once(']') else {
            return false;
        };
        let inner_ok =
            !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if rest.is_empty() {
            return inner_ok;
        }
        (inner_ok, rest.strip_prefix(':'))
    } else {
        match s.split_once(':') {
            Some((host, port)) => (is_domain_name(host), Some(port)),
            None => return is_domain_name(s),
        }
    };
    match port {
        Some(p) => host_ok && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// `identifier`: exactly 64 lowercase hex digits.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// `splitDockerDomain`: decides whether the first `/`-separated component is a registry
/// domain and applies Docker Hub's defaults. Runs on the whole input, tag and digest
/// included, exactly as upstream does.
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        // A single component ("ubuntu:22.04") is always a Docker Hub official image, even
        // "localhost" or "example.com" alone.
        return (DEFAULT_DOMAIN, format!("{OFFICIAL_REPO_PREFIX}{name}"));
    };
    let (domain, remote) = if maybe_domain == LOCALHOST
        || maybe_domain.contains(['.', ':'])
        // Uppercase is invalid in a path, so upstream reads it as a domain name.
        || maybe_domain.to_lowercase() != maybe_domain
    {
        let domain = if maybe_domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            maybe_domain
        };
        (domain, maybe_remote)
    } else {
        (DEFAULT_DOMAIN, name)
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"))
    } else {
        (domain, remote.to_string())
    }
}

/// The pieces of a reference matched by upstream's `ReferenceRegexp`.
#[derive(Debug, PartialEq, Eq)]
struct Parts<'a> {
    /// Empty when the name has no domain component (possible only in un-normalized input).
    domain: &'a str,
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// The failures of upstream's `Parse`, before we know which input text to quote.
#[derive(Debug, PartialEq, Eq)]
enum ParseFailure {
    Empty,
    InvalidFormat,
    Uppercase,
    NameTooLong,
    Digest(DigestProblem),
}

impl ParseFailure {
    fn into_error(self, reference: &str) -> ReferenceError {
        let reference = reference.to_string();
        match self {
            ParseFailure::Empty => ReferenceError::Empty,
            ParseFailure::InvalidFormat => ReferenceError::InvalidFormat { reference },
            ParseFailure::Uppercase => ReferenceError::Uppercase { reference },
            ParseFailure::NameTooLong => ReferenceError::NameTooLong { reference },
            ParseFailure::Digest(problem) => ReferenceError::InvalidDigest { reference, problem },
        }
    }
}

/// Upstream's `Parse`: the grammar, the path length limit and digest validation, with no
/// normalization.
fn parse_parts(s: &str) -> Result<Parts<'_>, ParseFailure> {
    if s.is_empty() {
        return Err(ParseFailure::Empty);
    }
    let Some(parts) = match_reference(s) else {
        // Upstream reports uppercase only when lowercasing would make the input valid.
        let lower = s.to_lowercase();
        if lower != s && match_reference(&lower).is_some() {
            return Err(ParseFailure::Uppercase);
        }
        return Err(ParseFailure::InvalidFormat);
    };
    if parts.path.len() > REPOSITORY_PATH_MAX {
        return Err(ParseFailure::NameTooLong);
    }
    if let Some(digest) = parts.digest {
        validate_digest(digest).map_err(ParseFailure::Digest)?;
    }
    Ok(parts)
}

/// `^(name)(?::(tag))?(?:@(digest))?$`, splitting as Go's regexp would.
fn match_reference(s: &str) -> Option<Parts<'_>> {
    // No production before the digest contains '@', and the digest contains none either.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            if !is_digest_pattern(digest) {
                return None;
            }
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A ':' after the last '/' cannot be in the name (only a domain's port has ':', and a
    // domain is always followed by '/'), so it must start the tag.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => {
            if !is_tag(tag) {
                return None;
            }
            (name, Some(tag))
        }
        _ => (rest, None),
    };
    let (domain, path) = split_name(name)?;
    Some(Parts {
        domain,
        path,
        tag,
        digest,
    })
}

/// `^(?:(domainAndPort)/)?(remoteName)$`. The optional domain group is greedy, so the
/// first component is taken as the domain whenever that leads to a match: `a/b` has
/// domain `a` at this level (normalization has already decided what is a domain).
fn split_name(name: &str) -> Option<(&str, &str)> {
    if let Some((first, rest)) = name.split_once('/')
        && is_domain_and_port(first)
        && is_remote_name(rest)
    {
        return Some((first, rest));
    }
    is_remote_name(name).then_some(("", name))
}

/// `remoteName`: path components separated by single slashes.
fn is_remote_name(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `pathComponent`: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < b.len() && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        if i == run_start {
            // Empty component, or a separator not followed by an alphanumeric.
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &b[sep_start..i];
        let valid_sep = matches!(sep, b"." | b"_" | b"__")
            || (!sep.is_empty() && sep.iter().all(|&c| c == b'-'));
        if !valid_sep {
            return false;
        }
    }
}

/// `domainName`: domain components joined by single dots.
fn is_domain_name(s: &str) -> bool {
    s.split('.').all(is_domain_component)
}

/// `domainNameComponent`: `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_component(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// `tag`: `[\w][\w.-]{0,127}`, with Go's ASCII-only `\w`.
fn is_tag(s: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = s.as_bytes();
    match b.first() {
        Some(&first) => {
            b.len() <= TAG_MAX
                && is_word(first)
                && b[1..].iter().all(|&c| is_word(c) || c == b'.' || c == b'-')
        }
        None => false,
    }
}

/// `digestPat`:
/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}`.
fn is_digest_pattern(s: &str) -> bool {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|component| {
        let b = component.as_bytes();
        matches!(b.first(), Some(c) if c.is_ascii_alphabetic())
            && b.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && encoded.len() >= 32 && encoded.bytes().all(|b| b.is_ascii_hexdigit())
}

/// go-digest's `Digest.Validate` for the algorithms containerd registers.
fn validate_digest(digest: &str) -> Result<(), DigestProblem> {
    let (algorithm, encoded) = digest.split_once(':').unwrap_or((digest, ""));
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        other => return Err(DigestProblem::UnsupportedAlgorithm(other.to_string())),
    };
    if encoded.len() != expected {
        return Err(DigestProblem::InvalidLength {
            algorithm: algorithm.to_string(),
            expected,
            actual: encoded.len(),
        });
    }
    if !encoded.bytes().all(is_lower_hex) {
        return Err(DigestProblem::InvalidEncoding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_F: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    const HEX_A: &str = "e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582";

    fn parse(s: &str) -> Reference {
        match Reference::parse_normalized(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn parse_err(s: &str) -> ReferenceError {
        match Reference::parse_normalized(s) {
            Ok(r) => panic!("{s:?} should be rejected, got {r}"),
            Err(e) => e,
        }
    }

    /// reference_test.go TestReferenceParse: the raw grammar, before normalization.
    /// Columns: input, expected (domain, name, tag, digest) or the failure.
    #[test]
    fn raw_grammar_matches_upstream_table() {
        type Want = Result<(&'static str, String, Option<String>, Option<String>), ParseFailure>;
        let sha_f = format!("sha256:{HEX_F}");
        let ok = |d: &'static str, n: &str, t: Option<&str>, g: Option<&str>| -> Want {
            Ok((d, n.to_string(), t.map(String::from), g.map(String::from)))
        };
        let long_path = "a/".repeat(127) + "a";
        let cases: Vec<(String, Want)> = vec![
            ("test_com".into(), ok("", "test_com", None, None)),
            ("test.com:tag".into(), ok("", "test.com", Some("tag"), None)),
            (
                "test.com:5000".into(),
                ok("", "test.com", Some("5000"), None),
            ),
            (
                "test.com/repo:tag".into(),
                ok("test.com", "test.com/repo", Some("tag"), None),
            ),
            (
                "test:5000/repo".into(),
                ok("test:5000", "test:5000/repo", None, None),
            ),
            (
                "test:5000/repo:tag".into(),
                ok("test:5000", "test:5000/repo", Some("tag"), None),
            ),
            (
                format!("test:5000/repo@{sha_f}"),
                ok("test:5000", "test:5000/repo", None, Some(&sha_f)),
            ),
            (
                format!("test:5000/repo:tag@{sha_f}"),
                ok("test:5000", "test:5000/repo", Some("tag"), Some(&sha_f)),
            ),
            ("".into(), Err(ParseFailure::Empty)),
            (":justtag".into(), Err(ParseFailure::InvalidFormat)),
            (format!("@{sha_f}"), Err(ParseFailure::InvalidFormat)),
            (
                "repo@sha256:ffffffffffffffffffffffffffffffffff".into(),
                Err(ParseFailure::Digest(DigestProblem::InvalidLength {
                    algorithm: "sha256".into(),
                    expected: 64,
                    actual: 34,
                })),
            ),
            (
                format!("validname@invaliddigest:{HEX_F}"),
                Err(ParseFailure::Digest(DigestProblem::UnsupportedAlgorithm(
                    "invaliddigest".into(),
                ))),
            ),
            ("Uppercase:tag".into(), Err(ParseFailure::Uppercase)),
            (
                "test:5000/Uppercase/lowercase:tag".into(),
                Err(ParseFailure::Uppercase),
            ),
            (
                "lowercase:Uppercase".into(),
                ok("", "lowercase", Some("Uppercase"), None),
            ),
            (
                format!("domain/{}:tag", "a".repeat(256)),
                Err(ParseFailure::NameTooLong),
            ),
            (
                format!("{long_path}:tag-puts-this-over-max"),
                ok("a", &long_path, Some("tag-puts-this-over-max"), None),
            ),
            ("aa/asdf$$^/aa".into(), Err(ParseFailure::InvalidFormat)),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                ok(
                    "sub-dom1.foo.com",
                    "sub-dom1.foo.com/bar/baz/quux",
                    None,
                    None,
                ),
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
                ok(
                    "sub-dom1.foo.com",
                    "sub-dom1.foo.com/bar/baz/quux",
                    Some("some-long-tag"),
                    None,
                ),
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                ok(
                    "b.gcr.io",
                    "b.gcr.io/test.example.com/my-app",
                    Some("test.example.com"),
                    None,
                ),
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com".into(),
                ok(
                    "xn--n3h.com",
                    "xn--n3h.com/myimage",
                    Some("xn--n3h.com"),
                    None,
                ),
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha_f}"),
                ok(
                    "xn--7o8h.com",
                    "xn--7o8h.com/myimage",
                    Some("xn--7o8h.com"),
                    Some(&sha_f),
                ),
            ),
            (
                "foo_bar.com:8080".into(),
                ok("", "foo_bar.com", Some("8080"), None),
            ),
            (
                "foo/foo_bar.com:8080".into(),
                ok("foo", "foo/foo_bar.com", Some("8080"), None),
            ),
            ("192.168.1.1".into(), ok("", "192.168.1.1", None, None)),
            (
                "192.168.1.1:tag".into(),
                ok("", "192.168.1.1", Some("tag"), None),
            ),
            (
                "192.168.1.1:5000".into(),
                ok("", "192.168.1.1", Some("5000"), None),
            ),
            (
                "192.168.1.1/repo".into(),
                ok("192.168.1.1", "192.168.1.1/repo", None, None),
            ),
            (
                "192.168.1.1:5000/repo".into(),
                ok("192.168.1.1:5000", "192.168.1.1:5000/repo", None, None),
            ),
            (
                "192.168.1.1:5000/repo:5050".into(),
                ok(
                    "192.168.1.1:5000",
                    "192.168.1.1:5000/repo",
                    Some("5050"),
                    None,
                ),
            ),
            ("[2001:db8::1]".into(), Err(ParseFailure::InvalidFormat)),
            (
                "[2001:db8::1]:5000".into(),
                Err(ParseFailure::InvalidFormat),
            ),
            ("[2001:db8::1]:tag".into(), Err(ParseFailure::InvalidFormat)),
            (
                "[2001:db8::1]/repo".into(),
                ok("[2001:db8::1]", "[2001:db8::1]/repo", None, None),
            ),
            (
                "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
                ok(
                    "[2001:db8:1:2:3:4:5:6]",
                    "[2001:db8:1:2:3:4:5:6]/repo",
                    Some("tag"),
                    None,
                ),
            ),
            (
                "[2001:db8::1]:5000/repo".into(),
                ok("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", None, None),
            ),
            (
                "[2001:db8::1]:5000/repo:tag".into(),
                ok(
                    "[2001:db8::1]:5000",
                    "[2001:db8::1]:5000/repo",
                    Some("tag"),
                    None,
                ),
            ),
            (
                format!("[2001:db8::1]:5000/repo@{sha_f}"),
                ok(
                    "[2001:db8::1]:5000",
                    "[2001:db8::1]:5000/repo",
                    None,
                    Some(&sha_f),
                ),
            ),
            (
                format!("[2001:db8::1]:5000/repo:tag@{sha_f}"),
                ok(
                    "[2001:db8::1]:5000",
                    "[2001:db8::1]:5000/repo",
                    Some("tag"),
                    Some(&sha_f),
                ),
            ),
            (
                "[2001:db8::]:5000/repo".into(),
                ok("[2001:db8::]:5000", "[2001:db8::]:5000/repo", None, None),
            ),
            (
                "[::1]:5000/repo".into(),
                ok("[::1]:5000", "[::1]:5000/repo", None, None),
            ),
            (
                "[fe80::1%eth0]:5000/repo".into(),
                Err(ParseFailure::InvalidFormat),
            ),
            (
                "[fe80::1%@invalidzone]:5000/repo".into(),
                Err(ParseFailure::InvalidFormat),
            ),
            (
                format!("example.com/{}:tag", "a".repeat(255)),
                ok(
                    "example.com",
                    &format!("example.com/{}", "a".repeat(255)),
                    Some("tag"),
                    None,
                ),
            ),
        ];
        for (input, want) in cases {
            let got = parse_parts(&input).map(|p| {
                let name = if p.domain.is_empty() {
                    p.path.to_string()
                } else {
                    format!("{}/{}", p.domain, p.path)
                };
                (
                    p.domain.to_string(),
                    name,
                    p.tag.map(String::from),
                    p.digest.map(String::from),
                )
            });
            let want = want.map(|(d, n, t, g)| (d.to_string(), n, t, g));
            assert_eq!(got, want, "input {input:?}");
        }
    }

    /// normalize_test.go TestValidateReferenceName and TestValidateRemoteName.
    #[test]
    fn valid_and_invalid_names_match_upstream() {
        let valid = [
            "docker/docker",
            "library/debian",
            "debian",
            "localhost/library/debian",
            "localhost/debian",
            "LOCALDOMAIN/library/debian",
            "LOCALDOMAIN/debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ];
        for name in valid {
            parse(name);
        }
        let long_namespace = "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_"
            .repeat(4)
            + "/docker";
        let invalid = [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            long_namespace.as_str(),
        ];
        for name in invalid {
            parse_err(name);
        }
    }

    /// normalize_test.go TestParseRepositoryInfo: every spelling of a name normalizes to
    /// the same full name, familiar name, domain and path.
    #[test]
    fn repository_info_matches_upstream() {
        // (path, familiar, full, ambiguous spelling or "", domain)
        let cases = [
            ("fooo", "localhost/fooo", "localhost/fooo", "", "localhost"),
            (
                "fooo/bar",
                "localhost/fooo/bar",
                "localhost/fooo/bar",
                "",
                "localhost",
            ),
            (
                "fooo",
                "LOCALDOMAIN/fooo",
                "LOCALDOMAIN/fooo",
                "",
                "LOCALDOMAIN",
            ),
            (
                "fooo/bar",
                "LOCALDOMAIN/fooo/bar",
                "LOCALDOMAIN/fooo/bar",
                "",
                "LOCALDOMAIN",
            ),
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebase",
                "example.com/privatebase",
                "example.com/privatebase",
                "",
                "example.com",
            ),
            (
                "private/moonbase",
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                "",
                "example.com:8000",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
            ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
        ];
        for (path, familiar, full, ambiguous, domain) in cases {
            let mut spellings = vec![familiar, full];
            if !ambiguous.is_empty() {
                spellings.push(ambiguous);
            }
            for s in spellings {
                let r = parse(s);
                assert_eq!(r.name(), full, "name of {s:?}");
                assert_eq!(r.domain(), domain, "domain of {s:?}");
                assert_eq!(r.path(), path, "path of {s:?}");
                assert_eq!(
                    r.familiar(),
                    format!("{familiar}:latest"),
                    "familiar of {s:?}"
                );
                assert_eq!(r.tag(), Some("latest"));
                assert_eq!(r.digest(), None);
            }
        }
    }

    /// normalize_test.go TestNormalizedSplitHostname.
    #[test]
    fn domain_split_matches_upstream() {
        let cases = [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "docker.io", "test_com/foo"),
            ("docker/migrator", "docker.io", "docker/migrator"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("foo", "docker.io", "library/foo"),
            ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ];
        for (input, domain, path) in cases {
            let r = parse(input);
            assert_eq!((r.domain(), r.path()), (domain, path), "input {input:?}");
        }
    }

    /// normalize_test.go TestParseDockerRef, plus the cases berth relies on.
    #[test]
    fn normalized_forms() {
        let digest = format!("sha256:{HEX_A}");
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:latest".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                format!("busybox@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
            (
                "library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/busybox:latest".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "library/busybox:latest".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/library/busybox:latest".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "gcr.io/library/busybox".into(),
                "gcr.io/library/busybox:latest".into(),
            ),
            (
                format!("gcr.io/library/busybox:latest@{digest}"),
                format!("gcr.io/library/busybox@{digest}"),
            ),
            ("localhost/foo".into(), "localhost/foo:latest".into()),
            (
                "localhost:5000/foo:tag".into(),
                "localhost:5000/foo:tag".into(),
            ),
            (
                "registry.k8s.io/pause:3.10".into(),
                "registry.k8s.io/pause:3.10".into(),
            ),
            ("gcr.io/a/b/c:d".into(), "gcr.io/a/b/c:d".into()),
            ("[::1]:5000/x".into(), "[::1]:5000/x:latest".into()),
            // A lone "localhost" or host:port is a Docker Hub name with a tag, as upstream.
            (
                "localhost:5000".into(),
                "docker.io/library/localhost:5000".into(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input).normalized(), want, "input {input:?}");
        }
    }

    #[test]
    fn accessors_and_string_forms() {
        let r = parse("busybox");
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.path(), "library/busybox");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(
            r.tagged_string().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(r.digested_string(), None);
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");

        let r = parse("localhost:5000/x:1");
        assert_eq!(r.familiar(), "localhost:5000/x:1");
        assert_eq!(r.to_string(), "localhost:5000/x:1");

        let r = parse("[::1]:5000/x");
        assert_eq!((r.domain(), r.path()), ("[::1]:5000", "x"));

        let digest = format!("sha256:{HEX_A}");
        let r = parse(&format!("foo@{digest}"));
        assert_eq!(r.tag(), None, "a digest suppresses the default tag");
        assert_eq!(r.digest(), Some(digest.as_str()));
        assert_eq!(r.tagged_string(), None);
        assert_eq!(
            r.digested_string(),
            Some(format!("docker.io/library/foo@{digest}"))
        );
        assert_eq!(r.familiar(), format!("foo@{digest}"));

        let with = parse("registry.k8s.io/pause:3.10").with_digest(&digest);
        assert_eq!(with.tag(), None);
        assert_eq!(with.to_string(), format!("registry.k8s.io/pause@{digest}"));
    }

    /// normalize_test.go TestParseReferenceWithTagAndDigest: both are kept.
    #[test]
    fn tag_and_digest_are_both_kept() {
        let short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
        let r = parse(short);
        assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(r.familiar(), short);
        assert_eq!(r.tag(), Some("latest"));
        assert!(r.digest().is_some());
        assert_eq!(
            r.normalized(),
            "docker.io/library/busybox@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
        );

        let r = parse(&format!("foo:tag@sha256:{HEX_F}"));
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.digest(), Some(format!("sha256:{HEX_F}").as_str()));
        assert_eq!(
            r.tagged_string(),
            Some("docker.io/library/foo:tag".to_string())
        );
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        assert_eq!(
            parse_err("Foo/Bar").to_string(),
            r#"invalid reference "Foo/Bar": repository name must be lowercase"#
        );
        assert!(matches!(
            parse_err("docker/Docker"),
            ReferenceError::Uppercase { .. }
        ));
        assert!(matches!(
            parse_err("Uppercase:tag"),
            ReferenceError::Uppercase { .. }
        ));
        assert_eq!(parse_err(""), ReferenceError::Empty);
        assert!(parse_err("").to_string().contains("\"\""));
        for bad in [
            ":tag",
            "foo/",
            "a//b",
            "/foo",
            "foo:",
            "foo@",
            "foo@sha256:",
            "foo bar",
        ] {
            let err = parse_err(bad);
            assert_eq!(
                err,
                ReferenceError::InvalidFormat {
                    reference: bad.to_string()
                },
                "input {bad:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        // An underscore makes "my_reg.local" invalid as a domain; upstream would return a
        // reference with no domain.
        assert!(matches!(
            parse_err("my_reg.local/app"),
            ReferenceError::InvalidFormat { .. }
        ));
    }

    #[test]
    fn bad_digests_are_rejected() {
        let short = format!("foo@sha256:{}", &HEX_F[..63]);
        assert!(matches!(
            parse_err(&short),
            ReferenceError::InvalidDigest {
                problem: DigestProblem::InvalidLength {
                    expected: 64,
                    actual: 63,
                    ..
                },
                ..
            }
        ));
        let long = format!("foo@sha256:{HEX_F}f");
        assert!(matches!(
            parse_err(&long),
            ReferenceError::InvalidDigest {
                problem: DigestProblem::InvalidLength {
                    expected: 64,
                    actual: 65,
                    ..
                },
                ..
            }
        ));
        let upper = format!("foo@sha256:{}", HEX_F.to_uppercase());
        assert!(matches!(
            parse_err(&upper),
            ReferenceError::InvalidDigest {
                problem: DigestProblem::InvalidEncoding,
                ..
            }
        ));
        let sha512_short = format!("foo@sha512:{HEX_F}");
        assert!(matches!(
            parse_err(&sha512_short),
            ReferenceError::InvalidDigest {
                problem: DigestProblem::InvalidLength { expected: 128, .. },
                ..
            }
        ));
        let sha512 = format!("foo@sha512:{HEX_F}{HEX_F}");
        assert_eq!(parse(&sha512).digest(), Some(&sha512[4..]));
        let md5 = format!("foo@md5:{}", &HEX_F[..32]);
        assert!(matches!(
            parse_err(&md5),
            ReferenceError::InvalidDigest {
                problem: DigestProblem::UnsupportedAlgorithm(_),
                ..
            }
        ));
        // Fewer than 32 hex digits fails the grammar itself.
        assert!(matches!(
            parse_err("foo@sha256:abc"),
            ReferenceError::InvalidFormat { .. }
        ));
    }

    #[test]
    fn length_limits() {
        // The path may be 255 characters, including the implicit "library/".
        let max = "a".repeat(255 - OFFICIAL_REPO_PREFIX.len());
        assert_eq!(parse(&max).path().len(), 255);
        let over = "a".repeat(256 - OFFICIAL_REPO_PREFIX.len());
        assert!(matches!(
            parse_err(&over),
            ReferenceError::NameTooLong { .. }
        ));
        assert!(matches!(
            parse_err(&format!("example.com/{}", "a".repeat(256))),
            ReferenceError::NameTooLong { .. }
        ));
        // Upstream limits the path, not domain + path.
        let r = parse(&format!("example.com/{}:tag", "a".repeat(255)));
        assert_eq!(r.path().len(), 255);

        let tag128 = format!("foo:{}", "t".repeat(128));
        assert_eq!(parse(&tag128).tag().map(str::len), Some(128));
        let tag129 = format!("foo:{}", "t".repeat(129));
        assert!(matches!(
            parse_err(&tag129),
            ReferenceError::InvalidFormat { .. }
        ));
        assert!(matches!(
            parse_err("foo:-bad"),
            ReferenceError::InvalidFormat { .. }
        ));
        assert!(matches!(
            parse_err("foo:.bad"),
            ReferenceError::InvalidFormat { .. }
        ));
        assert_eq!(parse("foo:_ok.v1-2").tag(), Some("_ok.v1-2"));
    }

    #[test]
    fn hex_ids() {
        let id = HEX_A;
        assert!(is_image_id(id));
        assert!(is_image_id(&format!("sha256:{id}")));
        assert!(!is_image_id(&id[..63]));
        assert!(!is_image_id(&format!("{id}0")));
        assert!(!is_image_id(&id.to_uppercase()));
        assert!(!is_image_id(&format!("sha512:{id}")));
        assert!(!is_image_id("busybox"));
        assert!(!is_image_id(""));

        assert_eq!(
            parse_err(id),
            ReferenceError::ImageId {
                reference: id.to_string()
            }
        );
        assert!(parse_err(id).to_string().contains(id));
        // 63 hex digits, or a domain in front, make it an ordinary name (upstream cases).
        assert_eq!(parse(&id[..63]).path(), format!("library/{}", &id[..63]));
        assert_eq!(
            parse(&format!("docker.io/{id}")).path(),
            format!("library/{id}")
        );
        // "sha256:<hex>" parses as repository library/sha256 with a tag, as upstream.
        let r = parse(&format!("sha256:{id}"));
        assert_eq!((r.path(), r.tag()), ("library/sha256", Some(id)));
    }

    #[test]
    fn domain_and_port_validation() {
        for ok in [
            "localhost",
            "localhost:5000",
            "registry.k8s.io",
            "127.0.0.1:5001",
            "[::1]",
            "[::1]:5000",
            "a-b.C9",
        ] {
            assert!(is_domain_and_port(ok), "{ok:?}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a:",
            "a:x",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "a/b",
            "a_b.c",
            "[fe80::1%eth0]",
        ] {
            assert!(!is_domain_and_port(bad), "{bad:?}");
        }
    }

    /// No input may panic: odd bytes, multibyte characters next to separators, and
    /// truncations of valid references at every char boundary.
    #[test]
    fn never_panics() {
        let mut inputs: Vec<String> = [
            "",
            ":",
            "@",
            "/",
            "//",
            "::",
            "@@",
            "[",
            "]",
            "[]",
            "[:]",
            "[::1]",
            "[::1]:",
            "a@b@c",
            "a:b:c",
            "a/b:c/d",
            "é",
            "é/é",
            "a/é:é@é",
            "ſ",
            "K/a",
            "\u{212A}/a",
            "\0",
            "a\0b",
            "a\nb",
            ".",
            "..",
            "-",
            "_",
            "a.",
            ".a",
            "a:-",
            "@sha256:",
            "localhost",
            "localhost/",
            "index.docker.io/",
            "docker.io/",
            "sha256:",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let full = format!("[2001:db8::1]:5000/ns/repo_x-y.z:v1.0@sha256:{HEX_A}");
        for (i, _) in full.char_indices() {
            inputs.push(full[..i].to_string());
            inputs.push(full[i..].to_string());
        }
        let unicode = "réé.example.com:5000/ñ/x:é@sha256:é";
        for (i, _) in unicode.char_indices() {
            inputs.push(unicode[..i].to_string());
            inputs.push(unicode[i..].to_string());
        }
        inputs.push("a/".repeat(10_000));
        inputs.push(":".repeat(10_000));
        for s in &inputs {
            let _ = Reference::parse_normalized(s);
            let _ = is_image_id(s);
            let _ = is_domain_and_port(s);
        }
    }
}
