//! Choking decisions as pure functions over peer summaries: who gets the regular upload
//! slots (best reciprocation in the last round) and who gets the optimistic slot.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::PeerSlot;

#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub slot: PeerSlot,
    /// Bytes in the last round: downloaded from them while leeching, uploaded to them
    /// while seeding.
    pub score: u64,
    /// Connected recently: three times the chance of the optimistic slot, so a new peer
    /// gets something to reciprocate with.
    pub is_new: bool,
}

/// The `slots` best candidates, ties broken at random.
pub fn regular_unchokes(
    mut cands: Vec<Candidate>,
    slots: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<PeerSlot> {
    cands.shuffle(rng);
    cands.sort_by_key(|c| std::cmp::Reverse(c.score));
    cands.into_iter().take(slots).map(|c| c.slot).collect()
}

/// A random candidate, new peers weighted three times.
pub fn optimistic_unchoke(cands: &[Candidate], rng: &mut ChaCha8Rng) -> Option<PeerSlot> {
    let weight = |c: &Candidate| if c.is_new { 3 } else { 1 };
    let total: u32 = cands.iter().map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.gen_range(0..total);
    for c in cands {
        let w = weight(c);
        if pick < w {
            return Some(c.slot);
        }
        pick -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn best_scores_win_and_new_peers_are_favoured() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = |i, score, is_new| Candidate {
            slot: PeerSlot::for_tests(i),
            score,
            is_new,
        };
        let top = regular_unchokes(
            vec![c(1, 10, false), c(2, 30, false), c(3, 20, false)],
            2,
            &mut rng,
        );
        assert_eq!(top, vec![PeerSlot::for_tests(2), PeerSlot::for_tests(3)]);
        let cands = [c(1, 0, true), c(2, 0, false)];
        let new_wins = (0..1000)
            .filter(|_| optimistic_unchoke(&cands, &mut rng) == Some(PeerSlot::for_tests(1)))
            .count();
        assert!((650..850).contains(&new_wins), "{new_wins}");
        assert_eq!(optimistic_unchoke(&[], &mut rng), None);
    }
}
