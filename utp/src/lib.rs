//! uTP, the uTorrent transport protocol (BEP 29), with LEDBAT congestion control
//! (RFC 6817): sans-IO building blocks.
//!
//! Modules, one concept each: [`packet`] (the wire codec), [`ledbat`] (congestion
//! control), [`rtt`] (retransmission timeout).

pub mod ledbat;
pub mod packet;
pub mod rtt;
