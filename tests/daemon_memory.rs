//! What a `swarm daemon` costs in memory: 1,000 torrents loaded (each seeding a small
//! file from the output directory, added over the API as .torrent bodies), then 200
//! connected peers (raw BitTorrent handshakes, one per torrent). Prints the resident set
//! size per idle torrent and per connected peer, and fails if either is far beyond what a
//! daemon should cost (1 MiB per torrent, 1 MiB per peer). Then a stop and a restart with
//! all 1,000, timed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::{swarm_bin, test_payload, wait_until_every, DaemonProc};

const TORRENTS: usize = 1000;
const PEERS: usize = 200;
const LIMIT: Duration = Duration::from_secs(300);

/// Resident set size of a process, in bytes (Linux `/proc/PID/status`).
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// CPU time (user + system) of a process so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Torrents listed by the daemon in `state`, and peers connected over all of them.
fn counts(d: &DaemonProc, state: &str) -> (usize, u64) {
    let (st, v) = d.get("/api/torrents");
    assert_eq!(st, 200);
    let all = v["torrents"].as_array().unwrap();
    let n = all.iter().filter(|t| t["state"] == state).count();
    let peers = all
        .iter()
        .map(|t| t["peers_connected"].as_u64().unwrap_or(0))
        .sum();
    (n, peers)
}

#[test]
fn memory_per_idle_torrent_and_per_connected_peer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // 1,000 small files, each its own torrent, already in the output directory.
    let mut torrents = Vec::new();
    for i in 0..TORRENTS {
        let path = out.join(format!("file-{i:04}.bin"));
        std::fs::write(&path, test_payload(32 * 1024 + i, i as u64 + 1)).unwrap();
        let opts = wire::create::CreateOptions {
            piece_length: Some(16 * 1024),
            threads: Some(1),
            ..Default::default()
        };
        let made = wire::create::create_torrent(&path, &opts, &|_| {}).unwrap();
        torrents.push((made.metainfo.info_hash, made.bytes));
    }
    let d = DaemonProc::start(swarm_bin!(), &dir.path().join("state"), &out, &["--no-dht"]);
    let pid = d.proc.0.id();
    // Settle: the empty daemon (runtime, session, API) is the baseline.
    let _ = counts(&d, "seeding");
    let base = rss(pid);
    for (ih, bytes) in &torrents {
        let (st, v) = d.call("POST", "/api/torrents", "application/x-bittorrent", bytes);
        assert_eq!(st, 201, "{ih}: {v}");
    }
    let mut last = (0, 0);
    let all_seeding = wait_until_every(LIMIT, Duration::from_millis(500), || {
        last = counts(&d, "seeding");
        last.0 == TORRENTS
    });
    assert!(all_seeding, "only {} of {TORRENTS} seeding", last.0);
    let loaded = rss(pid);
    let per_torrent = loaded.saturating_sub(base) as f64 / TORRENTS as f64;
    // CPU of the idle daemon with its 1,000 torrents, over 3 s with no API calls.
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(3)); // a measuring window, not a wait for a condition
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();

    // 200 peers: a BitTorrent handshake each, to 200 different torrents, kept open.
    let mut conns = Vec::new();
    for (i, (ih, _)) in torrents.iter().take(PEERS).enumerate() {
        let mut s = TcpStream::connect(d.peers).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hs = Vec::with_capacity(68);
        hs.push(19u8);
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0u8; 8]);
        hs.extend_from_slice(ih.as_bytes());
        hs.extend_from_slice(format!("-MT0001-{i:012}").as_bytes());
        s.write_all(&hs).unwrap();
        let mut reply = [0u8; 68];
        s.read_exact(&mut reply).expect("the daemon's handshake");
        assert_eq!(&reply[28..48], ih.as_bytes());
        conns.push(s);
    }
    let peers_up = wait_until_every(LIMIT, Duration::from_millis(500), || {
        last = counts(&d, "seeding");
        last.1 >= PEERS as u64
    });
    assert!(peers_up, "only {} of {PEERS} peers connected", last.1);
    let with_peers = rss(pid);
    let per_peer = with_peers.saturating_sub(loaded) as f64 / PEERS as f64;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "daemon memory: {:.1} MiB empty, {:.1} MiB with {TORRENTS} idle torrents \
         ({:.1} KiB per torrent, {:.0}% of a core when idle), {:.1} MiB with {PEERS} \
         connected peers ({:.1} KiB per peer)",
        mib(base),
        mib(loaded),
        per_torrent / 1024.0,
        100.0 * idle_cpu,
        mib(with_peers),
        per_peer / 1024.0
    );
    assert!(
        per_torrent < 1024.0 * 1024.0,
        "{per_torrent} bytes per torrent"
    );
    assert!(per_peer < 1024.0 * 1024.0, "{per_peer} bytes per peer");
    drop(conns);

    // Stop (saving the list and every torrent's resume data) and start again: all 1,000
    // come back seeding, trusted from their resume data.
    let t0 = std::time::Instant::now();
    let status = d.terminate(LIMIT);
    let stop = t0.elapsed();
    assert!(status.success(), "{status}");
    let t0 = std::time::Instant::now();
    let d = DaemonProc::start(swarm_bin!(), &dir.path().join("state"), &out, &["--no-dht"]);
    let back = wait_until_every(LIMIT, Duration::from_millis(200), || {
        last = counts(&d, "seeding");
        last.0 == TORRENTS
    });
    assert!(
        back,
        "only {} of {TORRENTS} seeding after the restart",
        last.0
    );
    println!(
        "daemon with {TORRENTS} torrents: stopped in {:.2} s, restarted to all seeding in {:.2} s",
        stop.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
