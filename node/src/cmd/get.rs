//! `swarm get`.

/// Arguments of `swarm get`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`swarm get` is not implemented yet")
}
