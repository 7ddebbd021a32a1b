//! `swarm dht`: BEP 44 items in the DHT from the command line. `put` stores a value
//! (immutable, under its hash, or mutable, signed with a key file, under the key and a
//! salt) and prints its target; `get` prints the value's bencoding; `keygen` makes a key.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dht::item::{self, Item, MutableItem};
use dht::node::ItemUpdate;
use dht::Id;

use crate::client::NetConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DhtCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DhtCommand {
    /// Store VALUE in the DHT (BEP 44) and print its target (hex). Without --key, an
    /// immutable item under the SHA-1 of its bencoding; with --key, a mutable item under
    /// the key and --salt, one version above the newest found (or --seq).
    Put(PutArgs),
    /// Fetch an item and print its value's bencoding (e.g. `5:hello`): an immutable item
    /// by TARGET, or a mutable one by --pubkey and --salt (its newest version).
    Get(GetArgs),
    /// Make a key for mutable items: writes its secret (hex) to FILE, prints the public key.
    Keygen {
        /// Where the secret key goes (created with mode 0600; never overwritten).
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// The value: stored as a bencoded string unless --bencoded.
    pub value: String,
    /// VALUE is already bencoded (e.g. `li1ei2ee`).
    #[arg(long)]
    pub bencoded: bool,
    /// Key file (from `swarm dht keygen`): store a mutable item signed with it.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Salt of a mutable item (one key can own many items).
    #[arg(long, default_value = "", requires = "key")]
    pub salt: String,
    /// Sequence number of a mutable item (default: one above the newest found).
    #[arg(long, requires = "key")]
    pub seq: Option<i64>,
    #[command(flatten)]
    pub net: DhtNetArgs,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Target (40 hex digits) of an immutable item.
    #[arg(required_unless_present = "pubkey", conflicts_with = "pubkey")]
    pub target: Option<String>,
    /// Public key (64 hex digits) of a mutable item.
    #[arg(long)]
    pub pubkey: Option<String>,
    /// Salt of the mutable item.
    #[arg(long, default_value = "", requires = "pubkey")]
    pub salt: String,
    #[command(flatten)]
    pub net: DhtNetArgs,
}

/// Where the one-shot DHT node runs.
#[derive(clap::Args, Debug)]
pub struct DhtNetArgs {
    /// UDP port of the DHT node (0: any free port).
    #[arg(long, env = "SWARM_PORT", default_value_t = 0)]
    pub port: u16,
    /// IP address to bind.
    #[arg(long, env = "SWARM_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// DHT bootstrap node HOST:PORT (repeatable). Default: the public routers.
    #[arg(
        long = "bootstrap",
        env = "SWARM_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub bootstrap: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match args.command {
        DhtCommand::Keygen { file } => keygen(&file),
        DhtCommand::Put(a) => rt.block_on(put(a)),
        DhtCommand::Get(a) => rt.block_on(get(a)),
    }
}

fn keygen(file: &Path) -> anyhow::Result<()> {
    let seed: [u8; 32] = rand::random();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(file)
        .with_context(|| format!("cannot create key file {}", file.display()))?;
    writeln!(f, "{}", hex::encode(seed))
        .with_context(|| format!("cannot write key file {}", file.display()))?;
    println!(
        "{}",
        hex::encode(item::signing_key(&seed).verifying_key().to_bytes())
    );
    Ok(())
}

pub fn read_key(file: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let bytes =
        std::fs::read(file).with_context(|| format!("cannot read key file {}", file.display()))?;
    let seed = item::parse_key_file(&bytes).with_context(|| {
        format!(
            "{} is not a key file (64 hex digits, from `swarm dht keygen`)",
            file.display()
        )
    })?;
    Ok(item::signing_key(&seed))
}

/// A DHT node on the given address, joined (at least one node answered).
async fn join(net: &DhtNetArgs) -> anyhow::Result<dht::Node> {
    let specs: Vec<String> = if net.bootstrap.is_empty() {
        dht::DEFAULT_ROUTERS.iter().map(|s| s.to_string()).collect()
    } else {
        net.bootstrap.clone()
    };
    let bootstrap = crate::addr::resolve_all(&specs).await?;
    let cfg = NetConfig {
        bind_ip: net.bind,
        port: net.port,
        bootstrap,
        bootstrap_names: Vec::new(),
        no_dht: false,
        dht_state: None,
        max_peers: 0,
        resume_dir: None,
        full_recheck: false,
        limit_down: 0,
        limit_up: 0,
        transport: wire::session::TransportPolicy::Both,
    };
    join_node(&cfg, Duration::from_secs(net.timeout.min(20))).await
}

/// A one-shot DHT node for `cfg`'s address and bootstrap nodes, once at least one node
/// answered. It is read-only (BEP 43): it asks but answers nothing, so that the nodes it
/// asks do not keep it in their tables and hand it out after it is gone.
pub async fn join_node(cfg: &NetConfig, limit: Duration) -> anyhow::Result<dht::Node> {
    let core = dht::Config {
        read_only: true,
        ..cfg.dht_core_config()
    };
    let mut ncfg = dht::NodeConfig::new(SocketAddr::new(cfg.bind_ip, cfg.port), core);
    ncfg.state_file = cfg.dht_state.clone();
    let node = dht::Node::bind(ncfg)
        .await
        .context("cannot start the DHT node")?;
    let deadline = Instant::now() + limit;
    loop {
        let s = node.stats().await;
        if s.nodes4 + s.nodes6 > 0 {
            // The first replies' referrals land in the table next: until it holds k nodes,
            // or 300 ms.
            let settle = Instant::now() + Duration::from_millis(300);
            while Instant::now() < settle {
                let s = node.stats().await;
                if s.nodes4 + s.nodes6 >= 8 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(node);
        }
        if Instant::now() >= deadline {
            node.shutdown().await;
            let list: Vec<String> = cfg.bootstrap.iter().map(|a| a.to_string()).collect();
            bail!(
                "could not join the DHT: no bootstrap node answered ({})",
                list.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects a request's updates until it ends or the deadline passes.
async fn collect(mut s: dht::node::ItemStream, timeout: Duration) -> Vec<ItemUpdate> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Some(u) = s.next().await {
            out.push(u);
        }
    })
    .await;
    out
}

async fn put(a: PutArgs) -> anyhow::Result<()> {
    let value = if a.bencoded {
        a.value.clone().into_bytes()
    } else {
        let mut v = format!("{}:", a.value.len()).into_bytes();
        v.extend_from_slice(a.value.as_bytes());
        v
    };
    item::validate_value(&value).map_err(|e| anyhow::anyhow!("{e}"))?;
    let timeout = Duration::from_secs(a.net.timeout);
    let key = a.key.as_deref().map(read_key).transpose()?;
    let node = join(&a.net).await?;
    let (item, cas) = match key {
        None => (Item::Immutable(value), None),
        Some(key) => {
            let salt = a.salt.as_bytes();
            if salt.len() > item::MAX_SALT_LEN {
                bail!("the salt is longer than {} bytes", item::MAX_SALT_LEN);
            }
            let pk = key.verifying_key().to_bytes();
            let current = newest(collect(node.get_mutable(pk, salt, None), timeout).await);
            let current_seq = current.as_ref().map(|m| m.seq);
            let seq = match (a.seq, current_seq) {
                (Some(s), _) => s,
                (None, Some(c)) => c.checked_add(1).context("sequence number overflow")?,
                (None, None) => 1,
            };
            (
                Item::Mutable(MutableItem::sign(&key, salt, seq, &value)),
                current_seq,
            )
        }
    };
    let target = item.target();
    let updates = collect(node.put_item(item, cas), timeout).await;
    node.shutdown().await;
    match updates.iter().find_map(|u| match u {
        ItemUpdate::Stored { sent, acked } => Some((*sent, *acked)),
        _ => None,
    }) {
        Some((sent, acked)) if acked > 0 => {
            eprintln!("stored on {acked} of {sent} nodes");
            println!("{}", hex::encode(target.0));
            Ok(())
        }
        Some((sent, _)) => bail!("no node stored the item (asked {sent})"),
        None => bail!("the put did not finish within {timeout:?}"),
    }
}

/// The newest mutable version among updates.
fn newest(updates: Vec<ItemUpdate>) -> Option<MutableItem> {
    updates
        .into_iter()
        .filter_map(|u| match u {
            ItemUpdate::Found(Item::Mutable(m)) => Some(m),
            _ => None,
        })
        .max_by_key(|m| m.seq)
}

async fn get(a: GetArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(a.net.timeout);
    let value = match (&a.target, &a.pubkey) {
        (Some(t), _) => {
            let target = Id::from_hex(t)
                .with_context(|| format!("{t:?} is not a target (40 hex digits)"))?;
            let node = join(&a.net).await?;
            let mut s = node.get_immutable(target);
            let found = tokio::time::timeout(timeout, async {
                while let Some(u) = s.next().await {
                    if let ItemUpdate::Found(item) = u {
                        return Some(item);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten();
            node.shutdown().await;
            match found {
                Some(item) => item.value().to_vec(),
                None => bail!("no item found under {t}"),
            }
        }
        (None, Some(pk)) => {
            let key = item::parse_hex32(pk)
                .with_context(|| format!("{pk:?} is not a public key (64 hex digits)"))?;
            let node = join(&a.net).await?;
            let updates = collect(node.get_mutable(key, a.salt.as_bytes(), None), timeout).await;
            node.shutdown().await;
            match newest(updates) {
                Some(m) => {
                    eprintln!("seq {}", m.seq);
                    m.value
                }
                None => bail!("no item found for key {pk} and salt {:?}", a.salt),
            }
        }
        (None, None) => bail!("give a TARGET or --pubkey"),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&value)?;
    out.write_all(b"\n")?;
    Ok(())
}
