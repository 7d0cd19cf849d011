//! frame::parse on arbitrary bytes: never panics, never claims more bytes
//! than it was given, and whatever it parses encodes back to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spdy::frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::parse(rest, 1 << 16) {
        assert!(used >= frame::HEADER_LEN && used <= rest.len());
        let mut out = Vec::new();
        frame::encode(&f, &mut out);
        let again = frame::parse(&out, 1 << 16);
        assert_eq!(again, Ok(Some((f, out.len()))));
        rest = &rest[used..];
    }
});
