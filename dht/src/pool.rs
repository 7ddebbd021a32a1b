//! A bounded pool of verified nodes for a bootstrap node: every node here answered one of
//! our queries from its address (a query alone proves nothing: source addresses can be
//! spoofed). Much larger than a routing table (tens of thousands of nodes), indexed by id
//! so that the k closest to a target are found in O(k log n), re-verified oldest first at
//! a rate the caller bounds, and dropped when they stop answering.
//!
//! One pool holds one address family. It is sans-IO like the rest of the core: time is
//! passed in, and saving and loading go through bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bencode::{Encoder, Limits};

use crate::id::Id;
use crate::krpc::{decode_nodes, encode_nodes, NodeInfo};
use crate::state::StateError;

/// A node that did not answer a check is asked again after this long; after
/// [`MAX_FAILS`] unanswered checks in a row it is dropped.
const RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_FAILS: u8 = 2;
/// Most nodes [`Pool::closest`] sorts by distance; beyond, it descends bit by bit.
const CANDIDATES: usize = 256;

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    /// BEP 42-valid id for its address (or BEP 42 does not apply).
    secure: bool,
    /// Last answer from the node.
    verified: Instant,
    /// Last answer or check sent: the node is due for a check `reverify_after` later.
    checked: Instant,
    fails: u8,
}

/// What [`Pool::insert_verified`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolInsert {
    Added,
    /// Already there (perhaps under a new address): refreshed.
    Refreshed,
    /// Full of secure or older nodes: not kept.
    Rejected,
}

#[derive(Clone, Debug)]
pub struct Pool {
    capacity: usize,
    /// One node per IP (public mode) instead of one per IP and port.
    one_per_ip: bool,
    reverify_after: Duration,
    by_id: BTreeMap<Key, Entry>,
    /// Address (port 0 when `one_per_ip`) to id.
    by_slot: HashMap<SocketAddr, Id>,
    /// Check order: (checked, id), oldest first.
    by_check: BTreeSet<(Instant, Id)>,
    /// Eviction order of nodes without a valid BEP 42 id: (verified, id), oldest first.
    insecure: BTreeSet<(Instant, Id)>,
    /// Nodes of a saved pool not heard from since the start (see [`Pool::load_saved`]):
    /// checked first, at the caller's restart rate; they move into the pool when they
    /// answer and are dropped at their first silence. Replies use them only to fill up,
    /// and only when the file was recent (`saved_usable`); an old file is only a hint.
    saved: Option<Box<Pool>>,
    saved_usable: bool,
}

impl Pool {
    pub fn new(capacity: usize, one_per_ip: bool, reverify_after: Duration) -> Pool {
        Pool {
            capacity,
            one_per_ip,
            reverify_after,
            by_id: BTreeMap::new(),
            by_slot: HashMap::new(),
            by_check: BTreeSet::new(),
            insecure: BTreeSet::new(),
            saved: None,
            saved_usable: false,
        }
    }

    /// Nodes verified since the start.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Saved nodes not yet checked since the start.
    pub fn saved_len(&self) -> usize {
        self.saved.as_ref().map_or(0, |s| s.len())
    }

    /// Nodes replies can come from: the verified ones, and the saved ones while they may
    /// fill up replies.
    pub fn answerable(&self) -> usize {
        self.len()
            + if self.saved_usable {
                self.saved_len()
            } else {
                0
            }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn slot(&self, addr: SocketAddr) -> SocketAddr {
        if self.one_per_ip {
            SocketAddr::new(addr.ip(), 0)
        } else {
            addr
        }
    }

    /// Whether node `id` is in the pool (or among the saved nodes still to check) at
    /// exactly `addr`.
    pub fn contains(&self, id: &Id, addr: &SocketAddr) -> bool {
        self.by_id
            .get(&Key::of(id))
            .is_some_and(|e| e.addr == *addr)
            || self.saved.as_ref().is_some_and(|s| s.contains(id, addr))
    }

    /// Whether some node in the pool has exactly this address.
    pub fn contains_addr(&self, addr: &SocketAddr) -> bool {
        self.by_slot
            .get(&self.slot(*addr))
            .and_then(|id| self.by_id.get(&Key::of(id)))
            .is_some_and(|e| e.addr == *addr)
    }

    fn remove(&mut self, id: &Id) -> Option<Entry> {
        let e = self.by_id.remove(&Key::of(id))?;
        let slot = self.slot(e.addr);
        if self.by_slot.get(&slot) == Some(id) {
            self.by_slot.remove(&slot);
        }
        self.by_check.remove(&(e.checked, *id));
        if !e.secure {
            self.insecure.remove(&(e.verified, *id));
        }
        Some(e)
    }

    fn put(&mut self, id: Id, e: Entry) {
        self.by_slot.insert(self.slot(e.addr), id);
        self.by_check.insert((e.checked, id));
        if !e.secure {
            self.insecure.insert((e.verified, id));
        }
        self.by_id.insert(Key::of(&id), e);
    }

    /// Node `info` answered a query of ours just now. `secure`: its id is BEP 42-valid
    /// for its address (or BEP 42 does not apply). A full pool keeps the nodes it has
    /// (old nodes are the ones that stay), except that a secure newcomer takes the place
    /// of the oldest insecure node.
    pub fn insert_verified(&mut self, now: Instant, info: NodeInfo, secure: bool) -> PoolInsert {
        if self.capacity == 0 || info.addr.port() == 0 {
            return PoolInsert::Rejected;
        }
        if let Some(saved) = self.saved.as_mut() {
            // A saved node answered: it leaves the saved set either way.
            saved.remove(&info.id);
            if let Some(old) = saved.by_slot.get(&saved.slot(info.addr)).copied() {
                saved.remove(&old);
            }
        }
        let slot = self.slot(info.addr);
        // Another id at this address (the node restarted with a new id): it answered as
        // `info.id`, so the old one is gone.
        if let Some(old) = self.by_slot.get(&slot).copied() {
            if old != info.id {
                self.remove(&old);
            }
        }
        let refreshed = self.remove(&info.id).is_some();
        if !refreshed && self.by_id.len() >= self.capacity {
            let victim = match self.insecure.first() {
                Some(&(_, v)) if secure => v,
                _ => return PoolInsert::Rejected,
            };
            self.remove(&victim);
        }
        self.put(
            info.id,
            Entry {
                addr: info.addr,
                secure,
                verified: now,
                checked: now,
                fails: 0,
            },
        );
        if refreshed {
            PoolInsert::Refreshed
        } else {
            PoolInsert::Added
        }
    }

    /// A query to `addr` got no answer. Returns true if the node was dropped. A saved node
    /// not heard from since the start is dropped at once.
    pub fn on_failure(&mut self, now: Instant, addr: &SocketAddr) -> bool {
        if let Some(saved) = self.saved.as_mut() {
            let slot = saved.slot(*addr);
            let id = saved.by_slot.get(&slot).copied();
            if let Some(id) = id.filter(|id| saved.contains(id, addr)) {
                saved.remove(&id);
                return true;
            }
        }
        let Some(id) = self.by_slot.get(&self.slot(*addr)).copied() else {
            return false;
        };
        let Some(mut e) = self.remove(&id) else {
            return false;
        };
        if e.addr != *addr {
            self.put(id, e);
            return false;
        }
        e.fails += 1;
        if e.fails >= MAX_FAILS {
            return true;
        }
        // Due again after RETRY_AFTER.
        e.checked = now.checked_sub(self.reverify_after).unwrap_or(now) + RETRY_AFTER;
        self.put(id, e);
        false
    }

    /// Up to `max` nodes due for a check (not heard from for `reverify_after`), oldest
    /// first. They count as checked now: the caller pings them, and reports answers with
    /// [`Pool::insert_verified`] and silence with [`Pool::on_failure`].
    pub fn due_for_check(&mut self, now: Instant, max: usize) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(checked, id)) = self.by_check.first() else {
                break;
            };
            if checked + self.reverify_after > now {
                break;
            }
            self.by_check.remove(&(checked, id));
            let e = self.by_id.get_mut(&Key::of(&id)).expect("indexes agree");
            e.checked = now;
            self.by_check.insert((now, id));
            out.push(NodeInfo { id, addr: e.addr });
        }
        out
    }

    /// Up to `max` saved nodes not yet checked since the start, in id order. They count
    /// as checked (answers and silence are reported as for [`Pool::due_for_check`]).
    pub fn saved_due_for_check(&mut self, now: Instant, max: usize) -> Vec<NodeInfo> {
        match self.saved.as_mut() {
            Some(saved) => saved.due_for_check(now, max),
            None => Vec::new(),
        }
    }

    /// When the next node becomes due for a check.
    pub fn next_check(&self) -> Option<Instant> {
        self.by_check
            .first()
            .map(|&(checked, _)| checked + self.reverify_after)
    }

    /// The `count` nodes closest to `target` by XOR, nearest first: nodes verified since
    /// the start, filled up with usable saved ones when there are too few of those.
    pub fn closest(&self, target: &Id, count: usize) -> Vec<NodeInfo> {
        let mut out = self.closest_verified(target, count);
        let Some(saved) = self.saved.as_ref().filter(|_| self.saved_usable) else {
            return out;
        };
        if out.len() < count {
            let more = saved.closest_verified(target, count);
            let need = count - out.len();
            let fill = more
                .into_iter()
                .filter(|n| !out.iter().any(|o| o.id == n.id || o.addr == n.addr))
                .take(need)
                .collect::<Vec<_>>();
            out.extend(fill);
            out.sort_by_key(|n| n.id.distance(target));
        }
        out
    }

    /// The `count` verified nodes closest to `target` by XOR, nearest first.
    ///
    /// Ids sharing a p-bit prefix with the target are one contiguous range of the sorted
    /// ids, R(p), and every id in it is closer than any id outside it: if R(p) holds at
    /// least `count` nodes, the answer lies in it. So: find a p whose R(p) holds between
    /// `count` and [`CANDIDATES`] nodes (a binary search over p, starting where random ids
    /// would put about 4 `count` nodes; each probe is one range walk, capped), then sort
    /// those few by distance. If no such p exists (a cluster of ids much larger than
    /// `CANDIDATES` around the target), [`Pool::closest_descent`] finds the answer exactly
    /// by splitting R(p) bit by bit.
    fn closest_verified(&self, target: &Id, count: usize) -> Vec<NodeInfo> {
        let n = self.by_id.len();
        if count == 0 || n == 0 {
            return Vec::new();
        }
        // Only keys are read while choosing (they sit together in the tree's nodes); the
        // entries, each another cache miss, are read for the `count` chosen ones.
        let t = Key::of(target);
        let mut cand: Vec<(Key, &Entry)> = Vec::with_capacity(4 * count + 1);
        if n <= CANDIDATES.max(count) {
            cand.extend(self.by_id.iter().map(|(k, e)| (*k, e)));
        } else {
            // good(p): R(p) holds at least `count` nodes. good(lo), !good(hi).
            let (mut lo, mut hi) = (0u32, 161u32);
            let expected = (n / (2 * count).max(1)).max(1);
            let mut p = (usize::BITS - 1 - expected.leading_zeros()).min(160);
            loop {
                let (a, b) = prefix_range(&t, p);
                cand.clear();
                cand.extend(
                    self.by_id
                        .range(a..=b)
                        .take(CANDIDATES + 1)
                        .map(|(k, e)| (*k, e)),
                );
                if cand.len() < count {
                    hi = p;
                } else if cand.len() <= CANDIDATES {
                    break;
                } else {
                    lo = p;
                }
                if hi - lo <= 1 {
                    // R(lo) is too large to sort and R(lo + 1) too small.
                    return self.closest_descent(target, count, lo);
                }
                p = (lo + hi) / 2;
            }
        }
        // Distances as integers: one XOR per candidate, cheap comparisons.
        let mut by_distance: Vec<(Key, Key, &Entry)> =
            cand.iter().map(|&(k, e)| (k.xor(&t), k, e)).collect();
        if by_distance.len() > count {
            by_distance.select_nth_unstable_by_key(count - 1, |c| c.0);
            by_distance.truncate(count);
        }
        by_distance.sort_unstable_by_key(|c| c.0);
        by_distance
            .into_iter()
            .map(|(_, k, e)| NodeInfo {
                id: k.id(),
                addr: e.addr,
            })
            .collect()
    }

    /// [`Pool::closest`] by descent from prefix length `p` (R(p) must hold at least `count`
    /// nodes, or all of them): while the range holds more than we still need, split it on
    /// bit p. If the half that agrees with the target on bit p holds enough, go into it;
    /// otherwise all of it belongs to the answer and the rest comes from the other half,
    /// whose order by distance to the target is its order by distance to the target with
    /// bit p flipped, so the descent goes on there with that target. Each step costs a
    /// capped range walk, O(log n + count); there are at most 160 steps.
    fn closest_descent(&self, target: &Id, count: usize, from: u32) -> Vec<NodeInfo> {
        let mut out: Vec<NodeInfo> = Vec::with_capacity(count.min(self.len()));
        let mut need = count;
        let mut t = Key::of(target);
        let mut p: u32 = from;
        while need > 0 {
            let (lo, hi) = prefix_range(&t, p);
            let in_range = self.by_id.range(lo..=hi).take(need + 1).count();
            if in_range <= need || p >= 160 {
                out.extend(self.by_id.range(lo..=hi).take(need).map(|(k, e)| NodeInfo {
                    id: k.id(),
                    addr: e.addr,
                }));
                break;
            }
            let (nlo, nhi) = prefix_range(&t, p + 1);
            let near = self.by_id.range(nlo..=nhi).take(need + 1).count();
            if near < need {
                out.extend(self.by_id.range(nlo..=nhi).map(|(k, e)| NodeInfo {
                    id: k.id(),
                    addr: e.addr,
                }));
                need -= near;
                t = flip_bit(&t, p);
            }
            p += 1;
        }
        out.sort_by_key(|n| n.id.distance(target));
        out
    }

    /// Every node verified since the start, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeInfo> + '_ {
        self.by_id.iter().map(|(k, e)| NodeInfo {
            id: k.id(),
            addr: e.addr,
        })
    }

    /// The saved nodes not heard from since the start, in id order.
    pub fn saved_nodes(&self) -> impl Iterator<Item = NodeInfo> + '_ {
        self.saved.iter().flat_map(|s| s.nodes())
    }

    /// Nodes from a saved pool (see the `saved` field): due for a check at once, handed
    /// out to fill up replies only if `usable` (the file is recent). `secure` tells
    /// whether an id is BEP 42-valid for its address. Returns how many were taken.
    pub fn load_saved(
        &mut self,
        now: Instant,
        nodes: impl IntoIterator<Item = NodeInfo>,
        secure: impl Fn(&NodeInfo) -> bool,
        usable: bool,
    ) -> usize {
        let mut saved = self.saved.take().unwrap_or_else(|| {
            Box::new(Pool::new(
                self.capacity,
                self.one_per_ip,
                self.reverify_after,
            ))
        });
        let due = now.checked_sub(self.reverify_after).unwrap_or(now);
        let mut added = 0;
        for n in nodes {
            if saved.by_id.len() >= saved.capacity {
                break;
            }
            if n.addr.port() == 0
                || self.by_id.contains_key(&Key::of(&n.id))
                || self.by_slot.contains_key(&self.slot(n.addr))
                || saved.by_id.contains_key(&Key::of(&n.id))
                || saved.by_slot.contains_key(&saved.slot(n.addr))
            {
                continue;
            }
            let s = secure(&n);
            saved.put(
                n.id,
                Entry {
                    addr: n.addr,
                    secure: s,
                    verified: due,
                    checked: due,
                    fails: 0,
                },
            );
            added += 1;
        }
        self.saved = Some(saved);
        self.saved_usable = usable;
        added
    }

    /// Approximate heap bytes (entries and indexes).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.by_id.len() * (size_of::<(Key, Entry)>() + 16)
            + self.by_slot.capacity() * (size_of::<(SocketAddr, Id)>() + 1)
            + (self.by_check.len() + self.insecure.len()) * (size_of::<(Instant, Id)>() + 8)
            + self.saved.as_ref().map_or(0, |s| s.heap_bytes())
    }
}

/// An id as two big-endian integers: the same order as the bytes, compared without
/// memcmp (the pool's hot path compares keys a lot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key(u128, u32);

impl Key {
    fn of(id: &Id) -> Key {
        let (hi, lo) = id.key();
        Key(hi, lo)
    }

    fn id(&self) -> Id {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.0.to_be_bytes());
        b[16..].copy_from_slice(&self.1.to_be_bytes());
        Id(b)
    }

    fn xor(&self, o: &Key) -> Key {
        Key(self.0 ^ o.0, self.1 ^ o.1)
    }

    /// Ones in the 160 - `p` low bits (the bits after a `p`-bit prefix).
    fn low_mask(p: u32) -> Key {
        let hi = if p >= 128 {
            0
        } else if p == 0 {
            u128::MAX
        } else {
            u128::MAX >> p
        };
        let lo = if p <= 128 {
            u32::MAX
        } else if p >= 160 {
            0
        } else {
            u32::MAX >> (p - 128)
        };
        Key(hi, lo)
    }
}

/// The smallest and largest keys sharing the first `p` bits with `t`.
fn prefix_range(t: &Key, p: u32) -> (Key, Key) {
    let m = Key::low_mask(p.min(160));
    (Key(t.0 & !m.0, t.1 & !m.1), Key(t.0 | m.0, t.1 | m.1))
}

fn flip_bit(t: &Key, p: u32) -> Key {
    if p < 128 {
        Key(t.0 ^ (1u128 << (127 - p)), t.1)
    } else {
        Key(t.0, t.1 ^ (1u32 << (159 - p)))
    }
}

/// Largest pool file read.
const MAX_POOL_FILE: usize = 16 << 20;

/// What a pool file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolFile {
    /// Nodes verified during the run that saved the file.
    pub nodes: Vec<NodeInfo>,
    /// Nodes that run had loaded and not heard from (only ever hints after a restart).
    pub hints: Vec<NodeInfo>,
    /// When the file was saved, in seconds since the Unix epoch (absent in old files).
    pub saved_at: Option<u64>,
}

/// The pool file: a bencoded dictionary with `nodes` and `nodes6` (compact IPv4 / IPv6
/// node infos), `hints` and `hints6` (the same for [`PoolFile::hints`]) and `saved`
/// (Unix seconds).
pub fn encode_pool_file(file: &PoolFile) -> Vec<u8> {
    let split = |nodes: &[NodeInfo]| -> (Vec<u8>, Vec<u8>) {
        let (v4, v6): (Vec<&NodeInfo>, Vec<&NodeInfo>) = nodes
            .iter()
            .partition(|n| crate::krpc::canonical_ip(n.addr.ip()).is_ipv4());
        (encode_nodes(v4), encode_nodes(v6))
    };
    let (n4, n6) = split(&file.nodes);
    let (h4, h6) = split(&file.hints);
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out);
    e.begin_dict();
    e.key(b"hints").bytes(&h4);
    e.key(b"hints6").bytes(&h6);
    e.key(b"nodes").bytes(&n4);
    e.key(b"nodes6").bytes(&n6);
    if let Some(t) = file.saved_at {
        e.key(b"saved").int(t.min(i64::MAX as u64) as i64);
    }
    e.end();
    out
}

/// Reads a pool file (bounded; never trusts more than its shape).
pub fn decode_pool_file(b: &[u8]) -> Result<PoolFile, StateError> {
    let limits = Limits {
        max_depth: 2,
        max_len: MAX_POOL_FILE,
    };
    let v = bencode::decode_with(b, limits)?;
    let d = v.as_dict().ok_or(StateError::Invalid("not a dictionary"))?;
    let list = |k4: &[u8], k6: &[u8]| {
        let mut nodes = d
            .get_bytes(k4)
            .map(|b| decode_nodes(b, 26))
            .unwrap_or_default();
        nodes.extend(
            d.get_bytes(k6)
                .map(|b| decode_nodes(b, 38))
                .unwrap_or_default(),
        );
        nodes
    };
    Ok(PoolFile {
        nodes: list(b"nodes", b"nodes6"),
        hints: list(b"hints", b"hints6"),
        saved_at: d.get_int(b"saved").and_then(|t| u64::try_from(t).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    const HOUR: Duration = Duration::from_secs(3600);

    fn node(id: Id, i: u32) -> NodeInfo {
        let [a, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        NodeInfo {
            id,
            addr: SocketAddr::from(([a, b, c, d], 6881)),
        }
    }

    fn brute(pool: &Pool, target: &Id, k: usize) -> Vec<Id> {
        let mut all: Vec<Id> = pool.nodes().map(|n| n.id).collect();
        all.sort_by_key(|id| id.distance(target));
        all.truncate(k);
        all
    }

    /// Ids drawn around a few shared prefixes, so that long common prefixes (the hard
    /// cases of the descent) are common.
    fn clustered_id(seed: u64, i: u64) -> Id {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37));
        let mut id = Id::random(&mut r);
        let mut base = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(i % 3));
        let shared = (r.next_u32() % 40) as usize / 8;
        for b in id.0.iter_mut().take(shared) {
            *b = (base.next_u32() & 0xff) as u8;
        }
        id
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn closest_matches_brute_force(
            seed in any::<u64>(),
            n in 0usize..1500,
            k in 1usize..20,
            near_target in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let mut pool = Pool::new(10_000, false, HOUR);
            for i in 0..n {
                pool.insert_verified(t0, node(clustered_id(seed, i as u64), i as u32), true);
            }
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let target = if near_target && n > 0 {
                // A target sharing a long prefix with some node.
                let mut t = clustered_id(seed, (r.next_u32() as usize % n) as u64).0;
                t[19] ^= 1;
                Id(t)
            } else {
                Id::random(&mut r)
            };
            let want = brute(&pool, &target, k);
            let got: Vec<Id> = pool.closest(&target, k).iter().map(|n| n.id).collect();
            prop_assert_eq!(&got, &want);
            let got: Vec<Id> = pool.closest_descent(&target, k, 0).iter().map(|n| n.id).collect();
            prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn keys_keep_the_order_of_ids_and_prefix_ranges_are_exact() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..200 {
            let (a, b) = (Id::random(&mut r), Id::random(&mut r));
            assert_eq!(Key::of(&a).cmp(&Key::of(&b)), a.cmp(&b));
            assert_eq!(Key::of(&a).id(), a);
            assert_eq!(Key::of(&a).xor(&Key::of(&b)).id(), a.distance(&b));
            for p in [0, 1, 7, 8, 100, 127, 128, 129, 150, 159, 160] {
                let (lo, hi) = prefix_range(&Key::of(&a), p);
                for x in [lo, hi] {
                    assert!(x.id().common_prefix_len(&a) >= p, "p = {p}");
                }
                if p < 160 {
                    assert_eq!(lo.id().0[(p / 8) as usize] & (0x80 >> (p % 8)), 0);
                    assert_ne!(hi.id().0[(p / 8) as usize] & (0x80 >> (p % 8)), 0);
                    let f = flip_bit(&Key::of(&a), p).id();
                    assert_eq!(f.common_prefix_len(&a), p);
                }
            }
        }
    }

    #[test]
    fn closest_around_a_cluster_larger_than_the_candidates() {
        // 300 ids share the target's first 40 bits and differ at bit 40: R(40) holds 303
        // nodes (too many to sort) and R(41) only 3 (too few): the bit-by-bit descent.
        let t0 = Instant::now();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let target = Id::random(&mut r);
        let mut pool = Pool::new(10_000, false, HOUR);
        let mut i = 0;
        let mut add = |pool: &mut Pool, id: Id| {
            pool.insert_verified(t0, node(id, i), true);
            i += 1;
        };
        for _ in 0..300 {
            let mut id = Id::random(&mut r).0;
            id[..5].copy_from_slice(&target.0[..5]);
            id[5] = (id[5] & 0x7f) | (!target.0[5] & 0x80);
            add(&mut pool, Id(id));
        }
        for _ in 0..3 {
            let mut id = Id::random(&mut r).0;
            id[..6].copy_from_slice(&target.0[..6]);
            add(&mut pool, Id(id));
        }
        for _ in 0..2000 {
            add(&mut pool, Id::random(&mut r));
        }
        for k in [1, 3, 4, 8, 20] {
            let got: Vec<Id> = pool.closest(&target, k).iter().map(|n| n.id).collect();
            assert_eq!(got, brute(&pool, &target, k), "k = {k}");
        }
    }

    #[test]
    fn closest_on_exact_and_edge_targets() {
        let t0 = Instant::now();
        let mut pool = Pool::new(100, false, HOUR);
        let ids = [[0u8; 20], [0xff; 20], [0x80; 20], [0x7f; 20]];
        for (i, id) in ids.iter().enumerate() {
            pool.insert_verified(t0, node(Id(*id), i as u32), true);
        }
        for target in ids {
            let got = pool.closest(&Id(target), 1);
            assert_eq!(got[0].id, Id(target));
            let all: Vec<Id> = pool.closest(&Id(target), 10).iter().map(|n| n.id).collect();
            assert_eq!(all, brute(&pool, &Id(target), 10));
        }
        assert!(Pool::new(10, false, HOUR).closest(&Id::ZERO, 8).is_empty());
        assert!(pool.closest(&Id::ZERO, 0).is_empty());
    }

    #[test]
    fn bounded_and_secure_nodes_replace_insecure_ones() {
        let t0 = Instant::now();
        let mut pool = Pool::new(4, false, HOUR);
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for i in 0..4 {
            let at = t0 + Duration::from_secs(i as u64);
            assert_eq!(
                pool.insert_verified(at, node(Id::random(&mut r), i), i != 1),
                PoolInsert::Added
            );
        }
        // Full: an insecure newcomer is refused, the old nodes stay.
        let late = t0 + Duration::from_secs(10);
        let refused = node(Id::random(&mut r), 10);
        assert_eq!(
            pool.insert_verified(late, refused, false),
            PoolInsert::Rejected
        );
        assert_eq!(pool.len(), 4);
        // A secure newcomer evicts the one insecure node (number 1).
        let insecure_addr = node(Id::ZERO, 1).addr;
        assert!(pool.contains_addr(&insecure_addr));
        let secure = node(Id::random(&mut r), 11);
        assert_eq!(pool.insert_verified(late, secure, true), PoolInsert::Added);
        assert_eq!(pool.len(), 4);
        assert!(!pool.contains_addr(&insecure_addr));
        assert!(pool.contains(&secure.id, &secure.addr));
        // No insecure node left: the next secure newcomer is refused too.
        assert_eq!(
            pool.insert_verified(late, node(Id::random(&mut r), 12), true),
            PoolInsert::Rejected
        );
        // Many more offers never grow it.
        for i in 100..1100 {
            pool.insert_verified(late, node(Id::random(&mut r), i), i % 2 == 0);
        }
        assert_eq!(pool.len(), 4);
        assert_eq!(pool.by_slot.len(), 4);
        assert_eq!(pool.by_check.len(), 4);
        assert!(pool.insecure.is_empty());
    }

    #[test]
    fn one_node_per_address_and_per_ip_in_public_mode() {
        let t0 = Instant::now();
        let mut pool = Pool::new(100, true, HOUR);
        let a = node(Id([1; 20]), 1);
        pool.insert_verified(t0, a, true);
        // Same IP, other port and id: replaces it (one per IP).
        let mut b = node(Id([2; 20]), 1);
        b.addr.set_port(7000);
        assert_eq!(pool.insert_verified(t0, b, true), PoolInsert::Added);
        assert_eq!(pool.len(), 1);
        assert!(pool.contains(&b.id, &b.addr));
        // Same id from a new address: moves.
        let c = NodeInfo {
            id: b.id,
            addr: node(Id::ZERO, 2).addr,
        };
        assert_eq!(pool.insert_verified(t0, c, true), PoolInsert::Refreshed);
        assert_eq!(pool.len(), 1);
        assert!(pool.contains_addr(&c.addr));
        assert!(!pool.contains_addr(&b.addr));
        // Without one-per-IP, two ports of one IP are two nodes.
        let mut p = Pool::new(100, false, HOUR);
        p.insert_verified(t0, a, true);
        p.insert_verified(t0, b, true);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn checks_oldest_first_and_drops_silent_nodes() {
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        let mut pool = Pool::new(100, false, every);
        let a = node(Id([1; 20]), 1);
        let b = node(Id([2; 20]), 2);
        pool.insert_verified(t0, a, true);
        pool.insert_verified(t0 + Duration::from_secs(5), b, true);
        assert!(pool
            .due_for_check(t0 + Duration::from_secs(10), 10)
            .is_empty());
        assert_eq!(pool.next_check(), Some(t0 + every));
        // Bounded per call, oldest first.
        let due = pool.due_for_check(t0 + every * 2, 1);
        assert_eq!(due, vec![a]);
        let due = pool.due_for_check(t0 + every * 2, 10);
        assert_eq!(due, vec![b]);
        // Checked now: not due again right away.
        assert!(pool.due_for_check(t0 + every * 2, 10).is_empty());
        // a answers, b stays silent twice and is dropped.
        let t1 = t0 + every * 2 + Duration::from_secs(1);
        assert_eq!(pool.insert_verified(t1, a, true), PoolInsert::Refreshed);
        assert!(!pool.on_failure(t1, &b.addr));
        assert_eq!(pool.len(), 2);
        let retry = pool.due_for_check(t1 + RETRY_AFTER, 10);
        assert_eq!(retry, vec![b], "retried soon after a failure");
        assert!(pool.on_failure(t1 + RETRY_AFTER, &b.addr));
        assert_eq!(pool.len(), 1);
        assert!(!pool.contains_addr(&b.addr));
        // Unknown addresses are ignored.
        assert!(!pool.on_failure(t1, &node(Id::ZERO, 99).addr));
    }

    #[test]
    fn pool_file_round_trip_and_hostile_input() {
        let t0 = Instant::now();
        let mut pool = Pool::new(1000, false, HOUR);
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for i in 0..500 {
            pool.insert_verified(t0, node(Id::random(&mut r), i), true);
        }
        let v6 = NodeInfo {
            id: Id([7; 20]),
            addr: "[::1]:6881".parse().unwrap(),
        };
        let hint = node(Id([8; 20]), 9_999);
        let file = PoolFile {
            nodes: pool.nodes().chain([v6]).collect(),
            hints: vec![hint],
            saved_at: Some(1_800_000_000),
        };
        let back = decode_pool_file(&encode_pool_file(&file)).unwrap();
        assert_eq!(back.nodes.len(), 501);
        assert_eq!(back.hints, vec![hint]);
        assert_eq!(back.saved_at, Some(1_800_000_000));
        let mut again = Pool::new(1000, false, HOUR);
        let v4: Vec<NodeInfo> = back
            .nodes
            .iter()
            .copied()
            .filter(|n| n.addr.is_ipv4())
            .collect();
        assert_eq!(again.load_saved(t0, v4, |_| true, true), 500);
        let a: Vec<NodeInfo> = pool.nodes().collect();
        let b: Vec<NodeInfo> = again.saved_nodes().collect();
        assert_eq!(a, b);
        assert_eq!(
            (again.len(), again.saved_len(), again.answerable()),
            (0, 500, 500)
        );
        // Loaded nodes are due for a check at once.
        assert_eq!(again.saved_due_for_check(t0, 10).len(), 10);
        // Loading is bounded by the capacity.
        let mut small = Pool::new(10, false, HOUR);
        assert_eq!(small.load_saved(t0, back.nodes, |_| true, false), 10);
        assert_eq!((small.saved_len(), small.answerable()), (10, 0));
        assert!(decode_pool_file(b"garbage").is_err());
        assert!(decode_pool_file(b"le").is_err());
        assert_eq!(
            decode_pool_file(b"d5:nodes3:abce").unwrap(),
            PoolFile::default()
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_pool_file(&b);
        }
    }
}
