//! Resume across restarts of a session: resume data is saved and trusted where the files
//! did not change, an interrupted download keeps its verified pieces, and a magnet link
//! restarts from the metadata the first run saved.

mod transfer_support;

use std::path::Path;
use std::time::Duration;

use transfer_support::*;
use wire::metainfo::Metainfo;
use wire::session::{SessionConfig, Torrent};

const LIMIT: Duration = Duration::from_secs(60);

fn with_resume(dir: &Path) -> SessionConfig {
    SessionConfig {
        resume_dir: Some(dir.to_path_buf()),
        ..config()
    }
}

async fn seeder(meta: &Metainfo, dir: &Path, cfg: SessionConfig) -> Torrent {
    let t = start(meta, dir, cfg).await;
    assert!(t.stats().complete, "seeder has the data");
    t
}

/// Flips one byte of `path` and puts its mtime back, so size and mtime still match.
fn corrupt_keeping_stamp(path: &Path, at: usize) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0xFF;
    std::fs::write(path, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_download_restarts_from_resume_data_without_hashing() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(600_000, 21))];
    let meta = make_torrent(seed_dir.path(), "data.bin", &files, 32 * 1024);
    let s = seeder(&meta, seed_dir.path(), config()).await;
    let mut leecher = start(&meta, leech_dir.path(), with_resume(state.path())).await;
    leecher.add_peer(s.listen_addr().unwrap());
    complete(&mut leecher, LIMIT).await;
    leecher.shutdown().await;
    s.shutdown().await;
    let saved: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let hex = meta.info_hash.to_hex();
    assert!(
        saved
            .iter()
            .any(|n| n.starts_with(&hex) && n.ends_with(".resume")),
        "resume data saved: {saved:?}"
    );

    // Damage piece 0 behind the stamp's back. A restart that trusts the resume data does
    // not notice (the documented price of not hashing); a full recheck does. Either way
    // the same directory and resume data are used, so this shows which path ran.
    corrupt_keeping_stamp(&leech_dir.path().join("data.bin"), 10);
    let trusted = start(&meta, leech_dir.path(), with_resume(state.path())).await;
    assert!(trusted.stats().complete, "resume data trusted");
    trusted.shutdown().await;
    let careful = start(
        &meta,
        leech_dir.path(),
        SessionConfig {
            full_recheck: true,
            ..with_resume(state.path())
        },
    )
    .await;
    let st = careful.stats();
    assert!(!st.complete, "full recheck finds the damaged piece");
    assert_eq!(st.pieces_have, st.piece_count - 1);
    careful.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_keeps_its_pieces_and_finishes_later() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = vec![("data.bin", payload(2 * 1024 * 1024, 22))];
    let meta = make_torrent(seed_dir.path(), "data.bin", &files, 32 * 1024);
    let slow = SessionConfig {
        engine: wire::engine::Config {
            upload_rate_limit: 512 * 1024,
            ..config().engine
        },
        ..config()
    };
    let s = seeder(&meta, seed_dir.path(), slow).await;
    let leecher = start(&meta, leech_dir.path(), with_resume(state.path())).await;
    leecher.add_peer(s.listen_addr().unwrap());
    let mid = wait_for(LIMIT, || leecher.stats(), |s| s.progress() > 0.25).await;
    assert!(!mid.complete, "finished too soon: make the payload larger");
    leecher.shutdown().await;

    // Restart with no peer: exactly the pieces verified before the shutdown are there
    // (at least those seen mid-way; more may have landed before it took effect).
    let mut again = start(&meta, leech_dir.path(), with_resume(state.path())).await;
    let kept = again.stats();
    assert!(
        kept.pieces_have >= mid.pieces_have && !kept.complete,
        "kept {} of {} pieces (had {} mid-way)",
        kept.pieces_have,
        kept.piece_count,
        mid.pieces_have
    );
    again.add_peer(s.listen_addr().unwrap());
    complete(&mut again, LIMIT).await;
    let done = again.stats();
    assert!(
        done.downloaded < meta.info.total_length,
        "the second run fetched only what was missing ({} bytes)",
        done.downloaded
    );
    same_tree(seed_dir.path(), leech_dir.path(), &files);
    again.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magnet_restart_uses_the_saved_metadata() {
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = vec![
        ("pack/one.bin", payload(200_000, 23)),
        ("pack/two.bin", payload(70_001, 24)),
    ];
    let meta = make_torrent(seed_dir.path(), "pack", &files, 16 * 1024);
    let s = seeder(&meta, seed_dir.path(), config()).await;
    let mut leecher = start_magnet(&meta, leech_dir.path(), with_resume(state.path())).await;
    leecher.add_peer(s.listen_addr().unwrap());
    complete(&mut leecher, LIMIT).await;
    leecher.shutdown().await;
    s.shutdown().await;

    // No peer at all now: the metadata and the pieces come from the state directory.
    let again = start_magnet(&meta, leech_dir.path(), with_resume(state.path())).await;
    let st = again.stats();
    assert!(st.have_metadata && st.complete, "{st:?}");
    assert_eq!(st.name.as_deref(), Some("pack"));
    again.shutdown().await;

    // Saved metadata that does not hash to the info-hash is not used.
    let saved = state
        .path()
        .join(format!("{}.torrent", meta.info_hash.to_hex()));
    let mut bytes = std::fs::read(&saved).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    std::fs::write(&saved, &bytes).unwrap();
    let refetch = start_magnet(&meta, leech_dir.path(), with_resume(state.path())).await;
    assert!(!refetch.stats().have_metadata, "tampered metadata ignored");
    refetch.shutdown().await;
}
