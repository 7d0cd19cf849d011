//! The monitor's wire protocol: the input's first line is read as a request and as a
//! reply (JSON, one line, as the monitor and berthd read them), the rest as a stream of
//! session frames. Never panics; parsed requests and replies survive a JSON round trip;
//! frames never claim more than the buffer or more than MAX_PAYLOAD, and re-encode to
//! the same bytes; resize and exit payloads decode or are refused.
#![no_main]

use berth_monitor::frame::{self, ExitFrame, FrameType, HEADER_LEN, MAX_PAYLOAD};
use berth_monitor::protocol::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(req) = serde_json::from_slice::<Request>(line) {
        let json = serde_json::to_vec(&req).expect("a request serializes");
        assert!(!json.contains(&b'\n'), "a request is one line");
        assert_eq!(serde_json::from_slice::<Request>(&json).ok(), Some(req));
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(line.trim_ascii_end()) {
        let json = serde_json::to_vec(&reply).expect("a reply serializes");
        assert!(!json.contains(&b'\n'), "a reply is one line");
        assert_eq!(serde_json::from_slice::<Reply>(&json).ok(), Some(reply));
    }
    let mut buf = rest;
    while let Ok(Some((kind, payload, used))) = frame::parse(buf) {
        assert!(used == HEADER_LEN + payload.len() && used <= buf.len());
        assert!(payload.len() <= MAX_PAYLOAD);
        let mut out = Vec::new();
        frame::encode(&mut out, kind, payload);
        assert_eq!(&out[..], &buf[..used]);
        match kind {
            FrameType::Resize => {
                if let Some((w, h)) = frame::decode_resize(payload) {
                    let mut again = Vec::new();
                    frame::encode_resize(&mut again, w, h);
                    assert_eq!(&again[..], &buf[..used]);
                }
            }
            FrameType::Exit => {
                let _ = serde_json::from_slice::<ExitFrame>(payload);
            }
            _ => {}
        }
        buf = &buf[used..];
    }
});
