//! `swarm` and aria2 (an independent client) exchanging a torrent through the DHT only: no
//! tracker, no peer hints, no local peer discovery, no peer exchange. aria2 binds 0.0.0.0,
//! so every process of a test (our bootstrap node, our peer and aria2) runs inside a network
//! namespace of its own that only has `lo`: nothing leaves it, and its ports are ours alone.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{
    require_aria2, spawn_with_lines, swarm_bin, test_payload, wait_line, write_file, NetNs, Reaper,
};

/// Inside a test's namespace every address and port is free; these are fixed.
const BOOTSTRAP: &str = "127.0.0.1:6000";
const BOOTSTRAP_PORT: u16 = 6000;
const SWARM_PORT: u16 = 6001;
const ARIA2_TCP_PORT: &str = "6881";
const ARIA2_DHT_PORT: &str = "6882";

/// An `aria2c` command in `ns` on the loopback DHT: the bootstrap node is its only entry
/// point, and every other way to find peers is off. Its log goes to `dir/aria2.log`.
fn aria2(ns: &NetNs, dir: &Path) -> Command {
    let mut cmd = ns.command("aria2c");
    cmd.args([
        "--no-conf=true",
        "--enable-dht=true",
        "--enable-dht6=false",
        "--disable-ipv6=true",
    ])
    .arg(format!("--dht-entry-point={BOOTSTRAP}"))
    .arg(format!("--dht-listen-port={ARIA2_DHT_PORT}"))
    .arg(format!("--listen-port={ARIA2_TCP_PORT}"))
    .arg(format!("--dht-file-path={}", dir.join("dht.dat").display()))
    .args([
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--bt-save-metadata=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--log-level=info",
    ])
    .arg(format!("--log={}", dir.join("aria2.log").display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// The last lines of aria2's log, for failure messages.
fn aria2_log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("aria2.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `swarm seed FILE` and `aria2c MAGNET`: aria2 finds the seed through our DHT node, gets the
/// metadata from it (BEP 9) and then every piece.
#[test]
fn aria2_fetches_from_swarm_seed_through_the_dht() {
    let ns = require_aria2!();
    let dir = tempfile::tempdir().unwrap();
    let _boot = ns.start_bootstrap(swarm_bin!(), BOOTSTRAP_PORT, &dir.path().join("boot"));

    // Odd size: the last piece is short.
    let data = test_payload(3 * 1024 * 1024 + 1234, 31);
    let file = write_file(&dir.path().join("seed"), "for_aria2.bin", &data);
    let seed_log = dir.path().join("seed.log");
    let seed = ns.swarm(
        swarm_bin!(),
        &[OsStr::new("seed"), file.as_os_str()],
        SWARM_PORT,
        BOOTSTRAP,
        &dir.path().join("seed-state"),
        &seed_log,
    );
    let (_seed, lines) = spawn_with_lines(seed);
    let magnet = wait_line(&lines, "magnet:", Duration::from_secs(60));
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet:?}");
    assert!(
        !magnet.contains("x.pe=") && !magnet.contains("tr="),
        "{magnet}"
    );

    let out = dir.path().join("aria2-out");
    let mut cmd = aria2(&ns, dir.path());
    cmd.arg(format!("--dir={}", out.display()))
        .args(["--seed-time=0", "--bt-stop-timeout=100"])
        .arg(&magnet);
    let aria2 = Reaper(cmd.spawn().expect("spawn aria2c"));
    let logs = || {
        format!(
            "aria2's log ends:\n{}\nour seed's log:\n{}",
            aria2_log_tail(dir.path()),
            std::fs::read_to_string(&seed_log).unwrap_or_default()
        )
    };
    let status = tests::wait_exit(aria2, Duration::from_secs(120), logs);
    assert!(status.success(), "aria2c failed ({status}); {}", logs());
    assert!(
        std::fs::read(out.join("for_aria2.bin")).unwrap() == data,
        "aria2's copy differs"
    );
}

/// aria2 seeds a two-file torrent (pieces span the files) that it verified itself (`-V`),
/// and `swarm get MAGNET` finds it through the DHT and fetches everything from it.
#[test]
fn swarm_get_fetches_from_an_aria2_seed_through_the_dht() {
    let ns = require_aria2!();
    let dir = tempfile::tempdir().unwrap();
    let _boot = ns.start_bootstrap(swarm_bin!(), BOOTSTRAP_PORT, &dir.path().join("boot"));

    let seed_dir = dir.path().join("seed");
    let a = test_payload(1024 * 1024 + 4321, 32);
    let b = test_payload(700 * 1024 + 5, 33);
    write_file(&seed_dir.join("from_aria2"), "a.bin", &a);
    write_file(&seed_dir.join("from_aria2"), "sub/b.bin", &b);
    let torrent = dir.path().join("from_aria2.torrent");
    let created = tests::swarm_command(swarm_bin!())
        .arg("create")
        .arg(seed_dir.join("from_aria2"))
        .args(["--piece-length", "32K", "-o"])
        .arg(&torrent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let created = tests::wait_with_limit(created, Duration::from_secs(60));
    assert!(created.status.success(), "{created:?}");
    let magnet = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet:?}");

    let mut cmd = aria2(&ns, dir.path());
    cmd.arg(format!("--dir={}", seed_dir.display()))
        // Check the data against the torrent, then seed with no ratio or time limit.
        .args(["-V", "--bt-seed-unverified=false", "--seed-ratio=0.0"])
        .arg(&torrent);
    let _aria2 = Reaper(cmd.spawn().expect("spawn aria2c"));

    let out = dir.path().join("out");
    let get_log = dir.path().join("get.log");
    let mut get = ns.swarm_get(swarm_bin!(), &magnet, SWARM_PORT, BOOTSTRAP, dir.path());
    let logs = || {
        format!(
            "our log:\n{}\naria2's log ends:\n{}",
            std::fs::read_to_string(&get_log).unwrap_or_default(),
            aria2_log_tail(dir.path())
        )
    };
    let get = Reaper(get.spawn().expect("spawn swarm get"));
    let status = tests::wait_exit(get, Duration::from_secs(120), logs);
    assert!(
        status.success(),
        "swarm get from aria2 failed ({status}); {}",
        logs()
    );
    assert!(std::fs::read(out.join("from_aria2/a.bin")).unwrap() == a);
    assert!(std::fs::read(out.join("from_aria2/sub/b.bin")).unwrap() == b);
}
