//! Settings of a DHT core. Defaults suit a node on the public Mainline DHT; tests on
//! loopback turn `restrict_ips` off and always pass explicit bootstrap addresses.

use std::net::SocketAddr;
use std::time::Duration;

use crate::id::Id;

/// The public routers a node contacts when it has nothing better. Resolved by the tokio
/// node (the core only takes socket addresses); tests never use them. Several, so that
/// no one of them is needed: router.bittorrent.com and router.utorrent.com stopped
/// answering in 2024 (qBittorrent and Transmission trackers); the first three answered in
/// May 2026 (qBittorrent PR 24296), and the rest cost one ping each if they are gone.
pub const DEFAULT_ROUTERS: [&str; 6] = [
    "dht.libtorrent.org:25401",
    "dht.transmissionbt.com:6881",
    "router.bt.ouinet.work:6881",
    "dht.anacrolix.link:42069",
    "router.silotis.us:6881",
    "router.bittorrent.com:6881",
];

#[derive(Clone, Debug)]
pub struct Config {
    /// Our node id; `None` picks a random one (made BEP 42-valid once the external IP is
    /// known, unless `bep42` is off).
    pub id: Option<Id>,
    /// Nodes to ask first when the routing table is empty.
    pub bootstrap: Vec<SocketAddr>,
    /// Bucket size and lookup width (BEP 5: 8).
    pub k: usize,
    /// Queries in flight per search (get_peers, announce, find_node), not counting ones
    /// past the short timeout: 5, as libtorrent's search branching, since each reply
    /// that comes back first moves the search on.
    pub alpha: usize,
    /// Parallelism of the node's own upkeep (bootstrap and bucket refreshes), where
    /// latency matters less than traffic.
    pub maintenance_alpha: usize,
    /// Larger far buckets (see `RoutingTable::with_extended_buckets`): 128/64/32/16 nodes,
    /// filled from the nodes that query us and from referrals, unconfirmed and unpinged
    /// until our own lookups use them, never handed to others. On by default: in the
    /// 100,000-node simulation (one hour, churn, 2% loss), with the adaptive short
    /// timeout and faster-paced searches, the median time to the first peer went from
    /// 3.8 to 3.2 round trips, and to 3.0 once hearsay was kept longer.
    pub extended_buckets: bool,
    /// Cap on a lookup's queries in flight that are not yet slow (past the short
    /// timeout); twice this caps them with the slow ones included.
    pub max_in_flight: usize,
    /// After this a query counts as slow and its lookup may send one more: the most the
    /// adaptive short timeout (smoothed RTT plus four deviations, see `dht::rtt`) waits,
    /// and what it waits before any reply was measured.
    pub short_timeout: Duration,
    /// The least the adaptive short timeout waits.
    pub short_timeout_min: Duration,
    /// After this a query has failed.
    pub query_timeout: Duration,
    /// One routing entry per IP, and at most `max_per_subnet` per /24 (v4) or /64 (v6) in a
    /// bucket. On for the internet; off for loopback tests where every node is 127.0.0.x.
    pub restrict_ips: bool,
    pub max_per_subnet: usize,
    /// Derive our id from the external IP and prefer nodes with valid ids (BEP 42).
    pub bep42: bool,
    /// BEP 43: send `ro=1` and answer no queries.
    pub read_only: bool,
    /// Keep announced peers (a `--router-only` bootstrap node turns this off).
    pub store_announces: bool,
    pub max_torrents: usize,
    pub max_peers_per_torrent: usize,
    pub max_peers_total: usize,
    /// BEP 44 items stored for others (0: none; puts are refused).
    pub max_items: usize,
    /// Ports stored per IP in one swarm (a NAT or one host running a few clients is
    /// normal; a thousand ports behind one token is not). Unlimited on loopback.
    pub max_ports_per_ip: usize,
    /// How long an announced peer is kept without re-announcing.
    pub peer_ttl: Duration,
    /// The token secret rotates this often; tokens of the previous secret stay valid.
    pub token_rotation: Duration,
    /// Per-source-IP inbound queries per second (sustained) and burst.
    pub inbound_rate: u32,
    pub inbound_burst: u32,
    /// Queries dropped in one burst before the source is banned for `ban_duration`.
    pub ban_after_drops: u32,
    pub ban_duration: Duration,
    /// Replies per second to everyone together (and burst): bounds what a flood from
    /// many (possibly spoofed) sources can make us send.
    pub max_replies_per_sec: u32,
    /// Source IPs tracked by the rate limiter (bounded memory).
    pub max_tracked_ips: usize,
    /// Our own outgoing queries per second (all lookups share this) and burst.
    pub outbound_rate: u32,
    pub outbound_burst: u32,
    /// Outgoing queries waiting for the rate limiter; lookups stall beyond this.
    pub max_queued_queries: usize,
    /// Values returned in one get_peers reply.
    pub max_values_in_reply: usize,
    /// Lookups running at once; more are refused with `LookupDone` right away.
    pub max_lookups: usize,
    /// Client version sent as `v` (BEP 5: two letters and two version bytes).
    pub client_version: Option<[u8; 4]>,
    /// A bucket not changed for this long is refreshed with a lookup.
    pub bucket_refresh: Duration,
    /// Answering nodes count as good for this long.
    pub node_good_for: Duration,
    /// How often housekeeping runs (refresh, expiry, re-bootstrap).
    pub tick: Duration,
    /// Also run an IPv6 routing table (the node has an IPv6 socket, BEP 32).
    pub ipv6: bool,
    /// Keep the IPv4 table (off for an IPv6-only node).
    pub ipv4: bool,
    /// Bootstrap nodes: size of the pool of verified nodes (per address family) that
    /// find_node/get_peers are answered from; 0 (the default): no pool, answers come from
    /// the routing table.
    pub pool_capacity: usize,
    /// Pool nodes not heard from for this long are pinged again.
    pub pool_reverify: Duration,
    /// Pool checks (pings) started per housekeeping tick, at most.
    pub pool_checks_per_tick: usize,
    /// Checks of saved pool nodes (after a restart) per tick: they go first and faster,
    /// since replies lean on the nodes verified since the start until they are done.
    pub pool_saved_checks_per_tick: usize,
    /// A saved pool younger than this may fill up replies until its nodes are checked;
    /// an older one is only a list of nodes to ping.
    pub pool_saved_usable_for: Duration,
    /// Simulation only: the old sequential 2-byte transaction ids (from a random start),
    /// to measure what random 4-byte ids buy against forged replies (`dht-spoof`).
    #[doc(hidden)]
    pub sequential_tids: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: None,
            bootstrap: Vec::new(),
            k: 8,
            alpha: 5,
            maintenance_alpha: 3,
            extended_buckets: true,
            max_in_flight: 8,
            short_timeout: Duration::from_secs(1),
            short_timeout_min: Duration::from_millis(250),
            query_timeout: Duration::from_secs(5),
            restrict_ips: true,
            max_per_subnet: 2,
            bep42: true,
            read_only: false,
            store_announces: true,
            max_torrents: 2_000,
            max_peers_per_torrent: 200,
            max_peers_total: 20_000,
            max_ports_per_ip: 8,
            max_items: 2_000,
            peer_ttl: Duration::from_secs(40 * 60),
            token_rotation: Duration::from_secs(5 * 60),
            inbound_rate: 20,
            inbound_burst: 50,
            ban_after_drops: 100,
            ban_duration: Duration::from_secs(5 * 60),
            max_replies_per_sec: 200_000,
            max_tracked_ips: 10_000,
            outbound_rate: 250,
            outbound_burst: 100,
            max_queued_queries: 2_000,
            max_values_in_reply: 100,
            max_lookups: 256,
            client_version: Some(*b"SW\x00\x01"),
            bucket_refresh: Duration::from_secs(15 * 60),
            node_good_for: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(5),
            ipv6: false,
            ipv4: true,
            pool_capacity: 0,
            pool_reverify: Duration::from_secs(15 * 60),
            pool_checks_per_tick: 500,
            pool_saved_checks_per_tick: 5_000,
            pool_saved_usable_for: Duration::from_secs(3 * 3600),
            sequential_tids: false,
        }
    }
}

impl Config {
    /// Settings for private networks on loopback (tests, `swarm demo`): no IP
    /// restrictions and a generous inbound limit, since all nodes share 127.0.0.0/8.
    pub fn loopback(bootstrap: Vec<SocketAddr>) -> Config {
        Config {
            bootstrap,
            restrict_ips: false,
            max_ports_per_ip: usize::MAX,
            inbound_rate: 1_000,
            inbound_burst: 2_000,
            ..Config::default()
        }
    }
}
