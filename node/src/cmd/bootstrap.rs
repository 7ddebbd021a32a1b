//! `swarm bootstrap`.

/// Arguments of `swarm bootstrap`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`swarm bootstrap` is not implemented yet")
}
