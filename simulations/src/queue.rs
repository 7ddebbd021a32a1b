//! The event queue, ordered by (time, sequence number).
//!
//! The sequence number is assigned at push time, so events scheduled for the same instant
//! pop in the order they were scheduled. That tie-break is what makes a run a pure function
//! of its seed: a heap alone would order equal keys arbitrarily.
//!
//! It is a calendar queue (a timing wheel): events of the next ~8.6 s of virtual time sit
//! unsorted in 1 ms slots, and a slot is sorted only when the clock reaches it; events
//! farther out wait in a binary heap until the wheel comes near. Pushing is O(1) for
//! almost every event, and popping sorts a few hundred events at a time instead of
//! sifting a million-entry heap (a 100,000-node DHT keeps that many pending).

use crate::time::SimTime;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<E> {
    at: SimTime,
    seq: u64,
    event: E,
}

impl<E> Entry<E> {
    fn key(&self) -> (SimTime, u64) {
        (self.at, self.seq)
    }
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    // Reversed so that std's max-heap pops the earliest (time, seq) first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

/// log2 of a slot's width in nanoseconds (2^20 ns: about 1 ms).
const SLOT_SHIFT: u32 = 20;
/// Slots in the wheel (2^13 slots of ~1 ms: about 8.6 s ahead, past the DHT's 5 s tick).
const SLOTS: u64 = 1 << 13;

fn slot_of(at: SimTime) -> u64 {
    at.as_nanos() >> SLOT_SHIFT
}

/// Events of type `E`, popped earliest first, FIFO among equal times.
pub struct EventQueue<E> {
    /// The slot being consumed, sorted latest first: the next event is at the end.
    current: Vec<Entry<E>>,
    /// Absolute number of the slot in `current`; the wheel holds slots after it.
    cur: u64,
    /// Slot `s` in `cur + 1 .. cur + SLOTS` lives at `wheel[s % SLOTS]`, unsorted.
    wheel: Vec<Vec<Entry<E>>>,
    in_wheel: usize,
    /// Events at or past `cur + SLOTS`.
    far: BinaryHeap<Entry<E>>,
    len: usize,
    next_seq: u64,
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        EventQueue {
            current: Vec::new(),
            cur: 0,
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            len: 0,
            next_seq: 0,
        }
    }

    pub fn push(&mut self, at: SimTime, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        let e = Entry { at, seq, event };
        let s = slot_of(at);
        if s <= self.cur {
            // Into the sorted current slot: after every later event, before equal times
            // pushed earlier (they have smaller sequence numbers and pop first).
            let key = e.key();
            let pos = self.current.partition_point(|x| x.key() > key);
            self.current.insert(pos, e);
        } else if s < self.cur + SLOTS {
            self.wheel[(s % SLOTS) as usize].push(e);
            self.in_wheel += 1;
        } else {
            self.far.push(e);
        }
    }

    /// Makes `current` hold the earliest events, if there are any.
    fn fill(&mut self) {
        while self.current.is_empty() && self.len > 0 {
            if self.in_wheel == 0 {
                // Nothing in the next few seconds: jump to the first far event.
                let first = self.far.peek().expect("len > 0 and the wheel is empty");
                self.cur = slot_of(first.at).max(self.cur + 1);
            } else {
                self.cur += 1;
            }
            // Far events the wheel now reaches.
            while let Some(top) = self.far.peek() {
                let s = slot_of(top.at);
                if s >= self.cur + SLOTS {
                    break;
                }
                let e = self.far.pop().expect("peeked");
                if s <= self.cur {
                    self.current.push(e);
                } else {
                    self.wheel[(s % SLOTS) as usize].push(e);
                    self.in_wheel += 1;
                }
            }
            let slot = &mut self.wheel[(self.cur % SLOTS) as usize];
            self.in_wheel -= slot.len();
            // `append` keeps the slot's allocation for its next turn.
            self.current.append(slot);
            self.current
                .sort_unstable_by_key(|e| std::cmp::Reverse(e.key()));
        }
    }

    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        self.fill();
        let e = self.current.pop()?;
        self.len -= 1;
        Some((e.at, e.event))
    }

    /// When the next event is due (moves the wheel forward to it, hence `&mut`).
    pub fn peek_time(&mut self) -> Option<SimTime> {
        self.fill();
        self.current.last().map(|e| e.at)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many events were ever pushed (a cheap work counter for reports).
    pub fn pushed(&self) -> u64 {
        self.next_seq
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_and_fifo_among_ties() {
        let mut q = EventQueue::new();
        q.push(SimTime::from_millis(30), "c");
        q.push(SimTime::from_millis(10), "a1");
        q.push(SimTime::from_millis(20), "b");
        q.push(SimTime::from_millis(10), "a2");
        q.push(SimTime::from_millis(10), "a3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a1", "a2", "a3", "b", "c"]);
    }

    #[test]
    fn many_random_events_come_out_sorted() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = EventQueue::new();
        for i in 0..10_000u32 {
            q.push(SimTime::from_nanos(rng.gen_range(0..1000)), i);
        }
        let mut last = (SimTime::ZERO, 0u32);
        let mut n = 0;
        while let Some((t, i)) = q.pop() {
            if t == last.0 && n > 0 {
                assert!(i > last.1, "ties must keep push order");
            }
            assert!(t >= last.0);
            last = (t, i);
            n += 1;
        }
        assert_eq!(n, 10_000);
    }

    /// Against a plain sorted reference: pushes interleaved with pops, times near and far
    /// (same slot, next slots, past the wheel, far past it), many ties.
    #[test]
    fn matches_a_reference_under_interleaved_pushes_and_pops() {
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeMap;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let mut q = EventQueue::new();
        let mut reference: BTreeMap<(u64, u64), u32> = BTreeMap::new();
        let mut now = 0u64;
        let mut seq = 0u64;
        let mut popped = 0;
        for i in 0..200_000u32 {
            if rng.gen_bool(0.55) {
                let ahead = match rng.gen_range(0..6) {
                    0 => 0,
                    1 => rng.gen_range(0..1_000),
                    2 => rng.gen_range(0..5_000_000),
                    3 => rng.gen_range(0..200_000_000),
                    4 => rng.gen_range(8_000_000_000..9_500_000_000),
                    _ => rng.gen_range(0..60_000_000_000),
                };
                q.push(SimTime::from_nanos(now + ahead), i);
                reference.insert((now + ahead, seq), i);
                seq += 1;
            } else {
                let want = reference.pop_first();
                assert_eq!(
                    q.peek_time(),
                    want.map(|((t, _), _)| SimTime::from_nanos(t))
                );
                let got = q.pop();
                assert_eq!(got, want.map(|((t, _), e)| (SimTime::from_nanos(t), e)));
                if let Some((t, _)) = got {
                    assert!(t.as_nanos() >= now);
                    now = t.as_nanos();
                    popped += 1;
                }
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(((t, _), e)) = reference.pop_first() {
            assert_eq!(q.pop(), Some((SimTime::from_nanos(t), e)));
        }
        assert!(q.pop().is_none() && q.is_empty());
        assert!(popped > 50_000);
    }
}
