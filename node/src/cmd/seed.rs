//! `swarm seed`.

/// Arguments of `swarm seed`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`swarm seed` is not implemented yet")
}
