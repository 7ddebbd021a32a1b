//! A minimal streaming encoder: the caller writes dictionary keys in sorted order (as every
//! BEP requires), and the encoder writes straight into a byte buffer with no intermediate
//! tree, which is what the KRPC hot path wants.

use crate::value::Value;

/// Writes bencode into a `Vec<u8>`.
pub struct Encoder<'b> {
    out: &'b mut Vec<u8>,
}

impl<'b> Encoder<'b> {
    pub fn new(out: &'b mut Vec<u8>) -> Self {
        Encoder { out }
    }

    pub fn int(&mut self, i: i64) -> &mut Self {
        self.out.push(b'i');
        push_decimal_i64(self.out, i);
        self.out.push(b'e');
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        push_decimal_u64(self.out, b.len() as u64);
        self.out.push(b':');
        self.out.extend_from_slice(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Writes a dictionary key; keys of one dictionary must come in sorted order.
    pub fn key(&mut self, k: &[u8]) -> &mut Self {
        self.bytes(k)
    }

    pub fn begin_list(&mut self) -> &mut Self {
        self.out.push(b'l');
        self
    }

    pub fn begin_dict(&mut self) -> &mut Self {
        self.out.push(b'd');
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.out.push(b'e');
        self
    }

    /// Writes a byte string of exactly `len` bytes produced by `fill`, with no buffer of
    /// its own (e.g. compact node lists). Panics if `fill` writes another length, which
    /// would corrupt the output.
    pub fn bytes_with(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        push_decimal_u64(self.out, len as u64);
        self.out.push(b':');
        let start = self.out.len();
        fill(self.out);
        assert_eq!(self.out.len() - start, len, "bytes_with: wrong length");
        self
    }

    /// Copies already-encoded bencode (e.g. a raw info dictionary) verbatim.
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.out.extend_from_slice(encoded);
        self
    }

    pub fn value(&mut self, v: &Value<'_>) -> &mut Self {
        v.encode(self);
        self
    }
}

/// Types that know how to write themselves as bencode.
pub trait ToBencode {
    fn encode(&self, enc: &mut Encoder<'_>);

    fn to_bencode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut Encoder::new(&mut out));
        out
    }
}

impl ToBencode for Value<'_> {
    /// Writes entries in stored order, so canonical input re-encodes to the same bytes.
    fn encode(&self, enc: &mut Encoder<'_>) {
        match self {
            Value::Int(i) => {
                enc.int(*i);
            }
            Value::Bytes(b) => {
                enc.bytes(b);
            }
            Value::List(l) => {
                enc.begin_list();
                for item in &l.items {
                    item.encode(enc);
                }
                enc.end();
            }
            Value::Dict(d) => {
                enc.begin_dict();
                for (k, v) in &d.entries {
                    enc.key(k);
                    v.encode(enc);
                }
                enc.end();
            }
        }
    }
}

fn push_decimal_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_decimal_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_decimal_u64(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;

    #[test]
    fn writes_canonical_forms() {
        let mut out = Vec::new();
        Encoder::new(&mut out)
            .begin_dict()
            .key(b"a")
            .int(-7)
            .key(b"b")
            .begin_list()
            .str("xy")
            .int(0)
            .int(i64::MIN)
            .end()
            .end();
        assert_eq!(out, b"d1:ai-7e1:bl2:xyi0ei-9223372036854775808eee".to_vec());
        assert_eq!(decode(&out).unwrap().to_bencode(), out);
    }
}
