//! Which blocks to request from which peer: rarest-first with a random tie-break (random
//! for the first few pieces), whole-piece preference (finish started pieces, one peer per
//! piece when possible) and endgame (duplicate requests once everything is requested).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Block, Geometry, PeerSlot};
use crate::bitfield::Bitfield;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceState {
    /// Not started.
    Missing,
    /// Some blocks requested or received.
    Partial,
    /// Every block written; waiting for the hash check.
    Verifying,
    /// Verified.
    Have,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    Open,
    /// Requested from this many peers (more than one only in endgame).
    Requested(u8),
    Received,
}

#[derive(Debug)]
struct Partial {
    blocks: Vec<BlockState>,
    open: u32,
    received: u32,
    /// The peer this piece is being fetched from (whole-piece preference).
    owner: Option<PeerSlot>,
    /// Every peer that sent a block of it, for strikes when the hash fails.
    contributors: Vec<PeerSlot>,
}

/// What became of a received block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// New data: write it. `piece_complete` when it was the piece's last block.
    Accepted { piece_complete: bool },
    /// We already have this block (endgame duplicate, or a piece already done).
    Duplicate,
    /// Not a block we want (not started, or not a valid block of this torrent).
    Unwanted,
}

/// Tunables of a pick.
#[derive(Debug, Clone, Copy)]
pub struct PickPolicy {
    /// Pieces picked at random before rarest-first takes over.
    pub random_first_pieces: u32,
    /// Endgame: at most this many peers asked for one block.
    pub endgame_max_requesters: u8,
    /// No new piece is started while this many are in progress (started, not yet
    /// verified): each holds a piece-sized buffer, so this bounds download memory.
    /// Peers then help with the pieces already started.
    pub max_partial_pieces: usize,
}

/// Which of a peer's pieces it may be asked for and what it has.
pub struct PeerView<'a> {
    pub slot: PeerSlot,
    /// None means the peer has every piece.
    pub has: Option<&'a Bitfield>,
    /// When set, only these pieces may be requested (allowed-fast while choked).
    pub only: Option<&'a [u32]>,
    /// Pieces the peer suggested (BEP 6), tried before rarest-first.
    pub suggested: &'a [u32],
    /// Whether it may own pieces (whole-piece preference). Snubbed peers may not: their
    /// blocks would hold up pieces others could finish.
    pub may_own: bool,
    /// Requests already outstanding to this peer (bounds its endgame duplicates).
    pub outstanding: usize,
}

/// In endgame a peer gets duplicate requests only while its own queue is this short: deep
/// pipelines (hundreds of blocks on a fast link) would otherwise duplicate most of the
/// torrent as soon as the last block is first requested.
pub const ENDGAME_QUEUE: usize = 4;

impl PeerView<'_> {
    fn may_request(&self, piece: u32) -> bool {
        self.has.is_none_or(|b| b.get(piece)) && self.only.is_none_or(|o| o.contains(&piece))
    }
}

#[derive(Debug)]
pub struct Picker {
    geo: Geometry,
    state: Vec<PieceState>,
    availability: Vec<u32>,
    seeds: u32,
    partial: BTreeMap<u32, Partial>,
    missing_unstarted: u32,
    open_blocks: u64,
    have_count: u32,
    /// Pieces wanted before all others, in order (a streaming reader's next pieces).
    urgent: Vec<u32>,
}

/// Most urgent pieces kept (a reader looks a few pieces ahead, not a whole file).
pub const MAX_URGENT: usize = 64;

impl Picker {
    pub fn new(geo: Geometry, have: &Bitfield) -> Self {
        let n = geo.piece_count;
        let state = (0..n)
            .map(|i| {
                if have.get(i) {
                    PieceState::Have
                } else {
                    PieceState::Missing
                }
            })
            .collect();
        Picker {
            geo,
            state,
            availability: vec![0; n as usize],
            seeds: 0,
            partial: BTreeMap::new(),
            missing_unstarted: n - have.count_ones(),
            open_blocks: 0,
            have_count: have.count_ones(),
            urgent: Vec::new(),
        }
    }

    pub fn state(&self, piece: u32) -> PieceState {
        self.state[piece as usize]
    }

    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// How many connected peers have `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability[piece as usize] + self.seeds
    }

    pub fn add_have(&mut self, piece: u32) {
        self.availability[piece as usize] += 1;
    }

    pub fn add_bitfield(&mut self, b: &Bitfield) {
        for i in b.iter_ones() {
            self.availability[i as usize] += 1;
        }
    }

    pub fn remove_bitfield(&mut self, b: &Bitfield) {
        for i in b.iter_ones() {
            let a = &mut self.availability[i as usize];
            *a = a.saturating_sub(1);
        }
    }

    pub fn add_seed(&mut self) {
        self.seeds += 1;
    }

    pub fn remove_seed(&mut self) {
        self.seeds = self.seeds.saturating_sub(1);
    }

    /// True once every block of every missing piece is requested or received.
    pub fn in_endgame(&self) -> bool {
        self.missing_unstarted == 0
            && self.open_blocks == 0
            && self.have_count < self.geo.piece_count
    }

    /// The block starting at `offset` of `piece`, if that is a valid block boundary and
    /// `length` is exactly that block's length.
    pub fn block_index(&self, b: Block) -> Option<u32> {
        if b.piece >= self.geo.piece_count || !b.offset.is_multiple_of(self.geo.block_len) {
            return None;
        }
        let bi = b.offset / self.geo.block_len;
        (bi < self.geo.blocks_in(b.piece) && self.geo.block(b.piece, bi).length == b.length)
            .then_some(bi)
    }

    /// Makes `pieces` (in this order) urgent: they are asked for before any other, from
    /// every peer that has them, even past the bound on pieces in progress (a streaming
    /// reader waits on them). Replaces the previous urgent set; pieces we have are left
    /// out; at most [`MAX_URGENT`].
    pub fn set_urgent(&mut self, pieces: &[u32]) {
        self.urgent.clear();
        for &p in pieces {
            if self.urgent.len() >= MAX_URGENT {
                break;
            }
            if p < self.geo.piece_count
                && self.state(p) != PieceState::Have
                && !self.urgent.contains(&p)
            {
                self.urgent.push(p);
            }
        }
    }

    /// The urgent pieces not yet verified.
    pub fn urgent(&self) -> &[u32] {
        &self.urgent
    }

    /// Picks up to `want` blocks for `peer`, skipping any for which `already_asked` is true
    /// (blocks this peer already has outstanding), and marks them requested.
    pub fn pick(
        &mut self,
        peer: &PeerView<'_>,
        want: usize,
        policy: PickPolicy,
        rng: &mut ChaCha8Rng,
        already_asked: &dyn Fn(Block) -> bool,
        out: &mut Vec<Block>,
    ) {
        let start = out.len();
        let done = |out: &Vec<Block>| out.len() - start >= want;
        // 0. Urgent pieces first, whoever owns them and however many are in progress.
        if !self.urgent.is_empty() {
            self.urgent
                .retain(|&p| self.state[p as usize] != PieceState::Have);
            let urgent: Vec<u32> = self
                .urgent
                .iter()
                .copied()
                .filter(|&p| peer.may_request(p))
                .collect();
            for p in urgent {
                if done(out) {
                    return;
                }
                match self.state(p) {
                    PieceState::Missing => self.start_piece(p, None),
                    PieceState::Partial => {}
                    PieceState::Verifying | PieceState::Have => continue,
                }
                self.take_open(p, want - (out.len() - start), out);
            }
            // A reader waits on these: blocks already asked of another (perhaps slow)
            // peer are asked of this one too, as in endgame.
            let mut extra = Vec::new();
            for &p in &self.urgent {
                let Some(part) = self.partial.get(&p).filter(|_| peer.may_request(p)) else {
                    continue;
                };
                for (bi, st) in part.blocks.iter().enumerate() {
                    if out.len() - start + extra.len() >= want {
                        break;
                    }
                    let b = self.geo.block(p, bi as u32);
                    if matches!(*st, BlockState::Requested(n) if n < policy.endgame_max_requesters)
                        && !already_asked(b)
                        && !out[start..].contains(&b)
                    {
                        extra.push(b);
                    }
                }
            }
            for b in extra {
                self.mark_requested(b);
                out.push(b);
            }
        }
        // 1. Finish our own started pieces; 2. adopt orphaned ones.
        let mine: Vec<u32> = if peer.may_own {
            self.partial
                .iter()
                .filter(|(&p, part)| {
                    part.open > 0
                        && (part.owner == Some(peer.slot) || part.owner.is_none())
                        && peer.may_request(p)
                })
                .map(|(&p, _)| p)
                .collect()
        } else {
            Vec::new()
        };
        for p in mine {
            if done(out) {
                return;
            }
            self.partial.get_mut(&p).expect("listed").owner = Some(peer.slot);
            self.take_open(p, want - (out.len() - start), out);
        }
        // 3. Suggested pieces, then new pieces by rarity, within the memory bound.
        while !done(out) && self.partial.len() < policy.max_partial_pieces.max(1) {
            let Some(p) = self.pick_new_piece(peer, policy.random_first_pieces, rng) else {
                break;
            };
            self.start_piece(p, peer.may_own.then_some(peer.slot));
            self.take_open(p, want - (out.len() - start), out);
        }
        // 4. Help with pieces other peers are fetching.
        if !done(out) {
            let others: Vec<u32> = self
                .partial
                .iter()
                .filter(|(&p, part)| part.open > 0 && peer.may_request(p))
                .map(|(&p, _)| p)
                .collect();
            for p in others {
                if done(out) {
                    return;
                }
                self.take_open(p, want - (out.len() - start), out);
            }
        }
        // 5. Endgame: ask for blocks already requested elsewhere.
        let endgame_room = ENDGAME_QUEUE.saturating_sub(peer.outstanding + (out.len() - start));
        if !done(out) && endgame_room > 0 && self.in_endgame() {
            let want = want.min(out.len() - start + endgame_room);
            let mut extra = Vec::new();
            'pieces: for (&p, part) in &self.partial {
                if !peer.may_request(p) {
                    continue;
                }
                for (bi, st) in part.blocks.iter().enumerate() {
                    if let BlockState::Requested(n) = *st {
                        let b = self.geo.block(p, bi as u32);
                        if n < policy.endgame_max_requesters
                            && !already_asked(b)
                            && !out[start..].contains(&b)
                        {
                            extra.push(b);
                            if out.len() - start + extra.len() >= want {
                                break 'pieces;
                            }
                        }
                    }
                }
            }
            for b in extra {
                self.mark_requested(b);
                out.push(b);
            }
        }
    }

    fn pick_new_piece(
        &self,
        peer: &PeerView<'_>,
        random_first_pieces: u32,
        rng: &mut ChaCha8Rng,
    ) -> Option<u32> {
        if self.missing_unstarted == 0 {
            return None;
        }
        if let Some(&p) = peer.suggested.iter().find(|&&p| {
            p < self.geo.piece_count && self.state(p) == PieceState::Missing && peer.may_request(p)
        }) {
            return Some(p);
        }
        let n = self.geo.piece_count;
        let candidates =
            |i: u32| self.state[i as usize] == PieceState::Missing && peer.may_request(i);
        if let Some(only) = peer.only {
            return only.iter().copied().find(|&i| i < n && candidates(i));
        }
        let offset = rng.gen_range(0..n);
        if self.have_count < random_first_pieces {
            // Random: a fresh peer gets a complete piece to share quickly, and fresh
            // peers do not all chase the same rare piece.
            let count = (0..n).filter(|&i| candidates(i)).count() as u32;
            if count == 0 {
                return None;
            }
            let nth = rng.gen_range(0..count) as usize;
            return (0..n).filter(|&i| candidates(i)).nth(nth);
        }
        // Rarest first; scanning from a random offset breaks ties at random.
        let mut best: Option<(u32, u32)> = None;
        for k in 0..n {
            let i = (offset + k) % n;
            if !candidates(i) {
                continue;
            }
            let a = self.availability(i);
            if best.is_none_or(|(_, ba)| a < ba) {
                best = Some((i, a));
                if a <= 1 {
                    break; // nothing is rarer than a single source
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn start_piece(&mut self, p: u32, owner: Option<PeerSlot>) {
        let blocks = self.geo.blocks_in(p);
        self.state[p as usize] = PieceState::Partial;
        self.missing_unstarted -= 1;
        self.open_blocks += blocks as u64;
        self.partial.insert(
            p,
            Partial {
                blocks: vec![BlockState::Open; blocks as usize],
                open: blocks,
                received: 0,
                owner,
                contributors: Vec::new(),
            },
        );
    }

    fn take_open(&mut self, p: u32, want: usize, out: &mut Vec<Block>) {
        let part = self.partial.get_mut(&p).expect("partial");
        let mut taken = 0;
        for (bi, st) in part.blocks.iter_mut().enumerate() {
            if taken >= want || part.open == 0 {
                break;
            }
            if *st == BlockState::Open {
                *st = BlockState::Requested(1);
                part.open -= 1;
                self.open_blocks -= 1;
                taken += 1;
                out.push(self.geo.block(p, bi as u32));
            }
        }
    }

    fn mark_requested(&mut self, b: Block) {
        let Some(bi) = self.block_index(b) else {
            return;
        };
        if let Some(part) = self.partial.get_mut(&b.piece) {
            match &mut part.blocks[bi as usize] {
                st @ BlockState::Open => {
                    *st = BlockState::Requested(1);
                    part.open -= 1;
                    self.open_blocks -= 1;
                }
                BlockState::Requested(n) => *n = n.saturating_add(1),
                BlockState::Received => {}
            }
        }
    }

    /// A request for `b` is no longer outstanding (rejected, cancelled, peer gone).
    pub fn release(&mut self, b: Block) {
        let Some(bi) = self.block_index(b) else {
            return;
        };
        if let Some(part) = self.partial.get_mut(&b.piece) {
            let st = &mut part.blocks[bi as usize];
            if let BlockState::Requested(n) = *st {
                if n <= 1 {
                    *st = BlockState::Open;
                    part.open += 1;
                    self.open_blocks += 1;
                } else {
                    *st = BlockState::Requested(n - 1);
                }
            }
        }
    }

    /// Forgets `slot` as the owner of its pieces (it left or was snubbed).
    pub fn disown(&mut self, slot: PeerSlot) {
        for part in self.partial.values_mut() {
            if part.owner == Some(slot) {
                part.owner = None;
            }
        }
    }

    /// Records a received block from `from`.
    pub fn receive(&mut self, b: Block, from: PeerSlot) -> Received {
        let Some(bi) = self.block_index(b) else {
            return Received::Unwanted;
        };
        match self.state[b.piece as usize] {
            PieceState::Have | PieceState::Verifying => return Received::Duplicate,
            PieceState::Missing => return Received::Unwanted,
            PieceState::Partial => {}
        }
        let part = self.partial.get_mut(&b.piece).expect("partial piece");
        let st = &mut part.blocks[bi as usize];
        match *st {
            BlockState::Received => return Received::Duplicate,
            BlockState::Open => {
                part.open -= 1;
                self.open_blocks -= 1;
            }
            BlockState::Requested(_) => {}
        }
        *st = BlockState::Received;
        part.received += 1;
        if !part.contributors.contains(&from) {
            part.contributors.push(from);
        }
        let piece_complete = part.received as usize == part.blocks.len();
        if piece_complete {
            self.state[b.piece as usize] = PieceState::Verifying;
        }
        Received::Accepted { piece_complete }
    }

    /// The hash check finished. Returns the peers that contributed blocks to the piece.
    pub fn verified(&mut self, piece: u32, ok: bool) -> Vec<PeerSlot> {
        if piece >= self.geo.piece_count || self.state[piece as usize] != PieceState::Verifying {
            return Vec::new();
        }
        let part = self
            .partial
            .remove(&piece)
            .expect("verifying piece is partial");
        if ok {
            self.state[piece as usize] = PieceState::Have;
            self.have_count += 1;
        } else {
            self.state[piece as usize] = PieceState::Missing;
            self.missing_unstarted += 1;
        }
        part.contributors
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn geo(pieces: u32) -> Geometry {
        Geometry::new(pieces as u64 * 32 * 1024, 32 * 1024).unwrap()
    }

    fn view(slot: u32, has: Option<&Bitfield>) -> PeerView<'_> {
        PeerView {
            slot: PeerSlot::for_tests(slot),
            has,
            only: None,
            suggested: &[],
            may_own: true,
            outstanding: 0,
        }
    }

    #[test]
    fn urgent_pieces_come_first_past_the_progress_bound_and_from_every_peer() {
        // 8 pieces of 2 blocks; piece 5 is the rarest, but a reader waits on 6 then 7.
        let g = geo(8);
        let mut p = Picker::new(g, &Bitfield::new(8));
        let mut common = Bitfield::full(8);
        common.clear(5);
        p.add_bitfield(&common);
        p.add_bitfield(&Bitfield::full(8));
        let policy = PickPolicy {
            random_first_pieces: 0,
            endgame_max_requesters: 2,
            max_partial_pieces: 1,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Another peer already holds the one piece in progress the bound allows.
        let mut first = Vec::new();
        p.pick(&view(9, None), 2, policy, &mut rng, &|_| false, &mut first);
        assert_eq!(
            first.iter().map(|b| b.piece).collect::<Vec<_>>(),
            vec![5, 5]
        );
        p.set_urgent(&[6, 7, 6, 99]);
        assert_eq!(p.urgent(), &[6, 7], "deduplicated, in range");
        let mut out = Vec::new();
        p.pick(&view(1, None), 4, policy, &mut rng, &|_| false, &mut out);
        let pieces: Vec<u32> = out.iter().map(|b| b.piece).collect();
        assert_eq!(pieces, vec![6, 6, 7, 7], "urgent first, past the bound");
        // A second peer is asked for the same urgent blocks (the first may be slow).
        let asked = out.clone();
        let mut second = Vec::new();
        p.pick(&view(2, None), 4, policy, &mut rng, &|_| false, &mut second);
        assert!(second.iter().all(|b| asked.contains(b)), "{second:?}");
        assert_eq!(second.len(), 4);
        // Pieces we have drop out; an empty set ends it.
        for b in &asked {
            p.receive(*b, PeerSlot::for_tests(1));
        }
        p.verified(6, true);
        p.verified(7, true);
        let mut none = Vec::new();
        p.pick(&view(3, None), 4, policy, &mut rng, &|_| false, &mut none);
        assert!(p.urgent().is_empty());
        p.set_urgent(&[]);
        assert!(p.urgent().is_empty());
    }

    #[test]
    fn rarest_piece_first_after_random_start() {
        let g = geo(8);
        let mut p = Picker::new(g, &Bitfield::new(8));
        // Availability: piece 5 is the rarest (1), the rest 3.
        let mut common = Bitfield::full(8);
        common.clear(5);
        p.add_bitfield(&common);
        p.add_bitfield(&common);
        p.add_bitfield(&Bitfield::full(8));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Vec::new();
        let full = Bitfield::full(8);
        p.pick(
            &view(1, Some(&full)),
            2,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut out,
        );
        assert_eq!(out.iter().map(|b| b.piece).collect::<Vec<_>>(), vec![5, 5]);
    }

    #[test]
    fn whole_piece_preference_and_endgame() {
        let g = geo(2);
        let mut p = Picker::new(g, &Bitfield::new(2));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut a = Vec::new();
        p.pick(
            &view(1, None),
            1,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut a,
        );
        let mut b = Vec::new();
        // Peer 2 gets the other piece, not the rest of peer 1's piece.
        p.pick(
            &view(2, None),
            1,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut b,
        );
        assert_ne!(a[0].piece, b[0].piece);
        // Peer 1 continues its own piece.
        p.pick(
            &view(1, None),
            1,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut a,
        );
        assert_eq!(a[1].piece, a[0].piece);
        assert!(!p.in_endgame());
        p.pick(
            &view(2, None),
            1,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut b,
        );
        assert!(p.in_endgame());
        // Endgame: peer 3 gets duplicates, never more than 2 requesters per block.
        let mut c = Vec::new();
        p.pick(
            &view(3, None),
            10,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut c,
        );
        assert_eq!(c.len(), 4);
        let mut d = Vec::new();
        p.pick(
            &view(4, None),
            10,
            PickPolicy {
                random_first_pieces: 0,
                endgame_max_requesters: 2,
                max_partial_pieces: usize::MAX,
            },
            &mut rng,
            &|_| false,
            &mut d,
        );
        assert!(d.is_empty());
    }

    #[test]
    fn endgame_duplicates_only_for_peers_with_short_queues() {
        // 8 pieces of 2 blocks: everything gets requested by one deep-pipelined peer.
        let g = geo(8);
        let mut p = Picker::new(g, &Bitfield::new(8));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let policy = PickPolicy {
            random_first_pieces: 0,
            endgame_max_requesters: 2,
            max_partial_pieces: usize::MAX,
        };
        let mut a = Vec::new();
        p.pick(&view(1, None), 100, policy, &mut rng, &|_| false, &mut a);
        assert_eq!(a.len(), 16);
        assert!(p.in_endgame());
        // A second peer that already has a deep queue of its own gets no duplicates.
        let mut busy = view(2, None);
        busy.outstanding = ENDGAME_QUEUE;
        let mut b = Vec::new();
        p.pick(&busy, 100, policy, &mut rng, &|_| false, &mut b);
        assert!(b.is_empty(), "{b:?}");
        // An idle peer gets at most ENDGAME_QUEUE duplicates, however much room it has.
        let mut c = Vec::new();
        p.pick(&view(3, None), 100, policy, &mut rng, &|_| false, &mut c);
        assert_eq!(c.len(), ENDGAME_QUEUE);
    }
}
