//! Registry configuration in the containers-registries.conf(5) version 2 format, the file
//! CRI-O, podman and skopeo read, so one file can steer them all. It says, per image-name
//! prefix, which physical location serves a name, which mirrors to try first, whether a
//! registry is reached over plain HTTP, and whether pulls are blocked.
//!
//! Parsing, validation and matching follow containers/image `pkg/sysregistriesv2`. Where
//! berth differs, the code says so: duplicate prefixes are an error (upstream silently keeps
//! the first), an exact prefix beats a wildcard of the same length (upstream lets sort order
//! decide), the version 1 format is refused rather than converted, and drop-in directories
//! (`registries.conf.d`) and short-name aliases are not read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::reference::{Reference, is_domain_and_port};

/// The domain normalized names use for Docker Hub.
const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API (containers/image's
/// `dockerRegistry`); `docker.io` itself only redirects.
const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// Where [`RegistriesConfig::parse`] says an error came from, having no file name.
const INLINE_ORIGIN: &str = "(inline text)";

/// A validated registries configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConfig {
    unqualified_search_registries: Vec<String>,
    /// Sorted by prefix, as upstream keeps them, so that equal-length matches resolve the
    /// same way whatever the order in the file.
    registries: Vec<Registry>,
}

/// One `[[registry]]` table after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registry {
    /// Never empty: defaults to `location`.
    prefix: String,
    /// Empty only for a `*.domain` wildcard prefix, meaning "no rewrite".
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
}

/// One `[[registry.mirror]]` table after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFromMirror,
}

/// A mirror's `pull-from-mirror` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFromMirror {
    /// Used for tag and digest pulls (the default).
    All,
    /// Used only when the reference has a digest, since a mirror's tags may lag.
    DigestOnly,
    /// Used only for tag pulls.
    TagOnly,
}

/// A place to try pulling an image from, with the repository path to ask it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` for the URL: `localhost:5000`, `registry-1.docker.io`, `[::1]:5000`.
    pub host: String,
    /// The repository on that host after the prefix rewrite: `library/busybox`, or
    /// `mirror/library/busybox` for a location of `localhost:5000/mirror`.
    pub repository: String,
    /// Talk to this endpoint over plain HTTP (no TLS at all). The config file's `insecure`
    /// also allows unverified TLS in containers/image; berth uses plain HTTP for such
    /// endpoints, which is what a local registry on `localhost:5000` needs.
    pub insecure: bool,
    /// This is a mirror, not the primary location; errors from it are not final.
    pub mirror: bool,
}

/// Why a registries configuration could not be loaded, or a pull is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read registries config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("registries config {origin}: invalid TOML: {message}")]
    Syntax {
        /// The file path, or `(inline text)`.
        origin: String,
        /// The TOML parser's description, with line and column.
        message: String,
    },
    /// The TOML is well formed but breaks a rule of containers-registries.conf(5).
    #[error("registries config {origin}: {message}")]
    Invalid {
        /// The file path, or `(inline text)`.
        origin: String,
        /// What is wrong, naming the offending table, key, prefix or location.
        message: String,
    },
    /// Two `[[registry]]` tables have the same prefix, so one would be silently unused.
    #[error("registries config {origin}: prefix {prefix:?} is configured more than once")]
    DuplicatePrefix {
        /// The file path, or `(inline text)`.
        origin: String,
        /// The repeated prefix (after defaulting to the location).
        prefix: String,
    },
    /// The configuration blocks pulling this reference.
    #[error(
        "pulling {reference:?} is blocked by the registries config entry for prefix {prefix:?}"
    )]
    Blocked {
        /// The reference being pulled.
        reference: String,
        /// The prefix of the `[[registry]]` table that blocks it.
        prefix: String,
    },
    /// Rewriting the reference for a location did not give a valid reference, which means
    /// the location is malformed (for example it has no registry host).
    #[error(
        "cannot pull {reference:?} from location {location:?} (registries config prefix {prefix:?}): {reason}"
    )]
    Rewrite {
        /// The reference being pulled.
        reference: String,
        /// The prefix of the matched `[[registry]]` table.
        prefix: String,
        /// The location (primary or mirror) that could not be used.
        location: String,
        /// Why the rewritten name is not valid.
        reason: String,
    },
}

impl RegistriesConfig {
    /// A configuration with no entries: every image is pulled directly from its own
    /// registry over HTTPS.
    pub fn empty() -> RegistriesConfig {
        RegistriesConfig::default()
    }

    /// Reads and validates the file at `path`. A missing file is an error naming the path;
    /// callers that treat a missing file as "no configuration" use [`Self::empty`].
    pub fn load(path: &Path) -> Result<RegistriesConfig, RegistriesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistriesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_origin(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<RegistriesConfig, RegistriesError> {
        Self::parse_with_origin(text, INLINE_ORIGIN)
    }

    /// The `unqualified-search-registries` list, `host[:port]` entries in file order. berth
    /// does not resolve short names through it: kubelet always sends normalized names.
    pub fn unqualified_search_registries(&self) -> &[String] {
        &self.unqualified_search_registries
    }

    /// The endpoints to try, in order, to pull `reference`: the mirrors the matched
    /// `[[registry]]` table allows for this kind of reference (digest or tag), then its
    /// primary location. With no matching table, the reference's own registry over HTTPS,
    /// with Docker Hub reached at `registry-1.docker.io`.
    ///
    /// Fails with [`RegistriesError::Blocked`] when the matched table is blocked, or when
    /// every endpoint's rewritten name falls under a blocked table.
    pub fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, RegistriesError> {
        let name = reference.name();
        let Some(registry) = self.find_registry(&name) else {
            return Ok(vec![Endpoint {
                host: api_host(reference.domain()),
                repository: reference.path().to_string(),
                insecure: false,
                mirror: false,
            }]);
        };
        let blocked = |prefix: &str| RegistriesError::Blocked {
            reference: reference.to_string(),
            prefix: prefix.to_string(),
        };
        if registry.blocked {
            return Err(blocked(&registry.prefix));
        }

        let digested = reference.digest().is_some();
        let mut candidates: Vec<(&str, bool, bool)> = Vec::new();
        for mirror in &registry.mirrors {
            let allowed = if registry.mirror_by_digest_only {
                digested
            } else {
                match mirror.pull_from {
                    PullFromMirror::All => true,
                    PullFromMirror::DigestOnly => digested,
                    PullFromMirror::TagOnly => !digested,
                }
            };
            if allowed {
                candidates.push((&mirror.location, mirror.insecure, true));
            }
        }
        candidates.push((&registry.location, registry.insecure, false));

        let mut endpoints = Vec::with_capacity(candidates.len());
        let mut blocked_by = None;
        for (location, insecure, mirror) in candidates {
            let (domain, repository) = rewrite(reference, &name, registry, location)?;
            // containers/image looks the physical name up again when it connects and
            // refuses a blocked one; skipping it here lets the remaining endpoints be tried.
            let physical = format!("{domain}/{repository}");
            if let Some(other) = self.find_registry(&physical)
                && other.blocked
            {
                blocked_by.get_or_insert(other.prefix.as_str());
                continue;
            }
            endpoints.push(Endpoint {
                host: api_host(&domain),
                repository,
                insecure,
                mirror,
            });
        }
        match (endpoints.is_empty(), blocked_by) {
            (true, Some(prefix)) => Err(blocked(prefix)),
            _ => Ok(endpoints),
        }
    }

    /// The table whose prefix is the longest match for `name` (`domain/path`), as
    /// upstream's `FindRegistry`, which also matches on the name without tag or digest.
    fn find_registry(&self, name: &str) -> Option<&Registry> {
        let mut best: Option<&Registry> = None;
        for registry in &self.registries {
            if ref_matching_prefix(name, &registry.prefix).is_none() {
                continue;
            }
            let better = match best {
                None => true,
                Some(current) => {
                    let (len, current_len) = (registry.prefix.len(), current.prefix.len());
                    // Upstream compares lengths only, so "*.b.io" would beat "a.b.io" by
                    // sorting first; the exact prefix is the more specific one.
                    len > current_len
                        || (len == current_len
                            && is_wildcard(&current.prefix)
                            && !is_wildcard(&registry.prefix))
                }
            };
            if better {
                best = Some(registry);
            }
        }
        best
    }

    fn parse_with_origin(text: &str, origin: &str) -> Result<RegistriesConfig, RegistriesError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| RegistriesError::Syntax {
                    origin: origin.to_string(),
                    message: e.to_string().trim_end().to_string(),
                })?;
        let ctx = Ctx { origin };
        let mut search = Vec::new();
        let mut registries = Vec::new();
        for (key, value) in &table {
            match key.as_str() {
                "unqualified-search-registries" => {
                    search = ctx.string_array(key, value)?;
                }
                "registry" => {
                    let Some(items) = value.as_array() else {
                        return Err(ctx.invalid(format!(
                            "\"registry\" must be an array of tables ([[registry]]), found {}",
                            value.type_str()
                        )));
                    };
                    for (i, item) in items.iter().enumerate() {
                        registries.push(ctx.registry(i, item)?);
                    }
                }
                // Known upstream settings berth has no use for: short names are resolved
                // by kubelet, and credentials come from the CRI request.
                "aliases"
                | "short-name-mode"
                | "credential-helpers"
                | "additional-layer-store-auth-helper" => {
                    tracing::debug!(origin, key = %key, "ignoring registries config setting berth does not use");
                }
                "registries" => {
                    return Err(ctx.invalid(
                        "the version 1 format ([registries.search], [registries.insecure], \
                         [registries.block]) is not supported; use [[registry]] tables"
                            .to_string(),
                    ));
                }
                _ => ctx.warn_unknown(key),
            }
        }
        ctx.check_conflicts(&registries)?;
        let unqualified_search_registries = search
            .into_iter()
            .map(|entry| {
                let host = ctx.location(&entry)?;
                if !is_domain_and_port(&host) {
                    return Err(ctx.invalid(format!(
                        "invalid unqualified-search-registries entry {entry:?}: must be host[:port]"
                    )));
                }
                Ok(host)
            })
            .collect::<Result<Vec<_>, _>>()?;

        registries.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        if let Some(pair) = registries.windows(2).find(|w| w[0].prefix == w[1].prefix) {
            return Err(RegistriesError::DuplicatePrefix {
                origin: origin.to_string(),
                prefix: pair[0].prefix.clone(),
            });
        }
        Ok(RegistriesConfig {
            unqualified_search_registries,
            registries,
        })
    }
}

/// Validation context: where the text came from, for every error and warning.
struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, message: String) -> RegistriesError {
        RegistriesError::Invalid {
            origin: self.origin.to_string(),
            message,
        }
    }

    fn warn_unknown(&self, key: &str) {
        tracing::warn!(
            origin = self.origin,
            key,
            "ignoring unknown key in registries config"
        );
    }

    /// One `[[registry]]` table, validated as upstream's `postProcessRegistries` does.
    fn registry(&self, index: usize, value: &toml::Value) -> Result<Registry, RegistriesError> {
        let label = format!("[[registry]] #{}", index + 1);
        let table = self.table(&label, value)?;
        let mut prefix = String::new();
        let mut location = String::new();
        let mut insecure = false;
        let mut blocked = false;
        let mut mirror_by_digest_only = false;
        let mut pull_from_mirror = String::new();
        let mut mirror_values: &[toml::Value] = &[];
        for (key, value) in table {
            match key.as_str() {
                "prefix" => prefix = self.string(&label, key, value)?,
                "location" => location = self.string(&label, key, value)?,
                "insecure" => insecure = self.boolean(&label, key, value)?,
                "blocked" => blocked = self.boolean(&label, key, value)?,
                "mirror-by-digest-only" => {
                    mirror_by_digest_only = self.boolean(&label, key, value)?
                }
                "pull-from-mirror" => pull_from_mirror = self.string(&label, key, value)?,
                "mirror" => {
                    mirror_values = value.as_array().map(Vec::as_slice).ok_or_else(|| {
                        self.invalid(format!(
                            "{label}: \"mirror\" must be an array of tables ([[registry.mirror]]), found {}",
                            value.type_str()
                        ))
                    })?;
                }
                _ => self.warn_unknown(&format!("{label}.{key}")),
            }
        }

        let location = self.location(&location)?;
        // An empty prefix counts as unset, as upstream.
        let prefix = if prefix.is_empty() {
            if location.is_empty() {
                return Err(self.invalid(format!("{label}: both location and prefix are unset")));
            }
            location.clone()
        } else {
            let prefix = self.location(&prefix)?;
            if is_wildcard(&prefix) {
                if prefix.contains(['/', '@', ':']) {
                    return Err(self.invalid(format!(
                        "{label}: wildcard prefix {prefix:?} must be in the format *.example.com"
                    )));
                }
            } else if location.is_empty() {
                return Err(self.invalid(format!(
                    "{label} (prefix {prefix:?}): location is unset and the prefix is not in the format *.example.com"
                )));
            }
            prefix
        };
        if !pull_from_mirror.is_empty() {
            return Err(self.invalid(format!(
                "pull-from-mirror must not be set for a non-mirror registry {prefix:?}"
            )));
        }

        let mut mirrors = Vec::with_capacity(mirror_values.len());
        for (i, value) in mirror_values.iter().enumerate() {
            let label = format!("{label} (prefix {prefix:?}) mirror #{}", i + 1);
            mirrors.push(self.mirror(&label, &prefix, mirror_by_digest_only, value)?);
        }
        Ok(Registry {
            prefix,
            location,
            insecure,
            blocked,
            mirror_by_digest_only,
            mirrors,
        })
    }

    fn mirror(
        &self,
        label: &str,
        prefix: &str,
        mirror_by_digest_only: bool,
        value: &toml::Value,
    ) -> Result<Mirror, RegistriesError> {
        let table = self.table(label, value)?;
        let mut location = String::new();
        let mut insecure = false;
        let mut pull_from = String::new();
        for (key, value) in table {
            match key.as_str() {
                "location" => location = self.string(label, key, value)?,
                "insecure" => insecure = self.boolean(label, key, value)?,
                "pull-from-mirror" => pull_from = self.string(label, key, value)?,
                _ => self.warn_unknown(&format!("{label}.{key}")),
            }
        }
        let location = self.location(&location)?;
        if location.is_empty() {
            return Err(self.invalid(format!("{label}: mirror location is unset")));
        }
        if mirror_by_digest_only && !pull_from.is_empty() {
            return Err(self.invalid(format!(
                "cannot set mirror usage mirror-by-digest-only for the registry ({prefix:?}) \
                 and pull-from-mirror for per-mirror ({location:?}) at the same time"
            )));
        }
        let pull_from = match pull_from.as_str() {
            "" | "all" => PullFromMirror::All,
            "digest-only" => PullFromMirror::DigestOnly,
            "tag-only" => PullFromMirror::TagOnly,
            other => {
                return Err(self.invalid(format!(
                    "unsupported pull-from-mirror value {other:?} for mirror {location:?} \
                     (expected \"all\", \"digest-only\" or \"tag-only\")"
                )));
            }
        };
        Ok(Mirror {
            location,
            insecure,
            pull_from,
        })
    }

    /// Upstream's `parseLocation`: trailing slashes are dropped, URL schemes refused
    /// (a scheme would otherwise end up inside the rewritten image name).
    fn location(&self, input: &str) -> Result<String, RegistriesError> {
        let trimmed = input.trim_end_matches('/');
        if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
            return Err(self.invalid(format!(
                "invalid location {input:?}: URI schemes are not supported"
            )));
        }
        Ok(trimmed.to_string())
    }

    /// Upstream refuses a location listed twice with different `insecure` or `blocked`
    /// settings, since a connection to it cannot be both.
    fn check_conflicts(&self, registries: &[Registry]) -> Result<(), RegistriesError> {
        let mut seen: HashMap<&str, &Registry> = HashMap::new();
        for registry in registries {
            let key = if registry.location.is_empty() {
                registry.prefix.as_str()
            } else {
                registry.location.as_str()
            };
            let Some(first) = seen.get(key) else {
                seen.insert(key, registry);
                continue;
            };
            for (setting, differs) in [
                ("insecure", first.insecure != registry.insecure),
                ("blocked", first.blocked != registry.blocked),
            ] {
                if differs {
                    return Err(self.invalid(format!(
                        "registry {key:?} is defined multiple times with conflicting {setting:?} setting"
                    )));
                }
            }
        }
        Ok(())
    }

    fn table<'v>(
        &self,
        label: &str,
        value: &'v toml::Value,
    ) -> Result<&'v toml::Table, RegistriesError> {
        value.as_table().ok_or_else(|| {
            self.invalid(format!(
                "{label}: expected a table, found {}",
                value.type_str()
            ))
        })
    }

    fn string(
        &self,
        label: &str,
        key: &str,
        value: &toml::Value,
    ) -> Result<String, RegistriesError> {
        value.as_str().map(str::to_string).ok_or_else(|| {
            self.invalid(format!(
                "{label}: {key:?} must be a string, found {}",
                value.type_str()
            ))
        })
    }

    fn boolean(
        &self,
        label: &str,
        key: &str,
        value: &toml::Value,
    ) -> Result<bool, RegistriesError> {
        value.as_bool().ok_or_else(|| {
            self.invalid(format!(
                "{label}: {key:?} must be a boolean, found {}",
                value.type_str()
            ))
        })
    }

    fn string_array(&self, key: &str, value: &toml::Value) -> Result<Vec<String>, RegistriesError> {
        let wrong = || self.invalid(format!("{key:?} must be an array of strings"));
        value
            .as_array()
            .ok_or_else(wrong)?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(wrong))
            .collect()
    }
}

fn is_wildcard(prefix: &str) -> bool {
    prefix.starts_with("*.")
}

/// The host to send registry API requests to for a reference domain.
fn api_host(domain: &str) -> String {
    if domain == DOCKER_HUB_DOMAIN {
        DOCKER_HUB_REGISTRY.to_string()
    } else {
        domain.to_string()
    }
}

/// Upstream's `refMatchingPrefix`: the length of `name` that `prefix` covers, if it
/// matches. A plain prefix must be followed by the end, `/`, `:` or `@` (so `example.com/foo`
/// does not match `example.com/foobar`, and, as upstream notes, `example.com` does match
/// `example.com:5000/...`).
fn ref_matching_prefix(name: &str, prefix: &str) -> Option<usize> {
    if is_wildcard(prefix) {
        return ref_matching_subdomain_prefix(name, prefix);
    }
    let rest = name.strip_prefix(prefix)?;
    match rest.bytes().next() {
        None | Some(b':' | b'/' | b'@') => Some(prefix.len()),
        Some(_) => None,
    }
}

/// Upstream's `refMatchingSubdomainPrefix` for `*.example.com`: the first occurrence of
/// `.example.com` must lie in the domain (no `/` before it) and end it, or end at a port.
fn ref_matching_subdomain_prefix(name: &str, prefix: &str) -> Option<usize> {
    let suffix = prefix.get(1..)?;
    let index = name.find(suffix)?;
    if name[..index].contains('/') {
        return None;
    }
    let end = index + suffix.len();
    match name.as_bytes().get(end) {
        None | Some(b':' | b'/' | b'@') => Some(end),
        Some(_) => None,
    }
}

/// Upstream's `rewriteReference`, applied to the name: replaces the part of `name` the
/// table's prefix matched with `location` and checks that the result is a canonical name.
/// Returns the rewritten domain and repository path.
fn rewrite(
    reference: &Reference,
    name: &str,
    registry: &Registry,
    location: &str,
) -> Result<(String, String), RegistriesError> {
    let error = |reason: String| RegistriesError::Rewrite {
        reference: reference.to_string(),
        prefix: registry.prefix.clone(),
        location: location.to_string(),
        reason,
    };
    if location.is_empty() {
        // Only wildcard tables may omit the location: settings apply, the name is kept.
        return Ok((reference.domain().to_string(), reference.path().to_string()));
    }
    let matched = ref_matching_prefix(name, &registry.prefix)
        .ok_or_else(|| error(format!("prefix does not match {name:?}")))?;
    let rest = name.get(matched..).unwrap_or_default();
    let rewritten = format!("{location}{rest}");
    match Reference::parse_normalized(&rewritten) {
        Ok(parsed) if parsed.name() == rewritten => {
            Ok((parsed.domain().to_string(), parsed.path().to_string()))
        }
        Ok(parsed) => Err(error(format!(
            "the rewritten name {rewritten:?} is not fully qualified (it would mean {:?}); \
             a location must start with a registry host",
            parsed.name()
        ))),
        Err(e) => Err(error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn config(text: &str) -> RegistriesConfig {
        match RegistriesConfig::parse(text) {
            Ok(c) => c,
            Err(e) => panic!("config should parse: {e}\n{text}"),
        }
    }

    fn config_err(text: &str) -> RegistriesError {
        match RegistriesConfig::parse(text) {
            Ok(c) => panic!("config should be rejected, got {c:?}\n{text}"),
            Err(e) => e,
        }
    }

    fn reference(s: &str) -> Reference {
        match Reference::parse_normalized(s) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn endpoints(config: &RegistriesConfig, image: &str) -> Vec<Endpoint> {
        match config.endpoints(&reference(image)) {
            Ok(e) => e,
            Err(e) => panic!("endpoints for {image}: {e}"),
        }
    }

    /// (host, repository, insecure, mirror) of each endpoint, for compact assertions.
    fn summary(config: &RegistriesConfig, image: &str) -> Vec<(String, String, bool, bool)> {
        endpoints(config, image)
            .into_iter()
            .map(|e| (e.host, e.repository, e.insecure, e.mirror))
            .collect()
    }

    fn ep(
        host: &str,
        repository: &str,
        insecure: bool,
        mirror: bool,
    ) -> (String, String, bool, bool) {
        (host.to_string(), repository.to_string(), insecure, mirror)
    }

    /// The configuration /work/shared/critest-images/README.md tells operators to use.
    #[test]
    fn critest_fixture_config_maps_to_local_plain_http_registry() {
        let c = config(
            r#"
[[registry]]
prefix = "registry.k8s.io"
location = "localhost:5000"
insecure = true
[[registry]]
prefix = "gcr.io"
location = "localhost:5000"
insecure = true
[[registry]]
prefix = "k8s.gcr.io"
location = "localhost:5000"
insecure = true
"#,
        );
        assert_eq!(
            summary(&c, "registry.k8s.io/pause:3.10"),
            vec![ep("localhost:5000", "pause", true, false)]
        );
        assert_eq!(
            summary(
                &c,
                &format!("gcr.io/k8s-staging-cri-tools/test-image-digest@{DIGEST}")
            ),
            vec![ep(
                "localhost:5000",
                "k8s-staging-cri-tools/test-image-digest",
                true,
                false
            )]
        );
        assert_eq!(
            summary(&c, "k8s.gcr.io/e2e-test-images/busybox:1.29"),
            vec![ep("localhost:5000", "e2e-test-images/busybox", true, false)]
        );
        // Unlisted registries are untouched.
        assert_eq!(
            summary(&c, "quay.io/x/y"),
            vec![ep("quay.io", "x/y", false, false)]
        );
    }

    #[test]
    fn docker_hub_prefix_maps_official_images() {
        let c = config(
            r#"
[[registry]]
prefix = "docker.io"
location = "127.0.0.1:5001"
"#,
        );
        assert_eq!(
            summary(&c, "busybox"),
            vec![ep("127.0.0.1:5001", "library/busybox", false, false)]
        );
        assert_eq!(
            summary(&c, "someone/app:1"),
            vec![ep("127.0.0.1:5001", "someone/app", false, false)]
        );
    }

    #[test]
    fn prefix_with_path_rewrites_only_whole_components() {
        let c = config(
            r#"
[[registry]]
prefix = "example.com/foo"
location = "localhost:5000/bar"
"#,
        );
        assert_eq!(
            summary(&c, "example.com/foo/x"),
            vec![ep("localhost:5000", "bar/x", false, false)]
        );
        assert_eq!(
            summary(&c, "example.com/foo/x/y:t"),
            vec![ep("localhost:5000", "bar/x/y", false, false)]
        );
        // The prefix covers the whole name too.
        assert_eq!(
            summary(&c, "example.com/foo"),
            vec![ep("localhost:5000", "bar", false, false)]
        );
        // "foo" is not a path-component prefix of "foobar".
        assert_eq!(
            summary(&c, "example.com/foobar"),
            vec![ep("example.com", "foobar", false, false)]
        );
    }

    #[test]
    fn longest_prefix_wins_whatever_the_file_order() {
        let c = config(
            r#"
[[registry]]
prefix = "example.com/a/b"
location = "deep.local"
[[registry]]
prefix = "example.com"
location = "shallow.local"
[[registry]]
prefix = "example.com/a"
location = "middle.local"
"#,
        );
        assert_eq!(summary(&c, "example.com/a/b/c")[0].0, "deep.local");
        assert_eq!(summary(&c, "example.com/a/b/c")[0].1, "c");
        assert_eq!(summary(&c, "example.com/a/x")[0].0, "middle.local");
        assert_eq!(summary(&c, "example.com/a/x")[0].1, "x");
        assert_eq!(summary(&c, "example.com/z")[0].0, "shallow.local");
        assert_eq!(summary(&c, "example.com/z")[0].1, "z");
    }

    /// Upstream's find-registry.conf cases that a single file can express.
    #[test]
    fn wildcard_prefixes() {
        let c = config(
            r#"
[[registry]]
location = "registry.com:5000"
prefix = "simple-prefix.com"
[[registry]]
location = "subdomain-prefix.com"
prefix = "*.so.simple-prefix.com"
[[registry]]
location = "subdomain-prefix-2.com"
prefix = "*.simple-prefix.com"
[[registry]]
location = "subdomain-prefix-2.com"
prefix = "*.docker.io"
[[registry]]
location = "subdomain-prefix-4.com"
prefix = "*.bar.docker.io"
[[registry]]
location = "subdomain-prefix-3.com"
prefix = "*.bar.example.com"
[[registry]]
location = "subdomain-prefix-5.com"
prefix = "foo.bar.example.com:5000"
[[registry]]
prefix = "*.internal.registry.com"
insecure = true
"#,
        );
        let host = |image: &str| summary(&c, image)[0].0.clone();
        assert_eq!(
            host("simple-prefix.com/foo/bar:latest"),
            "registry.com:5000"
        );
        assert_eq!(host("not.so.simple-prefix.com/x"), "subdomain-prefix.com");
        assert_eq!(
            host("not.quite.simple-prefix.com/x"),
            "subdomain-prefix-2.com"
        );
        assert_eq!(
            summary(
                &c,
                "not.quite.simple-prefix.com:5000/with/path/and/beyond:tag"
            ),
            // The port follows the matched domain, so it is carried into the rewrite.
            vec![ep(
                "subdomain-prefix-2.com:5000",
                "with/path/and/beyond",
                false,
                false
            )]
        );
        assert_eq!(
            host("foo.docker.io:5000/omg/wtf/bbq:foo"),
            "subdomain-prefix-2.com:5000"
        );
        assert_eq!(
            host("foo.bar.docker.io:5000/omg/wtf/bbq:foo"),
            "subdomain-prefix-4.com:5000"
        );
        assert_eq!(
            host(&format!("foo.bar.example.com:6000/omg/wtf/bbq@{DIGEST}")),
            "subdomain-prefix-3.com:6000"
        );
        // The exact host:port prefix is longer than the wildcard.
        assert_eq!(
            host("foo.bar.example.com:5000/omg/wtf/bbq:foo"),
            "subdomain-prefix-5.com"
        );
        // A wildcard matches subdomains only, not the domain itself, nor text in the path.
        assert_eq!(host("bar.example.com/x"), "bar.example.com");
        assert_eq!(host("example.net/ns.bar.example.com/x"), "example.net");
        assert_eq!(host("simple-prefix.comx/x"), "simple-prefix.comx");
        // A wildcard without location keeps the name and applies its settings.
        assert_eq!(
            summary(&c, "abc.internal.registry.com/foo:bar"),
            vec![ep("abc.internal.registry.com", "foo", true, false)]
        );
    }

    #[test]
    fn exact_prefix_beats_wildcard_of_equal_length() {
        let c = config(
            r#"
[[registry]]
prefix = "*.b.io"
location = "wild.local"
[[registry]]
prefix = "a.b.io"
location = "exact.local"
"#,
        );
        assert_eq!(summary(&c, "a.b.io/x")[0].0, "exact.local");
        assert_eq!(summary(&c, "c.b.io/x")[0].0, "wild.local");
    }

    #[test]
    fn blocked_registries() {
        let c = config(
            r#"
[[registry]]
location = "blocked.example.com"
blocked = true
[[registry]]
prefix = "*.evil.io"
blocked = true
[[registry]]
location = "example.com"
[[registry.mirror]]
location = "blocked.example.com/mirror"
[[registry.mirror]]
location = "ok.mirror.io"
"#,
        );
        let err = c.endpoints(&reference("blocked.example.com/x:1"));
        match err {
            Err(RegistriesError::Blocked { reference, prefix }) => {
                assert_eq!(reference, "blocked.example.com/x:1");
                assert_eq!(prefix, "blocked.example.com");
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        let err = c
            .endpoints(&reference("a.evil.io/x"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                r#"pulling "a.evil.io/x:latest" is blocked by the registries config entry for prefix "*.evil.io""#
            )
        );
        // A mirror whose location is itself blocked is skipped, as upstream.
        assert_eq!(
            summary(&c, "example.com/x"),
            vec![
                ep("ok.mirror.io", "x", false, true),
                ep("example.com", "x", false, false),
            ]
        );
    }

    #[test]
    fn every_endpoint_blocked_is_an_error() {
        let c = config(
            r#"
[[registry]]
location = "blocked.example.com"
blocked = true
[[registry]]
prefix = "example.com"
location = "blocked.example.com/elsewhere"
"#,
        );
        assert!(matches!(
            c.endpoints(&reference("example.com/x")),
            Err(RegistriesError::Blocked { prefix, .. }) if prefix == "blocked.example.com"
        ));
    }

    #[test]
    fn mirrors_come_first_in_order_with_their_own_insecure_flag() {
        let c = config(
            r#"
[[registry]]
location = "registry.com"
[[registry.mirror]]
location = "mirror-1.registry.com"
[[registry.mirror]]
location = "mirror-2.registry.com/"
insecure = true
[[registry.mirror]]
location = "localhost:5000/mirror"
insecure = true
"#,
        );
        assert_eq!(
            summary(&c, "registry.com/image:tag"),
            vec![
                ep("mirror-1.registry.com", "image", false, true),
                ep("mirror-2.registry.com", "image", true, true),
                ep("localhost:5000", "mirror/image", true, true),
                ep("registry.com", "image", false, false),
            ]
        );
    }

    /// Upstream's TestPullSourcesFromReference, with its pull-sources-from-reference.conf.
    #[test]
    fn pull_from_mirror_and_mirror_by_digest_only() {
        let c = config(
            r#"
[[registry]]
prefix = "registry-a.com/foo"
location = "registry-a.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-a.com"
[[registry.mirror]]
location = "mirror-2.registry-a.com"
insecure = true

[[registry]]
prefix = "registry-b.com/foo"
location = "registry-b.com/bar"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror-1.registry-b.com"
[[registry.mirror]]
location = "mirror-2.registry-b.com"

[[registry]]
prefix = "registry-b.com/baz"
location = "registry-b.com/bar"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-1.registry-b.com"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-2.registry-b.com"

[[registry]]
prefix = "registry-c.com/baz"
location = "registry-c.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-c.com"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-2.registry-c.com"

[[registry]]
prefix = "registry-e.com/baz"
location = "registry-e.com/bar"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-1.registry-e.com"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-2.registry-e.com"

[[registry]]
prefix = "registry-g.com/baz"
location = "registry-g.com/bar"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-1.registry-g.com"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-2.registry-g.com"
[[registry.mirror]]
location = "mirror-3.registry-g.com"
[[registry.mirror]]
pull-from-mirror = "all"
location = "mirror-4.registry-g.com"
"#,
        );
        // (prefix, hosts for a digest pull, hosts for a tag pull)
        let cases: [(&str, &[&str], &[&str]); 6] = [
            (
                "registry-a.com/foo",
                &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com",
                ],
                &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com",
                ],
            ),
            (
                "registry-b.com/foo",
                &[
                    "mirror-1.registry-b.com",
                    "mirror-2.registry-b.com",
                    "registry-b.com",
                ],
                &["registry-b.com"],
            ),
            (
                "registry-b.com/baz",
                &[
                    "mirror-1.registry-b.com",
                    "mirror-2.registry-b.com",
                    "registry-b.com",
                ],
                &["registry-b.com"],
            ),
            (
                "registry-c.com/baz",
                &[
                    "mirror-1.registry-c.com",
                    "mirror-2.registry-c.com",
                    "registry-c.com",
                ],
                &["mirror-1.registry-c.com", "registry-c.com"],
            ),
            (
                "registry-e.com/baz",
                &["registry-e.com"],
                &[
                    "mirror-1.registry-e.com",
                    "mirror-2.registry-e.com",
                    "registry-e.com",
                ],
            ),
            (
                "registry-g.com/baz",
                &[
                    "mirror-1.registry-g.com",
                    "mirror-3.registry-g.com",
                    "mirror-4.registry-g.com",
                    "registry-g.com",
                ],
                &[
                    "mirror-2.registry-g.com",
                    "mirror-3.registry-g.com",
                    "mirror-4.registry-g.com",
                    "registry-g.com",
                ],
            ),
        ];
        for (prefix, by_digest, by_tag) in cases {
            for (image, want) in [
                (format!("{prefix}/image@{DIGEST}"), by_digest),
                (format!("{prefix}/image:aaa"), by_tag),
            ] {
                let got = endpoints(&c, &image);
                let hosts: Vec<&str> = got.iter().map(|e| e.host.as_str()).collect();
                assert_eq!(hosts, want, "{image}");
                let last = got.len() - 1;
                for (i, e) in got.iter().enumerate() {
                    let want_repo = if i == last { "bar/image" } else { "image" };
                    assert_eq!(e.repository, want_repo, "{image} endpoint {i}");
                    assert_eq!(e.mirror, i != last, "{image} endpoint {i}");
                }
            }
        }
        // The per-mirror insecure flag survives the filtering.
        let a = endpoints(&c, &format!("registry-a.com/foo/image@{DIGEST}"));
        assert_eq!(
            a.iter().map(|e| e.insecure).collect::<Vec<_>>(),
            vec![false, true, false]
        );
    }

    #[test]
    fn no_entry_means_direct_https() {
        let c = RegistriesConfig::empty();
        assert_eq!(
            summary(&c, "busybox"),
            vec![ep("registry-1.docker.io", "library/busybox", false, false)]
        );
        assert_eq!(
            summary(&c, "localhost:5000/x:1"),
            vec![ep("localhost:5000", "x", false, false)]
        );
        assert_eq!(
            summary(&c, "[::1]:5000/x"),
            vec![ep("[::1]:5000", "x", false, false)]
        );
        // Matching is against docker.io even though the API host differs.
        let c = config(
            r#"
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.gcr.io"
"#,
        );
        assert_eq!(
            summary(&c, "busybox"),
            vec![
                ep("mirror.gcr.io", "library/busybox", false, true),
                ep("registry-1.docker.io", "library/busybox", false, false),
            ]
        );
        assert_eq!(
            config("")
                .endpoints(&reference("busybox"))
                .ok()
                .map(|e| e.len()),
            Some(1)
        );
    }

    /// Upstream's TestRewriteReferenceSuccess, on names.
    #[test]
    fn rewrites_match_upstream() {
        let cases = [
            (
                "example.com/image",
                "example.com",
                "example.com",
                "example.com/image",
            ),
            (
                "example.com:5000/image",
                "example.com:5000",
                "example.com:5000",
                "example.com:5000/image",
            ),
            (
                "example.com/foo/image:latest",
                "example.com/foo",
                "example.com",
                "example.com/image",
            ),
            (
                "example.com/foo/image:latest",
                "example.com/foo",
                "example.com/path",
                "example.com/path/image",
            ),
            (
                "docker.io/library/image",
                "docker.io/library",
                "example.com",
                "example.com/image",
            ),
            (
                "docker.io/library/image",
                "docker.io",
                "example.com",
                "example.com/library/image",
            ),
            (
                "docker.io/library/prefix/image",
                "docker.io/library/prefix",
                "example.com",
                "example.com/image",
            ),
            (
                "docker.io/namespace/image",
                "*.io",
                "example.com",
                "example.com/namespace/image",
            ),
            (
                "sub.example.io/library/prefix/image",
                "*.example.io",
                "example.com",
                "example.com/library/prefix/image",
            ),
            (
                "another.sub.example.io:5000/library/prefix/image:latest",
                "*.sub.example.io",
                "example.com",
                "example.com:5000/library/prefix/image",
            ),
            (
                "foo.bar.io/ns1/ns2/ns3/ns4",
                "*.bar.io",
                "omg.bbq.com/roflmao",
                "omg.bbq.com/roflmao/ns1/ns2/ns3/ns4",
            ),
            (
                "abc.internal.registry.com/foo:bar",
                "*.internal.registry.com",
                "",
                "abc.internal.registry.com/foo",
            ),
            (
                "alien.vs.predator.foobar.io:5000/omg",
                "*.foobar.io",
                "",
                "alien.vs.predator.foobar.io:5000/omg",
            ),
        ];
        for (image, prefix, location, want) in cases {
            let text = if location.is_empty() {
                format!("[[registry]]\nprefix = {prefix:?}\n")
            } else {
                format!("[[registry]]\nprefix = {prefix:?}\nlocation = {location:?}\n")
            };
            let c = config(&text);
            let e = &endpoints(&c, image)[0];
            assert_eq!(
                format!("{}/{}", e.host, e.repository),
                want,
                "{image} via {prefix}"
            );
        }
    }

    /// Upstream's TestRewriteReferenceFailedDuringParseNamed, where the prefix matches.
    #[test]
    fn rewrites_to_invalid_names_are_errors() {
        let cases = [
            // Rewrites to a bare host, which has no repository.
            (
                format!("example.com/foo@{DIGEST}"),
                "example.com/foo",
                "example.com",
            ),
            // "example.com" matches "example.com:5000/..." before the port, as upstream.
            (
                "example.com:5000/image:latest".to_string(),
                "example.com",
                "example.com:5000",
            ),
            // A location without a registry host would land on Docker Hub.
            ("example.com/image".to_string(), "example.com", "myhost"),
        ];
        for (image, prefix, location) in cases {
            let c = config(&format!(
                "[[registry]]\nprefix = {prefix:?}\nlocation = {location:?}\n"
            ));
            match c.endpoints(&reference(&image)) {
                Err(RegistriesError::Rewrite {
                    prefix: p,
                    location: l,
                    ..
                }) => {
                    assert_eq!((p.as_str(), l.as_str()), (prefix, location));
                }
                other => panic!("{image}: expected a rewrite error, got {other:?}"),
            }
        }
    }

    /// Upstream's TestRefMatchingPrefix and TestRefMatchingSubdomainPrefix.
    #[test]
    fn prefix_matching_matches_upstream() {
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let foo_a = format!("example.com/foo@{a}");
        let cases: Vec<(String, &str, Option<usize>)> = vec![
            ("docker.io".into(), "docker.io", Some(9)),
            ("docker.io".into(), "example.com", None),
            ("example.com:5000".into(), "example.com:5000", Some(16)),
            ("example.com:50000".into(), "example.com:5000", None),
            ("example.com:5000".into(), "example.com", Some(11)),
            ("example.com/foo".into(), "example.com", Some(11)),
            ("example.com/foo/bar:baz".into(), "example.com", Some(11)),
            (foo_a.clone(), "example.com", Some(11)),
            ("docker.io".into(), "docker.io/library", None),
            ("docker.io/library".into(), "docker.io/library", Some(17)),
            ("example.com/library".into(), "docker.io/library", None),
            ("docker.io/libraryy".into(), "docker.io/library", None),
            (
                "docker.io/library/busybox".into(),
                "docker.io/library",
                Some(17),
            ),
            (
                "docker.io/library/busybox2".into(),
                "docker.io/library/busybox",
                None,
            ),
            ("example.com/foo".into(), "example.com/foo:bar", None),
            (
                "example.com/foo:bar".into(),
                "example.com/foo:bar",
                Some(19),
            ),
            ("example.com/foo:bar2".into(), "example.com/foo:bar", None),
            (foo_a.clone(), &foo_a, Some(foo_a.len())),
            ("example.com/foo".into(), "*", None),
            ("docker.io".into(), "*.io", Some(9)),
            ("docker.io/foo".into(), "*.com", None),
            ("example.com/foo".into(), "*.co", None),
            ("example.com/foo".into(), "*.example.com", None),
            ("example.com/foo:bar".into(), "*.com", Some(11)),
            ("yet.another.example.com/foo".into(), "**.example.com", None),
            (
                "yet.another.example.com/foo/bar".into(),
                "*.another.example.com",
                Some(23),
            ),
            (
                "another.example.com/namespace.com/foo/bar/bbq:baz".into(),
                "*.example.com",
                Some(19),
            ),
            (
                "example.net/namespace-ends-in.com/foo/bar/bbq:baz".into(),
                "*.com",
                None,
            ),
            (
                "another.example.com/namespace.com/foo/bar/bbq:baz".into(),
                "*.namespace.com",
                None,
            ),
            (
                "another.sub.example.com/foo/bar/bbq:baz".into(),
                "*.example.com",
                Some(23),
            ),
        ];
        for (name, prefix, want) in cases {
            assert_eq!(
                ref_matching_prefix(&name, prefix),
                want,
                "{name} vs {prefix}"
            );
        }
    }

    #[test]
    fn parses_all_settings_and_normalizes_locations() {
        let c = config(
            r#"
unqualified-search-registries = ["docker.io", "quay.io/", "localhost:5000"]
short-name-mode = "enforcing"
credential-helpers = ["containers-auth.json"]

[aliases]
"busybox" = "docker.io/library/busybox"

[[registry]]
location = "example.com//"
insecure = true
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.example.com"
insecure = true
"#,
        );
        assert_eq!(
            c.unqualified_search_registries(),
            ["docker.io", "quay.io", "localhost:5000"]
        );
        assert_eq!(
            c.registries,
            vec![Registry {
                prefix: "example.com".into(),
                location: "example.com".into(),
                insecure: true,
                blocked: false,
                mirror_by_digest_only: true,
                mirrors: vec![Mirror {
                    location: "m.example.com".into(),
                    insecure: true,
                    pull_from: PullFromMirror::All,
                }],
            }]
        );
        assert_eq!(config(""), RegistriesConfig::empty());
    }

    #[test]
    fn unknown_keys_are_tolerated() {
        let c = config(
            r#"
some-future-setting = 3
[future-table]
x = 1
[[registry]]
location = "example.com"
colour = "blue"
[[registry.mirror]]
location = "m.example.com"
weight = 10
"#,
        );
        assert_eq!(summary(&c, "example.com/x").len(), 2);
    }

    #[test]
    fn invalid_toml_is_a_syntax_error() {
        let err = config_err("[[registry]\nlocation = ");
        assert!(matches!(err, RegistriesError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("(inline text)"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn duplicate_prefixes_are_rejected() {
        let err = config_err(
            r#"
[[registry]]
prefix = "example.com"
location = "a.local"
[[registry]]
location = "example.com"
"#,
        );
        match &err {
            RegistriesError::DuplicatePrefix { prefix, .. } => assert_eq!(prefix, "example.com"),
            other => panic!("expected DuplicatePrefix, got {other:?}"),
        }
        assert!(err.to_string().contains("\"example.com\""), "{err}");
    }

    /// Upstream's TestInvalidV2Configs and TestInvalidMirrorConfig, plus type errors.
    #[test]
    fn invalid_configs_name_the_problem() {
        let cases = [
            (
                "[[registry]]\nlocation = \"registry.com\"\n[[registry]]\nprefix = \"other\"\nlocation = \"registry.com\"\ninsecure = true\n",
                "registry \"registry.com\" is defined multiple times with conflicting \"insecure\" setting",
            ),
            (
                "[[registry]]\nlocation = \"registry.com\"\nblocked = true\n[[registry]]\nprefix = \"other\"\nlocation = \"registry.com\"\n",
                "conflicting \"blocked\" setting",
            ),
            (
                "[[registry]]\nlocation = \"registry.com\"\n[[registry.mirror]]\ninsecure = true\n",
                "mirror location is unset",
            ),
            (
                "[[registry]]\nlocation = \"registry.com:5000\"\nprefix = \"http://schema-is-invalid.com\"\n",
                "invalid location \"http://schema-is-invalid.com\": URI schemes are not supported",
            ),
            (
                "[[registry]]\nlocation = \"https://registry.com\"\n",
                "URI schemes are not supported",
            ),
            (
                "[[registry]]\ninsecure = true\n",
                "both location and prefix are unset",
            ),
            (
                "[[registry]]\nprefix = \"example.com\"\nblocked = true\n",
                "location is unset and the prefix is not in the format *.example.com",
            ),
            (
                "[[registry]]\nprefix = \"*.example.com/foo\"\n",
                "wildcard prefix \"*.example.com/foo\"",
            ),
            (
                "[[registry]]\nprefix = \"*.example.com:5000\"\nlocation = \"x.io\"\n",
                "must be in the format *.example.com",
            ),
            (
                "[[registry]]\nprefix = \"registry-a.com/foo\"\nlocation = \"registry-a.com/bar\"\npull-from-mirror = \"digest-only\"\n",
                "pull-from-mirror must not be set for a non-mirror registry \"registry-a.com/foo\"",
            ),
            (
                "[[registry]]\nprefix = \"registry-a.com/foo\"\nlocation = \"registry-a.com/bar\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"mirror-1.registry-a.com\"\npull-from-mirror = \"digest-only\"\n",
                "cannot set mirror usage mirror-by-digest-only for the registry (\"registry-a.com/foo\") and pull-from-mirror for per-mirror (\"mirror-1.registry-a.com\") at the same time",
            ),
            (
                "[[registry]]\nlocation = \"registry-a.com\"\n[[registry.mirror]]\nlocation = \"mirror-1.registry-a.com\"\npull-from-mirror = \"notvalid\"\n",
                "unsupported pull-from-mirror value \"notvalid\" for mirror \"mirror-1.registry-a.com\"",
            ),
            (
                "unqualified-search-registries = [\"example.com/foo\"]\n",
                "invalid unqualified-search-registries entry \"example.com/foo\"",
            ),
            (
                "unqualified-search-registries = \"docker.io\"\n",
                "must be an array of strings",
            ),
            (
                "[[registry]]\nlocation = \"registry.com\"\ninsecure = \"yes\"\n",
                "[[registry]] #1: \"insecure\" must be a boolean, found string",
            ),
            (
                "[[registry]]\nlocation = 5000\n",
                "\"location\" must be a string, found integer",
            ),
            (
                "[registry]\nlocation = \"a.io\"\n",
                "must be an array of tables ([[registry]])",
            ),
            (
                "[registries.search]\nregistries = [\"docker.io\"]\n",
                "version 1 format",
            ),
        ];
        for (text, want) in cases {
            let err = config_err(text);
            let message = err.to_string();
            assert!(
                matches!(err, RegistriesError::Invalid { .. }),
                "{text}: expected Invalid, got {err:?}"
            );
            assert!(
                message.contains(want),
                "{text}:\n  got  {message}\n  want {want}"
            );
            assert!(
                message.starts_with("registries config (inline text): "),
                "{message}"
            );
        }
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let path = dir.path().join("registries.conf");
        let missing = RegistriesConfig::load(&path);
        match &missing {
            Err(RegistriesError::Read { path: p, .. }) => assert_eq!(p, &path),
            other => panic!("expected Read error, got {other:?}"),
        }
        let message = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&path.display().to_string()), "{message}");

        if let Err(e) = std::fs::write(
            &path,
            "[[registry]]\nlocation = \"localhost:5000\"\ninsecure = true\n",
        ) {
            panic!("write: {e}");
        }
        let c = match RegistriesConfig::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            summary(&c, "localhost:5000/x"),
            vec![ep("localhost:5000", "x", true, false)]
        );

        if let Err(e) = std::fs::write(&path, "[[registry]]\nprefix = \"a.io\"\n") {
            panic!("write: {e}");
        }
        let message = RegistriesConfig::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with(&format!("registries config {}: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let texts = [
            "",
            "=",
            "[[registry]]",
            "[[registry]]\nprefix = \"*.\"\n",
            "[[registry]]\nprefix = \"*\"\nlocation = \"x\"\n",
            "[[registry]]\nlocation = \"/\"\n",
            "[[registry]]\nprefix = \"*.é\"\n",
            "registry = 1",
            "[[registry]]\nmirror = 1\nlocation = \"a.io\"\n",
            "[[registry]]\nlocation = \"a.io\"\nmirror = [1]\n",
            "unqualified-search-registries = [1]",
            "aliases = 3",
        ];
        let images = [
            "busybox",
            "é.io/x",
            "a.io/x",
            "x.io/é",
            "localhost/x",
            "[::1]/x",
        ];
        for text in texts {
            if let Ok(c) = RegistriesConfig::parse(text) {
                for image in images {
                    if let Ok(r) = Reference::parse_normalized(image) {
                        let _ = c.endpoints(&r);
                    }
                }
            }
        }
        for name in ["", "é", "*", "a", "é.io/x"] {
            for prefix in ["*.", "*.é", "*", "é", "*.io", ""] {
                let _ = ref_matching_prefix(name, prefix);
            }
        }
    }
}
