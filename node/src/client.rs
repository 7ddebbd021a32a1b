//! What `swarm get`, `swarm seed` and `swarm demo` share: one torrent session joined to a
//! DHT node, with peers from DHT lookups (and magnet `x.pe` hints) fed to the session, our
//! own port announced, lookups repeated while running, and progress reported.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use dht::node::PeerPoll;
use wire::infohash::InfoHash;
use wire::session::{SessionConfig, Source, Torrent, TorrentStats};

use crate::addr::is_private;
use crate::progress::{Progress, Snapshot};

/// Network settings of one node (a torrent session plus its DHT node).
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// IP to bind both the TCP listener and the DHT's UDP socket to.
    pub bind_ip: IpAddr,
    /// TCP port for peers and UDP port for the DHT (0: any free port).
    pub port: u16,
    /// DHT bootstrap nodes (resolved). Empty with no saved state: the DHT cannot join.
    pub bootstrap: Vec<SocketAddr>,
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
}

impl NetConfig {
    /// The DHT core settings for this node: private networks (loopback or private
    /// addresses, as in `swarm demo` and tests) lift the one-node-per-IP restrictions that
    /// protect a node on the public DHT.
    pub fn dht_core_config(&self) -> dht::Config {
        if is_private(self.bind_ip) || self.bootstrap.iter().all(|a| is_private(a.ip())) {
            dht::Config::loopback(self.bootstrap.clone())
        } else {
            dht::Config {
                bootstrap: self.bootstrap.clone(),
                ..dht::Config::default()
            }
        }
    }
}

/// A running torrent with its DHT node.
pub struct Client {
    pub torrent: Torrent,
    pub dht: Option<dht::Node>,
    pub info_hash: InfoHash,
    /// The TCP address peers reach us at.
    pub listen: SocketAddr,
    hints: Vec<SocketAddr>,
    lookup: Option<dht::node::PeerStream>,
    next_lookup: Instant,
    peers_from_dht: usize,
}

/// How often to look up and announce again when the swarm is healthy / thin.
const LOOKUP_EVERY: Duration = Duration::from_secs(15 * 60);
const LOOKUP_EVERY_WHEN_FEW_PEERS: Duration = Duration::from_secs(10);
/// Below this many connected peers, look up again soon.
const FEW_PEERS: usize = 5;

impl Client {
    /// Starts the torrent session and (unless disabled) the DHT node on the same port.
    pub async fn start(
        source: Source,
        out_dir: PathBuf,
        net: &NetConfig,
        hints: Vec<SocketAddr>,
    ) -> anyhow::Result<Client> {
        let mut cfg = SessionConfig {
            listen: Some(SocketAddr::new(net.bind_ip, net.port)),
            resume_dir: net.resume_dir.clone(),
            full_recheck: net.full_recheck,
            ..SessionConfig::default()
        };
        cfg.engine.max_peers = net.max_peers;
        cfg.engine.download_rate_limit = net.limit_down;
        cfg.engine.upload_rate_limit = net.limit_up;
        let torrent = Torrent::start(source, out_dir, cfg)
            .await
            .context("cannot start the torrent")?;
        let listen = torrent
            .listen_addr()
            .context("torrent session has no listening address")?;
        let dht = if net.no_dht {
            None
        } else {
            let mut dcfg = dht::NodeConfig::new(
                SocketAddr::new(net.bind_ip, listen.port()),
                net.dht_core_config(),
            );
            dcfg.state_file = net.dht_state.clone();
            let node = dht::Node::bind(dcfg)
                .await
                .context("cannot start the DHT node")?;
            Some(node)
        };
        let info_hash = torrent.info_hash();
        for h in &hints {
            torrent.add_peer(*h);
        }
        Ok(Client {
            torrent,
            dht,
            info_hash,
            listen,
            hints,
            lookup: None,
            next_lookup: Instant::now(),
            peers_from_dht: 0,
        })
    }

    /// Peers found through the DHT so far (before de-duplication by the session).
    pub fn peers_from_dht(&self) -> usize {
        self.peers_from_dht
    }

    /// One step of housekeeping: starts a lookup+announce when due, and feeds the peers
    /// it has found so far to the session. Call it a few times a second.
    pub fn tick(&mut self) {
        let Some(dht) = &self.dht else { return };
        let now = Instant::now();
        if self.lookup.is_none() && now >= self.next_lookup {
            // announce = get_peers + announce_peer: we find others and they find us.
            self.lookup = Some(dht.announce(self.info_hash.0, Some(self.listen.port())));
        }
        if let Some(l) = &mut self.lookup {
            loop {
                match l.poll_now() {
                    PeerPoll::Peer(peer) => {
                        if peer != self.listen {
                            self.peers_from_dht += 1;
                            self.torrent.add_peer(peer);
                        }
                    }
                    PeerPoll::Pending => break,
                    PeerPoll::Done => {
                        // The lookup is over: schedule the next one.
                        self.lookup = None;
                        let connected = self.torrent.stats().peers.len();
                        let wait = if connected < FEW_PEERS {
                            LOOKUP_EVERY_WHEN_FEW_PEERS
                        } else {
                            LOOKUP_EVERY
                        };
                        self.next_lookup = now + wait;
                        // Hints may have been refused while the session was busy.
                        if connected == 0 {
                            for h in &self.hints {
                                self.torrent.add_peer(*h);
                            }
                        }
                        break;
                    }
                }
            }
        }
    }

    /// A progress snapshot (DHT node count from the last call to [`Client::dht_nodes`]).
    pub fn snapshot(&self, stats: &TorrentStats, dht_nodes: usize) -> Snapshot {
        Snapshot {
            done_bytes: stats.total_length.saturating_sub(stats.bytes_left),
            total_bytes: stats.have_metadata.then_some(stats.total_length),
            down_rate: stats.download_rate,
            up_rate: stats.upload_rate,
            peers: stats.peers.len(),
            dht_nodes,
            state: if !stats.have_metadata {
                "metadata"
            } else if stats.complete {
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

    /// Runs until every piece is verified (or, with `until_stopped`, until Ctrl-C / the
    /// `stop` future), drawing progress.
    pub async fn run(
        &mut self,
        progress: &mut Progress,
        until_stopped: bool,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Outcome> {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut announced_complete = false;
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(Outcome::Stopped),
                _ = ticker.tick() => {}
            }
            self.tick();
            let stats = self.torrent.stats();
            if let Some(e) = &stats.error {
                anyhow::bail!("torrent stopped: {e}");
            }
            let nodes = self.dht_nodes().await;
            progress.update(&self.snapshot(&stats, nodes));
            if stats.complete && !announced_complete {
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
        self.torrent.shutdown().await;
    }
}

/// How [`Client::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Stopped,
}
