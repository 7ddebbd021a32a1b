//! Running the real `dht` core in the simulator: the host adapter, misbehaving hosts, and
//! the world that scenarios share (bootstrap nodes, joins, churn with saved state).

pub mod adversary;
pub mod host;
pub mod world;

pub use host::DhtHost;
pub use world::{DhtWorld, WorldConfig};
