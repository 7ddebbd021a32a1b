//! `swarm daemon`: one long-running node (one session, one DHT node, one peer port) with
//! an HTTP JSON API, a web page, Prometheus metrics and a Transmission RPC subset. The
//! torrent list is saved in the state directory and restored at start; Ctrl-C or SIGTERM
//! saves it and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::common::{interrupted, runtime, NetArgs};
use crate::daemon::api::{self, AppState};
use crate::daemon::{Daemon, DaemonConfig};

/// Arguments of `swarm daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address of the HTTP API, web page and Transmission RPC. Another address than
    /// loopback needs a token (--api-token, or one is made and printed once).
    #[arg(long, env = "SWARM_API", default_value = "127.0.0.1:9091")]
    pub api: SocketAddr,
    /// Token every API request must carry (Authorization: Bearer TOKEN, or ?token=TOKEN).
    #[arg(long, env = "SWARM_API_TOKEN", value_name = "TOKEN")]
    pub api_token: Option<String>,
    /// Directory every torrent's data goes under (API paths never leave it).
    #[arg(short, long, env = "SWARM_OUTPUT", default_value = ".")]
    pub output: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(t) = &args.api_token {
        if t.len() < 8 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("--api-token must be at least 8 printable characters without spaces");
        }
    }
    runtime()?.block_on(serve(args))
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let token = match args.api_token.clone() {
        Some(t) => Some(t),
        None if args.api.ip().is_loopback() => None,
        None => {
            let t = random_hex(16);
            eprintln!(
                "swarm daemon: the API on {} is not loopback, so it needs a token; this one \
                 is printed once: {t}",
                args.api
            );
            Some(t)
        }
    };
    let (net, peers) = args.net.to_config().await?;
    let state_dir = crate::state::state_dir(args.net.state_dir.as_deref())?;
    // Bind the API first: a port in use fails before anything starts.
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", args.api))?;
    let api_addr = listener.local_addr().context("API address")?;
    let daemon = Daemon::start(DaemonConfig {
        net,
        peers,
        out_dir: args.output.clone(),
        state_dir,
    })
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = tokio::spawn(daemon.clone().run_housekeeping(stop_rx.clone()));
    let state = Arc::new(AppState {
        daemon: daemon.clone(),
        token,
        rpc_session_id: random_hex(24),
    });
    let mut server_stop = stop_rx;
    let mut server = tokio::spawn(api::serve(listener, state, async move {
        let _ = server_stop.changed().await;
    }));
    // Lines for people and scripts: where the API and the peers are.
    println!("api http://{api_addr}");
    println!("peers {}", daemon.listen_addr());
    eprintln!(
        "swarm daemon: API and web page on http://{api_addr}/, peers on {}, data under {}",
        daemon.listen_addr(),
        daemon.out_dir().display()
    );
    let ended = tokio::select! {
        _ = interrupted() => None,
        r = &mut server => Some(r),
    };
    let _ = stop_tx.send(true);
    let result = match ended {
        None => {
            // Open keep-alive connections (a browser tab) must not hold the exit up.
            if tokio::time::timeout(Duration::from_secs(3), &mut server)
                .await
                .is_err()
            {
                server.abort();
                let _ = server.await;
            }
            Ok(())
        }
        Some(Ok(Ok(()))) => Err(anyhow::anyhow!("the API server stopped")),
        Some(Ok(Err(e))) => Err(anyhow::anyhow!("the API server failed: {e}")),
        Some(Err(e)) => Err(anyhow::anyhow!("the API server failed: {e}")),
    };
    let _ = housekeeping.await;
    daemon.shutdown().await;
    eprintln!("swarm daemon: torrent list saved; stopped");
    result
}
