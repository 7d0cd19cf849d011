//! registries.conf: the first line is an image reference, the rest the file. Parsing and
//! mapping the reference to endpoints never panics; every endpoint of a successful mapping
//! names a host and repository that parse as a reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::image::reference::Reference;
use runtime_core::image::registries::RegistriesConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (image, text) = s.split_once('\n').unwrap_or(("busybox", s));
    let Ok(config) = RegistriesConfig::parse(text) else {
        return;
    };
    for r in config.unqualified_search_registries() {
        assert!(!r.is_empty());
    }
    let Ok(reference) = Reference::parse_normalized(image) else {
        return;
    };
    if let Ok(endpoints) = config.endpoints(&reference) {
        assert!(!endpoints.is_empty());
        for e in &endpoints {
            assert!(!e.host.is_empty() && !e.repository.is_empty(), "{e:?}");
            let name = format!("{}/{}", e.host, e.repository);
            let again = Reference::parse_normalized(&name);
            assert!(again.is_ok(), "{e:?}: {again:?}");
        }
    }
});
