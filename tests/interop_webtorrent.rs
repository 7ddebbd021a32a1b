//! `swarm` and webtorrent-cli 4.1 (webtorrent 1.9, a JavaScript client: TCP and uTP, its own
//! DHT, bittorrent-dht) exchanging a torrent through the DHT. webtorrent has no option for
//! DHT bootstrap nodes: it always starts from its built-in routers (router.bittorrent.com
//! and two others, all on port 6881). So every process of a test runs in a network
//! namespace of its own that only has `lo`, where those names resolve to 127.0.0.1 and our
//! bootstrap node listens on 127.0.0.1:6881. Nothing can leave the namespace; the trackers
//! in webtorrent's magnet links cannot be reached, and LSD multicast has no route on `lo`.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tests::{
    require_webtorrent, spawn_with_lines, swarm_bin, test_payload, wait_line, write_file, NetNs,
    Reaper,
};

/// webtorrent's built-in DHT routers (k-rpc), all on port 6881.
const ROUTERS: [&str; 3] = [
    "router.bittorrent.com",
    "router.utorrent.com",
    "dht.transmissionbt.com",
];
const BOOTSTRAP: &str = "127.0.0.1:6881";
const BOOTSTRAP_PORT: u16 = 6881;
const SWARM_PORT: u16 = 7001;

/// A namespace where webtorrent's routers are our bootstrap node, which is started.
fn setup(ns: &NetNs, dir: &std::path::Path) -> Reaper {
    ns.resolve_to_loopback(&ROUTERS);
    ns.start_bootstrap(swarm_bin!(), BOOTSTRAP_PORT, &dir.join("boot"))
}

#[test]
fn webtorrent_fetches_from_swarm_seed_through_the_dht() {
    let ns = require_webtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let _boot = setup(&ns, dir.path());

    let data = test_payload(3 * 1024 * 1024 + 999, 41);
    let file = write_file(&dir.path().join("seed"), "for_webtorrent.bin", &data);
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
    assert!(
        !magnet.contains("x.pe=") && !magnet.contains("tr="),
        "{magnet}"
    );

    // `download` exits 0 once every piece is verified.
    let out = dir.path().join("wt-out");
    let wt_log = dir.path().join("webtorrent.log");
    let mut cmd = ns.command("webtorrent");
    cmd.args(["download", &magnet, "--quiet", "-o"])
        .arg(&out)
        .env("DEBUG", "webtorrent:torrent,torrent-discovery")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&wt_log).unwrap()));
    let wt = Reaper(cmd.spawn().expect("spawn webtorrent"));
    let logs = || {
        format!(
            "webtorrent's log:\n{}\nour seed's log:\n{}",
            std::fs::read_to_string(&wt_log).unwrap_or_default(),
            std::fs::read_to_string(&seed_log).unwrap_or_default()
        )
    };
    let status = tests::wait_exit(wt, Duration::from_secs(120), logs);
    assert!(status.success(), "webtorrent failed ({status}); {}", logs());
    assert!(
        std::fs::read(out.join("for_webtorrent.bin")).unwrap() == data,
        "webtorrent's copy differs"
    );
    // Through the DHT: webtorrent says where it found us.
    let log = std::fs::read_to_string(&wt_log).unwrap();
    assert!(
        log.contains(&format!("127.0.0.1:{SWARM_PORT} discovered via dht")),
        "{log}"
    );
}

#[test]
fn swarm_get_fetches_from_a_webtorrent_seed_through_the_dht() {
    let ns = require_webtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let _boot = setup(&ns, dir.path());

    let seed_dir = dir.path().join("seed");
    let data = test_payload(2 * 1024 * 1024 + 77, 42);
    write_file(&seed_dir, "from_webtorrent.bin", &data);
    let wt_log = dir.path().join("webtorrent.log");
    let mut cmd = ns.command("webtorrent");
    cmd.args(["seed", "from_webtorrent.bin", "--quiet"])
        .current_dir(&seed_dir)
        .stderr(Stdio::from(std::fs::File::create(&wt_log).unwrap()));
    let (_wt, lines) = spawn_with_lines(cmd);
    // Its magnet link also names internet trackers, unreachable from the namespace.
    let magnet = wait_line(&lines, "magnet:", Duration::from_secs(60));
    let magnet = magnet[magnet.find("magnet:").unwrap()..].trim().to_string();

    let out = dir.path().join("out");
    let get_log = dir.path().join("get.log");
    let mut get = ns.swarm_get(swarm_bin!(), &magnet, SWARM_PORT, BOOTSTRAP, dir.path());
    let logs = || {
        format!(
            "our log:\n{}\nwebtorrent's log:\n{}",
            std::fs::read_to_string(&get_log).unwrap_or_default(),
            std::fs::read_to_string(&wt_log).unwrap_or_default()
        )
    };
    let get = Reaper(get.spawn().expect("spawn swarm get"));
    let status = tests::wait_exit(get, Duration::from_secs(120), logs);
    assert!(status.success(), "swarm get failed ({status}); {}", logs());
    assert!(std::fs::read(out.join("from_webtorrent.bin")).unwrap() == data);
}
