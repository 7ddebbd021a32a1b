//! uTP, the uTorrent transport protocol (BEP 29), with LEDBAT congestion control
//! (RFC 6817): a sans-IO core for many connections behind one UDP socket.
//!
//! The [`Endpoint`] never reads a clock, opens a socket or uses a global RNG. Drive it:
//!
//! ```
//! use std::time::Instant;
//! let now = Instant::now();
//! let mut a = utp::Endpoint::new(utp::Config::default(), 1);
//! let conn = a.connect(now, "127.0.0.1:6881".parse().unwrap()).unwrap();
//! a.write(now, conn, b"hello").unwrap(); // buffered until the handshake completes
//! while let Some(t) = a.poll_transmit() {
//!     // send t.data to t.to; feed what comes back to a.handle_datagram(now, from, &bytes)
//!     assert_eq!(t.to.port(), 6881);
//! }
//! while let Some(ev) = a.poll_event() { let _ = ev; }
//! let _wake_at = a.poll_timeout(); // then a.handle_timeout(that_instant)
//! ```
//!
//! Modules, one concept each: [`packet`] (the wire codec), [`ledbat`] (congestion
//! control), [`rtt`] (retransmission timeout), `send` (a connection's packets in flight:
//! acknowledgements, selective ACKs, loss), `recv` (its receive buffer: reassembly,
//! window, selective ACK mask), `conn` (one connection's state machine and timers),
//! [`endpoint`] (demultiplexing, bounds, the public API), [`testnet`] (a deterministic
//! in-memory network for tests, benches and simulations). `README.md` lists the bounds,
//! what is implemented and what is not.

mod config;
mod conn;
pub mod endpoint;
pub mod ledbat;
pub mod packet;
mod recv;
pub mod rtt;
mod send;
pub mod socket;
pub mod testnet;

pub use crate::config::Config;
pub use crate::endpoint::{CloseReason, ConnId, Endpoint, Error, Event, Stats, Transmit};
pub use crate::socket::{UtpSocket, UtpStream};

#[cfg(test)]
mod tests;
