//! Hostile peers on loopback, each scripted over a raw socket with the peer codec: every
//! one is dropped with a reason, and the download still completes from an honest seeder.

mod transfer_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use transfer_support::*;
use wire::extension::{ExtendedHandshake, MetadataMessage, OUR_UT_METADATA_ID};
use wire::infohash::InfoHash;
use wire::metainfo::Metainfo;
use wire::peer::{Block, Message};
use wire::session::{SessionConfig, Source, Torrent, TorrentStats};

const LIMIT: Duration = Duration::from_secs(60);

/// Listens on a fresh loopback address; each accepted connection runs `script`.
async fn hostile<F, Fut>(info_hash: InfoHash, script: F) -> SocketAddr
where
    F: Fn(Raw) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let raw = Raw::handshake(s, info_hash).await;
            // One connection at a time is enough for these scripts.
            script(raw).await;
        }
    });
    addr
}

struct Swarm {
    meta: Metainfo,
    files: Vec<(&'static str, Vec<u8>)>,
    seeder: Torrent,
    _dirs: Vec<tempfile::TempDir>,
}

async fn honest_swarm(seed: u64) -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(2 * 1024 * 1024 + 77, seed))];
    let meta = make_torrent(dir.path(), "data.bin", &files, 64 * 1024);
    let seeder = Torrent::start(
        Source::Metainfo(Box::new(meta.clone())),
        dir.path().into(),
        config(),
    )
    .await
    .unwrap();
    Swarm {
        meta,
        files,
        seeder,
        _dirs: vec![dir],
    }
}

fn strict_config() -> SessionConfig {
    let mut c = config();
    c.handshake_timeout = Duration::from_secs(1);
    c.engine.snub_timeout = Duration::from_secs(1);
    c.engine.unresponsive_timeout = Duration::from_secs(2);
    c
}

fn dropped_for(s: &TorrentStats, addr: SocketAddr) -> Option<String> {
    s.dropped
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, r)| r.clone())
}

/// Our leecher meets `bad` first, then the honest seeder; it must drop `bad` with a
/// reason containing `expect` and still finish.
async fn leech_past(sw: &Swarm, bad: SocketAddr, source: Source, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut leecher = Torrent::start(source, dir.path().into(), strict_config())
        .await
        .unwrap();
    leecher.add_peer(bad);
    let s = wait_for(LIMIT, || leecher.stats(), |s| dropped_for(s, bad).is_some()).await;
    let reason = dropped_for(&s, bad).unwrap();
    assert!(
        reason.contains(expect),
        "dropped for {reason:?}, expected {expect:?}"
    );
    leecher.add_peer(sw.seeder.listen_addr().unwrap());
    tokio::time::timeout(LIMIT, leecher.wait_complete())
        .await
        .expect("in time")
        .unwrap();
    same_tree(dir.path(), dir.path(), &sw.files);
    assert_eq!(
        std::fs::read(dir.path().join("data.bin")).unwrap(),
        sw.files[0].1
    );
    leecher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix() {
    let sw = honest_swarm(11).await;
    let bad = hostile(sw.meta.info_hash, |mut r| async move {
        let _ = r.stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 7]).await;
        r.until_closed().await;
    })
    .await;
    leech_past(
        &sw,
        bad,
        Source::Metainfo(Box::new(sw.meta.clone())),
        "exceeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitfield_of_the_wrong_length() {
    let sw = honest_swarm(12).await;
    let bad = hostile(sw.meta.info_hash, |mut r| async move {
        r.send(Message::Bitfield(Bytes::from_static(&[0xff; 3])))
            .await;
        r.until_closed().await;
    })
    .await;
    leech_past(
        &sw,
        bad,
        Source::Metainfo(Box::new(sw.meta.clone())),
        "bitfield",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piece_data_that_fails_the_hash() {
    let sw = honest_swarm(13).await;
    let bad = hostile(sw.meta.info_hash, |mut r| async move {
        r.send(Message::HaveAll).await;
        r.send(Message::Unchoke).await;
        while let Some(m) = r.recv().await {
            if let Message::Request(q) = m {
                let data = Bytes::from(vec![0xAB; q.length as usize]);
                r.send(Message::Piece {
                    piece: q.piece,
                    offset: q.offset,
                    data,
                })
                .await;
            }
        }
    })
    .await;
    leech_past(
        &sw,
        bad,
        Source::Metainfo(Box::new(sw.meta.clone())),
        "hash",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_does_not_hash_to_the_info_hash() {
    let sw = honest_swarm(14).await;
    let size = sw.meta.raw_info.len() as u64;
    let bad = hostile(sw.meta.info_hash, move |mut r| async move {
        let mut m = BTreeMap::new();
        m.insert("ut_metadata".to_string(), 3u8);
        let hs = ExtendedHandshake {
            extensions: m,
            metadata_size: Some(size),
            ..Default::default()
        };
        r.send(Message::Extended {
            id: 0,
            payload: Bytes::from(hs.encode()),
        })
        .await;
        while let Some(msg) = r.recv().await {
            if let Message::Extended { id: 3, payload } = msg {
                if let Ok(Some(MetadataMessage::Request { piece })) =
                    MetadataMessage::parse(&payload)
                {
                    let start = piece as u64 * 16384;
                    let len = (size - start).min(16384) as usize;
                    let data = Bytes::from(vec![b'x'; len]);
                    let reply = MetadataMessage::Data {
                        piece,
                        total_size: size,
                        data,
                    }
                    .encode();
                    r.send(Message::Extended {
                        id: OUR_UT_METADATA_ID,
                        payload: Bytes::from(reply),
                    })
                    .await;
                }
            }
        }
    })
    .await;
    leech_past(&sw, bad, Source::InfoHash(sw.meta.info_hash), "metadata").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_handshakes() {
    let sw = honest_swarm(15).await;
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let bad = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept and say nothing
        }
    });
    leech_past(
        &sw,
        bad,
        Source::Metainfo(Box::new(sw.meta.clone())),
        "handshake timed out",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_unchokes_but_never_sends_data() {
    let sw = honest_swarm(16).await;
    let bad = hostile(sw.meta.info_hash, |mut r| async move {
        r.send(Message::HaveAll).await;
        r.send(Message::Unchoke).await;
        r.until_closed().await;
    })
    .await;
    leech_past(
        &sw,
        bad,
        Source::Metainfo(Box::new(sw.meta.clone())),
        "no data",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_outside_the_torrent_is_refused_by_the_seeder() {
    let sw = honest_swarm(17).await;
    let seeder_addr = sw.seeder.listen_addr().unwrap();
    let stream = TcpStream::connect(seeder_addr).await.unwrap();
    let mut r = Raw::handshake(stream, sw.meta.info_hash).await;
    r.send(Message::HaveNone).await;
    r.send(Message::Interested).await;
    r.until_unchoked().await;
    r.send(Message::Request(Block {
        piece: 1_000_000,
        offset: 0,
        length: 16384,
    }))
    .await;
    tokio::time::timeout(LIMIT, r.until_closed())
        .await
        .expect("seeder closed the connection");
    wait_dropped(LIMIT, || sw.seeder.stats(), "invalid request").await;
    // The seeder still serves honest peers.
    let dir = tempfile::tempdir().unwrap();
    let mut leecher = Torrent::start(
        Source::Metainfo(Box::new(sw.meta.clone())),
        dir.path().into(),
        config(),
    )
    .await
    .unwrap();
    leecher.add_peer(seeder_addr);
    tokio::time::timeout(LIMIT, leecher.wait_complete())
        .await
        .expect("in time")
        .unwrap();
    leecher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_requests_but_never_reads_gets_a_bounded_amount() {
    // 24 MiB: far more than socket buffers plus our in-flight cap hold.
    let dir = tempfile::tempdir().unwrap();
    let files = vec![("big.bin", payload(24 << 20, 41))];
    let meta = make_torrent(dir.path(), "big.bin", &files, 256 * 1024);
    let seeder = start(&meta, dir.path(), config()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(seeder.listen_addr().unwrap()).await.unwrap();
    let mut r = Raw::handshake(stream, meta.info_hash).await;
    r.send(Message::Interested).await;
    r.until_unchoked().await;
    // Ask for every block (within the seeder's request queue limit), then stop reading.
    let blocks = (24u32 << 20) / 16384;
    let mut out = BytesMut::new();
    for i in 0..blocks.min(1900) {
        Message::Request(Block {
            piece: i / 16,
            offset: (i % 16) * 16384,
            length: 16384,
        })
        .encode(&mut out);
    }
    r.stream.write_all(&out).await.unwrap();
    // Wait until the seeder stops handing out blocks (nothing new for a second).
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut last = (seeder.stats().uploaded, tokio::time::Instant::now());
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        let now = seeder.stats().uploaded;
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still growing");
    }
    // Kernel buffers (a few MiB on loopback) plus 256 blocks in flight (4 MiB): well
    // under the 29.7 MiB asked for.
    assert!(
        last.0 <= 12 << 20,
        "{} MiB read for a peer that reads nothing",
        last.0 >> 20
    );
    drop(r);
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_asks_for_metadata_over_and_over_is_dropped() {
    let sw = honest_swarm(18).await;
    let stream = TcpStream::connect(sw.seeder.listen_addr().unwrap())
        .await
        .unwrap();
    let mut r = Raw::handshake(stream, sw.meta.info_hash).await;
    let mut m = BTreeMap::new();
    m.insert("ut_metadata".to_string(), 3u8);
    let hs = ExtendedHandshake {
        extensions: m,
        ..Default::default()
    };
    let mut out = BytesMut::new();
    Message::Extended {
        id: 0,
        payload: Bytes::from(hs.encode()),
    }
    .encode(&mut out);
    for _ in 0..500 {
        Message::Extended {
            id: OUR_UT_METADATA_ID,
            payload: Bytes::from(MetadataMessage::Request { piece: 0 }.encode()),
        }
        .encode(&mut out);
    }
    r.stream.write_all(&out).await.unwrap();
    let mut answers = 0;
    tokio::time::timeout(LIMIT, async {
        while let Some(msg) = r.recv().await {
            answers += matches!(msg, Message::Extended { id: 3, .. }) as u32;
        }
    })
    .await
    .expect("seeder closed the connection");
    assert!(answers < 100, "{answers} metadata answers");
    wait_dropped(LIMIT, || sw.seeder.stats(), "too many metadata requests").await;
}
