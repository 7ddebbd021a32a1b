//! The tokio driver: one task runs the [`Endpoint`] of a UDP socket (its own, or one it
//! shares with the DHT node, which hands over the uTP datagrams), and each connection is
//! a [`UtpStream`] implementing `AsyncRead` and `AsyncWrite`, so the peer-wire code runs
//! over uTP as it does over TCP.
//!
//! Between a stream and the task sit two bounded byte buffers per connection: what the
//! application wrote and the endpoint has not taken yet, and what the endpoint delivered
//! and the application has not read yet. A full buffer makes the other side wait (the
//! endpoint's receive window then closes, and the peer slows down), so memory stays
//! bounded per connection as well as in the endpoint.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::{CloseReason, ConnId, Endpoint, Error, Event};
use crate::Config;

/// Bytes buffered per connection and direction between a stream and the endpoint.
const STREAM_BUFFER: usize = 256 * 1024;
/// Incoming connections waiting for [`UtpSocket::accept`]; more are reset.
const ACCEPT_BACKLOG: usize = 64;
/// Datagrams handled per wake-up before timers and commands get a turn.
const DATAGRAM_BATCH: usize = 64;

/// Many uTP connections on one UDP socket.
pub struct UtpSocket {
    cmds: mpsc::UnboundedSender<Cmd>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(UtpStream, SocketAddr)>>,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

enum Cmd {
    Connect {
        addr: SocketAddr,
        reply: oneshot::Sender<io::Result<UtpStream>>,
    },
    /// A stream wrote, read from a full buffer, shut down or was dropped.
    Wake(ConnId),
}

#[derive(Default)]
struct Shared {
    /// Delivered by the endpoint, not read yet.
    recv: VecDeque<u8>,
    eof: bool,
    /// Written by the application, not taken by the endpoint yet.
    send: VecDeque<u8>,
    /// The application shut its side down: FIN once `send` is empty.
    shutdown: bool,
    fin_sent: bool,
    dropped: bool,
    error: Option<io::ErrorKind>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Shared {
    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// One uTP connection.
pub struct UtpStream {
    conn: ConnId,
    peer: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl UtpSocket {
    /// A socket of its own on `addr`.
    pub async fn bind(addr: SocketAddr, config: Config, rng_seed: u64) -> io::Result<UtpSocket> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let (tx, rx) = mpsc::channel(1024);
        let reader = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx.send((from, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    // ICMP errors surface here on Linux; the socket is still fine.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                }
            }
        });
        Ok(UtpSocket::with_socket(socket, rx, config, rng_seed))
    }

    /// Runs on `socket`, which another driver reads: it hands the uTP datagrams over on
    /// `datagrams` (see `dht::NodeConfig::other_datagrams`).
    pub fn with_socket(
        socket: Arc<UdpSocket>,
        datagrams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        config: Config,
        rng_seed: u64,
    ) -> UtpSocket {
        let local_addr = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let driver = Driver {
            ep: Endpoint::new(config, rng_seed),
            socket,
            datagrams,
            cmds: cmd_rx,
            cmd_tx: cmd_tx.clone(),
            conns: HashMap::new(),
            connecting: HashMap::new(),
            incoming: in_tx,
        };
        UtpSocket {
            cmds: cmd_tx,
            incoming: tokio::sync::Mutex::new(in_rx),
            local_addr,
            task: tokio::spawn(driver.run()),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens a connection; fails when the peer does not answer (the endpoint's SYN
    /// timeout) or resets it.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UtpStream> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Connect { addr, reply: tx })
            .map_err(|_| io::Error::other("the uTP socket is closed"))?;
        rx.await
            .map_err(|_| io::Error::other("the uTP socket is closed"))?
    }

    /// The next incoming connection (`None` once the socket is closed).
    pub async fn accept(&self) -> Option<(UtpStream, SocketAddr)> {
        self.incoming.lock().await.recv().await
    }
}

impl Drop for UtpSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UtpStream {
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn wake_driver(&self) {
        let _ = self.cmds.send(Cmd::Wake(self.conn));
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere while holding it leaves plain buffers behind: keep going.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsyncRead for UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.shared);
        if !s.recv.is_empty() {
            let was_full = s.recv.len() >= STREAM_BUFFER;
            let n = s.recv.len().min(buf.remaining());
            let (a, b) = s.recv.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            s.recv.drain(..n);
            drop(s);
            if was_full {
                // The task stopped reading from the endpoint for lack of room.
                self.wake_driver();
            }
            return Poll::Ready(Ok(()));
        }
        if s.eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(kind) = s.error {
            return Poll::Ready(Err(kind.into()));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.shared);
        if let Some(kind) = s.error {
            return Poll::Ready(Err(kind.into()));
        }
        if s.shutdown {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = STREAM_BUFFER.saturating_sub(s.send.len());
        if room == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        s.send.extend(&data[..n]);
        drop(s);
        self.wake_driver();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the endpoint's to deliver, in order, before any FIN.
        match lock(&self.shared).error {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.shared).shutdown = true;
        self.wake_driver();
        Poll::Ready(Ok(()))
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        lock(&self.shared).dropped = true;
        self.wake_driver();
    }
}

struct Driver {
    ep: Endpoint,
    socket: Arc<UdpSocket>,
    datagrams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    conns: HashMap<ConnId, Arc<Mutex<Shared>>>,
    connecting: HashMap<ConnId, oneshot::Sender<io::Result<UtpStream>>>,
    incoming: mpsc::Sender<(UtpStream, SocketAddr)>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.dispatch_events();
            self.flush().await;
            let wake = self
                .ep
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| {
                    tokio::time::Instant::now() + std::time::Duration::from_secs(60)
                });
            tokio::select! {
                d = self.datagrams.recv() => {
                    let Some((from, data)) = d else { return };
                    let now = Instant::now();
                    self.ep.handle_datagram(now, from, &data);
                    for _ in 1..DATAGRAM_BATCH {
                        match self.datagrams.try_recv() {
                            Ok((from, data)) => self.ep.handle_datagram(now, from, &data),
                            Err(_) => break,
                        }
                    }
                }
                c = self.cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => self.ep.handle_timeout(Instant::now()),
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.ep.poll_transmit() {
            // A datagram that cannot be sent is a lost packet: the endpoint resends it.
            let _ = self.socket.send_to(&t.data, t.to).await;
        }
    }

    fn stream(&mut self, conn: ConnId, peer: SocketAddr) -> UtpStream {
        let shared = Arc::new(Mutex::new(Shared::default()));
        self.conns.insert(conn, shared.clone());
        UtpStream {
            conn,
            peer,
            shared,
            cmds: self.cmd_tx.clone(),
        }
    }

    fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        match c {
            Cmd::Connect { addr, reply } => match self.ep.connect(now, addr) {
                Ok(conn) => {
                    self.connecting.insert(conn, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(io::Error::other(e.to_string())));
                }
            },
            Cmd::Wake(conn) => {
                self.pump_write(now, conn);
                self.pump_read(now, conn);
            }
        }
    }

    fn dispatch_events(&mut self) {
        let now = Instant::now();
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Incoming { conn, addr } => {
                    let stream = self.stream(conn, addr);
                    if self.incoming.try_send((stream, addr)).is_err() {
                        // Nobody accepts that fast: refuse it.
                        self.conns.remove(&conn);
                        let _ = self.ep.reset(now, conn);
                        continue;
                    }
                    self.pump_read(now, conn);
                }
                Event::Connected(conn) => {
                    let Some(reply) = self.connecting.remove(&conn) else {
                        continue;
                    };
                    let peer = self
                        .ep
                        .peer_addr(conn)
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    let stream = self.stream(conn, peer);
                    if let Err(Ok(stream)) = reply.send(Ok(stream)) {
                        drop(stream); // the caller gave up: closes it
                    }
                    self.pump_read(now, conn);
                }
                Event::Readable(conn) => self.pump_read(now, conn),
                Event::Writable(conn) => self.pump_write(now, conn),
                Event::Closed { conn, reason } => {
                    if let Some(reply) = self.connecting.remove(&conn) {
                        let kind = match reason {
                            CloseReason::Reset => io::ErrorKind::ConnectionRefused,
                            _ => io::ErrorKind::TimedOut,
                        };
                        let _ = reply.send(Err(io::Error::new(kind, "uTP connect failed")));
                    }
                    if let Some(shared) = self.conns.remove(&conn) {
                        let mut s = lock(&shared);
                        match reason {
                            CloseReason::Done => s.eof = true,
                            CloseReason::Reset => s.error = Some(io::ErrorKind::ConnectionReset),
                            CloseReason::TimedOut => s.error = Some(io::ErrorKind::TimedOut),
                        }
                        s.wake_all();
                    }
                }
            }
        }
    }

    /// Moves what the application wrote into the endpoint, and sends the FIN after it.
    fn pump_write(&mut self, now: Instant, conn: ConnId) {
        let Some(shared) = self.conns.get(&conn).cloned() else {
            return;
        };
        let mut s = lock(&shared);
        let mut took = false;
        while !s.send.is_empty() {
            let (a, _) = s.send.as_slices();
            match self.ep.write(now, conn, a) {
                Ok(0) | Err(Error::WouldBlock) => break,
                Ok(n) => {
                    s.send.drain(..n);
                    took = true;
                }
                Err(_) => {
                    s.error = Some(io::ErrorKind::BrokenPipe);
                    s.wake_all();
                    return;
                }
            }
        }
        if took {
            if let Some(w) = s.write_waker.take() {
                w.wake();
            }
        }
        if s.send.is_empty() && (s.shutdown || s.dropped) && !s.fin_sent {
            s.fin_sent = true;
            let _ = self.ep.close(now, conn);
        }
    }

    /// Moves what the endpoint delivered into the stream's buffer, while there is room.
    fn pump_read(&mut self, now: Instant, conn: ConnId) {
        let Some(shared) = self.conns.get(&conn).cloned() else {
            return;
        };
        let mut s = lock(&shared);
        if s.dropped {
            // Nobody reads any more: take and discard, so the peer is not stalled.
            let mut sink = [0u8; 16 * 1024];
            while let Ok(n) = self.ep.read(now, conn, &mut sink) {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        let mut got = false;
        let mut buf = [0u8; 16 * 1024];
        while s.recv.len() < STREAM_BUFFER && !s.eof {
            let want = (STREAM_BUFFER - s.recv.len()).min(buf.len());
            match self.ep.read(now, conn, &mut buf[..want]) {
                Ok(0) => {
                    s.eof = true;
                    got = true;
                }
                Ok(n) => {
                    s.recv.extend(&buf[..n]);
                    got = true;
                }
                Err(_) => break,
            }
        }
        if got {
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    async fn socket(seed: u64) -> UtpSocket {
        UtpSocket::bind("127.0.0.1:0".parse().unwrap(), Config::default(), seed)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_carry_bytes_both_ways_and_end_with_eof() {
        let a = socket(1).await;
        let b = socket(2).await;
        let b_addr = b.local_addr();
        let to_b = payload(4 << 20, 1);
        let to_a = payload(1 << 20, 2);
        let (sent_b, sent_a) = (to_b.clone(), to_a.clone());
        let server = tokio::spawn(async move {
            let (mut s, from) = b.accept().await.unwrap();
            let mut got = vec![0u8; sent_b.len()];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&sent_a).await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            (got, rest, from, b)
        });
        let work = async {
            let mut c = a.connect(b_addr).await.unwrap();
            assert_eq!(c.peer_addr(), b_addr);
            c.write_all(&to_b).await.unwrap();
            let mut back = vec![0u8; to_a.len()];
            c.read_exact(&mut back).await.unwrap();
            // Their FIN: the end of the stream.
            assert_eq!(c.read(&mut [0u8; 16]).await.unwrap(), 0);
            c.write_all(b"bye").await.unwrap();
            c.shutdown().await.unwrap();
            back
        };
        let back = tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .expect("transfer finished");
        assert!(back == to_a, "bytes to the dialer differ");
        let (got, rest, from, _b) = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("server finished")
            .unwrap();
        assert!(got == to_b, "bytes to the listener differ");
        assert_eq!(rest, b"bye");
        assert_eq!(from, a.local_addr());
    }

    #[tokio::test]
    async fn connecting_to_nobody_fails_instead_of_hanging() {
        let cfg = Config {
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(100),
            max_syn_retransmits: 2,
            ..Config::default()
        };
        let a = UtpSocket::bind("127.0.0.1:0".parse().unwrap(), cfg, 3)
            .await
            .unwrap();
        // A bound UDP port where nobody speaks uTP.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            a.connect(silent.local_addr().unwrap()),
        )
        .await
        .expect("connect gave up within the limit");
        assert!(r.is_err(), "connected to a silent port");
    }
}
