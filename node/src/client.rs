//! What `swarm get`, `swarm seed` and `swarm demo` share: one torrent session joined to a
//! DHT node, with peers from DHT lookups (and magnet `x.pe` hints) fed to the session, our
//! own port announced, lookups repeated while running, and progress reported.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use dht::node::PeerPoll;
use wire::infohash::InfoHash;
use wire::session::{Session, SessionConfig, Source, Torrent, TorrentStats, TransportPolicy};

use crate::addr::is_private;
use crate::progress::{Progress, Snapshot};
use crate::rejoin::Rejoin;

/// Network settings of one node (a torrent session plus its DHT node).
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// IP to bind both the TCP listener and the DHT's UDP socket to.
    pub bind_ip: IpAddr,
    /// TCP port for peers and UDP port for the DHT (0: any free port).
    pub port: u16,
    /// DHT bootstrap nodes (resolved). Empty with no saved state: the DHT cannot join.
    pub bootstrap: Vec<SocketAddr>,
    /// The bootstrap `HOST:PORT` names, resolved again (with backoff) while the DHT has no
    /// node: routers go away, and DNS may not work yet when we start.
    pub bootstrap_names: Vec<String>,
    /// Run without the DHT: peers come only from hints.
    pub no_dht: bool,
    /// Where the DHT state file lives (none: nothing saved).
    pub dht_state: Option<PathBuf>,
    pub max_peers: usize,
    /// Where resume data and fetched metadata are kept (none: every start rehashes).
    pub resume_dir: Option<PathBuf>,
    /// Rehash every piece on start even when resume data matches the files.
    pub full_recheck: bool,
    /// Bytes per second, 0 = unlimited.
    pub limit_down: u64,
    pub limit_up: u64,
    /// TCP, uTP or both with peers.
    pub transport: TransportPolicy,
}

impl NetConfig {
    /// The DHT core settings for this node: private networks (loopback or private
    /// addresses, as in `swarm demo` and tests) lift the one-node-per-IP restrictions that
    /// protect a node on the public DHT.
    /// The session settings for this node: its address, resume data, peer and rate
    /// limits, transports.
    pub fn session_config(&self) -> SessionConfig {
        let mut cfg = SessionConfig {
            listen: Some(SocketAddr::new(self.bind_ip, self.port)),
            resume_dir: self.resume_dir.clone(),
            full_recheck: self.full_recheck,
            transport: self.transport,
            ..SessionConfig::default()
        };
        cfg.engine.max_peers = self.max_peers;
        cfg.engine.download_rate_limit = self.limit_down;
        cfg.engine.upload_rate_limit = self.limit_up;
        cfg
    }

    /// An empty bootstrap list says nothing about the network: a node on a public address
    /// whose routers did not resolve keeps the public rules.
    pub fn dht_core_config(&self) -> dht::Config {
        let private_bootstrap =
            !self.bootstrap.is_empty() && self.bootstrap.iter().all(|a| is_private(a.ip()));
        if is_private(self.bind_ip) || private_bootstrap {
            dht::Config::loopback(self.bootstrap.clone())
        } else {
            dht::Config {
                bootstrap: self.bootstrap.clone(),
                ..dht::Config::default()
            }
        }
    }
}

/// One torrent of a [`Client`], with its DHT lookups.
pub struct Tracked {
    pub torrent: Torrent,
    pub info_hash: InfoHash,
    lookup: Option<dht::node::PeerStream>,
    next_lookup: Instant,
    /// Lookups done, and peers the last one found.
    lookups_done: u32,
    found_in_last: usize,
    /// Wait before the next lookup when the last ones found nobody (doubles up to
    /// [`LOOKUP_EVERY_WHEN_FEW_PEERS`]).
    empty_backoff: Duration,
}

impl Tracked {
    /// A torrent with no lookup done yet (the first one starts at the next tick).
    pub fn new(torrent: Torrent) -> Tracked {
        Tracked {
            info_hash: torrent.info_hash(),
            torrent,
            lookup: None,
            next_lookup: Instant::now(),
            lookups_done: 0,
            found_in_last: 0,
            empty_backoff: LOOKUP_RETRY_WHEN_EMPTY,
        }
    }

    /// Lookups finished so far.
    pub fn lookups_done(&self) -> u32 {
        self.lookups_done
    }

    /// Whether a lookup (get_peers + announce) is running now.
    pub fn lookup_running(&self) -> bool {
        self.lookup.is_some()
    }

    /// Starts the lookup+announce when due and feeds the peers found so far to the
    /// torrent (`listen`: our own address, never dialed). Call it a few times a second.
    pub fn tick(&mut self, dht: &dht::Node, listen: SocketAddr, now: Instant) {
        // Every connected peer with a DHT node is a way into the DHT (BEP 5 PORT).
        for node in self.torrent.take_dht_nodes() {
            dht.add_node(node);
        }
        if self.lookup.is_none() && now >= self.next_lookup {
            // announce = get_peers + announce_peer: we find others and they find us.
            self.lookup = Some(dht.announce(self.info_hash.0, Some(listen.port())));
            self.found_in_last = 0;
        }
        let Some(l) = &mut self.lookup else { return };
        loop {
            match l.poll_now() {
                PeerPoll::Peer(peer) => {
                    if peer != listen {
                        self.found_in_last += 1;
                        self.torrent.add_found_peer(peer);
                    }
                }
                PeerPoll::Pending => break,
                PeerPoll::Done => {
                    // The lookup is over: schedule the next one.
                    self.lookup = None;
                    self.lookups_done += 1;
                    let connected = self.torrent.stats().peers.len();
                    let wait = if self.found_in_last == 0 && connected == 0 {
                        let w = self.empty_backoff;
                        self.empty_backoff = (w * 2).min(LOOKUP_EVERY_WHEN_FEW_PEERS);
                        w
                    } else if connected < FEW_PEERS {
                        LOOKUP_EVERY_WHEN_FEW_PEERS
                    } else {
                        LOOKUP_EVERY
                    };
                    self.next_lookup = now + wait;
                    break;
                }
            }
        }
    }
}

/// The UDP side of a node on `port` (the number of the session's TCP port): the DHT
/// node (unless `--no-dht`), and uTP peers (BEP 29) accepted and dialed on the same socket
/// (unless `--transport tcp`), as libtorrent does: the DHT's socket hands uTP datagrams to
/// a uTP driver, whose connections the session routes like TCP ones. Without the DHT, uTP
/// gets the UDP port to itself.
pub async fn start_udp(
    net: &NetConfig,
    session: &mut Session,
    port: u16,
) -> anyhow::Result<Option<dht::Node>> {
    let with_utp = net.transport != TransportPolicy::Tcp;
    let addr = SocketAddr::new(net.bind_ip, port);
    if net.no_dht {
        if with_utp {
            let utp = utp::UtpSocket::bind(addr, utp::Config::default(), rand::random())
                .await
                .with_context(|| format!("cannot bind the uTP socket to {addr}"))?;
            session.accept_utp(std::sync::Arc::new(utp));
        }
        return Ok(None);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let mut dcfg = dht::NodeConfig::new(addr, net.dht_core_config());
    dcfg.state_file = net.dht_state.clone();
    if with_utp {
        dcfg.other_datagrams = Some(tx);
    }
    let node = dht::Node::bind(dcfg)
        .await
        .context("cannot start the DHT node")?;
    if with_utp {
        let utp =
            utp::UtpSocket::with_socket(node.socket(), rx, utp::Config::default(), rand::random());
        session.accept_utp(std::sync::Arc::new(utp));
    }
    Ok(Some(node))
}

/// Torrents in one session (one port for all of them) with one DHT node.
pub struct Client {
    pub session: Session,
    pub torrents: Vec<Tracked>,
    pub dht: Option<dht::Node>,
    /// The TCP address peers reach us at.
    pub listen: SocketAddr,
    /// Re-resolving the bootstrap names while the DHT is empty, and a resolution running.
    rejoin: Option<Rejoin>,
    resolving: Option<tokio::task::JoinHandle<anyhow::Result<Vec<SocketAddr>>>>,
    /// BEP 46: a mutable item kept pointing at the torrent we seed.
    publisher: Option<crate::bep46::Publisher>,
}

/// How often to look up and announce again when the swarm is healthy / thin.
const LOOKUP_EVERY: Duration = Duration::from_secs(15 * 60);
const LOOKUP_EVERY_WHEN_FEW_PEERS: Duration = Duration::from_secs(10);
/// After a lookup that found nobody (peers may not have announced yet), the first retry.
const LOOKUP_RETRY_WHEN_EMPTY: Duration = Duration::from_millis(500);
/// Below this many connected peers, look up again soon.
const FEW_PEERS: usize = 5;
/// How often [`Client::run`] feeds lookups to the torrents and redraws progress.
const TICK: Duration = Duration::from_millis(50);

impl Client {
    /// Starts one torrent (see [`Client::start_many`]).
    pub async fn start(
        source: Source,
        out_dir: PathBuf,
        net: &NetConfig,
        hints: Vec<SocketAddr>,
    ) -> anyhow::Result<Client> {
        Self::start_many(vec![(source, out_dir, hints)], net).await
    }

    /// Starts a session on `net`'s port with the torrents given (each with its output
    /// directory and peer hints) and, unless disabled, the DHT node on the same port.
    pub async fn start_many(
        items: Vec<(Source, PathBuf, Vec<SocketAddr>)>,
        net: &NetConfig,
    ) -> anyhow::Result<Client> {
        let mut session = Session::bind(net.session_config())
            .await
            .context("cannot start the session")?;
        let listen = session
            .listen_addr()
            .context("the session has no listening address")?;
        // The DHT node shares the peer port number (UDP), and peers are told so.
        if !net.no_dht {
            session.set_dht_port(Some(listen.port()));
        }
        // Before the torrents: they dial over the uTP socket it brings.
        let dht = start_udp(net, &mut session, listen.port()).await?;
        let mut torrents = Vec::new();
        for (source, out_dir, hints) in items {
            let torrent = session
                .add(source, out_dir)
                .await
                .context("cannot start the torrent")?;
            // Peers from the magnet link or `--peer`: re-dialed whenever they are lost.
            for h in &hints {
                torrent.add_peer(*h);
            }
            torrents.push(Tracked::new(torrent));
        }
        let rejoin = dht.is_some().then(|| {
            Rejoin::new(
                net.bootstrap_names.clone(),
                net.bootstrap.len(),
                Instant::now(),
            )
        });
        Ok(Client {
            session,
            torrents,
            dht,
            listen,
            rejoin,
            resolving: None,
            publisher: None,
        })
    }

    /// Keeps a BEP 46 mutable item pointing at a torrent (put now and every hour).
    pub fn publish(&mut self, p: crate::bep46::Publisher) {
        self.publisher = Some(p);
    }

    /// The first torrent (the only one for `swarm demo`).
    pub fn torrent(&self) -> &Torrent {
        &self.torrents[0].torrent
    }

    /// One step of housekeeping: starts each torrent's lookup+announce when due, and
    /// feeds the peers found so far to it. Call it a few times a second.
    pub fn tick(&mut self) {
        let Some(dht) = &self.dht else { return };
        let now = Instant::now();
        if let Some(p) = &mut self.publisher {
            p.step(now, dht);
        }
        for t in &mut self.torrents {
            t.tick(dht, self.listen, now);
        }
    }

    /// Runs lookups until every torrent's first announce is done (or `limit` passes, or
    /// there is no DHT). True when they are.
    pub async fn wait_announced(&mut self, limit: Duration) -> bool {
        if self.dht.is_none() {
            return false;
        }
        let deadline = Instant::now() + limit;
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        while Instant::now() < deadline {
            ticker.tick().await;
            self.tick();
            if self.torrents.iter().all(|t| t.lookups_done > 0) {
                return true;
            }
        }
        false
    }

    /// While the DHT has no node: resolves the bootstrap names again when due (in the
    /// background) and pings what they resolve to. Call it with the current node count.
    pub async fn rejoin_step(&mut self, dht_nodes: usize) {
        let (Some(dht), Some(rejoin)) = (&self.dht, &mut self.rejoin) else {
            return;
        };
        let now = Instant::now();
        if let Some(handle) = self.resolving.take_if(|h| h.is_finished()) {
            // Finished: this does not wait.
            if let Ok(result) = handle.await {
                rejoin.resolved(now, &result);
                if let Ok(addrs) = result {
                    for a in addrs {
                        dht.add_node(a);
                    }
                    dht.bootstrap();
                }
            }
        } else if self.resolving.is_none() && rejoin.due(now, dht_nodes) {
            let names = rejoin.names().to_vec();
            self.resolving = Some(tokio::spawn(async move {
                crate::addr::resolve_all(&names).await
            }));
        }
    }

    /// A progress snapshot over every torrent (DHT node count from the last call to
    /// [`Client::dht_nodes`]).
    pub fn snapshot(&self, all: &[TorrentStats], dht_nodes: usize) -> Snapshot {
        let known = all.iter().all(|s| s.have_metadata);
        Snapshot {
            done_bytes: all
                .iter()
                .map(|s| s.total_length.saturating_sub(s.bytes_left))
                .sum(),
            total_bytes: known.then(|| all.iter().map(|s| s.total_length).sum()),
            down_rate: all.iter().map(|s| s.download_rate).sum(),
            up_rate: all.iter().map(|s| s.upload_rate).sum(),
            peers: all.iter().map(|s| s.peers.len()).sum(),
            dht_nodes,
            dht_note: match &self.rejoin {
                None => Some("DHT off".to_string()),
                Some(r) => r.note(Instant::now(), dht_nodes),
            },
            state: if !known {
                "metadata"
            } else if all.iter().all(|s| s.complete) {
                "seeding"
            } else {
                "downloading"
            },
        }
    }

    /// Nodes in the DHT routing table (0 without a DHT).
    pub async fn dht_nodes(&self) -> usize {
        match &self.dht {
            Some(d) => {
                let s = d.stats().await;
                s.nodes4 + s.nodes6
            }
            None => 0,
        }
    }

    /// Every torrent's latest stats.
    pub fn stats(&self) -> Vec<TorrentStats> {
        self.torrents.iter().map(|t| t.torrent.stats()).collect()
    }

    /// Runs until every piece of every torrent is verified (or, with `until_stopped`,
    /// until Ctrl-C / the `stop` future), drawing progress.
    pub async fn run(
        &mut self,
        progress: &mut Progress,
        until_stopped: bool,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Outcome> {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut announced_complete = false;
        let mut nodes = 0;
        let mut next_nodes = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(Outcome::Stopped),
                _ = ticker.tick() => {}
            }
            self.tick();
            let all = self.stats();
            if let Some((s, e)) = all.iter().find_map(|s| s.error.as_ref().map(|e| (s, e))) {
                let name = s.name.clone().unwrap_or_else(|| s.info_hash.to_hex());
                anyhow::bail!("{name}: {e}");
            }
            if Instant::now() >= next_nodes {
                nodes = self.dht_nodes().await;
                self.rejoin_step(nodes).await;
                next_nodes = Instant::now() + Duration::from_millis(500);
            }
            progress.update(&self.snapshot(&all, nodes));
            if all.iter().all(|s| s.complete) && !announced_complete {
                announced_complete = true;
                if !until_stopped {
                    return Ok(Outcome::Complete);
                }
                progress.finish("complete; seeding (Ctrl-C to stop)");
            }
        }
    }

    /// Saves DHT state and closes every connection (storage is flushed by the session).
    pub async fn shutdown(self) {
        if let Some(d) = self.dht {
            d.shutdown().await;
        }
        for t in self.torrents {
            t.torrent.shutdown().await;
        }
        self.session.shutdown().await;
    }
}

/// The bandwidth aggregation of one torrent: every peer that sent payload, with its
/// client and share, most first. Lines for a terminal.
pub fn contributions_report(s: &TorrentStats) -> Vec<String> {
    let total: u64 = s.contributions.iter().map(|c| c.downloaded).sum();
    s.contributions
        .iter()
        .filter(|c| c.downloaded > 0)
        .map(|c| {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * c.downloaded as f64 / total as f64
            };
            format!(
                "  {:<22} {:<24} {:>12} {:>5.1}%",
                c.addr.to_string(),
                c.client.as_deref().unwrap_or("?"),
                crate::progress::human_bytes(c.downloaded),
                share
            )
        })
        .collect()
}

/// How [`Client::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bind: &str, bootstrap: &[&str]) -> NetConfig {
        NetConfig {
            bind_ip: bind.parse().unwrap(),
            port: 0,
            bootstrap: bootstrap.iter().map(|a| a.parse().unwrap()).collect(),
            bootstrap_names: Vec::new(),
            no_dht: false,
            dht_state: None,
            max_peers: 50,
            resume_dir: None,
            full_recheck: false,
            limit_down: 0,
            limit_up: 0,
            transport: TransportPolicy::Both,
        }
    }

    #[test]
    fn public_rules_hold_unless_the_network_is_known_to_be_private() {
        // Routers that did not resolve leave the list empty: still the public DHT.
        assert!(net("0.0.0.0", &[]).dht_core_config().restrict_ips);
        assert!(
            net("0.0.0.0", &["44.0.0.1:6881"])
                .dht_core_config()
                .restrict_ips
        );
        assert!(
            net("0.0.0.0", &["127.0.0.1:6881", "44.0.0.1:6881"])
                .dht_core_config()
                .restrict_ips
        );
        // A private bind address, or a bootstrap list entirely on private addresses.
        assert!(!net("127.0.0.5", &[]).dht_core_config().restrict_ips);
        assert!(
            !net("0.0.0.0", &["127.0.0.1:6881"])
                .dht_core_config()
                .restrict_ips
        );
    }
}
