//! The send side of one connection: bytes written but not yet packetised, the packets in
//! flight (sent, not cumulatively acknowledged), and what acknowledgements, selective
//! ACKs and timeouts do to them. Decides nothing about *when* to send: the connection asks
//! it for the next packet to (re)send and checks the windows itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::MAX_IN_FLIGHT_PACKETS;
use crate::packet::{seq_less, PacketType};

/// Packets selectively acknowledged after a missing one, and sent after it, that make it
/// lost (BEP 29 and TCP: 3).
const SACKED_AFTER_TO_LOSE: usize = 3;

/// A packet we sent and that is not cumulatively acknowledged yet.
#[derive(Debug)]
struct Outgoing {
    seq: u16,
    ty: PacketType,
    payload: Vec<u8>,
    sent_at: Instant,
    /// Order of the last transmission among this connection's: "sent after" without ties.
    sent_order: u64,
    transmissions: u32,
    /// The peer holds it (selective ACK): never resent.
    sacked: bool,
    /// Its bytes count in `bytes_in_flight`. False before its first transmission, once it
    /// is declared lost (until it is resent), and once it is sacked.
    counted: bool,
}

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AckOutcome {
    /// The cumulative acknowledgement moved.
    pub advanced: bool,
    /// Payload bytes newly known to have arrived (cumulatively or selectively).
    pub newly_acked: usize,
    /// A round trip measured on the newest packet acknowledged that was sent only once.
    pub rtt: Option<Duration>,
    /// The first packet this declared lost.
    pub lost: Option<u16>,
    pub fin_acked: bool,
    /// A resent packet was acknowledged too soon after its resend for the resend to be
    /// what arrived: the original did, and declaring it lost was a mistake (reordering).
    pub spurious: bool,
}

#[derive(Debug)]
pub(crate) struct SendBuffer {
    /// Written by the application, not yet in a packet.
    unsent: VecDeque<u8>,
    in_flight: VecDeque<Outgoing>,
    /// The sequence number of the next packet.
    next_seq: u16,
    /// Payload bytes of `in_flight`.
    unacked_bytes: usize,
    /// Payload bytes of the packets in `in_flight` that are `counted`.
    bytes_in_flight: usize,
    /// Packets in `in_flight` neither counted nor sacked: waiting to be (re)sent. Lets
    /// `flush` skip the scan of a large window when nothing needs resending.
    to_resend: usize,
    transmissions: u64,
    capacity: usize,
}

impl SendBuffer {
    /// `capacity`: bytes held at most, unsent and unacknowledged together.
    pub fn new(capacity: usize, first_seq: u16) -> SendBuffer {
        SendBuffer {
            unsent: VecDeque::new(),
            in_flight: VecDeque::new(),
            next_seq: first_seq,
            unacked_bytes: 0,
            bytes_in_flight: 0,
            to_resend: 0,
            transmissions: 0,
            capacity,
        }
    }

    /// The sequence number the next packet will carry (STATE packets carry it too).
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// Room for `write`.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.held())
    }

    /// Bytes held: unsent and unacknowledged.
    pub fn held(&self) -> usize {
        self.unsent.len() + self.unacked_bytes
    }

    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    pub fn has_unacked(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Only a FIN (no data) waits for its acknowledgement.
    pub fn only_fin_unacked(&self) -> bool {
        self.in_flight.len() == 1 && self.in_flight[0].ty == PacketType::Fin
    }

    /// Whether another packet may be added (sequence numbers must stay unambiguous).
    pub fn can_add_packet(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT_PACKETS
    }

    /// Takes what fits of `data`; returns how much.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = self.room().min(data.len());
        self.unsent.extend(&data[..n]);
        n
    }

    /// Makes a packet of type `ty` with the next `payload_len` unsent bytes (none for SYN
    /// and FIN); returns its index, to be sent with `transmit`.
    pub fn add_packet(&mut self, now: Instant, ty: PacketType, payload_len: usize) -> usize {
        let len = payload_len.min(self.unsent.len());
        let mut payload = Vec::with_capacity(len);
        let (a, b) = self.unsent.as_slices();
        let from_a = len.min(a.len());
        payload.extend_from_slice(&a[..from_a]);
        payload.extend_from_slice(&b[..len - from_a]);
        self.unsent.drain(..len);
        self.unacked_bytes += len;
        self.to_resend += 1; // until its first transmission
        self.in_flight.push_back(Outgoing {
            seq: self.next_seq,
            ty,
            payload,
            sent_at: now,
            sent_order: 0,
            transmissions: 0,
            sacked: false,
            counted: false,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
        self.in_flight.len() - 1
    }

    /// The oldest packet waiting to be (re)sent at or after `from`: (index, payload size).
    pub fn next_to_resend(&self, from: usize) -> Option<(usize, usize)> {
        if self.to_resend == 0 {
            return None;
        }
        (from..self.in_flight.len())
            .find(|&i| !self.in_flight[i].counted && !self.in_flight[i].sacked)
            .map(|i| (i, self.in_flight[i].payload.len()))
    }

    pub fn seq_of(&self, index: usize) -> u16 {
        self.in_flight[index].seq
    }

    /// Records a transmission of the packet at `index`; returns what to put on the wire.
    pub fn transmit(&mut self, now: Instant, index: usize) -> (u16, PacketType, &[u8]) {
        self.transmissions += 1;
        let p = &mut self.in_flight[index];
        p.sent_at = now;
        p.sent_order = self.transmissions;
        p.transmissions += 1;
        if !p.counted {
            p.counted = true;
            self.bytes_in_flight += p.payload.len();
            self.to_resend -= 1;
        }
        (p.seq, p.ty, &p.payload)
    }

    /// Applies the cumulative acknowledgement `ack` and the selective ACK bitmask if any.
    /// `None` if `ack` is older than what was acknowledged before or names a packet never
    /// sent: such an acknowledgement is ignored.
    ///
    /// A packet overtaken by three selectively acknowledged ones is lost only once it has
    /// been out for `reorder_window` as well (RACK's rule): reordering is not loss. An
    /// acknowledgement sooner than half of `min_rtt` after a resend is the original's.
    pub fn on_ack(
        &mut self,
        now: Instant,
        ack: u16,
        sack: Option<&[u8]>,
        reorder_window: Duration,
        min_rtt: Duration,
    ) -> Option<AckOutcome> {
        let first = self.in_flight.front()?.seq;
        let last_sent = self.next_seq.wrapping_sub(1);
        if seq_less(ack, first.wrapping_sub(1)) || seq_less(last_sent, ack) {
            return None;
        }
        let mut outcome = AckOutcome::default();
        while self
            .in_flight
            .front()
            .is_some_and(|p| !seq_less(ack, p.seq))
        {
            let Some(p) = self.in_flight.pop_front() else {
                break;
            };
            outcome.advanced = true;
            self.unacked_bytes -= p.payload.len();
            if p.counted {
                self.bytes_in_flight -= p.payload.len();
            } else if !p.sacked {
                self.to_resend -= 1;
            }
            if !p.sacked {
                outcome.newly_acked += p.payload.len();
                let since = now.saturating_duration_since(p.sent_at);
                if p.transmissions == 1 {
                    outcome.rtt = Some(since);
                } else if since < min_rtt / 2 {
                    outcome.spurious = true;
                }
            }
            outcome.fin_acked |= p.ty == PacketType::Fin;
        }
        if let Some(mask) = sack {
            self.apply_sack(now, ack, mask, (reorder_window, min_rtt), &mut outcome);
        }
        Some(outcome)
    }

    fn apply_sack(
        &mut self,
        now: Instant,
        ack: u16,
        mask: &[u8],
        (reorder_window, min_rtt): (Duration, Duration),
        outcome: &mut AckOutcome,
    ) {
        let Some(first) = self.in_flight.front().map(|p| p.seq) else {
            return;
        };
        for (byte_index, byte) in mask.iter().enumerate() {
            for bit in (0..8).filter(|bit| byte & (1 << bit) != 0) {
                let seq = ack.wrapping_add(2 + (byte_index * 8 + bit) as u16);
                let index = seq.wrapping_sub(first) as usize;
                let Some(p) = self.in_flight.get_mut(index) else {
                    continue;
                };
                if p.sacked {
                    continue;
                }
                p.sacked = true;
                if p.counted {
                    p.counted = false;
                    self.bytes_in_flight -= p.payload.len();
                } else {
                    self.to_resend -= 1;
                }
                outcome.newly_acked += p.payload.len();
                let since = now.saturating_duration_since(p.sent_at);
                if p.transmissions == 1 {
                    outcome.rtt = Some(since);
                } else if since < min_rtt / 2 {
                    outcome.spurious = true;
                }
            }
        }
        // Walk back from the newest: a packet is lost when at least three packets sent
        // after it (in transmission order, so a packet just resent is not lost again)
        // have arrived. Keep the three latest transmission orders seen, latest first.
        let mut latest_sacked = [None::<u64>; SACKED_AFTER_TO_LOSE];
        for p in self.in_flight.iter_mut().rev() {
            if p.sacked {
                let mut order = Some(p.sent_order);
                for slot in latest_sacked.iter_mut() {
                    if order > *slot {
                        std::mem::swap(slot, &mut order);
                    }
                }
                continue;
            }
            let overtaken =
                latest_sacked[SACKED_AFTER_TO_LOSE - 1].is_some_and(|o| o > p.sent_order);
            let out_long_enough = now.saturating_duration_since(p.sent_at) >= reorder_window;
            if p.counted && overtaken && out_long_enough {
                p.counted = false;
                self.bytes_in_flight -= p.payload.len();
                self.to_resend += 1;
                outcome.lost = Some(p.seq);
            }
        }
    }

    /// Enough duplicate acknowledgements: the oldest packet is lost. Returns it, unless it
    /// was already waiting to be resent.
    pub fn lose_oldest(&mut self) -> Option<u16> {
        let p = self.in_flight.front_mut()?;
        if !p.counted || p.sacked {
            return None;
        }
        p.counted = false;
        self.bytes_in_flight -= p.payload.len();
        self.to_resend += 1;
        Some(p.seq)
    }

    /// The retransmission timer fired: everything not known to have arrived is lost.
    pub fn lose_all(&mut self) {
        for p in self.in_flight.iter_mut().filter(|p| p.counted) {
            p.counted = false;
            self.to_resend += 1;
        }
        self.bytes_in_flight = 0;
    }

    /// The counters agree with the packets (checked in debug builds).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let f = &self.in_flight;
            let waiting = f.iter().filter(|p| !p.counted && !p.sacked).count();
            let counted: usize = f
                .iter()
                .filter(|p| p.counted)
                .map(|p| p.payload.len())
                .sum();
            let unacked: usize = f.iter().map(|p| p.payload.len()).sum();
            debug_assert_eq!(waiting, self.to_resend, "packets waiting to be sent");
            debug_assert_eq!(counted, self.bytes_in_flight, "bytes in flight");
            debug_assert_eq!(unacked, self.unacked_bytes, "unacknowledged bytes");
            debug_assert!(f.iter().all(|p| !(p.counted && p.sacked)));
            debug_assert!(f
                .iter()
                .enumerate()
                .all(|(i, p)| p.seq == f[0].seq.wrapping_add(i as u16)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    /// Ten 100-byte packets sent, numbered from 0xfffa (they wrap).
    fn ten_sent(now: Instant) -> SendBuffer {
        let mut s = SendBuffer::new(10_000, 0xfffa);
        assert_eq!(s.write(&[7u8; 1000]), 1000);
        for _ in 0..10 {
            let i = s.add_packet(now, PacketType::Data, 100);
            s.transmit(now, i);
        }
        s
    }

    #[test]
    fn cumulative_ack_frees_and_measures() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        assert_eq!(s.bytes_in_flight(), 1000);
        let later = t0 + Duration::from_millis(30);
        let out = s
            .on_ack(later, 0xfffa_u16.wrapping_add(3), None, Duration::ZERO, RTT)
            .unwrap();
        assert!(out.advanced);
        assert_eq!(out.newly_acked, 400);
        assert_eq!(out.rtt, Some(Duration::from_millis(30)));
        assert_eq!(s.bytes_in_flight(), 600);
        assert_eq!(s.room(), 10_000 - 600);
        s.check_invariants();
    }

    #[test]
    fn stale_and_impossible_acks_are_ignored() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        s.on_ack(t0, 0xfffc, None, Duration::ZERO, RTT).unwrap();
        assert_eq!(
            s.on_ack(t0, 0xfffa, None, Duration::ZERO, RTT),
            None,
            "older than what was acknowledged"
        );
        assert_eq!(
            s.on_ack(t0, 0xfffa_u16.wrapping_add(10), None, Duration::ZERO, RTT),
            None,
            "never sent"
        );
        assert!(
            s.on_ack(t0, 0xfffc, None, Duration::ZERO, RTT)
                .is_some_and(|o| !o.advanced),
            "a duplicate"
        );
    }

    #[test]
    fn three_later_packets_sacked_make_the_hole_lost_once() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        let hole = 0xfffa;
        // ack_nr = hole - 1; bits 0..2 are hole + 1 ..= hole + 3.
        let out = s
            .on_ack(t0, hole - 1, Some(&[0b111, 0, 0, 0]), Duration::ZERO, RTT)
            .unwrap();
        assert_eq!(out.newly_acked, 300);
        assert_eq!(out.lost, Some(hole));
        assert_eq!(s.next_to_resend(0), Some((0, 100)));
        let (seq, ..) = s.transmit(t0, 0);
        assert_eq!(seq, hole);
        // The same news again: it was resent after those three, so not lost again.
        let out = s
            .on_ack(t0, hole - 1, Some(&[0b111, 0, 0, 0]), Duration::ZERO, RTT)
            .unwrap();
        assert_eq!(out.lost, None);
        s.check_invariants();
    }

    #[test]
    fn a_hole_younger_than_the_reorder_window_is_not_lost_yet() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        let window = Duration::from_millis(25);
        let sack = Some(&[0b111, 0, 0, 0][..]);
        let out = s
            .on_ack(t0 + window / 2, 0xfff9, sack, window, RTT)
            .unwrap();
        assert_eq!(out.lost, None, "maybe just reordered");
        let out = s.on_ack(t0 + window, 0xfff9, sack, window, RTT).unwrap();
        assert_eq!(out.lost, Some(0xfffa));
    }

    #[test]
    fn an_acknowledgement_right_after_a_resend_shows_the_resend_was_spurious() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        s.on_ack(t0, 0xfff9, Some(&[0b111, 0, 0, 0]), Duration::ZERO, RTT)
            .unwrap();
        let t1 = t0 + RTT;
        s.transmit(t1, 0); // resent
                           // Acknowledged 10 ms later: the original arrived (a resend needs a round trip).
        let out = s
            .on_ack(
                t1 + Duration::from_millis(10),
                0xfffa,
                None,
                Duration::ZERO,
                RTT,
            )
            .unwrap();
        assert!(out.spurious);
    }

    #[test]
    fn two_later_packets_are_not_enough() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        let out = s
            .on_ack(t0, 0xfff9, Some(&[0b110, 0, 0, 0]), Duration::ZERO, RTT)
            .unwrap();
        assert_eq!(out.lost, None);
    }

    #[test]
    fn a_timeout_loses_everything_not_sacked() {
        let t0 = Instant::now();
        let mut s = ten_sent(t0);
        s.on_ack(t0, 0xfff9, Some(&[0b1, 0, 0, 0]), Duration::ZERO, RTT)
            .unwrap();
        s.lose_all();
        assert_eq!(s.bytes_in_flight(), 0);
        let mut resend = vec![];
        let mut from = 0;
        while let Some((i, _)) = s.next_to_resend(from) {
            resend.push(s.seq_of(i));
            from = i + 1;
        }
        assert_eq!(resend.len(), 9, "all but the sacked one");
        assert!(!resend.contains(&0xfffb));
        s.check_invariants();
    }

    #[test]
    fn write_is_bounded() {
        let mut s = SendBuffer::new(1000, 1);
        assert_eq!(s.write(&[0u8; 600]), 600);
        assert_eq!(s.write(&[0u8; 600]), 400);
        assert_eq!(s.room(), 0);
        let i = s.add_packet(Instant::now(), PacketType::Data, 300);
        s.transmit(Instant::now(), i);
        assert_eq!(s.room(), 0, "sent but unacknowledged still counts");
        s.on_ack(Instant::now(), 1, None, Duration::ZERO, RTT)
            .unwrap();
        assert_eq!(s.room(), 300);
    }
}
