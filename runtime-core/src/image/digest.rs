//! Content digests: validation, hashing and layer chain IDs.

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Checks that `digest` is `sha256:<64 lowercase hex>`, the only algorithm berth stores
/// content under, and returns its hex part. The check also keeps digests from registries
/// or requests from ever naming a path outside the store.
pub fn sha256_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_hex64(hex) => Ok(hex),
        _ => Err(Error::InvalidArgument(format!(
            "digest {digest:?} is not a sha256 digest (sha256:<64 lowercase hex>)"
        ))),
    }
}

/// True for exactly 64 lowercase hexadecimal characters.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Formats a finished hasher as `sha256:<hex>`.
pub fn finish(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The chain IDs of a layer stack given its diff IDs, per the OCI image spec:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => sha256_of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_sha256() {
        let h = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{h}")).unwrap(), h);
        assert!(sha256_hex("sha256:../../etc").is_err());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(sha256_hex(&format!("sha512:{h}")).is_err());
        assert!(sha256_hex("").is_err());
    }

    #[test]
    fn chain_ids_follow_spec() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
