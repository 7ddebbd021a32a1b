//! How a torrent's byte stream (all files end to end, cut into pieces) maps onto files.

use std::path::{Component, Path, PathBuf};

use crate::layout::Geometry;

/// One file as the storage sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Path components relative to the download directory (for a multi-file torrent the
    /// first one is the torrent's name).
    pub path: Vec<String>,
    pub length: u64,
    /// A BEP 47 pad file (or anything else that is not stored, e.g. a symlink entry):
    /// its bytes are zeros in the piece stream and never touch the disk.
    pub padding: bool,
}

/// A validated file layout: the piece geometry of the byte stream plus each file's place
/// in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageLayout {
    geometry: Geometry,
    files: Vec<FileSpec>,
    /// Start of each file in the byte stream (same index as `files`).
    offsets: Vec<u64>,
}

/// A run of bytes of one file: part of a piece or block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub file: usize,
    pub file_offset: u64,
    pub len: u64,
    /// True for pad files: read as zeros, never written.
    pub padding: bool,
}

/// Why a file layout is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("piece length {0} is not in 1..=2^31")]
    BadPieceLength(u64),
    #[error("file lengths add up to more than 2^63 bytes")]
    TooLarge,
    #[error("{pieces} pieces is more than a u32 can count")]
    TooManyPieces { pieces: u64 },
    #[error("file {index}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        index: usize,
        path: String,
        reason: &'static str,
    },
    #[error("file {index}: path {path:?} is used twice")]
    DuplicatePath { index: usize, path: String },
}

impl StorageLayout {
    /// Builds a layout; every path component is checked again here (defense in depth:
    /// the metainfo layer sanitizes first).
    pub fn new(piece_length: u64, files: Vec<FileSpec>) -> Result<Self, LayoutError> {
        if piece_length == 0 || piece_length > 1 << 31 {
            return Err(LayoutError::BadPieceLength(piece_length));
        }
        let mut offsets = Vec::with_capacity(files.len());
        let mut total: u64 = 0;
        let mut seen = std::collections::HashSet::new();
        for (index, f) in files.iter().enumerate() {
            offsets.push(total);
            total = total
                .checked_add(f.length)
                .filter(|t| *t <= i64::MAX as u64)
                .ok_or(LayoutError::TooLarge)?;
            if f.padding {
                continue;
            }
            let joined = f.path.join("/");
            if let Err(reason) = check_path(&f.path) {
                return Err(LayoutError::UnsafePath {
                    index,
                    path: joined,
                    reason,
                });
            }
            if !seen.insert(joined.clone()) {
                return Err(LayoutError::DuplicatePath {
                    index,
                    path: joined,
                });
            }
        }
        let geometry = Geometry::of_stream(total, piece_length as u32).ok_or_else(|| {
            LayoutError::TooManyPieces {
                pieces: Geometry::pieces_in(total, piece_length),
            }
        })?;
        Ok(StorageLayout {
            geometry,
            files,
            offsets,
        })
    }

    /// The layout of a parsed info dictionary. BEP 47 pad files and symlink entries are
    /// not stored (links are never created from untrusted input).
    pub fn from_info(info: &crate::metainfo::Info) -> Result<Self, LayoutError> {
        let files = info
            .files
            .iter()
            .map(|f| FileSpec {
                path: f.path.clone(),
                length: f.length,
                padding: f.attr.padding || f.attr.symlink,
            })
            .collect();
        StorageLayout::new(info.piece_length, files)
    }

    /// The pieces of the byte stream (which [`Geometry::from_info`] gives too).
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn piece_length(&self) -> u32 {
        self.geometry.piece_length
    }

    pub fn piece_count(&self) -> u32 {
        self.geometry.piece_count
    }

    pub fn total_length(&self) -> u64 {
        self.geometry.total_length
    }

    pub fn files(&self) -> &[FileSpec] {
        &self.files
    }

    /// Where file `index` starts in the byte stream.
    pub fn file_offset(&self, index: usize) -> Option<u64> {
        self.offsets.get(index).copied()
    }

    /// Length of piece `index` (the last one may be short), or `None` past the end.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        self.geometry.checked_piece_len(index)
    }

    /// The file spans covering `len` bytes from `offset` in the byte stream, in order.
    /// Zero-length files are skipped. The range must lie within the torrent.
    pub fn spans(&self, offset: u64, len: u64) -> Vec<Span> {
        let mut out = Vec::new();
        let end = offset.saturating_add(len).min(self.total_length());
        if offset >= end {
            return out;
        }
        // First file whose end lies beyond `offset`.
        let mut i = self
            .offsets
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let mut pos = offset;
        while pos < end && i < self.files.len() {
            let start = self.offsets[i];
            let file_end = start + self.files[i].length;
            if file_end > pos {
                let take = file_end.min(end) - pos;
                out.push(Span {
                    file: i,
                    file_offset: pos - start,
                    len: take,
                    padding: self.files[i].padding,
                });
                pos += take;
            }
            i += 1;
        }
        out
    }

    /// The spans of a whole piece.
    pub fn piece_spans(&self, index: u32) -> Vec<Span> {
        match self.piece_len(index) {
            Some(len) => self.spans(self.geometry.piece_offset(index), len as u64),
            None => Vec::new(),
        }
    }

    /// The path of file `index` under `root`.
    pub fn file_path(&self, root: &Path, index: usize) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in &self.files[index].path {
            p.push(c);
        }
        p
    }
}

/// A path is safe when it has at least one component and every component is a plain
/// name: not empty, `.` or `..`, no separators or NUL, not absolute, no drive letter.
fn check_path(path: &[String]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("no path components");
    }
    for c in path {
        if c.is_empty() {
            return Err("empty component");
        }
        if c.contains(['/', '\\', '\0']) {
            return Err("separator or NUL inside a component");
        }
        if c.len() >= 2 && c.as_bytes()[1] == b':' {
            return Err("drive letter");
        }
        let mut comps = Path::new(c).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(_)), None) => {}
            _ => return Err("`.`, `..` or a root component"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, length: u64) -> FileSpec {
        FileSpec {
            path: path.split('/').map(String::from).collect(),
            length,
            padding: false,
        }
    }

    fn pad(length: u64) -> FileSpec {
        FileSpec {
            path: vec![".pad".into(), length.to_string()],
            length,
            padding: true,
        }
    }

    #[test]
    fn pieces_span_file_boundaries_and_skip_empty_files() {
        // Stream: a[0..5) empty[] b[5..12) c[12..20); piece length 8.
        let l = StorageLayout::new(
            8,
            vec![f("t/a", 5), f("t/empty", 0), f("t/b", 7), f("t/c", 8)],
        )
        .unwrap();
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.total_length(), 20);
        assert_eq!(l.piece_len(0), Some(8));
        assert_eq!(l.piece_len(2), Some(4));
        assert_eq!(l.piece_len(3), None);
        let s = |file, file_offset, len| Span {
            file,
            file_offset,
            len,
            padding: false,
        };
        assert_eq!(l.piece_spans(0), vec![s(0, 0, 5), s(2, 0, 3)]);
        assert_eq!(l.piece_spans(1), vec![s(2, 3, 4), s(3, 0, 4)]);
        assert_eq!(l.piece_spans(2), vec![s(3, 4, 4)]);
        assert_eq!(l.spans(4, 2), vec![s(0, 4, 1), s(2, 0, 1)]);
        assert!(l.spans(20, 5).is_empty());
        assert!(l.piece_spans(3).is_empty());
    }

    #[test]
    fn pad_files_are_marked() {
        let l = StorageLayout::new(4, vec![f("t/a", 3), pad(1), f("t/b", 4)]).unwrap();
        let spans = l.piece_spans(0);
        assert_eq!(spans.len(), 2);
        assert!(!spans[0].padding && spans[1].padding);
        assert_eq!(l.piece_spans(1)[0].file, 2);
    }

    #[test]
    fn built_from_parsed_metainfo() {
        // a (5 bytes), a pad file up to the next 16 KiB boundary, sub/b (9 bytes).
        let raw = b"d5:filesld6:lengthi5e4:pathl1:aeed4:attr1:p6:lengthi16379e4:pathl4:.pad5:16379eed6:lengthi9e4:pathl3:sub1:beee4:name1:t12:piece lengthi16384e6:pieces40:0123456789012345678901234567890123456789e";
        let info = crate::metainfo::Info::from_bytes(raw).unwrap();
        let l = StorageLayout::from_info(&info).unwrap();
        assert_eq!(*l.geometry(), Geometry::from_info(&info).unwrap());
        assert_eq!(l.piece_count(), 2);
        assert_eq!(l.total_length(), 16393);
        assert_eq!(l.files()[0].path, ["t", "a"]);
        assert!(l.files()[1].padding);
        assert_eq!(l.files()[2].path, ["t", "sub", "b"]);
        assert_eq!(l.file_offset(2), Some(16384));
        assert_eq!(l.piece_spans(1)[0].file, 2);
    }

    #[test]
    fn hostile_layouts_are_refused() {
        for bad in ["t/../x", "/etc/passwd", "t//x", "t/./x", "C:/x", "t/a\\b"] {
            let spec = FileSpec {
                path: bad.split('/').map(String::from).collect(),
                length: 1,
                padding: false,
            };
            assert!(
                matches!(
                    StorageLayout::new(16, vec![spec]),
                    Err(LayoutError::UnsafePath { .. })
                ),
                "{bad}"
            );
        }
        let abs = FileSpec {
            path: vec!["/etc".into()],
            length: 1,
            padding: false,
        };
        assert!(StorageLayout::new(16, vec![abs]).is_err());
        assert!(matches!(
            StorageLayout::new(16, vec![f("t/a", 1), f("t/a", 2)]),
            Err(LayoutError::DuplicatePath { .. })
        ));
        assert!(matches!(
            StorageLayout::new(16, vec![f("a", u64::MAX), f("b", 1)]),
            Err(LayoutError::TooLarge)
        ));
        assert!(matches!(
            StorageLayout::new(0, vec![f("a", 1)]),
            Err(LayoutError::BadPieceLength(0))
        ));
        assert!(matches!(
            StorageLayout::new(1, vec![f("a", 1 << 40)]),
            Err(LayoutError::TooManyPieces { .. })
        ));
    }
}
