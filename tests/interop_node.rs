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

#[test]
fn swarm_get_fetches_from_a_libtorrent_seed_through_the_dht() {
    let python = require_libtorrent!();
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(2 * 1024 * 1024 + 777, 21);
    let seed_dir = dir.path().join("seed");
    write_file(&seed_dir, "from_lt.bin", &data);
    let torrent = lt_make_torrent(python, &seed_dir, "from_lt.bin");
    let lt_ip = next_loopback_ip();
    let (_lt, lines) = tests::spawn_lt_peer(
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
    tests::wait_line(&lines, "\"ready\"", Duration::from_secs(30));
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
    let lt_ip = next_loopback_ip();
    let (_lt, lines) = tests::spawn_lt_peer(
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
    tests::wait_line(&lines, "\"done\"", Duration::from_secs(110));
    assert_eq!(std::fs::read(out_dir.join("from_swarm.bin")).unwrap(), data);
}
