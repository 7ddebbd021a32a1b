//! The torrent task: owns the engine (after the metadata fetcher, for magnets), the
//! connection table and the piece buffers; turns engine actions into socket and disk work.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::connection::{self, ConnId, ConnParams, FromConn, SentNotice, ToConn};
use super::convert::{to_engine, to_wire};
use super::{Command, PeerSnapshot, SessionConfig, SessionError, Source, TorrentStats};
use crate::engine::{Action, Bitfield, BlockRef, Engine, Geometry, PeerInfo, PeerSlot};
use crate::extension::{
    pex_flags, ExtendedHandshake, FetchEvent, FetcherConfig, MetadataFetcher, MetadataMessage,
    MetadataServer, PexMessage, PexReceiver, PexSender, Verdict, HANDSHAKE_ID, OUR_UT_METADATA_ID,
    OUR_UT_PEX_ID,
};
use crate::infohash::InfoHash;
use crate::metainfo::{Info, Metainfo};
use crate::peer::{Message, Reserved};
use crate::storage::{ResumeStatus, Storage, StorageLayout, StorageOptions};

/// Addresses remembered as wanting an encrypted dial (a bound on the table).
const MAX_DIAL_ENCRYPTED: usize = 10_000;

/// How often connected peers are offered to PEX.
const PEX_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Connects to `addr`, from `local` when we listen on a specific IP of the same family:
/// peers then see the address we accept on (what PEX and BEP 10 `yourip` report), and
/// `--bind` means what a user expects for outgoing traffic too.
async fn dial(local: Option<std::net::IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = local.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Whether a PEX address is worth a dial: not unspecified, multicast or broadcast.
fn is_dialable(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    !ip.is_unspecified()
        && !ip.is_multicast()
        && !matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// Dropped-connection reasons kept for stats.
const MAX_DROPPED: usize = 64;
/// Messages kept per peer while the metadata is unknown (bitfield + haves).
const MAX_BACKLOG: usize = 100_000;
/// An outgoing connection that fails before the handshake completes (refused, reset,
/// closed: clients often do that while a torrent is starting) is retried this many
/// times, after 1, 2, 4, ... seconds.
const MAX_RETRIES: u32 = 4;

enum DiskDone {
    Verified {
        piece: u32,
        result: Result<bool, String>,
    },
    Sent {
        slot: PeerSlot,
    },
    ResumeSaved {
        have: u32,
        result: Result<(), String>,
    },
}

struct ReadJob {
    slot: PeerSlot,
    block: BlockRef,
    conn: mpsc::UnboundedSender<ToConn>,
    done: mpsc::UnboundedSender<DiskDone>,
}

struct Conn {
    addr: SocketAddr,
    outgoing: bool,
    tx: mpsc::UnboundedSender<ToConn>,
    ready: bool,
    fast: bool,
    extended: bool,
    their_ut_metadata: Option<u8>,
    their_ut_pex: Option<u8>,
    /// ut_metadata requests answered on this connection.
    metadata_requests: u32,
    /// The port they accept connections on (extended handshake `p`).
    their_listen_port: Option<u16>,
    pex_out: PexSender,
    pex_in: PexReceiver,
    reqq: Option<u32>,
    slot: Option<PeerSlot>,
    backlog: Vec<Message>,
}

impl Conn {
    /// Where others can connect to this peer, as told in PEX: the address we dialed, or
    /// for an incoming connection its IP with the port it says it listens on.
    fn pex_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            Some(self.addr)
        } else {
            self.their_listen_port
                .filter(|&p| p != 0)
                .map(|p| SocketAddr::new(self.addr.ip(), p))
        }
    }
}

struct Pieces {
    engine: Engine,
    storage: Arc<Storage>,
    metadata: MetadataServer,
    /// Blocks of pieces in progress, by offset, as received (zero-copy slices of the
    /// connections' read buffers); hashed and joined off this task.
    buffers: HashMap<u32, BTreeMap<u32, Bytes>>,
    reads: std::sync::mpsc::Sender<ReadJob>,
    /// BEP 27: a private torrent gets peers only from its trackers; no PEX.
    private: bool,
    resume: Option<ResumeState>,
    /// Held while resume data is written (a background save and the one at shutdown
    /// share one temporary file name).
    resume_lock: Arc<std::sync::Mutex<()>>,
}

/// Periodic resume saves: at most one at a time, only when pieces were added.
struct ResumeState {
    path: PathBuf,
    /// Pieces present at the last successful save (or at start).
    saved_have: u32,
    saving: bool,
    next_save: Instant,
}

enum Phase {
    Metadata(Box<MetadataFetcher<ConnId>>),
    Pieces(Box<Pieces>),
    Failed,
}

struct Task {
    cfg: SessionConfig,
    info_hash: InfoHash,
    out_dir: PathBuf,
    listen_port: Option<u16>,
    phase: Phase,
    name: Option<String>,
    conns: HashMap<ConnId, Conn>,
    by_slot: HashMap<PeerSlot, ConnId>,
    addrs: HashSet<SocketAddr>,
    next_id: ConnId,
    /// Failed attempts per address, and when to try again.
    retries: HashMap<SocketAddr, u32>,
    retry_at: Vec<(Instant, SocketAddr)>,
    /// Addresses to dial with the MSE handshake: a failed plaintext attempt (peers that
    /// require encryption close it) is retried encrypted, and the other way round.
    dial_encrypted: HashSet<SocketAddr>,
    events_tx: mpsc::UnboundedSender<FromConn>,
    disk_tx: mpsc::UnboundedSender<DiskDone>,
    stats_tx: watch::Sender<TorrentStats>,
    received_from: BTreeMap<SocketAddr, u64>,
    dropped: VecDeque<(SocketAddr, String)>,
    error: Option<String>,
    rate: (Instant, u64, u64, f64, f64),
    /// When connected peers are next offered to PEX (each peer's sender rate-limits
    /// itself to one message a minute; this only bounds how often we look).
    next_pex: Instant,
}

pub(super) async fn spawn(
    source: Source,
    out_dir: PathBuf,
    cfg: SessionConfig,
    listener: Option<TcpListener>,
    listen_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Result<(JoinHandle<()>, watch::Receiver<TorrentStats>), SessionError> {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (disk_tx, disk_rx) = mpsc::unbounded_channel();
    // A magnet whose metadata an earlier run saved starts like a .torrent.
    let source = match source {
        Source::InfoHash(h) => match saved_metadata(&cfg, h) {
            Some(m) => Source::Metainfo(Box::new(m)),
            None => Source::InfoHash(h),
        },
        other => other,
    };
    let (info_hash, phase, name) = match source {
        Source::InfoHash(h) => (
            h,
            Phase::Metadata(Box::new(MetadataFetcher::new(h, FetcherConfig::default()))),
            None,
        ),
        Source::Metainfo(m) => {
            let raw = Bytes::from(m.raw_info.clone());
            let name = Some(m.info.name.clone());
            let pieces = open_pieces(&cfg, &out_dir, m.info_hash, m.info, raw).await?;
            (m.info_hash, Phase::Pieces(Box::new(pieces)), name)
        }
    };
    let (stats_tx, stats_rx) = watch::channel(TorrentStats {
        info_hash,
        ..Default::default()
    });
    let mut task = Task {
        listen_port: listen_addr.map(|a| a.port()),
        cfg,
        info_hash,
        out_dir,
        phase,
        name,
        conns: HashMap::new(),
        by_slot: HashMap::new(),
        addrs: HashSet::new(),
        next_id: 1,
        retries: HashMap::new(),
        retry_at: Vec::new(),
        dial_encrypted: HashSet::new(),
        events_tx,
        disk_tx,
        stats_tx,
        received_from: BTreeMap::new(),
        dropped: VecDeque::new(),
        error: None,
        rate: (Instant::now(), 0, 0, 0.0, 0.0),
        next_pex: Instant::now(),
    };
    task.publish();
    let handle = tokio::spawn(async move {
        task.run(listener, commands, events_rx, disk_rx).await;
    });
    Ok((handle, stats_rx))
}

/// Where metadata fetched for `info_hash` is kept, if the session keeps any.
fn metadata_path(cfg: &SessionConfig, info_hash: InfoHash) -> Option<PathBuf> {
    let dir = cfg.resume_dir.as_ref()?;
    Some(dir.join(format!("{}.torrent", info_hash.to_hex())))
}

/// Where resume data for `info_hash` downloaded into `root` is kept: one file per
/// (torrent, directory), so seeding one copy and fetching another do not overwrite each
/// other's stamps.
fn resume_path(
    cfg: &SessionConfig,
    info_hash: InfoHash,
    root: &std::path::Path,
) -> Option<PathBuf> {
    use sha1::{Digest, Sha1};
    let dir = cfg.resume_dir.as_ref()?;
    let tag = Sha1::digest(root.as_os_str().as_encoded_bytes());
    let tag: String = tag[..4].iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{}.{tag}.resume", info_hash.to_hex())))
}

/// The metadata an earlier run fetched for `info_hash`, if it is there and really hashes
/// to it (a damaged or foreign file is ignored: the metadata is fetched again).
fn saved_metadata(cfg: &SessionConfig, info_hash: InfoHash) -> Option<Metainfo> {
    let path = metadata_path(cfg, info_hash)?;
    let len = std::fs::metadata(&path).ok()?.len();
    if len > crate::metainfo::MAX_TORRENT_BYTES as u64 {
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    match Metainfo::from_bytes(&bytes) {
        Ok(m) if m.info_hash == info_hash => Some(m),
        Ok(_) => {
            tracing::warn!("{}: metadata of another torrent, ignored", path.display());
            None
        }
        Err(e) => {
            tracing::warn!("{}: ignored: {e}", path.display());
            None
        }
    }
}

/// Keeps fetched metadata as a minimal .torrent, so a restart needs no peer for it.
fn save_metadata(cfg: &SessionConfig, info_hash: InfoHash, raw_info: &[u8]) {
    let Some(path) = metadata_path(cfg, info_hash) else {
        return;
    };
    let mut torrent = Vec::with_capacity(raw_info.len() + 8);
    torrent.extend_from_slice(b"d4:info");
    torrent.extend_from_slice(raw_info);
    torrent.push(b'e');
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::storage::write_atomic(&path, &torrent) {
            tracing::warn!("cannot save metadata to {}: {e}", path.display());
        }
    });
}

/// Storage for `info` under `out_dir`, what is already there (from resume data where it
/// can be trusted, hash-checked otherwise), and an engine.
async fn open_pieces(
    cfg: &SessionConfig,
    out_dir: &std::path::Path,
    info_hash: InfoHash,
    info: Info,
    raw_info: Bytes,
) -> Result<Pieces, SessionError> {
    let layout =
        StorageLayout::from_info(&info).map_err(|e| SessionError::Storage(e.to_string()))?;
    let geo = Geometry::new(info.total_length, info.piece_length)
        .map_err(|e| SessionError::Storage(e.to_string()))?;
    let storage = Storage::new(
        out_dir,
        layout,
        info.pieces.clone(),
        StorageOptions::default(),
    )
    .map_err(|e| SessionError::Storage(e.to_string()))?;
    let storage = Arc::new(storage);
    let resume_path = resume_path(cfg, info_hash, storage.root());
    let s = storage.clone();
    let (path, full) = (resume_path.clone(), cfg.full_recheck);
    tokio::task::spawn_blocking(move || check_existing(&s, path.as_deref(), full))
        .await
        .map_err(|e| SessionError::Storage(e.to_string()))?
        .map_err(|e| SessionError::Storage(e.to_string()))?;
    let mut have = Bitfield::new(geo.piece_count);
    for p in 0..geo.piece_count {
        if storage.has_piece(p) {
            have.set(p);
        }
    }
    let engine = Engine::new(geo, have, cfg.engine.clone(), Instant::now(), cfg.rng_seed)
        .map_err(|e| SessionError::Storage(e.to_string()))?;
    Ok(Pieces {
        engine,
        reads: spawn_reader(storage.clone()),
        metadata: MetadataServer::new(raw_info),
        buffers: HashMap::new(),
        resume: resume_path.map(|path| ResumeState {
            path,
            saved_have: storage.have_count(),
            saving: false,
            next_save: Instant::now() + cfg.resume_interval,
        }),
        resume_lock: Arc::default(),
        private: info.private,
        storage,
    })
}

/// Marks what is already on disk: from resume data where it can be trusted, by hashing
/// where not (and everything when there is no usable resume data).
fn check_existing(
    storage: &Storage,
    resume: Option<&std::path::Path>,
    full_recheck: bool,
) -> Result<(), crate::storage::StorageError> {
    let Some(path) = resume else {
        return storage.recheck_all().map(drop);
    };
    let report = storage.load_resume(path, full_recheck)?;
    match &report.status {
        ResumeStatus::Missing => {
            storage.recheck_all()?;
        }
        ResumeStatus::Invalid(why) => {
            tracing::warn!("{}: ignored ({why}); checking every piece", path.display());
            storage.recheck_all()?;
        }
        ResumeStatus::Trusted | ResumeStatus::Rechecked => tracing::info!(
            "resume data: {:?}, {} pieces claimed, {} present",
            report.status,
            report.claimed,
            report.have
        ),
    }
    Ok(())
}

/// A thread that serves block reads in order (from the page cache, usually): cheaper
/// than a blocking-pool hop per 16 KiB block.
fn spawn_reader(storage: Arc<Storage>) -> std::sync::mpsc::Sender<ReadJob> {
    let (tx, rx) = std::sync::mpsc::channel::<ReadJob>();
    std::thread::Builder::new()
        .name("swarm-disk-read".into())
        .spawn(move || {
            let mut cache = PieceCache::default();
            while let Ok(job) = rx.recv() {
                let (slot, done, b) = (job.slot, job.done, job.block);
                match cache.block(&storage, b) {
                    // In flight until the connection has written it.
                    Ok(data) => {
                        let _ = job.conn.send(ToConn::Piece {
                            piece: b.piece,
                            offset: b.begin,
                            data,
                            sent: SentNotice(Box::new(move || {
                                let _ = done.send(DiskDone::Sent { slot });
                            })),
                        });
                    }
                    // A failed read just drops the block; the peer re-requests or times out.
                    Err(_) => {
                        let _ = done.send(DiskDone::Sent { slot });
                    }
                }
            }
        })
        .expect("spawn disk reader thread");
    tx
}

/// Pieces read whole for uploading, most recent last. Peers ask for a piece block by
/// block, so one read serves them all (one system call per piece instead of one per
/// 16 KiB), and blocks go out as slices of it. Bounded in bytes; large pieces are read
/// block by block instead.
#[derive(Default)]
struct PieceCache {
    pieces: VecDeque<(u32, Bytes)>,
    bytes: usize,
}

/// Pieces up to this size are read whole.
const READ_WHOLE_PIECE_MAX: u32 = 4 << 20;
/// Bytes and pieces kept for uploading (a short list: it is searched linearly).
const READ_CACHE_BYTES: usize = 32 << 20;
const READ_CACHE_PIECES: usize = 64;

impl PieceCache {
    fn block(&mut self, storage: &Storage, b: BlockRef) -> Result<Bytes, String> {
        let piece_len = storage.layout().piece_len(b.piece).unwrap_or(0);
        if piece_len > READ_WHOLE_PIECE_MAX {
            return storage
                .read_block(b.piece, b.begin, b.length)
                .map_err(|e| e.to_string());
        }
        let whole = match self.pieces.iter().position(|(p, _)| *p == b.piece) {
            Some(i) => self.pieces[i].1.clone(),
            None => {
                let data = storage.read_piece(b.piece).map_err(|e| e.to_string())?;
                self.bytes += data.len();
                self.pieces.push_back((b.piece, data.clone()));
                while self.bytes > READ_CACHE_BYTES || self.pieces.len() > READ_CACHE_PIECES {
                    let Some((_, old)) = self.pieces.pop_front() else {
                        break;
                    };
                    self.bytes -= old.len();
                }
                data
            }
        };
        let (start, end) = (b.begin as usize, b.begin as usize + b.length as usize);
        if end > whole.len() {
            return Err(format!("block {b:?} is outside its piece"));
        }
        Ok(whole.slice(start..end))
    }
}

impl Task {
    async fn run(
        &mut self,
        listener: Option<TcpListener>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<FromConn>,
        mut disk: mpsc::UnboundedReceiver<DiskDone>,
    ) {
        let (accept_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let acceptor = listener.map(|l| {
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok(x) => {
                            if accept_tx.send(x).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        });
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::AddPeer(addr)) => self.connect(addr),
                    Some(Command::Shutdown) | None => break,
                },
                Some(ev) = events.recv() => {
                    self.on_conn_event(ev).await;
                    // Drain what else is queued before deciding: fewer, larger batches.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.on_conn_event(ev).await,
                            Err(_) => break,
                        }
                    }
                }
                Some(d) = disk.recv() => {
                    self.on_disk(d);
                    for _ in 0..256 {
                        match disk.try_recv() {
                            Ok(d) => self.on_disk(d),
                            Err(_) => break,
                        }
                    }
                }
                Some((stream, addr)) = accepted.recv() => self.incoming(stream, addr),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => self.on_timer(),
                _ = stats_tick.tick() => {
                    self.publish();
                    self.save_resume_if_due(false);
                    self.send_pex();
                }
            }
            self.flush();
        }
        if let Some(a) = acceptor {
            a.abort();
        }
        for c in self.conns.values() {
            let _ = c.tx.send(ToConn::Close);
        }
        self.conns.clear();
        if let Phase::Pieces(p) = &self.phase {
            let s = p.storage.clone();
            let path = p.resume.as_ref().map(|r| r.path.clone());
            let lock = p.resume_lock.clone();
            let saved = tokio::task::spawn_blocking(move || {
                let _one_at_a_time = lock.lock();
                match path {
                    Some(path) => s.save_resume(&path),
                    None => s.sync(),
                }
            })
            .await;
            if let Ok(Err(e)) = saved {
                tracing::warn!("saving resume data at shutdown: {e}");
            }
        }
        self.publish();
    }

    /// Starts a background resume save when one is due (or `now`) and pieces were added
    /// since the last; never two at once.
    fn save_resume_if_due(&mut self, now: bool) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let Some(r) = &mut p.resume else { return };
        let have = p.storage.have_count();
        let t = Instant::now();
        if r.saving || have == r.saved_have || !(now || t >= r.next_save) {
            return;
        }
        r.saving = true;
        r.next_save = t + self.cfg.resume_interval;
        let (storage, path, lock) = (p.storage.clone(), r.path.clone(), p.resume_lock.clone());
        let done = self.disk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock.lock();
            let have = storage.have_count();
            let result = storage.save_resume(&path).map_err(|e| e.to_string());
            let _ = done.send(DiskDone::ResumeSaved { have, result });
        });
    }

    fn next_wake(&self) -> Instant {
        let fallback = Instant::now() + Duration::from_secs(1);
        let t = match &self.phase {
            Phase::Pieces(p) => p.engine.poll_timeout(),
            Phase::Metadata(f) => f.poll_timeout(),
            Phase::Failed => None,
        };
        let t = t.map_or(fallback, |t| t.min(fallback));
        self.retry_at
            .iter()
            .map(|&(at, _)| at)
            .fold(t, Instant::min)
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Pieces(p) => p.engine.handle_timeout(now),
            Phase::Metadata(f) => f.handle_timeout(now),
            Phase::Failed => {}
        }
        let due: Vec<SocketAddr> = self
            .retry_at
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, a)| a)
            .collect();
        self.retry_at.retain(|(at, _)| *at > now);
        for addr in due {
            self.connect(addr);
        }
    }

    fn is_private(&self) -> bool {
        matches!(&self.phase, Phase::Pieces(p) if p.private)
    }

    /// Tells every PEX-capable peer about the peers we are connected to (once we know
    /// the torrent is not private). Each peer's [`PexSender`] sends only changes, at most
    /// one message a minute and 50 peers a message.
    fn send_pex(&mut self) {
        let now = Instant::now();
        if now < self.next_pex {
            return;
        }
        self.next_pex = now + PEX_CHECK_EVERY;
        let Phase::Pieces(p) = &self.phase else {
            return; // metadata unknown: it might be private
        };
        if p.private {
            return;
        }
        let connected: Vec<(SocketAddr, u8)> = self
            .conns
            .values()
            .filter(|c| c.ready)
            .filter_map(|c| {
                let addr = c.pex_addr()?;
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
        for c in self.conns.values_mut() {
            let Some(their) = c.their_ut_pex.filter(|_| c.ready) else {
                continue;
            };
            let own = c.pex_addr();
            let others: Vec<(SocketAddr, u8)> = connected
                .iter()
                .filter(|(a, _)| Some(*a) != own)
                .copied()
                .collect();
            if let Some(msg) = c.pex_out.poll(now, &others) {
                let _ = c.tx.send(ToConn::Msg(Message::Extended {
                    id: their,
                    payload: Bytes::from(msg.encode()),
                }));
            }
        }
    }

    fn piece_count(&self) -> Option<u32> {
        match &self.phase {
            Phase::Pieces(p) => Some(p.engine.geometry().piece_count),
            _ => None,
        }
    }

    fn new_conn(
        &mut self,
        addr: SocketAddr,
        outgoing: bool,
    ) -> (ConnParams, mpsc::UnboundedReceiver<ToConn>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.conns.insert(
            id,
            Conn {
                addr,
                outgoing,
                tx,
                ready: false,
                fast: false,
                extended: false,
                their_ut_metadata: None,
                their_ut_pex: None,
                metadata_requests: 0,
                their_listen_port: None,
                pex_out: PexSender::new(addr),
                pex_in: PexReceiver::default(),
                reqq: None,
                slot: None,
                backlog: Vec::new(),
            },
        );
        self.addrs.insert(addr);
        let params = ConnParams {
            id,
            info_hash: self.info_hash,
            our_id: self.cfg.peer_id,
            handshake_timeout: self.cfg.handshake_timeout,
            idle_timeout: self.cfg.idle_timeout,
            piece_count: self.piece_count(),
        };
        (params, rx)
    }

    fn at_capacity(&self) -> bool {
        self.conns.len() >= self.cfg.engine.max_peers
    }

    fn connect(&mut self, addr: SocketAddr) {
        if self.addrs.contains(&addr)
            || self.at_capacity()
            || Some(addr.port()) == self.listen_port && self.is_own(addr)
        {
            return;
        }
        if let Phase::Pieces(p) = &self.phase {
            if p.engine.is_banned(addr.ip()) {
                return;
            }
        }
        let (params, rx) = self.new_conn(addr, true);
        let events = self.events_tx.clone();
        let timeout = self.cfg.connect_timeout;
        let local = self.cfg.listen.map(|l| l.ip());
        let encrypt = self.dial_encrypted.contains(&addr);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, dial(local, addr)).await {
                Ok(Ok(stream)) => connection::run(params, stream, true, encrypt, events, rx).await,
                Ok(Err(e)) => {
                    let _ = events.send(FromConn::Closed {
                        id: params.id,
                        reason: format!("connect failed: {e}"),
                    });
                }
                Err(_) => {
                    let _ = events.send(FromConn::Closed {
                        id: params.id,
                        reason: "connect timed out".into(),
                    });
                }
            }
        });
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.cfg
            .listen
            .is_some_and(|l| l.ip() == addr.ip() || l.ip().is_unspecified())
    }

    fn incoming(&mut self, stream: TcpStream, addr: SocketAddr) {
        let banned = matches!(&self.phase, Phase::Pieces(p) if p.engine.is_banned(addr.ip()));
        if self.at_capacity() || banned {
            return; // dropping the stream closes it
        }
        let (params, rx) = self.new_conn(addr, false);
        let events = self.events_tx.clone();
        tokio::spawn(connection::run(params, stream, false, false, events, rx));
    }

    fn drop_conn(&mut self, id: ConnId, reason: String) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = c.tx.send(ToConn::Close);
            self.addrs.remove(&c.addr);
            tracing::debug!(peer = %c.addr, "dropped: {reason}");
            if self.dropped.len() >= MAX_DROPPED {
                self.dropped.pop_front();
            }
            self.dropped.push_back((c.addr, reason));
            let now = Instant::now();
            if c.outgoing && !c.ready {
                let tries = self.retries.entry(c.addr).or_insert(0);
                if *tries < MAX_RETRIES {
                    self.retry_at
                        .push((now + Duration::from_secs(1 << *tries), c.addr));
                    *tries += 1;
                    if !self.dial_encrypted.remove(&c.addr) {
                        if self.dial_encrypted.len() >= MAX_DIAL_ENCRYPTED {
                            self.dial_encrypted.clear();
                        }
                        self.dial_encrypted.insert(c.addr);
                    }
                } else {
                    self.dial_encrypted.remove(&c.addr);
                    // Given up: forget it, so the table holds only addresses being retried
                    // (a long run meets thousands of dead addresses through the DHT and PEX).
                    self.retries.remove(&c.addr);
                }
            }
            match &mut self.phase {
                Phase::Pieces(p) => {
                    if let Some(slot) = c.slot {
                        self.by_slot.remove(&slot);
                        p.engine.peer_disconnected(now, slot);
                    }
                }
                Phase::Metadata(f) => f.remove_peer(now, id),
                Phase::Failed => {}
            }
        }
    }

    async fn on_conn_event(&mut self, ev: FromConn) {
        match ev {
            FromConn::Ready { id, reserved, .. } => self.on_ready(id, reserved),
            FromConn::Closed { id, reason } => self.drop_conn(id, reason),
            FromConn::Msg { id, msg } => self.on_message(id, msg).await,
        }
    }

    fn on_ready(&mut self, id: ConnId, reserved: Reserved) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.ready = true;
        self.retries.remove(&c.addr);
        let common = reserved.common(&Reserved::OURS);
        c.fast = common.fast();
        c.extended = common.extension_protocol();
        let addr = c.addr;
        match &mut self.phase {
            Phase::Pieces(_) => self.register(id, false),
            Phase::Metadata(_) => {
                // We have nothing; say so first (BEP 6 wants it before anything else).
                if c.fast {
                    let _ = c.tx.send(ToConn::Msg(Message::HaveNone));
                }
            }
            Phase::Failed => {}
        }
        let Some(c) = self.conns.get(&id) else { return };
        if c.extended {
            let size = match &self.phase {
                Phase::Pieces(p) => Some(p.metadata.metadata_size()),
                _ => None,
            };
            let mut hs = ExtendedHandshake::ours(self.listen_port, size, Some(addr.ip()));
            if self.is_private() {
                hs.extensions.remove(crate::extension::UT_PEX);
            }
            let _ = c.tx.send(ToConn::Msg(Message::Extended {
                id: HANDSHAKE_ID,
                payload: Bytes::from(hs.encode()),
            }));
        }
    }

    /// Hands a ready connection to the engine (which queues our bitfield first).
    fn register(&mut self, id: ConnId, announced_nothing: bool) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let info = PeerInfo {
            addr: Some(c.addr),
            fast: c.fast,
            reqq: c.reqq,
            announced_nothing,
        };
        match p.engine.peer_connected(Instant::now(), info) {
            Ok(slot) => {
                c.slot = Some(slot);
                self.by_slot.insert(slot, id);
                // Flush now so the bitfield goes out before anything the caller sends.
                self.flush();
            }
            Err(e) => self.drop_conn(id, format!("refused: {e}")),
        }
    }

    async fn on_message(&mut self, id: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        match msg {
            Message::Extended {
                id: HANDSHAKE_ID,
                payload,
            } => {
                let Ok(hs) = ExtendedHandshake::parse(&payload) else {
                    return self.drop_conn(id, "malformed extended handshake".into());
                };
                c.their_ut_metadata = hs.id_of(crate::extension::UT_METADATA);
                c.their_ut_pex = hs.id_of(crate::extension::UT_PEX);
                c.their_listen_port = hs.listen_port;
                c.reqq = hs.request_queue;
                match &mut self.phase {
                    Phase::Pieces(p) => {
                        if let (Some(slot), Some(q)) = (c.slot, hs.request_queue) {
                            p.engine.set_peer_reqq(slot, q);
                        }
                    }
                    Phase::Metadata(f) => {
                        if c.their_ut_metadata.is_some() {
                            if let Verdict::Violation(why) = f.add_peer(now, id, hs.metadata_size) {
                                return self.drop_conn(id, format!("metadata: {why}"));
                            }
                        }
                    }
                    Phase::Failed => {}
                }
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => {
                let parsed = match MetadataMessage::parse(&payload) {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => return self.drop_conn(id, format!("bad ut_metadata message: {e}")),
                };
                match (&mut self.phase, parsed) {
                    (Phase::Pieces(p), MetadataMessage::Request { piece }) => {
                        // Each answer is up to 16 KiB for a 30-byte request: a peer that
                        // asks again and again (and maybe never reads) is cut off.
                        c.metadata_requests += 1;
                        let blocks = p.metadata.metadata_size().div_ceil(16384) as u32;
                        if c.metadata_requests > 4 * blocks + 16 {
                            return self.drop_conn(id, "too many metadata requests".into());
                        }
                        if let Some(their) = c.their_ut_metadata {
                            let reply = p.metadata.respond(piece).encode();
                            let _ = c.tx.send(ToConn::Msg(Message::Extended {
                                id: their,
                                payload: Bytes::from(reply),
                            }));
                        }
                    }
                    (Phase::Metadata(_), MetadataMessage::Request { piece }) => {
                        if let Some(their) = c.their_ut_metadata {
                            let reply = MetadataMessage::Reject { piece }.encode();
                            let _ = c.tx.send(ToConn::Msg(Message::Extended {
                                id: their,
                                payload: Bytes::from(reply),
                            }));
                        }
                    }
                    (Phase::Metadata(f), m) => {
                        if let Verdict::Violation(why) = f.on_message(now, id, &m) {
                            return self.drop_conn(id, format!("metadata: {why}"));
                        }
                    }
                    _ => {}
                }
            }
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } => {
                let msg = match PexMessage::parse(&payload) {
                    Ok(m) => m,
                    Err(e) => return self.drop_conn(id, format!("bad ut_pex message: {e}")),
                };
                // Rate-limited and capped per sender; connect() skips known, own and
                // banned addresses and respects the connection limit.
                let Some(msg) = c.pex_in.accept(now, msg) else {
                    return;
                };
                if !self.is_private() {
                    for (addr, _flags) in msg.added {
                        if is_dialable(addr) {
                            self.connect(addr);
                        }
                    }
                }
            }
            other => {
                if let Message::Piece { data, .. } = &other {
                    *self.received_from.entry(c.addr).or_default() += data.len() as u64;
                }
                let Some(m) = to_engine(other.clone()) else {
                    return;
                };
                match &mut self.phase {
                    Phase::Pieces(p) => {
                        if let Some(slot) = c.slot {
                            p.engine.handle_message(now, slot, m);
                        }
                    }
                    Phase::Metadata(_) => {
                        // Only what the engine needs later (what they have, their choke
                        // and interest); block data and requests cannot be for us yet, and
                        // keeping them would let a peer park megabytes here.
                        if matches!(
                            other,
                            Message::Piece { .. } | Message::Request(_) | Message::Cancel(_)
                        ) {
                            return;
                        }
                        if c.backlog.len() >= MAX_BACKLOG {
                            return self.drop_conn(id, "too many messages before metadata".into());
                        }
                        c.backlog.push(other);
                    }
                    Phase::Failed => {}
                }
            }
        }
        self.flush_fetcher().await;
    }

    fn on_disk(&mut self, d: DiskDone) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let now = Instant::now();
        match d {
            DiskDone::Verified { piece, result } => match result {
                Ok(ok) => p.engine.piece_verified(now, piece, ok),
                Err(e) => {
                    tracing::warn!("writing piece {piece} failed: {e}");
                    self.error = Some(format!("writing piece {piece}: {e}"));
                    p.engine.piece_verified(now, piece, false);
                }
            },
            DiskDone::Sent { slot } => p.engine.block_sent(now, slot),
            DiskDone::ResumeSaved { have, result } => {
                if let Some(r) = &mut p.resume {
                    r.saving = false;
                    match result {
                        Ok(()) => r.saved_have = have,
                        // Not fatal: pieces stay verified in memory; the next save retries.
                        Err(e) => tracing::warn!("saving resume data: {e}"),
                    }
                }
            }
        }
    }

    /// Metadata phase: send the fetcher's requests; switch to pieces when it is done.
    async fn flush_fetcher(&mut self) {
        let Phase::Metadata(f) = &mut self.phase else {
            return;
        };
        let mut done = None;
        let mut drops = Vec::new();
        while let Some(ev) = f.poll_event() {
            match ev {
                FetchEvent::Request { peer, piece } => {
                    if let Some(c) = self.conns.get(&peer) {
                        if let Some(their) = c.their_ut_metadata {
                            let payload = Bytes::from(MetadataMessage::Request { piece }.encode());
                            let _ =
                                c.tx.send(ToConn::Msg(Message::Extended { id: their, payload }));
                        }
                    }
                }
                FetchEvent::HashMismatch { culprit, .. } => {
                    if let Some(c) = culprit {
                        drops.push(c);
                    }
                }
                FetchEvent::Complete { info } => done = Some(info),
            }
        }
        for c in drops {
            self.drop_conn(c, "sent metadata that does not match the info-hash".into());
        }
        if let Some(raw) = done {
            self.metadata_arrived(raw).await;
        }
    }

    async fn metadata_arrived(&mut self, raw: Bytes) {
        let info = match Info::from_bytes(&raw) {
            Ok(i) => i,
            Err(e) => {
                self.error = Some(format!("metadata is not a valid info dictionary: {e}"));
                self.phase = Phase::Failed;
                self.publish();
                return;
            }
        };
        self.name = Some(info.name.clone());
        save_metadata(&self.cfg, self.info_hash, &raw);
        match open_pieces(&self.cfg, &self.out_dir.clone(), self.info_hash, info, raw).await {
            Ok(p) => self.phase = Phase::Pieces(Box::new(p)),
            Err(e) => {
                self.error = Some(e.to_string());
                self.phase = Phase::Failed;
                self.publish();
                return;
            }
        }
        // Every ready connection joins the engine; what they said meanwhile is replayed.
        let ready: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ready)
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            self.register(id, true);
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let backlog = std::mem::take(&mut c.backlog);
            let slot = c.slot;
            for m in backlog {
                if let (Phase::Pieces(p), Some(slot), Some(m)) =
                    (&mut self.phase, slot, to_engine(m))
                {
                    p.engine.handle_message(Instant::now(), slot, m);
                }
            }
            self.flush();
        }
        self.publish();
    }

    /// Carries out the engine's actions.
    fn flush(&mut self) {
        let Phase::Pieces(p) = &mut self.phase else {
            return;
        };
        let mut completed = false;
        while let Some(a) = p.engine.poll_action() {
            match a {
                Action::Send { slot, message } => {
                    if let Some(c) = self.by_slot.get(&slot).and_then(|id| self.conns.get(id)) {
                        let _ = c.tx.send(ToConn::Msg(to_wire(message)));
                    }
                }
                Action::ReadBlock { slot, block } => {
                    if let Some(c) = self.by_slot.get(&slot).and_then(|id| self.conns.get(id)) {
                        let job = ReadJob {
                            slot,
                            block,
                            conn: c.tx.clone(),
                            done: self.disk_tx.clone(),
                        };
                        let _ = p.reads.send(job);
                    }
                }
                Action::WriteBlock { block, data } => {
                    p.buffers
                        .entry(block.piece)
                        .or_default()
                        .insert(block.begin, data);
                }
                Action::VerifyPiece { piece } => {
                    let blocks = p.buffers.remove(&piece).unwrap_or_default();
                    let len = p.engine.geometry().piece_len(piece) as usize;
                    let storage = p.storage.clone();
                    let done = self.disk_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let parts: Vec<Bytes> = blocks.into_values().collect();
                        // Blocks that do not tile the piece cannot hash right: a failed
                        // piece (re-fetched), not a storage error.
                        let tiled = parts.iter().map(Bytes::len).sum::<usize>() == len;
                        let result = if tiled {
                            storage
                                .write_piece_parts(piece, &parts)
                                .map_err(|e| e.to_string())
                        } else {
                            Ok(false)
                        };
                        let _ = done.send(DiskDone::Verified { piece, result });
                    });
                }
                Action::Disconnect { slot, reason } => {
                    if let Some(id) = self.by_slot.remove(&slot) {
                        if let Some(c) = self.conns.remove(&id) {
                            let _ = c.tx.send(ToConn::Close);
                            self.addrs.remove(&c.addr);
                            tracing::debug!(peer = %c.addr, "engine dropped peer: {reason}");
                            if self.dropped.len() >= MAX_DROPPED {
                                self.dropped.pop_front();
                            }
                            self.dropped.push_back((c.addr, reason.to_string()));
                        }
                    }
                }
                Action::Completed => completed = true,
            }
        }
        if completed {
            self.publish();
            self.save_resume_if_due(true);
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let mut s = TorrentStats {
            info_hash: self.info_hash,
            name: self.name.clone(),
            received_from: self.received_from.clone(),
            dropped: self.dropped.iter().cloned().collect(),
            error: self.error.clone(),
            ..Default::default()
        };
        if let Phase::Pieces(p) = &self.phase {
            let e = p.engine.stats();
            s.have_metadata = true;
            s.piece_count = e.piece_count;
            s.pieces_have = e.pieces_have;
            s.total_length = p.engine.geometry().total_length;
            s.bytes_left = e.bytes_left;
            s.downloaded = e.downloaded;
            s.uploaded = e.uploaded;
            s.wasted = e.wasted;
            s.hash_failures = e.hash_failures;
            s.complete = p.engine.is_complete();
            s.peers = p
                .engine
                .peer_slots()
                .into_iter()
                .filter_map(|slot| p.engine.peer_stats(slot))
                .map(|ps| PeerSnapshot {
                    addr: ps.addr,
                    downloaded: ps.downloaded,
                    uploaded: ps.uploaded,
                    download_rate: ps.download_rate,
                    upload_rate: ps.upload_rate,
                    is_seed: ps.is_seed,
                })
                .collect();
        }
        let (t0, d0, u0, dr, ur) = self.rate;
        let dt = now.duration_since(t0).as_secs_f64();
        if dt >= 0.5 {
            let drate = (s.downloaded.saturating_sub(d0)) as f64 / dt;
            let urate = (s.uploaded.saturating_sub(u0)) as f64 / dt;
            self.rate = (now, s.downloaded, s.uploaded, drate, urate);
        }
        s.download_rate = self.rate.3.max(if dt < 0.5 { dr } else { 0.0 });
        s.upload_rate = self.rate.4.max(if dt < 0.5 { ur } else { 0.0 });
        self.stats_tx.send_replace(s);
    }
}
