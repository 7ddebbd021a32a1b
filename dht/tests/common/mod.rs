//! An in-memory network of DHT cores with a virtual clock: datagrams are routed between
//! cores with a fixed latency, time jumps straight to the next thing that happens, and
//! tests can drop, delay or duplicate traffic. Nothing touches a socket or sleeps.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dht::{Config, Dht, Event};

pub struct TestNet {
    pub nodes: Vec<Dht>,
    pub addrs: Vec<SocketAddr>,
    pub index: HashMap<SocketAddr, usize>,
    pub start: Instant,
    pub now: Instant,
    pub latency: Duration,
    /// Datagrams in flight, by (delivery time, sequence).
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    /// Everything each node reported, in order.
    pub events: Vec<Vec<Event>>,
    /// Nodes that are down: nothing reaches them.
    pub down: HashSet<SocketAddr>,
    /// Extra delay for datagrams sent by these nodes.
    pub slow: HashMap<SocketAddr, Duration>,
    /// Deliver every datagram twice.
    pub duplicate: bool,
    pub delivered: u64,
    /// Datagrams to addresses that are not in the network (e.g. raw probes by tests).
    pub outside: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

/// The address of node `i`: 127.x.y.z on port 6881 (exempt from BEP 42).
pub fn loopback_addr(i: usize) -> SocketAddr {
    let n = i as u32 + 2;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8)),
        6881,
    )
}

impl TestNet {
    pub fn empty(latency: Duration) -> TestNet {
        let start = Instant::now();
        TestNet {
            nodes: Vec::new(),
            addrs: Vec::new(),
            index: HashMap::new(),
            start,
            now: start,
            latency,
            in_flight: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            down: HashSet::new(),
            slow: HashMap::new(),
            duplicate: false,
            delivered: 0,
            outside: Vec::new(),
        }
    }

    /// Adds a node at `addr`; returns its index.
    pub fn add(&mut self, addr: SocketAddr, config: Config, seed: u64) -> usize {
        let dht = Dht::new(config, self.now, seed);
        self.add_core(addr, dht)
    }

    pub fn add_core(&mut self, addr: SocketAddr, dht: Dht) -> usize {
        let i = self.nodes.len();
        self.nodes.push(dht);
        self.addrs.push(addr);
        self.index.insert(addr, i);
        self.events.push(Vec::new());
        i
    }

    /// `n` loopback nodes that all bootstrap from node 0.
    pub fn star(n: usize, latency: Duration, tweak: impl Fn(&mut Config)) -> TestNet {
        let mut net = TestNet::empty(latency);
        for i in 0..n {
            let boot = if i == 0 {
                vec![]
            } else {
                vec![loopback_addr(0)]
            };
            let mut c = Config::loopback(boot);
            tweak(&mut c);
            net.add(loopback_addr(i), c, 1000 + i as u64);
        }
        net
    }

    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            let from = self.addrs[i];
            while let Some(t) = self.nodes[i].poll_transmit() {
                let delay = self.latency + self.slow.get(&from).copied().unwrap_or_default();
                let copies = if self.duplicate { 2 } else { 1 };
                for c in 0..copies {
                    self.seq += 1;
                    let at = self.now + delay + Duration::from_millis(c);
                    self.in_flight
                        .insert((at, self.seq), (from, t.to, t.data.clone()));
                }
            }
            while let Some(ev) = self.nodes[i].poll_event() {
                self.events[i].push(ev);
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let packet = self.in_flight.keys().next().map(|(t, _)| *t);
        let timer = self
            .nodes
            .iter()
            .zip(&self.addrs)
            .filter(|(_, a)| !self.down.contains(a))
            .filter_map(|(n, _)| n.poll_timeout())
            .min();
        match (packet, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until_time(end);
    }

    fn run_until_time(&mut self, end: Instant) {
        // Bounded: every iteration handles at least one packet or timer.
        for _ in 0..50_000_000u64 {
            self.collect();
            let Some(next) = self.next_time() else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(end);
        self.collect();
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some((&key, _)) = self.in_flight.iter().next() {
            if key.0 > now {
                break;
            }
            let (from, to, data) = self.in_flight.remove(&key).expect("present");
            if self.down.contains(&to) || self.down.contains(&from) {
                continue;
            }
            match self.index.get(&to) {
                Some(&j) => {
                    self.delivered += 1;
                    self.nodes[j].handle_datagram(now, from, &data);
                }
                None => self.outside.push((from, to, data)),
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].poll_timeout().is_some_and(|t| t <= now)
                && !self.down.contains(&self.addrs[i])
            {
                self.nodes[i].handle_timeout(now);
            }
        }
    }

    /// Runs until `cond` holds or `limit` of virtual time passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&TestNet) -> bool) -> bool {
        let end = self.now + limit;
        let slice = Duration::from_millis(50);
        while self.now < end {
            if cond(self) {
                return true;
            }
            let next = (self.now + slice).min(end);
            self.run_until_time(next);
        }
        cond(self)
    }

    /// Injects a datagram from an arbitrary address (e.g. a test's fake client).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.in_flight
            .insert((self.now, self.seq), (from, to, data));
    }

    pub fn node(&mut self, i: usize) -> &mut Dht {
        &mut self.nodes[i]
    }

    pub fn lookups_done(&self, i: usize, lookup: dht::LookupId) -> usize {
        self.events[i]
            .iter()
            .filter(|e| matches!(e, Event::LookupDone { lookup: l, .. } if *l == lookup))
            .count()
    }

    pub fn peers_found(&self, i: usize, lookup: dht::LookupId) -> Vec<SocketAddr> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::PeersFound {
                    lookup: l, peers, ..
                } if *l == lookup => Some(peers.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn bootstrap_all(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            n.bootstrap(now);
        }
    }
}
