//! `swarm create`.

/// Arguments of `swarm create`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`swarm create` is not implemented yet")
}
