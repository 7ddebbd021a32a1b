//! `swarm get`: fetch a torrent by magnet link, .torrent file or bare info-hash, with peers
//! from the DHT (and the magnet's `x.pe` hints), verifying every piece.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use wire::infohash::InfoHash;
use wire::magnet::{Magnet, PeerHint};
use wire::metainfo::Metainfo;
use wire::session::Source;

use super::common::{interrupted, runtime, NetArgs};
use crate::client::{contributions_report, Client, Outcome};
use crate::progress::{human_bytes, Progress};

/// Arguments of `swarm get`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Magnet links, .torrent files or info-hashes (40 hex digits or 32 base32): every
    /// one is fetched at once, all on one port.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Directory to write into (the torrent's file or folder goes in it).
    #[arg(short, long, env = "SWARM_OUTPUT", default_value = ".")]
    pub output: PathBuf,
    /// Keep seeding after the download completes, until Ctrl-C.
    #[arg(long)]
    pub seed: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Largest .torrent file read (the metainfo parser has its own, equal bound).
const MAX_TORRENT_FILE: u64 = 64 << 20;

/// What the user asked for, parsed.
pub enum Target {
    Magnet(Magnet),
    Torrent(Box<Metainfo>),
    InfoHash(InfoHash),
}

/// Parses a magnet link, a bare info-hash, or reads and parses a .torrent file.
pub fn parse_target(target: &str) -> anyhow::Result<Target> {
    let t = target.trim();
    if t.len() >= 7 && t[..7].eq_ignore_ascii_case("magnet:") {
        return Ok(Target::Magnet(Magnet::parse(t).context("bad magnet link")?));
    }
    if let Some(ih) = parse_info_hash(t) {
        // A file of that name wins, so a torrent called like a hash still loads.
        if !Path::new(t).exists() {
            return Ok(Target::InfoHash(ih));
        }
    }
    let path = Path::new(t);
    let meta = std::fs::metadata(path).with_context(|| {
        format!("{t:?} is not a magnet link, an info-hash or a readable .torrent file")
    })?;
    if !meta.is_file() {
        bail!("{t}: not a file");
    }
    if meta.len() > MAX_TORRENT_FILE {
        bail!(
            "{t}: {} is too large for a .torrent file",
            human_bytes(meta.len())
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {t}"))?;
    let mi = Metainfo::from_bytes(&bytes).with_context(|| format!("{t}: not a valid .torrent"))?;
    Ok(Target::Torrent(Box::new(mi)))
}

/// 40 hex digits or 32 base32 characters, through the magnet parser's rules.
fn parse_info_hash(s: &str) -> Option<InfoHash> {
    if s.len() != 40 && s.len() != 32 {
        return None;
    }
    Magnet::parse(&format!("magnet:?xt=urn:btih:{s}"))
        .ok()
        .map(|m| m.info_hash)
}

/// BEP 46: a magnet naming a mutable DHT item (`xs=urn:btpk:`) gets the info-hash of the
/// item's newest version (a `btih` in the magnet is kept if the lookup finds nothing).
async fn follow_mutable(net: &crate::client::NetConfig, m: &mut Magnet) -> anyhow::Result<()> {
    let Some(src) = m.mutable.clone() else {
        return Ok(());
    };
    if net.no_dht {
        if m.needs_resolving() {
            bail!("this magnet names its torrent through the DHT (xs=urn:btpk:), which --no-dht turns off");
        }
        return Ok(());
    }
    eprintln!(
        "looking up the torrent published under key {} in the DHT ...",
        wire_hex(&src.public_key)
    );
    let node = super::dht::join_node(net, std::time::Duration::from_secs(20)).await?;
    let found = crate::bep46::resolve(&node, &src, std::time::Duration::from_secs(30)).await;
    node.shutdown().await;
    match found {
        Ok((ih, seq)) => {
            eprintln!("version {seq} of the item names {}", ih.to_hex());
            m.info_hash = ih;
            Ok(())
        }
        Err(e) if !m.needs_resolving() => {
            tracing::warn!("{e:#}; fetching the magnet's own info-hash");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn wire_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Peer hints of a magnet link, host names resolved (failures logged and skipped).
pub async fn resolve_hints(hints: &[PeerHint]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for h in hints {
        match h {
            PeerHint::Addr(a) => out.push(*a),
            PeerHint::Host { host, port } => {
                match crate::addr::resolve(&format!("{host}:{port}")).await {
                    Ok(a) => out.extend(a),
                    Err(e) => tracing::warn!("skipping peer hint: {e:#}"),
                }
            }
        }
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    runtime()?.block_on(fetch(args, targets))
}

async fn fetch(args: Args, targets: Vec<Target>) -> anyhow::Result<()> {
    let (net, peers) = args.net.to_config().await?;
    let mut items = Vec::new();
    let mut labels = Vec::new();
    for target in targets {
        let mut hints = peers.clone();
        let (source, label) = match target {
            Target::Magnet(mut m) => {
                follow_mutable(&net, &mut m).await?;
                hints.extend(resolve_hints(&m.peers).await);
                let label = m
                    .display_name
                    .clone()
                    .unwrap_or_else(|| m.info_hash.to_hex());
                (Source::InfoHash(m.info_hash), label)
            }
            Target::InfoHash(ih) => (Source::InfoHash(ih), ih.to_hex()),
            Target::Torrent(mi) => {
                let label = mi.info.name.clone();
                (Source::Metainfo(mi), label)
            }
        };
        if net.no_dht && hints.is_empty() {
            bail!("--no-dht needs peers: give a magnet link with x.pe hints or --peer IP:PORT");
        }
        items.push((source, args.output.clone(), hints));
        labels.push(label);
    }
    let mut client = Client::start_many(items, &net).await?;
    for (t, label) in client.torrents.iter().zip(&labels) {
        eprintln!("fetching {label} ({}) on {}", t.info_hash, client.listen);
    }
    let title = match &labels[..] {
        [one] => one.clone(),
        many => format!("{} torrents", many.len()),
    };
    let mut progress = Progress::new(&title);
    let outcome = client.run(&mut progress, args.seed, interrupted()).await;
    let all = client.stats();
    client.shutdown().await;
    let outcome = outcome?;
    let complete = all.iter().all(|s| s.complete);
    if outcome == Outcome::Complete || complete {
        progress.finish("done");
    }
    // Who sent what: the bandwidth aggregation, per torrent.
    for (s, label) in all.iter().zip(&labels) {
        let from = s.contributions.iter().filter(|c| c.downloaded > 0).count();
        eprintln!(
            "{label}: {} in {} pieces{}, {from} peers sent data:",
            human_bytes(s.total_length),
            s.piece_count,
            if s.complete { " verified" } else { "" },
        );
        for line in contributions_report(s) {
            eprintln!("{line}");
        }
    }
    if complete {
        return Ok(());
    }
    let left: u64 = all.iter().map(|s| s.bytes_left).sum();
    let total: u64 = all.iter().map(|s| s.total_length).sum();
    bail!(
        "interrupted with {} of {} left (verified pieces are kept)",
        human_bytes(left),
        human_bytes(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        assert!(matches!(parse_target(hex), Ok(Target::InfoHash(h)) if h.to_hex() == hex));
        assert!(matches!(
            parse_target(&format!("magnet:?xt=urn:btih:{hex}&dn=x")),
            Ok(Target::Magnet(_))
        ));
        let e = parse_target("magnet:?xt=urn:btih:nothex").err().unwrap();
        assert!(format!("{e:#}").contains("bad magnet link"), "{e:#}");
        let e = parse_target("/definitely/not/here.torrent").err().unwrap();
        assert!(format!("{e:#}").contains("not a magnet link"), "{e:#}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.torrent");
        std::fs::write(&bad, b"d4:infoi1ee").unwrap();
        let e = parse_target(bad.to_str().unwrap()).err().unwrap();
        assert!(format!("{e:#}").contains("not a valid .torrent"), "{e:#}");
    }
}
