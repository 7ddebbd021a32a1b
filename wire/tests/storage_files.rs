//! Storage against real files in temporary directories: mapping, verification, hostile
//! requests, path safety and crash-safe resume data.

use std::fs;
use std::path::PathBuf;

use sha1::{Digest, Sha1};
use wire::storage::{FileSpec, ResumeStatus, Storage, StorageError, StorageLayout, StorageOptions};

/// A torrent made of `files` (path, length, is_pad) filled with deterministic bytes.
struct Fixture {
    dir: tempfile::TempDir,
    layout: StorageLayout,
    hashes: Vec<[u8; 20]>,
    stream: Vec<u8>,
}

impl Fixture {
    fn new(piece_len: u64, files: &[(&str, u64, bool)]) -> Fixture {
        let specs: Vec<FileSpec> = files
            .iter()
            .map(|&(p, length, padding)| FileSpec {
                path: p.split('/').map(String::from).collect(),
                length,
                padding,
            })
            .collect();
        let layout = StorageLayout::new(piece_len, specs).unwrap();
        let mut stream = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for &(_, len, pad) in files {
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                stream.push(if pad { 0 } else { x as u8 });
            }
        }
        let hashes = stream
            .chunks(piece_len as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            layout,
            hashes,
            stream,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("dl")
    }

    fn storage(&self) -> Storage {
        self.storage_with(StorageOptions::default())
    }

    fn storage_with(&self, opts: StorageOptions) -> Storage {
        Storage::new(&self.root(), self.layout.clone(), self.hashes.clone(), opts).unwrap()
    }

    fn piece(&self, i: u32) -> &[u8] {
        let pl = self.layout.piece_length() as usize;
        let start = i as usize * pl;
        &self.stream[start..(start + pl).min(self.stream.len())]
    }

    fn resume_path(&self) -> PathBuf {
        self.dir.path().join("state/t.resume")
    }
}

fn multi_file() -> Fixture {
    // 5 + 0 + 13 + 3(pad) + 30 + 1 = 52 bytes, piece length 8 -> 7 pieces.
    Fixture::new(
        8,
        &[
            ("t/a.bin", 5, false),
            ("t/empty", 0, false),
            ("t/sub/b.bin", 13, false),
            ("t/.pad/3", 3, true),
            ("t/c.bin", 30, false),
            ("t/d", 1, false),
        ],
    )
}

#[test]
fn multi_file_round_trip_spans_files_and_skips_pad_files() {
    let fx = multi_file();
    let st = fx.storage();
    assert_eq!(st.layout().piece_count(), 7);
    st.allocate().unwrap();
    assert!(
        fx.root().join("t/empty").exists(),
        "zero-length files are created"
    );
    assert_eq!(
        fs::metadata(fx.root().join("t/c.bin")).unwrap().len(),
        30,
        "sparse pre-allocation"
    );
    assert!(
        !fx.root().join("t/.pad").exists(),
        "pad files never touch the disk"
    );
    for i in 0..7 {
        assert!(st.write_piece(i, fx.piece(i)).unwrap(), "piece {i}");
    }
    assert!(st.is_complete());
    // Files on disk hold exactly their slice of the stream.
    assert_eq!(
        fs::read(fx.root().join("t/a.bin")).unwrap(),
        &fx.stream[0..5]
    );
    assert_eq!(
        fs::read(fx.root().join("t/sub/b.bin")).unwrap(),
        &fx.stream[5..18]
    );
    assert_eq!(
        fs::read(fx.root().join("t/c.bin")).unwrap(),
        &fx.stream[21..51]
    );
    assert_eq!(fs::read(fx.root().join("t/d")).unwrap(), &fx.stream[51..52]);
    // Blocks read back across file boundaries and pad files.
    for piece in 0..7u32 {
        let len = st.layout().piece_len(piece).unwrap();
        for off in 0..len {
            for l in 0..=(len - off) {
                let got = st.read_block(piece, off, l).unwrap();
                let start = piece as usize * 8 + off as usize;
                assert_eq!(&got[..], &fx.stream[start..start + l as usize]);
            }
        }
    }
}

#[test]
fn a_piece_counts_only_after_its_hash_matches() {
    let fx = multi_file();
    let st = fx.storage();
    let mut bad = fx.piece(2).to_vec();
    bad[0] ^= 1;
    assert!(!st.write_piece(2, &bad).unwrap());
    assert!(!st.has_piece(2));
    assert!(
        !fx.root().join("t/sub/b.bin").exists(),
        "a failed piece writes nothing"
    );
    assert!(matches!(
        st.write_piece(2, &bad[..4]),
        Err(StorageError::WrongPieceSize { .. })
    ));

    // Block-wise writes are verified from disk.
    st.write_block(3, 0, &fx.piece(3)[..5]).unwrap();
    assert!(!st.verify_piece(3).unwrap(), "half a piece is not a piece");
    st.write_block(3, 5, &fx.piece(3)[5..]).unwrap();
    assert!(st.verify_piece(3).unwrap());
    assert!(st.has_piece(3));
    assert_eq!(st.have_bitfield(), vec![0b0001_0000]);
    // Corrupt it on disk: re-verification takes it away again.
    st.write_block(3, 7, b"\xFF").unwrap();
    assert!(!st.verify_piece(3).unwrap());
    assert_eq!(st.have_count(), 0);
}

#[test]
fn hostile_requests_are_refused_not_clamped() {
    let fx = multi_file();
    let st = fx.storage();
    for i in 0..7 {
        st.write_piece(i, fx.piece(i)).unwrap();
    }
    assert!(matches!(
        st.read_block(7, 0, 1),
        Err(StorageError::PieceOutOfRange { piece: 7, count: 7 })
    ));
    assert!(matches!(
        st.read_block(u32::MAX, 0, 1),
        Err(StorageError::PieceOutOfRange { .. })
    ));
    assert!(matches!(
        st.read_block(0, 4, 5),
        Err(StorageError::BlockOutOfRange { .. })
    ));
    assert!(
        matches!(
            st.read_block(6, 0, 5),
            Err(StorageError::BlockOutOfRange { .. })
        ),
        "last piece is short"
    );
    assert!(matches!(
        st.read_block(0, u32::MAX, 1),
        Err(StorageError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        st.read_block(0, u32::MAX, u32::MAX),
        Err(StorageError::BlockTooLong { .. })
    ));
    assert!(matches!(
        st.write_block(0, 7, b"xy"),
        Err(StorageError::BlockOutOfRange { .. })
    ));
    assert!(st.verify_piece(9).is_err());

    // A whole 2 MiB piece asked as one block: refused before anything is allocated.
    let big = Fixture::new(2 << 20, &[("t/big", 2 << 20, false)]);
    let bst = big.storage();
    assert!(matches!(
        bst.read_block(0, 0, 2 << 20),
        Err(StorageError::BlockTooLong { .. })
    ));
    assert!(bst.read_block(0, 0, 16384).unwrap_err().is_missing_data());
}

#[test]
fn truncated_or_missing_files_read_as_missing_data() {
    let fx = multi_file();
    let st = fx.storage();
    for i in 0..7 {
        st.write_piece(i, fx.piece(i)).unwrap();
    }
    st.close_files();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.root().join("t/c.bin"))
        .unwrap()
        .set_len(10)
        .unwrap();
    let err = st.read_block(5, 0, 8).unwrap_err();
    assert!(err.is_missing_data(), "{err}");
    assert!(!st.verify_piece(5).unwrap());
    fs::remove_file(fx.root().join("t/a.bin")).unwrap();
    assert!(st.read_block(0, 0, 1).unwrap_err().is_missing_data());
    // Stream bytes 8..24 (pieces 1 and 2) lie in b.bin, the pad and c.bin's first 3 bytes.
    assert_eq!(st.recheck_all().unwrap(), 2, "pieces 1 and 2 survive");
    assert_eq!(st.have_bitfield(), vec![0b0110_0000]);
}

#[test]
fn paths_escaping_the_download_directory_are_refused() {
    let fx = multi_file();
    let outside = fx.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(fx.root()).unwrap();
    // A symlink planted where the torrent's directory goes.
    std::os::unix::fs::symlink(&outside, fx.root().join("t")).unwrap();
    let st = fx.storage();
    let err = st.write_piece(0, fx.piece(0)).unwrap_err();
    assert!(matches!(err, StorageError::UnsafePath(_)), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // A symlinked file inside a real directory is refused too.
    let fx2 = Fixture::new(4, &[("t/x", 4, false)]);
    fs::create_dir_all(fx2.root().join("t")).unwrap();
    let target = fx2.dir.path().join("victim");
    fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, fx2.root().join("t/x")).unwrap();
    let st2 = fx2.storage();
    assert!(matches!(
        st2.write_piece(0, fx2.piece(0)),
        Err(StorageError::UnsafePath(_))
    ));
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}

#[test]
fn handle_cache_is_bounded() {
    let files: Vec<(String, u64, bool)> = (0..10).map(|i| (format!("t/f{i}"), 4, false)).collect();
    let refs: Vec<(&str, u64, bool)> = files
        .iter()
        .map(|(p, l, pad)| (p.as_str(), *l, *pad))
        .collect();
    let fx = Fixture::new(4, &refs);
    let st = fx.storage_with(StorageOptions { max_open_files: 3 });
    for i in 0..10 {
        assert!(st.write_piece(i, fx.piece(i)).unwrap());
        assert!(st.open_files() <= 3);
    }
    for i in (0..10).rev() {
        assert_eq!(&st.read_block(i, 0, 4).unwrap()[..], fx.piece(i));
        assert!(st.open_files() <= 3);
    }
}

#[test]
fn concurrent_writers_share_one_storage() {
    let fx = Fixture::new(1024, &[("t/a", 40_000, false), ("t/b", 30_000, false)]);
    let st = std::sync::Arc::new(fx.storage());
    let n = st.layout().piece_count();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let st = st.clone();
            let fx = &fx;
            s.spawn(move || {
                for p in (t..n).step_by(4) {
                    assert!(st.write_piece(p, fx.piece(p)).unwrap());
                }
            });
        }
    });
    assert!(st.is_complete());
    let fresh = fx.storage();
    assert_eq!(fresh.recheck_all().unwrap(), n);
}

fn complete(fx: &Fixture) -> Storage {
    let st = fx.storage();
    for i in 0..st.layout().piece_count() {
        assert!(st.write_piece(i, fx.piece(i)).unwrap());
    }
    st
}

#[test]
fn resume_is_trusted_when_stamps_match() {
    let fx = multi_file();
    let st = fx.storage();
    for i in [0, 2, 5] {
        st.write_piece(i, fx.piece(i)).unwrap();
    }
    st.save_resume(&fx.resume_path()).unwrap();
    drop(st);
    let again = fx.storage();
    let r = again.load_resume(&fx.resume_path(), false).unwrap();
    assert_eq!(r.status, ResumeStatus::Trusted);
    assert_eq!((r.claimed, r.have), (3, 3));
    assert!(again.has_piece(0) && again.has_piece(2) && again.has_piece(5) && !again.has_piece(1));
}

#[test]
fn crash_after_more_writes_rehashes_pieces_of_changed_files() {
    let fx = multi_file();
    let st = fx.storage();
    for i in 0..3 {
        st.write_piece(i, fx.piece(i)).unwrap();
    }
    st.save_resume(&fx.resume_path()).unwrap();
    // More pieces are written (and even verified) but the process is killed before the
    // next save; one of them is only half written.
    st.write_piece(4, fx.piece(4)).unwrap();
    st.write_block(5, 0, &fx.piece(5)[..3]).unwrap();
    drop(st); // kill -9: nothing else runs
    let again = fx.storage();
    let r = again.load_resume(&fx.resume_path(), false).unwrap();
    assert_eq!(
        r.status,
        ResumeStatus::Rechecked,
        "c.bin changed after the save"
    );
    // Pieces 0 and 1 lie in files untouched since the save: trusted. Pieces 2..=6 touch
    // c.bin: rehashed, so piece 4 (verified after the save) is found again and the
    // half-written piece 5 is not.
    assert_eq!((r.claimed, r.have), (3, 4));
    assert_eq!(again.have_bitfield(), vec![0b1110_1000]);
}

#[test]
fn resume_claims_are_not_trusted_when_data_changed() {
    let fx = multi_file();
    let st = complete(&fx);
    st.save_resume(&fx.resume_path()).unwrap();
    drop(st);
    // Truncate one file: its size no longer matches, so every claim is rehashed.
    fs::OpenOptions::new()
        .write(true)
        .open(fx.root().join("t/c.bin"))
        .unwrap()
        .set_len(12)
        .unwrap();
    let again = fx.storage();
    let r = again.load_resume(&fx.resume_path(), false).unwrap();
    assert_eq!(r.status, ResumeStatus::Rechecked);
    assert_eq!(r.claimed, 7);
    assert!(!again.has_piece(4) && !again.has_piece(5) && !again.has_piece(6));
    assert!(again.has_piece(0) && again.has_piece(3));
}

#[test]
fn full_recheck_catches_corruption_that_kept_size_and_mtime() {
    let fx = multi_file();
    let st = complete(&fx);
    st.save_resume(&fx.resume_path()).unwrap();
    drop(st);
    let path = fx.root().join("t/sub/b.bin");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mut data = fs::read(&path).unwrap();
    data[6] ^= 0xFF; // stream byte 11: piece 1
    fs::write(&path, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    // Stamps match, so the cheap path trusts the claim (documented trade-off)...
    let cheap = fx.storage();
    assert_eq!(
        cheap.load_resume(&fx.resume_path(), false).unwrap().status,
        ResumeStatus::Trusted
    );
    // ...and a full recheck does not.
    let careful = fx.storage();
    let r = careful.load_resume(&fx.resume_path(), true).unwrap();
    assert_eq!(r.status, ResumeStatus::Rechecked);
    assert_eq!(r.have, 6);
    assert!(!careful.has_piece(1));
}

#[test]
fn bad_or_foreign_resume_files_are_ignored() {
    let fx = multi_file();
    let st = fx.storage();
    assert_eq!(
        st.load_resume(&fx.resume_path(), false).unwrap().status,
        ResumeStatus::Missing
    );
    fs::create_dir_all(fx.resume_path().parent().unwrap()).unwrap();
    fs::write(fx.resume_path(), b"d4:havei1ee").unwrap();
    assert!(matches!(
        st.load_resume(&fx.resume_path(), false).unwrap().status,
        ResumeStatus::Invalid(_)
    ));
    fs::write(fx.resume_path(), b"\xFF\x00garbage").unwrap();
    assert!(matches!(
        st.load_resume(&fx.resume_path(), false).unwrap().status,
        ResumeStatus::Invalid(_)
    ));
    // Resume data of another torrent (same files, different hashes).
    let other = Fixture::new(8, &[("t/a.bin", 5, false), ("t/empty", 0, false)]);
    let ost = complete(&other);
    ost.save_resume(&fx.resume_path()).unwrap();
    let r = st.load_resume(&fx.resume_path(), false).unwrap();
    assert!(matches!(r.status, ResumeStatus::Invalid(_)));
    assert_eq!(st.have_count(), 0);
}

#[test]
fn recheck_all_finds_existing_data_for_seeding() {
    let fx = multi_file();
    // Someone else's copy of the files, e.g. `swarm seed PATH`.
    let root = fx.root();
    let write = |p: &str, range: std::ops::Range<usize>| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, &fx.stream[range]).unwrap();
    };
    write("t/a.bin", 0..5);
    write("t/empty", 5..5);
    write("t/sub/b.bin", 5..18);
    write("t/c.bin", 21..51);
    write("t/d", 51..52);
    let st = fx.storage();
    let seen = std::sync::atomic::AtomicU32::new(0);
    let present = st
        .recheck_all_with_progress(&|n| {
            seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(present, 7);
    assert_eq!(seen.into_inner(), 7, "progress reached every piece");
    assert!(st.is_complete());
}
