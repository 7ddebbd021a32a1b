//! Real sockets on 127.0.0.x: 64 `dht::Node`s, each on its own loopback IP, join through one
//! bootstrap node (the `swarm bootstrap` process, and an in-process node with the same
//! settings); one announces an info-hash, another finds it with get_peers; a node restarted
//! from its saved state rejoins with no bootstrap address.

#[path = "bootstrap_proc.rs"]
mod bootstrap_proc;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dht::{Config, Node, NodeConfig};
use tests::{next_loopback_ip, swarm_bin};

fn node_config(bootstrap: Vec<SocketAddr>, state_file: Option<PathBuf>) -> NodeConfig {
    static SEED: AtomicU64 = AtomicU64::new(1);
    let bind = SocketAddr::new(IpAddr::V4(next_loopback_ip()), 0);
    let mut cfg = NodeConfig::new(bind, Config::loopback(bootstrap));
    cfg.rng_seed = Some(SEED.fetch_add(1, Ordering::Relaxed) * 7919 + std::process::id() as u64);
    cfg.state_file = state_file;
    cfg.recv_buffer = 256 << 10;
    cfg.send_buffer = 256 << 10;
    cfg
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn min_nodes(nodes: &[Node]) -> usize {
    let mut min = usize::MAX;
    for n in nodes {
        min = min.min(n.stats().await.nodes4);
    }
    min
}

/// Waits until `node`'s get_peers lookups find `want` (repeating the lookup while the
/// deadline allows).
async fn finds_peer(node: &Node, ih: [u8; 20], want: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for _ in 0..20 {
        let mut s = node.get_peers(ih);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.next()).await {
                Ok(Some(p)) if p == want => return true,
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
    false
}

/// Announces and waits for the announce phase to end; returns whether it ended in time.
async fn announce(node: &Node, ih: [u8; 20], port: u16) -> bool {
    let mut s = node.announce(ih, Some(port));
    tokio::time::timeout(Duration::from_secs(15), async {
        while s.next().await.is_some() {}
    })
    .await
    .is_ok()
}

/// 64 nodes through `boot`; announce from one, find from another; restart one from its
/// saved state with no bootstrap address (and `stop_boot` run first: the bootstrap node is
/// gone by then).
async fn swarm_through(boot: SocketAddr, stop_boot: impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    let mut nodes = Vec::new();
    for i in 0..64 {
        let sf = (i == 5).then(|| state.clone());
        nodes.push(Node::bind(node_config(vec![boot], sf)).await.unwrap());
    }
    // Every node joins: it knows several others (not only the bootstrap node).
    assert!(
        wait_for(Duration::from_secs(30), || async {
            min_nodes(&nodes).await >= 3
        })
        .await,
        "not every node joined: smallest table has {} nodes",
        min_nodes(&nodes).await
    );

    let ih = *b"swarm-dht-loopback!!";
    let announcer = &nodes[10];
    let peer = SocketAddr::new(announcer.local_addr().ip(), 40_001);
    assert!(
        announce(announcer, ih, peer.port()).await,
        "announce did not finish"
    );
    assert!(
        finds_peer(&nodes[50], ih, peer, Duration::from_secs(20)).await,
        "node 50 did not find the announced peer {peer}"
    );

    // Node 5 saves its table and stops; the bootstrap node goes away; node 5 comes back on
    // its old IP with no bootstrap address, rejoins from the saved nodes and finds the peer.
    let restarted = nodes.remove(5);
    let ip = restarted.local_addr().ip();
    let id = restarted.stats().await.id;
    restarted.shutdown().await;
    stop_boot();
    let saved = dht::SavedState::from_bytes(&std::fs::read(&state).unwrap()).unwrap();
    assert!(saved.nodes.len() >= 3, "saved {} nodes", saved.nodes.len());
    let mut cfg = node_config(vec![], Some(state.clone()));
    cfg.bind = SocketAddr::new(ip, 0);
    let again = Node::bind(cfg).await.unwrap();
    assert_eq!(again.stats().await.id, id, "same id after restart");
    assert!(
        wait_for(Duration::from_secs(20), || async {
            again.stats().await.nodes4 >= 3
        })
        .await,
        "restarted node did not rejoin: {:?}",
        again.stats().await
    );
    assert!(
        finds_peer(&again, ih, peer, Duration::from_secs(20)).await,
        "restarted node did not find the announced peer"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_nodes_through_the_swarm_bootstrap_process() {
    let state = tempfile::tempdir().unwrap();
    let boot = bootstrap_proc::start(
        swarm_bin!(),
        IpAddr::V4(next_loopback_ip()),
        0,
        state.path(),
        &["--stats-every", "0"],
    );
    let addr = boot.addr;
    swarm_through(addr, move || drop(boot)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_nodes_through_an_in_process_bootstrap_node() {
    let bind = SocketAddr::new(IpAddr::V4(next_loopback_ip()), 0);
    let boot = Node::bind(node::cmd::bootstrap::Settings::new(bind).node_config())
        .await
        .unwrap();
    let addr = boot.local_addr();
    swarm_through(addr, move || drop(boot)).await;
}
