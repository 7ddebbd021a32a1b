//! The announced-peer store: bounded per info-hash and in total, least recently announced
//! evicted first, and every peer expires unless re-announced. Memory is only used when
//! something is stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::RngCore;

use crate::id::Id;

#[derive(Clone, Debug, Default)]
struct Swarm {
    /// Oldest announce first.
    peers: Vec<(SocketAddr, Instant)>,
    last_announce: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct PeerStore {
    swarms: BTreeMap<Id, Swarm>,
    total: usize,
    max_torrents: usize,
    max_per_torrent: usize,
    max_total: usize,
    /// Ports kept per IP in one swarm: one token (bound to an IP) could otherwise fill a
    /// swarm with one host's made-up ports. A few are normal (NAT, several clients).
    max_ports_per_ip: usize,
    ttl: Duration,
}

impl PeerStore {
    pub fn new(
        max_torrents: usize,
        max_per_torrent: usize,
        max_total: usize,
        ttl: Duration,
    ) -> PeerStore {
        PeerStore {
            swarms: BTreeMap::new(),
            total: 0,
            max_torrents,
            max_per_torrent: max_per_torrent.max(1),
            max_total: max_total.max(1),
            max_ports_per_ip: usize::MAX,
            ttl,
        }
    }

    /// At most `n` ports per IP in one swarm; a further port replaces that IP's oldest.
    pub fn with_max_ports_per_ip(mut self, n: usize) -> PeerStore {
        self.max_ports_per_ip = n.max(1);
        self
    }

    /// Heap bytes held (approximate).
    pub fn heap_bytes(&self) -> usize {
        self.swarms.len() * (std::mem::size_of::<(Id, Swarm)>() + 16)
            + self
                .swarms
                .values()
                .map(|s| s.peers.capacity() * std::mem::size_of::<(SocketAddr, Instant)>())
                .sum::<usize>()
    }

    pub fn torrent_count(&self) -> usize {
        self.swarms.len()
    }

    pub fn peer_count(&self) -> usize {
        self.total
    }

    /// Stores (or refreshes) `peer` for `info_hash`.
    pub fn announce(&mut self, info_hash: Id, peer: SocketAddr, now: Instant) {
        if self.max_torrents == 0 {
            return;
        }
        if !self.swarms.contains_key(&info_hash) && self.swarms.len() >= self.max_torrents {
            self.evict_least_recent();
        }
        let swarm = self.swarms.entry(info_hash).or_default();
        swarm.last_announce = Some(now);
        if let Some(pos) = swarm.peers.iter().position(|(a, _)| *a == peer) {
            swarm.peers.remove(pos);
            swarm.peers.push((peer, now));
            return;
        }
        let same_ip = swarm
            .peers
            .iter()
            .filter(|(a, _)| a.ip() == peer.ip())
            .count();
        let oldest_same_ip = swarm.peers.iter().position(|(a, _)| a.ip() == peer.ip());
        if let Some(oldest) = oldest_same_ip.filter(|_| same_ip >= self.max_ports_per_ip) {
            swarm.peers.remove(oldest);
            swarm.peers.push((peer, now));
            return;
        }
        if swarm.peers.len() >= self.max_per_torrent {
            swarm.peers.remove(0);
            self.total -= 1;
        }
        swarm.peers.push((peer, now));
        self.total += 1;
        while self.total > self.max_total {
            if !self.evict_one_peer_from_least_recent() {
                break;
            }
        }
    }

    fn least_recent(&self) -> Option<Id> {
        self.swarms
            .iter()
            .min_by_key(|(_, s)| s.last_announce)
            .map(|(id, _)| *id)
    }

    fn evict_least_recent(&mut self) {
        if let Some(id) = self.least_recent() {
            if let Some(s) = self.swarms.remove(&id) {
                self.total -= s.peers.len();
            }
        }
    }

    fn evict_one_peer_from_least_recent(&mut self) -> bool {
        let Some(id) = self.least_recent() else {
            return false;
        };
        let swarm = self.swarms.get_mut(&id).expect("least recent swarm exists");
        if !swarm.peers.is_empty() {
            swarm.peers.remove(0);
            self.total -= 1;
        }
        if swarm.peers.is_empty() {
            self.swarms.remove(&id);
        }
        true
    }

    /// Up to `max` live peers for `info_hash`, in random order when there are more.
    pub fn get(
        &self,
        info_hash: &Id,
        now: Instant,
        max: usize,
        rng: &mut impl RngCore,
    ) -> Vec<SocketAddr> {
        let Some(swarm) = self.swarms.get(info_hash) else {
            return Vec::new();
        };
        let mut live: Vec<SocketAddr> = swarm
            .peers
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(*t) < self.ttl)
            .map(|(a, _)| *a)
            .collect();
        if live.len() > max {
            live.shuffle(rng);
            live.truncate(max);
        }
        live
    }

    /// Removes expired peers and empty swarms.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let mut removed = 0;
        self.swarms.retain(|_, s| {
            let before = s.peers.len();
            s.peers
                .retain(|(_, t)| now.saturating_duration_since(*t) < ttl);
            removed += before - s.peers.len();
            !s.peers.is_empty()
        });
        self.total -= removed;
    }

    /// Up to `max` stored info-hashes at random (BEP 51 samples). Deterministic for a seeded
    /// RNG: the map is ordered.
    pub fn sample(&self, max: usize, rng: &mut impl RngCore) -> Vec<Id> {
        let mut all: Vec<Id> = self.swarms.keys().copied().collect();
        all.shuffle(rng);
        all.truncate(max);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ip_keeps_a_few_ports_per_swarm_and_its_newest_win() {
        let t0 = Instant::now();
        let mut s =
            PeerStore::new(10, 200, 1_000, Duration::from_secs(1800)).with_max_ports_per_ip(4);
        let ih = Id([1; 20]);
        for port in 1..=1_000u16 {
            s.announce(ih, SocketAddr::from(([44, 0, 0, 1], port)), t0);
        }
        s.announce(ih, SocketAddr::from(([44, 0, 0, 2], 7)), t0);
        let mut rng = rand::rngs::mock::StepRng::new(1, 1);
        let mut got = s.get(&ih, t0, 100, &mut rng);
        got.sort();
        let want: Vec<SocketAddr> = [997, 998, 999, 1000]
            .iter()
            .map(|&p| SocketAddr::from(([44, 0, 0, 1], p)))
            .chain([SocketAddr::from(([44, 0, 0, 2], 7))])
            .collect();
        assert_eq!(got, want);
        assert_eq!(s.peer_count(), 5);
    }
    use rand::SeedableRng;

    fn peer(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 6881))
    }

    fn store() -> (PeerStore, Instant, rand_chacha::ChaCha8Rng) {
        (
            PeerStore::new(3, 4, 10, Duration::from_secs(1800)),
            Instant::now(),
            rand_chacha::ChaCha8Rng::seed_from_u64(9),
        )
    }

    #[test]
    fn per_torrent_cap_evicts_oldest() {
        let (mut s, now, mut rng) = store();
        let ih = Id([1; 20]);
        for i in 0..6 {
            s.announce(ih, peer(i), now + Duration::from_secs(i as u64));
        }
        let mut got = s.get(&ih, now + Duration::from_secs(10), 100, &mut rng);
        got.sort();
        assert_eq!(got, vec![peer(2), peer(3), peer(4), peer(5)]);
        assert_eq!(s.peer_count(), 4);
    }

    #[test]
    fn torrent_and_total_caps() {
        let (mut s, now, mut rng) = store();
        for t in 0..5u8 {
            for i in 0..4 {
                s.announce(Id([t; 20]), peer(i), now + Duration::from_secs(t as u64));
            }
        }
        assert!(s.torrent_count() <= 3);
        assert!(s.peer_count() <= 10);
        // The most recent torrent survived, the first ones were evicted.
        assert_eq!(s.get(&Id([4; 20]), now, 100, &mut rng).len(), 4);
        assert!(s.get(&Id([0; 20]), now, 100, &mut rng).is_empty());
    }

    #[test]
    fn peers_expire_under_moved_clock() {
        let (mut s, now, mut rng) = store();
        let ih = Id([2; 20]);
        s.announce(ih, peer(1), now);
        s.announce(ih, peer(2), now + Duration::from_secs(1000));
        let later = now + Duration::from_secs(1800);
        assert_eq!(s.get(&ih, later, 100, &mut rng), vec![peer(2)]);
        s.expire(later);
        assert_eq!(s.peer_count(), 1);
        s.expire(now + Duration::from_secs(3000));
        assert_eq!((s.peer_count(), s.torrent_count()), (0, 0));
    }

    #[test]
    fn reannounce_refreshes() {
        let (mut s, now, mut rng) = store();
        let ih = Id([3; 20]);
        s.announce(ih, peer(1), now);
        s.announce(ih, peer(1), now + Duration::from_secs(1700));
        assert_eq!(s.peer_count(), 1);
        assert_eq!(
            s.get(&ih, now + Duration::from_secs(2000), 10, &mut rng),
            vec![peer(1)]
        );
    }
}
