//! `swarm get`, `swarm seed` and `swarm demo` as real processes on loopback: a fetch by
//! magnet link through the DHT only, peer hints without the DHT, the demo, and hostile
//! input (bad magnet links, traversal in a .torrent, a port in use).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use tests::{free_port, next_loopback_ip, swarm_bin, swarm_command, test_payload, write_file};

/// Starts `swarm seed` and returns it with the magnet link it prints first on stdout.
fn start_seeder(data: &Path, args: &[String], state: &Path) -> (tests::Reaper, String) {
    let (reaper, mut magnets) = start_seeder_of(&[data], args, state);
    (reaper, magnets.remove(0))
}

/// Starts one `swarm seed` of every path in `data`; returns it with the magnet links it
/// prints, one line per path.
fn start_seeder_of(data: &[&Path], args: &[String], state: &Path) -> (tests::Reaper, Vec<String>) {
    let mut child = swarm_command(swarm_bin!())
        .arg("seed")
        .args(data)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn swarm seed");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let reaper = tests::Reaper(child);
    let magnets = data
        .iter()
        .map(|_| {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("swarm seed printed a magnet link per path");
            let magnet = line.trim().to_string();
            assert!(
                magnet.starts_with("magnet:?xt=urn:btih:") && magnet.len() >= 20 + 40,
                "unexpected line {magnet:?}"
            );
            magnet
        })
        .collect();
    (reaper, magnets)
}

fn run_get(args: &[String], limit: Duration) -> std::process::Output {
    let child = swarm_command(swarm_bin!())
        .arg("get")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarm get");
    tests::wait_with_limit(child, limit)
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// `--bind IP --port PORT --no-dht`: a node reached only by hints.
fn without_dht(ip: impl ToString, port: u16) -> [String; 5] {
    [s("--bind"), s(ip), s("--port"), s(port), s("--no-dht")]
}

#[test]
fn get_by_magnet_through_the_dht_only() {
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(3 * 1024 * 1024 + 12345, 11);
    let file = write_file(&dir.path().join("seed"), "payload.bin", &data);
    let seed_ip = next_loopback_ip();
    let seed_port = free_port(seed_ip);
    let (_seeder, magnet) = start_seeder(
        &file,
        &[
            s("--bind"),
            s(seed_ip),
            s("--port"),
            s(seed_port),
            s("--bootstrap"),
            s(boot.addr),
        ],
        &dir.path().join("state-seed"),
    );
    // No x.pe hint: the magnet has only the info-hash and the name.
    assert!(!magnet.contains("x.pe"), "{magnet}");
    let out_dir = dir.path().join("out");
    let leech_ip = next_loopback_ip();
    let out = run_get(
        &[
            magnet,
            s("-o"),
            out_dir.display().to_string(),
            s("--bind"),
            s(leech_ip),
            s("--port"),
            s(free_port(leech_ip)),
            s("--bootstrap"),
            s(boot.addr),
            s("--state-dir"),
            dir.path().join("state-leech").display().to_string(),
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "swarm get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(out_dir.join("payload.bin")).unwrap(), data);
}

#[test]
fn get_without_dht_from_a_peer_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(700_000, 12);
    let file = write_file(&dir.path().join("seed"), "hinted.bin", &data);
    let seed_ip = next_loopback_ip();
    let seed_port = free_port(seed_ip);
    let (_seeder, magnet) = start_seeder(
        &file,
        &without_dht(seed_ip, seed_port),
        &dir.path().join("state-seed"),
    );
    let with_hint = format!("{magnet}&x.pe={seed_ip}:{seed_port}");
    let out_dir = dir.path().join("out");
    let leech_ip = next_loopback_ip();
    let out = run_get(
        &[
            with_hint,
            s("-o"),
            out_dir.display().to_string(),
            s("--bind"),
            s(leech_ip),
            s("--port"),
            s(0),
            s("--no-dht"),
            s("--state-dir"),
            dir.path().join("state-leech").display().to_string(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "swarm get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(out_dir.join("hinted.bin")).unwrap(), data);
}

/// `--transport utp` on both sides, without the DHT: the seed refuses TCP, so the whole
/// exchange (dial, handshake, metadata, pieces) runs over uTP on the UDP port.
#[test]
fn get_over_utp_only_from_a_seed_that_refuses_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(2_500_000, 13);
    let file = write_file(&dir.path().join("seed"), "over_utp.bin", &data);
    let seed_ip = next_loopback_ip();
    let seed_port = free_port(seed_ip);
    let mut args = without_dht(seed_ip, seed_port).to_vec();
    args.extend([s("--transport"), s("utp")]);
    let (_seeder, magnet) = start_seeder(&file, &args, &dir.path().join("state-seed"));
    // TCP connects (the listener holds the port) but is dropped at once.
    let mut tcp = std::net::TcpStream::connect((seed_ip, seed_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut tcp, &mut byte).unwrap_or(0),
        0,
        "TCP served"
    );
    let with_hint = format!("{magnet}&x.pe={seed_ip}:{seed_port}");
    let out_dir = dir.path().join("out");
    let leech_ip = next_loopback_ip();
    let out = run_get(
        &[
            with_hint,
            s("-o"),
            out_dir.display().to_string(),
            s("--bind"),
            s(leech_ip),
            s("--port"),
            s(0),
            s("--no-dht"),
            s("--transport"),
            s("utp"),
            s("--state-dir"),
            dir.path().join("state-leech").display().to_string(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "swarm get over uTP failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(out_dir.join("over_utp.bin")).unwrap(), data);
}

/// `swarm seed A B` serves both on one port; `swarm get M1 M2` fetches both at once from
/// it and ends with who sent what (address, client, bytes, share).
#[test]
fn get_two_torrents_at_once_from_one_seed_process() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (test_payload(600_000, 31), test_payload(900_001, 32));
    let fa = write_file(&dir.path().join("seed"), "first.bin", &a);
    let fb = write_file(&dir.path().join("seed"), "second.bin", &b);
    let seed_ip = next_loopback_ip();
    let seed_port = free_port(seed_ip);
    let (_seeder, magnets) = start_seeder_of(
        &[&fa, &fb],
        &without_dht(seed_ip, seed_port),
        &dir.path().join("state-seed"),
    );
    assert_ne!(magnets[0], magnets[1]);
    let out_dir = dir.path().join("out");
    let leech_ip = next_loopback_ip();
    let mut args = magnets.clone();
    args.extend([
        s("-o"),
        out_dir.display().to_string(),
        s("--bind"),
        s(leech_ip),
        s("--port"),
        s(0),
        s("--no-dht"),
        s("--peer"),
        format!("{seed_ip}:{seed_port}"),
        s("--state-dir"),
        dir.path().join("state-leech").display().to_string(),
    ]);
    let out = run_get(&args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "swarm get failed: {stderr}");
    assert_eq!(std::fs::read(out_dir.join("first.bin")).unwrap(), a);
    assert_eq!(std::fs::read(out_dir.join("second.bin")).unwrap(), b);
    // One report per torrent: the one seeder sent everything, under the port it listens on.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("{seed_ip}:{seed_port}")) && l.contains("100.0%"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines.iter().all(|l| l.contains("swarm ")), "{stderr}");
}

#[test]
fn demo_fetches_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let child = swarm_command(swarm_bin!())
        .args([
            "demo",
            "--peers",
            "3",
            "--size",
            "2M",
            "--timeout",
            "90",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait_with_limit(child, Duration::from_secs(150));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified byte for byte"), "{stdout}");
    assert_eq!(
        std::fs::read(dir.path().join("leech/demo.bin")).unwrap(),
        std::fs::read(dir.path().join("seed/demo.bin")).unwrap()
    );
}

/// Runs `swarm ARGS` expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let child = swarm_command(swarm_bin!())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait_with_limit(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "swarm {args:?} succeeded: {stderr}");
    assert!(out.stdout.is_empty(), "stdout not empty for {args:?}");
    stderr
}

#[test]
fn bad_input_gets_one_line_errors() {
    let e = fails(&["get", "magnet:?xt=urn:btih:xyz", "--no-dht"]);
    assert!(e.contains("swarm: error: bad magnet link"), "{e}");
    let e = fails(&["get", "magnet:?dn=nothing", "--no-dht"]);
    assert!(
        e.contains("swarm: error:") && e.contains("info-hash"),
        "{e}"
    );
    let e = fails(&["get", "/no/such/file.torrent", "--no-dht"]);
    assert!(e.contains("not a magnet link"), "{e}");
    let e = fails(&["get", "--port", "notaport", "x"]);
    assert!(e.contains("notaport"), "{e}");
    let e = fails(&["seed", "/no/such/path", "--no-dht"]);
    assert!(
        e.contains("swarm: error:") && e.contains("/no/such/path"),
        "{e}"
    );
}

#[test]
fn torrent_with_path_traversal_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A single-file torrent whose name climbs out of the output directory.
    let mut info = Vec::new();
    bencode::Encoder::new(&mut info)
        .begin_dict()
        .key(b"length")
        .int(16384)
        .key(b"name")
        .bytes(b"../escape.bin")
        .key(b"piece length")
        .int(16384)
        .key(b"pieces")
        .bytes(&[0u8; 20])
        .end();
    let mut torrent = Vec::new();
    bencode::Encoder::new(&mut torrent)
        .begin_dict()
        .key(b"info")
        .raw(&info)
        .end();
    let tfile = write_file(dir.path(), "evil.torrent", &torrent);
    let out_dir = dir.path().join("out");
    let e = fails(&[
        "get",
        tfile.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
        "--no-dht",
        "--peer",
        "127.0.0.1:9",
    ]);
    assert!(e.contains("not a valid .torrent"), "{e}");
    assert!(!dir.path().join("escape.bin").exists());
    assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).unwrap().next().is_none());
}

#[test]
fn port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "x.bin", &test_payload(50_000, 3));
    let ip = next_loopback_ip();
    let taken = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = fails(&[
        "seed",
        file.to_str().unwrap(),
        "--bind",
        &ip.to_string(),
        "--port",
        &port.to_string(),
        "--no-dht",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ]);
    let last = e.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("swarm: error:")
            && last.contains("cannot listen")
            && last.contains(&port.to_string()),
        "{e}"
    );
}

#[test]
fn kill_9_mid_download_then_restart_completes_with_verified_data() {
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(3 * 1024 * 1024, 13);
    let file = write_file(&dir.path().join("seed"), "killed.bin", &data);
    let seed_ip = next_loopback_ip();
    // Rate-limited so the first leecher is surely killed mid-transfer.
    let (_seeder, magnet) = start_seeder(
        &file,
        &[
            s("--bind"),
            s(seed_ip),
            s("--port"),
            s(free_port(seed_ip)),
            s("--bootstrap"),
            s(boot.addr),
            s("--limit-up"),
            s("300K"),
        ],
        &dir.path().join("state-seed"),
    );
    let out_dir = dir.path().join("out");
    let leech_ip = next_loopback_ip();
    let leech_port = free_port(leech_ip);
    let get_args = vec![
        magnet,
        s("-o"),
        out_dir.display().to_string(),
        s("--bind"),
        s(leech_ip),
        s("--port"),
        s(leech_port),
        s("--bootstrap"),
        s(boot.addr),
        s("--state-dir"),
        dir.path().join("state-leech").display().to_string(),
    ];
    let first = swarm_command(swarm_bin!())
        .arg("get")
        .args(&get_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = tests::Reaper(first);
    let target = out_dir.join("killed.bin");
    assert!(
        tests::wait_until(Duration::from_secs(60), || target.exists()),
        "the first leecher never started writing"
    );
    // Let some pieces land (the limit makes the whole file take about 10 s), then kill -9.
    let chunks_done = |d: &[u8]| {
        d.chunks(64 * 1024)
            .zip(data.chunks(64 * 1024))
            .filter(|(a, b)| a == b)
            .count()
    };
    assert!(tests::wait_until(Duration::from_secs(30), || {
        std::fs::read(&target).is_ok_and(|d| chunks_done(&d) >= 4)
    }));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let partial = std::fs::read(&target).unwrap_or_default();
    assert_ne!(
        partial, data,
        "the transfer finished before the kill; the test proves nothing"
    );
    let out = run_get(&get_args, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "restarted get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

/// Routers that do not resolve (gone, or DNS not up yet): the progress line says so and
/// that it retries, instead of "0 DHT nodes" and nothing else.
#[test]
fn unresolvable_routers_are_reported_and_retried() {
    let ip = tests::next_loopback_ip();
    let port = tests::free_port(ip);
    let state = tempfile::tempdir().unwrap();
    let mut child = swarm_command(swarm_bin!())
        .arg("get")
        .arg(format!("magnet:?xt=urn:btih:{}", "ab".repeat(20)))
        .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
        .args(["--bootstrap", "no-such-router.invalid:6881"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("-o")
        .arg(state.path().join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarm get");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut found = false;
    while !found && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            found = l.contains("0 DHT nodes (no bootstrap node resolves; retrying in");
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no note about the routers:\n{}", seen.join("\n"));
}
