//! Metainfo (.torrent) files (BEP 3), read strictly from untrusted bytes.
//!
//! The info-hash is SHA-1 over the info dictionary's *original* bytes ([`Metainfo::raw_info`]),
//! so unknown keys and non-canonical encodings keep the hash peers agree on. Everything that
//! decides where bytes go on disk (lengths, piece counts, file paths) is validated before a
//! [`Metainfo`] or [`Info`] exists; fields outside the info dictionary (trackers, comment,
//! ...) are informational and ignored when malformed, as real clients do.
//!
//! Supported: single- and multi-file v1 torrents, BEP 47 padding files and attributes,
//! `name.utf-8`/`path.utf-8`, hybrid v1+v2 torrents (BEP 52; read as v1). v2-only torrents
//! are refused with [`MetainfoError::V2Only`].

pub mod paths;

use crate::infohash::InfoHash;
use crate::layout::Geometry;
use bencode::{Dict, Value};
use paths::{UnsafeReason, MAX_PATH_DEPTH};
use std::path::{Path, PathBuf};

/// Largest .torrent file accepted.
pub const MAX_TORRENT_BYTES: usize = 64 << 20;
/// Largest number of files (padding files included) in one torrent.
pub const MAX_FILES: usize = 1_000_000;
/// Smallest piece length accepted: one 16 KiB block, the unit peers request.
pub const MIN_PIECE_LENGTH: u64 = 16 << 10;
/// Largest piece length accepted.
pub const MAX_PIECE_LENGTH: u64 = 64 << 20;

/// Why a torrent is refused. Messages name the field or path at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetainfoError {
    #[error("torrent is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("torrent is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("torrent is a bencoded {found}, not a dictionary")]
    NotADictionary { found: &'static str },
    #[error("torrent has no `{0}` field")]
    Missing(&'static str),
    #[error("`{field}` has type {found}, expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("v2-only torrents (BEP 52 without v1 `pieces`) are not supported")]
    V2Only,
    #[error("piece length {0} is not a power of two between 16 KiB and 64 MiB")]
    BadPieceLength(i64),
    #[error("`pieces` is {0} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    #[error("`pieces` has {found} hashes but {total_length} bytes in pieces of {piece_length} need {expected}")]
    PieceCountMismatch {
        found: usize,
        expected: u64,
        total_length: u64,
        piece_length: u64,
    },
    #[error("file \"{path}\" has negative length {length}")]
    NegativeLength { path: String, length: i64 },
    #[error("total length of all files overflows")]
    TotalLengthOverflow,
    #[error("torrent contains no data (total length 0)")]
    Empty,
    #[error("torrent has both `length` and `files`")]
    LengthAndFiles,
    #[error("torrent has neither `length` nor `files`")]
    NoLengthNorFiles,
    #[error("torrent lists {0} files, more than the limit of 1000000")]
    TooManyFiles(usize),
    #[error("unsafe path \"{path}\" in torrent: {reason}")]
    UnsafePath { path: String, reason: UnsafeReason },
    #[error("path \"{path}\" appears twice in the torrent (or as both a file and a directory)")]
    DuplicatePath { path: String },
}

fn wrong_type(field: &str, expected: &'static str, v: &Value<'_>) -> MetainfoError {
    MetainfoError::WrongType {
        field: field.to_string(),
        expected,
        found: v.kind(),
    }
}

/// BEP 47 file attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileAttr {
    /// `p`: synthetic zero bytes that align the next file to a piece boundary; never
    /// written to disk, never shown to the user.
    pub padding: bool,
    /// `x`
    pub executable: bool,
    /// `h`
    pub hidden: bool,
    /// `l`: a symlink in the original; storage writes nothing for it (links are never
    /// created from untrusted input).
    pub symlink: bool,
}

impl FileAttr {
    fn parse(s: &[u8]) -> Self {
        // Unknown characters are ignored (BEP 47).
        FileAttr {
            padding: s.contains(&b'p'),
            executable: s.contains(&b'x'),
            hidden: s.contains(&b'h'),
            symlink: s.contains(&b'l'),
        }
    }
}

/// One file of a torrent, laid end to end with the others in the byte stream pieces cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the download directory, already checked to be safe: for a
    /// multi-file torrent the first component is the torrent's name (its directory), for a
    /// single-file torrent the path is just the name.
    pub path: Vec<String>,
    pub length: u64,
    /// Where this file starts in the torrent's byte stream.
    pub offset: u64,
    pub attr: FileAttr,
}

impl FileEntry {
    /// The path as a relative `PathBuf` (components joined by the platform separator).
    pub fn relative_path(&self) -> PathBuf {
        self.path.iter().collect()
    }

    /// Where this file goes under `root`; see [`paths::resolve_on_disk`].
    pub fn path_under(&self, root: &Path) -> Result<PathBuf, paths::ResolveError> {
        paths::resolve_on_disk(root, &self.path)
    }
}

/// A run of bytes of one file covered by (part of) a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSlice {
    pub file_index: usize,
    pub offset_in_file: u64,
    pub length: u64,
}

/// The validated info dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub piece_length: u64,
    pub pieces: Vec<[u8; 20]>,
    /// In torrent order; offsets ascending. Single-file torrents have exactly one entry.
    pub files: Vec<FileEntry>,
    /// True when the torrent has `length` (single file) rather than `files`.
    pub single_file: bool,
    pub private: bool,
    /// True for a hybrid v1+v2 torrent (`meta version` 2 alongside v1 fields).
    pub hybrid: bool,
    /// Sum of all file lengths, padding included.
    pub total_length: u64,
}

impl Info {
    /// Parses a raw info dictionary, e.g. the metadata fetched from peers (BEP 9). The
    /// caller checks the bytes against the info-hash it expects.
    pub fn from_bytes(raw_info: &[u8]) -> Result<Info, MetainfoError> {
        check_size(raw_info)?;
        match bencode::decode(raw_info)? {
            Value::Dict(d) => Info::from_dict(&d),
            other => Err(wrong_type("info", "a dictionary", &other)),
        }
    }

    fn from_dict(d: &Dict<'_>) -> Result<Info, MetainfoError> {
        let meta_version = d.get_int(b"meta version");
        let hybrid = meta_version == Some(2);
        let Some(pieces) = d.get(b"pieces") else {
            if meta_version.is_some_and(|v| v >= 2) || d.get(b"file tree").is_some() {
                return Err(MetainfoError::V2Only);
            }
            return Err(MetainfoError::Missing("info.pieces"));
        };
        let pieces = pieces
            .as_bytes()
            .ok_or_else(|| wrong_type("info.pieces", "a byte string", pieces))?;
        let piece_length = required_int(d, b"piece length", "info.piece length")?;
        if !(MIN_PIECE_LENGTH as i64..=MAX_PIECE_LENGTH as i64).contains(&piece_length)
            || !(piece_length as u64).is_power_of_two()
        {
            return Err(MetainfoError::BadPieceLength(piece_length));
        }
        let piece_length = piece_length as u64;
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces.len()));
        }

        let name = utf8_preferred(d, b"name.utf-8", b"name", "info.name")?
            .ok_or(MetainfoError::Missing("info.name"))?;
        paths::check_component(&name).map_err(|reason| MetainfoError::UnsafePath {
            path: paths::display_path(&[&name]),
            reason,
        })?;

        let (files, single_file) = match (d.get(b"length"), d.get(b"files")) {
            (Some(_), Some(_)) => return Err(MetainfoError::LengthAndFiles),
            (None, None) => return Err(MetainfoError::NoLengthNorFiles),
            (Some(len), None) => {
                let length = len
                    .as_int()
                    .ok_or_else(|| wrong_type("info.length", "an integer", len))?;
                let length = u64::try_from(length).map_err(|_| MetainfoError::NegativeLength {
                    path: name.clone(),
                    length,
                })?;
                let attr = FileAttr::parse(d.get_bytes(b"attr").unwrap_or_default());
                let entry = FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    attr,
                };
                (vec![entry], true)
            }
            (None, Some(files)) => {
                let list = files
                    .as_list()
                    .ok_or_else(|| wrong_type("info.files", "a list", files))?;
                (parse_files(&name, list)?, false)
            }
        };

        let total_length = files
            .iter()
            .try_fold(0u64, |acc, f| acc.checked_add(f.length))
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or(MetainfoError::TotalLengthOverflow)?;
        if total_length == 0 {
            return Err(MetainfoError::Empty);
        }
        let expected = total_length.div_ceil(piece_length);
        let found = pieces.len() / 20;
        if found as u64 != expected {
            return Err(MetainfoError::PieceCountMismatch {
                found,
                expected,
                total_length,
                piece_length,
            });
        }
        let pieces = pieces
            .chunks_exact(20)
            .map(|c| <[u8; 20]>::try_from(c).expect("chunks of 20"))
            .collect();

        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            single_file,
            private: d.get_int(b"private") == Some(1),
            hybrid,
            total_length,
        })
    }

    pub fn num_pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Length of piece `index` (the last one may be short); `None` past the end.
    pub fn piece_len(&self, index: usize) -> Option<u64> {
        let geometry = Geometry::from_info(self).ok()?;
        let len = geometry.checked_piece_len(u32::try_from(index).ok()?)?;
        Some(len.into())
    }

    /// The SHA-1 the data of piece `index` must have.
    pub fn piece_hash(&self, index: usize) -> Option<&[u8; 20]> {
        self.pieces.get(index)
    }

    /// Which byte ranges of which files piece `index` covers, in order. Zero-length files
    /// are skipped; padding files are included (their bytes are zeros; check
    /// `files[i].attr.padding` before touching the disk).
    pub fn piece_file_slices(&self, index: usize) -> Vec<FileSlice> {
        let Some(len) = self.piece_len(index) else {
            return Vec::new();
        };
        self.byte_range_slices(index as u64 * self.piece_length, len)
    }

    /// Which byte ranges of which files the torrent bytes `[start, start + len)` cover.
    pub fn byte_range_slices(&self, start: u64, len: u64) -> Vec<FileSlice> {
        let end = start.saturating_add(len).min(self.total_length);
        let mut out = Vec::new();
        // First file that ends after `start`.
        let mut i = self.files.partition_point(|f| f.offset + f.length <= start);
        let mut at = start;
        while at < end && i < self.files.len() {
            let f = &self.files[i];
            let file_end = f.offset + f.length;
            if f.length > 0 {
                let take = file_end.min(end) - at;
                out.push(FileSlice {
                    file_index: i,
                    offset_in_file: at - f.offset,
                    length: take,
                });
                at += take;
            }
            i += 1;
        }
        out
    }
}

/// A parsed .torrent file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    pub info: Info,
    /// The info dictionary exactly as it appeared in the file (what BEP 9 serves to peers).
    pub raw_info: Vec<u8>,
    pub announce: Option<String>,
    /// BEP 12 tiers, in order; empty tiers dropped.
    pub announce_list: Vec<Vec<String>>,
    pub creation_date: Option<i64>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// BEP 19 web seeds.
    pub url_list: Vec<String>,
    /// BEP 5 DHT nodes (`host`, `port`) to bootstrap from.
    pub nodes: Vec<(String, u16)>,
}

impl Metainfo {
    /// Parses a whole .torrent file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        check_size(bytes)?;
        let top = bencode::decode(bytes)?;
        let Value::Dict(top) = top else {
            return Err(MetainfoError::NotADictionary { found: top.kind() });
        };
        let info_value = top.get(b"info").ok_or(MetainfoError::Missing("info"))?;
        let info_dict = info_value
            .as_dict()
            .ok_or_else(|| wrong_type("info", "a dictionary", info_value))?;
        let info = Info::from_dict(info_dict)?;
        let raw_info = info_dict.raw.to_vec();

        let announce_list = top
            .get_list(b"announce-list")
            .map(|tiers| {
                tiers
                    .iter()
                    .filter_map(|t| t.as_list())
                    .map(|t| t.iter().filter_map(|u| u.as_str()).map(String::from))
                    .map(Vec::from_iter)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let url_list = match top.get(b"url-list") {
            Some(Value::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
            Some(Value::List(l)) => l
                .iter()
                .filter_map(|u| u.as_str())
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        let nodes = top
            .get_list(b"nodes")
            .map(|l| {
                l.iter()
                    .filter_map(|n| {
                        let pair = n.as_list()?;
                        let host = pair.items.first()?.as_str()?;
                        let port = u16::try_from(pair.items.get(1)?.as_int()?).ok()?;
                        Some((host.to_string(), port))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let text = |utf8_key: &[u8], key: &[u8]| -> Option<String> {
            top.get_str(utf8_key)
                .or_else(|| top.get_str(key))
                .map(String::from)
        };

        Ok(Metainfo {
            info_hash: InfoHash::of_info_bytes(&raw_info),
            info,
            raw_info,
            announce: top.get_str(b"announce").map(String::from),
            announce_list,
            creation_date: top.get_int(b"creation date"),
            comment: text(b"comment.utf-8", b"comment"),
            created_by: top.get_str(b"created by").map(String::from),
            url_list,
            nodes,
        })
    }

    /// All trackers: `announce-list` tiers flattened, else `announce`; no duplicates.
    pub fn trackers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .announce_list
            .iter()
            .flatten()
            .chain(self.announce.iter());
        for t in all {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

fn check_size(bytes: &[u8]) -> Result<(), MetainfoError> {
    if bytes.len() > MAX_TORRENT_BYTES {
        return Err(MetainfoError::TooLarge {
            len: bytes.len(),
            max: MAX_TORRENT_BYTES,
        });
    }
    Ok(())
}

fn required_int(d: &Dict<'_>, key: &[u8], field: &'static str) -> Result<i64, MetainfoError> {
    let v = d.get(key).ok_or(MetainfoError::Missing(field))?;
    v.as_int().ok_or_else(|| wrong_type(field, "an integer", v))
}

/// Text from `utf8_key` when present and valid UTF-8, else from `key` (non-UTF-8 bytes
/// replaced by U+FFFD, as old clients wrote names in local code pages).
fn utf8_preferred(
    d: &Dict<'_>,
    utf8_key: &[u8],
    key: &[u8],
    field: &str,
) -> Result<Option<String>, MetainfoError> {
    if let Some(s) = d.get_str(utf8_key) {
        return Ok(Some(s.to_string()));
    }
    match d.get(key) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        Some(other) => Err(wrong_type(field, "a byte string", other)),
    }
}

/// A list of path components, each as text (see [`utf8_preferred`] for the encoding rule).
fn path_components(v: &Value<'_>, field: &str) -> Result<Vec<String>, MetainfoError> {
    let list = v
        .as_list()
        .ok_or_else(|| wrong_type(field, "a list of strings", v))?;
    if list.len() > MAX_PATH_DEPTH {
        return Err(MetainfoError::UnsafePath {
            path: format!("({} components)", list.len()),
            reason: UnsafeReason::TooDeep,
        });
    }
    list.iter()
        .map(|c| match c {
            Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => Err(wrong_type(field, "a list of strings", other)),
        })
        .collect()
}

fn parse_files(name: &str, list: &bencode::List<'_>) -> Result<Vec<FileEntry>, MetainfoError> {
    if list.len() > MAX_FILES {
        return Err(MetainfoError::TooManyFiles(list.len()));
    }
    let mut files = Vec::with_capacity(list.len());
    let mut offset = 0u64;
    for (i, item) in list.iter().enumerate() {
        let field = format!("info.files[{i}]");
        let d = item
            .as_dict()
            .ok_or_else(|| wrong_type(&field, "a dictionary", item))?;
        let path_value = match d.get(b"path.utf-8") {
            Some(v)
                if v.as_list()
                    .is_some_and(|l| l.iter().all(|c| c.as_str().is_some())) =>
            {
                v
            }
            _ => d
                .get(b"path")
                .ok_or(MetainfoError::Missing("info.files[].path"))?,
        };
        let rel = path_components(path_value, &format!("{field}.path"))?;
        let mut path = Vec::with_capacity(rel.len() + 1);
        path.push(name.to_string());
        path.extend(rel);
        if path.len() <= 1 {
            return Err(MetainfoError::UnsafePath {
                path: paths::display_path(&path),
                reason: UnsafeReason::Empty,
            });
        }
        paths::check_components(&path).map_err(|reason| MetainfoError::UnsafePath {
            path: paths::display_path(&path),
            reason,
        })?;
        let length = required_int(d, b"length", "info.files[].length")?;
        let length = u64::try_from(length).map_err(|_| MetainfoError::NegativeLength {
            path: paths::display_path(&path),
            length,
        })?;
        let attr = FileAttr::parse(d.get_bytes(b"attr").unwrap_or_default());
        files.push(FileEntry {
            path,
            length,
            offset,
            attr,
        });
        offset = offset
            .checked_add(length)
            .ok_or(MetainfoError::TotalLengthOverflow)?;
    }
    check_no_collisions(&files)?;
    Ok(files)
}

/// Two real files at the same path, or a file where another needs a directory, would
/// overwrite each other's data. Padding files are never written, so they may repeat.
///
/// Sorted by components, a path that is a prefix of others (or equal to one) sits right
/// before them, so checking neighbours finds every clash in O(n log n) with no extra sets.
fn check_no_collisions(files: &[FileEntry]) -> Result<(), MetainfoError> {
    let mut sorted: Vec<&[String]> = files
        .iter()
        .filter(|f| !f.attr.padding)
        .map(|f| f.path.as_slice())
        .collect();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        if pair[1].starts_with(pair[0]) {
            return Err(MetainfoError::DuplicatePath {
                path: paths::display_path(pair[0]),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bencode::Encoder;

    fn single(name: &str, length: i64, piece_length: i64, npieces: usize) -> Vec<u8> {
        let mut info = Vec::new();
        Encoder::new(&mut info)
            .begin_dict()
            .key(b"length")
            .int(length)
            .key(b"name")
            .str(name)
            .key(b"piece length")
            .int(piece_length)
            .key(b"pieces")
            .bytes(&vec![7u8; npieces * 20])
            .end();
        wrap(&info)
    }

    fn wrap(info: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new(&mut out)
            .begin_dict()
            .key(b"announce")
            .str("http://t.example/announce")
            .key(b"info")
            .raw(info)
            .end();
        out
    }

    #[test]
    fn parses_single_file() {
        let t = single("a.bin", 40_000, 16384, 3);
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.info.name, "a.bin");
        assert!(m.info.single_file);
        assert_eq!(m.info.total_length, 40_000);
        assert_eq!(m.info.num_pieces(), 3);
        assert_eq!(m.info.piece_len(2), Some(40_000 - 2 * 16384));
        assert_eq!(m.info.piece_len(3), None);
        assert_eq!(m.announce.as_deref(), Some("http://t.example/announce"));
        // The info-hash is over the exact info bytes inside the file.
        let start = t.windows(5).position(|w| w == b"4:inf").unwrap() + 6;
        assert_eq!(m.raw_info, &t[start..t.len() - 1]);
        assert_eq!(m.info_hash, InfoHash::of_info_bytes(&t[start..t.len() - 1]));
        assert_eq!(Info::from_bytes(&m.raw_info).unwrap(), m.info);
    }

    #[test]
    fn refuses_bad_piece_geometry() {
        let e = |t: Vec<u8>| Metainfo::from_bytes(&t).unwrap_err();
        assert_eq!(
            e(single("a", 40_000, 16384, 2)).to_string(),
            "`pieces` has 2 hashes but 40000 bytes in pieces of 16384 need 3"
        );
        assert_eq!(
            e(single("a", 40_000, 0, 3)),
            MetainfoError::BadPieceLength(0)
        );
        assert_eq!(
            e(single("a", 40_000, 20_000, 2)),
            MetainfoError::BadPieceLength(20_000)
        );
        assert_eq!(
            e(single("a", 40_000, 8192, 5)),
            MetainfoError::BadPieceLength(8192)
        );
        assert_eq!(
            e(single("a", -1, 16384, 0)),
            MetainfoError::NegativeLength {
                path: "a".into(),
                length: -1
            }
        );
        assert_eq!(e(single("a", 0, 16384, 0)), MetainfoError::Empty);
        assert!(matches!(
            e(single("..", 1, 16384, 1)),
            MetainfoError::UnsafePath {
                reason: UnsafeReason::DotDot,
                ..
            }
        ));
    }

    fn multi(files: &[(&[&str], i64, &str)], piece_length: i64) -> Vec<u8> {
        let total: i64 = files.iter().map(|f| f.1.max(0)).sum();
        let n = (total as u64).div_ceil(piece_length as u64) as usize;
        let mut info = Vec::new();
        let mut e = Encoder::new(&mut info);
        e.begin_dict().key(b"files").begin_list();
        for (path, len, attr) in files {
            e.begin_dict();
            if !attr.is_empty() {
                e.key(b"attr").str(attr);
            }
            e.key(b"length").int(*len).key(b"path").begin_list();
            for c in *path {
                e.str(c);
            }
            e.end().end();
        }
        e.end()
            .key(b"name")
            .str("dir")
            .key(b"piece length")
            .int(piece_length)
            .key(b"pieces")
            .bytes(&vec![1u8; n * 20])
            .end();
        wrap(&info)
    }

    #[test]
    fn maps_pieces_onto_files_with_padding() {
        let t = multi(
            &[
                (&["a"], 10_000, ""),
                (&[".pad", "6384"], 6384, "p"),
                (&["empty"], 0, ""),
                (&["sub", "b"], 30_000, "x"),
            ],
            16384,
        );
        let m = Metainfo::from_bytes(&t).unwrap();
        let i = &m.info;
        assert_eq!(i.files[3].path, ["dir", "sub", "b"]);
        assert_eq!(i.files[3].offset, 16384);
        assert!(i.files[1].attr.padding && i.files[3].attr.executable);
        assert_eq!(
            i.piece_file_slices(0),
            [
                FileSlice {
                    file_index: 0,
                    offset_in_file: 0,
                    length: 10_000
                },
                FileSlice {
                    file_index: 1,
                    offset_in_file: 0,
                    length: 6384
                },
            ]
        );
        assert_eq!(
            i.piece_file_slices(2),
            [FileSlice {
                file_index: 3,
                offset_in_file: 16384,
                length: 30_000 - 16384
            }]
        );
        let covered: u64 = (0..i.num_pieces())
            .flat_map(|p| i.piece_file_slices(p))
            .map(|s| s.length)
            .sum();
        assert_eq!(covered, i.total_length);
        assert_eq!(
            i.files[3].path_under(Path::new("/out")).unwrap(),
            PathBuf::from("/out/dir/sub/b")
        );
    }

    #[test]
    fn refuses_traversal_and_collisions_in_files() {
        let e = |files: &[(&[&str], i64, &str)]| {
            Metainfo::from_bytes(&multi(files, 16384)).unwrap_err()
        };
        let err = e(&[(&["a", "..", "..", "x"], 1, "")]);
        assert_eq!(
            err.to_string(),
            "unsafe path \"dir/a/../../x\" in torrent: `..` path component (directory traversal)"
        );
        assert!(matches!(
            e(&[(&["/etc/passwd"], 1, "")]),
            MetainfoError::UnsafePath {
                reason: UnsafeReason::Slash,
                ..
            }
        ));
        assert!(matches!(
            e(&[(&[], 1, "")]),
            MetainfoError::UnsafePath {
                reason: UnsafeReason::Empty,
                ..
            }
        ));
        assert!(matches!(
            e(&[(&["a"], 1, ""), (&["a"], 1, "")]),
            MetainfoError::DuplicatePath { .. }
        ));
        assert!(matches!(
            e(&[(&["a"], 1, ""), (&["a", "b"], 1, "")]),
            MetainfoError::DuplicatePath { .. }
        ));
        assert!(matches!(
            e(&[(&["a", "b"], 1, ""), (&["a"], 1, "")]),
            MetainfoError::DuplicatePath { .. }
        ));
        // Repeated padding files are fine.
        let ok = multi(
            &[
                (&["a"], 1, ""),
                (&[".pad", "1"], 1, "p"),
                (&[".pad", "1"], 1, "p"),
                (&["b"], 1, ""),
            ],
            16384,
        );
        assert_eq!(Metainfo::from_bytes(&ok).unwrap().info.files.len(), 4);
    }

    #[test]
    fn prefers_utf8_names_and_reads_hybrid_as_v1() {
        let mut info = Vec::new();
        Encoder::new(&mut info)
            .begin_dict()
            .key(b"file tree")
            .begin_dict()
            .end()
            .key(b"length")
            .int(5)
            .key(b"meta version")
            .int(2)
            .key(b"name")
            .bytes(b"\xff\xfe")
            .key(b"name.utf-8")
            .str("réel")
            .key(b"piece length")
            .int(16384)
            .key(b"pieces")
            .bytes(&[0; 20])
            .key(b"x-unknown")
            .str("kept")
            .end();
        let m = Metainfo::from_bytes(&wrap(&info)).unwrap();
        assert_eq!(m.info.name, "réel");
        assert!(m.info.hybrid);
        assert_eq!(m.info_hash, InfoHash::of_info_bytes(&info));

        let mut v2 = Vec::new();
        Encoder::new(&mut v2)
            .begin_dict()
            .key(b"file tree")
            .begin_dict()
            .end()
            .key(b"meta version")
            .int(2)
            .key(b"name")
            .str("x")
            .key(b"piece length")
            .int(16384)
            .end();
        assert_eq!(
            Metainfo::from_bytes(&wrap(&v2)).unwrap_err(),
            MetainfoError::V2Only
        );
    }

    #[test]
    fn refuses_structural_garbage() {
        assert_eq!(
            Metainfo::from_bytes(b"li1ee").unwrap_err(),
            MetainfoError::NotADictionary { found: "list" }
        );
        assert_eq!(
            Metainfo::from_bytes(b"d8:announce1:xe").unwrap_err(),
            MetainfoError::Missing("info")
        );
        assert!(matches!(
            Metainfo::from_bytes(b"d4:infod").unwrap_err(),
            MetainfoError::Bencode(_)
        ));
        let e = Metainfo::from_bytes(b"d4:infoi1ee").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`info` has type integer, expected a dictionary"
        );
    }
}
