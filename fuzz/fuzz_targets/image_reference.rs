//! Reference::parse_normalized on arbitrary strings: never panics, and whatever parses
//! has a domain and a path, its full form (and its familiar one, unless that reads as
//! another domain) parses back to the same reference, its normalized form parses, and
//! `name()` is `domain/path`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::image::reference::{self, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = reference::is_image_id(s);
    let Ok(r) = Reference::parse_normalized(s) else {
        return;
    };
    assert!(!r.domain().is_empty());
    assert!(!r.path().is_empty());
    assert!(r.tag().is_some() || r.digest().is_some());
    assert_eq!(r.name(), format!("{}/{}", r.domain(), r.path()));
    let full = r.to_string();
    assert_eq!(
        Reference::parse_normalized(&full).as_ref(),
        Ok(&r),
        "{full}"
    );
    // The familiar form drops `docker.io/`, so for `docker.io/foo.com/bar` it reads as a
    // reference on foo.com, as upstream's FamiliarString does: it is for display only.
    let familiar = r.familiar();
    let first = familiar.split('/').next().unwrap_or("");
    if !(first.contains(['.', ':']) || first == "localhost" || familiar.starts_with('[')) {
        assert_eq!(
            Reference::parse_normalized(&familiar).as_ref(),
            Ok(&r),
            "{familiar}"
        );
    }
    let normalized = r.normalized();
    let again = Reference::parse_normalized(&normalized);
    assert!(again.is_ok(), "{normalized}: {again:?}");
    let _ = (r.tagged_string(), r.digested_string());
});
