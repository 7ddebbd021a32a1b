//! One uTP connection: handshake, reliable ordered delivery, selective ACK, retransmission,
//! flow and congestion control, FIN and RESET. It knows its peer's address and its own
//! [`ConnId`], and writes datagrams and events into queues the endpoint owns.
//!
//! Sequence numbers: SYN, DATA and FIN consume one; STATE carries the next one without
//! consuming it. `ack_nr` is the last sequence number received in order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, MAX_IN_FLIGHT_PACKETS, MAX_SACK_BYTES};
use crate::endpoint::{CloseReason, ConnId, Error, Event, Transmit};
use crate::ledbat::Ledbat;
use crate::packet::{encode, seq_less, Header, Packet, PacketType, HEADER_LEN};
use crate::recv::{Arrival, ReceiveBuffer};
use crate::rtt::Rtt;

/// Duplicate acknowledgements that make us resend the oldest packet (BEP 29: 3).
const DUPLICATE_ACKS_BEFORE_RESEND: u32 = 3;
/// Packets acknowledged (selectively) after a missing one, sent after it, that make it lost.
const SACKED_AFTER_TO_LOSE: usize = 3;

/// Microsecond timestamps for headers: a random offset plus the time since the endpoint's
/// first instant (the value is only ever compared with itself, wrapping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub epoch: Instant,
    pub offset: u32,
}

impl Clock {
    fn micros(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.epoch).as_micros() as u32;
        self.offset.wrapping_add(elapsed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// We sent a SYN and wait for its acknowledgement.
    SynSent,
    /// A SYN arrived and we answered; the application does not know about it until the
    /// initiator's next packet acknowledges our (random) sequence number.
    SynReceived,
    Connected,
    /// Both directions are finished; we linger to re-acknowledge a retransmitted FIN.
    TimeWait {
        until: Instant,
    },
    /// To be removed from the endpoint.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fin {
    NotRequested,
    /// `close` was called; the FIN goes out once the send buffer is packetised.
    Queued,
    Sent,
    Acked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckDue {
    No,
    At(Instant),
    Now,
}

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
    /// Its bytes count in `bytes_in_flight`. False once it is declared lost (and until it
    /// is resent) or sacked.
    counted: bool,
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub id: ConnId,
    pub addr: SocketAddr,
    pub recv_id: u16,
    pub send_id: u16,
    pub state: State,
    /// The endpoint's timer index entry for this connection (the endpoint keeps it).
    pub timer_entry: Option<Instant>,
    /// Whether the application knows about this connection (events are only sent then).
    announced: bool,
    close_reason: Option<CloseReason>,
    cfg: Arc<Config>,
    clock: Clock,
    created: Instant,
    last_recv: Instant,
    last_send: Instant,

    // sending
    seq_nr: u16,
    send_buf: VecDeque<u8>,
    in_flight: VecDeque<Outgoing>,
    /// Payload bytes of `in_flight` (the send buffer holds these and `send_buf`).
    unacked_bytes: usize,
    /// Payload bytes of the packets in `in_flight` that are `counted`.
    bytes_in_flight: usize,
    /// Packets in `in_flight` neither counted nor sacked: waiting to be (re)sent. Lets
    /// `flush` skip the scan of a large window when nothing needs resending.
    to_resend: usize,
    fin: Fin,
    peer_wnd: usize,
    cc: Ledbat,
    rtt: Rtt,
    rto_deadline: Option<Instant>,
    timeouts: u32,
    dup_acks: u32,
    /// Losses of packets before this sequence number were part of the last window we
    /// already halved for.
    recovery_until: Option<u16>,
    nagle_deadline: Option<Instant>,
    write_blocked: bool,
    /// A packet just declared lost: resent at once, whatever the window (RFC 5681's fast
    /// retransmit; the window was just halved and may be below what is in flight).
    fast_resend: Option<u16>,
    transmissions: u64,

    // receiving
    recv: ReceiveBuffer,
    readable_signalled: bool,
    /// Our clock minus the timestamp of the last packet received: echoed to the peer.
    reply_micro: u32,
    ack_due: AckDue,
    unacked_received: u32,
}

impl Connection {
    fn new(
        id: ConnId,
        addr: SocketAddr,
        now: Instant,
        cfg: Arc<Config>,
        clock: Clock,
        state: State,
        (recv_id, send_id, seq_nr): (u16, u16, u16),
    ) -> Connection {
        let mss = cfg.max_payload();
        let recv = ReceiveBuffer::new(cfg.recv_buffer, cfg.max_reorder_packets);
        Connection {
            id,
            addr,
            recv_id,
            send_id,
            state,
            timer_entry: None,
            announced: state == State::SynSent,
            close_reason: None,
            cc: Ledbat::new(mss, cfg.max_cwnd, cfg.target_delay),
            rtt: Rtt::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            peer_wnd: mss,
            cfg,
            clock,
            created: now,
            last_recv: now,
            last_send: now,
            seq_nr,
            send_buf: VecDeque::new(),
            in_flight: VecDeque::new(),
            unacked_bytes: 0,
            bytes_in_flight: 0,
            to_resend: 0,
            fin: Fin::NotRequested,
            rto_deadline: None,
            timeouts: 0,
            dup_acks: 0,
            recovery_until: None,
            nagle_deadline: None,
            write_blocked: false,
            fast_resend: None,
            transmissions: 0,
            recv,
            readable_signalled: false,
            reply_micro: 0,
            ack_due: AckDue::No,
            unacked_received: 0,
        }
    }

    /// Opens a connection: the SYN carries `recv_id`, we send with `recv_id + 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        id: ConnId,
        addr: SocketAddr,
        now: Instant,
        cfg: Arc<Config>,
        clock: Clock,
        recv_id: u16,
        initial_seq: u16,
        out: &mut Output<'_>,
    ) -> Connection {
        let ids = (recv_id, recv_id.wrapping_add(1), initial_seq);
        let mut c = Connection::new(id, addr, now, cfg, clock, State::SynSent, ids);
        c.push_packet(now, PacketType::Syn, Vec::new());
        c.flush(now, out);
        c
    }

    /// Answers a SYN: we receive on its id + 1 and send on its id (BEP 29).
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        id: ConnId,
        addr: SocketAddr,
        now: Instant,
        cfg: Arc<Config>,
        clock: Clock,
        syn: &Header,
        initial_seq: u16,
        out: &mut Output<'_>,
    ) -> Connection {
        let ids = (
            syn.connection_id.wrapping_add(1),
            syn.connection_id,
            initial_seq,
        );
        let mut c = Connection::new(id, addr, now, cfg, clock, State::SynReceived, ids);
        c.recv.start_after(syn.seq_nr);
        c.peer_wnd = syn.wnd_size as usize;
        c.reply_micro = c.clock.micros(now).wrapping_sub(syn.timestamp_us);
        c.ack_due = AckDue::Now;
        c.flush(now, out);
        c
    }

    pub fn is_pending_incoming(&self) -> bool {
        self.state == State::SynReceived
    }

    pub fn is_announced(&self) -> bool {
        self.announced
    }

    /// Why it closed, if it did and the application was told.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Bytes held on the receive side (read-ready and out of order).
    pub fn recv_bytes(&self) -> usize {
        self.recv.held()
    }

    /// Bytes this connection holds for the application (send and receive side).
    pub fn buffered_bytes(&self) -> usize {
        self.send_buf.len() + self.unacked_bytes + self.recv.held()
    }

    pub fn queuing_delay(&self) -> Option<std::time::Duration> {
        self.cc.queuing_delay()
    }

    pub fn congestion_window(&self) -> usize {
        self.cc.window()
    }

    pub fn srtt(&self) -> Option<std::time::Duration> {
        self.rtt.srtt()
    }

    // -----------------------------------------------------------------------------------
    // application side

    pub fn write(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut Output<'_>,
    ) -> Result<usize, Error> {
        if self.fin != Fin::NotRequested || !matches!(self.state, State::SynSent | State::Connected)
        {
            return Err(Error::Closed);
        }
        let room = self.send_room();
        let n = room.min(data.len());
        if n < data.len() {
            self.write_blocked = true;
        }
        if n == 0 && !data.is_empty() {
            return Err(Error::WouldBlock);
        }
        self.send_buf.extend(&data[..n]);
        self.flush(now, out);
        Ok(n)
    }

    pub fn read(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut Output<'_>,
    ) -> Result<usize, Error> {
        if self.recv.readable() == 0 {
            self.readable_signalled = false;
            return if self.recv.eof_reached() {
                Ok(0)
            } else if matches!(self.state, State::Connected | State::SynSent) {
                Err(Error::WouldBlock)
            } else {
                Err(Error::Closed)
            };
        }
        let window_before = self.recv.window();
        let n = self.recv.read(buf);
        self.readable_signalled = self.recv.readable() > 0;
        // The peer may be stalled on a window too small for a packet: tell it at once.
        let mss = self.cfg.max_payload();
        if window_before < mss && self.recv.window() >= mss {
            self.ack_due = AckDue::Now;
        }
        self.check_done(now, out);
        self.flush(now, out);
        Ok(n)
    }

    /// Graceful close: a FIN follows the data already written.
    pub fn close(&mut self, now: Instant, out: &mut Output<'_>) {
        if self.fin == Fin::NotRequested {
            self.fin = Fin::Queued;
        }
        self.flush(now, out);
    }

    /// Abortive close: a RESET, and the connection is gone (no event).
    pub fn reset(&mut self, now: Instant, out: &mut Output<'_>) {
        if !matches!(self.state, State::Closed | State::TimeWait { .. }) {
            self.send_control(now, PacketType::Reset, out);
        }
        self.state = State::Closed;
    }

    fn send_room(&self) -> usize {
        self.cfg
            .send_buffer
            .saturating_sub(self.send_buf.len() + self.unacked_bytes)
    }

    // -----------------------------------------------------------------------------------
    // network side

    pub fn handle_packet(&mut self, now: Instant, p: &Packet<'_>, out: &mut Output<'_>) {
        let h = &p.header;
        match self.state {
            State::Closed => return,
            State::TimeWait { .. } => {
                if matches!(h.ty, PacketType::Fin | PacketType::Data) {
                    self.send_control(now, PacketType::State, out);
                }
                return;
            }
            _ => {}
        }
        if h.ty == PacketType::Reset {
            // A peer that already acknowledged all our data and finished its own stream
            // may have forgotten us while our FIN's acknowledgement was lost: that is done.
            let only_fin_unacked =
                self.fin == Fin::Sent && self.in_flight.len() == 1 && self.unacked_bytes == 0;
            if only_fin_unacked && self.recv.eof_reached() && self.recv.readable() == 0 {
                self.close_with(CloseReason::Done, out);
            } else {
                self.close_with(CloseReason::Reset, out);
            }
            return;
        }
        match (self.state, h.ty) {
            (State::SynSent, PacketType::State | PacketType::Data | PacketType::Fin) => {
                if h.ack_nr != self.seq_nr.wrapping_sub(1) {
                    return;
                }
                // The acceptor's STATE carries the sequence number its first DATA will use
                // (and a DATA that overtook a lost STATE is that first one).
                self.recv.start_after(h.seq_nr.wrapping_sub(1));
                self.state = State::Connected;
                self.push_event(out, Event::Connected(self.id));
            }
            (State::SynSent, _) => return,
            (State::SynReceived, PacketType::Syn) | (State::Connected, PacketType::Syn) => {
                // Our answer was lost: the initiator retried.
                self.ack_due = AckDue::Now;
                self.flush(now, out);
                return;
            }
            (State::SynReceived, _) => {
                // Only a peer that saw our random sequence number can acknowledge it: this
                // is what keeps spoofed SYNs away from the application.
                if h.ack_nr != self.seq_nr.wrapping_sub(1) {
                    return;
                }
                self.state = State::Connected;
                self.announced = true;
                self.push_event(
                    out,
                    Event::Incoming {
                        conn: self.id,
                        addr: self.addr,
                    },
                );
            }
            _ => {}
        }

        self.last_recv = now;
        self.reply_micro = self.clock.micros(now).wrapping_sub(h.timestamp_us);
        let window_changed = self.peer_wnd != h.wnd_size as usize;
        self.peer_wnd = h.wnd_size as usize;
        if h.timestamp_diff_us != 0 {
            self.cc.on_delay_sample(now, h.timestamp_diff_us);
        }
        // A window update is not a duplicate acknowledgement.
        let pure_ack = h.ty == PacketType::State && !window_changed;
        self.on_ack(now, h.ack_nr, p.selective_ack, pure_ack, out);
        if matches!(h.ty, PacketType::Data | PacketType::Fin) {
            self.on_data(h.seq_nr, h.ty, p.payload, out);
        }
        self.check_done(now, out);
        self.flush(now, out);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        ack: u16,
        sack: Option<&[u8]>,
        pure_ack: bool,
        out: &mut Output<'_>,
    ) {
        let Some(first) = self.in_flight.front().map(|p| p.seq) else {
            return;
        };
        let last_sent = self.seq_nr.wrapping_sub(1);
        if seq_less(ack, first.wrapping_sub(1)) || seq_less(last_sent, ack) {
            return; // an old acknowledgement, or one for something we never sent
        }
        let flight_before = self.bytes_in_flight;
        let mut newly_acked = 0;
        let mut advanced = false;
        while let Some(p) = self.in_flight.front() {
            if seq_less(ack, p.seq) {
                break;
            }
            let Some(p) = self.in_flight.pop_front() else {
                break;
            };
            advanced = true;
            self.unacked_bytes -= p.payload.len();
            if p.counted {
                self.bytes_in_flight -= p.payload.len();
            } else if !p.sacked {
                self.to_resend -= 1;
            }
            if !p.sacked {
                newly_acked += p.payload.len();
                if p.transmissions == 1 {
                    self.rtt.sample(now.saturating_duration_since(p.sent_at));
                }
            }
            if p.ty == PacketType::Fin {
                self.fin = Fin::Acked;
            }
        }
        let mut lost = None;
        if advanced {
            self.dup_acks = 0;
            self.timeouts = 0;
            self.rtt.reset_backoff();
            self.rto_deadline = (!self.in_flight.is_empty()).then(|| now + self.rtt.rto());
        } else if pure_ack && sack.is_none() {
            self.dup_acks += 1;
            if self.dup_acks == DUPLICATE_ACKS_BEFORE_RESEND {
                self.dup_acks = 0;
                if let Some(p) = self.in_flight.front_mut() {
                    if p.counted && !p.sacked {
                        p.counted = false;
                        self.bytes_in_flight -= p.payload.len();
                        self.to_resend += 1;
                        lost = Some(p.seq);
                    }
                }
            }
        }
        if let Some(mask) = sack {
            let (acked, first_lost) = self.apply_sack(now, ack, mask);
            newly_acked += acked;
            lost = lost.or(first_lost);
        }
        self.cc.on_ack(newly_acked, flight_before);
        if let Some(seq) = lost {
            self.fast_resend = Some(seq);
            // Halve once per window: losses among packets sent before the last halving are
            // the same congestion event.
            if self.recovery_until.is_none_or(|r| !seq_less(seq, r)) {
                self.cc.on_loss();
                self.recovery_until = Some(self.seq_nr);
            }
        }
        if self.write_blocked && self.send_room() >= (self.cfg.send_buffer / 4).max(1) {
            self.write_blocked = false;
            self.push_event(out, Event::Writable(self.id));
        }
    }

    /// Marks the packets the bitmask names as received and declares lost the ones that
    /// enough later-sent packets overtook. Returns (bytes newly acknowledged, the first
    /// packet declared lost).
    fn apply_sack(&mut self, now: Instant, ack: u16, mask: &[u8]) -> (usize, Option<u16>) {
        let Some(first) = self.in_flight.front().map(|p| p.seq) else {
            return (0, None);
        };
        let mut acked = 0;
        for (byte_index, byte) in mask.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) == 0 {
                    continue;
                }
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
                acked += p.payload.len();
                if p.transmissions == 1 {
                    self.rtt.sample(now.saturating_duration_since(p.sent_at));
                }
            }
        }
        // Walk back from the newest: a packet is lost when at least three packets sent
        // after it (in transmission order, so a packet just resent is not lost again) have arrived.
        let mut latest_sacked: [Option<u64>; SACKED_AFTER_TO_LOSE] = [None; SACKED_AFTER_TO_LOSE];
        let mut first_lost = None;
        for p in self.in_flight.iter_mut().rev() {
            if p.sacked {
                // Keep the SACKED_AFTER_TO_LOSE most recent send times, oldest last.
                let mut t = Some(p.sent_order);
                for slot in latest_sacked.iter_mut() {
                    if t > *slot {
                        std::mem::swap(slot, &mut t);
                    }
                }
                continue;
            }
            let overtaken =
                latest_sacked[SACKED_AFTER_TO_LOSE - 1].is_some_and(|t| t > p.sent_order);
            if p.counted && overtaken {
                p.counted = false;
                self.bytes_in_flight -= p.payload.len();
                self.to_resend += 1;
                first_lost = Some(p.seq);
            }
        }
        (acked, first_lost)
    }

    fn on_data(&mut self, seq: u16, ty: PacketType, payload: &[u8], out: &mut Output<'_>) {
        let fin = ty == PacketType::Fin;
        let arrival = self.recv.arrive(seq, fin, payload, out.recv_budget);
        self.ack_due = match arrival {
            Arrival::InOrder { filled_gap } => {
                // Every second packet, or after a short delay; at once when it changes
                // what a selective ACK said, or ends the stream.
                self.unacked_received += 1;
                if filled_gap || fin || self.unacked_received >= 2 {
                    AckDue::Now
                } else {
                    match self.ack_due {
                        AckDue::No => AckDue::At(self.last_recv + self.cfg.delayed_ack),
                        due => due,
                    }
                }
            }
            // A gap (say so with a selective ACK), a duplicate (our acknowledgement was
            // lost) or a drop (tell the window we really have).
            Arrival::Ahead | Arrival::Duplicate | Arrival::Dropped => AckDue::Now,
        };
        // Only an in-order arrival makes something new readable (data, or the end).
        let delivered = matches!(arrival, Arrival::InOrder { .. });
        if delivered && !self.readable_signalled {
            self.readable_signalled = true;
            self.push_event(out, Event::Readable(self.id));
        }
    }

    /// Both directions finished and the application read everything: done.
    fn check_done(&mut self, now: Instant, out: &mut Output<'_>) {
        if self.state == State::Connected
            && self.fin == Fin::Acked
            && self.recv.eof_reached()
            && self.recv.readable() == 0
        {
            self.close_reason = Some(CloseReason::Done);
            self.push_event(
                out,
                Event::Closed {
                    conn: self.id,
                    reason: CloseReason::Done,
                },
            );
            // Long enough for the peer's retransmission of its FIN to find us.
            let linger = self.cfg.time_wait.max(2 * self.rtt.rto());
            self.state = State::TimeWait {
                until: now + linger,
            };
        }
    }

    fn close_with(&mut self, reason: CloseReason, out: &mut Output<'_>) {
        self.close_reason = Some(reason);
        self.push_event(
            out,
            Event::Closed {
                conn: self.id,
                reason,
            },
        );
        self.state = State::Closed;
    }

    fn push_event(&self, out: &mut Output<'_>, event: Event) {
        if self.announced {
            out.events.push_back(event);
        }
    }

    // -----------------------------------------------------------------------------------
    // time

    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match self.state {
            State::Closed => return None,
            State::TimeWait { until } => return Some(until),
            State::SynReceived => consider(Some(self.created + self.cfg.pending_timeout)),
            State::SynSent => {}
            State::Connected => {
                consider(Some(self.last_recv + self.cfg.idle_timeout));
                consider(Some(self.last_send + self.cfg.keepalive));
            }
        }
        consider(self.rto_deadline);
        if let AckDue::At(t) = self.ack_due {
            consider(Some(t));
        }
        if !self.send_buf.is_empty() && self.window_allows(self.send_buf.len()) {
            consider(self.nagle_deadline);
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Output<'_>) {
        match self.state {
            State::Closed => return,
            State::TimeWait { until } => {
                if now >= until {
                    self.state = State::Closed;
                }
                return;
            }
            State::SynReceived if now >= self.created + self.cfg.pending_timeout => {
                self.state = State::Closed; // never announced: nobody to tell
                return;
            }
            State::Connected if now >= self.last_recv + self.cfg.idle_timeout => {
                self.close_with(CloseReason::TimedOut, out);
                return;
            }
            _ => {}
        }
        if self.rto_deadline.is_some_and(|t| now >= t) {
            self.on_retransmission_timeout(out);
            if self.state == State::Closed {
                return;
            }
        }
        if matches!(self.ack_due, AckDue::At(t) if now >= t) {
            self.ack_due = AckDue::Now;
        }
        if self.state == State::Connected && now >= self.last_send + self.cfg.keepalive {
            self.ack_due = AckDue::Now;
        }
        self.flush(now, out);
    }

    fn on_retransmission_timeout(&mut self, out: &mut Output<'_>) {
        self.rto_deadline = None;
        if self.in_flight.is_empty() {
            return;
        }
        // A peer that advertises no room drops our probes but is alive: waiting for it to
        // read is not a failure (the idle timeout still catches a dead one).
        let window_probe = self.state == State::Connected && self.peer_wnd < self.cfg.max_payload();
        if !window_probe {
            self.timeouts += 1;
            let limit = if self.state == State::SynSent {
                self.cfg.max_syn_retransmits
            } else {
                self.cfg.max_retransmits
            };
            if self.timeouts > limit {
                self.close_with(CloseReason::TimedOut, out);
                return;
            }
            self.cc.on_timeout();
        }
        self.rtt.back_off();
        self.dup_acks = 0;
        // Everything not known to have arrived is presumed lost and resent as the (now
        // minimal) window allows.
        for p in self.in_flight.iter_mut() {
            if p.counted {
                p.counted = false;
                self.to_resend += 1;
            }
        }
        self.bytes_in_flight = 0;
    }

    // -----------------------------------------------------------------------------------
    // sending

    fn window_allows(&self, payload: usize) -> bool {
        // One packet may always be in flight: it probes a closed window and keeps a
        // connection with a tiny congestion window moving.
        self.bytes_in_flight == 0
            || self.bytes_in_flight + payload <= self.cc.window().min(self.peer_wnd)
    }

    fn push_packet(&mut self, now: Instant, ty: PacketType, payload: Vec<u8>) {
        self.unacked_bytes += payload.len();
        self.to_resend += 1; // until its first transmission
        self.in_flight.push_back(Outgoing {
            seq: self.seq_nr,
            ty,
            payload,
            sent_at: now,
            sent_order: 0,
            transmissions: 0,
            sacked: false,
            counted: false,
        });
        self.seq_nr = self.seq_nr.wrapping_add(1);
    }

    /// The bookkeeping of `in_flight` agrees with itself (checked in debug builds).
    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let waiting = self
                .in_flight
                .iter()
                .filter(|p| !p.counted && !p.sacked)
                .count();
            let counted: usize = self
                .in_flight
                .iter()
                .filter(|p| p.counted)
                .map(|p| p.payload.len())
                .sum();
            let unacked: usize = self.in_flight.iter().map(|p| p.payload.len()).sum();
            debug_assert_eq!(waiting, self.to_resend, "packets waiting to be sent");
            debug_assert_eq!(counted, self.bytes_in_flight, "bytes in flight");
            debug_assert_eq!(unacked, self.unacked_bytes, "unacknowledged bytes");
            debug_assert!(self.in_flight.iter().all(|p| !(p.counted && p.sacked)));
            self.recv.check_invariants();
        }
    }

    /// Sends whatever the windows, timers and state allow.
    pub fn flush(&mut self, now: Instant, out: &mut Output<'_>) {
        self.check_invariants();
        if !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Connected
        ) {
            return;
        }
        // 1. Retransmissions, oldest first.
        for index in 0..self.in_flight.len() {
            if self.to_resend == 0 {
                break;
            }
            let p = &self.in_flight[index];
            if p.sacked || p.counted {
                continue;
            }
            if !self.window_allows(p.payload.len()) && self.fast_resend != Some(p.seq) {
                break;
            }
            self.transmit(now, index, out);
        }
        self.fast_resend = None;
        if self.state == State::Connected {
            // 2. New data.
            let mss = self.cfg.max_payload();
            while !self.send_buf.is_empty() && self.in_flight.len() < MAX_IN_FLIGHT_PACKETS {
                let len = self.send_buf.len().min(mss);
                if len < mss && self.bytes_in_flight > 0 {
                    if let Some(delay) = self.cfg.nagle_delay {
                        let deadline = *self.nagle_deadline.get_or_insert(now + delay);
                        if now < deadline {
                            break;
                        }
                    }
                }
                if !self.window_allows(len) {
                    break;
                }
                let mut payload = Vec::with_capacity(len);
                let (a, b) = self.send_buf.as_slices();
                let from_a = len.min(a.len());
                payload.extend_from_slice(&a[..from_a]);
                payload.extend_from_slice(&b[..len - from_a]);
                self.send_buf.drain(..len);
                self.nagle_deadline = None;
                self.push_packet(now, PacketType::Data, payload);
                self.transmit(now, self.in_flight.len() - 1, out);
            }
            // 3. The FIN, once all data is packetised.
            if self.fin == Fin::Queued
                && self.send_buf.is_empty()
                && self.in_flight.len() < MAX_IN_FLIGHT_PACKETS
            {
                self.fin = Fin::Sent;
                self.push_packet(now, PacketType::Fin, Vec::new());
                self.transmit(now, self.in_flight.len() - 1, out);
            }
        }
        // 4. A bare acknowledgement if one is due and nothing carried it.
        if self.ack_due == AckDue::Now {
            self.send_control(now, PacketType::State, out);
        }
    }

    fn header(&self, now: Instant, ty: PacketType, seq_nr: u16) -> Header {
        Header {
            ty,
            connection_id: if ty == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp_us: self.clock.micros(now),
            timestamp_diff_us: self.reply_micro,
            wnd_size: self.recv.window().min(u32::MAX as usize) as u32,
            seq_nr,
            ack_nr: self.recv.ack_nr(),
        }
    }

    fn transmit(&mut self, now: Instant, index: usize, out: &mut Output<'_>) {
        let (seq, ty) = {
            let p = &self.in_flight[index];
            (p.seq, p.ty)
        };
        let header = self.header(now, ty, seq);
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
        let mut data = Vec::with_capacity(HEADER_LEN + p.payload.len());
        encode(&header, None, &p.payload, &mut data);
        out.transmits.push_back(Transmit {
            to: self.addr,
            data,
        });
        self.last_send = now;
        // Data carries the cumulative acknowledgement; a gap still needs a selective one.
        if !self.recv.has_gap() {
            self.ack_due = AckDue::No;
            self.unacked_received = 0;
        }
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
    }

    /// A STATE (with a selective ACK when there is a gap) or a RESET.
    fn send_control(&mut self, now: Instant, ty: PacketType, out: &mut Output<'_>) {
        let header = self.header(now, ty, self.seq_nr);
        let mut mask = [0u8; MAX_SACK_BYTES];
        let mask_len = if ty == PacketType::State {
            self.recv.sack_mask(&mut mask)
        } else {
            0
        };
        let mut data = Vec::with_capacity(HEADER_LEN + 2 + mask_len);
        encode(
            &header,
            (mask_len > 0).then(|| &mask[..mask_len]),
            &[],
            &mut data,
        );
        out.transmits.push_back(Transmit {
            to: self.addr,
            data,
        });
        self.last_send = now;
        self.ack_due = AckDue::No;
        self.unacked_received = 0;
    }
}

/// Where a connection puts what it produces.
pub(crate) struct Output<'a> {
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    /// Receive-buffer bytes the endpoint can still take, all connections together.
    pub recv_budget: usize,
}
