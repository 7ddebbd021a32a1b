//! Hostile peers that share an IP address with an honest seeder. Real swarms are full of
//! those (NAT, one host running several clients), so whatever a bad peer does must not
//! cost us the good peers behind the same address. Every node here is on 127.0.0.1
//! (different ports): the leecher under test, the honest seeder and each scripted peer.
//!
//! The tests take turns (one lock): all of them are timing-sensitive on a busy machine.
//! The floods each run in a fresh process of this test binary, so the resident memory
//! they measure is their own.

mod transfer_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use transfer_support::*;
use wire::extension::{ExtendedHandshake, MetadataMessage};
use wire::infohash::InfoHash;
use wire::metainfo::Metainfo;
use wire::peer::{Decoder, Handshake, Message, PeerId, Reserved};
use wire::session::{SessionConfig, Torrent, TorrentStats};

/// Upper bound for any single wait in these tests.
const LIMIT: Duration = Duration::from_secs(60);
const PIECE: u64 = 64 * 1024;
/// Extension protocol (BEP 10) only: no Fast extension, so a choke silently cancels our
/// requests and every unchoke makes us send a fresh batch.
const EXTENSION_ONLY: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0]);

/// The tests in this file run one at a time (see the module comment).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 127.0.0.1 with a port the OS picks: the address every node here shares.
fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// [`config`] listening on 127.0.0.1 (so the session also dials from 127.0.0.1).
fn shared_config() -> SessionConfig {
    SessionConfig {
        listen: Some(localhost()),
        ..config()
    }
}

/// Prints how long a test ran when it ends, passing or failing.
struct Timer(&'static str, Instant);

impl Timer {
    fn start(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            "FAILED"
        } else {
            "passed"
        };
        eprintln!(
            "[{}] {how} after {:.1} s",
            self.0,
            self.1.elapsed().as_secs_f64()
        );
    }
}

/// An extended handshake advertising ut_metadata (as id 3) and `metadata_size`.
fn extended_handshake(metadata_size: Option<u64>, reqq: Option<u32>) -> Message {
    let mut m = BTreeMap::new();
    m.insert("ut_metadata".to_string(), 3u8);
    let hs = ExtendedHandshake {
        extensions: m,
        metadata_size,
        request_queue: reqq,
        client: Some("hostile 0.1".into()),
        ..Default::default()
    };
    Message::Extended {
        id: 0,
        payload: Bytes::from(hs.encode()),
    }
}

/// Listens on 127.0.0.1; each accepted connection is handshaken (with `reserved`) and
/// runs `script` in its own task.
async fn hostile<F, Fut>(info_hash: InfoHash, reserved: Reserved, script: F) -> SocketAddr
where
    F: Fn(Raw) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let raw =
                    Raw::handshake_with(s, info_hash, PeerId(*b"-XX0001-sharedip-bad"), reserved)
                        .await;
                script(raw).await;
            });
        }
    });
    addr
}

/// An honest seeder on 127.0.0.1 and the torrent it seeds.
struct Swarm {
    meta: Metainfo,
    data: Arc<Vec<u8>>,
    seeder: Torrent,
    _dir: tempfile::TempDir,
}

impl Swarm {
    fn addr(&self) -> SocketAddr {
        self.seeder.listen_addr().unwrap()
    }

    fn piece_count(&self) -> u32 {
        (self.data.len() as u64).div_ceil(PIECE) as u32
    }
}

/// Seeds `len` pseudo-random bytes in 64 KiB pieces, uploading at most `upload_limit`
/// bytes a second (0: no limit).
async fn honest_seeder(len: usize, seed: u64, upload_limit: u64) -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(len, seed))];
    let meta = make_torrent(dir.path(), "data.bin", &files, PIECE);
    let mut cfg = shared_config();
    cfg.engine.upload_rate_limit = upload_limit;
    let seeder = start(&meta, dir.path(), cfg).await;
    let data = Arc::new(files.into_iter().next().unwrap().1);
    Swarm {
        meta,
        data,
        seeder,
        _dir: dir,
    }
}

fn summary(s: &TorrentStats) -> String {
    let peers: Vec<_> = s.peers.iter().map(|p| (p.addr, p.downloaded)).collect();
    format!(
        "have_metadata={} pieces {}/{} hash_failures={} error={:?}\n  peers (addr, bytes): \
         {peers:?}\n  received_from: {:?}\n  dropped: {:#?}",
        s.have_metadata,
        s.pieces_have,
        s.piece_count,
        s.hash_failures,
        s.error,
        s.received_from,
        s.dropped
    )
}

/// Waits (at most `limit`) for `t` to complete; the panic message says where it stands.
async fn finish(t: &mut Torrent, limit: Duration, what: &str) {
    match tokio::time::timeout(limit, t.wait_complete()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: the torrent stopped: {e}\n{}", summary(&t.stats())),
        Err(_) => panic!(
            "{what}: not complete within {limit:?}\n{}",
            summary(&t.stats())
        ),
    }
}

/// Polls `cond` every 20 ms; panics with `what` if it does not hold within `limit`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_data(dir: &std::path::Path, sw: &Swarm) {
    let got = std::fs::read(dir.join("data.bin")).unwrap();
    assert!(
        got == *sw.data,
        "downloaded data differs ({} vs {} bytes)",
        got.len(),
        sw.data.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_peer_sharing_an_ip_with_an_honest_seeder_does_not_stop_the_download() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _t = Timer::start("corrupt_peer_sharing_an_ip");
    let sw = honest_seeder(2 * 1024 * 1024 + 77, 21, 0).await;
    let data = sw.data.clone();
    let served = Arc::new(AtomicU32::new(0));
    let counter = served.clone();
    // Has everything, unchokes at once, and answers every request with the right block
    // with every byte flipped.
    let bad = hostile(sw.meta.info_hash, Reserved::OURS, move |mut r| {
        let (data, served) = (data.clone(), counter.clone());
        async move {
            r.send(Message::HaveAll).await;
            r.send(Message::Unchoke).await;
            while let Some(m) = r.recv().await {
                let Message::Request(q) = m else { continue };
                let start = (q.piece as u64 * PIECE + q.offset as u64) as usize;
                let end = (start + q.length as usize).min(data.len());
                let corrupt: Vec<u8> = data[start.min(end)..end].iter().map(|b| !b).collect();
                r.send(Message::Piece {
                    piece: q.piece,
                    offset: q.offset,
                    data: Bytes::from(corrupt),
                })
                .await;
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    assert_eq!(bad.ip(), sw.addr().ip(), "same IP, different ports");

    let dir = tempfile::tempdir().unwrap();
    let mut leecher = start(&sw.meta, dir.path(), shared_config()).await;
    leecher.add_peer(bad);
    // The hostile peer is the only source of the first failed piece.
    let s = wait_for(LIMIT, || leecher.stats(), |s| s.hash_failures >= 1).await;
    eprintln!(
        "corrupt peer: {} corrupt blocks served, {} hash failure(s) before the seeder is added",
        served.load(Ordering::Relaxed),
        s.hash_failures
    );
    leecher.add_peer(sw.addr());
    finish(
        &mut leecher,
        Duration::from_secs(30),
        "the honest seeder on the corrupt peer's IP was not used",
    )
    .await;
    assert_data(dir.path(), &sw);
    let s = leecher.stats();
    assert!(
        s.received_from.get(&sw.addr()).copied().unwrap_or(0) > 0,
        "nothing came from the seeder: {}",
        summary(&s)
    );
    leecher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_metadata_source_does_not_hold_the_magnet() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _t = Timer::start("silent_metadata_source");
    let sw = honest_seeder(2 * 1024 * 1024 + 77, 22, 0).await;
    let size = sw.meta.raw_info.len() as u64;
    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    // Extension bit set (Reserved::OURS has reserved[5] = 0x10), an extended handshake
    // with ut_metadata and the true metadata_size; then never a word.
    let bad = hostile(sw.meta.info_hash, Reserved::OURS, move |mut r| {
        let counter = counter.clone();
        async move {
            r.send(extended_handshake(Some(size), None)).await;
            while let Some(m) = r.recv().await {
                if let Message::Extended { id: 3, .. } = m {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
    .await;
    assert_eq!(bad.ip(), sw.addr().ip(), "same IP, different ports");

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut leecher = start_magnet(&sw.meta, dir.path(), shared_config()).await;
    leecher.add_peer(bad);
    wait_until(
        Duration::from_secs(10),
        "metadata asked of the silent peer",
        || asked.load(Ordering::Relaxed) > 0,
    )
    .await;
    // A scripted delay (not a wait for a condition): the seeder turns up 2 s later.
    tokio::time::sleep_until(t0 + Duration::from_secs(2)).await;
    leecher.add_peer(sw.addr());
    let limit = Duration::from_secs(30).saturating_sub(t0.elapsed());
    let result = tokio::time::timeout(limit, leecher.wait_complete()).await;
    let asked = asked.load(Ordering::Relaxed);
    eprintln!(
        "silent metadata source: {} after {:.1} s; the silent peer got {asked} ut_metadata \
         message(s)",
        if matches!(result, Ok(Ok(()))) {
            "complete"
        } else {
            "NOT complete"
        },
        t0.elapsed().as_secs_f64(),
    );
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the torrent stopped: {e}\n{}", summary(&leecher.stats())),
        Err(_) => panic!(
            "a silent metadata source held the magnet: not complete 30 s after the start \
             (the seeder was added after 2 s; the silent peer got {asked} ut_metadata \
             message(s))\n{}",
            summary(&leecher.stats())
        ),
    }
    assert_data(dir.path(), &sw);
    leecher.shutdown().await;
}

/// What the proxy of [`peer_that_closes_right_after_metadata_is_dialed_again`] saw.
#[derive(Default)]
struct ProxyLog {
    accepted: AtomicU32,
    /// The first connection carried a ut_metadata data message from the seeder.
    metadata_forwarded: AtomicBool,
    /// The first connection was cut.
    cut: AtomicBool,
    /// Seeder-to-leecher bytes forwarded on the first connection.
    first_bytes: AtomicU64,
}

/// Whether `m` is a ut_metadata data message (any extended id but the handshake's).
fn is_metadata_data(m: &Message) -> bool {
    match m {
        Message::Extended { id, payload } if *id != 0 => matches!(
            MetadataMessage::parse(payload),
            Ok(Some(MetadataMessage::Data { .. }))
        ),
        _ => false,
    }
}

/// Forwards the first connection until 300 ms after the seeder's first ut_metadata data
/// message went through (10 s at most), then closes both sides.
async fn forward_then_cut(client: TcpStream, server: TcpStream, log: Arc<ProxyLog>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut cut_at = Instant::now() + Duration::from_secs(10);
    let mut parse = BytesMut::new();
    let mut handshake_seen = false;
    let mut dec = Decoder::default();
    let mut parsing = true;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = sr.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = tokio::time::sleep_until(cut_at) => break,
        };
        if cw.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        log.first_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if !parsing {
            continue;
        }
        parse.extend_from_slice(&chunk[..n]);
        if !handshake_seen {
            match Handshake::decode(&mut parse) {
                Ok(Some(_)) => handshake_seen = true,
                Ok(None) => continue,
                Err(_) => {
                    parsing = false;
                    continue;
                }
            }
        }
        loop {
            match dec.decode(&mut parse) {
                Ok(Some(m)) if is_metadata_data(&m) => {
                    log.metadata_forwarded.store(true, Ordering::Relaxed);
                    cut_at = Instant::now() + Duration::from_millis(300);
                    parsing = false;
                    parse.clear();
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    parsing = false;
                    break;
                }
            }
        }
    }
    up.abort();
    let _ = up.await;
    drop((sr, cw));
    log.cut.store(true, Ordering::Relaxed);
}

/// A TCP proxy on 127.0.0.1 to `upstream`: the first connection is cut after the
/// metadata went through, later ones are forwarded as they are.
async fn cutting_proxy(upstream: SocketAddr, log: Arc<ProxyLog>) -> SocketAddr {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = log.accepted.fetch_add(1, Ordering::Relaxed);
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                if n == 0 {
                    forward_then_cut(client, server, log).await;
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_closes_right_after_metadata_is_dialed_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _t = Timer::start("closes_right_after_metadata");
    // 512 KiB/s: the 2 MiB payload takes about 4 s, the metadata goes at once.
    let sw = honest_seeder(2 * 1024 * 1024 + 77, 23, 512 * 1024).await;
    let log = Arc::new(ProxyLog::default());
    let proxy = cutting_proxy(sw.addr(), log.clone()).await;
    assert_eq!(proxy.ip(), sw.addr().ip(), "same IP, different ports");

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut leecher = start_magnet(&sw.meta, dir.path(), shared_config()).await;
    leecher.add_peer(proxy);
    wait_until(Duration::from_secs(20), "first connection cut", || {
        log.cut.load(Ordering::Relaxed)
    })
    .await;
    assert!(
        log.metadata_forwarded.load(Ordering::Relaxed),
        "the seeder sent no metadata on the first connection"
    );
    let s = wait_for(
        Duration::from_secs(5),
        || leecher.stats(),
        |s| s.have_metadata,
    )
    .await;
    assert!(
        !s.complete,
        "the payload finished before the cut: the test proves nothing; slow the seeder"
    );
    eprintln!(
        "cut after {:.2} s and {} bytes from the seeder; leecher then had {}/{} pieces",
        t0.elapsed().as_secs_f64(),
        log.first_bytes.load(Ordering::Relaxed),
        s.pieces_have,
        s.piece_count
    );
    let result = tokio::time::timeout(LIMIT, leecher.wait_complete()).await;
    let accepted = log.accepted.load(Ordering::Relaxed);
    eprintln!(
        "closes right after metadata: {accepted} connection(s) to the proxy, complete: {}",
        matches!(result, Ok(Ok(())))
    );
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the torrent stopped: {e}\n{}", summary(&leecher.stats())),
        Err(_) => panic!(
            "not complete within {LIMIT:?} after the cut; the proxy was dialled {accepted} \
             time(s) in all\n{}",
            summary(&leecher.stats())
        ),
    }
    assert!(accepted >= 2, "complete without a second connection?");
    assert_data(dir.path(), &sw);
    leecher.shutdown().await;
}

// ---- floods ---------------------------------------------------------------------------

/// Most a flood may add to the test process's resident memory.
const RSS_GROWTH_LIMIT: u64 = 150 << 20;
/// Past this the test stops at once (to spare the machine): ending it drops the runtime
/// and with it every connection.
const RSS_EMERGENCY: u64 = 1 << 30;
const FLOOD_MESSAGES: u64 = 2_000_000;
const FLOOD_TIME: Duration = Duration::from_secs(10);

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

fn rss() -> u64 {
    proc_status("VmRSS")
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false where that is not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[derive(Clone, Copy, Debug)]
enum Flood {
    ChokeUnchoke,
    ExtendedHandshakes,
    Mix,
}

/// Shared between a flooding peer and its test.
#[derive(Default)]
struct FloodLog {
    /// Resident memory before the flood (bytes).
    base: AtomicU64,
    /// Highest resident memory seen (bytes).
    peak: AtomicU64,
    started: AtomicBool,
    done: AtomicBool,
    sent: AtomicU64,
    /// Why the flood ended.
    ended: Mutex<String>,
}

impl FloodLog {
    /// Samples RSS; returns growth over the base.
    fn sample(&self) -> u64 {
        let now = rss();
        self.peak.fetch_max(now, Ordering::Relaxed);
        now.saturating_sub(self.base.load(Ordering::Relaxed))
    }
}

/// The `i`-th message of a flood of `kind` on a torrent of `pieces` pieces.
fn flood_message(kind: Flood, i: u64, pieces: u32, handshakes: &[Message]) -> Message {
    let hs = || handshakes[(i as usize / 7) % handshakes.len()].clone();
    match kind {
        // Ends on a choke (even counts): nothing left asked of it.
        Flood::ChokeUnchoke => match i % 2 {
            0 => Message::Unchoke,
            _ => Message::Choke,
        },
        Flood::ExtendedHandshakes => hs(),
        Flood::Mix => match i % 6 {
            0 => Message::Have {
                // Never the last piece: it never becomes a seed (we would drop it when
                // we complete).
                piece: ((i / 6) % (pieces as u64 - 1)) as u32,
            },
            1 => Message::Interested,
            2 => Message::Unchoke,
            3 => Message::NotInterested,
            4 => hs(),
            _ => Message::Choke,
        },
    }
}

/// The hostile side: sends its opening, then floods without ever reading its socket, then
/// holds the connection open (still unread) until the test ends.
async fn run_flood(mut r: Raw, kind: Flood, pieces: u32, log: Arc<FloodLog>) {
    match kind {
        // Every piece but the last: we stay interested and it is never a seed.
        Flood::ChokeUnchoke => {
            let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
            for p in 0..pieces - 1 {
                bits[(p / 8) as usize] |= 0x80 >> (p % 8);
            }
            r.send(Message::Bitfield(Bytes::from(bits))).await;
        }
        Flood::ExtendedHandshakes => r.send(Message::HaveNone).await,
        Flood::Mix => {}
    }
    let handshakes: Vec<Message> = (0..16u32)
        .map(|k| extended_handshake(Some(1000 + k as u64), Some(100 + k)))
        .collect();
    log.started.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let deadline = t0 + FLOOD_TIME;
    let mut out = BytesMut::with_capacity(128 * 1024);
    let mut sent = 0u64;
    let ended = loop {
        if sent >= FLOOD_MESSAGES {
            break format!("{sent} messages sent");
        }
        if Instant::now() >= deadline {
            break format!("{FLOOD_TIME:?} passed");
        }
        let growth = log.sample();
        if growth > RSS_GROWTH_LIMIT {
            break format!("stopped early: RSS grew {:.0} MiB", mib(growth));
        }
        out.clear();
        let batch = 4096.min(FLOOD_MESSAGES - sent);
        for i in sent..sent + batch {
            flood_message(kind, i, pieces, &handshakes).encode(&mut out);
        }
        match tokio::time::timeout_at(deadline, r.stream.write_all(&out)).await {
            Ok(Ok(())) => sent += batch,
            Ok(Err(e)) => break format!("write failed after {sent} messages: {e}"),
            Err(_) => break format!("{FLOOD_TIME:?} passed (writes blocked: we stopped reading)"),
        }
        log.sent.store(sent, Ordering::Relaxed);
    };
    log.sent.store(sent, Ordering::Relaxed);
    *log.ended.lock().unwrap() = format!(
        "{ended} ({sent} messages in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    log.done.store(true, Ordering::Relaxed);
    // Keep the socket open and unread: what we queued for it stays queued.
    std::future::pending::<()>().await;
}

/// A leecher meets a flooding peer on 127.0.0.1, then the honest seeder on 127.0.0.1;
/// the download must complete and RSS must not grow by more than 150 MiB.
async fn flood_test(name: &'static str, kind: Flood, seed: u64) {
    let _one = ONE_AT_A_TIME.lock().await;
    let _t = Timer::start(name);
    // 4 MiB at 1 MiB/s: the download overlaps the flood by seconds.
    let sw = honest_seeder(4 * 1024 * 1024 + 99, seed, 1 << 20).await;
    let pieces = sw.piece_count();
    let log = Arc::new(FloodLog::default());
    let flood_log = log.clone();
    let reserved = match kind {
        Flood::ExtendedHandshakes => Reserved::OURS,
        Flood::ChokeUnchoke | Flood::Mix => EXTENSION_ONLY,
    };
    let flooders = Arc::new(AtomicU32::new(0));
    let count = flooders.clone();
    let bad = hostile(sw.meta.info_hash, reserved, move |r| {
        let (log, count) = (flood_log.clone(), count.clone());
        async move {
            // One flood; a later connection (the seeder, which hears of this peer through
            // PEX, or a redial) is held, never read.
            if count.fetch_add(1, Ordering::Relaxed) == 0 {
                run_flood(r, kind, pieces, log).await;
            } else {
                let _held = r;
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    assert_eq!(bad.ip(), sw.addr().ip(), "same IP, different ports");

    let dir = tempfile::tempdir().unwrap();
    let leecher = start(&sw.meta, dir.path(), shared_config()).await;
    let hwm_reset = reset_peak_rss();
    let base = rss();
    log.base.store(base, Ordering::Relaxed);
    log.peak.store(base, Ordering::Relaxed);
    let t0 = Instant::now();
    leecher.add_peer(bad);
    wait_until(Duration::from_secs(10), "flood started", || {
        log.started.load(Ordering::Relaxed)
    })
    .await;
    leecher.add_peer(sw.addr());

    // Until the flood ends and the download completes (or time runs out), watching RSS.
    let deadline = t0 + LIMIT;
    let mut emergency = None;
    let mut completed_at = None;
    loop {
        let growth = log.sample();
        if growth > RSS_EMERGENCY {
            emergency = Some(growth);
            break;
        }
        let s = leecher.stats();
        if s.complete && completed_at.is_none() {
            completed_at = Some(t0.elapsed());
        }
        if completed_at.is_some() && log.done.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sampled_peak = log.peak.load(Ordering::Relaxed);
    let hwm = proc_status("VmHWM");
    let growth = if hwm_reset {
        hwm.max(sampled_peak).saturating_sub(base)
    } else {
        sampled_peak.saturating_sub(base)
    };
    let s = leecher.stats();
    eprintln!(
        "[{name}] flood: {}\n[{name}] RSS before {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB{}, \
         sampled {:.1} MiB), now {:.1} MiB: growth {:.1} MiB (limit {:.0} MiB)\n[{name}] \
         download: {}; hostile peer still connected: {}; flooder connections: {}",
        log.ended.lock().unwrap(),
        mib(base),
        mib(base + growth),
        mib(hwm),
        if hwm_reset { ", reset" } else { ", NOT reset" },
        mib(sampled_peak),
        mib(rss()),
        mib(growth),
        mib(RSS_GROWTH_LIMIT),
        match completed_at {
            Some(t) => format!("complete after {:.1} s", t.as_secs_f64()),
            None => format!("{}/{} pieces", s.pieces_have, s.piece_count),
        },
        s.peers.iter().any(|p| p.addr == Some(bad)),
        flooders.load(Ordering::Relaxed),
    );
    if let Some(g) = emergency {
        panic!(
            "RSS grew {:.0} MiB (emergency stop)\n{}",
            mib(g),
            summary(&s)
        );
    }
    assert!(
        completed_at.is_some(),
        "download not complete within {LIMIT:?} under a {kind:?} flood\n{}",
        summary(&s)
    );
    assert_data(dir.path(), &sw);
    assert!(
        growth <= RSS_GROWTH_LIMIT,
        "RSS grew {:.1} MiB under a {kind:?} flood (limit {:.0} MiB)",
        mib(growth),
        mib(RSS_GROWTH_LIMIT)
    );
    leecher.shutdown().await;
}

/// Set in the process [`in_fresh_process`] starts.
const CHILD_ENV: &str = "SWARM_SHARED_IP_TEST_CHILD";

/// Runs `test` (a test of this file, by name) alone in a fresh process of this test
/// binary, so the resident memory it measures is its own (memory earlier tests freed stays
/// with the allocator and would hide growth); in that process, runs `body`.
fn in_fresh_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return body();
    }
    let _one = ONE_AT_A_TIME.blocking_lock();
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = log.reopen().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprint!(
        "{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{test} failed in its own process ({s}); its output is above"),
        None => panic!("{test} did not finish in its own process within 180 s"),
    }
}

fn flood(name: &'static str, kind: Flood, seed: u64) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(flood_test(name, kind, seed));
}

#[test]
fn choke_unchoke_flood_from_a_peer_sharing_the_seeders_ip() {
    in_fresh_process(
        "choke_unchoke_flood_from_a_peer_sharing_the_seeders_ip",
        || flood("choke_unchoke_flood", Flood::ChokeUnchoke, 31),
    );
}

#[test]
fn extended_handshake_flood_from_a_peer_sharing_the_seeders_ip() {
    in_fresh_process(
        "extended_handshake_flood_from_a_peer_sharing_the_seeders_ip",
        || flood("extended_handshake_flood", Flood::ExtendedHandshakes, 32),
    );
}

#[test]
fn mixed_message_flood_from_a_peer_sharing_the_seeders_ip() {
    in_fresh_process(
        "mixed_message_flood_from_a_peer_sharing_the_seeders_ip",
        || flood("mixed_message_flood", Flood::Mix, 33),
    );
}
