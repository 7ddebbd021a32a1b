//! The endpoint: every uTP connection behind one UDP socket, as a sans-IO state machine.
//!
//! Datagrams are demultiplexed by (peer address, connection id). A SYN creates a *pending*
//! connection that the application does not see until the initiator's next packet
//! acknowledges our random sequence number; pending connections are capped and expire, so
//! a SYN flood (spoofed or not) costs a bounded table and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::config::Config;
use crate::conn::{Clock, Connection, Output};
use crate::packet::{self, decode, Header, PacketType};

/// A handle to one connection of an endpoint (never reused by that endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN, everything was acknowledged and read.
    Done,
    /// The peer sent RESET (or refused our SYN).
    Reset,
    /// The peer stopped answering: the SYN or a packet was retransmitted too often, or
    /// nothing arrived for the idle timeout.
    TimedOut,
}

/// Something the application may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer opened a connection to us (and proved it receives at its address).
    Incoming { conn: ConnId, addr: SocketAddr },
    /// Our `connect` was answered.
    Connected(ConnId),
    /// Data (or the end of the stream) became readable after `read` had emptied the
    /// buffer: read until [`Error::WouldBlock`].
    Readable(ConnId),
    /// A `write` had been cut short; there is room again.
    Writable(ConnId),
    /// The connection is gone; its [`ConnId`] is unknown from now on. Not sent after
    /// [`Endpoint::reset`], nor for pending connections the application never saw.
    Closed { conn: ConnId, reason: CloseReason },
}

/// What a command can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Error {
    #[error("no such connection")]
    UnknownConnection,
    #[error("the operation would block")]
    WouldBlock,
    #[error("the connection is closed for this operation")]
    Closed,
    #[error("the connection table is full")]
    TooManyConnections,
}

/// Sizes, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub pending_incoming: usize,
    /// Bytes held for applications, all connections together (send and receive buffers).
    pub buffered_bytes: usize,
    /// Of those, bytes in receive buffers (capped by `Config::max_total_recv_buffer`).
    pub recv_buffered_bytes: usize,
    pub datagrams_in: u64,
    pub invalid_datagrams: u64,
    pub unknown_connection: u64,
    pub syns_dropped: u64,
}

/// Every uTP connection behind one socket.
pub struct Endpoint {
    config: Arc<Config>,
    rng: ChaCha8Rng,
    clock: Option<Clock>,
    /// Ordered, so that everything happens in the same order every run (determinism).
    conns: BTreeMap<ConnId, Connection>,
    /// (peer, the connection id its packets carry) -> connection.
    by_key: HashMap<(SocketAddr, u16), ConnId>,
    /// One entry per connection with a deadline, earliest first: `poll_timeout` reads the
    /// first and `handle_timeout` visits only the connections that are due. An entry may
    /// be earlier than its connection's deadline (a deadline that moved later is not
    /// re-filed, which would cost two tree operations per datagram): waking early just
    /// files it again.
    timers: BTreeSet<(Instant, ConnId)>,
    /// Bytes in receive buffers, all connections together.
    recv_held: usize,
    pending_incoming: usize,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    #[cfg(test)]
    pub(crate) forced_initial_seq: Option<u16>,
}

impl Endpoint {
    pub fn new(config: Config, rng_seed: u64) -> Endpoint {
        Endpoint {
            config: Arc::new(config),
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            clock: None,
            conns: BTreeMap::new(),
            by_key: HashMap::new(),
            timers: BTreeSet::new(),
            recv_held: 0,
            pending_incoming: 0,
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            #[cfg(test)]
            forced_initial_seq: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn clock(&mut self, now: Instant) -> Clock {
        let offset = self.rng.gen();
        *self.clock.get_or_insert(Clock { epoch: now, offset })
    }

    fn initial_seq(&mut self) -> u16 {
        #[cfg(test)]
        if let Some(seq) = self.forced_initial_seq {
            return seq;
        }
        self.rng.gen()
    }

    fn new_id(&mut self) -> ConnId {
        self.next_id += 1;
        ConnId(self.next_id)
    }

    // -----------------------------------------------------------------------------------
    // inputs

    /// A UDP payload arrived from `from`. Anything that is not a valid uTP packet for a
    /// connection we have (or a SYN we accept) is dropped; DATA and FIN for an unknown
    /// connection are answered with RESET (no larger than what came in).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        let clock = self.clock(now);
        let Ok(p) = decode(data) else {
            self.stats.invalid_datagrams += 1;
            return;
        };
        let h = p.header;
        let target = match h.ty {
            PacketType::Syn => {
                // Our receive id for this peer's connection is its id + 1.
                let key = (from, h.connection_id.wrapping_add(1));
                match self.by_key.get(&key) {
                    Some(&id) if self.send_id_is(id, h.connection_id) => Some(id),
                    Some(_) => None, // collides with a connection we opened: ignore
                    None => {
                        self.accept(now, from, &h, clock);
                        return;
                    }
                }
            }
            PacketType::Reset => self.find_reset_target(from, h.connection_id),
            _ => self.by_key.get(&(from, h.connection_id)).copied(),
        };
        let Some(id) = target else {
            self.stats.unknown_connection += 1;
            if matches!(h.ty, PacketType::Data | PacketType::Fin) {
                self.send_unknown_reset(now, clock, from, &h);
            }
            return;
        };
        self.on_conn(id, |c, out| c.handle_packet(now, &p, out));
    }

    /// A RESET carries the sender's send id, which is our receive id, or (for a RESET sent
    /// in answer to a packet it did not know) our send id: look for both.
    fn find_reset_target(&self, from: SocketAddr, id: u16) -> Option<ConnId> {
        if let Some(&c) = self.by_key.get(&(from, id)) {
            return Some(c);
        }
        [id.wrapping_add(1), id.wrapping_sub(1)]
            .into_iter()
            .filter_map(|recv| self.by_key.get(&(from, recv)))
            .find(|c| self.send_id_is(**c, id))
            .copied()
    }

    fn send_id_is(&self, conn: ConnId, send_id: u16) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.send_id == send_id)
    }

    fn send_unknown_reset(&mut self, now: Instant, clock: Clock, to: SocketAddr, h: &Header) {
        let header = Header {
            ty: PacketType::Reset,
            connection_id: h.connection_id,
            timestamp_us: clock.micros(now),
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: self.rng.gen(),
            ack_nr: h.seq_nr,
        };
        let mut data = Vec::with_capacity(packet::HEADER_LEN);
        packet::encode(&header, None, &[], &mut data);
        self.transmits.push_back(Transmit { to, data });
    }

    fn accept(&mut self, now: Instant, from: SocketAddr, syn: &Header, clock: Clock) {
        if !self.config.accept_incoming
            || self.conns.len() >= self.config.max_connections
            || self.pending_incoming >= self.config.max_pending_incoming
        {
            self.stats.syns_dropped += 1;
            return;
        }
        let id = self.new_id();
        let seq = self.initial_seq();
        let config = self.config.clone();
        let mut out = Output {
            transmits: &mut self.transmits,
            events: &mut self.events,
            recv_budget: 0,
        };
        let conn = Connection::accept(id, from, now, config, clock, syn, seq, &mut out);
        self.insert(id, conn);
    }

    /// Time passed: fires every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.first().is_some_and(|&(t, _)| t <= now) {
            let Some((_, id)) = self.timers.pop_first() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            conn.timer_entry = None;
            if conn.next_deadline().is_some_and(|t| t <= now) {
                self.on_conn(id, |c, out| c.handle_timeout(now, out));
            } else {
                self.on_conn(id, |_, _| ()); // woke early: file the real deadline
            }
            if let Some(conn) = self.conns.get_mut(&id) {
                if conn.next_deadline().is_some_and(|t| t <= now) {
                    // A connection that stays due would make this loop (and a driver) spin.
                    debug_assert!(false, "{id:?} is still due after its timeout");
                    if let Some(t) = conn.timer_entry.take() {
                        self.timers.remove(&(t, id));
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // bookkeeping

    fn insert(&mut self, id: ConnId, conn: Connection) {
        self.by_key.insert((conn.addr, conn.recv_id), id);
        if conn.is_pending_incoming() {
            self.pending_incoming += 1;
        }
        self.conns.insert(id, conn);
        self.on_conn(id, |_, _| ()); // files its first deadline
    }

    /// Runs `f` on one connection with the endpoint's queues, then brings the endpoint's
    /// bookkeeping (pending count, receive total, timer index, removal) in step with it.
    /// Every input and command reaches a connection through here.
    fn on_conn<T>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Connection, &mut Output<'_>) -> T,
    ) -> Option<T> {
        let Endpoint {
            conns,
            transmits,
            events,
            config,
            recv_held,
            timers,
            ..
        } = self;
        let conn = conns.get_mut(&id)?;
        let was_pending = conn.is_pending_incoming();
        let held_before = conn.recv_bytes();
        let mut out = Output {
            transmits,
            events,
            recv_budget: config.max_total_recv_buffer.saturating_sub(*recv_held),
        };
        let result = f(conn, &mut out);
        let held_after = conn.recv_bytes();
        *recv_held = *recv_held - held_before + held_after;
        let closed = conn.is_closed();
        let deadline = if closed { None } else { conn.next_deadline() };
        match (conn.timer_entry, deadline) {
            (Some(filed), Some(due)) if filed <= due => {} // it wakes early, then re-files
            (filed, due) => {
                if let Some(t) = filed {
                    timers.remove(&(t, id));
                }
                if let Some(t) = due {
                    timers.insert((t, id));
                }
                conn.timer_entry = due;
            }
        }
        if was_pending && !conn.is_pending_incoming() {
            self.pending_incoming -= 1;
        }
        if closed {
            self.recv_held -= held_after;
            if let Some(conn) = self.conns.remove(&id) {
                self.by_key.remove(&(conn.addr, conn.recv_id));
                if let Some(reason) = conn.close_reason() {
                    tracing::debug!(conn = id.0, addr = %conn.addr, ?reason, "utp connection gone");
                }
            }
        }
        Some(result)
    }

    // -----------------------------------------------------------------------------------
    // outputs

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should be called next (`None`: no timer is armed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    // -----------------------------------------------------------------------------------
    // commands

    /// Opens a connection to `addr`; [`Event::Connected`] follows (or `Closed`).
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<ConnId, Error> {
        if self.conns.len() >= self.config.max_connections {
            return Err(Error::TooManyConnections);
        }
        let clock = self.clock(now);
        // The peer will send with our receive id: it must be free for this address.
        let recv_id = (0..64)
            .map(|_| self.rng.gen::<u16>())
            .find(|r| !self.by_key.contains_key(&(addr, *r)))
            .ok_or(Error::TooManyConnections)?;
        let id = self.new_id();
        let seq = self.initial_seq();
        let config = self.config.clone();
        let mut out = Output {
            transmits: &mut self.transmits,
            events: &mut self.events,
            recv_budget: 0,
        };
        let conn = Connection::connect(id, addr, now, config, clock, recv_id, seq, &mut out);
        self.insert(id, conn);
        Ok(id)
    }

    fn with_conn<T>(
        &mut self,
        conn: ConnId,
        f: impl FnOnce(&mut Connection, &mut Output<'_>) -> T,
    ) -> Result<T, Error> {
        // Pending incoming connections are not the application's to touch.
        if !self.conns.get(&conn).is_some_and(Connection::is_announced) {
            return Err(Error::UnknownConnection);
        }
        self.on_conn(conn, f).ok_or(Error::UnknownConnection)
    }

    /// Queues bytes for sending; accepts what fits in the send buffer (at least one byte,
    /// or [`Error::WouldBlock`]; [`Event::Writable`] says when to try again).
    pub fn write(&mut self, now: Instant, conn: ConnId, data: &[u8]) -> Result<usize, Error> {
        self.with_conn(conn, |c, out| c.write(now, data, out))?
    }

    /// Reads received bytes in order. `Ok(0)` is the end of the stream (the peer closed);
    /// [`Error::WouldBlock`] means nothing yet ([`Event::Readable`] will say when).
    pub fn read(&mut self, now: Instant, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        self.with_conn(conn, |c, out| c.read(now, buf, out))?
    }

    /// Graceful close: FIN after the data already written. Reading goes on until the peer
    /// closes too; then [`Event::Closed`] with [`CloseReason::Done`].
    pub fn close(&mut self, now: Instant, conn: ConnId) -> Result<(), Error> {
        self.with_conn(conn, |c, out| c.close(now, out))
    }

    /// Abortive close: sends RESET and forgets the connection at once (no event).
    pub fn reset(&mut self, now: Instant, conn: ConnId) -> Result<(), Error> {
        self.with_conn(conn, |c, out| c.reset(now, out))
    }

    // -----------------------------------------------------------------------------------
    // introspection

    pub fn stats(&self) -> Stats {
        debug_assert_eq!(
            self.pending_incoming,
            self.conns
                .values()
                .filter(|c| c.is_pending_incoming())
                .count()
        );
        debug_assert_eq!(
            self.recv_held,
            self.conns
                .values()
                .map(Connection::recv_bytes)
                .sum::<usize>()
        );
        debug_assert!(self
            .conns
            .iter()
            .all(|(id, c)| match (c.timer_entry, c.next_deadline()) {
                (Some(filed), due) =>
                    self.timers.contains(&(filed, *id)) && due.is_none_or(|d| filed <= d),
                (None, due) => due.is_none(),
            }));
        debug_assert_eq!(
            self.timers.len(),
            self.conns
                .values()
                .filter(|c| c.timer_entry.is_some())
                .count()
        );
        Stats {
            connections: self.conns.len(),
            pending_incoming: self.pending_incoming,
            buffered_bytes: self.conns.values().map(Connection::buffered_bytes).sum(),
            recv_buffered_bytes: self.recv_held,
            ..self.stats
        }
    }

    /// The peer of a connection.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.addr)
    }

    /// LEDBAT's queueing delay estimate for a connection (for tests and metrics).
    pub fn queuing_delay(&self, conn: ConnId) -> Option<Duration> {
        self.conns.get(&conn).and_then(Connection::queuing_delay)
    }

    /// The congestion window of a connection, in bytes.
    pub fn congestion_window(&self, conn: ConnId) -> Option<usize> {
        self.conns.get(&conn).map(Connection::congestion_window)
    }

    /// The smoothed round-trip time of a connection, once measured.
    pub fn srtt(&self, conn: ConnId) -> Option<Duration> {
        self.conns.get(&conn).and_then(Connection::srtt)
    }
}
