//! Who we no longer talk to, and why it is never a whole IP at first.
//!
//! Peers share addresses (NAT, CGNAT, one host running several clients), so bad data from
//! one endpoint bans that endpoint (ip:port) and the peer id it used, not its IP. An IP
//! is banned only once several distinct endpoints behind it have been caught.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::peer::PeerId;

/// Distinct bad endpoints from one IP before the IP itself is banned.
pub const IP_BAN_AFTER: usize = 4;
/// Entries kept per table (oldest forgotten first): a bound on what bans cost.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Default)]
pub struct BanList {
    endpoints: HashSet<SocketAddr>,
    peer_ids: HashSet<PeerId>,
    ips: HashSet<IpAddr>,
    /// Distinct bad endpoints seen per IP.
    strikes: HashMap<IpAddr, usize>,
    /// Insertion order of endpoints, for the bound.
    order: VecDeque<SocketAddr>,
}

impl BanList {
    /// Bans `endpoints` (the remote address and, if known, the address it listens on)
    /// and its peer id; the IP too once [`IP_BAN_AFTER`] endpoints from it are banned.
    pub fn ban(&mut self, endpoints: &[SocketAddr], peer_id: Option<PeerId>) {
        if let Some(id) = peer_id {
            if self.peer_ids.len() >= MAX_ENTRIES {
                self.peer_ids.clear();
            }
            self.peer_ids.insert(id);
        }
        let mut counted = false;
        for &e in endpoints {
            if !self.endpoints.insert(e) {
                continue;
            }
            self.order.push_back(e);
            if self.order.len() > MAX_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.endpoints.remove(&old);
                }
            }
            // One bad peer counts once, however many of its addresses we know.
            if !counted {
                counted = true;
                let n = self.strikes.entry(e.ip()).or_default();
                *n += 1;
                if *n >= IP_BAN_AFTER {
                    self.ips.insert(e.ip());
                }
            }
        }
        if self.strikes.len() > MAX_ENTRIES {
            self.strikes.clear();
        }
    }

    pub fn is_endpoint_banned(&self, addr: SocketAddr) -> bool {
        self.endpoints.contains(&addr) || self.ips.contains(&addr.ip())
    }

    pub fn is_ip_banned(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }

    pub fn is_peer_id_banned(&self, id: &PeerId) -> bool {
        self.peer_ids.contains(id)
    }

    /// Banned endpoints (for stats).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_bad_endpoint_leaves_its_ip_usable() {
        let mut b = BanList::default();
        b.ban(&[a("127.0.0.1:5000")], Some(PeerId([1; 20])));
        assert!(b.is_endpoint_banned(a("127.0.0.1:5000")));
        assert!(!b.is_endpoint_banned(a("127.0.0.1:5001")));
        assert!(!b.is_ip_banned("127.0.0.1".parse().unwrap()));
        assert!(b.is_peer_id_banned(&PeerId([1; 20])));
        assert!(!b.is_peer_id_banned(&PeerId([2; 20])));
    }

    #[test]
    fn several_bad_endpoints_ban_the_ip() {
        let mut b = BanList::default();
        for port in 0..IP_BAN_AFTER as u16 - 1 {
            // Two addresses of one peer count once.
            b.ban(
                &[
                    SocketAddr::new("127.0.0.1".parse().unwrap(), 5000 + port),
                    SocketAddr::new("127.0.0.1".parse().unwrap(), 6000 + port),
                ],
                None,
            );
        }
        assert!(!b.is_ip_banned("127.0.0.1".parse().unwrap()));
        b.ban(&[a("127.0.0.1:7000")], None);
        assert!(b.is_ip_banned("127.0.0.1".parse().unwrap()));
        assert!(b.is_endpoint_banned(a("127.0.0.1:1")));
        assert!(!b.is_endpoint_banned(a("127.0.0.2:1")));
    }

    #[test]
    fn bounded() {
        let mut b = BanList::default();
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let ip = IpAddr::from(i.to_be_bytes());
            b.ban(&[SocketAddr::new(ip, 1)], None);
        }
        assert!(b.len() <= MAX_ENTRIES);
        assert!(b.strikes.len() <= MAX_ENTRIES + 1);
    }
}
