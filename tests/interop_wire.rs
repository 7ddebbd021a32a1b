//! Piece exchange with libtorrent (python3-libtorrent, driven by `lt_peer.py`), peers given
//! directly (no DHT): our leecher fetches metadata and data from a libtorrent seeder by
//! info-hash, and a libtorrent leecher fetches a magnet from our seeder. Files verified.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::{free_port, next_loopback_ip, test_payload, write_file};
use wire::create::{create_torrent, CreateOptions};
use wire::session::{SessionConfig, Source, Torrent};

const LIMIT: Duration = Duration::from_secs(60);
const LT_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lt_peer.py");

/// A running `lt_peer.py` whose JSON lines arrive on a channel.
struct LtPeer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LtPeer {
    fn spawn(python: &str, args: &[String]) -> LtPeer {
        let mut child = Command::new(python)
            .arg(LT_PEER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lt_peer.py");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LtPeer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "lt_peer: no {needle:?} within {limit:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for LtPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn make_data(dir: &Path) -> (Vec<(String, Vec<u8>)>, wire::create::Created) {
    let files = vec![
        ("bundle/a.bin".to_string(), test_payload(1_500_000, 21)),
        ("bundle/b.bin".to_string(), test_payload(333_333, 22)),
    ];
    for (rel, data) in &files {
        write_file(dir, rel, data);
    }
    let opts = CreateOptions {
        piece_length: Some(64 * 1024),
        ..Default::default()
    };
    let created = create_torrent(&dir.join("bundle"), &opts, &|_| {}).expect("create torrent");
    (files, created)
}

fn verify(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let got = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == *data, "{rel} differs");
    }
}

fn our_config() -> SessionConfig {
    SessionConfig {
        listen: Some(SocketAddr::from((next_loopback_ip(), 0))),
        ..SessionConfig::default()
    }
}

/// libtorrent with only encrypted connections allowed (MSE/PE, RC4), or its defaults.
fn encryption_args(forced: bool) -> Vec<String> {
    if forced {
        vec!["--encryption".into(), "forced".into()]
    } else {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_leecher_fetches_metadata_and_data_from_a_libtorrent_seeder() {
    leech_from_libtorrent(false).await;
}

/// Our plaintext dial is refused; the retry uses the MSE handshake and RC4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_leecher_fetches_from_a_libtorrent_seeder_that_requires_encryption() {
    leech_from_libtorrent(true).await;
}

async fn leech_from_libtorrent(forced: bool) {
    let python = tests::require_libtorrent!();
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let (files, created) = make_data(seed_dir.path());
    let torrent = seed_dir.path().join("bundle.torrent");
    std::fs::write(&torrent, &created.bytes).unwrap();
    let reparsed = wire::metainfo::Metainfo::from_bytes(&created.bytes).unwrap();
    assert_eq!(reparsed.info_hash, created.metainfo.info_hash);
    let lt_view = tests::run_python(
        python,
        "import libtorrent as lt, sys\nprint(lt.torrent_info(sys.argv[1]).info_hash())",
        &[&torrent.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(
        String::from_utf8_lossy(&lt_view.stdout).trim(),
        created.metainfo.info_hash.to_hex()
    );
    let lt_ip = next_loopback_ip();
    // An explicit port: libtorrent's listen_port() is not reliable right after start.
    let port = free_port(lt_ip);
    let mut lt = LtPeer::spawn(
        python,
        &[
            encryption_args(forced),
            vec!["--listen".into(), format!("{lt_ip}:{port}")],
            vec!["--no-dht".into()],
        ]
        .concat()
        .into_iter()
        .chain([
            "--timeout".into(),
            "120".into(),
            "seed".into(),
            "--torrent".into(),
            torrent.display().to_string(),
            "--save".into(),
            seed_dir.path().display().to_string(),
        ])
        .collect::<Vec<_>>(),
    );
    lt.wait_for("\"ready\"", Duration::from_secs(30));
    let mut ours = Torrent::start(
        Source::InfoHash(created.metainfo.info_hash),
        leech_dir.path().into(),
        our_config(),
    )
    .await
    .unwrap();
    // libtorrent may close a connection that arrives right as the torrent starts; the
    // session does not retry by itself, so offer the peer again until it sticks (as the
    // node does with DHT results).
    let lt_addr = SocketAddr::from((lt_ip, port));
    let done = tokio::time::timeout(LIMIT, async {
        loop {
            ours.add_peer(lt_addr);
            match tokio::time::timeout(Duration::from_millis(500), ours.wait_complete()).await {
                Ok(r) => return r,
                Err(_) => continue,
            }
        }
    })
    .await;
    let s = ours.stats();
    if !matches!(done, Ok(Ok(()))) {
        lt.seen.extend(lt.lines.try_iter());
        panic!(
            "not complete: {s:#?}\nlibtorrent said:\n{}",
            lt.seen.join("\n")
        );
    }
    assert!(s.have_metadata);
    assert_eq!(s.hash_failures, 0);
    verify(leech_dir.path(), &files);
    ours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_leecher_fetches_a_magnet_from_our_seeder() {
    libtorrent_leeches(false).await;
}

/// libtorrent dials us with the MSE handshake only and wants RC4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_leecher_that_requires_encryption_fetches_from_our_seeder() {
    libtorrent_leeches(true).await;
}

async fn libtorrent_leeches(forced: bool) {
    let python = tests::require_libtorrent!();
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let (files, created) = make_data(seed_dir.path());
    let ours = Torrent::start(
        Source::Metainfo(Box::new(created.metainfo.clone())),
        seed_dir.path().into(),
        our_config(),
    )
    .await
    .unwrap();
    assert!(ours.stats().complete);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}",
        created.metainfo.info_hash.to_hex()
    );
    let mut lt = LtPeer::spawn(
        python,
        &encryption_args(forced)
            .into_iter()
            .chain([
                "--listen".into(),
                {
                    let ip = next_loopback_ip();
                    format!("{ip}:{}", free_port(ip))
                },
                "--no-dht".into(),
                "--timeout".into(),
                "80".into(),
                "--peer".into(),
                ours.listen_addr().unwrap().to_string(),
                "get".into(),
                "--magnet".into(),
                magnet,
                "--save".into(),
                leech_dir.path().display().to_string(),
            ])
            .collect::<Vec<_>>(),
    );
    // Blocking wait on a std channel: keep it off the runtime's worker threads.
    let done = tokio::task::spawn_blocking(move || {
        let line = lt.wait_for("\"done\"", LIMIT);
        drop(lt);
        line
    })
    .await
    .unwrap();
    assert!(done.contains("bundle"), "{done}");
    verify(leech_dir.path(), &files);
    // Stats are snapshots taken every 200 ms: wait (bounded) for the one after the upload.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ours.stats().uploaded < 1_833_333 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = ours.stats();
    assert!(s.uploaded >= 1_833_333, "uploaded {}: {s:#?}", s.uploaded);
    ours.shutdown().await;
}
