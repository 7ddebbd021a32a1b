//! Transfer benchmark: one seeder to one leecher over loopback TCP, in this process,
//! with real storage (files in a temp dir, page cache warm). Prints MB/s and the CPU
//! seconds both sides used together; then, when python3-libtorrent is importable by
//! /usr/bin/python3, the same transfer between two libtorrent sessions, and the ratio.
//!
//!   cargo bench -p wire --bench transfer                 # 1 GiB
//!   BENCH_MB=256 cargo bench -p wire --bench transfer    # smaller
//!   BENCH_SKIP_LIBTORRENT=1 ...                          # ours only

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wire::create::{create_torrent, CreateOptions};
use wire::metainfo::Metainfo;
use wire::session::{SessionConfig, Source, Torrent};

const PIECE: u64 = 1024 * 1024;

/// User + system CPU seconds of this process so far, from /proc/self/stat (fields 14 and
/// 15, in clock ticks; Linux uses 100 ticks per second for this interface).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the ")" the fields start at field 3 (state), so utime (14) is index 11.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn write_payload(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn loopback(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 99, last], 0))
}

async fn ours(meta: Metainfo, seed_dir: &Path, leech_dir: &Path, size: u64) -> (f64, f64) {
    let cfg = |last| SessionConfig {
        listen: Some(loopback(last)),
        ..SessionConfig::default()
    };
    let seeder = Torrent::start(
        Source::Metainfo(Box::new(meta.clone())),
        seed_dir.into(),
        cfg(1),
    )
    .await
    .unwrap();
    assert!(seeder.stats().complete, "seeder has the data");
    let mut leecher = Torrent::start(Source::Metainfo(Box::new(meta)), leech_dir.into(), cfg(2))
        .await
        .unwrap();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    leecher.add_peer(seeder.listen_addr().unwrap());
    tokio::time::timeout(Duration::from_secs(600), leecher.wait_complete())
        .await
        .expect("transfer within 10 min")
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(leecher.stats().bytes_left, 0);
    leecher.shutdown().await;
    seeder.shutdown().await;
    (size as f64 / secs / 1e6, cpu)
}

/// One libtorrent session per process, as in real use. `seed`: prints its port when
/// seeding, then its CPU seconds since then when stdin closes. `get`: connects to the
/// seeder, prints wall seconds and CPU seconds of the transfer. Performance warnings and
/// errors libtorrent raises go to stderr, so a slow run says why.
///
/// Settings are libtorrent 2.0 defaults except the ones listed, each with its reason.
/// The one that matters for speed: libtorrent dials every new peer over uTP first (it
/// assumes peers support uTP), and uTP over loopback moves only ~6 MB/s here at low CPU;
/// our node speaks TCP only, so the comparison is TCP against TCP.
const LT_SCRIPT: &str = r#"
import resource, sys, time
import libtorrent as lt
role, torrent, save = sys.argv[1], sys.argv[2], sys.argv[3]
ip = "127.0.98.1" if role == "seed" else "127.0.98.2"
cat = lt.alert.category_t
ses = lt.session({
    # an explicit loopback IP: the default 0.0.0.0 would listen on every interface
    "listen_interfaces": ip + ":0",
    # no peer discovery: the leecher is given the seeder's address, nothing leaves lo
    "enable_dht": False, "enable_lsd": False,
    # no port mapping: there is no router to ask on loopback
    "enable_upnp": False, "enable_natpmp": False,
    # TCP only, as our side: by default libtorrent dials uTP first (~6 MB/s on loopback)
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    # both peers are 127.x; libtorrent otherwise keys peers by IP alone
    "allow_multiple_connections_per_ip": True,
    # loopback peers come and go in a test; the default waits 60 s before a retry
    "min_reconnect_time": 1, "max_failcount": 100,
    # report why a run is slow (performance_alert) and what failed (errors)
    "alert_mask": cat.performance_warning | cat.error_notification | cat.status_notification,
})
h = ses.add_torrent({"ti": lt.torrent_info(torrent), "save_path": save})
deadline = time.time() + 600
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
seen = set()
def drain():
    # returns True once the torrent has finished downloading
    done = False
    for a in ses.pop_alerts():
        if isinstance(a, lt.torrent_finished_alert):
            done = True
        elif a.category() & (cat.performance_warning | cat.error_notification):
            if a.message() not in seen:
                seen.add(a.message())
                print("libtorrent", role, type(a).__name__ + ":", a.message(), file=sys.stderr)
    return done
if role == "seed":
    # before the clock starts: the seeder checks (hashes) the payload it was given
    while not h.status().is_seeding:
        assert time.time() < deadline, "seed check"
        drain()
        time.sleep(0.05)
    drain()
    c0 = cpu()
    print(ses.listen_port(), flush=True)
    sys.stdin.read()
    drain()
    print(cpu() - c0, flush=True)
else:
    port = int(sys.argv[4])
    c0, t0 = cpu(), time.time()
    h.connect_peer(("127.0.98.1", port))
    # block on alerts (as a real client does) instead of polling the torrent's status
    while not drain():
        assert time.time() < deadline, "transfer"
        ses.wait_for_alert(1000)
    secs, used = time.time() - t0, cpu() - c0
    assert h.status().is_seeding, "finished but not complete"
    print(secs, used, flush=True)
"#;

fn libtorrent(torrent: &Path, seed_dir: &Path, leech_dir: &Path, size: u64) -> Option<(f64, f64)> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", "import libtorrent"])
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        println!("libtorrent: skipped (python3-libtorrent not importable by {py})");
        return None;
    }
    let mut seed = Command::new(py)
        .args(["-c", LT_SCRIPT, "seed"])
        .arg(torrent)
        .arg(seed_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut out = BufReader::new(seed.stdout.take()?);
    let mut line = String::new();
    out.read_line(&mut line).ok()?;
    let port = line.trim().to_string();
    let get = Command::new(py)
        .args(["-c", LT_SCRIPT, "get"])
        .arg(torrent)
        .arg(leech_dir)
        .arg(&port)
        .output()
        .ok()?;
    drop(seed.stdin.take()); // the seeder reports its CPU and exits
    line.clear();
    out.read_line(&mut line).ok()?;
    let seed_cpu: f64 = line.trim().parse().ok()?;
    let _ = seed.wait();
    let warnings = String::from_utf8_lossy(&get.stderr);
    if !get.status.success() {
        println!("libtorrent: failed: {warnings}");
        return None;
    }
    // libtorrent's performance warnings, if any (the seeder's go straight to stderr)
    eprint!("{warnings}");
    let text = String::from_utf8_lossy(&get.stdout);
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    let (secs, get_cpu) = (it.next()?, it.next()?);
    Some((size as f64 / secs / 1e6, seed_cpu + get_cpu))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes; nothing to list
    }
    let mb: u64 = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mb * 1024 * 1024;
    let root = tempfile::tempdir().unwrap();
    let seed_dir = root.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    write_payload(&seed_dir.join("payload.bin"), size);
    println!(
        "transfer: {mb} MiB, 1 seeder -> 1 leecher over loopback TCP, {} KiB pieces",
        PIECE / 1024
    );

    let created = create_torrent(
        &seed_dir.join("payload.bin"),
        &CreateOptions {
            piece_length: Some(PIECE),
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    let torrent_file = root.path().join("payload.torrent");
    std::fs::write(&torrent_file, &created.bytes).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let leech_dir = root.path().join("leech-ours");
    let (ours_mbs, ours_cpu) = rt.block_on(ours(created.metainfo, &seed_dir, &leech_dir, size));
    println!("swarm:      {ours_mbs:8.1} MB/s  {ours_cpu:6.2} CPU s (both sides, one process)");
    let _ = std::fs::remove_dir_all(&leech_dir);

    if std::env::var("BENCH_SKIP_LIBTORRENT").is_ok() {
        return;
    }
    let lt_dir = root.path().join("leech-lt");
    std::fs::create_dir_all(&lt_dir).unwrap();
    if let Some((lt_mbs, lt_cpu)) = libtorrent(&torrent_file, &seed_dir, &lt_dir, size) {
        println!("libtorrent: {lt_mbs:8.1} MB/s  {lt_cpu:6.2} CPU s (both sides, two processes)");
        println!(
            "ratio swarm/libtorrent: throughput {:.2}x, CPU {:.2}x",
            ours_mbs / lt_mbs,
            ours_cpu / lt_cpu
        );
    }
}
