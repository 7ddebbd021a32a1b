//! A raw peer connection scripted over the peer codec, for tests of hostile peers.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::infohash::InfoHash;
use wire::peer::{Decoder, Handshake, Message, PeerId, Reserved};

pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub dec: Decoder,
}

impl Raw {
    /// Sends a plain handshake (no reserved bits) and reads theirs.
    pub async fn handshake(stream: TcpStream, info_hash: InfoHash) -> Raw {
        let id = PeerId(*b"-XX0001-hostilepeer!");
        Self::handshake_with(
            stream,
            info_hash,
            id,
            Handshake::new(info_hash, id).reserved,
        )
        .await
    }

    /// Sends a handshake with `peer_id` and `reserved`, and reads theirs.
    pub async fn handshake_with(
        mut stream: TcpStream,
        info_hash: InfoHash,
        peer_id: PeerId,
        reserved: Reserved,
    ) -> Raw {
        let mut hs = Handshake::new(info_hash, peer_id);
        hs.reserved = reserved;
        let mut out = BytesMut::new();
        hs.encode(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            if Handshake::decode(&mut buf).unwrap().is_some() {
                break;
            }
            assert!(
                stream.read_buf(&mut buf).await.unwrap() > 0,
                "closed during handshake"
            );
        }
        Raw {
            stream,
            buf,
            dec: Decoder::default(),
        }
    }

    pub async fn send(&mut self, m: Message) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        let _ = self.stream.write_all(&out).await;
    }

    /// The next message, or None when the other side closed.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(Message::KeepAlive)) => continue,
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("our node sent garbage: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the other side unchokes us; panics if it closes or takes too long.
    pub async fn until_unchoked(&mut self) {
        let unchoked = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(m) = self.recv().await {
                if m == Message::Unchoke {
                    return true;
                }
            }
            false
        })
        .await
        .expect("unchoked in time");
        assert!(unchoked, "closed before unchoking us");
    }

    /// Reads until the other side closes (bounded by the test's timeouts).
    pub async fn until_closed(&mut self) {
        while self.recv().await.is_some() {}
    }
}
