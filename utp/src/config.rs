//! Settings of an endpoint, with the bounds on what a peer can make us hold.

use std::time::Duration;

use crate::packet::HEADER_LEN;

/// Settings shared by every connection of an [`crate::Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest uTP datagram we send, header included (the UDP payload). 1,400 fits the
    /// usual 1,500-byte Ethernet MTU with IPv6 and a tunnel header or two to spare.
    pub max_packet_size: usize,
    /// Bytes a connection holds for sending: written but not yet acknowledged.
    /// `write` accepts no more than this.
    pub send_buffer: usize,
    /// Bytes a connection holds for receiving: read-ready plus out-of-order. This is the
    /// window we advertise; packets beyond it are dropped.
    pub recv_buffer: usize,
    /// Bytes all connections together hold for receiving: past it, packets are dropped
    /// (and recovered later as losses), so that many peers cannot make us hold
    /// `max_connections x recv_buffer`.
    pub max_total_recv_buffer: usize,
    /// Out-of-order packets kept per connection (reorder slots): bounds the bookkeeping a
    /// peer sending tiny packets can cause, independently of bytes.
    pub max_reorder_packets: usize,
    /// Connections of any kind (including pending incoming and closing ones).
    pub max_connections: usize,
    /// Incoming connections that sent a SYN but have not yet proved that they received our
    /// reply. A SYN flood costs at most this many small table entries.
    pub max_pending_incoming: usize,
    /// Whether SYNs are accepted at all.
    pub accept_incoming: bool,
    /// How long a pending incoming connection waits for the initiator's first packet.
    pub pending_timeout: Duration,
    /// Retransmission timeout before any round trip was measured (RFC 6298: 1 s).
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout (BEP 29: 500 ms).
    pub min_rto: Duration,
    /// Upper bound of the backed-off retransmission timeout.
    pub max_rto: Duration,
    /// Consecutive timeouts after which a SYN is given up.
    pub max_syn_retransmits: u32,
    /// Consecutive timeouts after which an established connection is given up.
    pub max_retransmits: u32,
    /// How long an acknowledgement may wait for a second packet to share it.
    pub delayed_ack: Duration,
    /// How long a partial packet may wait for more writes while data is in flight
    /// (Nagle-style coalescing); `None` sends every write at once.
    pub nagle_delay: Option<Duration>,
    /// Send a bare acknowledgement after this long without sending anything, so that NAT
    /// mappings and the peer's idle timer stay alive.
    pub keepalive: Duration,
    /// Close a connection that received nothing for this long.
    pub idle_timeout: Duration,
    /// How long a finished connection lingers to re-acknowledge a retransmitted FIN.
    pub time_wait: Duration,
    /// LEDBAT's queueing delay target (BEP 29: 100 ms).
    pub target_delay: Duration,
    /// Cap on the congestion window, in bytes. With `recv_buffer` (the peer's, really) it
    /// caps one connection's rate at window / round trip: 1 MiB over 100 ms is 10 MiB/s.
    pub max_cwnd: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 1400,
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_total_recv_buffer: 64 << 20,
            max_reorder_packets: 1024,
            max_connections: 1024,
            max_pending_incoming: 64,
            accept_incoming: true,
            pending_timeout: Duration::from_secs(10),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(500),
            max_rto: Duration::from_secs(60),
            max_syn_retransmits: 3,
            max_retransmits: 6,
            delayed_ack: Duration::from_millis(10),
            nagle_delay: Some(Duration::from_millis(10)),
            keepalive: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            time_wait: Duration::from_secs(3),
            target_delay: Duration::from_millis(100),
            max_cwnd: 1 << 20,
        }
    }
}

/// The smallest packet we agree to use: a header and a useful payload.
pub const MIN_PACKET_SIZE: usize = HEADER_LEN + 128;
/// The largest UDP payload there is (IPv4).
pub const MAX_PACKET_SIZE: usize = 65_507;
/// In-flight packets per connection: far below half the 16-bit sequence space, so that
/// sequence comparisons stay unambiguous.
pub const MAX_IN_FLIGHT_PACKETS: usize = 4096;
/// Selective ACK bitmask bytes we send at most (covers 256 packets past the gap).
pub const MAX_SACK_BYTES: usize = 32;

impl Config {
    /// Payload bytes of a full data packet.
    pub fn max_payload(&self) -> usize {
        self.max_packet_size.clamp(MIN_PACKET_SIZE, MAX_PACKET_SIZE) - HEADER_LEN
    }
}
