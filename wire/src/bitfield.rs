//! A fixed-length set of piece indices, stored as 64-bit words, with the BEP 3 wire
//! layout (piece 0 is the high bit of the first byte) for conversion.

use std::fmt;

/// Why a peer's bitfield was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitfieldError {
    /// The payload is not `ceil(pieces / 8)` bytes long.
    WrongLength { expected: usize, got: usize },
    /// A bit past the last piece is set (BEP 3: spare bits must be zero).
    SpareBitsSet,
}

impl fmt::Display for BitfieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitfieldError::WrongLength { expected, got } => {
                write!(f, "bitfield is {got} bytes, expected {expected}")
            }
            BitfieldError::SpareBitsSet => f.write_str("bitfield has spare bits set"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// Every piece set.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for w in b.words.iter_mut() {
            *w = u64::MAX;
        }
        b.clear_spare();
        b.ones = len;
        b
    }

    fn clear_spare(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Parses a wire bitfield for `len` pieces; the length and spare bits are checked.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let mut b = Self::new(len);
        for (i, &byte) in bytes.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            for k in 0..8 {
                if byte & (0x80 >> k) != 0 {
                    let idx = i * 8 + k;
                    if idx >= len as usize {
                        return Err(BitfieldError::SpareBitsSet);
                    }
                    b.words[idx / 64] |= 1 << (idx % 64);
                    b.ones += 1;
                }
            }
        }
        Ok(b)
    }

    /// The wire layout: `ceil(len / 8)` bytes, piece 0 in the high bit of byte 0.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; (self.len as usize).div_ceil(8)];
        for idx in self.iter_ones() {
            out[idx as usize / 8] |= 0x80 >> (idx % 8);
        }
        out
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub fn none_set(&self) -> bool {
        self.ones == 0
    }

    /// False for indices out of range.
    pub fn get(&self, idx: u32) -> bool {
        idx < self.len && self.words[idx as usize / 64] & (1 << (idx % 64)) != 0
    }

    /// Sets `idx`; returns true when it was not set before. Out of range is ignored.
    pub fn set(&mut self, idx: u32) -> bool {
        if idx >= self.len || self.get(idx) {
            return false;
        }
        self.words[idx as usize / 64] |= 1 << (idx % 64);
        self.ones += 1;
        true
    }

    /// Clears `idx`; returns true when it was set.
    pub fn clear(&mut self, idx: u32) -> bool {
        if !self.get(idx) {
            return false;
        }
        self.words[idx as usize / 64] &= !(1 << (idx % 64));
        self.ones -= 1;
        true
    }

    /// True when `other` has a piece that `self` lacks (same length assumed).
    pub fn lacks_any_of(&self, other: &Bitfield) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .any(|(a, b)| b & !a != 0)
    }

    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_and_layout() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.to_bytes(), vec![0x80, 0x40]);
        let back = Bitfield::from_bytes(&[0x80, 0x40], 10).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(back.count_ones(), 2);
    }

    #[test]
    fn rejects_wrong_length_and_spare_bits() {
        assert_eq!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0xe0], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        assert!(Bitfield::from_bytes(&[0xff, 0xc0], 10).unwrap().is_full());
    }

    #[test]
    fn full_and_lacks() {
        let f = Bitfield::full(130);
        assert_eq!(f.count_ones(), 130);
        assert_eq!(f.iter_ones().count(), 130);
        let mut e = Bitfield::new(130);
        assert!(e.lacks_any_of(&f));
        for i in 0..130 {
            e.set(i);
        }
        assert!(!e.lacks_any_of(&f));
        assert!(!e.set(200));
        assert!(e.clear(5) && !e.clear(5));
    }
}
