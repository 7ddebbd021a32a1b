//! Hosts that lie. They speak just enough KRPC (through the real codec in `dht::krpc`) to
//! be dangerous; what they do is the attack, what the honest cores do about it is measured.
//!
//! - [`GarbageNode`]: answers every datagram with random bytes, to check that garbage is
//!   survived and costs no more than a timeout.
//! - [`SybilNode`]: one of many attacker nodes with ids right next to a target info-hash.
//!   It answers queries correctly formed but poisoned: never any peers, only other Sybils
//!   as the closest nodes, and a token so that announces are sent to it (and dropped).
//!   Together they try to eclipse the target.

use crate::rng::SimRng;
use crate::sim::Transmit;
use dht::krpc::{Body, Message, NodeInfo, QueryKind, Response};
use dht::Id;
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;

fn find_node_query(id: Id, tid: u16) -> Vec<u8> {
    Message {
        t: tid.to_be_bytes().to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Query(dht::krpc::Query {
            id,
            want: Default::default(),
            kind: QueryKind::FindNode { target: id },
        }),
    }
    .to_bytes()
}

fn is_query(data: &[u8]) -> bool {
    matches!(
        Message::decode(data),
        Ok(Message {
            body: Body::Query(_),
            ..
        })
    )
}

pub struct GarbageNode {
    rng: SimRng,
    pub outbox: Vec<Transmit>,
    pub queries_answered: u64,
}

impl GarbageNode {
    pub fn new(seed: u64) -> Self {
        GarbageNode {
            rng: SimRng::seed_from_u64(seed),
            outbox: Vec::new(),
            queries_answered: 0,
        }
    }

    /// A well-formed query, so that `to` adds us to its routing table.
    pub fn introduce(&mut self, id: Id, to: SocketAddr, tid: u16) {
        self.outbox.push(Transmit {
            to,
            data: find_node_query(id, tid),
        });
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        // Only answer queries: a reply to a reply would ping-pong garbage forever.
        if !is_query(data) {
            return;
        }
        self.queries_answered += 1;
        let len = self.rng.gen_range(1..300);
        let mut data = vec![0; len];
        self.rng.fill_bytes(&mut data);
        // Half the time make it look like a bencoded dictionary, to get past cheap checks.
        if self.rng.gen_bool(0.5) {
            data[0] = b'd';
            *data.last_mut().expect("len >= 1") = b'e';
        }
        self.outbox.push(Transmit { to: from, data });
    }
}

/// An id that shares its first `prefix_bits` bits with `target` and is random after.
pub fn id_near(target: &Id, prefix_bits: u32, rng: &mut impl RngCore) -> Id {
    target.random_with_prefix(prefix_bits, rng)
}

pub struct SybilNode {
    pub id: Id,
    /// The other attacker nodes, handed out as "closest" to every query.
    pub ring: std::rc::Rc<Vec<NodeInfo>>,
    pub outbox: Vec<Transmit>,
    pub queries_answered: u64,
}

impl SybilNode {
    pub fn new(id: Id, ring: std::rc::Rc<Vec<NodeInfo>>) -> Self {
        SybilNode {
            id,
            ring,
            outbox: Vec::new(),
            queries_answered: 0,
        }
    }

    /// A query that makes `to` insert us into its routing table (honest nodes add the
    /// nodes that query them).
    pub fn introduce(&mut self, to: SocketAddr, tid: u16) {
        self.outbox.push(Transmit {
            to,
            data: find_node_query(self.id, tid),
        });
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        let Body::Query(q) = msg.body else {
            return;
        };
        let target = match q.kind {
            QueryKind::FindNode { target }
            | QueryKind::SampleInfohashes { target }
            | QueryKind::Get { target, .. } => target,
            QueryKind::GetPeers { info_hash } => info_hash,
            QueryKind::Other { target, .. } => target,
            QueryKind::Ping | QueryKind::AnnouncePeer { .. } | QueryKind::Put { .. } => self.id,
        };
        let mut nodes: Vec<NodeInfo> = self
            .ring
            .iter()
            .copied()
            .filter(|n| n.id != self.id)
            .collect();
        nodes.sort_by_key(|n| n.id.distance(&target));
        nodes.truncate(8);
        let is_get_peers = matches!(q.kind, QueryKind::GetPeers { .. });
        let reply = Message {
            t: msg.t,
            v: None,
            ip: Some(from),
            ro: false,
            body: Body::Response(Response {
                id: self.id,
                nodes,
                token: is_get_peers.then(|| b"sybil".to_vec()),
                ..Response::default()
            }),
        };
        self.queries_answered += 1;
        self.outbox.push(Transmit {
            to: from,
            data: reply.to_bytes(),
        });
    }
}

/// Which lie the attacker nodes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackKind {
    Garbage,
    Sybil,
    /// [`SpoofNode`]s: forged replies from the nodes they refer (see `dht-spoof`).
    Spoof,
}

/// A share of attacker nodes added to a world.
#[derive(Clone, Debug)]
pub struct Attack {
    pub kind: AttackKind,
    /// Attackers as a share of all nodes (honest + attackers).
    pub share: f64,
    /// Honest nodes each attacker introduces itself to (by querying them).
    pub introductions: usize,
    /// The attacker hosts, filled in by `deploy` (for `Spoof`, the sinks come last).
    pub hosts: std::cell::RefCell<Vec<crate::HostId>>,
    /// `Spoof` only: settings (window, delay, referrals, sinks) going in, log coming out.
    pub spoof: std::rc::Rc<std::cell::RefCell<SpoofShared>>,
}

impl Attack {
    /// Adds the attackers to `world` and schedules their introductions before `by`.
    /// Sybils get ids next to the targets and know each other; they introduce themselves to
    /// the honest nodes closest to their target (an attacker that looked the target up)
    /// and to random ones. Returns how many attackers were added.
    pub fn deploy(
        &self,
        world: &mut super::DhtWorld,
        targets: &[Id],
        by: std::time::Duration,
    ) -> usize {
        use crate::dht_sim::world::Cmd;
        use crate::net::address::is_public_unicast;
        use std::net::{Ipv4Addr, SocketAddrV4};
        let honest = world.config.nodes as f64;
        let count = (self.share.clamp(0.0, 0.95) * honest / (1.0 - self.share.clamp(0.0, 0.95)))
            .round() as usize;
        let mut hosts = Vec::with_capacity(count);
        while hosts.len() < count {
            let ip = Ipv4Addr::from(world.rng.gen::<u32>());
            if !is_public_unicast(ip) {
                continue;
            }
            let addr = SocketAddrV4::new(ip, world.rng.gen_range(1025..=65535));
            if let Some(h) = world.sim.add_host_at(addr) {
                world.mark_dishonest(h);
                hosts.push(h);
            }
        }
        if self.kind == AttackKind::Spoof {
            return self.deploy_spoof(world, hosts, by);
        }
        let ring: Vec<NodeInfo> = hosts
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let target = targets
                    .get(i % targets.len().max(1))
                    .copied()
                    .unwrap_or(Id::ZERO);
                let bits = 16 + world.rng.gen_range(0..24);
                NodeInfo {
                    id: id_near(&target, bits, &mut world.rng),
                    addr: world.addr(h),
                }
            })
            .collect();
        let ring = std::rc::Rc::new(ring);
        for (i, &h) in hosts.iter().enumerate() {
            let app = match self.kind {
                AttackKind::Garbage => {
                    super::DhtHost::Garbage(Box::new(GarbageNode::new(world.rng.gen())))
                }
                AttackKind::Sybil => {
                    super::DhtHost::Sybil(SybilNode::new(ring[i].id, ring.clone()))
                }
                AttackKind::Spoof => unreachable!("deployed by deploy_spoof"),
            };
            world.sim.start(h, app);
            // Introduce at a random time in the second half of the warm-up, when the
            // honest nodes are up.
            let at = crate::time::SimTime::from_secs_f64(
                by.as_secs_f64() * world.rng.gen_range(0.5..0.9),
            );
            world.sim.schedule(
                at,
                Cmd::Probe(crate::scenarios::dht_lookup::ATTACK_PROBE + i as u32),
            );
        }
        self.hosts.replace(hosts);
        count
    }

    /// Spoofers with BEP 42-valid ids (they are ordinary nodes to everyone), and sinks
    /// on top (never introduced: only forged replies name them).
    fn deploy_spoof(
        &self,
        world: &mut super::DhtWorld,
        spoofers: Vec<crate::HostId>,
        by: std::time::Duration,
    ) -> usize {
        use crate::dht_sim::world::Cmd;
        use crate::net::address::is_public_unicast;
        use std::net::{Ipv4Addr, SocketAddrV4};
        let count = spoofers.len();
        let n_sinks = self.spoof.borrow().referrals.max(1);
        let mut sinks = Vec::with_capacity(n_sinks);
        while sinks.len() < n_sinks {
            let ip = Ipv4Addr::from(world.rng.gen::<u32>());
            if !is_public_unicast(ip) {
                continue;
            }
            let addr = SocketAddrV4::new(ip, world.rng.gen_range(1025..=65535));
            if let Some(h) = world.sim.add_host_at(addr) {
                world.mark_dishonest(h);
                sinks.push(h);
            }
        }
        self.spoof.borrow_mut().sinks = sinks.iter().map(|&h| world.addr(h)).collect();
        for (i, &h) in spoofers.iter().enumerate() {
            let id = dht::bep42::random_secure_id(world.addr(h).ip(), &mut world.rng);
            world.sim.start(
                h,
                super::DhtHost::Spoof(Box::new(SpoofNode::new(id, None, self.spoof.clone()))),
            );
            let at = crate::time::SimTime::from_secs_f64(
                by.as_secs_f64() * world.rng.gen_range(0.5..0.9),
            );
            world.sim.schedule(
                at,
                Cmd::Probe(crate::scenarios::dht_lookup::ATTACK_PROBE + i as u32),
            );
        }
        for (i, &h) in sinks.iter().enumerate() {
            let id = Id::random(&mut world.rng);
            world.sim.start(
                h,
                super::DhtHost::Spoof(Box::new(SpoofNode::new(id, Some(i), self.spoof.clone()))),
            );
        }
        let mut hosts = spoofers;
        hosts.extend(sinks);
        self.hosts.replace(hosts);
        count
    }

    /// Queries the attackers answered (with garbage or poison): how engaged they were.
    pub fn queries_answered(&self, world: &super::DhtWorld) -> u64 {
        self.hosts
            .borrow()
            .iter()
            .map(|&h| match world.sim.app(h) {
                Some(super::DhtHost::Sybil(s)) => s.queries_answered,
                Some(super::DhtHost::Garbage(g)) => g.queries_answered,
                Some(super::DhtHost::Spoof(s)) => s.queries_answered,
                _ => 0,
            })
            .sum()
    }

    /// Attacker `i` introduces itself.
    pub fn on_probe(&self, world: &mut super::DhtWorld, i: u32) {
        let Some(&h) = self.hosts.borrow().get(i as usize) else {
            return;
        };
        if self.kind == AttackKind::Spoof && self.spoof.borrow().honest.is_empty() {
            // The attacker's map of the network: every honest node online now.
            let mut honest: Vec<NodeInfo> = world
                .online_honest()
                .filter_map(|o| {
                    Some(NodeInfo {
                        id: world.core(o)?.id(),
                        addr: world.addr(o),
                    })
                })
                .collect();
            honest.sort_by_key(|n| n.id.0);
            self.spoof.borrow_mut().honest = honest;
        }
        let Some(my_id) = (match world.sim.app(h) {
            Some(super::DhtHost::Sybil(s)) => Some(s.id),
            Some(super::DhtHost::Spoof(s)) => Some(s.id),
            Some(_) => Some(Id::random(&mut world.rng)),
            None => None,
        }) else {
            return;
        };
        // The honest nodes nearest to our id (an attacker that looked it up), plus random ones.
        let mut near: Vec<(Id, crate::HostId)> = world
            .online_honest()
            .filter_map(|o| Some((world.core(o)?.id().distance(&my_id), o)))
            .collect();
        let half = self.introductions / 2;
        if near.len() > half {
            near.select_nth_unstable_by_key(half, |x| x.0);
            near.truncate(half);
        }
        let mut to: Vec<SocketAddr> = near.iter().map(|x| world.addr(x.1)).collect();
        for _ in half..self.introductions {
            if let Some(o) = world.random_online(None) {
                to.push(world.addr(o));
            }
        }
        world.sim.with_app(h, |app, _| {
            for (n, addr) in to.iter().enumerate() {
                match app {
                    super::DhtHost::Sybil(s) => s.introduce(*addr, n as u16),
                    super::DhtHost::Garbage(g) => g.introduce(my_id, *addr, n as u16),
                    super::DhtHost::Spoof(s) => s.introduce(*addr, n as u16),
                    super::DhtHost::Honest(_) => {}
                }
            }
        });
    }
}

/// What the spoofing attackers share: the oracle of honest nodes, the sink addresses,
/// the attack's settings and its log.
#[derive(Debug, Default)]
pub struct SpoofShared {
    /// Honest nodes sorted by id (the attacker's knowledge of who is close to a target).
    pub honest: Vec<NodeInfo>,
    /// Attacker addresses the forged replies point at.
    pub sinks: Vec<SocketAddr>,
    /// Transaction ids guessed after the one seen, per forged source.
    pub window: u32,
    /// Forged replies leave this long after the spoofer's own reply.
    pub delay: std::time::Duration,
    /// Sinks forged replies refer, per forged reply.
    pub referrals: usize,
    /// (victim, target) of every query a sink received: the victim accepted a forged
    /// reply (only forged replies name sinks).
    pub sink_queries: Vec<(SocketAddr, Id)>,
    /// (victim, target) of every get_peers a spoofer answered (and forged replies for).
    pub spoofer_queries: Vec<(SocketAddr, Id)>,
    pub forged_sent: u64,
    /// get_peers queries the spoofers answered (and forged replies for).
    pub forged_for: u64,
}

impl SpoofShared {
    /// The `n` honest nodes closest to `target` (from a window of the sorted list around
    /// it: nodes sharing the longest prefix are next to it in sorted order).
    pub fn closest(&self, target: &Id, n: usize) -> Vec<NodeInfo> {
        let pos = self.honest.partition_point(|x| x.id.0 < target.0);
        let lo = pos.saturating_sub(2 * n);
        let hi = (pos + 2 * n).min(self.honest.len());
        let mut near: Vec<NodeInfo> = self.honest[lo..hi].to_vec();
        near.sort_by_key(|x| x.id.distance(target));
        near.truncate(n);
        near
    }
}

/// The id sink `i` claims for `target`: the target with its last 4 bytes replaced, so
/// that it is closer than any honest node and the same in referrals and in answers.
fn sink_id(target: &Id, i: usize) -> Id {
    let mut b = target.0;
    b[16..20].copy_from_slice(&(i as u32 ^ 0x5a5a_0000).to_be_bytes());
    Id(b)
}

/// A spoofing attacker: an ordinary-looking node (BEP 42-valid id) that answers queries
/// correctly, referring the honest nodes really closest to the target; for a get_peers
/// it then forges replies from those nodes' addresses, with transaction ids just after
/// the one the victim used for it (sequential ids make the victim's next queries use
/// those), referring sinks: attacker addresses with ids next to the target. A sink
/// answers like a Sybil (only other sinks, no peers) and logs who asked it for what.
pub struct SpoofNode {
    pub id: Id,
    /// `Some(i)`: sink number `i`; `None`: a spoofer.
    pub sink: Option<usize>,
    pub shared: std::rc::Rc<std::cell::RefCell<SpoofShared>>,
    pub outbox: Vec<Transmit>,
    later: std::collections::VecDeque<(std::time::Instant, std::net::SocketAddrV4, Transmit)>,
    spoofed: Vec<(std::net::SocketAddrV4, Transmit)>,
    pub queries_answered: u64,
}

impl SpoofNode {
    pub fn new(
        id: Id,
        sink: Option<usize>,
        shared: std::rc::Rc<std::cell::RefCell<SpoofShared>>,
    ) -> Self {
        SpoofNode {
            id,
            sink,
            shared,
            outbox: Vec::new(),
            later: Default::default(),
            spoofed: Vec::new(),
            queries_answered: 0,
        }
    }

    pub fn introduce(&mut self, to: SocketAddr, tid: u16) {
        self.outbox.push(Transmit {
            to,
            data: find_node_query(self.id, tid),
        });
    }

    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.later.front().map(|x| x.0)
    }

    pub fn handle_timeout(&mut self, now: std::time::Instant) {
        while self.later.front().is_some_and(|x| x.0 <= now) {
            let (_, from, t) = self.later.pop_front().expect("checked");
            self.spoofed.push((from, t));
        }
    }

    pub fn poll_spoofed(&mut self) -> Option<(std::net::SocketAddrV4, Transmit)> {
        self.spoofed.pop()
    }

    pub fn handle_datagram(&mut self, now: std::time::Instant, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        let Body::Query(q) = msg.body else {
            return;
        };
        let (target, get_peers) = match q.kind {
            QueryKind::FindNode { target }
            | QueryKind::SampleInfohashes { target }
            | QueryKind::Get { target, .. }
            | QueryKind::Other { target, .. } => (Some(target), false),
            QueryKind::GetPeers { info_hash } => (Some(info_hash), true),
            QueryKind::Ping | QueryKind::AnnouncePeer { .. } | QueryKind::Put { .. } => {
                (None, false)
            }
        };
        self.queries_answered += 1;
        let mut shared = self.shared.borrow_mut();
        let (id, nodes) = match (self.sink, target) {
            (Some(i), Some(t)) => {
                if get_peers {
                    shared.sink_queries.push((from, t));
                }
                let nodes = (0..shared.sinks.len().min(9))
                    .filter(|&j| j != i)
                    .take(8)
                    .map(|j| NodeInfo {
                        id: sink_id(&t, j),
                        addr: shared.sinks[j],
                    })
                    .collect();
                (sink_id(&t, i), nodes)
            }
            (Some(_), None) => (self.id, Vec::new()),
            (None, Some(t)) => (self.id, shared.closest(&t, 8)),
            (None, None) => (self.id, Vec::new()),
        };
        let reply = |t: Vec<u8>, id: Id, nodes: Vec<NodeInfo>| Message {
            t,
            v: None,
            ip: Some(from),
            ro: false,
            body: Body::Response(Response {
                id,
                nodes,
                token: get_peers.then(|| b"spoof".to_vec()),
                ..Response::default()
            }),
        };
        let referred = nodes.clone();
        self.outbox.push(Transmit {
            to: from,
            data: reply(msg.t.clone(), id, nodes).to_bytes(),
        });
        let (Some(target), None, true) = (target, self.sink, get_peers) else {
            return;
        };
        // The forgeries: from each referred node, ids just after the one we saw.
        shared.forged_for += 1;
        shared.spoofer_queries.push((from, target));
        let seen: Option<u64> = match msg.t.len() {
            2 => Some(u64::from(u16::from_be_bytes([msg.t[0], msg.t[1]]))),
            4 => Some(u64::from(u32::from_be_bytes([
                msg.t[0], msg.t[1], msg.t[2], msg.t[3],
            ]))),
            _ => None,
        };
        let Some(seen) = seen else { return };
        let due = now + shared.delay;
        let sinks: Vec<NodeInfo> = (0..shared.sinks.len().min(shared.referrals))
            .map(|j| NodeInfo {
                id: sink_id(&target, j),
                addr: shared.sinks[j],
            })
            .collect();
        for h in &referred {
            let SocketAddr::V4(src) = h.addr else {
                continue;
            };
            for g in 1..=u64::from(shared.window) {
                let t = match msg.t.len() {
                    2 => ((seen + g) as u16).to_be_bytes().to_vec(),
                    _ => ((seen + g) as u32).to_be_bytes().to_vec(),
                };
                self.later.push_back((
                    due,
                    src,
                    Transmit {
                        to: from,
                        data: reply(t, h.id, sinks.clone()).to_bytes(),
                    },
                ));
                shared.forged_sent += 1;
            }
        }
    }
}
