//! `swarm daemon`: one long-running node (one session, one DHT node, one peer port) with
//! many torrents, driven over HTTP. This module is the daemon's core: the torrent list,
//! add / pause / resume / remove, the list saved atomically in the state directory, and
//! the housekeeping loop (DHT lookups per torrent). [`api`] serves it over HTTP (JSON API,
//! web page, metrics), [`transmission`] speaks the Transmission RPC subset. No protocol
//! logic lives here: the daemon is a thin layer over [`wire::session::Session`].

pub mod api;
pub mod metrics;
pub mod stream;
pub mod transmission;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wire::infohash::InfoHash;
use wire::magnet::Magnet;
use wire::metainfo::Metainfo;
use wire::session::{Session, Source, TorrentStats};

use crate::client::{NetConfig, Tracked};

/// Name of the torrent list in the state directory.
pub const LIST_FILE: &str = "daemon-torrents.json";
/// Where .torrent files added through the API are kept (in the state directory).
const TORRENTS_DIR: &str = "daemon-torrents";
/// How often each torrent's stats snapshot is refreshed.
const STATS_INTERVAL: Duration = Duration::from_millis(500);
/// How often the housekeeping loop feeds DHT lookups to the torrents.
const TICK: Duration = Duration::from_millis(100);

/// What went wrong with a request, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonError {
    /// 400: the request itself is wrong.
    BadRequest(String),
    /// 404: no such torrent.
    NotFound(String),
    /// 409: the torrent exists already, or is busy starting or stopping.
    Conflict(String),
    /// 500-class failures are reported as 4xx where the cause is the request; what is
    /// left (a disk that cannot be written) is this, answered with 503.
    Unavailable(String),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::BadRequest(m)
            | DaemonError::NotFound(m)
            | DaemonError::Conflict(m)
            | DaemonError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// How a torrent was added, as saved in the list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum SavedSource {
    /// A magnet link (its `x.pe` hints are dialed again on every start).
    Magnet(String),
    /// A .torrent file, kept in the state directory under this file name.
    TorrentFile(String),
}

/// One torrent in the saved list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedTorrent {
    pub info_hash: String,
    pub source: SavedSource,
    pub out_dir: PathBuf,
    pub paused: bool,
    /// Seconds since the Unix epoch.
    pub added: u64,
}

/// The saved list (`daemon-torrents.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedList {
    pub version: u32,
    pub torrents: Vec<SavedTorrent>,
}

/// A torrent's state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Opening storage (checking files already on disk).
    Starting,
    /// Fetching the metadata from peers (magnet link).
    Metadata,
    Downloading,
    Seeding,
    /// Stopping, or stopped by the user.
    Stopping,
    Paused,
    /// Stopped on an error (disk, bad layout); `error` says which.
    Error,
}

enum Run {
    /// Not running (paused, or never started).
    Stopped,
    /// `session.add` is in progress.
    Starting,
    Running(Box<Tracked>),
    /// `shutdown` is in progress.
    Stopping,
    /// The last start failed.
    Failed(String),
}

struct Entry {
    /// Small number for the Transmission RPC (`-t 1`), stable while the daemon runs.
    id: u32,
    info_hash: InfoHash,
    saved: SavedTorrent,
    run: Run,
    /// Known from the .torrent, or read from the resume directory once fetched.
    meta: Option<Arc<Metainfo>>,
    /// The last stats of a running torrent, kept across a pause.
    last: Option<TorrentStats>,
    /// Peers dialed on every start (the magnet's `x.pe`, `--peer`).
    hints: Vec<SocketAddr>,
    /// Per-peer rates, measured here from the byte counts of successive snapshots.
    rates: PeerRates,
    /// Payload bytes down / up in earlier runs (before pauses) since the daemon started:
    /// each run's counters start at zero.
    carried: (u64, u64),
}

/// Per-peer transfer rates from the peers' byte counters, sampled about once a second
/// (the session's per-peer rates are only refreshed at choking rounds).
#[derive(Default)]
struct PeerRates {
    at: Option<Instant>,
    prev: std::collections::HashMap<SocketAddr, (u64, u64)>,
    rate: std::collections::HashMap<SocketAddr, (f64, f64)>,
}

impl PeerRates {
    fn sample(&mut self, now: Instant, s: &TorrentStats) {
        let dt = self.at.map(|t| now.duration_since(t).as_secs_f64());
        let mut prev = std::collections::HashMap::with_capacity(s.peers.len());
        let mut rate = std::collections::HashMap::with_capacity(s.peers.len());
        for p in &s.peers {
            let Some(addr) = p.addr else { continue };
            prev.insert(addr, (p.downloaded, p.uploaded));
            let (Some(dt), Some(&(d0, u0))) = (dt, self.prev.get(&addr)) else {
                continue;
            };
            if dt <= 0.0 {
                continue;
            }
            let now_rate = (
                p.downloaded.saturating_sub(d0) as f64 / dt,
                p.uploaded.saturating_sub(u0) as f64 / dt,
            );
            // Light smoothing, so one quiet second does not read as a stall.
            let (od, ou) = self.rate.get(&addr).copied().unwrap_or(now_rate);
            rate.insert(
                addr,
                (0.5 * od + 0.5 * now_rate.0, 0.5 * ou + 0.5 * now_rate.1),
            );
        }
        self.at = Some(now);
        self.prev = prev;
        self.rate = rate;
    }

    /// Puts the measured rates into a snapshot's peers.
    fn apply(&self, s: &mut TorrentStats) {
        for p in &mut s.peers {
            if let Some((d, u)) = p.addr.and_then(|a| self.rate.get(&a)) {
                p.download_rate = *d;
                p.upload_rate = *u;
            }
        }
    }
}

impl Entry {
    fn stats(&self) -> Option<TorrentStats> {
        match &self.run {
            Run::Running(t) => {
                let mut s = t.torrent.stats();
                self.rates.apply(&mut s);
                Some(s)
            }
            _ => self.last.clone(),
        }
    }

    fn busy(&self) -> bool {
        matches!(self.run, Run::Starting | Run::Stopping)
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<InfoHash, Entry>,
    next_id: u32,
}

/// Where things go and which peers to always dial.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub net: NetConfig,
    /// `--peer`: dialed for every torrent.
    pub peers: Vec<SocketAddr>,
    /// `-o`: every torrent's data goes under it.
    pub out_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// The running daemon, shared by the HTTP handlers and the housekeeping loop.
pub struct Daemon {
    session: Session,
    dht: Option<dht::Node>,
    listen: SocketAddr,
    out_dir: PathBuf,
    state_dir: PathBuf,
    resume_dir: Option<PathBuf>,
    peers: Vec<SocketAddr>,
    inner: Mutex<Inner>,
    /// Serialises list saves (each writes the whole list).
    save_lock: tokio::sync::Mutex<()>,
    started: Instant,
    /// Counters for `/metrics` of what the API did.
    counters: Mutex<Counters>,
    /// Bytes of torrents that were removed, so totals never go down.
    removed_totals: Mutex<(u64, u64)>,
}

/// Totals of API actions, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub added: u64,
    pub removed: u64,
    pub paused: u64,
    pub resumed: u64,
}

/// One torrent's summary, as the API reports it.
#[derive(Clone, Debug)]
pub struct Summary {
    pub id: u32,
    pub info_hash: InfoHash,
    pub name: Option<String>,
    pub state: State,
    pub error: Option<String>,
    pub out_dir: PathBuf,
    pub added: u64,
    pub stats: Option<TorrentStats>,
    pub meta: Option<Arc<Metainfo>>,
    pub source: SavedSource,
    /// Payload bytes down / up since the daemon started, over every run of the torrent.
    pub total_down: u64,
    pub total_up: u64,
}

impl Summary {
    pub fn progress(&self) -> f64 {
        match &self.stats {
            Some(s) if s.complete => 1.0,
            Some(s) => s.progress(),
            None => 0.0,
        }
    }
}

/// DHT numbers for `/api/dht` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct DhtSummary {
    pub enabled: bool,
    pub stats: Option<dht::Stats>,
    pub addr: Option<SocketAddr>,
    /// Torrents with a lookup running now, and lookups finished over all torrents.
    pub lookups_running: usize,
    pub lookups_done: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses an info-hash as the API takes it: 40 hex digits (either case) or 32 base32.
pub fn parse_info_hash(s: &str) -> Result<InfoHash, DaemonError> {
    let bad = || {
        DaemonError::BadRequest(format!(
            "bad info-hash {:?}: expected 40 hex digits or 32 base32 characters",
            truncate(s, 64)
        ))
    };
    if s.len() != 40 && s.len() != 32 {
        return Err(bad());
    }
    Magnet::parse(&format!("magnet:?xt=urn:btih:{s}"))
        .map(|m| m.info_hash)
        .map_err(|_| bad())
}

/// At most `n` characters of `s`, for echoing input in errors.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// What `POST /api/torrents` (or `torrent-add`) was given.
pub enum AddRequest {
    Magnet(String),
    Torrent(Vec<u8>),
}

/// Output directory `requested` (relative to `root`, or absolute inside it), checked to
/// stay inside `root`: only plain components, no `..`, no symlink on the way.
pub fn dir_under(root: &Path, requested: Option<&str>) -> Result<PathBuf, DaemonError> {
    let Some(req) = requested.filter(|r| !r.is_empty()) else {
        return Ok(root.to_path_buf());
    };
    let bad = |why: &str| {
        DaemonError::BadRequest(format!(
            "download directory {:?} {why}; it must be inside {}",
            truncate(req, 200),
            root.display()
        ))
    };
    let p = Path::new(req);
    let rel = if p.is_absolute() {
        p.strip_prefix(root)
            .map_err(|_| bad("is outside the output directory"))?
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => match n.to_str() {
                Some(s) => parts.push(s.to_string()),
                None => return Err(bad("is not UTF-8")),
            },
            Component::CurDir => {}
            _ => return Err(bad("has a `..`, root or prefix component")),
        }
    }
    if parts.is_empty() {
        return Ok(root.to_path_buf());
    }
    wire::metainfo::paths::resolve_on_disk(root, &parts)
        .map_err(|e| bad(&format!("is not a safe path ({e})")))
}

impl Daemon {
    /// Starts the session and the DHT node, and restores the saved list (torrents start in
    /// the background; paused ones stay paused).
    pub async fn start(cfg: DaemonConfig) -> anyhow::Result<Arc<Daemon>> {
        std::fs::create_dir_all(&cfg.out_dir)
            .with_context(|| format!("cannot create output directory {}", cfg.out_dir.display()))?;
        let out_dir = std::fs::canonicalize(&cfg.out_dir)
            .with_context(|| format!("cannot resolve {}", cfg.out_dir.display()))?;
        let net = &cfg.net;
        let mut scfg = net.session_config();
        // Stats are read when someone asks (the web page polls once a second): refreshing
        // them less often than `get`'s progress bar does saves CPU with many torrents.
        scfg.stats_interval = STATS_INTERVAL;
        let mut session = Session::bind(scfg)
            .await
            .context("cannot start the session")?;
        let listen = session
            .listen_addr()
            .context("the session has no listening address")?;
        if !net.no_dht {
            session.set_dht_port(Some(listen.port()));
        }
        let dht = crate::client::start_udp(net, &mut session, listen.port()).await?;
        let saved = load_list(&cfg.state_dir.join(LIST_FILE))?;
        let daemon = Arc::new(Daemon {
            session,
            dht,
            listen,
            out_dir,
            state_dir: cfg.state_dir.clone(),
            resume_dir: net.resume_dir.clone(),
            peers: cfg.peers.clone(),
            inner: Mutex::new(Inner {
                entries: BTreeMap::new(),
                next_id: 1,
            }),
            save_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            counters: Mutex::new(Counters::default()),
            removed_totals: Mutex::new((0, 0)),
        });
        let mut to_start = Vec::new();
        for t in saved.torrents {
            match daemon.restore(t) {
                Ok(Some(ih)) => to_start.push(ih),
                Ok(None) => {}
                Err(e) => tracing::warn!("saved torrent skipped: {e}"),
            }
        }
        let d = daemon.clone();
        tokio::spawn(async move {
            for ih in to_start {
                d.start_entry(ih).await;
            }
        });
        Ok(daemon)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock poisons it; the data is still consistent enough
        // to report and save (every change is a single assignment).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where peers reach us.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn dht_enabled(&self) -> bool {
        self.dht.is_some()
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Bytes down / up of torrents removed since the start.
    pub fn removed_totals(&self) -> (u64, u64) {
        *self
            .removed_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a saved torrent in the list; returns its info-hash when it should be started.
    fn restore(&self, t: SavedTorrent) -> Result<Option<InfoHash>, String> {
        let ih = InfoHash::from_hex(&t.info_hash)
            .ok_or_else(|| format!("bad info-hash {:?}", t.info_hash))?;
        let (meta, hints) = match &t.source {
            SavedSource::Magnet(m) => {
                let magnet = Magnet::parse(m).map_err(|e| format!("{}: {e}", t.info_hash))?;
                (None, self.hints_of(&magnet))
            }
            SavedSource::TorrentFile(name) => {
                let path = self.torrent_file_path(name)?;
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let mi =
                    Metainfo::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                if mi.info_hash != ih {
                    return Err(format!("{} is another torrent", path.display()));
                }
                (Some(Arc::new(mi)), self.peers.clone())
            }
        };
        let paused = t.paused;
        let mut inner = self.lock();
        if inner.entries.contains_key(&ih) {
            return Err(format!("{ih} is in the list twice"));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.insert(
            ih,
            Entry {
                id,
                info_hash: ih,
                saved: t,
                run: Run::Stopped,
                meta,
                last: None,
                hints,
                rates: PeerRates::default(),
                carried: (0, 0),
            },
        );
        Ok((!paused).then_some(ih))
    }

    fn torrent_file_path(&self, name: &str) -> Result<PathBuf, String> {
        // Names are `<40 hex>.torrent`, written by us; anything else in a hand-edited
        // list is refused rather than read from wherever it points.
        let ok = name.len() == 48
            && name.ends_with(".torrent")
            && name[..40].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(format!("bad torrent file name {name:?} in the list"));
        }
        Ok(self.state_dir.join(TORRENTS_DIR).join(name))
    }

    /// Literal `x.pe` addresses of a magnet plus `--peer` (names are not resolved here:
    /// the HTTP handler must not wait on DNS).
    fn hints_of(&self, magnet: &Magnet) -> Vec<SocketAddr> {
        let mut h = self.peers.clone();
        for p in &magnet.peers {
            if let wire::magnet::PeerHint::Addr(a) = p {
                h.push(*a);
            }
        }
        h
    }

    /// Adds a torrent and starts it in the background. Returns its info-hash and id.
    pub async fn add(
        self: &Arc<Self>,
        req: AddRequest,
        dir: Option<&str>,
        paused: bool,
    ) -> Result<(InfoHash, u32), DaemonError> {
        let out_dir = dir_under(&self.out_dir, dir)?;
        let (ih, source, meta, hints, torrent_bytes) = match req {
            AddRequest::Magnet(m) => {
                let magnet = Magnet::parse(m.trim())
                    .map_err(|e| DaemonError::BadRequest(format!("bad magnet link: {e}")))?;
                let hints = self.hints_of(&magnet);
                (
                    magnet.info_hash,
                    SavedSource::Magnet(magnet.to_string()),
                    None,
                    hints,
                    None,
                )
            }
            AddRequest::Torrent(bytes) => {
                let mi = Metainfo::from_bytes(&bytes)
                    .map_err(|e| DaemonError::BadRequest(format!("not a valid .torrent: {e}")))?;
                let ih = mi.info_hash;
                let name = format!("{}.torrent", ih.to_hex());
                (
                    ih,
                    SavedSource::TorrentFile(name),
                    Some(Arc::new(mi)),
                    self.peers.clone(),
                    Some(bytes),
                )
            }
        };
        if self.lock().entries.contains_key(&ih) {
            return Err(DaemonError::Conflict(format!(
                "torrent {ih} is already in the list"
            )));
        }
        if let (Some(bytes), SavedSource::TorrentFile(name)) = (&torrent_bytes, &source) {
            let path = self
                .torrent_file_path(name)
                .map_err(DaemonError::Unavailable)?;
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || wire::storage::write_atomic(&path, &bytes))
                .await
                .map_err(|e| DaemonError::Unavailable(format!("saving the .torrent: {e}")))?
                .map_err(|e| DaemonError::Unavailable(format!("cannot save the .torrent: {e}")))?;
        }
        let id = {
            let mut inner = self.lock();
            if inner.entries.contains_key(&ih) {
                return Err(DaemonError::Conflict(format!(
                    "torrent {ih} is already in the list"
                )));
            }
            let id = inner.next_id;
            inner.next_id += 1;
            inner.entries.insert(
                ih,
                Entry {
                    id,
                    info_hash: ih,
                    saved: SavedTorrent {
                        info_hash: ih.to_hex(),
                        source,
                        out_dir,
                        paused,
                        added: now_unix(),
                    },
                    run: if paused { Run::Stopped } else { Run::Starting },
                    meta,
                    last: None,
                    hints,
                    rates: PeerRates::default(),
                    carried: (0, 0),
                },
            );
            id
        };
        if let Err(e) = self.save().await {
            // Not in the saved list, so not in the list at all.
            self.lock().entries.remove(&ih);
            return Err(e);
        }
        self.count(|c| c.added += 1);
        if !paused {
            let d = self.clone();
            tokio::spawn(async move { d.start_entry(ih).await });
        }
        Ok((ih, id))
    }

    /// Starts a stopped torrent (`session.add`), unless it is gone or busy.
    async fn start_entry(&self, ih: InfoHash) {
        let (source, out_dir, hints) = {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get_mut(&ih) else {
                return;
            };
            if matches!(e.run, Run::Running(_) | Run::Stopping) || e.saved.paused {
                return;
            }
            e.run = Run::Starting;
            let source = match &e.meta {
                Some(m) => Source::Metainfo(Box::new((**m).clone())),
                None => Source::InfoHash(ih),
            };
            (source, e.saved.out_dir.clone(), e.hints.clone())
        };
        let result = self.session.add(source, out_dir).await;
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(&ih) else {
            // Removed while starting cannot happen (busy entries are not removed), but
            // if it did, the dropped handle stops the torrent.
            return;
        };
        match result {
            Ok(t) => {
                for h in &hints {
                    t.add_peer(*h);
                }
                e.run = Run::Running(Box::new(Tracked::new(t)));
            }
            Err(err) => {
                tracing::warn!("torrent {ih}: cannot start: {err}");
                e.run = Run::Failed(err.to_string());
            }
        }
    }

    /// Stops a torrent and keeps it in the list, paused.
    pub async fn pause(&self, ih: InfoHash) -> Result<(), DaemonError> {
        let running = {
            let mut inner = self.lock();
            let e = inner.entries.get_mut(&ih).ok_or_else(|| not_found(ih))?;
            if e.busy() {
                return Err(busy(ih));
            }
            e.saved.paused = true;
            match std::mem::replace(&mut e.run, Run::Stopping) {
                Run::Running(t) => {
                    let last = t.torrent.stats();
                    e.carried.0 += last.downloaded;
                    e.carried.1 += last.uploaded;
                    e.last = Some(last);
                    Some(t)
                }
                _ => None,
            }
        };
        if let Some(t) = running {
            t.torrent.shutdown().await;
        }
        if let Some(e) = self.lock().entries.get_mut(&ih) {
            e.run = Run::Stopped;
        }
        self.count(|c| c.paused += 1);
        self.save().await
    }

    /// Starts a paused torrent again (resume data spares a rehash).
    pub async fn resume(self: &Arc<Self>, ih: InfoHash) -> Result<(), DaemonError> {
        {
            let mut inner = self.lock();
            let e = inner.entries.get_mut(&ih).ok_or_else(|| not_found(ih))?;
            if e.busy() {
                return Err(busy(ih));
            }
            if matches!(e.run, Run::Running(_)) {
                return Ok(());
            }
            e.saved.paused = false;
            e.run = Run::Starting;
        }
        self.count(|c| c.resumed += 1);
        self.save().await?;
        let d = self.clone();
        tokio::spawn(async move { d.start_entry(ih).await });
        Ok(())
    }

    /// Removes a torrent from the list (stopping it first); with `delete_data`, also its
    /// files under the output directory. Returns the files deleted.
    pub async fn remove(&self, ih: InfoHash, delete_data: bool) -> Result<usize, DaemonError> {
        let entry = {
            let mut inner = self.lock();
            let e = inner.entries.get(&ih).ok_or_else(|| not_found(ih))?;
            if e.busy() {
                return Err(busy(ih));
            }
            inner.entries.remove(&ih).ok_or_else(|| not_found(ih))?
        };
        let mut meta = entry.meta.clone();
        let (mut down, mut up) = entry.carried;
        if let Run::Running(t) = entry.run {
            let last = t.torrent.stats();
            down += last.downloaded;
            up += last.uploaded;
            t.torrent.shutdown().await;
        }
        {
            let mut r = self
                .removed_totals
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            r.0 += down;
            r.1 += up;
        }
        if meta.is_none() {
            meta = self.saved_metadata(ih).map(Arc::new);
        }
        let mut deleted = 0;
        if delete_data {
            if let Some(m) = &meta {
                deleted = delete_files(&self.out_dir, &entry.saved.out_dir, m);
            }
        }
        if let SavedSource::TorrentFile(name) = &entry.saved.source {
            if let Ok(p) = self.torrent_file_path(name) {
                let _ = std::fs::remove_file(p);
            }
        }
        self.forget_resume(ih);
        self.count(|c| c.removed += 1);
        self.save().await?;
        Ok(deleted)
    }

    /// Removes resume data and fetched metadata of a removed torrent.
    fn forget_resume(&self, ih: InfoHash) {
        let Some(dir) = &self.resume_dir else { return };
        let hex = ih.to_hex();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for f in rd.flatten() {
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name == format!("{hex}.torrent")
                || (name.starts_with(&format!("{hex}.")) && name.ends_with(".resume"));
            if ours {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }

    /// Metadata fetched for a magnet link, as the session saved it in the resume directory.
    fn saved_metadata(&self, ih: InfoHash) -> Option<Metainfo> {
        let path = self
            .resume_dir
            .as_ref()?
            .join(format!("{}.torrent", ih.to_hex()));
        let len = std::fs::metadata(&path).ok()?.len();
        if len > wire::metainfo::MAX_TORRENT_BYTES as u64 {
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        Metainfo::from_bytes(&bytes)
            .ok()
            .filter(|m| m.info_hash == ih)
    }

    /// Every torrent, in info-hash order.
    pub fn list(&self) -> Vec<Summary> {
        let mut want_meta = Vec::new();
        let out: Vec<Summary> = {
            let inner = self.lock();
            inner
                .entries
                .values()
                .map(|e| {
                    let s = summarize(e);
                    if e.meta.is_none() && s.stats.as_ref().is_some_and(|s| s.have_metadata) {
                        want_meta.push(e.info_hash);
                    }
                    s
                })
                .collect()
        };
        if want_meta.is_empty() {
            return out;
        }
        // Metadata fetched since the last look: read it once (outside the lock) and keep it.
        for ih in want_meta {
            if let Some(m) = self.saved_metadata(ih) {
                if let Some(e) = self.lock().entries.get_mut(&ih) {
                    e.meta = Some(Arc::new(m));
                }
            }
        }
        let inner = self.lock();
        inner.entries.values().map(summarize).collect()
    }

    /// One torrent.
    pub fn get(&self, ih: InfoHash) -> Result<Summary, DaemonError> {
        // list() fills in metadata fetched since; one torrent is cheap enough to find there.
        self.list()
            .into_iter()
            .find(|s| s.info_hash == ih)
            .ok_or_else(|| not_found(ih))
    }

    /// Whether the torrent is running or about to (so a missing piece may still come).
    pub fn is_running(&self, ih: InfoHash) -> bool {
        self.lock()
            .entries
            .get(&ih)
            .is_some_and(|e| matches!(e.run, Run::Running(_) | Run::Starting))
    }

    /// Asks a running torrent for these pieces first (a streaming reader waits on them).
    pub fn set_urgent(&self, ih: InfoHash, pieces: Vec<u32>) {
        if let Some(Run::Running(t)) = self.lock().entries.get(&ih).map(|e| &e.run) {
            t.torrent.set_urgent(pieces);
        }
    }

    /// The info-hash of the torrent with this RPC id.
    pub fn by_id(&self, id: u32) -> Option<InfoHash> {
        self.lock()
            .entries
            .values()
            .find(|e| e.id == id)
            .map(|e| e.info_hash)
    }

    pub async fn dht_summary(&self) -> DhtSummary {
        let (lookups_running, lookups_done) = {
            let inner = self.lock();
            let mut running = 0;
            let mut done = 0u64;
            for e in inner.entries.values() {
                if let Run::Running(t) = &e.run {
                    running += usize::from(t.lookup_running());
                    done += u64::from(t.lookups_done());
                }
            }
            (running, done)
        };
        match &self.dht {
            Some(d) => DhtSummary {
                enabled: true,
                stats: Some(d.stats().await),
                addr: Some(d.local_addr()),
                lookups_running,
                lookups_done,
            },
            None => DhtSummary::default(),
        }
    }

    /// Feeds DHT lookups to every running torrent.
    fn tick(&self) {
        let Some(dht) = &self.dht else { return };
        let now = Instant::now();
        let mut inner = self.lock();
        for e in inner.entries.values_mut() {
            if let Run::Running(t) = &mut e.run {
                t.tick(dht, self.listen, now);
            }
        }
    }

    /// Samples every running torrent's per-peer byte counts (for per-peer rates).
    fn sample_rates(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        for e in inner.entries.values_mut() {
            if let Run::Running(t) = &e.run {
                let s = t.torrent.stats();
                e.rates.sample(now, &s);
            }
        }
    }

    /// The housekeeping loop (DHT lookups, per-peer rates) until `stop` changes.
    pub async fn run_housekeeping(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut rates = tokio::time::interval(Duration::from_secs(1));
        rates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stop = stop;
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(),
                _ = rates.tick() => self.sample_rates(),
                _ = stop.changed() => return,
            }
        }
    }

    /// The list as saved.
    fn saved_list(&self) -> SavedList {
        let inner = self.lock();
        SavedList {
            version: 1,
            torrents: inner.entries.values().map(|e| e.saved.clone()).collect(),
        }
    }

    /// Writes the list atomically (temporary file, fsync, rename).
    pub async fn save(&self) -> Result<(), DaemonError> {
        let _g = self.save_lock.lock().await;
        let list = self.saved_list();
        let path = self.state_dir.join(LIST_FILE);
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| DaemonError::Unavailable(format!("cannot encode the list: {e}")))?;
        tokio::task::spawn_blocking(move || wire::storage::write_atomic(&path, &bytes))
            .await
            .map_err(|e| DaemonError::Unavailable(format!("saving the list: {e}")))?
            .map_err(|e| DaemonError::Unavailable(format!("cannot save the torrent list: {e}")))
    }

    /// Saves the list, stops every torrent (flushing resume data) and the DHT node.
    pub async fn shutdown(self: Arc<Self>) {
        if let Err(e) = self.save().await {
            tracing::warn!("{e}");
        }
        let running: Vec<Box<Tracked>> = {
            let mut inner = self.lock();
            inner
                .entries
                .values_mut()
                .filter_map(|e| match std::mem::replace(&mut e.run, Run::Stopping) {
                    Run::Running(t) => Some(t),
                    _ => None,
                })
                .collect()
        };
        for t in running {
            t.torrent.shutdown().await;
        }
        if let Some(d) = &self.dht {
            if let Err(e) = d.save_state().await {
                tracing::warn!("cannot save DHT state: {e}");
            }
        }
        match Arc::try_unwrap(self) {
            Ok(d) => {
                if let Some(n) = d.dht {
                    n.shutdown().await;
                }
                d.session.shutdown().await;
            }
            Err(_) => tracing::debug!("daemon still referenced at shutdown"),
        }
    }
}

fn not_found(ih: InfoHash) -> DaemonError {
    DaemonError::NotFound(format!("no torrent {ih} in the list"))
}

fn busy(ih: InfoHash) -> DaemonError {
    DaemonError::Conflict(format!(
        "torrent {ih} is starting or stopping; try again in a moment"
    ))
}

fn summarize(e: &Entry) -> Summary {
    let stats = e.stats();
    let (total_down, total_up) = match (&e.run, &stats) {
        (Run::Running(_), Some(s)) => (e.carried.0 + s.downloaded, e.carried.1 + s.uploaded),
        _ => e.carried,
    };
    let (state, error) = match &e.run {
        Run::Starting => (State::Starting, None),
        Run::Stopping => (State::Stopping, None),
        Run::Failed(m) => (State::Error, Some(m.clone())),
        Run::Stopped => (State::Paused, None),
        Run::Running(_) => match &stats {
            Some(s) if s.error.is_some() => (State::Error, s.error.clone()),
            Some(s) if !s.have_metadata => (State::Metadata, None),
            Some(s) if s.complete => (State::Seeding, None),
            _ => (State::Downloading, None),
        },
    };
    let name = stats
        .as_ref()
        .and_then(|s| s.name.clone())
        .or_else(|| e.meta.as_ref().map(|m| m.info.name.clone()))
        .or_else(|| match &e.saved.source {
            SavedSource::Magnet(m) => Magnet::parse(m).ok().and_then(|m| m.display_name),
            SavedSource::TorrentFile(_) => None,
        });
    Summary {
        id: e.id,
        info_hash: e.info_hash,
        name,
        state,
        error,
        out_dir: e.saved.out_dir.clone(),
        added: e.saved.added,
        stats,
        meta: e.meta.clone(),
        source: e.saved.source.clone(),
        total_down,
        total_up,
    }
}

/// Deletes a torrent's files under `dir` (itself under `root`), then the directories it
/// made that are left empty. Every path is resolved under `dir` with the metainfo path
/// rules (no `..`, no symlink on the way) and checked to be inside `root`. Returns how
/// many files were deleted.
fn delete_files(root: &Path, dir: &Path, meta: &Metainfo) -> usize {
    if !dir.starts_with(root) {
        return 0;
    }
    let mut deleted = 0;
    let mut dirs = std::collections::BTreeSet::new();
    for f in &meta.info.files {
        let Ok(path) = f.path_under(dir) else {
            continue;
        };
        if !path.starts_with(root) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            deleted += 1;
        }
        let mut p = path.parent();
        while let Some(d) = p {
            if d == dir || !d.starts_with(dir) {
                break;
            }
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    // Deepest first; remove_dir refuses directories that still hold something.
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    deleted
}

/// Reads the saved list; a missing file is an empty list.
fn load_list(path: &Path) -> anyhow::Result<SavedList> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SavedList::default()),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid torrent list", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_stay_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(dir_under(r, None).unwrap(), r);
        assert_eq!(dir_under(r, Some("")).unwrap(), r);
        assert_eq!(dir_under(r, Some("a/b")).unwrap(), r.join("a/b"));
        assert_eq!(dir_under(r, Some("./a")).unwrap(), r.join("a"));
        let abs = r.join("x");
        assert_eq!(dir_under(r, abs.to_str()).unwrap(), abs);
        for bad in ["../x", "a/../../x", "/etc", "/"] {
            let e = dir_under(r, Some(bad)).unwrap_err();
            assert!(matches!(e, DaemonError::BadRequest(_)), "{bad}: {e:?}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/tmp", r.join("link")).unwrap();
            assert!(dir_under(r, Some("link/x")).is_err());
        }
    }

    #[test]
    fn deleting_data_removes_the_files_and_empty_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let src = root.join("album");
        std::fs::create_dir_all(src.join("cd1")).unwrap();
        std::fs::write(src.join("cd1/a.bin"), vec![1u8; 40_000]).unwrap();
        std::fs::write(src.join("b.bin"), vec![2u8; 30_000]).unwrap();
        let made =
            wire::create::create_torrent(&src, &wire::create::CreateOptions::default(), &|_| {})
                .unwrap();
        // Something of the user's beside the torrent's files stays, and so does its dir.
        std::fs::write(src.join("notes.txt"), b"mine").unwrap();
        let outside = tmp.path().join("outside.bin");
        std::fs::write(&outside, b"x").unwrap();
        assert_eq!(delete_files(&root, &root, &made.metainfo), 2);
        assert!(!src.join("cd1").exists(), "empty subdirectory removed");
        assert!(src.join("notes.txt").exists());
        assert!(outside.exists());
        // A directory outside the root is never touched.
        assert_eq!(delete_files(&root, tmp.path(), &made.metainfo), 0);
    }

    #[test]
    fn info_hashes() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_info_hash(hex).unwrap().to_hex(), hex);
        assert_eq!(parse_info_hash(&hex.to_uppercase()).unwrap().to_hex(), hex);
        for bad in [
            "",
            "xyz",
            &hex[..39],
            &format!("{hex}0"),
            "zz23456789abcdef0123456789abcdef01234567",
        ] {
            assert!(parse_info_hash(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_rates_come_from_byte_counts() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let snap = |down: u64| TorrentStats {
            peers: vec![wire::session::PeerSnapshot {
                addr: Some(addr),
                downloaded: down,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut r = PeerRates::default();
        let t0 = Instant::now();
        r.sample(t0, &snap(0));
        r.sample(t0 + Duration::from_secs(1), &snap(1000));
        let mut s = snap(1000);
        r.apply(&mut s);
        assert_eq!(s.peers[0].download_rate, 1000.0);
        r.sample(t0 + Duration::from_secs(2), &snap(1000));
        r.apply(&mut s);
        assert_eq!(s.peers[0].download_rate, 500.0, "smoothed");
    }

    #[test]
    fn list_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LIST_FILE);
        assert_eq!(load_list(&p).unwrap(), SavedList::default());
        let list = SavedList {
            version: 1,
            torrents: vec![SavedTorrent {
                info_hash: "0123456789abcdef0123456789abcdef01234567".into(),
                source: SavedSource::Magnet(
                    "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567".into(),
                ),
                out_dir: dir.path().into(),
                paused: true,
                added: 5,
            }],
        };
        wire::storage::write_atomic(&p, &serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(load_list(&p).unwrap(), list);
        std::fs::write(&p, b"{not json").unwrap();
        assert!(load_list(&p).is_err());
    }
}
