//! The tokio drivers around [`crate::torrent::TorrentCore`]: a [`Session`] owns one TCP
//! listener and routes each incoming connection, by the info-hash of its handshake (or
//! of its MSE key exchange), to one of many torrents; each [`Torrent`] is a task that
//! owns its core and storage; one task per connection moves bytes; disk work runs off the
//! reactor (block reads on a dedicated thread, piece hash-and-write on the blocking
//! pool).
//!
//! ```no_run
//! # async fn demo(meta: wire::metainfo::Metainfo, peer: std::net::SocketAddr) {
//! use wire::session::{Session, SessionConfig, Source};
//! let session = Session::bind(SessionConfig::default()).await.unwrap();
//! let mut t = session.add(Source::Metainfo(Box::new(meta)), "out".into()).await.unwrap();
//! t.add_peer(peer);
//! t.wait_complete().await.unwrap();
//! println!("{:?}", t.stats());
//! t.shutdown().await;
//! session.shutdown().await;
//! # }
//! ```

mod connection;
mod mse;
mod torrent;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine;
use crate::infohash::InfoHash;
use crate::metainfo::Metainfo;
use crate::peer::PeerId;
use crate::torrent::CoreConfig;
use connection::Accepted;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Where to accept peers (None: outgoing connections only).
    pub listen: Option<SocketAddr>,
    pub peer_id: PeerId,
    pub engine: engine::Config,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A connection that receives nothing (not even a keep-alive) for this long is closed.
    pub idle_timeout: Duration,
    /// Seed for the engine's RNG (choking, piece choice).
    pub rng_seed: u64,
    /// How often [`Torrent::stats`] is refreshed.
    pub stats_interval: Duration,
    /// Where resume data (`<info-hash>.resume`) and metadata fetched for a magnet link
    /// (`<info-hash>.torrent`) are kept. With it, a restart trusts pieces whose files are
    /// unchanged since the last save and rehashes only the rest, and a magnet restarts
    /// without fetching the metadata again. None: every start hash-checks every piece.
    pub resume_dir: Option<PathBuf>,
    /// Rehash every piece on start even when the resume data matches the files.
    pub full_recheck: bool,
    /// How often resume data is saved while pieces arrive (also on completion and at
    /// shutdown). Each save fsyncs the files written since the last one.
    pub resume_interval: Duration,
    /// Our DHT node's UDP port, told to peers (BEP 5 PORT); None: no DHT.
    pub dht_port: Option<u16>,
    /// The rest of the torrent core's settings (dial policy, per-IP limit, metadata
    /// timeouts); its peer id, port, engine, resume interval and seed come from above.
    pub core: CoreConfig,
    /// uTP (set by [`Session::accept_utp`]): peers that TCP cannot reach are dialed over
    /// it too.
    pub utp: Option<UtpHandle>,
    /// Which transports peers are dialed and accepted over.
    pub transport: TransportPolicy,
}

/// Which transports a session uses with peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportPolicy {
    /// TCP only: no uTP either way.
    Tcp,
    /// uTP only: TCP connections are refused and peers dialed over uTP alone.
    Utp,
    /// Both (the default): TCP first, uTP when TCP fails; both accepted.
    #[default]
    Both,
}

/// The session's uTP socket, shared by its torrents.
#[derive(Clone)]
pub struct UtpHandle(pub Arc<utp::UtpSocket>);

impl std::fmt::Debug for UtpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UtpHandle({})", self.0.local_addr())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        let mut id = *b"-SW0001-000000000000";
        let r: [u8; 12] = rand::random();
        for (d, s) in id[8..].iter_mut().zip(r) {
            *d = b'0' + s % 10;
        }
        SessionConfig {
            listen: None,
            peer_id: PeerId(id),
            engine: engine::Config::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(180),
            rng_seed: rand::random(),
            stats_interval: Duration::from_millis(200),
            resume_dir: None,
            full_recheck: false,
            resume_interval: Duration::from_secs(30),
            dht_port: None,
            core: CoreConfig::default(),
            utp: None,
            transport: TransportPolicy::Both,
        }
    }
}

/// What a torrent starts from.
pub enum Source {
    /// A parsed .torrent (or metadata we already have): piece exchange starts at once;
    /// files already in the output directory are checked and seeded.
    Metainfo(Box<Metainfo>),
    /// Only the info-hash (a magnet link): the metadata is fetched from peers first
    /// (BEP 9), then pieces.
    InfoHash(InfoHash),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] crate::storage::LayoutError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Core(#[from] crate::torrent::CoreError),
    #[error("torrent {0} is already in this session")]
    Duplicate(InfoHash),
    #[error("torrent stopped: {0}")]
    Stopped(String),
}

/// One peer as seen in [`TorrentStats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSnapshot {
    pub addr: Option<SocketAddr>,
    /// Its client, from the extended handshake's `v`.
    pub client: Option<String>,
    pub downloaded: u64,
    pub uploaded: u64,
    pub download_rate: f64,
    pub upload_rate: f64,
    pub is_seed: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TorrentStats {
    pub info_hash: InfoHash,
    pub name: Option<String>,
    pub have_metadata: bool,
    pub piece_count: u32,
    pub pieces_have: u32,
    pub total_length: u64,
    pub bytes_left: u64,
    /// Payload bytes accepted / uploaded / received but not needed.
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    /// Bytes per second over the last second or so.
    pub download_rate: f64,
    pub upload_rate: f64,
    pub hash_failures: u32,
    pub complete: bool,
    /// Connected peers (after the handshake).
    pub peers: Vec<PeerSnapshot>,
    /// Payload bytes received per remote address over the torrent's life (including
    /// peers that are gone).
    pub received_from: BTreeMap<SocketAddr, u64>,
    /// Every peer that sent or got payload, by the address it is reached at (the one it
    /// listens on when known), with its client name; most downloaded first.
    pub contributions: Vec<PeerContribution>,
    /// The most recent dropped connections and why (bounded).
    pub dropped: Vec<(SocketAddr, String)>,
    /// Connections open (with or without a completed handshake).
    pub connections: usize,
    /// Endpoints banned for bad data.
    pub banned: usize,
    /// Since the torrent started.
    pub elapsed: Duration,
    /// Set when the torrent stopped on an error.
    pub error: Option<String>,
}

/// What one peer gave and took over the torrent's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerContribution {
    pub addr: SocketAddr,
    pub client: Option<String>,
    pub downloaded: u64,
    pub uploaded: u64,
}

impl TorrentStats {
    /// Fraction of the payload we have, 0.0 to 1.0 (0 before the metadata is known).
    pub fn progress(&self) -> f64 {
        if self.total_length == 0 {
            return 0.0;
        }
        1.0 - self.bytes_left as f64 / self.total_length as f64
    }
}

enum Command {
    /// A peer the user named: re-dialed whenever it is lost.
    AddPeer(SocketAddr),
    /// A peer found (DHT, hints): dialed with the usual backoff.
    AddFoundPeer(SocketAddr),
    /// Pieces a reader waits on, asked for first.
    SetUrgent(Vec<u32>),
    Shutdown,
}

/// The torrents of a session by info-hash, where its listener hands their connections.
type Routes = Arc<Mutex<HashMap<InfoHash, mpsc::Sender<Accepted>>>>;

/// One listener and many torrents: every torrent is served on the one port.
pub struct Session {
    cfg: SessionConfig,
    listen_addr: Option<SocketAddr>,
    routes: Routes,
    acceptor: Option<JoinHandle<()>>,
    /// Accepts uTP connections, once [`Session::accept_utp`] gave a socket.
    utp_acceptor: Option<JoinHandle<()>>,
}

impl Session {
    /// Binds `cfg.listen` (if set) and starts accepting.
    pub async fn bind(cfg: SessionConfig) -> Result<Session, SessionError> {
        let routes: Routes = Arc::default();
        let (listen_addr, acceptor) = match cfg.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| SessionError::Listen {
                        addr,
                        error: source,
                    })?;
                let local = l.local_addr().ok();
                let task = tokio::spawn(accept_loop(
                    l,
                    routes.clone(),
                    cfg.handshake_timeout,
                    cfg.transport == TransportPolicy::Utp,
                ));
                (local, Some(task))
            }
            None => (None, None),
        };
        Ok(Session {
            cfg,
            listen_addr,
            routes,
            acceptor,
            utp_acceptor: None,
        })
    }

    /// Also accepts peers over uTP on `socket` (the DHT's UDP port, usually), routed to
    /// the torrents by their handshakes like TCP peers; torrents added from now on also
    /// dial over it peers TCP cannot reach.
    pub fn accept_utp(&mut self, socket: Arc<utp::UtpSocket>) {
        if let Some(old) = self.utp_acceptor.take() {
            old.abort();
        }
        self.cfg.utp = Some(UtpHandle(socket.clone()));
        let task = accept_utp_loop(socket, self.routes.clone(), self.cfg.handshake_timeout);
        self.utp_acceptor = Some(tokio::spawn(task));
    }

    /// Where peers can reach us, if we listen.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// Sets the DHT port told to peers by torrents added from now on (the DHT node is
    /// often bound after the session, on the port the session got).
    pub fn set_dht_port(&mut self, port: Option<u16>) {
        self.cfg.dht_port = port;
    }

    /// Torrents in the session.
    pub fn torrent_count(&self) -> usize {
        self.routes.lock().map_or(0, |r| r.len())
    }

    /// Starts a torrent downloading into (or seeding from) `out_dir`.
    pub async fn add(&self, source: Source, out_dir: PathBuf) -> Result<Torrent, SessionError> {
        let cfg = self.cfg.clone();
        // A magnet whose metadata an earlier run saved starts like a .torrent.
        let info_hash = match &source {
            Source::InfoHash(h) => *h,
            Source::Metainfo(m) => m.info_hash,
        };
        if self.routes.lock().is_ok_and(|r| r.contains_key(&info_hash)) {
            return Err(SessionError::Duplicate(info_hash));
        }
        let source = match source {
            Source::InfoHash(h) => match torrent::saved_metadata(&cfg, h) {
                Some(m) => Source::Metainfo(Box::new(m)),
                None => Source::InfoHash(h),
            },
            other => other,
        };
        let start = match source {
            Source::InfoHash(h) => torrent::Start::Magnet(h),
            Source::Metainfo(meta) => {
                let (c, out) = (cfg.clone(), out_dir.clone());
                let m = meta.clone();
                let (storage, have) = tokio::task::spawn_blocking(move || {
                    torrent::open_storage(&c, &out, m.info_hash, &m.info)
                })
                .await
                .map_err(|e| SessionError::Stopped(format!("opening storage: {e}")))??;
                torrent::Start::Ready {
                    meta,
                    storage,
                    have,
                }
            }
        };
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let spawned = torrent::spawn(start, out_dir, cfg, self.listen_addr, cmd_rx)?;
        match self.routes.lock() {
            Ok(mut r) => {
                r.insert(info_hash, spawned.incoming);
            }
            Err(_) => return Err(SessionError::Stopped("session routes poisoned".into())),
        }
        Ok(Torrent {
            info_hash,
            listen_addr: self.listen_addr,
            commands,
            stats: spawned.stats,
            task: Some(spawned.task),
            routes: Some(self.routes.clone()),
            own_session: None,
            dht_nodes: spawned.dht_nodes,
        })
    }

    /// Stops accepting. Torrents still running stop when their handles are shut down or
    /// dropped.
    pub async fn shutdown(mut self) {
        if let Some(u) = self.utp_acceptor.take() {
            u.abort();
            let _ = u.await;
        }
        if let Some(a) = self.acceptor.take() {
            a.abort();
            let _ = a.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(u) = self.utp_acceptor.take() {
            u.abort();
        }
        if let Some(a) = self.acceptor.take() {
            a.abort();
        }
    }
}

/// Handshakes in progress at once, per transport: a flood of idle connections costs a
/// bounded amount.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and hands each, once its handshake is read, to the torrent it
/// names; connections for torrents we do not have are dropped.
async fn accept_loop(l: TcpListener, routes: Routes, handshake_timeout: Duration, refuse: bool) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, addr) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                // EMFILE and the like: give the system a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if refuse {
            // uTP only: the listener holds the port number, and TCP peers are turned away.
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(route(
            stream,
            addr,
            routes.clone(),
            handshake_timeout,
            permit,
        ));
    }
}

/// The same for uTP connections (BEP 29) arriving on the UDP socket.
async fn accept_utp_loop(socket: Arc<utp::UtpSocket>, routes: Routes, handshake_timeout: Duration) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    while let Some((stream, addr)) = socket.accept().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        tokio::spawn(route(
            stream,
            addr,
            routes.clone(),
            handshake_timeout,
            permit,
        ));
    }
}

/// Reads an incoming connection's handshake (plaintext or MSE) and hands it to the
/// torrent it names.
async fn route<S>(
    stream: S,
    addr: SocketAddr,
    routes: Routes,
    handshake_timeout: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let skeys: Vec<[u8; 20]> = routes
        .lock()
        .map(|r| r.keys().map(|h| h.0).collect())
        .unwrap_or_default();
    let accepted = match connection::accept(stream, addr, &skeys, handshake_timeout).await {
        Ok(a) => a,
        Err(e) => return tracing::debug!(peer = %addr, "incoming: {e}"),
    };
    let to = routes
        .lock()
        .ok()
        .and_then(|r| r.get(&accepted.theirs.info_hash).cloned());
    match to {
        Some(tx) => {
            let _ = tx.send(accepted).await;
        }
        None => tracing::debug!(
            peer = %addr,
            "incoming for a torrent we do not have ({})",
            accepted.theirs.info_hash
        ),
    }
}

/// A running torrent. Dropping it stops the torrent (without waiting).
pub struct Torrent {
    info_hash: InfoHash,
    listen_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Receiver<TorrentStats>,
    task: Option<JoinHandle<()>>,
    routes: Option<Routes>,
    /// A session of its own ([`Torrent::start`]), stopped with it.
    own_session: Option<Session>,
    dht_nodes: mpsc::Receiver<SocketAddr>,
}

impl Torrent {
    /// Starts a torrent in a session of its own (listening on `cfg.listen`).
    pub async fn start(
        source: Source,
        out_dir: PathBuf,
        cfg: SessionConfig,
    ) -> Result<Torrent, SessionError> {
        let session = Session::bind(cfg).await?;
        let mut t = session.add(source, out_dir).await?;
        t.own_session = Some(session);
        Ok(t)
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Where peers can reach us, if we listen.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// Connects to a peer the user named, and again whenever it is lost (bounded).
    pub fn add_peer(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::AddPeer(addr));
    }

    /// Asks for these pieces before any other, in this order (a streaming reader's next
    /// pieces; at most 64; replaces the previous set; an empty list clears it).
    pub fn set_urgent(&self, pieces: Vec<u32>) {
        let _ = self.commands.send(Command::SetUrgent(pieces));
    }

    /// Connects to a peer found through the DHT or a hint (retried with backoff a few
    /// times, then forgotten).
    pub fn add_found_peer(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::AddFoundPeer(addr));
    }

    /// DHT nodes that connected peers named in PORT messages (BEP 5) since the last call:
    /// any connected peer is a way into the DHT.
    pub fn take_dht_nodes(&mut self) -> Vec<SocketAddr> {
        std::iter::from_fn(|| self.dht_nodes.try_recv().ok()).collect()
    }

    /// The latest snapshot (refreshed every `stats_interval` and on completion).
    pub fn stats(&self) -> TorrentStats {
        self.stats.borrow().clone()
    }

    /// Resolves when every piece is verified; fails if the torrent stopped first.
    pub async fn wait_complete(&mut self) -> Result<(), SessionError> {
        loop {
            {
                let s = self.stats.borrow_and_update();
                if s.complete {
                    return Ok(());
                }
                if let Some(e) = &s.error {
                    return Err(SessionError::Stopped(e.clone()));
                }
            }
            if self.stats.changed().await.is_err() {
                return Err(SessionError::Stopped("torrent task ended".into()));
            }
        }
    }

    fn unroute(&mut self) {
        if let Some(r) = self.routes.take() {
            if let Ok(mut r) = r.lock() {
                r.remove(&self.info_hash);
            }
        }
    }

    /// Closes every connection, flushes storage and waits for the task to end.
    pub async fn shutdown(mut self) {
        self.unroute();
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(s) = self.own_session.take() {
            s.shutdown().await;
        }
    }
}

impl Drop for Torrent {
    fn drop(&mut self) {
        self.unroute();
        let _ = self.commands.send(Command::Shutdown);
    }
}
