//! A corpus of hostile .torrent files: each gets a clear error (checked by kind and by
//! message), nothing panics, and no path from a torrent can land outside the output
//! directory. Also `swarm create` on trees it cannot represent: a one-line error, no output.

use bencode::Encoder;
use std::path::Path;
use wire::metainfo::paths::{ResolveError, UnsafeReason};
use wire::metainfo::{Info, Metainfo, MetainfoError};

/// A multi-file info dictionary with the given (path, length) entries and a correct
/// `pieces` field for 16 KiB pieces (unless `npieces` overrides it).
fn multi_info(name: &[u8], files: &[(Vec<&[u8]>, i64)], npieces: Option<usize>) -> Vec<u8> {
    let total = files.iter().fold(0i64, |a, f| a.saturating_add(f.1.max(0)));
    let n = npieces.unwrap_or_else(|| (total as u64).div_ceil(16384) as usize);
    let mut info = Vec::new();
    let mut e = Encoder::new(&mut info);
    e.begin_dict().key(b"files").begin_list();
    for (path, len) in files {
        e.begin_dict()
            .key(b"length")
            .int(*len)
            .key(b"path")
            .begin_list();
        for c in path {
            e.bytes(c);
        }
        e.end().end();
    }
    e.end()
        .key(b"name")
        .bytes(name)
        .key(b"piece length")
        .int(16384)
        .key(b"pieces")
        .bytes(&vec![0xab; n * 20])
        .end();
    info
}

fn single_info(name: &[u8], length: i64, piece_length: i64, npieces: usize) -> Vec<u8> {
    let mut info = Vec::new();
    Encoder::new(&mut info)
        .begin_dict()
        .key(b"length")
        .int(length)
        .key(b"name")
        .bytes(name)
        .key(b"piece length")
        .int(piece_length)
        .key(b"pieces")
        .bytes(&vec![0xcd; npieces * 20])
        .end();
    info
}

fn torrent(info: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&mut out)
        .begin_dict()
        .key(b"info")
        .raw(info)
        .end();
    out
}

fn unsafe_reason(t: &[u8]) -> (String, UnsafeReason) {
    match Metainfo::from_bytes(t) {
        Err(MetainfoError::UnsafePath { path, reason }) => (path, reason),
        other => panic!("expected an unsafe-path error, got {other:?}"),
    }
}

#[test]
fn path_traversal_in_every_form_is_refused_and_named() {
    let cases: Vec<(Vec<&[u8]>, &str, UnsafeReason)> = vec![
        (vec![b".."], "t/..", UnsafeReason::DotDot),
        (
            vec![b"a", b"..", b"..", b"x"],
            "t/a/../../x",
            UnsafeReason::DotDot,
        ),
        (vec![b"/etc/passwd"], "t//etc/passwd", UnsafeReason::Slash),
        (vec![b"a/../../x"], "t/a/../../x", UnsafeReason::Slash),
        (vec![b"C:\\x"], "t/C:\\\\x", UnsafeReason::Backslash),
        (vec![b"C:"], "t/C:", UnsafeReason::DriveLetter),
        (vec![b"d:evil"], "t/d:evil", UnsafeReason::DriveLetter),
        (
            vec![b"..\\..\\x"],
            "t/..\\\\..\\\\x",
            UnsafeReason::Backslash,
        ),
        (vec![b"a\0b"], "t/a\\0b", UnsafeReason::Nul),
        (vec![b"a", b"", b"b"], "t/a//b", UnsafeReason::Empty),
        (vec![b"."], "t/.", UnsafeReason::Dot),
        (vec![], "t", UnsafeReason::Empty),
    ];
    for (path, shown, reason) in cases {
        let t = torrent(&multi_info(b"t", &[(path, 5)], None));
        let (p, r) = unsafe_reason(&t);
        assert_eq!((p.as_str(), r), (shown, reason));
        let msg = Metainfo::from_bytes(&t).unwrap_err().to_string();
        assert!(
            msg.starts_with("unsafe path") && msg.contains(shown),
            "{msg}"
        );
    }
    // The torrent's name is a path component too.
    for name in [&b".."[..], b"/abs", b"a/b", b"C:\\", b""] {
        let t = torrent(&single_info(name, 5, 16384, 1));
        let (_, r) = unsafe_reason(&t);
        assert_ne!(r, UnsafeReason::TooDeep, "{name:?}");
    }
    // Too deep.
    let deep: Vec<&[u8]> = vec![b"d"; 100];
    let (_, r) = unsafe_reason(&torrent(&multi_info(b"t", &[(deep, 1)], None)));
    assert_eq!(r, UnsafeReason::TooDeep);
    // `path.utf-8` is checked just like `path`.
    let mut info = Vec::new();
    Encoder::new(&mut info)
        .begin_dict()
        .key(b"files")
        .begin_list()
        .begin_dict()
        .key(b"length")
        .int(1)
        .key(b"path")
        .begin_list()
        .str("ok")
        .end()
        .key(b"path.utf-8")
        .begin_list()
        .str("..")
        .str("x")
        .end()
        .end()
        .end()
        .key(b"name")
        .str("t")
        .key(b"piece length")
        .int(16384)
        .key(b"pieces")
        .bytes(&[0; 20])
        .end();
    assert_eq!(unsafe_reason(&torrent(&info)).1, UnsafeReason::DotDot);
}

#[test]
fn lengths_and_piece_geometry_are_checked() {
    let e = |info: Vec<u8>| Metainfo::from_bytes(&torrent(&info)).unwrap_err();
    assert!(matches!(
        e(single_info(b"f", 100_000, 16384, 6)),
        MetainfoError::PieceCountMismatch {
            found: 6,
            expected: 7,
            ..
        }
    ));
    assert!(matches!(
        e(single_info(b"f", 100_000, 16384, 8)),
        MetainfoError::PieceCountMismatch {
            found: 8,
            expected: 7,
            ..
        }
    ));
    assert_eq!(
        e(single_info(b"f", -5, 16384, 0)),
        MetainfoError::NegativeLength {
            path: "f".into(),
            length: -5
        }
    );
    assert_eq!(
        e(single_info(b"f", 5, 0, 1)),
        MetainfoError::BadPieceLength(0)
    );
    assert_eq!(
        e(single_info(b"f", 5, -16384, 1)),
        MetainfoError::BadPieceLength(-16384)
    );
    assert_eq!(
        e(single_info(b"f", 5, 3 << 14, 1)),
        MetainfoError::BadPieceLength(3 << 14)
    );
    assert_eq!(
        e(single_info(b"f", 5, 1 << 40, 1)),
        MetainfoError::BadPieceLength(1 << 40)
    );
    // An absurd length with a matching-looking but tiny `pieces`.
    assert!(matches!(
        e(single_info(b"f", i64::MAX, 1 << 26, 1)),
        MetainfoError::PieceCountMismatch { .. }
    ));
    // Total length overflows when summed.
    let over = multi_info(
        b"t",
        &[(vec![b"a"], i64::MAX), (vec![b"b"], i64::MAX)],
        Some(1),
    );
    assert_eq!(e(over), MetainfoError::TotalLengthOverflow);
    let neg = multi_info(b"t", &[(vec![b"a"], 5), (vec![b"b"], -1)], Some(1));
    assert_eq!(
        e(neg),
        MetainfoError::NegativeLength {
            path: "t/b".into(),
            length: -1
        }
    );
    // `pieces` not a multiple of 20.
    let mut info = Vec::new();
    Encoder::new(&mut info)
        .begin_dict()
        .key(b"length")
        .int(5)
        .key(b"name")
        .str("f")
        .key(b"piece length")
        .int(16384)
        .key(b"pieces")
        .bytes(&[0; 19])
        .end();
    assert_eq!(e(info), MetainfoError::PiecesNotMultipleOf20(19));
    assert_eq!(e(single_info(b"f", 0, 16384, 0)), MetainfoError::Empty);
}

#[test]
fn structural_garbage_is_refused() {
    let e = |b: &[u8]| Metainfo::from_bytes(b).unwrap_err();
    assert_eq!(
        e(b"i42e"),
        MetainfoError::NotADictionary { found: "integer" }
    );
    assert_eq!(e(b"le"), MetainfoError::NotADictionary { found: "list" });
    assert_eq!(e(b"de"), MetainfoError::Missing("info"));
    assert_eq!(
        e(b"d4:info3:abce").to_string(),
        "`info` has type byte string, expected a dictionary"
    );
    assert_eq!(e(b"d4:infodee"), MetainfoError::Missing("info.pieces"));
    // Deeply nested bencode stops at the decoder's depth limit.
    let deep = [vec![b'l'; 100_000], vec![b'e'; 100_000]].concat();
    assert!(matches!(
        e(&deep),
        MetainfoError::Bencode(bencode::DecodeError::TooDeep { .. })
    ));
    let mut nested = b"d4:infod5:extra".to_vec();
    nested.extend(vec![b'l'; 5000]);
    nested.extend(vec![b'e'; 5000]);
    nested.extend(b"ee");
    assert!(matches!(
        e(&nested),
        MetainfoError::Bencode(bencode::DecodeError::TooDeep { .. })
    ));
    // A gigantic claimed string length: refused without allocating it.
    assert!(matches!(
        e(b"d4:info99999999999999:"),
        MetainfoError::Bencode(_)
    ));
    assert!(matches!(
        e(b"d4:info18446744073709551616:x"),
        MetainfoError::Bencode(_)
    ));
    // Duplicate keys (two different `info` dictionaries would mean two info-hashes).
    let info = single_info(b"f", 5, 16384, 1);
    let dup = [b"d4:info".as_slice(), &info, b"4:info", &info, b"e"].concat();
    assert!(matches!(
        e(&dup),
        MetainfoError::Bencode(bencode::DecodeError::DuplicateKey { .. })
    ));
    // Both `length` and `files`, or neither.
    let both = {
        let mut i = Vec::new();
        Encoder::new(&mut i)
            .begin_dict()
            .key(b"files")
            .begin_list()
            .end()
            .key(b"length")
            .int(1)
            .key(b"name")
            .str("x")
            .key(b"piece length")
            .int(16384)
            .key(b"pieces")
            .bytes(&[0; 20])
            .end();
        i
    };
    assert_eq!(e(&torrent(&both)), MetainfoError::LengthAndFiles);
    // Too large.
    let huge = vec![b'd'; wire::metainfo::MAX_TORRENT_BYTES + 1];
    assert!(matches!(e(&huge), MetainfoError::TooLarge { .. }));
}

#[test]
fn truncated_torrents_never_parse_and_never_panic() {
    let info = multi_info(
        b"t",
        &[(vec![b"a"], 20_000), (vec![b"s", b"b"], 30_000)],
        None,
    );
    let t = torrent(&info);
    assert!(Metainfo::from_bytes(&t).is_ok());
    for cut in 0..t.len() {
        let err = Metainfo::from_bytes(&t[..cut]).unwrap_err();
        assert!(
            matches!(err, MetainfoError::Bencode(_)),
            "cut at {cut}: {err}"
        );
        assert!(Info::from_bytes(&info[..cut.min(info.len() - 1)]).is_err());
    }
}

#[test]
fn duplicate_paths_would_overwrite_each_other() {
    let t = torrent(&multi_info(b"t", &[(vec![b"a"], 1), (vec![b"a"], 1)], None));
    assert_eq!(
        Metainfo::from_bytes(&t).unwrap_err(),
        MetainfoError::DuplicatePath { path: "t/a".into() }
    );
    let t = torrent(&multi_info(
        b"t",
        &[(vec![b"a"], 1), (vec![b"a", b"b"], 1)],
        None,
    ));
    assert!(matches!(
        Metainfo::from_bytes(&t),
        Err(MetainfoError::DuplicatePath { .. })
    ));
}

/// Even for a valid torrent, resolving its files under an output directory refuses a
/// symlink planted in that directory, so writes cannot be redirected outside.
#[test]
fn nothing_resolves_outside_the_output_directory() {
    let out = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let t = torrent(&multi_info(b"t", &[(vec![b"sub", b"f"], 10)], None));
    let m = Metainfo::from_bytes(&t).unwrap();
    let f = &m.info.files[0];
    let p = f.path_under(out.path()).unwrap();
    assert_eq!(p, out.path().join("t/sub/f"));
    assert!(p.starts_with(out.path()));

    std::fs::create_dir(out.path().join("t")).unwrap();
    std::os::unix::fs::symlink(outside.path(), out.path().join("t/sub")).unwrap();
    let err = f.path_under(out.path()).unwrap_err();
    assert!(matches!(err, ResolveError::SymlinkOnDisk { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");

    // Hostile component lists are refused by the resolver on their own, too.
    for bad in [vec!["..", "x"], vec!["/etc"], vec!["a", "C:"], vec!["a\\b"]] {
        let err = wire::metainfo::paths::resolve_on_disk(out.path(), &bad).unwrap_err();
        assert!(matches!(err, ResolveError::Unsafe { .. }), "{bad:?}");
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

fn swarm_create(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut c = tests::swarm_command(tests::swarm_bin!());
    c.current_dir(cwd).arg("create").args(args);
    tests::wait_with_limit(
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        std::time::Duration::from_secs(60),
    )
}

#[test]
fn swarm_create_refuses_unrepresentable_trees_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("ok"), b"data").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
    let out = swarm_create(&["tree"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("symbolic link") && stderr.contains("link"),
        "{stderr}"
    );
    assert!(!dir.path().join("tree.torrent").exists());

    std::fs::remove_file(tree.join("link")).unwrap();
    std::fs::write(tree.join("a\\b"), b"x").unwrap();
    let out = swarm_create(&["tree"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backslash"));
    assert!(!dir.path().join("tree.torrent").exists());
    std::fs::remove_file(tree.join("a\\b")).unwrap();

    let out = swarm_create(&["tree", "--piece-length", "1000"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = swarm_create(&["missing"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}

#[test]
fn swarm_create_writes_name_torrent_and_never_clobbers_without_force() {
    let dir = tempfile::tempdir().unwrap();
    tests::write_file(dir.path(), "data/f.bin", &tests::test_payload(40_000, 9));
    let out = swarm_create(&["data"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let magnet = String::from_utf8(out.stdout).unwrap();
    let written = std::fs::read(dir.path().join("data.torrent")).unwrap();
    let m = Metainfo::from_bytes(&written).unwrap();
    assert_eq!(
        magnet.trim(),
        wire::magnet::Magnet::parse(magnet.trim())
            .unwrap()
            .to_string()
    );
    assert!(magnet.starts_with(&format!("magnet:?xt=urn:btih:{}", m.info_hash.to_hex())));

    // An existing file is kept, byte for byte, without --force.
    std::fs::write(dir.path().join("data.torrent"), b"precious").unwrap();
    let out = swarm_create(&["data"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(dir.path().join("data.torrent")).unwrap(),
        b"precious"
    );
    let out = swarm_create(&["data", "--force"], dir.path());
    assert!(out.status.success());
    let replaced = std::fs::read(dir.path().join("data.torrent")).unwrap();
    assert_eq!(
        Metainfo::from_bytes(&replaced).unwrap().info_hash,
        m.info_hash
    );
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
