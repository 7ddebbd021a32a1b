//! The MSE/PE handshake over a socket (see [`crate::peer::mse`]) and the stream it leaves:
//! RC4 both ways, or plaintext when both sides agreed to it. We dial in plaintext and
//! switch to MSE when a plaintext attempt fails before its handshake (peers that require
//! encryption close it); incoming connections may use either, told apart by their first
//! bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::peer::mse::{
    ciphers, req1, req2_xor_req3, KeyPair, Rc4, CRYPTO_PLAINTEXT, CRYPTO_RC4, KEY_LEN, MAX_PAD, VC,
};

/// A stream after the MSE handshake: bytes received during the handshake beyond its end
/// come first, then the socket, decrypted (and our writes encrypted) when RC4 was chosen.
pub struct MseStream<S> {
    inner: S,
    /// (encrypt, decrypt); None for plaintext.
    rc4: Option<(Rc4, Rc4)>,
    leftover: BytesMut,
    /// Encrypted bytes accepted by `poll_write` and not yet written to `inner`.
    pending: Vec<u8>,
    written: usize,
}

impl<S> MseStream<S> {
    /// Whether the stream is RC4-encrypted (else plaintext after an MSE handshake).
    pub fn encrypted(&self) -> bool {
        self.rc4.is_some()
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut, n: usize) -> io::Result<()> {
    while buf.len() < n {
        if s.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Reads until `pattern` appears in `buf` within its first `within + pattern.len()` bytes;
/// returns where it ends (and consumes nothing).
async fn sync_on<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    pattern: &[u8],
    within: usize,
) -> io::Result<usize> {
    loop {
        if let Some(at) = buf.windows(pattern.len()).position(|w| w == pattern) {
            return Ok(at + pattern.len());
        }
        if buf.len() >= within + pattern.len() {
            return Err(io::Error::other("MSE: no synchronisation point"));
        }
        let want = buf.len() + 1;
        fill(s, buf, want).await?;
    }
}

fn random_pad() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let len = rng.gen_range(0..=64);
    (0..len).map(|_| rng.gen()).collect()
}

/// Takes `n` bytes from the front of `buf`, decrypted with `rc4`.
/// The peer's public key: the first `KEY_LEN` bytes, which `fill` has made sure are there.
fn public_key(buf: &[u8]) -> [u8; KEY_LEN] {
    let mut key = [0; KEY_LEN];
    key.copy_from_slice(&buf[..KEY_LEN]);
    key
}

/// Big-endian integers of the handshake's fixed fields (callers pass exact slices).
fn be_u16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn take_decrypted(buf: &mut BytesMut, n: usize, rc4: &mut Rc4) -> BytesMut {
    let mut part = buf.split_to(n);
    rc4.apply(&mut part);
    part
}

/// The initiating side, for the torrent `skey` (its info-hash). Offers RC4 and plaintext.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    skey: &[u8; 20],
) -> io::Result<MseStream<S>> {
    let keys = KeyPair::new(rand::random());
    let mut out = keys.public.to_vec();
    out.extend(random_pad());
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    fill(&mut s, &mut buf, KEY_LEN).await?;
    let theirs = public_key(&buf);
    buf.advance(KEY_LEN);
    let secret = keys.secret(&theirs);
    let (mut enc, dec) = ciphers(&secret, skey, true);
    let mut out = Vec::with_capacity(60);
    out.extend(req1(&secret));
    out.extend(req2_xor_req3(skey, &secret));
    let start = out.len();
    out.extend(VC);
    out.extend((CRYPTO_RC4 | CRYPTO_PLAINTEXT).to_be_bytes());
    out.extend(0u16.to_be_bytes()); // no padding C
    out.extend(0u16.to_be_bytes()); // no initial payload: our handshake follows
    enc.apply(&mut out[start..]);
    s.write_all(&out).await?;
    // Their answer starts with VC encrypted: the first 8 bytes of their keystream.
    let mut dec_after_vc = dec;
    let mut vc = VC;
    dec_after_vc.apply(&mut vc);
    let end = sync_on(&mut s, &mut buf, &vc, MAX_PAD).await?;
    buf.advance(end);
    let mut dec = dec_after_vc;
    fill(&mut s, &mut buf, 6).await?;
    let head = take_decrypted(&mut buf, 6, &mut dec);
    let select = be_u32(&head[..4]);
    let pad = be_u16(&head[4..6]);
    if pad > MAX_PAD || !(select == CRYPTO_RC4 || select == CRYPTO_PLAINTEXT) {
        return Err(io::Error::other(format!(
            "MSE: bad answer (select {select:#x}, pad {pad})"
        )));
    }
    fill(&mut s, &mut buf, pad).await?;
    take_decrypted(&mut buf, pad, &mut dec);
    Ok(finish(s, select, enc, dec, buf))
}

/// The receiving side. `first` holds what was read before knowing this is MSE (the
/// start of their public key); `skeys` are the info-hashes of the torrents we serve (the
/// initiator's hash of its one names which).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut buf: BytesMut,
    skeys: &[[u8; 20]],
) -> io::Result<MseStream<S>> {
    fill(&mut s, &mut buf, KEY_LEN).await?;
    let theirs = public_key(&buf);
    buf.advance(KEY_LEN);
    let keys = KeyPair::new(rand::random());
    let mut out = keys.public.to_vec();
    out.extend(random_pad());
    s.write_all(&out).await?;
    let secret = keys.secret(&theirs);
    let end = sync_on(&mut s, &mut buf, &req1(&secret), MAX_PAD).await?;
    buf.advance(end);
    fill(&mut s, &mut buf, 20).await?;
    let Some(skey) = skeys
        .iter()
        .find(|k| buf[..20] == req2_xor_req3(&k[..], &secret))
    else {
        return Err(io::Error::other("MSE: for a torrent we do not serve"));
    };
    buf.advance(20);
    let (mut enc, mut dec) = ciphers(&secret, skey, false);
    fill(&mut s, &mut buf, 14).await?;
    let head = take_decrypted(&mut buf, 14, &mut dec);
    let provide = be_u32(&head[8..12]);
    let pad = be_u16(&head[12..14]);
    if head[..8] != VC || pad > MAX_PAD {
        return Err(io::Error::other(
            "MSE: bad verification constant or padding",
        ));
    }
    fill(&mut s, &mut buf, pad + 2).await?;
    take_decrypted(&mut buf, pad, &mut dec);
    let ia_len = be_u16(&take_decrypted(&mut buf, 2, &mut dec));
    fill(&mut s, &mut buf, ia_len).await?;
    let initial = take_decrypted(&mut buf, ia_len, &mut dec);
    // Plaintext after the handshake when they allow it: RC4 costs CPU and hides nothing
    // the handshake did not already hide from a passive observer's port-based filter.
    let select = if provide & CRYPTO_PLAINTEXT != 0 {
        CRYPTO_PLAINTEXT
    } else if provide & CRYPTO_RC4 != 0 {
        CRYPTO_RC4
    } else {
        return Err(io::Error::other(format!(
            "MSE: no method in common ({provide:#x})"
        )));
    };
    let mut out = Vec::with_capacity(14);
    out.extend(VC);
    out.extend(select.to_be_bytes());
    out.extend(0u16.to_be_bytes());
    enc.apply(&mut out);
    s.write_all(&out).await?;
    let mut stream = finish(s, select, enc, dec, buf);
    // Their initial payload (usually their BitTorrent handshake) is read first.
    let mut leftover = initial;
    leftover.extend_from_slice(&stream.leftover);
    stream.leftover = leftover;
    Ok(stream)
}

fn finish<S>(s: S, select: u32, enc: Rc4, mut dec: Rc4, mut rest: BytesMut) -> MseStream<S> {
    let rc4 = if select == CRYPTO_RC4 {
        dec.apply(&mut rest);
        Some((enc, dec))
    } else {
        None
    };
    MseStream {
        inner: s,
        rc4,
        leftover: rest,
        pending: Vec::new(),
        written: 0,
    }
}

impl<S: AsyncWrite + Unpin> MseStream<S> {
    /// Writes out what `poll_write` accepted earlier.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.leftover.is_empty() {
            let n = me.leftover.len().min(buf.remaining());
            buf.put_slice(&me.leftover[..n]);
            me.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.inner).poll_read(cx, buf))?;
        if let Some((_, dec)) = &mut me.rc4 {
            dec.apply(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        let Some((enc, _)) = &mut me.rc4 else {
            return Pin::new(&mut me.inner).poll_write(cx, data);
        };
        // Accept it all, encrypted into `pending` (one write's worth at most), and start
        // writing; the rest goes out on the next write or flush.
        me.pending.extend_from_slice(data);
        enc.apply(&mut me.pending);
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_sides_agree_and_carry_data_both_ways() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let skey = [7u8; 20];
        let server = tokio::spawn(async move {
            let mut s = accept(b, BytesMut::new(), &[skey]).await.unwrap();
            let mut got = vec![0u8; 11];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            (got, s.encrypted())
        });
        let mut c = initiate(a, &skey).await.unwrap();
        c.write_all(b"hello world").await.unwrap();
        c.flush().await.unwrap();
        let mut pong = [0u8; 4];
        c.read_exact(&mut pong).await.unwrap();
        let (got, encrypted) = server.await.unwrap();
        assert_eq!(&got, b"hello world");
        assert_eq!(&pong, b"pong");
        // We offer plaintext and accept it: both ends agree on it.
        assert!(!encrypted && !c.encrypted());
    }

    #[tokio::test]
    async fn wrong_torrent_is_refused() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server =
            tokio::spawn(async move { accept(b, BytesMut::new(), &[[1; 20]]).await.err() });
        let _client = initiate(a, &[2; 20]).await;
        let err = server.await.unwrap().expect("refused");
        assert!(err.to_string().contains("do not serve"), "{err}");
    }

    #[tokio::test]
    async fn rc4_streams_round_trip_when_plaintext_is_not_offered() {
        // A receiver that only takes RC4: drive `finish` directly with both sides' keys.
        let secret = [3u8; KEY_LEN];
        let skey = [4u8; 20];
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ae, ad) = ciphers(&secret, &skey, true);
        let (be, bd) = ciphers(&secret, &skey, false);
        let mut x = finish(a, CRYPTO_RC4, ae, ad, BytesMut::new());
        let mut y = finish(b, CRYPTO_RC4, be, bd, BytesMut::new());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let d2 = data.clone();
        let w = tokio::spawn(async move {
            x.write_all(&d2).await.unwrap();
            x.flush().await.unwrap();
            x
        });
        let mut got = vec![0u8; data.len()];
        y.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        assert!(w.await.unwrap().encrypted());
    }
}
