//! Multiplexer tests over in-memory pipes: our client against our server, and
//! hand-driven raw peers (including one that behaves like moby/spdystream:
//! no SETTINGS, no WINDOW_UPDATE, no flow control).

use std::time::Duration;

use bytes::Bytes;
use spdy::frame::{self, Frame, Setting};
use spdy::headers::{HeaderDecoder, HeaderEncoder};
use spdy::{Config, Connection, Error, Headers, Incoming, RstStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::{sleep, timeout};

const T: Duration = Duration::from_secs(10);

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn pair(server_cfg: Config) -> ((Connection, Incoming), (Connection, Incoming)) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        spdy::server(a, server_cfg),
        spdy::client(b, Config::default()),
    )
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    timeout(T, f).await.expect("timed out")
}

#[tokio::test]
async fn open_reply_data_both_ways_and_half_close() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let mut cs = cc
        .open(h(&[("streamType", "stdin"), ("requestID", "7")]), false)
        .await
        .unwrap();
    assert_eq!(cs.id() % 2, 1);
    let mut ss = within(inc.accept()).await.unwrap();
    assert_eq!(ss.id(), cs.id());
    // Names are lowercase on the wire; lookups ignore case.
    assert_eq!(ss.header("streamtype"), Some("stdin"));
    assert_eq!(ss.header("RequestId"), Some("7"));
    assert_eq!(ss.headers()[0].0, "streamtype");
    ss.reply(h(&[("ok", "yes")]), false).await.unwrap();
    assert_eq!(within(cs.wait_reply()).await.unwrap(), h(&[("ok", "yes")]));

    cs.write_all(b"hello").await.unwrap();
    cs.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(ss.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello");
    // Half-closed by the peer, we can still send.
    ss.write_all(b"world").await.unwrap();
    ss.shutdown().await.unwrap();
    got.clear();
    within(cs.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"world");
    // Writing after our FIN fails.
    assert!(cs.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn split_halves_work_independently() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let cs = cc.open(h(&[("streamtype", "data")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    let (mut r, mut w) = cs.into_split();
    let echo = tokio::spawn(async move {
        let mut buf = vec![0; 1024];
        loop {
            let n = ss.read(&mut buf).await.unwrap();
            if n == 0 {
                ss.shutdown().await.unwrap();
                return;
            }
            ss.write_all(&buf[..n]).await.unwrap();
        }
    });
    w.write_all(b"ping pong").await.unwrap();
    w.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(r.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ping pong");
    within(echo).await.unwrap();
}

#[tokio::test]
async fn reset_reaches_the_other_side() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let mut cs = cc.open(h(&[("a", "b")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reset(RstStatus::InternalError);
    match within(cs.wait_reply()).await {
        Err(Error::StreamReset { code, by_peer, .. }) => {
            assert_eq!(code, RstStatus::InternalError.code());
            assert!(by_peer);
        }
        other => panic!("{other:?}"),
    }
    let mut buf = [0u8; 8];
    let e = cs.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(ss.write_all(b"x").await.is_err());
    // The connection carries on.
    let _cs2 = cc.open(h(&[("a", "c")]), false).await.unwrap();
    assert_eq!(within(inc.accept()).await.unwrap().header("a"), Some("c"));
}

#[tokio::test]
async fn dropping_an_open_stream_cancels_it() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let mut cs = cc.open(h(&[("a", "b")]), false).await.unwrap();
    let ss = within(inc.accept()).await.unwrap();
    drop(ss);
    match within(cs.wait_reply()).await {
        Err(Error::StreamReset { code, .. }) => assert_eq!(code, RstStatus::Cancel.code()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ping_both_ways() {
    let ((sc, _inc), (cc, _ci)) = pair(Config::default());
    let rtt = within(cc.ping()).await.unwrap();
    assert!(rtt < T);
    within(sc.ping()).await.unwrap();
    within(cc.ping()).await.unwrap();
}

#[tokio::test]
async fn goaway_refuses_new_streams_and_closes_when_idle() {
    let ((sc, mut inc), (cc, _ci)) = pair(Config::default());
    let mut cs = cc.open(h(&[("a", "1")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    within(cs.wait_reply()).await.unwrap();
    sc.goaway().await;
    // The open stream keeps the connection up.
    sleep(Duration::from_millis(50)).await;
    assert!(!sc.is_closed());
    assert!(matches!(
        cc.open(vec![], false).await,
        Err(Error::GoingAway)
    ));
    assert!(within(inc.accept()).await.is_none());
    cs.write_all(b"last").await.unwrap();
    cs.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(ss.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"last");
    ss.shutdown().await.unwrap();
    within(sc.closed()).await;
    within(cc.closed()).await;
    assert!(cc.is_closed());
    assert!(matches!(cc.ping().await, Err(Error::ConnectionClosed)));
}

#[tokio::test]
async fn hundred_concurrent_streams() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let mut s = inc.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                s.reply(vec![], false).await.unwrap();
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.unwrap();
                let tag = s.header("n").unwrap().to_string();
                s.write_all(tag.as_bytes()).await.unwrap();
                s.write_all(&data).await.unwrap();
                s.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut s = cc.open(h(&[("n", &i.to_string())]), false).await.unwrap();
        clients.push(tokio::spawn(async move {
            s.wait_reply().await.unwrap();
            let body = vec![i as u8; 3000 + i * 100];
            s.write_all(&body).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            let tag = i.to_string();
            assert_eq!(&got[..tag.len()], tag.as_bytes());
            assert_eq!(&got[tag.len()..], &body[..]);
        }));
    }
    for c in clients {
        within(c).await.unwrap();
    }
    within(server).await.unwrap();
}

#[tokio::test]
async fn large_transfer_with_slow_reader_is_bounded() {
    const TOTAL: usize = 8 * 1024 * 1024;
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let mut cs = cc.open(h(&[("a", "b")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    within(cs.wait_reply()).await.unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < TOTAL {
            cs.write_all(&chunk).await.unwrap();
            sent += chunk.len();
            w2.store(sent, std::sync::atomic::Ordering::SeqCst);
        }
        cs.shutdown().await.unwrap();
    });
    // Nobody reads: the writer must stall once the window (64 KiB), its own
    // buffer and the pipe are full.
    sleep(Duration::from_millis(300)).await;
    let stalled = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(stalled < 512 * 1024, "writer ran ahead by {stalled} bytes");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(stalled, written.load(std::sync::atomic::Ordering::SeqCst));
    // Slow reader: small reads with pauses at first, then drain.
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut reads = 0;
    loop {
        let n = within(ss.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, (((got + k) % 8192) % 251) as u8);
        }
        got += n;
        reads += 1;
        if reads < 20 {
            sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(got, TOTAL);
    within(writer).await.unwrap();
}

#[tokio::test]
async fn streams_beyond_max_are_refused() {
    let cfg = Config {
        max_streams: 10,
        ..Config::default()
    };
    let ((_sc, mut inc), (cc, _ci)) = pair(cfg);
    let mut streams = Vec::new();
    for i in 0..25 {
        streams.push(cc.open(h(&[("i", &i.to_string())]), false).await.unwrap());
    }
    let mut accepted = Vec::new();
    for _ in 0..10 {
        let mut s = within(inc.accept()).await.unwrap();
        s.reply(vec![], false).await.unwrap();
        accepted.push(s);
    }
    let mut refused = 0;
    for s in &mut streams {
        match within(s.wait_reply()).await {
            Ok(_) => {}
            Err(Error::StreamReset { code, .. }) => {
                assert_eq!(code, RstStatus::RefusedStream.code());
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 15);
    // Closing one makes room for another.
    let mut first = accepted.remove(0);
    first.shutdown().await.unwrap();
    streams[0].shutdown().await.unwrap();
    let mut data = Vec::new();
    within(first.read_to_end(&mut data)).await.unwrap();
    drop(first);
    let mut late = cc.open(h(&[("late", "1")]), false).await.unwrap();
    let mut s = within(inc.accept()).await.unwrap();
    assert_eq!(s.header("late"), Some("1"));
    s.reply(vec![], false).await.unwrap();
    within(late.wait_reply()).await.unwrap();
}

#[tokio::test]
async fn oversized_header_block_resets_only_that_stream() {
    let ((_sc, mut inc), (cc, _ci)) = pair(Config::default());
    let big = "v".repeat(300 * 1024);
    let mut s1 = cc.open(h(&[("big", &big)]), false).await.unwrap();
    match within(s1.wait_reply()).await {
        Err(Error::StreamReset { code, .. }) => {
            assert_eq!(code, RstStatus::FrameTooLarge.code())
        }
        other => panic!("{other:?}"),
    }
    // The zlib streams are still in step.
    let mut s2 = cc.open(h(&[("small", "ok")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    assert_eq!(ss.header("small"), Some("ok"));
    ss.reply(h(&[("r", "1")]), true).await.unwrap();
    assert_eq!(within(s2.wait_reply()).await.unwrap(), h(&[("r", "1")]));
}

#[tokio::test]
async fn peer_eof_ends_everything() {
    let ((sc, mut inc), (cc, ci)) = pair(Config::default());
    let mut cs = cc.open(h(&[("a", "b")]), false).await.unwrap();
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    within(cs.wait_reply()).await.unwrap();
    cs.write_all(b"partial").await.unwrap();
    cs.flush().await.unwrap();
    let mut buf = [0u8; 7];
    within(ss.read_exact(&mut buf)).await.unwrap();
    // Abandon the client side entirely: its io closes.
    drop(cs);
    drop(cc);
    drop(ci);
    within(sc.closed()).await;
    assert!(within(inc.accept()).await.is_none());
    // The stream got reset (CANCEL) or lost its connection: either way an error.
    assert!(ss.read(&mut buf).await.is_err());
    assert!(ss.write_all(b"x").await.is_err());
}

// ---- raw peers -------------------------------------------------------------

/// A hand-driven peer: writes frames we build, reads and decodes what the
/// connection under test sends.
struct Raw {
    io: DuplexStream,
    buf: Vec<u8>,
    enc: HeaderEncoder,
    dec: HeaderDecoder,
}

impl Raw {
    fn new(io: DuplexStream) -> Raw {
        Raw {
            io,
            buf: Vec::new(),
            enc: HeaderEncoder::new(),
            dec: HeaderDecoder::new(),
        }
    }

    async fn send(&mut self, f: &Frame) {
        let mut out = Vec::new();
        frame::encode(f, &mut out);
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
    }

    async fn syn(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) {
        let mut block = Vec::new();
        self.enc.encode(&h(headers), &mut block).unwrap();
        self.send(&Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            header_block: block.into(),
        })
        .await;
    }

    /// Next frame, or None on EOF. Header blocks are inflated (kept in step).
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, n)) = frame::parse(&self.buf, 1 << 24).unwrap() {
                self.buf.drain(..n);
                match &f {
                    Frame::SynStream { header_block, .. }
                    | Frame::SynReply { header_block, .. }
                    | Frame::Headers { header_block, .. } => {
                        self.dec.decode(header_block, 1 << 20).unwrap();
                    }
                    _ => {}
                }
                return Some(f);
            }
            let mut tmp = [0u8; 65536];
            let n = within(self.io.read(&mut tmp)).await.unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Next frame that is not SETTINGS / WINDOW_UPDATE bookkeeping.
    async fn recv_main(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await? {
                Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
                f => return Some(f),
            }
        }
    }
}

fn raw_server(cfg: Config) -> ((Connection, Incoming), Raw) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (spdy::server(a, cfg), Raw::new(b))
}

#[tokio::test]
async fn server_speaks_first_with_settings() {
    let ((_sc, _inc), mut raw) = raw_server(Config::default());
    match raw.recv().await.unwrap() {
        Frame::Settings { entries, .. } => assert_eq!(
            entries,
            vec![Setting {
                flags: 0,
                id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536
            }]
        ),
        f => panic!("{f:?}"),
    }
    assert_eq!(
        raw.recv().await.unwrap(),
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 16 * 65536 - 65536
        }
    );
    raw.send(&Frame::Ping { id: 1 }).await;
    assert_eq!(raw.recv().await.unwrap(), Frame::Ping { id: 1 });
}

#[tokio::test]
async fn syn_stream_flood_is_refused_and_bounded() {
    let cfg = Config {
        max_streams: 10,
        ..Config::default()
    };
    let ((_sc, mut inc), mut raw) = raw_server(cfg);
    // 3000 SYN_STREAMs without reading anything back: the server must not
    // queue unbounded answers (it stops reading instead).
    let flood = tokio::spawn(async move {
        for i in 0..3000u32 {
            raw.syn(2 * i + 1, &[("n", "x")], false).await;
        }
        raw
    });
    let mut raw = within(flood).await.unwrap_or_else(|_| panic!("flood"));
    let mut refused = 0;
    while refused < 2990 {
        match raw.recv_main().await.unwrap() {
            Frame::RstStream { status, .. } => {
                assert_eq!(status, RstStatus::RefusedStream.code());
                refused += 1;
            }
            f => panic!("{f:?}"),
        }
    }
    let mut accepted = 0;
    while accepted < 10 {
        within(inc.accept()).await.unwrap();
        accepted += 1;
    }
}

#[tokio::test]
async fn malformed_frame_closes_with_goaway() {
    let ((sc, mut inc), mut raw) = raw_server(Config::default());
    // RST_STREAM with a 4-byte payload.
    raw.send_raw(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1]).await;
    assert!(matches!(
        raw.recv_main().await,
        Some(Frame::GoAway {
            status: frame::GOAWAY_PROTOCOL_ERROR,
            ..
        })
    ));
    assert_eq!(raw.recv().await, None);
    within(sc.closed()).await;
    assert!(inc.accept().await.is_none());
}

#[tokio::test]
async fn oversized_frame_closes_with_goaway() {
    let cfg = Config {
        max_frame_len: 1000,
        ..Config::default()
    };
    let ((sc, _inc), mut raw) = raw_server(cfg);
    raw.send_raw(&[0, 0, 0, 1, 0, 0, 0x10, 0]).await;
    assert!(matches!(raw.recv_main().await, Some(Frame::GoAway { .. })));
    within(sc.closed()).await;
}

#[tokio::test]
async fn corrupt_header_block_closes_the_connection() {
    let ((sc, _inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        header_block: Bytes::from_static(b"definitely not zlib"),
    })
    .await;
    assert!(matches!(raw.recv_main().await, Some(Frame::GoAway { .. })));
    within(sc.closed()).await;
}

#[tokio::test]
async fn other_versions_are_refused() {
    let ((sc, _inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::Unknown {
        version: 2,
        kind: 1,
        flags: 0,
        payload: Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2]),
    })
    .await;
    assert_eq!(
        raw.recv_main().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::UnsupportedVersion.code()
        })
    );
    assert!(matches!(raw.recv_main().await, Some(Frame::GoAway { .. })));
    within(sc.closed()).await;
}

#[tokio::test]
async fn unknown_frame_types_are_ignored() {
    let ((_sc, mut inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::Unknown {
        version: 3,
        kind: 10,
        flags: 0,
        payload: Bytes::from_static(b"credential"),
    })
    .await;
    raw.syn(1, &[("a", "b")], true).await;
    let s = within(inc.accept()).await.unwrap();
    assert_eq!(s.header("a"), Some("b"));
}

/// Like moby/spdystream: never sends SETTINGS or WINDOW_UPDATE, ignores our
/// windows. We must neither stall waiting for its credit nor reset it.
#[tokio::test]
async fn spdystream_like_peer_without_flow_control() {
    const N: usize = 1024 * 1024;
    let ((_sc, mut inc), mut raw) = raw_server(Config::default());
    raw.syn(1, &[("streamtype", "stdout")], false).await;
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    let server = tokio::spawn(async move {
        let data = vec![7u8; N];
        ss.write_all(&data).await.unwrap();
        ss.shutdown().await.unwrap();
        // And read what the peer pushes at us, slowly at first.
        let mut got = 0;
        let mut buf = vec![0; 1000];
        sleep(Duration::from_millis(100)).await;
        loop {
            let n = ss.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    assert!(matches!(
        raw.recv_main().await,
        Some(Frame::SynReply { .. })
    ));
    let mut got = 0;
    loop {
        match raw.recv_main().await.unwrap() {
            Frame::Data { data, fin, .. } => {
                got += data.len();
                if fin {
                    break;
                }
            }
            f => panic!("{f:?}"),
        }
    }
    assert_eq!(got, N);
    // Now push 1 MiB at the server with no regard for its window.
    let (mut rd, mut wr) = tokio::io::split(raw.io);
    let drain = tokio::spawn(async move {
        // Keep reading what the server sends (WINDOW_UPDATEs) so it never blocks.
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
        sink
    });
    let chunk = vec![1u8; 16 * 1024];
    for i in 0..64 {
        let mut out = Vec::new();
        frame::encode(
            &Frame::Data {
                stream_id: 1,
                fin: i == 63,
                data: Bytes::from(chunk.clone()),
            },
            &mut out,
        );
        within(wr.write_all(&out)).await.unwrap();
    }
    assert_eq!(within(server).await.unwrap(), N);
    wr.shutdown().await.unwrap();
    let sink = within(drain).await.unwrap();
    // The server never reset the stream.
    let mut off = 0;
    while let Some((f, n)) = frame::parse(&sink[off..], 1 << 24).unwrap() {
        assert!(!matches!(f, Frame::RstStream { .. }), "{f:?}");
        off += n;
    }
}

#[tokio::test]
async fn flow_controlling_peer_overrun_gets_flow_control_error() {
    let ((_sc, mut inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::Settings {
        clear: false,
        entries: vec![],
    })
    .await;
    raw.syn(1, &[("a", "b")], false).await;
    let _ss = within(inc.accept()).await.unwrap();
    for _ in 0..5 {
        raw.send(&Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![0u8; 16 * 1024]),
        })
        .await;
    }
    assert_eq!(
        raw.recv_main().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::FlowControlError.code()
        })
    );
}

#[tokio::test]
async fn peer_initial_window_is_honoured() {
    let ((_sc, mut inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::Settings {
        clear: false,
        entries: vec![Setting {
            flags: 0,
            id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
            value: 1000,
        }],
    })
    .await;
    raw.syn(1, &[("a", "b")], false).await;
    let mut ss = within(inc.accept()).await.unwrap();
    ss.reply(vec![], false).await.unwrap();
    tokio::spawn(async move {
        ss.write_all(&[9u8; 5000]).await.unwrap();
        ss.shutdown().await.unwrap();
        // Keep the stream alive until the peer is done.
        let mut sink = Vec::new();
        let _ = ss.read_to_end(&mut sink).await;
    });
    assert!(matches!(
        raw.recv_main().await,
        Some(Frame::SynReply { .. })
    ));
    let mut got = 0;
    while got < 1000 {
        match raw.recv_main().await.unwrap() {
            Frame::Data { data, .. } => got += data.len(),
            f => panic!("{f:?}"),
        }
    }
    assert_eq!(got, 1000);
    // Nothing more without credit.
    assert!(
        timeout(Duration::from_millis(200), raw.recv_main())
            .await
            .is_err()
    );
    raw.send(&Frame::WindowUpdate {
        stream_id: 1,
        delta: 10_000,
    })
    .await;
    let mut fin = false;
    while !fin {
        match raw.recv_main().await.unwrap() {
            Frame::Data { data, fin: f, .. } => {
                got += data.len();
                fin = f;
            }
            f => panic!("{f:?}"),
        }
    }
    assert_eq!(got, 5000);
}

#[tokio::test]
async fn reading_returns_window_credit() {
    let ((_sc, mut inc), mut raw) = raw_server(Config::default());
    raw.send(&Frame::Settings {
        clear: false,
        entries: vec![],
    })
    .await;
    raw.syn(1, &[("a", "b")], false).await;
    let mut ss = within(inc.accept()).await.unwrap();
    raw.send(&Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from(vec![0u8; 40 * 1024]),
    })
    .await;
    let mut buf = vec![0u8; 40 * 1024];
    within(ss.read_exact(&mut buf)).await.unwrap();
    // Past half the 64 KiB window: a stream WINDOW_UPDATE comes back.
    loop {
        if let Frame::WindowUpdate {
            stream_id: 1,
            delta,
        } = raw.recv().await.unwrap()
        {
            assert_eq!(delta, 40 * 1024);
            break;
        }
    }
}
