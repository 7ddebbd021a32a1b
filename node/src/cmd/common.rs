//! Flags shared by the subcommands that join the network (`get`, `seed`).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::client::NetConfig;
use wire::session::TransportPolicy;

/// `--transport`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Utp,
    Both,
}

/// Network flags of `swarm get` and `swarm seed`.
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// TCP port for peers, also the UDP port of the DHT node (0: any free port).
    #[arg(long, env = "SWARM_PORT", default_value_t = 6881)]
    pub port: u16,
    /// IP address to bind (default: all IPv4 addresses).
    #[arg(long, env = "SWARM_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// DHT bootstrap node HOST:PORT (repeatable, or comma-separated in the env var).
    /// Default: the public routers (router.bittorrent.com, dht.transmissionbt.com, ...).
    #[arg(
        long = "bootstrap",
        env = "SWARM_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub bootstrap: Vec<String>,
    /// Do not use the DHT: peers come only from the magnet's x.pe hints and --peer.
    #[arg(long)]
    pub no_dht: bool,
    /// Connect to this peer IP:PORT directly (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<String>,
    /// Most peers connected at once.
    #[arg(long, default_value_t = 200)]
    pub max_peers: usize,
    /// Download rate limit in bytes per second (suffixes K, M, G); 0 = unlimited.
    #[arg(long, env = "SWARM_LIMIT_DOWN", value_parser = super::create::parse_size, default_value = "0")]
    pub limit_down: u64,
    /// Upload rate limit in bytes per second (suffixes K, M, G); 0 = unlimited.
    #[arg(long, env = "SWARM_LIMIT_UP", value_parser = super::create::parse_size, default_value = "0")]
    pub limit_up: u64,
    /// Where state (DHT routing table, resume data) is kept; default: $XDG_DATA_HOME/swarm.
    #[arg(long, env = "SWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Transports to use with peers: tcp, utp (BEP 29, on the UDP port of the same
    /// number) or both (TCP first, uTP when TCP fails; both accepted).
    #[arg(long, env = "SWARM_TRANSPORT", value_enum, default_value_t = Transport::Both)]
    pub transport: Transport,
    /// Hash every piece on start, even those the resume data vouches for.
    #[arg(long)]
    pub recheck: bool,
}

impl NetArgs {
    /// Resolves bootstrap names and peer hints into a [`NetConfig`].
    pub async fn to_config(&self) -> anyhow::Result<(NetConfig, Vec<std::net::SocketAddr>)> {
        let state = crate::state::state_dir(self.state_dir.as_deref())?;
        let specs: Vec<String> = if self.bootstrap.is_empty() {
            dht::DEFAULT_ROUTERS.iter().map(|s| s.to_string()).collect()
        } else {
            self.bootstrap.clone()
        };
        let bootstrap = if self.no_dht {
            Vec::new()
        } else {
            match crate::addr::resolve_all(&specs).await {
                Ok(a) => a,
                // Saved nodes may still get us in; the DHT re-bootstraps later.
                Err(e) => {
                    tracing::warn!("no bootstrap node resolves: {e:#}");
                    Vec::new()
                }
            }
        };
        let mut peers = Vec::new();
        for p in &self.peers {
            peers.extend(crate::addr::resolve(p).await?);
        }
        let net = NetConfig {
            bind_ip: self.bind,
            port: self.port,
            bootstrap,
            // Names (not literal addresses) are worth resolving again later.
            bootstrap_names: if self.no_dht {
                Vec::new()
            } else {
                specs
                    .iter()
                    .filter(|s| s.parse::<std::net::SocketAddr>().is_err())
                    .cloned()
                    .collect()
            },
            no_dht: self.no_dht,
            dht_state: Some(state.join(format!("dht-{}.state", self.port))),
            max_peers: self.max_peers,
            resume_dir: Some(state.join("resume")),
            full_recheck: self.recheck,
            limit_down: self.limit_down,
            limit_up: self.limit_up,
            transport: match self.transport {
                Transport::Tcp => TransportPolicy::Tcp,
                Transport::Utp => TransportPolicy::Utp,
                Transport::Both => TransportPolicy::Both,
            },
        };
        Ok((net, peers))
    }
}

/// Resolves when the process gets Ctrl-C (SIGINT) or SIGTERM.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A multi-threaded tokio runtime for a subcommand.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}
