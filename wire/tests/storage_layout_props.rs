//! Property tests for piece-to-file mapping: spans tile any range exactly, and data
//! written piece by piece reads back identically, whatever the file layout.

use proptest::prelude::*;
use sha1::{Digest, Sha1};
use wire::layout::Geometry;
use wire::storage::{FileSpec, Storage, StorageLayout, StorageOptions};

fn layout() -> impl Strategy<Value = (u64, Vec<(u64, bool)>)> {
    (
        1u64..64,
        proptest::collection::vec((0u64..200, proptest::bool::weighted(0.15)), 1..8),
    )
}

fn build(piece_len: u64, files: &[(u64, bool)]) -> StorageLayout {
    let specs = files
        .iter()
        .enumerate()
        .map(|(i, &(length, padding))| FileSpec {
            path: vec!["t".into(), format!("f{i}")],
            length,
            padding,
        })
        .collect();
    StorageLayout::new(piece_len, specs).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn spans_tile_every_range(
        (piece_len, files) in layout(),
        start_frac in 0.0f64..1.0,
        len in 0u64..400,
    ) {
        let l = build(piece_len, &files);
        let total = l.total_length();
        let start = (start_frac * total as f64) as u64;
        let spans = l.spans(start, len);
        let want = len.min(total.saturating_sub(start));
        prop_assert_eq!(spans.iter().map(|s| s.len).sum::<u64>(), want);
        let mut pos = start;
        for s in &spans {
            prop_assert!(s.len > 0);
            let f_start = l.file_offset(s.file).unwrap();
            prop_assert_eq!(f_start + s.file_offset, pos, "contiguous");
            prop_assert!(s.file_offset + s.len <= l.files()[s.file].length, "inside the file");
            prop_assert_eq!(s.padding, l.files()[s.file].padding);
            pos += s.len;
        }
        // Pieces tile the whole stream.
        let sum: u64 = (0..l.piece_count()).map(|p| l.piece_len(p).unwrap() as u64).sum();
        prop_assert_eq!(sum, total);
    }

    /// One geometry for storage and the engine: pieces as a naive cut gives them.
    #[test]
    fn geometry_cuts_pieces_like_a_naive_walk(
        total in 0u64..(1 << 44),
        piece_length in 1u32..=(1 << 31),
        probe in any::<u32>(),
    ) {
        let count = total.div_ceil(piece_length as u64);
        let Some(g) = Geometry::of_stream(total, piece_length) else {
            prop_assert!(count > u32::MAX as u64);
            return Ok(());
        };
        prop_assert_eq!(g.piece_count as u64, count);
        let naive = |p: u32| {
            let start = p as u64 * piece_length as u64;
            (p < g.piece_count).then(|| (total - start).min(piece_length as u64) as u32)
        };
        let last = g.piece_count.saturating_sub(1);
        for p in [0, last, g.piece_count, probe % g.piece_count.max(1), probe] {
            prop_assert_eq!(g.checked_piece_len(p), naive(p), "piece {}", p);
        }
        if let Ok(engine) = Geometry::new(total, piece_length as u64) {
            prop_assert_eq!(engine, g);
        }
        let spec = FileSpec { path: vec!["t".into()], length: total, padding: false };
        let l = StorageLayout::new(piece_length as u64, vec![spec]).unwrap();
        prop_assert_eq!(l.geometry(), &g);
    }
}

proptest! {
    // Real files: fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn pieces_written_read_back_identically((piece_len, files) in layout(), seed in any::<u8>()) {
        let l = build(piece_len, &files);
        let mut stream = Vec::new();
        for (i, &(len, pad)) in files.iter().enumerate() {
            stream.extend((0..len).map(|j| if pad { 0 } else { (j as u8).wrapping_mul(31) ^ seed ^ i as u8 }));
        }
        let hashes: Vec<[u8; 20]> = stream.chunks(piece_len as usize).map(|c| Sha1::digest(c).into()).collect();
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::new(dir.path(), l.clone(), hashes.clone(), StorageOptions::default()).unwrap();
        for (p, chunk) in stream.chunks(piece_len as usize).enumerate() {
            prop_assert!(st.write_piece(p as u32, chunk).unwrap());
        }
        for p in 0..l.piece_count() {
            let len = l.piece_len(p).unwrap();
            let got = st.read_block(p, 0, len).unwrap();
            let start = p as usize * piece_len as usize;
            prop_assert_eq!(&got[..], &stream[start..start + len as usize]);
        }
        // A fresh storage over the same directory finds every piece.
        let again = Storage::new(dir.path(), l.clone(), hashes, StorageOptions::default()).unwrap();
        prop_assert_eq!(again.recheck_all().unwrap(), l.piece_count());
    }
}
