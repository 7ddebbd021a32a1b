//! Resume data: which pieces were verified, and a stamp (size, mtime) of every file at
//! the moment that was true, written atomically.
//!
//! ```text
//! d 5:files l l i<size> i<mtime s> i<mtime ns> e ... e
//!   4:have <bitfield, piece 0 = high bit of byte 0>
//!   6:layout <20 bytes: SHA-1 of piece length, file lengths and piece hashes>
//!   7:version i1e
//! e
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bencode::{Encoder, Value};

/// Largest resume file we read: a bitfield for 2^32 pieces is 512 MiB, but no torrent we
/// accept has more than ~840k pieces (16 MiB of metadata); files are bounded likewise.
pub(super) const MAX_RESUME_BYTES: u64 = 64 << 20;

/// A file's size and modification time, as recorded when the resume data was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct FileStamp {
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: i64,
}

impl FileStamp {
    /// The stamp of the file at `path`; a missing file has the default (zero) stamp.
    pub(super) fn of(path: &Path) -> io::Result<FileStamp> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(FileStamp {
                size: m.len(),
                mtime_s: m.mtime(),
                mtime_ns: m.mtime_nsec(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileStamp::default()),
            Err(e) => Err(e),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ResumeData {
    pub layout_digest: [u8; 20],
    pub have: Vec<u8>,
    pub files: Vec<FileStamp>,
}

impl ResumeData {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.have.len() + self.files.len() * 40);
        let mut e = Encoder::new(&mut out);
        e.begin_dict().key(b"files").begin_list();
        for f in &self.files {
            e.begin_list()
                .int(f.size.min(i64::MAX as u64) as i64)
                .int(f.mtime_s)
                .int(f.mtime_ns)
                .end();
        }
        e.end()
            .key(b"have")
            .bytes(&self.have)
            .key(b"layout")
            .bytes(&self.layout_digest)
            .key(b"version")
            .int(1)
            .end();
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<ResumeData, String> {
        let v = bencode::decode(bytes).map_err(|e| e.to_string())?;
        let d = v.as_dict().ok_or("not a dictionary")?;
        if d.get_int(b"version") != Some(1) {
            return Err("unknown version".into());
        }
        let layout_digest: [u8; 20] = d
            .get_bytes(b"layout")
            .and_then(|b| b.try_into().ok())
            .ok_or("missing layout digest")?;
        let have = d.get_bytes(b"have").ok_or("missing bitfield")?.to_vec();
        let mut files = Vec::new();
        for item in d.get_list(b"files").ok_or("missing file list")? {
            let ints: Vec<i64> = match item {
                Value::List(l) => l.iter().filter_map(Value::as_int).collect(),
                _ => Vec::new(),
            };
            let [size, mtime_s, mtime_ns] = ints[..] else {
                return Err("bad file stamp".into());
            };
            let size = u64::try_from(size).map_err(|_| "negative file size")?;
            files.push(FileStamp {
                size,
                mtime_s,
                mtime_ns,
            });
        }
        Ok(ResumeData {
            layout_digest,
            have,
            files,
        })
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// write a temporary file beside it, fsync it, rename it over, fsync the directory. The
/// temporary name is unique (process and sequence number), so two writers of one path
/// never share one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?
        .to_os_string();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp.{}.{seq}", std::process::id()));
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    File::open(dir)?.sync_all()
}

/// Reads a resume file, bounded in size.
pub(super) fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_RESUME_BYTES {
        return Err(io::Error::other(format!(
            "resume file of {len} bytes is too large"
        )));
    }
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = ResumeData {
            layout_digest: [9; 20],
            have: vec![0b1010_0000],
            files: vec![
                FileStamp {
                    size: 3,
                    mtime_s: 1_700_000_000,
                    mtime_ns: 5,
                },
                FileStamp::default(),
            ],
        };
        assert_eq!(ResumeData::decode(&r.encode()), Ok(r));
        assert!(ResumeData::decode(b"").is_err());
        assert!(ResumeData::decode(b"de").is_err());
        assert!(ResumeData::decode(b"d5:filesli1eee").is_err());
        assert!(ResumeData::decode(
            b"d5:filesll-1i0ei0eee4:have0:6:layout20:aaaaaaaaaaaaaaaaaaaa7:versioni1ee"
        )
        .is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.resume");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("sub/x.resume.tmp").exists());
    }
}
