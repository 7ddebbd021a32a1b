//! The receive side of one connection: bytes ready for the application, packets that
//! arrived ahead of a gap, the end of the stream, and what we tell the peer about them
//! (the cumulative `ack_nr`, the window, the selective ACK mask). Bounded in bytes (the
//! window we advertise) and in out-of-order slots.

use std::collections::VecDeque;

use crate::config::MAX_SACK_BYTES;
use crate::packet::seq_less;

/// What became of an arriving DATA or FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// It was the next one: delivered, with whatever waiting packets it unblocked.
    /// `filled_gap`: packets were waiting behind it.
    InOrder { filled_gap: bool },
    /// Ahead of a gap: kept (or already kept) until the gap fills.
    Ahead,
    /// Delivered before: the peer missed our acknowledgement.
    Duplicate,
    /// Not kept: too far ahead, past the end of the stream, or no room.
    Dropped,
}

/// A packet waiting for the ones before it.
#[derive(Debug)]
enum Slot {
    Data(Vec<u8>),
    Fin,
}

#[derive(Debug)]
pub(crate) struct ReceiveBuffer {
    /// The last sequence number received in order.
    ack_nr: u16,
    readable: VecDeque<u8>,
    /// `reorder[i]` is sequence number `ack_nr + 1 + i`. Index 0 is always empty (it would
    /// have been delivered), so a non-empty queue means there is a gap.
    reorder: VecDeque<Option<Slot>>,
    reorder_bytes: usize,
    eof_seq: Option<u16>,
    capacity: usize,
    max_slots: usize,
}

impl ReceiveBuffer {
    /// `capacity`: bytes held at most (the advertised window); `max_slots`: how far ahead
    /// of the gap a packet may be kept.
    pub fn new(capacity: usize, max_slots: usize) -> ReceiveBuffer {
        ReceiveBuffer {
            ack_nr: 0,
            readable: VecDeque::new(),
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            eof_seq: None,
            capacity,
            max_slots,
        }
    }

    pub fn ack_nr(&self) -> u16 {
        self.ack_nr
    }

    /// The handshake says where the peer's numbering starts.
    pub fn start_after(&mut self, seq: u16) {
        self.ack_nr = seq;
    }

    /// Bytes we can still take: the window we advertise.
    pub fn window(&self) -> usize {
        self.capacity.saturating_sub(self.held())
    }

    /// Bytes held, read-ready and out of order.
    pub fn held(&self) -> usize {
        self.readable.len() + self.reorder_bytes
    }

    pub fn readable(&self) -> usize {
        self.readable.len()
    }

    /// The peer's FIN arrived and everything before it too.
    pub fn eof_reached(&self) -> bool {
        self.eof_seq == Some(self.ack_nr)
    }

    /// Something is missing before packets we hold: acknowledgements need a selective ACK.
    pub fn has_gap(&self) -> bool {
        !self.reorder.is_empty()
    }

    /// Takes in a DATA (or, with `fin`, a FIN) with sequence number `seq`. A payload is
    /// kept only if it fits in the window and in `budget` (the endpoint's total).
    pub fn arrive(&mut self, seq: u16, fin: bool, payload: &[u8], budget: usize) -> Arrival {
        let next = self.ack_nr.wrapping_add(1);
        if self
            .eof_seq
            .is_some_and(|eof| seq_less(eof, seq) || (fin && eof != seq))
        {
            return Arrival::Dropped; // past the end of the stream, or a second end
        }
        if seq_less(seq, next) {
            return Arrival::Duplicate;
        }
        let offset = seq.wrapping_sub(next) as usize;
        if offset >= self.max_slots {
            return Arrival::Dropped;
        }
        if fin {
            self.eof_seq = Some(seq);
            // Nothing after the FIN will ever be delivered.
            for slot in self.reorder.drain(offset.min(self.reorder.len())..) {
                if let Some(Slot::Data(d)) = slot {
                    self.reorder_bytes -= d.len();
                }
            }
        } else if payload.len() > self.window().min(budget) {
            return Arrival::Dropped;
        }
        if offset == 0 {
            if !fin {
                self.readable.extend(payload);
            }
            self.ack_nr = seq;
            self.reorder.pop_front();
            let filled_gap = !self.reorder.is_empty();
            self.deliver_waiting();
            return Arrival::InOrder { filled_gap };
        }
        if self.reorder.len() <= offset {
            self.reorder.resize_with(offset + 1, || None);
        }
        if self.reorder[offset].is_none() {
            self.reorder[offset] = Some(if fin {
                Slot::Fin
            } else {
                self.reorder_bytes += payload.len();
                Slot::Data(payload.to_vec())
            });
        }
        Arrival::Ahead
    }

    fn deliver_waiting(&mut self) {
        while let Some(Some(_)) = self.reorder.front() {
            let Some(Some(slot)) = self.reorder.pop_front() else {
                break;
            };
            self.ack_nr = self.ack_nr.wrapping_add(1);
            match slot {
                Slot::Data(d) => {
                    self.reorder_bytes -= d.len();
                    self.readable.extend(&d);
                }
                Slot::Fin => debug_assert!(self.reorder.is_empty(), "nothing after a FIN"),
            }
        }
    }

    /// Copies read-ready bytes into `buf`; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.readable.len());
        let (a, b) = self.readable.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.readable.drain(..n);
        n
    }

    /// Writes the selective ACK bitmask into `mask` and returns its length (a multiple of
    /// 4; 0 when there is no gap). Bit `i` is `ack_nr + 2 + i`, that is `reorder[i + 1]`.
    pub fn sack_mask(&self, mask: &mut [u8; MAX_SACK_BYTES]) -> usize {
        *mask = [0; MAX_SACK_BYTES];
        let mut len = 0;
        let held = self.reorder.iter().skip(1).take(MAX_SACK_BYTES * 8);
        for (i, slot) in held.enumerate() {
            if slot.is_some() {
                mask[i / 8] |= 1 << (i % 8);
                len = (i / 8 + 4) & !3;
            }
        }
        len
    }

    /// The byte count agrees with the slots (checked in debug builds).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let bytes: usize = self
                .reorder
                .iter()
                .map(|s| match s {
                    Some(Slot::Data(d)) => d.len(),
                    _ => 0,
                })
                .sum();
            debug_assert_eq!(bytes, self.reorder_bytes, "reordered bytes");
            debug_assert!(self.reorder.front().is_none_or(Option::is_none));
            debug_assert!(self.reorder.len() <= self.max_slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> ReceiveBuffer {
        let mut r = ReceiveBuffer::new(10_000, 16);
        r.start_after(0xfffd); // the numbers wrap during the tests
        r
    }

    fn read_all(r: &mut ReceiveBuffer) -> Vec<u8> {
        let mut buf = vec![0u8; 100_000];
        let n = r.read(&mut buf);
        buf.truncate(n);
        buf
    }

    #[test]
    fn in_order_across_the_wrap() {
        let mut r = buffer();
        for (seq, byte) in [(0xfffe, b'a'), (0xffff, b'b'), (0, b'c'), (1, b'd')] {
            assert_eq!(
                r.arrive(seq, false, &[byte], usize::MAX),
                Arrival::InOrder { filled_gap: false }
            );
        }
        assert_eq!(read_all(&mut r), b"abcd");
        assert_eq!(r.ack_nr(), 1);
    }

    #[test]
    fn out_of_order_waits_for_the_gap_then_delivers() {
        let mut r = buffer();
        assert_eq!(r.arrive(0, false, b"c", usize::MAX), Arrival::Ahead);
        assert_eq!(r.arrive(0xffff, false, b"b", usize::MAX), Arrival::Ahead);
        assert_eq!(
            r.arrive(0xffff, false, b"b", usize::MAX),
            Arrival::Ahead,
            "kept once"
        );
        assert_eq!(r.readable(), 0);
        assert_eq!(r.held(), 2);
        let mut mask = [0; MAX_SACK_BYTES];
        assert_eq!(r.sack_mask(&mut mask), 4);
        assert_eq!(mask[0], 0b11, "0xffff and 0 are ack_nr + 2 and + 3");
        assert_eq!(
            r.arrive(0xfffe, false, b"a", usize::MAX),
            Arrival::InOrder { filled_gap: true }
        );
        assert_eq!(read_all(&mut r), b"abc");
        assert!(!r.has_gap());
        assert_eq!(r.sack_mask(&mut mask), 0);
    }

    #[test]
    fn duplicates_too_far_and_no_room_are_not_kept() {
        let mut r = buffer();
        r.arrive(0xfffe, false, b"a", usize::MAX);
        assert_eq!(
            r.arrive(0xfffe, false, b"a", usize::MAX),
            Arrival::Duplicate
        );
        assert_eq!(
            r.arrive(0xfff0, false, b"old", usize::MAX),
            Arrival::Duplicate
        );
        assert_eq!(
            r.arrive(0xfffe_u16.wrapping_add(17), false, b"far", usize::MAX),
            Arrival::Dropped
        );
        assert_eq!(
            r.arrive(0xffff, false, &[0; 10_001], usize::MAX),
            Arrival::Dropped,
            "window"
        );
        assert_eq!(
            r.arrive(0xffff, false, &[0; 100], 99),
            Arrival::Dropped,
            "endpoint budget"
        );
        assert_eq!(r.held(), 1);
        assert_eq!(r.window(), 9_999);
    }

    #[test]
    fn fin_ends_the_stream_even_when_it_overtakes_data() {
        let mut r = buffer();
        assert_eq!(r.arrive(0xffff, false, b"late", usize::MAX), Arrival::Ahead);
        assert_eq!(r.arrive(0, true, &[], usize::MAX), Arrival::Ahead);
        assert_eq!(r.arrive(1, false, b"after", usize::MAX), Arrival::Dropped);
        assert_eq!(
            r.arrive(5, true, &[], usize::MAX),
            Arrival::Dropped,
            "a second end"
        );
        assert!(!r.eof_reached());
        assert_eq!(
            r.arrive(0xfffe, false, b"on time ", usize::MAX),
            Arrival::InOrder { filled_gap: true }
        );
        assert!(r.eof_reached());
        assert_eq!(read_all(&mut r), b"on time late");
    }

    #[test]
    fn a_fin_drops_what_was_kept_beyond_it() {
        let mut r = buffer();
        r.arrive(1, false, b"beyond", usize::MAX);
        r.arrive(0, true, &[], usize::MAX);
        assert_eq!(r.held(), 0);
        r.check_invariants();
    }
}
