//! The pieces of Message Stream Encryption (MSE, also "protocol encryption", PE): the
//! obfuscated handshake that libtorrent, Transmission, aria2 and others offer, and that
//! some peers require. A Diffie-Hellman exchange over a fixed 768-bit prime gives a shared
//! secret `S`; the torrent's info-hash (`SKEY`) is proved without being sent in clear;
//! both directions are then RC4 streams (first 1024 bytes of keystream discarded), or
//! plaintext if both sides agree to it after the handshake.
//!
//! This module has the pure parts (keys, hashes, RC4); `session` drives the exchange.

use num_bigint::BigUint;
use sha1::{Digest, Sha1};

/// The prime of the key exchange (768 bits), big-endian.
const PRIME_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";
/// Bytes of a public key or the shared secret.
pub const KEY_LEN: usize = 96;
/// Longest padding either side may add.
pub const MAX_PAD: usize = 512;
/// The verification constant, sent encrypted so the other side can find where the
/// encrypted part starts.
pub const VC: [u8; 8] = [0; 8];
/// `crypto_provide` / `crypto_select` bits.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
pub const CRYPTO_RC4: u32 = 0x02;

fn prime() -> BigUint {
    BigUint::parse_bytes(PRIME_HEX.as_bytes(), 16).expect("constant prime")
}

/// Our half of the key exchange.
pub struct KeyPair {
    private: BigUint,
    /// `2^private mod P`, padded to 96 bytes: what we send.
    pub public: [u8; KEY_LEN],
}

impl KeyPair {
    /// A fresh key pair; `random` is 20 random bytes (a 160-bit exponent, as clients use).
    pub fn new(random: [u8; 20]) -> KeyPair {
        let private = BigUint::from_bytes_be(&random);
        let public = BigUint::from(2u32).modpow(&private, &prime());
        KeyPair {
            private,
            public: to_key_bytes(&public),
        }
    }

    /// The shared secret `S` from the other side's public key.
    pub fn secret(&self, their_public: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        let theirs = BigUint::from_bytes_be(their_public);
        to_key_bytes(&theirs.modpow(&self.private, &prime()))
    }
}

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let b = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - b.len()..].copy_from_slice(&b);
    out
}

/// SHA-1 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What the initiator sends first after the keys: `HASH('req1', S)`, which the receiver
/// scans for to find the end of the padding.
pub fn req1(secret: &[u8]) -> [u8; 20] {
    hash(&[b"req1", secret])
}

/// `HASH('req2', SKEY) xor HASH('req3', S)`: names the torrent without revealing it.
pub fn req2_xor_req3(skey: &[u8], secret: &[u8]) -> [u8; 20] {
    let a = hash(&[b"req2", skey]);
    let b = hash(&[b"req3", secret]);
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The two RC4 streams of a connection: (what we encrypt with, what we decrypt with).
pub fn ciphers(secret: &[u8], skey: &[u8], initiator: bool) -> (Rc4, Rc4) {
    let a = Rc4::mse(&hash(&[b"keyA", secret, skey]));
    let b = Rc4::mse(&hash(&[b"keyB", secret, skey]));
    if initiator {
        (a, b)
    } else {
        (b, a)
    }
}

/// RC4, as MSE uses it.
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Rc4 {
        let mut s: [u8; 256] = std::array::from_fn(|i| i as u8);
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// An MSE stream: keyed, with the first 1024 bytes of keystream thrown away.
    fn mse(key: &[u8]) -> Rc4 {
        let mut r = Rc4::new(key);
        r.apply(&mut [0u8; 1024]);
        r
    }

    /// Encrypts or decrypts `buf` in place.
    pub fn apply(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k = self.s[self.s[self.i as usize].wrapping_add(self.s[self.j as usize]) as usize];
            *b ^= k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc4_matches_the_classic_test_vectors() {
        let mut b = *b"Plaintext";
        Rc4::new(b"Key").apply(&mut b);
        assert_eq!(hex::encode(b), "bbf316e8d940af0ad3");
        let mut b = *b"Attack at dawn";
        Rc4::new(b"Secret").apply(&mut b);
        assert_eq!(hex::encode(b), "45a01f645fc35b383552544b9bf5");
    }

    #[test]
    fn both_sides_derive_one_secret_and_mirrored_streams() {
        let a = KeyPair::new([1; 20]);
        let b = KeyPair::new([2; 20]);
        assert_ne!(a.public, b.public);
        let s = a.secret(&b.public);
        assert_eq!(s, b.secret(&a.public));
        let skey = [9u8; 20];
        let (mut a_out, mut a_in) = ciphers(&s, &skey, true);
        let (mut b_out, mut b_in) = ciphers(&s, &skey, false);
        let mut msg = *b"hello from A";
        a_out.apply(&mut msg);
        assert_ne!(&msg, b"hello from A");
        b_in.apply(&mut msg);
        assert_eq!(&msg, b"hello from A");
        let mut back = *b"and from B";
        b_out.apply(&mut back);
        a_in.apply(&mut back);
        assert_eq!(&back, b"and from B");
    }

    #[test]
    fn public_key_of_exponent_one_is_the_generator() {
        let mut one = [0u8; 20];
        one[19] = 1;
        let k = KeyPair::new(one);
        let mut two = [0u8; KEY_LEN];
        two[KEY_LEN - 1] = 2;
        assert_eq!(k.public, two);
    }
}
