//! 160-bit node ids and info-hashes, and the XOR metric over them (BEP 5).

use std::fmt;

use rand::RngCore;

/// A 160-bit node id or info-hash. Ordered as a big-endian unsigned number, so comparing
/// two distances compares them as XOR-metric values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id(pub [u8; 20]);

impl Id {
    /// The id as two big-endian integers (high 128 bits, low 32 bits): cheap to compare.
    #[inline]
    pub(crate) fn key(&self) -> (u128, u32) {
        let mut hi = [0u8; 16];
        hi.copy_from_slice(&self.0[..16]);
        let mut lo = [0u8; 4];
        lo.copy_from_slice(&self.0[16..]);
        (u128::from_be_bytes(hi), u32::from_be_bytes(lo))
    }
}

// Written out instead of derived: the derived order compares byte slices through `memcmp`,
// which was the single hottest function of a 10,000-node simulation (closest-node scans).
impl Ord for Id {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Id {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    pub const LEN: usize = 20;
    pub const ZERO: Id = Id([0; 20]);

    /// Parses exactly 20 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Id> {
        <[u8; 20]>::try_from(b).ok().map(Id)
    }

    pub fn random(rng: &mut impl RngCore) -> Id {
        let mut b = [0u8; 20];
        rng.fill_bytes(&mut b);
        Id(b)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// XOR distance; compare distances with `Ord` (big-endian unsigned).
    pub fn distance(&self, other: &Id) -> Id {
        let mut d = [0u8; 20];
        for (i, o) in d.iter_mut().enumerate() {
            *o = self.0[i] ^ other.0[i];
        }
        Id(d)
    }

    /// Number of leading zero bits (160 for the zero id).
    pub fn leading_zeros(&self) -> u32 {
        let (hi, lo) = self.key();
        if hi != 0 {
            hi.leading_zeros()
        } else {
            128 + lo.leading_zeros()
        }
    }

    /// Length of the common prefix of two ids, in bits (0..=160).
    pub fn common_prefix_len(&self, other: &Id) -> u32 {
        self.distance(other).leading_zeros()
    }

    /// A random id that shares exactly `prefix` leading bits with `self`
    /// (bit `prefix` flipped, the rest random): a target inside bucket `prefix`.
    pub fn random_with_prefix(&self, prefix: u32, rng: &mut impl RngCore) -> Id {
        if prefix >= 160 {
            return *self;
        }
        let mut out = Id::random(rng).0;
        let full = (prefix / 8) as usize;
        out[..full].copy_from_slice(&self.0[..full]);
        let bit = prefix % 8;
        // Keep `bit` high bits of the byte from self, flip the next one, keep the rest random.
        let keep_mask: u8 = if bit == 0 { 0 } else { 0xffu8 << (8 - bit) };
        let flip: u8 = 0x80 >> bit;
        let mine = self.0[full];
        out[full] = (mine & keep_mask) | ((!mine) & flip) | (out[full] & !(keep_mask | flip));
        Id(out)
    }

    /// Hex form, for logs and tests.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 40 hex digits.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 40 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 20];
        for (i, o) in b.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Id(b))
    }
}

impl From<[u8; 20]> for Id {
    fn from(b: [u8; 20]) -> Self {
        Id(b)
    }
}

impl From<Id> for [u8; 20] {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn distance_is_xor_and_symmetric() {
        let a = Id([0xff; 20]);
        let b = Id([0x0f; 20]);
        assert_eq!(a.distance(&b), Id([0xf0; 20]));
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a), Id::ZERO);
    }

    #[test]
    fn leading_zeros_counts_bits() {
        assert_eq!(Id::ZERO.leading_zeros(), 160);
        let mut b = [0u8; 20];
        b[2] = 0x10;
        assert_eq!(Id(b).leading_zeros(), 19);
    }

    #[test]
    fn random_with_prefix_lands_in_bucket() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let me = Id::random(&mut rng);
        for prefix in 0..160 {
            let t = me.random_with_prefix(prefix, &mut rng);
            assert_eq!(me.common_prefix_len(&t), prefix, "prefix {prefix}");
        }
    }

    #[test]
    fn order_is_big_endian_byte_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for i in 0..2000 {
            let a = Id::random(&mut rng);
            let mut b = a;
            // Make them differ in one byte, anywhere (also in the low 32 bits).
            let at = i % 20;
            b.0[at] = rng.next_u32() as u8;
            assert_eq!(a.cmp(&b), a.0.cmp(&b.0), "{a:?} vs {b:?}");
            let c = Id::random(&mut rng);
            assert_eq!(a.cmp(&c), a.0.cmp(&c.0));
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::from_hex("5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401").unwrap();
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(Id::from_hex("zz"), None);
        assert_eq!(
            Id::from_hex("é5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee40"),
            None
        );
    }
}
