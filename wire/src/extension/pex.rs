//! ut_pex (BEP 11): peer exchange messages, and sans-IO rate limiting for both directions.
//!
//! ```text
//! d 5:added <compact IPv4 peers, 6 bytes each> 7:added.f <1 flag byte per added peer>
//!   6:added6 <compact IPv6 peers, 18 bytes each> 8:added6.f <flags>
//!   7:dropped <compact IPv4> 8:dropped6 <compact IPv6> e
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bencode::{Encoder, Limits};

use super::ExtensionError;

/// Flags carried per added peer (`added.f`).
pub mod pex_flags {
    pub const PREFERS_ENCRYPTION: u8 = 0x01;
    /// Seed or partial seed (upload only).
    pub const SEED: u8 = 0x02;
    pub const SUPPORTS_UTP: u8 = 0x04;
    pub const SUPPORTS_HOLEPUNCH: u8 = 0x08;
    /// The sender reached this peer by an outgoing connection, so it is connectable.
    pub const REACHABLE: u8 = 0x10;
}

/// At most this many added (and, separately, dropped) peers per message we send.
pub const PEX_MAX_PEERS: usize = 50;
/// At most one message per peer per interval.
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// Most entries per list read from one incoming message (memory bound on hostile input).
const PARSE_MAX_PEERS: usize = 200;

/// One ut_pex message, IPv4 and IPv6 together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Newly connected peers with their flags.
    pub added: Vec<(SocketAddr, u8)>,
    /// Peers the sender disconnected from.
    pub dropped: Vec<SocketAddr>,
}

impl PexMessage {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Parses a payload. Tolerant like real clients: a missing or short flags string
    /// means flags 0, a trailing partial address is ignored, port-0 entries are skipped;
    /// at most 200 entries per list are read.
    pub fn parse(payload: &[u8]) -> Result<PexMessage, ExtensionError> {
        const WHAT: &str = "ut_pex";
        let limits = Limits {
            max_depth: 4,
            max_len: payload.len(),
        };
        let (v, _) = bencode::decode_prefix_with(payload, limits)
            .map_err(|source| ExtensionError::Bencode { what: WHAT, source })?;
        let d = v.as_dict().ok_or(ExtensionError::NotADict { what: WHAT })?;
        let mut msg = PexMessage::default();
        for (key, fkey, width) in [
            (&b"added"[..], &b"added.f"[..], 6),
            (b"added6", b"added6.f", 18),
        ] {
            let Some(compact) = d.get_bytes(key) else {
                continue;
            };
            let flags = d.get_bytes(fkey).unwrap_or(&[]);
            for (i, entry) in compact
                .chunks_exact(width)
                .take(PARSE_MAX_PEERS)
                .enumerate()
            {
                if let Some(addr) = from_compact(entry) {
                    msg.added.push((addr, flags.get(i).copied().unwrap_or(0)));
                }
            }
        }
        for (key, width) in [(&b"dropped"[..], 6), (b"dropped6", 18)] {
            let Some(compact) = d.get_bytes(key) else {
                continue;
            };
            msg.dropped.extend(
                compact
                    .chunks_exact(width)
                    .take(PARSE_MAX_PEERS)
                    .filter_map(from_compact),
            );
        }
        Ok(msg)
    }

    /// The bencoded payload (keys sorted; empty lists omitted except `added`/`dropped`,
    /// which some clients expect to be present).
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut f4, mut d4) = (Vec::new(), Vec::new(), Vec::new());
        let (mut a6, mut f6, mut d6) = (Vec::new(), Vec::new(), Vec::new());
        // IPv4 peers seen on a dual-stack socket (::ffff:a.b.c.d) go in the IPv4 lists.
        let canonical = |a: &SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        for (addr, flags) in &self.added {
            let addr = &canonical(addr);
            match addr {
                SocketAddr::V4(_) => {
                    push_compact(&mut a4, addr);
                    f4.push(*flags);
                }
                SocketAddr::V6(_) => {
                    push_compact(&mut a6, addr);
                    f6.push(*flags);
                }
            }
        }
        for addr in &self.dropped {
            let addr = &canonical(addr);
            match addr {
                SocketAddr::V4(_) => push_compact(&mut d4, addr),
                SocketAddr::V6(_) => push_compact(&mut d6, addr),
            }
        }
        let mut out = Vec::with_capacity(
            32 + a4.len() + f4.len() + a6.len() + f6.len() + d4.len() + d6.len(),
        );
        let mut e = Encoder::new(&mut out);
        e.begin_dict()
            .key(b"added")
            .bytes(&a4)
            .key(b"added.f")
            .bytes(&f4);
        if !a6.is_empty() {
            e.key(b"added6").bytes(&a6).key(b"added6.f").bytes(&f6);
        }
        e.key(b"dropped").bytes(&d4);
        if !d6.is_empty() {
            e.key(b"dropped6").bytes(&d6);
        }
        e.end();
        out
    }
}

fn push_compact(v: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => v.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => v.extend_from_slice(&ip.octets()),
    }
    v.extend_from_slice(&addr.port().to_be_bytes());
}

fn from_compact(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, [u8; 2]) = match b.len() {
        6 => (Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), [b[4], b[5]]),
        18 => (
            Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).ok()?).into(),
            [b[16], b[17]],
        ),
        _ => return None,
    };
    let port = u16::from_be_bytes(port);
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Decides what to tell one peer and when: deltas against what it already heard from
/// us, at most [`PEX_MAX_PEERS`] added and dropped per message, at most one message per
/// [`PEX_INTERVAL`].
#[derive(Clone, Debug)]
pub struct PexSender {
    recipient: SocketAddr,
    advertised: BTreeSet<SocketAddr>,
    last_sent: Option<Instant>,
}

impl PexSender {
    /// For the connection to `recipient` (never told about itself).
    pub fn new(recipient: SocketAddr) -> Self {
        PexSender {
            recipient,
            advertised: BTreeSet::new(),
            last_sent: None,
        }
    }

    /// When the next message may go out (`None`: now).
    pub fn next_allowed(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + PEX_INTERVAL)
    }

    /// Given the peers we are connected to now (with their flags), the message to send
    /// at `now`, if one is due and there is news. Peers beyond the per-message cap are
    /// carried to the next message.
    pub fn poll(&mut self, now: Instant, connected: &[(SocketAddr, u8)]) -> Option<PexMessage> {
        if self.next_allowed().is_some_and(|t| now < t) {
            return None;
        }
        let current: BTreeSet<SocketAddr> = connected
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a != self.recipient)
            .collect();
        let mut msg = PexMessage::default();
        for (addr, flags) in connected {
            if msg.added.len() >= PEX_MAX_PEERS {
                break;
            }
            if *addr != self.recipient
                && !self.advertised.contains(addr)
                && !msg.added.iter().any(|(a, _)| a == addr)
            {
                msg.added.push((*addr, *flags));
            }
        }
        msg.dropped = self
            .advertised
            .difference(&current)
            .take(PEX_MAX_PEERS)
            .copied()
            .collect();
        if msg.is_empty() {
            return None;
        }
        for (a, _) in &msg.added {
            self.advertised.insert(*a);
        }
        for a in &msg.dropped {
            self.advertised.remove(a);
        }
        self.last_sent = Some(now);
        Some(msg)
    }
}

/// Filters what one peer sends us: messages closer together than half the interval are
/// dropped (allowing for timer jitter), and each list is capped at [`PEX_MAX_PEERS`].
#[derive(Clone, Debug, Default)]
pub struct PexReceiver {
    last_accepted: Option<Instant>,
}

impl PexReceiver {
    /// The message's content if accepted, `None` if it came too soon.
    pub fn accept(&mut self, now: Instant, mut msg: PexMessage) -> Option<PexMessage> {
        if self
            .last_accepted
            .is_some_and(|t| now.saturating_duration_since(t) < PEX_INTERVAL / 2)
        {
            return None;
        }
        self.last_accepted = Some(now);
        msg.added.truncate(PEX_MAX_PEERS);
        msg.dropped.truncate(PEX_MAX_PEERS);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wire_format_and_round_trip() {
        let msg = PexMessage {
            added: vec![
                (a("1.2.3.4:6881"), pex_flags::SEED | pex_flags::REACHABLE),
                (a("[::1]:80"), 0),
            ],
            dropped: vec![a("5.6.7.8:1"), a("[2001:db8::2]:2")],
        };
        let bytes = msg.encode();
        assert!(bytes.starts_with(b"d5:added6:\x01\x02\x03\x04\x1a\xe17:added.f1:\x126:added618:"));
        bencode::decode(&bytes).expect("canonical");
        assert_eq!(PexMessage::parse(&bytes).unwrap(), msg);
        assert_eq!(
            PexMessage::default().encode(),
            b"d5:added0:7:added.f0:7:dropped0:e"
        );
    }

    #[test]
    fn parse_is_tolerant_and_bounded() {
        // Flags missing, a trailing partial entry, a port-0 entry.
        let msg = PexMessage::parse(
            b"d5:added15:\x01\x02\x03\x04\x00\x50\x09\x09\x09\x09\x00\x00\xff\xff\xffe",
        )
        .unwrap();
        assert_eq!(msg.added, vec![(a("1.2.3.4:80"), 0)]);
        let mut big = b"d5:added6000:".to_vec();
        big.extend(std::iter::repeat_n([10u8, 0, 0, 1, 0, 1], 1000).flatten());
        big.push(b'e');
        assert_eq!(
            PexMessage::parse(&big).unwrap().added.len(),
            PARSE_MAX_PEERS
        );
        assert!(PexMessage::parse(b"i1e").is_err());
        assert!(PexMessage::parse(b"d5:added").is_err());
        assert_eq!(PexMessage::parse(b"de").unwrap(), PexMessage::default());
    }

    #[test]
    fn sender_sends_deltas_at_most_once_a_minute() {
        let t0 = Instant::now();
        let me = a("127.0.0.9:9");
        let mut s = PexSender::new(me);
        let peers: Vec<(SocketAddr, u8)> = (1..=70)
            .map(|i| (a(&format!("10.0.0.{i}:1000")), 0))
            .chain([(me, 0)])
            .collect();
        let first = s.poll(t0, &peers).unwrap();
        assert_eq!(first.added.len(), PEX_MAX_PEERS);
        assert!(
            first.added.iter().all(|(addr, _)| *addr != me),
            "never told about itself"
        );
        assert_eq!(
            s.poll(t0 + Duration::from_secs(59), &peers),
            None,
            "rate limited"
        );
        let second = s.poll(t0 + PEX_INTERVAL, &peers).unwrap();
        assert_eq!(second.added.len(), 20, "the rest");
        assert!(second.dropped.is_empty());
        // Nothing new: no message, and the clock is not reset.
        assert_eq!(s.poll(t0 + 2 * PEX_INTERVAL, &peers), None);
        let fewer = &peers[5..];
        let third = s
            .poll(t0 + 2 * PEX_INTERVAL + Duration::from_secs(1), fewer)
            .unwrap();
        assert_eq!(third.dropped.len(), 5);
        assert!(third.added.is_empty());
        assert_eq!(
            s.next_allowed(),
            Some(t0 + 3 * PEX_INTERVAL + Duration::from_secs(1))
        );
    }

    #[test]
    fn receiver_drops_floods_and_caps_lists() {
        let t0 = Instant::now();
        let mut r = PexReceiver::default();
        let many = PexMessage {
            added: (0..120)
                .map(|i| (a(&format!("10.0.1.{}:{}", i % 250, 1000 + i)), 0))
                .collect(),
            dropped: vec![],
        };
        assert_eq!(
            r.accept(t0, many.clone()).unwrap().added.len(),
            PEX_MAX_PEERS
        );
        assert!(r
            .accept(t0 + Duration::from_secs(5), many.clone())
            .is_none());
        assert!(r.accept(t0 + Duration::from_secs(60), many).is_some());
    }
}
