//! Announce tokens (BEP 5): SHA-1 over a secret and the requester's IP, so a token is
//! only good from the address it was handed to. The secret rotates; tokens made with the
//! previous secret are still accepted, so a token lives between one and two rotations.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha1::{Digest, Sha1};

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
        let mut h = Sha1::new();
        h.update(secret);
        match canonical_ip(ip) {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let d = h.finalize();
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&d[..TOKEN_LEN]);
        t
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
