//! `swarm add` and `swarm list`: talk to a running `swarm daemon` over its HTTP API.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::progress::human_bytes;

/// Where the daemon is and how to get in.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The daemon's API address (its --api).
    #[arg(long, env = "SWARM_API", default_value = "127.0.0.1:9091")]
    pub api: String,
    /// The daemon's API token, if it has one.
    #[arg(long, env = "SWARM_API_TOKEN", value_name = "TOKEN")]
    pub api_token: Option<String>,
}

/// Arguments of `swarm add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Magnet links, info-hashes or .torrent files (read here and sent to the daemon).
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Directory under the daemon's output directory to put the data in.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<String>,
    /// Add it paused.
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Arguments of `swarm list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> anyhow::Result<Value> {
    let auth = api.api_token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", ctype)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    // `http://127.0.0.1:9091/` is taken for `127.0.0.1:9091` too.
    let addr = api
        .api
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let r =
        crate::http::request(addr, method, path, &headers, body, TIMEOUT).with_context(|| {
            format!(
                "cannot reach the daemon at {} (is `swarm daemon` running?)",
                api.api
            )
        })?;
    let v: Value = serde_json::from_slice(&r.body).with_context(|| {
        format!(
            "the daemon answered {} with no JSON: {}",
            r.status,
            r.text()
        )
    })?;
    if !(200..300).contains(&r.status) {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("the daemon refused ({}): {msg}", r.status);
    }
    Ok(v)
}

pub fn add(args: AddArgs) -> anyhow::Result<()> {
    for t in &args.targets {
        let t = t.trim();
        let is_magnet = t.len() >= 7 && t[..7].eq_ignore_ascii_case("magnet:");
        let v = if is_magnet || (!Path::new(t).exists() && (t.len() == 40 || t.len() == 32)) {
            let magnet = if is_magnet {
                t.to_string()
            } else {
                format!("magnet:?xt=urn:btih:{t}")
            };
            let body = serde_json::json!({
                "magnet": magnet,
                "dir": args.dir,
                "paused": args.paused,
            });
            call(
                &args.api,
                "POST",
                "/api/torrents",
                "application/json",
                body.to_string().as_bytes(),
            )?
        } else {
            let bytes = std::fs::read(t).with_context(|| {
                format!("{t:?} is not a magnet link, an info-hash or a readable .torrent file")
            })?;
            let mut path = format!("/api/torrents?paused={}", args.paused);
            if let Some(d) = &args.dir {
                path.push_str("&dir=");
                path.push_str(&percent_encode(d));
            }
            call(&args.api, "POST", &path, "application/x-bittorrent", &bytes)?
        };
        println!(
            "{}",
            v.get("info_hash").and_then(Value::as_str).unwrap_or("?")
        );
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

pub fn list(args: ListArgs) -> anyhow::Result<()> {
    let v = call(&args.api, "GET", "/api/torrents", "application/json", b"")?;
    if args.json {
        println!("{v}");
        return Ok(());
    }
    let empty = Vec::new();
    let all = v
        .get("torrents")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    println!(
        "{:>3}  {:<40}  {:>6}  {:>10}  {:>10}  {:>10}  {:>5}  {:<11}  NAME",
        "ID", "INFO-HASH", "DONE", "SIZE", "DOWN/s", "UP/s", "PEERS", "STATE"
    );
    for t in all {
        let n = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        println!(
            "{:>3}  {:<40}  {:>5.1}%  {:>10}  {:>10}  {:>10}  {:>5}  {:<11}  {}",
            n("id") as u64,
            s("info_hash"),
            100.0 * n("progress"),
            human_bytes(n("total_bytes") as u64),
            human_bytes(n("download_rate") as u64),
            human_bytes(n("upload_rate") as u64),
            n("peers_connected") as u64,
            s("state"),
            s("name"),
        );
    }
    Ok(())
}
