//! BEP 6 allowed-fast set: pieces a choked peer may still request from us, chosen by a
//! canonical hash of the peer's address and the info-hash so the set is stable across
//! reconnects and cannot be farmed by reconnecting from a neighbouring address.

use std::net::IpAddr;

use sha1::{Digest, Sha1};

use crate::infohash::InfoHash;

/// The `k` pieces (at most `piece_count`) that `peer_ip` may request while choked, in
/// generation order, following BEP 6's algorithm: hash the peer's /24 and the info-hash,
/// then keep re-hashing and take each 4-byte word modulo the piece count.
///
/// BEP 6 only defines IPv4; for IPv6 we hash the /48 prefix in the same way (no other
/// peer ever recomputes our set, so this only needs to be stable for us).
pub fn allowed_fast_set(
    info_hash: &InfoHash,
    peer_ip: IpAddr,
    piece_count: u32,
    k: usize,
) -> Vec<u32> {
    let k = k.min(piece_count as usize);
    let mut out: Vec<u32> = Vec::with_capacity(k);
    if k == 0 {
        return out;
    }
    // A v4 peer seen on a dual-stack socket (::ffff:a.b.c.d) is a v4 peer.
    let mut x: Vec<u8> = match peer_ip.to_canonical() {
        IpAddr::V4(v4) => (u32::from(v4) & 0xFFFF_FF00).to_be_bytes().to_vec(),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[6..].fill(0);
            o.to_vec()
        }
    };
    x.extend_from_slice(info_hash.as_bytes());
    while out.len() < k {
        let digest: [u8; 20] = Sha1::digest(&x).into();
        for word in digest.chunks_exact(4) {
            if out.len() >= k {
                break;
            }
            let y = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let index = y % piece_count;
            if !out.contains(&index) {
                out.push(index);
            }
        }
        x = digest.to_vec();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The test vectors published in BEP 6: info-hash 0xAA x 20, peer 80.4.4.200,
    /// 1313 pieces.
    #[test]
    fn bep6_test_vectors() {
        let ih = InfoHash([0xAA; 20]);
        let ip = IpAddr::V4(Ipv4Addr::new(80, 4, 4, 200));
        assert_eq!(
            allowed_fast_set(&ih, ip, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(&ih, ip, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
    }

    #[test]
    fn same_slash24_same_set_and_small_torrents_terminate() {
        let ih = InfoHash([3; 20]);
        let a = allowed_fast_set(&ih, "127.1.2.3".parse().unwrap(), 500, 10);
        let b = allowed_fast_set(&ih, "127.1.2.250".parse().unwrap(), 500, 10);
        assert_eq!(a, b);
        assert_ne!(
            a,
            allowed_fast_set(&ih, "127.1.3.3".parse().unwrap(), 500, 10)
        );
        // k larger than the torrent: every piece once, no endless loop.
        let mut all = allowed_fast_set(&ih, "127.1.2.3".parse().unwrap(), 3, 10);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
        assert!(allowed_fast_set(&ih, "127.1.2.3".parse().unwrap(), 0, 10).is_empty());
        let mapped = allowed_fast_set(&ih, "::ffff:127.1.2.3".parse().unwrap(), 500, 10);
        assert_eq!(mapped, a, "IPv4-mapped addresses count as IPv4");
        let v6 = allowed_fast_set(&ih, "2001:db8::1".parse().unwrap(), 100, 5);
        assert_eq!(v6.len(), 5);
    }
}
