//! `swarm demo`.

/// Arguments of `swarm demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`swarm demo` is not implemented yet")
}
