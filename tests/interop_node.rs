//! `swarm` and libtorrent exchanging a torrent by magnet link through the DHT only: no
//! tracker, no peer hints. Our DHT node is the only bootstrap node of both sides.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tests::{
    free_port, next_loopback_ip, require_libtorrent, run_python, swarm_bin, swarm_command,
    test_payload, write_file,
};

const LT_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lt_peer.py");

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Our bootstrap node: the `swarm bootstrap`-like DHT node, in this process.
struct Bootstrap {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
    _node: dht::Node,
}

fn bootstrap_node() -> Bootstrap {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ip = next_loopback_ip();
    let node = rt.block_on(async {
        dht::Node::bind(dht::NodeConfig::new(
            SocketAddr::new(ip.into(), 0),
            dht::Config::loopback(vec![]),
        ))
        .await
        .unwrap()
    });
    Bootstrap {
        addr: node.local_addr(),
        _rt: rt,
        _node: node,
    }
}

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

/// Starts lt_peer.py with `args`; returns the process and a channel of its JSON lines.
fn lt_peer(python: &str, args: &[String]) -> (Reaper, mpsc::Receiver<String>) {
    let mut child = std::process::Command::new(python)
        .arg(LT_PEER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn lt_peer.py");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Reaper(child), rx)
}

/// Waits for a line containing `needle`; panics with what was seen after `limit`.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let tail: Vec<_> = seen.iter().rev().take(10).rev().collect();
    panic!("no line with {needle:?} within {limit:?}; last lines: {tail:#?}");
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

#[test]
fn swarm_get_fetches_from_a_libtorrent_seed_through_the_dht() {
    let python = require_libtorrent!();
    let boot = bootstrap_node();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(2 * 1024 * 1024 + 777, 21);
    let seed_dir = dir.path().join("seed");
    write_file(&seed_dir, "from_lt.bin", &data);
    let torrent = lt_make_torrent(python, &seed_dir, "from_lt.bin");
    let lt_ip = next_loopback_ip();
    let (_lt, lines) = lt_peer(
        python,
        &[
            s("--listen"),
            format!("{lt_ip}:{}", free_port(lt_ip)),
            s("--bootstrap"),
            s(boot.addr),
            s("--timeout"),
            s(150),
            s("seed"),
            s("--torrent"),
            torrent.display().to_string(),
            s("--save"),
            seed_dir.display().to_string(),
        ],
    );
    wait_line(&lines, "\"ready\"", Duration::from_secs(30));
    let meta = wire::metainfo::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}", meta.info_hash.to_hex());
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
    let boot = bootstrap_node();
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
    let _seeder = Reaper(seeder);
    let magnet = first.trim().to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet:?}");
    let out_dir = dir.path().join("lt_out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let lt_ip = next_loopback_ip();
    let (_lt, lines) = lt_peer(
        python,
        &[
            s("--listen"),
            format!("{lt_ip}:{}", free_port(lt_ip)),
            s("--bootstrap"),
            s(boot.addr),
            s("--timeout"),
            s(100),
            s("get"),
            s("--magnet"),
            magnet,
            s("--save"),
            out_dir.display().to_string(),
        ],
    );
    wait_line(&lines, "\"done\"", Duration::from_secs(110));
    assert_eq!(std::fs::read(out_dir.join("from_swarm.bin")).unwrap(), data);
}
