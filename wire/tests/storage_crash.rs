//! `kill -9` at arbitrary moments: a child process downloads into storage (some pieces
//! first get bad data, as from a lying peer), saving resume data as it goes; the parent
//! SIGKILLs it after a few saves, then checks that nothing the resume data makes us
//! trust is wrong, that no saved piece was lost, and lets the next child continue.
//!
//! The child is this test binary re-run with `WIRE_STORAGE_CRASH_DIR` set; without it,
//! `crash_child_entry` runs the same workload in-process to the end and checks it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use wire::storage::{FileSpec, ResumeStatus, Storage, StorageLayout, StorageOptions};

const CHILD_ENV: &str = "WIRE_STORAGE_CRASH_DIR";
const PIECE: usize = 16 * 1024;
const PIECES: u32 = 192;
const SAVE_EVERY: u32 = 6;

fn layout() -> StorageLayout {
    let total = PIECE as u64 * PIECES as u64 - 1000;
    let files = [total / 3, 12_345, total - total / 3 - 12_345];
    let specs = files
        .iter()
        .enumerate()
        .map(|(i, &length)| FileSpec {
            path: vec!["t".into(), format!("file{i}")],
            length,
            padding: false,
        })
        .collect();
    StorageLayout::new(PIECE as u64, specs).unwrap()
}

fn piece_data(l: &StorageLayout, p: u32) -> Vec<u8> {
    let len = l.piece_len(p).unwrap() as usize;
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ p.wrapping_mul(40503)) as u8)
        .collect()
}

fn open(dir: &Path) -> Storage {
    let l = layout();
    let hashes = (0..l.piece_count())
        .map(|p| Sha1::digest(piece_data(&l, p)).into())
        .collect();
    Storage::new(&dir.join("dl"), l, hashes, StorageOptions::default()).unwrap()
}

fn resume_path(dir: &Path) -> PathBuf {
    dir.join("state/t.resume")
}

/// Downloads the missing pieces in a scrambled order, saving every few pieces and
/// printing `saved N` once a save with N pieces has returned.
fn workload(dir: &Path) -> Storage {
    let st = open(dir);
    st.load_resume(&resume_path(dir), false).unwrap();
    let l = st.layout().clone();
    let mut done_since_save = 0;
    for k in 0..PIECES {
        let p = (k * 67) % PIECES; // 67 is coprime with 192: every piece once
        if st.has_piece(p) {
            continue;
        }
        let data = piece_data(&l, p);
        if p.is_multiple_of(5) {
            // A lying peer's block lands on disk first and fails verification.
            st.write_block(p, 0, &vec![0xBA; data.len() / 2]).unwrap();
            st.write_block(p, (data.len() / 2) as u32, &data[data.len() / 2..])
                .unwrap();
            assert!(!st.verify_piece(p).unwrap());
        }
        if p.is_multiple_of(2) {
            st.write_block(p, 0, &data[..data.len() / 2]).unwrap();
            st.write_block(p, (data.len() / 2) as u32, &data[data.len() / 2..])
                .unwrap();
            assert!(st.verify_piece(p).unwrap());
        } else {
            assert!(st.write_piece(p, &data).unwrap());
        }
        done_since_save += 1;
        if done_since_save == SAVE_EVERY {
            st.save_resume(&resume_path(dir)).unwrap();
            println!("saved {}", st.have_count());
            done_since_save = 0;
        }
    }
    st.save_resume(&resume_path(dir)).unwrap();
    println!("saved {}", st.have_count());
    st
}

#[test]
fn crash_child_entry() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        workload(Path::new(&dir));
        return;
    }
    // In-process: the workload completes and its resume data is trusted on restart.
    let dir = tempfile::tempdir().unwrap();
    let st = workload(dir.path());
    assert!(st.is_complete());
    drop(st);
    let again = open(dir.path());
    let r = again.load_resume(&resume_path(dir.path()), false).unwrap();
    assert_eq!((r.status, r.have), (ResumeStatus::Trusted, PIECES));
}

#[test]
fn sigkill_never_makes_bad_data_good_nor_loses_saved_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_saved = 0;
    for (round, kill_after_saves) in [2u32, 5, 3, 7].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("saved ") {
                    let _ = tx.send(n.trim().parse::<u32>().unwrap());
                }
            }
        });
        let mut saves = 0;
        while saves < kill_after_saves {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(n) => {
                    last_saved = n;
                    saves += 1;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break, // finished early
                Err(e) => panic!("child made no progress: {e}"),
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-write or mid-save
        child.wait().unwrap();
        // Lines already printed before the kill still count.
        while let Ok(n) = rx.try_recv() {
            last_saved = n;
        }

        let st = open(dir.path());
        let r = st.load_resume(&resume_path(dir.path()), false).unwrap();
        assert!(
            matches!(r.status, ResumeStatus::Trusted | ResumeStatus::Rechecked),
            "round {round}: {:?}",
            r.status
        );
        assert!(
            r.have >= last_saved,
            "round {round}: lost saved pieces: {} < {last_saved}",
            r.have
        );
        // Everything the resume data made us trust really is on disk.
        for p in 0..PIECES {
            if st.has_piece(p) {
                assert!(
                    st.verify_piece(p).unwrap(),
                    "round {round}: piece {p} trusted but bad"
                );
            }
        }
    }
    assert!(last_saved > 0);
}
