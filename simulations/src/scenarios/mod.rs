//! Scenarios: each builds a world, runs it, and returns a report with a table, CSV rows
//! and plot series. The `simulations` binary exposes each as a subcommand; tests call the
//! same functions at smaller sizes.

pub mod dht_attack;
pub mod dht_bootstrap;
pub mod dht_lookup;
pub mod dht_mutable;
pub mod dht_spoof;
pub mod swarm;
