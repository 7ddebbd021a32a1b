//! Metainfo and magnet interop with libtorrent (python3-libtorrent), both ways:
//! torrents libtorrent makes (v1 single/multi-file, hybrid v1+v2) parse here with the same
//! info-hash and files; torrents `swarm create` makes load in libtorrent with the same
//! info-hash, files and pieces, and libtorrent's hash check of the data passes; magnet links
//! agree both ways.

use std::path::Path;
use std::time::Duration;
use wire::magnet::Magnet;
use wire::metainfo::Metainfo;

const LIMIT: Duration = Duration::from_secs(60);

/// Makes a torrent of `root` with libtorrent. Prints one line per file
/// (`path\tsize\tpad`) after a first line `v1-hash\tnum_pieces\tmagnet`.
const LT_CREATE: &str = r#"
import libtorrent as lt, os, sys
root, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fs = lt.file_storage()
lt.add_files(fs, root)
flags = lt.create_torrent.v1_only if mode == "v1" else 0
ct = lt.create_torrent(fs, 16384, flags=flags)
lt.set_piece_hashes(ct, os.path.dirname(root))
with open(out, "wb") as f:
    f.write(lt.bencode(ct.generate()))
ti = lt.torrent_info(out)
fl = ti.files()
print("%s\t%d\t%s" % (ti.info_hashes().v1, ti.num_pieces(), lt.make_magnet_uri(ti)))
for i in range(fl.num_files()):
    pad = 1 if fl.file_flags(i) & lt.file_storage.flag_pad_file else 0
    print("%s\t%d\t%d" % (fl.file_path(i), fl.file_size(i), pad))
"#;

/// Loads a .torrent in libtorrent, prints the same lines as LT_CREATE, then checks the data
/// under `save_path` in a session with all networking off and prints the final state.
const LT_LOAD_AND_CHECK: &str = r#"
import libtorrent as lt, sys, time
path, save_path = sys.argv[1], sys.argv[2]
ti = lt.torrent_info(path)
fl = ti.files()
print("%s\t%d\t%s" % (ti.info_hashes().v1, ti.num_pieces(), lt.make_magnet_uri(ti)))
for i in range(fl.num_files()):
    pad = 1 if fl.file_flags(i) & lt.file_storage.flag_pad_file else 0
    print("%s\t%d\t%d" % (fl.file_path(i), fl.file_size(i), pad))
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
})
h = ses.add_torrent({"ti": ti, "save_path": save_path})
deadline = time.time() + 30
while time.time() < deadline:
    s = h.status()
    if s.is_seeding or str(s.state) in ("downloading", "finished"):
        break
    time.sleep(0.05)
s = h.status()
print("STATE\t%s\t%d\t%s" % (s.state, s.num_pieces, "seeding" if s.is_seeding else "not-seeding"))
"#;

struct LtView {
    v1: String,
    num_pieces: usize,
    magnet: String,
    files: Vec<(String, u64, bool)>,
    state_line: Option<String>,
}

fn parse_lt_output(out: &[u8]) -> LtView {
    let text = String::from_utf8(out.to_vec()).expect("utf-8 output");
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let mut files = Vec::new();
    let mut state_line = None;
    for l in lines {
        let parts: Vec<&str> = l.split('\t').collect();
        if parts[0] == "STATE" {
            state_line = Some(l.to_string());
            continue;
        }
        files.push((
            parts[0].to_string(),
            parts[1].parse().unwrap(),
            parts[2] == "1",
        ));
    }
    LtView {
        v1: head[0].to_string(),
        num_pieces: head[1].parse().unwrap(),
        magnet: head[2].to_string(),
        files,
        state_line,
    }
}

fn our_files(m: &Metainfo) -> Vec<(String, u64, bool)> {
    m.info
        .files
        .iter()
        .map(|f| (f.path.join("/"), f.length, f.attr.padding))
        .collect()
}

/// A tree with files in sub-directories, sizes that make pieces span files.
fn make_tree(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("tree");
    tests::write_file(&root, "a.bin", &tests::test_payload(50_000, 1));
    tests::write_file(&root, "sub/b.bin", &tests::test_payload(30_000, 2));
    tests::write_file(&root, "sub/deeper/c.txt", &tests::test_payload(1_234, 3));
    tests::write_file(&root, "z", &tests::test_payload(70_001, 4));
    root
}

fn lt_create(python: &str, root: &Path, mode: &str) -> (LtView, Metainfo) {
    let out = root.with_extension(format!("{mode}.torrent"));
    let o = tests::run_python(
        python,
        LT_CREATE,
        &[root.to_str().unwrap(), out.to_str().unwrap(), mode],
        LIMIT,
    );
    let view = parse_lt_output(&o.stdout);
    let ours = Metainfo::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    (view, ours)
}

#[test]
fn libtorrent_v1_torrents_parse_with_the_same_info_hash_and_files() {
    let python = tests::require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let root = make_tree(dir.path());

    let (lt, ours) = lt_create(python, &root, "v1");
    assert_eq!(ours.info_hash.to_hex(), lt.v1);
    assert_eq!(our_files(&ours), lt.files);
    assert_eq!(ours.info.num_pieces(), lt.num_pieces);
    assert!(!ours.info.single_file && !ours.info.hybrid);

    let single = root.join("z");
    let (lt, ours) = lt_create(python, &single, "v1");
    assert_eq!(ours.info_hash.to_hex(), lt.v1);
    assert!(ours.info.single_file);
    assert_eq!(our_files(&ours), [("z".to_string(), 70_001, false)]);
    assert_eq!(our_files(&ours), lt.files);

    // libtorrent's magnet parses here with the same info-hash and name.
    let m = Magnet::parse(&lt.magnet).unwrap();
    assert_eq!(m.info_hash, ours.info_hash);
    assert_eq!(m.display_name.as_deref(), Some("z"));
}

#[test]
fn libtorrent_hybrid_torrents_parse_as_v1_with_padding() {
    let python = tests::require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let root = make_tree(dir.path());
    let (lt, ours) = lt_create(python, &root, "hybrid");
    assert!(ours.info.hybrid);
    assert_eq!(ours.info_hash.to_hex(), lt.v1);
    assert_eq!(our_files(&ours), lt.files);
    assert!(
        ours.info.files.iter().any(|f| f.attr.padding),
        "hybrid torrents pad files"
    );
    assert_eq!(ours.info.num_pieces(), lt.num_pieces);
    // A hybrid magnet carries btmh too; we take the btih and ignore the rest.
    assert!(lt.magnet.contains("urn:btmh:"), "{}", lt.magnet);
    let m = Magnet::parse(&lt.magnet).unwrap();
    assert_eq!(m.info_hash, ours.info_hash);
    assert_eq!(m.display_name.as_deref(), Some("tree"));
}

fn swarm_create(args: &[&str]) -> (String, String) {
    let mut c = tests::swarm_command(tests::swarm_bin!());
    c.arg("create").args(args);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait_with_limit(child, LIMIT);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "swarm create failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn swarm_created_torrents_load_and_verify_in_libtorrent() {
    let python = tests::require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let root = make_tree(dir.path());
    for (target, piece_length) in [(root.clone(), "16K"), (root.join("a.bin"), "32768")] {
        let out = dir.path().join("out.torrent");
        let _ = std::fs::remove_file(&out);
        let (stdout, _) = swarm_create(&[
            target.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--piece-length",
            piece_length,
        ]);
        let line = stdout.trim_end();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(line.starts_with("magnet:?xt=urn:btih:"), "{line}");
        let hex = &line["magnet:?xt=urn:btih:".len()..][..40];
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

        let ours = Metainfo::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(ours.info_hash.to_hex(), hex);

        let o = tests::run_python(
            python,
            LT_LOAD_AND_CHECK,
            &[
                out.to_str().unwrap(),
                target.parent().unwrap().to_str().unwrap(),
            ],
            LIMIT,
        );
        let lt = parse_lt_output(&o.stdout);
        assert_eq!(lt.v1, hex);
        assert_eq!(lt.files, our_files(&ours));
        assert_eq!(lt.num_pieces, ours.info.num_pieces());
        let state = lt.state_line.unwrap();
        assert!(
            state.ends_with(&format!("\t{}\tseeding", ours.info.num_pieces())),
            "libtorrent did not verify all pieces: {state}"
        );
    }
}

#[test]
fn libtorrent_refuses_corrupted_data_for_a_swarm_torrent() {
    // The check above must be able to fail: with one byte changed, libtorrent is not seeding.
    let python = tests::require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let root = make_tree(dir.path());
    let out = dir.path().join("t.torrent");
    swarm_create(&[root.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let victim = root.join("sub/b.bin");
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 1;
    std::fs::write(&victim, data).unwrap();
    let o = tests::run_python(
        python,
        LT_LOAD_AND_CHECK,
        &[out.to_str().unwrap(), dir.path().to_str().unwrap()],
        LIMIT,
    );
    let state = parse_lt_output(&o.stdout).state_line.unwrap();
    assert!(state.ends_with("not-seeding"), "{state}");
}

const LT_PARSE_MAGNET: &str = r#"
import libtorrent as lt, sys
p = lt.parse_magnet_uri(sys.argv[1])
print(p.info_hashes.v1)
print(p.name)
print(",".join(p.trackers))
print(",".join("%s:%d" % (h, port) for h, port in p.peers))
"#;

#[test]
fn our_magnets_parse_in_libtorrent() {
    let python = tests::require_libtorrent!();
    let dir = tempfile::tempdir().unwrap();
    let root = make_tree(dir.path());
    let out = dir.path().join("t.torrent");
    let (stdout, _) = swarm_create(&[
        root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--tracker",
        "udp://127.0.0.1:1/announce",
    ]);
    let mut m = Magnet::parse(stdout.trim()).unwrap();
    m.display_name = Some("name with spaces & ünïcode+plus".into());
    m.peers.push(wire::magnet::PeerHint::Addr(
        "127.0.0.1:6881".parse().unwrap(),
    ));
    m.peers
        .push(wire::magnet::PeerHint::Addr("[::1]:7000".parse().unwrap()));
    let o = tests::run_python(python, LT_PARSE_MAGNET, &[&m.to_string()], LIMIT);
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], m.info_hash.to_hex());
    assert_eq!(lines[1], "name with spaces & ünïcode+plus");
    assert_eq!(lines[2], "udp://127.0.0.1:1/announce");
    assert_eq!(lines[3], "127.0.0.1:6881,::1:7000", "{m}");
}
