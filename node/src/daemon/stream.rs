//! `GET /api/torrents/{info_hash}/files/{index}`: a torrent's file over HTTP, with
//! `Range` (206), while it downloads. Each piece under the range is sent once its bytes
//! on disk hash to the piece's SHA-1 (the daemon checks this itself, so nothing
//! unverified is ever served); until then the response waits, piece by piece, and the
//! pieces it waits on (the next [`READ_AHEAD`] under the range) are made urgent: asked for
//! before any other, from every peer that has them (time-critical picking, so that a
//! video player can play while the rest downloads).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;
use wire::infohash::InfoHash;
use wire::metainfo::Metainfo;

use super::api::{ApiError, AppState};
use super::{parse_info_hash, Daemon, DaemonError};

/// How often a waiting response looks again for its next piece.
const POLL: Duration = Duration::from_millis(100);
/// Pieces made urgent ahead of a waiting reader.
pub const READ_AHEAD: usize = 16;

/// A byte range of a file, inclusive, as asked by `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// A `Range` that asks for nothing of the file (answered 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a `Range` header for a file of `len` bytes: `Ok(None)` for no (or an ignored)
/// range, [`Unsatisfiable`] for one outside the file (416). One range only; a list of
/// several is answered with the first.
pub fn parse_range(h: Option<&str>, len: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
    let Some(h) = h else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None); // another unit: ignore, as RFC 9110 allows
    };
    let first = spec.split(',').next().unwrap_or("").trim();
    let Some((a, b)) = first.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(Unsatisfiable);
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len - 1,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= len {
            return Err(Unsatisfiable);
        }
        ByteRange { start, end }
    };
    Ok(Some(r))
}

/// A content type from the file name, for players.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "flac" => "audio/flac",
        "txt" => "text/plain; charset=utf-8",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// The body: chunks from the task that waits for pieces. A chunk that cannot be had
/// (torrent stopped, disk error) ends the stream with an error, so the client sees a short
/// body rather than wrong bytes.
struct ChunkStream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Reads piece `p` from disk and checks it against its hash; its bytes when they match.
fn read_verified(meta: &Metainfo, dir: &std::path::Path, p: usize) -> Option<Vec<u8>> {
    let want = meta.info.piece_hash(p)?;
    let mut data = Vec::with_capacity(meta.info.piece_len(p)? as usize);
    for s in meta.info.piece_file_slices(p) {
        let f = meta.info.files.get(s.file_index)?;
        if f.attr.padding {
            data.resize(data.len() + s.length as usize, 0);
            continue;
        }
        let path = f.path_under(dir).ok()?;
        let file = std::fs::File::open(path).ok()?;
        let at = data.len();
        data.resize(at + s.length as usize, 0);
        read_exact_at(&file, &mut data[at..], s.offset_in_file).ok()?;
    }
    let got: [u8; 20] = Sha1::digest(&data).into();
    (got == *want).then_some(data)
}

#[cfg(unix)]
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

#[cfg(not(unix))]
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(buf)
}

/// Sends the bytes `[start, end]` of the torrent (absolute offsets), piece by piece, each
/// once it verifies; stops when the client goes away or the torrent stops.
async fn produce(
    daemon: Arc<Daemon>,
    ih: InfoHash,
    meta: Arc<Metainfo>,
    dir: PathBuf,
    start: u64,
    end: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let plen = meta.info.piece_length;
    let first = (start / plen) as usize;
    let last = (end / plen) as usize;
    for p in first..=last {
        let mut made_urgent = false;
        let data = loop {
            let (m, d) = (meta.clone(), dir.clone());
            let got = tokio::task::spawn_blocking(move || read_verified(&m, &d, p))
                .await
                .ok()
                .flatten();
            if let Some(data) = got {
                break data;
            }
            if !made_urgent {
                // This piece and the next few under the range, before anything else.
                let ahead = (p..=last).take(READ_AHEAD).map(|i| i as u32).collect();
                daemon.set_urgent(ih, ahead);
                made_urgent = true;
            }
            if !daemon.is_running(ih) {
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the torrent stopped before this piece arrived",
                    )))
                    .await;
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        };
        let piece_start = p as u64 * plen;
        let from = start.max(piece_start) - piece_start;
        let to = (end + 1).min(piece_start + data.len() as u64) - piece_start;
        let chunk = Bytes::from(data).slice(from as usize..to as usize);
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
}

pub async fn file(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ih, index)) = p.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let ih = parse_info_hash(&ih)?;
    let index: usize = index.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "bad file index {:?}: expected a number",
                super::truncate(&index, 20)
            ),
        )
    })?;
    let s = st.daemon.get(ih)?;
    let Some(meta) = s.meta.clone() else {
        return Err(DaemonError::Conflict(format!(
            "torrent {ih} has no metadata yet: its files are not known"
        ))
        .into());
    };
    let f = meta
        .info
        .files
        .get(index)
        .filter(|f| !f.attr.padding)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("torrent {ih} has no file {index}"),
            )
        })?;
    let len = f.length;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match parse_range(range, len) {
        Ok(r) => r,
        Err(Unsatisfiable) => {
            let mut r = ApiError(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable for a file of {len} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let (status, from, to) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.end),
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let body_len = if len == 0 { 0 } else { to - from + 1 };
    let name = f.path.last().cloned().unwrap_or_default();
    let body = if body_len == 0 {
        Body::empty()
    } else {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(produce(
            st.daemon.clone(),
            ih,
            meta.clone(),
            s.out_dir.clone(),
            f.offset + from,
            f.offset + to,
            tx,
        ));
        Body::from_stream(ChunkStream(rx))
    };
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(&name))
        .header(header::CONTENT_LENGTH, body_len)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(header::CONTENT_RANGE, format!("bytes {from}-{to}/{len}"));
    }
    r.body(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("cannot answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(parse_range(None, 1000), Ok(None));
        assert_eq!(r("bytes=0-99"), Ok(Some(ByteRange { start: 0, end: 99 })));
        assert_eq!(
            r("bytes=500-"),
            Ok(Some(ByteRange {
                start: 500,
                end: 999
            }))
        );
        assert_eq!(
            r("bytes=-100"),
            Ok(Some(ByteRange {
                start: 900,
                end: 999
            }))
        );
        assert_eq!(r("bytes=-5000"), Ok(Some(ByteRange { start: 0, end: 999 })));
        assert_eq!(
            r("bytes=900-5000"),
            Ok(Some(ByteRange {
                start: 900,
                end: 999
            }))
        );
        assert_eq!(r("bytes=0-0,5-9"), Ok(Some(ByteRange { start: 0, end: 0 })));
        assert_eq!(r("bytes=1000-"), Err(Unsatisfiable));
        assert_eq!(r("bytes=-0"), Err(Unsatisfiable));
        for ignored in ["items=0-5", "bytes=a-b", "bytes=9-3", "bytes=5"] {
            assert_eq!(r(ignored), Ok(None), "{ignored}");
        }
    }
}
