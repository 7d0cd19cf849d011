//! HeaderDecoder on a sequence of arbitrary blocks, one shared zlib stream as
//! on a connection. Input: repeated `len:u16 (big endian) block[len]`.
//! Never panics; errors are fine. Decoded headers are bounded by the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spdy::headers::{HeaderDecoder, MAX_HEADERS};

const LIMIT: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut dec = HeaderDecoder::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let block = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if let Ok(h) = dec.decode(block, LIMIT) {
            assert!(h.len() <= MAX_HEADERS);
            assert!(h.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= LIMIT);
            assert!(h.iter().all(|(n, _)| !n.is_empty()));
        }
    }
});
