//! Arbitrary bytes as a .torrent file (`Metainfo::from_bytes`) and as a raw info
//! dictionary fetched from peers (`Info::from_bytes`).
//!
//! On success: the info-hash is SHA-1 of `raw_info`, `raw_info` parses to the same
//! `Info`, every file path passes the sanitizer (no empty, `.` or `..` component, nothing
//! absolute, no separators, NUL or drive letters, bounded depth) and joins under a root
//! without leaving it, no two real files collide, and the piece geometry adds up: files
//! are laid end to end, the piece count covers the total length exactly, and the file
//! slices of a piece cover exactly that piece.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use wire::metainfo::paths::{check_components, join_under, MAX_PATH_DEPTH};
use wire::metainfo::{Info, Metainfo};

fn check_info(info: &Info) {
    assert!(!info.files.is_empty());
    assert!(info.piece_length.is_power_of_two());
    assert!(info.total_length > 0);
    let mut offset = 0u64;
    for f in &info.files {
        assert_eq!(f.offset, offset, "files are laid end to end");
        offset += f.length;
        assert!(!f.path.is_empty() && f.path.len() <= MAX_PATH_DEPTH);
        assert_eq!(f.path[0], info.name, "paths start with the torrent's name");
        if info.single_file {
            assert_eq!(f.path.len(), 1);
        } else {
            assert!(f.path.len() >= 2);
        }
        assert_eq!(check_components(&f.path), Ok(()));
        for c in &f.path {
            assert!(!c.is_empty() && c != "." && c != "..", "component {c:?}");
            assert!(!c.contains(['/', '\\', '\0']), "component {c:?}");
            let mut parts = Path::new(c).components();
            assert!(
                matches!(
                    (parts.next(), parts.next()),
                    (Some(Component::Normal(_)), None)
                ),
                "component {c:?} is not one normal path component"
            );
        }
        let root = Path::new("/download/root");
        let joined = join_under(root, &f.path).expect("sanitized path joins");
        assert!(joined.starts_with(root));
        assert_eq!(
            joined.components().count(),
            root.components().count() + f.path.len(),
            "{joined:?}"
        );
    }
    assert_eq!(offset, info.total_length);
    assert_eq!(
        info.num_pieces() as u64,
        info.total_length.div_ceil(info.piece_length)
    );
    // No two real files at the same path, and no file where another needs a directory.
    let mut real: Vec<&[String]> = info
        .files
        .iter()
        .filter(|f| !f.attr.padding)
        .map(|f| f.path.as_slice())
        .collect();
    real.sort();
    for (i, a) in real.iter().enumerate() {
        for b in &real[i + 1..] {
            assert!(!b.starts_with(a), "{a:?} collides with {b:?}");
        }
    }
    // Slices of the first, second and last pieces cover exactly those pieces.
    let n = info.num_pieces();
    for index in [0, 1, n - 1, n] {
        let slices = info.piece_file_slices(index);
        let covered: u64 = slices.iter().map(|s| s.length).sum();
        assert_eq!(covered, info.piece_len(index).unwrap_or(0));
        for s in &slices {
            let f = &info.files[s.file_index];
            assert!(s.length > 0 && s.offset_in_file + s.length <= f.length);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let hash: [u8; 20] = Sha1::digest(&m.raw_info).into();
        assert_eq!(m.info_hash.0, hash, "info-hash is SHA-1 of raw_info");
        assert_eq!(Info::from_bytes(&m.raw_info).as_ref(), Ok(&m.info));
        // raw_info is a verbatim slice of the file.
        assert!(data.windows(m.raw_info.len()).any(|w| w == m.raw_info));
        check_info(&m.info);
    }
    if let Ok(info) = Info::from_bytes(data) {
        check_info(&info);
    }
});
