//! `swarm seed`: share a file, a directory or a .torrent: verify the data, print the magnet
//! link, announce on the DHT (and keep announcing), serve pieces and metadata.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use wire::create::{create_torrent, CreateOptions};
use wire::magnet::Magnet;
use wire::metainfo::Metainfo;
use wire::session::Source;

use super::common::{interrupted, runtime, NetArgs};
use crate::client::Client;
use crate::progress::Progress;

/// Arguments of `swarm seed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories to share, or .torrent files whose data is under --data: all
    /// of them are served on one port.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// With a .torrent: the directory holding its file or folder (default: the .torrent's
    /// own directory).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Piece length when making the torrent (see `swarm create`).
    #[arg(long, value_name = "N", value_parser = super::create::parse_size)]
    pub piece_length: Option<u64>,
    /// Also write the torrent made from PATH to this file.
    #[arg(long, value_name = "FILE.torrent")]
    pub torrent_out: Option<PathBuf>,
    /// BEP 46: keep the mutable DHT item of this key (from `swarm dht keygen`) pointing at
    /// PATH's torrent, and print its `xs=urn:btpk:` magnet: whoever fetches that magnet
    /// gets the latest torrent published under the key.
    #[arg(long, value_name = "KEYFILE")]
    pub publish: Option<PathBuf>,
    /// The salt of the published item (one key, many items).
    #[arg(long, default_value = "", requires = "publish")]
    pub publish_salt: String,
    #[command(flatten)]
    pub net: NetArgs,
}

/// A torrent to seed and the directory its data is in.
pub struct Prepared {
    pub metainfo: Metainfo,
    pub data_dir: PathBuf,
}

/// Loads a .torrent, or makes one of a file or directory with the code `swarm create` uses.
pub fn prepare(
    path: &Path,
    data: Option<&Path>,
    piece_length: Option<u64>,
) -> anyhow::Result<Prepared> {
    let is_torrent_file = path.extension().is_some_and(|e| e == "torrent") && path.is_file();
    if is_torrent_file {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let metainfo = Metainfo::from_bytes(&bytes)
            .with_context(|| format!("{}: not a valid .torrent", path.display()))?;
        let data_dir = match data {
            Some(d) => d.to_path_buf(),
            None => parent_dir(path),
        };
        return Ok(Prepared { metainfo, data_dir });
    }
    if data.is_some() {
        bail!("--data only applies when PATH is a .torrent file");
    }
    let opts = CreateOptions {
        piece_length,
        created_by: Some(concat!("swarm/", env!("CARGO_PKG_VERSION")).to_string()),
        ..CreateOptions::default()
    };
    eprintln!("hashing {} ...", path.display());
    let created = create_torrent(path, &opts, &|_| {})
        .with_context(|| format!("cannot make a torrent of {}", path.display()))?;
    Ok(Prepared {
        metainfo: created.metainfo,
        data_dir: parent_dir(path),
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The magnet link of a torrent: info-hash and name.
pub fn magnet_of(mi: &Metainfo) -> Magnet {
    let mut m = Magnet::new(mi.info_hash);
    m.display_name = Some(mi.info.name.clone());
    m
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.torrent_out.is_some() && args.paths.len() > 1 {
        bail!("--torrent-out takes one PATH");
    }
    if args.publish.is_some() && args.paths.len() > 1 {
        bail!("--publish takes one PATH");
    }
    if args.publish.is_some() && args.net.no_dht {
        bail!("--publish needs the DHT");
    }
    if args.publish_salt.len() > dht::item::MAX_SALT_LEN {
        bail!(
            "--publish-salt is longer than {} bytes",
            dht::item::MAX_SALT_LEN
        );
    }
    let publish_key = args
        .publish
        .as_deref()
        .map(super::dht::read_key)
        .transpose()?;
    let mut prepared = Vec::new();
    for path in &args.paths {
        prepared.push(prepare(path, args.data.as_deref(), args.piece_length)?);
    }
    if let Some(out) = &args.torrent_out {
        let bytes = torrent_bytes(&prepared[0].metainfo);
        wire::storage::write_atomic(out, &bytes)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    runtime()?.block_on(serve(args, prepared, publish_key))
}

/// A .torrent file for a metainfo: its original info dictionary, nothing else.
fn torrent_bytes(mi: &Metainfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(mi.raw_info.len() + 16);
    bencode::Encoder::new(&mut out)
        .begin_dict()
        .key(b"info")
        .raw(&mi.raw_info)
        .end();
    out
}

async fn serve(
    args: Args,
    prepared: Vec<Prepared>,
    publish_key: Option<ed25519_dalek::SigningKey>,
) -> anyhow::Result<()> {
    let (net, hints) = args.net.to_config().await?;
    let mut items = Vec::new();
    let mut described = Vec::new();
    let mut magnets = Vec::new();
    for p in prepared {
        magnets.push(magnet_of(&p.metainfo));
        described.push((p.metainfo.info.name.clone(), p.data_dir.clone()));
        items.push((
            Source::Metainfo(Box::new(p.metainfo)),
            p.data_dir,
            hints.clone(),
        ));
    }
    let mut client = Client::start_many(items, &net).await?;
    // The magnet links are the lines on stdout, so scripts can capture them.
    for m in &magnets {
        println!("{m}");
    }
    if let Some(key) = publish_key {
        let p = crate::bep46::Publisher::new(
            key,
            args.publish_salt.clone().into_bytes(),
            magnets[0].info_hash,
            std::time::Instant::now(),
        );
        let mut follow = Magnet::new(wire::infohash::InfoHash::default());
        follow.mutable = Some(p.source());
        follow.display_name = magnets[0].display_name.clone();
        println!("{follow}");
        client.publish(p);
    }
    for (name, dir) in &described {
        eprintln!("seeding {name} from {} on {}", dir.display(), client.listen);
    }
    let title = match &described[..] {
        [(name, _)] => name.clone(),
        many => format!("{} torrents", many.len()),
    };
    let mut progress = Progress::new(&title);
    let outcome = client.run(&mut progress, true, interrupted()).await;
    client.shutdown().await;
    outcome.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_makes_or_loads_the_same_torrent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("payload.bin");
        std::fs::write(&file, vec![7u8; 100_000]).unwrap();
        let made = prepare(&file, None, None).unwrap();
        assert_eq!(made.data_dir, dir.path());
        let tfile = dir.path().join("payload.torrent");
        std::fs::write(&tfile, torrent_bytes(&made.metainfo)).unwrap();
        let loaded = prepare(&tfile, None, None).unwrap();
        assert_eq!(loaded.metainfo.info_hash, made.metainfo.info_hash);
        assert!(magnet_of(&loaded.metainfo)
            .to_string()
            .starts_with(&format!(
                "magnet:?xt=urn:btih:{}",
                made.metainfo.info_hash.to_hex()
            )));
        assert!(prepare(&file, Some(dir.path()), None).is_err());
    }
}
