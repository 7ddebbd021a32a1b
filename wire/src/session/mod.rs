//! The tokio driver around [`crate::engine::Engine`]: one task per torrent owns the engine
//! (and, for magnet links, the metadata fetcher first), one task per connection moves
//! bytes, disk work runs off the reactor (block reads on a dedicated thread, piece
//! hash-and-write on the blocking pool).
//!
//! ```no_run
//! # async fn demo(meta: wire::metainfo::Metainfo, peer: std::net::SocketAddr) {
//! use wire::session::{SessionConfig, Source, Torrent};
//! let mut t = Torrent::start(Source::Metainfo(Box::new(meta)), "out".into(), SessionConfig::default())
//!     .await
//!     .unwrap();
//! t.add_peer(peer);
//! t.wait_complete().await.unwrap();
//! println!("{:?}", t.stats());
//! t.shutdown().await;
//! # }
//! ```

mod connection;
mod convert;
mod mse;
mod torrent;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine;
use crate::infohash::InfoHash;
use crate::metainfo::Metainfo;
use crate::peer::PeerId;

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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("torrent stopped: {0}")]
    Stopped(String),
}

/// One peer as seen in [`TorrentStats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSnapshot {
    pub addr: Option<SocketAddr>,
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
    /// The most recent dropped connections and why (bounded).
    pub dropped: Vec<(SocketAddr, String)>,
    /// Set when the torrent stopped on an error.
    pub error: Option<String>,
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
    AddPeer(SocketAddr),
    Shutdown,
}

/// A running torrent. Dropping it stops the torrent (without waiting).
pub struct Torrent {
    info_hash: InfoHash,
    listen_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Receiver<TorrentStats>,
    task: Option<JoinHandle<()>>,
}

impl Torrent {
    /// Starts a torrent downloading into (or seeding from) `out_dir`.
    pub async fn start(
        source: Source,
        out_dir: PathBuf,
        cfg: SessionConfig,
    ) -> Result<Torrent, SessionError> {
        let listener = match cfg.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| SessionError::Listen { addr, source })?,
            ),
            None => None,
        };
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (task, stats) =
            torrent::spawn(source, out_dir, cfg, listener, listen_addr, cmd_rx).await?;
        let info_hash = stats.borrow().info_hash;
        Ok(Torrent {
            info_hash,
            listen_addr,
            commands,
            stats,
            task: Some(task),
        })
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Where peers can reach us, if we listen.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// Connects to a peer (ignored if already connected or over the peer limit).
    pub fn add_peer(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::AddPeer(addr));
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

    /// Closes every connection, flushes storage and waits for the task to end.
    pub async fn shutdown(mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Torrent {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}
