//! Deterministic discrete-event simulations of `swarm`'s protocol cores.
//!
//! The simulator runs the *real* sans-IO `dht` and `wire` cores on a virtual network:
//! a virtual clock ([`time`]), an event queue ordered by (time, sequence) ([`queue`]),
//! seeded randomness ([`rng`]), and a network model ([`net`]) with per-pair log-normal
//! latency, loss, per-host capacity, churn, NATed hosts and distinct virtual addresses.
//! Nothing here opens a socket or reads the real clock after start-up, so a run is a pure
//! function of its seed ([`trace`] checks that).

pub mod apps;
pub mod dht_sim;
pub mod fluid;
pub mod net;
pub mod plot;
pub mod queue;
pub mod rng;
pub mod scenarios;
pub mod sim;
pub mod stats;
pub mod time;
pub mod trace;

pub use net::address::HostId;
pub use sim::{App, Simulator, Step, Transmit};
pub use time::{Clock, SimTime};
