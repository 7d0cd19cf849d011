//! Reference::parse_normalized on arbitrary strings: never panics, and whatever parses
//! has a domain and a path, its normalized and familiar forms parse back to the same
//! reference, and `name()` is `domain/path`.
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
    let familiar = r.familiar();
    assert_eq!(
        Reference::parse_normalized(&familiar).as_ref(),
        Ok(&r),
        "{familiar}"
    );
    let normalized = r.normalized();
    let again = Reference::parse_normalized(&normalized);
    assert!(again.is_ok(), "{normalized}: {again:?}");
    let _ = (r.tagged_string(), r.digested_string());
});
