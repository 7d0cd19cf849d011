//! Runs the fuzz targets' checks over the committed seed corpus (and any
//! crash reproducers added there), so they hold without cargo-fuzz.

use std::path::Path;

use spdy::frame;
use spdy::headers::HeaderDecoder;

fn files(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        out.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn frame_parse_corpus() {
    for data in files("frame_parse") {
        let mut rest = &data[..];
        let mut n = 0;
        while let Some((f, used)) = frame::parse(rest, 1 << 16).unwrap() {
            let mut out = Vec::new();
            frame::encode(&f, &mut out);
            assert_eq!(frame::parse(&out, 1 << 16), Ok(Some((f, out.len()))));
            rest = &rest[used..];
            n += 1;
        }
        assert!(n > 0 && rest.is_empty(), "seeds are whole valid frames");
    }
}

#[test]
fn header_block_corpus() {
    for data in files("header_block") {
        let mut dec = HeaderDecoder::new();
        let mut rest = &data[..];
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            dec.decode(&rest[2..2 + len], 8 * 1024).unwrap();
            rest = &rest[2 + len..];
        }
    }
}
