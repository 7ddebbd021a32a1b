//! BEP 44 items between `swarm dht put/get/keygen` (real processes) and libtorrent 2.0.8
//! (lt_items.py, the loopback settings of shared/interop.md) on loopback: immutable items
//! both ways, and a mutable item whose versions pass between the two (each verifies the
//! other's signature and continues its sequence numbers). Every network has one `swarm
//! bootstrap` process, which stores items, as the node every put and get reaches. The
//! libtorrent tests skip when python3-libtorrent is missing (fail under REQUIRE_INTEROP=1);
//! the CLI tests at the end need only the swarm binary.
//!
//! Each finished `swarm dht` command leaves its node id in the other nodes' tables, dead:
//! lookups that run to their end (a mutable get, any put) wait for its query timeout (5 s
//! ours, 15 s libtorrent's). Most tests run their commands from one address (see [`Cli`]),
//! where our bootstrap node replaces the old id; libtorrent keeps it and refers it to the
//! next command, which then queries its own address and waits 5 s too (measured: a
//! mutable `swarm dht put` 0.36 s before libtorrent knows the old id, 5.4 s after). The
//! limits below allow for all that.

#[path = "bootstrap_proc.rs"]
mod bootstrap_proc;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bootstrap_proc::BootstrapProc;
use tests::{free_port, next_loopback_ip, require_libtorrent, swarm_bin};

const LT_ITEMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lt_items.py");

/// How long one `swarm dht` command may run: with --timeout 30, at most 20 s to join, then
/// a mutable put's get and put lookups, 30 s each.
const CLI_LIMIT: Duration = Duration::from_secs(90);
/// How long one lt_items.py command may take (its --op-timeout is below this).
const LT_LIMIT: Duration = Duration::from_secs(50);

/// A `swarm bootstrap` process on a fresh loopback IP, its state in `dir/boot-state`.
fn bootstrap(dir: &Path) -> BootstrapProc {
    bootstrap_proc::start(
        swarm_bin!(),
        IpAddr::V4(next_loopback_ip()),
        0,
        &dir.join("boot-state"),
        &[],
    )
}

/// Where `swarm dht` commands run: their bootstrap node, and either one address for all
/// (as with SWARM_PORT set: each command's node takes the place of the one before) or a
/// fresh loopback IP and port for each (each finished command leaves a dead node in the
/// others' tables, which lookups that run to their end wait for).
#[derive(Clone, Copy)]
struct Cli {
    boot: SocketAddr,
    from: Option<SocketAddr>,
}

impl Cli {
    /// Every command from one address.
    fn fixed(boot: &BootstrapProc) -> Cli {
        let ip = next_loopback_ip();
        Cli {
            boot: boot.addr,
            from: Some(SocketAddr::from((ip, free_port(ip)))),
        }
    }

    /// Each command from a fresh address.
    fn fresh(boot: SocketAddr) -> Cli {
        Cli { boot, from: None }
    }
}

/// `swarm dht ARGS --bind IP --port P --bootstrap BOOT --timeout 30`, run to its end.
fn swarm_dht(args: &[&str], cli: Cli) -> Output {
    let from = cli
        .from
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(next_loopback_ip()), 0));
    let child = tests::swarm_command(swarm_bin!())
        .arg("dht")
        .args(args)
        .args(["--bind", &from.ip().to_string()])
        .args(["--port", &from.port().to_string()])
        .args(["--bootstrap", &cli.boot.to_string(), "--timeout", "30"])
        .env_remove("SWARM_BOOTSTRAP")
        .env_remove("SWARM_PORT")
        .env_remove("SWARM_BIND")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarm dht");
    tests::wait_with_limit(child, CLI_LIMIT)
}

/// [`swarm_dht`] that must succeed; returns its stdout (trimmed) and stderr.
fn swarm_dht_ok(args: &[&str], cli: Cli) -> (String, String) {
    let started = Instant::now();
    let out = swarm_dht(args, cli);
    let (stdout, stderr) = texts(&out);
    assert!(
        out.status.success(),
        "swarm dht {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    eprintln!("swarm dht {} took {:.2?}", args[0], started.elapsed());
    (stdout.trim().to_string(), stderr)
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `swarm dht keygen DIR/NAME`: the public key it prints (checked: 64 hex digits) and the
/// key file's path.
fn keygen(dir: &Path, name: &str) -> (String, std::path::PathBuf) {
    let file = dir.join(name);
    let out = tests::wait_with_limit(
        tests::swarm_command(swarm_bin!())
            .args(["dht", "keygen"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swarm dht keygen"),
        CLI_LIMIT,
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "keygen failed: {stderr}");
    let pk = stdout.trim().to_string();
    assert!(is_hex(&pk, 64), "keygen printed {pk:?}");
    let secret = std::fs::read_to_string(&file).expect("key file");
    assert!(
        secret.len() == 65 && secret.ends_with('\n') && is_hex(&secret[..64], 64),
        "key file holds {secret:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    }
    (pk, file)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bencoding of a string.
fn bstr(s: &str) -> String {
    format!("{}:{s}", s.len())
}

/// SHA-1 of `bytes` in hex: the target of an immutable item with that bencoding.
fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(bytes))
}

/// `(acked, sent)` from the "stored on N of M nodes" line of `swarm dht put`.
fn stored_on(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stored on "))
        .unwrap_or_else(|| panic!("no \"stored on\" line in {stderr:?}"));
    let mut words = line.split(' ');
    let acked = words.next().and_then(|w| w.parse().ok());
    let sent = words.nth(1).and_then(|w| w.parse().ok());
    match (acked, sent) {
        (Some(a), Some(s)) => (a, s),
        _ => panic!("bad line {line:?}"),
    }
}

/// Asserts that every node that gave a token stored the put, libtorrent among them (the
/// bootstrap node and the libtorrent session are the only live nodes).
fn assert_libtorrent_stored_it(stderr: &str) {
    let (acked, sent) = stored_on(stderr);
    assert!(
        acked == sent && sent >= 2,
        "stored on {acked} of {sent}: libtorrent refused or was not asked: {stderr}"
    );
}

/// An lt_items.py process (one libtorrent session), fed commands on stdin; killed when
/// dropped.
struct LtItems {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LtItems {
    fn start(python: &str, bootstrap: SocketAddr) -> LtItems {
        let ip = next_loopback_ip();
        let listen = SocketAddr::from((ip, free_port(ip)));
        let mut child = std::process::Command::new(python)
            .arg(LT_ITEMS)
            .args(["--listen", &listen.to_string()])
            .args(["--bootstrap", &bootstrap.to_string()])
            .args(["--timeout", "300", "--op-timeout", "40"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lt_items.py");
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut lt = LtItems {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        };
        lt.next_line(Duration::from_secs(20), "listening");
        lt
    }

    /// Sends one command; returns its result line (an error line fails the test).
    fn command(&mut self, cmd: &str) -> String {
        let started = Instant::now();
        writeln!(self.stdin, "{cmd}").expect("write to lt_items.py");
        self.stdin.flush().expect("flush");
        let line = self.next_line(LT_LIMIT, cmd);
        eprintln!(
            "libtorrent {} took {:.2?}",
            cmd.split(' ').next().unwrap_or(cmd),
            started.elapsed()
        );
        line
    }

    fn next_line(&mut self, limit: Duration, what: &str) -> String {
        let line = self.lines.recv_timeout(limit).unwrap_or_else(|_| {
            panic!(
                "lt_items.py: no answer to {what:?} within {limit:?}; before:\n{}",
                self.seen.join("\n")
            )
        });
        self.seen.push(line.clone());
        assert!(
            !line.contains("\"event\": \"error\""),
            "lt_items.py: {what:?} failed: {line}"
        );
        line
    }
}

impl Drop for LtItems {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string after `"key": "` in a JSON line (the helper's strings have no escapes).
fn json_str<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": \"");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + pat.len();
    let rest = &line[start..];
    &rest[..rest.find('"').expect("closing quote")]
}

/// The integer (or `true`/`false` as 1/0) after `"key": ` in a JSON line.
fn json_int(line: &str, key: &str) -> i64 {
    let pat = format!("\"{key}\": ");
    let rest = &line[line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + pat.len()..];
    if rest.starts_with("true") {
        return 1;
    }
    if rest.starts_with("false") {
        return 0;
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key:?} in {line}"))
}

/// The `bencoded` field (hex) of a result line, as text.
fn bencoded(line: &str) -> String {
    String::from_utf8(hex::decode(json_str(line, "bencoded")).expect("hex")).expect("utf-8")
}

#[test]
fn libtorrent_immutable_item_is_found_by_swarm_dht_get() {
    let python = require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path());
    let cli = Cli::fixed(&boot);
    let mut lt = LtItems::start(python, cli.boot);
    let value = "stored-by-libtorrent";
    let put = lt.command(&format!("put-immutable {value}"));
    let target = json_str(&put, "target").to_string();
    assert_eq!(
        target,
        sha1_hex(bstr(value).as_bytes()),
        "libtorrent's target"
    );
    assert!(json_int(&put, "num_success") >= 1, "{put}");

    let (stdout, _) = swarm_dht_ok(&["get", &target], cli);
    assert_eq!(stdout, bstr(value));
}

#[test]
fn swarm_dht_put_immutable_item_is_found_by_libtorrent() {
    let python = require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path());
    // Fresh addresses: the tables fill with dead `swarm dht` nodes.
    let cli = Cli::fresh(boot.addr);
    let mut lt = LtItems::start(python, cli.boot);
    let (target, stderr) = swarm_dht_ok(&["put", "hello"], cli);
    assert_eq!(target, sha1_hex(b"5:hello"), "swarm's target");
    assert_libtorrent_stored_it(&stderr);

    let got = lt.command(&format!("get-immutable {target}"));
    assert_eq!(json_str(&got, "target"), target);
    assert_eq!(bencoded(&got), "5:hello");

    // A value that is not a string. libtorrent reports an immutable item only once the
    // SHA-1 of its bencoding is the target; its Python binding cannot convert a list to
    // Python, so the value is checked in the alert's message.
    let list = "l5:helloi42ed1:ai-1eee";
    let (target, _) = swarm_dht_ok(&["put", "--bencoded", list], cli);
    assert_eq!(target, sha1_hex(list.as_bytes()));
    let got = lt.command(&format!("get-immutable {target}"));
    assert_eq!(json_str(&got, "target"), target);
    if got.contains("\"bencoded\": null") {
        let msg = json_str(&got, "message");
        for part in ["'hello'", "42", "'a': -1"] {
            assert!(msg.contains(part), "{part} not in {msg}");
        }
    } else {
        assert_eq!(bencoded(&got), list);
    }
}

#[test]
fn mutable_item_versions_pass_between_swarm_and_libtorrent() {
    let python = require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path());
    let cli = Cli::fixed(&boot);
    let mut lt = LtItems::start(python, cli.boot);
    let (pk, key) = keygen(dir.path(), "item.key");
    let key = key.to_str().unwrap();
    let salt = "interop-salt";

    // Ours, seq 1: libtorrent reports it only after checking our signature.
    let (target, stderr) = swarm_dht_ok(&["put", "v1", "--key", key, "--salt", salt], cli);
    assert!(is_hex(&target, 40), "{target:?}");
    // Libtorrent's put handler accepted our signature (and stored seq 1).
    assert_libtorrent_stored_it(&stderr);
    let got = lt.command(&format!("get-mutable {pk} {salt}"));
    assert_eq!(bencoded(&got), bstr("v1"), "{got}");
    assert_eq!(json_int(&got, "seq"), 1, "{got}");
    assert_eq!(json_str(&got, "salt"), salt);
    assert!(is_hex(json_str(&got, "signature"), 128), "{got}");

    // Libtorrent's, signed with the same key (expanded from the key file's seed in
    // Python): it finds seq 1 and stores seq 2.
    // (lt_items.py derives the public key from the seed itself where Python's
    // `cryptography` is installed, and fails on a mismatch with keygen's.)
    let put = lt.command(&format!("put-mutable {key} {salt} v2-from-libtorrent {pk}"));
    assert_eq!(
        json_str(&put, "public_key"),
        pk,
        "same public key as keygen's"
    );
    eprintln!(
        "public key derived independently in Python: {}",
        put.contains("\"public_key_checked\": true")
    );
    assert_eq!(json_int(&put, "seq"), 2, "{put}");
    assert!(json_int(&put, "num_success") >= 1, "{put}");

    // We verify libtorrent's signature and take the newer version.
    let (stdout, stderr) = swarm_dht_ok(&["get", "--pubkey", &pk, "--salt", salt], cli);
    assert_eq!(stdout, bstr("v2-from-libtorrent"));
    assert!(stderr.contains("seq 2"), "{stderr}");

    // And ours continues from libtorrent's seq: 3, which libtorrent then finds.
    let (again, stderr) = swarm_dht_ok(&["put", "v3", "--key", key, "--salt", salt], cli);
    assert_eq!(again, target, "same key and salt, same target");
    // With cas 2: libtorrent, holding seq 2, accepted the replacement.
    assert_libtorrent_stored_it(&stderr);
    let got = lt.command(&format!("get-mutable {pk} {salt}"));
    assert_eq!(bencoded(&got), bstr("v3"), "{got}");
    assert_eq!(json_int(&got, "seq"), 3, "{got}");

    // An older seq is refused by every node, libtorrent included (BEP 44 error 302), and
    // `swarm dht put` says so.
    let out = swarm_dht(
        &["put", "stale", "--key", key, "--salt", salt, "--seq", "1"],
        cli,
    );
    let (stdout, stderr) = texts(&out);
    assert!(
        !out.status.success(),
        "a stale seq was stored: {stdout} {stderr}"
    );
    let asked: usize = stderr
        .split_once("no node stored the item (asked ")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(asked >= 2, "libtorrent was not asked: {stderr}");
    let (stdout, _) = swarm_dht_ok(&["get", "--pubkey", &pk, "--salt", salt], cli);
    assert_eq!(stdout, bstr("v3"));
}

// ---------------------------------------------------------------------------------------
// The CLI alone (no libtorrent): one `swarm bootstrap` process and `swarm dht` commands.

#[test]
fn swarm_dht_put_and_get_round_trip_through_a_bootstrap_node() {
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path());
    let cli = Cli::fixed(&boot);

    // Immutable, a string and a bencoded value.
    let (target, _) = swarm_dht_ok(&["put", "round-trip"], cli);
    assert_eq!(target, sha1_hex(bstr("round-trip").as_bytes()));
    let (stdout, _) = swarm_dht_ok(&["get", &target], cli);
    assert_eq!(stdout, bstr("round-trip"));
    let dict = "d1:ai1e1:bl1:xee";
    let (target, _) = swarm_dht_ok(&["put", "--bencoded", dict], cli);
    let (stdout, _) = swarm_dht_ok(&["get", &target], cli);
    assert_eq!(stdout, dict);

    // Mutable, empty salt: seq 1, then one above the newest found, then an explicit --seq.
    let (pk, key) = keygen(dir.path(), "k");
    let key = key.to_str().unwrap();
    swarm_dht_ok(&["put", "first", "--key", key], cli);
    let (stdout, stderr) = swarm_dht_ok(&["get", "--pubkey", &pk], cli);
    assert_eq!(stdout, bstr("first"));
    assert!(stderr.contains("seq 1"), "{stderr}");
    swarm_dht_ok(&["put", "second", "--key", key, "--seq", "7"], cli);
    let (stdout, stderr) = swarm_dht_ok(&["get", "--pubkey", &pk], cli);
    assert_eq!(stdout, bstr("second"));
    assert!(stderr.contains("seq 7"), "{stderr}");
    // The same key under another salt is another item.
    let out = swarm_dht(&["get", "--pubkey", &pk, "--salt", "other"], cli);
    assert!(!out.status.success(), "{:?}", texts(&out));
}

#[test]
fn swarm_dht_get_of_an_unknown_target_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(dir.path());
    let cli = Cli::fixed(&boot);
    let unknown = "00112233445566778899aabbccddeeff00112233";
    let started = Instant::now();
    let out = swarm_dht(&["get", unknown], cli);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success(), "exit {}: {stdout}", out.status);
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(
        stderr.contains(&format!("no item found under {unknown}")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a get of nothing waited for its whole --timeout ({:.2?})",
        started.elapsed()
    );
}

#[test]
fn swarm_dht_bad_keys_and_targets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every case must fail before joining the DHT.
    let ip = next_loopback_ip();
    let nobody = SocketAddr::from((ip, free_port(ip)));
    let fails = |args: &[&str], want: &str| {
        let out = swarm_dht(args, Cli::fresh(nobody));
        let (stdout, stderr) = texts(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(stdout.is_empty(), "{args:?}: {stdout:?}");
        assert!(
            stderr.contains(want) && stderr.lines().count() == 1,
            "{args:?}: want one line with {want:?}, got {stderr:?}"
        );
    };
    let missing = dir.path().join("missing.key");
    fails(
        &["put", "x", "--key", missing.to_str().unwrap()],
        "cannot read key file",
    );
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    fails(
        &["put", "x", "--key", bad.to_str().unwrap()],
        "is not a key file",
    );
    let short = dir.path().join("short.key");
    std::fs::write(&short, format!("{}\n", "ab".repeat(31))).unwrap();
    fails(
        &["put", "x", "--key", short.to_str().unwrap()],
        "is not a key file",
    );
    fails(&["get", "xyz"], "is not a target");
    fails(&["get", "--pubkey", "abcd"], "is not a public key");

    // keygen never overwrites a key.
    let (_, key) = keygen(dir.path(), "kept.key");
    let before = std::fs::read(&key).unwrap();
    let out = tests::wait_with_limit(
        tests::swarm_command(swarm_bin!())
            .args(["dht", "keygen"])
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        CLI_LIMIT,
    );
    let (_, stderr) = texts(&out);
    assert!(!out.status.success(), "keygen overwrote {}", key.display());
    assert!(stderr.contains("cannot create key file"), "{stderr}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}
