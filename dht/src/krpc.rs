//! KRPC messages (BEP 5) with the extensions real nodes send: `nodes6`/`want` (BEP 32),
//! `ip` (BEP 42), `ro` (BEP 43), `sample_infohashes` (BEP 51) and the client version `v`.
//!
//! Decoding is bounded (one UDP datagram, shallow nesting), tolerant of unknown keys and
//! never panics. A malformed *query* that still carries a transaction id is reported as
//! [`DecodeError::BadQuery`] so the caller can answer with error 203; anything else is
//! garbage and gets no reply. Encoding writes sorted keys straight into a `Vec<u8>`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bencode::{Dict, Encoder, Limits, Value};

use crate::id::Id;
use crate::item::{Item, MutableItem};

/// Largest datagram we decode (UDP payloads cannot be larger).
pub const MAX_DATAGRAM: usize = 65_535;
/// Longest transaction id we accept; real clients use 2-4 bytes.
pub const MAX_TID_LEN: usize = 32;
/// Longest token we accept or store; real clients use 4-20 bytes.
pub const MAX_TOKEN_LEN: usize = 64;
/// Longest client version string kept.
pub const MAX_VERSION_LEN: usize = 16;

const LIMITS: Limits = Limits {
    max_depth: 8,
    max_len: MAX_DATAGRAM,
};

/// KRPC error codes (BEP 5).
pub mod error_code {
    pub const GENERIC: i64 = 201;
    pub const SERVER: i64 = 202;
    pub const PROTOCOL: i64 = 203;
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// A node's id and UDP address ("compact node info": 26 bytes for IPv4, 38 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: Id,
    pub addr: SocketAddr,
}

/// Which address families a requester wants nodes for (BEP 32 `want`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

impl Want {
    pub fn is_empty(&self) -> bool {
        !self.n4 && !self.n6
    }
}

/// One KRPC message: the envelope fields shared by all kinds plus the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id, echoed in the reply.
    pub t: Vec<u8>,
    /// Client version (`v`), if sent.
    pub v: Option<Vec<u8>>,
    /// BEP 42: the address the sender sees us at (in replies).
    pub ip: Option<SocketAddr>,
    /// BEP 43: the sender is read-only and must not enter routing tables.
    pub ro: bool,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error(KrpcError),
}

/// A query with the querying node's id and BEP 32 `want`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: Id,
    pub want: Want,
    pub kind: QueryKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryKind {
    Ping,
    FindNode {
        target: Id,
    },
    GetPeers {
        info_hash: Id,
    },
    AnnouncePeer {
        info_hash: Id,
        /// The announced port; ignored when `implied_port` is set.
        port: u16,
        /// Use the UDP source port instead of `port` (NAT-friendly).
        implied_port: bool,
        token: Vec<u8>,
    },
    SampleInfohashes {
        target: Id,
    },
    /// BEP 44: the item stored at `target` (for a mutable one, only if newer than `seq`).
    Get {
        target: Id,
        seq: Option<i64>,
    },
    /// BEP 44: store `item` (`cas`: the sequence number it is meant to replace).
    Put {
        token: Vec<u8>,
        item: Item,
        cas: Option<i64>,
    },
    /// A method we do not know that names a `target` or `info_hash`: answered like
    /// find_node, as BEP 5 nodes do for forward compatibility.
    Other {
        method: Vec<u8>,
        target: Id,
    },
}

impl QueryKind {
    pub fn method(&self) -> &[u8] {
        match self {
            QueryKind::Ping => b"ping",
            QueryKind::FindNode { .. } => b"find_node",
            QueryKind::GetPeers { .. } => b"get_peers",
            QueryKind::AnnouncePeer { .. } => b"announce_peer",
            QueryKind::SampleInfohashes { .. } => b"sample_infohashes",
            QueryKind::Get { .. } => b"get",
            QueryKind::Put { .. } => b"put",
            QueryKind::Other { method, .. } => method,
        }
    }
}

/// A response: all fields any of our queries can get back.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    pub id: Id,
    /// `nodes` is in the message even when empty: the reply to a find_node, get_peers or
    /// sample_infohashes for IPv4 nodes (BEP 5 wants the key; a node that knows nobody
    /// yet answers with an empty list).
    pub with_nodes: bool,
    pub nodes: Vec<NodeInfo>,
    pub nodes6: Vec<NodeInfo>,
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
    /// BEP 51.
    pub samples: Option<Vec<Id>>,
    pub interval: Option<i64>,
    pub num: Option<i64>,
    /// BEP 44 `get` replies: the value (bencoded, verbatim), and for a mutable item its
    /// key, sequence number and signature (`seq` alone when it is not newer than asked).
    pub value: Option<Vec<u8>>,
    pub key: Option<[u8; 32]>,
    pub seq: Option<i64>,
    pub sig: Option<[u8; 64]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KrpcError {
    pub code: i64,
    pub message: Vec<u8>,
}

/// Why a datagram is not a usable KRPC message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("krpc: not bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("krpc: {0}")]
    Invalid(&'static str),
    /// A query we can answer with error 203: it has a transaction id.
    #[error("krpc: bad query ({reason})")]
    BadQuery { t: Vec<u8>, reason: &'static str },
}

// ---------------------------------------------------------------------------------------
// compact encodings

/// Compact peer info: 6 bytes (IPv4) or 18 bytes (IPv6).
pub fn decode_compact_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// Appends compact peer info for `addr` (IPv4-mapped IPv6 addresses are written as IPv4).
pub fn push_compact_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match canonical_ip(addr.ip()) {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Compact form as a fresh vector.
pub fn compact_addr(addr: &SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(18);
    push_compact_addr(&mut v, addr);
    v
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) become plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The same address with a canonical IP (see [`canonical_ip`]).
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Decodes packed compact node infos of `entry` bytes each (26 or 38). A trailing partial
/// entry is ignored, as are entries with port 0.
pub fn decode_nodes(b: &[u8], entry: usize) -> Vec<NodeInfo> {
    b.chunks_exact(entry)
        .filter_map(|c| {
            let id = Id::from_slice(&c[..20])?;
            let addr = decode_compact_addr(&c[20..])?;
            (addr.port() != 0).then_some(NodeInfo { id, addr })
        })
        .collect()
}

/// Packs nodes of one family into compact node info.
pub fn encode_nodes<'n>(nodes: impl IntoIterator<Item = &'n NodeInfo>) -> Vec<u8> {
    let mut out = Vec::new();
    push_nodes(&mut out, nodes);
    out
}

/// Appends nodes as compact node info (26 bytes each for IPv4, 38 for IPv6).
fn push_nodes<'n>(out: &mut Vec<u8>, nodes: impl IntoIterator<Item = &'n NodeInfo>) {
    for n in nodes {
        out.extend_from_slice(&n.id.0);
        push_compact_addr(out, &n.addr);
    }
}

fn is_v4(addr: &SocketAddr) -> bool {
    canonical_ip(addr.ip()).is_ipv4()
}

// ---------------------------------------------------------------------------------------
// decoding

impl Message {
    /// Decodes one datagram. Never panics; bounded by [`MAX_DATAGRAM`].
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let root = bencode::decode_with(bytes, LIMITS)?;
        let dict = root
            .as_dict()
            .ok_or(DecodeError::Invalid("message is not a dictionary"))?;
        let t = dict
            .get_bytes(b"t")
            .ok_or(DecodeError::Invalid("missing transaction id"))?;
        if t.len() > MAX_TID_LEN {
            return Err(DecodeError::Invalid("transaction id too long"));
        }
        let y = dict
            .get_bytes(b"y")
            .ok_or(DecodeError::Invalid("missing message type"))?;
        let v = dict
            .get_bytes(b"v")
            .filter(|v| v.len() <= MAX_VERSION_LEN)
            .map(<[u8]>::to_vec);
        let ip = dict.get_bytes(b"ip").and_then(decode_compact_addr);
        let ro = dict.get_int(b"ro") == Some(1);
        let body = match y {
            b"q" => Body::Query(decode_query(dict).map_err(|reason| DecodeError::BadQuery {
                t: t.to_vec(),
                reason,
            })?),
            b"r" => Body::Response(decode_response(dict)?),
            b"e" => Body::Error(decode_error(dict)?),
            _ => return Err(DecodeError::Invalid("unknown message type")),
        };
        Ok(Message {
            t: t.to_vec(),
            v,
            ip,
            ro,
            body,
        })
    }
}

fn get_id(d: &Dict<'_>, key: &[u8]) -> Option<Id> {
    d.get_bytes(key).and_then(Id::from_slice)
}

fn decode_want(args: &Dict<'_>) -> Want {
    let mut want = Want::default();
    if let Some(list) = args.get_list(b"want") {
        for item in list.iter().take(8) {
            match item.as_bytes() {
                Some(b"n4") => want.n4 = true,
                Some(b"n6") => want.n6 = true,
                _ => {}
            }
        }
    }
    want
}

fn decode_query(dict: &Dict<'_>) -> Result<Query, &'static str> {
    let method = dict.get_bytes(b"q").ok_or("missing method")?;
    let args = dict.get_dict(b"a").ok_or("missing arguments")?;
    let id = get_id(args, b"id").ok_or("missing or malformed id")?;
    let want = decode_want(args);
    let need = |key: &[u8], what: &'static str| get_id(args, key).ok_or(what);
    let kind = match method {
        b"ping" => QueryKind::Ping,
        b"find_node" => QueryKind::FindNode {
            target: need(b"target", "missing or malformed target")?,
        },
        b"get_peers" => QueryKind::GetPeers {
            info_hash: need(b"info_hash", "missing or malformed info_hash")?,
        },
        b"announce_peer" => {
            let info_hash = need(b"info_hash", "missing or malformed info_hash")?;
            let implied_port = args.get_int(b"implied_port").is_some_and(|p| p != 0);
            let port = match args.get_int(b"port") {
                Some(p) => u16::try_from(p).map_err(|_| "port out of range")?,
                None if implied_port => 0,
                None => return Err("missing port"),
            };
            let token = args.get_bytes(b"token").ok_or("missing token")?;
            if token.len() > MAX_TOKEN_LEN {
                return Err("token too long");
            }
            QueryKind::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token: token.to_vec(),
            }
        }
        b"sample_infohashes" => QueryKind::SampleInfohashes {
            target: need(b"target", "missing or malformed target")?,
        },
        b"get" => QueryKind::Get {
            target: need(b"target", "missing or malformed target")?,
            seq: args.get_int(b"seq"),
        },
        b"put" => decode_put(args)?,
        other => {
            if other.len() > 64 {
                return Err("method name too long");
            }
            let target = get_id(args, b"target")
                .or_else(|| get_id(args, b"info_hash"))
                .ok_or("unknown method")?;
            QueryKind::Other {
                method: other.to_vec(),
                target,
            }
        }
    };
    Ok(Query { id, want, kind })
}

/// The exact bencoding of a decoded value: lists and dicts keep their input bytes, and
/// integers and strings re-encode to what the (canonical-only) decoder read.
pub fn raw_value(v: &Value<'_>) -> Vec<u8> {
    match v {
        Value::List(l) => l.raw.to_vec(),
        Value::Dict(d) => d.raw.to_vec(),
        other => {
            let mut out = Vec::new();
            Encoder::new(&mut out).value(other);
            out
        }
    }
}

fn decode_put(args: &Dict<'_>) -> Result<QueryKind, &'static str> {
    let token = args.get_bytes(b"token").ok_or("missing token")?;
    if token.len() > MAX_TOKEN_LEN {
        return Err("token too long");
    }
    let v = args.get(b"v").ok_or("missing v")?;
    let value = raw_value(v);
    let item = match args.get_bytes(b"k") {
        None => Item::Immutable(value),
        Some(k) => {
            let key: [u8; 32] = k.try_into().map_err(|_| "k is not 32 bytes")?;
            let sig: [u8; 64] = args
                .get_bytes(b"sig")
                .ok_or("missing sig")?
                .try_into()
                .map_err(|_| "sig is not 64 bytes")?;
            let seq = args.get_int(b"seq").ok_or("missing seq")?;
            // Longer salts are refused with BEP 44's own error (207) by the core; this
            // only bounds what is kept.
            let salt = args.get_bytes(b"salt").unwrap_or_default();
            if salt.len() > 4 * crate::item::MAX_SALT_LEN {
                return Err("salt too long");
            }
            Item::Mutable(MutableItem {
                key,
                salt: salt.to_vec(),
                seq,
                value,
                sig,
            })
        }
    };
    Ok(QueryKind::Put {
        token: token.to_vec(),
        item,
        cas: args.get_int(b"cas"),
    })
}

fn decode_response(dict: &Dict<'_>) -> Result<Response, DecodeError> {
    let r = dict
        .get_dict(b"r")
        .ok_or(DecodeError::Invalid("response without r"))?;
    let id = get_id(r, b"id").ok_or(DecodeError::Invalid("response without a valid id"))?;
    let with_nodes = r.get_bytes(b"nodes").is_some();
    let nodes = r
        .get_bytes(b"nodes")
        .map(|b| decode_nodes(b, 26))
        .unwrap_or_default();
    let nodes6 = r
        .get_bytes(b"nodes6")
        .map(|b| decode_nodes(b, 38))
        .unwrap_or_default();
    let values = match r.get(b"values") {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| v.as_bytes().and_then(decode_compact_addr))
            .filter(|a| a.port() != 0)
            .collect(),
        _ => Vec::new(),
    };
    let token = r
        .get_bytes(b"token")
        .filter(|t| t.len() <= MAX_TOKEN_LEN)
        .map(<[u8]>::to_vec);
    let samples = r.get_bytes(b"samples").map(|b| {
        b.chunks_exact(20)
            .filter_map(Id::from_slice)
            .collect::<Vec<_>>()
    });
    Ok(Response {
        id,
        with_nodes,
        nodes,
        nodes6,
        values,
        token,
        samples,
        interval: r.get_int(b"interval"),
        num: r.get_int(b"num"),
        value: r
            .get(b"v")
            .map(raw_value)
            .filter(|v| v.len() <= crate::item::MAX_VALUE_LEN),
        key: r.get_bytes(b"k").and_then(|k| k.try_into().ok()),
        seq: r.get_int(b"seq"),
        sig: r.get_bytes(b"sig").and_then(|k| k.try_into().ok()),
    })
}

fn decode_error(dict: &Dict<'_>) -> Result<KrpcError, DecodeError> {
    let list = dict
        .get_list(b"e")
        .ok_or(DecodeError::Invalid("error without e list"))?;
    let code = list
        .items
        .first()
        .and_then(Value::as_int)
        .ok_or(DecodeError::Invalid("error without a code"))?;
    let message = list
        .items
        .get(1)
        .and_then(Value::as_bytes)
        .map(|m| m[..m.len().min(256)].to_vec())
        .unwrap_or_default();
    Ok(KrpcError { code, message })
}

// ---------------------------------------------------------------------------------------
// encoding

impl Message {
    /// Appends the bencoded message to `out` (keys sorted at every level).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Encoder::new(out);
        e.begin_dict();
        match &self.body {
            Body::Query(q) => {
                e.key(b"a");
                encode_query_args(&mut e, q);
            }
            Body::Error(err) => {
                e.key(b"e")
                    .begin_list()
                    .int(err.code)
                    .bytes(&err.message)
                    .end();
            }
            Body::Response(_) => {}
        }
        if let Some(ip) = &self.ip {
            e.key(b"ip").bytes(&compact_addr(ip));
        }
        if let Body::Query(q) = &self.body {
            e.key(b"q").bytes(q.kind.method());
        }
        if let Body::Response(r) = &self.body {
            e.key(b"r");
            encode_response(&mut e, r);
        }
        if self.ro {
            e.key(b"ro").int(1);
        }
        e.key(b"t").bytes(&self.t);
        if let Some(v) = &self.v {
            e.key(b"v").bytes(v);
        }
        let y: &[u8] = match self.body {
            Body::Query(_) => b"q",
            Body::Response(_) => b"r",
            Body::Error(_) => b"e",
        };
        e.key(b"y").bytes(y);
        e.end();
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }
}

fn encode_query_args(e: &mut Encoder<'_>, q: &Query) {
    e.begin_dict();
    // Keys sorted: a put's `cas`, `id`, `k`, `salt`, `seq`, `sig`, `token`, `v`.
    if let QueryKind::Put { cas: Some(cas), .. } = &q.kind {
        e.key(b"cas").int(*cas);
    }
    e.key(b"id").bytes(&q.id.0);
    match &q.kind {
        QueryKind::Get { target, seq } => {
            if let Some(seq) = seq {
                e.key(b"seq").int(*seq);
            }
            e.key(b"target").bytes(&target.0);
        }
        QueryKind::Put { token, item, .. } => {
            if let Item::Mutable(m) = item {
                e.key(b"k").bytes(&m.key);
                if !m.salt.is_empty() {
                    e.key(b"salt").bytes(&m.salt);
                }
                e.key(b"seq").int(m.seq);
                e.key(b"sig").bytes(&m.sig);
            }
            e.key(b"token").bytes(token);
            e.key(b"v").raw(item.value());
        }
        QueryKind::Ping => {}
        QueryKind::FindNode { target }
        | QueryKind::SampleInfohashes { target }
        | QueryKind::Other { target, .. } => {
            e.key(b"target").bytes(&target.0);
        }
        QueryKind::GetPeers { info_hash } => {
            e.key(b"info_hash").bytes(&info_hash.0);
        }
        QueryKind::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            if *implied_port {
                e.key(b"implied_port").int(1);
            }
            e.key(b"info_hash").bytes(&info_hash.0);
            e.key(b"port").int(*port as i64);
            e.key(b"token").bytes(token);
        }
    }
    if !q.want.is_empty() {
        e.key(b"want").begin_list();
        if q.want.n4 {
            e.bytes(b"n4");
        }
        if q.want.n6 {
            e.bytes(b"n6");
        }
        e.end();
    }
    e.end();
}

fn encode_response(e: &mut Encoder<'_>, r: &Response) {
    e.begin_dict();
    e.key(b"id").bytes(&r.id.0);
    if let Some(interval) = r.interval {
        e.key(b"interval").int(interval);
    }
    if let Some(k) = &r.key {
        e.key(b"k").bytes(k);
    }
    // Compact node lists go straight into the datagram (this is the hot path of every
    // find_node and get_peers reply).
    let v4 = || r.nodes.iter().filter(|n| is_v4(&n.addr));
    let count = v4().count();
    if count > 0 || r.with_nodes {
        e.key(b"nodes")
            .bytes_with(count * 26, |out| push_nodes(out, v4()));
    }
    let v6 = || r.nodes6.iter().filter(|n| !is_v4(&n.addr));
    let count = v6().count();
    if count > 0 {
        e.key(b"nodes6")
            .bytes_with(count * 38, |out| push_nodes(out, v6()));
    }
    if let Some(num) = r.num {
        e.key(b"num").int(num);
    }
    if let Some(samples) = &r.samples {
        let mut b = Vec::with_capacity(samples.len() * 20);
        for s in samples {
            b.extend_from_slice(&s.0);
        }
        e.key(b"samples").bytes(&b);
    }
    if let Some(seq) = r.seq {
        e.key(b"seq").int(seq);
    }
    if let Some(sig) = &r.sig {
        e.key(b"sig").bytes(sig);
    }
    if let Some(token) = &r.token {
        e.key(b"token").bytes(token);
    }
    if let Some(v) = &r.value {
        e.key(b"v").raw(v);
    }
    if !r.values.is_empty() {
        e.key(b"values").begin_list();
        // One scratch buffer for all values instead of an allocation each.
        let mut buf = Vec::with_capacity(18);
        for v in &r.values {
            buf.clear();
            push_compact_addr(&mut buf, v);
            e.bytes(&buf);
        }
        e.end();
    }
    e.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &[u8; 20]) -> Id {
        Id(*s)
    }

    fn round_trip(bytes: &[u8]) -> Message {
        let m = Message::decode(bytes).unwrap();
        assert_eq!(m.to_bytes(), bytes, "re-encoding must be byte-identical");
        m
    }

    // The examples in BEP 5, byte for byte.
    #[test]
    fn bep5_ping() {
        let q = round_trip(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe");
        assert_eq!(
            q.body,
            Body::Query(Query {
                id: id(b"abcdefghij0123456789"),
                want: Want::default(),
                kind: QueryKind::Ping
            })
        );
        let r = round_trip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
        match r.body {
            Body::Response(r) => assert_eq!(r.id, id(b"mnopqrstuvwxyz123456")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bep5_find_node_and_get_peers_queries() {
        let q = round_trip(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        );
        assert!(
            matches!(q.body, Body::Query(Query { kind: QueryKind::FindNode { target }, .. }) if target == id(b"mnopqrstuvwxyz123456"))
        );
        let q = round_trip(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
        );
        assert!(matches!(
            q.body,
            Body::Query(Query {
                kind: QueryKind::GetPeers { .. },
                ..
            })
        ));
    }

    #[test]
    fn bep5_get_peers_response_with_values() {
        let r = round_trip(
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        );
        let Body::Response(r) = r.body else { panic!() };
        assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[0], "97.120.106.101:11893".parse().unwrap());
    }

    #[test]
    fn bep5_announce_peer_with_implied_port() {
        let q = round_trip(
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        );
        let Body::Query(Query {
            kind:
                QueryKind::AnnouncePeer {
                    port,
                    implied_port,
                    token,
                    ..
                },
            ..
        }) = q.body
        else {
            panic!()
        };
        assert_eq!(
            (port, implied_port, &token[..]),
            (6881, true, &b"aoeusnth"[..])
        );
        round_trip(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        );
    }

    #[test]
    fn bep5_error() {
        let e = round_trip(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee");
        assert_eq!(
            e.body,
            Body::Error(KrpcError {
                code: 201,
                message: b"A Generic Error Ocurred".to_vec()
            })
        );
    }

    #[test]
    fn nodes_and_nodes6_and_envelope_extensions() {
        let n4 = NodeInfo {
            id: Id([1; 20]),
            addr: "1.2.3.4:5".parse().unwrap(),
        };
        let n6 = NodeInfo {
            id: Id([2; 20]),
            addr: "[2001:db8::1]:6881".parse().unwrap(),
        };
        let m = Message {
            t: vec![0, 1],
            v: Some(b"SW01".to_vec()),
            ip: Some("9.8.7.6:1234".parse().unwrap()),
            ro: true,
            body: Body::Response(Response {
                id: Id([3; 20]),
                with_nodes: true,
                nodes: vec![n4],
                nodes6: vec![n6],
                values: vec!["[::1]:80".parse().unwrap(), "127.0.0.2:1".parse().unwrap()],
                token: Some(b"tok".to_vec()),
                samples: Some(vec![Id([4; 20]), Id([5; 20])]),
                interval: Some(21600),
                num: Some(2),
                value: Some(b"d1:ai1ee".to_vec()),
                key: Some([6; 32]),
                seq: Some(7),
                sig: Some([8; 64]),
            }),
        };
        let bytes = m.to_bytes();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        // Keys appear in sorted order at the top level.
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> = ["2:ip", "1:r", "2:ro", "1:t", "1:v4:", "1:y"]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn want_is_parsed_and_written() {
        let q = round_trip(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n42:n6ee1:q9:find_node1:t2:aa1:y1:qe",
        );
        let Body::Query(q) = q.body else { panic!() };
        assert_eq!(q.want, Want { n4: true, n6: true });
    }

    #[test]
    fn unknown_method_with_target_is_like_find_node() {
        let m = Message::decode(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q4:vote1:t2:aa1:y1:qe",
        )
        .unwrap();
        let Body::Query(Query {
            kind: QueryKind::Other { method, target },
            ..
        }) = m.body
        else {
            panic!()
        };
        assert_eq!(
            (&method[..], target),
            (&b"vote"[..], id(b"mnopqrstuvwxyz123456"))
        );
    }

    #[test]
    fn bad_queries_are_reported_with_their_tid() {
        // Unknown method without target: 204-worthy, reported as a bad query.
        let e = Message::decode(b"d1:ad2:id20:abcdefghij0123456789e1:q3:foo1:t2:xy1:y1:qe")
            .unwrap_err();
        assert!(
            matches!(e, DecodeError::BadQuery { ref t, reason: "unknown method" } if t == b"xy")
        );
        // Short id.
        let e = Message::decode(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe").unwrap_err();
        assert!(matches!(e, DecodeError::BadQuery { .. }));
        // Port out of range.
        let e = Message::decode(b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe").unwrap_err();
        assert!(matches!(
            e,
            DecodeError::BadQuery {
                reason: "port out of range",
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_invalid_not_bad_query() {
        for g in [
            &b""[..],
            b"i1e",
            b"le",
            b"d1:y1:qe",
            b"d1:t2:aa1:y1:xe",
            b"d1:t2:aa1:y1:re",
            b"\xff\x00",
        ] {
            assert!(
                !matches!(
                    Message::decode(g),
                    Ok(_) | Err(DecodeError::BadQuery { .. })
                ),
                "{g:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_tolerated() {
        let m = Message::decode(
            b"d1:ad2:id20:abcdefghij01234567895:extrali1ei2ee6:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa5:zzzzzd1:ai1ee1:y1:qe",
        )
        .unwrap();
        assert!(matches!(
            m.body,
            Body::Query(Query {
                kind: QueryKind::FindNode { .. },
                ..
            })
        ));
    }

    #[test]
    fn compact_node_info_sizes() {
        let n4 = NodeInfo {
            id: Id([7; 20]),
            addr: "1.2.3.4:6881".parse().unwrap(),
        };
        let n6 = NodeInfo {
            id: Id([8; 20]),
            addr: "[::2]:6881".parse().unwrap(),
        };
        assert_eq!(encode_nodes([&n4]).len(), 26);
        assert_eq!(encode_nodes([&n6]).len(), 38);
        assert_eq!(decode_nodes(&encode_nodes([&n4, &n4]), 26), vec![n4, n4]);
        assert_eq!(decode_nodes(&encode_nodes([&n6]), 38), vec![n6]);
        // Mapped addresses are written as IPv4.
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:9".parse().unwrap();
        assert_eq!(compact_addr(&mapped), vec![1, 2, 3, 4, 0, 9]);
    }
}
