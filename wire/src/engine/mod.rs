//! The per-torrent piece-exchange engine, with no I/O (the quinn-proto shape).
//!
//! The driver feeds it peer events, decoded messages, hash results and time; it answers
//! with [`Action`]s (messages to send, blocks to read/write, pieces to verify, peers to
//! drop) polled with [`Engine::poll_action`], and a wake-up time from
//! [`Engine::poll_timeout`]. No sockets, no clock, no global RNG: the simulator drives the
//! same code in virtual time.
//!
//! What it decides: peer states (choked/interested both ways), availability, which blocks
//! to request ([`picker`]: rarest-first, whole pieces, endgame), how many requests to keep
//! in flight per peer, who gets upload slots ([`choker`]), rate limits ([`rate`]),
//! snubbing, bad-piece strikes and bans, and BEP 6 (Fast) semantics.

pub mod choker;
pub mod peer_state;
pub mod picker;
pub mod rate;
pub mod spread;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use crate::bitfield::{Bitfield, BitfieldError};
pub use crate::layout::{Block, Geometry, GeometryError, BLOCK_LEN};
use crate::peer::Message;
use peer_state::{Outstanding, Peer, Unchoke};
use picker::{PeerView, PickPolicy, Picker, PieceState, Received};
use rate::TokenBucket;
use spread::Spread;

/// Identifies a connected peer. Slots are reused with a new generation, so a stale slot
/// from a departed peer never reaches the peer that took its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSlot {
    index: u32,
    generation: u32,
}

impl PeerSlot {
    #[cfg(test)]
    pub(crate) fn for_tests(index: u32) -> Self {
        PeerSlot {
            index,
            generation: 0,
        }
    }

    /// A small number, unique among connected peers (for tables and logs).
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl fmt::Display for PeerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}.{}", self.index, self.generation)
    }
}

/// Why the engine dropped a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// A bitfield of the wrong length or with spare bits set.
    BadBitfield(BitfieldError),
    /// A piece index past the end of the torrent.
    PieceOutOfRange(u32),
    /// A request outside the piece, of length 0 or over 16 KiB.
    BadRequest(Block),
    /// A request for a piece we never announced (peer without the Fast extension).
    RequestedMissingPiece(u32),
    /// A Fast-extension message from a peer that did not negotiate it.
    FastNotNegotiated(&'static str),
    /// Too many blocks we never asked for.
    UnrequestedData,
    /// Sent data that failed the hash check (too often, or as the only source). The
    /// driver bans the peer; the engine only disconnects it.
    BadData,
    /// Nothing received for a long time while we wanted data.
    Unresponsive,
    /// Both sides have everything.
    BothSeeds,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::BadBitfield(e) => write!(f, "bad bitfield: {e}"),
            DisconnectReason::PieceOutOfRange(p) => write!(f, "piece index {p} out of range"),
            DisconnectReason::BadRequest(b) => write!(
                f,
                "invalid request: piece {} begin {} length {}",
                b.piece, b.offset, b.length
            ),
            DisconnectReason::RequestedMissingPiece(p) => {
                write!(f, "requested piece {p}, which we do not have")
            }
            DisconnectReason::FastNotNegotiated(m) => {
                write!(f, "{m} without the Fast extension")
            }
            DisconnectReason::UnrequestedData => f.write_str("too many unrequested blocks"),
            DisconnectReason::BadData => f.write_str("sent pieces that failed the hash check"),
            DisconnectReason::Unresponsive => f.write_str("no data while we wanted some"),
            DisconnectReason::BothSeeds => f.write_str("both sides are seeds"),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        slot: PeerSlot,
        message: Message,
    },
    /// Read the block from storage and send it to `slot` as a piece message, then call
    /// [`Engine::block_sent`].
    ReadBlock {
        slot: PeerSlot,
        block: Block,
    },
    /// Write received data to storage. `from` sent it (a requested block: blocks we did
    /// not ask that peer for never enter a piece).
    WriteBlock {
        block: Block,
        data: Bytes,
        from: PeerSlot,
    },
    /// Every block of `piece` has been handed out for writing: hash it (after those
    /// writes) and report with [`Engine::piece_verified`].
    VerifyPiece {
        piece: u32,
    },
    /// Close the connection. The engine has already forgotten the peer.
    Disconnect {
        slot: PeerSlot,
        reason: DisconnectReason,
    },
    /// Every piece is verified (emitted once).
    Completed,
}

/// Why a new peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("peer limit reached")]
    TooManyPeers,
}

/// What the driver knows about a peer when it connects.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// Both sides set the Fast bit (BEP 6).
    pub fast: bool,
    /// The peer's `reqq` from its extension handshake.
    pub reqq: Option<u32>,
    /// The driver already told the peer we have nothing (a magnet download announces
    /// have-none before the metadata arrives), so no initial bitfield is sent.
    pub announced_nothing: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub max_peers: usize,
    /// Upload slots, including the optimistic one.
    pub upload_slots: usize,
    pub choke_interval: Duration,
    pub optimistic_interval: Duration,
    /// No block for this long while requests are out: snubbed, requests go elsewhere.
    /// Once blocks have arrived from anyone, the limit is `snub_latency_factor` times
    /// their typical latency (at least `min_snub_timeout`): a peer that unchokes and then
    /// sends nothing is found out in seconds, not a minute.
    pub snub_timeout: Duration,
    pub min_snub_timeout: Duration,
    pub snub_latency_factor: u32,
    /// Snubbed and still nothing for this long: disconnected.
    pub unresponsive_timeout: Duration,
    /// Pieces picked at random before rarest-first takes over.
    pub random_first_pieces: u32,
    pub min_pipeline: usize,
    pub max_pipeline: usize,
    /// Requests kept in flight cover this much time at the peer's measured rate.
    pub request_queue_time: Duration,
    /// Assumed `reqq` of peers that do not send one (libtorrent's default).
    pub default_peer_reqq: usize,
    /// Requests we queue from one peer (advertise it as our `reqq`).
    pub max_incoming_requests: usize,
    /// Blocks being read/sent to one peer at once.
    pub max_uploads_in_flight: u32,
    /// Blocks being read/sent to all peers at once (0 = no limit beyond the per-peer
    /// one). A small total keeps the choice of what goes next with the engine, which
    /// then finishes the piece a peer is receiving before starting another peer's. A
    /// peer whose blocks have not moved for [`UPLOAD_STALL`] (a full socket) stops
    /// counting against it.
    pub max_uploads_in_flight_total: u32,
    /// Bytes per second, 0 = unlimited.
    pub upload_rate_limit: u64,
    pub download_rate_limit: u64,
    /// Endgame: at most this many peers asked for one block.
    pub endgame_max_requesters: u8,
    /// Hash failures a contributing peer may cause before it is banned.
    pub ban_strikes: u32,
    pub max_unwanted_blocks: u32,
    pub max_request_len: u32,
    /// When we are a seed, drop peers that are seeds too.
    pub disconnect_seeds_when_seeding: bool,
    /// Bytes of pieces in progress (each buffered whole until verified) at most; at
    /// least one piece is always allowed. Bounds download memory whatever peers do.
    pub max_partial_bytes: u64,
    /// As a seed, pieces suggested ahead (BEP 6) to each peer it uploads to: the ones it
    /// has handed out least ([`spread`]). 0 turns suggesting off.
    pub seed_suggestions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_peers: 200,
            upload_slots: 8,
            choke_interval: Duration::from_secs(10),
            optimistic_interval: Duration::from_secs(30),
            snub_timeout: Duration::from_secs(60),
            min_snub_timeout: Duration::from_secs(5),
            snub_latency_factor: 8,
            unresponsive_timeout: Duration::from_secs(120),
            random_first_pieces: 4,
            min_pipeline: 16,
            max_pipeline: 1000,
            request_queue_time: Duration::from_secs(2),
            default_peer_reqq: 250,
            max_incoming_requests: 2000,
            max_uploads_in_flight: 256,
            max_uploads_in_flight_total: 8,
            upload_rate_limit: 0,
            download_rate_limit: 0,
            endgame_max_requesters: 2,
            ban_strikes: 3,
            max_unwanted_blocks: 64,
            max_request_len: BLOCK_LEN,
            disconnect_seeds_when_seeding: true,
            max_partial_bytes: 256 << 20,
            seed_suggestions: 2,
        }
    }
}

/// Torrent-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub piece_count: u32,
    pub pieces_have: u32,
    pub bytes_left: u64,
    /// Payload bytes accepted (written), uploaded (read for sending), and received
    /// but not needed.
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    pub peers: usize,
    pub hash_failures: u32,
    /// Peers dropped for bad data.
    pub banned: usize,
}

/// One peer's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub addr: Option<SocketAddr>,
    pub downloaded: u64,
    pub uploaded: u64,
    pub download_rate: f64,
    pub upload_rate: f64,
    pub am_choking: bool,
    pub peer_choking: bool,
    pub am_interested: bool,
    pub peer_interested: bool,
    pub snubbed: bool,
    pub requests_out: usize,
    /// Its requests we have queued or are sending.
    pub requests_in: usize,
    pub is_seed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("resume bitfield has {got} pieces, torrent has {expected}")]
    BitfieldLength { expected: u32, got: u32 },
}

const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A peer counts as new (favoured for the optimistic slot) for this long.
const NEW_PEER: Duration = Duration::from_secs(60);
const MAX_ALLOWED_FAST: usize = 64;
/// Requests a peer may reject while it says it unchokes us (and sends no block) before it
/// counts as snubbing us: otherwise each reject frees a block we ask it for again at once,
/// and the blocks it keeps bouncing are lost to the peers that would send them.
const MAX_REJECTS_UNCHOKED: u32 = 8;
const MAX_SUGGESTED: usize = 16;
/// A peer's blocks in flight that have not moved for this long no longer count against
/// [`Config::max_uploads_in_flight_total`].
pub const UPLOAD_STALL: Duration = Duration::from_millis(500);

pub struct Engine {
    cfg: Config,
    geo: Geometry,
    have: Bitfield,
    picker: Picker,
    spread: Spread,
    peers: Vec<Option<Peer>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    peer_count: usize,
    actions: VecDeque<Action>,
    rng: ChaCha8Rng,
    upload_bucket: TokenBucket,
    download_bucket: TokenBucket,
    upload_queue: VecDeque<PeerSlot>,
    uploads_in_flight: u32,
    /// No peer's uploads can have stalled before this.
    stall_check_at: Instant,
    /// Set while the upload/download bucket is empty: when it has tokens again.
    upload_wake: Option<Instant>,
    download_wake: Option<Instant>,
    next_housekeeping: Instant,
    next_choke: Instant,
    next_optimistic: Instant,
    optimistic: Option<PeerSlot>,
    completed: bool,
    stats: EngineStats,
    scratch: Vec<Block>,
    /// Smoothed time from a request to its block, over all peers.
    block_latency: Option<Duration>,
}

impl Engine {
    /// A torrent of geometry `geo` of which we already have `have` (verified resume data).
    pub fn new(
        geo: Geometry,
        have: Bitfield,
        cfg: Config,
        now: Instant,
        rng_seed: u64,
    ) -> Result<Self, EngineError> {
        if have.len() != geo.piece_count {
            return Err(EngineError::BitfieldLength {
                expected: geo.piece_count,
                got: have.len(),
            });
        }
        let burst = |rate: u64| (rate / 4).max(4 * BLOCK_LEN as u64);
        let completed = have.is_full();
        let mut e = Engine {
            picker: Picker::new(geo, &have),
            spread: Spread::new(geo.piece_count),
            upload_bucket: TokenBucket::new(
                cfg.upload_rate_limit,
                burst(cfg.upload_rate_limit),
                now,
            ),
            download_bucket: TokenBucket::new(
                cfg.download_rate_limit,
                burst(cfg.download_rate_limit),
                now,
            ),
            next_housekeeping: now + HOUSEKEEPING,
            next_choke: now + cfg.choke_interval,
            next_optimistic: now + cfg.optimistic_interval,
            cfg,
            geo,
            have,
            peers: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            peer_count: 0,
            actions: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            upload_queue: VecDeque::new(),
            uploads_in_flight: 0,
            stall_check_at: now,
            upload_wake: None,
            download_wake: None,
            optimistic: None,
            completed,
            stats: EngineStats::default(),
            scratch: Vec::new(),
            block_latency: None,
        };
        e.stats.piece_count = geo.piece_count;
        Ok(e)
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.pieces_have = self.have.count_ones();
        s.bytes_left = (0..self.geo.piece_count)
            .filter(|&p| !self.have.get(p))
            .map(|p| self.geo.piece_len(p) as u64)
            .sum();
        s.peers = self.peer_count;
        s
    }

    pub fn peer_stats(&self, slot: PeerSlot) -> Option<PeerStats> {
        let p = self.peer(slot)?;
        Some(PeerStats {
            addr: p.info.addr,
            downloaded: p.down.total(),
            uploaded: p.up.total(),
            download_rate: p.down.last_rate(),
            upload_rate: p.up.last_rate(),
            am_choking: p.am_choking(),
            peer_choking: p.peer_choking,
            am_interested: p.am_interested,
            peer_interested: p.peer_interested,
            snubbed: p.snubbed,
            requests_out: p.outstanding.len(),
            requests_in: p.their_requests.len() + p.uploads_in_flight as usize,
            is_seed: p.is_seed,
        })
    }

    /// Every connected peer's slot.
    pub fn peer_slots(&self) -> Vec<PeerSlot> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.as_ref().map(|p| PeerSlot {
                    index: i as u32,
                    generation: p.generation,
                })
            })
            .collect()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Engine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self
            .next_housekeeping
            .min(self.next_choke)
            .min(self.next_optimistic);
        for at in [self.upload_wake, self.download_wake].into_iter().flatten() {
            t = t.min(at);
        }
        Some(t)
    }

    fn peer(&self, slot: PeerSlot) -> Option<&Peer> {
        self.peers
            .get(slot.index as usize)?
            .as_ref()
            .filter(|p| p.generation == slot.generation)
    }

    fn peer_mut(&mut self, slot: PeerSlot) -> Option<&mut Peer> {
        self.peers
            .get_mut(slot.index as usize)?
            .as_mut()
            .filter(|p| p.generation == slot.generation)
    }

    fn send(&mut self, slot: PeerSlot, message: Message) {
        self.actions.push_back(Action::Send { slot, message });
    }

    // ---- peer lifecycle -------------------------------------------------------------

    /// A handshake completed. Sends our bitfield (or have-all / have-none).
    pub fn peer_connected(&mut self, now: Instant, info: PeerInfo) -> Result<PeerSlot, Refused> {
        if self.peer_count >= self.cfg.max_peers {
            return Err(Refused::TooManyPeers);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.peers.push(None);
                self.generations.push(0);
                (self.peers.len() - 1) as u32
            }
        };
        let generation = self.generations[index as usize];
        let fast = info.fast;
        let announced = info.announced_nothing && self.have.none_set();
        self.peers[index as usize] = Some(Peer::new(
            info,
            generation,
            self.geo.piece_count,
            now,
            &self.cfg,
        ));
        self.peer_count += 1;
        let slot = PeerSlot { index, generation };
        if !announced {
            let first = if fast && self.have.is_full() {
                Some(Message::HaveAll)
            } else if fast && self.have.none_set() {
                Some(Message::HaveNone)
            } else if !self.have.none_set() {
                Some(Message::Bitfield(Bytes::from(self.have.to_bytes())))
            } else {
                None
            };
            if let Some(m) = first {
                self.send(slot, m);
            }
        }
        Ok(slot)
    }

    /// The peer's extension handshake told us its `reqq`.
    pub fn set_peer_reqq(&mut self, slot: PeerSlot, reqq: u32) {
        if let Some(p) = self.peer_mut(slot) {
            p.info.reqq = Some(reqq.max(1));
        }
    }

    /// The connection is gone (closed by either side). Its requests go to other peers.
    pub fn peer_disconnected(&mut self, now: Instant, slot: PeerSlot) {
        if self.remove_peer(slot) {
            self.fill_all(now);
            // Its blocks in flight no longer count: others may go.
            self.serve_uploads(now);
        }
    }

    fn remove_peer(&mut self, slot: PeerSlot) -> bool {
        if self.peer(slot).is_none() {
            return false;
        }
        let peer = self.peers[slot.index as usize].take().expect("checked");
        self.generations[slot.index as usize] = slot.generation.wrapping_add(1);
        self.free.push(slot.index);
        self.peer_count -= 1;
        self.uploads_in_flight = self
            .uploads_in_flight
            .saturating_sub(peer.uploads_in_flight);
        if peer.is_seed {
            self.picker.remove_seed();
        } else {
            self.picker.remove_bitfield(&peer.has);
        }
        for o in &peer.outstanding {
            self.picker.release(o.block);
        }
        for &p in &peer.suggested_out {
            self.spread.withdraw(&self.geo, p);
        }
        self.picker.disown(slot);
        if self.optimistic == Some(slot) {
            self.optimistic = None;
        }
        if peer.unchoke != Unchoke::Choked {
            self.fill_upload_slots();
        }
        true
    }

    fn disconnect(&mut self, slot: PeerSlot, reason: DisconnectReason) {
        if self.remove_peer(slot) {
            self.actions.push_back(Action::Disconnect { slot, reason });
        }
    }

    fn ban(&mut self, slot: PeerSlot) {
        if self.peer(slot).is_some() {
            self.stats.banned += 1;
        }
        self.disconnect(slot, DisconnectReason::BadData);
    }

    /// Smart-ban cleared the peer of a failed piece it contributed to: its strikes for it
    /// are forgiven.
    pub fn forgive(&mut self, slot: PeerSlot) {
        if let Some(p) = self.peer_mut(slot) {
            p.strikes = p.strikes.saturating_sub(1);
        }
    }

    /// The driver found (by comparing blocks) that the peer sent bad data: drop it.
    pub fn convict(&mut self, slot: PeerSlot) {
        self.ban(slot);
    }

    // ---- incoming messages ----------------------------------------------------------

    /// A message from the peer. Keep-alive, port (BEP 5), extended (BEP 10) and unknown
    /// messages are the driver's business and ignored here.
    pub fn handle_message(&mut self, now: Instant, slot: PeerSlot, msg: Message) {
        if matches!(
            msg,
            Message::KeepAlive
                | Message::Port(_)
                | Message::Extended { .. }
                | Message::Unknown { .. }
        ) {
            return;
        }
        let Some(peer) = self.peer_mut(slot) else {
            return;
        };
        let first = !peer.seen_message;
        peer.seen_message = true;
        let fast = peer.info.fast;
        let n = self.geo.piece_count;
        match msg {
            Message::Choke => self.on_choke(slot),
            Message::Unchoke => {
                if let Some(p) = self.peer_mut(slot) {
                    p.peer_choking = false;
                }
                self.fill_requests(now, slot);
            }
            Message::Interested => {
                if let Some(p) = self.peer_mut(slot) {
                    p.peer_interested = true;
                }
                self.fill_upload_slots();
            }
            Message::NotInterested => {
                if let Some(p) = self.peer_mut(slot) {
                    p.peer_interested = false;
                }
            }
            Message::Have { piece: i } => {
                if i >= n {
                    return self.disconnect(slot, DisconnectReason::PieceOutOfRange(i));
                }
                let peer = self.peer_mut(slot).expect("checked");
                if !peer.is_seed && peer.has.set(i) {
                    self.settle_suggestion(slot, i);
                    self.picker.add_have(i);
                    if !self.have.get(i) {
                        self.set_interest(slot, true);
                        self.fill_requests(now, slot);
                    }
                    self.check_both_seeds(slot);
                }
            }
            Message::Bitfield(bytes) => {
                match Bitfield::from_bytes(&bytes, n) {
                    Ok(b) if b.is_full() => self.become_seed(slot),
                    Ok(b) if first => {
                        self.picker.add_bitfield(&b);
                        self.peer_mut(slot).expect("checked").has = b;
                    }
                    // A bitfield after other messages: aria2 sends its whole bitfield again
                    // instead of 20 or more haves. Pieces are never lost, so it counts as
                    // haves of the pieces it adds.
                    Ok(b) => {
                        let peer = self.peer_mut(slot).expect("checked");
                        if !peer.is_seed {
                            let added: Vec<u32> =
                                b.iter_ones().filter(|&i| peer.has.set(i)).collect();
                            added.into_iter().for_each(|i| self.picker.add_have(i));
                        }
                    }
                    Err(e) => return self.disconnect(slot, DisconnectReason::BadBitfield(e)),
                }
                self.update_interest(slot);
                self.check_both_seeds(slot);
                self.fill_requests(now, slot);
            }
            Message::HaveAll | Message::HaveNone if !fast => self.disconnect(
                slot,
                DisconnectReason::FastNotNegotiated("have-all/have-none"),
            ),
            // Have-all after other messages (aria2 sends it once it completes) is a seed
            // like the first one; a late have-none takes nothing away.
            Message::HaveAll => {
                self.become_seed(slot);
                self.update_interest(slot);
                self.check_both_seeds(slot);
                self.fill_requests(now, slot);
            }
            Message::HaveNone => {}
            Message::Request(b) => self.on_request(now, slot, b),
            Message::Cancel(b) => {
                let peer = self.peer_mut(slot).expect("checked");
                if let Some(pos) = peer.their_requests.iter().position(|&r| r == b) {
                    peer.their_requests.remove(pos);
                    // BEP 6: every request gets exactly one answer, a cancelled one too.
                    if fast {
                        self.send(slot, Message::RejectRequest(b));
                    }
                }
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(now, slot, piece, offset, data),
            Message::RejectRequest(_) | Message::AllowedFast { .. } | Message::Suggest { .. }
                if !fast =>
            {
                self.disconnect(slot, DisconnectReason::FastNotNegotiated("fast message"))
            }
            Message::RejectRequest(b) => {
                let peer = self.peer_mut(slot).expect("checked");
                // A reject for something we no longer track (cancelled) is harmless.
                if peer.take_outstanding(b).is_some() {
                    if peer.peer_choking {
                        peer.allowed_fast.retain(|&p| p != b.piece);
                    } else if !peer.allowed_fast.contains(&b.piece) {
                        peer.rejects_unchoked += 1;
                    }
                    self.picker.release(b);
                    let peer = self.peer_mut(slot).expect("checked");
                    if peer.rejects_unchoked >= MAX_REJECTS_UNCHOKED && !peer.snubbed {
                        self.snub(slot);
                    }
                    self.fill_requests(now, slot);
                }
            }
            Message::AllowedFast { piece: i } => {
                let peer = self.peer_mut(slot).expect("checked");
                if i < n
                    && peer.allowed_fast.len() < MAX_ALLOWED_FAST
                    && !peer.allowed_fast.contains(&i)
                {
                    peer.allowed_fast.push(i);
                    self.fill_requests(now, slot);
                }
            }
            Message::Suggest { piece: i } => {
                let peer = self.peer_mut(slot).expect("checked");
                if i < n && !peer.suggested.contains(&i) {
                    if peer.suggested.len() >= MAX_SUGGESTED {
                        peer.suggested.remove(0);
                    }
                    peer.suggested.push(i);
                }
            }
            // Returned above.
            Message::KeepAlive
            | Message::Port(_)
            | Message::Extended { .. }
            | Message::Unknown { .. } => {}
        }
    }

    fn become_seed(&mut self, slot: PeerSlot) {
        let n = self.geo.piece_count;
        let peer = self.peer_mut(slot).expect("checked");
        if peer.is_seed {
            return;
        }
        let old = std::mem::replace(&mut peer.has, Bitfield::full(n));
        peer.is_seed = true;
        self.picker.remove_bitfield(&old);
        self.picker.add_seed();
    }

    fn check_both_seeds(&mut self, slot: PeerSlot) {
        if self.cfg.disconnect_seeds_when_seeding
            && self.have.is_full()
            && self.peer(slot).is_some_and(|p| p.has.is_full())
        {
            self.disconnect(slot, DisconnectReason::BothSeeds);
        }
    }

    fn on_choke(&mut self, slot: PeerSlot) {
        let peer = self.peer_mut(slot).expect("checked");
        peer.peer_choking = true;
        // Without Fast, a choke silently discards our requests; with Fast the peer must
        // reject each one, so they stay until answered.
        if !peer.info.fast {
            let dropped: Vec<_> = peer.outstanding.drain(..).collect();
            for o in &dropped {
                peer.note_cancelled(o.block);
            }
            for o in dropped {
                self.picker.release(o.block);
            }
        }
    }

    fn on_request(&mut self, now: Instant, slot: PeerSlot, b: Block) {
        let n = self.geo.piece_count;
        if b.piece >= n
            || b.length == 0
            || b.length > self.cfg.max_request_len
            || b.offset as u64 + b.length as u64 > self.geo.piece_len(b.piece) as u64
        {
            return self.disconnect(slot, DisconnectReason::BadRequest(b));
        }
        let max_queue = self.cfg.max_incoming_requests;
        let max_in_flight = self.per_peer_uploads();
        let have_it = self.have.get(b.piece);
        let peer = self.peer_mut(slot).expect("checked");
        let fast = peer.info.fast;
        if !have_it {
            if fast {
                return self.send(slot, Message::RejectRequest(b));
            }
            return self.disconnect(slot, DisconnectReason::RequestedMissingPiece(b.piece));
        }
        if peer.am_choking() || peer.their_requests.len() >= max_queue {
            // Without Fast, requests that crossed our choke are dropped silently.
            if fast {
                self.send(slot, Message::RejectRequest(b));
            }
            return;
        }
        if peer.their_requests.contains(&b) {
            return;
        }
        peer.their_requests.push_back(b);
        self.spread.requested(b.piece);
        self.settle_suggestion(slot, b.piece);
        let peer = self.peer_mut(slot).expect("checked");
        if !peer.in_upload_queue && peer.uploads_in_flight < max_in_flight {
            peer.in_upload_queue = true;
            self.upload_queue.push_back(slot);
        }
        self.serve_uploads(now);
    }

    fn on_block(&mut self, now: Instant, slot: PeerSlot, piece: u32, offset: u32, data: Bytes) {
        let len = data.len() as u64;
        let b = Block {
            piece,
            offset,
            length: data.len().min(u32::MAX as usize) as u32,
        };
        if piece >= self.geo.piece_count {
            return self.disconnect(slot, DisconnectReason::PieceOutOfRange(piece));
        }
        let peer = self.peer_mut(slot).expect("checked");
        let requested = peer.take_outstanding(b);
        if let Some(o) = requested {
            let sample = now.saturating_duration_since(o.sent_at);
            peer.rtt = Some(peer.rtt.map_or(sample, |r| (r * 7 + sample) / 8));
            if peer.down.last_rate() == 0.0 {
                peer.slow_start_target += 1;
            }
            let latency = self
                .block_latency
                .map_or(sample, |r| (r * 15 + sample) / 16);
            self.block_latency = Some(latency);
        }
        let peer = self.peer_mut(slot).expect("checked");
        peer.last_block_at = Some(now);
        peer.snubbed = false;
        peer.rejects_unchoked = 0;
        peer.down.add(now, len);
        peer.round_down += len;
        if requested.is_none() {
            // Never asked of this peer: it never enters a piece. A block we cancelled (or
            // that crossed a choke) is merely late; anything else counts against the peer.
            self.stats.wasted += len;
            let peer = self.peer_mut(slot).expect("checked");
            if !peer.was_cancelled(b) {
                peer.unwanted_blocks += 1;
                if peer.unwanted_blocks > self.cfg.max_unwanted_blocks {
                    return self.disconnect(slot, DisconnectReason::UnrequestedData);
                }
            }
            return self.fill_requests(now, slot);
        }
        match self.picker.receive(b, slot) {
            Received::Accepted { piece_complete } => {
                self.stats.downloaded += len;
                self.actions.push_back(Action::WriteBlock {
                    block: b,
                    data,
                    from: slot,
                });
                self.cancel_elsewhere(slot, b);
                if piece_complete {
                    self.actions.push_back(Action::VerifyPiece { piece });
                }
            }
            Received::Duplicate => self.stats.wasted += len,
            Received::Unwanted => self.stats.wasted += len,
        }
        self.fill_requests(now, slot);
    }

    /// Endgame: the block arrived from `from`; withdraw the same request from others.
    fn cancel_elsewhere(&mut self, from: PeerSlot, b: Block) {
        if !self.picker.in_endgame() {
            return;
        }
        for i in 0..self.peers.len() {
            let Some(p) = self.peers[i].as_mut() else {
                continue;
            };
            let slot = PeerSlot {
                index: i as u32,
                generation: p.generation,
            };
            if slot != from && p.take_outstanding(b).is_some() {
                p.note_cancelled(b);
                self.actions.push_back(Action::Send {
                    slot,
                    message: Message::Cancel(b),
                });
            }
        }
    }

    // ---- storage results ------------------------------------------------------------

    /// The hash check of `piece` finished.
    pub fn piece_verified(&mut self, now: Instant, piece: u32, ok: bool) {
        if piece >= self.geo.piece_count || self.picker.state(piece) != PieceState::Verifying {
            return;
        }
        let contributors = self.picker.verified(piece, ok);
        if ok {
            self.have.set(piece);
            for slot in self.peer_slots() {
                let p = self.peer(slot).expect("listed");
                let (has_it, interested) = (p.has.get(piece), p.am_interested);
                if !has_it {
                    self.send(slot, Message::Have { piece });
                }
                if interested {
                    self.update_interest(slot);
                }
            }
            if self.have.is_full() && !self.completed {
                self.completed = true;
                self.actions.push_back(Action::Completed);
                for slot in self.peer_slots() {
                    self.check_both_seeds(slot);
                }
            }
            return;
        }
        self.stats.hash_failures += 1;
        let sole = contributors.len() == 1;
        for slot in contributors {
            let Some(p) = self.peer_mut(slot) else {
                continue;
            };
            p.strikes += 1;
            if sole || p.strikes >= self.cfg.ban_strikes {
                self.ban(slot);
            }
        }
        self.fill_all(now);
    }

    /// A block handed out with [`Action::ReadBlock`] has been sent (or dropped).
    pub fn block_sent(&mut self, now: Instant, slot: PeerSlot) {
        let max = self.per_peer_uploads();
        let Some(peer) = self.peer_mut(slot) else {
            // Counted out when the peer left (a driver may never report these).
            return;
        };
        if peer.uploads_in_flight == 0 {
            return;
        }
        peer.uploads_in_flight -= 1;
        peer.upload_progress_at = Some(now);
        let requeue = !peer.in_upload_queue
            && !peer.their_requests.is_empty()
            && peer.uploads_in_flight < max;
        if requeue {
            peer.in_upload_queue = true;
            self.upload_queue.push_back(slot);
        }
        self.uploads_in_flight = self.uploads_in_flight.saturating_sub(1);
        self.serve_uploads(now);
    }

    // ---- time -----------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.upload_wake.is_some_and(|t| now >= t) {
            self.upload_wake = None;
            self.serve_uploads(now);
        }
        if now >= self.next_optimistic {
            self.next_optimistic = now + self.cfg.optimistic_interval;
            self.rotate_optimistic(now);
        }
        if now >= self.next_choke {
            self.next_choke = now + self.cfg.choke_interval;
            self.run_choker(now);
        }
        if self.download_wake.is_some_and(|t| now >= t) {
            self.download_wake = None;
            self.fill_all(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.check_snubs(now);
            // Blocks stuck in a full socket stop holding up the others.
            self.serve_uploads(now);
            self.download_wake = None;
            self.fill_all(now);
        }
    }

    /// How long a peer may sit on our requests before it counts as snubbing us: a
    /// multiple of its own request-to-block latency once it has sent blocks; before
    /// that, twice the typical latency of the peers that do (a first block needs no more
    /// than one round trip and its own transfer); `snub_timeout` while nobody has sent
    /// anything. Never below `min_snub_timeout`.
    fn snub_after(&self, own_latency: Option<Duration>) -> Duration {
        let base = match (own_latency, self.block_latency) {
            (Some(own), _) => own * self.cfg.snub_latency_factor,
            (None, Some(all)) => all * 2,
            (None, None) => return self.cfg.snub_timeout,
        };
        base.max(self.cfg.min_snub_timeout)
            .min(self.cfg.snub_timeout)
    }

    fn check_snubs(&mut self, now: Instant) {
        let unresponsive_timeout = self.cfg.unresponsive_timeout;
        for slot in self.peer_slots() {
            let own = self.peer(slot).and_then(|p| p.rtt);
            let snub_timeout = self.snub_after(own);
            let p = self.peer_mut(slot).expect("listed");
            p.down.rate(now);
            p.up.rate(now);
            let Some(oldest) = p.outstanding.front().map(|o| o.sent_at) else {
                continue;
            };
            let since = p.last_block_at.map_or(oldest, |t| t.max(oldest));
            let quiet = now.saturating_duration_since(since);
            let silent_for =
                now.saturating_duration_since(p.last_block_at.unwrap_or(p.connected_at));
            if p.snubbed && silent_for >= unresponsive_timeout {
                self.disconnect(slot, DisconnectReason::Unresponsive);
                continue;
            }
            // Snubbed, it still gets one request at a time as a probe; a probe that sits
            // as long is withdrawn too, so the block can go to a peer that sends.
            if quiet >= snub_timeout {
                self.snub(slot);
            }
        }
    }

    /// The peer sits on (or bounces) our requests: they go to other peers, and it gets
    /// one at a time until it sends a block.
    fn snub(&mut self, slot: PeerSlot) {
        let Some(p) = self.peer_mut(slot) else { return };
        p.snubbed = true;
        let dropped: Vec<_> = p.outstanding.drain(..).collect();
        for o in &dropped {
            p.note_cancelled(o.block);
        }
        for o in dropped {
            self.picker.release(o.block);
            self.send(slot, Message::Cancel(o.block));
        }
        self.picker.disown(slot);
    }

    // ---- requesting -----------------------------------------------------------------

    fn wants_from(&self, p: &Peer) -> bool {
        !self.have.is_full() && (p.is_seed || self.have.lacks_any_of(&p.has))
    }

    fn update_interest(&mut self, slot: PeerSlot) {
        let Some(p) = self.peer(slot) else { return };
        let want = self.wants_from(p);
        self.set_interest(slot, want);
    }

    fn set_interest(&mut self, slot: PeerSlot, want: bool) {
        let Some(p) = self.peer_mut(slot) else { return };
        if p.am_interested != want {
            p.am_interested = want;
            let msg = if want {
                Message::Interested
            } else {
                Message::NotInterested
            };
            self.send(slot, msg);
        }
    }

    /// Makes `pieces` urgent (see `Picker::set_urgent`: a streaming reader's next
    /// pieces, asked for before any other) and tops up every pipeline with them.
    pub fn set_urgent(&mut self, now: Instant, pieces: &[u32]) {
        self.picker.set_urgent(pieces);
        self.fill_all(now);
    }

    fn fill_all(&mut self, now: Instant) {
        for slot in self.peer_slots() {
            self.fill_requests(now, slot);
        }
    }

    /// Tops up `slot`'s request pipeline.
    fn fill_requests(&mut self, now: Instant, slot: PeerSlot) {
        if self.have.is_full() || self.download_wake.is_some() {
            return;
        }
        let block_len = self.geo.block_len;
        let Some(peer) = self.peers.get(slot.index as usize).and_then(|p| p.as_ref()) else {
            return;
        };
        if peer.generation != slot.generation || !peer.am_interested {
            return;
        }
        let choked = peer.peer_choking;
        if choked && (!peer.info.fast || peer.allowed_fast.is_empty()) {
            return;
        }
        // In the endgame every block left is wanted from peers that send: a snubbing
        // peer would take one of a block's few requesters.
        if peer.snubbed && self.picker.in_endgame() {
            return;
        }
        let target = peer.pipeline_target(&self.cfg, block_len);
        if peer.outstanding.len() >= target {
            return;
        }
        let want = target - peer.outstanding.len();
        let view = PeerView {
            slot,
            has: (!peer.is_seed).then_some(&peer.has),
            only: choked.then_some(peer.allowed_fast.as_slice()),
            suggested: &peer.suggested,
            may_own: !peer.snubbed,
            outstanding: peer.outstanding.len(),
        };
        let mut picked = std::mem::take(&mut self.scratch);
        picked.clear();
        self.picker.pick(
            &view,
            want,
            PickPolicy {
                random_first_pieces: self.cfg.random_first_pieces,
                endgame_max_requesters: self.cfg.endgame_max_requesters,
                max_partial_pieces: (self.cfg.max_partial_bytes
                    / self.geo.piece_length.max(1) as u64)
                    as usize,
            },
            &mut self.rng,
            &|b| peer.is_outstanding(b),
            &mut picked,
        );
        let peer = self.peers[slot.index as usize].as_mut().expect("checked");
        for (k, &b) in picked.iter().enumerate() {
            if !self.download_bucket.try_take(now, b.length as u64) {
                for &rest in &picked[k..] {
                    self.picker.release(rest);
                }
                self.download_wake = Some(self.download_bucket.ready_at(now).unwrap_or(now));
                break;
            }
            peer.outstanding.push_back(Outstanding {
                block: b,
                sent_at: now,
            });
            self.actions.push_back(Action::Send {
                slot,
                message: Message::Request(b),
            });
        }
        self.scratch = picked;
    }

    // ---- uploading ------------------------------------------------------------------

    /// Blocks one peer may have in flight: its own limit, and at most half the total so
    /// a peer that does not read (a full socket) cannot hold up everyone else.
    fn per_peer_uploads(&self) -> u32 {
        let max = self.cfg.max_uploads_in_flight.max(1);
        match self.cfg.max_uploads_in_flight_total {
            0 => max,
            total => max.min((total / 2).max(1)),
        }
    }

    /// Blocks in flight to peers whose uploads are moving (see [`UPLOAD_STALL`]). Before
    /// `stall_check_at` no peer can have stalled (progress only moves that time later),
    /// so the peers are scanned only after it.
    fn moving_uploads(&mut self, now: Instant) -> u32 {
        if now < self.stall_check_at {
            return self.uploads_in_flight;
        }
        let (mut moving, mut next) = (0, None::<Instant>);
        for p in self
            .peers
            .iter()
            .flatten()
            .filter(|p| p.uploads_in_flight > 0)
        {
            let stalls_at = p.upload_progress_at.map_or(now, |t| t + UPLOAD_STALL);
            if stalls_at > now {
                moving += p.uploads_in_flight;
                next = Some(next.map_or(stalls_at, |n| n.min(stalls_at)));
            }
        }
        // With a peer stalled, look again next time; else when the first one could be.
        self.stall_check_at = if moving < self.uploads_in_flight {
            now
        } else {
            next.unwrap_or(now)
        };
        moving
    }

    /// Hands out block reads as the upload bucket and the in-flight limits allow: first to
    /// a peer part-way through a piece, else round-robin over peers. With a small total in
    /// flight this sends pieces one (or two) at a time rather than a slice of every
    /// unchoked peer's piece at once, so each piece arrives whole, and can be passed on,
    /// sooner, at no cost in throughput.
    fn serve_uploads(&mut self, now: Instant) {
        let max = self.per_peer_uploads();
        let total = self.cfg.max_uploads_in_flight_total;
        let mut budget = self.upload_queue.len() * max as usize + 1;
        loop {
            if total > 0 && self.uploads_in_flight >= total && self.moving_uploads(now) >= total {
                break;
            }
            if let Some(pos) = self.upload_queue.iter().position(|s| {
                self.peer(*s).is_some_and(|p| {
                    p.last_served_piece.is_some()
                        && p.their_requests.front().map(|b| b.piece) == p.last_served_piece
                })
            }) {
                if pos > 0 {
                    let s = self.upload_queue.remove(pos).expect("found");
                    self.upload_queue.push_front(s);
                }
            }
            let Some(slot) = self.upload_queue.pop_front() else {
                break;
            };
            budget -= 1;
            if budget == 0 {
                self.upload_queue.push_front(slot);
                break;
            }
            let Some(peer) = self
                .peers
                .get_mut(slot.index as usize)
                .and_then(|p| p.as_mut())
            else {
                continue;
            };
            if peer.generation != slot.generation {
                continue;
            }
            let Some(&b) = peer.their_requests.front() else {
                peer.in_upload_queue = false;
                continue;
            };
            if peer.uploads_in_flight >= max {
                peer.in_upload_queue = false;
                continue;
            }
            if !self.upload_bucket.try_take(now, b.length as u64) {
                self.upload_queue.push_front(slot);
                self.upload_wake = Some(self.upload_bucket.ready_at(now).unwrap_or(now));
                break;
            }
            peer.their_requests.pop_front();
            if peer.uploads_in_flight == 0 {
                peer.upload_progress_at = Some(now);
            }
            peer.uploads_in_flight += 1;
            peer.last_served_piece = Some(b.piece);
            self.uploads_in_flight += 1;
            peer.up.add(now, b.length as u64);
            peer.round_up += b.length as u64;
            self.stats.uploaded += b.length as u64;
            if peer.their_requests.is_empty() || peer.uploads_in_flight >= max {
                peer.in_upload_queue = false;
            } else {
                self.upload_queue.push_back(slot);
            }
            self.actions.push_back(Action::ReadBlock { slot, block: b });
        }
    }

    // ---- choking --------------------------------------------------------------------

    fn unchoke(&mut self, slot: PeerSlot, kind: Unchoke) {
        let Some(p) = self.peer_mut(slot) else { return };
        let was = p.unchoke;
        p.unchoke = kind;
        if was == Unchoke::Choked {
            // Suggestions first: the peer picks what to request as soon as it is unchoked.
            self.suggest_to(slot);
            self.send(slot, Message::Unchoke);
        }
    }

    /// As a seed, tops up the pieces suggested to an unchoked peer ([`spread`]).
    fn suggest_to(&mut self, slot: PeerSlot) {
        let want = self.cfg.seed_suggestions;
        if want == 0 || !self.have.is_full() {
            return;
        }
        let Engine {
            peers,
            spread,
            picker,
            geo,
            rng,
            actions,
            ..
        } = self;
        let Some(p) = peers
            .get_mut(slot.index as usize)
            .and_then(|p| p.as_mut())
            .filter(|p| p.generation == slot.generation)
        else {
            return;
        };
        if !p.info.fast || p.is_seed || p.am_choking() {
            return;
        }
        while p.suggested_out.len() < want {
            let Some(piece) = spread.suggest(
                geo,
                &p.has,
                &p.suggested_out,
                |i| picker.availability(i),
                rng,
            ) else {
                break;
            };
            p.suggested_out.push(piece);
            actions.push_back(Action::Send {
                slot,
                message: Message::Suggest { piece },
            });
        }
    }

    /// The peer asked for, or announced, a piece we suggested: the next one.
    fn settle_suggestion(&mut self, slot: PeerSlot, piece: u32) {
        let Some(p) = self.peer_mut(slot) else { return };
        let Some(pos) = p.suggested_out.iter().position(|&x| x == piece) else {
            return;
        };
        p.suggested_out.swap_remove(pos);
        self.spread.withdraw(&self.geo, piece);
        self.suggest_to(slot);
    }

    fn withdraw_suggestions(&mut self, slot: PeerSlot) {
        let Some(p) = self.peer_mut(slot) else { return };
        let out = std::mem::take(&mut p.suggested_out);
        for piece in out {
            self.spread.withdraw(&self.geo, piece);
        }
    }

    fn choke(&mut self, slot: PeerSlot) {
        let Some(p) = self.peer_mut(slot) else { return };
        if p.unchoke == Unchoke::Choked {
            return;
        }
        p.unchoke = Unchoke::Choked;
        let fast = p.info.fast;
        let pending: Vec<_> = p.their_requests.drain(..).collect();
        self.withdraw_suggestions(slot);
        self.send(slot, Message::Choke);
        if fast {
            for b in pending {
                self.send(slot, Message::RejectRequest(b));
            }
        }
        if self.optimistic == Some(slot) {
            self.optimistic = None;
        }
    }

    /// Unchokes interested peers while upload slots are free, so a new peer does not wait
    /// for the next choke round.
    fn fill_upload_slots(&mut self) {
        let used = self
            .peers
            .iter()
            .flatten()
            .filter(|p| p.unchoke != Unchoke::Choked && p.peer_interested)
            .count();
        let mut free = self.cfg.upload_slots.saturating_sub(used);
        if free == 0 {
            return;
        }
        for slot in self.peer_slots() {
            if free == 0 {
                break;
            }
            let p = self.peer(slot).expect("listed");
            if p.peer_interested && p.am_choking() {
                self.unchoke(slot, Unchoke::Regular);
                free -= 1;
            }
        }
    }

    fn candidates(&self, now: Instant) -> Vec<choker::Candidate> {
        let seeding = self.have.is_full();
        self.peer_slots()
            .into_iter()
            .filter_map(|slot| {
                let p = self.peer(slot)?;
                (p.peer_interested && (!p.snubbed || seeding)).then(|| choker::Candidate {
                    slot,
                    score: if seeding { p.round_up } else { p.round_down },
                    is_new: now.saturating_duration_since(p.connected_at) < NEW_PEER,
                })
            })
            .collect()
    }

    /// Every choke interval: the best reciprocating peers keep (or get) the regular slots.
    fn run_choker(&mut self, now: Instant) {
        let regular_slots = self.cfg.upload_slots.saturating_sub(1).max(1);
        let cands: Vec<_> = self
            .candidates(now)
            .into_iter()
            .filter(|c| Some(c.slot) != self.optimistic)
            .collect();
        let keep = choker::regular_unchokes(cands, regular_slots, &mut self.rng);
        for slot in self.peer_slots() {
            if keep.contains(&slot) {
                self.unchoke(slot, Unchoke::Regular);
            } else if Some(slot) != self.optimistic {
                self.choke(slot);
            }
            let p = self.peer_mut(slot).expect("listed");
            p.round_down = 0;
            p.round_up = 0;
        }
    }

    /// Every optimistic interval: a random choked, interested peer gets the extra slot.
    fn rotate_optimistic(&mut self, now: Instant) {
        if self.cfg.upload_slots < 2 {
            return;
        }
        let cands: Vec<_> = self
            .candidates(now)
            .into_iter()
            .filter(|c| self.peer(c.slot).is_some_and(|p| p.am_choking()))
            .collect();
        let Some(new) = choker::optimistic_unchoke(&cands, &mut self.rng) else {
            return;
        };
        if let Some(old) = self.optimistic.take() {
            self.choke(old);
        }
        self.unchoke(new, Unchoke::Optimistic);
        self.optimistic = Some(new);
    }
}

#[cfg(test)]
mod tests;
