//! One torrent's protocol decisions as a sans-IO state machine (the quinn-proto shape).
//!
//! [`TorrentCore`] is fed connection events (dialed, accepted, handshake done, closed),
//! decoded peer [`Message`]s, disk results and time; it answers with [`Output`]s (dial,
//! send, upload a block, close, verify a piece, open storage, save resume data) polled
//! with [`TorrentCore::poll_output`], user-facing [`Event`]s, and a wake-up time from
//! [`TorrentCore::poll_timeout`]. It owns the phase machine (metadata, then pieces), the
//! metadata fetcher (BEP 9) and server, peer exchange (BEP 11), the dial policy
//! ([`dial`]), bans and blame ([`bans`], smart-ban per block), the pre-metadata state of
//! each peer ([`pending`]) and the piece [`Engine`]. No sockets, no clock, no global RNG:
//! the drivers in [`crate::session`] move bytes and files, and a simulator can drive the
//! same code in virtual time.
//!
//! ```text
//! core.add_peer(now, addr, PeerSource::Dht);         // -> Output::Dial { conn, addr, .. }
//! core.handshake_done(now, conn, peer_id, reserved);  // after the BitTorrent handshake
//! core.message(now, conn, msg);                       // every decoded message
//! core.closed(now, conn, reason);
//! core.piece_written(now, piece, Ok(true));           // after Output::Verify
//! while let Some(o) = core.poll_output() { ... }
//! ```

pub mod bans;
pub mod dial;
pub mod pending;
#[cfg(test)]
mod tests;
pub mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::engine::{
    self, Action, Bitfield, Block, DisconnectReason, Engine, Geometry, PeerInfo, PeerSlot,
};
use crate::extension::{
    pex_flags, ExtendedHandshake, FetchEvent, FetcherConfig, MetadataFetcher, MetadataMessage,
    MetadataServer, PexMessage, PexReceiver, PexSender, Verdict, HANDSHAKE_ID, OUR_UT_METADATA_ID,
    OUR_UT_PEX_ID, UT_METADATA, UT_PEX,
};
use crate::infohash::InfoHash;
use crate::metainfo::Info;
use crate::peer::{Message, PeerId, Reserved};
use bans::BanList;
use dial::{Admit, DialPolicy};
pub use dial::{DialConfig, PeerSource};
use pending::Pending;
use timers::{Timer, TimerTable};

/// Why a torrent core cannot be made for some metadata.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Geometry(#[from] crate::layout::GeometryError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// Identifies one connection (never reused within a core).
pub type ConnId = u64;

/// Tunables of a torrent.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub peer_id: PeerId,
    /// The TCP port we accept peers on (sent in the extended handshake, and never dialed).
    pub listen_port: Option<u16>,
    /// The IP we listen on, if specific: an address on it with `listen_port` is our own.
    pub listen_ip: Option<IpAddr>,
    /// Our DHT node's UDP port, sent in a PORT message (BEP 5) to peers that set the DHT
    /// bit. None: we run no DHT (and do not set the bit).
    pub dht_port: Option<u16>,
    pub engine: engine::Config,
    /// Connections (with handshake or not) from or to one IP: one host cannot take every
    /// slot, and several clients behind one NAT still get in.
    pub max_conns_per_ip: usize,
    /// Dials in flight at once.
    pub max_half_open: usize,
    pub dial: DialConfig,
    pub metadata: FetcherConfig,
    /// How often resume data is saved while pieces arrive (and on completion).
    pub resume_interval: Duration,
    /// Extended handshakes accepted per connection (a peer may update its own; a flood
    /// of them is dropped).
    pub max_extended_handshakes: u32,
    pub rng_seed: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            peer_id: PeerId(*b"-SW0001-000000000000"),
            listen_port: None,
            listen_ip: None,
            dht_port: None,
            engine: engine::Config::default(),
            max_conns_per_ip: 8,
            max_half_open: 32,
            dial: DialConfig::default(),
            metadata: FetcherConfig {
                // A silent source holds a block this long before others are asked.
                request_timeout: Duration::from_secs(3),
                ..FetcherConfig::default()
            },
            resume_interval: Duration::from_secs(30),
            max_extended_handshakes: 16,
            rng_seed: 0,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Connect to `addr` (with the MSE handshake when `encrypt`), do the BitTorrent
    /// handshake, then report [`TorrentCore::handshake_done`] or [`TorrentCore::closed`].
    Dial {
        conn: ConnId,
        addr: SocketAddr,
        encrypt: bool,
    },
    Send {
        conn: ConnId,
        msg: Message,
    },
    /// Read `block` from storage, send it as a piece message on `conn`, then report
    /// [`TorrentCore::block_sent`] (also when the read fails or the connection is gone).
    Upload {
        conn: ConnId,
        block: Block,
    },
    /// Close the connection; the core has forgotten it.
    Close {
        conn: ConnId,
        reason: String,
    },
    /// Hash `blocks` (the whole piece, in order) and write it when it matches; report
    /// [`TorrentCore::piece_written`].
    Verify {
        piece: u32,
        blocks: Vec<Bytes>,
    },
    /// The metadata arrived: open storage for it, check what is on disk, and report
    /// [`TorrentCore::storage_ready`] (or [`TorrentCore::storage_failed`]). Keep
    /// `raw_info` so a restart needs no peer for it.
    OpenStorage {
        info: Box<Info>,
        raw_info: Bytes,
    },
    /// Save resume data; report [`TorrentCore::resume_saved`].
    SaveResume,
}

/// What happened, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    MetadataReady,
    PieceVerified(u32),
    Completed,
    /// A peer runs a DHT node there (BEP 5 PORT message).
    PeerDhtPort(SocketAddr),
    /// The torrent cannot go on.
    Failed(String),
}

/// Why an incoming connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("connection limit reached")]
    Full,
    #[error("too many connections from this address")]
    PerIpLimit,
    #[error("banned")]
    Banned,
    #[error("torrent has failed")]
    Failed,
}

/// A peer's totals over the torrent's life, by the address it can be reached at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTotals {
    /// Extended handshake `v`.
    pub client: Option<String>,
    pub downloaded: u64,
    pub uploaded: u64,
}

/// Per-address totals kept at most (new addresses beyond it are not counted).
const MAX_TOTALS: usize = 4096;
/// Dropped-connection reasons kept for stats.
const MAX_DROPPED: usize = 64;
/// Pieces whose failed blocks are kept for smart-ban comparison.
const MAX_FAILED_PIECES: usize = 64;
/// How often connected peers are offered to PEX.
const PEX_CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Dialing or accepted, handshake not done.
    Handshaking,
    Ready,
}

#[derive(Debug)]
struct Conn {
    /// The remote socket address.
    addr: SocketAddr,
    outgoing: bool,
    state: ConnState,
    opened_at: Instant,
    peer_id: Option<PeerId>,
    fast: bool,
    extended: bool,
    their_ut_metadata: Option<u8>,
    their_ut_pex: Option<u8>,
    /// Extended handshake `p`.
    listen_port: Option<u16>,
    client: Option<String>,
    reqq: Option<u32>,
    ext_handshakes: u32,
    metadata_requests: u32,
    pex_out: PexSender,
    pex_in: PexReceiver,
    slot: Option<PeerSlot>,
    pending: Pending,
    /// It had every piece when it went (set as it is forgotten).
    was_seed: bool,
}

impl Conn {
    /// Where this peer accepts connections: the address we dialed, or for an incoming
    /// connection its IP with the port it says it listens on.
    fn dial_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            Some(self.addr)
        } else {
            self.listen_port
                .filter(|&p| p != 0)
                .map(|p| SocketAddr::new(self.addr.ip(), p))
        }
    }

    /// The address its totals are kept under.
    fn totals_key(&self) -> SocketAddr {
        self.dial_addr().unwrap_or(self.addr)
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.addr];
        if let Some(d) = self.dial_addr().filter(|d| *d != self.addr) {
            v.push(d);
        }
        v
    }
}

/// A block as received, kept until its piece is verified (and, for smart-ban, after a
/// failure).
#[derive(Debug, Clone)]
struct Received {
    data: Bytes,
    from: PeerSlot,
}

/// Who sent what of a piece that failed its hash check.
#[derive(Debug)]
struct FailedBlock {
    begin: u32,
    digest: [u8; 20],
    from: PeerSlot,
    endpoints: Vec<SocketAddr>,
    peer_id: Option<PeerId>,
}

struct Pieces {
    engine: Engine,
    metadata: MetadataServer,
    private: bool,
    /// Blocks of pieces in progress, by offset.
    buffers: HashMap<u32, BTreeMap<u32, Received>>,
    /// Blocks of pieces being verified.
    verifying: HashMap<u32, Vec<(u32, Received)>>,
    /// Failed pieces awaiting a good copy to compare against (smart-ban).
    failed: HashMap<u32, Vec<FailedBlock>>,
    resume_saved_have: u32,
    resume_saving: bool,
}

enum Phase {
    Metadata(Box<MetadataFetcher<ConnId>>),
    /// The metadata is here; storage is being opened.
    Opening(Box<Info>, Bytes),
    Pieces(Box<Pieces>),
    Failed,
}

pub struct TorrentCore {
    cfg: CoreConfig,
    info_hash: InfoHash,
    phase: Phase,
    name: Option<String>,
    /// Ordered, so that every scan (PEX, simultaneous open, start of the pieces phase) goes
    /// the same way each run: the simulator's runs repeat exactly.
    conns: BTreeMap<ConnId, Conn>,
    by_slot: HashMap<PeerSlot, ConnId>,
    by_dial_addr: HashMap<SocketAddr, ConnId>,
    per_ip: HashMap<IpAddr, usize>,
    half_open: usize,
    next_conn: ConnId,
    dial: DialPolicy,
    bans: BanList,
    /// Addresses found to be ourselves.
    own: std::collections::HashSet<SocketAddr>,
    timers: TimerTable,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    totals: HashMap<SocketAddr, PeerTotals>,
    dropped: VecDeque<(SocketAddr, String)>,
    error: Option<String>,
}

impl TorrentCore {
    /// A torrent known only by its info-hash (a magnet link): metadata first.
    pub fn magnet(info_hash: InfoHash, cfg: CoreConfig, now: Instant) -> Self {
        let fetcher = MetadataFetcher::new(info_hash, cfg.metadata);
        Self::new(info_hash, Phase::Metadata(Box::new(fetcher)), cfg, now)
    }

    /// A torrent whose metadata we have, `have` being the pieces verified on disk.
    pub fn with_metadata(
        info_hash: InfoHash,
        info: &Info,
        raw_info: Bytes,
        have: Bitfield,
        cfg: CoreConfig,
        now: Instant,
    ) -> Result<Self, CoreError> {
        let pieces = Self::open_pieces(&cfg, info, raw_info, have, now)?;
        let mut core = Self::new(info_hash, Phase::Pieces(Box::new(pieces)), cfg, now);
        core.name = Some(info.name.clone());
        Ok(core)
    }

    fn new(info_hash: InfoHash, phase: Phase, cfg: CoreConfig, now: Instant) -> Self {
        let mut core = TorrentCore {
            dial: DialPolicy::new(cfg.dial.clone()),
            cfg,
            info_hash,
            phase,
            name: None,
            conns: BTreeMap::new(),
            by_slot: HashMap::new(),
            by_dial_addr: HashMap::new(),
            per_ip: HashMap::new(),
            half_open: 0,
            next_conn: 1,
            bans: BanList::default(),
            own: Default::default(),
            timers: TimerTable::default(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            totals: HashMap::new(),
            dropped: VecDeque::new(),
            error: None,
        };
        core.timers.set(Timer::Pex, Some(now + PEX_CHECK_EVERY));
        core.timers
            .set(Timer::Resume, Some(now + core.cfg.resume_interval));
        core.refresh_timers();
        core
    }

    fn open_pieces(
        cfg: &CoreConfig,
        info: &Info,
        raw_info: Bytes,
        have: Bitfield,
        now: Instant,
    ) -> Result<Pieces, CoreError> {
        let geo = Geometry::from_info(info)?;
        let have_count = have.count_ones();
        let engine = Engine::new(geo, have, cfg.engine.clone(), now, cfg.rng_seed)?;
        Ok(Pieces {
            engine,
            metadata: MetadataServer::new(raw_info),
            private: info.private,
            buffers: HashMap::new(),
            verifying: HashMap::new(),
            failed: HashMap::new(),
            resume_saved_have: have_count,
            resume_saving: false,
        })
    }

    // ---- queries --------------------------------------------------------------------

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn engine(&self) -> Option<&Engine> {
        match &self.phase {
            Phase::Pieces(p) => Some(&p.engine),
            _ => None,
        }
    }

    /// Piece count, once the metadata is known.
    pub fn piece_count(&self) -> Option<u32> {
        match &self.phase {
            Phase::Pieces(p) => Some(p.engine.geometry().piece_count),
            Phase::Opening(info, _) => Some(info.num_pieces() as u32),
            _ => None,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.engine().is_some_and(|e| e.is_complete())
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Connections, with a handshake or not.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Payload totals per peer address over the torrent's life.
    pub fn totals(&self) -> &HashMap<SocketAddr, PeerTotals> {
        &self.totals
    }

    /// The most recent dropped connections and why (bounded).
    pub fn dropped(&self) -> impl Iterator<Item = &(SocketAddr, String)> {
        self.dropped.iter()
    }

    /// Connected peers: remote address, client name and engine slot.
    pub fn peers(&self) -> impl Iterator<Item = (SocketAddr, Option<&str>, Option<PeerSlot>)> {
        self.conns
            .values()
            .filter(|c| c.state == ConnState::Ready)
            .map(|c| (c.totals_key(), c.client.as_deref(), c.slot))
    }

    pub fn banned_endpoints(&self) -> usize {
        self.bans.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`TorrentCore::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Copies the driven machines' deadlines into the table.
    fn refresh_timers(&mut self) {
        let phase = match &self.phase {
            Phase::Pieces(p) => p.engine.poll_timeout(),
            Phase::Metadata(f) => f.poll_timeout(),
            _ => None,
        };
        self.timers.set(Timer::Phase, phase);
        self.timers.set(Timer::Dial, self.dial.poll_timeout());
    }

    // ---- inputs: peers and connections ---------------------------------------------

    /// Asks for `pieces` before any other (a streaming reader waits on them); ignored
    /// until the metadata is known.
    pub fn set_urgent(&mut self, now: Instant, pieces: &[u32]) {
        if let Phase::Pieces(p) = &mut self.phase {
            p.engine.set_urgent(now, pieces);
        }
    }

    /// A peer heard of (DHT, PEX, hint, user); dialed when there is room.
    pub fn add_peer(&mut self, now: Instant, addr: SocketAddr, source: PeerSource) {
        if !is_dialable(addr) || self.is_own(addr) {
            return;
        }
        self.dial.add(addr, source);
        self.after(now);
    }

    /// Someone connected to us (its handshake names this torrent). Admits it or says why
    /// not; the driver then sends our handshake and reports
    /// [`TorrentCore::handshake_done`].
    pub fn accept(&mut self, now: Instant, addr: SocketAddr) -> Result<ConnId, Refusal> {
        if matches!(self.phase, Phase::Failed) {
            return Err(Refusal::Failed);
        }
        if self.bans.is_ip_banned(addr.ip()) {
            return Err(Refusal::Banned);
        }
        if self.conns.len() >= self.cfg.engine.max_peers {
            return Err(Refusal::Full);
        }
        if self.per_ip.get(&addr.ip()).copied().unwrap_or(0) >= self.cfg.max_conns_per_ip {
            return Err(Refusal::PerIpLimit);
        }
        Ok(self.new_conn(now, addr, false))
    }

    fn new_conn(&mut self, now: Instant, addr: SocketAddr, outgoing: bool) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        *self.per_ip.entry(addr.ip()).or_default() += 1;
        if outgoing {
            self.half_open += 1;
            self.by_dial_addr.insert(addr, id);
        }
        self.conns.insert(
            id,
            Conn {
                addr,
                outgoing,
                state: ConnState::Handshaking,
                opened_at: now,
                peer_id: None,
                fast: false,
                extended: false,
                their_ut_metadata: None,
                their_ut_pex: None,
                listen_port: None,
                client: None,
                reqq: None,
                ext_handshakes: 0,
                metadata_requests: 0,
                pex_out: PexSender::new(addr),
                pex_in: PexReceiver::default(),
                slot: None,
                pending: Pending::default(),
                was_seed: false,
            },
        );
        id
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        if self.own.contains(&addr) {
            return true;
        }
        let Some(port) = self.cfg.listen_port else {
            return false;
        };
        addr.port() == port
            && match self.cfg.listen_ip {
                Some(ip) if !ip.is_unspecified() => ip == addr.ip(),
                _ => addr.ip().is_loopback() || addr.ip().is_unspecified(),
            }
    }

    /// Dials due addresses while there is room.
    fn dial_more(&mut self, _now: Instant) {
        if matches!(self.phase, Phase::Failed) {
            return;
        }
        while self.conns.len() < self.cfg.engine.max_peers
            && self.half_open < self.cfg.max_half_open
            && self.dial.has_due()
        {
            let (bans, own, by_dial, per_ip, max_ip) = (
                &self.bans,
                &self.own,
                &self.by_dial_addr,
                &self.per_ip,
                self.cfg.max_conns_per_ip,
            );
            let (listen_port, listen_ip) = (self.cfg.listen_port, self.cfg.listen_ip);
            let is_own = |a: SocketAddr| {
                own.contains(&a)
                    || listen_port == Some(a.port())
                        && match listen_ip {
                            Some(ip) if !ip.is_unspecified() => ip == a.ip(),
                            _ => a.ip().is_loopback(),
                        }
            };
            let next = self.dial.next(|a| {
                if bans.is_endpoint_banned(a) || is_own(a) {
                    Admit::Never
                } else if by_dial.contains_key(&a) {
                    Admit::Skip
                } else if per_ip.get(&a.ip()).copied().unwrap_or(0) >= max_ip {
                    Admit::Later
                } else {
                    Admit::Yes
                }
            });
            let Some((addr, encrypt)) = next else { break };
            let conn = self.new_conn(_now, addr, true);
            self.outputs.push_back(Output::Dial {
                conn,
                addr,
                encrypt,
            });
        }
    }

    /// The BitTorrent handshake on `conn` checked out.
    pub fn handshake_done(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer_id: PeerId,
        reserved: Reserved,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state != ConnState::Handshaking {
            return;
        }
        if c.outgoing {
            self.half_open = self.half_open.saturating_sub(1);
        }
        c.state = ConnState::Ready;
        c.peer_id = Some(peer_id);
        let (addr, outgoing) = (c.addr, c.outgoing);
        if peer_id == self.cfg.peer_id {
            if outgoing {
                self.own.insert(addr);
            }
            self.close(now, conn, "connected to ourselves".into());
            return self.after(now);
        }
        if self.bans.is_peer_id_banned(&peer_id) || self.bans.is_endpoint_banned(addr) {
            self.close(now, conn, "banned".into());
            return self.after(now);
        }
        if let Some(loser) = self.duplicate_of(conn, addr.ip(), peer_id, outgoing) {
            if loser == conn {
                self.close(now, conn, "duplicate connection".into());
                return self.after(now);
            }
            self.close(now, loser, "duplicate connection".into());
        }
        let common = reserved.common(&self.reserved());
        let c = self.conns.get_mut(&conn).expect("checked");
        c.fast = common.fast();
        c.extended = common.extension_protocol();
        if outgoing {
            self.dial.connected(addr, PeerSource::Dht);
        }
        match &self.phase {
            Phase::Pieces(_) => self.register(now, conn, false),
            Phase::Metadata(_) | Phase::Opening(..) => {
                // We have nothing; say so first (BEP 6 wants it before anything else).
                if self.conns[&conn].fast {
                    self.send(conn, Message::HaveNone);
                }
            }
            Phase::Failed => {}
        }
        if self.conns.get(&conn).is_some_and(|c| c.extended) {
            self.send_extended_handshake(conn);
        }
        // BEP 5: tell a DHT-capable peer where our node is.
        if let (Some(port), true) = (self.cfg.dht_port, common.dht()) {
            self.send(conn, Message::Port(port));
        }
        self.after(now);
    }

    /// The reserved bits of our handshake: extension protocol, Fast, and DHT when we run
    /// a node.
    pub fn reserved(&self) -> Reserved {
        Reserved::OURS.with_dht(self.cfg.dht_port.is_some())
    }

    /// Simultaneous open: two connections between the same two peers. Both sides keep
    /// the one opened by the peer with the smaller id (the older one when both go the
    /// same way), so they agree without talking. Returns the connection to close.
    fn duplicate_of(
        &self,
        conn: ConnId,
        ip: IpAddr,
        peer_id: PeerId,
        outgoing: bool,
    ) -> Option<ConnId> {
        let (&other, o) = self.conns.iter().find(|(&id, c)| {
            id != conn
                && c.state == ConnState::Ready
                && c.peer_id == Some(peer_id)
                && c.addr.ip() == ip
        })?;
        if o.outgoing == outgoing {
            return Some(conn);
        }
        let keep_ours = self.cfg.peer_id.0 < peer_id.0;
        let new_is_ours = outgoing;
        Some(if new_is_ours == keep_ours {
            other
        } else {
            conn
        })
    }

    fn send_extended_handshake(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let size = match &self.phase {
            Phase::Pieces(p) => Some(p.metadata.metadata_size()),
            _ => None,
        };
        let mut hs = ExtendedHandshake::ours(self.cfg.listen_port, size, Some(c.addr.ip()));
        if self.is_private() {
            hs.extensions.remove(UT_PEX);
        }
        self.send(
            conn,
            Message::Extended {
                id: HANDSHAKE_ID,
                payload: Bytes::from(hs.encode()),
            },
        );
    }

    /// Hands a ready connection to the engine (which queues our bitfield first).
    fn register(&mut self, now: Instant, conn: ConnId, announced_nothing: bool) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let info = PeerInfo {
            addr: Some(c.addr),
            fast: c.fast,
            reqq: c.reqq,
            announced_nothing,
        };
        match p.engine.peer_connected(now, info) {
            Ok(slot) => {
                c.slot = Some(slot);
                self.by_slot.insert(slot, conn);
                // Now, so the bitfield goes out before anything the caller sends.
                self.pump_engine(now);
            }
            Err(e) => self.close(now, conn, format!("refused: {e}")),
        }
    }

    /// The connection ended (by the peer, a timeout or an error). A dial that never got
    /// through is retried with backoff; a peer that closed an established connection
    /// while it still had a use for us or we for it is dialed again, a bounded number of
    /// times.
    pub fn closed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let Some(c) = self.forget(now, conn, reason.to_string()) else {
            return;
        };
        match c.state {
            ConnState::Handshaking if c.outgoing => self.dial.failed(now, c.addr),
            ConnState::Handshaking => {}
            ConnState::Ready => {
                if let Some(addr) = c.dial_addr() {
                    let still_connected = self.conns.values().any(|o| {
                        o.state == ConnState::Ready
                            && o.peer_id == c.peer_id
                            && o.addr.ip() == c.addr.ip()
                    });
                    let redial = !still_connected && self.still_useful(&c);
                    self.dial.ended(
                        now,
                        addr,
                        now.saturating_duration_since(c.opened_at),
                        redial,
                    );
                }
            }
        }
        self.after(now);
    }

    /// Whether a lost peer is worth dialing again: unless we are complete and it is a seed.
    fn still_useful(&self, c: &Conn) -> bool {
        match &self.phase {
            Phase::Pieces(p) => !p.engine.is_complete() || !c.was_seed,
            Phase::Failed => false,
            _ => true,
        }
    }

    /// Removes a connection from every table; returns it.
    fn forget(&mut self, now: Instant, conn: ConnId, reason: String) -> Option<Conn> {
        let mut c = self.conns.remove(&conn)?;
        if let Some(n) = self.per_ip.get_mut(&c.addr.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.addr.ip());
            }
        }
        if c.outgoing && c.state == ConnState::Handshaking {
            self.half_open = self.half_open.saturating_sub(1);
        }
        if let Some(d) = c.dial_addr() {
            if self.by_dial_addr.get(&d) == Some(&conn) {
                self.by_dial_addr.remove(&d);
            }
        }
        tracing::debug!(peer = %c.addr, "dropped: {reason}");
        if self.dropped.len() >= MAX_DROPPED {
            self.dropped.pop_front();
        }
        self.dropped.push_back((c.addr, reason));
        match &mut self.phase {
            Phase::Pieces(p) => {
                if let Some(slot) = c.slot {
                    c.was_seed = p.engine.peer_stats(slot).is_some_and(|s| s.is_seed);
                    self.by_slot.remove(&slot);
                    p.engine.peer_disconnected(now, slot);
                }
            }
            Phase::Metadata(f) => f.remove_peer(now, conn),
            _ => {}
        }
        Some(c)
    }

    /// We close `conn` (the driver is told). Its address is not dialed again for it
    /// (unless the user named it), and no longer counts as connected unless another
    /// connection to the same peer holds it.
    fn close(&mut self, now: Instant, conn: ConnId, reason: String) {
        let Some(c) = self.forget(now, conn, reason.clone()) else {
            return;
        };
        if let Some(a) = c.dial_addr().filter(|a| !self.by_dial_addr.contains_key(a)) {
            self.dial.ended(now, a, Duration::ZERO, false);
        }
        self.outputs.push_back(Output::Close { conn, reason });
    }

    /// The driver drops `conn` for a reason of its own (the peer does not read what we
    /// send): closed as if we decided it, never re-dialed for it.
    pub fn drop_peer(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.close(now, conn, reason.to_string());
        self.after(now);
    }

    /// We close `conn` for sending bad data: its endpoint and peer id are banned.
    fn ban(&mut self, now: Instant, conn: ConnId, reason: String) {
        if let Some(c) = self.conns.get(&conn) {
            self.bans.ban(&c.endpoints(), c.peer_id);
        }
        self.close(now, conn, reason);
    }

    /// Closes every connection (the driver then saves resume data).
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(now, id, "shutting down".into());
        }
    }

    // ---- inputs: messages -----------------------------------------------------------

    pub fn message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state != ConnState::Ready {
            return;
        }
        match msg {
            Message::KeepAlive | Message::Unknown { .. } => {}
            Message::Port(port) => {
                if port != 0 {
                    let addr = SocketAddr::new(c.addr.ip(), port);
                    self.events.push_back(Event::PeerDhtPort(addr));
                }
            }
            Message::Extended {
                id: HANDSHAKE_ID,
                payload,
            } => self.on_extended_handshake(now, conn, &payload),
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.on_ut_metadata(now, conn, &payload),
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } => self.on_pex(now, conn, &payload),
            Message::Extended { .. } => {}
            other => self.on_peer_message(now, conn, other),
        }
        self.after(now);
    }

    fn on_extended_handshake(&mut self, now: Instant, conn: ConnId, payload: &[u8]) {
        let c = self.conns.get_mut(&conn).expect("checked");
        c.ext_handshakes += 1;
        if c.ext_handshakes > self.cfg.max_extended_handshakes {
            return self.close(now, conn, "too many extended handshakes".into());
        }
        let Ok(hs) = ExtendedHandshake::parse(payload) else {
            return self.close(now, conn, "malformed extended handshake".into());
        };
        c.their_ut_metadata = hs.id_of(UT_METADATA);
        c.their_ut_pex = hs.id_of(UT_PEX);
        c.reqq = hs.request_queue;
        if let Some(v) = hs.client {
            c.client = Some(v);
        }
        if !c.outgoing && c.listen_port.is_none() {
            if let Some(p) = hs.listen_port.filter(|&p| p != 0) {
                c.listen_port = Some(p);
                let d = SocketAddr::new(c.addr.ip(), p);
                if self.bans.is_endpoint_banned(d) {
                    return self.close(now, conn, "banned".into());
                }
                self.by_dial_addr.entry(d).or_insert(conn);
                self.dial.connected(d, PeerSource::Incoming);
            }
        }
        let (ip, ut_metadata, slot) = (c.addr.ip(), c.their_ut_metadata, c.slot);
        match &mut self.phase {
            Phase::Pieces(p) => {
                if let (Some(slot), Some(q)) = (slot, hs.request_queue) {
                    p.engine.set_peer_reqq(slot, q);
                }
            }
            Phase::Metadata(f) if ut_metadata.is_some() => {
                if let Verdict::Violation(why) =
                    f.add_peer_from(now, conn, hs.metadata_size, Some(ip))
                {
                    self.close(now, conn, format!("metadata: {why}"));
                }
            }
            _ => {}
        }
    }

    fn on_ut_metadata(&mut self, now: Instant, conn: ConnId, payload: &Bytes) {
        let parsed = match MetadataMessage::parse(payload) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => return self.close(now, conn, format!("bad ut_metadata message: {e}")),
        };
        let c = self.conns.get_mut(&conn).expect("checked");
        let their = c.their_ut_metadata;
        match (&mut self.phase, parsed) {
            (Phase::Pieces(p), MetadataMessage::Request { piece }) => {
                // Each answer is up to 16 KiB for a 30-byte request: a peer that asks
                // again and again is cut off.
                c.metadata_requests += 1;
                let blocks = p.metadata.metadata_size().div_ceil(16384) as u32;
                if c.metadata_requests > 4 * blocks + 16 {
                    return self.close(now, conn, "too many metadata requests".into());
                }
                if let Some(their) = their {
                    let reply = p.metadata.respond(piece).encode();
                    self.send_extended(conn, their, reply);
                }
            }
            (_, MetadataMessage::Request { piece }) => {
                c.metadata_requests += 1;
                if c.metadata_requests > 64 {
                    return self.close(now, conn, "too many metadata requests".into());
                }
                if let Some(their) = their {
                    let reply = MetadataMessage::Reject { piece }.encode();
                    self.send_extended(conn, their, reply);
                }
            }
            (Phase::Metadata(f), m) => {
                if let Verdict::Violation(why) = f.on_message(now, conn, &m) {
                    self.close(now, conn, format!("metadata: {why}"));
                }
            }
            _ => {}
        }
    }

    fn on_pex(&mut self, now: Instant, conn: ConnId, payload: &[u8]) {
        let msg = match PexMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => return self.close(now, conn, format!("bad ut_pex message: {e}")),
        };
        let c = self.conns.get_mut(&conn).expect("checked");
        // Rate-limited and capped per sender.
        let Some(msg) = c.pex_in.accept(now, msg) else {
            return;
        };
        // BEP 27: a private torrent takes peers from its trackers only. Before the
        // metadata we cannot tell, but peers of a private torrent send no PEX.
        if self.is_private() {
            return;
        }
        for (addr, _flags) in msg.added {
            if is_dialable(addr) && !self.is_own(addr) {
                self.dial.add(addr, PeerSource::Pex);
            }
        }
    }

    fn on_peer_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let c = self.conns.get_mut(&conn).expect("checked");
        if let Message::Piece { data, .. } = &msg {
            let key = c.totals_key();
            let client = c.client.clone();
            credit(&mut self.totals, key, client, data.len() as u64, 0);
        }
        match &mut self.phase {
            Phase::Pieces(p) => {
                if let Some(slot) = c.slot {
                    p.engine.handle_message(now, slot, msg);
                }
            }
            Phase::Metadata(_) | Phase::Opening(..) => {
                if c.pending.note(&msg).is_err() {
                    self.close(now, conn, "too much state before the metadata".into());
                }
            }
            Phase::Failed => {}
        }
    }

    // ---- inputs: disk ---------------------------------------------------------------

    /// A block handed out with [`Output::Upload`] was sent (or dropped).
    pub fn block_sent(&mut self, now: Instant, conn: ConnId) {
        let slot = self.conns.get(&conn).and_then(|c| c.slot);
        if let (Phase::Pieces(p), Some(slot)) = (&mut self.phase, slot) {
            p.engine.block_sent(now, slot);
        }
        self.after(now);
    }

    /// The result of [`Output::Verify`]: `Ok(true)` verified and written, `Ok(false)`
    /// the hash did not match, `Err` the write failed.
    pub fn piece_written(
        &mut self,
        now: Instant,
        piece: u32,
        result: Result<bool, crate::storage::StorageError>,
    ) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let blocks = p.verifying.remove(&piece).unwrap_or_default();
        let ok = match result {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!("writing piece {piece} failed: {e}");
                self.error = Some(format!("writing piece {piece}: {e}"));
                false
            }
        };
        if ok {
            self.events.push_back(Event::PieceVerified(piece));
            if let Some(failed) = p.failed.remove(&piece) {
                self.smart_ban(now, failed, &blocks);
            }
        } else if !blocks.is_empty() && self.error.is_none() {
            let failed = blocks
                .iter()
                .map(|(begin, r)| {
                    let conn = self.by_slot.get(&r.from).and_then(|c| self.conns.get(c));
                    FailedBlock {
                        begin: *begin,
                        digest: Sha1::digest(&r.data).into(),
                        from: r.from,
                        endpoints: conn.map(Conn::endpoints).unwrap_or_default(),
                        peer_id: conn.and_then(|c| c.peer_id),
                    }
                })
                .collect();
            if p.failed.len() < MAX_FAILED_PIECES {
                p.failed.insert(piece, failed);
            }
        }
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        p.engine.piece_verified(now, piece, ok);
        self.after(now);
    }

    /// Smart-ban: a piece that failed before has now verified. Whoever sent a block that
    /// differs from the good copy sent bad data; whoever sent a matching one is cleared.
    fn smart_ban(&mut self, now: Instant, failed: Vec<FailedBlock>, good: &[(u32, Received)]) {
        let good: HashMap<u32, &Bytes> = good.iter().map(|(b, r)| (*b, &r.data)).collect();
        for f in failed {
            let Some(data) = good.get(&f.begin) else {
                continue;
            };
            let digest: [u8; 20] = Sha1::digest(data).into();
            let conn = self.by_slot.get(&f.from).copied();
            if digest == f.digest {
                if let Phase::Pieces(p) = &mut self.phase {
                    p.engine.forgive(f.from);
                }
                continue;
            }
            self.bans.ban(&f.endpoints, f.peer_id);
            if let Some(conn) = conn {
                self.close(now, conn, "sent a block that failed the hash check".into());
            }
        }
    }

    /// Storage for the metadata that arrived is open; `have` is what is on disk.
    pub fn storage_ready(&mut self, now: Instant, have: Bitfield) {
        let Phase::Opening(info, raw) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return;
        };
        match Self::open_pieces(&self.cfg, &info, raw, have, now) {
            Ok(p) => self.phase = Phase::Pieces(Box::new(p)),
            Err(e) => return self.fail(now, e.to_string()),
        }
        // Every ready connection joins the engine; what they said meanwhile is replayed.
        let ready: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Ready)
            .map(|(&id, _)| id)
            .collect();
        for conn in ready {
            self.register(now, conn, true);
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let (slot, extended) = (c.slot, c.extended);
            let replay = std::mem::take(&mut c.pending).replay();
            if let (Phase::Pieces(p), Some(slot)) = (&mut self.phase, slot) {
                for m in replay {
                    p.engine.handle_message(now, slot, m);
                }
            }
            // Now we can serve the metadata too: say its size.
            if extended {
                self.send_extended_handshake(conn);
            }
        }
        self.after(now);
    }

    pub fn storage_failed(&mut self, now: Instant, error: &dyn std::error::Error) {
        self.fail(now, error.to_string());
    }

    fn fail(&mut self, now: Instant, reason: String) {
        self.error = Some(reason.clone());
        self.phase = Phase::Failed;
        self.shutdown(now);
        self.events.push_back(Event::Failed(reason));
    }

    /// A [`Output::SaveResume`] finished.
    pub fn resume_saved(&mut self, _now: Instant, have: u32, ok: bool) {
        if let Phase::Pieces(p) = &mut self.phase {
            p.resume_saving = false;
            if ok {
                p.resume_saved_have = have;
            }
        }
    }

    // ---- time -----------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<Timer> = self.timers.expired(now).collect();
        for t in due {
            match t {
                Timer::Phase => match &mut self.phase {
                    Phase::Pieces(p) => p.engine.handle_timeout(now),
                    Phase::Metadata(f) => f.handle_timeout(now),
                    _ => {}
                },
                Timer::Dial => self.dial.handle_timeout(now),
                Timer::Pex => {
                    self.timers.set(Timer::Pex, Some(now + PEX_CHECK_EVERY));
                    self.send_pex(now);
                }
                Timer::Resume => {
                    self.timers
                        .set(Timer::Resume, Some(now + self.cfg.resume_interval));
                    self.save_resume_if_needed();
                }
            }
        }
        self.after(now);
    }

    fn save_resume_if_needed(&mut self) {
        if let Phase::Pieces(p) = &mut self.phase {
            let have = p.engine.have().count_ones();
            if !p.resume_saving && have != p.resume_saved_have {
                p.resume_saving = true;
                self.outputs.push_back(Output::SaveResume);
            }
        }
    }

    /// Tells every PEX-capable peer about the peers we are connected to (once we know the
    /// torrent is not private). Each peer's [`PexSender`] sends only changes, at most one
    /// message a minute and 50 peers a message.
    fn send_pex(&mut self, now: Instant) {
        let Phase::Pieces(p) = &self.phase else {
            return;
        };
        if p.private {
            return;
        }
        let connected: Vec<(SocketAddr, u8)> = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Ready)
            .filter_map(|c| {
                let addr = c.dial_addr()?;
                let mut flags = 0;
                if c.outgoing {
                    flags |= pex_flags::REACHABLE;
                }
                let seed = c
                    .slot
                    .and_then(|s| p.engine.peer_stats(s))
                    .is_some_and(|s| s.is_seed);
                if seed {
                    flags |= pex_flags::SEED;
                }
                Some((addr, flags))
            })
            .collect();
        let mut out = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            let Some(their) = c.their_ut_pex.filter(|_| c.state == ConnState::Ready) else {
                continue;
            };
            let own = c.dial_addr();
            let others: Vec<(SocketAddr, u8)> = connected
                .iter()
                .filter(|(a, _)| Some(*a) != own)
                .copied()
                .collect();
            if let Some(msg) = c.pex_out.poll(now, &others) {
                out.push((id, their, msg.encode()));
            }
        }
        for (id, their, payload) in out {
            self.send_extended(id, their, payload);
        }
    }

    // ---- outputs --------------------------------------------------------------------

    fn send(&mut self, conn: ConnId, msg: Message) {
        self.outputs.push_back(Output::Send { conn, msg });
    }

    fn send_extended(&mut self, conn: ConnId, id: u8, payload: Vec<u8>) {
        self.send(
            conn,
            Message::Extended {
                id,
                payload: Bytes::from(payload),
            },
        );
    }

    fn is_private(&self) -> bool {
        matches!(&self.phase, Phase::Pieces(p) if p.private)
            || matches!(&self.phase, Phase::Opening(i, _) if i.private)
    }

    /// After every input: carry out what the engine and the fetcher decided, dial if
    /// there is room.
    fn after(&mut self, now: Instant) {
        self.pump_fetcher(now);
        self.pump_engine(now);
        self.dial_more(now);
        self.refresh_timers();
    }

    fn pump_fetcher(&mut self, now: Instant) {
        let Phase::Metadata(f) = &mut self.phase else {
            return;
        };
        let mut done = None;
        let mut culprits = Vec::new();
        let mut requests = Vec::new();
        while let Some(ev) = f.poll_event() {
            match ev {
                FetchEvent::Request { peer, piece } => requests.push((peer, piece)),
                FetchEvent::HashMismatch { culprit, .. } => culprits.extend(culprit),
                FetchEvent::Complete { info } => done = Some(info),
            }
        }
        for (peer, piece) in requests {
            if let Some(their) = self.conns.get(&peer).and_then(|c| c.their_ut_metadata) {
                self.send_extended(peer, their, MetadataMessage::Request { piece }.encode());
            }
        }
        for c in culprits {
            self.ban(
                now,
                c,
                "sent metadata that does not match the info-hash".into(),
            );
        }
        if let Some(raw) = done {
            match Info::from_bytes(&raw) {
                Ok(info) => {
                    self.name = Some(info.name.clone());
                    self.outputs.push_back(Output::OpenStorage {
                        info: Box::new(info.clone()),
                        raw_info: raw.clone(),
                    });
                    self.phase = Phase::Opening(Box::new(info), raw);
                    self.events.push_back(Event::MetadataReady);
                }
                Err(e) => self.fail(now, format!("metadata is not a valid info dictionary: {e}")),
            }
        }
    }

    fn pump_engine(&mut self, now: Instant) {
        loop {
            let Phase::Pieces(p) = &mut self.phase else {
                return;
            };
            let Some(a) = p.engine.poll_action() else {
                break;
            };
            match a {
                Action::Send { slot, message } => {
                    if let Some(&conn) = self.by_slot.get(&slot) {
                        self.send(conn, message);
                    }
                }
                Action::ReadBlock { slot, block } => match self.by_slot.get(&slot) {
                    Some(&conn) => {
                        if let Some(c) = self.conns.get(&conn) {
                            let (key, client) = (c.totals_key(), c.client.clone());
                            credit(&mut self.totals, key, client, 0, block.length as u64);
                        }
                        self.outputs.push_back(Output::Upload { conn, block });
                    }
                    None => p.engine.block_sent(now, slot),
                },
                Action::WriteBlock { block, data, from } => {
                    p.buffers
                        .entry(block.piece)
                        .or_default()
                        .insert(block.offset, Received { data, from });
                }
                Action::VerifyPiece { piece } => {
                    let blocks: Vec<(u32, Received)> = p
                        .buffers
                        .remove(&piece)
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                    let data = blocks.iter().map(|(_, r)| r.data.clone()).collect();
                    p.verifying.insert(piece, blocks);
                    self.outputs.push_back(Output::Verify {
                        piece,
                        blocks: data,
                    });
                }
                Action::Disconnect { slot, reason } => {
                    let Some(conn) = self.by_slot.remove(&slot) else {
                        continue;
                    };
                    if reason == DisconnectReason::BadData {
                        if let Some(c) = self.conns.get(&conn) {
                            self.bans.ban(&c.endpoints(), c.peer_id);
                        }
                    }
                    // The engine forgot the slot already.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.slot = None;
                    }
                    self.close(now, conn, reason.to_string());
                }
                Action::Completed => {
                    self.events.push_back(Event::Completed);
                    self.save_resume_if_needed();
                }
            }
        }
    }
}

/// Adds to a peer's totals (bounded: new addresses beyond [`MAX_TOTALS`] are not kept).
fn credit(
    totals: &mut HashMap<SocketAddr, PeerTotals>,
    key: SocketAddr,
    client: Option<String>,
    down: u64,
    up: u64,
) {
    if totals.len() >= MAX_TOTALS && !totals.contains_key(&key) {
        return;
    }
    let t = totals.entry(key).or_default();
    t.downloaded += down;
    t.uploaded += up;
    if t.client.is_none() {
        t.client = client;
    }
}

/// Whether an address is worth a dial: not unspecified, multicast, broadcast or port 0.
pub fn is_dialable(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}
