//! `swarm`: a trackerless, DHT-first BitTorrent node.
//!
//! One module per subcommand under `cmd/`; this file only parses the command line, sets up
//! logging and turns errors into one line on stderr and a non-zero exit code. The binary
//! (`main.rs`) and the integration tests' copy of it both call [`cli_main`].

pub mod addr;
pub mod bep46;
pub mod client;
pub mod cmd;
pub mod daemon;
pub mod http;
pub mod progress;
pub mod rejoin;
pub mod state;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "swarm",
    version,
    about = "A trackerless, DHT-first BitTorrent node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a .torrent file (and print its magnet link) for a file or a directory.
    Create(cmd::create::Args),
    /// Fetch a torrent by magnet link, .torrent file or info-hash, through the DHT.
    Get(cmd::get::Args),
    /// Seed a file, directory or .torrent: announce it on the DHT and serve it.
    Seed(cmd::seed::Args),
    /// Run a DHT bootstrap node.
    Bootstrap(cmd::bootstrap::Args),
    /// Store and fetch items in the DHT (BEP 44).
    Dht(cmd::dht::Args),
    /// Run a whole swarm on loopback (bootstrap node, seeders, a leecher) with no internet.
    Demo(cmd::demo::Args),
    /// Run a long-lived node with an HTTP API, a web page, metrics and a Transmission RPC.
    Daemon(cmd::daemon::Args),
    /// Add torrents to a running daemon.
    Add(cmd::remote::AddArgs),
    /// List a running daemon's torrents.
    List(cmd::remote::ListArgs),
}

/// Parses `std::env::args`, runs the subcommand, and returns the process exit code.
pub fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Create(a) => cmd::create::run(a),
        Command::Get(a) => cmd::get::run(a),
        Command::Seed(a) => cmd::seed::run(a),
        Command::Bootstrap(a) => cmd::bootstrap::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Dht(a) => cmd::dht::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Add(a) => cmd::remote::add(a),
        Command::List(a) => cmd::remote::list(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("swarm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings and errors).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
