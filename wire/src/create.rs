//! Making a v1 .torrent from a file or a directory.
//!
//! Files of a directory are listed recursively in a deterministic order (sorted by path
//! bytes, component by component) so the same tree always gives the same info-hash.
//! Nothing is skipped silently: symbolic links, sockets, FIFOs and devices are refused with
//! an error naming them (links are not followed: a link can point outside the tree or loop),
//! and so are file names that are not UTF-8 or that the metainfo parser would refuse
//! (backslashes, drive letters, ...). Empty directories carry no data and are not listed.
//!
//! Pieces are hashed in parallel on a rayon pool: each task reads a run of whole pieces with
//! large positioned reads (pieces span file boundaries) and hashes them. The output is
//! canonical bencode and is parsed back with [`Metainfo::from_bytes`] before it is returned,
//! so what this module produces is exactly what the parser accepts.

use crate::infohash::InfoHash;
use crate::magnet::Magnet;
use crate::metainfo::{paths, Metainfo, MetainfoError, MAX_FILES};
use bencode::Encoder;
use rayon::prelude::*;
use sha1::{Digest, Sha1};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Smallest piece length chosen automatically.
pub const AUTO_MIN_PIECE_LENGTH: u64 = 16 << 10;
/// Largest piece length chosen automatically.
pub const AUTO_MAX_PIECE_LENGTH: u64 = 16 << 20;
/// The automatic piece length keeps the piece count at or under this (1,000-2,000 pieces
/// unless the clamp to 16 KiB..16 MiB applies).
pub const AUTO_MAX_PIECES: u64 = 2000;
/// Bytes each hashing task reads at once (whole pieces; at least one piece).
const TASK_BYTES: u64 = 4 << 20;

/// What to put in the torrent besides the data.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// A power of two in 16 KiB..=64 MiB; chosen by [`auto_piece_length`] when `None`.
    pub piece_length: Option<u64>,
    /// Trackers, one per tier (BEP 12). None by default: this is a DHT-first client.
    pub trackers: Vec<String>,
    pub private: bool,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// Seconds since the Unix epoch. `None` leaves the field out (reproducible output).
    pub creation_date: Option<i64>,
    /// Hashing threads; all cores when `None`.
    pub threads: Option<usize>,
}

/// A finished torrent.
#[derive(Clone, Debug)]
pub struct Created {
    pub metainfo: Metainfo,
    /// The .torrent file's bytes.
    pub bytes: Vec<u8>,
    pub magnet: Magnet,
}

/// Why a torrent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    // The cause is in the message, not also a `source`: chains printed with `{:#}` would
    // name it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}: symbolic links are not followed; replace the link with the file or remove it")]
    Symlink(PathBuf),
    #[error("{0}: not a regular file or directory (socket, FIFO or device)")]
    SpecialFile(PathBuf),
    #[error("{0}: file name is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("{path}: file name cannot go into a torrent: {reason}")]
    BadName {
        path: PathBuf,
        reason: paths::UnsafeReason,
    },
    #[error("{0}: no data to share (no files, or all files are empty)")]
    Empty(PathBuf),
    #[error("{0}: more than 1000000 files")]
    TooManyFiles(PathBuf),
    #[error("piece length {0} is not a power of two between 16 KiB and 64 MiB")]
    BadPieceLength(u64),
    #[error("{0}: file changed size while it was being hashed")]
    Changed(PathBuf),
    #[error("cannot start hashing threads: {0}")]
    Threads(String),
    #[error("created torrent does not parse back (a bug): {0}")]
    Invalid(#[from] MetainfoError),
}

/// One file going into the torrent.
#[derive(Clone, Debug)]
struct SourceFile {
    disk_path: PathBuf,
    /// Path inside the torrent, without the torrent's name (empty for a single file).
    torrent_path: Vec<String>,
    length: u64,
    /// Offset in the torrent's byte stream.
    offset: u64,
}

/// The piece length [`create_torrent`] picks for `total_length` bytes: the smallest power
/// of two that keeps the piece count at or under [`AUTO_MAX_PIECES`], clamped to
/// 16 KiB..=16 MiB.
pub fn auto_piece_length(total_length: u64) -> u64 {
    let wanted = total_length.div_ceil(AUTO_MAX_PIECES).max(1);
    wanted
        .checked_next_power_of_two()
        .unwrap_or(AUTO_MAX_PIECE_LENGTH)
        .clamp(AUTO_MIN_PIECE_LENGTH, AUTO_MAX_PIECE_LENGTH)
}

/// Makes a torrent of `path` (a file or a directory). `progress` is called from the hashing
/// threads with the total number of bytes hashed so far.
pub fn create_torrent(
    path: &Path,
    opts: &CreateOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Created, CreateError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CreateError::Io {
            path: p,
            error: source,
        }
    };
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    let name = torrent_name(path)?;
    let single_file = meta.is_file();
    let mut files = Vec::new();
    if meta.file_type().is_symlink() {
        return Err(CreateError::Symlink(path.to_path_buf()));
    } else if single_file {
        files.push(SourceFile {
            disk_path: path.to_path_buf(),
            torrent_path: Vec::new(),
            length: meta.len(),
            offset: 0,
        });
    } else if meta.is_dir() {
        walk(path, &mut Vec::new(), &mut files)?;
    } else {
        return Err(CreateError::SpecialFile(path.to_path_buf()));
    }
    let mut total = 0u64;
    for f in &mut files {
        f.offset = total;
        total += f.length;
    }
    if total == 0 {
        return Err(CreateError::Empty(path.to_path_buf()));
    }

    let piece_length = match opts.piece_length {
        Some(pl) if pl.is_power_of_two() && (16 << 10..=64 << 20).contains(&pl) => pl,
        Some(pl) => return Err(CreateError::BadPieceLength(pl)),
        None => auto_piece_length(total),
    };
    let pieces = hash_pieces(&files, total, piece_length, opts.threads, progress)?;

    let mut info = Vec::with_capacity(pieces.len() + 64 * files.len() + 128);
    let mut e = Encoder::new(&mut info);
    e.begin_dict();
    if single_file {
        e.key(b"length").int(total as i64);
    } else {
        e.key(b"files").begin_list();
        for f in &files {
            e.begin_dict().key(b"length").int(f.length as i64);
            e.key(b"path").begin_list();
            for c in &f.torrent_path {
                e.str(c);
            }
            e.end().end();
        }
        e.end();
    }
    e.key(b"name").str(&name);
    e.key(b"piece length").int(piece_length as i64);
    e.key(b"pieces").bytes(&pieces);
    if opts.private {
        e.key(b"private").int(1);
    }
    e.end();

    // Keys in sorted order: announce, announce-list, comment, created by, creation date, info.
    let mut out = Vec::with_capacity(info.len() + 256);
    let mut e = Encoder::new(&mut out);
    e.begin_dict();
    if let Some(first) = opts.trackers.first() {
        e.key(b"announce").str(first);
        if opts.trackers.len() > 1 {
            e.key(b"announce-list").begin_list();
            for t in &opts.trackers {
                e.begin_list().str(t).end();
            }
            e.end();
        }
    }
    if let Some(c) = &opts.comment {
        e.key(b"comment").str(c);
    }
    if let Some(c) = &opts.created_by {
        e.key(b"created by").str(c);
    }
    if let Some(d) = opts.creation_date {
        e.key(b"creation date").int(d);
    }
    e.key(b"info").raw(&info);
    e.end();

    let metainfo = Metainfo::from_bytes(&out)?;
    debug_assert_eq!(metainfo.info_hash, InfoHash::of_info_bytes(&info));
    let mut magnet = Magnet::new(metainfo.info_hash);
    magnet.display_name = Some(name);
    magnet.trackers = opts.trackers.clone();
    Ok(Created {
        metainfo,
        bytes: out,
        magnet,
    })
}

/// The torrent's name: the last component of `path` (made absolute first, so `.` works).
fn torrent_name(path: &Path) -> Result<String, CreateError> {
    let abs;
    let named = if path.file_name().is_some() {
        path
    } else {
        abs = std::fs::canonicalize(path).map_err(|source| CreateError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        &abs
    };
    let name = named
        .file_name()
        .ok_or_else(|| CreateError::BadName {
            path: path.to_path_buf(),
            reason: paths::UnsafeReason::Empty,
        })?
        .to_str()
        .ok_or_else(|| CreateError::NotUtf8(path.to_path_buf()))?
        .to_string();
    paths::check_component(&name).map_err(|reason| CreateError::BadName {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(name)
}

/// Lists regular files under `dir` depth-first, entries sorted by name bytes.
fn walk(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<SourceFile>,
) -> Result<(), CreateError> {
    let io = |source| CreateError::Io {
        path: dir.to_path_buf(),
        error: source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| CreateError::NotUtf8(path.clone()))?;
        paths::check_component(&name).map_err(|reason| CreateError::BadName {
            path: path.clone(),
            reason,
        })?;
        let ft = entry.file_type().map_err(|source| CreateError::Io {
            path: path.clone(),
            error: source,
        })?;
        prefix.push(name);
        if prefix.len() + 1 > paths::MAX_PATH_DEPTH {
            return Err(CreateError::BadName {
                path,
                reason: paths::UnsafeReason::TooDeep,
            });
        }
        if ft.is_symlink() {
            return Err(CreateError::Symlink(path));
        } else if ft.is_dir() {
            walk(&path, prefix, out)?;
        } else if ft.is_file() {
            if out.len() >= MAX_FILES {
                return Err(CreateError::TooManyFiles(path));
            }
            let length = entry
                .metadata()
                .map_err(|source| CreateError::Io {
                    path: path.clone(),
                    error: source,
                })?
                .len();
            out.push(SourceFile {
                disk_path: path,
                torrent_path: prefix.clone(),
                length,
                offset: 0,
            });
        } else {
            return Err(CreateError::SpecialFile(path));
        }
        prefix.pop();
    }
    Ok(())
}

/// SHA-1 of every piece, concatenated, hashed on `threads` threads.
fn hash_pieces(
    files: &[SourceFile],
    total: u64,
    piece_length: u64,
    threads: Option<usize>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<u8>, CreateError> {
    let num_pieces = total.div_ceil(piece_length) as usize;
    let pieces_per_task = (TASK_BYTES / piece_length).max(1) as usize;
    let num_tasks = num_pieces.div_ceil(pieces_per_task);
    let done = AtomicU64::new(0);
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n.max(1));
    }
    let pool = builder
        .build()
        .map_err(|e| CreateError::Threads(e.to_string()))?;

    // One read buffer and open file per worker thread, reused across tasks: a fresh
    // multi-MiB buffer per task would be a fresh mmap and a page fault per 4 KiB.
    let workers: Vec<Mutex<(Vec<u8>, OpenFile)>> = (0..pool.current_num_threads())
        .map(|_| Mutex::default())
        .collect();
    let mut hashes = vec![0u8; num_pieces * 20];
    pool.install(|| {
        hashes
            .par_chunks_mut(pieces_per_task * 20)
            .enumerate()
            .try_for_each(|(task, out)| {
                let worker = rayon::current_thread_index().unwrap_or(0) % workers.len();
                let mut guard = workers[worker]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let (buf, open) = &mut *guard;
                let first_piece = task * pieces_per_task;
                let start = first_piece as u64 * piece_length;
                let len = (total - start).min(pieces_per_task as u64 * piece_length);
                buf.resize(len as usize, 0);
                read_stream(files, start, buf, open)?;
                for (piece, hash) in buf.chunks(piece_length as usize).zip(out.chunks_mut(20)) {
                    hash.copy_from_slice(&Sha1::digest(piece));
                }
                progress(done.fetch_add(len, Ordering::Relaxed) + len);
                Ok::<(), CreateError>(())
            })
    })?;
    debug_assert!(num_tasks * pieces_per_task >= num_pieces);
    Ok(hashes)
}

/// The file a hashing thread has open, kept between tasks (consecutive tasks usually read
/// the same file).
#[derive(Default)]
struct OpenFile {
    index: Option<usize>,
    file: Option<File>,
}

/// Fills `buf` with the torrent's bytes from `start`, reading across file boundaries.
fn read_stream(
    files: &[SourceFile],
    start: u64,
    buf: &mut [u8],
    open: &mut OpenFile,
) -> Result<(), CreateError> {
    let mut i = files.partition_point(|f| f.offset + f.length <= start);
    let mut filled = 0usize;
    while filled < buf.len() {
        let f = files.get(i).ok_or_else(|| {
            CreateError::Changed(
                files
                    .last()
                    .map(|f| f.disk_path.clone())
                    .unwrap_or_default(),
            )
        })?;
        let at = start + filled as u64;
        let in_file = at - f.offset;
        let take = ((f.length - in_file) as usize).min(buf.len() - filled);
        if take > 0 {
            if open.index != Some(i) {
                let file = File::open(&f.disk_path).map_err(|source| CreateError::Io {
                    path: f.disk_path.clone(),
                    error: source,
                })?;
                *open = OpenFile {
                    index: Some(i),
                    file: Some(file),
                };
            }
            let file = open.file.as_ref().expect("opened above");
            read_exact_at(file, &mut buf[filled..filled + take], in_file).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    CreateError::Changed(f.disk_path.clone())
                } else {
                    CreateError::Io {
                        path: f.disk_path.clone(),
                        error: e,
                    }
                }
            })?;
            filled += take;
        }
        i += 1;
    }
    Ok(())
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn auto_piece_length_aims_at_1000_to_2000_pieces() {
        assert_eq!(auto_piece_length(1), 16 << 10);
        assert_eq!(auto_piece_length(1 << 40), 16 << 20);
        for total in [100u64 << 20, 700 << 20, 3 << 30, 4_700_000_000] {
            let pl = auto_piece_length(total);
            let n = total.div_ceil(pl);
            assert!(
                pl.is_power_of_two() && (1000..=2000).contains(&n),
                "{total}: {pl} {n}"
            );
        }
    }

    #[test]
    fn single_file_hashes_match_a_plain_sha1() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(100_000, 1);
        let p = dir.path().join("f.bin");
        std::fs::write(&p, &data).unwrap();
        let opts = CreateOptions {
            piece_length: Some(16384),
            threads: Some(2),
            ..Default::default()
        };
        let seen = AtomicU64::new(0);
        let c = create_torrent(&p, &opts, &|n| {
            seen.fetch_max(n, Ordering::Relaxed);
        })
        .unwrap();
        let info = &c.metainfo.info;
        assert_eq!(info.name, "f.bin");
        assert_eq!(info.num_pieces(), 7);
        for (i, chunk) in data.chunks(16384).enumerate() {
            assert_eq!(
                info.pieces[i],
                <[u8; 20]>::from(Sha1::digest(chunk)),
                "piece {i}"
            );
        }
        assert_eq!(seen.load(Ordering::Relaxed), 100_000);
        assert_eq!(
            Metainfo::from_bytes(&c.bytes).unwrap().info_hash,
            c.magnet.info_hash
        );
        assert!(!String::from_utf8_lossy(&c.bytes).contains("announce"));
    }

    #[test]
    fn directory_pieces_span_files_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let files: [(&str, Vec<u8>); 4] = [
            ("b/z", payload(5000, 2)),
            ("a", payload(20_000, 3)),
            ("b/empty", Vec::new()),
            ("B", payload(30_000, 4)),
        ];
        for (p, d) in &files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
        let opts = CreateOptions {
            piece_length: Some(16384),
            threads: Some(1),
            ..Default::default()
        };
        let c = create_torrent(&root, &opts, &|_| {}).unwrap();
        let info = &c.metainfo.info;
        let names: Vec<String> = info.files.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(names, ["tree/B", "tree/a", "tree/b/empty", "tree/b/z"]);
        let stream: Vec<u8> = [&files[3].1, &files[1].1, &files[2].1, &files[0].1]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for (i, chunk) in stream.chunks(16384).enumerate() {
            assert_eq!(
                info.pieces[i],
                <[u8; 20]>::from(Sha1::digest(chunk)),
                "piece {i}"
            );
        }
        // Same tree, more threads, same info-hash.
        let again = create_torrent(
            &root,
            &CreateOptions {
                threads: Some(2),
                ..opts
            },
            &|_| {},
        )
        .unwrap();
        assert_eq!(again.metainfo.info_hash, c.metainfo.info_hash);
    }

    #[test]
    fn refuses_what_it_cannot_represent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        assert!(matches!(
            create_torrent(&root, &Default::default(), &|_| {}),
            Err(CreateError::Empty(_))
        ));
        std::fs::write(root.join("a"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let e = create_torrent(&root, &Default::default(), &|_| {}).unwrap_err();
        assert!(matches!(e, CreateError::Symlink(_)), "{e}");
        std::fs::remove_file(root.join("link")).unwrap();
        std::fs::write(root.join("back\\slash"), b"x").unwrap();
        let e = create_torrent(&root, &Default::default(), &|_| {}).unwrap_err();
        assert!(e.to_string().contains("backslash"), "{e}");
        std::fs::remove_file(root.join("back\\slash")).unwrap();
        let opts = CreateOptions {
            piece_length: Some(1000),
            ..Default::default()
        };
        assert!(matches!(
            create_torrent(&root, &opts, &|_| {}),
            Err(CreateError::BadPieceLength(1000))
        ));
        assert!(matches!(
            create_torrent(&dir.path().join("missing"), &Default::default(), &|_| {}),
            Err(CreateError::Io { .. })
        ));
    }

    #[test]
    fn writes_trackers_comment_and_private_flag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let opts = CreateOptions {
            trackers: vec!["http://a/ann".into(), "udp://b:1".into()],
            private: true,
            comment: Some("c".into()),
            created_by: Some("swarm".into()),
            creation_date: Some(1_700_000_000),
            ..Default::default()
        };
        let c = create_torrent(&p, &opts, &|_| {}).unwrap();
        let m = &c.metainfo;
        assert!(m.info.private);
        assert_eq!(m.announce.as_deref(), Some("http://a/ann"));
        assert_eq!(
            m.announce_list,
            [
                vec!["http://a/ann".to_string()],
                vec!["udp://b:1".to_string()]
            ]
        );
        assert_eq!(
            (
                m.comment.as_deref(),
                m.created_by.as_deref(),
                m.creation_date
            ),
            (Some("c"), Some("swarm"), Some(1_700_000_000))
        );
        // Canonical: re-encoding the parsed tree gives the same bytes.
        use bencode::ToBencode;
        assert_eq!(bencode::decode(&c.bytes).unwrap().to_bencode(), c.bytes);
        assert_eq!(c.magnet.trackers, opts.trackers);
    }
}
