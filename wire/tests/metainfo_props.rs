//! Property tests for the metainfo and magnet codecs: round trips, and arbitrary or mutated
//! input never panics.

use proptest::prelude::*;
use std::net::SocketAddr;
use wire::create::{create_torrent, CreateOptions};
use wire::infohash::InfoHash;
use wire::magnet::{Magnet, PeerHint};
use wire::metainfo::{Info, Metainfo};

/// A small valid torrent made by `wire::create`, to mutate.
fn seed_torrent() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a"), vec![1u8; 20_000]).unwrap();
    std::fs::write(root.join("sub/b"), vec![2u8; 5_000]).unwrap();
    let opts = CreateOptions {
        piece_length: Some(16384),
        trackers: vec!["http://t/a".into()],
        ..Default::default()
    };
    create_torrent(&root, &opts, &|_| {}).unwrap().bytes
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Printable names without separators; the filter drops the few reserved ones.
    "[a-zA-Z0-9 _.~é名-]{1,20}".prop_filter("safe", |s| {
        wire::metainfo::paths::check_component(s).is_ok()
    })
}

fn peer_strategy() -> impl Strategy<Value = PeerHint> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, p)| PeerHint::Addr(SocketAddr::from((ip, p)))),
        (any::<[u16; 8]>(), 1u16..).prop_map(|(ip, p)| PeerHint::Addr(SocketAddr::from((
            std::net::Ipv6Addr::from(ip),
            p
        )))),
        ("[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}", 1u16..)
            .prop_map(|(host, port)| PeerHint::Host { host, port }),
    ]
}

fn magnet_strategy() -> impl Strategy<Value = Magnet> {
    (
        any::<[u8; 20]>(),
        proptest::option::of(".{0,30}"),
        proptest::collection::vec(".{1,30}", 0..4),
        proptest::collection::vec(peer_strategy(), 0..4),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec((0u32..1000, 0u32..1000), 0..4),
    )
        .prop_map(|(h, dn, tr, peers, xl, so)| {
            let mut m = Magnet::new(InfoHash(h));
            m.display_name = dn;
            m.trackers = tr;
            m.peers = peers;
            m.exact_length = xl;
            m.select_only = so.into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect();
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn magnet_format_parse_round_trip(m in magnet_strategy()) {
        let s = m.to_string();
        prop_assert!(s.starts_with("magnet:?xt=urn:btih:"));
        prop_assert_eq!(Magnet::parse(&s).unwrap(), m);
    }

    #[test]
    fn magnet_parser_never_panics(s in ".{0,200}") {
        let _ = Magnet::parse(&s);
        let _ = Magnet::parse(&format!("magnet:?{s}"));
        let _ = Magnet::parse(&format!("magnet:?xt=urn:btih:{s}"));
    }

    #[test]
    fn metainfo_parser_never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Metainfo::from_bytes(&b);
        let _ = Info::from_bytes(&b);
    }

    #[test]
    fn metainfo_parser_never_panics_on_mutated_torrents(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut t = seed_torrent();
        for (at, byte) in edits {
            let i = at.index(t.len());
            t[i] = byte;
        }
        if let Ok(m) = Metainfo::from_bytes(&t) {
            // Whatever parses is internally consistent.
            let covered: u64 = (0..m.info.num_pieces())
                .flat_map(|p| m.info.piece_file_slices(p))
                .map(|s| s.length)
                .sum();
            prop_assert_eq!(covered, m.info.total_length);
            prop_assert_eq!(m.info_hash, InfoHash::of_info_bytes(&m.raw_info));
        }
        let end = cut.index(t.len());
        prop_assert!(Metainfo::from_bytes(&t[..end]).is_err());
    }

    #[test]
    fn create_then_parse_round_trip(
        files in proptest::collection::btree_map(name_strategy(), 0usize..40_000, 1..5),
        pl_shift in 14u32..16,
        single in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut n = 0u8;
        for (name, len) in &files {
            n = n.wrapping_add(1);
            std::fs::write(root.join(name), vec![n; *len]).unwrap();
        }
        let total: usize = files.values().sum();
        prop_assume!(total > 0);
        let target = if single {
            let (name, len) = files.iter().find(|(_, l)| **l > 0).unwrap();
            let _ = len;
            root.join(name)
        } else {
            root.clone()
        };
        let opts = CreateOptions { piece_length: Some(1 << pl_shift), ..Default::default() };
        let c = create_torrent(&target, &opts, &|_| {}).unwrap();
        let m = Metainfo::from_bytes(&c.bytes).unwrap();
        prop_assert_eq!(&m, &c.metainfo);
        prop_assert_eq!(m.info_hash, InfoHash::of_info_bytes(&m.raw_info));
        prop_assert_eq!(Info::from_bytes(&m.raw_info).unwrap(), m.info.clone());
        prop_assert_eq!(Magnet::parse(&c.magnet.to_string()).unwrap().info_hash, m.info_hash);
        if single {
            prop_assert_eq!(m.info.files.len(), 1);
        } else {
            let names: Vec<&String> = m.info.files.iter().map(|f| &f.path[1]).collect();
            let expected: Vec<&String> = files.keys().collect();
            prop_assert_eq!(names, expected);
        }
    }
}

/// A multi-file info dictionary with the given file lengths (names f0, f1, ...).
fn info_with_lengths(lengths: &[u64], piece_length: u64) -> Vec<u8> {
    let total: u64 = lengths.iter().sum();
    let n = total.div_ceil(piece_length) as usize;
    let mut info = Vec::new();
    let mut e = bencode::Encoder::new(&mut info);
    e.begin_dict().key(b"files").begin_list();
    for (i, len) in lengths.iter().enumerate() {
        e.begin_dict()
            .key(b"length")
            .int(*len as i64)
            .key(b"path")
            .begin_list()
            .str(&format!("f{i}"))
            .end()
            .end();
    }
    e.end()
        .key(b"name")
        .str("t")
        .key(b"piece length")
        .int(piece_length as i64)
        .key(b"pieces")
        .bytes(&vec![0; n * 20])
        .end();
    info
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Piece-to-file mapping agrees with a byte-by-byte walk of the file list.
    #[test]
    fn piece_file_slices_match_a_naive_walk(
        lengths in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..70_000], 1..8),
    ) {
        prop_assume!(lengths.iter().sum::<u64>() > 0);
        let info = Info::from_bytes(&info_with_lengths(&lengths, 16384)).unwrap();
        // Naive: owner file of every byte.
        let mut owner = Vec::new();
        for (i, len) in lengths.iter().enumerate() {
            owner.extend(std::iter::repeat_n(i, *len as usize));
        }
        for p in 0..info.num_pieces() {
            let start = p * 16384;
            let end = (start + 16384).min(owner.len());
            let mut expected: Vec<(usize, u64, u64)> = Vec::new();
            for (b, &f) in owner[start..end].iter().enumerate() {
                let at = (start + b) as u64 - info.files[f].offset;
                match expected.last_mut() {
                    Some(last) if last.0 == f => last.2 += 1,
                    _ => expected.push((f, at, 1)),
                }
            }
            let got: Vec<(usize, u64, u64)> = info
                .piece_file_slices(p)
                .iter()
                .map(|s| (s.file_index, s.offset_in_file, s.length))
                .collect();
            prop_assert_eq!(got, expected, "piece {}", p);
        }
    }
}
