//! BEP 44 items: immutable values stored under their SHA-1, and mutable values stored
//! under the SHA-1 of an ed25519 public key (and salt), signed by its owner, with a
//! sequence number that only goes up.
//!
//! Values are kept as their exact bencoding: the BEP hashes and signs the bytes as they
//! appeared, and re-encoding a decoded value is not always the identity.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha1::{Digest, Sha1};

use crate::id::Id;

/// Largest bencoded value stored or sent (BEP 44 lets nodes refuse more).
pub const MAX_VALUE_LEN: usize = 1000;
/// Longest salt (BEP 44).
pub const MAX_SALT_LEN: usize = 64;

/// Why an item is refused, with its BEP 44 error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("the value is not one bencoded value of at most 1000 bytes")]
    BadValue,
    #[error("invalid signature")]
    BadSignature,
    #[error("salt longer than 64 bytes")]
    SaltTooLong,
    #[error("the stored sequence number differs from cas")]
    CasMismatch,
    #[error("sequence number not above the stored one")]
    SeqTooLow,
}

impl ItemError {
    /// The KRPC error code BEP 44 gives it.
    pub fn code(self) -> i64 {
        match self {
            ItemError::BadValue => 205,
            ItemError::BadSignature => 206,
            ItemError::SaltTooLong => 207,
            ItemError::CasMismatch => 301,
            ItemError::SeqTooLow => 302,
        }
    }
}

/// A stored or fetched item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A bencoded value, stored under its SHA-1.
    Immutable(Vec<u8>),
    Mutable(MutableItem),
}

/// A signed, versioned value (BEP 44 mutable item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableItem {
    /// The owner's ed25519 public key.
    pub key: [u8; 32],
    /// Lets one key own many items (empty: none). Not sent back by `get`.
    pub salt: Vec<u8>,
    pub seq: i64,
    /// The bencoded value.
    pub value: Vec<u8>,
    pub sig: [u8; 64],
}

impl Item {
    /// Where the item is stored.
    pub fn target(&self) -> Id {
        match self {
            Item::Immutable(v) => immutable_target(v),
            Item::Mutable(m) => mutable_target(&m.key, &m.salt),
        }
    }

    /// The bencoded value.
    pub fn value(&self) -> &[u8] {
        match self {
            Item::Immutable(v) => v,
            Item::Mutable(m) => &m.value,
        }
    }

    /// Checks everything a storing or requesting node must: one bencoded value within
    /// bounds, a short salt, a valid signature.
    pub fn validate(&self) -> Result<(), ItemError> {
        validate_value(self.value())?;
        if let Item::Mutable(m) = self {
            if m.salt.len() > MAX_SALT_LEN {
                return Err(ItemError::SaltTooLong);
            }
            if !m.verify() {
                return Err(ItemError::BadSignature);
            }
        }
        Ok(())
    }
}

/// The target of an immutable item: SHA-1 of its bencoding.
pub fn immutable_target(value: &[u8]) -> Id {
    Id(Sha1::digest(value).into())
}

/// The target of a mutable item: SHA-1 of the public key followed by the salt.
pub fn mutable_target(key: &[u8; 32], salt: &[u8]) -> Id {
    let mut h = Sha1::new();
    h.update(key);
    h.update(salt);
    Id(h.finalize().into())
}

/// `bytes` is exactly one bencoded value of at most [`MAX_VALUE_LEN`] bytes.
pub fn validate_value(bytes: &[u8]) -> Result<(), ItemError> {
    if bytes.is_empty() || bytes.len() > MAX_VALUE_LEN {
        return Err(ItemError::BadValue);
    }
    match bencode::decode(bytes) {
        Ok(_) => Ok(()),
        Err(_) => Err(ItemError::BadValue),
    }
}

/// What is signed (BEP 44): `4:salt<len>:<salt>` if there is a salt, then
/// `3:seqi<seq>e1:v` and the value's bencoding.
pub fn signable(salt: &[u8], seq: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(salt.len() + value.len() + 40);
    if !salt.is_empty() {
        out.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
        out.extend_from_slice(salt);
    }
    out.extend_from_slice(format!("3:seqi{seq}e1:v").as_bytes());
    out.extend_from_slice(value);
    out
}

impl MutableItem {
    /// Signs `value` (bencoded) as version `seq` of the item `key` owns under `salt`.
    pub fn sign(key: &SigningKey, salt: &[u8], seq: i64, value: &[u8]) -> MutableItem {
        let sig = key.sign(&signable(salt, seq, value));
        MutableItem {
            key: key.verifying_key().to_bytes(),
            salt: salt.to_vec(),
            seq,
            value: value.to_vec(),
            sig: sig.to_bytes(),
        }
    }

    /// Whether the signature is the key owner's over salt, seq and value.
    pub fn verify(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.key) else {
            return false;
        };
        let sig = Signature::from_bytes(&self.sig);
        key.verify(&signable(&self.salt, self.seq, &self.value), &sig)
            .is_ok()
    }
}

/// A key from its 32-byte seed (the secret a key file holds).
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Reads a key file: the 32-byte seed as 64 hex digits (surrounding whitespace ignored),
/// or the 32 raw bytes.
pub fn parse_key_file(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.len() == 32 {
        return bytes.try_into().ok();
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    parse_hex32(text)
}

/// 64 hex digits to 32 bytes.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let b = text.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // BEP 44's test vectors. Its private keys are in the expanded (ref10) form, so the
    // signatures are checked by verification: ed25519 is deterministic, and a valid
    // signature over the vector's buffer under the vector's key is the check that matters.
    const PUBKEY: &str = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548";

    fn vector_item(salt: &[u8], sig: &str) -> MutableItem {
        MutableItem {
            key: hex(PUBKEY).try_into().unwrap(),
            salt: salt.to_vec(),
            seq: 1,
            value: b"12:Hello World!".to_vec(),
            sig: hex(sig).try_into().unwrap(),
        }
    }

    #[test]
    fn bep44_vector_mutable() {
        let m = vector_item(
            b"",
            "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff\
             1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01",
        );
        assert_eq!(signable(b"", 1, &m.value), b"3:seqi1e1:v12:Hello World!");
        assert!(m.verify());
        assert_eq!(
            Item::Mutable(m.clone()).target().0.to_vec(),
            hex("4a533d47ec9c7d95b1ad75f576cffc641853b750")
        );
        let mut tampered = m;
        tampered.seq = 2;
        assert!(!tampered.verify());
    }

    #[test]
    fn bep44_vector_mutable_with_salt() {
        let m = vector_item(
            b"foobar",
            "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d\
             df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08",
        );
        assert_eq!(
            signable(b"foobar", 1, &m.value),
            b"4:salt6:foobar3:seqi1e1:v12:Hello World!"
        );
        assert!(m.verify());
        assert_eq!(
            Item::Mutable(m.clone()).target().0.to_vec(),
            hex("411eba73b6f087ca51a3795d9c8c938d365e32c1")
        );
        let mut other_salt = m;
        other_salt.salt = b"foobaz".to_vec();
        assert!(!other_salt.verify());
    }

    #[test]
    fn bep44_vector_immutable_and_bep46_targets() {
        assert_eq!(
            immutable_target(b"12:Hello World!").0.to_vec(),
            hex("e5f96f6f38320f0f33959cb4d3d656452117aadb")
        );
        let key: [u8; 32] = hex("8543d3e6115f0f98c944077a4493dcd543e49c739fd998550a1f614ab36ed63e")
            .try_into()
            .unwrap();
        assert_eq!(
            mutable_target(&key, b"").0.to_vec(),
            hex("cc3f9d90b572172053626f9980ce261a850d050b")
        );
        assert_eq!(
            mutable_target(&key, &hex("6e")).0.to_vec(),
            hex("59ee7c2cb9b4f7eb1986ee2d18fd2fdb8a56554f")
        );
    }

    #[test]
    fn signed_items_verify_and_values_are_bounded() {
        let key = signing_key(&[7; 32]);
        let m = MutableItem::sign(&key, b"s", 5, b"5:hello");
        assert_eq!(Item::Mutable(m.clone()).validate(), Ok(()));
        let mut long_salt = MutableItem::sign(&key, &[1; 65], 5, b"5:hello");
        long_salt.salt = vec![1; 65];
        assert_eq!(
            Item::Mutable(long_salt).validate(),
            Err(ItemError::SaltTooLong)
        );
        let big = format!("1001:{}", "x".repeat(1001)).into_bytes();
        assert_eq!(Item::Immutable(big).validate(), Err(ItemError::BadValue));
        assert_eq!(
            Item::Immutable(b"5:hel".to_vec()).validate(),
            Err(ItemError::BadValue)
        );
        assert_eq!(
            Item::Immutable(b"i1ei2e".to_vec()).validate(),
            Err(ItemError::BadValue)
        );
        assert_eq!(Item::Immutable(b"li1ee".to_vec()).validate(), Ok(()));
        let mut forged = m;
        forged.value = b"4:evil".to_vec();
        assert_eq!(
            Item::Mutable(forged).validate(),
            Err(ItemError::BadSignature)
        );
    }

    #[test]
    fn key_files() {
        let seed = [0xab; 32];
        let text = format!("{}\n", "ab".repeat(32));
        assert_eq!(parse_key_file(text.as_bytes()), Some(seed));
        assert_eq!(parse_key_file(&seed), Some(seed));
        assert_eq!(parse_key_file(b"nonsense"), None);
        assert_eq!(parse_hex32(&"zz".repeat(32)), None);
    }
}
