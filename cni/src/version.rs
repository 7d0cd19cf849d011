//! CNI spec versions the runtime speaks.

/// Spec versions accepted in a network configuration list, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Parses "major.minor.patch" (patch optional).
pub(crate) fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Whether `v` is one of [`SUPPORTED_VERSIONS`].
pub(crate) fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Whether `v` is at least `min`; unparsable versions are not.
pub(crate) fn at_least(v: &str, min: (u32, u32, u32)) -> bool {
    parse(v).is_some_and(|p| p >= min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        assert_eq!(parse("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse("0.4"), Some((0, 4, 0)));
        assert_eq!(parse("x.1.0"), None);
        assert_eq!(parse("1.0.0.0"), None);
        assert_eq!(parse(""), None);
        assert!(at_least("0.4.0", (0, 4, 0)));
        assert!(at_least("1.1.0", (0, 4, 0)));
        assert!(!at_least("0.3.1", (0, 4, 0)));
        assert!(!at_least("garbage", (0, 4, 0)));
        assert!(is_supported("0.3.1"));
        assert!(!is_supported("0.2.0"));
    }
}
