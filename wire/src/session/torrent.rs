//! The torrent task: the tokio driver around one [`TorrentCore`]. It moves bytes and
//! files and decides nothing: the core's outputs become connection tasks, socket writes,
//! block reads, piece writes and resume saves; what those report goes back to the core.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::connection::{
    self, Accepted, ConnId, ConnParams, ConnRx, ConnTx, FromConn, SentNotice, ToConn,
    MAX_QUEUED_IN_TOTAL,
};
use super::{Command, PeerContribution, PeerSnapshot, SessionConfig, SessionError, TorrentStats};
use crate::engine::{Bitfield, Block};
use crate::infohash::InfoHash;
use crate::metainfo::{Info, Metainfo};
use crate::storage::{ResumeStatus, Storage, StorageError, StorageLayout, StorageOptions};
use crate::torrent::{CoreConfig, Event, Output, PeerSource, TorrentCore};

enum DiskDone {
    Verified {
        piece: u32,
        result: Result<bool, StorageError>,
    },
    Sent {
        conn: ConnId,
    },
    ResumeSaved {
        have: u32,
        result: Result<(), StorageError>,
    },
    StorageReady(Result<(Arc<Storage>, Bitfield), SessionError>),
}

struct ReadJob {
    conn: ConnId,
    block: Block,
    tx: ConnTx,
    done: mpsc::UnboundedSender<DiskDone>,
}

/// What a new torrent task starts from.
pub(super) enum Start {
    Magnet(InfoHash),
    /// Storage open and checked.
    Ready {
        meta: Box<Metainfo>,
        storage: Arc<Storage>,
        have: Bitfield,
    },
}

pub(super) struct Spawned {
    pub task: JoinHandle<()>,
    pub stats: watch::Receiver<TorrentStats>,
    pub incoming: mpsc::Sender<Accepted>,
    pub dht_nodes: mpsc::Receiver<SocketAddr>,
}

/// DHT nodes named by peers (PORT messages) waiting for the application (more are
/// dropped until it catches up).
const MAX_DHT_NODES_QUEUED: usize = 256;

struct Task {
    cfg: SessionConfig,
    core: TorrentCore,
    info_hash: InfoHash,
    out_dir: PathBuf,
    storage: Option<Arc<Storage>>,
    reads: Option<std::sync::mpsc::Sender<ReadJob>>,
    resume_path: Option<PathBuf>,
    /// Held while resume data is written (a background save and the one at shutdown).
    resume_lock: Arc<std::sync::Mutex<()>>,
    conns: HashMap<ConnId, ConnTx>,
    events_tx: mpsc::Sender<FromConn>,
    disk_tx: mpsc::UnboundedSender<DiskDone>,
    queued_in: Arc<Semaphore>,
    stats_tx: watch::Sender<TorrentStats>,
    dht_nodes: mpsc::Sender<SocketAddr>,
    rate: (Instant, u64, u64, f64, f64),
    started: Instant,
}

/// Where metadata fetched for `info_hash` is kept, if the session keeps any.
fn metadata_path(cfg: &SessionConfig, info_hash: InfoHash) -> Option<PathBuf> {
    let dir = cfg.resume_dir.as_ref()?;
    Some(dir.join(format!("{}.torrent", info_hash.to_hex())))
}

/// Where resume data for `info_hash` downloaded into `root` is kept: one file per
/// (torrent, directory), so seeding one copy and fetching another do not overwrite each
/// other's stamps.
fn resume_path(cfg: &SessionConfig, info_hash: InfoHash, root: &Path) -> Option<PathBuf> {
    use sha1::{Digest, Sha1};
    let dir = cfg.resume_dir.as_ref()?;
    let tag = Sha1::digest(root.as_os_str().as_encoded_bytes());
    let tag: String = tag[..4].iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{}.{tag}.resume", info_hash.to_hex())))
}

/// The metadata an earlier run fetched for `info_hash`, if it is there and really hashes
/// to it (a damaged or foreign file is ignored: the metadata is fetched again).
pub(super) fn saved_metadata(cfg: &SessionConfig, info_hash: InfoHash) -> Option<Metainfo> {
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

/// Opens storage for `info` under `out_dir` and marks what is already there (from
/// resume data where it can be trusted, hash-checked otherwise). Blocking.
pub(super) fn open_storage(
    cfg: &SessionConfig,
    out_dir: &Path,
    info_hash: InfoHash,
    info: &Info,
) -> Result<(Arc<Storage>, Bitfield), SessionError> {
    let layout = StorageLayout::from_info(info)?;
    let storage = Storage::new(
        out_dir,
        layout,
        info.pieces.clone(),
        StorageOptions::default(),
    )?;
    let resume = resume_path(cfg, info_hash, storage.root());
    check_existing(&storage, resume.as_deref(), cfg.full_recheck)?;
    let have = storage.have();
    Ok((Arc::new(storage), have))
}

/// Marks what is already on disk: from resume data where it can be trusted, by hashing
/// where not (and everything when there is no usable resume data).
fn check_existing(
    storage: &Storage,
    resume: Option<&Path>,
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

fn core_config(cfg: &SessionConfig, listen: Option<SocketAddr>) -> CoreConfig {
    CoreConfig {
        peer_id: cfg.peer_id,
        listen_port: listen.map(|a| a.port()),
        listen_ip: listen.map(|a| a.ip()),
        dht_port: cfg.dht_port,
        engine: cfg.engine.clone(),
        resume_interval: cfg.resume_interval,
        rng_seed: cfg.rng_seed,
        ..cfg.core.clone()
    }
}

pub(super) fn spawn(
    start: Start,
    out_dir: PathBuf,
    cfg: SessionConfig,
    listen: Option<SocketAddr>,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Result<Spawned, SessionError> {
    let now = Instant::now();
    let ccfg = core_config(&cfg, listen);
    let (core, storage, info_hash) = match start {
        Start::Magnet(h) => (TorrentCore::magnet(h, ccfg, now), None, h),
        Start::Ready {
            meta,
            storage,
            have,
        } => {
            let raw = Bytes::from(meta.raw_info.clone());
            let core =
                TorrentCore::with_metadata(meta.info_hash, &meta.info, raw, have, ccfg, now)?;
            (core, Some(storage), meta.info_hash)
        }
    };
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (disk_tx, disk_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(64);
    let (dht_tx, dht_rx) = mpsc::channel(MAX_DHT_NODES_QUEUED);
    let (stats_tx, stats_rx) = watch::channel(TorrentStats {
        info_hash,
        ..Default::default()
    });
    let mut task = Task {
        resume_path: storage
            .as_ref()
            .and_then(|s| resume_path(&cfg, info_hash, s.root())),
        reads: storage.as_ref().map(|s| spawn_reader(s.clone())),
        storage,
        cfg,
        core,
        info_hash,
        out_dir,
        resume_lock: Arc::default(),
        conns: HashMap::new(),
        events_tx,
        disk_tx,
        queued_in: Arc::new(Semaphore::new(MAX_QUEUED_IN_TOTAL)),
        stats_tx,
        dht_nodes: dht_tx,
        rate: (now, 0, 0, 0.0, 0.0),
        started: now,
    };
    task.publish();
    let handle = tokio::spawn(async move {
        task.run(commands, events_rx, disk_rx, incoming_rx).await;
    });
    Ok(Spawned {
        task: handle,
        stats: stats_rx,
        incoming: incoming_tx,
        dht_nodes: dht_rx,
    })
}

/// A thread that serves block reads in order (from the page cache, usually): cheaper
/// than a blocking-pool hop per 16 KiB block.
fn spawn_reader(storage: Arc<Storage>) -> std::sync::mpsc::Sender<ReadJob> {
    let (tx, rx) = std::sync::mpsc::channel::<ReadJob>();
    let spawned = std::thread::Builder::new()
        .name("swarm-disk-read".into())
        .spawn(move || {
            let mut cache = ChunkCache::default();
            while let Ok(job) = rx.recv() {
                let (conn, done, b) = (job.conn, job.done, job.block);
                match cache.block(&storage, b) {
                    // In flight until the connection has written it.
                    Some(data) => {
                        let notice_done = done.clone();
                        let sent = SentNotice(Box::new(move || {
                            let _ = notice_done.send(DiskDone::Sent { conn });
                        }));
                        // Over its bound the torrent drops the peer at its next send.
                        let _ = job.tx.send(ToConn::Piece {
                            piece: b.piece,
                            offset: b.offset,
                            data,
                            sent,
                        });
                    }
                    // A failed read just drops the block; the peer re-requests or times out.
                    None => {
                        let _ = done.send(DiskDone::Sent { conn });
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread every read fails (the channel is closed): uploads stop,
        // downloads go on.
        tracing::warn!("cannot start the disk reader thread: {e}");
    }
    tx
}

/// Chunks read for uploading, most recent last. Peers ask for a piece block by block, so
/// one read of an aligned chunk (up to [`READ_CHUNK`], within one piece) serves several
/// requests and blocks go out as slices of it; a peer asking one block per piece costs at
/// most one chunk per block (bounded amplification). Bounded in bytes.
#[derive(Default)]
struct ChunkCache {
    chunks: VecDeque<((u32, u32), Bytes)>,
    bytes: usize,
}

/// Bytes read at once for uploads: 8 blocks, the most one storage read may take.
const READ_CHUNK: u32 = crate::storage::MAX_READ_BLOCK_LEN;
/// Bytes and chunks kept for uploading (a short list: it is searched linearly).
const READ_CACHE_BYTES: usize = 32 << 20;
const READ_CACHE_CHUNKS: usize = 128;

impl ChunkCache {
    /// The block, or None when it cannot be read (the peer re-requests or times out).
    fn block(&mut self, storage: &Storage, b: Block) -> Option<Bytes> {
        let piece_len = storage.layout().piece_len(b.piece).unwrap_or(0);
        let start = b.offset / READ_CHUNK * READ_CHUNK;
        let end = (start + READ_CHUNK).min(piece_len);
        if b.offset as u64 + b.length as u64 > end as u64 {
            // Straddles two chunks (an odd request): read it alone.
            return storage.read_block(b.piece, b.offset, b.length).ok();
        }
        let key = (b.piece, start);
        let chunk = match self.chunks.iter().position(|(k, _)| *k == key) {
            Some(i) => self.chunks[i].1.clone(),
            None => {
                let data = storage.read_block(b.piece, start, end - start).ok()?;
                self.bytes += data.len();
                self.chunks.push_back((key, data.clone()));
                while self.bytes > READ_CACHE_BYTES || self.chunks.len() > READ_CACHE_CHUNKS {
                    let Some((_, old)) = self.chunks.pop_front() else {
                        break;
                    };
                    self.bytes -= old.len();
                }
                data
            }
        };
        let from = (b.offset - start) as usize;
        let to = from + b.length as usize;
        // Outside its piece: the engine checks requests, so only a shorter read lands here.
        (to <= chunk.len()).then(|| chunk.slice(from..to))
    }
}

impl Task {
    async fn run(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::Receiver<FromConn>,
        mut disk: mpsc::UnboundedReceiver<DiskDone>,
        mut incoming: mpsc::Receiver<Accepted>,
    ) {
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let wake = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::AddPeer(addr)) => {
                        self.core.add_peer(Instant::now(), addr, PeerSource::Explicit)
                    }
                    Some(Command::AddFoundPeer(addr)) => {
                        self.core.add_peer(Instant::now(), addr, PeerSource::Dht)
                    }
                    Some(Command::SetUrgent(pieces)) => {
                        self.core.set_urgent(Instant::now(), &pieces)
                    }
                    Some(Command::Shutdown) | None => break,
                },
                Some(ev) = events.recv() => {
                    self.on_conn_event(ev);
                    // Drain what else is queued before deciding: fewer, larger batches.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.on_conn_event(ev),
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
                Some(a) = incoming.recv() => self.incoming(a),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    self.core.handle_timeout(Instant::now());
                }
                _ = stats_tick.tick() => self.publish(),
            }
            self.carry_out();
        }
        self.core.shutdown(Instant::now());
        self.carry_out();
        for c in self.conns.values() {
            c.close();
        }
        self.conns.clear();
        if let Some(s) = self.storage.clone() {
            let path = self.resume_path.clone();
            let lock = self.resume_lock.clone();
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

    fn incoming(&mut self, a: Accepted) {
        let now = Instant::now();
        let conn = match self.core.accept(now, a.addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %a.addr, "refused: {e}");
                return; // dropping it closes the socket
            }
        };
        let (tx, rx) = ConnTx::new();
        self.conns.insert(conn, tx);
        let params = self.params(conn);
        tokio::spawn(connection::serve(params, a, self.events_tx.clone(), rx));
    }

    fn params(&self, id: ConnId) -> ConnParams {
        ConnParams {
            id,
            info_hash: self.info_hash,
            our_id: self.cfg.peer_id,
            handshake_timeout: self.cfg.handshake_timeout,
            idle_timeout: self.cfg.idle_timeout,
            piece_count: self.core.piece_count(),
            queued_in: self.queued_in.clone(),
            reserved: self.core.reserved(),
        }
    }

    fn dial(&mut self, conn: ConnId, addr: SocketAddr, encrypt: bool, rx: ConnRx) {
        let params = self.params(conn);
        let local = self.cfg.listen.map(|l| l.ip());
        tokio::spawn(connection::dial(
            params,
            local,
            addr,
            self.cfg.connect_timeout,
            self.cfg.transport != super::TransportPolicy::Utp,
            self.cfg
                .utp
                .as_ref()
                .filter(|_| self.cfg.transport != super::TransportPolicy::Tcp)
                .map(|u| u.0.clone()),
            encrypt,
            self.events_tx.clone(),
            rx,
        ));
    }

    fn on_conn_event(&mut self, ev: FromConn) {
        let now = Instant::now();
        match ev {
            FromConn::Ready {
                id,
                peer_id,
                reserved,
            } => self.core.handshake_done(now, id, peer_id, reserved),
            FromConn::Closed { id, reason } => {
                self.conns.remove(&id);
                self.core.closed(now, id, &reason);
            }
            // The permits go with the message: the reader may go on once it is handled.
            FromConn::Msg {
                id,
                msg,
                permits: _permits,
            } => self.core.message(now, id, msg),
        }
    }

    fn on_disk(&mut self, d: DiskDone) {
        let now = Instant::now();
        match d {
            DiskDone::Verified { piece, result } => self.core.piece_written(now, piece, result),
            DiskDone::Sent { conn } => self.core.block_sent(now, conn),
            DiskDone::ResumeSaved { have, result } => {
                if let Err(e) = &result {
                    // Not fatal: pieces stay verified in memory; the next save retries.
                    tracing::warn!("saving resume data: {e}");
                }
                self.core.resume_saved(now, have, result.is_ok());
            }
            DiskDone::StorageReady(Ok((storage, have))) => {
                self.resume_path = resume_path(&self.cfg, self.info_hash, storage.root());
                self.reads = Some(spawn_reader(storage.clone()));
                self.storage = Some(storage);
                self.core.storage_ready(now, have);
            }
            DiskDone::StorageReady(Err(e)) => self.core.storage_failed(now, &e),
        }
    }

    /// Carries out the core's outputs.
    fn carry_out(&mut self) {
        let mut completed = false;
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Dial {
                    conn,
                    addr,
                    encrypt,
                } => {
                    let (tx, rx) = ConnTx::new();
                    self.conns.insert(conn, tx);
                    self.dial(conn, addr, encrypt, rx);
                }
                Output::Send { conn, msg } => {
                    let reading = self
                        .conns
                        .get(&conn)
                        .is_none_or(|c| c.send(ToConn::Msg(msg)));
                    if !reading {
                        self.peer_not_reading(conn);
                    }
                }
                Output::Upload { conn, block } => {
                    let (Some(tx), Some(reads)) = (self.conns.get(&conn), &self.reads) else {
                        self.core.block_sent(Instant::now(), conn);
                        continue;
                    };
                    let job = ReadJob {
                        conn,
                        block,
                        tx: tx.clone(),
                        done: self.disk_tx.clone(),
                    };
                    if reads.send(job).is_err() {
                        self.core.block_sent(Instant::now(), conn);
                    }
                }
                Output::Close { conn, .. } => {
                    if let Some(c) = self.conns.remove(&conn) {
                        c.close();
                    }
                }
                Output::Verify { piece, blocks } => {
                    let Some(storage) = self.storage.clone() else {
                        continue;
                    };
                    let done = self.disk_tx.clone();
                    let len = storage.layout().piece_len(piece).unwrap_or(0) as usize;
                    tokio::task::spawn_blocking(move || {
                        // Blocks that do not tile the piece cannot hash right: a failed
                        // piece (re-fetched), not a storage error.
                        let tiled = blocks.iter().map(Bytes::len).sum::<usize>() == len;
                        let result = if tiled {
                            storage.write_piece_parts(piece, &blocks)
                        } else {
                            Ok(false)
                        };
                        let _ = done.send(DiskDone::Verified { piece, result });
                    });
                }
                Output::OpenStorage { info, raw_info } => {
                    save_metadata(&self.cfg, self.info_hash, &raw_info);
                    let (cfg, out, ih) = (self.cfg.clone(), self.out_dir.clone(), self.info_hash);
                    let done = self.disk_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = open_storage(&cfg, &out, ih, &info);
                        let _ = done.send(DiskDone::StorageReady(r));
                    });
                }
                Output::SaveResume => self.save_resume(),
            }
        }
        while let Some(ev) = self.core.poll_event() {
            match ev {
                Event::Completed | Event::MetadataReady | Event::Failed(_) => completed = true,
                Event::PeerDhtPort(addr) => {
                    let _ = self.dht_nodes.try_send(addr);
                }
                Event::PieceVerified(_) => {}
            }
        }
        if completed {
            self.publish();
        }
    }

    /// A peer with more than [`connection::MAX_QUEUED_OUT`] queued: it does not read.
    fn peer_not_reading(&mut self, conn: ConnId) {
        self.core
            .drop_peer(Instant::now(), conn, "does not read what we send");
    }

    fn save_resume(&mut self) {
        let Some(storage) = self.storage.clone() else {
            return;
        };
        let lock = self.resume_lock.clone();
        let path = self.resume_path.clone();
        let done = self.disk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock.lock();
            let have = storage.have_count();
            let result = match path {
                Some(p) => storage.save_resume(&p),
                None => storage.sync(),
            };
            let _ = done.send(DiskDone::ResumeSaved { have, result });
        });
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let mut s = TorrentStats {
            info_hash: self.info_hash,
            name: self.core.name().map(str::to_owned),
            dropped: self.core.dropped().cloned().collect(),
            error: self.core.error().map(str::to_owned),
            connections: self.core.connection_count(),
            banned: self.core.banned_endpoints(),
            ..Default::default()
        };
        let mut contributions: Vec<PeerContribution> = self
            .core
            .totals()
            .iter()
            .map(|(addr, t)| PeerContribution {
                addr: *addr,
                client: t.client.clone(),
                downloaded: t.downloaded,
                uploaded: t.uploaded,
            })
            .collect();
        contributions.sort_by(|a, b| b.downloaded.cmp(&a.downloaded).then(a.addr.cmp(&b.addr)));
        s.received_from = contributions
            .iter()
            .filter(|c| c.downloaded > 0)
            .map(|c| (c.addr, c.downloaded))
            .collect::<BTreeMap<_, _>>();
        s.contributions = contributions;
        if let Some(e) = self.core.engine() {
            let st = e.stats();
            s.have_metadata = true;
            s.piece_count = st.piece_count;
            s.pieces_have = st.pieces_have;
            s.total_length = e.geometry().total_length;
            s.bytes_left = st.bytes_left;
            s.downloaded = st.downloaded;
            s.uploaded = st.uploaded;
            s.wasted = st.wasted;
            s.hash_failures = st.hash_failures;
            s.complete = e.is_complete();
            s.peers = self
                .core
                .peers()
                .filter_map(|(addr, client, slot)| {
                    let ps = e.peer_stats(slot?)?;
                    Some(PeerSnapshot {
                        addr: Some(addr),
                        client: client.map(str::to_owned),
                        downloaded: ps.downloaded,
                        uploaded: ps.uploaded,
                        download_rate: ps.download_rate,
                        upload_rate: ps.upload_rate,
                        is_seed: ps.is_seed,
                    })
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
        s.elapsed = now.duration_since(self.started);
        self.stats_tx.send_replace(s);
    }
}
