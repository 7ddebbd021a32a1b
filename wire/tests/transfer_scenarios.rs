//! Loopback transfers beyond the basic case: several files, a seeder that dies, and a
//! leecher that starts from the info-hash alone.

mod transfer_support;

use std::time::Duration;

use transfer_support::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_file_torrent_with_pieces_across_files() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    // Sizes chosen so pieces (32 KiB) straddle file boundaries; one file is tiny.
    let files = vec![
        ("album/a.bin", payload(100_000, 3)),
        ("album/sub/b.bin", payload(7, 4)),
        ("album/c.bin", payload(333_333, 5)),
    ];
    let meta = make_torrent(seed_dir.path(), "album", &files, 32 * 1024);
    assert_eq!(meta.info.files.len(), 3);
    let seeder = start(&meta, seed_dir.path(), config()).await;
    assert!(seeder.stats().complete);
    let mut leecher = start(&meta, leech_dir.path(), config()).await;
    leecher.add_peer(seeder.listen_addr().unwrap());
    complete(&mut leecher, LIMIT).await;
    same_tree(seed_dir.path(), leech_dir.path(), &files);
    leecher.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeder_dying_mid_transfer_is_replaced_by_another() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(3 * 1024 * 1024, 6))];
    let meta = make_torrent(dir_a.path(), "data.bin", &files, 64 * 1024);
    make_torrent(dir_b.path(), "data.bin", &files, 64 * 1024);
    let slow = |seed| {
        let mut c = config();
        c.engine.upload_rate_limit = 512 * 1024;
        c.rng_seed = seed;
        c
    };
    let a = start(&meta, dir_a.path(), slow(1)).await;
    let b = start(&meta, dir_b.path(), slow(2)).await;
    let mut leecher = start(&meta, leech_dir.path(), config()).await;
    let a_addr = a.listen_addr().unwrap();
    leecher.add_peer(a_addr);
    leecher.add_peer(b.listen_addr().unwrap());
    // Kill A once it has sent something and the download is well under way.
    wait_for(
        LIMIT,
        || leecher.stats(),
        |s| {
            s.received_from
                .get(&a_addr)
                .is_some_and(|&n| n > 256 * 1024)
                && s.progress() > 0.2
        },
    )
    .await;
    a.shutdown().await;
    let mid = leecher.stats();
    assert!(
        !mid.complete,
        "finished before the seeder died: make the payload larger"
    );
    complete(&mut leecher, LIMIT).await;
    same_tree(dir_b.path(), leech_dir.path(), &files);
    let s = leecher.stats();
    assert!(
        s.dropped.iter().any(|(addr, _)| *addr == a_addr),
        "A's drop is recorded: {:?}",
        s.dropped
    );
    leecher.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leecher_with_only_the_info_hash_fetches_metadata_first() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let files = vec![
        ("pack/one.bin", payload(1_000_000, 7)),
        ("pack/two.bin", payload(500_001, 8)),
    ];
    let meta = make_torrent(seed_dir.path(), "pack", &files, 16 * 1024);
    let seeders = [
        start(&meta, seed_dir.path(), config()).await,
        start(&meta, seed_dir.path(), config()).await,
    ];
    let mut leecher = start_magnet(&meta, leech_dir.path(), config()).await;
    let s = leecher.stats();
    assert!(!s.have_metadata && s.name.is_none());
    for s in &seeders {
        leecher.add_peer(s.listen_addr().unwrap());
    }
    complete(&mut leecher, LIMIT).await;
    let s = leecher.stats();
    assert!(s.have_metadata);
    assert_eq!(s.name.as_deref(), Some("pack"));
    assert_eq!(s.total_length, 1_500_001);
    same_tree(seed_dir.path(), leech_dir.path(), &files);
    leecher.shutdown().await;
    for s in seeders {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_not_yet_listening_is_retried() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(300_000, 9))];
    let meta = make_torrent(seed_dir.path(), "data.bin", &files, 32 * 1024);
    // Reserve an address, then free it: the first connection attempt is refused.
    let addr = std::net::TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    let mut leecher = start(&meta, leech_dir.path(), config()).await;
    leecher.add_peer(addr);
    let s = wait_for(
        LIMIT,
        || leecher.stats(),
        |s| s.dropped.iter().any(|(a, _)| *a == addr),
    )
    .await;
    assert!(s.dropped[0].1.contains("connect failed"), "{:?}", s.dropped);
    let mut cfg = config();
    cfg.listen = Some(addr);
    let seeder = start(&meta, seed_dir.path(), cfg).await;
    // No second add_peer: the session retries on its own.
    complete(&mut leecher, LIMIT).await;
    same_tree(seed_dir.path(), leech_dir.path(), &files);
    leecher.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_learned_through_pex_are_dialed() {
    let seed_dir = tempfile::tempdir().unwrap();
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(2 * 1024 * 1024, 31))];
    let meta = make_torrent(seed_dir.path(), "data.bin", &files, 32 * 1024);
    // A slow seeder, so A is still downloading (and connected to it) when B arrives.
    let mut slow = config();
    slow.engine.upload_rate_limit = 256 * 1024;
    let seeder = start(&meta, seed_dir.path(), slow).await;
    let seed_addr = seeder.listen_addr().unwrap();
    // A knows the seeder; B knows only A, and must learn of the seeder from A's ut_pex.
    let a = start(&meta, a_dir.path(), config()).await;
    a.add_peer(seed_addr);
    wait_for(LIMIT, || a.stats(), |s| !s.peers.is_empty()).await;
    let mut b = start(&meta, b_dir.path(), config()).await;
    b.add_peer(a.listen_addr().unwrap());
    let s = wait_for(
        LIMIT,
        || b.stats(),
        |s| s.received_from.get(&seed_addr).is_some_and(|&n| n > 0),
    )
    .await;
    assert!(s.peers.iter().any(|p| p.addr == Some(seed_addr)), "{s:?}");
    complete(&mut b, LIMIT).await;
    same_tree(seed_dir.path(), b_dir.path(), &files);
    b.shutdown().await;
    a.shutdown().await;
    seeder.shutdown().await;
}
