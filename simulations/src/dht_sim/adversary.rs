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
}

/// A share of attacker nodes added to a world.
#[derive(Clone, Debug)]
pub struct Attack {
    pub kind: AttackKind,
    /// Attackers as a share of all nodes (honest + attackers).
    pub share: f64,
    /// Honest nodes each attacker introduces itself to (by querying them).
    pub introductions: usize,
    /// The attacker hosts, filled in by `deploy`.
    pub hosts: std::cell::RefCell<Vec<crate::HostId>>,
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

    /// Queries the attackers answered (with garbage or poison): how engaged they were.
    pub fn queries_answered(&self, world: &super::DhtWorld) -> u64 {
        self.hosts
            .borrow()
            .iter()
            .map(|&h| match world.sim.app(h) {
                Some(super::DhtHost::Sybil(s)) => s.queries_answered,
                Some(super::DhtHost::Garbage(g)) => g.queries_answered,
                _ => 0,
            })
            .sum()
    }

    /// Attacker `i` introduces itself.
    pub fn on_probe(&self, world: &mut super::DhtWorld, i: u32) {
        let Some(&h) = self.hosts.borrow().get(i as usize) else {
            return;
        };
        let Some(my_id) = (match world.sim.app(h) {
            Some(super::DhtHost::Sybil(s)) => Some(s.id),
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
                    super::DhtHost::Honest(_) => {}
                }
            }
        });
    }
}
