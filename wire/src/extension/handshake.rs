//! The BEP 10 extended handshake (extension message id 0).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bencode::{Encoder, Limits, Value};

use super::ExtensionError;

/// Most `m` entries kept from a peer's handshake (real clients send a handful).
const MAX_EXTENSIONS: usize = 64;
/// Longest extension name kept.
const MAX_NAME_LEN: usize = 64;
/// Longest client version string kept (characters).
const MAX_CLIENT_LEN: usize = 64;

/// A peer's (or our) extended handshake. Parsing is tolerant: fields of the wrong type or
/// out of range are ignored, as BEP 10 asks, so one odd field never costs a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// `m`: extension name to the message id the sender wants to *receive* it under.
    /// Id 0 means "disabled" (a later handshake may turn an extension off).
    pub extensions: BTreeMap<String, u8>,
    /// `v`: client name and version.
    pub client: Option<String>,
    /// `p`: the sender's TCP listen port.
    pub listen_port: Option<u16>,
    /// `reqq`: how many outstanding requests the sender accepts.
    pub request_queue: Option<u32>,
    /// `yourip`: our address as the sender sees it.
    pub your_ip: Option<IpAddr>,
    /// `ipv4` / `ipv6`: the sender's own addresses.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// `metadata_size` (BEP 9): size of the info dictionary, when the sender has it.
    /// Any positive value is kept; the fetcher applies its own bound.
    pub metadata_size: Option<u64>,
    /// `upload_only` (BEP 21): the sender is a seed or partial seed.
    pub upload_only: bool,
}

impl ExtendedHandshake {
    /// The message id the peer wants for extension `name`, if enabled.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.extensions.get(name).copied().filter(|&id| id != 0)
    }

    /// Parses the payload of an extended message with id 0.
    pub fn parse(payload: &[u8]) -> Result<ExtendedHandshake, ExtensionError> {
        const WHAT: &str = "extended handshake";
        let limits = Limits {
            max_depth: 8,
            max_len: payload.len(),
        };
        let v = bencode::decode_prefix_with(payload, limits)
            .map_err(|source| ExtensionError::Bencode { what: WHAT, source })?
            .0;
        let Value::Dict(d) = v else {
            return Err(ExtensionError::NotADict { what: WHAT });
        };
        let mut hs = ExtendedHandshake::default();
        if let Some(m) = d.get_dict(b"m") {
            for (name, id) in m.entries.iter() {
                if hs.extensions.len() >= MAX_EXTENSIONS {
                    break;
                }
                let (Ok(name), Some(id)) = (std::str::from_utf8(name), id.as_int()) else {
                    continue;
                };
                if name.len() > MAX_NAME_LEN {
                    continue;
                }
                if let Ok(id) = u8::try_from(id) {
                    hs.extensions.insert(name.to_owned(), id);
                }
            }
        }
        hs.client = d.get_bytes(b"v").map(|b| {
            String::from_utf8_lossy(b)
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_CLIENT_LEN)
                .collect()
        });
        hs.listen_port = d
            .get_int(b"p")
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        hs.request_queue = d
            .get_int(b"reqq")
            .and_then(|q| u32::try_from(q).ok())
            .filter(|&q| q != 0);
        hs.your_ip = d.get_bytes(b"yourip").and_then(ip_from_bytes);
        hs.ipv4 = d
            .get_bytes(b"ipv4")
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Ipv4Addr::from);
        hs.ipv6 = d
            .get_bytes(b"ipv6")
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(Ipv6Addr::from);
        hs.metadata_size = d
            .get_int(b"metadata_size")
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&s| s > 0);
        hs.upload_only = d.get_int(b"upload_only").is_some_and(|u| u != 0);
        Ok(hs)
    }

    /// The bencoded payload (keys in sorted order, as BEP 3 requires).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let mut e = Encoder::new(&mut out);
        e.begin_dict();
        if let Some(ip) = self.ipv4 {
            e.key(b"ipv4").bytes(&ip.octets());
        }
        if let Some(ip) = self.ipv6 {
            e.key(b"ipv6").bytes(&ip.octets());
        }
        e.key(b"m").begin_dict();
        for (name, id) in &self.extensions {
            e.key(name.as_bytes()).int(*id as i64);
        }
        e.end();
        if let Some(size) = self.metadata_size {
            e.key(b"metadata_size")
                .int(size.min(i64::MAX as u64) as i64);
        }
        if let Some(port) = self.listen_port {
            e.key(b"p").int(port as i64);
        }
        if let Some(q) = self.request_queue {
            e.key(b"reqq").int(q as i64);
        }
        if self.upload_only {
            e.key(b"upload_only").int(1);
        }
        if let Some(v) = &self.client {
            e.key(b"v").str(v);
        }
        if let Some(ip) = self.your_ip {
            match ip.to_canonical() {
                IpAddr::V4(v4) => e.key(b"yourip").bytes(&v4.octets()),
                IpAddr::V6(v6) => e.key(b"yourip").bytes(&v6.octets()),
            };
        }
        e.end();
        out
    }

    /// The handshake `swarm` sends: ut_metadata and ut_pex under our ids.
    pub fn ours(
        listen_port: Option<u16>,
        metadata_size: Option<u64>,
        your_ip: Option<IpAddr>,
    ) -> Self {
        let mut extensions = BTreeMap::new();
        extensions.insert(super::UT_METADATA.to_owned(), super::OUR_UT_METADATA_ID);
        extensions.insert(super::UT_PEX.to_owned(), super::OUR_UT_PEX_ID);
        ExtendedHandshake {
            extensions,
            client: Some(concat!("swarm ", env!("CARGO_PKG_VERSION")).to_owned()),
            listen_port,
            request_queue: Some(500),
            your_ip,
            metadata_size,
            ..Default::default()
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(|a| IpAddr::V4(a.into())),
        16 => <[u8; 16]>::try_from(b).ok().map(|a| IpAddr::V6(a.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_libtorrent_style_handshake() {
        let payload = b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e4:reqqi500e11:upload_onlyi0e1:v18:libtorrent/2.0.8.06:yourip4:\x7f\x00\x00\x01e";
        let hs = ExtendedHandshake::parse(payload).unwrap();
        assert_eq!(hs.id_of("ut_metadata"), Some(2));
        assert_eq!(hs.id_of("ut_pex"), Some(1));
        assert_eq!(hs.id_of("nope"), None);
        assert_eq!(hs.metadata_size, Some(31235));
        assert_eq!(hs.request_queue, Some(500));
        assert_eq!(hs.client.as_deref(), Some("libtorrent/2.0.8.0"));
        assert_eq!(hs.your_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!hs.upload_only);
    }

    #[test]
    fn tolerant_of_odd_fields_strict_about_non_dicts() {
        let hs = ExtendedHandshake::parse(
            b"d1:md6:ut_pexi0e1:xi999e1:y3:abce13:metadata_sizei-5e1:pi70000e4:reqqi0e1:vi1e6:yourip3:abce",
        )
        .unwrap();
        assert_eq!(hs.id_of("ut_pex"), None, "0 means disabled");
        assert_eq!(hs.extensions.get("ut_pex"), Some(&0));
        assert!(
            !hs.extensions.contains_key("x"),
            "ids above 255 are dropped"
        );
        assert_eq!(hs.metadata_size, None);
        assert_eq!(hs.listen_port, None);
        assert_eq!(hs.request_queue, None);
        assert_eq!(hs.client, None);
        assert_eq!(hs.your_ip, None);
        assert!(ExtendedHandshake::parse(b"le").is_err());
        assert!(ExtendedHandshake::parse(b"").is_err());
        assert!(ExtendedHandshake::parse(b"d1:m").is_err());
        // Trailing bytes after the dictionary are tolerated (some clients pad).
        assert!(ExtendedHandshake::parse(b"dexx").is_ok());
    }

    #[test]
    fn round_trip_ours() {
        let mut hs = ExtendedHandshake::ours(Some(6881), Some(12345), Some("::1".parse().unwrap()));
        hs.ipv4 = Some(Ipv4Addr::new(127, 0, 0, 2));
        hs.upload_only = true;
        let bytes = hs.encode();
        bencode::decode(&bytes).expect("canonical bencode");
        assert_eq!(ExtendedHandshake::parse(&bytes).unwrap(), hs);
    }

    #[test]
    fn bounded_extension_count_and_client_length() {
        let mut p = b"d1:md".to_vec();
        for i in 0..500 {
            let name = format!("x{i:04}");
            p.extend_from_slice(format!("{}:{}i1e", name.len(), name).as_bytes());
        }
        p.extend_from_slice(b"e1:v300:");
        p.extend_from_slice(&[b'a'; 300]);
        p.push(b'e');
        let hs = ExtendedHandshake::parse(&p).unwrap();
        assert_eq!(hs.extensions.len(), MAX_EXTENSIONS);
        assert_eq!(hs.client.unwrap().len(), MAX_CLIENT_LEN);
    }
}
