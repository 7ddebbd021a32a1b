//! Magnet URIs (BEP 9): `magnet:?xt=urn:btih:<info-hash>&dn=<name>&tr=<tracker>&x.pe=<peer>`.
//!
//! Parsing accepts the info-hash as 40 hex digits or 32 base32 characters (RFC 4648, either
//! case), percent-decodes every value (`+` means a space, as in libtorrent), keeps trackers
//! and peer hints in order, and ignores parameters it does not know. A v2 `btmh` topic is
//! ignored next to a `btih`; a magnet with only `btmh` is refused ([`MagnetError::V2Only`]).
//! Anything malformed (bad escapes, non-UTF-8 text, bad hashes or peer addresses, two
//! different `btih`) is refused with an error naming the parameter.

use crate::infohash::InfoHash;
use std::fmt;
use std::net::SocketAddr;

/// Longest magnet URI accepted (real ones are well under 8 KiB).
pub const MAX_MAGNET_LEN: usize = 64 << 10;
/// Most `so` (select-only) ranges accepted.
const MAX_SELECT_RANGES: usize = 10_000;

/// A parsed magnet link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    /// `dn`: a name to show until the metadata arrives.
    pub display_name: Option<String>,
    /// `tr`, in order.
    pub trackers: Vec<String>,
    /// `x.pe`, in order.
    pub peers: Vec<PeerHint>,
    /// `xl`: the total length in bytes.
    pub exact_length: Option<u64>,
    /// `so` (BEP 53): inclusive ranges of file indices to download.
    pub select_only: Vec<(u32, u32)>,
    /// BEP 46 `xs=urn:btpk:<key>` (and `s=<salt>`): the torrent is whatever the newest
    /// version of that mutable DHT item names. With no `btih`, `info_hash` is zero until
    /// the caller resolves it.
    pub mutable: Option<MutableSource>,
}

/// A BEP 46 source: the ed25519 public key (and salt) of a mutable DHT item whose value
/// is `{"ih": <info-hash>}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableSource {
    pub public_key: [u8; 32],
    pub salt: Vec<u8>,
}

/// A peer address from `x.pe`: an IP literal, or a host name to resolve later.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerHint {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl fmt::Display for PeerHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerHint::Addr(a) => write!(f, "{a}"),
            PeerHint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a magnet URI is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("magnet link is {0} bytes, longer than the limit of 65536")]
    TooLong(usize),
    #[error("not a magnet link (it must start with `magnet:?`)")]
    NotMagnet,
    #[error("magnet link has no `xt=urn:btih:` info-hash")]
    NoInfoHash,
    #[error(
        "magnet link has only a v2 (`urn:btmh:`) info-hash; v2-only torrents are not supported"
    )]
    V2Only,
    #[error("bad info-hash {0:?} in magnet link (expected 40 hex digits or 32 base32 characters)")]
    BadInfoHash(String),
    #[error("magnet link has two different info-hashes: {0} and {1}")]
    ConflictingInfoHashes(InfoHash, InfoHash),
    #[error("bad percent-escape in magnet parameter `{0}`")]
    BadEscape(String),
    #[error("magnet parameter `{0}` is not valid UTF-8")]
    NotUtf8(String),
    #[error(
        "bad peer address {0:?} in magnet `x.pe` (expected host:port, ip:port or [ipv6]:port)"
    )]
    BadPeer(String),
    #[error("bad exact length {0:?} in magnet `xl`")]
    BadLength(String),
    #[error("bad file selection {0:?} in magnet `so`")]
    BadSelection(String),
    #[error("bad public key {0:?} in magnet `xs=urn:btpk:` (expected 64 hex digits)")]
    BadPublicKey(String),
    #[error("bad salt {0:?} in magnet `s` (expected at most 64 bytes, in hex)")]
    BadSalt(String),
}

impl Magnet {
    /// A magnet with just an info-hash.
    pub fn new(info_hash: InfoHash) -> Self {
        Magnet {
            info_hash,
            display_name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
            exact_length: None,
            select_only: Vec::new(),
            mutable: None,
        }
    }

    /// Whether the info-hash is still to be looked up (a BEP 46 magnet without `btih`).
    pub fn needs_resolving(&self) -> bool {
        self.mutable.is_some() && self.info_hash == InfoHash::default()
    }

    /// Parses a magnet URI.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        if uri.len() > MAX_MAGNET_LEN {
            return Err(MagnetError::TooLong(uri.len()));
        }
        let query = uri
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &uri[8..])
            .ok_or(MagnetError::NotMagnet)?;

        let mut info_hash: Option<InfoHash> = None;
        let mut saw_btmh = false;
        let mut public_key: Option<[u8; 32]> = None;
        let mut salt: Vec<u8> = Vec::new();
        let mut m = Magnet::new(InfoHash::default());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let bytes = percent_decode(raw).ok_or_else(|| MagnetError::BadEscape(key.into()))?;
            let text =
                || String::from_utf8(bytes.clone()).map_err(|_| MagnetError::NotUtf8(key.into()));
            match key {
                _ if is_param(key, "xt") => {
                    let v = text()?;
                    if let Some(h) = strip_prefix_ignore_case(&v, "urn:btih:") {
                        let h = parse_btih(h).ok_or_else(|| MagnetError::BadInfoHash(h.into()))?;
                        match info_hash {
                            Some(prev) if prev != h => {
                                return Err(MagnetError::ConflictingInfoHashes(prev, h))
                            }
                            _ => info_hash = Some(h),
                        }
                    } else if strip_prefix_ignore_case(&v, "urn:btmh:").is_some() {
                        saw_btmh = true;
                    }
                }
                _ if is_param(key, "xs") => {
                    let v = text()?;
                    if let Some(k) = strip_prefix_ignore_case(&v, "urn:btpk:") {
                        public_key = Some(
                            parse_hex(k)
                                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                                .ok_or_else(|| MagnetError::BadPublicKey(k.into()))?,
                        );
                    }
                }
                "s" => {
                    let v = text()?;
                    salt = parse_hex(&v)
                        .filter(|b| b.len() <= 64)
                        .ok_or(MagnetError::BadSalt(v))?;
                }
                "dn" => m.display_name = Some(text()?),
                _ if is_param(key, "tr") => m.trackers.push(text()?),
                "x.pe" => m.peers.push(parse_peer(&text()?)?),
                "xl" => {
                    let v = text()?;
                    m.exact_length = Some(
                        v.parse::<u64>()
                            .ok()
                            .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                            .ok_or(MagnetError::BadLength(v))?,
                    );
                }
                "so" => m.select_only = parse_select_only(&text()?)?,
                _ => {} // unknown parameters are ignored
            }
        }
        m.mutable = public_key.map(|public_key| MutableSource { public_key, salt });
        m.info_hash = match info_hash {
            Some(h) => h,
            None if m.mutable.is_some() => InfoHash::default(),
            None if saw_btmh => return Err(MagnetError::V2Only),
            None => return Err(MagnetError::NoInfoHash),
        };
        Ok(m)
    }
}

impl std::str::FromStr for Magnet {
    type Err = MagnetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Magnet::parse(s)
    }
}

impl fmt::Display for Magnet {
    /// `magnet:?xt=urn:btih:<40 lower-case hex>&dn=..&xl=..&tr=..&x.pe=..&so=..`, every value
    /// percent-encoded except RFC 3986 unreserved characters (and `:[]` in peer addresses).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("magnet:?")?;
        if !self.needs_resolving() {
            write!(f, "xt=urn:btih:{}", self.info_hash.to_hex())?;
        }
        if let Some(src) = &self.mutable {
            if !self.needs_resolving() {
                f.write_str("&")?;
            }
            write!(f, "xs=urn:btpk:{}", to_hex(&src.public_key))?;
            if !src.salt.is_empty() {
                write!(f, "&s={}", to_hex(&src.salt))?;
            }
        }
        if let Some(dn) = &self.display_name {
            write!(f, "&dn={}", PercentEncoded(dn, b""))?;
        }
        if let Some(xl) = self.exact_length {
            write!(f, "&xl={xl}")?;
        }
        for tr in &self.trackers {
            write!(f, "&tr={}", PercentEncoded(tr, b""))?;
        }
        for pe in &self.peers {
            // libtorrent reads `x.pe` without percent-decoding: keep `:`, `[` and `]`.
            write!(f, "&x.pe={}", PercentEncoded(&pe.to_string(), b":[]"))?;
        }
        if !self.select_only.is_empty() {
            f.write_str("&so=")?;
            for (i, (a, b)) in self.select_only.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                if a == b {
                    write!(f, "{a}")?;
                } else {
                    write!(f, "{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex digits (either case) to bytes.
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `xt`, or numbered forms like `xt.1` that some clients write for several topics.
fn is_param(key: &str, name: &str) -> bool {
    key == name
        || key
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

fn parse_btih(s: &str) -> Option<InfoHash> {
    match s.len() {
        40 => InfoHash::from_hex(s),
        32 => base32_decode_20(s).map(InfoHash),
        _ => None,
    }
}

/// Decodes exactly 32 RFC 4648 base32 characters (no padding, either case) into 20 bytes.
fn base32_decode_20(s: &str) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut n = 0;
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    (n == 20 && bits == 0).then_some(out)
}

/// Encodes 20 bytes as 32 upper-case base32 characters.
pub fn base32_encode_20(bytes: &[u8; 20]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(32);
    for chunk in bytes.chunks(5) {
        let v = chunk.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(ALPHABET[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (a space). `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = (*b.get(i + 1)? as char).to_digit(16)?;
                let lo = (*b.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters and the given extras.
struct PercentEncoded<'a>(&'a str, &'static [u8]);

impl fmt::Display for PercentEncoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || self.1.contains(&b) {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

fn parse_peer(s: &str) -> Result<PeerHint, MagnetError> {
    let bad = || MagnetError::BadPeer(s.into());
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(bad())
        } else {
            Ok(PeerHint::Addr(addr))
        };
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(bad)?;
    // A DNS name: letters, digits, `-`, `.`, `_`; not an IP-looking or bracketed thing.
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !valid_host {
        return Err(bad());
    }
    Ok(PeerHint::Host {
        host: host.to_string(),
        port,
    })
}

/// `so=0,2,4-6`: file indices and inclusive ranges.
fn parse_select_only(s: &str) -> Result<Vec<(u32, u32)>, MagnetError> {
    let bad = || MagnetError::BadSelection(s.into());
    let num = |t: &str| -> Result<u32, MagnetError> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        if out.len() >= MAX_SELECT_RANGES {
            return Err(bad());
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let a = num(part)?;
                (a, a)
            }
        };
        if a > b {
            return Err(bad());
        }
        out.push((a, b));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn parses_hex_and_base32_alike() {
        let h = InfoHash::from_hex(HEX).unwrap();
        let b32 = base32_encode_20(&h.0);
        assert_eq!(b32.len(), 32);
        for uri in [
            format!("magnet:?xt=urn:btih:{HEX}"),
            format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase()),
            format!("MAGNET:?xt=URN:BTIH:{b32}"),
            format!("magnet:?xt=urn:btih:{}", b32.to_lowercase()),
        ] {
            assert_eq!(Magnet::parse(&uri).unwrap().info_hash, h, "{uri}");
        }
        assert_eq!(
            base32_decode_20("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Some([0; 20])
        );
        assert_eq!(base32_decode_20("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1"), None);
    }

    #[test]
    fn parses_all_parameters() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btmh:1220abcd&xt=urn:btih:{HEX}&dn=My+File%20%C3%A9&tr=udp%3A%2F%2Fa%3A1&tr=http://b/ann\
             &x.pe=127.0.0.1:6881&x.pe=[::1]:7000&x.pe=peer.example:80&xl=1234&so=0,2-4&foo=bar&&"
        ))
        .unwrap();
        assert_eq!(m.display_name.as_deref(), Some("My File é"));
        assert_eq!(m.trackers, ["udp://a:1", "http://b/ann"]);
        assert_eq!(
            m.peers,
            [
                PeerHint::Addr("127.0.0.1:6881".parse().unwrap()),
                PeerHint::Addr("[::1]:7000".parse().unwrap()),
                PeerHint::Host {
                    host: "peer.example".into(),
                    port: 80
                },
            ]
        );
        assert_eq!(m.exact_length, Some(1234));
        assert_eq!(m.select_only, [(0, 0), (2, 4)]);
        assert_eq!(Magnet::parse(&m.to_string()).unwrap(), m);
    }

    #[test]
    fn refuses_malformed() {
        let e = |s: &str| Magnet::parse(s).unwrap_err();
        assert_eq!(e("http://x"), MagnetError::NotMagnet);
        assert_eq!(e("magnet:?dn=x"), MagnetError::NoInfoHash);
        assert_eq!(e("magnet:?xt=urn:btmh:1220abcd"), MagnetError::V2Only);
        assert!(matches!(
            e("magnet:?xt=urn:btih:abc"),
            MagnetError::BadInfoHash(_)
        ));
        assert!(
            matches!(e(&format!("magnet:?xt=urn:btih:{HEX}&dn=%zz")), MagnetError::BadEscape(k) if k == "dn")
        );
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&dn=%4")),
            MagnetError::BadEscape(_)
        ));
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&dn=%ff")),
            MagnetError::NotUtf8(_)
        ));
        for pe in [
            "1.2.3.4",
            "1.2.3.4:0",
            "host:99999",
            ":80",
            "a b:1",
            "[::1]",
            "1.2.3.999:5",
        ] {
            assert!(
                matches!(
                    e(&format!("magnet:?xt=urn:btih:{HEX}&x.pe={pe}")),
                    MagnetError::BadPeer(_)
                ),
                "{pe}"
            );
        }
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&xl=-1")),
            MagnetError::BadLength(_)
        ));
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&so=3-1")),
            MagnetError::BadSelection(_)
        ));
        let other = "0".repeat(40);
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            MagnetError::ConflictingInfoHashes(..)
        ));
        assert!(matches!(
            e(&"x".repeat(MAX_MAGNET_LEN + 1)),
            MagnetError::TooLong(_)
        ));
    }

    #[test]
    fn formats_canonically() {
        let mut m = Magnet::new(InfoHash::from_hex(HEX).unwrap());
        m.display_name = Some("a b+c/é".into());
        m.trackers.push("udp://t:1/x".into());
        m.peers.push(PeerHint::Addr("127.0.0.1:1".parse().unwrap()));
        m.peers.push(PeerHint::Addr("[::1]:2".parse().unwrap()));
        assert_eq!(
            m.to_string(),
            format!(
                "magnet:?xt=urn:btih:{HEX}&dn=a%20b%2Bc%2F%C3%A9&tr=udp%3A%2F%2Ft%3A1%2Fx\
                 &x.pe=127.0.0.1:1&x.pe=[::1]:2"
            )
        );
    }

    #[test]
    fn bep46_mutable_sources() {
        let pk = "8543d3e6115f0f98c944077a4493dcd543e49c739fd998550a1f614ab36ed63e";
        let m = Magnet::parse(&format!("magnet:?xs=urn:btpk:{pk}&s=6e&dn=dump")).unwrap();
        let src = m.mutable.clone().unwrap();
        assert_eq!(src.salt, vec![0x6e]);
        assert_eq!(to_hex(&src.public_key), pk);
        assert!(m.needs_resolving());
        assert_eq!(
            m.to_string(),
            format!("magnet:?xs=urn:btpk:{pk}&s=6e&dn=dump")
        );
        // With a btih too: that one is known, the key still says where updates come from.
        let both = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xs=urn:btpk:{pk}")).unwrap();
        assert!(!both.needs_resolving());
        assert_eq!(
            both.to_string(),
            format!("magnet:?xt=urn:btih:{HEX}&xs=urn:btpk:{pk}")
        );
        assert!(matches!(
            Magnet::parse("magnet:?xs=urn:btpk:abcd"),
            Err(MagnetError::BadPublicKey(_))
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xs=urn:btpk:{pk}&s=zz")),
            Err(MagnetError::BadSalt(_))
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xs=urn:btpk:{pk}&s={}", "00".repeat(65))),
            Err(MagnetError::BadSalt(_))
        ));
        // Other `xs` sources are ignored, as before.
        assert!(matches!(
            Magnet::parse("magnet:?xs=http://example.invalid/x.torrent"),
            Err(MagnetError::NoInfoHash)
        ));
    }
}
