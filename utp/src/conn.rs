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

use crate::config::{Config, MAX_SACK_BYTES};
use crate::endpoint::{CloseReason, ConnId, Error, Event, Transmit};
use crate::ledbat::Ledbat;
use crate::packet::{encode, seq_less, Header, Packet, PacketType, HEADER_LEN};
use crate::recv::{Arrival, ReceiveBuffer};
use crate::rtt::Rtt;
use crate::send::SendBuffer;

/// Duplicate acknowledgements that make us resend the oldest packet (BEP 29: 3).
const DUPLICATE_ACKS_BEFORE_RESEND: u32 = 3;
/// The reorder window grows up to a whole round trip (RACK's cap).
const MAX_REORDER_QUARTERS: u32 = 4;

/// Microsecond timestamps for headers: a random offset plus the time since the endpoint's
/// first instant (the value is only ever compared with itself, wrapping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub epoch: Instant,
    pub offset: u32,
}

impl Clock {
    pub fn micros(&self, now: Instant) -> u32 {
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
    send: SendBuffer,
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
    /// The window before the last halving, while that loss could still prove spurious.
    cwnd_before_loss: Option<usize>,
    /// How long, in quarters of the round trip, a packet overtaken by three others may
    /// still be merely reordered (RACK): one quarter, widened by each spurious resend.
    reorder_quarters: u32,
    nagle_deadline: Option<Instant>,
    write_blocked: bool,
    /// A packet just declared lost: resent at once, whatever the window (RFC 5681's fast
    /// retransmit; the window was just halved and may be below what is in flight).
    fast_resend: Option<u16>,

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
        let send = SendBuffer::new(cfg.send_buffer, seq_nr);
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
            send,
            fin: Fin::NotRequested,
            rto_deadline: None,
            timeouts: 0,
            dup_acks: 0,
            recovery_until: None,
            cwnd_before_loss: None,
            reorder_quarters: 1,
            nagle_deadline: None,
            write_blocked: false,
            fast_resend: None,
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
        c.send.add_packet(now, PacketType::Syn, 0);
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
        self.send.held() + self.recv.held()
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
        let n = self.send.write(data);
        if n < data.len() {
            self.write_blocked = true;
        }
        if n == 0 && !data.is_empty() {
            return Err(Error::WouldBlock);
        }
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
            let only_fin_unacked = self.fin == Fin::Sent && self.send.only_fin_unacked();
            if only_fin_unacked && self.recv.eof_reached() && self.recv.readable() == 0 {
                self.close_with(CloseReason::Done, out);
            } else {
                self.close_with(CloseReason::Reset, out);
            }
            return;
        }
        match (self.state, h.ty) {
            (State::SynSent, PacketType::State | PacketType::Data | PacketType::Fin) => {
                if h.ack_nr != self.send.next_seq().wrapping_sub(1) {
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
                if h.ack_nr != self.send.next_seq().wrapping_sub(1) {
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
        let flight_before = self.send.bytes_in_flight();
        let srtt = self.rtt.srtt().unwrap_or_default();
        let reorder_window = srtt / 4 * self.reorder_quarters;
        let min_rtt = self.rtt.min_rtt().unwrap_or_default();
        let Some(mut outcome) = self.send.on_ack(now, ack, sack, reorder_window, min_rtt) else {
            return; // nothing in flight, an old acknowledgement, or a bogus one
        };
        if outcome.spurious {
            // Reordering, not loss: wait longer before calling it loss, and take back the
            // halving it caused.
            self.reorder_quarters = (self.reorder_quarters + 1).min(MAX_REORDER_QUARTERS);
            if let Some(before) = self.cwnd_before_loss.take() {
                self.cc.undo_loss(before);
            }
        }
        if let Some(rtt) = outcome.rtt {
            self.rtt.sample(rtt);
        }
        if outcome.fin_acked {
            self.fin = Fin::Acked;
        }
        if outcome.advanced {
            self.dup_acks = 0;
            self.timeouts = 0;
            self.rtt.reset_backoff();
            self.rto_deadline = self.send.has_unacked().then(|| now + self.rtt.rto());
        } else if pure_ack && sack.is_none() {
            self.dup_acks += 1;
            if self.dup_acks == DUPLICATE_ACKS_BEFORE_RESEND {
                self.dup_acks = 0;
                outcome.lost = outcome.lost.or(self.send.lose_oldest());
            }
        }
        let cc_srtt = self.rtt.srtt().unwrap_or(self.cfg.initial_rto);
        self.cc
            .on_ack(now, outcome.newly_acked, flight_before, cc_srtt);
        if let Some(seq) = outcome.lost {
            self.fast_resend = Some(seq);
            // Halve once per window: losses among packets sent before the last halving are
            // the same congestion event.
            if self.recovery_until.is_none_or(|r| !seq_less(seq, r)) {
                self.cwnd_before_loss = Some(self.cc.window());
                self.cc.on_loss();
                self.recovery_until = Some(self.send.next_seq());
            }
        }
        if self.write_blocked && self.send.room() >= (self.cfg.send_buffer / 4).max(1) {
            self.write_blocked = false;
            self.push_event(out, Event::Writable(self.id));
        }
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
        if self.send.unsent() > 0 && self.window_allows(self.send.unsent()) {
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
        if !self.send.has_unacked() {
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
        self.send.lose_all();
    }

    // -----------------------------------------------------------------------------------
    // sending

    fn window_allows(&self, payload: usize) -> bool {
        // One packet may always be in flight: it probes a closed window and keeps a
        // connection with a tiny congestion window moving.
        let flight = self.send.bytes_in_flight();
        flight == 0 || flight + payload <= self.cc.window().min(self.peer_wnd)
    }

    /// Sends whatever the windows, timers and state allow.
    pub fn flush(&mut self, now: Instant, out: &mut Output<'_>) {
        self.send.check_invariants();
        self.recv.check_invariants();
        if !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Connected
        ) {
            return;
        }
        // 1. Retransmissions, oldest first.
        let mut from = 0;
        while let Some((index, len)) = self.send.next_to_resend(from) {
            let fast = self.fast_resend == Some(self.send.seq_of(index));
            from = index + 1;
            if !self.window_allows(len) && !fast {
                if self.fast_resend.is_some() {
                    continue; // the window is full, but the lost packet still goes now
                }
                break;
            }
            self.transmit(now, index, out);
        }
        self.fast_resend = None;
        if self.state == State::Connected {
            // 2. New data.
            let mss = self.cfg.max_payload();
            while self.send.unsent() > 0 && self.send.can_add_packet() {
                let len = self.send.unsent().min(mss);
                if len < mss && self.send.bytes_in_flight() > 0 {
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
                self.nagle_deadline = None;
                let index = self.send.add_packet(now, PacketType::Data, len);
                self.transmit(now, index, out);
            }
            // 3. The FIN, once all data is packetised.
            if self.fin == Fin::Queued && self.send.unsent() == 0 && self.send.can_add_packet() {
                self.fin = Fin::Sent;
                let index = self.send.add_packet(now, PacketType::Fin, 0);
                self.transmit(now, index, out);
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
        let mut header = self.header(now, PacketType::Data, 0);
        let (seq, ty, payload) = self.send.transmit(now, index);
        header.ty = ty;
        header.seq_nr = seq;
        if ty == PacketType::Syn {
            header.connection_id = self.recv_id; // the SYN names our receive id
        }
        let mut data = Vec::with_capacity(HEADER_LEN + payload.len());
        encode(&header, None, payload, &mut data);
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
        let header = self.header(now, ty, self.send.next_seq());
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
