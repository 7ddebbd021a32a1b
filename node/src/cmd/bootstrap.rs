//! `swarm bootstrap`: a dedicated DHT bootstrap node.
//!
//! It runs the ordinary [`dht::Node`] (the same sans-IO core as every other node) with
//! settings for a server: no default routers, large socket buffers, a bounded peer store
//! (unless `--router-only`), a per-IP inbound rate limit, a large pool of verified nodes
//! (nodes that answered its pings) that find_node/get_peers are answered from, saved in
//! the state directory and reloaded, and a stats line every `--stats-every` seconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Name of the state file (id and routing table nodes) inside the state directory.
pub const STATE_FILE: &str = "bootstrap-dht.state";
/// Name of the pool file (verified nodes) inside the state directory.
pub const POOL_FILE: &str = "bootstrap-dht.pool";
/// Default size of the pool of verified nodes, per address family.
pub const DEFAULT_POOL_SIZE: usize = 100_000;

/// Arguments of `swarm bootstrap`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
On a loopback or private address (127.0.0.0/8, 10/8, 172.16/12, 192.168/16, ::1, fc00::/7) \
the node runs in private mode: no one-node-per-IP or per-subnet limits in its routing table, \
and a generous per-IP rate limit, so that a private swarm whose nodes share one IP or subnet \
works. On a public or unspecified address (0.0.0.0) the Mainline rules apply. \
--private / --public override the choice.

Every node that queries it is pinged once; those that answer join a pool of verified nodes (--pool-size per address family), which find_node and get_peers are answered from. Pool nodes are pinged again every 15 minutes, oldest first, and dropped when they stop answering.

After a restart the saved pool is checked first, at up to 1,000 pings a second: saved nodes that answer rejoin the pool, silent ones are dropped at once. Until then replies prefer nodes verified since the start and use saved ones only to fill up, and only if the pool file is less than 3 hours old (an older one only says whom to ping).

Ctrl-C (or SIGTERM) saves the pool to STATE_DIR/bootstrap-dht.pool (and the id and routing table to STATE_DIR/bootstrap-dht.state) and exits 0; both are reloaded at start.")]
pub struct Args {
    /// UDP port to listen on.
    #[arg(long, env = "SWARM_PORT", default_value_t = 6881)]
    pub port: u16,
    /// IP address to bind (IPv4 or IPv6).
    #[arg(long, env = "SWARM_BIND", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// Store nothing: answer get_peers with nodes only, like the public routers.
    #[arg(long, env = "SWARM_ROUTER_ONLY")]
    pub router_only: bool,
    /// Where the node pool is saved (default: $XDG_DATA_HOME/swarm).
    #[arg(long, env = "SWARM_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do not load or save any state.
    #[arg(long)]
    pub no_state: bool,
    /// Seconds between stats lines (0: none).
    #[arg(
        long,
        env = "SWARM_STATS_EVERY",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub stats_every: u64,
    /// Other DHT nodes to join through (repeatable). None by default: a bootstrap node
    /// waits to be contacted.
    #[arg(
        long = "bootstrap",
        value_name = "HOST:PORT",
        env = "SWARM_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
    /// Per-IP inbound queries per second (burst: twice this). Default: 20 in public mode,
    /// 1000 in private mode.
    #[arg(long, env = "SWARM_RATE_LIMIT", value_name = "QPS")]
    pub rate_limit: Option<u32>,
    /// Private mode even on a public address (no per-IP routing limits).
    #[arg(long, conflicts_with = "public")]
    pub private: bool,
    /// Public mode even on a loopback or private address.
    #[arg(long)]
    pub public: bool,
    /// Verified nodes kept to answer from, per address family.
    #[arg(long, env = "SWARM_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE, value_name = "NODES")]
    pub pool_size: usize,
}

pub use crate::addr::is_private;

/// Settings of a bootstrap node: everything `swarm bootstrap` decides, so that tests and
/// the benchmark can run the very same node in-process.
#[derive(Clone, Debug)]
pub struct Settings {
    pub bind: SocketAddr,
    pub router_only: bool,
    /// No per-IP routing limits, generous rate limit.
    pub private: bool,
    /// Per-IP inbound queries per second; `None`: the mode's default.
    pub rate_limit: Option<u32>,
    pub bootstrap: Vec<SocketAddr>,
    pub state_file: Option<PathBuf>,
    pub pool_file: Option<PathBuf>,
    /// Verified nodes kept per address family.
    pub pool_size: usize,
}

impl Settings {
    /// Defaults for `bind`: private mode on a loopback/private address, stores announces,
    /// no state file.
    pub fn new(bind: SocketAddr) -> Settings {
        Settings {
            bind,
            router_only: false,
            private: is_private(bind.ip()),
            rate_limit: None,
            bootstrap: Vec::new(),
            state_file: None,
            pool_file: None,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// Bound to the IPv6 unspecified address `[::]`: serve IPv4 and IPv6 on one socket.
    pub fn dual_stack(&self) -> bool {
        matches!(self.bind.ip(), IpAddr::V6(v6) if v6.is_unspecified())
    }

    /// The [`dht::NodeConfig`] of a bootstrap node with these settings.
    pub fn node_config(&self) -> dht::NodeConfig {
        let base = if self.private {
            dht::Config::loopback(self.bootstrap.clone())
        } else {
            dht::Config {
                bootstrap: self.bootstrap.clone(),
                ..dht::Config::default()
            }
        };
        let rate = self.rate_limit.unwrap_or(base.inbound_rate).max(1);
        let core = dht::Config {
            store_announces: !self.router_only,
            max_items: if self.router_only { 0 } else { 20_000 },
            // Bounded, but roomier than an ordinary node: many peers announce here.
            max_torrents: 20_000,
            max_peers_per_torrent: 500,
            max_peers_total: 200_000,
            inbound_rate: rate,
            inbound_burst: rate.saturating_mul(2),
            max_tracked_ips: 100_000,
            // Every new querying node is pinged back before it is handed out: a bootstrap
            // node sends many more of those than an ordinary node.
            outbound_rate: 2_000,
            outbound_burst: 1_000,
            max_queued_queries: 10_000,
            // `[::]` is dual-stack: IPv4 arrives as mapped addresses, and the node keeps
            // a routing table and a pool per family (BEP 32).
            ipv4: self.bind.is_ipv4() || self.dual_stack(),
            ipv6: self.bind.is_ipv6(),
            pool_capacity: self.pool_size,
            ..base
        };
        let mut cfg = dht::NodeConfig::new(self.bind, core);
        cfg.state_file = self.state_file.clone();
        cfg.pool_file = self.pool_file.clone();
        cfg.dual_stack = self.dual_stack();
        cfg.save_every = Duration::from_secs(60);
        cfg.recv_buffer = 16 << 20;
        cfg.send_buffer = 16 << 20;
        cfg
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let bind = SocketAddr::new(args.bind, args.port);
    let mut settings = Settings::new(bind);
    settings.router_only = args.router_only;
    if args.private {
        settings.private = true;
    }
    if args.public {
        settings.private = false;
    }
    settings.rate_limit = args.rate_limit;
    settings.pool_size = args.pool_size;
    if !args.bootstrap.is_empty() {
        settings.bootstrap = crate::addr::resolve_all(&args.bootstrap).await?;
    }
    if !args.no_state {
        let dir = crate::state::state_dir(args.state_dir.as_deref())?;
        settings.state_file = Some(dir.join(STATE_FILE));
        settings.pool_file = Some(dir.join(POOL_FILE));
    }
    // Watch for Ctrl-C / SIGTERM before the ready line: a signal right after it must
    // save and exit cleanly, not kill the process.
    let stop = shutdown_signal()?;
    let node = dht::Node::bind(settings.node_config()).await?;
    let addr = node.local_addr();
    println!("listening on {addr} (node id {})", node.id().to_hex());
    tracing::info!(
        "bootstrap node on {addr}: {} mode, {}",
        if settings.private {
            "private"
        } else {
            "public"
        },
        if settings.router_only {
            "router only"
        } else {
            "storing announces"
        }
    );

    let mut ticker = (args.stats_every > 0).then(|| {
        let every = Duration::from_secs(args.stats_every);
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    let mut last = (Instant::now(), node.stats().await);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = async {
                match ticker.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                let s = node.stats().await;
                let line = stats_line(&s, &last.1, now - last.0);
                tracing::info!("{line}");
                eprintln!("{line}");
                last = (now, s);
            }
        }
    }
    let pool = node.stats().await.pool_nodes;
    node.shutdown().await;
    eprintln!("swarm bootstrap: stopped, {pool} pool nodes saved");
    Ok(())
}

/// One line of counters with rates since the previous line.
fn stats_line(s: &dht::Stats, prev: &dht::Stats, dt: Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    format!(
        "bootstrap stats: pool {} (+{} saved to check), table {} (+{} replacements), queries {} ({:.0}/s), replies {} ({:.0}/s), \
         errors sent {}, rate limited {}, banned drops {}, invalid {}, torrents {}, peers {}, \
         announces {}, own queries {}, timeouts {}",
        s.pool_nodes,
        s.pool_saved,
        s.nodes4 + s.nodes6,
        s.replacements,
        s.queries_received,
        rate(s.queries_received, prev.queries_received),
        s.responses_sent,
        rate(s.responses_sent, prev.responses_sent),
        s.errors_sent,
        s.rate_limited,
        s.banned_drops,
        s.invalid_packets,
        s.torrents,
        s.peers,
        s.announces_stored,
        s.queries_sent,
        s.timeouts,
    )
}

/// Starts watching Ctrl-C and (on Unix) SIGTERM now; the future resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("cannot watch Ctrl-C")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_mode_on_loopback_and_private_addresses() {
        assert!(is_private("127.0.0.9".parse().unwrap()));
        assert!(is_private("192.168.1.2".parse().unwrap()));
        assert!(is_private("::1".parse().unwrap()));
        assert!(!is_private("0.0.0.0".parse().unwrap()));
        assert!(!is_private("8.8.8.8".parse().unwrap()));
        let s = Settings::new("127.0.0.1:6881".parse().unwrap());
        let c = s.node_config();
        assert!(!c.core.restrict_ips);
        assert!(c.core.store_announces);
        assert!(c.core.bootstrap.is_empty());
        assert_eq!(c.core.pool_capacity, DEFAULT_POOL_SIZE);
        let mut p = Settings::new("0.0.0.0:6881".parse().unwrap());
        p.router_only = true;
        let c = p.node_config();
        assert!(c.core.restrict_ips);
        assert!(!c.core.store_announces);
        assert!(!c.dual_stack && c.core.ipv4 && !c.core.ipv6);
        // [::] serves both families on one socket; ::1 only IPv6.
        let c = Settings::new("[::]:6881".parse().unwrap()).node_config();
        assert!(c.dual_stack && c.core.ipv4 && c.core.ipv6);
        let c = Settings::new("[::1]:6881".parse().unwrap()).node_config();
        assert!(!c.dual_stack && !c.core.ipv4 && c.core.ipv6);
    }
}
