//! One iterative lookup (BEP 5 traversal): which nodes to ask next, and when it is done.
//!
//! The lookup keeps its candidates sorted by distance to the target. It asks the closest
//! unasked ones, `alpha` at a time; a query past the short timeout stops holding its slot
//! (so a slow node costs little), and a failed one drops out. It is done when the `k`
//! closest candidates that have not failed have all answered, or when nobody is left to
//! ask. The lookup itself sends nothing: the core turns its decisions into datagrams.
//!
//! BEP 42: with [`Lookup::with_prefer_verified`], nodes whose id is not valid for their IP
//! may hold at most half of the `k` closest places the lookup works on, finishes on and
//! announces to. Sybils that pick ids right next to a target (and so cannot have valid
//! ids for their addresses) can then no longer crowd out every honest node near it: the
//! other half is always the closest verified nodes.
//!
//! Hops: nodes from our own table (or the bootstrap list) are one hop away; a node learned
//! from the reply of a node `h` hops away is `h + 1` hops away.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::id::Id;
use crate::krpc::NodeInfo;
use crate::routing::addr_key;

/// Identifies a lookup in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// find_node towards a target.
    FindNode,
    /// get_peers, streaming peers as they arrive.
    GetPeers,
    /// get_peers, then announce_peer to the k closest that gave a token. `None` port means
    /// implied_port (the receiver uses our UDP source port).
    Announce { port: Option<u16> },
    /// find_node for our own id, from the table and the bootstrap nodes.
    Bootstrap,
    /// find_node for a random id in a stale bucket.
    Refresh,
    /// BEP 44 get, reporting each verified item (a mutable one each time a newer version
    /// turns up).
    GetItem,
    /// BEP 44 get, then put to the k closest that gave a token.
    PutItem,
}

impl LookupKind {
    pub fn wants_peers(&self) -> bool {
        matches!(self, LookupKind::GetPeers | LookupKind::Announce { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight { slow: bool },
    Responded,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Unknown for bootstrap addresses until they answer.
    id: Option<Id>,
    addr: SocketAddr,
    /// `routing::addr_key(addr)`: a cheap first test in the duplicate checks.
    addr_key: u64,
    state: State,
    token: Option<Vec<u8>>,
    /// Its id is valid for its IP under BEP 42 (or the IP is exempt, or the lookup does
    /// not check, or the id is not known yet).
    verified: bool,
    /// Queries from us to it: 1 for nodes we knew, one more than its referrer otherwise.
    hop: u8,
    /// Sort key: known ids by distance to the target, unknown ids after them.
    rank: (bool, Id),
}

fn rank(id: Option<Id>, target: &Id) -> (bool, Id) {
    match id {
        Some(id) => (false, id.distance(target)),
        None => (true, Id::ZERO),
    }
}

/// Where a lookup is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Traversal,
    Announcing {
        sent: usize,
        pending: usize,
        acked: usize,
    },
    Finished,
}

/// Candidates kept per lookup (far ones beyond this are dropped).
const MAX_CANDIDATES: usize = 64;
/// Distinct peers remembered per lookup for de-duplicating the stream.
const MAX_PEERS_SEEN: usize = 4096;

#[derive(Clone, Debug)]
pub struct Lookup {
    pub id: LookupId,
    pub kind: LookupKind,
    pub target: Id,
    pub phase: Phase,
    k: usize,
    alpha: usize,
    max_in_flight: usize,
    candidates: Vec<Candidate>,
    /// IP part (`addr_key >> 16`) of every address ever added, sorted: most nodes a reply
    /// names are new, and this tells so without reading every candidate.
    ips_seen: Vec<u64>,
    in_flight: usize,
    slow: usize,
    peers_seen: HashSet<SocketAddr>,
    pub queries_sent: u32,
    pub responses: u32,
    /// At most one candidate per IP, so a hostile reply cannot point a lookup's queries
    /// at one victim on many ports (off on loopback, where every node shares an IP).
    one_per_ip: bool,
    /// Check ids with BEP 42 and give unverified nodes at most half the closest places.
    prefer_verified: bool,
    /// Hop count given to nodes added next: one more than the node that answered last
    /// (the core adds a reply's nodes right after reporting the reply).
    next_hop: u8,
    /// Bucket refresh: done once k nodes sharing at least this many leading bits with the
    /// target have answered (see [`Lookup::with_fill`]).
    fill_bits: Option<u32>,
    /// See [`Lookup::with_steady_pace`].
    steady: bool,
}

impl Lookup {
    pub fn new(
        id: LookupId,
        kind: LookupKind,
        target: Id,
        k: usize,
        alpha: usize,
        max_in_flight: usize,
    ) -> Lookup {
        Lookup {
            id,
            kind,
            target,
            phase: Phase::Traversal,
            k: k.max(1),
            alpha: alpha.max(1),
            max_in_flight: max_in_flight.max(alpha.max(1)),
            candidates: Vec::new(),
            ips_seen: Vec::new(),
            in_flight: 0,
            slow: 0,
            peers_seen: HashSet::new(),
            queries_sent: 0,
            responses: 0,
            one_per_ip: false,
            prefer_verified: false,
            next_hop: 1,
            fill_bits: None,
            steady: false,
        }
    }

    /// Makes this a bucket-filling lookup: it is done as soon as k/2 nodes that share at
    /// least `bits` leading bits with the target have answered. A refresh only needs
    /// live nodes in the bucket's range (each answer puts its node in our table); the
    /// exact k closest to a random id in it are worth nothing, and converging on them
    /// costs several times the queries.
    pub fn with_fill(mut self, bits: u32) -> Lookup {
        self.fill_bits = Some(bits);
        self
    }

    /// At most `alpha` queries in flight in all (slow ones not counting), however near
    /// the nodes a reply names: for upkeep (bootstrap, refreshes), where a few more
    /// round trips cost nothing and fewer queries save traffic. Searches go at the pace
    /// of their fastest useful replies instead (see [`Lookup::next_queries`]).
    pub fn with_steady_pace(mut self, on: bool) -> Lookup {
        self.steady = on;
        self
    }

    /// Whether a bucket-filling lookup has its nodes (see `fill_count`).
    fn filled(&self) -> bool {
        let Some(bits) = self.fill_bits else {
            return false;
        };
        // Candidates are sorted by distance, so the ones in range come first.
        self.candidates
            .iter()
            .take_while(|c| c.id.is_some() && c.rank.1.leading_zeros() >= bits)
            .filter(|c| c.state == State::Responded)
            .nth(self.fill_count() - 1)
            .is_some()
    }

    /// Answers in range that fill a bucket: half of k. The refresh has then found live
    /// nodes there (and their referrals), and the rest of the bucket fills from the
    /// traffic those nodes bring; going on to k answers costs about 40% more refresh
    /// queries for the same lookup success (30,000-node simulation).
    fn fill_count(&self) -> usize {
        (self.k / 2).max(1)
    }

    /// Checks candidates' ids against their IPs (BEP 42) and lets unverified ones take at
    /// most half of the k closest places (see the module docs).
    pub fn with_prefer_verified(mut self, on: bool) -> Lookup {
        self.prefer_verified = on;
        self
    }

    fn is_verified(&self, id: &Id, addr: &SocketAddr) -> bool {
        !self.prefer_verified || crate::bep42::is_valid_id(id, addr.ip())
    }

    /// Places among the k closest that unverified nodes may take.
    fn max_unverified(&self) -> usize {
        if self.prefer_verified {
            (self.k / 2).max(1)
        } else {
            self.k
        }
    }

    /// Indices of the candidates the lookup works on, nearest first: the k closest that
    /// have not failed, where unverified ones beyond `max_unverified` are passed over.
    /// A query past its short timeout takes no place either: the node is most likely
    /// gone (churn), and holding the place would stall the lookup until the hard
    /// timeout once the k closest seeds are all dead. If it answers after all, it
    /// takes its place again.
    fn window(&self) -> impl Iterator<Item = usize> + '_ {
        let max_unverified = self.max_unverified();
        let mut unverified = 0;
        self.candidates
            .iter()
            .enumerate()
            .filter(move |(_, c)| {
                if matches!(c.state, State::Failed | State::InFlight { slow: true }) {
                    return false;
                }
                if !c.verified {
                    if unverified >= max_unverified {
                        return false;
                    }
                    unverified += 1;
                }
                true
            })
            .map(|(i, _)| i)
            .take(self.k)
    }

    /// Allows only one candidate per IP address (see the field's docs).
    pub fn with_one_per_ip(mut self, on: bool) -> Lookup {
        self.one_per_ip = on;
        self
    }

    fn sort(&mut self) {
        // Known ids by distance; unknown ids (bootstrap addresses) last, in insertion order
        // (the sort is stable).
        self.candidates.sort_by_key(|c| c.rank);
    }

    /// Adds nodes learned from the routing table or a reply.
    pub fn add_nodes<'n>(&mut self, nodes: impl IntoIterator<Item = &'n NodeInfo>) {
        for n in nodes {
            let one_per_ip = self.one_per_ip;
            let key = addr_key(&n.addr);
            let rank = rank(Some(n.id), &self.target);
            // Keep the list sorted: insert after the last candidate that ranks no farther.
            // Equal ranks mean equal ids (XOR distance to one target is one-to-one).
            let at = self.candidates.partition_point(|c| c.rank <= rank);
            if at > 0 && self.candidates[at - 1].rank == rank {
                continue;
            }
            // Keys of one IP share all but the low 16 bits (the port); equal keys are
            // confirmed on the address itself, since IPv6 keys are hashes.
            match self.ips_seen.binary_search(&(key >> 16)) {
                Err(pos) => self.ips_seen.insert(pos, key >> 16),
                Ok(_) => {
                    if self.candidates.iter().any(|c| {
                        (c.addr_key == key && c.addr == n.addr)
                            || (one_per_ip
                                && c.addr_key >> 16 == key >> 16
                                && c.addr.ip() == n.addr.ip())
                    }) {
                        continue;
                    }
                }
            }
            let verified = self.is_verified(&n.id, &n.addr);
            self.candidates.insert(
                at,
                Candidate {
                    id: Some(n.id),
                    addr: n.addr,
                    addr_key: key,
                    state: State::Fresh,
                    token: None,
                    verified,
                    hop: self.next_hop,
                    rank,
                },
            );
        }
        self.trim();
    }

    /// Adds addresses whose ids we do not know (bootstrap nodes).
    pub fn add_addrs(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            if self.candidates.iter().any(|c| c.addr == addr) {
                continue;
            }
            let ip = addr_key(&addr) >> 16;
            if let Err(pos) = self.ips_seen.binary_search(&ip) {
                self.ips_seen.insert(pos, ip);
            }
            self.candidates.push(Candidate {
                id: None,
                addr,
                addr_key: addr_key(&addr),
                state: State::Fresh,
                token: None,
                verified: true,
                hop: 1,
                rank: rank(None, &self.target),
            });
        }
    }

    fn trim(&mut self) {
        while self.candidates.len() > MAX_CANDIDATES {
            // Drop the farthest one that is not in flight, unverified ones first (a flood
            // of Sybil ids must not push the verified nodes out).
            let idle = |c: &Candidate| !matches!(c.state, State::InFlight { .. });
            let Some(pos) = self
                .candidates
                .iter()
                .rposition(|c| idle(c) && !c.verified)
                .or_else(|| self.candidates.iter().rposition(idle))
            else {
                break;
            };
            self.candidates.remove(pos);
        }
    }

    pub fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next nodes to ask; they are marked in flight.
    ///
    /// Walking the window nearest first, a fresh node is asked while fewer than `alpha`
    /// queries are in flight to nodes nearer than it (slow ones not counting; with
    /// [`Lookup::with_steady_pace`], to any node). Queries to
    /// nodes that a reply has since outranked do not hold the new, nearer nodes back: the
    /// lookup moves on at the pace of its fastest useful replies, not its slowest.
    pub fn next_queries(&mut self) -> Vec<(SocketAddr, Option<Id>)> {
        let mut out = Vec::new();
        if self.phase != Phase::Traversal || self.filled() {
            return out;
        }
        let window: Vec<usize> = self.window().collect();
        // Steady pace: every active query counts, near or far.
        let mut ahead = if self.steady {
            self.in_flight - self.slow
        } else {
            0
        };
        for i in window {
            if self.in_flight - self.slow >= self.max_in_flight
                || self.in_flight >= 2 * self.max_in_flight
                || ahead >= self.alpha
            {
                break;
            }
            let c = &mut self.candidates[i];
            match c.state {
                State::InFlight { slow: false } if !self.steady => ahead += 1,
                State::Fresh => {
                    c.state = State::InFlight { slow: false };
                    self.in_flight += 1;
                    self.queries_sent += 1;
                    ahead += 1;
                    out.push((c.addr, c.id));
                }
                _ => {}
            }
        }
        out
    }

    fn find(&mut self, addr: &SocketAddr) -> Option<usize> {
        self.candidates.iter().position(|c| c.addr == *addr)
    }

    fn leave_flight(&mut self, i: usize) -> bool {
        if let State::InFlight { slow } = self.candidates[i].state {
            self.in_flight -= 1;
            if slow {
                self.slow -= 1;
            }
            true
        } else {
            false
        }
    }

    /// `addr` answered as `id`, with an optional token. Late or duplicate answers are
    /// harmless.
    pub fn on_response(&mut self, addr: &SocketAddr, id: Id, token: Option<Vec<u8>>) {
        let Some(i) = self.find(addr) else { return };
        if !self.leave_flight(i) {
            return;
        }
        self.responses += 1;
        let verified = self.is_verified(&id, addr);
        let c = &mut self.candidates[i];
        c.state = State::Responded;
        c.token = token;
        self.next_hop = c.hop.saturating_add(1);
        if c.id != Some(id) {
            c.id = Some(id);
            c.verified = verified;
            c.rank = rank(Some(id), &self.target);
            self.sort();
        }
    }

    /// The query to `addr` passed the short timeout: its slot opens for another.
    pub fn on_slow(&mut self, addr: &SocketAddr) {
        let Some(i) = self.find(addr) else { return };
        if let State::InFlight { slow: false } = self.candidates[i].state {
            self.candidates[i].state = State::InFlight { slow: true };
            self.slow += 1;
        }
    }

    /// The query to `addr` failed (timeout or error).
    pub fn on_failure(&mut self, addr: &SocketAddr) {
        let Some(i) = self.find(addr) else { return };
        if self.leave_flight(i) {
            self.candidates[i].state = State::Failed;
        }
    }

    /// Whether the traversal has converged: the k closest live candidates all answered,
    /// or there is nobody left to ask and nothing in flight.
    pub fn traversal_done(&self) -> bool {
        if self.filled() {
            return true;
        }
        let mut answered = 0;
        for i in self.window() {
            match self.candidates[i].state {
                State::Responded => answered += 1,
                _ => return false,
            }
        }
        answered >= self.k || self.in_flight == 0
    }

    /// The closest nodes that answered, nearest first (at most k; with BEP 42 preference
    /// at most half of them unverified).
    pub fn closest_responded(&self) -> Vec<NodeInfo> {
        self.window()
            .map(|i| &self.candidates[i])
            .filter(|c| c.state == State::Responded)
            .filter_map(|c| c.id.map(|id| NodeInfo { id, addr: c.addr }))
            .collect()
    }

    /// The closest that answered with a token (as in [`Lookup::closest_responded`]):
    /// where an announce goes.
    pub fn announce_targets(&self) -> Vec<(SocketAddr, Id, Vec<u8>)> {
        self.window()
            .map(|i| &self.candidates[i])
            .filter(|c| c.state == State::Responded)
            .filter_map(|c| Some((c.addr, c.id?, c.token.clone()?)))
            .collect()
    }

    /// Hops to the closest node that answered (0 if none did): how many rounds of
    /// referrals the lookup needed to get there.
    pub fn hops(&self) -> u32 {
        self.window()
            .map(|i| &self.candidates[i])
            .find(|c| c.state == State::Responded)
            .map_or(0, |c| u32::from(c.hop))
    }

    /// Filters `peers` down to ones not reported before by this lookup.
    pub fn new_peers(&mut self, peers: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for p in peers {
            if self.peers_seen.len() >= MAX_PEERS_SEEN {
                break;
            }
            if self.peers_seen.insert(*p) {
                out.push(*p);
            }
        }
        out
    }

    pub fn peers_found(&self) -> usize {
        self.peers_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn node(rng: &mut rand_chacha::ChaCha8Rng, i: u16) -> NodeInfo {
        NodeInfo {
            id: Id::random(rng),
            addr: SocketAddr::from(([10, 0, 0, 1], i)),
        }
    }

    #[test]
    fn asks_alpha_closest_first_and_finishes_once_k_answered() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let target = Id::random(&mut rng);
        let nodes: Vec<NodeInfo> = (1..=20).map(|i| node(&mut rng, i)).collect();
        let mut l = Lookup::new(LookupId(1), LookupKind::FindNode, target, 8, 3, 8);
        l.add_nodes(&nodes);
        let mut sorted = nodes.clone();
        sorted.sort_by_key(|n| n.id.distance(&target));
        let first = l.next_queries();
        assert_eq!(first.len(), 3);
        assert_eq!(
            first.iter().map(|q| q.0).collect::<Vec<_>>(),
            sorted[..3].iter().map(|n| n.addr).collect::<Vec<_>>()
        );
        assert!(l.next_queries().is_empty(), "alpha slots are full");
        // Answer everything asked until done; count rounds to bound the loop.
        let mut rounds = 0;
        let mut asked = first;
        while !l.traversal_done() {
            rounds += 1;
            assert!(rounds < 100);
            for (addr, id) in asked.drain(..) {
                l.on_response(&addr, id.unwrap(), Some(vec![1]));
                // Duplicate reply: harmless.
                l.on_response(&addr, id.unwrap(), Some(vec![1]));
            }
            asked = l.next_queries();
        }
        // Exactly the 8 closest answered; the rest were never asked.
        assert_eq!(
            l.closest_responded()
                .iter()
                .map(|n| n.id)
                .collect::<Vec<_>>(),
            sorted[..8].iter().map(|n| n.id).collect::<Vec<_>>()
        );
        assert_eq!(l.queries_sent, 8);
        assert_eq!(l.announce_targets().len(), 8);
    }

    #[test]
    fn nearer_nodes_from_a_reply_are_asked_while_farther_queries_are_pending() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let target = Id::random(&mut rng);
        // Three seeds far from the target, and five nodes nearer than any of them.
        let mut nodes: Vec<NodeInfo> = (1..=8).map(|i| node(&mut rng, i)).collect();
        for n in &mut nodes[..3] {
            n.id.0[0] = !target.0[0];
        }
        for n in &mut nodes[3..] {
            n.id.0[0] = target.0[0];
        }
        let mut l = Lookup::new(LookupId(1), LookupKind::GetPeers, target, 8, 3, 16);
        l.add_nodes(&nodes[..3]);
        let first = l.next_queries();
        assert_eq!(first.len(), 3);
        // The first reply names the nearer nodes; two far queries are still out.
        l.on_response(&first[0].0, first[0].1.unwrap(), None);
        l.add_nodes(&nodes[3..]);
        let next = l.next_queries();
        let mut nearest: Vec<&NodeInfo> = nodes[3..].iter().collect();
        nearest.sort_by_key(|n| n.id.distance(&target));
        assert_eq!(
            next.iter().map(|q| q.0).collect::<Vec<_>>(),
            nearest[..3].iter().map(|n| n.addr).collect::<Vec<_>>(),
            "alpha queries go to the nearer nodes at once, not one per freed slot"
        );
        assert!(l.next_queries().is_empty());
        // Upkeep lookups keep alpha in flight in all: one query per freed slot.
        let mut l =
            Lookup::new(LookupId(2), LookupKind::Refresh, target, 8, 3, 16).with_steady_pace(true);
        l.add_nodes(&nodes[..3]);
        let first = l.next_queries();
        l.on_response(&first[0].0, first[0].1.unwrap(), None);
        l.add_nodes(&nodes[3..]);
        assert_eq!(
            l.next_queries(),
            vec![(nearest[0].addr, Some(nearest[0].id))]
        );
    }

    #[test]
    fn slow_queries_free_their_slot_and_their_place_and_failure_widens_the_window() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let target = Id::random(&mut rng);
        let nodes: Vec<NodeInfo> = (1..=10).map(|i| node(&mut rng, i)).collect();
        let mut nearest = nodes.clone();
        nearest.sort_by_key(|n| n.id.distance(&target));
        // k = 3, alpha = 1, max_in_flight = 3.
        let mut l = Lookup::new(LookupId(1), LookupKind::GetPeers, target, 3, 1, 3);
        l.add_nodes(&nodes);
        let mut asked = Vec::new();
        for _ in 0..6 {
            let q = l.next_queries();
            assert_eq!(q.len(), 1, "alpha = 1, and a slow query frees its slot");
            assert!(l.next_queries().is_empty(), "alpha = 1");
            l.on_slow(&q[0].0);
            asked.push(q[0]);
        }
        // The three nearest went slow and the lookup went on past them, though k = 3:
        // dead seeds do not stall it until the hard timeout.
        let expected: Vec<_> = nearest[..6].iter().map(|n| (n.addr, Some(n.id))).collect();
        assert_eq!(asked, expected);
        assert!(
            l.next_queries().is_empty(),
            "twice max_in_flight caps slow queries"
        );
        l.on_failure(&asked[0].0);
        l.on_failure(&asked[0].0); // duplicate failure is harmless
        assert_eq!(l.in_flight(), 5);
        // Late answers take their places again.
        l.on_response(&asked[1].0, nearest[1].id, None);
        l.on_response(&asked[2].0, nearest[2].id, None);
        assert!(
            !l.traversal_done(),
            "the third place goes to the nearest node not failed nor slow"
        );
        let d = l.next_queries();
        assert_eq!(d, vec![(nearest[6].addr, Some(nearest[6].id))]);
        l.on_response(&d[0].0, nearest[6].id, None);
        assert!(l.traversal_done());
        assert_eq!(
            l.closest_responded(),
            vec![nearest[1], nearest[2], nearest[6]]
        );
        // A late reply from the failed node changes nothing.
        l.on_response(&asked[0].0, nearest[0].id, None);
        assert_eq!(l.responses, 3);
    }

    #[test]
    fn empty_lookup_is_done() {
        let l = Lookup::new(LookupId(1), LookupKind::FindNode, Id::ZERO, 8, 3, 8);
        assert!(l.traversal_done());
    }

    /// Every reply names three nodes closer to the target than any before: a traversal
    /// that must converge keeps chasing them; a bucket refresh stops once k nodes in its
    /// range have answered.
    #[test]
    fn a_filling_lookup_stops_once_half_k_nodes_in_range_answered() {
        fn run(fill: Option<u32>) -> (u32, u32) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            let target = Id::random(&mut rng);
            // The i-th node named shares 5 + i leading bits with the target.
            let mut named = 0u32;
            let closer = |named: &mut u32, rng: &mut rand_chacha::ChaCha8Rng| -> Vec<NodeInfo> {
                (0..3)
                    .map(|_| {
                        *named += 1;
                        NodeInfo {
                            id: target.random_with_prefix(4 + *named, rng),
                            addr: SocketAddr::from(([10, 0, (*named >> 8) as u8, *named as u8], 1)),
                        }
                    })
                    .collect()
            };
            let mut l = Lookup::new(LookupId(1), LookupKind::Refresh, target, 8, 3, 8);
            if let Some(bits) = fill {
                l = l.with_fill(bits);
            }
            l.add_nodes(&closer(&mut named, &mut rng));
            let mut rounds = 0;
            while !l.traversal_done() {
                rounds += 1;
                assert!(rounds < 1000);
                for (addr, id) in l.next_queries() {
                    l.on_response(&addr, id.unwrap(), None);
                    if named < 140 {
                        l.add_nodes(&closer(&mut named, &mut rng));
                    }
                }
            }
            (l.queries_sent, l.responses)
        }
        let (converge, _) = run(None);
        let (fill, answered) = run(Some(5));
        assert!(answered >= 4, "{answered}");
        assert!(
            fill <= 4 + 2,
            "stops at k/2 answers plus the queries in flight: {fill}"
        );
        assert!(converge > 3 * fill, "{converge} vs {fill}");
    }

    #[test]
    fn unknown_ids_are_asked_and_resorted() {
        let mut l = Lookup::new(LookupId(1), LookupKind::Bootstrap, Id::ZERO, 8, 3, 8);
        let boot: SocketAddr = "127.0.0.1:1".parse().unwrap();
        l.add_addrs([boot]);
        let q = l.next_queries();
        assert_eq!(q, vec![(boot, None)]);
        l.on_response(&boot, Id([1; 20]), None);
        assert!(l.traversal_done());
        assert_eq!(l.closest_responded()[0].id, Id([1; 20]));
    }

    #[test]
    fn one_candidate_per_ip_when_restricted() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let victim: Vec<NodeInfo> = (1..=8).map(|i| node(&mut rng, i)).collect();
        let mut l =
            Lookup::new(LookupId(1), LookupKind::FindNode, Id::ZERO, 8, 3, 8).with_one_per_ip(true);
        l.add_nodes(&victim);
        assert_eq!(l.candidate_count(), 1);
        let mut open = Lookup::new(LookupId(2), LookupKind::FindNode, Id::ZERO, 8, 3, 8);
        open.add_nodes(&victim);
        assert_eq!(open.candidate_count(), 8);
    }

    #[test]
    fn hops_count_referral_rounds_to_the_closest() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let target = Id::random(&mut rng);
        // Three rings of nodes, each closer to the target than the last.
        let ring = |rng: &mut rand_chacha::ChaCha8Rng, bits: u32, base: u16| -> Vec<NodeInfo> {
            (0..8)
                .map(|i| NodeInfo {
                    id: target.random_with_prefix(bits + i as u32 % 2, rng),
                    addr: SocketAddr::from(([10, 0, 1, 1], base + i)),
                })
                .collect()
        };
        let far = ring(&mut rng, 2, 100);
        let mid = ring(&mut rng, 20, 200);
        let near = ring(&mut rng, 40, 300);
        let mut l = Lookup::new(LookupId(1), LookupKind::FindNode, target, 8, 3, 8);
        l.add_nodes(&far);
        assert_eq!(l.hops(), 0, "nobody answered yet");
        let mut rounds = 0;
        while !l.traversal_done() {
            rounds += 1;
            assert!(rounds < 100);
            for (addr, id) in l.next_queries() {
                let id = id.unwrap();
                l.on_response(&addr, id, None);
                // Far nodes know the middle ring, middle ones the near ring.
                let port = addr.port();
                if (100..200).contains(&port) {
                    l.add_nodes(&mid);
                } else if (200..300).contains(&port) {
                    l.add_nodes(&near);
                }
            }
        }
        assert_eq!(l.hops(), 3);
        let closest: Vec<Id> = l.closest_responded().iter().map(|n| n.id).collect();
        assert!(near.iter().all(|n| closest.contains(&n.id)));
    }

    /// A public address and a BEP 42-valid id for it.
    fn honest(rng: &mut rand_chacha::ChaCha8Rng, i: u32) -> NodeInfo {
        let ip = std::net::Ipv4Addr::from(0x2000_0000 + i * 7919);
        NodeInfo {
            id: crate::bep42::random_secure_id(ip.into(), rng),
            addr: SocketAddr::from((ip, 6881)),
        }
    }

    /// Runs a lookup where Sybils (ids next to the target, public addresses, so invalid
    /// under BEP 42) answer with each other and honest nodes answer with the closest
    /// nodes they know, Sybils included. Returns how many of the honest nodes closest to
    /// the target are in the finishing set, and how many Sybils.
    fn sybil_lookup(prefer_verified: bool) -> (usize, usize) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let target = Id::random(&mut rng);
        let honest: Vec<NodeInfo> = (0..400).map(|i| honest(&mut rng, i)).collect();
        let sybils: Vec<NodeInfo> = (0..40)
            .map(|i| NodeInfo {
                id: target.random_with_prefix(30 + i % 8, &mut rng),
                addr: SocketAddr::from(([100, 64, 0, 1 + i as u8], 6881)),
            })
            .collect();
        assert!(sybils
            .iter()
            .all(|n| !crate::bep42::is_valid_id(&n.id, n.addr.ip())));
        let by_distance = |set: &[NodeInfo], n: usize| {
            let mut v = set.to_vec();
            v.sort_by_key(|x| x.id.distance(&target));
            v.truncate(n);
            v
        };
        let everyone: Vec<NodeInfo> = honest.iter().chain(&sybils).copied().collect();
        let mut l = Lookup::new(LookupId(1), LookupKind::GetPeers, target, 8, 3, 8)
            .with_prefer_verified(prefer_verified);
        // We start from a few random honest nodes.
        l.add_nodes(&honest[..16]);
        let mut rounds = 0;
        while !l.traversal_done() {
            rounds += 1;
            assert!(rounds < 500);
            let asks = l.next_queries();
            if asks.is_empty() {
                break;
            }
            for (addr, id) in asks {
                l.on_response(&addr, id.unwrap(), Some(vec![1]));
                if sybils.iter().any(|s| s.addr == addr) {
                    l.add_nodes(&by_distance(&sybils, 8));
                } else {
                    // An honest node whose table has some Sybils: it prefers verified
                    // ones too (see `RoutingTable::closest`), modelled by 4 + 4.
                    let mut reply = by_distance(&sybils, 4);
                    reply.extend(by_distance(&honest, 4));
                    let _ = &everyone;
                    l.add_nodes(&reply);
                }
            }
        }
        let finish = l.closest_responded();
        let best_honest = by_distance(&honest, 4);
        let honest_in = best_honest
            .iter()
            .filter(|h| finish.iter().any(|f| f.id == h.id))
            .count();
        let sybils_in = finish
            .iter()
            .filter(|f| sybils.iter().any(|s| s.id == f.id))
            .count();
        assert_eq!(
            l.announce_targets().len(),
            finish.len(),
            "every finisher gave a token"
        );
        (honest_in, sybils_in)
    }

    #[test]
    fn sybils_cannot_take_every_closest_place_from_verified_nodes() {
        let (honest_in, sybils_in) = sybil_lookup(true);
        assert_eq!(honest_in, 4, "the 4 closest honest nodes are in the set");
        assert!(sybils_in <= 4, "{sybils_in} Sybils");
        // Without the preference the Sybils own the whole set: the eclipse.
        let (honest_in, sybils_in) = sybil_lookup(false);
        assert_eq!((honest_in, sybils_in), (0, 8));
    }

    #[test]
    fn exempt_addresses_count_as_verified() {
        // Loopback and private networks cannot have BEP 42 ids: nothing is passed over.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let nodes: Vec<NodeInfo> = (1..=20).map(|i| node(&mut rng, i)).collect();
        let mut l = Lookup::new(LookupId(1), LookupKind::FindNode, Id::ZERO, 8, 8, 8)
            .with_prefer_verified(true);
        l.add_nodes(&nodes);
        assert_eq!(l.next_queries().len(), 8);
    }

    #[test]
    fn peers_are_deduplicated() {
        let mut l = Lookup::new(LookupId(1), LookupKind::GetPeers, Id::ZERO, 8, 3, 8);
        let p: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert_eq!(l.new_peers(&[p, p]), vec![p]);
        assert!(l.new_peers(&[p]).is_empty());
    }
}
