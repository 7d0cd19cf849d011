//! Manifests, indexes and image configs: the same bytes are read as a manifest or index
//! (AnyManifest) and as an image config, as a pull does. Never panics: platform
//! selection, descriptor digest checks and chain IDs over whatever parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::image::digest;
use runtime_core::image::spec::{self, AnyManifest, ImageConfig, Platform};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<AnyManifest>(data) {
        let entries = m.manifests.as_deref().unwrap_or(&[]);
        if let Some(e) = spec::select_platform(entries, &spec::node_platform()) {
            let p = e
                .platform
                .as_ref()
                .expect("a selected entry has a platform");
            assert_eq!(p.os, "linux");
        }
        for e in entries {
            if let Some(p) = &e.platform {
                let want = Platform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                };
                assert!(spec::select_platform(entries, &want).is_some());
            }
        }
        for d in m
            .config
            .iter()
            .chain(m.layers.iter().flatten())
            .chain(entries)
        {
            if let Ok(hex) = digest::sha256_hex(&d.digest) {
                assert!(digest::is_hex64(hex));
            }
        }
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        let ids = &c.rootfs.diff_ids;
        if ids.iter().all(|d| digest::sha256_hex(d).is_ok()) {
            let chain = digest::chain_ids(ids);
            assert_eq!(chain.len(), ids.len());
            assert_eq!(chain.first(), ids.first());
        }
        let json = serde_json::to_vec(&c).expect("a parsed config serializes");
        let again: ImageConfig = serde_json::from_slice(&json).expect("and parses back");
        assert_eq!(again, c);
    }
});
