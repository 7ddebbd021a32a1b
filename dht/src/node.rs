//! The tokio driver: owns the UDP socket, runs the sans-IO core [`Dht`] on one task, and
//! exposes an async handle.
//!
//! The task is a plain loop: receive datagrams (draining the socket in batches), feed them
//! to the core, send what the core wants sent, deliver its events to whoever asked, and
//! sleep until the core's next timeout. Every protocol decision stays in the core; this
//! file only moves bytes and time.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::core::{Dht, Event, RngSeed, Stats, Transmit};
use crate::id::Id;
use crate::item::Item;
use crate::lookup::LookupId;
use crate::mmsg::{self, RecvBatch};
use crate::state::SavedState;

/// Settings of a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to bind the UDP socket to (port 0 picks one).
    pub bind: SocketAddr,
    /// Settings of the core. `bootstrap` holds resolved addresses.
    pub core: Config,
    /// Where the id and good nodes are loaded from at start and saved to (atomically).
    pub state_file: Option<PathBuf>,
    /// Bootstrap nodes: where the pool of verified nodes is loaded from at start and saved
    /// to (atomically, with the state). Needs `core.pool_capacity > 0`.
    pub pool_file: Option<PathBuf>,
    /// How often the state is saved while running (it is saved at shutdown too).
    pub save_every: Duration,
    /// Kernel socket buffer sizes; large buffers absorb bursts (bootstrap nodes).
    pub recv_buffer: usize,
    pub send_buffer: usize,
    /// For an IPv6 `bind`: also accept IPv4 (dual-stack). Off: IPv6 only.
    pub dual_stack: bool,
    /// Seed of the core's RNG; `None` draws one from the OS.
    pub rng_seed: Option<u64>,
    /// Datagrams of another protocol sharing the socket (uTP, BEP 29: its first byte
    /// carries version 1 in the low nibble, where KRPC starts with `d`) go here instead
    /// of to the DHT; dropped when the receiver lags (UDP semantics). See
    /// [`Node::socket`] for sending.
    pub other_datagrams: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
}

/// Whether a datagram is uTP (BEP 29) rather than KRPC: version 1 in the low nibble and
/// a packet type 0-4 in the high one. KRPC messages are bencoded dictionaries (`d`,
/// 0x64: version nibble 4), so the two never collide.
pub fn is_utp(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] & 0x0f == 1 && datagram[0] >> 4 <= 4
}

impl NodeConfig {
    pub fn new(bind: SocketAddr, core: Config) -> Self {
        NodeConfig {
            bind,
            core,
            state_file: None,
            pool_file: None,
            save_every: Duration::from_secs(5 * 60),
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            dual_stack: false,
            rng_seed: None,
            other_datagrams: None,
        }
    }
}

enum Command {
    GetPeers {
        info_hash: Id,
        announce: Option<Option<u16>>,
        peers: mpsc::UnboundedSender<SocketAddr>,
    },
    Item {
        request: ItemRequest,
        updates: mpsc::UnboundedSender<ItemUpdate>,
    },
    Bootstrap,
    AddNode(SocketAddr),
    Stats(oneshot::Sender<Stats>),
    SaveState(oneshot::Sender<io::Result<()>>),
    Shutdown(oneshot::Sender<()>),
}

/// A BEP 44 request (see [`Node::get_immutable`], [`Node::get_mutable`],
/// [`Node::put_item`]).
enum ItemRequest {
    Immutable(Id),
    Mutable {
        key: [u8; 32],
        salt: Vec<u8>,
        newer_than: Option<i64>,
    },
    Put {
        item: Item,
        cas: Option<i64>,
    },
}

/// What a BEP 44 request reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemUpdate {
    /// A verified item (for a mutable one: each newer version found).
    Found(Item),
    /// A put is done: `acked` of the `sent` closest nodes stored the item.
    Stored { sent: usize, acked: usize },
}

/// The updates of one BEP 44 request; ends when the lookup (or the put) is done.
pub struct ItemStream {
    rx: mpsc::UnboundedReceiver<ItemUpdate>,
}

impl ItemStream {
    pub async fn next(&mut self) -> Option<ItemUpdate> {
        self.rx.recv().await
    }

    /// The next update if one is ready, without waiting: `Ok(None)` while the request
    /// goes on, `Err(())` once it is over and every update was taken.
    #[allow(clippy::result_unit_err)]
    pub fn poll_now(&mut self) -> Result<Option<ItemUpdate>, ()> {
        match self.rx.try_recv() {
            Ok(u) => Ok(Some(u)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
        }
    }
}

/// A running DHT node. Dropping it stops the task (without saving; use
/// [`Node::shutdown`] to save state first).
pub struct Node {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    /// The socket, shared with another protocol's driver (see `NodeConfig::other_datagrams`).
    socket: Arc<UdpSocket>,
    id: Id,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Peers found by a lookup, as they arrive. Ends when the lookup is done (for announces:
/// when the announce phase is done).
pub struct PeerStream {
    rx: mpsc::UnboundedReceiver<SocketAddr>,
}

/// What [`PeerStream::poll_now`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerPoll {
    Peer(SocketAddr),
    /// No new peer yet; the lookup goes on.
    Pending,
    /// The lookup is over and every peer was taken.
    Done,
}

impl PeerStream {
    /// The next peer, or `None` when the lookup is over.
    pub async fn next(&mut self) -> Option<SocketAddr> {
        self.rx.recv().await
    }

    /// The next peer if one is ready, without waiting.
    pub fn poll_now(&mut self) -> PeerPoll {
        match self.rx.try_recv() {
            Ok(p) => PeerPoll::Peer(p),
            Err(mpsc::error::TryRecvError::Empty) => PeerPoll::Pending,
            Err(mpsc::error::TryRecvError::Disconnected) => PeerPoll::Done,
        }
    }
}

impl futures_core::Stream for PeerStream {
    type Item = SocketAddr;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SocketAddr>> {
        self.rx.poll_recv(cx)
    }
}

impl Node {
    /// Binds the socket, loads saved state (if any), starts the task and bootstraps.
    pub async fn bind(cfg: NodeConfig) -> io::Result<Node> {
        let socket = Arc::new(make_socket(&cfg)?);
        let local_addr = socket.local_addr()?;
        // A fixed seed (tests) or 256 bits from the OS.
        let seed: RngSeed = match cfg.rng_seed {
            Some(s) => s.into(),
            None => rand::random::<[u8; 32]>().into(),
        };
        let now = Instant::now();
        let saved = cfg.state_file.as_deref().and_then(load_state);
        let mut dht = match saved {
            Some(state) => Dht::with_saved_state(cfg.core.clone(), now, seed, state),
            None => Dht::new(cfg.core.clone(), now, seed),
        };
        dht.set_local_addr(local_addr);
        if let Some(path) = &cfg.pool_file {
            load_pool(&mut dht, now, path);
        }
        let id = dht.id();
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            dht,
            socket: socket.clone(),
            other: cfg.other_datagrams.clone(),
            commands: rx,
            subscribers: HashMap::new(),
            item_subscribers: HashMap::new(),
            state_file: cfg.state_file.clone(),
            pool_file: cfg.pool_file.clone(),
            save_every: cfg.save_every,
            saving: None,
        };
        let task = tokio::spawn(driver.run());
        let node = Node {
            commands: tx,
            local_addr,
            socket,
            id,
            task: Some(task),
        };
        node.send(Command::Bootstrap);
        Ok(node)
    }

    /// The UDP socket, for another protocol sharing the port (uTP) to send on; what
    /// arrives for it comes through `NodeConfig::other_datagrams`.
    pub fn socket(&self) -> Arc<UdpSocket> {
        self.socket.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our node id at start (it may change once BEP 42 learns our external address; see
    /// [`Stats::id`]).
    pub fn id(&self) -> Id {
        self.id
    }

    /// Looks up peers for `info_hash`; they stream as they arrive.
    pub fn get_peers(&self, info_hash: impl Into<Id>) -> PeerStream {
        self.lookup(info_hash.into(), None)
    }

    /// Looks up peers for `info_hash` and announces that we serve it on TCP `port` (`None`:
    /// implied port, i.e. our UDP port). Peers found on the way stream as well.
    pub fn announce(&self, info_hash: impl Into<Id>, port: Option<u16>) -> PeerStream {
        self.lookup(info_hash.into(), Some(port))
    }

    fn lookup(&self, info_hash: Id, announce: Option<Option<u16>>) -> PeerStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Command::GetPeers {
            info_hash,
            announce,
            peers: tx,
        });
        PeerStream { rx }
    }

    /// BEP 44: the immutable item stored under `target`.
    pub fn get_immutable(&self, target: Id) -> ItemStream {
        self.item(ItemRequest::Immutable(target))
    }

    /// BEP 44: versions of the mutable item of `key` under `salt`, newer than
    /// `newer_than`, as they are found.
    pub fn get_mutable(&self, key: [u8; 32], salt: &[u8], newer_than: Option<i64>) -> ItemStream {
        self.item(ItemRequest::Mutable {
            key,
            salt: salt.to_vec(),
            newer_than,
        })
    }

    /// BEP 44: stores `item` on the nodes closest to its target; ends with
    /// [`ItemUpdate::Stored`].
    pub fn put_item(&self, item: Item, cas: Option<i64>) -> ItemStream {
        self.item(ItemRequest::Put { item, cas })
    }

    fn item(&self, request: ItemRequest) -> ItemStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Command::Item {
            request,
            updates: tx,
        });
        ItemStream { rx }
    }

    /// Starts a bootstrap (the node also re-bootstraps by itself when its table empties).
    pub fn bootstrap(&self) {
        self.send(Command::Bootstrap);
    }

    /// Pings a node we heard of elsewhere; it joins the table if it answers.
    pub fn add_node(&self, addr: SocketAddr) {
        self.send(Command::AddNode(addr));
    }

    /// Counters of the core; a zeroed default if the task has stopped.
    pub async fn stats(&self) -> Stats {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx));
        rx.await.unwrap_or_default()
    }

    /// Writes the state file now (no-op without one).
    pub async fn save_state(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::SaveState(tx));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("dht task has stopped")))
    }

    /// Saves state and stops the task.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx));
        let _ = rx.await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn send(&self, c: Command) {
        // A send fails only if the task has ended; callers then see empty results.
        let _ = self.commands.send(c);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn make_socket(cfg: &NodeConfig) -> io::Result<UdpSocket> {
    let domain = Domain::for_address(cfg.bind);
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if cfg.bind.is_ipv6() {
        socket.set_only_v6(!cfg.dual_stack)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(cfg.recv_buffer);
    let _ = socket.set_send_buffer_size(cfg.send_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&cfg.bind.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind DHT socket to {}: {e}", cfg.bind),
        )
    })?;
    UdpSocket::from_std(socket.into())
}

fn load_pool(dht: &mut Dht, now: Instant, path: &Path) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("cannot read DHT pool {}: {e}", path.display());
            return;
        }
    };
    match dht.import_pool(now, &bytes, unix_now()) {
        Ok(n) => tracing::info!("dht: {n} pool nodes loaded from {}", path.display()),
        Err(e) => tracing::warn!("ignoring DHT pool {}: {e}", path.display()),
    }
}

/// Seconds since the Unix epoch (the pool file's stamp; the core has no clock).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn load_state(path: &Path) -> Option<SavedState> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read DHT state {}: {e}", path.display());
            return None;
        }
    };
    match SavedState::from_bytes(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("ignoring DHT state {}: {e}", path.display());
            None
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, and an
/// fsync of the directory so the rename itself survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Receive batches (of up to `mmsg::BATCH` datagrams) handled per wake-up before the loop
/// lets timers and commands run.
const RECV_ROUNDS: usize = 8;

struct Subscriber {
    peers: mpsc::UnboundedSender<SocketAddr>,
    /// Announces end at `AnnounceDone`, other lookups at `LookupDone`.
    is_announce: bool,
}

struct Driver {
    dht: Dht,
    socket: Arc<UdpSocket>,
    /// Where datagrams of another protocol on this socket go (see `NodeConfig`).
    other: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    commands: mpsc::UnboundedReceiver<Command>,
    subscribers: HashMap<LookupId, Subscriber>,
    /// BEP 44 requests, and whether each is a put (which ends at `PutDone`).
    item_subscribers: HashMap<LookupId, (mpsc::UnboundedSender<ItemUpdate>, bool)>,
    state_file: Option<PathBuf>,
    pool_file: Option<PathBuf>,
    save_every: Duration,
    /// The last save, written on a blocking thread: a 100,000-node pool and its fsyncs
    /// must not stall answering. Saves run one after another (they share temp names).
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl Driver {
    async fn run(mut self) {
        let mut rx = RecvBatch::default();
        let mut next_save = tokio::time::Instant::now() + self.save_every;
        loop {
            self.flush().await;
            self.dispatch_events();
            let wake = self
                .dht
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60))
                .min(next_save);
            tokio::select! {
                r = self.socket.readable() => {
                    match r {
                        Ok(()) => self.receive(&mut rx).await,
                        Err(e) => tracing::debug!("dht recv: {e}"),
                    }
                }
                c = self.commands.recv() => {
                    match c {
                        Some(Command::Shutdown(done)) => {
                            self.start_save(None);
                            if let Some(save) = self.saving.take() {
                                let _ = save.await;
                            }
                            let _ = done.send(());
                            return;
                        }
                        Some(c) => self.command(c),
                        // Every handle is gone: stop.
                        None => return,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.dht.handle_timeout(now);
                    if tokio::time::Instant::now() >= next_save {
                        next_save = tokio::time::Instant::now() + self.save_every;
                        self.save_in_background();
                    }
                }
            }
        }
    }

    /// Receives what the kernel has queued, a batch per system call (recvmmsg), feeds it
    /// to the core and sends the replies a batch at a time (sendmmsg), for a bounded
    /// number of rounds.
    async fn receive(&mut self, rx: &mut RecvBatch) {
        for _ in 0..RECV_ROUNDS {
            let socket = &self.socket;
            let n = match socket.try_io(Interest::READABLE, || mmsg::recv(socket, rx)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP port-unreachable and similar surface here on some systems.
                Err(e) => {
                    tracing::debug!("dht recv: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                if let Some((from, data)) = rx.get(i) {
                    match &self.other {
                        Some(other) if is_utp(data) => {
                            let _ = other.try_send((from, data.to_vec()));
                        }
                        _ => self.dht.handle_datagram(now, from, data),
                    }
                }
            }
            self.flush().await;
            if n < mmsg::BATCH {
                return;
            }
        }
    }

    /// Sends everything the core wants sent, a batch per system call, waiting for room
    /// in the socket buffer when it is full.
    async fn flush(&mut self) {
        let v6_socket = self.socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let mut out: Vec<Transmit> = Vec::new();
        loop {
            while out.len() < mmsg::BATCH {
                let Some(mut t) = self.dht.poll_transmit() else {
                    break;
                };
                // The core speaks plain IPv4; a dual-stack IPv6 socket needs mapped addresses.
                if v6_socket {
                    if let SocketAddr::V4(v4) = t.to {
                        t.to = SocketAddr::new(
                            std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()),
                            v4.port(),
                        );
                    }
                }
                out.push(t);
            }
            if out.is_empty() {
                return;
            }
            let batch: Vec<(SocketAddr, &[u8])> =
                out.iter().map(|t| (t.to, t.data.as_slice())).collect();
            let socket = &self.socket;
            match socket.try_io(Interest::WRITABLE, || mmsg::send(socket, &batch)) {
                Ok(n) => {
                    drop(batch);
                    for t in out.drain(..n.max(1)) {
                        self.dht.recycle(t.data);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(batch);
                    if let Err(e) = self.socket.writable().await {
                        tracing::debug!("dht send: {e}");
                        return;
                    }
                }
                // Unreachable destinations etc.: that datagram is dropped, the core's
                // timeouts deal with it.
                Err(e) => {
                    drop(batch);
                    tracing::debug!("dht send to {}: {e}", out[0].to);
                    out.remove(0);
                }
            }
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(ev) = self.dht.poll_event() {
            match ev {
                Event::PeersFound { lookup, peers, .. } => {
                    if let Some(s) = self.subscribers.get(&lookup) {
                        for p in peers {
                            let _ = s.peers.send(p);
                        }
                    }
                }
                Event::LookupDone { lookup, .. }
                    if self
                        .subscribers
                        .get(&lookup)
                        .is_some_and(|s| !s.is_announce) =>
                {
                    self.subscribers.remove(&lookup);
                }
                Event::AnnounceDone { lookup, .. } => {
                    self.subscribers.remove(&lookup);
                }
                Event::ItemFound { lookup, item } => {
                    if let Some((tx, _)) = self.item_subscribers.get(&lookup) {
                        let _ = tx.send(ItemUpdate::Found(item));
                    }
                }
                Event::PutDone {
                    lookup,
                    sent,
                    acked,
                    ..
                } => {
                    if let Some((tx, _)) = self.item_subscribers.remove(&lookup) {
                        let _ = tx.send(ItemUpdate::Stored { sent, acked });
                    }
                }
                Event::LookupDone { lookup, .. }
                    if self.item_subscribers.get(&lookup).is_some_and(|s| !s.1) =>
                {
                    self.item_subscribers.remove(&lookup);
                }
                Event::IdChanged { id } => tracing::info!("dht: new node id {id:?} (BEP 42)"),
                Event::ExternalAddress { ip } => tracing::info!("dht: external address {ip}"),
                _ => {}
            }
        }
        // Forget lookups whose stream the caller dropped.
        self.subscribers.retain(|_, s| !s.peers.is_closed());
        self.item_subscribers.retain(|_, s| !s.0.is_closed());
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::GetPeers {
                info_hash,
                announce,
                peers,
            } => {
                let id = match announce {
                    None => self.dht.get_peers(now, info_hash),
                    Some(port) => self.dht.announce(now, info_hash, port),
                };
                self.subscribers.insert(
                    id,
                    Subscriber {
                        peers,
                        is_announce: announce.is_some(),
                    },
                );
            }
            Command::Item { request, updates } => {
                let (id, is_put) = match request {
                    ItemRequest::Immutable(target) => (self.dht.get_immutable(now, target), false),
                    ItemRequest::Mutable {
                        key,
                        salt,
                        newer_than,
                    } => (self.dht.get_mutable(now, key, &salt, newer_than), false),
                    ItemRequest::Put { item, cas } => (self.dht.put_item(now, item, cas), true),
                };
                self.item_subscribers.insert(id, (updates, is_put));
                // A lookup refused at once has already finished: report that now.
                self.dispatch_events();
            }
            Command::Bootstrap => {
                self.dht.bootstrap(now);
            }
            Command::AddNode(addr) => self.dht.add_node(now, addr),
            Command::Stats(reply) => {
                let _ = reply.send(self.dht.stats());
            }
            Command::SaveState(reply) => self.start_save(Some(reply)),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Encodes what is to be saved (quick, here) and writes it on a blocking thread,
    /// after any save still running; the outcome goes to `reply`, or to the log.
    fn start_save(&mut self, reply: Option<oneshot::Sender<io::Result<()>>>) {
        let mut files = Vec::new();
        if let Some(path) = &self.pool_file {
            files.push((path.clone(), self.dht.export_pool(unix_now())));
        }
        if let Some(path) = &self.state_file {
            let state = self.dht.export_state(Instant::now());
            files.push((path.clone(), state.to_bytes()));
        }
        let previous = self.saving.take();
        self.saving = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            let written = tokio::task::spawn_blocking(move || {
                files
                    .iter()
                    .try_for_each(|(path, bytes)| write_atomically(path, bytes))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match reply {
                Some(r) => {
                    let _ = r.send(written);
                }
                None => {
                    if let Err(e) = written {
                        tracing::warn!("cannot save DHT state: {e}");
                    }
                }
            }
        }));
    }

    /// A periodic save; skipped while the last one is still being written.
    fn save_in_background(&mut self) {
        if self.saving.as_ref().is_some_and(|s| !s.is_finished()) {
            tracing::debug!("dht: the last save is still being written; skipping one");
            return;
        }
        self.start_save(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(bootstrap: Vec<SocketAddr>) -> NodeConfig {
        // Distinct seeds: nodes with one seed would share an id.
        static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut cfg = NodeConfig::new("127.0.0.1:0".parse().unwrap(), Config::loopback(bootstrap));
        cfg.rng_seed = Some(SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        cfg
    }

    async fn wait_for_nodes(node: &Node, at_least: usize) -> bool {
        for _ in 0..200 {
            let s = node.stats().await;
            if s.nodes4 >= at_least {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    #[test]
    fn utp_and_krpc_first_bytes_never_collide() {
        let mut syn = vec![0x41u8];
        syn.resize(20, 0);
        assert!(is_utp(&syn));
        for first in [0x01u8, 0x11, 0x21, 0x31] {
            syn[0] = first;
            assert!(is_utp(&syn), "{first:#x}");
        }
        for bad in [0x51u8, 0x42, 0x00] {
            syn[0] = bad;
            assert!(!is_utp(&syn), "{bad:#x}");
        }
        assert!(!is_utp(&syn[..19]), "shorter than a uTP header");
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        assert!(!is_utp(ping));
    }

    #[tokio::test]
    async fn utp_datagrams_go_to_their_own_channel_and_krpc_is_still_answered() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut cfg = loopback(vec![]);
        cfg.other_datagrams = Some(tx);
        let node = Node::bind(cfg).await.unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut syn = vec![0x41u8, 0, 0x12, 0x34];
        syn.resize(20, 0);
        peer.send_to(&syn, node.local_addr()).await.unwrap();
        let (from, got) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the uTP datagram arrived")
            .unwrap();
        assert_eq!((from, got), (peer.local_addr().unwrap(), syn));
        // The other protocol sends on the same socket (same port).
        node.socket()
            .send_to(b"pong", peer.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, src) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], src), (&b"pong"[..], node.local_addr()));
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        peer.send_to(ping, node.local_addr()).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("the ping is answered")
            .unwrap();
        assert!(
            buf[..n].windows(6).any(|w| w == b"1:t2:a"),
            "not a reply to our ping"
        );
        node.shutdown().await;
    }

    #[tokio::test]
    async fn announce_then_get_peers_through_one_bootstrap_node() {
        let boot = Node::bind(loopback(vec![])).await.unwrap();
        let b = boot.local_addr();
        let a = Node::bind(loopback(vec![b])).await.unwrap();
        let c = Node::bind(loopback(vec![b])).await.unwrap();
        assert!(wait_for_nodes(&a, 1).await, "a never joined");
        assert!(wait_for_nodes(&c, 1).await, "c never joined");
        let ih = [0x42u8; 20];
        let mut ann = a.announce(ih, Some(51413));
        // The announce stream ends once the announce phase is done.
        tokio::time::timeout(Duration::from_secs(10), async {
            while ann.next().await.is_some() {}
        })
        .await
        .expect("announce finished");
        let mut found = c.get_peers(ih);
        let peer = tokio::time::timeout(Duration::from_secs(10), found.next())
            .await
            .expect("lookup produced a peer in time");
        assert_eq!(peer, Some(SocketAddr::new(a.local_addr().ip(), 51413)));
    }

    #[tokio::test]
    async fn state_is_saved_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let boot = Node::bind(loopback(vec![])).await.unwrap();
        let mut cfg = loopback(vec![boot.local_addr()]);
        cfg.state_file = Some(dir.path().join("dht.state"));
        let a = Node::bind(cfg.clone()).await.unwrap();
        assert!(wait_for_nodes(&a, 1).await);
        let id = a.stats().await.id;
        a.shutdown().await;
        let saved =
            SavedState::from_bytes(&std::fs::read(dir.path().join("dht.state")).unwrap()).unwrap();
        assert_eq!(saved.id, id);
        assert!(saved.nodes.iter().any(|n| n.addr == boot.local_addr()));
        // Restarted with no bootstrap address, it rejoins from the saved nodes.
        cfg.core.bootstrap.clear();
        let again = Node::bind(cfg).await.unwrap();
        assert_eq!(again.stats().await.id, id);
        assert!(
            wait_for_nodes(&again, 1).await,
            "did not rejoin from saved state"
        );
    }

    #[tokio::test]
    async fn ipv6_nodes_on_loopback_find_each_other() {
        let v6 = |bootstrap: Vec<SocketAddr>| {
            let mut cfg = loopback(bootstrap);
            cfg.bind = "[::1]:0".parse().unwrap();
            cfg.core.ipv4 = false;
            cfg.core.ipv6 = true;
            cfg
        };
        let boot = Node::bind(v6(vec![])).await.unwrap();
        let a = Node::bind(v6(vec![boot.local_addr()])).await.unwrap();
        let c = Node::bind(v6(vec![boot.local_addr()])).await.unwrap();
        for n in [&a, &c] {
            let mut joined = false;
            for _ in 0..200 {
                if n.stats().await.nodes6 >= 1 {
                    joined = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert!(joined, "IPv6 node never joined");
        }
        let ih = [0x66u8; 20];
        let mut ann = a.announce(ih, None);
        tokio::time::timeout(Duration::from_secs(10), async {
            while ann.next().await.is_some() {}
        })
        .await
        .expect("announce finished");
        let mut found = c.get_peers(ih);
        let peer = tokio::time::timeout(Duration::from_secs(10), found.next())
            .await
            .expect("lookup produced a peer in time");
        // implied_port: the announcer's UDP address is its peer address.
        assert_eq!(peer, Some(a.local_addr()));
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let first = Node::bind(loopback(vec![])).await.unwrap();
        let err = Node::bind(NodeConfig::new(
            first.local_addr(),
            Config::loopback(vec![]),
        ))
        .await
        .err()
        .expect("second bind fails");
        assert!(
            err.to_string().contains(&first.local_addr().to_string()),
            "{err}"
        );
    }
}
