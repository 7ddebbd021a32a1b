//! Announce tokens (BEP 5): a keyed hash (SipHash-2-4, a PRF built for short inputs) of
//! the requester's IP under a 128-bit secret, so a token is only good from the address it
//! was handed to and cannot be made without the secret. The secret rotates; tokens made
//! with the previous secret are still accepted, so a token lives between one and two
//! rotations. SipHash costs a few tens of nanoseconds where SHA-1 cost several hundred, and
//! a bootstrap node makes one token per get_peers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::krpc::canonical_ip;

pub const TOKEN_LEN: usize = 8;

#[derive(Clone, Debug)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated_at: Instant,
    every: Duration,
}

impl Tokens {
    pub fn new(now: Instant, every: Duration, rng: &mut impl RngCore) -> Tokens {
        let mut current = [0u8; 16];
        let mut previous = [0u8; 16];
        rng.fill_bytes(&mut current);
        rng.fill_bytes(&mut previous);
        Tokens {
            current,
            previous,
            rotated_at: now,
            every,
        }
    }

    fn make(secret: &[u8; 16], ip: IpAddr) -> [u8; TOKEN_LEN] {
        let tag = match canonical_ip(ip) {
            IpAddr::V4(v4) => siphash24(secret, &v4.octets()),
            IpAddr::V6(v6) => siphash24(secret, &v6.octets()),
        };
        tag.to_le_bytes()
    }

    /// The token to hand to `ip` now.
    pub fn issue(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        Self::make(&self.current, ip)
    }

    /// Whether `token` was issued to `ip` under the current or previous secret.
    pub fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        token == Self::make(&self.current, ip) || token == Self::make(&self.previous, ip)
    }

    /// Rotates the secret if it is due (possibly several times after a long pause).
    pub fn maybe_rotate(&mut self, now: Instant, rng: &mut impl RngCore) {
        let mut rotations = 0;
        while now.saturating_duration_since(self.rotated_at) >= self.every && rotations < 2 {
            self.previous = self.current;
            rng.fill_bytes(&mut self.current);
            self.rotated_at += self.every;
            rotations += 1;
        }
        if now.saturating_duration_since(self.rotated_at) >= self.every {
            // Long pause: both secrets are stale already; restart the schedule at now.
            self.rotated_at = now;
        }
    }

    pub fn next_rotation(&self) -> Instant {
        self.rotated_at + self.every
    }
}

/// SipHash-2-4 (Aumasson and Bernstein) of `msg` under `key`, little-endian as specified.
fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    fn compress(m: u64, v: &mut [u64; 4]) {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    }
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        compress(u64::from_le_bytes(c.try_into().expect("8 bytes")), &mut v);
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    compress(u64::from_le_bytes(last), &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0u8..64).collect();
        // From the SipHash paper (appendix A): 15-byte message 00..0e.
        assert_eq!(siphash24(&key, &msg[..15]), 0xa129_ca61_49be_45e5);
        // The standard library's (deprecated) SipHasher is SipHash-2-4 too: agree on
        // every length, so every tail and block path is exercised.
        for len in 0..msg.len() {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(
                u64::from_le_bytes(key[..8].try_into().unwrap()),
                u64::from_le_bytes(key[8..].try_into().unwrap()),
            );
            std::hash::Hasher::write(&mut h, &msg[..len]);
            assert_eq!(
                siphash24(&key, &msg[..len]),
                std::hash::Hasher::finish(&h),
                "len {len}"
            );
        }
    }

    #[test]
    fn tokens_differ_by_secret_and_ip() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let t0 = Instant::now();
        let a = Tokens::new(t0, Duration::from_secs(300), &mut rng);
        let b = Tokens::new(t0, Duration::from_secs(300), &mut rng);
        let ip: IpAddr = "127.1.2.3".parse().unwrap();
        assert_ne!(a.issue(ip), b.issue(ip), "another secret, another token");
        assert!(!b.check(ip, &a.issue(ip)));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(a.check(v6, &a.issue(v6)));
        assert!(!a.check(ip, &a.issue(v6)));
    }

    #[test]
    fn bound_to_ip_and_expires_after_two_rotations() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        let mut tokens = Tokens::new(t0, every, &mut rng);
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let other: IpAddr = "1.2.3.5".parse().unwrap();
        let tok = tokens.issue(ip);
        assert!(tokens.check(ip, &tok));
        assert!(!tokens.check(other, &tok), "token from another IP");
        assert!(!tokens.check(ip, &tok[..4]), "truncated token");
        // Mapped IPv6 form of the same IPv4 address is the same requester.
        assert!(tokens.check("::ffff:1.2.3.4".parse().unwrap(), &tok));
        tokens.maybe_rotate(t0 + every, &mut rng);
        assert!(tokens.check(ip, &tok), "previous secret still accepted");
        tokens.maybe_rotate(t0 + every * 2, &mut rng);
        assert!(!tokens.check(ip, &tok), "rejected after two rotations");
    }

    #[test]
    fn long_pause_invalidates() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        let mut tokens = Tokens::new(t0, every, &mut rng);
        let ip: IpAddr = "::1".parse().unwrap();
        let tok = tokens.issue(ip);
        tokens.maybe_rotate(t0 + every * 10, &mut rng);
        assert!(!tokens.check(ip, &tok));
        assert!(tokens.next_rotation() > t0 + every * 10);
    }
}
