//! Mainline DHT (BEP 5, 32, 42, 43, 44, 51): a sans-IO Kademlia core and its tokio node.
//!
//! The core, [`Dht`], is a deterministic state machine: it never reads a clock, opens a
//! socket or uses a global RNG. Drive it like this:
//!
//! ```
//! use std::time::Instant;
//! let now = Instant::now();
//! let mut dht = dht::Dht::new(dht::Config::loopback(vec!["127.0.0.1:6881".parse().unwrap()]), now, 42);
//! let lookup = dht.get_peers(now, [0u8; 20]);
//! while let Some(t) = dht.poll_transmit() {
//!     // send t.data to t.to; feed replies to dht.handle_datagram(now, from, &bytes)
//!     assert_eq!(t.to.port(), 6881);
//! }
//! while let Some(ev) = dht.poll_event() { let _ = (ev, lookup); }
//! let _wake_at = dht.poll_timeout(); // then dht.handle_timeout(that_instant)
//! ```
//!
//! Modules, one concept each: [`krpc`] (wire codec), [`id`] (ids and XOR metric),
//! [`bep42`] (secure ids, external IP vote), [`routing`] (buckets), [`lookup`] (iterative
//! traversal), [`storage`] (announced peers), [`item`] and [`item_store`] (BEP 44 data),
//! [`token`] (announce tokens), [`ratelimit`],
//! [`state`] (saved id and nodes), [`node`] (the tokio driver).

pub mod bep42;
pub mod config;
mod core;
pub mod id;
pub mod item;
pub mod item_store;
pub mod krpc;
pub mod lookup;
mod mmsg;
pub mod node;
pub mod pool;
pub mod ratelimit;
pub mod routing;
pub mod rtt;
pub mod state;
pub mod storage;
pub mod token;

pub use crate::config::{Config, DEFAULT_ROUTERS};
pub use crate::core::{Dht, Event, RngSeed, Stats, Transmit};
pub use crate::id::Id;
pub use crate::krpc::NodeInfo;
pub use crate::lookup::{LookupId, LookupKind};
pub use crate::node::{Node, NodeConfig};
pub use crate::state::SavedState;
