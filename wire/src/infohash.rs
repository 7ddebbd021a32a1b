//! The 20-byte SHA-1 info-hash that identifies a (v1) torrent.

use std::fmt;

/// A v1 info-hash: SHA-1 over the bencoded info dictionary's original bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// SHA-1 of the given bytes (the raw info dictionary).
    pub fn of_info_bytes(info: &[u8]) -> Self {
        use sha1::{Digest, Sha1};
        InfoHash(Sha1::digest(info).into())
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case 40-digit hex, as in magnet links.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 40 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(InfoHash(out))
    }
}

impl From<[u8; 20]> for InfoHash {
    fn from(b: [u8; 20]) -> Self {
        InfoHash(b)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_sha1() {
        let h = InfoHash::of_info_bytes(b"abc");
        assert_eq!(h.to_hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(InfoHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(InfoHash::from_hex("zz"), None);
    }
}
