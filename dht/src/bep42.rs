//! BEP 42: node ids bound to the node's external IP, and learning that IP by vote.
//!
//! The first 21 bits of a secure id are the top bits of CRC32-C over the masked IP with a
//! 3-bit random `r` mixed in; the last byte of the id is `r`. Nodes on local networks are
//! exempt (their ids cannot be checked against a public address).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::RngCore;

use crate::id::Id;

const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];

/// CRC32-C (Castagnoli), bitwise: inputs here are 4 or 8 bytes.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

fn ip_crc(ip: IpAddr, r: u8) -> u32 {
    let r = r & 7;
    match ip {
        IpAddr::V4(v4) => {
            let mut b = v4.octets();
            for (x, m) in b.iter_mut().zip(V4_MASK) {
                *x &= m;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut b = [0u8; 8];
            for i in 0..8 {
                b[i] = o[i] & V6_MASK[i];
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
    }
}

/// Addresses BEP 42 does not apply to: loopback, private, link-local, unspecified.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // unique local
                || (seg0 & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Makes a secure id for `ip` with the given `r` (0..8) and random filler from `rng`.
pub fn secure_id(ip: IpAddr, r: u8, rng: &mut impl RngCore) -> Id {
    let mut id = Id::random(rng).0;
    let crc = ip_crc(ip, r);
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 0x07);
    id[19] = r & 7;
    Id(id)
}

/// A fresh secure id for `ip` with random `r`.
pub fn random_secure_id(ip: IpAddr, rng: &mut impl RngCore) -> Id {
    let r = (rng.next_u32() & 7) as u8;
    secure_id(ip, r, rng)
}

/// Whether `id` is a valid BEP 42 id for `ip` (exempt addresses always pass).
pub fn is_valid_id(id: &Id, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let crc = ip_crc(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

/// Counts what other nodes say our address is (the `ip` field of their replies to our
/// queries) and settles on one once enough distinct networks agree.
///
/// One vote per network: a /24 for IPv4, a /48 for IPv6 (many addresses there cost an
/// attacker nothing), the whole address for private and loopback voters (a LAN or a test
/// on 127.0.0.0/8, where there is no one else to ask). A network voting again replaces its
/// earlier vote, and the oldest vote leaves when the window is full, so a real change of
/// address wins over time. Deciding first takes [`Self::QUORUM`] networks and a majority;
/// moving off a decided address takes [`Self::FLIP_QUORUM`] networks and twice the votes
/// the current one has, so a few addresses cannot flip it back and forth.
#[derive(Debug, Default)]
pub struct ExternalIpVoter {
    /// (voter's network, claimed address), oldest first.
    votes: VecDeque<(VoterNet, IpAddr)>,
    decided: Option<IpAddr>,
}

/// The network a vote counts for (see [`ExternalIpVoter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum VoterNet {
    V4([u8; 3]),
    V6([u8; 6]),
    Exact(IpAddr),
}

impl VoterNet {
    fn of(ip: IpAddr) -> VoterNet {
        if is_exempt(ip) {
            return VoterNet::Exact(ip);
        }
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                VoterNet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                VoterNet::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

impl ExternalIpVoter {
    /// Networks that must agree before a first decision.
    pub const QUORUM: usize = 4;
    /// Networks that must agree to move off a decided address.
    pub const FLIP_QUORUM: usize = 8;
    /// Votes kept (one per network).
    const WINDOW: usize = 64;

    /// Records that `voter`, a node that answered one of our queries, saw us as `claimed`.
    /// Returns the address when this vote decides it (first decision or a change).
    pub fn vote(&mut self, voter: IpAddr, claimed: IpAddr) -> Option<IpAddr> {
        if claimed.is_unspecified() {
            return None;
        }
        let net = VoterNet::of(voter);
        if let Some(i) = self.votes.iter().position(|(n, _)| *n == net) {
            self.votes.remove(i);
        } else if self.votes.len() >= Self::WINDOW {
            self.votes.pop_front();
        }
        self.votes.push_back((net, claimed));
        let count = |ip: IpAddr| self.votes.iter().filter(|(_, c)| *c == ip).count();
        let leader = count(claimed);
        let decided = match self.decided {
            None => leader >= Self::QUORUM && leader * 2 > self.votes.len(),
            Some(current) if current == claimed => false,
            Some(current) => leader >= Self::FLIP_QUORUM && leader > 2 * count(current),
        };
        if decided {
            self.decided = Some(claimed);
            return Some(claimed);
        }
        None
    }

    pub fn external_ip(&self) -> Option<IpAddr> {
        self.decided
    }
}

pub const UNSPECIFIED_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
pub const UNSPECIFIED_V6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of BEP 42: (ip, r, id).
    const VECTORS: [(&str, u8, &str); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
        ),
    ];

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bep42_vectors_verify() {
        for (ip, r, hex) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let id = Id::from_hex(hex).unwrap();
            assert_eq!(id.0[19], r, "last byte is the random r");
            assert!(is_valid_id(&id, ip), "vector {hex} must verify for {ip}");
            // The 21-bit prefix computed from the IP matches the vector.
            let mut rng = rand::rngs::mock::StepRng::new(0, 0);
            let made = secure_id(ip, r, &mut rng);
            assert_eq!(made.0[..2], id.0[..2]);
            assert_eq!(made.0[2] & 0xf8, id.0[2] & 0xf8);
        }
    }

    #[test]
    fn wrong_ip_or_tampered_id_fails() {
        let id = Id::from_hex(VECTORS[0].2).unwrap();
        assert!(!is_valid_id(&id, "124.31.75.22".parse::<IpAddr>().unwrap()));
        let mut bad = id;
        bad.0[0] ^= 0x80;
        assert!(!is_valid_id(&bad, VECTORS[0].0.parse().unwrap()));
        let mut bad_r = id;
        bad_r.0[19] = 2;
        assert!(!is_valid_id(&bad_r, VECTORS[0].0.parse().unwrap()));
    }

    #[test]
    fn generated_ids_verify_v4_and_v6() {
        let mut rng = rand::rngs::mock::StepRng::new(12345, 7919);
        for ip in ["8.8.8.8", "2001:db8::1", "1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            for _ in 0..16 {
                let id = random_secure_id(ip, &mut rng);
                assert!(is_valid_id(&id, ip));
            }
        }
    }

    #[test]
    fn local_addresses_are_exempt() {
        for ip in [
            "127.0.0.5",
            "10.1.2.3",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
        ] {
            assert!(is_exempt(ip.parse().unwrap()), "{ip}");
            assert!(is_valid_id(&Id::ZERO, ip.parse().unwrap()));
        }
        assert!(!is_exempt("8.8.8.8".parse().unwrap()));
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Votes for `claimed` from `n` distinct /24s starting at 1.`first`.0.0.
    fn votes_from_networks(
        v: &mut ExternalIpVoter,
        first: u8,
        n: u8,
        claimed: IpAddr,
    ) -> Option<IpAddr> {
        let mut decided = None;
        for i in 0..n {
            decided = decided.or(v.vote(v4(1, first + i, 0, 1), claimed));
        }
        decided
    }

    #[test]
    fn voter_needs_a_quorum_of_distinct_networks() {
        let mut v = ExternalIpVoter::default();
        let me = v4(9, 9, 9, 9);
        for _ in 0..10 {
            assert_eq!(
                v.vote(v4(1, 1, 1, 1), me),
                None,
                "one voter repeating counts once"
            );
        }
        for i in 2..100 {
            assert_eq!(v.vote(v4(1, 1, 1, i), me), None, "one /24 counts once: {i}");
        }
        assert_eq!(votes_from_networks(&mut v, 2, 2, me), None);
        assert_eq!(
            v.vote(v4(1, 200, 0, 1), me),
            Some(me),
            "the fourth network decides"
        );
        assert_eq!(v.external_ip(), Some(me));
    }

    #[test]
    fn ipv6_voters_count_per_48() {
        let mut v = ExternalIpVoter::default();
        let me: IpAddr = "2001:db8:1::1".parse().unwrap();
        for i in 0..50u16 {
            let voter = IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1, 0x2, i, 0, 0, 0, 1));
            assert_eq!(v.vote(voter, me), None, "one /48 counts once");
        }
        for i in 1..4u16 {
            let voter = IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1, 0x2 + i, 0, 0, 0, 0, 1));
            let want = (i == 3).then_some(me);
            assert_eq!(v.vote(voter, me), want);
        }
    }

    #[test]
    fn a_few_networks_cannot_flip_a_decided_address_back_and_forth() {
        let mut v = ExternalIpVoter::default();
        let me = v4(9, 9, 9, 9);
        let lie = v4(6, 6, 6, 6);
        assert_eq!(votes_from_networks(&mut v, 1, 10, me), Some(me));
        // Seven attacker networks, each voting again and again: never enough.
        for _ in 0..20 {
            assert_eq!(votes_from_networks(&mut v, 100, 7, lie), None);
        }
        assert_eq!(v.external_ip(), Some(me));
        // Honest votes keep coming; the attackers alternate claims: still no flip.
        for round in 0..20u8 {
            let claim = if round % 2 == 0 { lie } else { v4(5, 5, 5, 5) };
            assert_eq!(votes_from_networks(&mut v, 100, 7, claim), None);
            assert_eq!(votes_from_networks(&mut v, 1, 10, me), None);
        }
        assert_eq!(v.external_ip(), Some(me));
    }

    #[test]
    fn a_real_change_of_address_wins_as_new_votes_arrive() {
        let mut v = ExternalIpVoter::default();
        let old = v4(9, 9, 9, 9);
        let new = v4(8, 8, 8, 8);
        assert_eq!(votes_from_networks(&mut v, 1, 40, old), Some(old));
        // Everyone now sees the new address; the old votes age out of the window.
        assert_eq!(votes_from_networks(&mut v, 100, 60, new), Some(new));
        assert_eq!(v.external_ip(), Some(new));
    }

    #[test]
    fn loopback_voters_count_per_address() {
        let mut v = ExternalIpVoter::default();
        let me = v4(127, 0, 0, 1);
        let mut decided = None;
        for i in 2..6 {
            decided = decided.or(v.vote(v4(127, 0, 0, i), me));
        }
        assert_eq!(decided, Some(me));
    }
}
