//! Accepting the `:authority` that many gRPC clients send over unix sockets.
//!
//! kubelet and crictl up to Kubernetes 1.26 (and grpc-java, grpc-python, ...) send the
//! socket *path* as the HTTP/2 `:authority` of every request on a unix socket. The h2
//! server under tonic rejects such a request as malformed (RST_STREAM PROTOCOL_ERROR; see
//! hyperium/h2 PR 487, still open), while containerd and CRI-O, built on grpc-go, accept it.
//! So berth inspects the first header block of each connection: when its `:authority` is
//! not a valid URI authority, every header block of that connection is decoded (HPACK, with
//! the `loona-hpack` crate, keeping the client's dynamic table) and re-encoded with
//! `:authority: localhost`, the value grpc-go itself now uses for unix sockets, by an
//! encoder of the connection's own whose dynamic table the server's decoder follows.
//! Otherwise the connection is passed through untouched from then on, at no cost.
//!
//! Only the client-to-server direction is rewritten; frames other than HEADERS and
//! CONTINUATION are copied as they are. A block that does not decode, or decodes to more
//! than [`MAX_DECODED_LIST`] bytes, ends the rewriting: from there on the connection is
//! passed through and the server reports the error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE of the h2 server; re-encoded blocks are split to fit.
const MAX_FRAME: usize = 16_384;
/// Frames larger than this are not buffered: the connection is passed through and h2
/// reports the error.
const MAX_BUFFERED_FRAME: usize = 1 << 20;
/// The most a rewritten header block may decode to (names, values and 32 bytes per field,
/// as HPACK counts them), so that a small block of indexes cannot expand without bound.
pub const MAX_DECODED_LIST: usize = 1 << 20;
/// The default SETTINGS_HEADER_TABLE_SIZE (RFC 7540 6.5.2), which the server keeps: the
/// largest dynamic table a client may ask for.
const HEADER_TABLE_SIZE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the connection preface.
    Preface,
    /// Waiting for the first complete header block.
    Detect,
    /// Re-encoding every header block.
    Rewrite,
    /// Copying bytes through.
    Passthrough,
}

/// A connection whose incoming HTTP/2 header blocks get a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from `inner` not yet processed.
    input: BytesMut,
    /// Processed bytes ready for the reader.
    output: BytesMut,
    /// A HEADERS frame and its CONTINUATIONs while the block is incomplete.
    pending: Option<PendingBlock>,
    /// The client's header compression context.
    decoder: loona_hpack::Decoder<'static>,
    /// The context of the rewritten blocks, which the server's decoder shares.
    encoder: loona_hpack::Encoder<'static>,
    eof: bool,
}

struct PendingBlock {
    /// The frames exactly as received, for pass-through.
    raw: BytesMut,
    /// The concatenated header block fragment.
    block: BytesMut,
    stream_id: u32,
    end_stream: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> AuthorityFix<S> {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            eof: false,
        }
    }

    /// Moves complete units from `input` to `output`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return;
                }
                Mode::Preface => {
                    if self.input.len() < PREFACE.len() {
                        if !PREFACE.starts_with(&self.input) {
                            self.mode = Mode::Passthrough;
                            continue;
                        }
                        return;
                    }
                    if &self.input[..PREFACE.len()] != PREFACE {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    let p = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&p);
                    self.mode = Mode::Detect;
                }
                Mode::Detect | Mode::Rewrite => {
                    if self.input.len() < 9 {
                        return;
                    }
                    let len = (usize::from(self.input[0]) << 16)
                        | (usize::from(self.input[1]) << 8)
                        | usize::from(self.input[2]);
                    if len > MAX_BUFFERED_FRAME {
                        self.give_up();
                        continue;
                    }
                    if self.input.len() < 9 + len {
                        return;
                    }
                    let frame = self.input.split_to(9 + len);
                    self.frame(frame);
                }
            }
        }
    }

    /// Stops rewriting: everything buffered goes out as received.
    fn give_up(&mut self) {
        if let Some(p) = self.pending.take() {
            self.output.extend_from_slice(&p.raw);
        }
        self.mode = Mode::Passthrough;
    }

    fn frame(&mut self, frame: BytesMut) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[9..];
        match kind {
            FRAME_HEADERS if self.pending.is_none() => {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    self.output.extend_from_slice(&frame);
                    self.mode = Mode::Passthrough;
                    return;
                };
                let mut p = PendingBlock {
                    raw: BytesMut::new(),
                    block: BytesMut::new(),
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                };
                p.block.extend_from_slice(fragment);
                p.raw.extend_from_slice(&frame);
                self.pending = Some(p);
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            FRAME_CONTINUATION
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.stream_id == stream_id) =>
            {
                if let Some(p) = self.pending.as_mut() {
                    p.block.extend_from_slice(payload);
                    p.raw.extend_from_slice(&frame);
                }
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            _ if self.pending.is_some() => {
                // Anything else inside a header block is a protocol error h2 will report.
                self.give_up();
                self.output.extend_from_slice(&frame);
            }
            _ => self.output.extend_from_slice(&frame),
        }
    }

    fn finish_block(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let Some(headers) = self.decode(&p.block) else {
            self.output.extend_from_slice(&p.raw);
            self.mode = Mode::Passthrough;
            return;
        };
        if self.mode == Mode::Detect {
            let bad = headers
                .iter()
                .any(|(n, v)| n.as_slice() == b":authority" && !valid_authority(v));
            if !bad {
                self.output.extend_from_slice(&p.raw);
                self.mode = Mode::Passthrough;
                return;
            }
            tracing::debug!("client sends a socket path as :authority; rewriting it to localhost");
            self.mode = Mode::Rewrite;
        }
        let block = self.encoder.encode(headers.iter().map(|(name, value)| {
            let value: &[u8] = if name.as_slice() == b":authority" && !valid_authority(value) {
                b"localhost"
            } else {
                value
            };
            (name.as_slice(), value)
        }));
        write_header_frames(&mut self.output, p.stream_id, p.end_stream, &block);
    }

    /// Decodes a complete header block; `None` when it is invalid or decodes to more than
    /// [`MAX_DECODED_LIST`]. After that the decoder is out of step with the client.
    fn decode(&mut self, block: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut fields = Vec::new();
        let mut size = 0usize;
        let decoded = self.decoder.decode_with_cb(block, |name, value| {
            size = size.saturating_add(name.len() + value.len() + 32);
            if size <= MAX_DECODED_LIST {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        (decoded.is_ok() && size <= MAX_DECODED_LIST).then_some(fields)
    }
}

/// The header block fragment of a HEADERS frame payload (padding and priority removed).
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    (start <= end).then(|| &payload[start..end])
}

/// True when `v` parses as a URI authority, as h2 requires.
fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// A HEADERS frame (plus CONTINUATIONs when the block is larger than one frame).
fn write_header_frames(out: &mut BytesMut, stream_id: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut first = true;
    if block.is_empty() {
        put_frame_header(
            out,
            0,
            FRAME_HEADERS,
            FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 },
            stream_id,
        );
        return;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut flags = if last { FLAG_END_HEADERS } else { 0 };
        let kind = if first {
            if end_stream {
                flags |= FLAG_END_STREAM;
            }
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        put_frame_header(out, chunk.len(), kind, flags, stream_id);
        out.extend_from_slice(chunk);
        first = false;
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id & 0x7fff_ffff);
}

/// tonic's server asks its connections who the peer is: the wrapped connection's answer.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = buf.remaining().min(this.output.len());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.input.is_empty() && this.pending.is_none() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // The peer closed mid-frame: hand over what is left as it came.
                if let Some(p) = this.pending.take() {
                    this.output.extend_from_slice(&p.raw);
                }
                let rest = this.input.split();
                this.output.extend_from_slice(&rest);
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.input.extend_from_slice(rb.filled());
                        this.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, block.len(), FRAME_HEADERS, flags, stream);
        out.extend_from_slice(block);
        out.to_vec()
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    fn decode_blocks(mut bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut dec = loona_hpack::Decoder::new();
        let mut out = vec![];
        let mut block = vec![];
        while bytes.len() >= 9 {
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = &bytes[9..9 + len];
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                block.extend_from_slice(if kind == FRAME_HEADERS {
                    headers_fragment(flags, payload).unwrap()
                } else {
                    payload
                });
                if flags & FLAG_END_HEADERS != 0 {
                    out.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn rewrites_path_authority_and_keeps_dynamic_table_state() {
        let mut enc = loona_hpack::Encoder::new();
        let h1: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", b"/run/berth/berth.sock"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.51.0"),
        ];
        // The second block reuses dynamic-table entries the first one created.
        let b1 = enc.encode(h1.iter().copied());
        let b2 = enc.encode(h1.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        // A DATA frame in between passes unchanged.
        input.extend([0, 0, 1, 0, 1, 0, 0, 0, 1, 0xaa]);
        // Split the second block over HEADERS (padded) + CONTINUATION.
        let (a, b) = b2.split_at(3);
        let mut padded = vec![2u8];
        padded.extend_from_slice(a);
        padded.extend([0, 0]);
        input.extend(headers_frame(3, FLAG_PADDED | FLAG_END_STREAM, &padded));
        let mut cont = BytesMut::new();
        put_frame_header(&mut cont, b.len(), FRAME_CONTINUATION, FLAG_END_HEADERS, 3);
        cont.extend_from_slice(b);
        input.extend(cont.to_vec());
        let out = run(input).await;
        let blocks = decode_blocks(&out);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            let auth = b.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, b"localhost");
            assert!(
                b.iter()
                    .any(|(n, v)| n == b":path" && v == b"/runtime.v1.RuntimeService/Version")
            );
            assert!(
                b.iter()
                    .any(|(n, v)| n == b"user-agent" && v == b"grpc-go/1.51.0")
            );
        }
        // The DATA frame survived.
        assert!(
            out.windows(10)
                .any(|w| w == [0, 0, 1, 0, 1, 0, 0, 0, 1, 0xaa])
        );
    }

    /// grpc-go Huffman-codes literal values and indexes them: the rewrite decodes both.
    #[tokio::test]
    async fn rewrites_a_huffman_coded_indexed_authority() {
        // The two values Huffman-coded (RFC 7541 Appendix B, padded with ones).
        const PATH: [u8; 25] = [
            0x62, 0xcb, 0x6a, 0x49, 0xa9, 0x2a, 0xfd, 0xc2, 0xbe, 0xdb, 0x6a, 0x49, 0xa9, 0x2e,
            0xe2, 0xd9, 0xdc, 0xc4, 0x2b, 0x1c, 0x4b, 0x62, 0x0c, 0x7a, 0xbf,
        ];
        const SOCKET: [u8; 25] = [
            0x63, 0xb8, 0xec, 0x62, 0xcb, 0x6a, 0x60, 0x87, 0xa9, 0x23, 0x35, 0x45, 0xb2, 0x46,
            0x08, 0x7a, 0x92, 0x33, 0x54, 0x5b, 0x24, 0x5d, 0x07, 0x27, 0x5f,
        ];
        let mut b1 = vec![0x83, 0x86]; // :method POST, :scheme http
        for (name_index, coded) in [(4u8, PATH), (1, SOCKET)] {
            b1.push(0x40 | name_index);
            b1.push(0x80 | u8::try_from(coded.len()).unwrap());
            b1.extend(coded);
        }
        // The second request names both by their dynamic-table indexes.
        let b2 = [0x83, 0x86, 0xbf, 0xbe];
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        input.extend(headers_frame(3, FLAG_END_HEADERS, &b2));
        let blocks = decode_blocks(&run(input).await);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            assert!(b.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
            assert!(b.contains(&(
                b":path".to_vec(),
                b"/runtime.v1.RuntimeService/Version".to_vec()
            )));
        }
    }

    #[tokio::test]
    async fn valid_authority_passes_through_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let h: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"localhost"),
            (b":path", b"/x"),
        ];
        let b1 = enc.encode(h.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        input.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(run(input.clone()).await, input);
    }

    /// A small block of indexes that would decode to more than the bound ends the rewrite:
    /// it and what follows go out as received.
    #[tokio::test]
    async fn a_block_decoding_past_the_bound_is_passed_through() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'v'; 4000];
        let h1: Vec<(&[u8], &[u8])> =
            vec![(b":authority", b"/run/berth/berth.sock"), (b"x-big", &big)];
        let b1 = enc.encode(h1.iter().copied());
        // The second block names the big entry (dynamic index 62) 300 times: ~1.2 MB.
        let b2 = vec![0x80 | 62; 300];
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        let raw2 = headers_frame(3, FLAG_END_HEADERS, &b2);
        input.extend(&raw2);
        let data = [0, 0, 1, 0, 1, 0, 0, 0, 3, 0xaa];
        input.extend(data);
        let out = run(input).await;
        let mut tail = raw2.clone();
        tail.extend(data);
        assert!(out.ends_with(&tail));
        // The first block was rewritten.
        let first = &out[..out.len() - tail.len()];
        let blocks = decode_blocks(first);
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[tokio::test]
    async fn garbage_is_passed_through() {
        let input = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(run(input.clone()).await, input);
        let mut bad = PREFACE.to_vec();
        bad.extend(headers_frame(1, FLAG_END_HEADERS, &[0xff, 0xff, 0xff]));
        assert_eq!(run(bad.clone()).await, bad);
        // Truncated frame at EOF.
        let mut trunc = PREFACE.to_vec();
        trunc.extend([0, 0, 50, 1, 4, 0, 0, 0, 1, 1, 2]);
        assert_eq!(run(trunc.clone()).await, trunc);
    }

    #[test]
    fn socket_paths_are_not_authorities() {
        assert!(valid_authority(b"localhost"));
        assert!(!valid_authority(b"/run/berth/berth.sock"));
    }
}
