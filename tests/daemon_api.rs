//! `swarm daemon` over real HTTP on loopback: add a magnet link of a torrent that a
//! `swarm seed` process serves and see it reach 100%, list, pause, resume, metrics, a
//! restart that keeps the list, remove with data; bad input gets 4xx JSON errors; the token
//! and the Host/Origin checks.

use std::time::Duration;

use serde_json::{json, Value};
use tests::{swarm_bin, test_payload, write_file, DaemonProc};

const LIMIT: Duration = Duration::from_secs(90);

fn torrents(d: &DaemonProc) -> Vec<Value> {
    let (st, v) = d.get("/api/torrents");
    assert_eq!(st, 200, "{v}");
    v["torrents"].as_array().expect("torrents array").clone()
}

#[test]
fn add_fetch_pause_resume_restart_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(3 * 1024 * 1024 + 777, 41);
    let file = write_file(&dir.path().join("seed"), "daemon-payload.bin", &data);
    let (_seed, magnet, seed_addr) =
        tests::start_seed_no_dht(swarm_bin!(), &file, &dir.path().join("seed-state"));
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    // The download rate is limited so that the connected peer can be seen mid-download.
    let d = DaemonProc::start(
        swarm_bin!(),
        &state,
        &out,
        &["--no-dht", "--limit-down", "1M"],
    );
    assert!(torrents(&d).is_empty());

    // Add by magnet link: 201 with the info-hash, then it fetches to 100%.
    let (st, v) = d.post_json("/api/torrents", &json!({ "magnet": magnet }));
    assert_eq!(st, 201, "{v}");
    let ih = v["info_hash"].as_str().unwrap().to_string();
    assert_eq!(ih.len(), 40);
    let mut seen_peers = Vec::new();
    let t = d.wait_torrent(&ih, LIMIT, "complete", |t| {
        if let Some(p) = t["peers"].as_array() {
            seen_peers.extend(p.iter().cloned());
        }
        t["progress"].as_f64() == Some(1.0) && t["state"] == "seeding"
    });
    assert_eq!(
        std::fs::read(out.join("daemon-payload.bin")).unwrap(),
        data,
        "the file on disk is the seeded one"
    );
    // The whole file over HTTP, and its last bytes.
    let path = format!("/api/torrents/{ih}/files/0");
    let r = node::http::request(&d.api, "GET", &path, &[], b"", LIMIT).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the whole file over HTTP");
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", "bytes=-1000")],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[data.len() - 1000..]);
    assert_eq!(t["name"], "daemon-payload.bin");
    assert_eq!(t["total_bytes"], data.len() as u64);
    assert_eq!(t["bytes_left"], 0);
    let files = t["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{t}");
    assert_eq!(files[0]["path"], "daemon-payload.bin");
    assert_eq!(files[0]["length"], data.len() as u64);
    // Who sent what: the seeder, by its listening address, with its client name.
    let contributions = t["contributions"].as_array().unwrap();
    let from_seed = contributions
        .iter()
        .find(|c| c["addr"] == seed_addr.to_string())
        .unwrap_or_else(|| panic!("no contribution from {seed_addr}: {t}"));
    assert_eq!(from_seed["downloaded"], data.len() as u64, "{t}");
    assert!(
        from_seed["client"]
            .as_str()
            .is_some_and(|c| c.contains("swarm")),
        "{t}"
    );
    // While it downloaded, the seeder was a connected peer with its client name and rates.
    assert!(
        seen_peers.iter().any(
            |p| p["client"].as_str().is_some_and(|c| c.contains("swarm"))
                && p["addr"].is_string()
                && p["downloaded"].as_u64().is_some()
        ),
        "no connected peer seen while downloading: {seen_peers:?}"
    );
    assert!(
        seen_peers
            .iter()
            .any(|p| p["download_rate"].as_f64().is_some_and(|r| r > 0.0)),
        "no per-peer download rate seen: {seen_peers:?}"
    );

    // The list has it; metrics count its bytes.
    let list = torrents(&d);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["info_hash"], ih.as_str());
    let m = node::http::request(&d.api, "GET", "/metrics", &[], b"", LIMIT).unwrap();
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = m.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "swarm_torrent_downloaded_bytes_total{{info_hash=\"{ih}\""
            ))
        })
        .unwrap_or_else(|| panic!("no per-torrent bytes in metrics:\n{text}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= data.len() as f64, "{line}");
    assert!(
        text.contains("swarm_torrents{state=\"seeding\"} 1"),
        "{text}"
    );
    assert!(text.contains("swarm_dht_enabled 0"), "{text}");

    // Pause: stays in the list, paused, no peers.
    let (st, v) = d.call(
        "POST",
        &format!("/api/torrents/{ih}/pause"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200, "{v}");
    let t = d.torrent(&ih);
    assert_eq!(t["state"], "paused", "{t}");
    assert_eq!(t["peers_connected"], 0);
    assert_eq!(torrents(&d).len(), 1);
    // Resume: back to seeding (resume data vouches for the pieces).
    let (st, v) = d.call(
        "POST",
        &format!("/api/torrents/{ih}/resume"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200, "{v}");
    d.wait_torrent(&ih, LIMIT, "seeding again", |t| t["state"] == "seeding");
    // Byte counts carry over a pause: they never go down.
    let t = d.torrent(&ih);
    assert!(
        t["downloaded"].as_u64().unwrap() >= data.len() as u64,
        "{t}"
    );
    let m = node::http::request(&d.api, "GET", "/metrics", &[], b"", LIMIT).unwrap();
    let total = m
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("swarm_downloaded_bytes_total "))
        .map(|v| v.parse::<f64>().unwrap())
        .expect("total in metrics");
    assert!(total >= data.len() as f64, "{total}");
    // Pause again, so the restart must keep it paused.
    let (st, _) = d.call(
        "POST",
        &format!("/api/torrents/{ih}/pause"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200);

    // SIGTERM: saves and exits 0.
    let status = d.terminate(LIMIT);
    assert!(status.success(), "daemon exit: {status}");

    // Restart: the list is back, still paused; resume seeds from the data on disk.
    let d = DaemonProc::start(swarm_bin!(), &state, &out, &["--no-dht"]);
    let list = torrents(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["info_hash"], ih.as_str());
    assert_eq!(list[0]["state"], "paused");
    let (st, _) = d.call(
        "POST",
        &format!("/api/torrents/{ih}/resume"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200);
    let t = d.wait_torrent(&ih, LIMIT, "seeding after restart", |t| {
        t["state"] == "seeding"
    });

    assert_eq!(
        t["files"].as_array().unwrap().len(),
        1,
        "metadata kept: {t}"
    );
    // Ctrl-C saves and exits 0 too.
    let status = d.interrupt(LIMIT);
    assert!(status.success(), "daemon exit: {status}");

    // A running torrent survives a restart running.
    let d = DaemonProc::start(swarm_bin!(), &state, &out, &["--no-dht"]);
    d.wait_torrent(&ih, LIMIT, "seeding after the second restart", |t| {
        t["state"] == "seeding"
    });

    // Remove with its data: gone from the list and from the disk.
    let (st, v) = d.call(
        "DELETE",
        &format!("/api/torrents/{ih}?delete_data=true"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["files_deleted"], 1, "{v}");
    assert!(!out.join("daemon-payload.bin").exists());
    assert!(out.exists(), "the output directory itself stays");
    assert!(torrents(&d).is_empty());
    let (st, _) = d.get(&format!("/api/torrents/{ih}"));
    assert_eq!(st, 404);
    let status = d.terminate(LIMIT);
    assert!(status.success());
    let d = DaemonProc::start(swarm_bin!(), &state, &out, &["--no-dht"]);
    assert!(torrents(&d).is_empty(), "removal was saved");
    // A .torrent body adds too (and the data seeded stays untouched in its own dir).
    let torrent = dir.path().join("t.torrent");
    let made = tests::wait_with_limit(
        tests::swarm_command(swarm_bin!())
            .arg("create")
            .arg(&file)
            .arg("-o")
            .arg(&torrent)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        LIMIT,
    );
    assert!(made.status.success());
    let bytes = std::fs::read(&torrent).unwrap();
    let (st, v) = d.call(
        "POST",
        "/api/torrents?dir=sub&paused=true",
        "application/x-bittorrent",
        &bytes,
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["info_hash"], ih.as_str());
    let t = d.torrent(&ih);
    assert_eq!(t["state"], "paused");
    assert_eq!(t["files"].as_array().unwrap().len(), 1, "{t}");
    assert!(t["out_dir"].as_str().unwrap().ends_with("/sub"), "{t}");
}

/// Status and the `error` string; asserts it is a 4xx with a JSON error.
fn refused(d: &DaemonProc, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    let (st, v) = d.call(method, path, ctype, body);
    assert!((400..500).contains(&st), "{method} {path}: {st} {v}");
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path}: no JSON error: {v}"))
        .to_string();
    (st, e)
}

#[test]
fn bad_input_gets_4xx_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &dir.path().join("out"),
        &["--no-dht"],
    );
    let j = "application/json";
    let (st, e) = refused(&d, "POST", "/api/torrents", j, b"{\"magnet\": ");
    assert_eq!(st, 400);
    assert!(e.contains("malformed JSON"), "{e}");
    let (_, e) = refused(&d, "POST", "/api/torrents", j, b"[1,2]");
    assert!(e.contains("JSON object"), "{e}");
    let (_, e) = refused(&d, "POST", "/api/torrents", j, b"{}");
    assert!(e.contains("missing \"magnet\""), "{e}");
    let (_, e) = refused(&d, "POST", "/api/torrents", j, b"{\"magnet\": 5}");
    assert!(e.contains("must be a string"), "{e}");
    let (_, e) = refused(
        &d,
        "POST",
        "/api/torrents",
        j,
        br#"{"magnet": "magnet:?xt=urn:btih:nothex"}"#,
    );
    assert!(e.contains("bad magnet link"), "{e}");
    let (_, e) = refused(
        &d,
        "POST",
        "/api/torrents",
        j,
        br#"{"magnet": "http://example.invalid/x"}"#,
    );
    assert!(e.contains("bad magnet link"), "{e}");
    let (_, e) = refused(
        &d,
        "POST",
        "/api/torrents",
        "application/x-bittorrent",
        b"d4:infoi1ee",
    );
    assert!(e.contains("not a valid .torrent"), "{e}");
    let (_, e) = refused(&d, "POST", "/api/torrents", j, b"");
    assert!(e.contains("empty body"), "{e}");
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    for escape in ["../outside", "/etc", "a/../../b"] {
        let body = json!({ "magnet": magnet, "dir": escape }).to_string();
        let (st, e) = refused(&d, "POST", "/api/torrents", j, body.as_bytes());
        assert_eq!(st, 400);
        assert!(e.contains("must be inside"), "{escape}: {e}");
    }
    // Too large: 413, still JSON.
    let big = vec![b'd'; 17 << 20];
    let (st, e) = refused(
        &d,
        "POST",
        "/api/torrents",
        "application/x-bittorrent",
        &big,
    );
    assert_eq!(st, 413, "{e}");
    // Info-hashes and unknown torrents.
    let (st, e) = refused(&d, "GET", "/api/torrents/xyz", j, b"");
    assert_eq!(st, 400);
    assert!(e.contains("bad info-hash"), "{e}");
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    for (m, p) in [
        ("GET", format!("/api/torrents/{unknown}")),
        ("POST", format!("/api/torrents/{unknown}/pause")),
        ("POST", format!("/api/torrents/{unknown}/resume")),
        ("DELETE", format!("/api/torrents/{unknown}")),
    ] {
        let (st, e) = refused(&d, m, &p, j, b"");
        assert_eq!(st, 404, "{m} {p}: {e}");
        assert!(e.contains("no torrent"), "{e}");
    }
    // Duplicates conflict; bad flags are named.
    let (st, v) = d.post_json(
        "/api/torrents",
        &json!({ "magnet": magnet, "paused": true }),
    );
    assert_eq!(st, 201, "{v}");
    let (st, e) = refused(
        &d,
        "POST",
        "/api/torrents",
        j,
        json!({ "magnet": magnet }).to_string().as_bytes(),
    );
    assert_eq!(st, 409);
    assert!(e.contains("already"), "{e}");
    let (st, e) = refused(
        &d,
        "DELETE",
        &format!("/api/torrents/{unknown}?delete_data=maybe"),
        j,
        b"",
    );
    assert_eq!(st, 400);
    assert!(e.contains("delete_data"), "{e}");
    // Endpoints and methods.
    let (st, _) = refused(&d, "GET", "/api/nothing", j, b"");
    assert_eq!(st, 404);
    let (st, _) = refused(&d, "PUT", "/api/torrents", j, b"");
    assert_eq!(st, 405);
    // Another Host (DNS rebinding) or another Origin is refused.
    for (h, v) in [
        ("Host", "evil.example:80"),
        ("Origin", "http://evil.example"),
    ] {
        let r = node::http::request(&d.api, "GET", "/api/torrents", &[(h, v)], b"", LIMIT).unwrap();
        assert_eq!(r.status, 403, "{h}: {}", r.text());
        assert!(r.text().contains("error"));
    }
    // A raw request that is not HTTP at all does not take the daemon down.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&d.api).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
    }
    // Still answering, with the one torrent.
    assert_eq!(torrents(&d).len(), 1);
    let (st, v) = d.get("/api/dht");
    assert_eq!(st, 200);
    assert_eq!(v["enabled"], false);
}

#[test]
fn token_is_checked_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &dir.path().join("out"),
        &["--no-dht", "--api-token", "s3cret-token"],
    );
    for path in ["/", "/api/torrents", "/metrics", "/api/dht"] {
        let r = node::http::request(&d.api, "GET", path, &[], b"", LIMIT).unwrap();
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        let r = node::http::request(
            &d.api,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token")],
            b"",
            LIMIT,
        )
        .unwrap();
        assert_eq!(r.status, 401, "{path}");
        let r = node::http::request(
            &d.api,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret-token")],
            b"",
            LIMIT,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let r = node::http::request(
            &d.api,
            "GET",
            &format!("{path}?token=s3cret-token"),
            &[],
            b"",
            LIMIT,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{path}?token=");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    // `swarm add` and `swarm list` with the token.
    let run = |args: &[&str]| {
        tests::wait_with_limit(
            tests::swarm_command(swarm_bin!())
                .args(args)
                .args(["--api", &d.api])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
            LIMIT,
        )
    };
    let ih = "00112233445566778899aabbccddeeff00112233";
    let out = run(&["add", ih, "--paused"]);
    assert!(!out.status.success(), "no token: refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = run(&["add", ih, "--paused", "--api-token", "s3cret-token"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ih);
    let out = run(&["list", "--api-token", "s3cret-token"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(ih) && l.contains("paused")),
        "{text}"
    );
}

#[test]
fn a_non_loopback_api_gets_a_generated_token() {
    let dir = tempfile::tempdir().unwrap();
    let ip = tests::next_loopback_ip();
    let mut cmd = tests::swarm_command(swarm_bin!());
    // All addresses, so the daemon must protect itself; reached here over loopback.
    cmd.args([
        "daemon",
        "--api",
        "0.0.0.0:0",
        "--no-dht",
        "--port",
        "0",
        "--bind",
    ])
    .arg(ip.to_string())
    .arg("--state-dir")
    .arg(dir.path().join("state"))
    .arg("-o")
    .arg(dir.path().join("out"))
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _reaper = tests::Reaper(child);
    let (tx, rx) = std::sync::mpsc::channel();
    for r in [
        Box::new(stderr) as Box<dyn std::io::Read + Send>,
        Box::new(stdout),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    let mut token = None;
    let mut port = None;
    let ok = tests::wait_until(LIMIT, || {
        while let Ok(l) = rx.try_recv() {
            if let Some(t) = l.split("printed once: ").nth(1) {
                token = Some(t.trim().to_string());
            }
            if let Some(a) = l.strip_prefix("api http://") {
                port = a.trim().rsplit(':').next().map(str::to_string);
            }
        }
        token.is_some() && port.is_some()
    });
    assert!(ok, "token {token:?} port {port:?}");
    let token = token.unwrap();
    assert_eq!(token.len(), 32);
    let api = format!("127.0.0.1:{}", port.unwrap());
    let r = node::http::request(&api, "GET", "/api/torrents", &[], b"", LIMIT).unwrap();
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {token}");
    let r = node::http::request(
        &api,
        "GET",
        "/api/torrents",
        &[("Authorization", &auth)],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A range in the middle of a file is served while the torrent cannot be complete: the
/// only seeder has just the pieces under that range (the rest of its copy is zeros), so
/// the daemon gets those and no more. A range it cannot get yet waits.
#[test]
fn range_request_reads_the_middle_of_a_file_before_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let piece = 64 * 1024;
    let data = test_payload(4 * 1024 * 1024 + 1234, 71);
    let seed_dir = dir.path().join("seed");
    let file = write_file(&seed_dir, "movie.mp4", &data);
    let opts = wire::create::CreateOptions {
        piece_length: Some(piece as u64),
        ..Default::default()
    };
    let made = wire::create::create_torrent(&file, &opts, &|_| {}).unwrap();
    let torrent = dir.path().join("movie.torrent");
    std::fs::write(&torrent, &made.bytes).unwrap();
    // The seeder keeps only the pieces under [a, b]: everything else becomes zeros.
    let (a, b) = (2_000_000usize, 2_100_000usize);
    let (pa, pb) = (a / piece, b / piece);
    let mut partial = data.clone();
    for (i, chunk) in partial.chunks_mut(piece).enumerate() {
        if i < pa || i > pb {
            chunk.fill(0);
        }
    }
    std::fs::write(&file, &partial).unwrap();
    let (_seed, magnet, _) = tests::start_seed_no_dht_with(
        swarm_bin!(),
        &torrent,
        &dir.path().join("seed-state"),
        &["--data", seed_dir.to_str().unwrap()],
    );
    let ih = made.metainfo.info_hash.to_hex();
    let out = dir.path().join("out");
    let d = DaemonProc::start(swarm_bin!(), &dir.path().join("state"), &out, &["--no-dht"]);
    let (st, v) = d.post_json("/api/torrents", &json!({ "magnet": magnet }));
    assert_eq!(st, 201, "{v}");
    d.wait_torrent(&ih, LIMIT, "with metadata", |t| {
        t["files"].as_array().is_some_and(|f| f.len() == 1)
    });
    let path = format!("/api/torrents/{ih}/files/0");
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", &format!("bytes={a}-{b}"))],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {a}-{b}/{}", data.len()).as_str())
    );
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.body.len(), b - a + 1);
    assert!(r.body == data[a..=b], "the bytes of the range");
    let t = d.torrent(&ih);
    let have = t["pieces_have"].as_u64().unwrap() as usize;
    assert!(t["progress"].as_f64().unwrap() < 0.1, "{t}");
    assert_eq!(
        have,
        pb - pa + 1,
        "only the pieces under the range exist: {t}"
    );
    // The first bytes are nowhere yet: the answer starts, and its body waits.
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", "bytes=0-999")],
        b"",
        Duration::from_secs(2),
    );
    assert!(r.is_err(), "no piece 0 anywhere, yet an answer: {r:?}");
    // Out of range, no such file, bad index: 4xx with JSON.
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", &format!("bytes={}-", data.len()))],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );
    for (p, want) in [
        (format!("/api/torrents/{ih}/files/1"), 404),
        (format!("/api/torrents/{ih}/files/x"), 400),
        (
            "/api/torrents/0123456789abcdef0123456789abcdef01234567/files/0".to_string(),
            404,
        ),
    ] {
        let (st, v) = d.get(&p);
        assert_eq!(st, want, "{p}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // Paused, a missing piece can never come: the body ends short instead of waiting.
    let (st, _) = d.call(
        "POST",
        &format!("/api/torrents/{ih}/pause"),
        "application/json",
        b"",
    );
    assert_eq!(st, 200);
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", "bytes=0-999")],
        b"",
        LIMIT,
    );
    assert!(r.is_err(), "a short body is an error for the client: {r:?}");
    // What is there is still served.
    let r = node::http::request(
        &d.api,
        "GET",
        &path,
        &[("Range", &format!("bytes={a}-{b}"))],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[a..=b]);
}

/// With the DHT: a magnet link with no peer hint is found through a loopback DHT (one
/// bootstrap node, the seeder announcing to it), and `/api/dht` and `/metrics` show the
/// node and its lookups.
#[test]
fn a_magnet_without_hints_is_found_through_the_dht() {
    let boot = tests::InProcessBootstrap::start();
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(1024 * 1024 + 5, 81);
    let file = write_file(&dir.path().join("seed"), "through-the-dht.bin", &data);
    let seed_ip = tests::next_loopback_ip();
    let seed_port = tests::free_port(seed_ip);
    let mut cmd = tests::swarm_command(swarm_bin!());
    cmd.arg("seed")
        .arg(&file)
        .args([
            "--bind",
            &seed_ip.to_string(),
            "--port",
            &seed_port.to_string(),
        ])
        .args(["--bootstrap", &boot.addr.to_string(), "--state-dir"])
        .arg(dir.path().join("seed-state"))
        .stderr(std::process::Stdio::inherit());
    let (_seed, lines) = tests::spawn_with_lines(cmd);
    let magnet = tests::wait_line(&lines, "magnet:?", LIMIT)
        .trim()
        .to_string();
    assert!(!magnet.contains("x.pe"), "{magnet}");
    let ih = magnet["magnet:?xt=urn:btih:".len()..][..40].to_string();
    let out = dir.path().join("out");
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &out,
        &["--bootstrap", &boot.addr.to_string()],
    );
    let (st, v) = d.post_json("/api/torrents", &json!({ "magnet": magnet }));
    assert_eq!(st, 201, "{v}");
    d.wait_torrent(&ih, LIMIT, "complete through the DHT", |t| {
        t["state"] == "seeding"
    });
    assert_eq!(
        std::fs::read(out.join("through-the-dht.bin")).unwrap(),
        data
    );
    let (st, v) = d.get("/api/dht");
    assert_eq!(st, 200);
    assert_eq!(v["enabled"], true, "{v}");
    assert!(v["nodes"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["lookups_done"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["queries_sent"].as_u64().unwrap() >= 1, "{v}");
    let m = node::http::request(&d.api, "GET", "/metrics", &[], b"", LIMIT).unwrap();
    let text = m.text();
    assert!(text.contains("swarm_dht_enabled 1"), "{text}");
    assert!(text.contains("swarm_dht_nodes{family=\"ipv4\"}"), "{text}");
}

#[test]
fn an_api_port_in_use_is_a_clear_error_and_no_daemon_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = tests::wait_with_limit(
        tests::swarm_command(swarm_bin!())
            .args([
                "daemon",
                "--no-dht",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--api",
                &addr,
            ])
            .arg("--state-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        LIMIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for the API on"), "{err}");
    // `swarm list` with nobody listening says so in one line.
    drop(taken);
    let out = tests::wait_with_limit(
        tests::swarm_command(swarm_bin!())
            .args(["list", "--api", &format!("http://{addr}/")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        LIMIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `swarm daemon` running?"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Time-critical picking: reading the end of a file while it downloads from a slow seeder
/// makes those pieces urgent, so they arrive long before the rest (without it they come
/// in rarest-first order, anywhere in the download).
#[test]
fn a_range_read_makes_its_pieces_urgent() {
    let dir = tempfile::tempdir().unwrap();
    let piece = 64 * 1024;
    let data = test_payload(4 * 1024 * 1024, 73);
    let seed_dir = dir.path().join("seed");
    let file = write_file(&seed_dir, "movie.mp4", &data);
    let opts = wire::create::CreateOptions {
        piece_length: Some(piece as u64),
        ..Default::default()
    };
    let made = wire::create::create_torrent(&file, &opts, &|_| {}).unwrap();
    let torrent = dir.path().join("movie.torrent");
    std::fs::write(&torrent, &made.bytes).unwrap();
    // 64 pieces at 256 KiB/s: about 16 s for the whole file.
    let (_seed, magnet, _) = tests::start_seed_no_dht_with(
        swarm_bin!(),
        &torrent,
        &dir.path().join("seed-state"),
        &["--data", seed_dir.to_str().unwrap(), "--limit-up", "256K"],
    );
    let ih = made.metainfo.info_hash.to_hex();
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &dir.path().join("out"),
        &["--no-dht"],
    );
    let (st, v) = d.post_json("/api/torrents", &json!({ "magnet": magnet }));
    assert_eq!(st, 201, "{v}");
    d.wait_torrent(&ih, LIMIT, "with metadata", |t| {
        t["files"].as_array().is_some_and(|f| f.len() == 1)
    });
    let (a, b) = (data.len() - 100_000, data.len() - 1);
    let r = node::http::request(
        &d.api,
        "GET",
        &format!("/api/torrents/{ih}/files/0"),
        &[("Range", &format!("bytes={a}-{b}"))],
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 206, "{}", r.text());
    assert!(r.body == data[a..=b], "the bytes of the range");
    let t = d.torrent(&ih);
    let have = t["pieces_have"].as_u64().unwrap();
    assert!(
        have <= 16,
        "the last two pieces came only after {have} of 64: they were not made urgent ({t})"
    );
}
