//! HPACK (RFC 7541) for the `:authority` rewrite (see `authority`): decoding the
//! client's header blocks, and the plain literals the rewritten blocks are written in.
//!
//! A rewriting connection decodes the header block of every request. The HPACK crates at
//! hand decode each Huffman-coded string by first building a hash map of all 257 codes:
//! about 200,000 instructions per string (callgrind), so a call from a client that needs
//! the rewrite cost more in decoding than berth spends answering it. This decoder walks a
//! code tree built once, and bounds what a block may expand to.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// A decoded header field: name and value, as bytes.
pub type Field = (Vec<u8>, Vec<u8>);

/// What is wrong with a header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The block ends inside a field representation.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer does not fit.
    #[error("HPACK integer too large")]
    IntegerOverflow,
    /// An index that is in neither table.
    #[error("header table index {0} is not in the table")]
    BadIndex(usize),
    /// A Huffman-coded string that is not valid (RFC 7541 5.2).
    #[error("invalid Huffman-coded string")]
    Huffman,
    /// A dynamic table size update above the size the server allows.
    #[error("dynamic table size update to {0} above the limit of {1}")]
    TableSize(usize, usize),
    /// A dynamic table size update after a header field (RFC 7541 4.2).
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
    /// The decoded fields add up to more than the decoder accepts.
    #[error("decoded header list larger than {0} bytes")]
    TooLarge(usize),
}

/// The default SETTINGS_HEADER_TABLE_SIZE (RFC 7540 6.5.2), which the h2 server keeps.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// An HPACK decoder: the dynamic table of one connection's requests.
pub struct Decoder {
    /// Newest entry first, as HPACK indexes them.
    dynamic: VecDeque<Field>,
    /// Size of the dynamic table as RFC 7541 4.1 counts it.
    size: usize,
    /// Current maximum size, set by the encoder's size updates.
    max_size: usize,
    /// The most the encoder may set `max_size` to.
    limit: usize,
    /// The most a decoded block may add up to (names, values and 32 bytes per field).
    max_list: usize,
}

impl Decoder {
    /// A decoder with a dynamic table limit of `table_limit` bytes that refuses blocks
    /// decoding to more than `max_list` bytes.
    pub fn new(table_limit: usize, max_list: usize) -> Decoder {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: table_limit,
            limit: table_limit,
            max_list,
        }
    }

    /// Decodes one complete header block. After an error the dynamic table may be out of
    /// step with the encoder's: the connection has to stop using this decoder.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, DecodeError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut fields: Vec<Field> = Vec::new();
        let mut list = 0usize;
        while let Some(first) = r.peek() {
            let field = if first & 0x80 != 0 {
                let index = r.integer(7)?;
                self.get(index)?.clone()
            } else if first & 0xc0 == 0x40 {
                let field = self.literal(&mut r, 6)?;
                self.insert(field.clone());
                field
            } else if first & 0xe0 == 0x20 {
                if !fields.is_empty() {
                    return Err(DecodeError::LateSizeUpdate);
                }
                let size = r.integer(5)?;
                if size > self.limit {
                    return Err(DecodeError::TableSize(size, self.limit));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Without indexing (0000) and never indexed (0001): the table is untouched.
                self.literal(&mut r, 4)?
            };
            list = list.saturating_add(32 + field.0.len() + field.1.len());
            if list > self.max_list {
                return Err(DecodeError::TooLarge(self.max_list));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn get(&self, index: usize) -> Result<&Field, DecodeError> {
        static TABLE: OnceLock<Vec<Field>> = OnceLock::new();
        let fixed = TABLE.get_or_init(|| {
            STATIC_TABLE
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        });
        match index {
            0 => None,
            i if i <= fixed.len() => fixed.get(i - 1),
            i => self.dynamic.get(i - fixed.len() - 1),
        }
        .ok_or(DecodeError::BadIndex(index))
    }

    /// A literal field whose name index has a `prefix`-bit prefix (0: a literal name).
    fn literal(&self, r: &mut Reader<'_>, prefix: u8) -> Result<Field, DecodeError> {
        let index = r.integer(prefix)?;
        let name = if index == 0 {
            r.string()?
        } else {
            self.get(index)?.0.clone()
        };
        Ok((name, r.string()?))
    }

    fn insert(&mut self, field: Field) {
        let size = 32 + field.0.len() + field.1.len();
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.dynamic.push_front(field);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.dynamic.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= 32 + n.len() + v.len();
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek().ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with a `prefix`-bit prefix (RFC 7541 5.1).
    fn integer(&mut self, prefix: u8) -> Result<usize, DecodeError> {
        let max = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & max;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            // Beyond 28 bits of continuation no sane length or index remains.
            if shift > 21 {
                return Err(DecodeError::IntegerOverflow);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// A string literal, Huffman-decoded when so marked (RFC 7541 5.2).
    fn string(&mut self) -> Result<Vec<u8>, DecodeError> {
        let huffman = self.peek().ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated)?;
        let raw = &self.buf[self.pos..end];
        self.pos = end;
        if huffman {
            huffman_decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// A child in the code tree: another node, or (with this bit) a symbol.
const LEAF: u16 = 0x8000;
const EOS: u16 = 256;

/// The Huffman code as a binary tree: `nodes[n][bit]` is the child of node `n` (0 when
/// absent; the root, node 0, is nobody's child).
fn code_tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes: Vec<[u16; 2]> = vec![[0, 0]];
        for (symbol, &(code, len)) in HUFFMAN_CODE.iter().enumerate() {
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[node][bit] = LEAF | symbol as u16;
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[node][bit] = (nodes.len() - 1) as u16;
                    }
                    node = usize::from(nodes[node][bit]);
                }
            }
        }
        nodes
    })
}

/// Decodes a Huffman-coded string: symbols may not include EOS, and the padding must be
/// fewer than 8 bits, all ones (the start of EOS).
pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let tree = code_tree();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let mut node = 0usize;
    let mut pad_bits = 0u32;
    let mut pad_ones = true;
    for &byte in input {
        for i in (0..8).rev() {
            let bit = (byte >> i) & 1;
            let next = tree
                .get(node)
                .map(|n| n[usize::from(bit)])
                .ok_or(DecodeError::Huffman)?;
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == EOS {
                    return Err(DecodeError::Huffman);
                }
                out.push(symbol as u8);
                node = 0;
                pad_bits = 0;
                pad_ones = true;
            } else if next == 0 {
                return Err(DecodeError::Huffman);
            } else {
                node = usize::from(next);
                pad_bits += 1;
                pad_ones &= bit == 1;
            }
        }
    }
    if pad_bits > 7 || !pad_ones {
        return Err(DecodeError::Huffman);
    }
    Ok(out)
}

/// Appends a "literal header field without indexing, new name", not Huffman-coded: a
/// block of these leaves the decoder's dynamic table as it is.
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Appends an integer with a `prefix_bits`-bit prefix (RFC 7541 5.1).
pub fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte_flags: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: (code, length in bits) of symbols 0 to 256 (EOS).
const HUFFMAN_CODE: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
/// A test encoder: Huffman-codes a string with the RFC's code, padded with ones.
pub(crate) fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in s {
        let (code, len) = HUFFMAN_CODE[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn decoder() -> Decoder {
        Decoder::new(DEFAULT_TABLE_SIZE, 1 << 20)
    }

    fn put_string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let h = huffman_encode(s);
            encode_integer(out, h.len(), 7, 0x80);
            out.extend(h);
        } else {
            encode_integer(out, s.len(), 7, 0);
            out.extend_from_slice(s);
        }
    }

    /// RFC 7541 C.3 and C.4: three requests sharing a dynamic table, without and with
    /// Huffman coding.
    #[test]
    fn rfc_request_examples() {
        let want = [
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let plain = [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ];
        let huffman = [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ];
        for blocks in [plain, huffman] {
            let mut d = decoder();
            for (block, want) in blocks.iter().zip(&want) {
                assert_eq!(&d.decode(&hex(block)).unwrap(), want);
            }
            // Table sizes after the third request: 110 + 54 + 57 (RFC 7541 C.3.3).
            assert_eq!(d.size, 164);
        }
    }

    /// RFC 7541 C.6: responses with Huffman coding in a 256-byte table, with evictions.
    #[test]
    fn rfc_response_examples_with_eviction() {
        let mut d = decoder();
        d.decode(&hex("3fe101")).unwrap(); // size update to 256, this test's setting
        assert_eq!(d.max_size, 256);
        let r1 = d
            .decode(&hex(
                "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
            ))
            .unwrap();
        assert_eq!(
            r1,
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        let r2 = d.decode(&hex("4883640effc1c0bf")).unwrap();
        assert_eq!(r2[0], (b":status".to_vec(), b"307".to_vec()));
        assert_eq!(d.size, 222);
        let r3 = d
            .decode(&hex(
                "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
            ))
            .unwrap();
        assert_eq!(
            r3,
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.size, 215);
        assert_eq!(d.dynamic.len(), 3);
    }

    #[test]
    fn static_table_matches_another_implementation() {
        let mut other = loona_hpack::Decoder::new();
        let mut d = decoder();
        for i in 1..=61u8 {
            assert_eq!(
                d.decode(&[0x80 | i]).unwrap(),
                other.decode(&[0x80 | i]).unwrap(),
                "static index {i}"
            );
        }
    }

    /// Random blocks of every representation, Huffman-coded or not, decoded by this
    /// decoder and another implementation, over one connection's life.
    #[test]
    fn agrees_with_another_implementation_on_random_blocks() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut other = loona_hpack::Decoder::new();
        let mut d = decoder();
        let mut errors = 0;
        for round in 0..300 {
            let mut block = vec![];
            if round % 50 == 7 {
                // The other decoder refuses a block that is only a size update.
                encode_integer(&mut block, (next() % 4097) as usize, 5, 0x20);
                block.push(0x82);
            }
            for _ in 0..(next() % 8) {
                let name: Vec<u8> = (0..1 + next() % 12)
                    .map(|_| b'a' + (next() % 26) as u8)
                    .collect();
                let value: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                let huff = next() % 2 == 0;
                match next() % 5 {
                    0 => encode_integer(&mut block, 1 + (next() % 61) as usize, 7, 0x80),
                    1 => {
                        block.push(0x40);
                        put_string(&mut block, &name, huff);
                        put_string(&mut block, &value, !huff);
                    }
                    2 => {
                        encode_integer(&mut block, 1 + (next() % 61) as usize, 6, 0x40);
                        put_string(&mut block, &value, huff);
                    }
                    3 => {
                        block.push(if huff { 0x10 } else { 0x00 });
                        put_string(&mut block, &name, huff);
                        put_string(&mut block, &value, huff);
                    }
                    _ => {
                        let dynamic = d.dynamic.len();
                        if dynamic > 0 {
                            encode_integer(&mut block, 62 + (next() as usize % dynamic), 7, 0x80);
                        }
                    }
                }
            }
            // A generated dynamic index may have been evicted within the block: then
            // both refuse it, and both start over (their tables are undefined after it).
            match other.decode(&block) {
                Ok(want) => assert_eq!(d.decode(&block).unwrap(), want, "round {round}"),
                Err(_) => {
                    assert!(d.decode(&block).is_err(), "round {round}");
                    errors += 1;
                    other = loona_hpack::Decoder::new();
                    d = decoder();
                }
            }
        }
        assert!(
            errors < 30,
            "{errors} of 300 blocks refused: the test decodes too little"
        );
    }

    #[test]
    fn integers_encode_per_rfc() {
        let mut v = vec![];
        encode_integer(&mut v, 10, 5, 0);
        assert_eq!(v, [10]);
        v.clear();
        encode_integer(&mut v, 1337, 5, 0);
        assert_eq!(v, [31, 154, 10]);
        assert_eq!(Reader { buf: &v, pos: 0 }.integer(5), Ok(1337));
    }

    #[test]
    fn literals_decode_as_written_and_leave_the_table_alone() {
        let mut block = vec![];
        encode_literal(&mut block, b":authority", b"localhost");
        encode_literal(&mut block, b"x-long", &[b'v'; 300]);
        let mut d = decoder();
        assert_eq!(
            d.decode(&block).unwrap(),
            vec![
                (b":authority".to_vec(), b"localhost".to_vec()),
                (b"x-long".to_vec(), vec![b'v'; 300]),
            ]
        );
        assert!(d.dynamic.is_empty());
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
    }

    #[test]
    fn refuses_bad_blocks() {
        let mut d = decoder();
        assert_eq!(d.decode(&[0x80]), Err(DecodeError::BadIndex(0)));
        assert_eq!(d.decode(&[0xbe]), Err(DecodeError::BadIndex(62)));
        assert_eq!(d.decode(&[0x40, 0x05, b'a']), Err(DecodeError::Truncated));
        assert_eq!(d.decode(&[0x7f]), Err(DecodeError::Truncated));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::IntegerOverflow)
        );
        // 'a' (00011) followed by padding of zeros, and by a whole byte of ones.
        assert_eq!(huffman_decode(&[0x18]), Err(DecodeError::Huffman));
        assert_eq!(huffman_decode(&[0x1f, 0xff]), Err(DecodeError::Huffman));
        // EOS (30 ones) inside a string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Huffman)
        );
        assert_eq!(huffman_decode(&[0x1f]).unwrap(), b"a");
        // Size updates: above the limit, and after a field.
        let mut above = vec![];
        encode_integer(&mut above, DEFAULT_TABLE_SIZE + 1, 5, 0x20);
        assert_eq!(
            decoder().decode(&above),
            Err(DecodeError::TableSize(
                DEFAULT_TABLE_SIZE + 1,
                DEFAULT_TABLE_SIZE
            ))
        );
        assert_eq!(
            decoder().decode(&[0x82, 0x20]),
            Err(DecodeError::LateSizeUpdate)
        );
    }

    #[test]
    fn bounds_what_a_block_expands_to() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE, 64 * 1024);
        let mut block = vec![0x40];
        put_string(&mut block, b"x", false);
        put_string(&mut block, &[b'y'; 4000], false);
        // One new 4 KB entry, then a byte per copy of it.
        block.extend(std::iter::repeat_n(0xbe, 100));
        assert_eq!(d.decode(&block), Err(DecodeError::TooLarge(64 * 1024)));
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = decoder();
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b']).unwrap();
        assert_eq!(d.dynamic.len(), 1);
        let mut block = vec![0x40];
        put_string(&mut block, b"big", false);
        put_string(&mut block, &[b'z'; DEFAULT_TABLE_SIZE], false);
        d.decode(&block).unwrap();
        assert!(d.dynamic.is_empty());
        assert_eq!(d.size, 0);
    }

    #[test]
    fn never_panics_on_noise() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut d = decoder();
            let len = (seed % 40) as usize;
            let block: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = d.decode(&block);
        }
    }
}
