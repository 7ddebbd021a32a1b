//! One task per peer connection: the handshake, then a reader (large buffer, streaming
//! decoder, zero-copy payloads) and a writer (batches queued messages and block data
//! into vectored writes). The torrent task decides everything; this only moves bytes.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::infohash::InfoHash;
use crate::peer::{encode_piece_header, Decoder, Handshake, Message, PeerId, Reserved};

/// Read buffer size: large reads keep syscalls per byte low.
const READ_CHUNK: usize = 256 * 1024;
/// A write is issued once this much is batched (or the queue is empty).
const WRITE_BATCH: usize = 512 * 1024;
/// Sent when nothing else was sent for this long (BEP 3 peers drop after ~2 min).
const KEEPALIVE: Duration = Duration::from_secs(90);

pub use crate::torrent::ConnId;

/// Bytes of decoded messages one connection may have queued for the torrent task: a
/// reader that is ahead waits (and so stops reading its socket) until the torrent has
/// caught up. Must fit the largest frame the decoder accepts.
pub const MAX_QUEUED_IN_PER_CONN: usize = 2 << 20;
/// The same over all connections of a torrent.
pub const MAX_QUEUED_IN_TOTAL: usize = 32 << 20;
/// Bytes queued to one connection's writer after which the peer counts as not reading
/// and is dropped (block data we are sending it counts too).
pub const MAX_QUEUED_OUT: usize = 16 << 20;

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

impl ToConn {
    /// Bytes this puts on the wire (for the queued-bytes bound).
    pub fn wire_len(&self) -> usize {
        match self {
            ToConn::Msg(m) => m.encoded_len(),
            ToConn::Piece { data, .. } => 13 + data.len(),
            ToConn::Close => 0,
        }
    }
}

/// Runs once the block it came with has been written to the socket (or the connection
/// ended first). The torrent counts a block as in flight until then, so a peer that asks
/// but does not read gets at most `max_uploads_in_flight` blocks buffered.
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
        peer_id: PeerId,
        reserved: Reserved,
    },
    /// A decoded message; its permits (bytes of the queue bounds) are released when the
    /// torrent drops it.
    Msg {
        id: ConnId,
        msg: Message,
        permits: Permits,
    },
    /// The connection ended; `reason` is for logs and stats.
    Closed { id: ConnId, reason: String },
}

/// A message's share of the queue bounds.
#[derive(Debug)]
pub struct Permits {
    _conn: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// The torrent task's handle on one connection's writer.
#[derive(Debug, Clone)]
pub struct ConnTx {
    tx: mpsc::UnboundedSender<ToConn>,
    queued: Arc<AtomicUsize>,
}

impl ConnTx {
    pub fn new() -> (ConnTx, ConnRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            ConnTx {
                tx,
                queued: queued.clone(),
            },
            ConnRx { rx, queued },
        )
    }

    /// Queues `c`; false when the peer is not reading (over [`MAX_QUEUED_OUT`]) and
    /// must be dropped.
    pub fn send(&self, c: ToConn) -> bool {
        let n = c.wire_len();
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(c);
        before + n <= MAX_QUEUED_OUT
    }

    pub fn close(&self) {
        let _ = self.tx.send(ToConn::Close);
    }
}

/// The writer's end of [`ConnTx`].
pub struct ConnRx {
    rx: mpsc::UnboundedReceiver<ToConn>,
    queued: Arc<AtomicUsize>,
}

pub struct ConnParams {
    pub id: ConnId,
    pub info_hash: InfoHash,
    pub our_id: PeerId,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Exact bitfield length check once the piece count is known.
    pub piece_count: Option<u32>,
    /// The torrent's bound on queued incoming bytes (shared by its connections).
    pub queued_in: Arc<Semaphore>,
    /// Our handshake's reserved bits.
    pub reserved: Reserved,
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A byte stream to a peer: TCP or uTP.
trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// The bytes of a plaintext BitTorrent handshake's start; anything else opening an
/// incoming connection is taken for an MSE key exchange.
const PLAINTEXT_START: &[u8; 20] = b"\x13BitTorrent protocol";

/// An incoming connection whose transport is set up and whose handshake has been read
/// (it names the torrent); ours is not sent yet.
pub struct Accepted {
    pub addr: SocketAddr,
    rd: BoxRead,
    wr: BoxWrite,
    pub theirs: Handshake,
    leftover: BytesMut,
}

/// Sets up an incoming connection: plaintext, or MSE when it opens with a key exchange
/// (for any of `skeys`, the info-hashes we serve), then reads the peer's handshake.
pub async fn accept<S>(
    mut stream: S,
    addr: SocketAddr,
    skeys: &[[u8; 20]],
    timeout: Duration,
) -> Result<Accepted, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let setup = async {
        let mut first = BytesMut::with_capacity(READ_CHUNK);
        while first.len() < PLAINTEXT_START.len() && PLAINTEXT_START.starts_with(&first[..]) {
            let n = stream
                .read_buf(&mut first)
                .await
                .map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("closed during handshake".to_string());
            }
        }
        let (mut rd, wr, buf): (BoxRead, BoxWrite, BytesMut) = if first.starts_with(PLAINTEXT_START)
        {
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w), first)
        } else {
            let mse = super::mse::accept(stream, first, skeys)
                .await
                .map_err(|e| format!("encrypted handshake: {e}"))?;
            let (r, w) = tokio::io::split(mse);
            (Box::new(r), Box::new(w), BytesMut::new())
        };
        let (theirs, leftover) = read_handshake(&mut rd, buf).await?;
        Ok((rd, wr, theirs, leftover))
    };
    let (rd, wr, theirs, leftover) = tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    Ok(Accepted {
        addr,
        rd,
        wr,
        theirs,
        leftover,
    })
}

/// Connects to `addr` (from `local` when we listen on a specific IP of the same family:
/// peers then see the address we accept on, what PEX and BEP 10 `yourip` report).
async fn connect(local: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = local.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Dials `addr` over TCP, and over uTP (when `utp` is given) if TCP fails, sets up the
/// transport (MSE when `encrypt`), does the handshake, then runs the connection to its end.
#[allow(clippy::too_many_arguments)]
pub async fn dial(
    p: ConnParams,
    local: Option<IpAddr>,
    addr: SocketAddr,
    connect_timeout: Duration,
    tcp: bool,
    utp: Option<Arc<utp::UtpSocket>>,
    encrypt: bool,
    events: mpsc::Sender<FromConn>,
    commands: ConnRx,
) {
    let id = p.id;
    let tcp = if !tcp {
        Err("TCP is off".to_string())
    } else {
        match tokio::time::timeout(connect_timeout, connect(local, addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(format!("connect failed: {e}")),
            Err(_) => Err("connect timed out".to_string()),
        }
    };
    let over_tcp = match tcp {
        Ok(s) => {
            match tokio::time::timeout(p.handshake_timeout, handshake(&p, Box::new(s), encrypt))
                .await
            {
                Ok(Ok(done)) => return run_handshaken(p, done, events, commands).await,
                Ok(Err(reason)) => reason,
                Err(_) => "handshake timed out".to_string(),
            }
        }
        Err(reason) => reason,
    };
    // A peer that takes TCP but drops it (libtorrent with TCP off still listens), or does
    // not take it at all, may be reachable over uTP on the same port.
    let Some(utp) = utp else {
        return closed(&events, id, over_tcp).await;
    };
    let stream = match tokio::time::timeout(connect_timeout, utp.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return closed(&events, id, format!("{over_tcp}; over uTP: {e}")).await,
        Err(_) => return closed(&events, id, format!("{over_tcp}; over uTP: timed out")).await,
    };
    match tokio::time::timeout(
        p.handshake_timeout,
        handshake(&p, Box::new(stream), encrypt),
    )
    .await
    {
        Ok(Ok(done)) => run_handshaken(p, done, events, commands).await,
        Ok(Err(reason)) => closed(&events, id, format!("{over_tcp}; over uTP: {reason}")).await,
        Err(_) => {
            closed(
                &events,
                id,
                format!("{over_tcp}; over uTP: handshake timed out"),
            )
            .await
        }
    }
}

/// A dialed connection after both handshakes: the two halves, theirs, bytes read past it.
type Handshaken = (BoxRead, BoxWrite, Handshake, BytesMut);

/// Sets up the transport (MSE when `encrypt`) and exchanges handshakes.
async fn handshake(
    p: &ConnParams,
    stream: Box<dyn Transport>,
    encrypt: bool,
) -> Result<Handshaken, String> {
    let (mut rd, mut wr): (BoxRead, BoxWrite) = if encrypt {
        let mse = super::mse::initiate(stream, &p.info_hash.0)
            .await
            .map_err(|e| format!("encrypted handshake: {e}"))?;
        tracing::debug!(
            "MSE handshake done, {}",
            if mse.encrypted() { "RC4" } else { "plaintext" }
        );
        let (r, w) = tokio::io::split(mse);
        (Box::new(r), Box::new(w))
    } else {
        let (r, w) = tokio::io::split(stream);
        (Box::new(r), Box::new(w))
    };
    write_flush(&mut wr, &our_handshake(p))
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let (theirs, leftover) = read_handshake(&mut rd, BytesMut::new()).await?;
    if theirs.info_hash != p.info_hash {
        return Err(format!(
            "handshake for another torrent ({})",
            theirs.info_hash
        ));
    }
    Ok((rd, wr, theirs, leftover))
}

async fn run_handshaken(
    p: ConnParams,
    (rd, wr, theirs, leftover): Handshaken,
    events: mpsc::Sender<FromConn>,
    commands: ConnRx,
) {
    run(p, rd, wr, theirs, leftover, events, commands).await
}

/// Answers an accepted connection with our handshake and runs it to its end.
pub async fn serve(p: ConnParams, a: Accepted, events: mpsc::Sender<FromConn>, commands: ConnRx) {
    let Accepted {
        rd,
        mut wr,
        theirs,
        leftover,
        ..
    } = a;
    let hs = our_handshake(&p);
    match tokio::time::timeout(p.handshake_timeout, write_flush(&mut wr, &hs)).await {
        Ok(Ok(())) => run(p, rd, wr, theirs, leftover, events, commands).await,
        Ok(Err(e)) => closed(&events, p.id, format!("handshake write: {e}")).await,
        Err(_) => closed(&events, p.id, "handshake timed out".into()).await,
    }
}

async fn closed(events: &mpsc::Sender<FromConn>, id: ConnId, reason: String) {
    let _ = events.send(FromConn::Closed { id, reason }).await;
}

fn our_handshake(p: &ConnParams) -> BytesMut {
    let mut ours = Handshake::new(p.info_hash, p.our_id);
    ours.reserved = p.reserved;
    let mut out = BytesMut::new();
    ours.encode(&mut out);
    out
}

/// Reads a peer's handshake (after `buf`, what was read already).
async fn read_handshake(
    rd: &mut BoxRead,
    mut buf: BytesMut,
) -> Result<(Handshake, BytesMut), String> {
    buf.reserve(READ_CHUNK);
    loop {
        match Handshake::decode(&mut buf) {
            Ok(Some(h)) => return Ok((h, buf)),
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
    }
}

/// The connection after both handshakes: a reader task and the writer.
async fn run(
    p: ConnParams,
    rd: BoxRead,
    wr: BoxWrite,
    theirs: Handshake,
    leftover: BytesMut,
    events: mpsc::Sender<FromConn>,
    commands: ConnRx,
) {
    let id = p.id;
    if events
        .send(FromConn::Ready {
            id,
            peer_id: theirs.peer_id,
            reserved: theirs.reserved,
        })
        .await
        .is_err()
    {
        return;
    }
    let mut decoder = Decoder::default();
    if let Some(n) = p.piece_count {
        decoder.set_piece_count(n);
    }
    let reader_events = events.clone();
    let idle = p.idle_timeout;
    let queued = Queued {
        conn: Arc::new(Semaphore::new(MAX_QUEUED_IN_PER_CONN)),
        total: p.queued_in.clone(),
    };
    let reader = tokio::spawn(async move {
        let reason = read_loop(id, rd, leftover, decoder, idle, queued, &reader_events).await;
        let _ = reader_events.send(FromConn::Closed { id, reason }).await;
    });
    let write_result = write_loop(wr, commands).await;
    // The torrent closed us (or the socket failed): stop reading too.
    reader.abort();
    if let Err(e) = write_result {
        closed(&events, id, format!("write failed: {e}")).await;
    }
}

/// The bounds a reader takes its permits from.
struct Queued {
    conn: Arc<Semaphore>,
    total: Arc<Semaphore>,
}

impl Queued {
    async fn permits(&self, len: usize) -> Option<Permits> {
        let conn_n = len.clamp(1, MAX_QUEUED_IN_PER_CONN) as u32;
        let total_n = len.clamp(1, MAX_QUEUED_IN_PER_CONN) as u32;
        let conn = self.conn.clone().acquire_many_owned(conn_n).await.ok()?;
        let total = self.total.clone().acquire_many_owned(total_n).await.ok()?;
        Some(Permits {
            _conn: conn,
            _total: total,
        })
    }
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
    queued: Queued,
    events: &mpsc::Sender<FromConn>,
) -> String {
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::KeepAlive)) => {}
                Ok(Some(msg)) => {
                    // Waits while this connection (or the torrent) has too much queued.
                    let Some(permits) = queued.permits(msg.encoded_len()).await else {
                        return "torrent stopped".into();
                    };
                    if events
                        .send(FromConn::Msg { id, msg, permits })
                        .await
                        .is_err()
                    {
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

async fn write_loop(mut wr: BoxWrite, commands: ConnRx) -> std::io::Result<()> {
    let ConnRx {
        rx: mut commands,
        queued,
    } = commands;
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
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            taken += cmd.wire_len();
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
        queued.fetch_sub(taken.min(queued.load(Ordering::Relaxed)), Ordering::Relaxed);
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
