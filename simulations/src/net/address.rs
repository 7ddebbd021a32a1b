//! Virtual addresses: every host gets a distinct, public-looking IPv4 address.
//!
//! Distinct IPs matter because the DHT keeps one routing entry per IP and derives BEP 42 ids
//! from the address; private or reserved ranges are avoided so that a core that filters them
//! sees every simulated host as an ordinary internet node. Nothing is ever sent to these
//! addresses: they are keys in the simulator's routing map.

use crate::rng::SimRng;
use rand::Rng;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Index of a host in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

impl HostId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Whether an address is outside the ranges a real internet host could have
/// (private, loopback, link-local, CGNAT, benchmarking, multicast, reserved).
pub fn is_public_unicast(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(o[0] == 0
        || o[0] == 10
        || o[0] == 127
        || o[0] >= 224
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 169 && o[1] == 254)
        || (o[0] == 172 && (16..32).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 192 && o[1] == 0 && o[2] == 2)
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 198 && (18..20).contains(&o[1]))
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113))
}

/// Draws `n` distinct public addresses. Ports are drawn too (real DHT nodes listen on
/// all sorts of ports), from the unprivileged range.
pub fn assign_addresses(n: usize, rng: &mut SimRng) -> Vec<SocketAddrV4> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ip = Ipv4Addr::from(rng.gen::<u32>());
        if is_public_unicast(ip) && seen.insert(ip) {
            out.push(SocketAddrV4::new(ip, rng.gen_range(1025..=65535)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn addresses_are_distinct_and_public() {
        let addrs = assign_addresses(20_000, &mut stream(1, "addr"));
        let ips: HashSet<_> = addrs.iter().map(|a| *a.ip()).collect();
        assert_eq!(ips.len(), addrs.len());
        assert!(addrs.iter().all(|a| is_public_unicast(*a.ip())));
        assert!(addrs.iter().all(|a| a.port() > 1024));
    }

    #[test]
    fn reserved_ranges_are_rejected() {
        for ip in [
            "10.1.2.3",
            "127.0.0.1",
            "192.168.1.1",
            "172.20.0.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.1.2.3",
        ] {
            assert!(!is_public_unicast(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_public_unicast("8.8.8.8".parse().unwrap()));
    }
}
