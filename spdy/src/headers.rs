//! SPDY/3 name/value header blocks.
//!
//! A block is `count:u32` then `count` times `name_len:u32 name value_len:u32
//! value`, compressed with zlib primed with the SPDY/3 dictionary. Each
//! direction of a connection is ONE zlib stream: every block is a sync-flushed
//! piece of it, so blocks must be compressed and inflated in wire order, and
//! a block that is skipped or half-inflated breaks every later one.
//!
//! Multiple values of one header travel as one value joined by NUL; the
//! decoder splits them into repeated `(name, value)` entries and the encoder
//! joins repeated names back, because peers (Go's spdy framer) reject a block
//! that names a header twice or uses upper case.

use std::collections::HashMap;
use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Headers;
pub use crate::error::HeaderError;

/// Most `(name, value)` entries one decoded block may yield (after splitting
/// NUL-joined values). Keeps a block of empty values from becoming millions
/// of allocations.
pub const MAX_HEADERS: usize = 1024;

/// Adler-32 of [`dictionary()`], the DICTID a SPDY/3 zlib stream names.
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The words of the SPDY/3 dictionary, each stored length-prefixed (u32 big
/// endian) as the spec lays them out.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's unprefixed tail: status codes, reason phrases, dates and
/// common values, concatenated without separators.
const DICTIONARY_TAIL: &[&str] = &[
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    for t in DICTIONARY_TAIL {
        d.extend_from_slice(t.as_bytes());
    }
    d
});

/// The SPDY/3 zlib dictionary (1423 bytes, Adler-32 [`DICTIONARY_ID`]).
pub fn dictionary() -> &'static [u8] {
    &DICTIONARY
}

/// Size of the scratch buffer inflate writes into per call.
const INFLATE_CHUNK: usize = 16 * 1024;

/// Compresses header blocks for one direction of a connection.
pub struct HeaderEncoder {
    z: Compress,
    broken: bool,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    /// A fresh zlib stream primed with the SPDY/3 dictionary.
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Priming can only fail on a misused stream; a failure shows up as an
        // error on the first encode instead of a panic here.
        let broken = z.set_dictionary(dictionary()).is_err();
        HeaderEncoder { z, broken }
    }

    /// Checks `headers` can be encoded and returns the uncompressed block.
    /// Done before touching the zlib stream so a rejected block leaves it intact.
    pub fn raw_block(headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
        let mut merged: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (name, value) in headers {
            if name.is_empty() {
                return Err(HeaderError::Malformed("empty header name"));
            }
            if name.contains('\0') {
                return Err(HeaderError::Malformed("NUL in header name"));
            }
            let lower = name.to_ascii_lowercase();
            match index.get(&lower) {
                Some(&i) => {
                    merged[i].1.push('\0');
                    merged[i].1.push_str(value);
                }
                None => {
                    index.insert(lower.clone(), merged.len());
                    merged.push((lower, value.clone()));
                }
            }
        }
        let mut raw = Vec::new();
        let count =
            u32::try_from(merged.len()).map_err(|_| HeaderError::TooMany { max: MAX_HEADERS })?;
        raw.extend_from_slice(&count.to_be_bytes());
        for (name, value) in &merged {
            for part in [name.as_bytes(), value.as_bytes()] {
                let len = u32::try_from(part.len())
                    .map_err(|_| HeaderError::Malformed("header longer than 4 GiB"))?;
                raw.extend_from_slice(&len.to_be_bytes());
                raw.extend_from_slice(part);
            }
        }
        Ok(raw)
    }

    /// Compresses `headers` as the next block of this stream, appending it to
    /// `out`. Repeated names are joined with NUL and names are lowercased.
    pub fn encode(
        &mut self,
        headers: &[(String, String)],
        out: &mut Vec<u8>,
    ) -> Result<(), HeaderError> {
        let raw = Self::raw_block(headers)?;
        self.compress(&raw, out)
    }

    /// Compresses an already built raw block (see [`HeaderEncoder::raw_block`]).
    pub fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), HeaderError> {
        if self.broken {
            return Err(HeaderError::Compression(
                "header compressor failed earlier".into(),
            ));
        }
        let mut input = raw;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(input.len() + 256);
            }
            let spare = out.capacity() - out.len();
            let before_in = self.z.total_in();
            let before_out = out.len();
            if let Err(e) = self.z.compress_vec(input, out, FlushCompress::Sync) {
                self.broken = true;
                return Err(HeaderError::Compression(e.to_string()));
            }
            let used = (self.z.total_in() - before_in) as usize;
            input = input.get(used..).unwrap_or_default();
            let produced = out.len() - before_out;
            // A sync flush is complete once all input is in and zlib left
            // output space unused.
            if input.is_empty() && produced < spare {
                return Ok(());
            }
        }
    }
}

/// Inflates and parses header blocks for one direction of a connection.
pub struct HeaderDecoder {
    z: Decompress,
    scratch: Vec<u8>,
    /// Set once the zlib stream is unusable (data error, skipped input, or the
    /// peer ended the stream): every later block fails.
    broken: Option<&'static str>,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    /// A fresh inflate stream; the dictionary is supplied when the zlib
    /// header asks for it.
    pub fn new() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
            scratch: vec![0; INFLATE_CHUNK],
            broken: None,
        }
    }

    /// True while later blocks can still be decoded.
    pub fn is_usable(&self) -> bool {
        self.broken.is_none()
    }

    /// Inflates the next block and parses it into `(name, value)` entries.
    ///
    /// `limit` bounds the inflated size (and the total size of the produced
    /// entries). A block over the limit is still inflated to its end, into a
    /// scratch buffer, so the zlib state stays in step with the peer; only
    /// when it exceeds four times the limit do we stop and report a fatal
    /// [`HeaderError::Compression`].
    pub fn decode(&mut self, block: &[u8], limit: usize) -> Result<Headers, HeaderError> {
        let raw = self.inflate(block, limit)?;
        parse_raw(&raw, limit)
    }

    fn fail(&mut self, why: &'static str) -> HeaderError {
        self.broken = Some(why);
        HeaderError::Compression(why.to_string())
    }

    fn inflate(&mut self, block: &[u8], limit: usize) -> Result<Vec<u8>, HeaderError> {
        if let Some(why) = self.broken {
            return Err(HeaderError::Compression(format!(
                "header decompressor unusable: {why}"
            )));
        }
        let skip_cap = limit.saturating_mul(4);
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut input = block;
        loop {
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            let res = self
                .z
                .decompress(input, &mut self.scratch, FlushDecompress::Sync);
            let used = (self.z.total_in() - before_in) as usize;
            let produced = (self.z.total_out() - before_out) as usize;
            input = input.get(used..).unwrap_or_default();
            total = total.saturating_add(produced);
            if total <= limit {
                out.extend_from_slice(self.scratch.get(..produced).unwrap_or_default());
            } else if total > skip_cap {
                return Err(self.fail("header block too large to skip"));
            }
            match res {
                Ok(Status::StreamEnd) => {
                    // The peer finished its zlib stream: this block is whole
                    // but no later block can follow it.
                    self.broken = Some("peer ended the header zlib stream");
                    if !input.is_empty() {
                        return Err(self.fail("data after the end of the header zlib stream"));
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        if self.z.set_dictionary(dictionary()).is_err() {
                            return Err(self.fail("zlib refused the SPDY dictionary"));
                        }
                        continue;
                    }
                    Some(_) => {
                        return Err(self.fail("header block names an unknown zlib dictionary"));
                    }
                    None => return Err(self.fail("corrupt zlib data in header block")),
                },
            }
            if input.is_empty() && produced < self.scratch.len() {
                break;
            }
            if used == 0 && produced == 0 {
                return Err(self.fail("zlib made no progress on header block"));
            }
        }
        if total > limit {
            return Err(HeaderError::TooLarge { limit });
        }
        Ok(out)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, HeaderError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or(HeaderError::Malformed("truncated length field"))?;
        self.pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], HeaderError> {
        let len = self.u32()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(HeaderError::Malformed("length overflows"))?;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(HeaderError::Malformed("name or value runs past the block"))?;
        self.pos = end;
        Ok(b)
    }
}

/// Parses an inflated block.
fn parse_raw(raw: &[u8], limit: usize) -> Result<Headers, HeaderError> {
    let mut r = Reader { buf: raw, pos: 0 };
    let count = r.u32()? as usize;
    if count > MAX_HEADERS {
        return Err(HeaderError::TooMany { max: MAX_HEADERS });
    }
    let mut headers = Vec::with_capacity(count);
    // Bytes the produced entries occupy; a long name repeated for many
    // NUL-separated values must not multiply past the limit.
    let mut size = 0usize;
    for _ in 0..count {
        let name = r.bytes()?;
        let value = r.bytes()?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| HeaderError::Malformed("header name is not UTF-8"))?
            .to_ascii_lowercase();
        let value = std::str::from_utf8(value)
            .map_err(|_| HeaderError::Malformed("header value is not UTF-8"))?;
        for v in value.split('\0') {
            if headers.len() >= MAX_HEADERS {
                return Err(HeaderError::TooMany { max: MAX_HEADERS });
            }
            size = size.saturating_add(name.len() + v.len());
            if size > limit {
                return Err(HeaderError::TooLarge { limit });
            }
            headers.push((name.clone(), v.to_string()));
        }
    }
    if r.pos != raw.len() {
        return Err(HeaderError::Malformed("bytes after the last header"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_matches_the_spec() {
        // 1423 bytes and DICTID 0xe3c6a7c2, the values SPDY/3 implementations
        // (Go's spdy framer, Protocol::SPDY) agree on.
        assert_eq!(dictionary().len(), 1423);
        assert_eq!(adler32(dictionary()), DICTIONARY_ID);
        assert_eq!(&dictionary()[..11], b"\0\0\0\x07options");
        assert!(dictionary().ends_with(b"enq=0."));
    }

    #[test]
    fn round_trip_many_blocks_on_one_stream() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let blocks = [
            h(&[("streamtype", "error")]),
            h(&[
                ("streamtype", "stdout"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
            h(&[]),
            h(&[
                ("streamtype", "stdout"),
                ("port", "8080"),
                ("requestid", "1"),
            ]),
            h(&[("x", &"y".repeat(100_000))]),
        ];
        for b in &blocks {
            let mut out = Vec::new();
            enc.encode(b, &mut out).unwrap();
            assert_eq!(&dec.decode(&out, 256 * 1024).unwrap(), b);
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_blocks_from_c_zlib() {
        // Two blocks on one stream, made with C zlib (Python's zlib module,
        // level 9, zdict = the SPDY/3 dictionary, Z_SYNC_FLUSH after each),
        // i.e. what Go's compress/zlib-based framer sends, by an independent
        // implementation. (The reverse was checked by hand: C zlib inflates
        // our blocks.)
        let b1 = unhex("78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
        let b2 = unhex("02651c0c2960624ec90797d1ec15bab9a53925992026b080602829cf07000000ffff");
        let mut dec = HeaderDecoder::new();
        assert_eq!(
            dec.decode(&b1, 1024).unwrap(),
            h(&[("streamtype", "error")])
        );
        assert_eq!(
            dec.decode(&b2, 1024).unwrap(),
            h(&[
                ("streamtype", "stdout"),
                ("x-multi", "one"),
                ("x-multi", "two")
            ])
        );
    }

    #[test]
    fn zlib_header_names_the_dictionary() {
        let mut enc = HeaderEncoder::new();
        let mut out = Vec::new();
        enc.encode(&h(&[("a", "b")]), &mut out).unwrap();
        // CMF/FLG with FDICT set, then the DICTID.
        assert_eq!(out[0] & 0x0f, 8);
        assert_ne!(out[1] & 0x20, 0);
        assert_eq!(&out[2..6], &DICTIONARY_ID.to_be_bytes());
        // Sync flush marker ends every block.
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn repeated_names_join_and_split() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut out = Vec::new();
        enc.encode(&h(&[("A", "1"), ("b", "2"), ("a", "3")]), &mut out)
            .unwrap();
        let raw = HeaderEncoder::raw_block(&h(&[("A", "1"), ("b", "2"), ("a", "3")])).unwrap();
        assert_eq!(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]), 2);
        assert_eq!(
            dec.decode(&out, 1024).unwrap(),
            h(&[("a", "1"), ("a", "3"), ("b", "2")])
        );
    }

    #[test]
    fn oversized_block_keeps_the_stream_in_step() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut big = Vec::new();
        enc.encode(&h(&[("x", &"z".repeat(300_000))]), &mut big)
            .unwrap();
        assert_eq!(
            dec.decode(&big, 256 * 1024),
            Err(HeaderError::TooLarge { limit: 256 * 1024 })
        );
        let mut next = Vec::new();
        enc.encode(&h(&[("after", "ok")]), &mut next).unwrap();
        assert_eq!(
            dec.decode(&next, 256 * 1024).unwrap(),
            h(&[("after", "ok")])
        );
    }

    #[test]
    fn hugely_oversized_block_is_fatal() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut big = Vec::new();
        enc.encode(&h(&[("x", &"z".repeat(100_000))]), &mut big)
            .unwrap();
        let e = dec.decode(&big, 1000).unwrap_err();
        assert!(e.is_fatal(), "{e}");
        assert!(!dec.is_usable());
        assert!(dec.decode(&big, 1 << 20).unwrap_err().is_fatal());
    }

    #[test]
    fn too_many_entries_from_nul_splitting() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut out = Vec::new();
        enc.encode(&h(&[("n", &"\0".repeat(5000))]), &mut out)
            .unwrap();
        assert_eq!(
            dec.decode(&out, 1 << 20),
            Err(HeaderError::TooMany { max: MAX_HEADERS })
        );
        // Structural errors leave the stream usable.
        assert!(dec.is_usable());
    }

    #[test]
    fn long_name_times_many_values_is_bounded() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut out = Vec::new();
        let name = "n".repeat(10_000);
        enc.encode(&[(name, "\0".repeat(100))], &mut out).unwrap();
        assert_eq!(
            dec.decode(&out, 64 * 1024),
            Err(HeaderError::TooLarge { limit: 64 * 1024 })
        );
    }

    #[test]
    fn garbage_is_a_fatal_error() {
        let mut dec = HeaderDecoder::new();
        assert!(dec.decode(b"not zlib at all", 1024).unwrap_err().is_fatal());
        // zlib header naming another dictionary.
        let mut dec = HeaderDecoder::new();
        let e = dec
            .decode(&[0x78, 0xbb, 1, 2, 3, 4, 0, 0], 1024)
            .unwrap_err();
        assert!(e.is_fatal());
    }

    #[test]
    fn malformed_raw_blocks() {
        assert!(matches!(
            parse_raw(b"", 100),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse_raw(&[0, 0, 0, 1, 0, 0, 0, 9, b'a'], 100),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse_raw(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], 100),
            Err(HeaderError::Malformed("empty header name"))
        ));
        assert!(matches!(
            parse_raw(&[0, 0, 0, 0, 1], 100),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse_raw(&[0xff, 0xff, 0xff, 0xff], 100),
            Err(HeaderError::TooMany { .. })
        ));
    }

    #[test]
    fn encoder_rejects_bad_names() {
        assert!(HeaderEncoder::raw_block(&h(&[("", "v")])).is_err());
        assert!(HeaderEncoder::raw_block(&h(&[("a\0b", "v")])).is_err());
    }
}
