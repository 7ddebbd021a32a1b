//! Real sockets on 127.x.y.z: seeders and leechers built from `wire::session`.

mod transfer_support;

use std::time::Duration;

use transfer_support::*;
use wire::session::{Source, Torrent};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seeder_to_one_leecher() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(5 * 1024 * 1024 + 1234, 1))];
    let meta = make_torrent(seed_dir.path(), "data.bin", &files, 256 * 1024);
    let seeder = Torrent::start(
        Source::Metainfo(Box::new(meta.clone())),
        seed_dir.path().into(),
        config(),
    )
    .await
    .unwrap();
    assert!(seeder.stats().complete, "seeder found its data");
    let mut leecher = Torrent::start(
        Source::Metainfo(Box::new(meta)),
        leech_dir.path().into(),
        config(),
    )
    .await
    .unwrap();
    assert!(!leecher.stats().complete);
    leecher.add_peer(seeder.listen_addr().unwrap());
    tokio::time::timeout(LIMIT, leecher.wait_complete())
        .await
        .expect("in time")
        .unwrap();
    same_tree(seed_dir.path(), leech_dir.path(), &files);
    let s = leecher.stats();
    assert_eq!(s.bytes_left, 0);
    assert_eq!(s.hash_failures, 0);
    assert!(s.downloaded >= files[0].1.len() as u64);
    leecher.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_rate_limited_seeders_all_contribute() {
    let leech_dir = tempfile::tempdir().unwrap();
    let data = payload(4 * 1024 * 1024, 2);
    let files = vec![("data.bin", data)];
    let mut seeders = Vec::new();
    let mut meta = None;
    for i in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let m = make_torrent(dir.path(), "data.bin", &files, 64 * 1024);
        let mut cfg = config();
        cfg.engine.upload_rate_limit = 256 * 1024;
        cfg.rng_seed = i;
        let t = Torrent::start(
            Source::Metainfo(Box::new(m.clone())),
            dir.path().into(),
            cfg,
        )
        .await
        .unwrap();
        meta = Some(m);
        seeders.push((t, dir));
    }
    let mut leecher = Torrent::start(
        Source::Metainfo(Box::new(meta.unwrap())),
        leech_dir.path().into(),
        config(),
    )
    .await
    .unwrap();
    for (s, _) in &seeders {
        leecher.add_peer(s.listen_addr().unwrap());
    }
    tokio::time::timeout(LIMIT, leecher.wait_complete())
        .await
        .expect("in time")
        .unwrap();
    same_tree(leech_dir.path(), leech_dir.path(), &files);
    let s = leecher.stats();
    // Each seeder may send at most 256 KiB/s; the leecher pulled from all of them.
    let sources: Vec<u64> = seeders
        .iter()
        .map(|(t, _)| {
            let addr = t.listen_addr().unwrap();
            s.received_from
                .iter()
                .filter(|(a, _)| a.ip() == addr.ip())
                .map(|(_, b)| *b)
                .sum()
        })
        .collect();
    let total: u64 = sources.iter().sum();
    assert!(total >= 4 * 1024 * 1024, "received {total}");
    for (i, b) in sources.iter().enumerate() {
        assert!(
            *b >= total / 32,
            "seeder {i} sent only {b} of {total}: {sources:?}"
        );
    }
    leecher.shutdown().await;
    for (t, _) in seeders {
        t.shutdown().await;
    }
}
