//! `swarm daemon` driven by the real `transmission-remote` (Debian's transmission-cli)
//! through its Transmission RPC subset: add a magnet link of a torrent that a `swarm seed`
//! process serves, list it until 100%, show its details, stop and start it, remove it, and
//! remove another one with its data. The RPC's 409 session-id handshake is checked
//! directly. Skips, with a reason, when transmission-remote is missing (fails under
//! `REQUIRE_INTEROP=1`).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tests::{swarm_bin, test_payload, wait_until_every, wait_with_limit, write_file, DaemonProc};

const LIMIT: Duration = Duration::from_secs(90);

/// `transmission-remote API ARGS`; returns its stdout, panicking on failure.
fn remote(api: &str, args: &[&str]) -> String {
    let child = std::process::Command::new("transmission-remote")
        .arg(api)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn transmission-remote");
    let out = wait_with_limit(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "transmission-remote {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `-l` line of the torrent called `name`, if listed.
fn listed(api: &str, name: &str) -> Option<String> {
    remote(api, &["-l"])
        .lines()
        .find(|l| l.trim_end().ends_with(name))
        .map(str::to_string)
}

#[test]
fn transmission_remote_adds_lists_stops_starts_and_removes() {
    if !tests::clients_installed(
        module_path!(),
        &["transmission-remote"],
        "apt-get install -y transmission-cli",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = test_payload(1024 * 1024 + 4321, 51);
    let file = write_file(&dir.path().join("seed"), "via-transmission.bin", &data);
    let (_seed, magnet, _) =
        tests::start_seed_no_dht(swarm_bin!(), &file, &dir.path().join("seed-state"));
    let out = dir.path().join("out");
    let d = DaemonProc::start(swarm_bin!(), &dir.path().join("state"), &out, &["--no-dht"]);
    let api = d.api.clone();

    // The CSRF handshake: no session id, 409 with the id; with it, the call goes through.
    let r = node::http::request(
        &api,
        "POST",
        "/transmission/rpc",
        &[],
        br#"{"method":"session-get"}"#,
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    let sid = r
        .header("x-transmission-session-id")
        .expect("409 carries the session id")
        .to_string();
    let r = node::http::request(
        &api,
        "POST",
        "/transmission/rpc",
        &[("X-Transmission-Session-Id", &sid)],
        json!({"method": "session-get", "tag": 7})
            .to_string()
            .as_bytes(),
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"], "success");
    assert_eq!(v["tag"], 7);
    assert_eq!(v["arguments"]["rpc-version"], 16);
    let r = node::http::request(
        &api,
        "POST",
        "/transmission/rpc",
        &[("X-Transmission-Session-Id", "stale")],
        b"{}",
        LIMIT,
    )
    .unwrap();
    assert_eq!(r.status, 409);
    // Bad requests: malformed JSON is a 400 naming it; an unknown method is a result
    // string, as Transmission answers it.
    let rpc = |body: &[u8]| {
        let r = node::http::request(
            &api,
            "POST",
            "/transmission/rpc",
            &[("X-Transmission-Session-Id", &sid)],
            body,
            LIMIT,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (r.status, v)
    };
    let (st, v) = rpc(b"{not json");
    assert_eq!(st, 400);
    assert!(
        v["result"].as_str().unwrap().contains("malformed JSON"),
        "{v}"
    );
    let (st, v) = rpc(br#"{"method": "blocklist-update"}"#);
    assert_eq!(st, 200);
    assert!(
        v["result"].as_str().unwrap().contains("not supported"),
        "{v}"
    );
    let (_, v) = rpc(br#"{"method": "torrent-add", "arguments": {"filename": "/etc/passwd"}}"#);
    assert!(
        v["result"].as_str().unwrap().contains("not a magnet link"),
        "{v}"
    );
    let (_, v) = rpc(br#"{"method": "torrent-add", "arguments": {"metainfo": "!!!"}}"#);
    assert!(v["result"].as_str().unwrap().contains("base64"), "{v}");

    // -a MAGNET, then -l until it is done.
    let added = remote(&api, &["-a", &magnet]);
    assert!(added.contains("success"), "{added}");
    let name = "via-transmission.bin";
    let mut last = None;
    let done = wait_until_every(LIMIT, Duration::from_millis(250), || {
        last = listed(&api, name);
        // transmission-remote shows a seeding torrent with no peer busy as "Idle".
        last.as_deref()
            .is_some_and(|l| l.contains("100%") && (l.contains("Seeding") || l.contains("Idle")))
    });
    assert!(
        done,
        "not listed as 100% and seeding: {last:?}\n{}",
        remote(&api, &["-l"])
    );
    let line = last.unwrap();
    assert!(line.trim_start().starts_with("1 "), "id 1: {line}");
    assert_eq!(std::fs::read(out.join(name)).unwrap(), data);
    let info = remote(&api, &["-t", "1", "-i"]);
    for want in [name, &magnet[20..60], "Percent Done: 100%", "Location:"] {
        assert!(info.contains(want), "-i lacks {want:?}:\n{info}");
    }
    let files = remote(&api, &["-t", "1", "-if"]);
    assert!(files.contains(name), "{files}");

    // -S stops, -s starts.
    remote(&api, &["-t", "1", "-S"]);
    let l = listed(&api, name).expect("still listed when stopped");
    assert!(l.contains("Stopped"), "{l}");
    remote(&api, &["-t", "1", "-s"]);
    let mut last = None;
    let ok = wait_until_every(LIMIT, Duration::from_millis(250), || {
        last = listed(&api, name);
        last.as_deref()
            .is_some_and(|l| l.contains("100%") && !l.contains("Stopped"))
    });
    assert!(ok, "not seeding again: {last:?}");

    // -r removes and keeps the data.
    remote(&api, &["-t", "1", "-r"]);
    assert!(listed(&api, name).is_none());
    assert!(out.join(name).exists(), "-r keeps the data");
    let (_, v) = d.get("/api/torrents");
    assert!(v["torrents"].as_array().unwrap().is_empty(), "{v}");

    // Added again, it verifies the data in place; --remove-and-delete removes both.
    remote(&api, &["-a", &magnet]);
    let ok = wait_until_every(LIMIT, Duration::from_millis(250), || {
        listed(&api, name).is_some_and(|l| l.contains("100%"))
    });
    assert!(
        ok,
        "re-added torrent not complete: {}",
        remote(&api, &["-l"])
    );
    let id = listed(&api, name).unwrap();
    let id = id
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('*')
        .to_string();
    remote(&api, &["-t", &id, "--remove-and-delete"]);
    assert!(listed(&api, name).is_none());
    assert!(
        !out.join(name).exists(),
        "--remove-and-delete deletes the data"
    );

    // A bad magnet is refused with the reason, and the daemon carries on.
    let child = std::process::Command::new("transmission-remote")
        .args([&api, "-a", "magnet:?xt=urn:btih:nothex"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_limit(child, Duration::from_secs(30));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("bad magnet link"), "{all}");
    remote(&api, &["-l"]);
}

/// With an API token, `transmission-remote --auth USER:TOKEN` gets in and nothing else does.
#[test]
fn transmission_remote_needs_the_token_when_there_is_one() {
    if !tests::clients_installed(
        module_path!(),
        &["transmission-remote"],
        "apt-get install -y transmission-cli",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(
        swarm_bin!(),
        &dir.path().join("state"),
        &dir.path().join("out"),
        &["--no-dht", "--api-token", "rpc-token-1"],
    );
    let run = |args: &[&str]| {
        let child = std::process::Command::new("transmission-remote")
            .arg(&d.api)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_limit(child, Duration::from_secs(30))
    };
    let magnet = "magnet:?xt=urn:btih:00112233445566778899aabbccddeeff00112233&dn=tok";
    assert!(!run(&["-a", magnet]).status.success(), "no token: refused");
    assert!(!run(&["--auth", "me:wrong", "-l"]).status.success());
    let out = run(&["--auth", "me:rpc-token-1", "-a", magnet]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["--auth", "me:rpc-token-1", "-l"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tok"),
        "{out:?}"
    );
}
