//! Verified piece storage: pieces mapped onto files, positioned I/O, SHA-1 checks, and
//! crash-safe resume data.
//!
//! [`Storage`] is `Send + Sync` and every method takes `&self`, so the tokio driver can
//! share it in an `Arc` and call it from `spawn_blocking`. File handles are opened lazily
//! and cached (bounded); the cache lock is never held during reads or writes.
//!
//! # What counts as "have"
//!
//! A piece is marked present only after its SHA-1 matched: [`Storage::write_piece`]
//! hashes in memory before writing, [`Storage::verify_piece`] hashes what is on disk.
//! [`Storage::save_resume`] snapshots that set, fsyncs every file written since the last
//! save, then records each file's size and mtime and writes the resume file atomically.
//!
//! # Crash semantics (`kill -9` at any moment)
//!
//! - A piece in the resume file was verified *and* its data was fsynced before the resume
//!   file was renamed into place, so after a crash it is still on disk.
//! - Pieces verified after the last save are lost (re-downloaded): at most what was in
//!   flight since then.
//! - On start, [`Storage::load_resume`] trusts a claimed piece only if every file it
//!   touches still has the size and mtime of the stamp. Every piece touching a file that
//!   differs (written after the save, truncated, edited) is rehashed, claimed or not, so
//!   pieces verified after the last save are found again; `full_recheck` rehashes all.
//!   An unclaimed piece is marked only by a hash. So bad data is never marked good.

mod files;
mod layout;
mod resume;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::bitfield::Bitfield;
use bytes::Bytes;
use rayon::prelude::*;
use sha1::{Digest, Sha1};

use files::{Access, FileCache};
pub use layout::{FileSpec, LayoutError, Span, StorageLayout};
pub use resume::write_atomic;
use resume::{FileStamp, ResumeData};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("piece {piece} does not exist (the torrent has {count} pieces)")]
    PieceOutOfRange { piece: u32, count: u32 },
    #[error("{len} bytes at {offset} lie outside piece {piece} ({piece_len} bytes)")]
    BlockOutOfRange {
        piece: u32,
        offset: u32,
        len: u32,
        piece_len: u32,
    },
    #[error("a read of {len} bytes exceeds the {max}-byte limit for one block")]
    BlockTooLong { len: u32, max: u32 },
    #[error("piece {piece} is {expected} bytes, got {got}")]
    WrongPieceSize {
        piece: u32,
        expected: u32,
        got: usize,
    },
    #[error("{0}: resolves outside the download directory")]
    UnsafePath(PathBuf),
    #[error("{path}: ends early ({wanted} bytes wanted at offset {offset})")]
    ShortRead {
        path: PathBuf,
        offset: u64,
        wanted: u64,
    },
    // The cause is in the message, not also a `source` (see `CreateError::Io`).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{count} piece hashes for {pieces} pieces")]
    HashCount { count: usize, pieces: u32 },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl StorageError {
    /// True when the data is simply not there (missing or short file): the piece is
    /// absent, not the disk broken.
    pub fn is_missing_data(&self) -> bool {
        match self {
            StorageError::ShortRead { .. } => true,
            StorageError::Io { error: source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Largest block [`Storage::read_block`] serves: peers request 16 KiB (BEP 3 practice;
/// a few old clients 128 KiB). A bigger request is refused rather than allocated.
pub const MAX_READ_BLOCK_LEN: u32 = 128 * 1024;

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct StorageOptions {
    /// Most file handles kept open at once.
    pub max_open_files: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions { max_open_files: 64 }
    }
}

/// What [`Storage::load_resume`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeStatus {
    /// No resume file: nothing is claimed.
    Missing,
    /// Unreadable, corrupt, or for another torrent: ignored.
    Invalid(String),
    /// Stamps matched and no recheck was asked: claimed pieces trusted without hashing.
    Trusted,
    /// Some stamps differed (or a full recheck was asked): the pieces touching those
    /// files were rehashed.
    Rechecked,
}

/// The outcome of [`Storage::load_resume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeReport {
    pub status: ResumeStatus,
    /// Pieces the resume file claimed.
    pub claimed: u32,
    /// Pieces now marked present.
    pub have: u32,
}

/// A torrent's files on disk.
pub struct Storage {
    root: PathBuf,
    layout: StorageLayout,
    hashes: Vec<[u8; 20]>,
    handles: FileCache,
    state: Mutex<State>,
}

struct State {
    /// Verified pieces.
    have: Bitfield,
    /// Files written since the last fsync.
    dirty: Vec<bool>,
}

impl Storage {
    /// Storage for `layout` under `root` (created if missing). Touches no file yet.
    pub fn new(
        root: &Path,
        layout: StorageLayout,
        piece_hashes: Vec<[u8; 20]>,
        opts: StorageOptions,
    ) -> Result<Storage, StorageError> {
        if piece_hashes.len() != layout.piece_count() as usize {
            return Err(StorageError::HashCount {
                count: piece_hashes.len(),
                pieces: layout.piece_count(),
            });
        }
        let root = files::prepare_root(root)?;
        let n_files = layout.files().len();
        Ok(Storage {
            state: Mutex::new(State {
                have: Bitfield::new(layout.piece_count()),
                dirty: vec![false; n_files],
            }),
            root,
            layout,
            hashes: piece_hashes,
            handles: FileCache::new(opts.max_open_files),
        })
    }

    pub fn layout(&self) -> &StorageLayout {
        &self.layout
    }

    /// The canonical download directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether piece `index` has been verified.
    pub fn has_piece(&self, index: u32) -> bool {
        index < self.layout.piece_count() && self.state().have.get(index)
    }

    /// Number of verified pieces.
    pub fn have_count(&self) -> u32 {
        self.state().have.count_ones()
    }

    /// True when every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have_count() == self.layout.piece_count()
    }

    /// Verified pieces as a wire bitfield (ready for a `bitfield` message).
    pub fn have_bitfield(&self) -> Vec<u8> {
        self.state().have.to_bytes()
    }

    /// The verified pieces.
    pub fn have(&self) -> Bitfield {
        self.state().have.clone()
    }

    fn mark(&self, index: u32, present: bool) {
        let mut st = self.state();
        if present {
            st.have.set(index);
        } else {
            st.have.clear(index);
        }
    }

    /// Creates every stored file (and its directories), extended sparsely to its full
    /// length. Zero-length files exist afterwards too. Cheap: no data is written.
    pub fn allocate(&self) -> Result<(), StorageError> {
        for (i, f) in self.layout.files().iter().enumerate() {
            if !f.padding {
                self.handle(i, Access::Write { len: f.length })?;
            }
        }
        Ok(())
    }

    fn handle(&self, file: usize, access: Access) -> Result<std::sync::Arc<File>, StorageError> {
        let path = self.layout.file_path(&self.root, file);
        self.handles.get(&self.root, file, &path, access)
    }

    /// The length of piece `piece`, or the error for an index past the end.
    fn piece_len(&self, piece: u32) -> Result<u32, StorageError> {
        self.layout
            .piece_len(piece)
            .ok_or(StorageError::PieceOutOfRange {
                piece,
                count: self.layout.piece_count(),
            })
    }

    /// Checks that `len` bytes at `offset` lie within piece `piece`.
    fn check_block(&self, piece: u32, offset: u32, len: u32) -> Result<u64, StorageError> {
        let piece_len = self.piece_len(piece)?;
        if (offset as u64) + (len as u64) > piece_len as u64 {
            return Err(StorageError::BlockOutOfRange {
                piece,
                offset,
                len,
                piece_len,
            });
        }
        Ok(self.layout.geometry().piece_offset(piece) + offset as u64)
    }

    /// Writes a block at `offset` within `piece` (positioned writes, across file
    /// boundaries; pad files are skipped). Does not mark anything present: call
    /// [`Storage::verify_piece`] once the piece is complete.
    pub fn write_block(&self, piece: u32, offset: u32, data: &[u8]) -> Result<(), StorageError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let start = self.check_block(piece, offset, len)?;
        self.write_at_stream(start, data)
    }

    fn write_at_stream(&self, start: u64, data: &[u8]) -> Result<(), StorageError> {
        let mut pos = 0usize;
        for span in self.layout.spans(start, data.len() as u64) {
            let chunk = &data[pos..pos + span.len as usize];
            pos += span.len as usize;
            if span.padding {
                continue;
            }
            let len = self.layout.files()[span.file].length;
            let f = self.handle(span.file, Access::Write { len })?;
            f.write_all_at(chunk, span.file_offset)
                .map_err(|e| self.io_err(span.file, e))?;
            self.state().dirty[span.file] = true;
        }
        Ok(())
    }

    /// Reads a whole piece (whether or not it is verified: callers serve only pieces
    /// they have).
    pub fn read_piece(&self, piece: u32) -> Result<Bytes, StorageError> {
        let len = self.piece_len(piece)?;
        let mut buf = vec![0u8; len as usize];
        self.read_at_stream(self.layout.geometry().piece_offset(piece), &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Reads a block for a peer. Out-of-range or oversized requests are refused, never
    /// clamped.
    pub fn read_block(&self, piece: u32, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        if len > MAX_READ_BLOCK_LEN {
            return Err(StorageError::BlockTooLong {
                len,
                max: MAX_READ_BLOCK_LEN,
            });
        }
        let start = self.check_block(piece, offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.read_at_stream(start, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn read_at_stream(&self, start: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let mut pos = 0usize;
        for span in self.layout.spans(start, buf.len() as u64) {
            let out = &mut buf[pos..pos + span.len as usize];
            pos += span.len as usize;
            if span.padding {
                out.fill(0);
                continue;
            }
            let f = self.handle(span.file, Access::Read)?;
            read_exact_at(&f, out, span.file_offset).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => StorageError::ShortRead {
                    path: self.layout.file_path(&self.root, span.file),
                    offset: span.file_offset,
                    wanted: span.len,
                },
                _ => self.io_err(span.file, e),
            })?;
        }
        Ok(())
    }

    fn io_err(&self, file: usize, source: io::Error) -> StorageError {
        StorageError::Io {
            path: self.layout.file_path(&self.root, file),
            error: source,
        }
    }

    /// Hashes a complete piece held in memory and, only if it matches, writes it and
    /// marks it present. Returns whether it matched (a mismatch writes nothing: the
    /// engine re-fetches and blames the senders).
    pub fn write_piece(&self, piece: u32, data: &[u8]) -> Result<bool, StorageError> {
        self.write_piece_parts(piece, &[data])
    }

    /// [`Storage::write_piece`] for a piece held as consecutive parts (the blocks as they
    /// arrived): hashed part by part, joined only once it is known to be good.
    pub fn write_piece_parts<P: AsRef<[u8]>>(
        &self,
        piece: u32,
        parts: &[P],
    ) -> Result<bool, StorageError> {
        let expected = self.piece_len(piece)?;
        let got: usize = parts.iter().map(|p| p.as_ref().len()).sum();
        if got != expected as usize {
            return Err(StorageError::WrongPieceSize {
                piece,
                expected,
                got,
            });
        }
        let mut h = Sha1::new();
        for p in parts {
            h.update(p.as_ref());
        }
        let good = self
            .hashes
            .get(piece as usize)
            .is_some_and(|want| <[u8; 20]>::from(h.finalize()) == *want);
        if !good {
            return Ok(false);
        }
        let start = self.layout.geometry().piece_offset(piece);
        match parts {
            [one] => self.write_at_stream(start, one.as_ref())?,
            _ => {
                let mut joined = Vec::with_capacity(got);
                for p in parts {
                    joined.extend_from_slice(p.as_ref());
                }
                self.write_at_stream(start, &joined)?;
            }
        }
        self.mark(piece, true);
        Ok(true)
    }

    /// Whether `data` hashes to piece `piece`'s SHA-1.
    pub fn hash_matches(&self, piece: u32, data: &[u8]) -> bool {
        self.hashes
            .get(piece as usize)
            .is_some_and(|h| <[u8; 20]>::from(Sha1::digest(data)) == *h)
    }

    /// Reads piece `piece` from disk and hashes it; marks it present or absent
    /// accordingly. Missing or short files count as a mismatch, not an error.
    pub fn verify_piece(&self, piece: u32) -> Result<bool, StorageError> {
        let mut buf = Vec::new();
        let ok = self.verify_into(piece, &mut buf)?;
        self.mark(piece, ok);
        Ok(ok)
    }

    fn verify_into(&self, piece: u32, buf: &mut Vec<u8>) -> Result<bool, StorageError> {
        let len = self.piece_len(piece)?;
        buf.resize(len as usize, 0);
        match self.read_at_stream(self.layout.geometry().piece_offset(piece), buf) {
            Ok(()) => Ok(self.hash_matches(piece, buf)),
            Err(e) if e.is_missing_data() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hashes the given pieces on all cores and marks each present or absent as it goes;
    /// `progress` gets the number checked so far after each piece.
    fn verify_many(
        &self,
        pieces: &[u32],
        progress: &(dyn Fn(u32) + Sync),
    ) -> Result<u32, StorageError> {
        let piece_len = self.layout.piece_length() as usize;
        let checked = AtomicU32::new(0);
        let good = AtomicU32::new(0);
        pieces.par_iter().try_for_each_init(
            || Vec::with_capacity(piece_len),
            |buf, &p| {
                let ok = self.verify_into(p, buf)?;
                self.mark(p, ok);
                good.fetch_add(ok as u32, Ordering::Relaxed);
                progress(checked.fetch_add(1, Ordering::Relaxed) + 1);
                Ok::<(), StorageError>(())
            },
        )?;
        Ok(good.into_inner())
    }

    /// Hashes every piece (in parallel) and sets the present set from what is on disk:
    /// for `swarm seed`, or when no resume data can be trusted. Returns pieces present.
    pub fn recheck_all(&self) -> Result<u32, StorageError> {
        self.recheck_all_with_progress(&|_| {})
    }

    /// [`Storage::recheck_all`], calling `progress(pieces checked so far)` after each
    /// piece (from worker threads) so a progress bar can follow a long check. Pieces
    /// become present ([`Storage::has_piece`]) as soon as they are checked.
    pub fn recheck_all_with_progress(
        &self,
        progress: &(dyn Fn(u32) + Sync),
    ) -> Result<u32, StorageError> {
        let all: Vec<u32> = (0..self.layout.piece_count()).collect();
        self.verify_many(&all, progress)
    }

    /// Fsyncs every file written since the last sync. (`sync_data`: the data and size are
    /// durable; an mtime lost in a power cut only makes the next start recheck claims.)
    pub fn sync(&self) -> Result<(), StorageError> {
        let dirty: Vec<usize> = {
            let mut st = self.state();
            let d = st
                .dirty
                .iter()
                .enumerate()
                .filter(|(_, d)| **d)
                .map(|(i, _)| i)
                .collect();
            st.dirty.iter_mut().for_each(|d| *d = false);
            d
        };
        for (n, &i) in dirty.iter().enumerate() {
            let len = self.layout.files()[i].length;
            let synced = self
                .handle(i, Access::Write { len })
                .and_then(|f| f.sync_data().map_err(|e| self.io_err(i, e)));
            if let Err(e) = synced {
                // Whatever was not flushed stays dirty for the next attempt.
                let mut st = self.state();
                for &j in &dirty[n..] {
                    st.dirty[j] = true;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Saves resume data to `path` atomically; see the module docs for the ordering that
    /// makes this crash-safe.
    pub fn save_resume(&self, path: &Path) -> Result<(), StorageError> {
        let have = self.have_bitfield();
        self.sync()?;
        let files = self.stamps()?;
        let data = ResumeData {
            layout_digest: self.layout_digest(),
            have,
            files,
        };
        resume::write_atomic(path, &data.encode()).map_err(|e| StorageError::Io {
            path: path.to_path_buf(),
            error: e,
        })
    }

    fn stamps(&self) -> Result<Vec<FileStamp>, StorageError> {
        (0..self.layout.files().len())
            .map(|i| {
                if self.layout.files()[i].padding {
                    return Ok(FileStamp::default());
                }
                FileStamp::of(&self.layout.file_path(&self.root, i)).map_err(|e| self.io_err(i, e))
            })
            .collect()
    }

    /// Identifies the torrent's geometry and hashes, so resume data from another torrent
    /// (or another version of this one) is never applied.
    fn layout_digest(&self) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(b"swarm-resume-v1");
        h.update((self.layout.piece_length() as u64).to_be_bytes());
        h.update((self.layout.files().len() as u64).to_be_bytes());
        for f in self.layout.files() {
            h.update(f.length.to_be_bytes());
            h.update([f.padding as u8]);
        }
        for p in &self.hashes {
            h.update(p);
        }
        h.finalize().into()
    }

    /// Loads resume data from `path` and marks pieces present: a claimed piece is
    /// trusted if the files it touches match their saved stamps (and `full_recheck` is
    /// false); every piece touching a changed file is rehashed. See the module docs.
    pub fn load_resume(
        &self,
        path: &Path,
        full_recheck: bool,
    ) -> Result<ResumeReport, StorageError> {
        let report = |status, claimed, have| ResumeReport {
            status,
            claimed,
            have,
        };
        let bytes = match resume::read_bounded(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(report(ResumeStatus::Missing, 0, self.have_count()))
            }
            Err(e) => {
                return Ok(report(
                    ResumeStatus::Invalid(e.to_string()),
                    0,
                    self.have_count(),
                ))
            }
        };
        let data = match ResumeData::decode(&bytes) {
            Ok(d) => d,
            Err(e) => return Ok(report(ResumeStatus::Invalid(e), 0, self.have_count())),
        };
        let n = self.layout.piece_count();
        if data.layout_digest != self.layout_digest()
            || data.files.len() != self.layout.files().len()
        {
            return Ok(report(
                ResumeStatus::Invalid("resume data is for another torrent".into()),
                0,
                self.have_count(),
            ));
        }
        let Ok(saved) = Bitfield::from_bytes(&data.have, n) else {
            return Ok(report(
                ResumeStatus::Invalid("bad bitfield".into()),
                0,
                self.have_count(),
            ));
        };
        let claimed = saved.count_ones();
        // A file whose size or mtime moved since the save (written after it, truncated,
        // edited) makes every piece touching it suspect; those are rehashed, claimed or
        // not, so pieces verified after the last save survive a crash too. Pieces lying
        // only in unchanged files keep their claim without hashing.
        let now = self.stamps()?;
        let changed: Vec<bool> = now
            .iter()
            .zip(&data.files)
            .map(|(a, b)| full_recheck || a != b)
            .collect();
        if !changed.contains(&true) {
            for p in saved.iter_ones() {
                self.mark(p, true);
            }
            return Ok(report(ResumeStatus::Trusted, claimed, self.have_count()));
        }
        let mut suspect = Vec::new();
        for p in 0..n {
            if self.layout.piece_spans(p).iter().any(|s| changed[s.file]) {
                suspect.push(p);
            } else if saved.get(p) {
                self.mark(p, true);
            }
        }
        self.verify_many(&suspect, &|_| {})?;
        Ok(report(ResumeStatus::Rechecked, claimed, self.have_count()))
    }

    /// Number of file handles currently open.
    pub fn open_files(&self) -> usize {
        self.handles.open_count()
    }

    /// Closes all cached file handles (they reopen lazily).
    pub fn close_files(&self) {
        self.handles.clear();
    }
}

/// Like `FileExt::read_exact_at`, reporting a short file as `UnexpectedEof`.
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Storage>();
    }
}
