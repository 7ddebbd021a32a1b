//! Piece diversity from a seed: which piece to suggest (BEP 6) to a peer it uploads to.
//!
//! Leechers choose what they request, rarest-first by what *their* neighbours announce. A
//! seed in a large swarm sees that many peers ask it for the same pieces: each asks for
//! whatever looks rare locally, and pieces in flight look as rare as pieces nobody has.
//! Every second copy of a piece the seed uploads while another piece has no copy at all
//! delays the whole swarm, since that piece can only come from the seed.
//!
//! The seed knows what nobody else does: how often it has handed out each piece. It
//! suggests to every peer it serves the piece it has handed out least (then the one rarest
//! among its neighbours), a few at a time. Suggest is a hint; a peer that ignores it is
//! served as before, and what it asks for is counted all the same.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Geometry;
use crate::bitfield::Bitfield;

#[derive(Debug)]
pub struct Spread {
    /// Blocks of each piece handed out or promised: requests accepted, plus every block
    /// of a piece suggested and not yet asked for.
    demand: Vec<u32>,
}

impl Spread {
    pub fn new(pieces: u32) -> Self {
        Spread {
            demand: vec![0; pieces as usize],
        }
    }

    /// Whole copies of `piece` handed out or promised (partial ones count as one).
    pub fn copies(&self, geo: &Geometry, piece: u32) -> u32 {
        self.demand[piece as usize].div_ceil(geo.blocks_in(piece))
    }

    /// The piece to suggest to a peer that has `has` (None: it has nothing we know of):
    /// fewest copies handed out, then fewest holders among our peers (`availability`),
    /// then at random. Skips `exclude` (already suggested to it). Marks it promised.
    pub fn suggest(
        &mut self,
        geo: &Geometry,
        has: &Bitfield,
        exclude: &[u32],
        availability: impl Fn(u32) -> u32,
        rng: &mut ChaCha8Rng,
    ) -> Option<u32> {
        let n = geo.piece_count;
        let offset = rng.gen_range(0..n);
        let mut best: Option<(u32, (u32, u32))> = None;
        for k in 0..n {
            let i = (offset + k) % n;
            if has.get(i) || exclude.contains(&i) {
                continue;
            }
            let key = (self.copies(geo, i), availability(i));
            if best.is_none_or(|(_, b)| key < b) {
                best = Some((i, key));
                if key == (0, 0) {
                    break;
                }
            }
        }
        let (piece, _) = best?;
        self.demand[piece as usize] += geo.blocks_in(piece);
        Some(piece)
    }

    /// A suggestion is settled (the peer asked for it, got it elsewhere, or left): it no
    /// longer holds a promise.
    pub fn withdraw(&mut self, geo: &Geometry, piece: u32) {
        let d = &mut self.demand[piece as usize];
        *d = d.saturating_sub(geo.blocks_in(piece));
    }

    /// A block request of `piece` was accepted.
    pub fn requested(&mut self, piece: u32) {
        self.demand[piece as usize] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn suggests_unsent_pieces_before_second_copies() {
        let geo = Geometry::new(8 * 32768, 32768).unwrap();
        let mut s = Spread::new(8);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let nothing = Bitfield::new(8);
        let mut seen = Vec::new();
        for _ in 0..8 {
            let p = s.suggest(&geo, &nothing, &[], |_| 0, &mut rng).unwrap();
            assert!(
                !seen.contains(&p),
                "{p} suggested twice before all were out"
            );
            seen.push(p);
        }
        // Every piece promised once; a request for piece 3 after its suggestion was
        // settled still counts, so 3 is not among the next suggestions' first choices.
        for p in 0..8 {
            s.withdraw(&geo, p);
        }
        s.requested(3);
        let next: Vec<u32> = (0..7)
            .map(|_| s.suggest(&geo, &nothing, &[], |_| 0, &mut rng).unwrap())
            .collect();
        assert!(!next.contains(&3), "{next:?}");
    }

    #[test]
    fn skips_what_the_peer_has_and_prefers_rare_pieces() {
        let geo = Geometry::new(4 * 32768, 32768).unwrap();
        let mut s = Spread::new(4);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut has = Bitfield::new(4);
        has.set(0);
        // Piece 2 is held by fewer of our peers than 1 and 3.
        let avail = |p: u32| if p == 2 { 1 } else { 5 };
        assert_eq!(s.suggest(&geo, &has, &[], avail, &mut rng), Some(2));
        assert_eq!(s.suggest(&geo, &has, &[1], avail, &mut rng), Some(3));
        has.set(1);
        has.set(2);
        has.set(3);
        assert_eq!(s.suggest(&geo, &has, &[], avail, &mut rng), None);
    }
}
