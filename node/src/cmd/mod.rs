//! One module per subcommand. Each has an `Args` (clap) and a `run(Args) -> anyhow::Result<()>`.

pub mod bootstrap;
pub mod common;
pub mod create;
pub mod daemon;
pub mod demo;
pub mod dht;
pub mod get;
pub mod remote;
pub mod seed;
