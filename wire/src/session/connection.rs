//! One task per peer connection: the handshake, then a reader (large buffer, streaming
//! decoder, zero-copy payloads) and a writer (batches queued messages and block data
//! into vectored writes). The torrent task decides everything; this only moves bytes.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::infohash::InfoHash;
use crate::peer::{encode_piece_header, Decoder, Handshake, Message, PeerId, Reserved};

/// Read buffer size: large reads keep syscalls per byte low.
const READ_CHUNK: usize = 256 * 1024;
/// A write is issued once this much is batched (or the queue is empty).
const WRITE_BATCH: usize = 512 * 1024;
/// Sent when nothing else was sent for this long (BEP 3 peers drop after ~2 min).
const KEEPALIVE: Duration = Duration::from_secs(90);

pub type ConnId = u64;

/// Torrent task -> connection.
#[derive(Debug)]
pub enum ToConn {
    Msg(Message),
    /// A block read from storage (header encoded by the writer).
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
        sent: SentNotice,
    },
    Close,
}

/// Runs once the block it came with has been written to the socket (never, if the
/// connection ends first). The torrent counts a block as in flight until then, so a peer
/// that asks but does not read gets at most `max_uploads_in_flight` blocks buffered.
pub struct SentNotice(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for SentNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SentNotice")
    }
}

/// Connection -> torrent task.
#[derive(Debug)]
pub enum FromConn {
    /// The handshake checked out.
    Ready {
        id: ConnId,
        reserved: Reserved,
    },
    Msg {
        id: ConnId,
        msg: Message,
    },
    /// The connection ended; `reason` is for logs and stats.
    Closed {
        id: ConnId,
        reason: String,
    },
}

pub struct ConnParams {
    pub id: ConnId,
    pub info_hash: InfoHash,
    pub our_id: PeerId,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Exact bitfield length check once the piece count is known.
    pub piece_count: Option<u32>,
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The bytes of a plaintext BitTorrent handshake's start; anything else opening an
/// incoming connection is taken for an MSE key exchange.
const PLAINTEXT_START: &[u8; 20] = b"\x13BitTorrent protocol";

/// Sets up the transport: plaintext, or MSE when dialing with `encrypt` or when the other
/// side opened with a key exchange. Returns read and write halves and bytes already read.
async fn transport(
    p: &ConnParams,
    mut stream: TcpStream,
    outgoing: bool,
    encrypt: bool,
) -> Result<(BoxRead, BoxWrite, BytesMut), String> {
    let skey = &p.info_hash.0;
    let mse = if outgoing {
        if !encrypt {
            let (r, w) = stream.into_split();
            return Ok((Box::new(r), Box::new(w), BytesMut::new()));
        }
        super::mse::initiate(stream, skey)
            .await
            .map_err(|e| format!("encrypted handshake: {e}"))?
    } else {
        let mut first = BytesMut::with_capacity(READ_CHUNK);
        while first.len() < PLAINTEXT_START.len() && PLAINTEXT_START.starts_with(&first[..]) {
            let n = stream
                .read_buf(&mut first)
                .await
                .map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("closed during handshake".into());
            }
        }
        if first.starts_with(PLAINTEXT_START) {
            let (r, w) = stream.into_split();
            return Ok((Box::new(r), Box::new(w), first));
        }
        super::mse::accept(stream, first, skey)
            .await
            .map_err(|e| format!("encrypted handshake: {e}"))?
    };
    tracing::debug!(
        "MSE handshake done, {}",
        if mse.encrypted() { "RC4" } else { "plaintext" }
    );
    let (r, w) = tokio::io::split(mse);
    Ok((Box::new(r), Box::new(w), BytesMut::new()))
}

/// Runs a connection to the end. `stream` is connected; `outgoing` says who speaks first;
/// `encrypt` dials with an MSE handshake.
pub async fn run(
    p: ConnParams,
    stream: TcpStream,
    outgoing: bool,
    encrypt: bool,
    events: mpsc::UnboundedSender<FromConn>,
    commands: mpsc::UnboundedReceiver<ToConn>,
) {
    let _ = stream.set_nodelay(true);
    let id = p.id;
    let setup = async {
        let (mut rd, mut wr, buf) = transport(&p, stream, outgoing, encrypt).await?;
        let (theirs, leftover) = handshake(&p, &mut rd, &mut wr, buf, outgoing).await?;
        Ok::<_, String>((rd, wr, theirs, leftover))
    };
    let result = tokio::time::timeout(p.handshake_timeout, setup).await;
    let (rd, wr, theirs, leftover) = match result {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => {
            let _ = events.send(FromConn::Closed { id, reason });
            return;
        }
        Err(_) => {
            let _ = events.send(FromConn::Closed {
                id,
                reason: "handshake timed out".into(),
            });
            return;
        }
    };
    let _ = events.send(FromConn::Ready {
        id,
        reserved: theirs.reserved,
    });
    let mut decoder = Decoder::default();
    if let Some(n) = p.piece_count {
        decoder.set_piece_count(n);
    }
    let reader_events = events.clone();
    let idle = p.idle_timeout;
    let reader = tokio::spawn(async move {
        let reason = read_loop(id, rd, leftover, decoder, idle, &reader_events).await;
        let _ = reader_events.send(FromConn::Closed { id, reason });
    });
    let write_result = write_loop(wr, commands).await;
    // The torrent closed us (or the socket failed): stop reading too.
    reader.abort();
    if let Err(e) = write_result {
        let _ = events.send(FromConn::Closed {
            id,
            reason: format!("write failed: {e}"),
        });
    }
}

async fn handshake(
    p: &ConnParams,
    rd: &mut BoxRead,
    wr: &mut BoxWrite,
    mut buf: BytesMut,
    outgoing: bool,
) -> Result<(Handshake, BytesMut), String> {
    let mut ours = Handshake::new(p.info_hash, p.our_id);
    ours.reserved = Reserved::OURS;
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    if outgoing {
        write_flush(wr, &out)
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
    }
    buf.reserve(READ_CHUNK);
    let theirs = loop {
        match Handshake::decode(&mut buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(format!("bad handshake: {e}")),
        }
        let n = rd
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("closed during handshake".into());
        }
    };
    if theirs.info_hash != p.info_hash {
        return Err(format!(
            "handshake for another torrent ({})",
            theirs.info_hash
        ));
    }
    if theirs.peer_id == p.our_id {
        return Err("connected to ourselves".into());
    }
    if !outgoing {
        write_flush(wr, &out)
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
    }
    Ok((theirs, buf))
}

async fn write_flush(wr: &mut BoxWrite, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

async fn read_loop(
    id: ConnId,
    mut rd: BoxRead,
    mut buf: BytesMut,
    mut decoder: Decoder,
    idle: Duration,
    events: &mpsc::UnboundedSender<FromConn>,
) -> String {
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::KeepAlive)) => {}
                Ok(Some(msg)) => {
                    if events.send(FromConn::Msg { id, msg }).is_err() {
                        return "torrent stopped".into();
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("protocol error: {e}"),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
            Err(_) => return format!("nothing received for {}s", idle.as_secs()),
            Ok(Ok(0)) => return "closed by peer".into(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("read failed: {e}"),
        }
    }
}

async fn write_loop(
    mut wr: BoxWrite,
    mut commands: mpsc::UnboundedReceiver<ToConn>,
) -> std::io::Result<()> {
    let mut out = Segments::default();
    // Small messages and piece headers are encoded here and split off as segments.
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    let mut notices: Vec<SentNotice> = Vec::new();
    loop {
        let first = match tokio::time::timeout(KEEPALIVE, commands.recv()).await {
            Err(_) => ToConn::Msg(Message::KeepAlive),
            Ok(None) => return Ok(()),
            Ok(Some(c)) => c,
        };
        let mut next = Some(first);
        let mut close = false;
        while let Some(cmd) = next.take() {
            match cmd {
                ToConn::Msg(m) => m.encode(&mut scratch),
                ToConn::Piece {
                    piece,
                    offset,
                    data,
                    sent,
                } => {
                    encode_piece_header(piece, offset, data.len() as u32, &mut scratch);
                    out.push(scratch.split().freeze());
                    // Block data goes to the socket from the read buffer: no copy.
                    out.push(data);
                    notices.push(sent);
                }
                ToConn::Close => {
                    close = true;
                    break;
                }
            }
            if out.remaining() + scratch.len() >= WRITE_BATCH {
                break;
            }
            next = commands.try_recv().ok();
        }
        if !scratch.is_empty() {
            out.push(scratch.split().freeze());
        }
        if out.has_remaining() {
            // Vectored writes: up to 64 segments per system call.
            wr.write_all_buf(&mut out).await?;
            // An encrypting transport may hold the tail of the last write.
            wr.flush().await?;
            for n in notices.drain(..) {
                (n.0)();
            }
        }
        if close {
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
}

/// A queue of byte segments written as one buffer (a [`Buf`] with vectored chunks).
#[derive(Default)]
struct Segments {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Segments {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end");
        self.len -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("len counts the parts");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_advance_across_parts_and_expose_them_vectored() {
        let mut s = Segments::default();
        for p in [&b"abc"[..], b"", b"defgh", b"i"] {
            s.push(Bytes::copy_from_slice(p));
        }
        assert_eq!(s.remaining(), 9);
        let mut io = [std::io::IoSlice::new(&[]); 2];
        assert_eq!(s.chunks_vectored(&mut io), 2);
        assert_eq!((&*io[0], &*io[1]), (&b"abc"[..], &b"defgh"[..]));
        s.advance(4);
        assert_eq!(s.chunk(), b"efgh");
        s.advance(4);
        assert_eq!(s.chunk(), b"i");
        s.advance(1);
        assert!(!s.has_remaining());
        assert_eq!(s.chunk(), b"");
    }
}
