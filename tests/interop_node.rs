//! `swarm` and libtorrent exchanging a torrent by magnet link through the DHT only: no
//! tracker, no peer hints. Our DHT node is the only bootstrap node of both sides.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use tests::{
    free_port, next_loopback_ip, require_libtorrent, run_python, swarm_bin, swarm_command,
    test_payload, write_file,
};

/// Makes a v1-only .torrent of `dir/name` with libtorrent; returns its path.
fn lt_make_torrent(python: &str, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{name}.torrent"));
    let script = r#"
import sys, libtorrent as lt
root, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
fs = lt.file_storage()
lt.add_files(fs, root + "/" + name)
ct = lt.create_torrent(fs, 0, flags=lt.create_torrent.v1_only)
lt.set_piece_hashes(ct, root)
open(out, "wb").write(lt.bencode(ct.generate()))
"#;
    run_python(
        python,
        script,
        &[dir.to_str().unwrap(), name, out.to_str().unwrap()],
        Duration::from_secs(60),
    );
    out
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// A libtorrent peer on a fresh loopback IP, joined to the DHT of `boot`, running lt_peer.py
/// `mode` for at most `timeout` seconds; with its event lines.
fn lt_peer(
    python: &str,
    boot: std::net::SocketAddr,
    timeout: u32,
    mode: &[String],
) -> (tests::Reaper, std::sync::mpsc::Receiver<String>) {
    let lt_ip = next_loopback_ip();
    let mut args = vec![
        s("--listen"),
        format!("{lt_ip}:{}", free_port(lt_ip)),
        s("--bootstrap"),
        s(boot),
        s("--timeout"),
        s(timeout),
    ];
    args.extend_from_slice(mode);
    tests::spawn_lt_peer(python, &args)
}

/// A libtorrent peer fetching `magnet` into `out_dir` through the DHT of `boot`.
fn lt_get(
    python: &str,
    boot: std::net::SocketAddr,
    magnet: String,
    out_dir: &std::path::Path,
) -> (tests::Reaper, std::sync::mpsc::Receiver<String>) {
    let mode = [
        s("get"),
        s("--magnet"),
        magnet,
        s("--save"),
        out_dir.display().to_string(),
    ];
    lt_peer(python, boot, 100, &mode)
}

#[test]
fn swarm_get_fetches_from_a_libtorrent_seed_through_the_dht() {
    get_from_libtorrent_seed(false);
}

/// The same from a libtorrent that speaks uTP only and never dials anyone (no DHT): TCP
/// is refused, so swarm dials the peer again over uTP on the same port.
#[test]
fn swarm_get_fetches_from_a_utp_only_libtorrent_seed() {
    get_from_libtorrent_seed(true);
}

fn get_from_libtorrent_seed(utp_only: bool) {
    let python = require_libtorrent!();
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(2 * 1024 * 1024 + 777, 21);
    let seed_dir = dir.path().join("seed");
    write_file(&seed_dir, "from_lt.bin", &data);
    let torrent = lt_make_torrent(python, &seed_dir, "from_lt.bin");
    let lt_ip = next_loopback_ip();
    let lt_addr = format!("{lt_ip}:{}", free_port(lt_ip));
    let (_lt, lines) = tests::spawn_lt_peer(
        python,
        &[
            s("--listen"),
            lt_addr.clone(),
            s("--bootstrap"),
            s(boot.addr),
            s("--timeout"),
            s(150),
            s(if utp_only {
                "--utp-only"
            } else {
                "--status-interval=1"
            }),
            s(if utp_only {
                "--no-dht"
            } else {
                "--announce-every=2"
            }),
            s("seed"),
            s("--torrent"),
            torrent.display().to_string(),
            s("--save"),
            seed_dir.display().to_string(),
        ],
    );
    tests::wait_line(&lines, "\"ready\"", Duration::from_secs(30));
    let meta = wire::metainfo::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}", meta.info_hash.to_hex());
    let magnet = if utp_only {
        format!("{magnet}&x.pe={lt_addr}")
    } else {
        magnet
    };
    let out_dir = dir.path().join("out");
    let ip = next_loopback_ip();
    let child = swarm_command(swarm_bin!())
        .arg("get")
        .arg(&magnet)
        .arg("-o")
        .arg(&out_dir)
        .args([
            "--bind",
            &ip.to_string(),
            "--port",
            &free_port(ip).to_string(),
        ])
        .args(["--bootstrap", &boot.addr.to_string(), "--state-dir"])
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait_with_limit(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "swarm get from libtorrent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(out_dir.join("from_lt.bin")).unwrap(), data);
}

#[test]
fn libtorrent_fetches_from_swarm_seed_through_the_dht() {
    let python = require_libtorrent!();
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(2 * 1024 * 1024 + 4321, 22);
    let file = write_file(&dir.path().join("seed"), "from_swarm.bin", &data);
    let ip = next_loopback_ip();
    let mut seeder = swarm_command(swarm_bin!())
        .arg("seed")
        .arg(&file)
        .args([
            "--bind",
            &ip.to_string(),
            "--port",
            &free_port(ip).to_string(),
        ])
        .args(["--bootstrap", &boot.addr.to_string(), "--state-dir"])
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(seeder.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _seeder = tests::Reaper(seeder);
    let magnet = first.trim().to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet:?}");
    let out_dir = dir.path().join("lt_out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (_lt, lines) = lt_get(python, boot.addr, magnet, &out_dir);
    tests::wait_line(&lines, "\"done\"", Duration::from_secs(110));
    assert_eq!(std::fs::read(out_dir.join("from_swarm.bin")).unwrap(), data);
}

/// A libtorrent that speaks uTP only (TCP off both ways) fetches from `swarm seed`: the
/// seed accepts uTP on its DHT's UDP port (same number as its TCP port).
#[test]
fn a_utp_only_libtorrent_fetches_from_swarm_seed() {
    let python = require_libtorrent!();
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(3 * 1024 * 1024 + 77, 23);
    let file = write_file(&dir.path().join("seed"), "over_utp.bin", &data);
    let ip = next_loopback_ip();
    let port = free_port(ip);
    let mut seeder = swarm_command(swarm_bin!())
        .arg("seed")
        .arg(&file)
        .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
        .args(["--bootstrap", &boot.addr.to_string(), "--state-dir"])
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(seeder.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _seeder = tests::Reaper(seeder);
    let magnet = first.trim().to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet:?}");
    let out_dir = dir.path().join("lt_out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mode = [
        s("--utp-only"),
        s("--peer"),
        format!("{ip}:{port}"),
        s("get"),
        s("--magnet"),
        magnet,
        s("--save"),
        out_dir.display().to_string(),
    ];
    let (_lt, lines) = lt_peer(python, boot.addr, 100, &mode);
    tests::wait_line(&lines, "\"done\"", Duration::from_secs(110));
    assert_eq!(std::fs::read(out_dir.join("over_utp.bin")).unwrap(), data);
}

/// The strings of the JSON list `"key": [...]` in an lt_peer.py event line.
fn json_list(line: &str, key: &str) -> Vec<String> {
    let start = format!("\"{key}\": [");
    let at = line
        .find(&start)
        .unwrap_or_else(|| panic!("no {key:?}: {line}"))
        + start.len();
    let end = at + line[at..].find(']').expect("closing ]");
    line[at..end]
        .split(',')
        .map(|x| x.trim().trim_matches('"').to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// The info-hash (lowercase hex) of a `magnet:?xt=urn:btih:HASH&...` link.
fn btih(magnet: &str) -> String {
    let rest = magnet
        .strip_prefix("magnet:?xt=urn:btih:")
        .unwrap_or_else(|| panic!("not a btih magnet: {magnet:?}"));
    rest.split('&').next().unwrap().to_ascii_lowercase()
}

#[test]
fn one_swarm_seed_process_serves_two_torrents_to_libtorrent_on_one_port() {
    let python = require_libtorrent!();
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let data_a = test_payload(3 * 512 * 1024, 31);
    let data_b = test_payload(2 * 1024 * 1024, 32);
    let file_a = write_file(&seed_dir, "two_a.bin", &data_a);
    let file_b = write_file(&seed_dir, "two_b.bin", &data_b);
    let ip = next_loopback_ip();
    let port = free_port(ip);
    // ONE process seeds both torrents: with its single --port, every connection libtorrent
    // makes to it, for either torrent, goes to ip:port.
    let mut seeder = swarm_command(swarm_bin!())
        .arg("seed")
        .arg(&file_a)
        .arg(&file_b)
        .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
        .args(["--bootstrap", &boot.addr.to_string(), "--state-dir"])
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = seeder.stdout.take().unwrap();
    let seeder = tests::Reaper(seeder);
    // One magnet line per PATH, in order, printed once the port is bound. Read on a thread
    // so that the wait is bounded even if the seeder hangs before printing.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let magnets: Vec<String> = (0..2)
        .map(|_| tests::wait_line(&rx, "magnet:?xt=urn:btih:", Duration::from_secs(60)))
        .map(|l| l.trim().to_string())
        .collect();
    let hashes: Vec<String> = magnets.iter().map(|m| btih(m)).collect();
    assert_ne!(
        hashes[0], hashes[1],
        "two payloads, one info-hash: {magnets:?}"
    );
    // The lines are in PATH order: each magnet names its own file.
    assert!(magnets[0].contains("two_a.bin"), "{magnets:?}");
    assert!(magnets[1].contains("two_b.bin"), "{magnets:?}");

    // lt_peer.py fetches one torrent per process: one libtorrent peer per magnet, both at
    // once, each knowing only the bootstrap node (the DHT gives them the seeder).
    let mut fetchers = Vec::new();
    for (i, magnet) in magnets.iter().enumerate() {
        let out_dir = dir.path().join(format!("lt_out_{i}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let (lt, lines) = lt_get(python, boot.addr, magnet.clone(), &out_dir);
        fetchers.push((lt, lines, out_dir));
    }
    let seeder_addr = format!("{ip}:{port}");
    for ((_lt, lines, out_dir), (name, data)) in fetchers
        .iter()
        .zip([("two_a.bin", &data_a), ("two_b.bin", &data_b)])
    {
        let done = tests::wait_line(lines, "\"done\"", Duration::from_secs(110));
        assert!(done.contains(&format!("\"name\": \"{name}\"")), "{done}");
        assert_eq!(&std::fs::read(out_dir.join(name)).unwrap(), data, "{name}");
        // Every block came from the seeder: libtorrent's connection to ip:port ("sources"),
        // or the seeder's own connection to libtorrent ("sources_in", from ip and a port of
        // the kernel's), when the seeder's DHT lookup found libtorrent first.
        let (out, inc) = (json_list(&done, "sources"), json_list(&done, "sources_in"));
        assert!(
            !out.is_empty() || !inc.is_empty(),
            "{name}: no blocks: {done}"
        );
        assert!(out.iter().all(|a| *a == seeder_addr), "{name}: {done}");
        assert!(
            inc.iter().all(|a| a.starts_with(&format!("{ip}:"))),
            "{name}: {done}"
        );
    }
    // And libtorrent's own DHT lookups find the seeder, for both info-hashes, at the one
    // ip:port it listens on.
    let lookups: Vec<_> = hashes
        .iter()
        .map(|h| {
            let mode = [
                s("dht-get-peers"),
                s("--info-hash"),
                h.clone(),
                s("--want"),
                s(100),
            ];
            lt_peer(python, boot.addr, 60, &mode)
        })
        .collect();
    for ((_lt, lines), h) in lookups.iter().zip(&hashes) {
        let reply = tests::wait_line(
            lines,
            &format!("\"{seeder_addr}\""),
            Duration::from_secs(60),
        );
        assert!(reply.contains(h.as_str()), "{h}: {reply}");
    }
    drop(seeder);
}
