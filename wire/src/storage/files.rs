//! Lazily opened, bounded cache of file handles, and the path checks done on open.
//!
//! Handles are `Arc<File>` so positioned I/O (`read_at`/`write_at`) runs outside the lock:
//! the lock is held only to look up or open a handle.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StorageError;

struct Cached {
    index: usize,
    file: Arc<File>,
    writable: bool,
    last_used: u64,
}

pub(super) struct FileCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    tick: u64,
    entries: Vec<Cached>,
}

/// How a file is wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    /// Read-write; creates the file (and its directories) and extends it sparsely to
    /// `len` if it is shorter.
    Write {
        len: u64,
    },
}

impl FileCache {
    pub(super) fn new(capacity: usize) -> Self {
        FileCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                tick: 0,
                entries: Vec::new(),
            }),
        }
    }

    /// The handle for file `index` at `path` (which must lie under `root`).
    pub(super) fn get(
        &self,
        root: &Path,
        index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Arc<File>, StorageError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        let want_write = matches!(access, Access::Write { .. });
        if let Some(pos) = inner.entries.iter().position(|c| c.index == index) {
            let entry = &mut inner.entries[pos];
            if entry.writable || !want_write {
                entry.last_used = tick;
                return Ok(entry.file.clone());
            }
            // Upgrade a read-only handle: reopen below.
            inner.entries.swap_remove(pos);
        }
        let file = Arc::new(open_checked(root, path, access)?);
        if inner.entries.len() >= self.capacity {
            if let Some(lru) = (0..inner.entries.len()).min_by_key(|&i| inner.entries[i].last_used)
            {
                inner.entries.swap_remove(lru);
            }
        }
        inner.entries.push(Cached {
            index,
            file: file.clone(),
            writable: want_write,
            last_used: tick,
        });
        Ok(file)
    }

    /// Handles currently open (for tests and stats).
    pub(super) fn open_count(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// Closes every handle (e.g. before files are moved or deleted).
    pub(super) fn clear(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.entries.clear();
        }
    }
}

fn io_err(path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

/// Opens `path`, refusing anything that resolves outside `root` (a symlinked directory
/// or file planted inside the download directory) even though the layout's components
/// were already checked.
fn open_checked(root: &Path, path: &Path, access: Access) -> Result<File, StorageError> {
    let parent = path.parent().unwrap_or(root);
    if let Access::Write { .. } = access {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let real_parent = parent.canonicalize().map_err(|e| io_err(parent, e))?;
    if !real_parent.starts_with(root) {
        return Err(StorageError::UnsafePath(path.to_path_buf()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(StorageError::UnsafePath(path.to_path_buf()))
        }
        Ok(m) if m.is_dir() => {
            return Err(io_err(
                path,
                io::Error::other("is a directory, expected a file"),
            ));
        }
        _ => {}
    }
    let file = match access {
        Access::Read => File::open(path),
        Access::Write { .. } => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
    }
    .map_err(|e| io_err(path, e))?;
    if let Access::Write { len } = access {
        let cur = file.metadata().map_err(|e| io_err(path, e))?.len();
        // Sparse pre-allocation: cheap, and never shrinks what is already there.
        if cur < len {
            file.set_len(len).map_err(|e| io_err(path, e))?;
        }
    }
    Ok(file)
}

/// The canonical form of the download directory, created if missing.
pub(super) fn prepare_root(root: &Path) -> Result<PathBuf, StorageError> {
    std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    root.canonicalize().map_err(|e| io_err(root, e))
}
