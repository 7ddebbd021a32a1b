//! The Kademlia routing table (BEP 5): buckets of `k` nodes ordered by XOR distance to our
//! own id, where only the bucket covering our own id splits. Each bucket keeps a small
//! replacement cache of answering nodes to fill slots when a node goes bad.
//!
//! Rules enforced here:
//! - Only nodes that answered us count as confirmed; nodes that merely queried us may fill
//!   free slots unconfirmed, and leave at their first failure.
//! - Extended tables: the far "lazy" buckets also take nodes named in replies, unconfirmed
//!   and unpinged, for our own lookups only (see `with_extended_buckets`).
//! - Poisoning: a known ip:port that shows up with a new id evicts the old entry (the
//!   caller re-pings the address); a known id from a new address is ignored.
//! - Optional IP restrictions: one entry per IP, and at most `max_per_subnet` entries per
//!   /24 (IPv4) or /64 (IPv6) within a bucket.
//! - BEP 42: verified ids are preferred when a slot has to be given up.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::id::Id;
use crate::krpc::NodeInfo;

/// Nodes noted for a one-by-one ping check before a full scan is cheaper.
const RECHECK_MAX: usize = 64;
/// Most probes a stale lazy bucket gets per refresh (see `refresh_probes`).
const MAX_LAZY_PROBES: usize = 8;
/// An unconfirmed node (hearsay in a lazy bucket, or a newcomer waiting for its ping)
/// goes bad after this many `good_for` periods unheard: hearsay from a quarter hour ago
/// is still mostly alive under Mainline-like churn, and a dead seed costs a lookup only
/// a short timeout.
pub const HEARSAY_KEPT: u32 = 3;
/// Failures in a row after which an answering node is dropped.
const MAX_FAILS: u8 = 2;

/// One node in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: Id,
    pub addr: SocketAddr,
    /// Last time it answered one of our queries (or, for unconfirmed nodes, was heard).
    pub last_seen: Instant,
    /// When we last pinged it to check liveness.
    pub pinged_at: Option<Instant>,
    /// Queries in a row it failed to answer.
    pub fails: u8,
    /// It has answered at least one of our queries.
    pub confirmed: bool,
    /// Its id is valid for its IP under BEP 42 (or the IP is exempt).
    pub verified: bool,
}

/// Liveness of a node (BEP 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Good,
    Questionable,
    Bad,
}

impl Entry {
    /// A node just heard from (`confirmed` if it answered us).
    fn new(id: Id, addr: SocketAddr, verified: bool, confirmed: bool, now: Instant) -> Entry {
        Entry {
            id,
            addr,
            last_seen: now,
            pinged_at: None,
            fails: 0,
            confirmed,
            verified,
        }
    }

    pub fn liveness(&self, now: Instant, good_for: Duration) -> Liveness {
        let quiet = now.saturating_duration_since(self.last_seen);
        let silent = quiet >= good_for;
        let forgotten = quiet >= good_for * HEARSAY_KEPT;
        if self.fails >= MAX_FAILS || (!self.confirmed && (self.fails >= 1 || forgotten)) {
            // An unconfirmed node is only worth its slot while it keeps showing up.
            Liveness::Bad
        } else if self.confirmed && self.fails == 0 && !silent {
            Liveness::Good
        } else {
            Liveness::Questionable
        }
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id,
            addr: self.addr,
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    /// Change only through `put` and `take`, which keep `keys` and the table's address
    /// index in step (entries may be edited in place, but not their id or address).
    nodes: Vec<Entry>,
    /// [`node_key`] of each of `nodes`, same order: a scan of a (possibly 128-node) bucket
    /// reads these 8 bytes per node instead of whole entries.
    keys: Vec<u64>,
    /// [`addr_key`] of each of `nodes`, same order (address and IP tests).
    addr_keys: Vec<u64>,
    replacements: Vec<Entry>,
    last_changed: Instant,
}

/// The leading 64 bits of an id: XOR distances of these order nodes as the full ids do,
/// except between ids that agree on all 64 bits (then the full ids decide).
fn id_key(id: &Id) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

/// A node's leading 63 id bits, with its BEP 42 `verified` flag (fixed for an entry) as
/// the lowest bit.
fn node_key(e: &Entry) -> u64 {
    (id_key(&e.id) & !1) | u64::from(e.verified)
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket::with(Vec::new(), Vec::new(), now)
    }

    fn with(nodes: Vec<Entry>, replacements: Vec<Entry>, now: Instant) -> Bucket {
        Bucket {
            keys: nodes.iter().map(node_key).collect(),
            addr_keys: nodes.iter().map(|e| addr_key(&e.addr)).collect(),
            nodes,
            replacements,
            last_changed: now,
        }
    }

    /// Position of the node at this address.
    fn find_addr(&self, addr: &SocketAddr) -> Option<usize> {
        let key = addr_key(addr);
        self.addr_keys
            .iter()
            .enumerate()
            .find(|&(i, k)| *k == key && self.nodes[i].addr == *addr)
            .map(|(i, _)| i)
    }

    /// Position of the node with this id.
    fn find_id(&self, id: &Id) -> Option<usize> {
        let key = id_key(id) >> 1;
        self.keys
            .iter()
            .enumerate()
            .find(|&(i, k)| k >> 1 == key && self.nodes[i].id == *id)
            .map(|(i, _)| i)
    }

    /// Puts `entry` in place of the node at `slot`, or at the end.
    fn put(&mut self, slot: Option<usize>, entry: Entry, addr_keys: &mut Vec<u64>, now: Instant) {
        index_add(addr_keys, &entry.addr);
        let (key, akey) = (node_key(&entry), addr_key(&entry.addr));
        match slot {
            Some(pos) => {
                index_remove(addr_keys, &self.nodes[pos].addr);
                self.keys[pos] = key;
                self.addr_keys[pos] = akey;
                self.nodes[pos] = entry;
            }
            None => {
                self.keys.push(key);
                self.addr_keys.push(akey);
                self.nodes.push(entry);
            }
        }
        self.last_changed = now;
    }

    /// Removes the node at `pos`.
    fn take(&mut self, pos: usize, addr_keys: &mut Vec<u64>) -> Entry {
        self.keys.remove(pos);
        self.addr_keys.remove(pos);
        let gone = self.nodes.remove(pos);
        index_remove(addr_keys, &gone.addr);
        gone
    }
}

/// What happened to a node offered to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// It took a free (or bad node's) slot.
    Added,
    /// It was already there; its liveness was refreshed.
    Updated,
    /// Bucket full of live nodes: it waits in the replacement cache. If `ping` is set,
    /// that questionable node should be pinged so a dead one makes room.
    Cached { ping: Option<NodeInfo> },
    /// This address was in the table with another id: the old entry is gone and the
    /// caller should ping the address to learn which id is real.
    Poisoned { evicted: NodeInfo },
    /// A query claimed a confirmed node's address with another id. A query's source can be
    /// spoofed, so the entry stays; the caller should ping the address, and only a reply
    /// from the new id (which needs our random transaction id) replaces it.
    Contested { addr: SocketAddr },
    /// Not taken (own id, known id at a new address, IP limits, full and unconfirmed).
    Ignored,
}

#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: Id,
    k: usize,
    restrict_ips: bool,
    max_per_subnet: usize,
    good_for: Duration,
    buckets: Vec<Bucket>,
    /// No node can be due for a liveness ping before this (`None`: unknown, scan). Lets
    /// the housekeeping tick skip the scan of the whole table while nothing is due.
    ping_check_at: Option<Instant>,
    /// Nodes that may have fallen due before `ping_check_at` (added unconfirmed, failed a
    /// query): checked one by one, so that a newcomer does not cost a scan of the table.
    recheck: Vec<SocketAddr>,
    /// [`addr_key`] of every node in the buckets (not the replacement caches), sorted:
    /// answers "is this address / IP in the table?" without reading every entry, which a
    /// node must ask for every newcomer that queries or answers it.
    addr_keys: Vec<u64>,
    /// See [`RoutingTable::with_extended_buckets`].
    extended: bool,
}

/// A sortable key for an address: IPv4 as `ip << 16 | port` (exact); IPv6 as a 47-bit hash
/// of the IP with the top bit set (collisions are possible, so a hit is confirmed on the
/// entries). Keys of one IP are adjacent: `key >> 16` is the IP part.
pub(crate) fn addr_key(addr: &SocketAddr) -> u64 {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            // A multiplicative mix of both halves (FxHash-like): plenty for a filter.
            let h = ((x as u64) ^ ((x >> 64) as u64).rotate_left(29))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (1 << 47) | (h >> 17)
        }
    };
    (ip << 16) | u64::from(addr.port())
}

fn index_add(keys: &mut Vec<u64>, addr: &SocketAddr) {
    let k = addr_key(addr);
    let at = keys.partition_point(|x| *x < k);
    keys.insert(at, k);
}

fn index_remove(keys: &mut Vec<u64>, addr: &SocketAddr) {
    if let Ok(at) = keys.binary_search(&addr_key(addr)) {
        keys.remove(at);
    }
}

fn subnet(ip: IpAddr) -> (u8, [u8; 8]) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (4, [o[0], o[1], o[2], 0, 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut s = [0u8; 8];
            s.copy_from_slice(&o[..8]);
            (6, s)
        }
    }
}

impl RoutingTable {
    pub fn new(
        own: Id,
        k: usize,
        restrict_ips: bool,
        max_per_subnet: usize,
        good_for: Duration,
        now: Instant,
    ) -> Self {
        RoutingTable {
            own,
            k: k.max(1),
            restrict_ips,
            max_per_subnet: max_per_subnet.max(1),
            good_for,
            buckets: vec![Bucket::new(now)],
            ping_check_at: None,
            recheck: Vec::new(),
            addr_keys: Vec::new(),
            extended: false,
        }
    }

    /// Larger far buckets: the first four hold 16, 8, 4 and 2 times k nodes (128, 64,
    /// 32, 16 for k = 8, as libtorrent's extended routing table), once they no longer
    /// hold our own id. Half of all lookups start in the first bucket, so more nodes
    /// there make the first hop land several bits closer to the target: about one
    /// referral round less per search.
    ///
    /// Newcomers that queried us are not pinged in these buckets ("lazy" buckets), and
    /// nodes named in replies fill them too ([`RoutingTable::on_heard_of`]): they stay
    /// unconfirmed, are never handed to other nodes, and serve only as starting points
    /// for our own lookups, which confirm them by asking them (or drop them at their
    /// first failure). Pinging every one of the extra 240 nodes would cost more traffic
    /// than the buckets save; an unconfirmed node that stops showing up leaves after
    /// `good_for`.
    pub fn with_extended_buckets(mut self, on: bool) -> Self {
        self.extended = on;
        self
    }

    /// Whether unconfirmed nodes in bucket `index` wait for a lookup to confirm them
    /// instead of a ping (see [`RoutingTable::with_extended_buckets`]).
    fn lazy(&self, index: usize) -> bool {
        index < self.lazy_below()
    }

    /// Whether the nodes sharing exactly `prefix` leading bits with us go to a lazy bucket.
    pub fn is_lazy_prefix(&self, prefix: u32) -> bool {
        self.lazy((prefix as usize).min(self.buckets.len() - 1))
    }

    /// Buckets before this index are lazy: the first four, but never the bucket holding
    /// our own id, which works as in BEP 5 (k nodes, newcomers pinged), so that a small
    /// network, all in that one bucket, confirms and hands out its nodes as usual.
    fn lazy_below(&self) -> usize {
        if self.extended {
            4.min(self.buckets.len() - 1)
        } else {
            0
        }
    }

    /// Whether a node with this id that has not answered us yet should be pinged to
    /// confirm it (not in a lazy bucket).
    pub fn wants_confirmation(&self, id: &Id) -> bool {
        !self.lazy(self.bucket_index(id))
    }

    /// How many nodes in bucket (or prefix) `index` make a lookup to fill it not worth
    /// its cost: k, or half of a lazy bucket (one lookup's referrals fill about that).
    fn fill_wanted(&self, index: usize) -> usize {
        if self.lazy(index) {
            self.capacity(index) / 2
        } else {
            self.k
        }
    }

    /// How many nodes bucket `index` holds.
    fn capacity(&self, index: usize) -> usize {
        if self.lazy(index) {
            self.k << (4 - index)
        } else {
            self.k
        }
    }

    pub fn own_id(&self) -> Id {
        self.own
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Nodes in the table (confirmed or not), not counting replacement caches.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.nodes.is_empty())
    }

    pub fn replacement_count(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Heap bytes held by the table (approximate: vector capacities).
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Entry>();
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.addr_keys.capacity() * std::mem::size_of::<u64>()
            + self
                .buckets
                .iter()
                .map(|b| (b.nodes.capacity() + b.replacements.capacity()) * entry)
                .sum::<usize>()
    }

    /// Nodes in each bucket, nearest-to-us last (for stats and tests).
    pub fn bucket_sizes(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.nodes.len()).collect()
    }

    fn bucket_index(&self, id: &Id) -> usize {
        (self.own.common_prefix_len(id) as usize).min(self.buckets.len() - 1)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    pub fn get(&self, id: &Id) -> Option<&Entry> {
        self.buckets[self.bucket_index(id)]
            .nodes
            .iter()
            .find(|e| e.id == *id)
    }

    fn find_addr(&self, addr: &SocketAddr) -> Option<(usize, usize)> {
        if self.addr_keys.binary_search(&addr_key(addr)).is_err() {
            return None;
        }
        self.buckets
            .iter()
            .enumerate()
            .find_map(|(bi, b)| Some((bi, b.find_addr(addr)?)))
    }

    /// A node answered one of our queries.
    pub fn on_response(
        &mut self,
        id: Id,
        addr: SocketAddr,
        verified: bool,
        now: Instant,
    ) -> InsertOutcome {
        self.offer(id, addr, verified, true, now)
    }

    /// A node sent us a query: it may fill a free slot unconfirmed.
    pub fn on_query(
        &mut self,
        id: Id,
        addr: SocketAddr,
        verified: bool,
        now: Instant,
    ) -> InsertOutcome {
        self.offer(id, addr, verified, false, now)
    }

    /// A node named in a reply (not heard from itself): it may take a free slot of a lazy
    /// far bucket, unconfirmed, as a starting point for our own lookups. It never displaces
    /// a node, never splits a bucket and is never handed to others; its first failure or
    /// `good_for` of silence ends it. This fills the big far buckets from the referrals
    /// our lookups and refreshes receive anyway, without a single extra query.
    pub fn on_heard_of(&mut self, id: Id, addr: SocketAddr, verified: bool, now: Instant) -> bool {
        let bi = self.bucket_index(&id);
        if !self.lazy(bi) || id == self.own || addr.port() == 0 {
            return false;
        }
        let b = &mut self.buckets[bi];
        if let Some(i) = b.find_id(&id) {
            // Named again: still alive as far as some node knows.
            let e = &mut b.nodes[i];
            if !e.confirmed && e.fails == 0 && e.addr == addr {
                e.last_seen = now;
            }
            return false;
        }
        if self.addr_keys.binary_search(&addr_key(&addr)).is_ok() {
            return false;
        }
        let b = &self.buckets[bi];
        let (capacity, good_for) = (self.capacity(bi), self.good_for);
        let slot = if b.nodes.len() < capacity {
            None
        } else {
            // Full: it may take the slot of a node gone bad (most often hearsay that fell
            // silent). Only one slot, picked by the newcomer's id, is looked at: reading a
            // whole 128-node bucket for every referral would cost more than the slot is
            // worth, and the steady stream of referrals sweeps all slots soon enough.
            let pos = (id_key(&id) % b.nodes.len() as u64) as usize;
            if b.nodes[pos].liveness(now, good_for) != Liveness::Bad {
                return false;
            }
            Some(pos)
        };
        if self.restrict_ips && !self.ip_allowed(bi, addr.ip()) {
            return false;
        }
        let entry = Entry::new(id, addr, verified, false, now);
        let b = &mut self.buckets[bi];
        let changed = b.last_changed;
        b.put(slot, entry, &mut self.addr_keys, now);
        // Hearsay is no refresh: the bucket is as stale as before.
        b.last_changed = changed;
        true
    }

    fn offer(
        &mut self,
        id: Id,
        addr: SocketAddr,
        verified: bool,
        answered: bool,
        now: Instant,
    ) -> InsertOutcome {
        if id == self.own || addr.port() == 0 {
            return InsertOutcome::Ignored;
        }
        // Fast path for a node we know: addresses are unique in the table, so an entry with
        // this id and address means no other entry can hold the address.
        let home = self.bucket_index(&id);
        let known = self.buckets[home]
            .find_id(&id)
            .filter(|&i| self.buckets[home].nodes[i].addr == addr);
        if let Some(i) = known {
            let e = &mut self.buckets[home].nodes[i];
            if answered {
                e.confirmed = true;
                e.fails = 0;
                e.last_seen = now;
                e.pinged_at = None;
                self.buckets[home].last_changed = now;
            } else if e.fails == 0 {
                // BEP 5: a node that once answered us and queries us now is good; no need
                // to ping it later to find that out. An unconfirmed one is at least alive.
                e.last_seen = now;
            }
            return InsertOutcome::Updated;
        }
        // Poisoning rules.
        if let Some((bi, ni)) = self.find_addr(&addr) {
            let e = &mut self.buckets[bi].nodes[ni];
            if e.id != id && !answered && e.confirmed {
                return InsertOutcome::Contested { addr };
            }
            if e.id != id {
                let evicted = e.info();
                self.remove_at(bi, ni);
                return InsertOutcome::Poisoned { evicted };
            }
            if answered {
                e.confirmed = true;
                e.fails = 0;
                e.last_seen = now;
                e.pinged_at = None;
                self.buckets[bi].last_changed = now;
            }
            return InsertOutcome::Updated;
        }
        let bi = self.bucket_index(&id);
        if self.buckets[bi].find_id(&id).is_some() {
            // Known id at a new address: keep the address we know.
            return InsertOutcome::Ignored;
        }
        if self.restrict_ips && !self.ip_allowed(bi, addr.ip()) {
            return InsertOutcome::Ignored;
        }
        let entry = Entry::new(id, addr, verified, answered, now);
        self.insert_new(entry, now)
    }

    fn ip_allowed(&self, bi: usize, ip: IpAddr) -> bool {
        let first = addr_key(&SocketAddr::new(ip, 0));
        let at = self.addr_keys.partition_point(|x| *x < first);
        let maybe_there = self
            .addr_keys
            .get(at)
            .is_some_and(|k| k >> 16 == first >> 16);
        if maybe_there && self.entries().any(|e| e.addr.ip() == ip) {
            return false;
        }
        let b = &self.buckets[bi];
        let same = if ip.is_ipv4() {
            // An IPv4 key is `ip << 16 | port`: the /24 is the key's top bits.
            let net = first >> 24;
            b.addr_keys.iter().filter(|k| *k >> 24 == net).count()
        } else {
            let net = subnet(ip);
            b.nodes
                .iter()
                .filter(|e| subnet(e.addr.ip()) == net)
                .count()
        };
        same < self.max_per_subnet
    }

    fn insert_new(&mut self, entry: Entry, now: Instant) -> InsertOutcome {
        let (addr, id, due) = (entry.addr, entry.id, Self::may_be_due(&entry));
        let out = self.insert_entry(entry, now);
        if out == InsertOutcome::Added && due && self.wants_confirmation(&id) {
            // An unconfirmed newcomer: ping it to confirm it.
            self.note_recheck(addr);
        }
        out
    }

    fn insert_entry(&mut self, entry: Entry, now: Instant) -> InsertOutcome {
        loop {
            let bi = self.bucket_index(&entry.id);
            let (k, capacity) = (self.k, self.capacity(bi));
            let good_for = self.good_for;
            let splittable = bi == self.buckets.len() - 1 && self.buckets.len() < 160;
            let bucket = &mut self.buckets[bi];
            if bucket.nodes.len() < capacity {
                bucket
                    .replacements
                    .retain(|r| r.id != entry.id && r.addr != entry.addr);
                bucket.put(None, entry, &mut self.addr_keys, now);
                return InsertOutcome::Added;
            }
            // A bad node's slot is free for the taking.
            if let Some(pos) = bucket
                .nodes
                .iter()
                .position(|e| e.liveness(now, good_for) == Liveness::Bad)
            {
                bucket.put(Some(pos), entry, &mut self.addr_keys, now);
                return InsertOutcome::Added;
            }
            // The bucket covering our own id splits.
            if splittable {
                self.split_last(now);
                continue;
            }
            if !entry.confirmed {
                return InsertOutcome::Ignored;
            }
            // An answering node displaces one that never answered, or, if verified,
            // a questionable unverified one.
            let displace = bucket.nodes.iter().position(|e| !e.confirmed).or_else(|| {
                if entry.verified {
                    bucket.nodes.iter().position(|e| {
                        !e.verified && e.liveness(now, good_for) == Liveness::Questionable
                    })
                } else {
                    None
                }
            });
            if let Some(pos) = displace {
                bucket.put(Some(pos), entry, &mut self.addr_keys, now);
                return InsertOutcome::Added;
            }
            // Wait in the replacement cache (most recent last, bounded by k).
            bucket
                .replacements
                .retain(|r| r.id != entry.id && r.addr != entry.addr);
            if bucket.replacements.len() >= k {
                // Drop an unverified one first, else the oldest.
                let pos = bucket
                    .replacements
                    .iter()
                    .position(|r| !r.verified)
                    .unwrap_or(0);
                bucket.replacements.remove(pos);
            }
            bucket.replacements.push(entry);
            let ping = bucket
                .nodes
                .iter()
                .filter(|e| {
                    e.liveness(now, good_for) == Liveness::Questionable && e.pinged_at.is_none()
                })
                .min_by_key(|e| e.last_seen)
                .map(Entry::info);
            return InsertOutcome::Cached { ping };
        }
    }

    fn split_last(&mut self, now: Instant) {
        let depth = self.buckets.len();
        let own = self.own;
        let last = self
            .buckets
            .last_mut()
            .expect("table has at least one bucket");
        let stays = |e: &Entry| (own.common_prefix_len(&e.id) as usize) < depth;
        let (far, near): (Vec<Entry>, Vec<Entry>) = last.nodes.drain(..).partition(stays);
        let (far_r, near_r): (Vec<Entry>, Vec<Entry>) =
            last.replacements.drain(..).partition(stays);
        let changed = last.last_changed;
        *last = Bucket::with(far, far_r, changed);
        self.buckets.push(Bucket::with(near, near_r, now));
    }

    fn remove_at(&mut self, bi: usize, ni: usize) {
        let bucket = &mut self.buckets[bi];
        bucket.take(ni, &mut self.addr_keys);
        // Promote the best replacement: verified first, then most recently seen.
        if let Some(pos) = bucket
            .replacements
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| (r.verified, r.last_seen))
            .map(|(i, _)| i)
        {
            let r = bucket.replacements.remove(pos);
            let (addr, changed) = (r.addr, bucket.last_changed);
            bucket.put(None, r, &mut self.addr_keys, changed);
            self.note_recheck(addr);
        }
    }

    /// A query to `addr` timed out. Returns true if the node was dropped.
    pub fn on_timeout(&mut self, addr: &SocketAddr, now: Instant) -> bool {
        let Some((bi, ni)) = self.find_addr(addr) else {
            // Forget it in replacement caches too.
            for b in &mut self.buckets {
                b.replacements.retain(|r| r.addr != *addr);
            }
            return false;
        };
        // Now questionable (or gone): due again once its last ping is old enough.
        self.note_recheck(*addr);
        let e = &mut self.buckets[bi].nodes[ni];
        e.fails = e.fails.saturating_add(1);
        if e.liveness(now, self.good_for) == Liveness::Bad {
            self.remove_at(bi, ni);
            return true;
        }
        false
    }

    /// Removes a node outright (e.g. it answered with an error that marks it broken).
    pub fn remove(&mut self, addr: &SocketAddr) -> bool {
        match self.find_addr(addr) {
            Some((bi, ni)) => {
                self.remove_at(bi, ni);
                true
            }
            None => false,
        }
    }

    /// Up to `count` nodes closest to `target`, nearest first. With `confirmed_only`,
    /// nodes that never answered us are left out (what we tell others).
    ///
    /// BEP 42: nodes whose id is not valid for their IP take at most half of the places
    /// while verified nodes are there to take the rest, so that Sybils with ids chosen
    /// next to a target cannot fill a whole reply or a lookup's seed set. (With BEP 42 off
    /// or on private addresses every entry counts as verified.)
    ///
    /// Buckets are visited nearest-first, so usually only two or three are read: with
    /// `p` the bucket `target` falls in, nodes of bucket `p` share more leading bits with
    /// `target` than nodes of the buckets after it (they share exactly `p`), and those
    /// share more than nodes of any bucket `j < p` (exactly `j`). Once `count` nodes are
    /// found, the farther buckets cannot improve on them.
    pub fn closest(&self, target: &Id, count: usize, confirmed_only: bool) -> Vec<NodeInfo> {
        if count == 0 {
            return Vec::new();
        }
        let max_unverified = count.div_ceil(2);
        // The best `count` verified and unverified nodes, as (distance, entry) in small
        // sorted vectors: no copy of an entry until the end.
        let mut verified: Vec<(Id, &Entry)> = Vec::with_capacity(count + 1);
        let mut unverified: Vec<(Id, &Entry)> = Vec::new();
        fn consider<'t>(
            b: &'t Bucket,
            target: &Id,
            count: usize,
            confirmed_only: bool,
            verified: &mut Vec<(Id, &'t Entry)>,
            unverified: &mut Vec<(Id, &'t Entry)>,
        ) {
            let target_key = id_key(target) >> 1;
            for (&key, e) in b.keys.iter().zip(&b.nodes) {
                let best = if key & 1 == 1 {
                    &mut *verified
                } else {
                    &mut *unverified
                };
                // Most nodes are ruled out on the key alone, without reading the entry.
                if best.len() == count && (key >> 1) ^ target_key > id_key(&best[count - 1].0) >> 1
                {
                    continue;
                }
                if confirmed_only && !(e.confirmed && e.fails == 0) {
                    continue;
                }
                let d = e.id.distance(target);
                if best.len() == count && d >= best[count - 1].0 {
                    continue;
                }
                let pos = best.partition_point(|(bd, _)| *bd < d);
                best.insert(pos, (d, e));
                best.truncate(count);
            }
        }
        // Farther buckets cannot change the answer once it is full from nearer ones.
        let full = |v: &Vec<(Id, &Entry)>, u: &Vec<(Id, &Entry)>| {
            v.len() + u.len().min(max_unverified) >= count
        };
        // Nearest first, in groups that cannot beat one another: the target's own bucket;
        // then every deeper one (their nodes all differ from the target in the bit where
        // the target leaves our prefix, so they tie on that and must all be read); then
        // each shallower one, deepest first. Once full, farther groups change nothing.
        let p = self.bucket_index(target);
        let groups = std::iter::once(p..p + 1)
            .chain(std::iter::once(p + 1..self.buckets.len()))
            .chain((0..p).rev().map(|j| j..j + 1));
        for group in groups {
            if full(&verified, &unverified) {
                break;
            }
            for b in &self.buckets[group] {
                consider(
                    b,
                    target,
                    count,
                    confirmed_only,
                    &mut verified,
                    &mut unverified,
                );
            }
        }
        // Nearest first, passing over unverified ones beyond their share; those fill only
        // the places left when the verified ones run out.
        let mut out: Vec<(Id, &Entry)> = Vec::with_capacity(count);
        let mut passed: Vec<(Id, &Entry)> = Vec::new();
        let (mut vi, mut ui, mut taken_u) = (0, 0, 0);
        while out.len() < count && (vi < verified.len() || ui < unverified.len()) {
            let take_verified = ui >= unverified.len()
                || (vi < verified.len() && verified[vi].0 < unverified[ui].0);
            if take_verified {
                out.push(verified[vi]);
                vi += 1;
            } else {
                if taken_u < max_unverified {
                    out.push(unverified[ui]);
                    taken_u += 1;
                } else {
                    passed.push(unverified[ui]);
                }
                ui += 1;
            }
        }
        if out.len() < count {
            out.extend(passed.into_iter().take(count - out.len()));
            out.sort_unstable_by_key(|(d, _)| *d);
        }
        out.into_iter().map(|(_, e)| e.info()).collect()
    }

    /// Whether `addr` is in the table as `id` and has answered us.
    pub fn is_confirmed(&self, id: &Id, addr: &SocketAddr) -> bool {
        self.get(id).is_some_and(|e| e.addr == *addr && e.confirmed)
    }

    /// Confirmed nodes that are currently good: what we save and what a bootstrap node
    /// hands out.
    pub fn good_nodes(&self, now: Instant) -> Vec<NodeInfo> {
        self.entries()
            .filter(|e| e.liveness(now, self.good_for) == Liveness::Good)
            .map(Entry::info)
            .collect()
    }

    /// Buckets not changed within `refresh`: the caller looks up a random id in each.
    pub fn stale_buckets(&self, now: Instant, refresh: Duration) -> Vec<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| now.saturating_duration_since(b.last_changed) >= refresh)
            .map(|(i, _)| i)
            .collect()
    }

    /// Of the prefix lengths `0..n`, those whose range (ids sharing exactly that many
    /// leading bits with ours) holds fewer nodes than it wants (k; half its size for a
    /// lazy bucket), each with how many it is short of: what a node that just joined
    /// fills.
    pub fn sparse_prefixes(&self, n: usize) -> Vec<(u32, usize)> {
        let mut counts = vec![0usize; n];
        for e in self.entries() {
            let p = self.own.common_prefix_len(&e.id) as usize;
            if let Some(c) = counts.get_mut(p) {
                *c += 1;
            }
        }
        (0..n)
            .filter(|&p| counts[p] < self.fill_wanted(p))
            .map(|p| (p as u32, self.fill_wanted(p) - counts[p]))
            .collect()
    }

    /// For the refresh of bucket `index`: the nodes to ask for nodes in its range, those
    /// heard from longest ago first (the answer proves them live). One for a plain
    /// bucket; for a lazy bucket short of half its size, one per 8 nodes it is short of
    /// (at most 8): every answer names 8 nodes in the range, which it takes as hearsay,
    /// so a few single queries fill it at a fraction of a lookup's cost.
    pub fn refresh_probes(&self, index: usize) -> Vec<NodeInfo> {
        let Some(b) = self.buckets.get(index) else {
            return Vec::new();
        };
        let short = self.fill_wanted(index).saturating_sub(b.nodes.len());
        let count = if self.lazy(index) {
            short.div_ceil(8).clamp(1, MAX_LAZY_PROBES)
        } else {
            1
        };
        if count == 1 {
            return b
                .nodes
                .iter()
                .min_by_key(|e| e.last_seen)
                .map(Entry::info)
                .into_iter()
                .collect();
        }
        let mut order: Vec<&Entry> = b.nodes.iter().collect();
        order.sort_unstable_by_key(|e| e.last_seen);
        order.into_iter().take(count).map(Entry::info).collect()
    }

    /// Whether a node named in a reply would get a place in a plain bucket if it
    /// answered a ping: not known, and its bucket has a free slot (or is ours, which
    /// splits). A lazy bucket takes such nodes as hearsay instead (`on_heard_of`).
    pub fn has_room_for(&self, id: &Id, addr: &SocketAddr) -> bool {
        let bi = self.bucket_index(id);
        let b = &self.buckets[bi];
        *id != self.own
            && !self.lazy(bi)
            && (b.nodes.len() < self.capacity(bi) || bi == self.buckets.len() - 1)
            && b.find_id(id).is_none()
            && self.addr_keys.binary_search(&addr_key(addr)).is_err()
    }

    /// How many nodes stale bucket `index` is short of k: a bucket short of any gets
    /// filled. A lazy bucket with more is topped up by its probes' referrals (see
    /// [`RoutingTable::refresh_probes`]).
    pub fn fill_shortfall(&self, index: usize) -> usize {
        self.buckets
            .get(index)
            .map_or(0, |b| self.k.saturating_sub(b.nodes.len()))
    }

    /// Removes the bad nodes of bucket `index` (see [`Liveness`]): failing ones and
    /// unconfirmed ones that fell silent, which otherwise stay until a newcomer wants
    /// their slot, and would keep being tried as lookup starting points.
    pub fn sweep_bad(&mut self, index: usize, now: Instant) {
        let good_for = self.good_for;
        let Some(b) = self.buckets.get(index) else {
            return;
        };
        let bad: Vec<SocketAddr> = b
            .nodes
            .iter()
            .filter(|e| e.liveness(now, good_for) == Liveness::Bad)
            .map(|e| e.addr)
            .collect();
        for addr in bad {
            if let Some(ni) = self.buckets[index].find_addr(&addr) {
                self.remove_at(index, ni);
            }
        }
    }

    /// Whether the table holds at least `n` nodes (cheaper than `len` for small `n`).
    pub fn has_at_least(&self, n: usize) -> bool {
        let mut count = 0;
        for b in &self.buckets {
            count += b.nodes.len();
            if count >= n {
                return true;
            }
        }
        n == 0
    }

    /// When this table next needs housekeeping: the next liveness ping or bucket refresh
    /// that can fall due (`now` if a change since the last ping scan makes that unknown).
    pub fn next_due(&self, now: Instant, refresh: Duration) -> Instant {
        let Some(ping) = self.ping_check_at.filter(|_| self.recheck.is_empty()) else {
            return now;
        };
        self.buckets
            .iter()
            .map(|b| b.last_changed + refresh)
            .fold(ping, Instant::min)
    }

    /// Whether a change (a node added or promoted, a failure) means the next ping scan
    /// may find work before the time the last scan computed.
    pub fn ping_scan_pending(&self) -> bool {
        self.ping_check_at.is_none() || !self.recheck.is_empty()
    }

    /// Marks a bucket refreshed (a lookup into it was started).
    pub fn touch_bucket(&mut self, index: usize, now: Instant) {
        if let Some(b) = self.buckets.get_mut(index) {
            b.last_changed = now;
        }
    }

    /// Whether a node may be due for a liveness ping now (see `nodes_to_ping`): not if
    /// it has answered and failed nothing since.
    fn may_be_due(e: &Entry) -> bool {
        !(e.confirmed && e.fails == 0)
    }

    /// Queues the node at `addr` for a one-by-one check at the next `nodes_to_ping`.
    fn note_recheck(&mut self, addr: SocketAddr) {
        if self.recheck.len() < RECHECK_MAX {
            self.recheck.push(addr);
        } else {
            // Many changes at once: one scan finds them all.
            self.recheck.clear();
            self.ping_check_at = None;
        }
    }

    /// Up to `limit` nodes worth a liveness ping: unconfirmed ones (to confirm them) and
    /// ones that failed a query but are not bad yet (to find out), each at most once per
    /// `repeat`. Marks them pinged.
    ///
    /// Good nodes that merely have not been heard from for a while are not pinged here:
    /// as in BEP 5 they are checked when a newcomer wants their full bucket (see
    /// [`InsertOutcome::Cached`]), by the refresh of a stale full bucket, and whenever a
    /// lookup asks them. Pinging every such node every 15 minutes made most of an idle
    /// node's traffic (a few hundred queries an hour per node) for little use.
    ///
    /// Cheap when nothing is due: the scan remembers when the next node falls due, and
    /// nodes that may fall due sooner (added or promoted, failed) are checked one by one.
    pub fn nodes_to_ping(&mut self, now: Instant, limit: usize, repeat: Duration) -> Vec<NodeInfo> {
        let good_for = self.good_for;
        let lazy_below = self.lazy_below();
        let due_at = |e: &Entry, bucket: usize| {
            if e.confirmed && e.fails == 0 || e.liveness(now, good_for) == Liveness::Bad {
                return None;
            }
            if !e.confirmed && bucket < lazy_below {
                // Lazy bucket: a lookup confirms it, or its first failure drops it.
                return None;
            }
            Some(e.pinged_at.map_or(now, |p| p + repeat))
        };
        let mut out = Vec::new();
        // The nodes noted since the last scan, one by one.
        while let Some(addr) = self.recheck.pop() {
            let Some((bi, ni)) = self.find_addr(&addr) else {
                continue;
            };
            let e = &mut self.buckets[bi].nodes[ni];
            let Some(due) = due_at(e, bi) else {
                continue;
            };
            if due > now {
                self.ping_check_at = self.ping_check_at.map(|t| t.min(due));
            } else if out.len() < limit {
                e.pinged_at = Some(now);
                out.push(e.info());
                let again = now + repeat;
                self.ping_check_at = self.ping_check_at.map(|t| t.min(again));
            } else {
                self.recheck.push(addr);
                return out;
            }
        }
        if self.ping_check_at.is_some_and(|t| now < t) {
            return out;
        }
        let mut next: Option<Instant> = None;
        for (bi, b) in self.buckets.iter_mut().enumerate() {
            for e in &mut b.nodes {
                let Some(due_at) = due_at(e, bi) else {
                    continue;
                };
                if due_at <= now {
                    if out.len() >= limit {
                        // More are due than we may ping now: look again next time.
                        self.ping_check_at = None;
                        return out;
                    }
                    e.pinged_at = Some(now);
                    out.push(e.info());
                    // Pinged now; if it fails it is due again after `repeat`.
                    next = Some(next.map_or(now + repeat, |n| n.min(now + repeat)));
                } else {
                    next = Some(next.map_or(due_at, |n| n.min(due_at)));
                }
            }
        }
        // An empty table has nothing due until something is added.
        self.ping_check_at = Some(next.unwrap_or(now + good_for));
        out
    }

    /// Rebuilds the table around a new own id (after BEP 42 gave us one).
    pub fn rebuild(&mut self, own: Id, now: Instant) {
        let old: Vec<Entry> = self
            .buckets
            .drain(..)
            .flat_map(|b| b.nodes.into_iter().chain(b.replacements))
            .collect();
        self.own = own;
        self.buckets.push(Bucket::new(now));
        self.ping_check_at = None;
        self.recheck.clear();
        self.addr_keys.clear();
        for e in old {
            if e.id != own {
                let _ = self.insert_new(e, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

    fn addr(i: u32, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), port)
    }

    fn table(restrict: bool) -> (RoutingTable, Instant, rand_chacha::ChaCha8Rng) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let now = Instant::now();
        let own = Id::random(&mut rng);
        (
            RoutingTable::new(own, 8, restrict, 2, Duration::from_secs(900), now),
            now,
            rng,
        )
    }

    #[test]
    fn extended_buckets_hold_more_far_nodes() {
        let (plain, now, mut rng) = table(false);
        let mut extended = plain.clone().with_extended_buckets(true);
        let mut plain = plain;
        for i in 0..4096u32 {
            let id = Id::random(&mut rng);
            plain.on_response(id, addr(i, 1000), true, now);
            extended.on_response(id, addr(i, 1000), true, now);
        }
        let sizes = extended.bucket_sizes();
        assert_eq!(&sizes[..5], &[128, 64, 32, 16, 8], "{sizes:?}");
        assert_eq!(&plain.bucket_sizes()[..5], &[8; 5]);
        // The first hop of a search for a far target starts several bits closer.
        let target = Id::random(&mut rng);
        let best = |t: &RoutingTable| t.closest(&target, 1, true)[0].id.common_prefix_len(&target);
        assert!(best(&extended) >= best(&plain));
    }

    /// An extended table whose near buckets are split and full, with its far (lazy)
    /// buckets empty.
    fn deep_extended_table() -> (RoutingTable, Instant, rand_chacha::ChaCha8Rng) {
        let (t, now, mut rng) = table(false);
        let mut t = t.with_extended_buckets(true);
        let own = t.own_id();
        for i in 0..400u32 {
            let id = own.random_with_prefix(6 + i % 10, &mut rng);
            t.on_response(id, addr(i, 1), true, now);
        }
        assert!(t.bucket_count() > 6, "{:?}", t.bucket_sizes());
        assert_eq!(t.bucket_sizes()[0], 0);
        (t, now, rng)
    }

    #[test]
    fn lazy_far_buckets_keep_hearsay_to_themselves() {
        let (mut t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        let far = own.random_with_prefix(0, &mut rng);
        let near = own.random_with_prefix(7, &mut rng);
        assert!(t.on_heard_of(far, addr(9000, 1), true, now));
        assert!(
            !t.on_heard_of(far, addr(9000, 1), true, now),
            "known already"
        );
        assert!(
            !t.on_heard_of(near, addr(9001, 1), true, now),
            "not a lazy bucket"
        );
        let e = t.get(&far).expect("in the table");
        assert!(!e.confirmed);
        // Our own lookups start from it; other nodes are never told about it.
        assert!(t.closest(&far, 4, false).iter().any(|n| n.id == far));
        assert!(t.closest(&far, 4, true).iter().all(|n| n.id != far));
        // Not pinged, not even much later; silent for `good_for`, its slot is free.
        let later = now + Duration::from_secs(3600);
        assert!(t
            .nodes_to_ping(later, 1000, Duration::from_secs(60))
            .iter()
            .all(|n| n.id != far));
        assert_eq!(
            t.get(&far).unwrap().liveness(later, t.good_for),
            Liveness::Bad
        );
        // Its first failure ends it.
        assert!(t.on_timeout(&addr(9000, 1), now));
        assert!(t.get(&far).is_none());
        // A plain table takes no hearsay at all.
        let (mut plain, now, mut rng) = table(false);
        let id = plain.own_id().random_with_prefix(0, &mut rng);
        assert!(!plain.on_heard_of(id, addr(1, 1), true, now));
        assert!(plain.is_empty());
    }

    #[test]
    fn lazy_buckets_confirm_by_use_not_by_ping() {
        let (mut t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        let far = own.random_with_prefix(1, &mut rng);
        // Bucket 5: not lazy, and empty (the table's nodes share 6 or more bits with us).
        let near = own.random_with_prefix(5, &mut rng);
        assert!(!t.wants_confirmation(&far));
        assert!(t.wants_confirmation(&near));
        assert_eq!(
            t.on_query(far, addr(9000, 1), true, now),
            InsertOutcome::Added
        );
        assert_eq!(
            t.on_query(near, addr(9001, 1), true, now),
            InsertOutcome::Added
        );
        let pinged: Vec<Id> = t
            .nodes_to_ping(now, 1000, Duration::from_secs(60))
            .iter()
            .map(|n| n.id)
            .collect();
        assert!(
            pinged.contains(&near) && !pinged.contains(&far),
            "{pinged:?}"
        );
        // A lookup that asks it confirms it.
        t.on_response(far, addr(9000, 1), true, now);
        assert!(t.is_confirmed(&far, &addr(9000, 1)));
    }

    #[test]
    fn hearsay_named_again_is_kept_and_hearsay_nobody_names_goes_bad() {
        let (mut t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        let (kept, dropped) = (
            own.random_with_prefix(0, &mut rng),
            own.random_with_prefix(0, &mut rng),
        );
        assert!(t.on_heard_of(kept, addr(7000, 1), true, now));
        assert!(t.on_heard_of(dropped, addr(7001, 1), true, now));
        let good_for = t.good_for;
        // Unconfirmed but named within the hearsay lifetime: not bad yet.
        let later = now + good_for;
        assert_ne!(
            t.get(&kept).unwrap().liveness(later, good_for),
            Liveness::Bad
        );
        // Named again by another reply: its silence starts over.
        assert!(!t.on_heard_of(kept, addr(7000, 1), true, later));
        let end = now + good_for * HEARSAY_KEPT;
        assert_eq!(
            t.get(&dropped).unwrap().liveness(end, good_for),
            Liveness::Bad
        );
        assert_ne!(t.get(&kept).unwrap().liveness(end, good_for), Liveness::Bad);
        // Named at another address: the one we know stays as it was.
        let before = t.get(&kept).unwrap().last_seen;
        assert!(!t.on_heard_of(kept, addr(7002, 1), true, end));
        assert_eq!(t.get(&kept).unwrap().last_seen, before);
        t.sweep_bad(0, end);
        assert!(t.get(&dropped).is_none() && t.get(&kept).is_some());
        t.check_index();
    }

    #[test]
    fn a_full_lazy_bucket_gives_hearsay_the_slots_of_bad_nodes_only() {
        let (mut t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        let mut heard = Vec::new();
        let mut i = 10_000;
        while t.bucket_sizes()[0] < 128 {
            let id = own.random_with_prefix(0, &mut rng);
            assert!(t.on_heard_of(id, addr(i, 1), true, now));
            heard.push(id);
            i += 1;
        }
        let fresh = own.random_with_prefix(0, &mut rng);
        assert!(
            !t.on_heard_of(fresh, addr(i, 1), true, now),
            "full of live nodes"
        );
        // Once nobody has named them for too long, newcomers take their slots (each
        // newcomer looks at one slot, so it takes a stream of them to sweep the bucket).
        let later = now + t.good_for * HEARSAY_KEPT;
        for j in 0..2000 {
            let id = own.random_with_prefix(0, &mut rng);
            t.on_heard_of(id, addr(20_000 + j, 1), true, later);
        }
        assert_eq!(t.bucket_sizes()[0], 128);
        assert!(
            heard.iter().all(|id| t.get(id).is_none()),
            "silent hearsay swept out"
        );
        t.check_index();
    }

    #[test]
    fn room_for_a_named_node_is_a_free_slot_of_a_plain_bucket() {
        let (t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        let sizes = t.bucket_sizes();
        // Bucket 6 took 40 nodes offered at prefix 6: full at k.
        assert_eq!(sizes[6], 8);
        assert!(!t.has_room_for(&own.random_with_prefix(6, &mut rng), &addr(9000, 1)));
        // A lazy bucket takes such nodes as hearsay, not by ping.
        assert!(!t.has_room_for(&own.random_with_prefix(0, &mut rng), &addr(9001, 1)));
        // The bucket holding our own id splits, so it always has room.
        let near = own.random_with_prefix(159, &mut rng);
        assert!(t.has_room_for(&near, &addr(9002, 1)));
        // Known ids and addresses have no room for a second entry.
        let known = t.entries().next().unwrap().clone();
        assert!(!t.has_room_for(&near, &known.addr));
        let mut plain = table(false).0;
        let far = plain.own_id().random_with_prefix(0, &mut rng);
        assert!(plain.has_room_for(&far, &addr(1, 1)));
        plain.on_response(far, addr(1, 1), true, now);
        assert!(!plain.has_room_for(&far, &addr(2, 1)), "known id");
    }

    #[test]
    fn a_lazy_bucket_short_of_half_is_probed_once_per_eight_missing_nodes() {
        let (mut t, now, mut rng) = deep_extended_table();
        let own = t.own_id();
        // Empty: 64 short, but at most eight probes (of nodes it does not have: none).
        assert!(t.refresh_probes(0).is_empty());
        let answer =
            |t: &mut RoutingTable, rng: &mut rand_chacha::ChaCha8Rng, from: u32, n: u32| {
                for i in from..from + n {
                    t.on_response(own.random_with_prefix(0, rng), addr(i, 1), true, now);
                }
            };
        answer(&mut t, &mut rng, 5000, 20);
        // 20 of the 64 it wants: 44 short, so six probes.
        assert_eq!(t.refresh_probes(0).len(), 6);
        answer(&mut t, &mut rng, 6000, 40);
        // 60: 4 short, one probe; plain buckets always get one.
        assert_eq!(t.refresh_probes(0).len(), 1);
        assert_eq!(t.refresh_probes(6).len(), 1);
        assert!(t.refresh_probes(t.bucket_count()).is_empty());
    }

    #[test]
    fn sparse_prefixes_name_the_ranges_a_new_node_should_fill() {
        let (mut t, now, mut rng) = table(false);
        let own = t.own_id();
        for i in 0..8u32 {
            t.on_response(own.random_with_prefix(2, &mut rng), addr(i, 1), true, now);
        }
        t.on_response(own.random_with_prefix(0, &mut rng), addr(100, 1), true, now);
        assert_eq!(t.sparse_prefixes(4), vec![(0, 7), (1, 8), (3, 8)]);
        // A lazy bucket wants half its size: 64 nodes in the first.
        let (ext, _, _) = deep_extended_table();
        let lazy: Vec<u32> = ext.sparse_prefixes(8)[..4].iter().map(|p| p.0).collect();
        assert_eq!(lazy, [0, 1, 2, 3]);
        assert!(ext.sparse_prefixes(8)[0].1 > 8, "short of up to 64");
    }

    #[test]
    fn uniform_insertion_gives_expected_bucket_count() {
        let (mut t, now, mut rng) = table(false);
        let n = 4096u32;
        for i in 0..n {
            let id = Id::random(&mut rng);
            t.on_response(id, addr(i, 1000), true, now);
        }
        // With n uniform ids, the bucket at depth d sees about n / 2^(d+1) candidates;
        // buckets split while our own bucket overflows, so depth is about log2(n / k).
        let expected = ((n as f64) / 8.0).log2();
        let buckets = t.bucket_count() as f64;
        assert!(
            (buckets - expected).abs() <= 2.5,
            "buckets {buckets}, expected about {expected}"
        );
        // All buckets but the last two are full.
        let sizes = t.bucket_sizes();
        assert!(
            sizes[..sizes.len() - 2].iter().all(|&s| s == 8),
            "{sizes:?}"
        );
        assert!(t.len() <= 8 * t.bucket_count());
    }

    #[test]
    fn closest_returns_sorted_nearest() {
        let (mut t, now, mut rng) = table(false);
        let mut ids = Vec::new();
        for i in 0..500 {
            let id = Id::random(&mut rng);
            if t.on_response(id, addr(i, 1), true, now) == InsertOutcome::Added {
                ids.push(id);
            }
        }
        let target = Id::random(&mut rng);
        let got = t.closest(&target, 8, true);
        let mut present: Vec<Id> = t.entries().map(|e| e.id).collect();
        present.sort_by_key(|id| id.distance(&target));
        let want: Vec<Id> = present.into_iter().take(8).collect();
        assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), want);
    }

    /// What `closest` must return, the slow way: all eligible entries by distance, at
    /// most half unverified unless verified ones run out.
    fn closest_reference(
        t: &RoutingTable,
        target: &Id,
        count: usize,
        confirmed_only: bool,
    ) -> Vec<Id> {
        let mut all: Vec<&Entry> = t
            .entries()
            .filter(|e| !confirmed_only || (e.confirmed && e.fails == 0))
            .collect();
        all.sort_by_key(|e| e.id.distance(target));
        let (mut out, mut passed, mut unverified) = (Vec::new(), Vec::new(), 0);
        for e in all {
            if out.len() == count {
                break;
            }
            if e.verified || unverified < count.div_ceil(2) {
                unverified += usize::from(!e.verified);
                out.push(e);
            } else {
                passed.push(e);
            }
        }
        let missing = count.saturating_sub(out.len());
        out.extend(passed.into_iter().take(missing));
        out.sort_by_key(|e| e.id.distance(target));
        out.iter().map(|e| e.id).collect()
    }

    #[test]
    fn closest_matches_a_full_sort_for_any_target() {
        for share_verified in [1.0, 0.7, 0.2] {
            for extended in [false, true] {
                closest_matches_a_full_sort(share_verified, extended);
            }
        }
    }

    fn closest_matches_a_full_sort(share_verified: f64, extended: bool) {
        let (t, now, mut rng) = table(false);
        let mut t = t.with_extended_buckets(extended);
        let mut earlier: Vec<Id> = Vec::new();
        for i in 0..3000 {
            let mut id = Id::random(&mut rng);
            if i % 10 == 9 {
                // Shares its leading 64 bits with an earlier node: the bucket keys tie
                // and the full ids must decide.
                id.0[..8].copy_from_slice(&earlier[i as usize / 2].0[..8]);
            }
            earlier.push(id);
            let verified = rng.gen_bool(share_verified);
            match i % 4 {
                0 => drop(t.on_query(id, addr(i, 1), verified, now)),
                1 if extended => drop(t.on_heard_of(id, addr(i, 1), verified, now)),
                _ => drop(t.on_response(id, addr(i, 1), verified, now)),
            }
        }
        assert!(t.bucket_count() > 5);
        let own = t.own_id();
        for i in 0..400u32 {
            // Targets in every bucket, past the last one, and our own id.
            let target = match i % 4 {
                0 => Id::random(&mut rng),
                1 => own.random_with_prefix(i % 24, &mut rng),
                2 if i % 8 == 2 => own,
                // Right next to a node: its key ties with the target's.
                2 => {
                    let mut near = earlier[i as usize * 7 % earlier.len()];
                    near.0[19] ^= 1;
                    near
                }
                _ => own.random_with_prefix(t.bucket_count() as u32 - 1, &mut rng),
            };
            for (count, confirmed_only) in [(8, true), (8, false), (3, true), (40, false)] {
                let got = t.closest(&target, count, confirmed_only);
                assert_eq!(
                    got.iter().map(|n| n.id).collect::<Vec<_>>(),
                    closest_reference(&t, &target, count, confirmed_only),
                    "target {target:?} count {count} confirmed_only {confirmed_only} \
                     verified {share_verified}"
                );
            }
        }
    }

    #[test]
    fn known_addr_with_new_id_is_evicted() {
        let (mut t, now, mut rng) = table(false);
        let a = Id::random(&mut rng);
        let b = Id::random(&mut rng);
        assert_eq!(
            t.on_response(a, addr(1, 1), true, now),
            InsertOutcome::Added
        );
        assert_eq!(
            t.on_response(b, addr(1, 1), true, now),
            InsertOutcome::Poisoned {
                evicted: NodeInfo {
                    id: a,
                    addr: addr(1, 1)
                }
            }
        );
        assert!(t.get(&a).is_none());
        // After the re-ping answers, the new id gets in.
        assert_eq!(
            t.on_response(b, addr(1, 1), true, now),
            InsertOutcome::Added
        );
    }

    #[test]
    fn a_query_alone_never_evicts_a_confirmed_entry() {
        let (mut t, now, mut rng) = table(false);
        let (a, b) = (Id::random(&mut rng), Id::random(&mut rng));
        t.on_response(a, addr(1, 1), true, now);
        for _ in 0..10 {
            assert_eq!(
                t.on_query(b, addr(1, 1), true, now),
                InsertOutcome::Contested { addr: addr(1, 1) }
            );
        }
        assert_eq!(t.get(&a).map(|e| e.addr), Some(addr(1, 1)));
        // An unconfirmed entry is fair game: nothing was known about it anyway.
        let (c, d) = (Id::random(&mut rng), Id::random(&mut rng));
        t.on_query(c, addr(2, 2), true, now);
        assert!(matches!(
            t.on_query(d, addr(2, 2), true, now),
            InsertOutcome::Poisoned { .. }
        ));
    }

    #[test]
    fn known_id_from_new_addr_is_ignored() {
        let (mut t, now, mut rng) = table(false);
        let a = Id::random(&mut rng);
        t.on_response(a, addr(1, 1), true, now);
        assert_eq!(
            t.on_response(a, addr(2, 2), true, now),
            InsertOutcome::Ignored
        );
        assert_eq!(t.get(&a).unwrap().addr, addr(1, 1));
    }

    #[test]
    fn ip_restrictions() {
        let (mut t, now, mut rng) = table(true);
        let ip = addr(5, 1);
        assert_eq!(
            t.on_response(Id::random(&mut rng), ip, true, now),
            InsertOutcome::Added
        );
        // Same IP, other port: refused.
        let other_port = SocketAddr::new(ip.ip(), 2);
        assert_eq!(
            t.on_response(Id::random(&mut rng), other_port, true, now),
            InsertOutcome::Ignored
        );
        // Same /24 in one bucket: at most max_per_subnet (2). Use ids in the far bucket.
        let own = t.own_id();
        let far = |rng: &mut rand_chacha::ChaCha8Rng| own.random_with_prefix(0, rng);
        let (mut t, now, mut rng2) = table(true);
        let base = 0x0b01_0100u32;
        let mut added = 0;
        for i in 1..6 {
            let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + i)), 1);
            if t.on_response(far(&mut rng2), a, true, now) == InsertOutcome::Added {
                added += 1;
            }
        }
        let _ = &mut rng;
        assert_eq!(added, 2);
        // Without restrictions all five fit.
        let (mut t, now, mut rng3) = table(false);
        let own = t.own_id();
        let mut added = 0;
        for i in 1..6 {
            let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + i)), 1);
            if t.on_response(own.random_with_prefix(0, &mut rng3), a, true, now)
                == InsertOutcome::Added
            {
                added += 1;
            }
        }
        assert_eq!(added, 5);
    }

    #[test]
    fn unconfirmed_node_goes_at_first_failure_confirmed_at_second() {
        let (mut t, now, mut rng) = table(false);
        let q = Id::random(&mut rng);
        let r = Id::random(&mut rng);
        assert_eq!(t.on_query(q, addr(1, 1), true, now), InsertOutcome::Added);
        assert_eq!(
            t.on_response(r, addr(2, 1), true, now),
            InsertOutcome::Added
        );
        assert!(t.on_timeout(&addr(1, 1), now));
        assert!(t.get(&q).is_none());
        assert!(!t.on_timeout(&addr(2, 1), now));
        assert!(t.get(&r).is_some());
        assert!(t.on_timeout(&addr(2, 1), now));
        assert!(t.get(&r).is_none());
    }

    #[test]
    fn full_bucket_caches_and_promotes_replacement() {
        let (mut t, now, mut rng) = table(false);
        let own = t.own_id();
        // Fill the far bucket (prefix 0) after forcing one split.
        let mut far = Vec::new();
        let mut i = 0;
        while far.len() < 8 {
            i += 1;
            let id = own.random_with_prefix(0, &mut rng);
            if t.on_response(id, addr(i, 1), true, now) == InsertOutcome::Added {
                far.push((id, addr(i, 1)));
            }
        }
        // Force the split so bucket 0 is no longer the one covering our id.
        for _ in 0..40 {
            i += 1;
            let id = own.random_with_prefix(rng.gen_range(1..4), &mut rng);
            t.on_response(id, addr(i, 1), true, now);
        }
        assert!(t.bucket_count() >= 2);
        let later = now + Duration::from_secs(1000);
        let newcomer = own.random_with_prefix(0, &mut rng);
        let out = t.on_response(newcomer, addr(999, 1), true, later);
        assert!(
            matches!(out, InsertOutcome::Cached { ping: Some(_) }),
            "{out:?}"
        );
        // The pinged node dies: the newcomer takes its place.
        let InsertOutcome::Cached { ping: Some(victim) } = out else {
            unreachable!()
        };
        t.on_timeout(&victim.addr, later);
        t.on_timeout(&victim.addr, later);
        assert!(t.get(&newcomer).is_some());
    }

    impl RoutingTable {
        /// The address index holds exactly the buckets' nodes.
        fn check_index(&self) {
            let mut want: Vec<u64> = self.entries().map(|e| addr_key(&e.addr)).collect();
            want.sort_unstable();
            assert_eq!(self.addr_keys, want);
            for b in &self.buckets {
                let keys: Vec<u64> = b.nodes.iter().map(node_key).collect();
                let addrs: Vec<u64> = b.nodes.iter().map(|e| addr_key(&e.addr)).collect();
                assert_eq!(b.keys, keys);
                assert_eq!(b.addr_keys, addrs);
            }
        }
    }

    #[test]
    fn address_index_follows_every_change() {
        for extended in [false, true] {
            address_index_follows_every_change_in(extended);
        }
    }

    fn address_index_follows_every_change_in(extended: bool) {
        let (t, now, mut rng) = table(true);
        let mut t = t.with_extended_buckets(extended);
        let mut later = now;
        for step in 0..20_000u32 {
            later += Duration::from_secs(1);
            let i = rng.gen_range(0..3000u32);
            // Some IPv6 nodes too, and several ports per IP.
            let a = if i % 5 == 0 {
                SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::from(
                        0x2001_0db8_u128 << 96 | u128::from(i),
                    )),
                    1 + (i % 3) as u16,
                )
            } else {
                // A few IPs per /24, so that the subnet limit bites now and then.
                addr(i / 2 * 97, 1 + (i % 2) as u16)
            };
            let id = Id::random(&mut rng);
            match step % 8 {
                0..=2 => drop(t.on_response(id, a, rng.gen_bool(0.5), later)),
                3 | 4 => drop(t.on_query(id, a, true, later)),
                5 => drop(t.on_timeout(&a, later)),
                6 => drop(t.on_heard_of(id, a, rng.gen_bool(0.5), later)),
                _ => drop(t.remove(&a)),
            }
            if step % 97 == 0 {
                t.check_index();
            }
            if step == 10_000 {
                t.rebuild(Id::random(&mut rng), later);
                t.check_index();
            }
        }
        t.check_index();
        assert!(t.len() > 50, "extended {extended}: {} nodes", t.len());
    }

    #[test]
    fn incremental_ping_checks_match_a_full_scan() {
        let (mut t, start, mut rng) = table(false);
        let mut known = Vec::new();
        let mut pinged = 0;
        for step in 0..2000u32 {
            let now = start + Duration::from_secs(5 * u64::from(step));
            // Some traffic: new nodes (answering or only querying), answers and queries
            // from known ones, timeouts.
            for _ in 0..rng.gen_range(0..3) {
                let i = rng.gen_range(0..400u32);
                let a = addr(i, 1);
                let id = match known.iter().find(|(_, ka)| *ka == a) {
                    Some((id, _)) => *id,
                    None => {
                        let id = Id::random(&mut rng);
                        known.push((id, a));
                        id
                    }
                };
                match rng.gen_range(0..10) {
                    0..=3 => drop(t.on_response(id, a, true, now)),
                    4..=6 => drop(t.on_query(id, a, true, now)),
                    _ => drop(t.on_timeout(&a, now)),
                }
            }
            t.check_index();
            // Every node due now, by a scan of the whole table.
            let mut full = t.clone();
            full.ping_check_at = None;
            full.recheck.clear();
            let due: Vec<SocketAddr> = full
                .nodes_to_ping(now, usize::MAX, Duration::from_secs(60))
                .iter()
                .map(|n| n.addr)
                .collect();
            let got = t.nodes_to_ping(now, 2, Duration::from_secs(60));
            assert_eq!(
                got.len(),
                due.len().min(2),
                "step {step}: {got:?} of {due:?}"
            );
            for n in &got {
                assert!(due.contains(&n.addr), "step {step}: {n:?} is not due");
            }
            pinged += got.len();
        }
        assert!(pinged > 50, "the scenario must exercise pings: {pinged}");
    }

    #[test]
    fn query_from_a_node_that_answered_keeps_it_good() {
        let (mut t, now, mut rng) = table(false);
        let id = Id::random(&mut rng);
        t.on_response(id, addr(1, 1), true, now);
        let later = now + Duration::from_secs(800);
        t.on_query(id, addr(1, 1), true, later);
        let check = now + Duration::from_secs(1000);
        assert_eq!(
            t.get(&id)
                .unwrap()
                .liveness(check, Duration::from_secs(900)),
            Liveness::Good
        );
        assert!(t
            .nodes_to_ping(check, 8, Duration::from_secs(60))
            .is_empty());
        // A node that never answered stays unconfirmed however often it queries.
        let q = Id::random(&mut rng);
        t.on_query(q, addr(2, 1), true, now);
        t.on_query(q, addr(2, 1), true, later);
        assert_eq!(
            t.get(&q).unwrap().liveness(later, Duration::from_secs(900)),
            Liveness::Questionable
        );
    }

    #[test]
    fn own_id_never_enters() {
        let (mut t, now, _) = table(false);
        assert_eq!(
            t.on_response(t.own_id(), addr(1, 1), true, now),
            InsertOutcome::Ignored
        );
    }

    #[test]
    fn stale_buckets_and_rebuild() {
        let (mut t, now, mut rng) = table(false);
        for i in 0..100 {
            t.on_response(Id::random(&mut rng), addr(i, 1), true, now);
        }
        let later = now + Duration::from_secs(901);
        assert_eq!(
            t.stale_buckets(later, Duration::from_secs(900)).len(),
            t.bucket_count()
        );
        let n = t.len();
        let new_own = Id::random(&mut rng);
        t.rebuild(new_own, later);
        assert_eq!(t.own_id(), new_own);
        assert!(t.len() >= n.min(8));
    }
}
