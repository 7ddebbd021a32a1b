//! BEP 46 with real processes on loopback: `swarm seed --publish KEY` keeps a mutable DHT
//! item pointing at its torrent, a second seeder publishing another torrent under the same
//! key makes a newer version, and `swarm get` of the key's `xs=urn:btpk:` magnet fetches
//! the newest torrent.

#[path = "bootstrap_proc.rs"]
mod bootstrap_proc;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tests::{next_loopback_ip, swarm_bin, swarm_command, test_payload, write_file};

struct Publisher {
    _child: tests::Reaper,
    /// The `xs=urn:btpk:` magnet it printed.
    follow: String,
    stderr: Arc<Mutex<String>>,
}

/// `swarm seed DATA --publish KEY` against `boot`; returns once it printed its magnets.
fn publish(data: &Path, key: &Path, boot: std::net::SocketAddr, state: &Path) -> Publisher {
    let ip = next_loopback_ip();
    let mut child = swarm_command(swarm_bin!())
        .arg("seed")
        .arg(data)
        .arg("--publish")
        .arg(key)
        .args(["--publish-salt", "release"])
        .args(["--bind", &ip.to_string(), "--port", "0"])
        .args(["--bootstrap", &boot.to_string()])
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarm seed");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let err2 = err.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut e = err2.lock().unwrap();
            e.push_str(&l);
            e.push('\n');
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let child = tests::Reaper(child);
    let line = |what: &str| {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("swarm seed printed no {what}"))
    };
    let btih = line("magnet");
    assert!(btih.starts_with("magnet:?xt=urn:btih:"), "{btih}");
    let follow = line("btpk magnet");
    assert!(follow.starts_with("magnet:?xs=urn:btpk:"), "{follow}");
    assert!(
        follow.contains("&s=72656c65617365"),
        "salt \"release\" in hex: {follow}"
    );
    Publisher {
        _child: child,
        follow,
        stderr: err,
    }
}

fn wait_published(p: &Publisher, version: u32) {
    let want = format!("as version {version} of the item");
    assert!(
        tests::wait_until(Duration::from_secs(60), || p
            .stderr
            .lock()
            .unwrap()
            .contains(&want)),
        "not published as version {version}:\n{}",
        p.stderr.lock().unwrap()
    );
}

#[test]
fn a_published_torrent_is_fetched_through_its_key_and_an_update_wins() {
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap_proc::start(
        swarm_bin!(),
        std::net::IpAddr::V4(next_loopback_ip()),
        0,
        &dir.path().join("boot"),
        &[],
    );
    let key = dir.path().join("release.key");
    let out = swarm_command(swarm_bin!())
        .args(["dht", "keygen"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v1 = test_payload(300_000, 1);
    let v1_file = write_file(&dir.path().join("v1"), "release.bin", &v1);
    let first = publish(&v1_file, &key, boot.addr, &dir.path().join("s1"));
    wait_published(&first, 1);

    // A new release under the same key: one version above.
    let v2 = test_payload(400_000, 2);
    let v2_file = write_file(&dir.path().join("v2"), "release.bin", &v2);
    let second = publish(&v2_file, &key, boot.addr, &dir.path().join("s2"));
    wait_published(&second, 2);
    assert_eq!(first.follow, second.follow, "one key and salt, one magnet");

    let get_dir = dir.path().join("got");
    let ip = next_loopback_ip();
    let child = swarm_command(swarm_bin!())
        .arg("get")
        .arg(&second.follow)
        .args(["--bind", &ip.to_string(), "--port", "0"])
        .args(["--bootstrap", &boot.addr.to_string()])
        .arg("--state-dir")
        .arg(dir.path().join("g"))
        .arg("-o")
        .arg(&get_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = tests::wait_with_limit(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(got.status.success(), "swarm get failed:\n{stderr}");
    assert!(stderr.contains("version 2 of the item names"), "{stderr}");
    assert!(
        std::fs::read(get_dir.join("release.bin")).unwrap() == v2,
        "fetched something other than the newest release"
    );
}

#[test]
fn a_key_nobody_published_under_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap_proc::start(
        swarm_bin!(),
        std::net::IpAddr::V4(next_loopback_ip()),
        0,
        &dir.path().join("boot"),
        &[],
    );
    let ip = next_loopback_ip();
    let magnet = format!("magnet:?xs=urn:btpk:{}", "77".repeat(32));
    let child = swarm_command(swarm_bin!())
        .arg("get")
        .arg(&magnet)
        .args(["--bind", &ip.to_string(), "--port", "0"])
        .args(["--bootstrap", &boot.addr.to_string()])
        .arg("--state-dir")
        .arg(dir.path().join("g"))
        .arg("-o")
        .arg(dir.path().join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait_with_limit(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no torrent found in the DHT for key"),
        "{stderr}"
    );
    // And without the DHT it says why it cannot work.
    let out = swarm_command(swarm_bin!())
        .arg("get")
        .arg(&magnet)
        .args(["--no-dht", "--bind", &ip.to_string(), "--port", "0"])
        .arg("--state-dir")
        .arg(dir.path().join("g"))
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--no-dht"), "{stderr}");
}
