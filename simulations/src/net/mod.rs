//! The network model: who can reach whom, after how long, and what gets lost.
//!
//! It decides the fate of each message and nothing else; the [`crate::sim::Simulator`]
//! owns the event queue and the hosts' protocol cores.

pub mod address;
pub mod capacity;
pub mod churn;
pub mod latency;

use crate::rng::{exponential, stream, SimRng};
use crate::time::SimTime;
use address::{assign_addresses, HostId};
use capacity::{AccessLink, Capacity};
use latency::{LatencyConfig, LatencyModel};
use rand::Rng;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub latency: LatencyConfig,
    /// Probability that a datagram is lost, independently per datagram.
    pub loss: f64,
    /// Mean of the exponential per-datagram jitter added to the pair's delay.
    pub jitter_mean: Duration,
    /// Share of hosts behind a NAT that drops unsolicited inbound datagrams.
    pub nat_share: f64,
    /// How long a NAT keeps a mapping open after the host last sent to a peer.
    pub nat_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: LatencyConfig::default(),
            loss: 0.0,
            jitter_mean: Duration::from_millis(1),
            nat_share: 0.0,
            // Common UDP mapping lifetimes are 30 s to a few minutes; RFC 4787 asks for >= 2 min.
            nat_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a message did not arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    NoSuchHost,
    Lost,
    Offline,
    Nat,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub bytes_sent: u64,
    pub no_such_host: u64,
    pub lost: u64,
    pub offline: u64,
    pub nat: u64,
}

impl NetStats {
    fn count(&mut self, d: Drop) {
        match d {
            Drop::NoSuchHost => self.no_such_host += 1,
            Drop::Lost => self.lost += 1,
            Drop::Offline => self.offline += 1,
            Drop::Nat => self.nat += 1,
        }
    }
}

struct HostNet {
    addr: SocketAddrV4,
    online: bool,
    /// `Some` for NATed hosts: the peers (by IP) this host sent to, and when it last did.
    pinholes: Option<HashMap<Ipv4Addr, SimTime>>,
    link: AccessLink,
}

pub struct Network {
    config: NetConfig,
    hosts: Vec<HostNet>,
    by_ip: HashMap<Ipv4Addr, HostId>,
    latency: LatencyModel,
    rng: SimRng,
    topology_rng: SimRng,
    pub stats: NetStats,
}

impl Network {
    /// `n` hosts, all online, on distinct addresses, with unlimited capacity.
    pub fn new(config: NetConfig, n: usize, seed: u64) -> Self {
        let mut topology_rng = stream(seed, "topology");
        let addrs = assign_addresses(n, &mut topology_rng);
        let latency = LatencyModel::new(config.latency, n, &mut topology_rng);
        let mut net = Network {
            config,
            hosts: Vec::with_capacity(n),
            by_ip: HashMap::with_capacity(n),
            latency,
            rng: stream(seed, "network"),
            topology_rng,
            stats: NetStats::default(),
        };
        for addr in addrs {
            net.insert_host(addr);
        }
        net
    }

    fn insert_host(&mut self, addr: SocketAddrV4) -> HostId {
        let id = HostId(self.hosts.len() as u32);
        let nat = self
            .topology_rng
            .gen_bool(self.config.nat_share.clamp(0.0, 1.0));
        self.hosts.push(HostNet {
            addr,
            online: true,
            pinholes: nat.then(HashMap::new),
            link: AccessLink::new(Capacity::UNLIMITED),
        });
        self.by_ip.insert(*addr.ip(), id);
        id
    }

    /// Adds a host at a chosen address (Sybils pick theirs); `None` if the IP is taken.
    pub fn add_host_at(&mut self, addr: SocketAddrV4) -> Option<HostId> {
        if self.by_ip.contains_key(addr.ip()) {
            return None;
        }
        self.latency.push_host(&mut self.topology_rng);
        Some(self.insert_host(addr))
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    pub fn addr(&self, h: HostId) -> SocketAddrV4 {
        self.hosts[h.index()].addr
    }

    pub fn host_at(&self, addr: SocketAddrV4) -> Option<HostId> {
        let h = *self.by_ip.get(addr.ip())?;
        (self.hosts[h.index()].addr.port() == addr.port()).then_some(h)
    }

    pub fn is_online(&self, h: HostId) -> bool {
        self.hosts[h.index()].online
    }

    pub fn set_online(&mut self, h: HostId, online: bool) {
        let host = &mut self.hosts[h.index()];
        host.online = online;
        if let Some(p) = &mut host.pinholes {
            // A restarted host behind a NAT starts with no mappings.
            p.clear();
        }
    }

    pub fn is_natted(&self, h: HostId) -> bool {
        self.hosts[h.index()].pinholes.is_some()
    }

    pub fn set_natted(&mut self, h: HostId, natted: bool) {
        let p = &mut self.hosts[h.index()].pinholes;
        if natted != p.is_some() {
            *p = natted.then(HashMap::new);
        }
    }

    pub fn set_capacity(&mut self, h: HostId, capacity: Capacity) {
        self.hosts[h.index()].link.capacity = capacity;
    }

    pub fn link(&self, h: HostId) -> &AccessLink {
        &self.hosts[h.index()].link
    }

    /// For stream transports that queue on the access links themselves.
    pub fn link_mut(&mut self, h: HostId) -> &mut AccessLink {
        &mut self.hosts[h.index()].link
    }

    pub fn one_way(&self, a: HostId, b: HostId) -> Duration {
        self.latency.one_way(a, b)
    }

    pub fn rtt(&self, a: HostId, b: HostId) -> Duration {
        self.latency.rtt(a, b)
    }

    /// Decides what happens to a datagram `from` sends to `to` at `now`: the receiving host
    /// and the arrival time, or why it is dropped. Whether the receiver is still online is
    /// checked again on arrival ([`Network::accept`]).
    pub fn send_datagram(
        &mut self,
        now: SimTime,
        from: HostId,
        to: SocketAddrV4,
        bytes: usize,
    ) -> Result<(HostId, SimTime), Drop> {
        let src_ip = *self.hosts[from.index()].addr.ip();
        self.send_datagram_as(now, from, src_ip, to, bytes)
    }

    /// [`Network::send_datagram`] with a forged source IP (`src_ip`): the datagram leaves
    /// `from`'s uplink, and a NAT at the receiver judges it by `src_ip`.
    pub fn send_datagram_as(
        &mut self,
        now: SimTime,
        from: HostId,
        src_ip: std::net::Ipv4Addr,
        to: SocketAddrV4,
        bytes: usize,
    ) -> Result<(HostId, SimTime), Drop> {
        self.stats.sent += 1;
        self.stats.bytes_sent += bytes as u64;
        let sender = &mut self.hosts[from.index()];
        if let Some(p) = &mut sender.pinholes {
            p.insert(*to.ip(), now);
        }
        let left = sender.link.send(now, bytes);
        let result = self.route(now, left, from, src_ip, to);
        if let Err(d) = result {
            self.stats.count(d);
        }
        result
    }

    fn route(
        &mut self,
        now: SimTime,
        left: SimTime,
        from: HostId,
        src_ip: std::net::Ipv4Addr,
        to: SocketAddrV4,
    ) -> Result<(HostId, SimTime), Drop> {
        let dest = self.host_at(to).ok_or(Drop::NoSuchHost)?;
        if self.config.loss > 0.0 && self.rng.gen_bool(self.config.loss.min(1.0)) {
            return Err(Drop::Lost);
        }
        if let Some(p) = &self.hosts[dest.index()].pinholes {
            let open = p
                .get(&src_ip)
                .is_some_and(|&t| now.saturating_since(t) <= self.config.nat_timeout);
            if !open {
                return Err(Drop::Nat);
            }
        }
        let jitter = if self.config.jitter_mean.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(exponential(
                &mut self.rng,
                self.config.jitter_mean.as_secs_f64(),
            ))
        };
        Ok((dest, left + self.latency.one_way(from, dest) + jitter))
    }

    /// Called when a datagram reaches `to`: passes the downlink, or is dropped if the host
    /// went offline in flight. Returns when the host has it.
    pub fn accept(&mut self, now: SimTime, to: HostId, bytes: usize) -> Result<SimTime, Drop> {
        let host = &mut self.hosts[to.index()];
        if !host.online {
            self.stats.count(Drop::Offline);
            return Err(Drop::Offline);
        }
        self.stats.delivered += 1;
        Ok(host.link.receive(now, bytes))
    }

    /// Drops NAT mappings older than the timeout, to bound memory in long runs.
    pub fn expire_pinholes(&mut self, now: SimTime) {
        let timeout = self.config.nat_timeout;
        for h in &mut self.hosts {
            if let Some(p) = &mut h.pinholes {
                p.retain(|_, t| now.saturating_since(*t) <= timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> NetConfig {
        NetConfig {
            jitter_mean: Duration::ZERO,
            ..NetConfig::default()
        }
    }

    #[test]
    fn datagrams_arrive_after_the_pair_latency() {
        let mut net = Network::new(quiet(), 10, 1);
        let (a, b) = (HostId(2), HostId(7));
        let t0 = SimTime::from_secs(1);
        let (dest, at) = net.send_datagram(t0, a, net.addr(b), 100).unwrap();
        assert_eq!(dest, b);
        assert_eq!(at, t0 + net.one_way(a, b));
        assert_eq!(net.accept(at, b, 100), Ok(at));
    }

    #[test]
    fn unknown_addresses_and_wrong_ports_go_nowhere() {
        let mut net = Network::new(quiet(), 10, 1);
        let b = net.addr(HostId(3));
        let wrong_port = SocketAddrV4::new(*b.ip(), b.port().wrapping_add(1).max(1));
        let r = net.send_datagram(SimTime::ZERO, HostId(0), wrong_port, 10);
        assert_eq!(r, Err(Drop::NoSuchHost));
        assert_eq!(net.stats.no_such_host, 1);
    }

    #[test]
    fn loss_rate_is_respected() {
        let mut net = Network::new(
            NetConfig {
                loss: 0.1,
                ..quiet()
            },
            2,
            5,
        );
        let to = net.addr(HostId(1));
        let lost = (0..20_000)
            .filter(|_| net.send_datagram(SimTime::ZERO, HostId(0), to, 10) == Err(Drop::Lost))
            .count();
        assert!((1800..2200).contains(&lost), "lost {lost} of 20000 at 10%");
    }

    #[test]
    fn nat_drops_unsolicited_inbound_but_passes_replies_until_the_mapping_expires() {
        let mut net = Network::new(quiet(), 3, 1);
        let (natted, peer, stranger) = (HostId(0), HostId(1), HostId(2));
        net.set_natted(natted, true);
        let to_natted = net.addr(natted);
        let t = SimTime::from_secs(10);
        assert_eq!(net.send_datagram(t, peer, to_natted, 10), Err(Drop::Nat));
        // The NATed host talks to `peer`: replies from `peer` now pass, strangers still not.
        let to_peer = net.addr(peer);
        net.send_datagram(t, natted, to_peer, 10).unwrap();
        assert!(net.send_datagram(t, peer, to_natted, 10).is_ok());
        assert_eq!(
            net.send_datagram(t, stranger, to_natted, 10),
            Err(Drop::Nat)
        );
        let later = t + net.config().nat_timeout + Duration::from_secs(1);
        assert_eq!(
            net.send_datagram(later, peer, to_natted, 10),
            Err(Drop::Nat)
        );
        assert_eq!(net.stats.nat, 3);
    }

    #[test]
    fn offline_hosts_drop_what_arrives() {
        let mut net = Network::new(quiet(), 2, 1);
        let (dest, at) = net
            .send_datagram(SimTime::ZERO, HostId(0), net.addr(HostId(1)), 10)
            .unwrap();
        net.set_online(dest, false);
        assert_eq!(net.accept(at, dest, 10), Err(Drop::Offline));
    }

    #[test]
    fn uplink_capacity_delays_back_to_back_datagrams() {
        let mut net = Network::new(quiet(), 2, 1);
        net.set_capacity(
            HostId(0),
            Capacity {
                upload: 1000.0,
                download: f64::INFINITY,
            },
        );
        let to = net.addr(HostId(1));
        let lat = net.one_way(HostId(0), HostId(1));
        let (_, first) = net
            .send_datagram(SimTime::ZERO, HostId(0), to, 1000)
            .unwrap();
        let (_, second) = net
            .send_datagram(SimTime::ZERO, HostId(0), to, 1000)
            .unwrap();
        assert_eq!(first, SimTime::from_secs(1) + lat);
        assert_eq!(second, SimTime::from_secs(2) + lat);
    }

    #[test]
    fn sybils_can_join_at_chosen_addresses_but_not_steal_one() {
        let mut net = Network::new(quiet(), 2, 1);
        let taken = net.addr(HostId(0));
        assert_eq!(net.add_host_at(taken), None);
        let free = SocketAddrV4::new(Ipv4Addr::new(8, 8, 4, 4), 6881);
        let h = net.add_host_at(free).unwrap();
        assert_eq!(net.host_at(free), Some(h));
        assert!(net.one_way(h, HostId(0)) > Duration::ZERO);
    }
}
