//! Helpers shared by the loopback transfer tests: payloads, torrents, session configs on
//! fresh 127.x.y.z addresses, waiting with deadlines.
#![allow(dead_code)]

mod raw;
#[allow(unused_imports)]
pub use raw::Raw;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use wire::create::{create_torrent, CreateOptions};
use wire::metainfo::Metainfo;
use wire::session::{SessionConfig, Source, Torrent, TorrentStats};

/// A fresh loopback address (port 0: the OS picks) so every node has its own IP.
pub fn loopback() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(
        127,
        (pid % 200 + 20) as u8,
        ((pid / 200) % 250) as u8,
        (n % 250 + 2) as u8,
    );
    SocketAddr::from((ip, 0))
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` (relative path, contents) under `dir` and makes a v1 torrent of
/// `dir/name` (a single file when `files` has one entry named `name`).
pub fn make_torrent(
    dir: &Path,
    name: &str,
    files: &[(&str, Vec<u8>)],
    piece_length: u64,
) -> Metainfo {
    for (rel, data) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    let opts = CreateOptions {
        piece_length: Some(piece_length),
        ..Default::default()
    };
    create_torrent(&dir.join(name), &opts, &|_| {})
        .expect("create torrent")
        .metainfo
}

/// A session config listening on a fresh loopback address, with short timeouts.
pub fn config() -> SessionConfig {
    SessionConfig {
        listen: Some(loopback()),
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        stats_interval: Duration::from_millis(50),
        ..SessionConfig::default()
    }
}

/// Polls `stats` until `cond` holds or `limit` passes.
pub async fn wait_for(
    limit: Duration,
    mut stats: impl FnMut() -> TorrentStats,
    mut cond: impl FnMut(&TorrentStats) -> bool,
) -> TorrentStats {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = stats();
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the stats list a peer dropped for a reason containing `reason` (stats are
/// published periodically, so the snapshot with it may come a little later).
pub async fn wait_dropped(
    limit: Duration,
    stats: impl FnMut() -> TorrentStats,
    reason: &str,
) -> TorrentStats {
    wait_for(limit, stats, |s| {
        s.dropped.iter().any(|(_, why)| why.contains(reason))
    })
    .await
}

/// Every file of `a` equals the same file under `b`.
pub fn same_tree(a: &Path, b: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, data) in files {
        let got = std::fs::read(b.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(
            got == *data,
            "{rel} differs ({} vs {} bytes)",
            got.len(),
            data.len()
        );
        let _ = a;
    }
}

/// Starts a session on `meta`'s data under `dir`.
pub async fn start(meta: &Metainfo, dir: &Path, cfg: SessionConfig) -> Torrent {
    Torrent::start(Source::Metainfo(Box::new(meta.clone())), dir.into(), cfg)
        .await
        .expect("start session")
}

/// Starts a session that has only `meta`'s info-hash (a magnet link).
pub async fn start_magnet(meta: &Metainfo, dir: &Path, cfg: SessionConfig) -> Torrent {
    Torrent::start(Source::InfoHash(meta.info_hash), dir.into(), cfg)
        .await
        .expect("start session")
}

/// Waits (at most `limit`) until `t` has every piece verified.
pub async fn complete(t: &mut Torrent, limit: Duration) {
    tokio::time::timeout(limit, t.wait_complete())
        .await
        .expect("download completes in time")
        .expect("download completes");
}
